//! limit_conn and limit_req through real processes: per client address, across workers.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;

fn handshake_from(addr: SocketAddr, from: &str, path: &str) -> (u16, Stream) {
    upgrade_from(addr, from.parse().unwrap(), path, Mode::Plain)
}

fn config(listen: SocketAddr, backend: SocketAddr, zones: &str, location: &str) -> String {
    format!(
        "[runtime]\nworkers = 2\n{zones}\n[[upstream]]\nname = \"u\"\nservers = [{{ addr = \"{backend}\" }}]\n[[server]]\nlisten = [\"{listen}\"]\n[[server.location]]\npath = \"/\"\nupstream = \"u\"\n{location}\n"
    )
}

/// The echo backend, and the proxy in front of it with `zones` and `location` (settings of the
/// `/` location, then any locations after it); `None` where io_uring cannot run.
fn limited(name: &str, zones: &str, location: &str) -> Option<(Proc, Proc, SocketAddr)> {
    if !uring_ok() {
        return None;
    }
    let dir = scratch(name);
    let backend = free_addr();
    let echo = echo(&[backend], &dir);
    let listen = free_addr();
    let p = proxy(&config(listen, backend, zones, location), listen, &dir);
    Some((p, echo, listen))
}

#[test]
fn limit_conn_counts_each_address_across_workers_and_gives_back_on_close() {
    let Some((p, _echo, listen)) = limited(
        "limit-conn",
        "[[limit_conn_zone]]\nname = \"perip\"\nkey = \"$binary_remote_addr\"\nsize = \"1m\"",
        "limit_conn = { zone = \"perip\", max = 20 }\n[[server.location]]\npath = \"/strict/\"\nupstream = \"u\"\nlimit_conn = { zone = \"perip\", max = 1, status = 429 }",
    ) else {
        return;
    };
    // Twenty tunnels from one address (both workers accept them); the 21st is refused.
    let mut held: Vec<Stream> = (0..20)
        .map(|i| {
            let (status, t) = handshake_from(listen, "127.0.0.5", "/");
            assert_eq!(status, 101, "tunnel {i}");
            t
        })
        .collect();
    let (status, _) = handshake_from(listen, "127.0.0.5", "/");
    assert_eq!(status, 503);
    // Another address has its own count.
    let (status, other) = handshake_from(listen, "127.0.0.6", "/");
    assert_eq!(status, 101);
    // One closes: its slot comes back (once the session has ended).
    drop(held.pop());
    held.push(upgrade_when_slot_returns(
        listen,
        "127.0.0.5".parse().unwrap(),
        "/",
        Mode::Plain,
    ));
    // A stricter location counts in the same zone, with its own status.
    let (status, _) = handshake_from(listen, "127.0.0.6", "/strict/");
    assert_eq!(status, 429, "127.0.0.6 already holds one");
    p.wait_log("end=limited", 5);
    drop(other);
    drop(held);
}

#[test]
fn limit_req_refuses_past_the_burst_and_delays_within_it() {
    let Some((_p, _echo, listen)) = limited(
        "limit-req",
        "[[limit_req_zone]]\nname = \"hs\"\nsize = \"1m\"\nrate = \"1r/s\"",
        "limit_req = { zone = \"hs\", burst = 3, nodelay = true, status = 429 }\n[[server.location]]\npath = \"/slow/\"\nupstream = \"u\"\nlimit_req = { zone = \"hs\", rate = \"10r/s\", burst = 2 }",
    ) else {
        return;
    };
    // 1r/s, burst 3, nodelay: four handshakes at once pass, the fifth is refused.
    let statuses: Vec<u16> = (0..5)
        .map(|_| handshake_from(listen, "127.0.0.7", "/").0)
        .collect();
    assert_eq!(statuses, [101, 101, 101, 101, 429]);
    // Another address is not limited by the first.
    assert_eq!(handshake_from(listen, "127.0.0.8", "/").0, 101);
    // 10r/s, burst 2, no nodelay: three at once all pass, the later ones held back (nginx's
    // delay: 100 and 200 ms; printed, not asserted: the machine is shared).
    let t = Instant::now();
    let ts: Vec<std::thread::JoinHandle<(u16, Duration)>> = (0..3)
        .map(|_| {
            std::thread::spawn(move || {
                let s = handshake_from(listen, "127.0.0.9", "/slow/x").0;
                (s, t.elapsed())
            })
        })
        .collect();
    let mut got: Vec<(u16, Duration)> = ts.into_iter().map(|h| h.join().unwrap()).collect();
    got.sort_by_key(|g| g.1);
    eprintln!("limit_req delays (10r/s, burst 2): {got:?}");
    assert!(got.iter().all(|g| g.0 == 101), "{got:?}");
}

