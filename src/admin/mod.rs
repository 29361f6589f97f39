//! The admin endpoint: `/healthz` (200 while serving, 503 once stopping), `/status` (JSON) and
//! `/metrics` (Prometheus text). It runs on threads of the main process — one per connection,
//! at most `CONNECTIONS_MAX` at once, each request under an overall `REQUEST_DEADLINE` — so a
//! slow client cannot hold the probes up; it reads counters the workers publish as relaxed
//! atomics, never on the data path.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::live::Live;
use crate::metrics::{DURATION_BOUNDS, WorkerMetrics};
use crate::session::End;

/// Admin connections served at once; more are answered 503 and closed at once.
pub const CONNECTIONS_MAX: usize = 256;
/// The whole of one request, read and answer, must fit in this (a client sending a byte now
/// and then is cut off).
pub const REQUEST_DEADLINE: Duration = Duration::from_secs(2);

/// What the admin thread reports.
pub struct AdminState {
    pub workers: Vec<Arc<WorkerMetrics>>,
    /// The configuration in force (its servers' connection gauges).
    pub live: Arc<Live>,
    pub stopping: Arc<AtomicBool>,
    pub started: Instant,
    pub max_sessions: u64,
}

/// Start serving on `addr`; returns the bound address (port 0 picks one).
pub fn spawn(addr: SocketAddr, state: AdminState) -> std::io::Result<SocketAddr> {
    let l = TcpListener::bind(addr)?;
    let local = l.local_addr()?;
    let state = Arc::new(state);
    let active = Arc::new(AtomicUsize::new(0));
    std::thread::Builder::new()
        .name("ringway-admin".into())
        .spawn(move || {
            for mut s in l.incoming().flatten() {
                if active.fetch_add(1, Ordering::AcqRel) >= CONNECTIONS_MAX {
                    active.fetch_sub(1, Ordering::AcqRel);
                    let _ = s.set_write_timeout(Some(Duration::from_millis(100)));
                    let _ = s.write_all(&answer(503, "text/plain", "busy\n"));
                    continue;
                }
                let (state, mine) = (state.clone(), active.clone());
                let spawned = std::thread::Builder::new()
                    .name("ringway-admin-conn".into())
                    .stack_size(128 * 1024)
                    .spawn(move || {
                        let _ = serve(s, &state);
                        mine.fetch_sub(1, Ordering::AcqRel);
                    });
                if spawned.is_err() {
                    // The closure (and the connection) is gone; give its place back.
                    active.fetch_sub(1, Ordering::AcqRel);
                }
            }
        })?;
    Ok(local)
}

/// A whole response with `Connection: close`.
fn answer(status: u16, ctype: &str, body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        crate::http::reason(status),
        body.len()
    )
    .into_bytes()
}

fn serve(mut s: TcpStream, st: &AdminState) -> std::io::Result<()> {
    let deadline = Instant::now() + REQUEST_DEADLINE;
    let left = || {
        deadline
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
            .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::TimedOut))
    };
    let mut buf = [0u8; 4096];
    let mut n = 0;
    while n < buf.len() {
        // Each read waits only for what is left of the request's deadline.
        s.set_read_timeout(Some(left()?))?;
        let k = s.read(&mut buf[n..])?;
        if k == 0 {
            break;
        }
        n += k;
        if buf[..n].windows(4).any(|w| w == b"\r\n\r\n") {
            break;
        }
    }
    s.set_write_timeout(Some(left()?))?;
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut req = httparse::Request::new(&mut headers);
    let (status, ctype, body) = match req.parse(&buf[..n]) {
        Ok(httparse::Status::Complete(_)) if req.method == Some("GET") => {
            route(req.path.unwrap_or("/"), st)
        }
        Ok(httparse::Status::Complete(_)) => (405, "text/plain", "only GET\n".to_string()),
        _ => (400, "text/plain", "bad request\n".to_string()),
    };
    s.write_all(&answer(status, ctype, &body))
}

fn sum(st: &AdminState, f: impl Fn(&WorkerMetrics) -> u64) -> u64 {
    st.workers.iter().map(|w| f(w)).sum()
}

