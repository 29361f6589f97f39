//! `ringway demo`: two echo backends and the proxy on free loopback ports, a short load
//! through it with a live progress line, a report, how to connect by hand, then serving until
//! Ctrl-C, which drains the proxy and ends everything cleanly.
//!
//! The backends and the proxy are this same binary started as `ringway echo` and `ringway
//! run --config <written file>` in their own process groups (a Ctrl-C reaches the demo only,
//! which then drains the proxy with one SIGTERM, as systemd would); the load runs in this
//! process with `ringway bench`'s engine.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use ringway_bench::{self as bench, Mode, Opts, Target};

/// What the command line sets.
pub struct DemoOpts {
    /// How long the load runs (after a 1 s warm-up).
    pub duration: Duration,
    /// Serve only: no load, no report.
    pub no_load: bool,
    /// Connections echoing messages during the load.
    pub connections: usize,
    /// Idle WebSockets held to measure the proxy's memory per connection.
    pub idle: usize,
}

/// The configuration the demo runs the proxy with (ports filled in).
/// `sessions`: what the load will hold at once, with room for a few by hand.
fn config(echo: [SocketAddr; 2], listen: SocketAddr, admin: SocketAddr, sessions: usize) -> String {
    format!(
        r#"# Written by `ringway demo`; the proxy runs as `ringway run --config <this file>`.
[runtime]
workers = "auto"
max_connections = {sessions}
shutdown_grace = "10s"      # on Ctrl-C / SIGTERM: tunnels get a Close 1012 spread over
drain_spread = "2s"         # drain_spread, and up to shutdown_grace to end

[admin]
listen = "{admin}"          # /status /metrics /healthz

[[upstream]]
name = "echo"
balance = "least_conn"
servers = [{{ addr = "{e0}" }}, {{ addr = "{e1}" }}]
health_check = {{ type = "http", interval = "2s", request = "GET /health HTTP/1.0\r\n\r\n" }}

[[server]]
listen = ["{listen}"]

[[server.location]]
path = "/"
upstream = "echo"
heartbeat = {{ interval = "25s", timeout = "10s" }}
"#,
        e0 = echo[0],
        e1 = echo[1],
    )
}

/// `n` distinct ports free on 127.0.0.1 right now.
fn free_ports<const N: usize>() -> anyhow::Result<[SocketAddr; N]> {
    let held: Vec<TcpListener> = (0..N)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<_, _>>()
        .context("finding free loopback ports")?;
    let addrs: Vec<SocketAddr> = held
        .iter()
        .map(|l| l.local_addr())
        .collect::<Result<_, _>>()?;
    addrs
        .try_into()
        .map_err(|_| anyhow::anyhow!("finding free loopback ports"))
}

/// A child in its own process group, its stderr in `log`.
fn start(args: &[&str], log: &Path) -> anyhow::Result<Child> {
    let exe = std::env::current_exe().context("finding this executable")?;
    let err = std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    Command::new(exe)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(err)
        .process_group(0)
        .spawn()
        .with_context(|| format!("starting ringway {}", args[0]))
}

/// The last lines of a log, for an error message.
fn tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(8)..].join("\n")
}

