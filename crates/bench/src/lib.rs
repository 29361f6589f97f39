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
//!   heartbeat round trips while all are held. `--ready-file` is written when all are open
//!   (for memory probes).
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

use ringway_proxy::reactor::{Reactor, Recv, Sent, Sys};
use ringway_proxy::tls::Transport;
use ringway_proxy::uring::{Chunk, ConnId, Cqe, Op, Ring, RingConfig, Src, UNCAPPED, UserData};
use ringway_proxy::ws::{self, FrameTracker, opcode};

/// What to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Throughput,
    Connect,
    Idle,
}

/// A `ws://host:port/path` or `wss://host:port/path` target.
#[derive(Clone, Debug)]
pub struct Target {
    pub addr: SocketAddr,
    pub host: String,
    pub path: String,
    /// `wss://`.
    pub tls: bool,
}

impl Target {
    /// Parse `ws://IP:PORT/path` or `wss://IP:PORT/path` (host names are not resolved; use an
    /// address, and `--sni` for the name TLS asks for).
    pub fn parse(s: &str) -> anyhow::Result<Target> {
        let (rest, tls) = match (s.strip_prefix("ws://"), s.strip_prefix("wss://")) {
            (Some(r), _) => (r, false),
            (_, Some(r)) => (r, true),
            _ => anyhow::bail!("target {s:?}: expected ws://IP:PORT/path or wss://IP:PORT/path"),
        };
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
            tls,
        })
    }
}

/// Source addresses from a CIDR such as `127.0.0.0/16` (network and broadcast skipped when the
/// block has more than two addresses), or one address.
pub fn parse_source(s: &str) -> anyhow::Result<Vec<IpAddr>> {
    ringway_proxy::sys::source_addresses(s, 12).map_err(|m| anyhow::anyhow!("--source: {m}"))
}

/// Everything a run needs.
#[derive(Clone, Debug)]
pub struct Opts {
    pub mode: Mode,
    pub target: Target,
    pub connections: usize,
    pub count: usize,
    /// connect: end each connection with a WebSocket close handshake (else: close the socket
    /// right after the 101).
    pub close_frame: bool,
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
    /// `wss://`: the client configuration and the server name asked for.
    pub tls: Option<BenchTls>,
}

/// TLS settings of a `wss://` run.
#[derive(Clone)]
pub struct BenchTls {
    pub config: Arc<rustls::ClientConfig>,
    pub name: rustls::pki_types::ServerName<'static>,
}

impl std::fmt::Debug for BenchTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "BenchTls({:?})", self.name)
    }
}

impl BenchTls {
    /// `ca`: verify the server against it; `None`: accept any certificate (`--insecure`).
    /// `sni`: the name asked for and verified (default: the target's address, no SNI).
    /// `resume`: offer session resumption (tickets, session IDs) after the first handshake,
    /// with tickets kept for `in_flight` handshakes at once.
    pub fn new(
        ca: Option<&std::path::Path>,
        sni: Option<&str>,
        target: &Target,
        resume: bool,
        in_flight: usize,
    ) -> anyhow::Result<BenchTls> {
        let mut config = ringway_proxy::tls::setup::client_config_from(ca)
            .map_err(|e| anyhow::anyhow!("--ca: {e}"))?;
        config.resumption = if resume {
            rustls::client::Resumption::store(Arc::new(tickets::Tickets::new(in_flight)))
        } else {
            rustls::client::Resumption::disabled()
        };
        let name = match sni {
            Some(n) => rustls::pki_types::ServerName::try_from(n.to_string())
                .map_err(|_| anyhow::anyhow!("--sni {n:?} is not a server name"))?,
            None => rustls::pki_types::ServerName::IpAddress(target.addr.ip().into()),
        };
        Ok(BenchTls {
            config: Arc::new(config),
            name,
        })
    }
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
    /// Worker threads that have returned or panicked. A worker runs until told to stop, so
    /// one that ends before that failed: the coordinator stops waiting for it (a connect run
    /// would otherwise wait out its hour) and the join reports why.
    ended: AtomicU64,
}

