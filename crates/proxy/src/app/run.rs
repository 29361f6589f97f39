//! `ringway run`: start one worker per configured core, wait for a signal, stop them.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use nix::sys::signal::Signal;

use crate::config::Config;
use crate::live::{Inbox, Live, Msg, Shed};
use crate::metrics::WorkerMetrics;
use crate::worker::{Worker, WorkerSpec};

use crate::tuning::{self, FDS_PER_SESSION, FDS_RESERVED};

/// Run the proxy in the foreground until SIGINT or SIGTERM; SIGHUP reloads `path`. With
/// `upgrade`, take the listening sockets over from the ringway serving
/// `runtime.upgrade_socket` (a binary upgrade).
pub fn run(cfg: Config, path: &std::path::Path, upgrade: bool) -> anyhow::Result<()> {
    if let Err(why) = crate::uring::probe() {
        anyhow::bail!("{why}");
    }
    let cfg = Arc::new(cfg);
    let workers = cfg.runtime.workers;
    let (max_connections, nofile) = capacity(&cfg);
    let per_worker = (max_connections as usize).div_ceil(workers).max(1);
    if let Some(sock) = &cfg.runtime.upgrade_socket
        && !upgrade
    {
        // Refused before anything starts (the upgrade path checks it once the old process has
        // handed over).
        super::upgrade::check_path(sock)?;
    }
    let signals = crate::sys::block_signals();
    let (inherited, handover) = inherit(&cfg, path, upgrade)?;
    if inherited.activated {
        tracing::info!("socket activation: listening on the sockets systemd passed (LISTEN_FDS)");
    }
    for a in inherited.unused(&cfg.listeners) {
        tracing::warn!(
            "a listening socket on {a} was handed over but the configuration does not listen there: closing it"
        );
    }
    let offer = Arc::new(super::upgrade::Offer {
        sockets: Default::default(),
    });
    let live = Live::new(cfg.clone());
    let admin_listener = match &cfg.admin {
        Some(a) => {
            Some(crate::admin::bind(a).with_context(|| format!("admin endpoint on {}", a.listen))?)
        }
        None => None,
    };
    let Workers {
        handles,
        metrics: all_metrics,
        inboxes,
    } = spawn_workers(&cfg, &live, &inherited, &offer, per_worker)?;
    drop(inherited);
    let handed_by = match handover {
        Some(h) => {
            let old = h.ready(inboxes.clone(), cfg.runtime.upgrade_tunnels);
            tracing::info!(
                "upgrade: serving on the listening sockets of pid {old}, which drains and exits"
            );
            Some(old)
        }
        None => None,
    };
    let stopping = Arc::new(AtomicBool::new(false));
    let reloader = Arc::new(super::reload::Reloader::new(
        path.to_path_buf(),
        live.clone(),
        inboxes.clone(),
        tuning::LISTEN_BACKLOG as i32,
        offer.clone(),
    ));
    let admin_stop = start_admin(
        admin_listener,
        &cfg,
        &all_metrics,
        &live,
        &stopping,
        max_connections,
        (&reloader, &inboxes),
    )?;
    crate::upstream::health::spawn(live.clone(), stopping.clone())
        .context("spawning the health checker")?;
    let listen: Vec<String> = cfg.listeners.iter().map(|a| a.to_string()).collect();
    tracing::info!(
        "ringway {} listening on {} with {workers} worker(s), {per_worker} sessions each, RLIMIT_NOFILE {nofile}",
        env!("CARGO_PKG_VERSION"),
        listen.join(", ")
    );
    // Signals go to a thread of their own, so a second SIGTERM still lands while the workers
    // drain (the main thread is joining them).
    let grace = cfg.runtime.shutdown_grace;
    let (spread, drain_code) = (cfg.runtime.drain_spread, cfg.runtime.drain_code);
    let inboxes_for_handoff = inboxes.clone();
    let tell = move |m: Msg| inboxes.iter().for_each(|i| i.send(m));
    let tell = Arc::new(tell);
    if let Some(old) = handed_by {
        nudge_while_old_lives(old, grace, tell.clone())?;
    }
    // Set while tunnels are carried to a new process: this one does not exit before that ends.
    let carrying = Arc::new(AtomicBool::new(false));
    if let Some(sock) = &cfg.runtime.upgrade_socket {
        let (tell, stopping) = (tell.clone(), stopping.clone());
        let inboxes = inboxes_for_handoff;
        super::upgrade::serve(sock, offer, workers, carrying.clone(), move |tunnels_to| {
            stopping.store(true, Ordering::Relaxed);
            if let Some(to) = tunnels_to {
                for i in &inboxes {
                    i.give_handoff(to.clone());
                }
            }
            tell(Msg::Handover);
            if let Some(a) = &admin_stop {
                a.stop();
            }
        })?;
    }
    spawn_signals(
        signals,
        stopping,
        reloader,
        tell,
        (grace, spread, drain_code),
    )?;
    for h in handles {
        match h.join() {
            Ok(r) => r?,
            Err(_) => anyhow::bail!("a worker thread panicked"),
        }
    }
    // The workers are through; the tunnels they handed over may still be on their way.
    let bound = Instant::now() + crate::worker::HANDOFF_WAIT + super::handover::SEND_WAIT;
    while carrying.load(Ordering::Acquire) && Instant::now() < bound {
        std::thread::sleep(Duration::from_millis(5));
    }
    let accepted: u64 = all_metrics
        .iter()
        .map(|s| s.accepted.load(Ordering::Relaxed))
        .sum();
    tracing::info!("stopped after {accepted} connections");
    Ok(())
}

