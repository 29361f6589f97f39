//! Kernel and limits preflight: what this host has, what the configured connection count
//! needs, and what to change — instead of sysctl folklore.
//!
//! Pure decisions, thin effects: `read_state` reads text from a root directory (`/` normally,
//! a fake tree in tests), `findings` turns state and needs into a table without touching
//! anything, and `apply` is the small step that writes.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use crate::config::Config;

/// Descriptors a proxied session holds: the client socket and the upstream socket.
pub const FDS_PER_SESSION: u64 = 2;
/// Descriptors kept aside for listeners, rings, logs and the like, and the pipes of splicing
/// tunnels (two per pipe, [`crate::uring::pipe::PIPES_MAX`] at most).
pub const FDS_RESERVED: u64 = 64 + 2 * crate::uring::pipe::PIPES_MAX as u64;
/// The listen backlog ringway asks for (the kernel caps it at net.core.somaxconn).
pub const LISTEN_BACKLOG: u32 = 65535;
/// The playbook's worker_rlimit_nofile.
pub const NOFILE_RECOMMENDED: u64 = 200_000;
const CAP_SYS_RESOURCE: u32 = 24;

/// One sysctl's value as read, or why it could not be read.
pub type Reading = Result<String, String>;

/// What the host looks like (everything the decisions need, as text read from the root).
#[derive(Clone, Debug)]
pub struct State {
    pub nofile_soft: Option<u64>,
    pub nofile_hard: Option<u64>,
    pub nr_open: Reading,
    pub file_max: Reading,
    pub somaxconn: Reading,
    pub syn_backlog: Reading,
    pub netdev_backlog: Reading,
    pub tw_reuse: Reading,
    pub fin_timeout: Reading,
    /// `net.ipv4.tcp_migrate_req`: a closing SO_REUSEPORT listener hands its queued
    /// connections to another socket of the group instead of resetting them.
    pub migrate_req: Reading,
    pub port_range: Reading,
    pub io_uring_disabled: Reading,
    /// `net.netfilter.nf_conntrack_max`; absent when connection tracking is not loaded.
    pub conntrack_max: Reading,
    /// `net.ipv4.tcp_mem` (pages: low, pressure, high), `tcp_rmem` and `tcp_wmem` (bytes:
    /// min, default, max).
    pub tcp_mem: Reading,
    pub tcp_rmem: Reading,
    pub tcp_wmem: Reading,
    /// `net.ipv4.tcp_ehash_entries` (Linux 6.1+): buckets of TCP's established-socket hash,
    /// negative when the namespace shares the host's.
    pub ehash: Reading,
    /// `MemTotal` of /proc/meminfo, in bytes.
    pub mem_total: Option<u64>,
    /// The kernel's page size (the unit of `tcp_mem`).
    pub page_size: u64,
    /// Effective user id 0.
    pub root: bool,
    /// CAP_SYS_RESOURCE in the effective set (needed to raise a hard limit).
    pub cap_sys_resource: bool,
    /// `Err(why)` when io_uring cannot be used here (filled by the caller from a real probe).
    pub io_uring: Result<String, String>,
}

/// What the configuration (or `--connections N`) needs.
#[derive(Clone, Debug)]
pub struct Needs {
    pub connections: u64,
    pub fds: u64,
    pub backlog: u32,
    /// Per upstream: name, primary server addresses, number of source addresses (0: the kernel picks).
    pub upstreams: Vec<(String, Vec<SocketAddr>, usize)>,
}

