//! `ringway echo`: a WebSocket echo backend on io_uring, for tests, demos and benchmarks.
//!
//! WebSocket (any path): every data frame comes back as a frame with the same FIN, RSV bits,
//! opcode and payload, so fragmentation and (with `permessage-deflate`) compressed payloads are
//! preserved; Ping gets a Pong with its payload; Close gets the same Close back. Subprotocols:
//! the first one offered is accepted. `permessage-deflate` is accepted with no context takeover
//! both ways, which makes echoing the compressed payload unchanged valid.
//! Upgrade on `…/headers` first sends the request head as JSON in a text message; upgrade on
//! `/push?bytes=N` sends N bytes in 64 KiB binary frames as fast as the client reads; upgrade
//! on `/close/CODE` sends a Close with that code (reason "server closing") first.
//!
//! HTTP: `GET /health` → 200 `ok` (503 while the `--health-file` exists); `GET …/headers` → the request head as JSON
//! (`{"method","path","peer","local","headers":[[name,value],…]}`, names as sent, in order;
//! `peer` is the address the connection came from, `local` the echo's own address, which
//! tells the backends of an upstream apart); `GET /bytes/N` →
//! N bytes with Content-Length; `GET /chunked/N` → N bytes chunked; `POST /echo` → the body back.

use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;
use socket2::Socket;

use ringway_proxy::http::{self, BodyKind, BodyTracker};
use ringway_proxy::reactor::{Conn, Handler, Reactor, RingSys, Sent, Sys};
use ringway_proxy::uring::{ConnId, Cqe, Op, Ring, RingConfig, UserData};
use ringway_proxy::ws::{self, FrameHeader, FrameTracker, Piece, opcode};

/// Bytes per generated piece of a large response or push.
const PIECE: usize = 64 * 1024;
/// Chunks queued per connection before its recv is paused.
const OUT_MAX: usize = 4;
const HEAD_MAX: usize = 64 * 1024;

/// The byte at position `i` of generated bodies (a pattern a client can check).
pub fn pattern(i: u64) -> u8 {
    (i % 251) as u8
}

#[derive(Debug)]
enum Gen {
    Raw,
    Chunked,
    Frames,
}

#[derive(Debug, Default)]
struct WsEcho {
    frames: FrameTracker,
    /// The frame whose payload is passing, and how much of it has.
    cur: Option<FrameHeader>,
    offset: u64,
    ctrl: Vec<u8>,
    /// We sent a Close first (`/close/CODE`); the client's Close ends the connection.
    close_sent: bool,
}

#[derive(Debug)]
enum Mode {
    /// Reading a request head.
    Head(Vec<u8>),
    /// Reading a POST /echo body; bytes go straight back.
    Body(BodyTracker),
    Ws(Box<WsEcho>),
    /// Ignore input (closing).
    Drop,
}

/// One client of the echo backend: its socket (the reactor's `Conn`) and what it is doing.
#[derive(Debug)]
struct Client {
    sock: Conn,
    /// Cancels of this client's ops in flight.
    cancels: u8,
    closing: bool,
    close_after_flush: bool,
    keep_alive: bool,
    mode: Mode,
    produce: Option<(Gen, u64, u64)>,
}

/// Everything of an echo worker but its reactor.
struct EchoCore {
    listeners: Vec<Socket>,
}

/// While this file exists, `GET /health` answers 503 (`--health-file`: a backend that fails
/// its health checks on demand, for tests and demos, while it keeps echoing).
static HEALTH_FILE: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();

