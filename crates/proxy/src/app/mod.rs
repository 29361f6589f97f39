//! What the proxy's own subcommands do, once each: `run` (preflight at start, workers, admin,
//! signals), `check` (load and describe a configuration), `reload` and `preflight` (the host's
//! table). (`import-nginx` is the ringway-nginx crate's.)
//! `main.rs` only parses the command line and dispatches here or to the tools.

pub mod handover;
pub mod preflight;
pub mod reload;
pub mod run;
pub mod upgrade;

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

/// A `--workers` argument: "auto" (one per core) or a number >= 1.
pub fn workers_arg(s: &str) -> anyhow::Result<usize> {
    if s == "auto" {
        return Ok(crate::config::available_cpus());
    }
    match s.parse::<usize>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => anyhow::bail!("--workers: expected \"auto\" or a number >= 1, got {s:?}"),
    }
}

/// A duration argument (`--name`), written as in the configuration ("10s", "500ms").
pub fn duration_arg(name: &str, s: &str) -> anyhow::Result<std::time::Duration> {
    crate::config::parse_duration(s).map_err(|e| anyhow::anyhow!("--{name}: {e}"))
}

/// `ringway run`: exit 1 on a configuration error, 2 when the proxy cannot run.
pub fn run(path: &Path, upgrade: bool) -> ExitCode {
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
    match run::run(cfg, path, upgrade) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ringway: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// `ringway reload`: check the file, then ask the running proxy (through its admin endpoint,
/// `POST /reload`) to reload the file it was started with, and print what it answered. Exit 0
/// when the new configuration is in force, 1 when the old one stays.
pub fn reload(path: &Path) -> ExitCode {
    let cfg = match Config::load(path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("ringway: {e}\nringway: not reloading: the configuration in force stays");
            return ExitCode::from(1);
        }
    };
    let Some(admin) = cfg.admin else {
        eprintln!(
            "ringway: {} has no [admin] listen: `ringway reload` asks the running proxy through it. \
             Send SIGHUP instead (`kill -HUP <pid>`); the outcome is in its log",
            path.display()
        );
        return ExitCode::from(1);
    };
    ask_admin(&admin, "/reload", "reload")
}

/// `ringway rebalance`: ask the running proxy (through its admin endpoint, `POST
/// /rebalance?QUERY`) to shed tunnels, and print what it answered. Exit 0 when it is under
/// way.
pub fn rebalance(path: &Path, query: &str) -> ExitCode {
    let cfg = match Config::load(path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("ringway: {e}");
            return ExitCode::from(1);
        }
    };
    let Some(admin) = cfg.admin else {
        eprintln!(
            "ringway: {} has no [admin] listen: `ringway rebalance` asks the running proxy through it",
            path.display()
        );
        return ExitCode::from(1);
    };
    ask_admin(&admin, &format!("/rebalance?{query}"), "rebalance")
}

/// `POST target` to the admin endpoint; its body printed (to stderr, with `what` and the
/// status, when refused).
fn ask_admin(admin: &crate::config::admin::Admin, target: &str, what: &str) -> ExitCode {
    let to = admin_address(admin);
    match post_admin(to, admin.token.as_ref(), target) {
        Ok((200, body)) => {
            print!("{body}");
            ExitCode::SUCCESS
        }
        Ok((status, body)) => {
            eprint!("ringway: {what} refused ({status}): {body}");
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("ringway: asking the proxy on {to} to {what}: {e}");
            ExitCode::from(1)
        }
    }
}

/// Where to reach the admin endpoint from this host: its address, or loopback when it
/// listens on every address.
pub fn admin_address(admin: &crate::config::admin::Admin) -> std::net::SocketAddr {
    let mut to = admin.listen;
    if to.ip().is_unspecified() {
        to.set_ip(match to {
            std::net::SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            std::net::SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    to
}

/// `POST target` to the admin endpoint at `to` (with the bearer token when there is one): its
/// status and body.
fn post_admin(
    to: std::net::SocketAddr,
    token: Option<&crate::config::admin::Token>,
    target: &str,
) -> std::io::Result<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&to, std::time::Duration::from_secs(5))?;
    // The reload runs behind any already queued: give it the time the endpoint gives it.
    s.set_read_timeout(Some(std::time::Duration::from_secs(150)))?;
    let mut req =
        format!("POST {target} HTTP/1.1\r\nHost: {to}\r\nContent-Length: 0\r\n").into_bytes();
    if let Some(t) = token {
        req.extend_from_slice(b"Authorization: Bearer ");
        req.extend_from_slice(t.as_bytes());
        req.extend_from_slice(b"\r\n");
    }
    req.extend_from_slice(b"\r\n");
    s.write_all(&req)?;
    let mut out = Vec::new();
    s.take(1 << 20).read_to_end(&mut out)?;
    match crate::http::parse_response(&out, out.len(), false) {
        Ok(Some(r)) => Ok((
            r.status,
            String::from_utf8_lossy(&out[r.head_len..]).into_owned(),
        )),
        _ => Err(std::io::Error::other(format!(
            "not an HTTP answer: {:?}",
            String::from_utf8_lossy(&out[..out.len().min(200)])
        ))),
    }
}
