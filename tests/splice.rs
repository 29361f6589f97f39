//! The splice path end to end: bulk frames through `ringway run` in front of `ringway echo`,
//! real sockets, tungstenite clients. A frame whose payload still to come is at least
//! `runtime.splice_min` goes socket → pipe → socket; everything around it goes through
//! buffers, in order.

mod common;

use std::time::Duration;

use common::*;
use tungstenite::Message;

/// `ringway_spliced_bytes_total`, summed over the workers.
fn spliced(admin: std::net::SocketAddr) -> u64 {
    let m = String::from_utf8(admin_get(admin, "/metrics")).unwrap();
    m.lines()
        .filter(|l| l.starts_with("ringway_spliced_bytes_total{"))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
        .sum()
}

fn pattern(size: usize, seed: u8) -> Vec<u8> {
    (0..size)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

fn runtime(splice_min: &str, admin: std::net::SocketAddr) -> String {
    format!("splice_min = {splice_min}\n[admin]\nlisten = \"{admin}\"")
}

#[test]
fn bulk_messages_are_spliced_whole_between_small_ones() {
    if !uring_ok() {
        return;
    }
    let admin = free_addr();
    let st = stack("splice", "", "", &runtime("\"16k\"", admin));
    let mut ws = st.ws("/ws/");
    let sizes = [100, 1 << 20, 300, 16 << 20, 5, 200_000, 70_000, 17];
    for (i, &size) in sizes.iter().enumerate() {
        ws_echo(&mut ws, pattern(size, i as u8));
    }
    let bulk: u64 = sizes
        .iter()
        .filter(|&&s| s >= 64 << 10)
        .map(|&s| s as u64)
        .sum();
    let n = spliced(admin);
    // Both ways, less what came in the read that had each frame's header.
    assert!(n >= bulk, "spliced {n} of {} bulk bytes each way", bulk);
    assert!(
        n <= 2 * bulk + 1000,
        "spliced {n}: more than the bulk frames"
    );
    ws.close(None).unwrap();
    drop(ws);
    let log = st.proxy.wait_log("ws end=", 10);
    // The access log counts spliced bytes like any others.
    let total: u64 = sizes.iter().map(|&s| s as u64).sum();
    let line = log.lines().find(|l| l.contains("ws end=")).unwrap();
    let field = |k: &str| -> u64 {
        let v = line.split(&format!(" {k}=")).nth(1).unwrap();
        v.split(' ').next().unwrap().parse().unwrap()
    };
    assert!(field("in") >= total && field("out") >= total, "{line}");
}

/// Several tunnels at once, each sending 4 MiB messages both ways, one of them reading its
/// echoes late (its socket and the pipe toward it full for a while): every byte arrives, in
/// order, and the other tunnels go on meanwhile.
#[test]
fn concurrent_and_slow_splices_lose_nothing() {
    if !uring_ok() {
        return;
    }
    let admin = free_addr();
    let st = stack("splicemany", "", "", &runtime("\"64k\"", admin));
    let listen = st.listen;
    let workers: Vec<_> = (0..6u8)
        .map(|t| {
            std::thread::spawn(move || {
                let mut ws = ws_connect(listen, "/ws/");
                for round in 0..3u8 {
                    let payload = pattern(4 << 20, t.wrapping_mul(7).wrapping_add(round));
                    ws.send(Message::binary(payload.clone())).unwrap();
                    if t == 0 {
                        // A slow reader: its echo waits in the proxy's pipe and the sockets.
                        std::thread::sleep(Duration::from_millis(700));
                    }
                    match ws.read().unwrap() {
                        Message::Binary(b) => assert!(b[..] == payload[..], "tunnel {t}"),
                        other => panic!("tunnel {t}: unexpected {other:?}"),
                    }
                    ws_echo(&mut ws, pattern(40, round));
                }
                ws.close(None).unwrap();
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    assert!(spliced(admin) >= 6 * 3 * (4 << 20), "{}", spliced(admin));
    let status = admin_status(admin);
    assert_eq!(status["stale_cqes"].as_u64().unwrap_or(0), 0, "{status}");
}

/// `splice_min = 0` turns splicing off, and a TLS tunnel never splices (its bytes are
/// records, opened and sealed in user space): the same bulk echo goes through buffers.
#[test]
fn splicing_off_and_tls_go_through_buffers() {
    if !uring_ok() {
        return;
    }
    for (mode, min) in [(Mode::Plain, "0"), (Mode::Tls, "\"16k\"")] {
        let admin = free_addr();
        let st = stack_mode(mode, "splicenot", "", "", &runtime(min, admin));
        let mut ws = st.ws("/ws/");
        for size in [1 << 20, 10, 300_000] {
            ws_echo(&mut ws, pattern(size, 3));
        }
        assert_eq!(spliced(admin), 0, "{mode:?} splice_min {min}");
        ws.close(None).unwrap();
    }
}

/// Pipes the proxy process has open now.
fn pipes_of(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| {
            d.flatten()
                .filter(|e| {
                    std::fs::read_link(e.path())
                        .is_ok_and(|l| l.to_string_lossy().starts_with("pipe:"))
                })
                .count()
        })
        .unwrap_or(0)
}

/// A crowd of clients that each open a huge frame and then go quiet hold a pipe each, but
/// never more than the process's 64 (128 descriptors): past them, frames go through buffers,
/// and a tunnel that comes after them still echoes megabytes, whole. When the crowd goes, its
/// pipes go back or are closed.
#[test]
fn pipes_held_by_stalled_frames_are_bounded_and_others_go_on() {
    use std::io::Write;
    if !uring_ok() {
        return;
    }
    let admin = free_addr();
    let st = stack("splicehold", "", "", &runtime("\"16k\"", admin));
    let pid = st.proxy.pid();
    let before = pipes_of(pid);
    let mut crowd = Vec::new();
    for _ in 0..90 {
        let mut ws = st.raw_ws("/ws/", "");
        let mut out = Vec::new();
        ringway_proxy::ws::write_header(
            &mut out,
            true,
            0,
            ringway_proxy::ws::opcode::BINARY,
            Some([1, 2, 3, 4]),
            1 << 30,
        );
        out.extend_from_slice(&vec![0x5a; 40_000]);
        ws.s.write_all(&out).unwrap();
        crowd.push(ws);
    }
    let t = std::time::Instant::now();
    while spliced(admin) == 0 && t.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(spliced(admin) > 0, "the crowd's frames were not spliced");
    let held = pipes_of(pid) - before;
    assert!(
        held <= 2 * 64,
        "{held} pipe descriptors open: more than 64 pipes"
    );
    // Someone else's bulk messages still go, whole (through buffers if no pipe is left).
    let mut ws = st.ws("/ws/");
    for i in 0..3u8 {
        ws_echo(&mut ws, pattern(3 << 20, i));
    }
    ws.close(None).unwrap();
    drop(ws);
    drop(crowd);
    // The crowd's tunnels end; their pipes go back to the workers (16 kept each) or close.
    let t = std::time::Instant::now();
    while pipes_of(pid) > before + 2 * 2 * 16 && t.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        pipes_of(pid) <= before + 2 * 2 * 16,
        "{} pipe descriptors left open after the tunnels ended",
        pipes_of(pid) - before
    );
}
