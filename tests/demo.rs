//! `ringway demo` as a newcomer runs it: the load and its report, connecting by hand while
//! it serves (tungstenite, a plain HTTP request), and Ctrl-C draining the WebSocket that is
//! still open before everything exits.

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;

/// The demo, its stdout and stderr gathered as they come.
struct Demo {
    child: Child,
    out: Arc<Mutex<String>>,
}

impl Demo {
    fn start(args: &[&str]) -> Demo {
        let mut child = Command::new(BIN)
            .arg("demo")
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let out = Arc::new(Mutex::new(String::new()));
        for r in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let out = out.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(r).lines().map_while(Result::ok) {
                    let mut o = out.lock().unwrap();
                    o.push_str(&line);
                    o.push('\n');
                }
            });
        }
        Demo { child, out }
    }

    fn text(&self) -> String {
        self.out.lock().unwrap().clone()
    }

    /// Wait (up to `secs`) until the output contains `needle`.
    fn wait_for(&mut self, needle: &str, secs: u64) -> String {
        let t = Instant::now();
        loop {
            let text = self.text();
            if text.contains(needle) {
                return text;
            }
            if let Ok(Some(s)) = self.child.try_wait() {
                std::thread::sleep(Duration::from_millis(200));
                panic!("demo exited ({s}) before {needle:?}:\n{}", self.text());
            }
            assert!(
                t.elapsed() < Duration::from_secs(secs),
                "no {needle:?} in {secs} s:\n{text}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn signal(&self, s: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.child.id() as i32), s).unwrap();
    }

    fn wait(&mut self, secs: u64) -> std::process::ExitStatus {
        let t = Instant::now();
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                std::thread::sleep(Duration::from_millis(200));
                return s;
            }
            if t.elapsed() > Duration::from_secs(secs) {
                let _ = self.child.kill();
                panic!("demo did not exit in {secs} s:\n{}", self.text());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The value after `label` on its line, up to the next blank.
fn after(text: &str, label: &str) -> String {
    let line = text.lines().find(|l| l.contains(label)).unwrap();
    let rest = &line[line.find(label).unwrap() + label.len()..];
    rest.split_whitespace().next().unwrap().to_string()
}

/// The proxy's address, from the `wscat -c ws://ADDR/chat` line the demo prints.
fn proxy_addr(text: &str) -> SocketAddr {
    after(text, "wscat -c ")
        .trim_start_matches("ws://")
        .trim_end_matches("/chat")
        .parse()
        .unwrap()
}

fn pid_after(text: &str, label: &str) -> i32 {
    let line = text.lines().find(|l| l.contains(label)).unwrap();
    let p = &line[line.find("pid ").unwrap() + 4..];
    p.trim_end_matches(')').parse().unwrap()
}

fn gone(pid: i32) -> bool {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_err()
}

#[test]
fn demo_runs_a_load_reports_serves_and_drains_on_ctrl_c() {
    if !uring_ok() {
        return;
    }
    let mut d = Demo::start(&["--duration", "2s", "--connections", "20", "--idle", "300"]);
    let text = d.wait_for("Serving until Ctrl-C", 60);
    for want in [
        "Report",
        "connections     20 echoing (0 failed); 300 idle (0 failed)",
        "messages/s",
        "latency         p50 ",
        " p99 ",
        "KiB per idle WebSocket in the proxy",
        "wscat -c ws://",
        "curl -i http://",
    ] {
        assert!(text.contains(want), "{want:?} missing:\n{text}");
    }
    let rate: f64 = after(&text, "messages/s").parse().unwrap();
    assert!(rate > 0.0, "{text}");
    let addr = proxy_addr(&text);
    let (echo_pid, proxy_pid) = (
        pid_after(&text, "echo backends"),
        pid_after(&text, "proxy          ws://"),
    );
    // By hand, as the demo says: a WebSocket echoes, /headers shows what the backend got.
    let mut ws = ws_connect(addr, "/chat");
    ws_echo(
        &mut ws,
        b"hello from a client that is not ringway's".to_vec(),
    );
    let resp = raw_exchange(
        addr,
        b"GET /headers HTTP/1.1\r\nHost: demo\r\nConnection: close\r\n\r\n",
        5,
    );
    assert_eq!(status_of(&resp), 200);
    let body = String::from_utf8_lossy(&resp).to_ascii_lowercase();
    assert!(body.contains("x-real-ip"), "{body}");
    // Ctrl-C: the open WebSocket is told 1012 and the demo ends cleanly with its children.
    d.signal(nix::sys::signal::Signal::SIGINT);
    ws.get_ref()
        .set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    let code = loop {
        match ws.read() {
            Ok(tungstenite::Message::Close(Some(f))) => break u16::from(f.code),
            Ok(_) => continue,
            Err(e) => panic!("no Close frame: {e}\n{}", d.text()),
        }
    };
    assert_eq!(code, 1012);
    let _ = ws.close(None);
    let status = d.wait(30);
    let text = d.text();
    assert!(status.success(), "{status}:\n{text}");
    assert!(text.contains("1 WebSocket(s) drained"), "{text}");
    assert!(gone(echo_pid) && gone(proxy_pid), "{text}");
}

#[test]
fn demo_no_load_serves_until_sigterm() {
    if !uring_ok() {
        return;
    }
    let mut d = Demo::start(&["--no-load"]);
    let text = d.wait_for("Serving until Ctrl-C", 30);
    assert!(!text.contains("Report"), "{text}");
    let addr = proxy_addr(&text);
    let mut ws = ws_connect(addr, "/x");
    ws_echo(&mut ws, vec![7; 70_000]);
    drop(ws);
    d.signal(nix::sys::signal::Signal::SIGTERM);
    let status = d.wait(30);
    assert!(status.success(), "{status}:\n{}", d.text());
    // Bad arguments: a clear message, exit 2.
    let (code, out) = ringway(&["demo", "--duration", "soon"]);
    assert_eq!(code, Some(2), "{out}");
    assert!(out.contains("--duration"), "{out}");
}
