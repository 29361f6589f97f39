//! A location's WebSocket message policy against a client that writes its frames by hand:
//! `max_message_size` (fragments summed), `message_rate` (delay within the burst, Close 1008
//! past it, per tunnel or per address in a zone), and the hostile cases each limit is for —
//! a 2^63-byte frame header, a message in a million fragments, a ping flood.

mod common;

use std::io::{Read, Write};
use std::time::Duration;

use common::*;

/// A client frame (masked, as RFC 6455 requires of clients).
fn frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![(u8::from(fin) << 7) | opcode];
    let n = payload.len();
    if n < 126 {
        out.push(0x80 | n as u8);
    } else if n < 65536 {
        out.push(0x80 | 126);
        out.extend_from_slice(&(n as u16).to_be_bytes());
    } else {
        out.push(0x80 | 127);
        out.extend_from_slice(&(n as u64).to_be_bytes());
    }
    let mask = [0x12, 0x34, 0x56, 0x78];
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    out
}

/// A header announcing `len` payload bytes (masked), and no payload.
fn header_only(opcode: u8, len: u64) -> Vec<u8> {
    let mut out = vec![0x80 | opcode, 0x80 | 127];
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&[1, 2, 3, 4]);
    out
}

/// What came back: the data frames' payloads, the pongs, and the Close code (if one came).
#[derive(Debug, Default)]
struct Seen {
    data: Vec<Vec<u8>>,
    pongs: usize,
    close: Option<u16>,
}

/// Server frames read until a Close (or `want` data frames, or the connection's end).
fn read_until(s: &mut Stream, want: usize) -> Seen {
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut seen = Seen::default();
    let mut buf = Vec::new();
    let mut b = [0u8; 65536];
    loop {
        // Whole frames at the front of buf (server frames are not masked).
        loop {
            if buf.len() < 2 {
                break;
            }
            let (mut n, mut at) = (u64::from(buf[1] & 0x7f), 2);
            if n == 126 {
                if buf.len() < 4 {
                    break;
                }
                n = u64::from(u16::from_be_bytes([buf[2], buf[3]]));
                at = 4;
            } else if n == 127 {
                if buf.len() < 10 {
                    break;
                }
                n = u64::from_be_bytes(buf[2..10].try_into().unwrap());
                at = 10;
            }
            let end = at + n as usize;
            if buf.len() < end {
                break;
            }
            let payload = buf[at..end].to_vec();
            match buf[0] & 0x0f {
                0x8 => {
                    seen.close =
                        (payload.len() >= 2).then(|| u16::from_be_bytes([payload[0], payload[1]]));
                    return seen;
                }
                0xA => seen.pongs += 1,
                0x9 => {}
                _ => seen.data.push(payload),
            }
            buf.drain(..end);
        }
        if seen.data.len() >= want {
            return seen;
        }
        match s.read(&mut b) {
            Ok(0) | Err(_) => return seen,
            Ok(n) => buf.extend_from_slice(&b[..n]),
        }
    }
}

/// Sends each message in turn, waiting for its echo; returns how many were echoed, and the
/// Close that ended it (if one did).
fn one_by_one(s: &mut Stream, frames: &[Vec<u8>]) -> (usize, Option<u16>) {
    for (i, f) in frames.iter().enumerate() {
        s.write_all(f).unwrap();
        let seen = read_until(s, 1);
        if seen.close.is_some() || seen.data.is_empty() {
            return (i, seen.close);
        }
    }
    (frames.len(), None)
}

fn tunnel(st: &Stack, from: &str) -> Stream {
    let (status, s) = upgrade_from(st.listen, from.parse().unwrap(), "/ws/", Mode::Plain);
    assert_eq!(status, 101);
    s
}

/// Writes `bytes` from a thread of its own (the proxy may stop reading, or close, before
/// they have all gone); returns once they went or the connection ended.
fn write_all_behind(s: &Stream, bytes: Vec<u8>) -> std::thread::JoinHandle<()> {
    let mut w = s.tcp().try_clone().unwrap();
    std::thread::spawn(move || {
        let _ = w.write_all(&bytes);
    })
}

#[test]
fn max_message_size_sums_a_messages_fragments_and_ends_it_with_1009() {
    if !uring_ok() {
        return;
    }
    let st = stack("msg-size", "max_message_size = \"4k\"", "", "");
    let mut s = tunnel(&st, "127.0.0.1");
    // 4 KiB in three fragments, a ping between them: passes (the ping is not part of it).
    let mut out = frame(false, 0x2, &[1; 1024]);
    out.extend(frame(true, 0x9, b"between"));
    out.extend(frame(false, 0x0, &[2; 1024]));
    out.extend(frame(true, 0x0, &[3; 2048]));
    s.write_all(&out).unwrap();
    let seen = read_until(&mut s, 3);
    assert_eq!(seen.data.len(), 3, "{seen:?}");
    assert_eq!(seen.close, None);
    // The next message: two fragments of 2 KiB pass, the third makes 6 KiB: Close 1009.
    let fragments = [
        frame(false, 0x1, &[b'a'; 2048]),
        frame(false, 0x0, &[b'b'; 2048]),
        frame(true, 0x0, &[b'c'; 2048]),
    ];
    assert_eq!(one_by_one(&mut s, &fragments), (2, Some(1009)));
    st.proxy.wait_log("ws end=message-too-large\n", 10);
    // Other tunnels go on.
    let mut ws = st.ws("/ws/");
    ws_echo(&mut ws, vec![5; 4096]);
}

