//! What the proxy shows of the WebSocket messages through its tunnels, read as an operator
//! reads it: `/metrics` per location (messages and payload bytes each way, message sizes,
//! Close frames by side and code, tunnels ended by how), checked by promtool and Prometheus's
//! parser; the access log's tunnel line (messages each way, each side's Close code and reason,
//! who closed first) and the optional line at a tunnel's opening. Clients are tungstenite's,
//! and hand-written frames where a test needs a frame no library sends (a Close cut across
//! two writes, a reason meant to forge a log field).

mod common;

use std::io::Write;
use std::time::{Duration, Instant};

use common::*;
use tungstenite::Message;
use tungstenite::protocol::CloseFrame;
use tungstenite::protocol::frame::coding::CloseCode;

/// A second location, `/chat/`, beside the stack's `/` (which gets `root`).
fn two_locations(root: &str) -> String {
    format!("{root}\n\n[[server.location]]\npath = \"/chat/\"\nupstream = \"backend\"")
}

/// The metrics, once `done` holds for them (within 10 s).
fn metrics_when(
    admin: std::net::SocketAddr,
    done: impl Fn(&std::collections::HashMap<String, f64>) -> bool,
) -> (String, std::collections::HashMap<String, f64>) {
    let t = Instant::now();
    loop {
        let (_, text) = scrape(admin, "");
        let m = parse_metrics(&text, "classic");
        if done(&m) {
            return (text, m);
        }
        assert!(t.elapsed() < Duration::from_secs(10), "{text}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn get(m: &std::collections::HashMap<String, f64>, key: &str) -> f64 {
    m.get(key).copied().unwrap_or(0.0)
}

/// The access-log lines that contain `needle`.
fn lines_with(log: &str, needle: &str) -> Vec<String> {
    log.lines()
        .filter(|l| l.contains(needle))
        .map(str::to_string)
        .collect()
}

#[test]
fn messages_closes_and_ends_are_counted_per_location_and_logged() {
    if !uring_ok() {
        return;
    }
    let admin = free_addr();
    let st = stack(
        "msg-metrics",
        &two_locations("max_lifetime = \"1s\"\nlifetime_jitter = \"0s\""),
        "",
        &format!("access_log_open = true\n[admin]\nlisten = \"{admin}\""),
    );
    // On /chat/: three whole messages and one in three fragments (100 bytes), echoed; then
    // the client closes with 4001 and a reason, and the echo answers with the same.
    let mut chat = st.ws("/chat/");
    for n in [10usize, 300, 5000] {
        chat.send(Message::Binary(vec![1u8; n].into())).unwrap();
        assert_eq!(chat.read().unwrap().into_data().len(), n);
    }
    st.proxy.wait_log("\"GET /chat/\"", 5);
    let mut raw = st.raw_ws("/chat/", "");
    raw.send_frame(false, 0, 0x1, &[b'a'; 40]);
    raw.send_frame(true, 0, 0x9, b"between");
    raw.send_frame(false, 0, 0x0, &[b'b'; 40]);
    raw.send_frame(true, 0, 0x0, &[b'c'; 20]);
    let mut echoed = 0;
    while echoed < 100 {
        let (_, _, op, p) = raw.read_frame();
        if op != 0xA {
            echoed += p.len();
        }
    }
    chat.close(Some(CloseFrame {
        code: CloseCode::Library(4001),
        reason: "bye now".into(),
    }))
    .unwrap();
    while chat.read().is_ok() {}
    // On /: one message; the tunnel reaches its max_lifetime and the proxy closes it (1012).
    let mut root = st.ws("/");
    root.send(Message::Text("hi".into())).unwrap();
    assert_eq!(root.read().unwrap().into_text().unwrap(), "hi");
    loop {
        match root.read() {
            Ok(Message::Close(Some(c))) => {
                assert_eq!(u16::from(c.code), 1012);
                break;
            }
            Ok(_) => {}
            Err(e) => panic!("no Close from the proxy: {e}"),
        }
    }
    while root.read().is_ok() {}
    drop((raw, chat, root));

    let chat_l = "location=/chat/,server_name=_}";
    let root_l = "location=/,server_name=_}";
    let (text, m) = metrics_when(admin, |m| {
        get(
            m,
            &format!("ringway_location_tunnels_ended_total{{end=lifetime,{root_l}"),
        ) == 1.0
            && total(m, "ringway_location_tunnels_ended_total{") == 3.0
    });
    promtool(&["check", "metrics"], &text);
    // The parser's key: the labels sorted by name.
    let at = |name: &str, labels: &str, l: &str| {
        let l = l.trim_end_matches('}');
        let mut all: Vec<&str> = labels.split(',').chain(l.split(',')).collect();
        all.sort();
        get(&m, &format!("{name}{{{}}}", all.join(",")))
    };
    // Messages and bytes each way; the ping between the fragments is not a message.
    assert_eq!(
        at("ringway_location_messages_total", "from=client", chat_l),
        4.0
    );
    assert_eq!(
        at("ringway_location_messages_total", "from=upstream", chat_l),
        4.0
    );
    assert_eq!(
        at(
            "ringway_location_message_bytes_total",
            "from=client",
            chat_l
        ),
        5410.0
    );
    assert_eq!(
        at("ringway_location_messages_total", "from=client", root_l),
        1.0
    );
    // Sizes: 10 in the 64 B bucket, the fragmented 100 in 256, 300 in 1 KiB, 5000 in 16 KiB
    // (cumulative, as Prometheus's histograms are).
    let le = |b: &str| {
        at(
            "ringway_location_message_size_bytes_bucket",
            &format!("from=upstream,le={b}"),
            chat_l,
        )
    };
    assert_eq!(
        [
            le("64.0"),
            le("256.0"),
            le("1024.0"),
            le("4096.0"),
            le("16384.0"),
            le("+Inf")
        ],
        [1.0, 2.0, 3.0, 3.0, 4.0, 4.0],
        "{text}"
    );
    assert_eq!(
        at(
            "ringway_location_message_size_bytes_sum",
            "from=upstream",
            chat_l
        ),
        5410.0
    );
    // Closes: /chat/'s client sent 4001 and the echo answered it; on /, the proxy sent
    // 1012 to the client, which answered 1012, and that went up (the upstream's answer to
    // it is not read as frames: nothing goes to the client after the proxy's Close).
    let close = |side: &str, way: &str, code: &str, l: &str| {
        at(
            "ringway_location_closes_total",
            &format!("code={code},side={side},way={way}"),
            l,
        )
    };
    assert_eq!(close("client", "received", "4xxx", chat_l), 1.0);
    assert_eq!(close("upstream", "received", "4xxx", chat_l), 1.0);
    assert_eq!(close("client", "sent", "1012", root_l), 1.0);
    assert_eq!(close("client", "received", "1012", root_l), 1.0);
    assert_eq!(
        total(&m, "ringway_location_closes_total{"),
        4.0,
        "no other Close: {text}"
    );
    assert_eq!(
        at("ringway_location_tunnels_ended_total", "end=done", chat_l),
        2.0
    );

    // The log: each tunnel's line at its end, and one at each opening.
    let log = st.proxy.log_text();
    let ends = lines_with(&log, "\"GET /chat/\"");
    let ended: Vec<&String> = ends.iter().filter(|l| l.contains("end=")).collect();
    assert_eq!(ended.len(), 2, "{log}");
    assert!(
        ended.iter().any(|l| l.contains(
            " msgs=3/3 close_client=4001:bye\\x20now close_upstream=4001:bye\\x20now closer=client ws end=done"
        )),
        "{log}"
    );
    assert!(
        ended
            .iter()
            .any(|l| l.contains(" msgs=1/1 close_client=- close_upstream=- closer=- ws end=")),
        "{log}"
    );
    let opened = lines_with(&log, " ws open");
    assert_eq!(opened.len(), 3, "{log}");
    assert!(opened.iter().all(|l| l.contains("status=101")), "{log}");
    let root_end = lines_with(&log, "end=lifetime");
    assert_eq!(root_end.len(), 1, "{log}");
    assert!(
        root_end[0].contains(
            " msgs=1/1 close_client=1012:service\\x20restart close_upstream=- closer=proxy ws end=lifetime"
        ),
        "{log}"
    );
}

#[test]
fn a_close_cut_across_writes_or_forging_a_field_is_logged_as_sent() {
    if !uring_ok() {
        return;
    }
    let st = stack("msg-close-log", "", "", "");
    // A Close whose payload comes in two writes, 200 ms apart: the code and the reason are
    // gathered across the two reads.
    let mut raw = st.raw_ws("/", "");
    let mut close = vec![0x88, 0x80 | 9, 1, 2, 3, 4];
    let payload = b"\x03\xe9going!!";
    close.extend(
        payload
            .iter()
            .enumerate()
            .map(|(i, b)| b ^ [1, 2, 3, 4][i % 4]),
    );
    raw.s.write_all(&close[..7]).unwrap();
    raw.s.flush().unwrap();
    std::thread::sleep(Duration::from_millis(200));
    raw.s.write_all(&close[7..]).unwrap();
    let (_, _, op, p) = raw.read_frame();
    assert_eq!((op, &p[..]), (0x8, &payload[..]), "the echo's answer");
    drop(raw);
    st.proxy.wait_log(
        "close_client=1001:going!! close_upstream=1001:going!! closer=client",
        10,
    );
    // A reason that tries to end the field and write its own: escaped.
    let mut raw = st.raw_ws("/", "");
    raw.send_frame(true, 0, 0x8, b"\x03\xe8x closer=upstream\" end=done\n");
    let (_, _, op, _) = raw.read_frame();
    assert_eq!(op, 0x8);
    drop(raw);
    let log = st.proxy.wait_log(
        "close_client=1000:x\\x20closer=upstream\\x22\\x20end=done\\x0A close_upstream",
        10,
    );
    assert_eq!(lines_with(&log, " closer=upstream").len(), 0, "{log}");
    // A Close with no code, and one with a single byte (not a code): 1005 each.
    for body in [&b""[..], b"\x03"] {
        let mut raw = st.raw_ws("/", "");
        raw.send_frame(true, 0, 0x8, body);
        let _ = raw.read_frame();
    }
    let t = Instant::now();
    while lines_with(&st.proxy.log_text(), "close_client=1005 ").len() < 2 {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "{}",
            st.proxy.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
