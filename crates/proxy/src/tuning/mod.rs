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
/// Descriptors kept aside for listeners, rings, logs and the like.
pub const FDS_RESERVED: u64 = 64;
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
        root: root_user,
        cap_sys_resource: cap,
        io_uring: Ok(String::new()),
    }
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

/// The table being built.
struct Rows(Vec<Finding>);

impl Rows {
    fn add(
        &mut self,
        setting: &str,
        current: String,
        needed: String,
        status: Status,
        why: String,
        fix: Option<(&str, String)>,
    ) {
        self.0.push(Finding {
            setting: setting.into(),
            current,
            needed,
            status,
            why,
            fix: fix.map(|(k, v)| (k.to_string(), v)),
        });
    }
}

/// The table: every decision, from state and needs alone, a section at a time.
pub fn findings(s: &State, n: &Needs) -> Vec<Finding> {
    let mut rows = Rows(Vec::new());
    // io_uring first: without it nothing else matters.
    for section in [
        io_uring,
        descriptors,
        accept_queues,
        conntrack,
        time_wait,
        drain,
        ports,
    ] {
        section(&mut rows, s, n);
    }
    rows.0
}

/// io_uring itself and the switch that disables it.
fn io_uring(rows: &mut Rows, s: &State, _: &Needs) {
    // io_uring first: without it nothing else matters.
    match &s.io_uring {
        Ok(mode) => rows.add(
            "io_uring",
            if mode.is_empty() {
                "usable".into()
            } else {
                format!("usable ({mode})")
            },
            "usable".into(),
            Status::Ok,
            "io_uring_setup, buffer rings and every opcode ringway uses work".into(),
            None,
        ),
        Err(why) => rows.add(
            "io_uring",
            "unusable".into(),
            "usable".into(),
            Status::Fail,
            why.clone(),
            None,
        ),
    }
    match &s.io_uring_disabled {
        Ok(v) if v == "0" => rows.add(
            "kernel.io_uring_disabled",
            v.clone(),
            "0".into(),
            Status::Ok,
            "io_uring allowed for every process".into(),
            None,
        ),
        Ok(v) if v == "1" => rows.add(
            "kernel.io_uring_disabled",
            v.clone(),
            "0".into(),
            Status::Warn,
            "io_uring only for members of kernel.io_uring_group".into(),
            Some(("kernel/io_uring_disabled", "0".into())),
        ),
        Ok(v) => rows.add(
            "kernel.io_uring_disabled",
            v.clone(),
            "0".into(),
            Status::Fail,
            "io_uring is disabled for everyone".into(),
            Some(("kernel/io_uring_disabled", "0".into())),
        ),
        Err(e) => rows.add(
            "kernel.io_uring_disabled",
            format!("({e})"),
            "0".into(),
            Status::Ok,
            "older kernel without the switch (io_uring on)".into(),
            None,
        ),
    }
}

