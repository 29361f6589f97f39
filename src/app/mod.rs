//! What the proxy's own subcommands do, once each: `run` (preflight at start, workers, admin,
//! signals), `check` (load and describe a configuration) and `preflight` (the host's table).
//! `main.rs` only parses the command line and dispatches here or to the tools.

pub mod preflight;
pub mod run;

use std::path::Path;
use std::process::ExitCode;

use crate::config::Config;

/// `ringway check`: print what was understood; exit 1 with a line/field-precise error.
pub fn check(path: &Path) -> ExitCode {
    match Config::load(path) {
        Ok(c) => {
            for w in &c.warnings {
                eprintln!("ringway: warning: {w}");
            }
            print!("{}", c.describe());
            println!("{}: configuration OK", path.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("ringway: {e}");
            ExitCode::from(1)
        }
    }
}

/// `ringway run`: exit 1 on a configuration error, 2 when the proxy cannot run.
pub fn run(path: &Path) -> ExitCode {
    let cfg = match Config::load(path) {
        Ok(c) => {
            for w in &c.warnings {
                tracing::warn!("{w}");
            }
            c
        }
        Err(e) => {
            eprintln!("ringway: {e}");
            return ExitCode::from(1);
        }
    };
    match run::run(cfg) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ringway: {e:#}");
            ExitCode::from(2)
        }
    }
}
