//! Listening sockets that outlive a process.
//!
//! A binary upgrade (`ringway run --upgrade`, twice in a row): a client loop connecting
//! continuously sees no refused or reset connection; the tunnels of the old process get their
//! Close frames and end; the old process exits 0; the new one serves everything after (its pid
//! in `/status`) and can itself be upgraded.
//!
//! systemd socket activation (`systemd-socket-activate`, the real thing): ringway serves on the
//! socket it is passed, including the connection that was waiting in it before it started.

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;

fn status(admin: SocketAddr) -> serde_json::Value {
    let out = admin_get(admin, "/status");
    let text = String::from_utf8_lossy(&out);
    serde_json::from_str(text.split("\r\n\r\n").nth(1).unwrap()).unwrap()
}

#[test]
fn binary_upgrade_refuses_nothing_and_drains_the_old_process() {
    if !uring_ok() {
        return;
    }
    let dir = scratch("upgrade");
    let backend = free_addr();
    let _echo = echo(&[backend], &dir);
    let (listen, admin) = (free_addr(), free_addr());
    let sock = dir.join("upgrade.sock");
    let cfg = config(
        listen,
        &[backend],
        "",
        "",
        &format!(
            "shutdown_grace = \"20s\"\ndrain_spread = \"2s\"\nupgrade_tunnels = false\nupgrade_socket = \"{}\"\n[admin]\nlisten = \"{admin}\"",
            sock.display()
        ),
    );
    let mut old = proxy(&cfg, listen, &dir);
    let path = dir.join("ringway.toml");
    assert_eq!(status(admin)["pid"].as_u64(), Some(u64::from(old.pid())));

    // A client loop connecting all the time, from before the upgrade to after it.
    let looping = ConnectLoop::start(listen, |_| None);
    // Tunnels on the old process.
    let since: Arc<Mutex<Option<Instant>>> = Default::default();
    let tunnels = chatters(50, listen, "/ws/", &Default::default(), &since);
    std::thread::sleep(Duration::from_millis(500));

    let mut procs = Vec::new();
    for round in 1..=2 {
        *since.lock().unwrap() = Some(Instant::now());
        let before = looping.done();
        let new = spawn(
            &["run", "--config", path.to_str().unwrap(), "--upgrade"],
            &dir,
            &format!("proxy-{round}"),
        );
        new.wait_log("upgrade: serving on the listening sockets of pid", 20);
        old.wait_log("handing over", 10);
        let status_code = wait_exit(&mut old, 30);
        assert!(
            status_code.success(),
            "the old process exits 0: {status_code}"
        );
        std::thread::sleep(Duration::from_millis(500));
        assert_eq!(
            status(admin)["pid"].as_u64(),
            Some(u64::from(new.pid())),
            "round {round}"
        );
        assert!(
            looping.done() > before,
            "connections went on during round {round}"
        );
        procs.push(std::mem::replace(&mut old, new));
    }
    let done = looping.done();
    let failed = looping.stop();
    let results: Vec<Chat> = tunnels.into_iter().map(|h| h.join().unwrap()).collect();
    eprintln!(
        "client loop: {} exchanges, {} failed {:?}; old tunnels: {} closed with {:?}",
        done,
        failed.len(),
        &failed[..failed.len().min(5)],
        results.iter().filter(|c| c.closes == 1).count(),
        results
            .iter()
            .map(|c| c.code)
            .collect::<std::collections::BTreeSet<_>>()
    );
    assert!(failed.is_empty(), "no connection refused or reset");
    assert!(
        results
            .iter()
            .all(|c| c.error.is_none() && c.closes == 1 && c.code == Some(1012)),
        "every tunnel of the old process got its Close"
    );
    assert!(
        old.log_text().contains("listening on"),
        "the last process runs"
    );
}

