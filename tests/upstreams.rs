//! Upstream policy through real processes: hashing that agrees with nginx, least_conn across
//! workers, passive failures and recovery, and next_upstream after the request went up.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use common::*;

/// GET `path` through `addr` from source address `from` (any of 127/8); status and the
/// backend's own address (the echo's `/headers` names it).
fn get_from(addr: SocketAddr, path: &str, from: &str, extra: &str) -> (u16, String) {
    let mut t = connect_from(addr, Some(from.parse().unwrap()), Mode::Plain);
    t.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    write!(
        t,
        "GET {path} HTTP/1.1\r\nHost: x\r\n{extra}Connection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = Vec::new();
    let _ = t.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out).into_owned();
    (status_of(&out), local_of(&text))
}

fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    get_from(addr, path, "127.0.0.1", "")
}

/// The `"local"` field of the echo's JSON in `text`.
fn local_of(text: &str) -> String {
    let body = text.find('{').map_or("", |i| &text[i..]);
    serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["local"].as_str().map(str::to_string))
        .unwrap_or_default()
}

fn status_json(admin: SocketAddr) -> serde_json::Value {
    let out = admin_get(admin, "/status");
    let text = String::from_utf8_lossy(&out);
    serde_json::from_str(text.split("\r\n\r\n").nth(1).unwrap_or("")).expect("status JSON")
}

