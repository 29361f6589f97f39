//! The `ringway` command line: parse arguments, hand off to the subcommand.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Every heap byte is counted: `/status` shows `heap_bytes`, the exact figure memory tests use.
#[global_allocator]
static HEAP: ringway::uring::counting::Counting = ringway::uring::counting::Counting;

#[derive(Parser)]
#[command(
    name = "ringway",
    version,
    about = "A WebSocket reverse proxy on io_uring, one worker per core"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Try ringway with nothing to set up: two echo backends and the proxy on free loopback
    /// ports, a short load through it with a report (messages/s, latency, memory per
    /// connection), then serving until Ctrl-C, which drains and exits.
    #[command(
        after_help = "Examples:\n  ringway demo\n  ringway demo --duration 20s --connections 500\n  ringway demo --no-load"
    )]
    Demo {
        /// How long the load runs (after 1 s of warm-up).
        #[arg(short, long, default_value = "5s")]
        duration: String,
        /// Start the backends and the proxy and serve, without the load and the report.
        #[arg(long)]
        no_load: bool,
        /// WebSockets echoing messages during the load.
        #[arg(short, long, default_value_t = 100)]
        connections: usize,
        /// Idle WebSockets held to measure the proxy's memory per connection.
        #[arg(long, default_value_t = 2000)]
        idle: usize,
    },
    /// Run the proxy in the foreground (logs and access log to stderr).
    #[command(
        after_help = "Examples:\n  ringway run --config /etc/ringway/ringway.toml\n  ringway run --config /etc/ringway/ringway.toml --upgrade   (a new binary takes over from the running one)"
    )]
    Run {
        /// The TOML configuration file.
        #[arg(short, long)]
        config: PathBuf,
        /// Binary upgrade: take the listening sockets over from the ringway serving the
        /// configuration's runtime.upgrade_socket; it then drains its tunnels and exits.
        #[arg(long)]
        upgrade: bool,
    },
    /// Validate a configuration and print what was understood (exit 1 on an error).
    #[command(after_help = "Example:\n  ringway check --config /etc/ringway/ringway.toml")]
    Check {
        #[arg(short, long)]
        config: PathBuf,
    },
    /// Reload the running proxy's configuration (as SIGHUP does) and report the outcome: the
    /// file is checked here, then the proxy (found through the file's [admin] listen) reloads it.
    /// New sessions use the new configuration; established tunnels keep theirs.
    #[command(after_help = "Example:\n  ringway reload --config /etc/ringway/ringway.toml")]
    Reload {
        /// The configuration file the proxy runs with.
        #[arg(short, long)]
        config: PathBuf,
    },
    /// Translate an nginx configuration (following include) into ringway TOML: what maps onto
    /// a key is written with the nginx line it came from; anything else is a warning naming
    /// its file and line and what ringway does instead. The result is checked as `ringway
    /// check` would (exit 1 when it does not check, or on an nginx syntax error).
    #[command(
        after_help = "Example:\n  ringway import-nginx /etc/nginx/nginx.conf -o /etc/ringway/ringway.toml"
    )]
    ImportNginx {
        /// The nginx configuration file (nginx.conf, or one conf.d file).
        file: PathBuf,
        /// Write the TOML here (default: standard output).
        #[arg(short, long)]
        output: Option<PathBuf>,
        /// Overwrite the --output file if it exists.
        #[arg(long)]
        force: bool,
    },
    /// A WebSocket echo backend; also answers GET /health and GET /headers.
    #[command(
        after_help = "Example:\n  ringway echo --listen 127.0.0.1:9001 --listen 127.0.0.1:9002"
    )]
    Echo {
        /// Address to listen on (repeat for several).
        #[arg(short, long, required = true)]
        listen: Vec<std::net::SocketAddr>,
        /// Worker threads ("auto": one per core).
        #[arg(short, long, default_value = "auto")]
        workers: String,
        /// `GET /health` answers 503 while this file exists (a backend failing its health
        /// checks on demand, still echoing).
        #[arg(long)]
        health_file: Option<PathBuf>,
    },
    /// WebSocket load generator: throughput, connect rate, or idle connections with heartbeats.
    #[command(
        after_help = "Examples:\n  ringway bench throughput --target ws://127.0.0.1:8080/ws/ -c 100 -d 10s\n  ringway bench connect --target wss://127.0.0.1:8443/ --ca ca.pem -c 50 -n 20000\n  ringway bench idle --target ws://127.0.0.1:8080/ws/ -c 9000 --source 127.0.1.0/24 --hold 60s"
    )]
    Bench(Box<BenchArgs>),
    /// Check the kernel and limits against what the configured connections need (exit 1 on a failure).
    #[command(
        after_help = "Examples:\n  ringway preflight --config /etc/ringway/ringway.toml\n  sudo ringway preflight --connections 200000 --apply"
    )]
    Preflight {
        /// Size the needs from this config (max_connections, upstreams, listeners).
        #[arg(short, long)]
        config: Option<PathBuf>,
        /// Size the needs for N connections (default: the config's max_connections, else 200000).
        #[arg(short = 'n', long)]
        connections: Option<u64>,
        /// Write the sysctl fixes through /proc/sys (root); without root, print what it would do.
        #[arg(long)]
        apply: bool,
        /// Print one JSON object instead of the table.
        #[arg(long)]
        json: bool,
        /// Read /proc from under this directory (for tests).
        #[arg(long, default_value = "/", hide = true)]
        root: PathBuf,
    },
}

