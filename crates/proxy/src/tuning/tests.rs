//! Every decision over fake /proc trees: too low, just enough, unreadable, not permitted.

use super::*;

struct Tree(PathBuf);

impl Drop for Tree {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// A /proc tree with healthy values; `over` replaces or (with None) removes files.
fn tree(over: &[(&str, Option<&str>)]) -> Tree {
    let d = std::env::temp_dir().join(format!(
        "ringway-proc-{}-{}",
        std::process::id(),
        N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    let mut files: Vec<(String, String)> = vec![
        ("proc/self/limits".into(), "Limit                     Soft Limit           Hard Limit           Units     \nMax open files            1048576              1048576              files     \n".into()),
        ("proc/self/status".into(), "Name:\tringway\nUid:\t1000\t1000\t1000\t1000\nCapEff:\t0000000000000000\n".into()),
        ("proc/sys/fs/nr_open".into(), "1048576\n".into()),
        ("proc/sys/fs/file-max".into(), "9223372036854775807\n".into()),
        ("proc/sys/net/core/somaxconn".into(), "65535\n".into()),
        ("proc/sys/net/ipv4/tcp_max_syn_backlog".into(), "65535\n".into()),
        ("proc/sys/net/core/netdev_max_backlog".into(), "65535\n".into()),
        ("proc/sys/net/ipv4/tcp_tw_reuse".into(), "1\n".into()),
        ("proc/sys/net/ipv4/tcp_fin_timeout".into(), "15\n".into()),
        ("proc/sys/net/ipv4/tcp_migrate_req".into(), "1\n".into()),
        ("proc/sys/net/ipv4/ip_local_port_range".into(), "1024\t65535\n".into()),
        ("proc/sys/kernel/io_uring_disabled".into(), "0\n".into()),
        ("proc/sys/net/netfilter/nf_conntrack_max".into(), "4194304\n".into()),
        ("proc/sys/net/ipv4/tcp_mem".into(), "1572864\t2097152\t3145728\n".into()),
        ("proc/sys/net/ipv4/tcp_rmem".into(), "4096\t131072\t6291456\n".into()),
        ("proc/sys/net/ipv4/tcp_wmem".into(), "4096\t16384\t4194304\n".into()),
        ("proc/sys/net/ipv4/tcp_ehash_entries".into(), "524288\n".into()),
        ("proc/meminfo".into(), "MemTotal:       65536000 kB\nMemFree:        1000 kB\n".into()),
    ];
    for (k, v) in over {
        files.retain(|(f, _)| f != k);
        if let Some(v) = v {
            files.push((k.to_string(), v.to_string()));
        }
    }
    for (f, v) in files {
        let p = d.join(f);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, v).unwrap();
    }
    Tree(d)
}

fn row<'a>(f: &'a [Finding], setting: &str) -> &'a Finding {
    f.iter()
        .find(|x| x.setting == setting)
        .unwrap_or_else(|| panic!("no row {setting}: {f:#?}"))
}

fn run(t: &Tree, conns: u64) -> Vec<Finding> {
    findings(&read_state(&t.0), &Needs::new(conns, None))
}

#[test]
fn healthy_host_is_all_ok() {
    let t = tree(&[]);
    let f = run(&t, 200_000);
    assert_eq!(
        worst(&f),
        Status::Ok,
        "{}",
        table(&f, &Needs::new(200_000, None))
    );
    assert_eq!(
        row(&f, "RLIMIT_NOFILE (soft/hard)").current,
        "1048576/1048576"
    );
}

#[test]
fn needs_count_two_descriptors_per_session() {
    let n = Needs::new(10_000, None);
    assert_eq!(n.fds, 20_000 + 1 + 1 + FDS_RESERVED);
    let cfg = crate::config::Config::parse("t", "[runtime]\nworkers = 4\n[[upstream]]\nname = \"u\"\nservers = [{ addr = \"10.0.0.1:80\" }, { addr = \"10.0.0.2:80\" }, { addr = \"10.0.0.3:80\", backup = true }]\n[[server]]\nlisten = [\"0.0.0.0:80\", \"0.0.0.0:81\"]\n[[server.location]]\npath = \"/\"\nupstream = \"u\"\n").unwrap();
    let n = Needs::new(1000, Some(&cfg));
    assert_eq!(n.fds, 2000 + 2 * 4 + 4 + FDS_RESERVED);
    assert_eq!(
        n.upstreams[0].1.len(),
        2,
        "backups are not counted as spread"
    );
}