#[test]
fn socket_activation_serves_on_the_socket_systemd_passes() {
    if !uring_ok() {
        return;
    }
    let dir = scratch("activate");
    let backend = free_addr();
    let _echo = echo(&[backend], &dir);
    let listen = free_addr();
    let path = dir.join("ringway.toml");
    std::fs::write(&path, config(listen, &[backend], "", "", "")).unwrap();
    let args = [
        "-l",
        &listen.to_string(),
        BIN,
        "run",
        "--config",
        path.to_str().unwrap(),
    ];
    let Some(p) = tool("systemd-socket-activate", &args, &dir, "activated") else {
        return;
    };
    // The first connection waits in the socket until ringway has started on it.
    p.wait_log("Listening on", 10);
    let mut ws = ws_connect(listen, "/ws/");
    ws_echo(&mut ws, b"through an activated socket".to_vec());
    p.wait_log(
        "socket activation: listening on the sockets systemd passed",
        10,
    );
    drop(ws);
    let mut ws = ws_connect(listen, "/ws/");
    ws_echo(&mut ws, b"again".to_vec());
}

/// `runtime.upgrade_socket` is never a way to clobber or follow something: a regular file (a
/// typo) or a symbolic link at its path is refused before anything starts and left as it is;
/// the socket it makes is 0600 with no window (it is bound in a private directory and renamed
/// into place, leaving nothing behind), and every peer that connects is logged with its uid.
#[test]
fn the_upgrade_socket_path_is_refused_unless_ours() {
    if !uring_ok() {
        return;
    }
    use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
    let dir = scratch("upgrade-path");
    let backend = free_addr();
    let listen = free_addr();
    let sock = dir.join("upgrade.sock");
    let path = dir.join("ringway.toml");
    std::fs::write(
        &path,
        config(
            listen,
            &[backend],
            "",
            "",
            &format!("upgrade_socket = \"{}\"", sock.display()),
        ),
    )
    .unwrap();
    let p = path.to_str().unwrap();
    // A regular file.
    std::fs::write(&sock, "not a socket\n").unwrap();
    let (code, out) = ringway(&["run", "--config", p]);
    assert_eq!(code, Some(2), "{out}");
    assert!(out.contains("exists and is not a socket"), "{out}");
    assert_eq!(std::fs::read_to_string(&sock).unwrap(), "not a socket\n");
    // A symbolic link (to a file that must stay, and dangling).
    std::fs::remove_file(&sock).unwrap();
    let target = dir.join("target");
    std::fs::write(&target, "keep\n").unwrap();
    std::os::unix::fs::symlink(&target, &sock).unwrap();
    let (code, out) = ringway(&["run", "--config", p]);
    assert_eq!(code, Some(2), "{out}");
    assert!(out.contains("is a symbolic link"), "{out}");
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "keep\n");
    std::fs::remove_file(&target).unwrap();
    let (code, out) = ringway(&["run", "--config", p]);
    assert_eq!(code, Some(2), "{out}");
    assert!(!target.exists(), "a dangling link's target is not created");
    std::fs::remove_file(&sock).unwrap();
    // Nothing there: a 0600 socket, nothing left beside it.
    let proc = spawn(&["run", "--config", p], &dir, "proxy");
    proc.wait_log("listening on", 20);
    let meta = std::fs::symlink_metadata(&sock).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    assert_eq!(meta.uid(), nix::unistd::geteuid().as_raw());
    let names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".ringway-upgrade"))
        .collect();
    assert!(names.is_empty(), "{names:?}");
    // A peer that connects is logged with its uid.
    let mut c = std::os::unix::net::UnixStream::connect(&sock).unwrap();
    use std::io::Write;
    c.write_all(b"nonsense").unwrap();
    proc.wait_log(
        &format!(
            "a connection on the upgrade socket from pid {}, uid {}",
            std::process::id(),
            nix::unistd::getuid().as_raw()
        ),
        10,
    );
    proc.wait_log("unexpected request on the upgrade socket", 10);
}
