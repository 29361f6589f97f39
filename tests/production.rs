//! `examples/production.toml` (the nginx playbook's section 4, translated) run as written
//! against local backends on 127.0.0.x, over wss: ip_hash keeps each client on one server,
//! weights 3:2 hold, the backup serves only while both primaries are down, health checks take
//! a server out and bring it back while its tunnels echo, and limit_conn answers 503 to the
//! 1,001st connection from one address.

mod common;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use common::*;

/// A wss tunnel to `/chat/headers` from `from`: the client and the backend that serves it.
fn chat(listen: SocketAddr, from: IpAddr) -> (Ws, String) {
    let mut ws = ws_connect_from(listen, "/chat/headers", Mode::Tls, Some(from));
    let first = ws.read().unwrap();
    let v: serde_json::Value = serde_json::from_str(first.to_text().unwrap()).unwrap();
    (ws, v["local"].as_str().unwrap().to_string())
}

fn client(n: u32) -> IpAddr {
    // A different /24 for each client: ip_hash keys on the first three octets.
    format!("127.{}.{}.9", 1 + n % 250, 1 + n / 250)
        .parse()
        .unwrap()
}

fn state(admin: SocketAddr, addr: SocketAddr) -> String {
    let out = admin_get(admin, "/status");
    let text = String::from_utf8_lossy(&out);
    let v: serde_json::Value =
        serde_json::from_str(text.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    v["upstreams"][0]["servers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["addr"] == addr.to_string())
        .map(|s| s["state"].as_str().unwrap().to_string())
        .unwrap()
}

fn until(admin: SocketAddr, addr: SocketAddr, want: &str) -> Duration {
    let t = Instant::now();
    while state(admin, addr) != want {
        assert!(t.elapsed() < Duration::from_secs(60), "{addr} never {want}");
        std::thread::sleep(Duration::from_millis(50));
    }
    t.elapsed()
}

/// A raw wss upgrade from `from`.
fn upgrade(listen: SocketAddr, from: IpAddr) -> (u16, Stream) {
    upgrade_from(listen, from, "/chat/x", Mode::Tls)
}

#[test]
fn the_playbooks_production_config_runs_as_written() {
    if !uring_ok() {
        return;
    }
    let dir = scratch("production");
    let port = free_addr().port();
    let addr = |i: u8| -> SocketAddr { format!("127.0.0.{i}:{port}").parse().unwrap() };
    let (a, b, c) = (addr(2), addr(3), addr(4));
    let sick = |x: SocketAddr| dir.join(format!("{}.sick", x.ip()));
    let _backends: Vec<Proc> = [a, b, c]
        .iter()
        .map(|x| {
            let (l, h) = (x.to_string(), sick(*x).display().to_string());
            spawn(
                &[
                    "echo",
                    "--workers",
                    "1",
                    "--listen",
                    &l,
                    "--health-file",
                    &h,
                ],
                &dir,
                &format!("echo-{}", x.ip()),
            )
        })
        .collect();
    let listen = free_addr();
    let admin = free_addr();
    let root = env!("CARGO_MANIFEST_DIR");
    let text = std::fs::read_to_string(format!("{root}/examples/production.toml")).unwrap();
    let p = pki();
    let text = text
        .replace("10.0.1.10:8080", &a.to_string())
        .replace("10.0.1.11:8080", &b.to_string())
        .replace("10.0.1.12:8080", &c.to_string())
        .replace("0.0.0.0:443", &listen.to_string())
        .replace("127.0.0.1:9900", &admin.to_string())
        .replace("workers = \"auto\"", "workers = 2")
        .replace(
            "/etc/ringway/ssl/example.com.crt",
            &p.cert.display().to_string(),
        )
        .replace(
            "/etc/ringway/ssl/example.com.key",
            &p.key.display().to_string(),
        );
    let path = dir.join("production.toml");
    std::fs::write(&path, &text).unwrap();
    let (code, out) = ringway(&["check", "--config", path.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{out}");
    let mut proxy = spawn(&["run", "--config", path.to_str().unwrap()], &dir, "proxy");
    wait_port(listen, &mut proxy);

    // ip_hash: each client stays on its server; 3:2 over many clients; the backup idle.
    let mut per: HashMap<String, u32> = HashMap::new();
    let mut home: Vec<String> = Vec::new();
    for n in 0..200 {
        let (_, first) = chat(listen, client(n));
        let (_, again) = chat(listen, client(n));
        assert_eq!(first, again, "client {} moved", client(n));
        *per.entry(first.clone()).or_default() += 1;
        home.push(first);
    }
    let (na, nb) = (
        per.get(&a.to_string()).copied().unwrap_or(0),
        per.get(&b.to_string()).copied().unwrap_or(0),
    );
    eprintln!("production: 200 clients by ip_hash: a (weight 3) {na}, b (weight 2) {nb}");
    assert_eq!(
        per.get(&c.to_string()),
        None,
        "the backup served while both primaries were up"
    );
    let ratio = f64::from(na) / f64::from(nb.max(1));
    assert!((1.2..1.9).contains(&ratio), "a:b = {na}:{nb}, weights 3:2");

    // b's /health fails: out within interval × fall, back within interval × rise, and its
    // tunnels keep echoing all along.
    let mut on_b: Vec<Ws> = (0..200u32)
        .filter(|&n| home[n as usize] == b.to_string())
        .take(5)
        .map(|n| chat(listen, client(n)).0)
        .collect();
    std::fs::write(sick(b), "").unwrap();
    let took = until(admin, b, "down");
    eprintln!("production: b down {took:?} after /health began failing (3s x fall 3)");
    for n in 0..40 {
        let (_, to) = chat(listen, client(n));
        assert_ne!(
            to,
            b.to_string(),
            "a new session went to b while it was down"
        );
    }
    for ws in &mut on_b {
        ws_echo(ws, b"while b is out".to_vec());
    }
    std::fs::remove_file(sick(b)).unwrap();
    let took = until(admin, b, "up");
    eprintln!("production: b up {took:?} after /health recovered (3s x rise 2)");
    for ws in &mut on_b {
        ws_echo(ws, b"after b is back".to_vec());
    }
    let n = (0..200u32)
        .find(|&n| home[n as usize] == b.to_string())
        .unwrap();
    assert_eq!(
        chat(listen, client(n)).1,
        b.to_string(),
        "b's clients come back to it"
    );

    // Both primaries down: everything goes to the backup, and nothing once they are back.
    std::fs::write(sick(a), "").unwrap();
    std::fs::write(sick(b), "").unwrap();
    until(admin, a, "down");
    until(admin, b, "down");
    for n in 0..20 {
        assert_eq!(
            chat(listen, client(n)).1,
            c.to_string(),
            "primaries down: the backup"
        );
    }
    std::fs::remove_file(sick(a)).unwrap();
    std::fs::remove_file(sick(b)).unwrap();
    until(admin, a, "up");
    until(admin, b, "up");
    for n in 0..20 {
        assert_ne!(
            chat(listen, client(n)).1,
            c.to_string(),
            "primaries back: not the backup"
        );
    }
    drop(on_b);

    // limit_conn ws_conn 1000: the 1,001st tunnel from one address is refused; one closes,
    // the next is accepted.
    let one: IpAddr = "127.0.0.200".parse().unwrap();
    let mut held: Vec<Stream> = (0..1000)
        .map(|i| {
            let (status, s) = upgrade(listen, one);
            assert_eq!(status, 101, "tunnel {i}");
            s
        })
        .collect();
    assert_eq!(upgrade(listen, one).0, 503, "the 1,001st");
    assert_eq!(
        upgrade(listen, "127.0.0.201".parse().unwrap()).0,
        101,
        "another address"
    );
    drop(held.pop());
    held.push(upgrade_when_slot_returns(listen, one, "/chat/x", Mode::Tls));
    proxy.wait_log("end=limited", 5);
    drop(held);
}
