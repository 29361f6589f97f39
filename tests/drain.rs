//! SIGTERM with 1,000 tunnels: every client gets exactly one Close with the configured code, at
//! a frame boundary, the Closes spread over `drain_spread`; what either side sent before the
//! Close arrives; the client's Close reply reaches the backend; the process exits 0.
//!
//! The clients are tungstenite (which rejects a frame cut by another); the backend is a
//! tungstenite server in this process that records, per client, the last message it received
//! and the Close it was passed.

mod common;

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tungstenite::Message;

const CLIENTS: usize = 1000;

/// What the backend saw of one client: the last sequence number and the Close code passed up.
#[derive(Clone, Debug, Default)]
struct Seen {
    last: u64,
    close: Option<u16>,
}

/// A WebSocket echo that records what each client (named by its first message) sent.
fn recording_backend() -> (SocketAddr, Arc<Mutex<HashMap<u32, Seen>>>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let seen: Arc<Mutex<HashMap<u32, Seen>>> = Default::default();
    let seen2 = seen.clone();
    std::thread::spawn(move || {
        for s in l.incoming().take(CLIENTS) {
            let s = match s {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("recording backend: accept: {e}");
                    continue;
                }
            };
            let seen = seen2.clone();
            let spawned = std::thread::Builder::new()
                .stack_size(256 << 10)
                .spawn(move || {
                    let mut ws = match tungstenite::accept(s) {
                        Ok(ws) => ws,
                        Err(e) => {
                            eprintln!("recording backend: handshake: {e}");
                            return;
                        }
                    };
                    let mut id = None;
                    loop {
                        match ws.read() {
                            Ok(Message::Text(t)) => {
                                let (i, n) = t.split_once(':').unwrap();
                                let (i, n): (u32, u64) = (i.parse().unwrap(), n.parse().unwrap());
                                id = Some(i);
                                seen.lock().unwrap().entry(i).or_default().last = n;
                                if ws.send(Message::Text(t)).is_err() {
                                    break;
                                }
                            }
                            Ok(Message::Close(f)) => {
                                if let Some(i) = id {
                                    seen.lock().unwrap().entry(i).or_default().close =
                                        Some(f.map_or(0, |f| u16::from(f.code)));
                                }
                            }
                            Ok(_) => {}
                            Err(_) => break,
                        }
                    }
                });
            if let Err(e) = spawned {
                eprintln!("recording backend: thread: {e}");
            }
        }
    });
    (addr, seen)
}

#[test]
fn sigterm_sends_every_tunnel_one_close_spread_over_the_window() {
    if !uring_ok() {
        return;
    }
    ringway_proxy::sys::raise_nofile(8 * CLIENTS as u64);
    let dir = scratch("drain-1000");
    let (backend, seen) = recording_backend();
    let listen = free_addr();
    let admin = free_addr();
    let mut proxy = proxy(
        &config(
            listen,
            &[backend],
            "",
            "",
            &format!(
                "shutdown_grace = \"30s\"\ndrain_spread = \"6s\"\ndrain_close = {{ code = 4321, reason = \"moving house\" }}\n[admin]\nlisten = \"{admin}\""
            ),
        ),
        listen,
        &dir,
    );
    let term: Arc<Mutex<Option<Instant>>> = Default::default();
    let clients = chatters(CLIENTS, listen, "/ws/", &Default::default(), &term);
    wait_active(admin, CLIENTS as u64);
    // Let messages flow both ways for a while, then SIGTERM.
    std::thread::sleep(Duration::from_secs(1));
    *term.lock().unwrap() = Some(Instant::now());
    kill(Pid::from_raw(proxy.pid() as i32), Signal::SIGTERM).unwrap();
    let results: Vec<Chat> = clients.into_iter().map(|h| h.join().unwrap()).collect();
    let status = wait_exit(&mut proxy, 40);
    assert!(status.success(), "exit {status}");

    let errors: Vec<_> = results.iter().filter(|c| c.error.is_some()).collect();
    assert!(
        errors.is_empty(),
        "{} clients failed: {:?}",
        errors.len(),
        &errors[..errors.len().min(5)]
    );
    assert!(
        results.iter().all(|c| c.closes == 1),
        "exactly one Close each"
    );
    assert!(
        results.iter().all(|c| c.code == Some(4321)),
        "the configured code"
    );
    // Client to backend: everything each client sent before its Close reply arrived, and the
    // reply itself was passed up.
    let seen = seen.lock().unwrap();
    for (i, c) in results.iter().enumerate() {
        let s = &seen[&(i as u32)];
        assert_eq!(s.last, c.sent, "client {i}: the backend got all it sent");
        assert_eq!(
            s.close,
            Some(4321),
            "client {i}: its Close reply reached the backend"
        );
        assert!(c.echoed >= 1 && c.echoed <= c.sent, "client {i}");
    }
    let echoed: u64 = results.iter().map(|c| c.echoed).sum();
    let sent: u64 = results.iter().map(|c| c.sent).sum();
    // The arrival times, in tenths of the window.
    let window = 6.0;
    let mut bins = [0u32; 12];
    for c in &results {
        let at = c.close_at.unwrap().as_secs_f64();
        bins[((at / window * 10.0) as usize).min(11)] += 1;
    }
    eprintln!(
        "{CLIENTS} tunnels; messages sent {sent}, echoes received {echoed} (in order, none missing)"
    );
    eprintln!("Close arrivals after SIGTERM (drain_spread = 6s), per 0.6 s:");
    for (b, n) in bins.iter().enumerate() {
        eprintln!(
            "  {:>4.1}-{:>4.1}s {:>4} {}",
            b as f64 * 0.6,
            (b + 1) as f64 * 0.6,
            n,
            "#".repeat(*n as usize / 4)
        );
    }
    // Each quarter of the window got a fair share (an even spread gives 25% each).
    let quarter = |q: usize| -> u32 {
        results
            .iter()
            .filter(|c| {
                let at = c.close_at.unwrap().as_secs_f64() / window;
                at >= q as f64 / 4.0 && at < (q + 1) as f64 / 4.0
            })
            .count() as u32
    };
    for q in 0..4 {
        assert!(
            quarter(q) >= CLIENTS as u32 / 10,
            "quarter {q} of the window got {} Closes: {bins:?}",
            quarter(q)
        );
    }
    let log = proxy.log_text();
    assert_eq!(
        log.matches("ws end=drained").count(),
        CLIENTS,
        "every tunnel ended by its close handshake"
    );
}