/// How many sessions fit: `max_connections`, capped by what RLIMIT_NOFILE (raised as far as
/// it goes) leaves room for; and that limit.
fn capacity(cfg: &Config) -> (u32, u64) {
    let needs = tuning::Needs::new(u64::from(cfg.runtime.max_connections), Some(cfg));
    let want_fds = needs.fds;
    super::preflight::at_start(cfg, &needs);
    let nofile = crate::sys::raise_nofile(want_fds);
    let fit = (nofile.saturating_sub(FDS_RESERVED) / FDS_PER_SESSION) as u32;
    let max_connections = if fit < cfg.runtime.max_connections {
        tracing::warn!(
            "RLIMIT_NOFILE is {nofile}: room for {fit} sessions, not max_connections = {}; capping at {fit} \
             (raise LimitNOFILE / `ulimit -n` to {want_fds}; see `ringway preflight`)",
            cfg.runtime.max_connections
        );
        fit
    } else {
        cfg.runtime.max_connections
    };
    (max_connections, nofile)
}

/// The listening sockets handed over: from the ringway serving `runtime.upgrade_socket`
/// (`upgrade`), or from systemd's socket activation.
fn inherit(
    cfg: &Config,
    path: &std::path::Path,
    upgrade: bool,
) -> anyhow::Result<(super::upgrade::Inherited, Option<super::upgrade::Handover>)> {
    Ok(if upgrade {
        let Some(sock) = &cfg.runtime.upgrade_socket else {
            anyhow::bail!(
                "--upgrade needs runtime.upgrade_socket in {} (the socket the running ringway serves)",
                path.display()
            );
        };
        let (i, h) = super::upgrade::take_over(sock)?;
        (i, Some(h))
    } else {
        (super::upgrade::from_systemd()?, None)
    })
}

/// The workers' threads, their metrics and their inboxes.
struct Workers {
    handles: Vec<std::thread::JoinHandle<anyhow::Result<()>>>,
    metrics: Vec<Arc<WorkerMetrics>>,
    inboxes: Vec<Arc<Inbox>>,
}