#[derive(clap::ValueEnum, Clone, Copy)]
enum BenchMode {
    /// C connections echoing S-byte messages (closed loop, or open loop with --rate).
    Throughput,
    /// N full handshakes (each then closed cleanly) at concurrency C.
    Connect,
    /// N connections opened at --rate/s and held with heartbeats.
    Idle,
}

#[derive(clap::Args)]
struct BenchArgs {
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

fn duration_arg(name: &str, s: &str) -> anyhow::Result<std::time::Duration> {
    ringway::config::parse_duration(s).map_err(|e| anyhow::anyhow!("--{name}: {e}"))
}

/// Run the load generator; exit 0 when nothing failed, 1 when something did.
fn bench(a: BenchArgs) -> anyhow::Result<ExitCode> {
    use ringway_bench::{BenchTls, Mode, Opts, Target, parse_source, run};
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
        size: a.size,
        duration: duration_arg("duration", &a.duration)?,
        warmup: duration_arg("warmup", &a.warmup)?,
        rate: a.rate,
        hold: duration_arg("hold", &a.hold)?,
        interval: duration_arg("interval", &a.interval)?,
        source: match &a.source {
            Some(s) => parse_source(s)?,
            None => Vec::new(),
        },
        workers: workers_arg(&a.workers)?,
        timeout: duration_arg("timeout", &a.timeout)?,
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

fn init_logging() {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_target(true)
        .with_max_level(tracing::Level::INFO)
        .init();
}

fn workers_arg(s: &str) -> anyhow::Result<usize> {
    if s == "auto" {
        return Ok(ringway::config::available_cpus());
    }
    match s.parse::<usize>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => anyhow::bail!("--workers: expected \"auto\" or a number >= 1, got {s:?}"),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Check { config } => return ringway::app::check(&config),
        Command::Demo {
            duration,
            no_load,
            connections,
            idle,
        } => {
            let run = || -> anyhow::Result<ExitCode> {
                if connections == 0 || idle == 0 {
                    anyhow::bail!("--connections and --idle must be at least 1");
                }
                ringway_demo::demo(ringway_demo::DemoOpts {
                    duration: duration_arg("duration", &duration)?,
                    no_load,
                    connections,
                    idle,
                })
            };
            return match run() {
                Ok(code) => code,
                Err(e) => {
                    eprintln!("ringway demo: {e:#}");
                    ExitCode::from(2)
                }
            };
        }
        Command::ImportNginx {
            file,
            output,
            force,
        } => return ringway_nginx::command(&file, output.as_deref(), force),
        Command::Reload { config } => return ringway::app::reload(&config),
        Command::Run { config, upgrade } => {
            init_logging();
            return ringway::app::run(&config, upgrade);
        }
        Command::Bench(a) => {
            return match bench(*a) {
                Ok(code) => code,
                Err(e) => {
                    eprintln!("ringway bench: {e:#}");
                    ExitCode::from(2)
                }
            };
        }
        Command::Preflight {
            config,
            connections,
            apply,
            json,
            root,
        } => {
            return match ringway::app::preflight::command(
                config.as_deref(),
                connections,
                apply,
                json,
                &root,
            ) {
                Ok(code) => code,
                Err(e) => {
                    eprintln!("ringway preflight: {e:#}");
                    ExitCode::from(2)
                }
            };
        }
        Command::Echo {
            listen,
            workers,
            health_file,
        } => {
            init_logging();
            workers_arg(&workers).and_then(|w| ringway_echo::run(&listen, w, health_file))
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ringway: {e:#}");
            ExitCode::from(2)
        }
    }
}
