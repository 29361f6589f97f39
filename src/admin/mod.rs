//! The admin endpoint: `/healthz` (200 while serving, 503 once stopping), `/status` (JSON) and
//! `/metrics` (Prometheus text). It runs on its own thread of the main process, one short
//! request at a time, reading counters the workers publish as relaxed atomics — never on the
//! data path.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::worker::WorkerStats;

/// What the admin thread reports.
pub struct AdminState {
    pub workers: Vec<Arc<WorkerStats>>,
    pub stopping: Arc<AtomicBool>,
    pub started: Instant,
    pub max_sessions: u64,
}

/// Start serving on `addr`; returns the bound address (port 0 picks one).
pub fn spawn(addr: SocketAddr, state: AdminState) -> std::io::Result<SocketAddr> {
    let l = TcpListener::bind(addr)?;
    let local = l.local_addr()?;
    std::thread::Builder::new()
        .name("ringway-admin".into())
        .spawn(move || {
            for s in l.incoming().flatten() {
                let _ = serve(s, &state);
            }
        })?;
    Ok(local)
}

fn serve(mut s: TcpStream, st: &AdminState) -> std::io::Result<()> {
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    s.set_write_timeout(Some(Duration::from_secs(2)))?;
    let mut buf = [0u8; 4096];
    let mut n = 0;
    while n < buf.len() {
        let k = s.read(&mut buf[n..])?;
        if k == 0 {
            break;
        }
        n += k;
        if buf[..n].windows(4).any(|w| w == b"\r\n\r\n") {
            break;
        }
    }
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut req = httparse::Request::new(&mut headers);
    let (status, ctype, body) = match req.parse(&buf[..n]) {
        Ok(httparse::Status::Complete(_)) if req.method == Some("GET") => {
            route(req.path.unwrap_or("/"), st)
        }
        Ok(httparse::Status::Complete(_)) => (405, "text/plain", "only GET\n".to_string()),
        _ => (400, "text/plain", "bad request\n".to_string()),
    };
    let head = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        crate::http::reason(status),
        body.len()
    );
    s.write_all(head.as_bytes())?;
    s.write_all(body.as_bytes())
}

fn sum(st: &AdminState, f: impl Fn(&WorkerStats) -> u64) -> u64 {
    st.workers.iter().map(|w| f(w)).sum()
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
            });
            (200, "application/json", format!("{v}\n"))
        }
        "/metrics" => {
            let mut o = String::new();
            let mut metric =
                |name: &str, kind: &str, help: &str, f: &dyn Fn(&WorkerStats) -> u64| {
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