/// Counts its worker thread in `Shared::ended` however the thread ends (a panic included).
struct Ended(Arc<Shared>);

impl Drop for Ended {
    fn drop(&mut self) {
        self.0.ended.fetch_add(1, Ordering::Relaxed);
    }
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
    tls_resumed: u64,
    tls_full: u64,
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
    /// wss://: handshakes that resumed an earlier TLS session, and full ones.
    pub tls_resumed: u64,
    pub tls_full: u64,
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
                "  {} handshakes in {:.2}s: {:.0}/s; {} closed cleanly{}\n",
                self.established,
                self.seconds,
                self.handshakes_per_sec,
                self.closed_clean,
                if self.tls_full + self.tls_resumed > 0 {
                    format!(
                        "; TLS: {} full, {} resumed",
                        self.tls_full, self.tls_resumed
                    )
                } else {
                    String::new()
                }
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
    let got = ringway_proxy::sys::raise_nofile(want);
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
    if let Err(why) = ringway_proxy::uring::probe() {
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
    let handles = spawn_workers(&opts, workers, &shared, start)?;
    let seconds = coordinate(&opts, &shared, start, conns_in_use, workers);
    let mut parts = Vec::new();
    for h in handles {
        parts.push(
            h.join()
                .map_err(|_| anyhow::anyhow!("bench worker panicked"))??,
        );
    }
    let report = report(&opts, workers, seconds, &parts);
    if report.established == 0 {
        let why = report
            .errors
            .iter()
            .max_by_key(|(_, v)| **v)
            .map(|(k, v)| format!("{k} ({v} of {})", report.failed))
            .unwrap_or_else(|| "no connection completed".into());
        bail!("no connection to {} succeeded: {why}", report.target);
    }
    Ok(report)
}

/// The load's worker threads, each with its share of the connections, the count, the rate
/// and the source addresses, on a ring of its own.
fn spawn_workers(
    opts: &Opts,
    workers: usize,
    shared: &Arc<Shared>,
    start: Instant,
) -> anyhow::Result<Vec<std::thread::JoinHandle<anyhow::Result<Part>>>> {
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
                    let _ended = Ended(shared.clone());
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
    Ok(handles)
}

/// The workers' parts summed into the run's report.
fn report(opts: &Opts, workers: usize, seconds: f64, parts: &[Part]) -> Report {
    let mut hist =
        Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3).expect("histogram bounds");
    let mut errors = BTreeMap::new();
    let planned = match opts.mode {
        Mode::Connect => opts.count as u64,
        _ => opts.connections as u64,
    };
    let (mut messages, mut bytes, mut established, mut failed, mut alive) = (0, 0, 0, 0, 0);
    let (mut hb_sent, mut hb_echoed, mut hb_lost, mut closed_clean) = (0, 0, 0, 0);
    let (mut tls_resumed, mut tls_full) = (0, 0);
    for p in parts {
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
        tls_resumed += p.tls_resumed;
        tls_full += p.tls_full;
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
    Report {
        mode: match opts.mode {
            Mode::Throughput => "throughput",
            Mode::Connect => "connect",
            Mode::Idle => "idle",
        }
        .into(),
        target: format!(
            "{}://{}{}",
            if opts.target.tls { "wss" } else { "ws" },
            opts.target.host,
            opts.target.path
        ),
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
        tls_resumed,
        tls_full,
        errors,
    }
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
        while shared.done.load(Ordering::Relaxed) < workers as u64
            && shared.ended.load(Ordering::Relaxed) == 0
            && start.elapsed() < open_limit
        {
            tick(&mut last_progress, "connect");
        }
        let secs = start.elapsed().as_secs_f64();
        shared.phase.store(STOP, Ordering::Relaxed);
        return secs;
    }
    // Open everything.
    while shared.established.load(Ordering::Relaxed) + shared.failed.load(Ordering::Relaxed) < total
        && shared.ended.load(Ordering::Relaxed) == 0
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

pub mod command;
mod completions;
mod tickets;
mod worker;

use worker::{BenchWorker, Plan};

#[cfg(test)]
mod tests;
