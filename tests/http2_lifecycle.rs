//! HTTP/2 connections through a drain (SIGTERM), a binary upgrade and a reload: GOAWAY with the
//! last stream taken, open streams going on (WebSockets get the drain's Close frame; a reload
//! closes nothing), against Python's h2 (`tests/h2/ws.py`).

mod common;

use std::time::Duration;

use common::h2::*;
use common::*;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// Three WebSockets on one HTTP/2 connection (Python's h2, `tests/h2/ws.py`) that echo two
/// messages each and are held open `hold` seconds (`after_goaway`: a graceful GOAWAY is
/// answered by two more messages each and a Close 1000), on a thread of their own.
fn three_held(
    port: String,
    hold: &str,
    after_goaway: bool,
) -> std::thread::JoinHandle<serde_json::Value> {
    let mut args: Vec<String> = [
        "127.0.0.1",
        &port,
        "--streams",
        "3",
        "--messages",
        "2",
        "--hold",
        hold,
    ]
    .map(String::from)
    .to_vec();
    if after_goaway {
        args.push("--after-goaway".into());
    }
    std::thread::spawn(move || run_py("ws.py", &args))
}

#[test]
fn a_drain_sends_goaway_and_websocket_streams_get_their_close_frames() {
    if !uring_ok() || !python_h2() {
        return;
    }
    let runtime = "shutdown_grace = \"10s\"\ndrain_spread = \"1s\"";
    let mut st = stack("h2-drain", "upgrade = [\"websocket\"]", H2_SERVER, runtime);
    let port = st.listen.port().to_string();
    let child = three_held(port, "6", false);
    std::thread::sleep(Duration::from_millis(1500));
    kill(Pid::from_raw(st.proxy.pid() as i32), Signal::SIGTERM).unwrap();
    let r = child.join().unwrap();
    // GOAWAY NO_ERROR naming the last stream taken; each WebSocket then got the drain's
    // Close (1012 by default) at a frame boundary, and answered it.
    assert_eq!(r["goaway"], 0, "{r}");
    assert_eq!(r["goaway_last"], 5, "{r}");
    for (id, s) in r["streams"].as_object().unwrap() {
        assert_eq!(s["echoes"], 2, "stream {id}: {r}");
        assert_eq!(s["close_code"], 1012, "stream {id}: {r}");
    }
    let status = wait_exit(&mut st.proxy, 15);
    assert!(status.success(), "{status:?}\n{}", st.proxy.log_text());
}

/// With `runtime.upgrade_tunnels = false` a binary upgrade hands over only the listeners, and
/// HTTP/2 connections are drained as on SIGTERM. (With it on, the default, they move:
/// tests/handover.rs.)
#[test]
fn with_upgrade_tunnels_off_a_binary_upgrade_drains_http2_connections_as_sigterm_does() {
    if !uring_ok() || !python_h2() || !have("curl", &["--version"]) {
        return;
    }
    let dir = scratch("h2-upgrade");
    let backend = free_addr();
    let _echo = echo(&[backend], &dir);
    let (listen, admin) = (free_addr(), free_addr());
    let sock = dir.join("upgrade.sock");
    let cfg = config(
        listen,
        &[backend],
        "upgrade = [\"websocket\"]",
        H2_SERVER,
        &format!(
            "shutdown_grace = \"10s\"\ndrain_spread = \"1s\"\nupgrade_socket = \"{}\"\nupgrade_tunnels = false\n[admin]\nlisten = \"{admin}\"",
            sock.display()
        ),
    );
    let mut old = proxy(&cfg, listen, &dir);
    let port = listen.port().to_string();
    let held = three_held(port, "8", false);
    std::thread::sleep(Duration::from_millis(1500));
    let path = dir.join("ringway.toml");
    let new = spawn(
        &["run", "--config", path.to_str().unwrap(), "--upgrade"],
        &dir,
        "proxy-new",
    );
    new.wait_log("upgrade: serving on the listening sockets of pid", 20);
    // The old process's HTTP/2 connection is drained as a SIGTERM drains it: GOAWAY NO_ERROR
    // with its last stream, each WebSocket stream's Close 1012 at a frame boundary.
    let r = held.join().unwrap();
    assert_eq!(r["goaway"], 0, "{r}");
    assert_eq!(r["goaway_last"], 5, "{r}");
    for (id, s) in r["streams"].as_object().unwrap() {
        assert_eq!(s["echoes"], 2, "stream {id}: {r}");
        assert_eq!(s["close_code"], 1012, "stream {id}: {r}");
    }
    let status = wait_exit(&mut old, 20);
    assert!(status.success(), "{status:?}\n{}", old.log_text());
    // The new process speaks HTTP/2 on the same port.
    let url = format!("http://{listen}/headers");
    let (body, err) = curl(&["--http2-prior-knowledge", "-w", "\n%{http_version}", &url]);
    assert!(body.ends_with("\n2"), "{body}\n{err}");
    let pid = admin_status(admin)["pid"].as_u64();
    assert_eq!(pid, Some(u64::from(new.pid())));
}

#[test]
fn a_reload_sends_goaway_and_open_websocket_streams_go_on() {
    if !uring_ok() || !python_h2() || !have("curl", &["--version"]) {
        return;
    }
    let st = stack("h2-reload", "upgrade = [\"websocket\"]", H2_SERVER, "");
    let port = st.listen.port().to_string();
    let held = three_held(port, "8", true);
    std::thread::sleep(Duration::from_millis(1500));
    kill(Pid::from_raw(st.proxy.pid() as i32), Signal::SIGHUP).unwrap();
    st.proxy.wait_log("configuration reloaded", 10);
    // GOAWAY NO_ERROR (the client's next requests come on a new connection, under the new
    // configuration); the three WebSockets go on: two more echoes each after the GOAWAY,
    // then the client's Close 1000 answered.
    let r = held.join().unwrap();
    assert_eq!(r["goaway"], 0, "{r}");
    assert_eq!(r["goaway_last"], 5, "{r}");
    for (id, s) in r["streams"].as_object().unwrap() {
        assert_eq!(s["echoes"], 4, "stream {id}: {r}");
        assert_eq!(s["close_code"], 1000, "stream {id}: {r}");
    }
    let url = format!("http://{}/headers", st.listen);
    let (body, err) = curl(&["--http2-prior-knowledge", "-w", "\n%{http_version}", &url]);
    assert!(body.ends_with("\n2"), "{body}\n{err}");
    let log = st.proxy.log_text();
    assert!(!log.contains("panicked"), "{log}");
}
