//! `ringway bench`: a WebSocket load generator on the same ring module as the proxy, one
//! worker per core, so the load side is not the bottleneck.
//!
//! Modes (each bounded in time and count, ending by itself):
//! - `throughput`: C connections, each sending a masked S-byte message and waiting for its
//!   echo (closed loop), or sending on a fixed total rate (open loop, `--rate`); after a
//!   warm-up, D seconds are measured: messages/s, bytes/s, latency percentiles (HDR).
//! - `connect`: N full handshakes at concurrency C, each followed by a clean close;
//!   handshakes/s and handshake latency percentiles.
//! - `idle`: N connections opened at `--rate` per second, held for H seconds while each sends a
//!   `{"type":"ping"}` heartbeat every P seconds; established / alive at the end / errors and
//!   heartbeat round trips. `--ready-file` is written when all are open (for memory probes).
//!
//! Each socket can bind a source address from `--source CIDR` with IP_BIND_ADDRESS_NO_PORT, so
//! hundreds of thousands of connections are not limited by one address's ephemeral ports.

use std::collections::{BTreeMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use hdrhistogram::Histogram;

use crate::reactor::{Conn, Reactor, Recv, RingSys, Sent, Sys};
use crate::uring::{Chunk, Cqe, Op, Ring, RingConfig, Side, Src, UNCAPPED, UserData};
use crate::ws::{self, FrameTracker, opcode};

/// What to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Throughput,
    Connect,
    Idle,
}

/// A `ws://host:port/path` target.
#[derive(Clone, Debug)]
pub struct Target {
    pub addr: SocketAddr,
    pub host: String,
    pub path: String,
}