#[test]
fn descriptor_limits_too_low_just_enough_and_raisable() {
    let limits = |soft: u64, hard: u64| {
        format!("Max open files            {soft}              {hard}              files     \n")
    };
    let conns = 9_000;
    let fds = Needs::new(conns, None).fds;
    // Just enough soft limit.
    let t = tree(&[("proc/self/limits", Some(&limits(fds, fds)))]);
    assert_eq!(
        row(&run(&t, conns), "RLIMIT_NOFILE (soft/hard)").status,
        Status::Ok
    );
    // Soft too low, hard enough: ringway raises it itself.
    let t = tree(&[("proc/self/limits", Some(&limits(1024, fds)))]);
    let r = run(&t, conns);
    assert_eq!(row(&r, "RLIMIT_NOFILE (soft/hard)").status, Status::Ok);
    assert!(row(&r, "RLIMIT_NOFILE (soft/hard)").why.contains("raises"));
    // Hard one short, not root: fail, with the number of sessions that fit.
    let t = tree(&[("proc/self/limits", Some(&limits(1024, fds - 1)))]);
    let r = run(&t, conns);
    assert_eq!(row(&r, "RLIMIT_NOFILE (soft/hard)").status, Status::Fail);
    assert_eq!(worst(&r), Status::Fail);
    // Root without CAP_SYS_RESOURCE (this machine's case): still fail.
    let root_nocap = "Uid:\t0\t0\t0\t0\nCapEff:\t0000000000000000\n";
    let t = tree(&[
        ("proc/self/limits", Some(&limits(1024, 20_000))),
        ("proc/self/status", Some(root_nocap)),
    ]);
    let r = findings(&read_state(&t.0), &Needs::new(100_000, None));
    assert_eq!(row(&r, "RLIMIT_NOFILE (soft/hard)").status, Status::Fail);
    assert!(
        row(&r, "RLIMIT_NOFILE (soft/hard)")
            .why
            .contains("CAP_SYS_RESOURCE")
    );
    // Root with it: a warning with the fix.
    let root_cap = "Uid:\t0\t0\t0\t0\nCapEff:\t000001ffffffffff\n";
    let t = tree(&[
        ("proc/self/limits", Some(&limits(1024, 20_000))),
        ("proc/self/status", Some(root_cap)),
    ]);
    let r = findings(&read_state(&t.0), &Needs::new(100_000, None));
    assert_eq!(row(&r, "RLIMIT_NOFILE (soft/hard)").status, Status::Warn);
    // nr_open below what is needed: fail; between needed and recommended: warn.
    let t = tree(&[("proc/sys/fs/nr_open", Some("1000\n"))]);
    assert_eq!(row(&run(&t, conns), "fs.nr_open").status, Status::Fail);
    let t = tree(&[("proc/sys/fs/nr_open", Some(&format!("{fds}\n")))]);
    assert_eq!(row(&run(&t, conns), "fs.nr_open").status, Status::Warn);
    let t = tree(&[("proc/sys/fs/file-max", Some("1000\n"))]);
    assert_eq!(row(&run(&t, conns), "fs.file-max").status, Status::Fail);
}

#[test]
fn network_settings_too_low_and_just_enough() {
    let t = tree(&[
        ("proc/sys/net/core/somaxconn", Some("4096\n")),
        ("proc/sys/net/ipv4/tcp_max_syn_backlog", Some("65535\n")),
        ("proc/sys/net/core/netdev_max_backlog", Some("1000\n")),
        ("proc/sys/net/ipv4/tcp_tw_reuse", Some("2\n")),
        ("proc/sys/net/ipv4/tcp_fin_timeout", Some("60\n")),
    ]);
    let f = run(&t, 1000);
    assert_eq!(row(&f, "net.core.somaxconn").status, Status::Warn);
    assert_eq!(
        row(&f, "net.core.somaxconn").fix,
        Some(("net/core/somaxconn".into(), "65535".into()))
    );
    assert_eq!(row(&f, "net.ipv4.tcp_max_syn_backlog").status, Status::Ok);
    assert_eq!(row(&f, "net.core.netdev_max_backlog").status, Status::Warn);
    assert_eq!(row(&f, "net.ipv4.tcp_tw_reuse").status, Status::Warn);
    assert_eq!(row(&f, "net.ipv4.tcp_fin_timeout").status, Status::Warn);
    assert_eq!(worst(&f), Status::Warn, "warnings alone do not fail");
}