/// `/status` of server `addr` in the first upstream.
fn server_status(admin: SocketAddr, addr: SocketAddr) -> serde_json::Value {
    let v = status_json(admin);
    v["upstreams"][0]["servers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["addr"] == addr.to_string())
        .cloned()
        .unwrap()
}

fn servers_toml(list: &[(SocketAddr, &str)]) -> String {
    let items: Vec<String> = list
        .iter()
        .map(|(a, extra)| format!("{{ addr = \"{a}\"{extra} }}"))
        .collect();
    format!("servers = [{}]", items.join(", "))
}

const NGINX: &str = "/usr/sbin/nginx";

/// nginx on `port_*` with the three hashing methods over `backends` (with weights).
fn nginx(dir: &std::path::Path, backends: &[(SocketAddr, u32)], ports: [u16; 3]) -> Proc {
    let servers = |m: &str| {
        let list: String = backends
            .iter()
            .map(|(a, w)| format!("        server {a} weight={w};\n"))
            .collect();
        format!(
            "    upstream u_{} {{\n        {m};\n{list}    }}\n",
            m.replace([' ', '$'], "_")
        )
    };
    let methods = ["hash $arg_k consistent", "hash $arg_k", "ip_hash"];
    let mut http = String::new();
    for (m, port) in methods.iter().zip(ports) {
        http.push_str(&servers(m));
        http.push_str(&format!(
            "    server {{\n        listen 127.0.0.1:{port};\n        location / {{ proxy_pass http://u_{}; }}\n    }}\n",
            m.replace([' ', '$'], "_")
        ));
    }
    for sub in ["client_body", "proxy", "fastcgi", "uwsgi", "scgi", "logs"] {
        std::fs::create_dir_all(dir.join(sub)).unwrap();
    }
    let d = dir.display();
    let conf = format!(
        "worker_processes 1;\npid {d}/nginx.pid;\nerror_log stderr warn;\nevents {{ worker_connections 512; }}\nhttp {{\n    access_log off;\n    client_body_temp_path {d}/client_body;\n    proxy_temp_path {d}/proxy;\n    fastcgi_temp_path {d}/fastcgi;\n    uwsgi_temp_path {d}/uwsgi;\n    scgi_temp_path {d}/scgi;\n{http}}}\n"
    );
    let path = dir.join("nginx.conf");
    std::fs::write(&path, conf).unwrap();
    let log = dir.join("nginx.log");
    let child = std::process::Command::new(NGINX)
        .args([
            "-p",
            &d.to_string(),
            "-e",
            "stderr",
            "-c",
            path.to_str().unwrap(),
        ])
        .args(["-g", "daemon off; master_process off;"])
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("start nginx");
    let mut p = Proc { child, log };
    for port in ports {
        wait_port(SocketAddr::from(([127, 0, 0, 1], port)), &mut p);
    }
    p
}

#[test]
fn hash_and_ip_hash_pick_the_server_nginx_picks() {
    if !uring_ok() {
        return;
    }
    if !std::path::Path::new(NGINX).exists() {
        skip(&format!(
            "{NGINX} is not installed (apt-get install nginx; scripts/test.sh does as root)"
        ));
        return;
    }
    let dir = scratch("nginx-hash");
    let weights = [1, 2, 1, 3, 1];
    let backends: Vec<(SocketAddr, u32)> = weights.iter().map(|&w| (free_addr(), w)).collect();
    let addrs: Vec<SocketAddr> = backends.iter().map(|b| b.0).collect();
    let _echo = echo(&addrs, &dir);
    let ng_ports = [0; 3].map(|_| free_addr().port());
    let _nginx = nginx(&dir, &backends, ng_ports);
    let rw: Vec<SocketAddr> = (0..3).map(|_| free_addr()).collect();
    let list: Vec<(SocketAddr, String)> = backends
        .iter()
        .map(|(a, w)| (*a, format!(", weight = {w}")))
        .collect();
    let list: Vec<(SocketAddr, &str)> = list.iter().map(|(a, e)| (*a, e.as_str())).collect();
    let balances = [
        "hash = { key = \"$arg_k\", consistent = true }",
        "hash = { key = \"$arg_k\" }",
        "balance = \"ip_hash\"",
    ];
    let mut cfg = String::from("[runtime]\nworkers = 2\n");
    for (i, b) in balances.iter().enumerate() {
        cfg.push_str(&format!(
            "[[upstream]]\nname = \"u{i}\"\n{b}\n{}\n",
            servers_toml(&list)
        ));
    }
    for (i, a) in rw.iter().enumerate() {
        cfg.push_str(&format!(
            "[[server]]\nlisten = [\"{a}\"]\n[[server.location]]\npath = \"/\"\nupstream = \"u{i}\"\n"
        ));
    }
    let _proxy = proxy(&cfg, rw[0], &dir);
    for port in [rw[1], rw[2]] {
        TcpStream::connect(port).expect("listening");
    }
    for (m, (ng, rw)) in ng_ports.iter().zip(&rw).take(2).enumerate() {
        let ng = SocketAddr::from(([127, 0, 0, 1], *ng));
        let mut spread = std::collections::HashMap::new();
        for k in 0..300 {
            let path = format!("/headers?k=user-{k}");
            let (s1, a) = get(ng, &path);
            let (s2, b) = get(*rw, &path);
            assert_eq!((s1, s2), (200, 200));
            assert_eq!(
                a, b,
                "{}: key user-{k}: nginx picked {a}, ringway {b}",
                balances[m]
            );
            *spread.entry(b).or_insert(0) += 1;
        }
        assert_eq!(
            spread.len(),
            5,
            "{}: every server gets keys: {spread:?}",
            balances[m]
        );
    }
    let ng = SocketAddr::from(([127, 0, 0, 1], ng_ports[2]));
    let mut spread = std::collections::HashMap::new();
    for n in 0..300u32 {
        let from = format!("127.{}.{}.9", n % 251, n / 251 + 1);
        let (s1, a) = get_from(ng, "/headers", &from, "");
        let (s2, b) = get_from(rw[2], "/headers", &from, "");
        assert_eq!((s1, s2), (200, 200));
        assert_eq!(
            a, b,
            "ip_hash: client {from}: nginx picked {a}, ringway {b}"
        );
        *spread.entry(b).or_insert(0) += 1;
    }
    assert_eq!(
        spread.len(),
        5,
        "ip_hash: every server gets clients: {spread:?}"
    );
}

/// Whose tunnel this is: the echo sends its request head (with its own address) first.
fn tunnel(addr: SocketAddr) -> (Ws, String) {
    let mut ws = ws_connect(addr, "/headers");
    let first = ws.read().unwrap();
    let local = local_of(first.to_text().unwrap());
    (ws, local)
}

#[test]
fn least_conn_counts_the_tunnels_of_every_worker() {
    if !uring_ok() {
        return;
    }
    let dir = scratch("least-conn");
    let (a, b) = (free_addr(), free_addr());
    let _echo = echo(&[a, b], &dir);
    let listen = free_addr();
    let admin = free_addr();
    let cfg = format!(
        "[runtime]\nworkers = 2\n[admin]\nlisten = \"{admin}\"\n[[upstream]]\nname = \"u\"\nbalance = \"least_conn\"\n{}\n[[server]]\nlisten = [\"{listen}\"]\n[[server.location]]\npath = \"/\"\nupstream = \"u\"\n",
        servers_toml(&[(a, ""), (b, "")])
    );
    let _proxy = proxy(&cfg, listen, &dir);
    let mut open: Vec<(Ws, String)> = (0..40).map(|_| tunnel(listen)).collect();
    let on =
        |open: &[(Ws, String)], x: SocketAddr| open.iter().filter(|t| t.1 == x.to_string()).count();
    assert_eq!((on(&open, a), on(&open, b)), (20, 20));
    // Ten of b's tunnels end: b has 10, a 20; the next ten all go to b, whichever worker
    // accepts them.
    let mut closed = 0;
    open.retain_mut(|t| {
        if closed < 10 && t.1 == b.to_string() {
            closed += 1;
            let _ = t.0.close(None);
            while t.0.read().is_ok() {}
            return false;
        }
        true
    });
    let t = Instant::now();
    while server_status(admin, b)["active"] != 10 {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "{}",
            status_json(admin)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let more: Vec<(Ws, String)> = (0..10).map(|_| tunnel(listen)).collect();
    assert_eq!(
        on(&more, b),
        10,
        "least_conn sent new tunnels to the busier server"
    );
    let v = status_json(admin);
    assert_eq!(v["upstreams"][0]["balance"], "least_conn");
    assert_eq!(server_status(admin, a)["active"], 20);
    assert_eq!(server_status(admin, b)["active"], 20);
    drop(open);
}

#[test]
fn a_failing_server_is_taken_out_for_fail_timeout_and_comes_back() {
    if !uring_ok() {
        return;
    }
    let dir = scratch("max-fails");
    let live = free_addr();
    let (dead, held) = refused_addr();
    let _echo = echo(&[live], &dir);
    let listen = free_addr();
    let admin = free_addr();
    let cfg = format!(
        "[runtime]\nworkers = 2\n[admin]\nlisten = \"{admin}\"\n[[upstream]]\nname = \"u\"\n{}\n[[server]]\nlisten = [\"{listen}\"]\n[[server.location]]\npath = \"/\"\nupstream = \"u\"\n",
        servers_toml(&[(live, ""), (dead, ", max_fails = 2, fail_timeout = \"2s\"")])
    );
    let mut proxy = proxy(&cfg, listen, &dir);
    // Every request is answered (a refused connect goes on to the live server); after two
    // refusals the dead server is not tried again within fail_timeout.
    for _ in 0..30 {
        let (status, by) = get(listen, "/headers");
        assert_eq!((status, by), (200, live.to_string()));
    }
    let s = server_status(admin, dead);
    assert_eq!(s["state"], "failed", "{s}");
    assert_eq!(s["failures"], 2, "{s}");
    assert_eq!(s["requests"], 2, "tried twice, then left alone: {s}");
    proxy.wait_log(
        &format!("server {dead} taken out for 2s after 2 failure(s)"),
        5,
    );
    // It comes up; once fail_timeout has passed, one request tries it and it is back.
    drop(held);
    let _revived = echo(&[dead], &dir);
    std::thread::sleep(Duration::from_millis(2100));
    let mut seen = false;
    for _ in 0..10 {
        let (status, by) = get(listen, "/headers");
        assert_eq!(status, 200);
        seen |= by == dead.to_string();
    }
    assert!(seen, "the server never got a request again");
    let s = server_status(admin, dead);
    assert_eq!(
        (s["state"].as_str(), s["fails"].as_u64()),
        (Some("up"), Some(0)),
        "{s}"
    );
    proxy.wait_log(&format!("server {dead} answers again"), 5);
    let _ = &mut proxy;
}

/// A backend that reads each request head and answers `reply` (or closes when empty),
/// counting connections.
fn broken_backend(reply: &'static str) -> (SocketAddr, Arc<AtomicU32>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let hits = Arc::new(AtomicU32::new(0));
    let h = hits.clone();
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            h.fetch_add(1, Ordering::Relaxed);
            std::thread::spawn(move || {
                let mut s = s;
                s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                let mut buf = Vec::new();
                let mut b = [0u8; 4096];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut b) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&b[..n]),
                    }
                }
                let _ = s.write_all(reply.as_bytes());
            });
        }
    });
    (addr, hits)
}

