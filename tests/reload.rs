//! Reload without dropping a tunnel: 1,000 tunnels chat continuously (tungstenite clients, each
//! echo checked in order) through ten reloads — by `ringway reload` and by SIGHUP — that switch
//! the default location between upstreams, add a location each time, and add then remove a
//! listener; plus an invalid file, refused with its file:line:field while the configuration in
//! force stays. New connections follow each new configuration; no tunnel is dropped.

mod common;

use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

const CLIENTS: usize = 1000;

/// Which backend (its address) answered `GET path/headers` on `listen`.
fn answered_by(listen: SocketAddr, path: &str) -> String {
    let out = raw_exchange(
        listen,
        format!("GET {path}headers HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n").as_bytes(),
        10,
    );
    let text = String::from_utf8_lossy(&out);
    assert_eq!(status_of(&out), 200, "{text}");
    let body = text.split("\r\n\r\n").nth(1).unwrap();
    let v: serde_json::Value = serde_json::from_str(body).unwrap();
    v["local"].as_str().unwrap().to_string()
}

/// Version `k` of the configuration: `/` goes to b when k is odd, else a; `/vK/` always goes
/// to a; `extra` listens too when given.
fn version(
    k: usize,
    listen: SocketAddr,
    extra: Option<SocketAddr>,
    admin: SocketAddr,
    a: SocketAddr,
    b: SocketAddr,
) -> String {
    let default = if k % 2 == 1 { "b" } else { "a" };
    let listens = match extra {
        Some(e) => format!("\"{listen}\", \"{e}\""),
        None => format!("\"{listen}\""),
    };
    format!(
        "[runtime]\nworkers = 2\nmax_connections = 5000\n\n[admin]\nlisten = \"{admin}\"\n\n\
         [[upstream]]\nname = \"a\"\nservers = [{{ addr = \"{a}\" }}]\n\n\
         [[upstream]]\nname = \"b\"\nservers = [{{ addr = \"{b}\" }}]\n\n\
         [[server]]\nlisten = [{listens}]\n\n\
         [[server.location]]\npath = \"/\"\nupstream = \"{default}\"\n\n\
         [[server.location]]\npath = \"/v{k}/\"\nupstream = \"a\"\n"
    )
}

