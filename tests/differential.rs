//! Differential framing test (issue "hostile clients", item 4): thousands of generated requests —
//! valid, borderline and hostile, pipelined — read by ringway's parser and body tracker and by a
//! reference HTTP/1.1 implementation (Python's h11, `tests/reference/h11_frames.py`).
//!
//! Two views must agree:
//! - the client's connection: every request ringway reads (method, target, body) is the one h11
//!   reads there, in order; where ringway goes on past a point, h11 only stopped by policy
//!   (connection close or protocol switch), never because it read the bytes otherwise;
//! - the upstream's connection: each message as ringway forwards it (rewritten head and body)
//!   reads, on a fresh h11 connection, as exactly that one message with nothing left over.
//!
//! `RINGWAY_DIFF_CASES` sets the number of cases (default 4,000; a longer run: 100,000) and
//! `RINGWAY_DIFF_SEED` the seed.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};

use common::Rng;
use ringway_proxy::http::{
    BodyKind, BodyTracker, Forwarded, HeadLimits, parse_request, rewrite_request, upgrade_allowed,
};

/// One request, maybe malformed.
fn request(r: &mut Rng) -> Vec<u8> {
    let eol = if r.below(12) == 0 { "\n" } else { "\r\n" };
    let method = r.pick(&["GET", "POST", "PUT", "POST"]);
    let target = r.pick(&["/", "/a?b=1", "/x/../y", "/chat", "/%41"]);
    let version = if r.below(8) == 0 {
        "HTTP/1.0"
    } else {
        "HTTP/1.1"
    };
    let mut head = format!("{method} {target} {version}{eol}");
    let mut headers: Vec<String> = Vec::new();
    match r.below(10) {
        0 => {}
        1 => {
            headers.push("Host: a".into());
            headers.push("Host: b".into());
        }
        _ => headers.push("Host: a".into()),
    }
    // Framing: none, Content-Length, chunked, both, or something odd.
    let body = b"hello world, a body";
    let mut framing = r.below(9);
    let len_value = |r: &mut Rng, n: usize| -> String {
        match r.below(14) {
            0 => format!(" {n}"),
            1 => format!("0{n}"),
            2 => format!("{n},{n}"),
            3 => format!("{n}, {}", n + 1),
            4 => format!("+{n}"),
            5 => "-1".into(),
            6 => format!("{n} {n}"),
            7 => format!("0x{n:x}"),
            8 => String::new(),
            9 => "99999999999999999999".into(),
            _ => n.to_string(),
        }
    };
    let te_value = |r: &mut Rng| -> &str {
        r.pick(&[
            "chunked",
            "chunked",
            "chunked",
            "Chunked",
            " chunked",
            "",
            ",",
            "chunked,",
            "identity",
            "chunked, chunked",
            "xchunked",
            "chunked\t",
            ", chunked",
        ])
    };
    let n = r.below(body.len() + 1);
    let mut payload: Vec<u8> = Vec::new();
    match framing {
        0..=2 => {
            framing = 0;
        }
        3 | 4 => {
            let v = len_value(r, n);
            let name = r.pick(&[
                "Content-Length",
                "content-length",
                "Content-Length ",
                "Content-length",
            ]);
            headers.push(format!("{name}: {v}"));
            if r.below(8) == 0 {
                headers.push(format!("Content-Length: {}", len_value(r, n)));
            }
            payload.extend_from_slice(&body[..n]);
        }
        5..=7 => {
            headers.push(format!("Transfer-Encoding: {}", te_value(r)));
            if r.below(6) == 0 {
                headers.push(format!("Content-Length: {n}"));
            }
            payload = chunked(r, &body[..n]);
        }
        _ => {
            headers.push(format!("Transfer-Encoding: {}", te_value(r)));
            headers.push(format!("Transfer-Encoding: {}", te_value(r)));
            payload = chunked(r, &body[..n]);
        }
    }
    let _ = framing;
    match r.below(12) {
        0 => headers.push("Connection: close".into()),
        1 => headers.push("Connection: keep-alive".into()),
        2 => headers.push(format!(
            "Connection: {}",
            r.pick(&["Content-Length", "Transfer-Encoding", "Host", "x-a"])
        )),
        3 => {
            headers.push(format!(
                "Upgrade: {}",
                r.pick(&["websocket", "h2c", "websocket, h2c"])
            ));
            headers.push(format!(
                "Connection: {}",
                r.pick(&["Upgrade", "keep-alive, Upgrade", "close"])
            ));
        }
        4 => headers.push("X-Fold: a\r\n b".into()),
        5 => headers.push("X-Ctl: a\u{1}b".into()),
        _ => {}
    }
    if r.below(3) == 0 {
        headers.push("X-Custom: v".into());
    }
    // Shuffle the headers a little.
    if headers.len() > 1 && r.below(2) == 0 {
        let i = r.below(headers.len());
        let j = r.below(headers.len());
        headers.swap(i, j);
    }
    for h in &headers {
        head.push_str(h);
        head.push_str(eol);
    }
    head.push_str(eol);
    let mut out = head.into_bytes();
    out.extend_from_slice(&payload);
    out
}