impl Target {
    /// Parse `ws://IP:PORT/path` (host names are not resolved; use an address).
    pub fn parse(s: &str) -> anyhow::Result<Target> {
        let rest = s
            .strip_prefix("ws://")
            .ok_or_else(|| anyhow::anyhow!("target {s:?}: expected ws://IP:PORT/path"))?;
        let (hostport, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let addr: SocketAddr = hostport
            .parse()
            .map_err(|_| anyhow::anyhow!("target {s:?}: {hostport:?} is not IP:PORT"))?;
        Ok(Target {
            addr,
            host: hostport.to_string(),
            path: path.to_string(),
        })
    }
}

/// Source addresses from a CIDR such as `127.0.0.0/16` (network and broadcast skipped when the
/// block has more than two addresses), or one address.
pub fn parse_source(s: &str) -> anyhow::Result<Vec<IpAddr>> {
    crate::sys::source_addresses(s, 12).map_err(|m| anyhow::anyhow!("--source: {m}"))
}

/// Everything a run needs.
#[derive(Clone, Debug)]
pub struct Opts {
    pub mode: Mode,
    pub target: Target,
    pub connections: usize,
    pub count: usize,
    pub size: usize,
    pub duration: Duration,
    pub warmup: Duration,
    /// throughput: total messages/s (0: closed loop); idle: new connections per second.
    pub rate: f64,
    pub hold: Duration,
    pub interval: Duration,
    pub source: Vec<IpAddr>,
    pub workers: usize,
    pub timeout: Duration,
    pub ready_file: Option<std::path::PathBuf>,
    pub progress: bool,
}

// Phases, set by the coordinator, read by workers (0: opening).
const WARMUP: u8 = 1;
const MEASURE: u8 = 2;
const STOP: u8 = 3;

/// Live counters shared by the workers and the coordinator (for progress and phase changes).
#[derive(Default)]
struct Shared {
    phase: AtomicU8,
    open: AtomicU64,
    established: AtomicU64,
    failed: AtomicU64,
    messages: AtomicU64,
    done: AtomicU64,
}

/// A worker's result.
struct Part {
    hist: Histogram<u64>,
    messages: u64,
    bytes: u64,
    established: u64,
    failed: u64,
    alive: u64,
    errors: BTreeMap<String, u64>,
    hb_sent: u64,
    hb_echoed: u64,
    hb_lost: u64,
    closed_clean: u64,
}

/// The report printed at the end (and as JSON with `--json`).
#[derive(Debug, serde::Serialize)]
pub struct Report {
    pub mode: String,
    pub target: String,
    pub workers: usize,
    pub connections: usize,
    pub established: u64,
    pub failed: u64,
    pub alive_at_end: u64,
    pub size: usize,
    pub seconds: f64,
    pub messages: u64,
    pub messages_per_sec: f64,
    pub bytes_per_sec: f64,
    pub handshakes_per_sec: f64,
    pub closed_clean: u64,
    pub heartbeats_sent: u64,
    pub heartbeats_echoed: u64,
    pub heartbeats_lost: u64,
    pub latency_us: Latency,
    pub errors: BTreeMap<String, u64>,
}

#[derive(Debug, Default, serde::Serialize)]
pub struct Latency {
    pub count: u64,
    pub mean: f64,
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
}

impl Latency {
    fn of(h: &Histogram<u64>) -> Latency {
        if h.is_empty() {
            return Latency::default();
        }
        Latency {
            count: h.len(),
            mean: h.mean(),
            p50: h.value_at_quantile(0.5),
            p90: h.value_at_quantile(0.9),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
        }
    }
}

impl Report {
    /// The human summary.
    pub fn human(&self) -> String {
        let mut o = format!(
            "{} {}: {} workers, {} connections established, {} failed, {} alive at end\n",
            self.mode, self.target, self.workers, self.established, self.failed, self.alive_at_end
        );
        match self.mode.as_str() {
            "throughput" => o.push_str(&format!(
                "  {} messages of {} B in {:.2}s: {:.0} msg/s, {:.1} MB/s\n",
                self.messages,
                self.size,
                self.seconds,
                self.messages_per_sec,
                self.bytes_per_sec / 1e6
            )),
            "connect" => o.push_str(&format!(
                "  {} handshakes in {:.2}s: {:.0}/s; {} closed cleanly\n",
                self.established, self.seconds, self.handshakes_per_sec, self.closed_clean
            )),
            _ => o.push_str(&format!(
                "  heartbeats: {} sent, {} echoed, {} lost\n",
                self.heartbeats_sent, self.heartbeats_echoed, self.heartbeats_lost
            )),
        }
        let l = &self.latency_us;
        o.push_str(&format!(
            "  latency µs: p50 {} p90 {} p99 {} p99.9 {} max {} (n={})\n",
            l.p50, l.p90, l.p99, l.p999, l.max, l.count
        ));
        for (k, v) in &self.errors {
            o.push_str(&format!("  error {k}: {v}\n"));
        }
        o
    }
}

/// Raise RLIMIT_NOFILE for `conns` sockets, or explain what to raise.
fn ensure_fds(conns: usize) -> anyhow::Result<()> {
    let want = conns as u64 + 64;
    let got = crate::sys::raise_nofile(want);
    if got < want {
        bail!(
            "{conns} connections need {want} file descriptors but RLIMIT_NOFILE allows {got}: \
             raise it (ulimit -n / LimitNOFILE) or split the load over several `ringway bench` processes"
        );
    }
    Ok(())
}

/// Run a benchmark and return its report.
pub fn run(opts: Opts) -> anyhow::Result<Report> {
    if let Err(why) = crate::uring::probe() {
        bail!("{why}");
    }
    let conns_in_use = match opts.mode {
        Mode::Connect => opts.connections.min(opts.count),
        _ => opts.connections,
    };
    if conns_in_use == 0 {
        bail!("nothing to do: --connections (and --count for connect) must be > 0");
    }
    ensure_fds(conns_in_use)?;
    let workers = opts.workers.clamp(1, conns_in_use);
    let shared = Arc::new(Shared::default());
    let start = Instant::now();
    let mut handles = Vec::new();
    for w in 0..workers {
        let share = |n: usize| n / workers + usize::from(w < n % workers);
        let plan = Plan {
            conns: share(opts.connections),
            count: share(opts.count),
            rate: opts.rate / workers as f64,
            source: opts
                .source
                .iter()
                .copied()
                .skip(w)
                .step_by(workers)
                .collect(),
        };
        let (opts, shared) = (opts.clone(), shared.clone());
        handles.push(
            std::thread::Builder::new()
                .name(format!("bench-w{w}"))
                .spawn(move || -> anyhow::Result<Part> {
                    let ring = Ring::new(RingConfig {
                        sq_entries: 2048,
                        buffers: 4096,
                        buf_size: 16 * 1024,
                    })
                    .context("setting up io_uring")?;
                    BenchWorker::new(ring, opts, plan, shared, start)?.run()
                })?,
        );
    }
    let seconds = coordinate(&opts, &shared, start, conns_in_use, workers);
    let mut parts = Vec::new();
    for h in handles {
        parts.push(
            h.join()
                .map_err(|_| anyhow::anyhow!("bench worker panicked"))??,
        );
    }
    let mut hist =
        Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3).expect("histogram bounds");
    let mut errors = BTreeMap::new();
    let planned = match opts.mode {
        Mode::Connect => opts.count as u64,
        _ => opts.connections as u64,
    };
    let (mut messages, mut bytes, mut established, mut failed, mut alive) = (0, 0, 0, 0, 0);
    let (mut hb_sent, mut hb_echoed, mut hb_lost, mut closed_clean) = (0, 0, 0, 0);
    for p in &parts {
        hist.add(&p.hist).expect("same bounds");
        messages += p.messages;
        bytes += p.bytes;
        established += p.established;
        failed += p.failed;
        alive += p.alive;
        hb_sent += p.hb_sent;
        hb_echoed += p.hb_echoed;
        hb_lost += p.hb_lost;
        closed_clean += p.closed_clean;
        for (k, v) in &p.errors {
            *errors.entry(k.clone()).or_insert(0) += v;
        }
    }
    if established + failed < planned {
        // Opening ran out of time (the target could not keep up with --rate): say so.
        errors.insert(
            "not-opened-in-time".to_string(),
            planned - established - failed,
        );
    }
    let report = Report {
        mode: match opts.mode {
            Mode::Throughput => "throughput",
            Mode::Connect => "connect",
            Mode::Idle => "idle",
        }
        .into(),
        target: format!("ws://{}{}", opts.target.host, opts.target.path),
        workers,
        connections: opts.connections,
        established,
        failed,
        alive_at_end: alive,
        size: opts.size,
        seconds,
        messages,
        messages_per_sec: if seconds > 0.0 {
            messages as f64 / seconds
        } else {
            0.0
        },
        bytes_per_sec: if seconds > 0.0 {
            bytes as f64 / seconds
        } else {
            0.0
        },
        handshakes_per_sec: if opts.mode == Mode::Connect && seconds > 0.0 {
            established as f64 / seconds
        } else {
            0.0
        },
        closed_clean,
        heartbeats_sent: hb_sent,
        heartbeats_echoed: hb_echoed,
        heartbeats_lost: hb_lost,
        latency_us: Latency::of(&hist),
        errors,
    };
    if established == 0 {
        let why = report
            .errors
            .iter()
            .max_by_key(|(_, v)| **v)
            .map(|(k, v)| format!("{k} ({v} of {failed})"))
            .unwrap_or_else(|| "no connection completed".into());
        bail!("no connection to {} succeeded: {why}", report.target);
    }
    Ok(report)
}

