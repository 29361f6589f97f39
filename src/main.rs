//! The `ringway` command line: parse arguments, hand off to the subcommand.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Every heap byte is counted: `/status` shows `heap_bytes`, the exact figure memory tests use.
#[global_allocator]
static HEAP: ringway_proxy::uring::counting::Counting = ringway_proxy::uring::counting::Counting;

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
        /// configuration's runtime.upgrade_socket, and its ws:// and wss:// tunnels with them,
        /// over HTTP/1.1 and HTTP/2 (runtime.upgrade_tunnels); it then drains what stays (an
        /// HTTP/2 connection with a request in flight, among others) and exits.
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
    /// Tell some of the running proxy's WebSocket tunnels to reconnect (the drain's Close, 1012
    /// by default, at a frame boundary), spread evenly over a window: after a scale-out, so that
    /// the new instances get their share. The proxy is found through the file's [admin] listen.
    #[command(
        after_help = "Examples:\n  ringway rebalance --config /etc/ringway/ringway.toml --shed 0.25 --over 60s\n  ringway rebalance --config /etc/ringway/ringway.toml --keep 10000"
    )]
    Rebalance {
        /// The configuration file the proxy runs with.
        #[arg(short, long)]
        config: PathBuf,
        /// This fraction of the tunnels (0 < F <= 1).
        #[arg(long, conflicts_with = "keep", required_unless_present = "keep")]
        shed: Option<f64>,
        /// Down to this many tunnels.
        #[arg(long)]
        keep: Option<u64>,
        /// The window the Close frames are spread over (default: runtime.drain_spread).
        #[arg(long)]
        over: Option<String>,
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
    Bench(Box<ringway_bench::command::BenchArgs>),
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

fn init_logging() {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_target(true)
        .with_max_level(tracing::Level::INFO)
        .init();
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Check { config } => return ringway_proxy::app::check(&config),
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
                    duration: ringway_proxy::app::duration_arg("duration", &duration)?,
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
        Command::Reload { config } => return ringway_proxy::app::reload(&config),
        Command::Rebalance {
            config,
            shed,
            keep,
            over,
        } => {
            let mut query = match (shed, keep) {
                (Some(f), _) => format!("shed={f}"),
                (None, Some(n)) => format!("keep={n}"),
                (None, None) => unreachable!("clap requires one"),
            };
            if let Some(o) = over {
                query.push_str(&format!("&over={o}"));
            }
            return ringway_proxy::app::rebalance(&config, &query);
        }
        Command::Run { config, upgrade } => {
            init_logging();
            return ringway_proxy::app::run(&config, upgrade);
        }
        Command::Bench(a) => {
            return match ringway_bench::command::bench(*a) {
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
            return match ringway_proxy::app::preflight::command(
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
            ringway_proxy::app::workers_arg(&workers)
                .and_then(|w| ringway_echo::run(&listen, w, health_file))
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