/// A chunked encoding of `data`, maybe malformed.
fn chunked(r: &mut Rng, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut rest = data;
    let odd = r.below(4) == 0;
    while !rest.is_empty() {
        let k = 1 + r.below(rest.len());
        let (c, tail) = rest.split_at(k);
        rest = tail;
        let size = match (odd, r.below(10)) {
            (true, 0) => format!("{k:X}"),
            (true, 1) => format!("00{k:x}"),
            (true, 2) => format!("{k:x};name=v"),
            (true, 3) => format!("{k:x} ;a"),
            (true, 4) => format!("{k:x} "),
            (true, 5) => format!("{k:x}\n"),
            (true, 6) => format!("{:x}", k + 1),
            (true, 7) => format!("{k:x};a=\"b\nc\""),
            _ => format!("{k:x}"),
        };
        out.extend_from_slice(size.as_bytes());
        if !size.ends_with('\n') {
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(c);
        out.extend_from_slice(if odd && r.below(10) == 0 {
            b"\n"
        } else {
            b"\r\n"
        });
    }
    out.extend_from_slice(b"0\r\n");
    if odd {
        match r.below(5) {
            0 => out.extend_from_slice(b"X-Trailer: t\r\n"),
            1 => out.extend_from_slice(b"bad trailer\r\n"),
            2 => out.extend_from_slice(b"X-T: a\nY: b\r\n"),
            3 => {
                out.extend_from_slice(b"\n");
                return out;
            }
            _ => {}
        }
    }
    out.extend_from_slice(b"\r\n");
    out
}

/// What ringway does with one client connection's bytes: the requests it reads (method,
/// target, decoded body), why it stops, and each message as it forwards it upstream.
struct View {
    msgs: Vec<(String, String, Vec<u8>)>,
    stop: &'static str,
    forwarded: Vec<Vec<u8>>,
}

fn ringway_view(stream: &[u8]) -> View {
    let mut v = View {
        msgs: Vec::new(),
        stop: "end",
        forwarded: Vec::new(),
    };
    let mut pos = 0;
    let allowed = vec!["websocket".to_string()];
    loop {
        let buf = &stream[pos..];
        if buf.is_empty() {
            return v;
        }
        let req = match parse_request(buf, &HeadLimits::flat(16384)) {
            Ok(Some(r)) => r,
            Ok(None) => {
                v.stop = "incomplete";
                return v;
            }
            Err(_) => {
                v.stop = "error";
                return v;
            }
        };
        let upgrade = req.version_minor == 1
            && req
                .upgrade
                .as_deref()
                .is_some_and(|u| upgrade_allowed(u, &allowed));
        let mut out = Vec::new();
        let fwd = Forwarded {
            upgrade,
            client_ip: "10.0.0.1".parse().unwrap(),
            proto: "http",
            default_host: "backend",
            keepalive: false,
            target: None,
            set: &[],
            no_body: false,
        };
        if rewrite_request(&buf[..req.head_len], &fwd, &mut out).is_err() {
            v.stop = "error";
            return v;
        }
        let rest = &buf[req.head_len..];
        let mut t = BodyTracker::new(req.body);
        let n = match t.feed(rest) {
            Ok(n) => n,
            Err(_) => {
                v.stop = "error";
                return v;
            }
        };
        if !t.done() {
            v.stop = "incomplete";
            return v;
        }
        let raw = &rest[..n];
        out.extend_from_slice(raw);
        v.forwarded.push(out);
        v.msgs
            .push((req.method.clone(), req.path.clone(), decode(req.body, raw)));
        pos += req.head_len + n;
        if upgrade {
            v.stop = "upgrade";
            return v;
        }
        if !req.keep_alive {
            v.stop = "close";
            return v;
        }
    }
}

/// The body's data: as is, or chunked framing removed (it has been validated).
fn decode(kind: BodyKind, raw: &[u8]) -> Vec<u8> {
    if kind != BodyKind::Chunked {
        return raw.to_vec();
    }
    let mut out = Vec::new();
    let mut i = 0;
    loop {
        let line_end = i + raw[i..].windows(2).position(|w| w == b"\r\n").unwrap();
        let size_text: String = raw[i..line_end]
            .iter()
            .take_while(|b| b.is_ascii_hexdigit())
            .map(|&b| b as char)
            .collect();
        let size = usize::from_str_radix(&size_text, 16).unwrap();
        i = line_end + 2;
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&raw[i..i + size]);
        i += size + 2;
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[test]
fn ringway_and_h11_agree_on_where_every_request_ends() {
    let probe = Command::new("python3").args(["-c", "import h11"]).status();
    assert!(
        probe.is_ok_and(|s| s.success()),
        "the reference parser is missing: python3 -m pip install h11 (.ci/run and scripts/test.sh install it)"
    );
    let cases: usize = std::env::var("RINGWAY_DIFF_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4000);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/reference/h11_frames.py");
    let mut child = Command::new("python3")
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3");
    let seed: u64 = std::env::var("RINGWAY_DIFF_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x9e37_79b9_7f4a_7c15);
    eprintln!("seed {seed} (RINGWAY_DIFF_SEED), {cases} cases (RINGWAY_DIFF_CASES)");
    let mut r = Rng(seed | 1);
    let mut inputs = Vec::with_capacity(cases);
    for _ in 0..cases {
        let mut stream = Vec::new();
        for _ in 0..1 + r.below(3) {
            stream.extend(request(&mut r));
        }
        if r.below(10) == 0 {
            let cut = r.below(stream.len() + 1);
            stream.truncate(cut);
        }
        inputs.push(stream);
    }
    // Write on a thread of its own so neither pipe can fill up and stall the other.
    let mut stdin = child.stdin.take().unwrap();
    let lines: Vec<String> = inputs
        .iter()
        .map(|s| {
            let v = ringway_view(s);
            let fwd: Vec<String> = v
                .forwarded
                .iter()
                .map(|f| format!("\"{}\"", hex(f)))
                .collect();
            format!(
                "{{\"client\": \"{}\", \"forwarded\": [{}]}}\n",
                hex(s),
                fwd.join(", ")
            )
        })
        .collect();
    // RINGWAY_DIFF_DUMP=FILE keeps the cases as the reference reads them, to replay by hand:
    // python3 tests/reference/h11_frames.py < FILE
    if let Ok(path) = std::env::var("RINGWAY_DIFF_DUMP") {
        std::fs::write(path, lines.concat()).unwrap();
    }
    let writer = std::thread::spawn(move || {
        for l in lines {
            stdin.write_all(l.as_bytes()).unwrap();
        }
    });
    let out = BufReader::new(child.stdout.take().unwrap());
    let (mut compared, mut messages, mut unsupported) = (0, 0, 0);
    let mut failures = Vec::new();
    for (i, line) in out.lines().enumerate() {
        let line = line.unwrap();
        let h: serde_json::Value = serde_json::from_str(&line).unwrap();
        let stream = &inputs[i];
        let v = ringway_view(stream);
        let stop = h["stop"].as_str().unwrap();
        if stop.starts_with("unsupported") {
            // h11 does not implement a coding (e.g. gzip before chunked): no verdict.
            unsupported += 1;
            continue;
        }
        compared += 1;
        let theirs: Vec<(String, String, Vec<u8>)> = h["client"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| {
                (
                    m[0].as_str().unwrap().to_string(),
                    m[1].as_str().unwrap().to_string(),
                    (0..m[2].as_str().unwrap().len() / 2)
                        .map(|k| {
                            u8::from_str_radix(&m[2].as_str().unwrap()[2 * k..2 * k + 2], 16)
                                .unwrap()
                        })
                        .collect(),
                )
            })
            .collect();
        let common = v.msgs.len().min(theirs.len());
        let mut why = None;
        if v.msgs[..common] != theirs[..common] {
            why = Some("a request differs".to_string());
        } else if v.msgs.len() > theirs.len() && !matches!(stop, "close" | "paused") {
            why = Some(format!(
                "ringway read {} requests, h11 {} then {stop}",
                v.msgs.len(),
                theirs.len()
            ));
        } else if v.msgs.len() < theirs.len() && v.stop == "incomplete" {
            why = Some(format!(
                "ringway waits for more where h11 read a whole request ({})",
                theirs.len()
            ));
        }
        for (k, f) in h["forwarded"].as_array().unwrap().iter().enumerate() {
            messages += 1;
            // One message, nothing left over; h11 then waits to close (Connection: close), to
            // switch protocols, or for more (an upgrade request answered with our 200).
            let ok = f["count"] == 1
                && f["left"] == 0
                && matches!(f["stop"].as_str(), Some("close" | "paused" | "end"));
            let same = f["msg"][0].as_str() == Some(&v.msgs[k].0)
                && f["msg"][1].as_str() == Some(&v.msgs[k].1);
            if !ok || !same {
                why.get_or_insert(format!("forwarded message {k} reads upstream as {f}"));
            }
        }
        if let Some(why) = why {
            failures.push(format!(
                "case {i}: {why}\n  sent: {:?}\n  ringway: {:?} ({})\n  h11: {:?} ({stop})",
                String::from_utf8_lossy(stream),
                v.msgs
                    .iter()
                    .map(|m| (&m.0, &m.1, m.2.len()))
                    .collect::<Vec<_>>(),
                v.stop,
                theirs
                    .iter()
                    .map(|m| (&m.0, &m.1, m.2.len()))
                    .collect::<Vec<_>>()
            ));
        }
    }
    writer.join().unwrap();
    let _ = child.wait();
    eprintln!(
        "{compared} connections compared ({unsupported} with codings h11 does not implement), {messages} forwarded messages read back, {} disagreements",
        failures.len()
    );
    assert!(compared > cases / 2, "too few cases compared: {compared}");
    assert!(
        failures.is_empty(),
        "{} disagreements; first ones:\n{}",
        failures.len(),
        failures
            .iter()
            .take(5)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
}