#[test]
fn a_message_in_a_million_fragments_meets_max_message_size() {
    if !uring_ok() {
        return;
    }
    let st = stack("msg-fragments", "max_message_size = \"64k\"", "", "");
    let mut s = tunnel(&st, "127.0.0.1");
    let mut out = frame(false, 0x2, b"x");
    let one = frame(false, 0x0, b"y");
    out.reserve(one.len() * 1_000_000);
    for _ in 0..1_000_000 {
        out.extend_from_slice(&one);
    }
    let w = write_all_behind(&s, out);
    let seen = read_until(&mut s, usize::MAX);
    // Fragments pass (and are echoed, those whose echo comes back before the end) until
    // the 65,537th byte: Close 1009.
    assert_eq!(seen.close, Some(1009), "{} frames", seen.data.len());
    assert!(seen.data.len() <= 65_536);
    drop(s);
    w.join().unwrap();
    st.proxy.wait_log("ws end=message-too-large\n", 10);
}

#[test]
fn frame_headers_of_2_63_bytes_end_the_tunnel_at_once() {
    if !uring_ok() {
        return;
    }
    let st = stack("msg-huge", "max_message_size = \"1m\"", "", "");
    // The largest length RFC 6455 allows (2^63 - 1): over the limit as soon as its header
    // is read, nothing of its payload awaited.
    let mut s = tunnel(&st, "127.0.0.1");
    s.write_all(&header_only(0x2, (1 << 63) - 1)).unwrap();
    assert_eq!(read_until(&mut s, usize::MAX).close, Some(1009));
    // 2^63: the length's top bit set, which RFC 6455 forbids. Under a message policy a
    // stream that breaks RFC 6455 ends the tunnel (Close 1002): it could not be held to the
    // policy any more.
    let mut s = tunnel(&st, "127.0.0.1");
    s.write_all(&header_only(0x2, 1 << 63)).unwrap();
    assert_eq!(read_until(&mut s, usize::MAX).close, Some(1002));
    st.proxy.wait_log("ws end=bad-frame\n", 10);
}

#[test]
fn message_rate_with_nodelay_closes_past_the_burst_with_1008() {
    if !uring_ok() {
        return;
    }
    let st = stack(
        "msg-rate-close",
        "message_rate = { rate = \"2r/s\", burst = 5, nodelay = true }",
        "",
        "",
    );
    let mut s = tunnel(&st, "127.0.0.1");
    let messages: Vec<Vec<u8>> = (0..20u8).map(|i| frame(true, 0x2, &[i; 10])).collect();
    // The first, and the burst of 5 (plus two a second the rate drains meanwhile), then
    // Close 1008.
    let (passed, close) = one_by_one(&mut s, &messages);
    assert_eq!(close, Some(1008));
    assert!((6..=10).contains(&passed), "{passed}");
    st.proxy.wait_log("ws end=message-rate\n", 10);
    let mut ws = st.ws("/ws/");
    ws_echo(&mut ws, b"other tunnels go on".to_vec());
}

#[test]
fn message_rate_delays_messages_within_the_burst_by_not_reading_the_client() {
    if !uring_ok() {
        return;
    }
    let admin = free_addr();
    let st = stack(
        "msg-rate-delay",
        "message_rate = { rate = \"20r/s\", burst = 100 }",
        "",
        &format!("[admin]\nlisten = \"{admin}\""),
    );
    let mut s = tunnel(&st, "127.0.0.1");
    let mut out = Vec::new();
    for i in 0..30u8 {
        out.extend(frame(true, 0x2, &[i; 100]));
    }
    s.write_all(&out).unwrap();
    // Every message comes back, in order, none refused: the ones over the rate waited (each
    // its 50 ms; one whose wait ran late by a turn may find the bucket drained and pass).
    let seen = read_until(&mut s, 30);
    assert_eq!(seen.close, None);
    assert_eq!(seen.data.len(), 30);
    for (i, d) in seen.data.iter().enumerate() {
        assert_eq!(d, &vec![i as u8; 100]);
    }
    let m = parse_metrics(&scrape(admin, "").1, "classic");
    let delayed = total(&m, "ringway_messages_delayed_total{");
    assert!(delayed >= 10.0, "{delayed} of 29 delayed");
    // The tunnel goes on, and closes cleanly.
    s.write_all(&frame(true, 0x8, &1000u16.to_be_bytes()))
        .unwrap();
    assert_eq!(read_until(&mut s, usize::MAX).close, Some(1000));
}