/// Run echo workers on `listen` until SIGINT/SIGTERM.
pub fn run(
    listen: &[SocketAddr],
    workers: usize,
    health_file: Option<std::path::PathBuf>,
) -> anyhow::Result<()> {
    if let Some(f) = health_file {
        let _ = HEALTH_FILE.set(f);
    }
    if let Err(why) = ringway_proxy::uring::probe() {
        anyhow::bail!("{why}");
    }
    ringway_proxy::sys::raise_nofile(u64::MAX);
    let signals = ringway_proxy::sys::block_signals();
    let stop = Arc::new(AtomicBool::new(false));
    let mut handles = Vec::new();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<anyhow::Result<()>>();
    for id in 0..workers {
        let mut listeners = Vec::new();
        for a in listen {
            listeners.push(
                ringway_proxy::sys::listen_socket(*a, 4096)
                    .with_context(|| format!("listening on {a}"))?,
            );
        }
        let (stop, ready) = (stop.clone(), ready_tx.clone());
        handles.push(
            std::thread::Builder::new()
                .name(format!("echo-w{id}"))
                .spawn(move || {
                    // The ring is made on its own thread (SINGLE_ISSUER).
                    let ring = match Ring::new(RingConfig {
                        sq_entries: 1024,
                        buffers: 2048,
                        buf_size: 16 * 1024,
                    }) {
                        Ok(r) => r,
                        Err(e) => {
                            let _ = ready.send(Err(anyhow::anyhow!("setting up io_uring: {e}")));
                            return Ok(());
                        }
                    };
                    let _ = ready.send(Ok(()));
                    let mut reactor = Reactor::new(ring, 1024, 100, 64);
                    // Generated pieces are up to 64 KiB: keep that many allocations for reuse.
                    reactor.ring.heap.keep_spares(64, 4 * PIECE);
                    let mut core = EchoCore { listeners };
                    core.run(&mut reactor, &stop)
                })?,
        );
    }
    drop(ready_tx);
    for r in ready_rx.iter().take(workers) {
        if let Err(e) = r {
            stop.store(true, Ordering::Relaxed);
            return Err(e);
        }
    }
    let addrs: Vec<String> = listen.iter().map(|a| a.to_string()).collect();
    tracing::info!(
        "echo backend listening on {} with {workers} worker(s)",
        addrs.join(", ")
    );
    loop {
        match signals.wait() {
            Ok(nix::sys::signal::Signal::SIGHUP) => continue,
            Ok(_) => break,
            Err(e) => anyhow::bail!("waiting for signals: {e}"),
        }
    }
    stop.store(true, Ordering::Relaxed);
    for h in handles {
        h.join()
            .map_err(|_| anyhow::anyhow!("echo worker panicked"))??;
    }
    Ok(())
}

impl EchoCore {
    fn run(&mut self, r: &mut Reactor<Client>, stop: &AtomicBool) -> anyhow::Result<()> {
        for (i, l) in self.listeners.iter().enumerate() {
            r.ring.accept_multi(
                l.as_raw_fd(),
                UserData::new(i as u32, 0, Op::Accept, ConnId::CLIENT),
            );
        }
        while !stop.load(Ordering::Relaxed) {
            r.turn(self, Duration::from_millis(100))?;
        }
        for k in r.slots.keys() {
            if let Some((_, c)) = r.slots.get_any_mut(k) {
                let _ = nix::unistd::close(c.sock.fd());
            }
        }
        Ok(())
    }

    /// Run `f` on a client with a `Sys` over the ring, then settle it.
    fn with(
        &mut self,
        r: &mut Reactor<Client>,
        slot: u32,
        f: impl FnOnce(&mut Client, &mut RingSys<'_>),
    ) {
        let Some((_, c, mut sys)) = r.split(slot, None) else {
            return;
        };
        f(c, &mut sys);
        if settle(c, &mut sys) {
            r.slots.remove(slot);
        }
    }
}

impl Handler<Client> for EchoCore {
    fn on_core(&mut self, r: &mut Reactor<Client>, c: Cqe) {
        if c.ud.op() != Some(Op::Accept) || c.ud.slot() == ringway_proxy::uring::SLOT_CORE {
            return;
        }
        let li = c.ud.slot() as usize;
        if !c.more() && li < self.listeners.len() {
            r.ring.accept_multi(self.listeners[li].as_raw_fd(), c.ud);
        }
        if c.res >= 0 {
            let (fd, _) = ringway_proxy::sys::accepted(c.res);
            let (slot, _) = r.slots.insert(|_, _| Client {
                sock: Conn::new(fd),
                cancels: 0,
                closing: false,
                close_after_flush: false,
                keep_alive: true,
                mode: Mode::Head(Vec::new()),
                produce: None,
            });
            self.with(r, slot, |_, _| {});
        }
    }