#[test]
fn next_upstream_sends_idempotent_requests_on_after_a_failure_upstream() {
    if !uring_ok() {
        return;
    }
    let dir = scratch("next-upstream");
    let good = free_addr();
    let _echo = echo(&[good], &dir);
    let (bad502, hits502) = broken_backend(
        "HTTP/1.1 502 Bad Gateway\r\nContent-Length: 4\r\nConnection: close\r\n\r\nbad\n",
    );
    let (closer, hits_closer) = broken_backend("");
    let listen = free_addr();
    let cfg = format!(
        "[runtime]\nworkers = 1\n\
         [[upstream]]\nname = \"a\"\n{}\n\
         [[upstream]]\nname = \"b\"\n{}\n\
         [[server]]\nlisten = [\"{listen}\"]\n\
         [[server.location]]\npath = \"/\"\nupstream = \"a\"\n\
         [[server.location]]\npath = \"/retry502/\"\nupstream = \"a\"\nnext_upstream = [\"error\", \"timeout\", \"http_502\"]\n\
         [[server.location]]\npath = \"/closer/\"\nupstream = \"b\"\n",
        servers_toml(&[(bad502, ", max_fails = 0"), (good, "")]),
        servers_toml(&[(closer, ", max_fails = 0"), (good, "")]),
    );
    let _proxy = proxy(&cfg, listen, &dir);
    // Default next_upstream: a 502 from a server is the answer.
    let answers: Vec<u16> = (0..6).map(|_| get(listen, "/headers").0).collect();
    assert!(
        answers.contains(&502) && answers.contains(&200),
        "{answers:?}"
    );
    // With http_502, the request goes on to the next server.
    let before = hits502.load(Ordering::Relaxed);
    for _ in 0..6 {
        let (status, _) = get(listen, "/retry502/x");
        assert_eq!(status, 404, "the echo's answer for an unknown path");
    }
    assert!(
        hits502.load(Ordering::Relaxed) > before,
        "the 502 server was tried"
    );
    // A server that closes without answering: GET and WebSocket handshakes go on to the next.
    for _ in 0..4 {
        assert_eq!(get(listen, "/closer/x").0, 404);
        let mut ws = ws_connect(listen, "/closer/ws");
        ws.send(tungstenite::Message::text("hello")).unwrap();
        assert_eq!(ws.read().unwrap().to_text().unwrap(), "hello");
    }
    assert!(
        hits_closer.load(Ordering::Relaxed) >= 4,
        "the closing server was tried"
    );
    // A POST with a body is never sent twice.
    let mut statuses = Vec::new();
    for _ in 0..4 {
        let out = raw_exchange(
            listen,
            b"POST /closer/echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello",
            10,
        );
        statuses.push(status_of(&out));
    }
    assert!(statuses.contains(&502), "{statuses:?}");
}

