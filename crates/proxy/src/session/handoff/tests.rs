//! The description written and read back, broken descriptions refused, TLS states carried.
use super::*;
use std::sync::Arc;

use crate::config::Config;
use crate::wire::W;

const CFG: &str = r#"
[[upstream]]
name = "b"
servers = [{ addr = "127.0.0.1:9001" }, { addr = "127.0.0.1:9002" }]
[[server]]
listen = ["127.0.0.1:8080"]
server_name = ["chat.example"]
[[server.location]]
path = "/"
upstream = "b"
[[server.location]]
path = "/ws/"
upstream = "b"
heartbeat = { interval = "20s", timeout = "5s" }
"#;

/// A description as an old process writes it: a tunnel of `/ws/` on server `chat.example`
/// to the second server, mid-frame toward the upstream, with bytes waiting both ways.
fn written() -> Vec<u8> {
    written_with([None, None])
}

/// A TLS state as `Tls::export` writes it, for end `end` (0: ringway the server): TLS 1.3
/// AES-128-GCM, a record received in part.
fn tls_state(end: u8) -> Vec<u8> {
    let mut b = vec![end];
    b.extend_from_slice(&0x1301u16.to_le_bytes());
    for seq in [5u64, 9] {
        b.push(32);
        let mut secret = [0u8; 48];
        secret[..32].fill(seq as u8);
        b.extend_from_slice(&secret);
        let mut key = [0u8; 32];
        key[..16].fill(seq as u8 + 1);
        b.extend_from_slice(&key);
        b.extend_from_slice(&[seq as u8 + 2; 12]);
        b.extend_from_slice(&seq.to_le_bytes());
    }
    b.extend_from_slice(&[0, 32, 1]);
    b.extend_from_slice(&12u16.to_le_bytes());
    b.extend_from_slice(b"chat.example");
    let partial = [23u8, 3, 3, 0, 40, 1, 2];
    b.extend_from_slice(&(partial.len() as u32).to_le_bytes());
    b.extend_from_slice(&partial);
    b
}

/// As `written`, with these TLS states on the client's and the upstream's side.
fn written_with(tls: [Option<Vec<u8>>; 2]) -> Vec<u8> {
    let mut w = W(Vec::new());
    w.u32(VERSION);
    w.u8(Kind::Tunnel as u8);
    for s in [
        "10.0.0.7:5555",
        "127.0.0.1:8080",
        "chat.example",
        "/ws/",
        "b",
        "127.0.0.1:9002",
        "GET",
        "chat.example",
        "/ws/room?x=1",
        "websocket",
    ] {
        w.str(s);
    }
    for v in [5_000u64, 1_234, 5_678] {
        w.u64(v);
    }
    w.u32(60_000);
    w.u32(60_000);
    w.u64(10);
    w.u64(20);
    w.u32(1);
    let mut mid = FrameTracker::default();
    mid.track(&crate::ws::frame(crate::ws::opcode::BINARY, &[7; 300], Some([1, 2, 3, 4]))[..100]);
    for t in [mid, FrameTracker::default()] {
        w.0.extend_from_slice(&t.to_bytes());
    }
    for (m, wraps, part) in [(17u32, 0u32, 100u64), (16, 1, 0)] {
        w.u32(m);
        w.u32(wraps);
        w.u64(part);
    }
    w.u8(1);
    for (ping, tag) in [(0u64, 0u64), (300, 42)] {
        w.u64(ping);
        w.u64(tag);
    }
    w.u64(0);
    for t in &tls {
        match t {
            None => w.u8(0),
            Some(b) => {
                w.u8(1);
                w.u32(b.len() as u32);
                w.0.extend_from_slice(b);
            }
        }
    }
    for u in [&b"to the client"[..], b"to the upstream"] {
        w.u32(u.len() as u32);
        w.0.extend_from_slice(u);
    }
    w.0
}

fn config() -> Arc<Config> {
    Arc::new(Config::parse("t.toml", CFG).unwrap())
}

#[test]
fn a_description_is_taken_over_and_written_again_the_same() {
    let cfg = config();
    let d = written();
    let (s, unsent) = Session::adopt(&cfg, &[-1, -1], &d, 100_000).unwrap();
    assert_eq!(
        unsent,
        [b"to the client".to_vec(), b"to the upstream".to_vec()]
    );
    let Phase::Tunnel(t) = &s.phase else {
        panic!("not a tunnel")
    };
    assert_eq!(t.req.path(), "/ws/room?x=1");
    assert_eq!(t.req.peer, 1, "the upstream server found by its address");
    assert_eq!(t.msgs, [17, 16]);
    assert_eq!(t.frames[0].payload_left(), 300 - (100 - 8));
    let k = t.ctl.as_deref().expect("the location's heartbeat");
    assert_eq!(k.expect, [0, 42]);
    assert_eq!(k.pinged[1], 100_000 - 300);
    // Written again by this process: the same bytes (clocks are ages).
    let again = s.describe(100_000, &unsent);
    assert_eq!(again, d);
}