    fn on_slot(&mut self, r: &mut Reactor<Client>, c: Cqe) {
        let slot = c.ud.slot();
        self.with(r, slot, |client, sys| match c.ud.op() {
            Some(Op::Recv) => on_recv(client, sys, c),
            Some(Op::Send) => {
                let closing = client.closing;
                if let Sent::Failed(_) = client.sock.on_sent(sys, ConnId::CLIENT, c.res, closing) {
                    client.closing = true;
                }
            }
            Some(Op::Cancel) => client.cancels -= 1,
            _ => {}
        });
    }

    fn on_timer(&mut self, _: &mut Reactor<Client>, _: u32, _: u32, _: u64) {}
}

fn on_recv(client: &mut Client, sys: &mut RingSys<'_>, c: Cqe) {
    client.sock.recv_ended(c.more());
    if c.res <= 0 {
        sys.ring.pool.release_of(&c);
        // ENOBUFS: re-armed by settle; ECANCELED: our backpressure.
        if c.res != -libc::ENOBUFS && c.res != -libc::ECANCELED {
            client.closing = true;
        }
        return;
    }
    let bid = c.buf_id().expect("recv data has a buffer");
    let mut out = sys.scratch();
    let data = sys.ring.pool.bytes_mut(bid, c.res as u32);
    feed(client, data, &mut out);
    sys.ring.pool.release(bid);
    queue(client, sys, out);
}

fn queue(client: &mut Client, sys: &mut RingSys<'_>, out: Vec<u8>) {
    if out.is_empty() {
        sys.recycle(out);
        return;
    }
    let c = sys.put(out);
    client.sock.push(c);
}

/// After any event: generate more output, start a send, re-arm the recv, or close. True when
/// the client is gone (its slot may be freed).
fn settle(client: &mut Client, sys: &mut RingSys<'_>) -> bool {
    // Generated bodies are produced only as fast as they are sent.
    while !client.closing && client.sock.pending() < 2 {
        let Some((kind, pos, left)) = client.produce.as_mut() else {
            break;
        };
        let n = (*left).min(PIECE as u64) as usize;
        let mut out = sys.scratch();
        match kind {
            Gen::Raw => out.extend((0..n as u64).map(|i| pattern(*pos + i))),
            Gen::Chunked => {
                if n > 0 {
                    out.extend_from_slice(format!("{n:x}\r\n").as_bytes());
                    out.extend((0..n as u64).map(|i| pattern(*pos + i)));
                    out.extend_from_slice(b"\r\n");
                }
                if *left == n as u64 {
                    out.extend_from_slice(b"0\r\n\r\n");
                }
            }
            Gen::Frames => {
                ws::write_header(&mut out, true, 0, opcode::BINARY, None, n as u64);
                out.extend((0..n as u64).map(|i| pattern(*pos + i)));
            }
        }
        *pos += n as u64;
        *left -= n as u64;
        if *left == 0 {
            client.produce = None;
            if !client.keep_alive && !matches!(client.mode, Mode::Ws(_)) {
                client.close_after_flush = true;
            }
        }
        queue(client, sys, out);
    }
    if client.close_after_flush && client.sock.flushed() {
        client.closing = true;
    }
    if client.closing {
        client.cancels += client.sock.retire(sys, ConnId::CLIENT);
        return client
            .sock
            .close_when_done(sys, client.cancels.into(), false);
    }
    client.sock.kick(sys, ConnId::CLIENT);
    // Backpressure: no recv while what we owe the client has not drained.
    let paused = client.sock.pending() >= OUT_MAX
        || client.produce.is_some()
        || matches!(client.mode, Mode::Drop);
    client.cancels +=
        client
            .sock
            .sync_recv(sys, ConnId::CLIENT, !paused, ringway_proxy::uring::UNCAPPED);
    false
}

/// Process received bytes; append what to send to `out`.
fn feed(conn: &mut Client, data: &mut [u8], out: &mut Vec<u8>) {
    let mut rest: &mut [u8] = data;
    loop {
        match &mut conn.mode {
            Mode::Drop => return,
            Mode::Head(buf) => {
                buf.extend_from_slice(rest);
                let mut head = std::mem::take(buf);
                match http_request(conn, &head, out) {
                    Ok(None) if head.len() < HEAD_MAX => {
                        if let Mode::Head(b) = &mut conn.mode {
                            *b = head;
                        }
                        return;
                    }
                    Ok(None) | Err(()) => {
                        out.extend_from_slice(&ringway_proxy::http::error_response(400));
                        conn.mode = Mode::Drop;
                        conn.close_after_flush = true;
                        return;
                    }
                    Ok(Some(used)) => {
                        // Whatever followed the head is processed in the new mode.
                        let tail = head.split_off(used);
                        if tail.is_empty() {
                            return;
                        }
                        head = tail;
                        let mut t = head;
                        feed(conn, &mut t, out);
                        return;
                    }
                }
            }
            Mode::Body(t) => {
                let n = match t.feed(rest) {
                    Ok(n) => n,
                    Err(_) => {
                        conn.mode = Mode::Drop;
                        conn.closing = true;
                        return;
                    }
                };
                out.extend_from_slice(&rest[..n]);
                if t.done() {
                    if !conn.keep_alive {
                        conn.close_after_flush = true;
                    }
                    conn.mode = Mode::Head(Vec::new());
                    rest = &mut rest[n..];
                    if rest.is_empty() {
                        return;
                    }
                    continue;
                }
                return;
            }
            Mode::Ws(w) => {
                if ws_feed(w, rest, out).is_err() {
                    conn.mode = Mode::Drop;
                    conn.close_after_flush = true;
                }
                if let Mode::Ws(w) = &conn.mode
                    && w.ctrl.as_slice() == b"\xff\xffclosed"
                {
                    conn.mode = Mode::Drop;
                    conn.close_after_flush = true;
                }
                return;
            }
        }
    }
}

/// Echo frames. A Close is answered and then marks the state closed (`ctrl` sentinel).
fn ws_feed(w: &mut WsEcho, data: &mut [u8], out: &mut Vec<u8>) -> Result<(), ()> {
    let mut i = 0;
    while i < data.len() {
        let Ok(step) = w.frames.step(&data[i..]) else {
            out.extend(ws::frame(
                opcode::CLOSE,
                &ws::close_payload(1002, "protocol error"),
                None,
            ));
            return Err(());
        };
        let h = match step.piece {
            Piece::Partial => None,
            Piece::Header(h) => {
                if h.mask.is_none() {
                    out.extend(ws::frame(
                        opcode::CLOSE,
                        &ws::close_payload(1002, "unmasked frame"),
                        None,
                    ));
                    return Err(());
                }
                if h.opcode < 0x8 {
                    ws::write_header(out, h.fin, h.rsv, h.opcode, None, h.len);
                } else {
                    w.ctrl.clear();
                }
                w.cur = Some(h);
                w.offset = 0;
                Some(h)
            }
            Piece::Payload => {
                let h = w.cur.expect("payload follows its header");
                let piece = &mut data[i..i + step.used];
                if let Some(m) = h.mask {
                    ws::apply_mask(piece, m, w.offset);
                }
                w.offset += step.used as u64;
                if h.opcode >= 0x8 {
                    w.ctrl.extend_from_slice(piece);
                } else {
                    out.extend_from_slice(piece);
                }
                Some(h)
            }
        };
        i += step.used;
        if step.end
            && let Some(h) = h
            && control_done(w, h, out)
        {
            return Ok(());
        }
    }
    Ok(())
}

/// A complete control frame is in `w.ctrl`: answer it. True when it was a Close.
fn control_done(w: &mut WsEcho, h: FrameHeader, out: &mut Vec<u8>) -> bool {
    match h.opcode {
        opcode::PING => out.extend(ws::frame(opcode::PONG, &w.ctrl, None)),
        opcode::CLOSE => {
            if !w.close_sent {
                out.extend(ws::frame(opcode::CLOSE, &w.ctrl, None));
            }
            w.ctrl = b"\xff\xffclosed".to_vec();
            return true;
        }
        _ => {}
    }
    false
}

/// `/headers`, also under a prefix (`/chat/headers`) and with a query.
fn wants_headers(path: &str) -> bool {
    let p = path.split('?').next().unwrap_or("");
    p == "/headers" || p.ends_with("/headers")
}

/// Handle a request head; `Ok(Some(head_len))` when complete.
fn http_request(conn: &mut Client, buf: &[u8], out: &mut Vec<u8>) -> Result<Option<usize>, ()> {
    // The proxy's own codec (its smuggling and Host rules included): what it would refuse
    // from a client, the echo refuses too.
    let req = match http::parse_request(buf, &http::HeadLimits::flat(HEAD_MAX)) {
        Ok(Some(r)) => r,
        Ok(None) => return Ok(None),
        Err(_) => return Err(()),
    };
    let n = req.head_len;
    let head = &buf[..n];
    conn.keep_alive = req.version_minor == 1 && req.keep_alive;
    let upgrade = http::header_values(head, "upgrade")
        .next()
        .is_some_and(|v| v.eq_ignore_ascii_case(b"websocket"));
    if upgrade {
        upgrade_to_websocket(conn, &req, head, out)?;
        return Ok(Some(n));
    }
    if answer(conn, &req, head, out)? {
        // Reading the body to echo it.
        return Ok(Some(n));
    }
    if !conn.keep_alive && conn.produce.is_none() {
        conn.close_after_flush = true;
        conn.mode = Mode::Drop;
    } else {
        conn.mode = Mode::Head(Vec::new());
    }
    Ok(Some(n))
}

/// The request as JSON: method, path, both socket addresses, the headers as sent.
fn request_json(conn: &Client, req: &http::Request, head: &[u8]) -> String {
    let (method, path) = (req.method.as_str(), req.path.as_str());
    let hs: Vec<(String, String)> = head
        .split(|&b| b == b'\n')
        .skip(1)
        .filter_map(|line| {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            let colon = line.iter().position(|&b| b == b':')?;
            Some((
                String::from_utf8_lossy(&line[..colon]).into_owned(),
                String::from_utf8_lossy(line[colon + 1..].trim_ascii()).into_owned(),
            ))
        })
        .collect();
    let peer = nix::sys::socket::getpeername::<nix::sys::socket::SockaddrStorage>(conn.sock.fd())
        .map(|a| a.to_string())
        .unwrap_or_default();
    let local = nix::sys::socket::getsockname::<nix::sys::socket::SockaddrStorage>(conn.sock.fd())
        .map(|a| a.to_string())
        .unwrap_or_default();
    serde_json::json!({ "method": method, "path": path, "peer": peer, "local": local, "headers": hs })
        .to_string()
}

/// A WebSocket upgrade: the 101 (the first subprotocol offered; permessage-deflate named when
/// offered, though nothing is compressed), then what the path asks for: the request as JSON
/// (`/headers`), bytes pushed (`/push?bytes=N`), an immediate Close (`/close/CODE`).
fn upgrade_to_websocket(
    conn: &mut Client,
    req: &http::Request,
    head: &[u8],
    out: &mut Vec<u8>,
) -> Result<(), ()> {
    let path = req.path.as_str();
    let get = |name: &'static str| http::header_values(head, name).next();
    let Some(key) = get("sec-websocket-key") else {
        return Err(());
    };
    let mut resp = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n",
        ws::accept_key(key.trim_ascii())
    );
    if let Some(p) = get("sec-websocket-protocol") {
        let first =
            String::from_utf8_lossy(p.split(|&b| b == b',').next().unwrap_or(b"").trim_ascii())
                .into_owned();
        resp.push_str(&format!("Sec-WebSocket-Protocol: {first}\r\n"));
    }
    if get("sec-websocket-extensions")
        .is_some_and(|v| String::from_utf8_lossy(v).contains("permessage-deflate"))
    {
        resp.push_str("Sec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover; client_no_context_takeover\r\n");
    }
    resp.push_str("\r\n");
    out.extend_from_slice(resp.as_bytes());
    if wants_headers(path) {
        out.extend(ws::frame(
            opcode::TEXT,
            request_json(conn, req, head).as_bytes(),
            None,
        ));
    }
    if let Some(q) = path.strip_prefix("/push?bytes=") {
        let total: u64 = q.parse().map_err(|_| ())?;
        conn.produce = Some((Gen::Frames, 0, total));
    }
    let mut w = Box::<WsEcho>::default();
    if let Some(code) = path.strip_prefix("/close/") {
        let code: u16 = code.parse().map_err(|_| ())?;
        out.extend(ws::frame(
            opcode::CLOSE,
            &ws::close_payload(code, "server closing"),
            None,
        ));
        w.close_sent = true;
    }
    conn.mode = Mode::Ws(w);
    Ok(())
}