#[test]
fn established_hash_is_judged_by_the_sockets_planned() {
    const EHASH: &str = "TCP established hash (boot: thash_entries)";
    // This machine's: 262,144 buckets (sized at boot from 24 GiB).
    let t = tree(&[("proc/sys/net/ipv4/tcp_ehash_entries", Some("262144\n"))]);
    let r = run(&t, 250_000);
    assert_eq!(row(&r, EHASH).status, Status::Ok, "{:?}", row(&r, EHASH));
    let f = run(&t, 500_000);
    let r = row(&f, EHASH);
    assert_eq!(r.status, Status::Warn);
    assert_eq!(r.current, "262144");
    // Not a sysctl: the boot parameter is named, nothing is written.
    assert!(r.why.contains("thash_entries=1048576"), "{}", r.why);
    assert!(r.why.contains("~4 sockets"), "{}", r.why);
    assert_eq!(r.fix, None);
    // A namespace sharing the host's table shows it negated.
    let t = tree(&[("proc/sys/net/ipv4/tcp_ehash_entries", Some("-262144\n"))]);
    assert_eq!(row(&run(&t, 500_000), EHASH).current, "262144");
    // Older kernels do not show it: no judgement, and where to look.
    let t = tree(&[("proc/sys/net/ipv4/tcp_ehash_entries", None)]);
    let f = run(&t, 500_000);
    let r = row(&f, EHASH);
    assert_eq!(r.status, Status::Ok);
    assert!(r.why.contains("dmesg"), "{}", r.why);
}

#[test]
fn conntrack_table_holds_two_flows_per_session() {
    // This machine's default: 262144 entries, ~131k sessions.
    let t = tree(&[("proc/sys/net/netfilter/nf_conntrack_max", Some("262144\n"))]);
    assert_eq!(
        row(&run(&t, 100_000), "net.netfilter.nf_conntrack_max").status,
        Status::Ok
    );
    assert_eq!(
        row(&run(&t, 120_000), "net.netfilter.nf_conntrack_max").status,
        Status::Warn
    );
    let f = run(&t, 500_000);
    let r = row(&f, "net.netfilter.nf_conntrack_max");
    assert_eq!(r.status, Status::Fail);
    assert_eq!(
        r.fix,
        Some(("net/netfilter/nf_conntrack_max".into(), "2000000".into()))
    );
    // Not loaded at all: nothing to track.
    let t = tree(&[("proc/sys/net/netfilter/nf_conntrack_max", None)]);
    assert_eq!(
        row(&run(&t, 500_000), "net.netfilter.nf_conntrack_max").status,
        Status::Ok
    );
}

#[test]
fn ephemeral_ports_per_upstream() {
    let cfg = |source: &str| {
        crate::config::Config::parse(
            "t",
            &format!("[[upstream]]\nname = \"u\"\n{source}\nservers = [{{ addr = \"10.0.0.1:80\" }}, {{ addr = \"10.0.0.2:80\" }}]\n[[server]]\nlisten = [\"0.0.0.0:80\"]\n[[server.location]]\npath = \"/\"\nupstream = \"u\"\n"),
        )
        .unwrap()
    };
    let t = tree(&[(
        "proc/sys/net/ipv4/ip_local_port_range",
        Some("32768\t60999\n"),
    )]);
    let s = read_state(&t.0);
    let c = cfg("");
    // 28,232 ports: 50k over two servers fits; if one fails it does not.
    let f = findings(&s, &Needs::new(50_000, Some(&c)));
    assert_eq!(row(&f, "ephemeral ports → upstream u").status, Status::Warn);
    let f = findings(&s, &Needs::new(20_000, Some(&c)));
    assert_eq!(row(&f, "ephemeral ports → upstream u").status, Status::Ok);
    let f = findings(&s, &Needs::new(500_000, Some(&c)));
    assert_eq!(row(&f, "ephemeral ports → upstream u").status, Status::Fail);
    // Source addresses multiply the ports.
    let c = cfg("source = \"10.0.9.0/24\"");
    let f = findings(&s, &Needs::new(500_000, Some(&c)));
    assert_eq!(row(&f, "ephemeral ports → upstream u").status, Status::Ok);
}