impl Needs {
    /// Needs for `connections` proxied sessions, with the upstreams of `cfg` if given.
    pub fn new(connections: u64, cfg: Option<&Config>) -> Needs {
        let workers = cfg.map_or(1, |c| c.runtime.workers as u64);
        let listeners = cfg.map_or(1, |c| c.listeners.len() as u64);
        let upstreams = cfg
            .map(|c| {
                c.upstreams
                    .iter()
                    .map(|u| {
                        (
                            u.name.clone(),
                            u.peers
                                .iter()
                                .filter(|p| !p.backup)
                                .map(|p| p.addr)
                                .collect(),
                            u.source.len(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        Needs {
            connections,
            // two per session, one listener per address per worker, one ring per worker
            fds: connections * FDS_PER_SESSION + listeners * workers + workers + FDS_RESERVED,
            backlog: LISTEN_BACKLOG,
            upstreams,
        }
    }
}

/// ok / warn / fail.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    Warn,
    Fail,
}

/// One row of the table.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Finding {
    pub setting: String,
    pub current: String,
    pub needed: String,
    pub status: Status,
    pub why: String,
    /// The `/proc/sys` path (relative, e.g. `net/core/somaxconn`) and value `--apply` writes.
    #[serde(skip)]
    pub fix: Option<(String, String)>,
}

fn read(root: &Path, rel: &str) -> Reading {
    std::fs::read_to_string(root.join(rel))
        .map(|s| s.split_whitespace().collect::<Vec<_>>().join(" "))
        .map_err(|e| read_error(&e))
}

/// How an unreadable setting is shown.
fn read_error(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::NotFound => "not present".to_string(),
        std::io::ErrorKind::PermissionDenied => "not permitted".to_string(),
        _ => format!("unreadable ({e})"),
    }
}

/// Why a sysctl could not be written.
fn write_error(key: &str, e: &std::io::Error) -> String {
    match e.raw_os_error() {
        Some(libc::EROFS) | Some(libc::EACCES) | Some(libc::EPERM) => {
            if key.starts_with("net/") {
                "cannot be set from here: /proc/sys is read-only in this container or network namespace; set it on the host or in the pod's securityContext.sysctls".to_string()
            } else {
                "cannot be set from here: needs the host (not a container)".to_string()
            }
        }
        _ => format!("write failed: {e}"),
    }
}

/// Read the host state from `root` (`/` on a real host). `io_uring` is left for the caller.
pub fn read_state(root: &Path) -> State {
    let limits = std::fs::read_to_string(root.join("proc/self/limits")).unwrap_or_default();
    let (mut soft, mut hard) = (None, None);
    if let Some(l) = limits.lines().find(|l| l.starts_with("Max open files")) {
        let f: Vec<&str> = l["Max open files".len()..].split_whitespace().collect();
        let num = |s: &str| {
            if s == "unlimited" {
                Some(u64::MAX)
            } else {
                s.parse().ok()
            }
        };
        soft = f.first().and_then(|s| num(s));
        hard = f.get(1).and_then(|s| num(s));
    }
    let status = std::fs::read_to_string(root.join("proc/self/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .map(|s| s.to_string())
    };
    let root_user = field("Uid:").is_some_and(|u| u == "0");
    let cap = field("CapEff:")
        .and_then(|c| u64::from_str_radix(&c, 16).ok())
        .is_some_and(|c| c & (1 << CAP_SYS_RESOURCE) != 0);
    let sys = |k: &str| read(root, &format!("proc/sys/{k}"));
    State {
        nofile_soft: soft,
        nofile_hard: hard,
        nr_open: sys("fs/nr_open"),
        file_max: sys("fs/file-max"),
        somaxconn: sys("net/core/somaxconn"),
        syn_backlog: sys("net/ipv4/tcp_max_syn_backlog"),
        netdev_backlog: sys("net/core/netdev_max_backlog"),
        tw_reuse: sys("net/ipv4/tcp_tw_reuse"),
        fin_timeout: sys("net/ipv4/tcp_fin_timeout"),
        migrate_req: sys("net/ipv4/tcp_migrate_req"),
        port_range: sys("net/ipv4/ip_local_port_range"),
        io_uring_disabled: sys("kernel/io_uring_disabled"),
        conntrack_max: sys("net/netfilter/nf_conntrack_max"),
        tcp_mem: sys("net/ipv4/tcp_mem"),
        tcp_rmem: sys("net/ipv4/tcp_rmem"),
        tcp_wmem: sys("net/ipv4/tcp_wmem"),
        ehash: sys("net/ipv4/tcp_ehash_entries"),
        mem_total: std::fs::read_to_string(root.join("proc/meminfo"))
            .ok()
            .and_then(|m| {
                let l = m.lines().find(|l| l.starts_with("MemTotal:"))?;
                let kib: u64 = l.split_whitespace().nth(1)?.parse().ok()?;
                Some(kib * 1024)
            }),
        page_size: page_size(),
        root: root_user,
        cap_sys_resource: cap,
        io_uring: Ok(String::new()),
    }
}

/// The page size of the running kernel (4 KiB when it cannot be asked).
fn page_size() -> u64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .and_then(|v| u64::try_from(v).ok())
        .filter(|&v| v > 0)
        .unwrap_or(4096)
}

fn num(r: &Reading) -> Option<u64> {
    r.as_ref().ok().and_then(|s| s.parse().ok())
}

fn show(r: &Reading) -> String {
    match r {
        Ok(v) => v.clone(),
        Err(e) => format!("({e})"),
    }
}

fn lim(v: Option<u64>) -> String {
    match v {
        Some(u64::MAX) => "unlimited".into(),
        Some(n) => n.to_string(),
        None => "?".into(),
    }
}

/// The worst status in the table.
pub fn worst(f: &[Finding]) -> Status {
    if f.iter().any(|x| x.status == Status::Fail) {
        Status::Fail
    } else if f.iter().any(|x| x.status == Status::Warn) {
        Status::Warn
    } else {
        Status::Ok
    }
}

/// The human table.
pub fn table(f: &[Finding], n: &Needs) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "ringway preflight for {} proxied connections ({} file descriptors)\n",
        n.connections, n.fds
    );
    let w0 = f
        .iter()
        .map(|x| x.setting.chars().count())
        .max()
        .unwrap_or(8)
        .max(7);
    let w1 = f
        .iter()
        .map(|x| x.current.chars().count())
        .max()
        .unwrap_or(7)
        .max(7);
    let w2 = f
        .iter()
        .map(|x| x.needed.chars().count())
        .max()
        .unwrap_or(6)
        .max(6);
    let _ = writeln!(
        o,
        "{:w0$}  {:w1$}  {:w2$}  status  why",
        "setting", "current", "needed"
    );
    for x in f {
        let st = match x.status {
            Status::Ok => "ok",
            Status::Warn => "WARN",
            Status::Fail => "FAIL",
        };
        let _ = writeln!(
            o,
            "{:w0$}  {:w1$}  {:w2$}  {st:6}  {}",
            x.setting, x.current, x.needed, x.why
        );
    }
    o
}

/// What `--apply` did (or would do) for one setting.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Applied {
    pub setting: String,
    pub before: String,
    pub after: String,
    pub done: bool,
    pub note: String,
}

