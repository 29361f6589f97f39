//! `ringway echo`: a WebSocket echo backend on io_uring, for tests, demos and benchmarks.
//!
//! WebSocket (any path): every data frame comes back as a frame with the same FIN, RSV bits,
//! opcode and payload, so fragmentation and (with `permessage-deflate`) compressed payloads are
//! preserved; Ping gets a Pong with its payload; Close gets the same Close back. Subprotocols:
//! the first one offered is accepted. `permessage-deflate` is accepted with no context takeover
//! both ways, which makes echoing the compressed payload unchanged valid.
//! Upgrade on `/headers…` first sends the request head as JSON in a text message; upgrade on
//! `/push?bytes=N` sends N bytes in 64 KiB binary frames as fast as the client reads; upgrade
//! on `/close/CODE` sends a Close with that code (reason "server closing") first.
//!
//! HTTP: `GET /health` → 200 `ok`; `GET /headers` → the request head as JSON
//! (`{"method","path","peer","headers":[[name,value],…]}`, names as sent, in order; `peer` is
//! the address the connection came from); `GET /bytes/N` →
//! N bytes with Content-Length; `GET /chunked/N` → N bytes chunked; `POST /echo` → the body back.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;
use socket2::Socket;

use crate::http::{BodyKind, BodyTracker};
use crate::uring::slots::Slots;
use crate::uring::{Chunk, Cqe, Op, Ring, RingConfig, Side, Src, UserData};
use crate::ws::{self, FrameHeader, FrameTracker, Piece, opcode};

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

#[derive(Debug)]
struct Conn {
    fd: RawFd,
    ops: u8,
    /// A multishot recv is armed (until its final completion).
    recv_on: bool,
    /// A cancel of that recv is in flight (backpressure or closing).
    recv_cancel: bool,
    closing: bool,
    close_after_flush: bool,
    keep_alive: bool,
    out: VecDeque<Chunk>,
    sending: Option<Chunk>,
    mode: Mode,
    produce: Option<(Gen, u64, u64)>,
    send_cancelled: bool,
}

struct EchoWorker {
    ring: Ring,
    listeners: Vec<Socket>,
    conns: Slots<Conn>,
    spare: Vec<Vec<u8>>,
    stop: Arc<AtomicBool>,
    cqes: Vec<Cqe>,
}