#[test]
fn io_uring_switch_and_probe() {
    let t = tree(&[("proc/sys/kernel/io_uring_disabled", Some("2\n"))]);
    assert_eq!(
        row(&run(&t, 10), "kernel.io_uring_disabled").status,
        Status::Fail
    );
    let t = tree(&[("proc/sys/kernel/io_uring_disabled", Some("1\n"))]);
    assert_eq!(
        row(&run(&t, 10), "kernel.io_uring_disabled").status,
        Status::Warn
    );
    let t = tree(&[("proc/sys/kernel/io_uring_disabled", None)]);
    assert_eq!(
        row(&run(&t, 10), "kernel.io_uring_disabled").status,
        Status::Ok
    );
    let mut s = read_state(&tree(&[]).0);
    s.io_uring = Err("io_uring_setup is not permitted (EPERM)".into());
    let f = findings(&s, &Needs::new(10, None));
    assert_eq!(row(&f, "io_uring").status, Status::Fail);
    assert_eq!(worst(&f), Status::Fail);
}

#[test]
fn unreadable_and_missing_settings_warn_instead_of_guessing() {
    let t = tree(&[
        ("proc/sys/net/core/somaxconn", None),
        ("proc/self/limits", None),
    ]);
    // A directory where a file should be: unreadable.
    std::fs::create_dir_all(t.0.join("proc/sys/net/ipv4/tcp_fin_timeout.d")).unwrap();
    std::fs::remove_file(t.0.join("proc/sys/net/ipv4/tcp_fin_timeout")).unwrap();
    std::fs::create_dir_all(t.0.join("proc/sys/net/ipv4/tcp_fin_timeout")).unwrap();
    let f = run(&t, 100);
    let s = row(&f, "net.core.somaxconn");
    assert_eq!(
        (s.status, s.current.as_str()),
        (Status::Warn, "(not present)")
    );
    assert!(
        row(&f, "net.ipv4.tcp_fin_timeout")
            .current
            .starts_with("(unreadable")
    );
    assert_eq!(row(&f, "RLIMIT_NOFILE (soft/hard)").status, Status::Warn);
}

#[test]
fn not_permitted_reads_and_writes_are_named() {
    use std::io::{Error, ErrorKind};
    assert_eq!(
        read_error(&Error::from(ErrorKind::PermissionDenied)),
        "not permitted"
    );
    assert_eq!(read_error(&Error::from(ErrorKind::NotFound)), "not present");
    let ro = Error::from_raw_os_error(libc::EROFS);
    assert!(write_error("net/core/somaxconn", &ro).contains("network namespace"));
    assert!(
        write_error("fs/nr_open", &Error::from_raw_os_error(libc::EPERM))
            .contains("needs the host")
    );
    assert!(
        write_error("fs/nr_open", &Error::from_raw_os_error(libc::EIO)).starts_with("write failed")
    );
}

#[test]
fn apply_points_at_the_unit_for_the_descriptor_limit() {
    let t = tree(&[(
        "proc/self/limits",
        Some("Max open files            1024                 4096                 files     \n"),
    )]);
    let f = run(&t, 100_000);
    let a = apply(&f, &t.0, true);
    let r = a
        .iter()
        .find(|x| x.setting == "RLIMIT_NOFILE")
        .expect("an entry for the limit");
    assert!(!r.done && r.note.contains("LimitNOFILE"), "{r:?}");
}

#[test]
fn apply_writes_fixes_as_root_and_only_says_so_otherwise() {
    let t = tree(&[
        ("proc/sys/net/core/somaxconn", Some("128\n")),
        ("proc/sys/net/ipv4/tcp_fin_timeout", Some("60\n")),
    ]);
    let f = run(&t, 100);
    let dry = apply(&f, &t.0, false);
    assert!(dry.iter().all(|a| !a.done && a.note.contains("would")));
    assert_eq!(
        std::fs::read_to_string(t.0.join("proc/sys/net/core/somaxconn")).unwrap(),
        "128\n"
    );
    let done = apply(&f, &t.0, true);
    let s = done
        .iter()
        .find(|a| a.setting == "net.core.somaxconn")
        .unwrap();
    assert!(s.done && s.before == "128" && s.after == "65535", "{s:?}");
    assert_eq!(
        std::fs::read_to_string(t.0.join("proc/sys/net/core/somaxconn"))
            .unwrap()
            .trim(),
        "65535"
    );
    // A setting that cannot be written is reported, not hidden.
    std::fs::remove_file(t.0.join("proc/sys/net/ipv4/tcp_fin_timeout")).unwrap();
    std::fs::create_dir(t.0.join("proc/sys/net/ipv4/tcp_fin_timeout")).unwrap();
    let again = apply(&f, &t.0, true);
    let fin = again
        .iter()
        .find(|a| a.setting == "net.ipv4.tcp_fin_timeout")
        .unwrap();
    assert!(!fin.done && !fin.note.is_empty(), "{fin:?}");
}

