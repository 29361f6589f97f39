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
use crate::metrics::WorkerMetrics;

mod metrics;

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
    /// What `/metrics` reads (the same workers and configuration).
    metrics: Arc<metrics::Sources>,
    /// `POST /reload` (what `ringway reload` calls): reload the configuration file; the summary
    /// or why the configuration in force stays.
    pub reload: Option<Reload>,
}

/// A configuration reload, as the admin endpoint calls it.
pub type Reload = Box<dyn Fn() -> Result<String, String> + Send + Sync>;

impl AdminState {
    pub fn new(
        workers: Vec<Arc<WorkerMetrics>>,
        live: Arc<Live>,
        stopping: Arc<AtomicBool>,
        max_sessions: u64,
    ) -> AdminState {
        let metrics = Arc::new(metrics::Sources {
            workers: workers.clone(),
            live: live.clone(),
            stopping: stopping.clone(),
        });
        AdminState {
            workers,
            live,
            stopping,
            started: Instant::now(),
            max_sessions,
            metrics,
            reload: None,
        }
    }
}

/// Stops the admin endpoint (the old process of a binary upgrade leaves its port to the new).
pub struct AdminStop {
    l: TcpListener,
    stop: Arc<AtomicBool>,
}

impl AdminStop {
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = socket2::SockRef::from(&self.l).shutdown(std::net::Shutdown::Read);
    }
}

/// Start serving on `addr`; returns the bound address (port 0 picks one). The socket is
/// SO_REUSEPORT, as the proxy's are: during a binary upgrade both processes hold the port.
pub fn spawn(addr: SocketAddr, state: AdminState) -> std::io::Result<(SocketAddr, AdminStop)> {
    let l: TcpListener = crate::sys::listen_socket(addr, 128)?.into();
    let local = l.local_addr()?;
    let stop = Arc::new(AtomicBool::new(false));
    let stopper = AdminStop {
        l: l.try_clone()?,
        stop: stop.clone(),
    };
    let state = Arc::new(state);
    let active = Arc::new(AtomicUsize::new(0));
    std::thread::Builder::new()
        .name("ringway-admin".into())
        .spawn(move || {
            for s in l.incoming() {
                let mut s = match s {
                    Ok(s) => s,
                    Err(_) if stop.load(Ordering::Relaxed) => return,
                    Err(_) => continue,
                };
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
    Ok((local, stopper))
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
            let openmetrics = req.headers.iter().any(|h| {
                h.name.eq_ignore_ascii_case("accept")
                    && String::from_utf8_lossy(h.value).contains("application/openmetrics-text")
            });
            route(req.path.unwrap_or("/"), openmetrics, st)
        }
        Ok(httparse::Status::Complete(_))
            if req.method == Some("POST") && req.path == Some("/reload") =>
        {
            match &st.reload {
                None => (404, "text/plain", "not found\n".to_string()),
                Some(_) if st.stopping.load(Ordering::Relaxed) => {
                    (503, "text/plain", "stopping: not reloading\n".to_string())
                }
                Some(reload) => match reload() {
                    Ok(done) => {
                        tracing::info!("admin /reload: {done}");
                        (200, "text/plain", format!("{done}\n"))
                    }
                    Err(e) => {
                        tracing::error!(
                            "admin /reload: reload failed, the configuration in force stays: {e}"
                        );
                        (422, "text/plain", format!("{e}\n"))
                    }
                },
            }
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
            serde_json::json!({ "name": u.name, "balance": u.balance.name(), "servers": servers })
        })
        .collect()
}

fn route(path: &str, openmetrics: bool, st: &AdminState) -> (u16, &'static str, String) {
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
                        "tunnels": get(&w.tunnels),
                        "accepted": get(&w.accepted),
                        "rejected": get(&w.rejected),
                        "limited": w.ended(crate::session::End::Limited.index()),
                        "bytes_from_client": get(&w.bytes_from_client),
                        "bytes_from_upstream": get(&w.bytes_from_upstream),
                        "buffer_pool": { "buffers": get(&w.pool_buffers), "in_use": get(&w.pool_in_use) },
                    })
                })
                .collect();
            let v = serde_json::json!({
                "pid": std::process::id(),
                "version": env!("CARGO_PKG_VERSION"),
                "state": if stopping { "stopping" } else { "serving" },
                "uptime_seconds": st.started.elapsed().as_secs(),
                "max_sessions": st.max_sessions,
                "active": sum(st, |w| get(&w.active)),
                "tunnels": sum(st, |w| get(&w.tunnels)),
                "accepted": sum(st, |w| get(&w.accepted)),
                "workers": workers,
                "upstreams": upstreams(&st.live),
                "limit_conn_zones": st.live.config().conn_zones.iter().map(|z| serde_json::json!({
                    "name": z.name, "addresses": z.table.keys(), "capacity": z.table.capacity(),
                })).collect::<Vec<_>>(),
            });
            (200, "application/json", format!("{v}\n"))
        }
        // OpenMetrics to a scraper that asks for it (Prometheus does), the classic text format
        // otherwise (curl, `promtool check metrics`).
        "/metrics" if openmetrics => (
            200,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            metrics::render(st.metrics.clone()),
        ),
        "/metrics" => (
            200,
            "text/plain; version=0.0.4; charset=utf-8",
            metrics::classic(&metrics::render(st.metrics.clone())),
        ),
        _ => (
            404,
            "text/plain",
            "not found: try /healthz, /status or /metrics\n".into(),
        ),
    }
}