/// One worker per configured core, each on its listening sockets (inherited ones shared out);
/// returns once every worker has started, or the first one's failure (the others are told to
/// close).
fn spawn_workers(
    cfg: &Arc<Config>,
    live: &Arc<Live>,
    inherited: &super::upgrade::Inherited,
    offer: &super::upgrade::Offer,
    per_worker: usize,
) -> anyhow::Result<Workers> {
    let workers = cfg.runtime.workers;
    let cpus = crate::config::available_cpus();
    let mut handles = Vec::new();
    let mut all_metrics = Vec::new();
    let mut inboxes = Vec::new();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<anyhow::Result<()>>();
    for id in 0..workers {
        let metrics = Arc::new(WorkerMetrics::default());
        all_metrics.push(metrics.clone());
        let inbox = Inbox::new().context("creating a worker's inbox (eventfd)")?;
        inboxes.push(inbox.clone());
        let spec = WorkerSpec {
            id,
            live: live.clone(),
            inbox,
            max_sessions: per_worker,
            backlog: tuning::LISTEN_BACKLOG as i32,
            cpu: if workers <= cpus { Some(id) } else { None },
            metrics,
            activated: inherited.activated,
        };
        let sockets = Worker::listen(cfg, spec.backlog, |a| inherited.share(a, id, workers))?;
        {
            let mut held = offer.sockets.lock().unwrap_or_else(|e| e.into_inner());
            for (a, s) in &sockets {
                held.push((*a, s.try_clone().context("keeping a listening socket")?));
            }
        }
        let ready = ready_tx.clone();
        handles.push(
            std::thread::Builder::new()
                .name(format!("ringway-w{id}"))
                .spawn(move || match Worker::new(spec, sockets) {
                    Ok(w) => {
                        let _ = ready.send(Ok(()));
                        w.run()
                    }
                    Err(e) => {
                        let _ = ready.send(Err(anyhow::anyhow!("starting worker {id}: {e:#}")));
                        Ok(())
                    }
                })
                .context("spawning worker thread")?,
        );
    }
    drop(ready_tx);
    for r in ready_rx.iter().take(workers) {
        if let Err(e) = r {
            inboxes.iter().for_each(|i| i.send(Msg::CloseNow));
            return Err(e);
        }
    }
    Ok(Workers {
        handles,
        metrics: all_metrics,
        inboxes,
    })
}

/// The admin endpoint, when configured: its stopper.
fn start_admin(
    listener: Option<std::net::TcpListener>,
    cfg: &Config,
    all_metrics: &[Arc<WorkerMetrics>],
    live: &Arc<Live>,
    stopping: &Arc<AtomicBool>,
    max_connections: u32,
    (reloader, inboxes): (&Arc<super::reload::Reloader>, &[Arc<Inbox>]),
) -> anyhow::Result<Option<crate::admin::AdminStop>> {
    let mut admin_stop = None;
    if let (Some(admin), Some(listener)) = (&cfg.admin, listener) {
        let mut state = crate::admin::AdminState::new(
            all_metrics.to_vec(),
            live.clone(),
            stopping.clone(),
            u64::from(max_connections),
        );
        let r = reloader.clone();
        state.reload = Some(Arc::new(move || r.reload()));
        let (inboxes, metrics) = (inboxes.to_vec(), all_metrics.to_vec());
        state.rebalance = Some(Arc::new(move |shed| rebalance(&inboxes, &metrics, shed)));
        let addr = admin.listen;
        let (bound, stop) = crate::admin::spawn(listener, admin.clone(), state)
            .with_context(|| format!("admin endpoint on {addr}"))?;
        admin_stop = Some(stop);
        let guard = match (&admin.token, admin.loopback()) {
            (Some(_), _) => "bearer token required but for /healthz",
            (None, true) => "loopback, no token",
            (None, false) => "no token: /reload refused, /status and /metrics open",
        };
        tracing::info!("admin endpoint on http://{bound} (/healthz /status /metrics; {guard})");
    }
    Ok(admin_stop)
}