/// A `/health` endpoint on `addr` answering 200 while `ok`, 503 otherwise.
fn health_endpoint(addr: SocketAddr, ok: Arc<std::sync::atomic::AtomicBool>) -> Arc<AtomicU32> {
    let l = TcpListener::bind(addr).unwrap();
    let hits = Arc::new(AtomicU32::new(0));
    let h = hits.clone();
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            h.fetch_add(1, Ordering::Relaxed);
            let mut s = s;
            let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
            let mut b = [0u8; 1024];
            let _ = s.read(&mut b);
            let answer = if ok.load(Ordering::Relaxed) {
                "HTTP/1.0 200 OK\r\nContent-Length: 3\r\n\r\nok\n"
            } else {
                "HTTP/1.0 503 Service Unavailable\r\nContent-Length: 5\r\n\r\nsick\n"
            };
            let _ = s.write_all(answer.as_bytes());
        }
    });
    hits
}

/// Wait until server `addr` of the first upstream is in `state`; how long it took.
fn until_state(admin: SocketAddr, addr: SocketAddr, state: &str) -> Duration {
    let t = Instant::now();
    while server_status(admin, addr)["state"] != state {
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "{addr} never became {state}: {}",
            status_json(admin)
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    t.elapsed()
}

#[test]
fn health_checks_take_a_server_out_and_bring_it_back_while_its_tunnels_echo() {
    if !uring_ok() {
        return;
    }
    let dir = scratch("health");
    let port = free_addr().port();
    let (a, b): (SocketAddr, SocketAddr) = (
        format!("127.0.0.2:{port}").parse().unwrap(),
        format!("127.0.0.3:{port}").parse().unwrap(),
    );
    let _echo = echo(&[a, b], &dir);
    let hport = free_addr().port();
    let a_ok = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let b_ok = Arc::new(std::sync::atomic::AtomicBool::new(true));
    health_endpoint(format!("127.0.0.2:{hport}").parse().unwrap(), a_ok);
    let b_checks = health_endpoint(format!("127.0.0.3:{hport}").parse().unwrap(), b_ok.clone());
    let listen = free_addr();
    let admin = free_addr();
    let cfg = format!(
        "[runtime]\nworkers = 2\n[admin]\nlisten = \"{admin}\"\n\
         [[upstream]]\nname = \"u\"\n{}\n\
         health_check = {{ interval = \"300ms\", rise = 2, fall = 3, timeout = \"200ms\", request = \"GET /health HTTP/1.0\\r\\n\\r\\n\", expect = [\"2xx\"], port = {hport} }}\n\
         [[server]]\nlisten = [\"{listen}\"]\n[[server.location]]\npath = \"/\"\nupstream = \"u\"\n",
        servers_toml(&[(a, ""), (b, "")])
    );
    let proxy = proxy(&cfg, listen, &dir);
    let mut tunnels: Vec<(Ws, String)> = (0..10).map(|_| tunnel(listen)).collect();
    let on_b = tunnels.iter().filter(|t| t.1 == b.to_string()).count();
    assert!(on_b >= 3, "{on_b} of 10 tunnels on b");
    // b's /health starts failing: out within interval × fall (0.9 s) plus a check's time.
    b_ok.store(false, Ordering::Relaxed);
    let took_down = until_state(admin, b, "down");
    eprintln!("health: b down {took_down:?} after /health began failing (interval 300ms x fall 3)");
    for _ in 0..20 {
        assert_eq!(
            get(listen, "/headers"),
            (200, a.to_string()),
            "a session went to b"
        );
    }
    // Its tunnels were not cut: every one still echoes.
    for (ws, _) in &mut tunnels {
        ws_echo(ws, b"still here".to_vec());
    }
    b_ok.store(true, Ordering::Relaxed);
    let took_up = until_state(admin, b, "up");
    eprintln!("health: b up {took_up:?} after /health recovered (interval 300ms x rise 2)");
    let back = (0..10)
        .filter(|_| get(listen, "/headers").1 == b.to_string())
        .count();
    assert!(back >= 3, "b got {back} of 10 new sessions back");
    assert!(b_checks.load(Ordering::Relaxed) >= 5, "b was checked");
    let log = proxy.log_text();
    let down = format!(
        "upstream \"u\" server {b} is down: 3 check(s) in a row failed, the last: status 503"
    );
    assert_eq!(log.matches(&down).count(), 1, "{log}");
    let up = format!("upstream \"u\" server {b} is up: 2 check(s) in a row passed");
    assert_eq!(log.matches(&up).count(), 1, "{log}");
    assert!(!log.contains(&format!("server {a} is down")), "{log}");
    let s = server_status(admin, b);
    assert!(s["health_checks_failed"].as_u64().unwrap() >= 3, "{s}");
    assert!(s["health_checks_passed"].as_u64().unwrap() >= 2, "{s}");
}

#[test]
fn a_health_check_that_gets_no_answer_fails_at_its_timeout() {
    // A backend whose health port accepts and then says nothing (a hung process): each probe
    // is failed by its timer at `timeout`, and the server goes down, named why.
    if !uring_ok() {
        return;
    }
    let dir = scratch("health-mute");
    let a = free_addr();
    let _echo = echo(&[a], &dir);
    let mute = TcpListener::bind("127.0.0.1:0").unwrap();
    let hport = mute.local_addr().unwrap().port();
    let held = Arc::new(AtomicU32::new(0));
    let h = held.clone();
    std::thread::spawn(move || {
        let mut keep = Vec::new();
        for s in mute.incoming().flatten() {
            h.fetch_add(1, Ordering::Relaxed);
            keep.push(s); // never read, never answered, never closed
        }
    });
    let listen = free_addr();
    let admin = free_addr();
    let cfg = format!(
        "[runtime]\nworkers = 1\n[admin]\nlisten = \"{admin}\"\n\
         [[upstream]]\nname = \"u\"\n{}\n\
         health_check = {{ interval = \"500ms\", fall = 2, timeout = \"300ms\", request = \"GET /health HTTP/1.0\\r\\n\\r\\n\", port = {hport} }}\n\
         [[server]]\nlisten = [\"{listen}\"]\n[[server.location]]\npath = \"/\"\nupstream = \"u\"\n",
        servers_toml(&[(a, "")])
    );
    let proxy = proxy(&cfg, listen, &dir);
    let took = until_state(admin, a, "down");
    eprintln!(
        "health: down {took:?} after start with a mute health port (interval 500ms, timeout 300ms, fall 2)"
    );
    assert!(held.load(Ordering::Relaxed) >= 2, "probes connected");
    let log = proxy.log_text();
    let down = format!(
        "upstream \"u\" server {a} is down: 2 check(s) in a row failed, the last: no answer within 300ms"
    );
    assert!(log.contains(&down), "{log}");
    let s = server_status(admin, a);
    assert!(s["health_checks_failed"].as_u64().unwrap() >= 2, "{s}");
}

/// The upstream address ringway's request came from (the echo's `"peer"`).
fn peer_of(addr: SocketAddr, path: &str) -> String {
    let out = raw_exchange(
        addr,
        format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        10,
    );
    assert_eq!(status_of(&out), 200, "{}", String::from_utf8_lossy(&out));
    let text = String::from_utf8_lossy(&out);
    let body = text.find('{').map_or("", |i| &text[i..]);
    let v: serde_json::Value = serde_json::from_str(body).unwrap();
    v["peer"].as_str().unwrap().to_string()
}

/// A backend that answers the first request on each connection (keeping it open) and closes
/// on the second without answering: a kept connection dying under a request. Counts
/// connections, and requests that came on a connection that had answered one already.
fn one_request_backend() -> (SocketAddr, Arc<AtomicU32>, Arc<AtomicU32>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let conns = Arc::new(AtomicU32::new(0));
    let seconds = Arc::new(AtomicU32::new(0));
    let (c, sec) = (conns.clone(), seconds.clone());
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            c.fetch_add(1, Ordering::Relaxed);
            let sec = sec.clone();
            std::thread::spawn(move || {
                let mut s = s;
                s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                let mut buf = Vec::new();
                let mut b = [0u8; 4096];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut b) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&b[..n]),
                    }
                }
                let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n");
                // The next request (on this kept connection) gets a close, no answer.
                if s.read(&mut b).is_ok_and(|n| n > 0) {
                    sec.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
    });
    (addr, conns, seconds)
}