#[test]
fn the_end_of_a_clients_stream_waits_behind_its_delayed_messages() {
    if !uring_ok() {
        return;
    }
    let st = stack(
        "msg-rate-eof",
        "message_rate = { rate = \"100r/s\", burst = 100 }",
        "",
        "",
    );
    let mut s = tunnel(&st, "127.0.0.1");
    let mut out = Vec::new();
    for i in 0..40u8 {
        out.extend(frame(true, 0x2, &[i; 50]));
    }
    s.write_all(&out).unwrap();
    // The client's FIN right behind them: it reaches the upstream only after the last of
    // them, so every one is echoed.
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let seen = read_until(&mut s, 40);
    assert_eq!(seen.data.len(), 40, "{:?}", seen.close);
    for (i, d) in seen.data.iter().enumerate() {
        assert_eq!(d, &vec![i as u8; 50]);
    }
}

#[test]
fn a_delayed_flooder_is_held_in_its_own_socket_not_in_the_proxy() {
    if !uring_ok() {
        return;
    }
    let admin = free_addr();
    let st = stack(
        "msg-rate-bound",
        "message_rate = { rate = \"10r/s\", burst = 100000 }",
        "",
        &format!("[admin]\nlisten = \"{admin}\""),
    );
    let heap = || admin_status(admin)["heap_bytes"].as_u64().unwrap();
    let mut s = tunnel(&st, "127.0.0.1");
    // Let the tunnel settle, then measure what the process holds.
    s.write_all(&frame(true, 0x2, b"first")).unwrap();
    assert_eq!(read_until(&mut s, 1).data.len(), 1);
    let before = heap();
    // 32 MiB of small messages: far past what 10 a second lets through, well within the
    // burst, so none is refused and each waits its turn.
    let one = frame(true, 0x2, &[7; 100]);
    let mut out = Vec::with_capacity(32 << 20);
    while out.len() < 32 << 20 {
        out.extend_from_slice(&one);
    }
    let w = write_all_behind(&s, out);
    std::thread::sleep(Duration::from_secs(2));
    let held = heap().saturating_sub(before);
    // What waits in the proxy is what it had read when it stopped reading (a receive and the
    // ones already on their way, each at most a pool buffer); the rest waits in the client's
    // socket, and the writer is still blocked.
    assert!(held < 1 << 20, "{held} bytes held for one delayed client");
    assert!(!w.is_finished(), "the flooder was not slowed down");
    // Other tunnels go on meanwhile.
    let mut ws = st.ws("/ws/");
    ws_echo(&mut ws, b"unaffected".to_vec());
    // The flooder gives up: its writer sees the socket shut.
    let _ = s.tcp().shutdown(std::net::Shutdown::Both);
    w.join().unwrap();
}

#[test]
fn pings_past_the_burst_end_the_tunnel_they_are_never_delayed() {
    if !uring_ok() {
        return;
    }
    let st = stack(
        "msg-rate-pings",
        "message_rate = { rate = \"10r/s\", burst = 20 }",
        "",
        "",
    );
    let mut s = tunnel(&st, "127.0.0.1");
    let mut out = Vec::new();
    for _ in 0..500 {
        out.extend(frame(true, 0x9, b"flood"));
    }
    let w = write_all_behind(&s, out);
    let seen = read_until(&mut s, usize::MAX);
    assert_eq!(seen.close, Some(1008), "{seen:?}");
    assert!(seen.pongs <= 21, "{seen:?}");
    drop(s);
    w.join().unwrap();
    st.proxy.wait_log("ws end=message-rate\n", 10);
}

#[test]
fn message_rate_in_a_zone_is_shared_by_an_address_s_tunnels() {
    if !uring_ok() {
        return;
    }
    let st = stack(
        "msg-rate-zone",
        "message_rate = { zone = \"msgs\", burst = 10, nodelay = true }",
        "",
        "[[limit_req_zone]]\nname = \"msgs\"\nrate = \"1r/m\"",
    );
    let eight: Vec<Vec<u8>> = (0..8u8).map(|i| frame(true, 0x2, &[i; 4])).collect();
    // One address: 8 messages pass on its first tunnel; of 8 on its second, the bucket
    // (the first message, and a burst of 10) takes 3, then Close 1008.
    let mut a = tunnel(&st, "127.0.0.41");
    assert_eq!(one_by_one(&mut a, &eight), (8, None));
    let mut b = tunnel(&st, "127.0.0.41");
    assert_eq!(one_by_one(&mut b, &eight), (3, Some(1008)));
    // Another address has a bucket of its own.
    let mut c = tunnel(&st, "127.0.0.42");
    assert_eq!(one_by_one(&mut c, &eight), (8, None));
}