/// While the old process of a binary upgrade winds down, a wake-up for a connection queued on
/// a shared socket may go to its accept as that is cancelled: fresh accepts pick such a
/// connection up (every 100 ms, and once after it is gone).
fn nudge_while_old_lives(
    old: u32,
    grace: std::time::Duration,
    tell: Arc<dyn Fn(Msg) + Send + Sync>,
) -> anyhow::Result<()> {
    // While the old process winds down, a wake-up for a connection queued on a shared
    // socket may go to its accept as that is cancelled: fresh accepts pick such a
    // connection up (every 100 ms, and once after it is gone).
    let until = std::time::Instant::now() + grace + std::time::Duration::from_secs(30);
    std::thread::Builder::new()
        .name("ringway-handover".into())
        .spawn(move || {
            let pid = nix::unistd::Pid::from_raw(old as i32);
            while nix::sys::signal::kill(pid, None).is_ok() && std::time::Instant::now() < until {
                tell(Msg::Nudge);
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            tell(Msg::Nudge);
        })
        .context("spawning the handover thread")?;
    Ok(())
}

/// A rebalance: each worker is told how many of its tunnels to shed (from the tunnels it
/// holds now); what was asked, as a line.
fn rebalance(inboxes: &[Arc<Inbox>], metrics: &[Arc<WorkerMetrics>], shed: Shed) -> String {
    let tunnels: Vec<u64> = metrics
        .iter()
        .map(|m| m.tunnels.load(Ordering::Relaxed))
        .collect();
    let plan = crate::live::shed_plan(&tunnels, shed.what);
    for (inbox, &count) in inboxes.iter().zip(&plan) {
        if count > 0 {
            inbox.send(Msg::Shed {
                count,
                over: shed.over,
            });
        }
    }
    format!(
        "shedding {} of {} tunnels over {} (per worker: {:?})",
        plan.iter().sum::<u64>(),
        tunnels.iter().sum::<u64>(),
        crate::config::fmt_duration(shed.over),
        plan
    )
}

/// Signals go to a thread of their own, so a second SIGTERM still lands while the workers
/// drain (the main thread is joining them): SIGHUP reloads; SIGTERM or SIGINT drains (told to
/// every worker), and again closes everything.
fn spawn_signals(
    signals: nix::sys::signal::SigSet,
    stopping: Arc<AtomicBool>,
    reloader: Arc<super::reload::Reloader>,
    tell: Arc<dyn Fn(Msg) + Send + Sync>,
    (grace, spread, drain_code): (std::time::Duration, std::time::Duration, u16),
) -> anyhow::Result<()> {
    std::thread::Builder::new()
        .name("ringway-signals".into())
        .spawn(move || {
            loop {
                match signals.wait() {
                    Ok(Signal::SIGHUP) if stopping.load(Ordering::Relaxed) => {
                        tracing::warn!("SIGHUP while stopping: not reloading")
                    }
                    Ok(Signal::SIGHUP) => match reloader.reload() {
                        Ok(done) => tracing::info!("SIGHUP: {done}"),
                        Err(e) => tracing::error!(
                            "SIGHUP: reload failed, the configuration in force stays: {e}"
                        ),
                    },
                    Ok(sig) if !stopping.load(Ordering::Relaxed) => {
                        tracing::info!(
                            "{sig}: draining: not accepting; /healthz answers 503; tunnels get a Close \
                             {drain_code} spread over drain_spread = {}; what is left at shutdown_grace \
                             = {} is closed ({sig} again closes everything now)",
                            crate::config::fmt_duration(spread),
                            crate::config::fmt_duration(grace)
                        );
                        stopping.store(true, Ordering::Relaxed);
                        tell(Msg::Drain);
                    }
                    Ok(sig) => {
                        tracing::info!("{sig} again: closing every session now");
                        tell(Msg::CloseNow);
                    }
                    Err(e) => {
                        tracing::error!("waiting for signals: {e}; stopping");
                        stopping.store(true, Ordering::Relaxed);
                        tell(Msg::CloseNow);
                        return;
                    }
                }
            }
        })
        .context("spawning the signal thread")?;
    Ok(())
}
