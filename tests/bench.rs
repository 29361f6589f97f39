//! `ringway bench` against `ringway echo` (and the proxy), briefly: its counts, not its speed.

mod common;

use std::process::Command;

use common::*;

fn bench(args: &[&str]) -> (i32, serde_json::Value, String) {
    let out = Command::new(BIN)
        .arg("bench")
        .args(args)
        .args(["--json", "--quiet", "--workers", "2"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let v = serde_json::from_str(&stdout).unwrap_or(serde_json::Value::Null);
    (out.status.code().unwrap_or(-1), v, stderr)
}

#[test]
fn each_mode_counts_what_it_did() {
    if !uring_ok() {
        return;
    }
    let dir = scratch("bench");
    let addr = free_addr();
    let _echo = echo(&[addr], &dir);
    let target = format!("ws://{addr}/");

    let (code, v, err) = bench(&[
        "throughput",
        "--target",
        &target,
        "-c",
        "50",
        "-s",
        "200",
        "-d",
        "1s",
        "--warmup",
        "200ms",
    ]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(v["established"], 50);
    assert_eq!(v["failed"], 0);
    assert_eq!(v["alive_at_end"], 50);
    let messages = v["messages"].as_u64().unwrap();
    assert!(messages > 0);
    assert_eq!(v["latency_us"]["count"].as_u64().unwrap(), messages);
    assert!(v["latency_us"]["p50"].as_u64().unwrap() <= v["latency_us"]["p99"].as_u64().unwrap());

    // Open loop at a fixed rate over a source range.
    let (code, v, err) = bench(&[
        "throughput",
        "--target",
        &target,
        "-c",
        "20",
        "--rate",
        "2000",
        "-d",
        "1s",
        "--warmup",
        "200ms",
        "--source",
        "127.0.0.0/24",
    ]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(v["established"], 20);
    assert!(v["messages"].as_u64().unwrap() > 0);

    let (code, v, err) = bench(&["connect", "--target", &target, "-c", "20", "-n", "300"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(v["established"], 300);
    assert_eq!(v["closed_clean"], 300);
    assert_eq!(v["latency_us"]["count"], 300);

    // Closed at TCP level right after each 101: no Close frame, so none closed cleanly.
    let (code, v, err) = bench(&[
        "connect", "--target", &target, "-c", "20", "-n", "300", "--close", "tcp",
    ]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(v["established"], 300);
    assert_eq!(v["failed"], 0);
    assert_eq!(v["closed_clean"], 0);
    assert_eq!(v["latency_us"]["count"], 300);

    let ready = dir.join("ready");
    let (code, v, err) = bench(&[
        "idle",
        "--target",
        &target,
        "-c",
        "200",
        "--rate",
        "2000",
        "--hold",
        "1500ms",
        "--interval",
        "300ms",
        "--source",
        "127.0.2.0/24",
        "--ready-file",
        ready.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(v["established"], 200);
    assert_eq!(v["alive_at_end"], 200);
    assert_eq!(v["heartbeats_lost"], 0);
    let sent = v["heartbeats_sent"].as_u64().unwrap();
    let echoed = v["heartbeats_echoed"].as_u64().unwrap();
    assert!(
        sent >= 200 && echoed + 200 >= sent,
        "sent {sent} echoed {echoed}"
    );
    // Round trips are those of heartbeats echoed while all 200 were held: some, not all.
    let timed = v["latency_us"]["count"].as_u64().unwrap();
    assert!(
        timed > 0 && timed <= echoed,
        "timed {timed} echoed {echoed}"
    );
    assert_eq!(std::fs::read_to_string(&ready).unwrap().trim(), "200");
}

#[test]
fn unreachable_and_refused_targets_fail_clearly() {
    if !uring_ok() {
        return;
    }
    let (dead, _held) = refused_addr();
    let (code, _, err) = bench(&[
        "throughput",
        "--target",
        &format!("ws://{dead}/"),
        "-c",
        "5",
        "-d",
        "1s",
    ]);
    assert_eq!(code, 2);
    assert!(err.contains("ECONNREFUSED"), "{err}");

    // --count belongs to connect mode: in idle mode it is an error, not silently ignored.
    let (code, _, err) = bench(&["idle", "--target", &format!("ws://{dead}/"), "-n", "5"]);
    assert_eq!(code, 2);
    assert!(err.contains("--connections"), "{err}");

    // A proxy with no matching location answers 404: the handshake is refused.
    let dir = scratch("bench404");
    let backend = free_addr();
    let _echo = echo(&[backend], &dir);
    let listen = free_addr();
    let cfg = format!(
        "[[upstream]]\nname = \"b\"\nservers = [{{ addr = \"{backend}\" }}]\n[[server]]\nlisten = [\"{listen}\"]\n[[server.location]]\npath = \"/ws/\"\nupstream = \"b\"\n"
    );
    let _p = proxy(&cfg, listen, &dir);
    let (code, _, err) = bench(&[
        "throughput",
        "--target",
        &format!("ws://{listen}/nope"),
        "-c",
        "5",
        "-d",
        "1s",
    ]);
    assert_eq!(code, 2);
    assert!(err.contains("HTTP 404"), "{err}");
    // Through the proxy, the same tool works.
    let (code, v, err) = bench(&[
        "throughput",
        "--target",
        &format!("ws://{listen}/ws/"),
        "-c",
        "10",
        "-d",
        "1s",
        "--warmup",
        "100ms",
    ]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(v["established"], 10);
}

/// With many wss:// handshakes in flight, every one after the first round resumes: each
/// finished handshake leaves a ticket for the connection that takes its place (the load
/// generator once kept eight tickets, as rustls's own store does, and resumed about half at
/// 50 in flight, so its handshake figures were not ringway's).
#[test]
fn wss_handshakes_in_flight_resume_after_the_first_round() {
    if !uring_ok() {
        return;
    }
    let s = stack_mode(Mode::Tls, "bench-resume", "", "", "");
    let target = format!("wss://127.0.0.1:{}/", s.listen.port());
    let ca = pki().ca.to_str().unwrap().to_string();
    let (c, n) = (50u64, 600u64);
    let (code, v, err) = bench(&[
        "connect",
        "--target",
        &target,
        "--ca",
        &ca,
        "-c",
        &c.to_string(),
        "-n",
        &n.to_string(),
    ]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(v["established"], n);
    let resumed = v["tls_resumed"].as_u64().unwrap();
    // Two workers share the tickets; each first handshake of a connection slot may be full.
    assert!(resumed + c >= n, "{resumed} of {n} resumed, {c} in flight");
    // And without resumption, none is.
    let (code, v, err) = bench(&[
        "connect",
        "--target",
        &target,
        "--ca",
        &ca,
        "-c",
        "10",
        "-n",
        "100",
        "--no-resume",
    ]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(v["tls_resumed"], 0);
}
