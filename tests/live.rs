//! The shared, swappable state on real sockets: a worker runs in this process, the test swaps
//! the configuration under it and tells it through its inbox, as the reload will. New sessions
//! take the new configuration; sessions accepted before keep the one they were accepted under,
//! even when the new one has fewer servers than the index an old session holds.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use ringway_proxy::config::Config;
use ringway_proxy::live::{Inbox, Live, Msg};
use ringway_proxy::metrics::WorkerMetrics;
use ringway_proxy::worker::{Worker, WorkerSpec};

/// One keep-alive HTTP exchange on an open connection: the status and whether the body came.
fn get(s: &mut TcpStream, path: &str) -> u16 {
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: a\r\n\r\n").as_bytes())
        .unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = s.read(&mut chunk).unwrap();
        assert!(n > 0, "closed before a whole response");
        buf.extend_from_slice(&chunk[..n]);
        let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
            continue;
        };
        let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .map_or(0, |v| v.trim().parse().unwrap());
        if buf.len() >= end + 4 + len {
            return status_of(&buf);
        }
    }
}

#[test]
fn sessions_keep_the_configuration_they_were_accepted_under() {
    if !uring_ok() {
        return;
    }
    let dir = scratch("live");
    let (e1, e2) = (free_addr(), free_addr());
    let _echo = echo(&[e1, e2], &dir);
    let listen = free_addr();
    let config = |servers: &str| {
        let text = format!(
            "[[upstream]]\nname = \"u\"\nservers = [{servers}]\n\
             [[server]]\nlisten = [\"{listen}\"]\n\
             [[server.location]]\npath = \"/\"\nupstream = \"u\"\n"
        );
        Arc::new(Config::parse("live.toml", &text).unwrap())
    };
    // Before: two servers, the second weighted so that it is picked first.
    let before = config(&format!(
        "{{ addr = \"{e1}\" }}, {{ addr = \"{e2}\", weight = 5 }}"
    ));
    let live = Live::new(before.clone());
    let inbox = Inbox::new().unwrap();
    let metrics = Arc::new(WorkerMetrics::default());
    let sockets = Worker::listen(&before, 128, |_| Ok(Vec::new())).unwrap();
    let spec = WorkerSpec {
        id: 0,
        live: live.clone(),
        inbox: inbox.clone(),
        max_sessions: 64,
        backlog: 128,
        cpu: None,
        metrics: metrics.clone(),
        activated: false,
    };
    let worker = std::thread::spawn(move || Worker::new(spec, sockets).unwrap().run());

    // Accepted under the first configuration: a tunnel, on the second server (index 1), and a
    // kept-alive HTTP connection.
    let mut ws = ws_connect(listen, "/ws");
    ws_echo(&mut ws, b"before".to_vec());
    assert_eq!(
        before.upstreams[0].peers[1].state.active(),
        1,
        "the tunnel on server 1"
    );
    let mut http = TcpStream::connect(listen).unwrap();
    http.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    assert_eq!(get(&mut http, "/health"), 200);

    // After: one server, and a dead one: index 1 no longer exists, and anything new fails.
    let (dead, _held) = refused_addr();
    let after = config(&format!("{{ addr = \"{dead}\" }}"));
    live.swap(after.clone());
    inbox.send(Msg::Config);
    // The worker reads its inbox at once; a new connection then gets the new configuration.
    let mut status = 0;
    for _ in 0..50 {
        let out = raw_exchange(
            listen,
            b"GET /health HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
            10,
        );
        status = status_of(&out);
        if status == 502 {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(status, 502, "a new session uses the new configuration");

    // The old sessions still run on theirs: the tunnel echoes, and the kept-alive connection's
    // next request is routed, balanced and logged with the first configuration.
    ws_echo(&mut ws, b"after the swap".to_vec());
    assert_eq!(get(&mut http, "/health"), 200);
    assert_eq!(get(&mut http, "/headers"), 200);
    drop(ws);
    drop(http);
    let t = std::time::Instant::now();
    while metrics.active.load(std::sync::atomic::Ordering::Relaxed) > 0
        && t.elapsed() < Duration::from_secs(5)
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(metrics.active.load(std::sync::atomic::Ordering::Relaxed), 0);
    for p in before.upstreams[0]
        .peers
        .iter()
        .chain(&after.upstreams[0].peers)
    {
        assert_eq!(p.state.active(), 0, "{} still counted", p.addr);
    }
    inbox.send(Msg::CloseNow);
    worker.join().unwrap().unwrap();
}
