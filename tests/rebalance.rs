//! Rebalancing long-lived tunnels: a location's `max_lifetime` (with its jitter), and
//! `ringway rebalance` / `POST /rebalance` shedding a fraction of an instance's tunnels or down
//! to a count, each told to reconnect with the drain's Close (1012) at a frame boundary; and,
//! behind HAProxy, a third instance that joins gets its share once the others shed.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::*;
use tungstenite::Message;

/// Reads until a Close comes (its code), or `wait` passes (None).
fn close_within(ws: &mut Ws, wait: Duration) -> Option<u16> {
    ws.get_ref()
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let t = Instant::now();
    while t.elapsed() < wait {
        match ws.read() {
            Ok(Message::Close(f)) => return f.map(|f| u16::from(f.code)),
            Ok(_) => {}
            Err(tungstenite::Error::Io(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => panic!("no Close frame: {e}"),
        }
    }
    None
}

#[test]
fn max_lifetime_tells_each_tunnel_to_reconnect_at_its_jittered_end() {
    if !uring_ok() {
        return;
    }
    let st = stack(
        "lifetime",
        "max_lifetime = \"2s\"\nlifetime_jitter = \"1s\"",
        "",
        "",
    );
    let mut tunnels: Vec<Ws> = (0..6).map(|_| st.ws("/ws/")).collect();
    for ws in &mut tunnels {
        ws_echo(ws, b"before its end".to_vec());
    }
    for mut ws in tunnels {
        assert_eq!(close_within(&mut ws, Duration::from_secs(20)), Some(1012));
        // The client's answer, and its socket closed as a client's is once the close
        // handshake is over, end it (a socket left open would be closed by the proxy only
        // after its 10 s close wait).
        let _ = ws.close(None);
        while ws.read().is_ok() {}
    }
    let t = Instant::now();
    while st.proxy.log_text().matches("ws end=lifetime").count() < 6 {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "{}",
            st.proxy.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // `check` describes it.
    let (_, out) = ringway(&[
        "check",
        "--config",
        st.dir.join("ringway.toml").to_str().unwrap(),
    ]);
    assert!(out.contains("max_lifetime=2s jitter=1s"), "{out}");
}

#[test]
fn ringway_rebalance_sheds_a_fraction_then_down_to_a_count() {
    if !uring_ok() {
        return;
    }
    let admin = free_addr();
    let st = stack(
        "rebalance",
        "",
        "",
        &format!("drain_spread = \"1s\"\n[admin]\nlisten = \"{admin}\""),
    );
    let path = st.dir.join("ringway.toml");
    let path = path.to_str().unwrap();
    let mut tunnels: Vec<Ws> = (0..20).map(|_| st.ws("/ws/")).collect();
    for ws in &mut tunnels {
        ws_echo(ws, b"hello".to_vec());
    }
    wait_tunnels(admin, 20);
    // Half of them, over 1 s.
    let (code, out) = ringway(&[
        "rebalance",
        "--config",
        path,
        "--shed",
        "0.5",
        "--over",
        "1s",
    ]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("shedding 10 of 20 tunnels over 1s"), "{out}");
    let mut kept = told(tunnels, 10);
    for ws in &mut kept {
        ws_echo(ws, b"still here".to_vec());
    }
    wait_tunnels(admin, 10);
    // Down to 4, through the admin endpoint itself; then a refused ask.
    let out = admin_request(admin, "POST", "/rebalance?keep=4&over=500ms", "");
    let text = String::from_utf8_lossy(&out);
    assert_eq!(status_of(&out), 200, "{text}");
    assert!(text.contains("shedding 6 of 10 tunnels"), "{text}");
    assert_eq!(told(kept, 6).len(), 4);
    let t = Instant::now();
    while st.proxy.log_text().matches("ws end=shed").count() < 16 {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "{}",
            st.proxy.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let (code, out) = ringway(&["rebalance", "--config", path, "--shed", "2"]);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("refused (400)"), "{out}");
    let out = admin_request(admin, "GET", "/rebalance?shed=0.5", "");
    assert_eq!(status_of(&out), 405);
}

/// Reads every tunnel in turn until `n` of them got a Close (1012, answered), and a while
/// longer to see that no more do; the others are returned.
fn told(mut tunnels: Vec<Ws>, n: usize) -> Vec<Ws> {
    let mut closed = vec![false; tunnels.len()];
    let t = Instant::now();
    let mut settled: Option<Instant> = None;
    while settled.is_none_or(|s| s.elapsed() < Duration::from_millis(500)) {
        assert!(t.elapsed() < Duration::from_secs(10), "{closed:?}");
        for (i, ws) in tunnels.iter_mut().enumerate() {
            if closed[i] {
                continue;
            }
            if let Some(code) = close_within(ws, Duration::from_millis(20)) {
                assert_eq!(code, 1012);
                closed[i] = true;
                let _ = ws.close(None);
                while ws.read().is_ok() {}
            }
        }
        let count = closed.iter().filter(|c| **c).count();
        assert!(count <= n, "{count} told, not {n}");
        if count == n && settled.is_none() {
            settled = Some(Instant::now());
        }
    }
    tunnels
        .drain(..)
        .zip(closed)
        .filter(|(_, c)| !c)
        .map(|(ws, _)| ws)
        .collect()
}

/// Tunnels open on the proxy whose admin endpoint is `admin`, waited for.
fn wait_tunnels(admin: std::net::SocketAddr, n: u64) {
    let t = Instant::now();
    loop {
        let now = admin_status(admin)["tunnels"].as_u64().unwrap();
        if now == n {
            return;
        }
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "{now} tunnels, not {n}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A client behind the balancer: connects, echoes, and each time the proxy tells it to
/// reconnect (Close 1012), connects again (through the balancer), until `stop`.
fn reconnecting(
    front: std::net::SocketAddr,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<u32> {
    std::thread::spawn(move || {
        let mut reconnects = 0;
        'connect: loop {
            let mut ws = ws_connect(front, "/ws/");
            ws_echo(&mut ws, b"hi".to_vec());
            loop {
                if stop.load(Ordering::Relaxed) {
                    let _ = ws.close(None);
                    while ws.read().is_ok() {}
                    return reconnects;
                }
                if let Some(code) = close_within(&mut ws, Duration::from_millis(200)) {
                    assert_eq!(code, 1012);
                    let _ = ws.close(None);
                    while ws.read().is_ok() {}
                    reconnects += 1;
                    continue 'connect;
                }
            }
        }
    })
}

#[test]
fn behind_haproxy_a_third_instance_gets_its_share_once_the_others_shed() {
    if !uring_ok() {
        return;
    }
    let dir = scratch("rebalance-haproxy");
    let backend = free_addr();
    let _echo = echo(&[backend], &dir);
    let all = instances(&dir, 3, &[backend], "", "drain_spread = \"1s\"");
    let addrs: Vec<_> = all.iter().map(|i| (i.listen, i.admin)).collect();
    let mut rings: Vec<Proc> = all[..2]
        .iter()
        .map(|i| proxy(&i.cfg, i.listen, &i.dir))
        .collect();
    let front = free_addr();
    let servers: String = addrs
        .iter()
        .enumerate()
        .map(|(i, (l, a))| {
            format!(
                "  server r{i} {l} check port {} inter 200ms fall 1 rise 2\n",
                a.port()
            )
        })
        .collect();
    let hcfg = format!(
        "global\n  maxconn 4000\ndefaults\n  mode tcp\n  timeout connect 2s\n  timeout client 60s\n  timeout server 60s\n\
         frontend f\n  bind {front}\n  default_backend b\n\
         backend b\n  balance leastconn\n  option httpchk GET /healthz\n{servers}"
    );
    let hpath = dir.join("haproxy.cfg");
    std::fs::write(&hpath, hcfg).unwrap();
    let Some(mut hp) = tool(
        "haproxy",
        &["-db", "-f", hpath.to_str().unwrap()],
        &dir,
        "haproxy",
    ) else {
        return;
    };
    wait_port(front, &mut hp);
    std::thread::sleep(Duration::from_millis(600)); // r0 and r1 checked up, r2 down
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..30).map(|_| reconnecting(front, stop.clone())).collect();
    let tunnels = |i: usize| admin_status(addrs[i].1)["tunnels"].as_u64().unwrap_or(0);
    let t = Instant::now();
    while tunnels(0) + tunnels(1) < 30 {
        assert!(t.elapsed() < Duration::from_secs(10));
        std::thread::sleep(Duration::from_millis(20));
    }
    let before = [tunnels(0), tunnels(1)];
    // A third instance joins; HAProxy finds it up (its /healthz).
    rings.push(proxy(&all[2].cfg, all[2].listen, &all[2].dir));
    std::thread::sleep(Duration::from_millis(1000));
    assert_eq!(tunnels(2), 0, "tunnels stay where they are until told");
    // The first two shed a third of theirs each; the clients reconnect through HAProxy,
    // whose leastconn sends them to the newcomer.
    for (i, inst) in all.iter().take(2).enumerate() {
        let path = inst.dir.join("ringway.toml");
        let (code, out) = ringway(&[
            "rebalance",
            "--config",
            path.to_str().unwrap(),
            "--shed",
            "0.34",
            "--over",
            "1s",
        ]);
        assert_eq!(code, Some(0), "r{i}: {out}");
    }
    let t = Instant::now();
    while tunnels(2) < 8 || tunnels(0) + tunnels(1) + tunnels(2) < 30 {
        assert!(
            t.elapsed() < Duration::from_secs(15),
            "before {before:?}, now {:?}",
            [tunnels(0), tunnels(1), tunnels(2)]
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let after = [tunnels(0), tunnels(1), tunnels(2)];
    eprintln!("tunnels per instance: before {before:?}, after {after:?}");
    assert!(
        after[0] < before[0] && after[1] < before[1],
        "{before:?} → {after:?}"
    );
    stop.store(true, Ordering::Relaxed);
    let reconnects: u32 = clients.into_iter().map(|c| c.join().unwrap()).sum();
    assert!(reconnects >= 8, "{reconnects}");
    for r in &rings {
        assert!(!r.log_text().contains("panicked"));
    }
}