/// Run echo workers on `listen` until SIGINT/SIGTERM.
pub fn run(listen: &[SocketAddr], workers: usize) -> anyhow::Result<()> {
    if let Err(why) = crate::uring::probe() {
        anyhow::bail!("{why}");
    }
    crate::sys::raise_nofile(u64::MAX);
    let signals = crate::sys::block_signals();
    let stop = Arc::new(AtomicBool::new(false));
    let mut handles = Vec::new();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<anyhow::Result<()>>();
    for id in 0..workers {
        let mut listeners = Vec::new();
        for a in listen {
            listeners.push(
                crate::sys::listen_socket(*a, 4096).with_context(|| format!("listening on {a}"))?,
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
                    EchoWorker {
                        ring,
                        listeners,
                        conns: Slots::with_capacity(1024),
                        spare: Vec::new(),
                        stop,
                        cqes: Vec::with_capacity(256),
                    }
                    .run()
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

fn ud(slot: u32, generation: u32, op: Op) -> UserData {
    UserData::new(slot, generation, op, Side::Down)
}

impl EchoWorker {
    fn run(mut self) -> anyhow::Result<()> {
        for (i, l) in self.listeners.iter().enumerate() {
            self.ring.accept_multi(
                l.as_raw_fd(),
                UserData::new(i as u32, 0, Op::Accept, Side::Down),
            );
        }
        while !self.stop.load(Ordering::Relaxed) {
            self.ring.submit_and_wait(Duration::from_millis(100))?;
            let mut cqes = std::mem::take(&mut self.cqes);
            self.ring.reap(&mut cqes);
            for c in &cqes {
                self.dispatch(*c);
            }
            self.cqes = cqes;
            self.ring.pool.grow_if_low();
        }
        for k in self.conns.keys() {
            if let Some((_, c)) = self.conns.get_any_mut(k) {
                let _ = nix::unistd::close(c.fd);
            }
        }
        Ok(())
    }

    fn dispatch(&mut self, c: Cqe) {
        let Some(op) = c.ud.op() else { return };
        if op == Op::Accept {
            let li = c.ud.slot() as usize;
            if !c.more() && li < self.listeners.len() {
                self.ring.accept_multi(self.listeners[li].as_raw_fd(), c.ud);
            }
            if c.res >= 0 {
                let (fd, _) = crate::sys::accepted(c.res);
                let (slot, generation) = self.conns.insert(|_, _| Conn {
                    fd,
                    ops: 0,
                    recv_on: false,
                    recv_cancel: false,
                    closing: false,
                    close_after_flush: false,
                    keep_alive: true,
                    out: VecDeque::new(),
                    sending: None,
                    mode: Mode::Head(Vec::new()),
                    produce: None,
                    send_cancelled: false,
                });
                self.settle(slot, generation);
            }
            return;
        }
        let (slot, generation) = (c.ud.slot(), c.ud.generation());
        if self.conns.get_mut(slot, generation).is_none() {
            self.ring.pool.release_of(&c);
            return;
        }
        match op {
            Op::Recv => self.on_recv(slot, generation, c),
            Op::Send => self.on_send(slot, generation, c.res),
            Op::Cancel => {
                let conn = self.conns.get_mut(slot, generation).expect("checked");
                conn.ops -= 1;
            }
            _ => {}
        }
        self.settle(slot, generation);
    }

    fn on_recv(&mut self, slot: u32, generation: u32, c: Cqe) {
        let conn = self.conns.get_mut(slot, generation).expect("checked");
        if !c.more() {
            conn.ops -= 1;
            conn.recv_on = false;
            conn.recv_cancel = false;
        }
        if c.res <= 0 {
            self.ring.pool.release_of(&c);
            // ENOBUFS: re-armed by settle once buffers are back; ECANCELED: our backpressure.
            if c.res != -libc::ENOBUFS && c.res != -libc::ECANCELED {
                conn.closing = true;
            }
            return;
        }
        let bid = c.buf_id().expect("recv data has a buffer");
        let n = c.res as u32;
        let mut out = self.spare.pop().unwrap_or_default();
        let data = self.ring.pool.bytes_mut(bid, n);
        let conn = self.conns.get_mut(slot, generation).expect("checked");
        feed(conn, data, &mut out);
        self.ring.pool.release(bid);
        self.queue(slot, generation, out);
    }

    fn queue(&mut self, slot: u32, generation: u32, out: Vec<u8>) {
        if out.is_empty() {
            if self.spare.len() < 64 {
                self.spare.push(out);
            }
            return;
        }
        let len = out.len() as u32;
        let id = self.ring.heap.put(out);
        let conn = self.conns.get_mut(slot, generation).expect("live");
        conn.out.push_back(Chunk {
            src: Src::Heap(id),
            off: 0,
            len,
        });
    }

    fn on_send(&mut self, slot: u32, generation: u32, res: i32) {
        let conn = self.conns.get_mut(slot, generation).expect("checked");
        conn.ops -= 1;
        let mut ch = conn.sending.take().expect("send completion without a send");
        self.ring.send_done(ch);
        if res > 0 && (res as u32) < ch.len {
            ch.off += res as u32;
            ch.len -= res as u32;
            conn.out.push_front(ch);
            return;
        }
        let Src::Heap(id) = ch.src else {
            unreachable!("echo sends heap bytes only")
        };
        let mut v = self.ring.heap.take(id);
        if res < 0 {
            conn.closing = true;
        }
        if self.spare.len() < 64 && v.capacity() <= 4 * PIECE {
            v.clear();
            self.spare.push(v);
        }
    }

    /// After any event: generate more output, start a send, re-arm the recv, or close.
    fn settle(&mut self, slot: u32, generation: u32) {
        // Generated bodies are produced only as fast as they are sent.
        loop {
            let conn = self.conns.get_mut(slot, generation).expect("live");
            if conn.closing || conn.out.len() >= 2 {
                break;
            }
            let Some((kind, pos, left)) = conn.produce.as_mut() else {
                break;
            };
            let n = (*left).min(PIECE as u64) as usize;
            let mut out = self.spare.pop().unwrap_or_default();
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
                conn.produce = None;
                if !conn.keep_alive && !matches!(conn.mode, Mode::Ws(_)) {
                    conn.close_after_flush = true;
                }
            }
            self.queue(slot, generation, out);
        }
        let conn = self.conns.get_mut(slot, generation).expect("live");
        if conn.close_after_flush && conn.out.is_empty() && conn.sending.is_none() {
            conn.closing = true;
        }
        if conn.closing {
            // Cancel each op in flight by its user_data (cancel by fd is O(n) per call).
            if conn.recv_on && !conn.recv_cancel {
                conn.recv_cancel = true;
                conn.ops += 1;
                self.ring.cancel_op(
                    ud(slot, generation, Op::Recv),
                    ud(slot, generation, Op::Cancel),
                );
            }
            if conn.sending.is_some() && !conn.send_cancelled {
                conn.send_cancelled = true;
                conn.ops += 1;
                self.ring.cancel_op(
                    ud(slot, generation, Op::Send),
                    ud(slot, generation, Op::Cancel),
                );
            }
            if conn.ops == 0 {
                let mut conn = self.conns.remove(slot);
                for ch in conn.out.drain(..) {
                    if let Src::Heap(id) = ch.src {
                        self.ring.heap.free(id);
                    }
                }
                let _ = nix::unistd::close(conn.fd);
            }
            return;
        }
        if conn.sending.is_none()
            && let Some(ch) = conn.out.pop_front()
        {
            conn.sending = Some(ch);
            conn.ops += 1;
            self.ring.send(conn.fd, ch, ud(slot, generation, Op::Send));
        }
        let conn = self.conns.get_mut(slot, generation).expect("live");
        let paused =
            conn.out.len() >= OUT_MAX || conn.produce.is_some() || matches!(conn.mode, Mode::Drop);
        if paused && conn.recv_on && !conn.recv_cancel {
            // Backpressure: stop the multishot recv until what we owe the client drains.
            conn.recv_cancel = true;
            conn.ops += 1;
            self.ring.cancel_op(
                ud(slot, generation, Op::Recv),
                ud(slot, generation, Op::Cancel),
            );
        } else if !paused && !conn.recv_on {
            conn.recv_on = true;
            conn.ops += 1;
            self.ring
                .recv_multi(conn.fd, ud(slot, generation, Op::Recv));
        }
    }
}

/// Process received bytes; append what to send to `out`.
fn feed(conn: &mut Conn, data: &mut [u8], out: &mut Vec<u8>) {
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
                        out.extend_from_slice(&crate::http::error_response(400));
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
                Some(h)
            }
            Piece::Payload { header: h, offset } => {
                let piece = &mut data[i..i + step.used];
                if let Some(m) = h.mask {
                    ws::apply_mask(piece, m, offset);
                }
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

/// Handle a request head; `Ok(Some(head_len))` when complete.
fn http_request(conn: &mut Conn, buf: &[u8], out: &mut Vec<u8>) -> Result<Option<usize>, ()> {
    let mut headers = [httparse::EMPTY_HEADER; 128];
    let mut req = httparse::Request::new(&mut headers);
    let n = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err(()),
    };
    let method = req.method.unwrap_or("");
    let path = req.path.unwrap_or("/");
    let get = |name: &str| {
        req.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value)
    };
    let close = get("connection").is_some_and(|v| {
        v.split(|&b| b == b',')
            .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"close"))
    });
    conn.keep_alive = req.version == Some(1) && !close;
    let json = || {
        let hs: Vec<(String, String)> = req
            .headers
            .iter()
            .map(|h| {
                (
                    h.name.to_string(),
                    String::from_utf8_lossy(h.value).into_owned(),
                )
            })
            .collect();
        let peer = nix::sys::socket::getpeername::<nix::sys::socket::SockaddrStorage>(conn.fd)
            .map(|a| a.to_string())
            .unwrap_or_default();
        serde_json::json!({ "method": method, "path": path, "peer": peer, "headers": hs })
            .to_string()
    };
    let upgrade = get("upgrade").is_some_and(|v| v.eq_ignore_ascii_case(b"websocket"));
    if upgrade {
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
        if path.starts_with("/headers") {
            out.extend(ws::frame(opcode::TEXT, json().as_bytes(), None));
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
        return Ok(Some(n));
    }
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
        simple("200 OK", "text/plain", b"ok\n", out);
    } else if method == "GET" && path == "/headers" {
        simple("200 OK", "application/json", json().as_bytes(), out);
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
        let chunked = get("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case(b"chunked"));
        let kind = if chunked {
            out.extend_from_slice(format!("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: {conn_hdr}\r\n\r\n").as_bytes());
            BodyKind::Chunked
        } else {
            let len: u64 = get("content-length")
                .and_then(|v| std::str::from_utf8(v).ok()?.trim().parse().ok())
                .unwrap_or(0);
            out.extend_from_slice(
                format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {len}\r\nConnection: {conn_hdr}\r\n\r\n"
                )
                .as_bytes(),
            );
            BodyKind::Length(len)
        };
        let t = BodyTracker::new(kind);
        if !t.done() {
            conn.mode = Mode::Body(t);
            return Ok(Some(n));
        }
    } else {
        simple("404 Not Found", "text/plain", b"not found\n", out);
    }
    if !conn.keep_alive && conn.produce.is_none() {
        conn.close_after_flush = true;
        conn.mode = Mode::Drop;
    } else {
        conn.mode = Mode::Head(Vec::new());
    }
    Ok(Some(n))
}
