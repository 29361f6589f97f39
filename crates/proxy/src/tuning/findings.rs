//! The preflight table, a section at a time: io_uring, descriptors, socket memory, accept
//! queues, conntrack, TIME_WAIT, drain, ports. Every decision is made from the state read and the
//! needs alone, so the table is the same for the same host and configuration.

use super::*;

mod memory;
pub use memory::KERNEL_BYTES_PER_SOCKET;

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
        nofile,
        nr_open,
        file_max,
        memory::socket_memory,
        accept_queues,
        conntrack,
        ehash,
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

/// File descriptors: the process's limit (RLIMIT_NOFILE).
fn nofile(rows: &mut Rows, s: &State, n: &Needs) {
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
}

/// The per-process descriptor ceiling (fs.nr_open).
fn nr_open(rows: &mut Rows, s: &State, n: &Needs) {
    let want_nofile = n.fds.max(NOFILE_RECOMMENDED);
    let nr_open = num(&s.nr_open);
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
}

/// The system-wide descriptor limit (fs.file-max).
fn file_max(rows: &mut Rows, s: &State, n: &Needs) {
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

/// TCP's established-socket hash: every segment received looks its socket up there. Its size
/// is fixed at boot (`thash_entries=`), from the host's memory, not from what it will hold.
fn ehash(rows: &mut Rows, s: &State, n: &Needs) {
    const SETTING: &str = "TCP established hash (boot: thash_entries)";
    let sockets = n.connections * FDS_PER_SESSION;
    let needed = format!(">= {} buckets", sockets / 2);
    let buckets = s
        .ehash
        .as_ref()
        .ok()
        .and_then(|v| v.parse::<i64>().ok())
        .map(i64::unsigned_abs);
    match buckets {
        None => rows.add(
            SETTING,
            show(&s.ehash),
            needed,
            Status::Ok,
            match &s.ehash {
                Err(e) if e == "not present" => {
                    "this kernel does not show the table's size (Linux < 6.1); the boot log \
                     does: `dmesg | grep 'TCP established hash'`"
                        .to_string()
                }
                r => format!(
                    "could not read net.ipv4.tcp_ehash_entries ({}); the boot log shows the \
                     size: `dmesg | grep 'TCP established hash'`",
                    show(r)
                ),
            },
            None,
        ),
        Some(b) if b.saturating_mul(2) >= sockets => rows.add(
            SETTING,
            b.to_string(),
            needed,
            Status::Ok,
            format!("{sockets} sockets (two per session) in {b} buckets: lookups stay short"),
            None,
        ),
        Some(b) => rows.add(
            SETTING,
            b.to_string(),
            needed,
            Status::Warn,
            format!(
                "{sockets} sockets (two per session; more if clients or backends run on this \
                 host) in {b} buckets: every received segment walks a chain of ~{} sockets. \
                 Sized at boot from memory, not settable at run time: boot with \
                 thash_entries={}",
                sockets.div_ceil(b.max(1)),
                sockets.next_power_of_two()
            ),
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