/// Descriptors: the process's limits and the system's ceilings.
fn descriptors(rows: &mut Rows, s: &State, n: &Needs) {
    // File descriptors.
    let want_nofile = n.fds.max(NOFILE_RECOMMENDED);
    let nr_open = num(&s.nr_open);
    match (s.nofile_soft, s.nofile_hard) {
        (Some(soft), Some(hard)) => {
            let (status, why) = if soft >= n.fds {
                (
                    Status::Ok,
                    format!("{} sessions need {} descriptors", n.connections, n.fds),
                )
            } else if hard >= n.fds {
                (
                    Status::Ok,
                    format!(
                        "soft limit below the {} needed; ringway raises it to the hard limit at start",
                        n.fds
                    ),
                )
            } else if s.root && s.cap_sys_resource && nr_open.is_some_and(|o| o >= n.fds) {
                (
                    Status::Warn,
                    format!(
                        "hard limit {hard} < {}: set LimitNOFILE={want_nofile} (systemd) or nofile in limits.d, or --apply",
                        n.fds
                    ),
                )
            } else {
                let fit = hard.saturating_sub(FDS_RESERVED) / FDS_PER_SESSION;
                (
                    Status::Fail,
                    format!(
                        "hard limit {hard} holds ~{fit} sessions, not {}; raising it needs CAP_SYS_RESOURCE (set LimitNOFILE={want_nofile} in the unit, or run several processes on one port)",
                        n.connections
                    ),
                )
            };
            rows.add(
                "RLIMIT_NOFILE (soft/hard)",
                format!("{}/{}", lim(Some(soft)), lim(Some(hard))),
                format!(">= {}", n.fds),
                status,
                why,
                None,
            );
        }
        _ => rows.add(
            "RLIMIT_NOFILE (soft/hard)",
            "?".into(),
            format!(">= {}", n.fds),
            Status::Warn,
            "could not read /proc/self/limits".into(),
            None,
        ),
    }
    match nr_open {
        Some(v) if v >= want_nofile => rows.add(
            "fs.nr_open",
            v.to_string(),
            format!(">= {want_nofile}"),
            Status::Ok,
            "per-process descriptor ceiling".into(),
            None,
        ),
        Some(v) if v >= n.fds => rows.add(
            "fs.nr_open",
            v.to_string(),
            format!(">= {want_nofile}"),
            Status::Warn,
            format!(
                "enough for {} sessions, below the recommended {want_nofile}",
                n.connections
            ),
            Some(("fs/nr_open", want_nofile.to_string())),
        ),
        Some(v) => rows.add(
            "fs.nr_open",
            v.to_string(),
            format!(">= {}", n.fds),
            Status::Fail,
            "no process can hold this many descriptors".into(),
            Some(("fs/nr_open", want_nofile.to_string())),
        ),
        None => rows.add(
            "fs.nr_open",
            show(&s.nr_open),
            format!(">= {}", n.fds),
            Status::Warn,
            "could not read it".into(),
            None,
        ),
    }
    match num(&s.file_max) {
        Some(v) if v >= n.fds * 2 => rows.add(
            "fs.file-max",
            v.to_string(),
            format!(">= {}", n.fds * 2),
            Status::Ok,
            "system-wide descriptors, with room for the rest of the host".into(),
            None,
        ),
        Some(v) => rows.add(
            "fs.file-max",
            v.to_string(),
            format!(">= {}", n.fds * 2),
            if v >= n.fds {
                Status::Warn
            } else {
                Status::Fail
            },
            "system-wide descriptor limit is close to or below what ringway alone needs".into(),
            Some(("fs/file-max", (n.fds * 2).max(1_048_576).to_string())),
        ),
        None => rows.add(
            "fs.file-max",
            show(&s.file_max),
            format!(">= {}", n.fds * 2),
            Status::Warn,
            "could not read it".into(),
            None,
        ),
    }
}

/// Accept queues: the listen backlog and the device queue.
fn accept_queues(rows: &mut Rows, s: &State, n: &Needs) {
    // Accept queues.
    let rec_backlog = u64::from(n.backlog);
    for (name, key, reading, why) in [
        (
            "net.core.somaxconn",
            "net/core/somaxconn",
            &s.somaxconn,
            "caps every listen backlog: a burst of reconnects past it is dropped",
        ),
        (
            "net.ipv4.tcp_max_syn_backlog",
            "net/ipv4/tcp_max_syn_backlog",
            &s.syn_backlog,
            "half-open connections queued during a reconnect storm",
        ),
    ] {
        match num(reading) {
            Some(v) if v >= rec_backlog => rows.add(
                name,
                v.to_string(),
                format!(">= {rec_backlog}"),
                Status::Ok,
                format!("ringway asks for a backlog of {rec_backlog}"),
                None,
            ),
            Some(v) => rows.add(
                name,
                v.to_string(),
                format!(">= {rec_backlog}"),
                Status::Warn,
                why.into(),
                Some((key, rec_backlog.to_string())),
            ),
            None => rows.add(
                name,
                show(reading),
                format!(">= {rec_backlog}"),
                Status::Warn,
                "could not read it".into(),
                None,
            ),
        }
    }
    match num(&s.netdev_backlog) {
        Some(v) if v >= 16384 => rows.add(
            "net.core.netdev_max_backlog",
            v.to_string(),
            ">= 16384".into(),
            Status::Ok,
            "packets queued per CPU before the stack".into(),
            None,
        ),
        Some(v) => rows.add(
            "net.core.netdev_max_backlog",
            v.to_string(),
            ">= 16384".into(),
            Status::Warn,
            "packets are dropped under connection bursts".into(),
            Some(("net/core/netdev_max_backlog", "65535".into())),
        ),
        None => rows.add(
            "net.core.netdev_max_backlog",
            show(&s.netdev_backlog),
            ">= 16384".into(),
            Status::Warn,
            "could not read it".into(),
            None,
        ),
    }
}

