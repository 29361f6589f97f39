//! A binary upgrade that keeps the tunnels (`ringway run --upgrade`, issue 26): real processes,
//! real sockets, WebSocket clients that are not ours (tungstenite) and raw frames.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::*;
use tungstenite::Message;

/// A proxy with an upgrade socket and an admin endpoint in front of an echo backend.
struct Rig {
    dir: PathBuf,
    listen: SocketAddr,
    admin: SocketAddr,
    cfg: PathBuf,
    _echo: Proc,
    proxy: Proc,
}

fn rig(name: &str, extra_server: &str, runtime: &str) -> Rig {
    rig_full(name, "", extra_server, runtime, &[], &|t| t)
}

/// The same, the first proxy process started with `env`.
fn rig_env(name: &str, extra_server: &str, runtime: &str, env: &[(&str, &str)]) -> Rig {
    rig_full(name, "", extra_server, runtime, env, &|t| t)
}

/// The same, with `extra_location` in the location, and the configuration's text passed
/// through `tweak`.
fn rig_full(
    name: &str,
    extra_location: &str,
    extra_server: &str,
    runtime: &str,
    env: &[(&str, &str)],
    tweak: &dyn Fn(String) -> String,
) -> Rig {
    let dir = scratch(name);
    let backend = free_addr();
    let echo = echo(&[backend], &dir);
    let (listen, admin) = (free_addr(), free_addr());
    let sock = dir.join("upgrade.sock");
    let text = config(
        listen,
        &[backend],
        extra_location,
        extra_server,
        &format!(
            "shutdown_grace = \"20s\"\ndrain_spread = \"1s\"\nupgrade_socket = \"{}\"\n{runtime}\n[admin]\nlisten = \"{admin}\"",
            sock.display()
        ),
    );
    let path = dir.join("ringway.toml");
    std::fs::write(&path, tweak(text)).unwrap();
    let mut proxy = spawn_env(
        &["run", "--config", path.to_str().unwrap()],
        env,
        &dir,
        "proxy",
    );
    wait_port(listen, &mut proxy);
    Rig {
        cfg: dir.join("ringway.toml"),
        dir,
        listen,
        admin,
        _echo: echo,
        proxy,
    }
}

impl Rig {
    /// The configuration file with `from` replaced by `to` (for the next process).
    fn edit_config(&self, from: &str, to: &str) {
        let text = std::fs::read_to_string(&self.cfg).unwrap();
        assert!(text.contains(from), "{from:?} not in the configuration");
        std::fs::write(&self.cfg, text.replace(from, to)).unwrap();
    }

    /// `ringway run --upgrade` (with `env`): the new process, once the old one has exited.
    fn upgrade(&mut self, round: usize, env: &[(&str, &str)]) {
        let new = spawn_env(
            &["run", "--config", self.cfg.to_str().unwrap(), "--upgrade"],
            env,
            &self.dir,
            &format!("proxy-{round}"),
        );
        new.wait_log("upgrade: serving on the listening sockets of pid", 20);
        let code = wait_exit(&mut self.proxy, 30);
        assert!(code.success(), "the old process exits 0: {code}");
        // The old one has exited (and been waited for): dropping it signals nothing.
        drop(std::mem::replace(&mut self.proxy, new));
    }
}

/// FNV-1a, the messages' checksum.
fn fnv(b: &[u8]) -> u64 {
    b.iter().fold(0xcbf29ce484222325u64, |h, x| {
        (h ^ u64::from(*x)).wrapping_mul(0x100000001b3)
    })
}

/// Message `seq` of client `i`: its number, its client, a length that varies, bytes that
/// depend on all three, and their checksum last.
fn message(i: u32, seq: u64) -> Vec<u8> {
    let len = 16 + ((seq * 7919 + u64::from(i) * 104729) % 6000) as usize;
    message_of(i, seq, len)
}

/// The same, `len` bytes long (before its checksum).
fn message_of(i: u32, seq: u64, len: usize) -> Vec<u8> {
    let mut m = Vec::with_capacity(len + 20);
    m.extend_from_slice(&seq.to_be_bytes());
    m.extend_from_slice(&i.to_be_bytes());
    m.extend((0..len).map(|k| (k as u64 ^ seq ^ u64::from(i)) as u8));
    let h = fnv(&m);
    m.extend_from_slice(&h.to_be_bytes());
    m
}

#[derive(Debug, Default)]
struct Talk {
    sent: u64,
    echoed: u64,
    /// TLS key updates this client asked for (and saw answered: the echoes after them).
    key_updates: u32,
    error: Option<String>,
}

/// How a talker reaches the proxy.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    Plain,
    Tls13,
    Tls12,
}

