//! `ringway bench`'s command line: its arguments (clap) and the run with its report.

use std::path::PathBuf;
use std::process::ExitCode;

use crate::{BenchTls, Mode, Opts, Target, parse_source, run};

#[derive(clap::ValueEnum, Clone, Copy)]
pub enum BenchMode {
    /// C connections echoing S-byte messages (closed loop, or open loop with --rate).
    Throughput,
    /// N full handshakes (each then closed as --close says) at concurrency C.
    Connect,
    /// N connections opened at --rate/s and held with heartbeats.
    Idle,
}

/// How `connect` ends each connection after its 101.
#[derive(clap::ValueEnum, Clone, Copy)]
pub enum CloseArg {
    /// A WebSocket close handshake: a Close frame, its echo, then the socket closed.
    Websocket,
    /// The socket closed at once, with no Close frame (as a client that just goes away).
    Tcp,
}

#[derive(clap::Args)]
pub struct BenchArgs {
    /// What to measure.
    #[arg(value_enum)]
    mode: BenchMode,
    /// ws://IP:PORT/path or wss://IP:PORT/path to connect to.
    #[arg(short, long)]
    target: String,
    /// wss://: verify the server against this CA (PEM).
    #[arg(long, conflicts_with = "insecure")]
    ca: Option<PathBuf>,
    /// wss://: accept any server certificate.
    #[arg(long)]
    insecure: bool,
    /// wss://: the server name to ask for (SNI) and verify (default: the target's address).
    #[arg(long)]
    sni: Option<String>,
    /// wss://: no session resumption: every handshake is a full one.
    #[arg(long)]
    no_resume: bool,
    /// Connections (throughput, idle) or concurrency (connect).
    #[arg(short, long, default_value_t = 100)]
    connections: usize,
    /// Handshakes in total (connect mode only) [default: 10000].
    #[arg(short = 'n', long)]
    count: Option<usize>,
    /// connect: how each connection ends after its 101.
    #[arg(long, value_enum, default_value = "websocket")]
    close: CloseArg,
    /// Message size in bytes (throughput).
    #[arg(short, long, default_value_t = 64)]
    size: usize,
    /// Measured time (throughput).
    #[arg(short, long, default_value = "10s")]
    duration: String,
    /// Time before measuring (throughput).
    #[arg(long, default_value = "2s")]
    warmup: String,
    /// throughput: total messages per second, open loop (0: closed loop). idle: connections opened per second (0: all at once).
    #[arg(short, long, default_value_t = 0.0)]
    rate: f64,
    /// How long to hold the connections (idle).
    #[arg(long, default_value = "30s")]
    hold: String,
    /// Heartbeat period per connection (idle).
    #[arg(long, default_value = "25s")]
    interval: String,
    /// Source addresses for the sockets, as a CIDR (e.g. 127.0.0.0/16).
    #[arg(long)]
    source: Option<String>,
    /// Worker threads ("auto": one per core).
    #[arg(short, long, default_value = "auto")]
    workers: String,
    /// Connect + handshake timeout per connection (also: a heartbeat unanswered this long is lost).
    #[arg(long, default_value = "10s")]
    timeout: String,
    /// idle: write the number of open connections to this file once all are open (holding).
    #[arg(long)]
    ready_file: Option<PathBuf>,
    /// Print one JSON object on stdout instead of the summary.
    #[arg(long)]
    json: bool,
    /// No progress lines on stderr.
    #[arg(short, long)]
    quiet: bool,
}

/// Run the load generator; exit 0 when nothing failed, 1 when something did.
pub fn bench(a: BenchArgs) -> anyhow::Result<ExitCode> {
    if a.count.is_some() && !matches!(a.mode, BenchMode::Connect) {
        anyhow::bail!(
            "--count is the number of handshakes in connect mode; throughput and idle open \
             --connections (-c) connections"
        );
    }
    let target = Target::parse(&a.target)?;
    let tls = match (target.tls, &a.ca, a.insecure) {
        (false, None, false) => None,
        (false, _, _) => anyhow::bail!("--ca and --insecure are for wss:// targets"),
        (true, None, false) => {
            anyhow::bail!("a wss:// target needs --ca FILE (verify) or --insecure (do not)")
        }
        (true, ca, _) => Some(BenchTls::new(
            ca.as_deref(),
            a.sni.as_deref(),
            &target,
            !a.no_resume,
            a.connections,
        )?),
    };
    let opts = Opts {
        tls,
        mode: match a.mode {
            BenchMode::Throughput => Mode::Throughput,
            BenchMode::Connect => Mode::Connect,
            BenchMode::Idle => Mode::Idle,
        },
        target: target.clone(),
        connections: a.connections,
        count: a.count.unwrap_or(10_000),
        close_frame: matches!(a.close, CloseArg::Websocket),
        size: a.size,
        duration: ringway_proxy::app::duration_arg("duration", &a.duration)?,
        warmup: ringway_proxy::app::duration_arg("warmup", &a.warmup)?,
        rate: a.rate,
        hold: ringway_proxy::app::duration_arg("hold", &a.hold)?,
        interval: ringway_proxy::app::duration_arg("interval", &a.interval)?,
        source: match &a.source {
            Some(s) => parse_source(s)?,
            None => Vec::new(),
        },
        workers: ringway_proxy::app::workers_arg(&a.workers)?,
        timeout: ringway_proxy::app::duration_arg("timeout", &a.timeout)?,
        ready_file: a.ready_file,
        progress: !a.quiet,
    };
    let report = run(opts)?;
    if a.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print!("{}", report.human());
    }
    let bad = report.failed > 0 || report.heartbeats_lost > 0 || !report.errors.is_empty();
    Ok(if bad {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}