#[test]
fn a_thousand_tunnels_chat_through_ten_reloads() {
    if !uring_ok() {
        return;
    }
    ringway_proxy::sys::raise_nofile(8 * CLIENTS as u64);
    let dir = scratch("reload");
    let (a, b) = (free_addr(), free_addr());
    let _echo = echo(&[a, b], &dir);
    let (listen, extra, admin) = (free_addr(), free_addr(), free_addr());
    let path = dir.join("ringway.toml");
    let mut proxy = proxy(&version(0, listen, None, admin, a, b), listen, &dir);
    assert_eq!(answered_by(listen, "/"), a.to_string());

    let stop = Arc::new(AtomicBool::new(false));
    let since: Arc<Mutex<Option<Instant>>> = Default::default();
    let clients = chatters(CLIENTS, listen, "/ws/", &stop, &since);
    wait_active(admin, CLIENTS as u64);

    for k in 1..=10 {
        let with_extra = (5..8).contains(&k);
        std::fs::write(
            &path,
            version(k, listen, with_extra.then_some(extra), admin, a, b),
        )
        .unwrap();
        if k % 2 == 0 {
            let (code, out) = ringway(&["reload", "--config", path.to_str().unwrap()]);
            assert_eq!(code, Some(0), "{out}");
            assert!(out.contains("configuration reloaded"), "{out}");
        } else {
            kill(Pid::from_raw(proxy.pid() as i32), Signal::SIGHUP).unwrap();
            let t = Instant::now();
            while proxy.log_text().matches("configuration reloaded").count() < k {
                assert!(t.elapsed() < Duration::from_secs(10), "SIGHUP {k} not done");
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        // New connections follow the new configuration.
        let want = if k % 2 == 1 { b } else { a };
        assert_eq!(answered_by(listen, "/"), want.to_string(), "reload {k}");
        assert_eq!(answered_by(listen, &format!("/v{k}/")), a.to_string());
        let mut ws = ws_connect(listen, "/ws/");
        ws_echo(&mut ws, format!("after reload {k}").into_bytes());
        if with_extra {
            assert_eq!(answered_by(extra, "/"), want.to_string(), "new listener");
        } else if k == 8 {
            let t = Instant::now();
            while TcpStream::connect_timeout(&extra, Duration::from_millis(200)).is_ok() {
                assert!(
                    t.elapsed() < Duration::from_secs(5),
                    "removed listener accepts"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        if k == 4 {
            // An invalid file: refused with where and why; the configuration in force stays.
            std::fs::write(
                &path,
                version(k, listen, None, admin, a, b)
                    .replace("upstream = \"a\"\n", "upstream = \"c\"\n"),
            )
            .unwrap();
            let (code, out) = ringway(&["reload", "--config", path.to_str().unwrap()]);
            assert_eq!(code, Some(1), "{out}");
            assert!(
                out.contains("ringway.toml:") && out.contains("server[0].location"),
                "{out}"
            );
            kill(Pid::from_raw(proxy.pid() as i32), Signal::SIGHUP).unwrap();
            proxy.wait_log(
                "SIGHUP: reload failed, the configuration in force stays",
                10,
            );
            assert_eq!(answered_by(listen, "/v4/"), a.to_string());
            assert_eq!(answered_by(listen, "/"), a.to_string());
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    // Every tunnel is still there.
    wait_active(admin, CLIENTS as u64);
    stop.store(true, Ordering::Relaxed);
    let results: Vec<Chat> = clients.into_iter().map(|h| h.join().unwrap()).collect();
    let errors: Vec<_> = results
        .iter()
        .filter(|c| c.error.is_some() || c.closes > 0)
        .collect();
    let sent: u64 = results.iter().map(|c| c.sent).sum();
    let echoed: u64 = results.iter().map(|c| c.echoed).sum();
    eprintln!(
        "{CLIENTS} tunnels through 10 reloads: {sent} messages sent, {echoed} echoed in order, {} errors",
        errors.len()
    );
    assert!(errors.is_empty(), "{:?}", &errors[..errors.len().min(5)]);
    assert_eq!(sent, echoed, "every message echoed");
    let log = proxy.log_text();
    assert_eq!(log.matches("configuration reloaded").count(), 10);
    let _ = proxy.child.kill();
}

/// Thousands of reloads of the same file (a plain and a TLS listener, two workers) leave the
/// process's live heap where it was: each used to keep a whole configuration (4.6 KB plain,
/// 9 KB with TLS) alive for good. `heap_bytes` (a counting allocator, exact) is bounded; RSS,
/// which moves in the allocator's steps, is the coarse second check (within 1 MiB).
#[test]
fn reloads_leak_nothing() {
    if !uring_ok() {
        return;
    }
    const RELOADS: usize = 5000;
    let dir = scratch("reload-leak");
    let backend = free_addr();
    let _echo = echo(&[backend], &dir);
    let (listen, tls_listen, admin) = (free_addr(), free_addr(), free_addr());
    let cfg = format!(
        "[runtime]\nworkers = 2\nmax_connections = 1000\n[admin]\nlisten = \"{admin}\"\n\
         [[upstream]]\nname = \"b\"\nservers = [{{ addr = \"{backend}\" }}]\n\
         [[server]]\nlisten = [\"{listen}\"]\n[[server.location]]\npath = \"/\"\nupstream = \"b\"\n\
         [[server]]\nlisten = [\"{tls_listen}\"]\n{}\n[[server.location]]\npath = \"/\"\nupstream = \"b\"\n",
        tls_line()
    );
    let p = proxy(&cfg, listen, &dir);
    let mut ws = ws_connect_mode(tls_listen, "/ws/", Mode::Tls);
    ws_echo(&mut ws, b"before".to_vec());
    let reload = || {
        let out = admin_request(admin, "POST", "/reload", "");
        assert_eq!(status_of(&out), 200, "{}", String::from_utf8_lossy(&out));
    };
    // Warm up what is made once (a first reload's allocations, the allocator's arenas).
    for _ in 0..50 {
        reload();
    }
    let heap = || admin_status(admin)["heap_bytes"].as_u64().unwrap();
    let (heap0, rss0) = (heap(), p.rss_kib());
    let t = Instant::now();
    for _ in 0..RELOADS {
        reload();
    }
    ws_echo(&mut ws, b"after".to_vec());
    std::thread::sleep(Duration::from_millis(300));
    let (heap1, rss1) = (heap(), p.rss_kib());
    eprintln!(
        "{RELOADS} reloads in {:?}: heap {heap0} -> {heap1} bytes, RSS {rss0} -> {rss1} KiB",
        t.elapsed()
    );
    assert!(
        heap1 < heap0 + 256 * 1024,
        "live heap grew {} bytes over {RELOADS} reloads",
        heap1 as i64 - heap0 as i64
    );
    assert!(
        rss1 < rss0 + 1024,
        "RSS grew {} KiB over {RELOADS} reloads",
        rss1 as i64 - rss0 as i64
    );
}

/// Health checks follow reloads: a check added to a process that started without any runs
/// within its interval (a failing server goes down), and a check removed lets the server up.
#[test]
fn health_checks_added_or_removed_by_a_reload_take_effect() {
    if !uring_ok() {
        return;
    }
    let dir = scratch("reload-health");
    let (good, bad) = (free_addr(), free_addr());
    let _echo = echo(&[good], &dir);
    let sick = dir.join("sick");
    std::fs::write(&sick, "").unwrap();
    let mut bad_echo = spawn(
        &[
            "echo",
            "--listen",
            &bad.to_string(),
            "--health-file",
            sick.to_str().unwrap(),
        ],
        &dir,
        "bad-echo",
    );
    wait_port(bad, &mut bad_echo);
    let (listen, admin) = (free_addr(), free_addr());
    let version = |check: &str| {
        format!(
            "[runtime]\nworkers = 2\n[admin]\nlisten = \"{admin}\"\n\
             [[upstream]]\nname = \"b\"\nservers = [{{ addr = \"{good}\" }}, {{ addr = \"{bad}\" }}]\n{check}\n\
             [[server]]\nlisten = [\"{listen}\"]\n[[server.location]]\npath = \"/\"\nupstream = \"b\"\n"
        )
    };
    let p = proxy(&version(""), listen, &dir);
    let path = dir.join("ringway.toml");
    let state_of = |addr: SocketAddr| -> String {
        let v = admin_status(admin);
        v["upstreams"][0]["servers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["addr"] == addr.to_string())
            .unwrap()["state"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let wait_state = |addr: SocketAddr, want: &str, secs: u64| {
        let t = Instant::now();
        while state_of(addr) != want {
            assert!(
                t.elapsed() < Duration::from_secs(secs),
                "{addr} never became {want}: {}",
                p.log_text()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(state_of(bad), "up", "nothing checks it yet");
    // Added: within an interval (500ms) the failing server is down, the other stays up.
    std::fs::write(
        &path,
        version(
            "health_check = { interval = \"500ms\", rise = 1, fall = 1, timeout = \"400ms\", request = \"GET /health HTTP/1.0\\r\\n\\r\\n\" }",
        ),
    )
    .unwrap();
    let (code, out) = ringway(&["reload", "--config", path.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{out}");
    wait_state(bad, "down", 5);
    assert_eq!(state_of(good), "up");
    // Removed: the server is no longer held down.
    std::fs::write(&path, version("")).unwrap();
    let (code, out) = ringway(&["reload", "--config", path.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{out}");
    wait_state(bad, "up", 5);
    p.wait_log("its health check was removed", 5);
}
