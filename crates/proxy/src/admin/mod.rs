//! The admin endpoint: `/healthz` (200 while serving, 503 once stopping), `/status` (JSON),
//! `/metrics` (Prometheus text) and `POST /reload`. It runs on an event loop of its own (a
//! reactor over its own io_uring, on one thread of the main process — [`serve`]), with a
//! deadline on every connection and a bound on how many it holds, so a probe always gets an
//! answer whatever other clients do; who may ask what is decided in [`guard`] (Host check,
//! no cross-site writes, the bearer token). It reads counters the workers publish as relaxed
//! atomics, never on the data path.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use crate::live::Live;
use crate::metrics::WorkerMetrics;

pub mod guard;
mod metrics;
mod serve;

pub use serve::{CONNECTIONS_MAX, HEAD_MAX, REQUEST_DEADLINE};

/// What the admin loop reports.
pub struct AdminState {
    pub workers: Vec<Arc<WorkerMetrics>>,
    /// The configuration in force (its servers' connection gauges, the `[admin]` policy).
    pub live: Arc<Live>,
    pub stopping: Arc<AtomicBool>,
    pub started: Instant,
    pub max_sessions: u64,
    /// What `/metrics` reads (the same workers and configuration).
    metrics: Arc<metrics::Sources>,
    /// `POST /reload` (what `ringway reload` calls): reload the configuration file; the summary
    /// or why the configuration in force stays. Run on a thread of its own, never on the loop.
    pub reload: Option<Reload>,
    /// `POST /rebalance` (what `ringway rebalance` calls): tell tunnels to reconnect.
    pub rebalance: Option<Rebalance>,
}

/// A configuration reload, as the admin endpoint calls it.
pub type Reload = Arc<dyn Fn() -> Result<String, crate::live::ReloadError> + Send + Sync>;

/// A rebalance, as the admin endpoint calls it: the workers are told; what was asked of them.
pub type Rebalance = Arc<dyn Fn(crate::live::Shed) -> String + Send + Sync>;

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
            rebalance: None,
        }
    }
}

/// Stops the admin endpoint (the old process of a binary upgrade leaves its port to the new).
pub struct AdminStop {
    l: std::net::TcpListener,
    stop: Arc<AtomicBool>,
}

impl AdminStop {
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
        // No connection is taken from here on (the loop sees the flag within a tick).
        let _ = socket2::SockRef::from(&self.l).shutdown(std::net::Shutdown::Read);
    }
}

/// Bind the endpoint's listening socket on `policy.listen`. The socket is SO_REUSEPORT, as the
/// proxy's are: during a binary upgrade both processes hold the port. Bound before the workers
/// listen, so that a client that reaches the proxy's port finds this one too (a connection
/// waits in the backlog until [`spawn`] serves it), and a port taken stops the start before
/// any connection is accepted.
pub fn bind(policy: &crate::config::admin::Admin) -> std::io::Result<std::net::TcpListener> {
    Ok(crate::sys::listen_socket(policy.listen, 128)?.into())
}

/// Start serving on `l` (from [`bind`]); returns the bound address (port 0 picks one). The
/// policy in force is read from the live configuration at each request (a reload changes the
/// token file or the names); the listen address changes only on restart.
pub fn spawn(
    l: std::net::TcpListener,
    policy: crate::config::admin::Admin,
    state: AdminState,
) -> std::io::Result<(SocketAddr, AdminStop)> {
    let local = l.local_addr()?;
    let stop = Arc::new(AtomicBool::new(false));
    let stopper = AdminStop {
        l: l.try_clone()?,
        stop: stop.clone(),
    };
    serve::start(l, policy, Arc::new(state), stop)?;
    Ok((local, stopper))
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

/// The answer to an allowed read: status, content type, body.
fn report(r: guard::Read, st: &AdminState) -> (u16, &'static str, String) {
    use guard::Read;
    let stopping = st.stopping.load(Ordering::Relaxed);
    let get = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    match r {
        Read::Healthz => {
            if stopping {
                (503, "text/plain", "stopping\n".into())
            } else {
                (200, "text/plain", "ok\n".into())
            }
        }
        Read::Status => {
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
                        "bytes_spliced": get(&w.bytes_spliced),
                        "buffer_pool": { "buffers": get(&w.pool_buffers), "in_use": get(&w.pool_in_use), "circulating": get(&w.pool_circulating), "waits": get(&w.pool_waits) },
                        "http2": { "connections": get(&w.h2.active), "stream_sessions": get(&w.h2.stream_sessions) },
                    })
                })
                .collect();
            let v = serde_json::json!({
                "pid": std::process::id(),
                "version": env!("CARGO_PKG_VERSION"),
                "state": if stopping { "stopping" } else { "serving" },
                "uptime_seconds": st.started.elapsed().as_secs(),
                "heap_bytes": crate::uring::counting::live_bytes(),
                "max_sessions": st.max_sessions,
                "active": sum(st, |w| get(&w.active)),
                "tunnels": sum(st, |w| get(&w.tunnels)),
                "accepted": sum(st, |w| get(&w.accepted)),
                // Client connections that speak HTTP/2 (among `active`), and the inner sessions
                // carrying their streams (not among `active`; they take session slots).
                "http2": {
                    "connections": sum(st, |w| get(&w.h2.active)),
                    "stream_sessions": sum(st, |w| get(&w.h2.stream_sessions)),
                },
                // Tunnels moved by a binary upgrade: handed to the process that took over
                // (while this one winds down), and taken over from the one before.
                "upgrade": {
                    "tunnels_handed_over": sum(st, |w| get(&w.tunnels_handed_over)),
                    "tunnels_taken_over": sum(st, |w| get(&w.tunnels_taken_over)),
                },
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
        Read::Metrics { openmetrics: true } => (
            200,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            metrics::render(st.metrics.clone()),
        ),
        Read::Metrics { openmetrics: false } => (
            200,
            "text/plain; version=0.0.4; charset=utf-8",
            metrics::classic(&metrics::render(st.metrics.clone())),
        ),
    }
}