/// Write the fixes of every warn/fail finding through `root/proc/sys`. Without root, only
/// says what it would do.
pub fn apply(f: &[Finding], root: &Path, is_root: bool) -> Vec<Applied> {
    let mut out = Vec::new();
    // RLIMIT_NOFILE is per process: raising it here would change nothing for the proxy.
    if let Some(x) = f
        .iter()
        .find(|x| x.setting.starts_with("RLIMIT_NOFILE") && x.status != Status::Ok)
    {
        out.push(Applied {
            setting: "RLIMIT_NOFILE".into(),
            before: x.current.clone(),
            after: x.current.clone(),
            done: false,
            note: format!(
                "a per-process limit: set LimitNOFILE in the systemd unit (tuning/ringway.service) or nofile in limits.d (tuning/ringway-limits.conf); needed {}",
                x.needed
            ),
        });
    }
    for x in f.iter().filter(|x| x.status != Status::Ok) {
        let Some((key, value)) = &x.fix else { continue };
        let path: PathBuf = root.join("proc/sys").join(key);
        let setting = key.replace('/', ".");
        if !is_root {
            out.push(Applied {
                setting,
                before: x.current.clone(),
                after: value.clone(),
                done: false,
                note: "not root: would write this".into(),
            });
            continue;
        }
        match std::fs::write(&path, format!("{value}\n")) {
            Ok(()) => {
                let now = read(root, &format!("proc/sys/{key}")).unwrap_or_else(|e| e);
                out.push(Applied {
                    setting,
                    before: x.current.clone(),
                    after: now,
                    done: true,
                    note: String::new(),
                });
            }
            Err(e) => {
                let note = write_error(key, &e);
                out.push(Applied {
                    setting,
                    before: x.current.clone(),
                    after: x.current.clone(),
                    done: false,
                    note,
                });
            }
        }
    }
    out
}

/// Everything `ringway preflight` prints as JSON.
#[derive(serde::Serialize)]
pub struct Report<'a> {
    pub connections: u64,
    pub file_descriptors: u64,
    pub status: Status,
    pub findings: &'a [Finding],
    #[serde(skip_serializing_if = "Option::is_none")]
    pub applied: Option<Vec<Applied>>,
}

mod findings;
pub use findings::{KERNEL_BYTES_PER_SOCKET, findings};

#[cfg(test)]
mod tests;