/// Connection tracking: two tracked flows per proxied session.
fn conntrack(rows: &mut Rows, s: &State, n: &Needs) {
    // Connection tracking: every proxied session is two tracked flows (client and upstream).
    let flows = n.connections * 2;
    match (&s.conntrack_max, num(&s.conntrack_max)) {
        (Err(e), _) if e == "not present" => rows.add(
            "net.netfilter.nf_conntrack_max",
            "(not loaded)".into(),
            format!(">= {flows}"),
            Status::Ok,
            "no connection tracking on this host".into(),
            None,
        ),
        (_, Some(v)) if v >= flows + flows / 4 => rows.add(
            "net.netfilter.nf_conntrack_max",
            v.to_string(),
            format!(">= {flows}"),
            Status::Ok,
            "two tracked flows per session, with room".into(),
            None,
        ),
        (_, Some(v)) => {
            let status = if v >= flows {
                Status::Warn
            } else {
                Status::Fail
            };
            rows.add(
                "net.netfilter.nf_conntrack_max",
                v.to_string(),
                format!(">= {flows}"),
                status,
                format!(
                    "the table holds ~{} sessions (two flows each); past it the kernel drops new connections' SYNs silently",
                    v / 2
                ),
                Some((
                    "net/netfilter/nf_conntrack_max",
                    (flows * 2).max(262_144).to_string(),
                )),
            )
        }
        (r, None) => rows.add(
            "net.netfilter.nf_conntrack_max",
            show(r),
            format!(">= {flows}"),
            Status::Warn,
            "could not read it".into(),
            None,
        ),
    }
}

/// TIME_WAIT reuse (the FIN timeout follows the drain check).
fn time_wait(rows: &mut Rows, s: &State, _: &Needs) {
    // TIME_WAIT and FIN handling.
    match num(&s.tw_reuse) {
        Some(1) => rows.add(
            "net.ipv4.tcp_tw_reuse",
            "1".into(),
            "1".into(),
            Status::Ok,
            "TIME_WAIT ports reused for new upstream connections".into(),
            None,
        ),
        Some(v) => rows.add(
            "net.ipv4.tcp_tw_reuse",
            v.to_string(),
            "1".into(),
            Status::Warn,
            "upstream connections churn through TIME_WAIT ports (2 = loopback only)".into(),
            Some(("net/ipv4/tcp_tw_reuse", "1".into())),
        ),
        None => rows.add(
            "net.ipv4.tcp_tw_reuse",
            show(&s.tw_reuse),
            "1".into(),
            Status::Warn,
            "could not read it".into(),
            None,
        ),
    }
}