#[test]
fn a_broken_description_is_refused_never_a_panic() {
    let cfg = config();
    let d = written();
    cut_and_flipped(&cfg, &d, 0x9e3779b97f4a7c15);
    // More waiting to be sent than a tunnel may carry: refused, whatever follows.
    let mut big = d[..d.len() - (4 + 13 + 4 + 15)].to_vec();
    big.extend_from_slice(&(UNSENT_MAX as u32 + 1).to_le_bytes());
    big.resize(big.len() + UNSENT_MAX + 1, 0);
    big.extend_from_slice(&0u32.to_le_bytes());
    let e = Session::adopt(&cfg, &[-1, -1], &big, 1_000).unwrap_err();
    assert!(e.contains("too much waiting"), "{e}");
    // Another version, or a location this configuration does not have: refused.
    let mut other = d.clone();
    other[0] = VERSION as u8 + 1;
    assert!(
        Session::adopt(&cfg, &[-1, -1], &other, 1_000)
            .unwrap_err()
            .contains("version")
    );
    let gone = Arc::new(Config::parse("t.toml", &CFG.replace("/ws/", "/chat/")).unwrap());
    assert!(
        Session::adopt(&gone, &[-1, -1], &d, 1_000)
            .unwrap_err()
            .contains("no location")
    );
}

#[test]
fn a_tls_tunnel_is_taken_over_and_written_again_the_same() {
    let cfg = config();
    let d = written_with([Some(tls_state(0)), Some(tls_state(1))]);
    let (s, unsent) = Session::adopt(&cfg, &[-1, -1], &d, 100_000).unwrap();
    assert!(!s.cx.links.down.is_plain() && !s.cx.links.up.is_plain());
    assert_eq!(
        s.cx.links
            .down
            .tls_info()
            .map(|i| (i.version, i.sni, i.resumed)),
        Some((Some("TLSv1.3"), Some("chat.example"), true))
    );
    let again = s.describe(100_000, &unsent);
    assert_eq!(
        again, d,
        "the records' state, cut record and name carried as they were"
    );
    // Each side's state must be of its own end.
    let swapped = written_with([Some(tls_state(1)), None]);
    assert!(
        Session::adopt(&cfg, &[-1, -1], &swapped, 1_000)
            .unwrap_err()
            .contains("wrong end")
    );
    // Every cut and 20,000 byte flips: refused or taken, never a panic.
    cut_and_flipped(&cfg, &d, 0x2545f4914f6cdd1d);
}

/// Description `d` cut at every byte is refused, and with 20,000 single bytes changed (from
/// `seed`) is refused or taken, never a panic (a field that still reads is taken).
fn cut_and_flipped(cfg: &Arc<Config>, d: &[u8], seed: u64) {
    for n in 0..d.len() {
        assert!(
            Session::adopt(cfg, &[-1, -1], &d[..n], 1_000).is_err(),
            "cut at {n}"
        );
    }
    let mut rng = seed;
    for _ in 0..20_000 {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let mut bad = d.to_vec();
        let at = (rng % bad.len() as u64) as usize;
        bad[at] ^= (rng >> 32) as u8 | 1;
        let _ = Session::adopt(cfg, &[-1, -1], &bad, 1_000);
    }
}

/// A refused socket's last words reach a peer that goes on sending after them: the socket
/// lingers (reads and drops) instead of closing into a reset, and ends when the peer does.
/// Closed at once, the peer's second write would fail with a reset, as a TLS client's does
/// before it reads the GOAWAY waiting in its receive queue.
#[test]
fn a_refused_socket_lingers_so_a_peer_still_sending_reads_its_last_words() {
    use std::io::{Read, Write};
    use std::os::fd::IntoRawFd;
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut peer = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let (mut ours, _) = l.accept().unwrap();
    ours.write_all(b"goodbye").unwrap();
    linger::linger(ours.into_raw_fd());
    // The peer had not read yet and goes on sending, twice, well after the refusal.
    let chunk = vec![7u8; 64 * 1024];
    for _ in 0..2 {
        std::thread::sleep(std::time::Duration::from_millis(100));
        peer.write_all(&chunk)
            .expect("a lingering socket reads what its peer sends, with no reset");
    }
    let mut got = Vec::new();
    peer.read_to_end(&mut got).unwrap();
    assert_eq!(got, b"goodbye", "the last words, then the end");
}

/// The linger is bounded in time: a peer that stays open and says nothing is closed on
/// `LINGER_MS` after the linger began; its writes after that meet a reset. (Without the
/// bound, both writes would go through.)
#[test]
fn a_lingering_socket_whose_peer_falls_quiet_closes_after_the_quiet_time() {
    use std::io::{Read, Write};
    use std::os::fd::IntoRawFd;
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut peer = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let (ours, _) = l.accept().unwrap();
    linger::linger(ours.into_raw_fd());
    let mut got = Vec::new();
    peer.read_to_end(&mut got).unwrap();
    assert!(got.is_empty(), "the write side was shut at once");
    std::thread::sleep(std::time::Duration::from_millis(
        crate::session::LINGER_MS + 1500,
    ));
    // The first write is answered with a reset by a closed socket; the second fails on it.
    let wrote = (0..2)
        .map(|_| {
            let w = peer.write_all(b"late");
            std::thread::sleep(std::time::Duration::from_millis(50));
            w
        })
        .collect::<Vec<_>>();
    assert!(
        wrote.iter().any(Result::is_err),
        "the socket was closed after {} ms of quiet: {wrote:?}",
        crate::session::LINGER_MS
    );
}
