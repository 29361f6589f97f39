//! One load-generator worker: its connections on the reactor, opening them, timers, sends,
//! and closing them.

use super::*;

/// One worker's share.
pub(super) struct Plan {
    pub(super) conns: usize,
    pub(super) count: usize,
    pub(super) rate: f64,
    pub(super) source: Vec<IpAddr>,
}

#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub(super) enum Phase {
    Connecting,
    Handshake,
    Open,
    /// Close frame sent; waiting for the echo of it.
    Closing,
    /// Cancelling and closing the socket.
    Dead,
}

pub(super) struct BConn {
    /// The socket (plain or TLS): recv state, send queue, cancel-then-close.
    pub(super) sock: Transport,
    /// Cancels of this connection's ops in flight.
    pub(super) cancels: u8,
    pub(super) phase: Phase,
    pub(super) head: Vec<u8>,
    /// Incoming frame header bytes, and what is left of the current frame's payload.
    /// Frames coming from the server.
    pub(super) rx: FrameTracker,
    /// The frame whose payload is arriving, and how much of it has.
    pub(super) rx_cur: Option<ws::FrameHeader>,
    pub(super) rx_offset: u64,
    /// Send times (µs) of messages whose echo has not come back, oldest first.
    pub(super) sent_at: VecDeque<u64>,
    pub(super) started_us: u64,
    pub(super) next_us: u64,
    pub(super) timer_at: u64,
    pub(super) errored: bool,
}

pub(super) struct BenchWorker {
    /// The ring, the connections' slots, the timer wheel (in ms of `start`).
    pub(super) r: Reactor<BConn>,
    pub(super) opts: Opts,
    pub(super) plan: Plan,
    pub(super) shared: Arc<Shared>,
    pub(super) start: Instant,
    pub(super) now_us: u64,
    /// Shared bytes: the handshake request, the message frame, the heartbeat, a Close.
    pub(super) handshake: u32,
    pub(super) message: u32,
    pub(super) message_len: u32,
    pub(super) heartbeat: u32,
    pub(super) close: u32,
    pub(super) accept_key: String,
    pub(super) payload: Vec<u8>,
    pub(super) hist: Histogram<u64>,
    pub(super) messages: u64,
    pub(super) bytes: u64,
    pub(super) established: u64,
    pub(super) failed: u64,
    pub(super) started: usize,
    pub(super) errors: BTreeMap<String, u64>,
    pub(super) hb_sent: u64,
    pub(super) hb_echoed: u64,
    pub(super) closed_clean: u64,
    pub(super) tls_resumed: u64,
    pub(super) tls_full: u64,
    pub(super) src_next: usize,
    pub(super) fired: Vec<(u32, u64)>,
    pub(super) next_open_us: u64,
    pub(super) alive_at_stop: u64,
    pub(super) hb_lost: u64,
    pub(super) rearm: Vec<(u32, u32)>,
    pub(super) connecting: usize,
    pub(super) scratch: Vec<u8>,
    /// Open loop: when each connection sends next, earliest first. The loop sleeps exactly
    /// until the first one (a timer wheel's tick would add up to a tick of delay to every send,
    /// and the latency is measured from the scheduled time).
    pub(super) sched: std::collections::BinaryHeap<std::cmp::Reverse<(u64, u32, u32)>>,
}

pub(super) const KEY: &str = "cmluZ3dheS1iZW5jaC1rZXk=";