/// Drain and reload (accept queues migrated), and the FIN timeout.
fn drain(rows: &mut Rows, s: &State, _: &Needs) {
    // Drain and reload: a listener leaving its SO_REUSEPORT group resets what waits in its
    // accept queue unless the kernel migrates it to another member (Linux 5.14+).
    match num(&s.migrate_req) {
        Some(1) => rows.add(
            "net.ipv4.tcp_migrate_req",
            "1".into(),
            "1".into(),
            Status::Ok,
            "queued connections move to another listener when one stops".into(),
            None,
        ),
        Some(v) => rows.add(
            "net.ipv4.tcp_migrate_req",
            v.to_string(),
            "1".into(),
            Status::Warn,
            "a draining or removed listener resets the connections still in its accept queue \
             (another ringway on the port, or a binary upgrade, would take them with 1)"
                .into(),
            Some(("net/ipv4/tcp_migrate_req", "1".into())),
        ),
        None => rows.add(
            "net.ipv4.tcp_migrate_req",
            show(&s.migrate_req),
            "1".into(),
            Status::Warn,
            "not available (kernel before 5.14): queued connections of a stopping listener are reset".into(),
            None,
        ),
    }
    match num(&s.fin_timeout) {
        Some(v) if v <= 15 => rows.add(
            "net.ipv4.tcp_fin_timeout",
            v.to_string(),
            "<= 15".into(),
            Status::Ok,
            "FIN_WAIT_2 sockets released quickly".into(),
            None,
        ),
        Some(v) => rows.add(
            "net.ipv4.tcp_fin_timeout",
            v.to_string(),
            "<= 15".into(),
            Status::Warn,
            "closed connections hold memory and ports longer".into(),
            Some(("net/ipv4/tcp_fin_timeout", "15".into())),
        ),
        None => rows.add(
            "net.ipv4.tcp_fin_timeout",
            show(&s.fin_timeout),
            "<= 15".into(),
            Status::Warn,
            "could not read it".into(),
            None,
        ),
    }
}

/// Ephemeral ports toward each upstream server.
fn ports(rows: &mut Rows, s: &State, n: &Needs) {
    // Ephemeral ports toward each upstream server.
    let range = s.port_range.as_ref().ok().and_then(|r| {
        let mut it = r.split_whitespace().filter_map(|x| x.parse::<u64>().ok());
        Some((it.next()?, it.next()?))
    });
    match range {
        Some((lo, hi)) if hi >= lo => {
            let ports = hi - lo + 1;
            if n.upstreams.is_empty() {
                let status = if ports >= 28_000 {
                    Status::Ok
                } else {
                    Status::Warn
                };
                rows.add(
                    "net.ipv4.ip_local_port_range",
                    format!("{lo} {hi}"),
                    "(per upstream)".into(),
                    status,
                    format!("{ports} ports per upstream server address and source address"),
                    if status == Status::Ok {
                        None
                    } else {
                        Some(("net/ipv4/ip_local_port_range", "1024 65535".into()))
                    },
                );
            }
            for (name, servers, sources) in &n.upstreams {
                let servers_n = servers.len().max(1) as u64;
                let cap = ports * (*sources).max(1) as u64;
                let per_server = n.connections.div_ceil(servers_n);
                let (status, why) = if per_server > cap {
                    (
                        Status::Fail,
                        format!(
                            "{} sessions over {servers_n} server(s) need {per_server} ports each, {cap} available: add `source` addresses or widen the range",
                            n.connections
                        ),
                    )
                } else if n.connections > cap {
                    (
                        Status::Warn,
                        format!(
                            "fine spread over {servers_n} servers; if all but one fail, that one gets {} and only {cap} ports exist",
                            n.connections
                        ),
                    )
                } else {
                    (
                        Status::Ok,
                        format!("{per_server} per server, {cap} ports available per server"),
                    )
                };
                let fix = if status != Status::Ok && lo > 1024 {
                    Some(("net/ipv4/ip_local_port_range", "1024 65535".into()))
                } else {
                    None
                };
                rows.add(
                    &format!("ephemeral ports → upstream {name}"),
                    format!("{lo} {hi}"),
                    format!("{per_server} per server"),
                    status,
                    why,
                    fix,
                );
            }
        }
        _ => rows.add(
            "net.ipv4.ip_local_port_range",
            show(&s.port_range),
            "a range".into(),
            Status::Warn,
            "could not read it".into(),
            None,
        ),
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

#[cfg(test)]
mod tests;