/// Each upstream's servers: their state, connections open now, and what happened to them.
fn upstreams(live: &Live) -> serde_json::Value {
    let cfg = live.config();
    let now = crate::config::clock_ms();
    cfg.upstreams
        .iter()
        .map(|u| {
            let servers: Vec<serde_json::Value> = u
                .peers
                .iter()
                .map(|p| {
                    let [requests, failures, checks_ok, checks_failed] = p.state.counts();
                    serde_json::json!({
                        "addr": p.addr.to_string(),
                        "state": p.status(now).name(),
                        "weight": p.weight,
                        "backup": p.backup,
                        "active": p.state.active(),
                        "max_conns": p.max_conns,
                        "fails": p.state.fails(),
                        "requests": requests,
                        "failures": failures,
                        "health_checks_passed": checks_ok,
                        "health_checks_failed": checks_failed,
                    })
                })
                .collect();
            let balance = match &u.balance {
                crate::config::Balance::RoundRobin => "round_robin",
                crate::config::Balance::LeastConn => "least_conn",
                crate::config::Balance::IpHash => "ip_hash",
                crate::config::Balance::Hash(h) if h.consistent => "hash consistent",
                crate::config::Balance::Hash(_) => "hash",
            };
            serde_json::json!({ "name": u.name, "balance": balance, "servers": servers })
        })
        .collect()
}

fn route(path: &str, st: &AdminState) -> (u16, &'static str, String) {
    let stopping = st.stopping.load(Ordering::Relaxed);
    let get = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    match path {
        "/healthz" => {
            if stopping {
                (503, "text/plain", "stopping\n".into())
            } else {
                (200, "text/plain", "ok\n".into())
            }
        }
        "/status" => {
            let workers: Vec<serde_json::Value> = st
                .workers
                .iter()
                .enumerate()
                .map(|(i, w)| {
                    serde_json::json!({
                        "worker": i,
                        "active": get(&w.active),
                        "accepted": get(&w.accepted),
                        "rejected": get(&w.rejected),
                    })
                })
                .collect();
            let v = serde_json::json!({
                "version": env!("CARGO_PKG_VERSION"),
                "state": if stopping { "stopping" } else { "serving" },
                "uptime_seconds": st.started.elapsed().as_secs(),
                "max_sessions": st.max_sessions,
                "active": sum(st, |w| get(&w.active)),
                "accepted": sum(st, |w| get(&w.accepted)),
                "workers": workers,
                "upstreams": upstreams(&st.live),
            });
            (200, "application/json", format!("{v}\n"))
        }
        "/metrics" => {
            let mut o = String::new();
            let mut metric =
                |name: &str, kind: &str, help: &str, f: &dyn Fn(&WorkerMetrics) -> u64| {
                    o.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"));
                    for (i, w) in st.workers.iter().enumerate() {
                        o.push_str(&format!("{name}{{worker=\"{i}\"}} {}\n", f(w)));
                    }
                };
            metric(
                "ringway_sessions_active",
                "gauge",
                "Client connections open now.",
                &|w| get(&w.active),
            );
            metric(
                "ringway_sessions_accepted_total",
                "counter",
                "Client connections accepted.",
                &|w| get(&w.accepted),
            );
            metric(
                "ringway_sessions_rejected_total",
                "counter",
                "Client connections refused over max_connections.",
                &|w| get(&w.rejected),
            );
            metric(
                "ringway_stale_completions_total",
                "counter",
                "Completions for freed sessions (should stay 0).",
                &|w| get(&w.stale_cqes),
            );
            o.push_str(
                "# HELP ringway_sessions_ended_total Sessions ended, by how they ended.\n\
                 # TYPE ringway_sessions_ended_total counter\n",
            );
            for (i, w) in st.workers.iter().enumerate() {
                for (k, name) in End::KIND_NAMES.iter().enumerate() {
                    o.push_str(&format!(
                        "ringway_sessions_ended_total{{worker=\"{i}\",end=\"{name}\"}} {}\n",
                        w.ended(k)
                    ));
                }
            }
            o.push_str(
                "# HELP ringway_session_duration_seconds How long client connections lasted.\n\
                 # TYPE ringway_session_duration_seconds histogram\n",
            );
            for (i, w) in st.workers.iter().enumerate() {
                let (buckets, sum) = w.durations();
                let mut cumulative = 0;
                for (k, n) in buckets.iter().enumerate() {
                    cumulative += n;
                    let le = DURATION_BOUNDS
                        .get(k)
                        .map_or("+Inf".to_string(), |b| b.to_string());
                    o.push_str(&format!(
                        "ringway_session_duration_seconds_bucket{{worker=\"{i}\",le=\"{le}\"}} {cumulative}\n"
                    ));
                }
                o.push_str(&format!(
                    "ringway_session_duration_seconds_sum{{worker=\"{i}\"}} {sum}\n\
                     ringway_session_duration_seconds_count{{worker=\"{i}\"}} {cumulative}\n"
                ));
            }
            o.push_str(&format!(
                "# HELP ringway_up 1 while serving, 0 while stopping.\n# TYPE ringway_up gauge\nringway_up {}\n",
                u8::from(!stopping)
            ));
            (200, "text/plain; version=0.0.4", o)
        }
        _ => (
            404,
            "text/plain",
            "not found: try /healthz, /status or /metrics\n".into(),
        ),
    }
}