/// A plain HTTP request: `/health`, `/headers`, `/bytes/N`, `/chunked/N`, `POST /echo`, else
/// 404. True while the body is to be read and echoed.
fn answer(
    conn: &mut Client,
    req: &http::Request,
    head: &[u8],
    out: &mut Vec<u8>,
) -> Result<bool, ()> {
    let (method, path) = (req.method.as_str(), req.path.as_str());
    let conn_hdr = if conn.keep_alive {
        "keep-alive"
    } else {
        "close"
    };
    let simple = |status: &str, ctype: &str, body: &[u8], out: &mut Vec<u8>| {
        out.extend_from_slice(
            format!("HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: {conn_hdr}\r\n\r\n", body.len()).as_bytes(),
        );
        out.extend_from_slice(body);
    };
    if method == "GET" && path == "/health" {
        if HEALTH_FILE.get().is_some_and(|f| f.exists()) {
            simple(
                "503 Service Unavailable",
                "text/plain",
                b"failing on purpose\n",
                out,
            );
        } else {
            simple("200 OK", "text/plain", b"ok\n", out);
        }
    } else if method == "GET" && wants_headers(path) {
        simple(
            "200 OK",
            "application/json",
            request_json(conn, req, head).as_bytes(),
            out,
        );
    } else if let (Some(num), "GET") = (path.strip_prefix("/bytes/"), method) {
        let total: u64 = num.parse().map_err(|_| ())?;
        out.extend_from_slice(
            format!("HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {total}\r\nConnection: {conn_hdr}\r\n\r\n").as_bytes(),
        );
        conn.produce = Some((Gen::Raw, 0, total));
    } else if let (Some(num), "GET") = (path.strip_prefix("/chunked/"), method) {
        let total: u64 = num.parse().map_err(|_| ())?;
        out.extend_from_slice(
            format!("HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nTransfer-Encoding: chunked\r\nConnection: {conn_hdr}\r\n\r\n").as_bytes(),
        );
        conn.produce = Some((Gen::Chunked, 0, total));
    } else if method == "POST" && path == "/echo" {
        let kind = match req.body {
            BodyKind::Chunked => {
                out.extend_from_slice(format!("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: {conn_hdr}\r\n\r\n").as_bytes());
                BodyKind::Chunked
            }
            kind => {
                let len = match kind {
                    BodyKind::Length(n) => n,
                    _ => 0,
                };
                out.extend_from_slice(
                    format!(
                        "HTTP/1.1 200 OK\r\nContent-Length: {len}\r\nConnection: {conn_hdr}\r\n\r\n"
                    )
                    .as_bytes(),
                );
                BodyKind::Length(len)
            }
        };
        let t = BodyTracker::new(kind);
        if !t.done() {
            conn.mode = Mode::Body(t);
            return Ok(true);
        }
    } else {
        simple("404 Not Found", "text/plain", b"not found\n", out);
    }
    Ok(false)
}