/// Drive the phases; return the measured seconds.
fn coordinate(opts: &Opts, shared: &Shared, start: Instant, conns: usize, workers: usize) -> f64 {
    let total = match opts.mode {
        Mode::Connect => opts.count as u64,
        _ => conns as u64,
    };
    // Opening may take N/rate plus slack; every wait below is bounded.
    let open_limit = match opts.mode {
        // Twice the planned opening time; what is not open by then counts as not opened.
        Mode::Idle if opts.rate > 0.0 => {
            Duration::from_secs_f64(2.0 * total as f64 / opts.rate)
                + opts.timeout
                + Duration::from_secs(10)
        }
        Mode::Connect => Duration::from_secs(3600),
        _ => opts.timeout + Duration::from_secs(10),
    };
    let mut last_progress = Instant::now();
    // On a terminal, one live line (indicatif); otherwise a line per second, for logs.
    let bar = if opts.progress && std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        let b = indicatif::ProgressBar::new_spinner();
        b.set_style(
            indicatif::ProgressStyle::with_template("{spinner} [{elapsed_precise}] {msg}")
                .expect("static template"),
        );
        Some(b)
    } else {
        None
    };
    let last_counts = std::cell::Cell::new((0u64, 0u64));
    let progress = |label: &str, since: Instant| {
        if !opts.progress {
            return;
        }
        let (est, msgs) = (
            shared.established.load(Ordering::Relaxed),
            shared.messages.load(Ordering::Relaxed),
        );
        let (est0, msgs0) = last_counts.replace((est, msgs));
        let line = format!(
            "{label}: open {} established {} (+{}/s) failed {} messages {} ({}/s)",
            shared.open.load(Ordering::Relaxed),
            est,
            est.saturating_sub(est0),
            shared.failed.load(Ordering::Relaxed),
            msgs,
            msgs.saturating_sub(msgs0),
        );
        match &bar {
            Some(b) => b.set_message(line),
            None => eprintln!("[{:>6.1}s] {line}", since.elapsed().as_secs_f64()),
        }
    };
    let tick = |last: &mut Instant, label: &str| {
        std::thread::sleep(Duration::from_millis(20));
        if let Some(b) = &bar {
            b.tick();
        }
        if last.elapsed() >= Duration::from_secs(1) {
            *last = Instant::now();
            progress(label, start);
        }
    };
    if opts.mode == Mode::Connect {
        while shared.done.load(Ordering::Relaxed) < workers as u64 && start.elapsed() < open_limit {
            tick(&mut last_progress, "connect");
        }
        let secs = start.elapsed().as_secs_f64();
        shared.phase.store(STOP, Ordering::Relaxed);
        return secs;
    }
    // Open everything.
    while shared.established.load(Ordering::Relaxed) + shared.failed.load(Ordering::Relaxed) < total
        && start.elapsed() < open_limit
    {
        tick(&mut last_progress, "opening");
    }
    progress("opened", start);
    match opts.mode {
        Mode::Throughput => {
            shared.phase.store(WARMUP, Ordering::Relaxed);
            let w = Instant::now();
            while w.elapsed() < opts.warmup {
                tick(&mut last_progress, "warm-up");
            }
            let m = Instant::now();
            shared.phase.store(MEASURE, Ordering::Relaxed);
            while m.elapsed() < opts.duration {
                tick(&mut last_progress, "measuring");
            }
            let secs = m.elapsed().as_secs_f64();
            shared.phase.store(STOP, Ordering::Relaxed);
            secs
        }
        Mode::Idle => {
            if let Some(f) = &opts.ready_file {
                let _ = std::fs::write(
                    f,
                    format!("{}\n", shared.established.load(Ordering::Relaxed)),
                );
            }
            shared.phase.store(MEASURE, Ordering::Relaxed);
            let h = Instant::now();
            while h.elapsed() < opts.hold {
                tick(&mut last_progress, "holding");
            }
            let secs = h.elapsed().as_secs_f64();
            shared.phase.store(STOP, Ordering::Relaxed);
            secs
        }
        Mode::Connect => unreachable!(),
    }
}