/// Wait until `addr` accepts (10 s), or the child has exited.
fn wait_port(addr: SocketAddr, child: &mut Child, log: &Path) -> anyhow::Result<()> {
    let t = Instant::now();
    while TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_err() {
        if let Some(status) = child.try_wait()? {
            bail!("it exited ({status}):\n{}", tail(log));
        }
        if t.elapsed() > Duration::from_secs(10) {
            bail!("{addr} did not accept within 10 s:\n{}", tail(log));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

fn rss_kib(pid: u32) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn ms(us: u64) -> String {
    format!("{:.2} ms", us as f64 / 1000.0)
}

/// The processes the demo started; stopped (by PID) when dropped.
struct Kids {
    echo: Child,
    proxy: Child,
    dir: PathBuf,
}

impl Drop for Kids {
    fn drop(&mut self) {
        for c in [&mut self.proxy, &mut self.echo] {
            if let Ok(None) = c.try_wait() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

pub fn demo(o: DemoOpts) -> anyhow::Result<ExitCode> {
    if let Err(why) = ringway_proxy::uring::probe() {
        bail!("{why}");
    }
    let dir = std::env::temp_dir().join(format!("ringway-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let [e0, e1, listen, admin] = free_ports::<4>()?;
    let cfg_path = dir.join("ringway.toml");
    // Split across workers by SO_REUSEPORT's hash: a quarter more for the unevenness.
    let sessions = (o.connections.max(o.idle) * 5 / 4 + 100).max(5000);
    std::fs::write(&cfg_path, config([e0, e1], listen, admin, sessions))?;
    ringway_proxy::config::Config::load(&cfg_path).map_err(|e| anyhow::anyhow!("{e}"))?;
    let (echo_log, proxy_log) = (dir.join("echo.log"), dir.join("ringway.log"));
    let e0s = e0.to_string();
    let e1s = e1.to_string();
    let echo = start(
        &["echo", "--listen", &e0s, "--listen", &e1s, "--workers", "1"],
        &echo_log,
    )?;
    let proxy = start(
        &["run", "--config", cfg_path.to_str().unwrap_or_default()],
        &proxy_log,
    )?;
    let mut kids = Kids { echo, proxy, dir };
    for a in [e0, e1] {
        wait_port(a, &mut kids.echo, &echo_log).context("the echo backends did not start")?;
    }
    for a in [listen, admin] {
        wait_port(a, &mut kids.proxy, &proxy_log).context("the proxy did not start")?;
    }
    // From here a Ctrl-C waits for us (the load ends first) and drains the proxy.
    let signals = ringway_proxy::sys::block_signals();
    let proxy_pid = kids.proxy.id();
    println!("ringway demo");
    println!(
        "  echo backends  {e0} and {e1} (`ringway echo`, pid {})",
        kids.echo.id()
    );
    println!("  proxy          ws://{listen}/ (`ringway run`, pid {proxy_pid})");
    println!("  admin          http://{admin}/status");
    println!("  configuration  {}", cfg_path.display());
    println!(
        "  proxy log      {} (one access-log line per session)",
        proxy_log.display()
    );
    let mut failed = false;
    if !o.no_load {
        failed = load(&o, listen, proxy_pid, &kids.dir)?;
    }
    println!();
    println!("Try it by hand (the backends echo every message):");
    println!(
        "  wscat -c ws://{listen}/chat              (npm install -g wscat; or websocat ws://{listen}/chat)"
    );
    println!(
        "  curl -i http://{listen}/headers           what the backend received (X-Real-IP, X-Forwarded-For, …)"
    );
    println!(
        "  curl http://{admin}/status               sessions, tunnels, each upstream server's state"
    );
    println!("  curl http://{admin}/metrics              Prometheus metrics");
    println!("  ringway bench throughput --target ws://{listen}/ -c 100 -d 10s");
    println!();
    println!(
        "Serving until Ctrl-C (or SIGTERM), which drains: each open WebSocket gets a Close 1012 and the proxy exits."
    );
    // Each signal is passed on: the first drains, a second closes what is left at once.
    std::thread::Builder::new()
        .name("demo-signals".into())
        .spawn(move || {
            while let Ok(s) = signals.wait() {
                if s == Signal::SIGHUP {
                    continue;
                }
                eprintln!("ringway demo: {s}: draining the proxy (again: close now)");
                let _ = kill(Pid::from_raw(proxy_pid as i32), Signal::SIGTERM);
            }
        })?;
    let status = kids.proxy.wait()?;
    let _ = kill(Pid::from_raw(kids.echo.id() as i32), Signal::SIGTERM);
    let echo_status = kids.echo.wait()?;
    let drained = std::fs::File::open(&proxy_log).map_or(0, |f| {
        use std::io::BufRead;
        std::io::BufReader::new(f)
            .lines()
            .map_while(Result::ok)
            .filter(|l| l.contains("end=drained"))
            .count()
    });
    println!(
        "proxy exited ({status}); {drained} WebSocket(s) drained; echo backends exited ({echo_status})"
    );
    if !status.success() {
        eprintln!("{}", tail(&proxy_log));
        return Ok(ExitCode::from(1));
    }
    let _ = std::fs::remove_dir_all(&kids.dir);
    Ok(if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// The load and its report; true when a connection failed.
fn load(o: &DemoOpts, listen: SocketAddr, proxy_pid: u32, dir: &Path) -> anyhow::Result<bool> {
    let target = Target::parse(&format!("ws://{listen}/demo"))?;
    let opts = Opts {
        mode: Mode::Throughput,
        target: target.clone(),
        connections: o.connections,
        count: 0,
        close_frame: true,
        size: 64,
        duration: o.duration,
        warmup: Duration::from_secs(1),
        rate: 0.0,
        hold: Duration::ZERO,
        interval: Duration::from_secs(25),
        source: Vec::new(),
        workers: ringway_proxy::config::available_cpus(),
        timeout: Duration::from_secs(10),
        ready_file: None,
        progress: true,
        tls: None,
    };
    println!();
    println!(
        "Load: {} WebSockets echoing 64-byte messages through the proxy for {:?} (after 1 s of warm-up)",
        o.connections, o.duration
    );
    let r = bench::run(opts.clone())?;
    // Memory: the proxy's resident size with `idle` WebSockets held open, minus at rest.
    let ready = dir.join("idle-ready");
    let _ = std::fs::remove_file(&ready);
    let base = rss_kib(proxy_pid);
    let idle = Opts {
        mode: Mode::Idle,
        connections: o.idle,
        hold: Duration::from_secs(3),
        ready_file: Some(ready.clone()),
        ..opts
    };
    println!(
        "Memory: {} idle WebSockets held for 3 s, the proxy's resident memory measured",
        o.idle
    );
    let held = std::thread::scope(|s| {
        let h = s.spawn(|| bench::run(idle));
        let t = Instant::now();
        while !ready.exists() && !h.is_finished() && t.elapsed() < Duration::from_secs(30) {
            std::thread::sleep(Duration::from_millis(50));
        }
        std::thread::sleep(Duration::from_millis(500));
        let held = if ready.exists() {
            rss_kib(proxy_pid)
        } else {
            None
        };
        (held, h.join())
    });
    let (held_kib, idle_report) = held;
    let idle_report = idle_report.map_err(|_| anyhow::anyhow!("the idle load panicked"))??;
    let l = &r.latency_us;
    println!();
    println!("Report");
    println!(
        "  connections     {} echoing ({} failed); {} idle ({} failed)",
        r.established, r.failed, idle_report.established, idle_report.failed
    );
    println!(
        "  messages/s      {:.0} ({} round trips of 64 B in {:.1} s)",
        r.messages_per_sec, r.messages, r.seconds
    );
    println!(
        "  latency         p50 {}  p90 {}  p99 {}  p99.9 {}  max {} (round trip through the proxy)",
        ms(l.p50),
        ms(l.p90),
        ms(l.p99),
        ms(l.p999),
        ms(l.max)
    );
    match (base, held_kib) {
        (Some(b), Some(h)) if idle_report.established > 0 => println!(
            "  memory          {:.2} KiB per idle WebSocket in the proxy (resident {:.1} MiB at rest, {:.1} MiB holding {})",
            h.saturating_sub(b) as f64 / idle_report.established as f64,
            b as f64 / 1024.0,
            h as f64 / 1024.0,
            idle_report.established
        ),
        _ => println!("  memory          not measured (the idle connections did not all open)"),
    }
    let mut errors: Vec<String> = r
        .errors
        .iter()
        .chain(idle_report.errors.iter())
        .map(|(k, v)| format!("{k}: {v}"))
        .collect();
    errors.dedup();
    for e in &errors {
        println!("  error           {e}");
    }
    Ok(r.failed + idle_report.failed > 0 || !errors.is_empty())
}