/// Requests pipelined on one kept-alive connection, the later ones held back by limit_req
/// (burst, no nodelay) while the previous request's upstream socket is still closing, all go
/// up once their delay is over, and are answered in order: the head waiting for its turn is
/// not lost when that socket closes.
#[test]
fn pipelined_requests_delayed_by_limit_req_are_all_answered() {
    let Some((_p, _echo, listen)) = limited(
        "limit-req-pipelined",
        "[[limit_req_zone]]\nname = \"p\"\nsize = \"1m\"\nrate = \"10r/s\"",
        "[[server.location]]\npath = \"/slow/\"\nupstream = \"u\"\nlimit_req = { zone = \"p\", burst = 5 }",
    ) else {
        return;
    };
    let three = b"GET /slow/a HTTP/1.1\r\nHost: h\r\n\r\n\
                  GET /slow/b HTTP/1.1\r\nHost: h\r\n\r\n\
                  GET /slow/c HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n";
    let out = raw_exchange(listen, three, 10);
    let text = String::from_utf8_lossy(&out);
    assert_eq!(text.matches("HTTP/1.1 ").count(), 3, "{text}");
}

/// A location's limits hold for every spelling of its path: `/lr%2fx` is `/lr/x` (nginx
/// decodes `%2F` before matching locations), so it counts in `/lr/`'s limit_req instead of
/// escaping to `/`; and a Host with a trailing dot selects its server (`b.example.` is
/// `b.example`), whose own limits then apply.
#[test]
fn escaped_slashes_and_trailing_dots_do_not_escape_limits() {
    if !uring_ok() {
        return;
    }
    let dir = scratch("limit-escape");
    let backend = free_addr();
    let _echo = echo(&[backend], &dir);
    let listen = free_addr();
    let cfg = format!(
        "[runtime]\nworkers = 2\n[[limit_req_zone]]\nname = \"lr\"\nsize = \"1m\"\nrate = \"1r/m\"\n\
         [[upstream]]\nname = \"u\"\nservers = [{{ addr = \"{backend}\" }}]\n\
         [[server]]\nlisten = [\"{listen}\"]\nserver_name = [\"a.example\"]\n\
         [[server.location]]\npath = \"/\"\nupstream = \"u\"\n\
         [[server.location]]\npath = \"/lr/\"\nupstream = \"u\"\nlimit_req = {{ zone = \"lr\", burst = 0, nodelay = true, status = 429 }}\n\
         [[server]]\nlisten = [\"{listen}\"]\nserver_name = [\"b.example\"]\n\
         [[server.location]]\npath = \"/\"\nupstream = \"u\"\nlimit_req = {{ zone = \"lr\", burst = 0, nodelay = true, status = 429 }}\n"
    );
    let _p = proxy(&cfg, listen, &dir);
    let get = |from: &str, host: &str, path: &str| {
        let mut s = tcp_from(listen, Some(from.parse().unwrap())).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        use std::io::{Read, Write};
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .unwrap();
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        status_of(&out)
    };
    // One request a minute in /lr/, however the path is spelled.
    assert_eq!(get("127.0.0.21", "a.example", "/lr/headers"), 200);
    for path in [
        "/lr/health",
        "/lr%2fhealth",
        "/lr%2Fhealth",
        "/x/..%2flr/health",
        "//lr//health",
    ] {
        assert_eq!(get("127.0.0.21", "a.example", path), 429, "{path}");
    }
    // `/` itself is not limited.
    assert_eq!(get("127.0.0.21", "a.example", "/health"), 200);
    assert_eq!(get("127.0.0.21", "a.example", "/health"), 200);
    // b.example limits everything; b.example. is the same server.
    assert_eq!(get("127.0.0.22", "b.example", "/health"), 200);
    assert_eq!(get("127.0.0.22", "b.example.", "/health"), 429);
    assert_eq!(get("127.0.0.22", "B.EXAMPLE.:80", "/health"), 429);
    assert_eq!(get("127.0.0.23", "b.example.", "/health"), 200);
    assert_eq!(get("127.0.0.23", "b.example", "/health"), 429);
}

/// `max_frame_size`: frames up to it pass both ways; a larger one from the client ends the
/// tunnel with Close 1009 to the client (tungstenite reads it) and 1001 to the upstream; a
/// larger one from the upstream ends it with Close 1001 to the client. Logged with its side.
#[test]
fn max_frame_size_ends_a_tunnel_with_1009() {
    if !uring_ok() {
        return;
    }
    let st = stack("max-frame", "max_frame_size = \"1k\"", "", "");
    let read_close = |ws: &mut Ws| -> Option<u16> {
        loop {
            match ws.read() {
                Ok(tungstenite::Message::Close(f)) => return f.map(|f| u16::from(f.code)),
                Ok(_) => continue,
                Err(e) => panic!("no Close frame: {e}"),
            }
        }
    };
    // From the client.
    let mut ws = st.ws("/ws/");
    ws_echo(&mut ws, vec![1; 1024]);
    ws.send(tungstenite::Message::binary(vec![2u8; 1025]))
        .unwrap();
    assert_eq!(read_close(&mut ws), Some(1009));
    st.proxy.wait_log("ws end=frame-too-large\n", 10);
    // From the upstream: /push sends 64 KiB frames.
    let mut ws = st.ws("/push?bytes=100000");
    assert_eq!(read_close(&mut ws), Some(1001));
    st.proxy.wait_log("end=frame-too-large:upstream", 10);
    // Other tunnels go on.
    let mut ws = st.ws("/ws/");
    ws_echo(&mut ws, b"still fine".to_vec());
}