#[test]
fn keepalive_reuses_upstream_connections_and_never_a_dead_one() {
    if !uring_ok() {
        return;
    }
    let dir = scratch("keepalive");
    let backend = free_addr();
    let _echo = echo(&[backend], &dir);
    let (dying, dying_conns, dying_seconds) = one_request_backend();
    let listen = free_addr();
    let admin = free_addr();
    let cfg = format!(
        "[runtime]\nworkers = 1\n[admin]\nlisten = \"{admin}\"\n\
         [[upstream]]\nname = \"kept\"\nservers = [{{ addr = \"{backend}\" }}]\nkeepalive = 4\n\
         [[upstream]]\nname = \"fresh\"\nservers = [{{ addr = \"{backend}\" }}]\n\
         [[upstream]]\nname = \"few\"\nservers = [{{ addr = \"{backend}\" }}]\nkeepalive = 4\nkeepalive_requests = 3\n\
         [[upstream]]\nname = \"dying\"\nservers = [{{ addr = \"{dying}\" }}]\nkeepalive = 4\n\
         [[server]]\nlisten = [\"{listen}\"]\n\
         [[server.location]]\npath = \"/\"\nupstream = \"kept\"\n\
         [[server.location]]\npath = \"/fresh/\"\nupstream = \"fresh\"\n\
         [[server.location]]\npath = \"/few/\"\nupstream = \"few\"\n\
         [[server.location]]\npath = \"/dying/\"\nupstream = \"dying\"\n"
    );
    let _proxy = proxy(&cfg, listen, &dir);
    // Thirty requests, each from a new client connection: one upstream connection carries
    // them all with keepalive, thirty without.
    let kept: std::collections::HashSet<String> =
        (0..30).map(|_| peer_of(listen, "/headers")).collect();
    let fresh: std::collections::HashSet<String> =
        (0..30).map(|_| peer_of(listen, "/fresh/headers")).collect();
    assert_eq!(kept.len(), 1, "{kept:?}");
    assert_eq!(fresh.len(), 30);
    // keepalive_requests = 3: a connection carries three requests, then a new one is made.
    let few: Vec<String> = (0..9).map(|_| peer_of(listen, "/few/headers")).collect();
    let distinct: std::collections::HashSet<&String> = few.iter().collect();
    assert_eq!(distinct.len(), 3, "{few:?}");
    // A WebSocket tunnel's connection never goes to the pool.
    let mut ws = ws_connect(listen, "/headers");
    let first = ws.read().unwrap();
    let v: serde_json::Value = serde_json::from_str(first.to_text().unwrap()).unwrap();
    let tunnel_peer = v["peer"].as_str().unwrap().to_string();
    let _ = ws.close(None);
    while ws.read().is_ok() {}
    for _ in 0..5 {
        assert_ne!(peer_of(listen, "/headers"), tunnel_peer);
    }
    // A kept connection the backend closes under the next request: that request goes again on
    // a fresh connection, the client sees nothing of it, and the server is not marked failed.
    for i in 0..4 {
        let out = raw_exchange(
            listen,
            b"GET /dying/x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            10,
        );
        assert_eq!(
            status_of(&out),
            200,
            "request {i}: {}",
            String::from_utf8_lossy(&out)
        );
    }
    // Requests 2 to 4 each went first on the kept connection (which died under it), then on
    // a fresh one.
    assert_eq!(dying_conns.load(Ordering::Relaxed), 4);
    assert_eq!(
        dying_seconds.load(Ordering::Relaxed),
        3,
        "each kept connection was used"
    );
    let v = status_json(admin);
    let dying_server = &v["upstreams"][3]["servers"][0];
    assert_eq!(dying_server["failures"], 0, "{dying_server}");
    // A POST with a body on such a connection cannot be sent again: 502, nothing twice.
    let _ = raw_exchange(
        listen,
        b"GET /dying/x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        10,
    );
    let out = raw_exchange(
        listen,
        b"POST /dying/x HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi",
        10,
    );
    assert_eq!(status_of(&out), 502, "{}", String::from_utf8_lossy(&out));
}
