//! The `ringway` command line: parse arguments, hand off to the subcommand.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

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
    /// Run the proxy in the foreground (logs and access log to stderr).
    Run {
        /// The TOML configuration file.
        #[arg(short, long)]
        config: PathBuf,
    },
    /// Validate a configuration and print what was understood (exit 1 on an error).
    Check {
        #[arg(short, long)]
        config: PathBuf,
    },
    /// A WebSocket echo backend; also answers GET /health and GET /headers.
    Echo {
        /// Address to listen on (repeat for several).
        #[arg(short, long, required = true)]
        listen: Vec<std::net::SocketAddr>,
        /// Worker threads ("auto": one per core).
        #[arg(short, long, default_value = "auto")]
        workers: String,
    },
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
        Command::Check { config } => {
            return match ringway::config::Config::load(&config) {
                Ok(c) => {
                    print!("{}", c.describe());
                    println!("{}: configuration OK", config.display());
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("ringway: {e}");
                    ExitCode::from(1)
                }
            };
        }
        Command::Run { config } => {
            init_logging();
            match ringway::config::Config::load(&config) {
                Ok(c) => ringway::runtime::run(c),
                Err(e) => {
                    eprintln!("ringway: {e}");
                    return ExitCode::from(1);
                }
            }
        }
        Command::Echo { listen, workers } => {
            init_logging();
            workers_arg(&workers).and_then(|w| ringway::tools::echo::run(&listen, w))
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