impl BenchWorker {
    pub(super) fn new(
        mut ring: Ring,
        opts: Opts,
        plan: Plan,
        shared: Arc<Shared>,
        start: Instant,
    ) -> anyhow::Result<BenchWorker> {
        let t = &opts.target;
        let req = format!(
            "GET {} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\nUser-Agent: ringway-bench\r\n\r\n",
            t.path, t.host
        );
        let payload: Vec<u8> = (0..opts.size).map(|i| b'a' + (i % 26) as u8).collect();
        let mask = [0x5a, 0x17, 0xc3, 0x88];
        let frame = ws::frame(opcode::BINARY, &payload, Some(mask));
        let message_len = frame.len() as u32;
        let handshake = ring.heap.put_shared(req.into_bytes());
        let message = ring.heap.put_shared(frame);
        let heartbeat =
            ring.heap
                .put_shared(ws::frame(opcode::TEXT, br#"{"type":"ping"}"#, Some(mask)));
        let close = ring.heap.put_shared(ws::frame(
            opcode::CLOSE,
            &ws::close_payload(1000, ""),
            Some(mask),
        ));
        // Open-loop sends need millisecond timers; handshake and heartbeat timers do not. A
        // heartbeat goes out at the first tick after it is due, so the tick is what batches
        // them: at 50 ms, every heartbeat due in those 50 ms left at once, a wave no population
        // of clients with timers of their own sends (8,000 connections beating every 5 s came
        // to the proxy 80 at a time).
        let tick = match opts.mode {
            Mode::Throughput if opts.rate > 0.0 => 1,
            _ => 10,
        };
        Ok(BenchWorker {
            r: Reactor::new(ring, plan.conns.max(1), tick, 8192),
            start,
            now_us: start.elapsed().as_micros() as u64,
            handshake,
            message,
            message_len,
            heartbeat,
            close,
            accept_key: ws::accept_key(KEY.as_bytes()),
            payload,
            hist: Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("histogram bounds"),
            messages: 0,
            bytes: 0,
            established: 0,
            failed: 0,
            started: 0,
            errors: BTreeMap::new(),
            hb_sent: 0,
            hb_echoed: 0,
            closed_clean: 0,
            tls_resumed: 0,
            tls_full: 0,
            src_next: 0,
            fired: Vec::new(),
            next_open_us: 0,
            alive_at_stop: 0,
            hb_lost: 0,
            rearm: Vec::new(),
            connecting: 0,
            scratch: Vec::with_capacity(16 * 1024),
            sched: std::collections::BinaryHeap::new(),
            opts,
            plan,
            shared,
        })
    }

    pub(super) fn phase(&self) -> u8 {
        self.shared.phase.load(Ordering::Relaxed)
    }

    pub(super) fn error(&mut self, kind: String) {
        *self.errors.entry(kind).or_insert(0) += 1;
    }

    /// How many connections this worker should open in total.
    pub(super) fn to_open(&self) -> usize {
        match self.opts.mode {
            Mode::Connect => self.plan.count,
            _ => self.plan.conns,
        }
    }

    pub(super) fn run(mut self) -> anyhow::Result<Part> {
        let tick = Duration::from_millis(self.r.wheel.tick_ms());
        let mut stopping = false;
        let mut reported = false;
        loop {
            self.now_us = self.start.elapsed().as_micros() as u64;
            if !stopping {
                self.open_more();
            }
            if !stopping && self.phase() == STOP {
                stopping = true;
                self.tally_at_stop();
                for k in self.r.slots.keys() {
                    self.kill(k, None);
                }
            }
            if stopping && self.r.slots.is_empty() {
                break;
            }
            if self.opts.mode == Mode::Connect
                && !reported
                && self.started >= self.plan.count
                && self.r.slots.is_empty()
            {
                // This worker's share is done; the coordinator stops when every worker is.
                reported = true;
                self.shared.done.fetch_add(1, Ordering::Relaxed);
            }
            // Wake for the next timed send, and in idle mode for the next connection to open
            // at --rate (the wheel's tick alone capped opening at a few per tick).
            let next_open = (self.opts.mode == Mode::Idle
                && self.plan.rate > 0.0
                && !stopping
                && self.started < self.to_open()
                && self.connecting < Self::CONNECTING_MAX)
                .then_some(self.next_open_us);
            let first = self.sched.peek().map(|std::cmp::Reverse((at, _, _))| *at);
            let wait = match first.into_iter().chain(next_open).min() {
                Some(at) => Duration::from_micros(at.saturating_sub(self.now_us)).min(tick),
                None => tick,
            };
            let cqes = self.r.wait(wait)?;
            self.now_us = self.start.elapsed().as_micros() as u64;
            for c in &cqes {
                if self.r.is_live(c) {
                    self.dispatch(*c);
                }
            }
            self.r.give_back(cqes);
            self.timers();
            self.now_us = self.start.elapsed().as_micros() as u64;
            self.open_loop_sends();
            self.r.ring.pool.grow_if_low();
        }
        Ok(Part {
            hist: self.hist,
            messages: self.messages,
            bytes: self.bytes,
            established: self.established,
            failed: self.failed,
            alive: self.alive_at_stop,
            errors: self.errors,
            hb_sent: self.hb_sent,
            hb_echoed: self.hb_echoed,
            hb_lost: self.hb_lost,
            closed_clean: self.closed_clean,
            tls_resumed: self.tls_resumed,
            tls_full: self.tls_full,
        })
    }
}

pub(super) fn ud(slot: u32, generation: u32, op: Op) -> UserData {
    UserData::new(slot, generation, op, ConnId::CLIENT)
}

/// The errno's short name, for error kinds.
pub(super) fn errno(e: i32) -> String {
    ringway_proxy::sys::errno_name(e)
}

impl BenchWorker {
    /// Handshakes in flight at most per worker.
    const CONNECTING_MAX: usize = 512;

    /// Start connections as the mode allows: all at once (bounded connects in flight), at a
    /// rate (idle), or keeping C in flight until N are done (connect).
    pub(super) fn open_more(&mut self) {
        if self.phase() == STOP {
            return;
        }
        let interval_us = if self.opts.mode == Mode::Idle && self.plan.rate > 0.0 {
            (1e6 / self.plan.rate) as u64
        } else {
            0
        };
        while self.started < self.to_open() && self.connecting < Self::CONNECTING_MAX {
            if self.opts.mode == Mode::Connect && self.r.slots.len() >= self.plan.conns.max(1) {
                break;
            }
            if interval_us > 0 {
                if self.now_us < self.next_open_us {
                    break;
                }
                self.next_open_us = self
                    .next_open_us
                    .max(self.now_us.saturating_sub(interval_us * 8))
                    + interval_us;
            }
            self.started += 1;
            if let Err(kind) = self.start_conn() {
                self.failed += 1;
                self.shared.failed.fetch_add(1, Ordering::Relaxed);
                self.error(kind);
            }
        }
    }

    pub(super) fn start_conn(&mut self) -> Result<(), String> {
        let target = self.opts.target.addr;
        let source = (!self.plan.source.is_empty()).then(|| {
            self.src_next += 1;
            self.plan.source[(self.src_next - 1) % self.plan.source.len()]
        });
        let fd = ringway_proxy::sys::connect_socket(target, source, true)
            .map_err(|e| format!("socket:{}", errno(e)))?;
        let now = self.now_us;
        let mut sock = match &self.opts.tls {
            None => Transport::plain(fd),
            Some(t) => match Transport::client(fd, t.config.clone(), t.name.clone()) {
                Ok(s) => s,
                Err(e) => {
                    let _ = nix::unistd::close(fd);
                    return Err(format!("tls:{e}"));
                }
            },
        };
        // Connecting: not ready to send, the connect counts as an op (cancelled on a kill).
        sock.connect_started();
        let (slot, generation) = self.r.slots.insert(|_, _| BConn {
            sock,
            cancels: 0,
            phase: Phase::Connecting,
            head: Vec::new(),
            rx: FrameTracker::default(),
            rx_cur: None,
            rx_offset: 0,
            sent_at: VecDeque::new(),
            started_us: now,
            next_us: 0,
            timer_at: 0,
            errored: false,
        });
        self.r
            .ring
            .connect(fd, target, ud(slot, generation, Op::Connect));
        self.connecting += 1;
        self.shared.open.fetch_add(1, Ordering::Relaxed);
        self.schedule(slot, generation);
        Ok(())
    }

    /// When a connection next needs attention without I/O, in µs.
    pub(super) fn deadline(c: &BConn, timeout_us: u64, idle: bool) -> Option<u64> {
        let t = timeout_us;
        match c.phase {
            Phase::Connecting | Phase::Handshake | Phase::Closing => Some(c.started_us + t),
            Phase::Open if c.next_us > 0 && idle => Some(c.next_us),
            _ => None,
        }
    }

    pub(super) fn schedule(&mut self, slot: u32, generation: u32) {
        let t = self.opts.timeout.as_micros() as u64;
        let Some(c) = self.r.slots.get_mut(slot, generation) else {
            return;
        };
        let Some(d) = Self::deadline(c, t, self.opts.mode == Mode::Idle) else {
            return;
        };
        let d_ms = d.div_ceil(1000);
        if c.timer_at == 0 || d_ms < c.timer_at {
            c.timer_at = d_ms;
            self.r.wheel.insert(slot, d_ms);
        }
    }

    pub(super) fn timers(&mut self) {
        let mut fired = std::mem::take(&mut self.fired);
        fired.clear();
        self.r.wheel.advance(self.now_us / 1000, &mut fired);
        for &(slot, due) in &fired {
            // The slot's occupant now; an entry a closed connection left is not its (its
            // mark differs: `timer_at` is 0 or its own entry's, which replaced the old one).
            let Some((generation, c)) = self.r.slots.get_any_mut(slot) else {
                continue;
            };
            if c.timer_at != due {
                continue;
            }
            c.timer_at = 0;
            self.on_timer(slot, generation);
            if self.r.slots.get_mut(slot, generation).is_some() {
                self.schedule(slot, generation);
            }
        }
        self.fired = fired;
        for (slot, generation) in std::mem::take(&mut self.rearm) {
            if let Some((_, c, mut sys)) = self.r.split(slot, Some(generation))
                && c.phase != Phase::Dead
            {
                c.cancels += c.sock.sync_recv(&mut sys, ConnId::CLIENT, true, UNCAPPED);
            }
        }
    }

    pub(super) fn on_timer(&mut self, slot: u32, generation: u32) {
        let now = self.now_us;
        let phase = self.phase();
        let c = self.r.slots.get_mut(slot, generation).expect("live");
        match c.phase {
            Phase::Connecting | Phase::Handshake
                if now >= c.started_us + self.opts.timeout.as_micros() as u64 =>
            {
                let kind = if c.phase == Phase::Connecting {
                    "connect:timeout"
                } else {
                    "handshake:timeout"
                };
                self.fail(slot, generation, kind.into());
            }
            Phase::Closing if now >= c.started_us + self.opts.timeout.as_micros() as u64 => {
                self.error("close:timeout".into());
                self.kill(slot, Some(generation));
            }
            // Heartbeats (idle mode); open-loop throughput sends run off the precise schedule,
            // not the wheel.
            Phase::Open
                if c.next_us > 0
                    && now >= c.next_us
                    && phase != STOP
                    && self.opts.mode == Mode::Idle =>
            {
                let interval = self.opts.interval.as_micros() as u64;
                c.next_us += interval.max(1000);
                c.sent_at.push_back(now);
                self.hb_sent += 1;
                let (id, len) = (self.heartbeat, self.r.ring.heap.len(self.heartbeat) as u32);
                self.send_heap(slot, generation, id, len);
            }
            _ => {}
        }
    }

    /// Send `len` bytes of heap entry `id` (shared frames or a private one).
    pub(super) fn send_heap(&mut self, slot: u32, generation: u32, id: u32, len: u32) {
        self.send(
            slot,
            generation,
            Chunk {
                src: Src::Heap(id),
                off: 0,
                len,
            },
        );
    }

    /// Send one load message (the shared, pre-masked frame).
    pub(super) fn send_message(&mut self, slot: u32, generation: u32) {
        self.send_heap(slot, generation, self.message, self.message_len);
    }

    /// Microseconds between two sends of one connection in open-loop mode.
    pub(super) fn open_interval_us(&self) -> u64 {
        let per_conn = self.plan.rate / self.plan.conns.max(1) as f64;
        ((1e6 / per_conn) as u64).max(1)
    }

    /// Open loop: send every message that is due, each stamped with its scheduled time (so a
    /// stall shows up as latency instead of as fewer messages).
    pub(super) fn open_loop_sends(&mut self) {
        if self.phase() == STOP {
            self.sched.clear();
            return;
        }
        let interval = self.open_interval_us();
        while let Some(&std::cmp::Reverse((at, slot, generation))) = self.sched.peek() {
            if at > self.now_us {
                break;
            }
            self.sched.pop();
            let Some(c) = self.r.slots.get_mut(slot, generation) else {
                continue;
            };
            if c.phase != Phase::Open {
                continue;
            }
            c.sent_at.push_back(at);
            c.next_us = at + interval;
            let next = c.next_us;
            self.send_message(slot, generation);
            self.sched.push(std::cmp::Reverse((next, slot, generation)));
        }
    }

    /// A connection failed before (or while) being established.
    pub(super) fn fail(&mut self, slot: u32, generation: u32, kind: String) {
        if let Some(c) = self.r.slots.get_mut(slot, generation) {
            if matches!(c.phase, Phase::Connecting | Phase::Handshake) {
                self.failed += 1;
                self.shared.failed.fetch_add(1, Ordering::Relaxed);
            }
            c.errored = true;
        }
        self.error(kind);
        self.kill(slot, Some(generation));
    }

    /// Close a connection: cancel its ops; the fd is closed when they are back.
    pub(super) fn kill(&mut self, slot: u32, generation: Option<u32>) {
        let Some((g, c, mut sys)) = self.r.split(slot, generation) else {
            return;
        };
        if c.phase == Phase::Connecting {
            self.connecting -= 1;
        }
        if c.phase != Phase::Dead {
            c.phase = Phase::Dead;
            c.cancels += c.sock.retire(&mut sys, ConnId::CLIENT);
        }
        self.reap_conn(slot, g);
    }

    /// Free a dead connection once its ops and cancels are all back.
    pub(super) fn reap_conn(&mut self, slot: u32, generation: u32) {
        let Some((_, c, mut sys)) = self.r.split(slot, Some(generation)) else {
            return;
        };
        if c.phase == Phase::Dead && c.sock.close_when_done(&mut sys, c.cancels.into(), false) {
            self.r.slots.remove(slot);
            self.shared.open.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Queue `ch` and start sending (shared frames are never freed: see `put_shared`).
    pub(super) fn send(&mut self, slot: u32, generation: u32, ch: Chunk) {
        match self.r.split(slot, Some(generation)) {
            Some((_, c, mut sys)) if c.phase != Phase::Dead => {
                c.sock.push(&mut sys, ch);
                c.sock.kick(&mut sys, ConnId::CLIENT);
            }
            Some((_, _, mut sys)) => sys.release(ch),
            // Gone: the chunk is a shared frame, or a Pong nothing else names.
            None => {
                if let Src::Heap(id) = ch.src {
                    self.r.ring.heap.free(id);
                }
            }
        }
    }

    /// Statistics taken when the coordinator says stop: who is alive, which heartbeats are lost.
    pub(super) fn tally_at_stop(&mut self) {
        let t = self.opts.timeout.as_micros() as u64;
        let now = self.now_us;
        for k in self.r.slots.keys() {
            let Some((_, c)) = self.r.slots.get_any_mut(k) else {
                continue;
            };
            if c.phase == Phase::Open && !c.errored {
                self.alive_at_stop += 1;
            }
            if self.opts.mode == Mode::Idle {
                self.hb_lost += c
                    .sent_at
                    .iter()
                    .filter(|&&s| now.saturating_sub(s) > t)
                    .count() as u64;
            }
        }
    }
}
