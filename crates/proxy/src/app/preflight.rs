//! The preflight, once for `ringway preflight` and for `ringway run` at start: read this host
//! (and io_uring), apply the fixes when asked and allowed, read it again; then print the table
//! or JSON (the command) or log what needs attention (at start).

use std::path::Path;
use std::process::ExitCode;

use crate::config::Config;
use crate::tuning::{self, Applied, Finding, Needs, Report, State, Status};

/// What the preflight found on this host.
pub struct Assessment {
    pub state: State,
    pub found: Vec<Finding>,
    /// What `apply` did, when it was asked to.
    pub applied: Option<Vec<Applied>>,
}

/// Read the host under `root` against `needs`; with `apply`, write the sysctl fixes (as root)
/// and read again.
pub fn assess(root: &Path, needs: &Needs, apply: bool) -> Assessment {
    let mut state = tuning::read_state(root);
    state.io_uring = crate::uring::probe().map(|m| format!("{m:?}"));
    let mut found = tuning::findings(&state, needs);
    let applied = apply.then(|| {
        let a = tuning::apply(&found, root, state.root);
        if state.root {
            let mut again = tuning::read_state(root);
            again.io_uring = state.io_uring.clone();
            found = tuning::findings(&again, needs);
            state = again;
        }
        a
    });
    Assessment {
        state,
        found,
        applied,
    }
}

/// `ringway preflight`: the table (or JSON); exit 1 on a failure.
pub fn command(
    config: Option<&Path>,
    connections: Option<u64>,
    apply: bool,
    json: bool,
    root: &Path,
) -> anyhow::Result<ExitCode> {
    let cfg = match config {
        Some(p) => Some(Config::load(p).map_err(|e| anyhow::anyhow!("{e}"))?),
        None => None,
    };
    let n = connections
        .or(cfg.as_ref().map(|c| u64::from(c.runtime.max_connections)))
        .unwrap_or(tuning::NOFILE_RECOMMENDED);
    let needs = Needs::new(n, cfg.as_ref());
    let Assessment {
        state,
        found,
        applied,
    } = assess(root, &needs, apply);
    let status = tuning::worst(&found);
    if json {
        let r = Report {
            connections: needs.connections,
            file_descriptors: needs.fds,
            status,
            findings: &found,
            applied,
        };
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        if let Some(a) = &applied {
            for x in a {
                if x.done {
                    println!("applied {}: {} -> {}", x.setting, x.before, x.after);
                } else {
                    println!(
                        "not applied {}: {} -> {} ({})",
                        x.setting, x.before, x.after, x.note
                    );
                }
            }
            if a.is_empty() {
                println!("nothing to apply");
            }
            println!();
        }
        print!("{}", tuning::table(&found, &needs));
        if state.nofile_hard.is_some_and(|h| h < needs.fds) {
            println!(
                "\nThis process can hold about {} sessions: above that, run several ringway processes on the same port (SO_REUSEPORT) or raise LimitNOFILE.",
                state
                    .nofile_hard
                    .unwrap_or(0)
                    .saturating_sub(tuning::FDS_RESERVED)
                    / tuning::FDS_PER_SESSION
            );
        }
    }
    Ok(if status == Status::Fail {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// At `ringway run`: one log line per setting that is not ok. With `[tuning] apply = true`
/// and root, the sysctl fixes are written first.
pub fn at_start(cfg: &Config, needs: &Needs) {
    let root = Path::new("/");
    let a = assess(root, needs, cfg.tuning_apply && is_root(root));
    if cfg.tuning_apply && a.applied.is_none() {
        tracing::warn!("[tuning] apply = true, but not running as root: nothing applied");
    }
    for x in a.applied.iter().flatten() {
        if x.done {
            tracing::info!("tuning: {} {} -> {}", x.setting, x.before, x.after);
        } else {
            tracing::warn!("tuning: {} not set: {}", x.setting, x.note);
        }
    }
    let found = a.found;
    let mut bad = 0;
    for f in found.iter().filter(|f| f.status != Status::Ok) {
        bad += 1;
        let level = if f.status == Status::Fail {
            "FAIL"
        } else {
            "warn"
        };
        tracing::warn!(
            "preflight {level}: {} is {} (needed {}): {}",
            f.setting,
            f.current,
            f.needed,
            f.why
        );
    }
    if bad == 0 {
        tracing::info!(
            "preflight: all {} checks ok for {} connections",
            found.len(),
            needs.connections
        );
    } else {
        tracing::warn!(
            "preflight: {bad} of {} checks need attention; `ringway preflight --config {}` prints the table",
            found.len(),
            cfg.source
        );
    }
}

fn is_root(root: &Path) -> bool {
    tuning::read_state(root).root
}