/// One worker's share.
struct Plan {
    conns: usize,
    count: usize,
    rate: f64,
    source: Vec<IpAddr>,
}

#[derive(Debug, PartialEq, Eq, Clone, Copy)]
enum Phase {
    Connecting,
    Handshake,
    Open,
    /// Close frame sent; waiting for the echo of it.
    Closing,
    /// Cancelling and closing the socket.
    Dead,
}

struct BConn {
    /// The socket: recv state, send queue, cancel-then-close.
    sock: Conn,
    /// Cancels of this connection's ops in flight.
    cancels: u8,
    phase: Phase,
    head: Vec<u8>,
    /// Incoming frame header bytes, and what is left of the current frame's payload.
    /// Frames coming from the server.
    rx: FrameTracker,
    /// Send times (µs) of messages whose echo has not come back, oldest first.
    sent_at: VecDeque<u64>,
    started_us: u64,
    next_us: u64,
    timer_at: u64,
    addr_id: Option<u32>,
    errored: bool,
}

struct BenchWorker {
    /// The ring, the connections' slots, the timer wheel (in ms of `start`).
    r: Reactor<BConn>,
    /// The reactor's `Sys` wants a connect-address cell; connects here go to the ring directly.
    no_connect: Option<u32>,
    opts: Opts,
    plan: Plan,
    shared: Arc<Shared>,
    start: Instant,
    now_us: u64,
    /// Shared bytes: the handshake request, the message frame, the heartbeat, a Close.
    handshake: u32,
    message: u32,
    message_len: u32,
    heartbeat: u32,
    close: u32,
    accept_key: String,
    payload: Vec<u8>,
    hist: Histogram<u64>,
    messages: u64,
    bytes: u64,
    established: u64,
    failed: u64,
    started: usize,
    errors: BTreeMap<String, u64>,
    hb_sent: u64,
    hb_echoed: u64,
    closed_clean: u64,
    src_next: usize,
    fired: Vec<((u32, u32), u64)>,
    next_open_us: u64,
    alive_at_stop: u64,
    hb_lost: u64,
    rearm: Vec<(u32, u32)>,
    connecting: usize,
    scratch: Vec<u8>,
    /// Open loop: when each connection sends next, earliest first. The loop sleeps exactly
    /// until the first one (a timer wheel's tick would add up to a tick of delay to every send,
    /// and the latency is measured from the scheduled time).
    sched: std::collections::BinaryHeap<std::cmp::Reverse<(u64, u32, u32)>>,
}

const KEY: &str = "cmluZ3dheS1iZW5jaC1rZXk=";

/// A `Sys` over this worker's ring for one connection (a macro: it borrows the worker's fields,
/// not the worker, so the connection's slot can be borrowed beside it).
macro_rules! sys {
    ($w:expr, $slot:expr, $generation:expr) => {
        RingSys {
            ring: &mut $w.r.ring,
            slot: $slot,
            generation: $generation,
            now_ms: $w.now_us / 1000,
            parked: &mut $w.r.parked,
            connect_addr: &mut $w.no_connect,
        }
    };
}