#[test]
fn socket_memory_is_sized_for_the_connections_planned() {
    let t = tree(&[]);
    let page = read_state(&t.0).page_size;
    // 500,000 connections are a million sockets: a page each before pressure.
    let f = run(&t, 500_000);
    let m = row(&f, "net.ipv4.tcp_mem");
    assert_eq!(m.status, Status::Ok, "{m:?}");
    assert_eq!(m.needed, ">= 750000 1000000 1500000");
    // Twice as many: tcp_mem warns, and its fix raises each value to at least what is needed,
    // never lowering one.
    let t = tree(&[(
        "proc/sys/net/ipv4/tcp_mem",
        Some("200000 2097152 9000000\n"),
    )]);
    let f = run(&t, 1_500_000);
    let m = row(&f, "net.ipv4.tcp_mem");
    assert_eq!(m.status, Status::Warn);
    assert!(m.why.contains("3000000 sockets"), "{}", m.why);
    assert_eq!(
        m.fix,
        Some(("net/ipv4/tcp_mem".into(), "2250000 3000000 9000000".into()))
    );
    // The per-socket minimum must let pressure shrink a socket to one page.
    let t = tree(&[("proc/sys/net/ipv4/tcp_rmem", Some("65536 131072 6291456\n"))]);
    let f = run(&t, 100_000);
    let r = row(&f, "net.ipv4.tcp_rmem");
    assert_eq!(r.status, Status::Warn);
    assert_eq!(
        r.fix,
        Some(("net/ipv4/tcp_rmem".into(), format!("{page} 131072 6291456")))
    );
    assert_eq!(row(&f, "net.ipv4.tcp_wmem").status, Status::Ok);
    // What one stalled client pins, and how many reach pressure (6 MiB + 4 MiB each).
    let w = &row(&f, "net.ipv4.tcp_wmem").why;
    assert!(w.contains("10240 KiB"), "{w}");
    let fit = 2_097_152 * page / (10 * 1024 * 1024);
    assert!(w.contains(&format!("so {fit} stalled")), "{w}");
    // Unreadable: a warning that says so.
    let t = tree(&[("proc/sys/net/ipv4/tcp_mem", None)]);
    let m = run(&t, 1000);
    assert_eq!(row(&m, "net.ipv4.tcp_mem").status, Status::Warn);
    assert_eq!(row(&m, "net.ipv4.tcp_mem").why, "could not read it");
}

#[test]
fn the_host_must_have_the_kernel_memory_its_sockets_take() {
    let need = |conns: u64| {
        let sockets = conns * FDS_PER_SESSION;
        sockets * KERNEL_BYTES_PER_SOCKET + sockets * read_state(&tree(&[]).0).page_size
    };
    let meminfo = |bytes: u64| format!("MemTotal: {} kB\n", bytes / 1024);
    let k = "kernel memory for sockets";
    // Twice what the sockets take: ok; between once and twice: warn; below: fail.
    let t = tree(&[("proc/meminfo", Some(&meminfo(need(1_000_000) * 2 + 4096)))]);
    assert_eq!(row(&run(&t, 1_000_000), k).status, Status::Ok);
    let t = tree(&[("proc/meminfo", Some(&meminfo(need(1_000_000) * 3 / 2)))]);
    assert_eq!(row(&run(&t, 1_000_000), k).status, Status::Warn);
    let t = tree(&[("proc/meminfo", Some(&meminfo(need(1_000_000) / 2)))]);
    let f = run(&t, 1_000_000);
    assert_eq!(row(&f, k).status, Status::Fail);
    assert!(row(&f, k).why.contains("plan fewer connections"));
    assert_eq!(worst(&f), Status::Fail);
    let t = tree(&[("proc/meminfo", None)]);
    assert_eq!(row(&run(&t, 1000), k).status, Status::Warn);
}