/// Client `i`: sends checksummed, numbered binary messages without waiting for their echoes
/// (so some are always in flight), and checks every echo against what it sent, in order,
/// until `stop`; then closes and expects the close handshake to complete. Over TLS 1.3 it
/// moves to new keys, and asks the proxy to, each time `round` moves (after each upgrade).
fn talker(
    i: u32,
    addr: SocketAddr,
    kind: Kind,
    stop: Arc<AtomicBool>,
    round: Arc<AtomicUsize>,
    ready: Arc<AtomicUsize>,
) -> Talk {
    let mut t = Talk::default();
    let mut ws = match kind {
        Kind::Plain => ws_connect(addr, "/ws/"),
        Kind::Tls13 => ws_connect_mode(addr, "/ws/", Mode::Tls),
        Kind::Tls12 => ws_connect_tls_with(addr, "/ws/", pki().client12.clone()),
    };
    if let Stream::Tls(s) = ws.get_ref() {
        let want = if kind == Kind::Tls12 {
            rustls::ProtocolVersion::TLSv1_2
        } else {
            rustls::ProtocolVersion::TLSv1_3
        };
        assert_eq!(s.conn.protocol_version(), Some(want));
    }
    ws.get_ref()
        .set_read_timeout(Some(Duration::from_millis(10)))
        .unwrap();
    ready.fetch_add(1, Ordering::Relaxed);
    let t0 = Instant::now();
    let mut seen = round.load(Ordering::Relaxed);
    loop {
        let now = round.load(Ordering::Relaxed);
        if now != seen && kind == Kind::Tls13 {
            seen = now;
            if let Stream::Tls(s) = ws.get_mut()
                && let Err(e) = s.conn.refresh_traffic_keys()
            {
                t.error = Some(format!("key update: {e}"));
                return t;
            }
            t.key_updates += 1;
        }
        let stopping = stop.load(Ordering::Relaxed);
        if !stopping && t.sent < t.echoed + 8 {
            t.sent += 1;
            if let Err(e) = ws.send(Message::binary(message(i, t.sent))) {
                t.error = Some(format!("send {}: {e}", t.sent));
                return t;
            }
        }
        if stopping && t.echoed == t.sent {
            let _ = ws.close(None);
            loop {
                match ws.read() {
                    Ok(_) => {}
                    Err(tungstenite::Error::ConnectionClosed) => return t,
                    Err(tungstenite::Error::Io(e))
                        if matches!(
                            e.kind(),
                            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                        ) => {}
                    Err(e) => {
                        t.error = Some(format!("closing: {e}"));
                        return t;
                    }
                }
            }
        }
        match ws.read() {
            Ok(Message::Binary(b)) => {
                let want = message(i, t.echoed + 1);
                if b[..] != want[..] {
                    let seq = b
                        .get(..8)
                        .map(|s| u64::from_be_bytes(s.try_into().unwrap()));
                    t.error = Some(format!(
                        "echo {} is not message {} (seq {seq:?}, {} bytes)",
                        t.echoed + 1,
                        t.echoed + 1,
                        b.len()
                    ));
                    return t;
                }
                t.echoed += 1;
            }
            Ok(Message::Close(f)) => {
                t.error = Some(format!("closed by the proxy: {f:?}"));
                return t;
            }
            Ok(_) => {}
            Err(tungstenite::Error::Io(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => {
                t.error = Some(format!("read after {} echoes: {e}", t.echoed));
                return t;
            }
        }
        if t0.elapsed() > Duration::from_secs(120) {
            t.error = Some(format!("still open: sent {} echoed {}", t.sent, t.echoed));
            return t;
        }
    }
}

fn metric(admin: SocketAddr, name: &str) -> u64 {
    let out = admin_get(admin, "/metrics");
    String::from_utf8_lossy(&out)
        .lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// 1,000 tunnels — 500 `ws://`, 250 `wss://` over TLS 1.3 and 250 over TLS 1.2 — chat with
/// numbered, checksummed messages in both directions through three upgrades in a row: none
/// is closed, no message is lost, duplicated, altered or reordered, each TLS 1.3 client moves
/// to new keys after each upgrade (asking the proxy to move too) and talks on, and each new
/// process says it took them all over (and counts them in `/metrics`).
#[test]
fn tunnels_live_through_three_upgrades() {
    if !uring_ok() {
        return;
    }
    let tls_listen = free_addr();
    let second = format!(
        "\n[[server]]\nlisten = [\"{tls_listen}\"]\n{}\n[[server.location]]\npath = \"/\"\nupstream = \"backend\"\n",
        tls_line()
    );
    let mut rig = rig_full("handover-chat", &second, "", "", &[], &|t| t);
    wait_port(tls_listen, &mut rig.proxy);
    let stop = Arc::new(AtomicBool::new(false));
    let round = Arc::new(AtomicUsize::new(0));
    let ready = Arc::new(AtomicUsize::new(0));
    let n = 1000;
    let kind = |i: u32| match i % 4 {
        0 | 2 => Kind::Plain,
        1 => Kind::Tls13,
        _ => Kind::Tls12,
    };
    let talkers: Vec<_> = (0..n)
        .map(|i| {
            let (stop, round, ready) = (stop.clone(), round.clone(), ready.clone());
            let addr = if kind(i) == Kind::Plain {
                rig.listen
            } else {
                tls_listen
            };
            std::thread::Builder::new()
                .stack_size(256 << 10)
                .spawn(move || talker(i, addr, kind(i), stop, round, ready))
                .unwrap()
        })
        .collect();
    // Every WebSocket established (a connection still in its handshake when the upgrade
    // comes finishes it in the old process and is drained there, as before).
    let t0 = Instant::now();
    while ready.load(Ordering::Relaxed) < n as usize {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "talkers not connected"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    wait_active_within(rig.admin, n as u64, 10);
    std::thread::sleep(Duration::from_millis(300));
    for r in 1..=3 {
        rig.upgrade(r, &[]);
        round.store(r, Ordering::Relaxed);
        let round = r;
        rig.proxy
            .wait_log(&format!("took over {n} tunnel(s) from pid"), 10);
        // The new process serves the tunnels: it counts them, and they go on.
        wait_active_within(rig.admin, n as u64, 30);
        assert_eq!(
            metric(rig.admin, "ringway_tunnels_taken_over_total"),
            n as u64,
            "round {round}"
        );
        assert_eq!(
            admin_status(rig.admin)["upgrade"]["tunnels_taken_over"].as_u64(),
            Some(n as u64)
        );
        std::thread::sleep(Duration::from_millis(400));
    }
    stop.store(true, Ordering::Relaxed);
    let talks: Vec<Talk> = talkers.into_iter().map(|h| h.join().unwrap()).collect();
    let bad: Vec<_> = talks.iter().filter(|t| t.error.is_some()).collect();
    assert!(
        bad.is_empty(),
        "{} of {n} talkers failed: {:?}",
        bad.len(),
        &bad[..bad.len().min(3)]
    );
    let echoed: u64 = talks.iter().map(|t| t.echoed).sum();
    assert!(
        talks.iter().all(|t| t.echoed > 20),
        "every tunnel carried messages across the upgrades ({echoed} in all)"
    );
    for (i, t) in talks.iter().enumerate() {
        if kind(i as u32) == Kind::Tls13 {
            assert_eq!(
                t.key_updates, 3,
                "talker {i}: a key update after each upgrade"
            );
        }
    }
    // Each tunnel's log line, at its end in the last process, counts what it carried in all
    // four processes.
    let log = rig.proxy.wait_log("msgs=", 10);
    let line = log
        .lines()
        .find(|l| l.contains("msgs=") && l.contains("status=101"))
        .expect("a tunnel's line");
    let msgs: u64 = line
        .split("msgs=")
        .nth(1)
        .and_then(|m| m.split('/').next())
        .and_then(|m| m.parse().ok())
        .unwrap();
    assert!(msgs > 20, "{line}");
}

/// Raw frames: a tunnel stopped in the middle of a fragmented message and one in the middle of
/// a frame's payload move, and their messages arrive whole after the upgrade.
#[test]
fn a_tunnel_mid_message_and_mid_frame_moves() {
    if !uring_ok() {
        return;
    }
    let mut rig = rig("handover-mid", "", "");
    let mut frag = RawWs::connect(rig.listen, "/ws/", "");
    let mut half = RawWs::connect(rig.listen, "/ws/", "");
    // The first fragment of a text message.
    frag.send_frame(false, 0x1, b"hello ");
    assert_eq!(frag.read_frame(), (false, 0x1, b"hello ".to_vec()));
    // A binary frame's header and half of its payload.
    let payload: Vec<u8> = (0..4000u32).map(|k| (k % 251) as u8).collect();
    let whole = ws_frame_masked(true, 0x2, &payload, [1, 2, 3, 4]);
    let cut = 2 + 2 + 4 + 2000;
    half.write_raw(&whole[..cut]);
    std::thread::sleep(Duration::from_millis(300));
    rig.upgrade(1, &[]);
    rig.proxy.wait_log("took over 2 tunnel(s) from pid", 10);
    frag.send_frame(true, 0x0, b"world");
    assert_eq!(frag.read_frame(), (true, 0x0, b"world".to_vec()));
    half.write_raw(&whole[cut..]);
    assert_eq!(half.read_frame(), (true, 0x2, payload));
    // Both still work as tunnels.
    frag.send_frame(true, 0x1, b"again");
    assert_eq!(frag.read_frame(), (true, 0x1, b"again".to_vec()));
    frag.close(1000);
    half.close(1000);
    drop((frag, half));
    // (Each tunnel's line comes as it ends: wait for the fragmented one's, whose message
    // counts once.)
    rig.proxy.wait_log("msgs=2/2 close_client=1000", 10);
}

/// A slow reader: the client stops reading while it sends, so the proxy's send toward it is
/// stuck and more waits behind it, and the stream toward the backend backs up too. The tunnel
/// moves with what waits to be sent (the stuck send is cancelled, its rest goes along), and
/// once the client reads again every echo arrives, whole and in order.
#[test]
fn a_slow_reader_moves_with_what_waits_for_it() {
    if !uring_ok() {
        return;
    }
    let mut rig = rig("handover-slow", "", "");
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    sock.connect(&rig.listen.into()).unwrap();
    let mut ws = RawWs::over(sock.into(), "/ws/");
    let mut writer = ws.s.try_clone().unwrap();
    // 12 MB: more than the kernel's socket buffers on the way hold, so the proxy's own queue
    // toward the client fills (messages under splice_min: they go through buffers).
    let n = 200u64;
    let sending = std::thread::spawn(move || {
        for seq in 1..=n {
            let f = ws_frame_masked(true, 0x2, &message_of(7, seq, 60_000), [5, 6, 7, 8]);
            writer.write_all(&f).unwrap();
        }
    });
    // Everything backs up: the client reads nothing for a while.
    std::thread::sleep(Duration::from_millis(800));
    let old_log = rig.proxy.log.clone();
    rig.upgrade(1, &[]);
    rig.proxy.wait_log("took over 1 tunnel(s) from pid", 10);
    let text = std::fs::read_to_string(old_log).unwrap();
    let waiting: u64 = text
        .split("handed 1 tunnel(s) to pid ")
        .nth(1)
        .and_then(|t| t.split('(').nth(1))
        .and_then(|t| t.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{text}"));
    assert!(
        waiting > 0,
        "bytes waited to be sent and went with the tunnel: {text}"
    );
    for seq in 1..=n {
        let (fin, op, p) = ws.read_frame();
        assert!(fin && op == 0x2, "frame {seq}");
        assert!(
            p == message_of(7, seq, 60_000),
            "echo {seq} is not message {seq} ({} bytes)",
            p.len()
        );
    }
    sending.join().unwrap();
    ws.close(1000);
}

/// The old process dies in the middle of handing its tunnels over (SIGKILL while its batches
/// go out, stretched by a test knob to 20 ms apart): the new process goes on serving the
/// listeners and every tunnel it took over; the rest died with the old process, and their
/// clients see the connection end (none is left hanging).
#[test]
fn an_old_process_that_dies_midway_leaves_the_new_one_serving() {
    if !uring_ok() {
        return;
    }
    let mut rig = rig_env(
        "handover-killed",
        "",
        "",
        &[("RINGWAY_HANDOVER_PAUSE_MS", "20")],
    );
    let mut clients: Vec<Ws> = (0..1500).map(|_| ws_connect(rig.listen, "/ws/")).collect();
    wait_active(rig.admin, 1500);
    let new = spawn(
        &["run", "--config", rig.cfg.to_str().unwrap(), "--upgrade"],
        &rig.dir,
        "proxy-1",
    );
    new.wait_log("upgrade: serving on the listening sockets of pid", 20);
    // 1,500 tunnels are 47 batches, about a second at this pace: midway.
    std::thread::sleep(Duration::from_millis(400));
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(rig.proxy.pid() as i32),
        nix::sys::signal::Signal::SIGKILL,
    );
    let _ = wait_exit(&mut rig.proxy, 10);
    drop(std::mem::replace(&mut rig.proxy, new));
    std::thread::sleep(Duration::from_millis(500));
    // Every client learns where it stands: its tunnel echoes, or it has ended.
    let (mut alive, mut ended) = (0, 0);
    for (i, c) in clients.iter_mut().enumerate() {
        c.get_ref()
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let m = format!("after {i}");
        match c.send(Message::text(m.clone())).and_then(|_| c.read()) {
            Ok(Message::Text(t)) if t.as_str() == m => alive += 1,
            Ok(other) => panic!("client {i}: {other:?}"),
            Err(tungstenite::Error::Io(e)) if e.kind() == std::io::ErrorKind::WouldBlock => {
                panic!("client {i} hangs")
            }
            Err(_) => ended += 1,
        }
    }
    let taken = metric(rig.admin, "ringway_tunnels_taken_over_total");
    eprintln!("{alive} tunnels alive, {ended} ended; the new process took over {taken}");
    assert_eq!(alive as u64, taken, "every tunnel taken over is served");
    assert!(
        alive > 0 && ended > 0,
        "the old process died midway: {alive} / {ended}"
    );
    // And it serves new connections.
    let mut fresh = ws_connect(rig.listen, "/ws/");
    fresh.send(Message::text("new")).unwrap();
    assert!(matches!(fresh.read().unwrap(), Message::Text(_)));
}

/// A tunnel taken over is the new process's own: its location's heartbeat pings the client
/// from there, the client's Pongs are taken as answers (the tunnel outlives the heartbeat's
/// timeout many times over), and it still echoes.
#[test]
fn a_tunnel_taken_over_gets_the_new_process_heartbeats() {
    if !uring_ok() {
        return;
    }
    let mut rig = rig_full(
        "handover-heartbeat",
        "heartbeat = { interval = \"300ms\", timeout = \"500ms\" }",
        "",
        "",
        &[],
        &|t| t,
    );
    let mut ws = ws_connect(rig.listen, "/ws/");
    ws.send(Message::text("before")).unwrap();
    assert!(matches!(ws.read().unwrap(), Message::Text(_)));
    rig.upgrade(1, &[]);
    rig.proxy.wait_log("took over 1 tunnel(s) from pid", 10);
    ws.get_ref()
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let (mut pings, t) = (0, Instant::now());
    while t.elapsed() < Duration::from_secs(3) {
        match ws.read() {
            Ok(Message::Ping(_)) => {
                pings += 1;
                // tungstenite queues the Pong; it goes with the next flush.
                let _ = ws.flush();
            }
            Ok(Message::Close(f)) => panic!("closed: {f:?}"),
            Ok(_) => {}
            Err(tungstenite::Error::Io(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                let _ = ws.flush();
            }
            Err(e) => panic!("read: {e}"),
        }
    }
    assert!(pings >= 3, "pings from the new process: {pings}");
    ws.get_ref()
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    ws.send(Message::text("after")).unwrap();
    loop {
        match ws.read().unwrap() {
            Message::Text(t) => {
                assert_eq!(t.as_str(), "after");
                break;
            }
            Message::Ping(_) => {}
            other => panic!("{other:?}"),
        }
    }
}

/// A new process that reads another description version takes no tunnel: the old one drains
/// every tunnel with its Close 1012, as an upgrade without tunnel handover does.
#[test]
fn another_description_version_drains_every_tunnel() {
    if !uring_ok() {
        return;
    }
    let mut rig = rig("handover-version", "", "");
    let mut clients: Vec<Ws> = (0..10).map(|_| ws_connect(rig.listen, "/ws/")).collect();
    for (i, c) in clients.iter_mut().enumerate() {
        c.send(Message::text(format!("{i}"))).unwrap();
        assert!(matches!(c.read().unwrap(), Message::Text(_)));
    }
    rig.upgrade(1, &[("RINGWAY_HANDOVER_VERSION", "99")]);
    rig.proxy.wait_log("keeps its tunnels and drains them", 10);
    for c in clients.iter_mut() {
        expect_drain_close(c);
    }
}

/// The new process cannot take a tunnel (its configuration has no such location): the tunnel
/// is not dropped in silence — the client gets the drain's Close 1012 from the new process.
#[test]
fn a_tunnel_the_new_process_cannot_take_gets_its_close() {
    if !uring_ok() {
        return;
    }
    let mut rig = rig("handover-refused", "", "");
    let mut c = ws_connect(rig.listen, "/ws/");
    c.send(Message::text("x")).unwrap();
    assert!(matches!(c.read().unwrap(), Message::Text(_)));
    rig.edit_config("path = \"/\"", "path = \"/api/\"");
    rig.upgrade(1, &[]);
    rig.proxy.wait_log("is not taken (no location", 10);
    expect_drain_close(&mut c);
}

/// A `wss://` tunnel whose client had sent part of a TLS record when the upgrade came: the
/// part the old process read goes with the tunnel, the rest arrives at the new one, and the
/// record opens whole there.
#[test]
fn a_tls_record_cut_by_the_upgrade_opens_whole_in_the_new_process() {
    if !uring_ok() {
        return;
    }
    let mut rig = rig("handover-tls-cut", &tls_line(), "");
    let mut c = common::RawWs::connect_mode(rig.listen, "/ws/", "", Mode::Tls);
    c.send_frame(true, 0, 0x1, b"before");
    assert_eq!(c.read_frame(), (true, 0, 0x1, b"before".to_vec()));
    let payload: Vec<u8> = (0..6000u32).map(|k| (k % 249) as u8).collect();
    let frame = ws_frame_masked(true, 0x2, &payload, [9, 8, 7, 6]);
    let Stream::Tls(t) = &mut c.s else {
        unreachable!("a TLS stream")
    };
    t.conn.writer().write_all(&frame).unwrap();
    let mut wire = Vec::new();
    while t.conn.wants_write() {
        t.conn.write_tls(&mut wire).unwrap();
    }
    assert!(wire.len() > frame.len(), "one record");
    let cut = wire.len() / 2;
    t.sock.write_all(&wire[..cut]).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    rig.upgrade(1, &[]);
    rig.proxy.wait_log("took over 1 tunnel(s) from pid", 10);
    t.sock.write_all(&wire[cut..]).unwrap();
    assert_eq!(c.read_frame(), (true, 0, 0x2, payload));
    c.send_frame(true, 0, 0x1, b"after");
    assert_eq!(c.read_frame(), (true, 0, 0x1, b"after".to_vec()));
}

/// A tunnel over TLS toward its upstream (another ringway terminating TLS in front of the
/// echo) moves too: ringway's client end of that TLS goes on in the new process, through two
/// upgrades.
#[test]
fn a_tunnel_over_tls_to_its_upstream_moves() {
    if !uring_ok() {
        return;
    }
    let inner = stack_mode(Mode::Tls, "handover-inner", "", "", "");
    let ca = pki().ca.display().to_string();
    let to_inner = move |t: String| {
        let start = t.find("servers = [").unwrap();
        let end = start + t[start..].find('\n').unwrap();
        format!(
            "{}servers = [{{ addr = \"{}\" }}]\ntls = {{ ca = \"{ca}\", sni = \"localhost\" }}{}",
            &t[..start],
            inner.listen,
            &t[end..]
        )
    };
    let mut rig = rig_full("handover-tls-up", "", "", "", &[], &to_inner);
    let mut clients: Vec<Ws> = (0..20).map(|_| ws_connect(rig.listen, "/ws/")).collect();
    for (i, c) in clients.iter_mut().enumerate() {
        ws_echo(c, format!("before {i}").into_bytes());
    }
    for round in 1..=2 {
        rig.upgrade(round, &[]);
        rig.proxy.wait_log("took over 20 tunnel(s) from pid", 10);
        for (i, c) in clients.iter_mut().enumerate() {
            ws_echo(c, vec![i as u8; 20_000 + i]);
        }
    }
    for c in clients.iter_mut() {
        c.close(None).unwrap();
    }
}

/// The next frame on `c`, within 10 s, is the drain's Close (1012).
fn expect_drain_close(c: &mut Ws) {
    c.get_ref()
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    match c.read() {
        Ok(Message::Close(Some(f))) => assert_eq!(u16::from(f.code), 1012),
        other => panic!("expected the drain's Close 1012, got {other:?}"),
    }
}

/// A client's side of a WebSocket, frame by frame.
struct RawWs {
    s: TcpStream,
}

impl RawWs {
    fn connect(addr: SocketAddr, path: &str, extra: &str) -> RawWs {
        RawWs::upgrade(TcpStream::connect(addr).unwrap(), path, extra)
    }

    /// The upgrade over a socket already connected.
    fn over(s: TcpStream, path: &str) -> RawWs {
        RawWs::upgrade(s, path, "")
    }

    fn upgrade(mut s: TcpStream, path: &str, extra: &str) -> RawWs {
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
        )
        .unwrap();
        let mut head = Vec::new();
        let mut b = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            s.read_exact(&mut b).unwrap();
            head.push(b[0]);
        }
        assert!(
            head.starts_with(b"HTTP/1.1 101"),
            "{}",
            String::from_utf8_lossy(&head)
        );
        RawWs { s }
    }

    fn write_raw(&mut self, b: &[u8]) {
        self.s.write_all(b).unwrap();
    }

    fn send_frame(&mut self, fin: bool, op: u8, payload: &[u8]) {
        let f = ws_frame_masked(fin, op, payload, [9, 8, 7, 6]);
        self.write_raw(&f);
    }

    fn read_frame(&mut self) -> (bool, u8, Vec<u8>) {
        let mut h = [0u8; 2];
        self.s.read_exact(&mut h).unwrap();
        let mut len = u64::from(h[1] & 0x7f);
        if len == 126 {
            let mut l = [0u8; 2];
            self.s.read_exact(&mut l).unwrap();
            len = u64::from(u16::from_be_bytes(l));
        } else if len == 127 {
            let mut l = [0u8; 8];
            self.s.read_exact(&mut l).unwrap();
            len = u64::from_be_bytes(l);
        }
        let mut p = vec![0u8; len as usize];
        self.s.read_exact(&mut p).unwrap();
        (h[0] & 0x80 != 0, h[0] & 0x0f, p)
    }

    fn close(&mut self, code: u16) {
        self.send_frame(true, 0x8, &code.to_be_bytes());
        let _ = self.read_frame();
    }
}

/// A frame from a client: masked with `mask`.
fn ws_frame_masked(fin: bool, op: u8, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
    let mut f = vec![(u8::from(fin) << 7) | op];
    let n = payload.len();
    if n < 126 {
        f.push(0x80 | n as u8);
    } else if n < 65536 {
        f.push(0x80 | 126);
        f.extend_from_slice(&(n as u16).to_be_bytes());
    } else {
        f.push(0x80 | 127);
        f.extend_from_slice(&(n as u64).to_be_bytes());
    }
    f.extend_from_slice(&mask);
    f.extend(payload.iter().enumerate().map(|(k, b)| b ^ mask[k % 4]));
    f
}

/// A `wss://` tunnel the new process cannot take (its configuration has no such location):
/// its client gets the drain's Close 1012 from the new process, sealed under the tunnel's own
/// TLS records, and then close_notify: the client's TLS reads both, and sees a clean end.
#[test]
fn a_wss_tunnel_the_new_process_cannot_take_gets_its_close_over_tls() {
    if !uring_ok() {
        return;
    }
    let mut rig = rig("handover-refused-tls", &tls_line(), "");
    let mut c = ws_connect_mode(rig.listen, "/ws/", Mode::Tls);
    c.send(Message::text("x")).unwrap();
    assert!(matches!(c.read().unwrap(), Message::Text(_)));
    rig.edit_config("path = \"/\"", "path = \"/api/\"");
    rig.upgrade(1, &[]);
    rig.proxy.wait_log("is not taken (no location", 10);
    expect_drain_close(&mut c);
    // After the Close, the TLS stream ends with close_notify (a truncated stream would be an
    // error here, not the end).
    let Stream::Tls(t) = c.get_mut() else {
        unreachable!("a TLS stream")
    };
    let mut rest = Vec::new();
    let n = t.read_to_end(&mut rest);
    assert!(n.is_ok(), "the TLS stream ended with close_notify: {n:?}");
}

/// A TLS connection whose handshake ran while `runtime.upgrade_tunnels` was off kept no record
/// keys: when a later upgrade (with it on) takes the tunnels, that one stays in the old process
/// and gets the drain's Close, and the old process says why.
#[test]
fn a_tls_tunnel_made_without_kept_keys_stays_and_is_drained() {
    if !uring_ok() {
        return;
    }
    let mut rig = rig(
        "handover-tls-unkept",
        &tls_line(),
        "upgrade_tunnels = false",
    );
    let mut c = ws_connect_mode(rig.listen, "/ws/", Mode::Tls);
    c.send(Message::text("x")).unwrap();
    assert!(matches!(c.read().unwrap(), Message::Text(_)));
    rig.edit_config("upgrade_tunnels = false", "upgrade_tunnels = true");
    let old_log = rig.proxy.log.clone();
    rig.upgrade(1, &[]);
    expect_drain_close(&mut c);
    let text = std::fs::read_to_string(old_log).unwrap();
    assert!(
        text.contains("handed 0 tunnel(s)")
            && text.contains("1 stay here and get the drain's Close (tls 1)"),
        "{text}"
    );
}

/// One HTTP/2 chat client (`tests/h2/chat.py`), its files in `dir`.
fn h2_chat(
    addr: SocketAddr,
    dir: PathBuf,
    tls: bool,
    streams: u32,
) -> std::thread::JoinHandle<serde_json::Value> {
    h2_chat_with(addr, dir, tls, streams, &[])
}

/// The same, with more of its options.
fn h2_chat_with(
    addr: SocketAddr,
    dir: PathBuf,
    tls: bool,
    streams: u32,
    more: &[&str],
) -> std::thread::JoinHandle<serde_json::Value> {
    std::fs::create_dir_all(&dir).unwrap();
    let mut args = vec![
        addr.ip().to_string(),
        addr.port().to_string(),
        dir.to_str().unwrap().to_string(),
        "--streams".into(),
        streams.to_string(),
        "--inflight".into(),
        "4".into(),
        "--seconds".into(),
        "50".into(),
    ];
    if tls {
        args.push("--tls".into());
    }
    args.extend(more.iter().map(|s| s.to_string()));
    std::thread::spawn(move || common::h2::run_py("chat.py", &args))
}

/// What a chat client's streams have had echoed so far.
fn h2_progress(dir: &std::path::Path) -> Vec<u64> {
    let text = std::fs::read_to_string(dir.join("progress")).unwrap_or_default();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
    v.as_object()
        .map(|o| o.values().filter_map(|x| x.as_u64()).collect())
        .unwrap_or_default()
}

/// WebSockets over HTTP/2 (RFC 8441) move too: one connection over TLS (ALPN h2) and one h2c,
/// six WebSockets each, chatting with numbered, checksummed messages (up to 20 KB, past a DATA
/// frame) through three upgrades in a row. Each connection goes whole with the inner sessions
/// of its streams: the client sees no GOAWAY, no reset, no Close it did not ask for, and no
/// message lost, duplicated, altered or reordered; every stream's echoes go on after each
/// upgrade, in the new process, which counts the connections and their streams.
#[test]
fn http2_websockets_live_through_three_upgrades() {
    use common::h2::python_h2;
    if !uring_ok() || !python_h2() {
        return;
    }
    let tls_listen = free_addr();
    let extra = format!(
        "http2 = true\n[[server.location]]\npath = \"/\"\nupstream = \"backend\"\n\n[[server]]\nlisten = [\"{tls_listen}\"]\n{}\nhttp2 = true\n",
        tls_line()
    );
    let mut rig = rig_full("handover-h2", "", &extra, "", &[], &|t| t);
    wait_port(tls_listen, &mut rig.proxy);
    let (per, conns) = (6u32, 2u64);
    let dirs = [rig.dir.join("chat-tls"), rig.dir.join("chat-h2c")];
    let clients = [
        h2_chat(tls_listen, dirs[0].clone(), true, per),
        h2_chat(rig.listen, dirs[1].clone(), false, per),
    ];
    let t0 = Instant::now();
    while !dirs.iter().all(|d| d.join("ready").exists()) {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "chat clients not ready"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let streams = conns * u64::from(per);
    for r in 1..=3 {
        let before: Vec<Vec<u64>> = dirs.iter().map(|d| h2_progress(d)).collect();
        rig.upgrade(r, &[]);
        rig.proxy
            .wait_log(&format!("took over {streams} tunnel(s) from pid"), 10);
        rig.proxy
            .wait_log(&format!("({conns} HTTP/2 connection(s) with them)"), 10);
        // Every stream talks on, in the new process.
        let t = Instant::now();
        loop {
            let now: Vec<Vec<u64>> = dirs.iter().map(|d| h2_progress(d)).collect();
            let on = now
                .iter()
                .zip(&before)
                .all(|(n, b)| n.len() == per as usize && n.iter().zip(b).all(|(x, y)| *x >= y + 5));
            if on {
                break;
            }
            assert!(
                t.elapsed() < Duration::from_secs(15),
                "round {r}: streams stopped: before {before:?}, now {now:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        assert_eq!(
            metric(rig.admin, "ringway_tunnels_taken_over_total"),
            streams,
            "round {r}"
        );
        assert_eq!(metric(rig.admin, "ringway_http2_connections_active"), conns);
        assert_eq!(
            metric(rig.admin, "ringway_http2_stream_sessions_active"),
            streams
        );
    }
    for d in &dirs {
        std::fs::write(d.join("stop"), "1").unwrap();
    }
    for (c, d) in clients.into_iter().zip(&dirs) {
        let r = c.join().unwrap();
        assert_eq!(
            r["unexpected"],
            serde_json::json!([]),
            "{}: {r}",
            d.display()
        );
        let s = r["streams"].as_object().unwrap();
        assert_eq!(s.len(), per as usize, "{r}");
        for (id, s) in s {
            assert_eq!(s["status"], 200, "stream {id}: {r}");
            assert_eq!(s["close_code"], 1000, "stream {id}: {r}");
            assert_eq!(s["sent"], s["echoed"], "stream {id}: {r}");
            assert!(s["echoed"].as_u64().unwrap() > 20, "stream {id}: {r}");
        }
    }
}

/// A rig whose plain server and a second one over TLS speak HTTP/2 (h2c and ALPN h2), its
/// configuration's text passed through `tweak`; the TLS one's address.
fn h2_rig(name: &str, tweak: &dyn Fn(String) -> String) -> (Rig, SocketAddr) {
    let tls_listen = free_addr();
    let extra = format!(
        "http2 = true\n[[server.location]]\npath = \"/\"\nupstream = \"backend\"\n\n[[server]]\nlisten = [\"{tls_listen}\"]\n{}\nhttp2 = true\n",
        tls_line()
    );
    let mut rig = rig_full(name, "", &extra, "", &[], tweak);
    wait_port(tls_listen, &mut rig.proxy);
    (rig, tls_listen)
}

/// An HTTP/2 rig (`h2_rig`) with one chat client over TLS (`streams` WebSockets, `more` of its
/// options) whose WebSockets are all open: the rig, the client's directory and the client.
fn h2_rig_chatting(
    name: &str,
    tweak: &dyn Fn(String) -> String,
    streams: u32,
    more: &[&str],
) -> (Rig, PathBuf, std::thread::JoinHandle<serde_json::Value>) {
    let (rig, tls_listen) = h2_rig(name, tweak);
    let dir = rig.dir.join("chat");
    let client = h2_chat_with(tls_listen, dir.clone(), true, streams, more);
    wait_ready(&dir);
    (rig, dir, client)
}

fn wait_ready(dir: &std::path::Path) {
    let t0 = Instant::now();
    while !dir.join("ready").exists() {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "chat client not ready"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// An HTTP/2 connection with a request in flight (a POST whose body goes on) is not handed
/// over: it stays in the old process and is drained there as before. Its client gets the
/// GOAWAY, its WebSockets the Close 1012 (the old process says why they stayed), and its
/// request is answered once its body ends.
#[test]
fn an_http2_connection_with_a_request_in_flight_stays_and_is_drained() {
    if !uring_ok() || !common::h2::python_h2() {
        return;
    }
    let (mut rig, _dir, client) =
        h2_rig_chatting("handover-h2-busy", &|t| t, 3, &["--pending-post"]);
    std::thread::sleep(Duration::from_millis(300));
    rig.upgrade(1, &[]);
    let old = std::fs::read_to_string(rig.dir.join("proxy.log")).unwrap();
    assert!(
        old.contains("get the drain's Close (http2 3, http2-request 1)"),
        "{old}"
    );
    let r = client.join().unwrap();
    let unexpected: Vec<&str> = r["unexpected"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|u| u.as_str())
        .collect();
    assert!(unexpected.contains(&"GOAWAY 0"), "{r}");
    for (id, s) in r["streams"].as_object().unwrap() {
        assert_eq!(s["close_code"], 1012, "stream {id}: {r}");
        // Messages in flight when the drain's Close came are not echoed (as in any drain).
        assert!(s["echoed"].as_u64() > Some(0), "stream {id}: {r}");
        assert!(
            unexpected.contains(&format!("stream {id}: a Close 1012 it did not ask for").as_str()),
            "{r}"
        );
    }
    assert_eq!(unexpected.len(), 4, "{r}");
    assert_eq!(r["post"]["status"], 200, "{r}");
    assert_eq!(r["post"]["done"], true, "{r}");
}

/// The new process cannot take an HTTP/2 connection (its workers are at their session cap):
/// the connection is not dropped in silence — its client is sent a GOAWAY from the new
/// process, sealed under its TLS records, before its socket closes.
#[test]
fn an_http2_connection_the_new_process_cannot_take_gets_a_goaway() {
    if !uring_ok() || !common::h2::python_h2() {
        return;
    }
    let (mut rig, _dir, client) = h2_rig_chatting("handover-h2-refused", &|t| t, 2, &[]);
    rig.edit_config("max_connections = 5000", "max_connections = 2");
    rig.upgrade(1, &[]);
    rig.proxy
        .wait_log("is not taken (this worker is at max_connections)", 10);
    let r = client.join().unwrap();
    let unexpected = r["unexpected"].as_array().unwrap();
    // The GOAWAY came, and was read whole (sealed under the connection's records), whatever
    // the client's own sends met after it.
    assert!(unexpected.contains(&serde_json::json!("GOAWAY 0")), "{r}");
}

/// The new process's configuration turned HTTP/2 off on the listener: the connection is taken
/// over as a reload keeps it — told GOAWAY (no new streams), its WebSockets going on until
/// their clients close them, none lost.
#[test]
fn an_http2_connection_under_a_configuration_without_http2_goes_on_as_after_a_reload() {
    if !uring_ok() || !common::h2::python_h2() {
        return;
    }
    let (mut rig, dir, client) = h2_rig_chatting("handover-h2-off", &|t| t, 2, &[]);
    rig.edit_config("http2 = true", "http2 = false");
    let before = h2_progress(&dir);
    rig.upgrade(1, &[]);
    rig.proxy.wait_log("(1 HTTP/2 connection(s) with them)", 10);
    let t = Instant::now();
    while !h2_progress(&dir)
        .iter()
        .zip(&before)
        .all(|(n, b)| *n >= b + 5)
    {
        assert!(t.elapsed() < Duration::from_secs(15), "the streams stopped");
        std::thread::sleep(Duration::from_millis(50));
    }
    std::fs::write(dir.join("stop"), "1").unwrap();
    let r = client.join().unwrap();
    assert_eq!(r["unexpected"], serde_json::json!(["GOAWAY 0"]), "{r}");
    for (id, s) in r["streams"].as_object().unwrap() {
        assert_eq!(s["close_code"], 1000, "stream {id}: {r}");
        assert_eq!(s["sent"], s["echoed"], "stream {id}: {r}");
    }
}

/// A minimal HTTP/2 client over rustls (ALPN h2) carrying one WebSocket (extended CONNECT) on
/// stream 1: what lets a test ask for a TLS 1.3 key update on an HTTP/2 connection, which
/// Python's ssl cannot.
struct H2Tls {
    s: rustls::StreamOwned<rustls::ClientConnection, TcpStream>,
    /// The WebSocket's bytes from the server, not yet read as frames.
    ws: Vec<u8>,
}

impl H2Tls {
    fn frame(&mut self, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
        let mut f = (payload.len() as u32).to_be_bytes()[1..].to_vec();
        f.extend_from_slice(&[kind, flags]);
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend_from_slice(payload);
        self.s.write_all(&f).unwrap();
    }

    fn open(addr: SocketAddr) -> H2Tls {
        use ringway_proxy::h2::frame::{PREFACE, kind};
        let mut config = (*pki().client).clone();
        config.alpn_protocols = vec![b"h2".to_vec()];
        let tcp = TcpStream::connect(addr).unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let c = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
        let mut h = H2Tls {
            s: rustls::StreamOwned::new(c, tcp),
            ws: Vec::new(),
        };
        h.s.write_all(PREFACE).unwrap();
        h.frame(kind::SETTINGS, 0, 0, &[]);
        h.frame(kind::WINDOW_UPDATE, 0, 0, &(1u32 << 24).to_be_bytes());
        let mut block = Vec::new();
        for (n, v) in [
            (":method", "CONNECT"),
            (":protocol", "websocket"),
            (":scheme", "https"),
            (":path", "/ws/"),
            (":authority", "localhost"),
            ("sec-websocket-version", "13"),
        ] {
            ringway_proxy::h2::fields::encode_field(&mut block, n.as_bytes(), v.as_bytes());
        }
        h.frame(kind::HEADERS, 0x4, 1, &block);
        // The answer: a 200 (`:status` 200 is static index 8).
        loop {
            let (kind, _, stream, payload) = h.read_frame();
            if kind == ringway_proxy::h2::frame::kind::HEADERS && stream == 1 {
                assert_eq!(payload.first(), Some(&0x88), "not a 200: {payload:?}");
                assert_eq!(h.s.conn.alpn_protocol(), Some(&b"h2"[..]));
                return h;
            }
        }
    }

    /// The next frame from the server; SETTINGS are acknowledged, DATA on stream 1 kept (and
    /// its credit given back), a GOAWAY or a reset fails the test.
    fn read_frame(&mut self) -> (u8, u8, u32, Vec<u8>) {
        use ringway_proxy::h2::frame::kind;
        let mut head = [0u8; 9];
        self.s.read_exact(&mut head).unwrap();
        let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
        let (k, flags) = (head[3], head[4]);
        let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
        let mut payload = vec![0u8; len];
        self.s.read_exact(&mut payload).unwrap();
        match k {
            kind::SETTINGS if flags & 1 == 0 => self.frame(kind::SETTINGS, 1, 0, &[]),
            kind::DATA if stream == 1 && len > 0 => {
                self.ws.extend_from_slice(&payload);
                let n = (len as u32).to_be_bytes();
                self.frame(kind::WINDOW_UPDATE, 0, 1, &n);
                self.frame(kind::WINDOW_UPDATE, 0, 0, &n);
            }
            kind::GOAWAY | kind::RST_STREAM => panic!("frame {k} from the server: {payload:?}"),
            _ => {}
        }
        (k, flags, stream, payload)
    }

    /// One message out and its echo back.
    fn echo(&mut self, msg: &[u8]) {
        let f = ws_frame_masked(true, 2, msg, [7, 1, 9, 3]);
        self.frame(ringway_proxy::h2::frame::kind::DATA, 0, 1, &f);
        let want = 2 + msg.len();
        while self.ws.len() < want {
            self.read_frame();
        }
        let got: Vec<u8> = self.ws.drain(..want).collect();
        assert_eq!((got[0], &got[2..]), (0x82, msg), "the echo");
    }
}

/// An HTTP/2 connection over TLS 1.3 moves, and a TLS key update after the move works: the
/// client moves to new keys and asks the proxy to (KeyUpdate, update_requested) after each of
/// two upgrades, and its WebSocket stream echoes on under the new keys.
#[test]
fn a_tls_key_update_on_an_http2_connection_after_the_move_works() {
    if !uring_ok() {
        return;
    }
    let (mut rig, tls_listen) = h2_rig("handover-h2-keyupdate", &|t| t);
    let mut c = H2Tls::open(tls_listen);
    assert_eq!(
        c.s.conn.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_3)
    );
    let mut n = 0u32;
    let mut talk = |c: &mut H2Tls, k: u32| {
        for _ in 0..k {
            n += 1;
            c.echo(format!("message {n}").as_bytes());
        }
    };
    talk(&mut c, 20);
    for r in 1..=2 {
        rig.upgrade(r, &[]);
        rig.proxy.wait_log("(1 HTTP/2 connection(s) with them)", 10);
        talk(&mut c, 10);
        c.s.conn.refresh_traffic_keys().unwrap();
        talk(&mut c, 20);
    }
}

/// A client that reads nothing makes the proxy hold its streams' answers for its windows (one
/// read of each stream's inner session: 16 such streams moved here); past what a description
/// carries (`HELD_MAX`, 256 KiB for the connection: 40 streams), the connection is not
/// handed over but stays and is drained: its client gets the GOAWAY, the old process says why
/// (`busy`), and ends it at its `shutdown_grace`.
#[test]
fn an_http2_connection_holding_more_than_a_description_carries_stays_and_is_drained() {
    if !uring_ok() || !common::h2::python_h2() {
        return;
    }
    let grace = |t: String| t.replace("shutdown_grace = \"20s\"", "shutdown_grace = \"2s\"");
    let (mut rig, _dir, client) =
        h2_rig_chatting("handover-h2-held", &grace, 40, &["--shut-window"]);
    // The echoes pile up in the proxy, held for windows that never open.
    std::thread::sleep(Duration::from_millis(1000));
    rig.upgrade(1, &[]);
    let old = std::fs::read_to_string(rig.dir.join("proxy.log")).unwrap();
    let line = old
        .lines()
        .find(|l| l.contains("stay here and get the drain's Close"))
        .unwrap_or_else(|| panic!("{old}"));
    assert!(line.contains("busy 1"), "{line}");
    assert!(line.contains("handed 0 tunnel(s)"), "{line}");
    let r = client.join().unwrap();
    let unexpected = r["unexpected"].as_array().unwrap();
    assert!(unexpected.contains(&serde_json::json!("GOAWAY 0")), "{r}");
}