impl BenchWorker {
    fn new(
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
        // Open-loop sends need millisecond timers; handshake and heartbeat timers do not.
        let tick = match opts.mode {
            Mode::Throughput if opts.rate > 0.0 => 1,
            Mode::Idle => 50,
            _ => 10,
        };
        Ok(BenchWorker {
            r: Reactor::new(ring, plan.conns.max(1), tick, 8192),
            no_connect: None,
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

    fn phase(&self) -> u8 {
        self.shared.phase.load(Ordering::Relaxed)
    }

    fn error(&mut self, kind: String) {
        *self.errors.entry(kind).or_insert(0) += 1;
    }

    /// How many connections this worker should open in total.
    fn to_open(&self) -> usize {
        match self.opts.mode {
            Mode::Connect => self.plan.count,
            _ => self.plan.conns,
        }
    }

    fn run(mut self) -> anyhow::Result<Part> {
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
            let wait = match self.sched.peek() {
                Some(std::cmp::Reverse((at, _, _))) => {
                    Duration::from_micros(at.saturating_sub(self.now_us)).min(tick)
                }
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
        })
    }
}

fn ud(slot: u32, generation: u32, op: Op) -> UserData {
    UserData::new(slot, generation, op, Side::Down)
}

/// The errno's short name, for error kinds.
fn errno(e: i32) -> String {
    crate::sys::errno_name(e)
}

impl BenchWorker {
    /// Start connections as the mode allows: all at once (bounded connects in flight), at a
    /// rate (idle), or keeping C in flight until N are done (connect).
    fn open_more(&mut self) {
        if self.phase() == STOP {
            return;
        }
        const CONNECTING_MAX: usize = 512;
        let interval_us = if self.opts.mode == Mode::Idle && self.plan.rate > 0.0 {
            (1e6 / self.plan.rate) as u64
        } else {
            0
        };
        while self.started < self.to_open() && self.connecting < CONNECTING_MAX {
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

    fn start_conn(&mut self) -> Result<(), String> {
        let target = self.opts.target.addr;
        let source = (!self.plan.source.is_empty()).then(|| {
            self.src_next += 1;
            self.plan.source[(self.src_next - 1) % self.plan.source.len()]
        });
        let fd = crate::sys::connect_socket(target, source)
            .map_err(|e| format!("socket:{}", errno(e)))?;
        let now = self.now_us;
        let mut sock = Conn::new(fd);
        // Connecting: not ready to send, the connect counts as an op (cancelled on a kill).
        sock.ready = false;
        sock.ops = 1;
        let (slot, generation) = self.r.slots.insert(|_, _| BConn {
            sock,
            cancels: 0,
            phase: Phase::Connecting,
            head: Vec::new(),
            rx: FrameTracker::default(),
            sent_at: VecDeque::new(),
            started_us: now,
            next_us: 0,
            timer_at: 0,
            addr_id: None,
            errored: false,
        });
        let id = self
            .r
            .ring
            .connect(fd, target, ud(slot, generation, Op::Connect));
        self.r
            .slots
            .get_mut(slot, generation)
            .expect("just inserted")
            .addr_id = Some(id);
        self.connecting += 1;
        self.shared.open.fetch_add(1, Ordering::Relaxed);
        self.schedule(slot, generation);
        Ok(())
    }

    /// When a connection next needs attention without I/O, in µs.
    fn deadline(c: &BConn, timeout_us: u64, idle: bool) -> Option<u64> {
        let t = timeout_us;
        match c.phase {
            Phase::Connecting | Phase::Handshake | Phase::Closing => Some(c.started_us + t),
            Phase::Open if c.next_us > 0 && idle => Some(c.next_us),
            _ => None,
        }
    }

    fn schedule(&mut self, slot: u32, generation: u32) {
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
            self.r.wheel.insert((slot, generation), d_ms);
        }
    }

    fn timers(&mut self) {
        let mut fired = std::mem::take(&mut self.fired);
        fired.clear();
        self.r.wheel.advance(self.now_us / 1000, &mut fired);
        for &((slot, generation), due) in &fired {
            let Some(c) = self.r.slots.get_mut(slot, generation) else {
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
            let mut sys = sys!(self, slot, generation);
            if let Some(c) = self.r.slots.get_mut(slot, generation)
                && c.phase != Phase::Dead
            {
                c.cancels += c.sock.sync_recv(&mut sys, Side::Down, true, UNCAPPED);
            }
        }
    }

    fn on_timer(&mut self, slot: u32, generation: u32) {
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
    fn send_heap(&mut self, slot: u32, generation: u32, id: u32, len: u32) {
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
    fn send_message(&mut self, slot: u32, generation: u32) {
        self.send_heap(slot, generation, self.message, self.message_len);
    }

    /// Microseconds between two sends of one connection in open-loop mode.
    fn open_interval_us(&self) -> u64 {
        let per_conn = self.plan.rate / self.plan.conns.max(1) as f64;
        ((1e6 / per_conn) as u64).max(1)
    }

    /// Open loop: send every message that is due, each stamped with its scheduled time (so a
    /// stall shows up as latency instead of as fewer messages).
    fn open_loop_sends(&mut self) {
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
    fn fail(&mut self, slot: u32, generation: u32, kind: String) {
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
    fn kill(&mut self, slot: u32, generation: Option<u32>) {
        let Some((g, c)) = self.r.slots.get_any_mut(slot) else {
            return;
        };
        if generation.is_some_and(|x| x != g) {
            return;
        }
        if c.phase == Phase::Connecting {
            self.connecting -= 1;
        }
        if c.phase != Phase::Dead {
            c.phase = Phase::Dead;
            let mut sys = sys!(self, slot, g);
            c.cancels += c.sock.retire(&mut sys, Side::Down);
        }
        self.reap_conn(slot, g);
    }

    /// Free a dead connection once its ops and cancels are all back.
    fn reap_conn(&mut self, slot: u32, generation: u32) {
        let mut sys = sys!(self, slot, generation);
        let Some(c) = self.r.slots.get_mut(slot, generation) else {
            return;
        };
        if c.phase == Phase::Dead && c.sock.close_when_done(&mut sys, c.cancels, false) {
            self.r.slots.remove(slot);
            self.shared.open.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Queue `ch` and start sending (shared frames are never freed: see `put_shared`).
    fn send(&mut self, slot: u32, generation: u32, ch: Chunk) {
        let mut sys = sys!(self, slot, generation);
        match self.r.slots.get_mut(slot, generation) {
            Some(c) if c.phase != Phase::Dead => {
                c.sock.push(ch);
                c.sock.kick(&mut sys, Side::Down);
            }
            _ => sys.release(ch),
        }
    }

    /// Statistics taken when the coordinator says stop: who is alive, which heartbeats are lost.
    fn tally_at_stop(&mut self) {
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

    fn dispatch(&mut self, cq: Cqe) {
        let Some(op) = cq.ud.op() else { return };
        let (slot, generation) = (cq.ud.slot(), cq.ud.generation());
        match op {
            Op::Connect => self.on_connect(slot, generation, cq.res),
            Op::Recv => self.on_recv(slot, generation, cq),
            Op::Send => self.on_send(slot, generation, cq.res),
            Op::Cancel => {
                self.r
                    .slots
                    .get_mut(slot, generation)
                    .expect("live")
                    .cancels -= 1;
            }
            _ => {}
        }
        self.reap_conn(slot, generation);
        self.schedule(slot, generation);
    }

    fn on_connect(&mut self, slot: u32, generation: u32, res: i32) {
        let c = self.r.slots.get_mut(slot, generation).expect("live");
        c.sock.ops -= 1;
        if let Some(id) = c.addr_id.take() {
            self.r.ring.connect_done(id);
        }
        let c = self.r.slots.get_mut(slot, generation).expect("live");
        if c.phase != Phase::Connecting {
            return;
        }
        self.connecting -= 1;
        if res < 0 {
            c.phase = Phase::Handshake; // counted as failed in fail()
            return self.fail(slot, generation, format!("connect:{}", errno(-res)));
        }
        c.phase = Phase::Handshake;
        c.sock.ready = true;
        let mut sys = sys!(self, slot, generation);
        c.cancels += c.sock.sync_recv(&mut sys, Side::Down, true, UNCAPPED);
        let len = self.r.ring.heap.len(self.handshake) as u32;
        self.send_heap(slot, generation, self.handshake, len);
    }

    fn on_send(&mut self, slot: u32, generation: u32, res: i32) {
        let mut sys = sys!(self, slot, generation);
        let c = self.r.slots.get_mut(slot, generation).expect("live");
        let dead = c.phase == Phase::Dead;
        if let Sent::Failed(e) = c.sock.on_sent(&mut sys, Side::Down, res, dead) {
            c.errored = true;
            self.error(format!("send:{}", errno(e)));
            self.kill(slot, Some(generation));
        }
    }

    fn on_recv(&mut self, slot: u32, generation: u32, cq: Cqe) {
        let c = self.r.slots.get_mut(slot, generation).expect("live");
        c.sock.recv_ended(cq.more());
        if cq.res <= 0 {
            self.r.ring.pool.release_of(&cq);
            let phase = c.phase;
            match -cq.res {
                0 => {
                    if phase == Phase::Closing {
                        // The server closed after our Close: clean enough.
                        self.closed_clean += 1;
                        self.kill(slot, Some(generation));
                    } else if phase != Phase::Dead {
                        let kind = if phase == Phase::Handshake {
                            "handshake:closed"
                        } else {
                            "closed-by-peer"
                        };
                        if phase == Phase::Handshake {
                            return self.fail(slot, generation, kind.into());
                        }
                        c.errored = true;
                        self.error(kind.into());
                        self.kill(slot, Some(generation));
                    }
                }
                libc::ECANCELED => {}
                libc::ENOBUFS => self.rearm.push((slot, generation)),
                e => {
                    if phase == Phase::Handshake {
                        return self.fail(slot, generation, format!("handshake:{}", errno(e)));
                    }
                    if phase != Phase::Dead {
                        c.errored = true;
                        self.error(format!("recv:{}", errno(e)));
                        self.kill(slot, Some(generation));
                    }
                }
            }
            return;
        }
        let bid = cq.buf_id().expect("data comes in a buffer");
        // Copy into a reused scratch buffer (no allocation per message) so the pool buffer
        // goes straight back to the kernel.
        let mut data = std::mem::take(&mut self.scratch);
        data.clear();
        data.extend_from_slice(self.r.ring.pool.bytes(bid, cq.res as u32));
        self.r.ring.pool.release(bid);
        self.on_bytes(slot, generation, &data);
        self.scratch = data;
        if let Some(c) = self.r.slots.get_mut(slot, generation)
            && c.sock.recv == Recv::Off
            && c.phase != Phase::Dead
            && cq.res > 0
        {
            self.rearm.push((slot, generation));
        }
    }

    fn on_bytes(&mut self, slot: u32, generation: u32, mut data: &[u8]) {
        let c = self.r.slots.get_mut(slot, generation).expect("live");
        if c.phase == Phase::Handshake {
            c.head.extend_from_slice(data);
            let mut headers = [httparse::EMPTY_HEADER; 64];
            let mut resp = httparse::Response::new(&mut headers);
            let n = match resp.parse(&c.head) {
                Ok(httparse::Status::Complete(n)) => n,
                Ok(httparse::Status::Partial) if c.head.len() < 16384 => return,
                _ => return self.fail(slot, generation, "handshake:malformed response".into()),
            };
            let status = resp.code.unwrap_or(0);
            if status != 101 {
                return self.fail(slot, generation, format!("handshake:HTTP {status}"));
            }
            let accept_ok = resp.headers.iter().any(|h| {
                h.name.eq_ignore_ascii_case("sec-websocket-accept")
                    && h.value == self.accept_key.as_bytes()
            });
            if !accept_ok {
                return self.fail(
                    slot,
                    generation,
                    "handshake:bad Sec-WebSocket-Accept".into(),
                );
            }
            let rest = c.head.split_off(n);
            c.head = Vec::new();
            self.connected(slot, generation);
            if !rest.is_empty() {
                self.on_bytes(slot, generation, &rest);
            }
            return;
        }
        while !data.is_empty() {
            let Some(c) = self.r.slots.get_mut(slot, generation) else {
                return;
            };
            if c.phase == Phase::Dead {
                return;
            }
            let Ok(step) = c.rx.step(data) else {
                c.errored = true;
                self.error("protocol:bad frame".into());
                return self.kill(slot, Some(generation));
            };
            let taken = &data[..step.used];
            data = &data[step.used..];
            let h = match step.piece {
                ws::Piece::Partial => continue,
                ws::Piece::Header(h) => {
                    if h.mask.is_some() {
                        c.errored = true;
                        self.error("protocol:masked frame from server".into());
                        return self.kill(slot, Some(generation));
                    }
                    if h.opcode == opcode::BINARY
                        && self.opts.mode == Mode::Throughput
                        && h.len != self.payload.len() as u64
                    {
                        c.errored = true;
                        self.error("echo:wrong length".into());
                        return self.kill(slot, Some(generation));
                    }
                    if h.opcode == opcode::PING {
                        // Answer with a Pong carrying the same payload (masked, as a client).
                        let n = (h.len as usize).min(data.len());
                        let pong = ws::frame(opcode::PONG, &data[..n], Some([1, 2, 3, 4]));
                        let len = pong.len() as u32;
                        let id = self.r.ring.heap.put(pong);
                        self.send_heap(slot, generation, id, len);
                    }
                    h
                }
                ws::Piece::Payload { header: h, offset } => {
                    if h.opcode == opcode::BINARY && self.opts.mode == Mode::Throughput {
                        let pos = offset as usize;
                        if self.payload.get(pos..pos + taken.len()) != Some(taken) {
                            c.errored = true;
                            self.error("echo:corrupt payload".into());
                            return self.kill(slot, Some(generation));
                        }
                    }
                    h
                }
            };
            if step.end {
                self.frame_done(slot, generation, h.opcode, h.fin);
            }
        }
    }

    /// The 101 arrived and checked out.
    fn connected(&mut self, slot: u32, generation: u32) {
        let now = self.now_us;
        let open_interval = self.open_interval_us();
        self.established += 1;
        self.shared.established.fetch_add(1, Ordering::Relaxed);
        let c = self.r.slots.get_mut(slot, generation).expect("live");
        let started = c.started_us;
        c.phase = Phase::Open;
        match self.opts.mode {
            Mode::Connect => {
                let _ = self.hist.record(now.saturating_sub(started).max(1));
                c.phase = Phase::Closing;
                c.started_us = now;
                let len = self.r.ring.heap.len(self.close) as u32;
                self.send_heap(slot, generation, self.close, len);
            }
            Mode::Idle => {
                let interval = self.opts.interval.as_micros().max(1000) as u64;
                c.next_us = now + (u64::from(slot) * 7919 + generation as u64 * 104729) % interval;
            }
            Mode::Throughput if self.plan.rate > 0.0 => {
                let interval = open_interval;
                c.next_us = now + (u64::from(slot) * 7919) % interval;
                self.sched
                    .push(std::cmp::Reverse((c.next_us, slot, generation)));
            }
            Mode::Throughput => {
                c.sent_at.push_back(now);
                self.send_message(slot, generation);
            }
        }
    }

    fn frame_done(&mut self, slot: u32, generation: u32, op: u8, fin: bool) {
        let now = self.now_us;
        let phase = self.phase();
        let c = self.r.slots.get_mut(slot, generation).expect("live");
        match op {
            opcode::BINARY | opcode::TEXT | opcode::CONTINUATION if fin => {
                let Some(sent) = c.sent_at.pop_front() else {
                    return; // a message we did not ask for (e.g. a server greeting)
                };
                self.shared.messages.fetch_add(1, Ordering::Relaxed);
                let record = match self.opts.mode {
                    Mode::Throughput => phase == MEASURE,
                    _ => true,
                };
                if record {
                    let _ = self.hist.record(now.saturating_sub(sent).max(1));
                    self.messages += 1;
                    self.bytes += self.payload.len() as u64;
                }
                if self.opts.mode == Mode::Idle {
                    self.hb_echoed += 1;
                }
                if self.opts.mode == Mode::Throughput && self.plan.rate <= 0.0 && phase != STOP {
                    c.sent_at.push_back(now);
                    self.send_message(slot, generation);
                }
            }
            opcode::CLOSE => {
                if c.phase == Phase::Closing {
                    self.closed_clean += 1;
                } else {
                    c.errored = true;
                    self.error("closed-by-server".into());
                }
                self.kill(slot, Some(generation));
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_and_sources() {
        let t = Target::parse("ws://127.0.0.1:8080/ws/chat").unwrap();
        assert_eq!(t.addr, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(t.path, "/ws/chat");
        assert_eq!(Target::parse("ws://[::1]:9").unwrap().path, "/");
        assert!(Target::parse("http://x").is_err());
        assert!(Target::parse("ws://localhost:80/").is_err());
        let s = parse_source("127.0.0.0/30").unwrap();
        assert_eq!(
            s,
            vec![IpAddr::from([127, 0, 0, 1]), IpAddr::from([127, 0, 0, 2])]
        );
        assert_eq!(parse_source("127.0.0.0/16").unwrap().len(), 65534);
        assert_eq!(
            parse_source("10.0.0.5").unwrap(),
            vec![IpAddr::from([10, 0, 0, 5])]
        );
        assert!(parse_source("127.0.0.0/33").is_err());
    }

    #[test]
    fn latency_report_reads_the_histogram() {
        let mut h = Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3).unwrap();
        for v in 1..=1000u64 {
            h.record(v).unwrap();
        }
        let l = Latency::of(&h);
        assert_eq!(l.count, 1000);
        assert!((499..=501).contains(&l.p50), "{}", l.p50);
        assert!((989..=991).contains(&l.p99), "{}", l.p99);
        assert_eq!(l.max, 1000);
        assert_eq!(Latency::of(&Histogram::<u64>::new(3).unwrap()).count, 0);
    }

    #[test]
    fn the_frames_it_sends_are_masked_and_decode() {
        let payload = b"abc";
        let f = ws::frame(opcode::BINARY, payload, Some([0x5a, 0x17, 0xc3, 0x88]));
        let h = ws::parse_header(&f).unwrap().unwrap();
        assert!(h.mask.is_some());
        let mut p = f[h.header_len..].to_vec();
        ws::apply_mask(&mut p, h.mask.unwrap(), 0);
        assert_eq!(p, payload);
    }
}
