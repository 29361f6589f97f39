//! Active health checks: one thread of the main process probes every server of every upstream
//! that has `health_check`, once per interval (not once per worker), off the data path. A
//! probe connects (with TLS when the upstream uses TLS), sends the request and reads the
//! status line; `fall` failures in a row take the server out, `rise` passes bring it back.
//! The result is an atomic in the server's shared state, which the workers read when they
//! choose. Established tunnels are never touched. Transitions are logged once each.
//!
//! The probes run on a reactor of their own — the same io_uring event loop as the workers' and
//! the admin endpoint's: a connect, the request (through the same transport as the workers'
//! upstream connections, so TLS is ringway's own records over rustls's handshake), the answer
//! into pool buffers, a deadline on the timer wheel. At most `IN_FLIGHT` at once, each under
//! the check's `timeout`, so a thousand servers, some of them black holes, cost one thread and
//! a few hundred descriptors at most.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::config::upstream::Health;
use crate::config::{Config, HealthCheck};
use crate::live::Live;
use crate::reactor::{Handler, Reactor, RingSys, Sent, Sys};
use crate::tls::{Fail, Transport};
use crate::uring::{Chunk, ConnId, Cqe, Op, Ring, RingConfig, Src, UNCAPPED};

/// Probes in flight at once (the rest wait for the next turn).
pub const IN_FLIGHT: usize = 256;
/// Bytes of an answer read before giving up on finding its status line.
const ANSWER_MAX: usize = 4096;

/// Start the checker. It runs whether or not the configuration in force has any
/// `health_check` (a reload can add some, and they must run within one interval), follows the
/// configuration in force (checks added, changed or removed by a reload) and ends when `stop`
/// is set. With nothing to check it wakes five times a second to look.
pub fn spawn(
    live: Arc<Live>,
    stop: Arc<AtomicBool>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("ringway-health".into())
        .spawn(move || {
            // The ring is made on the thread that uses it (SINGLE_ISSUER).
            let ring = match Ring::new(RingConfig {
                sq_entries: 512,
                buffers: 256,
                buf_size: 4096,
            }) {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!("health checks cannot run: setting up io_uring: {e}");
                    return;
                }
            };
            let mut r = Reactor::new(ring, IN_FLIGHT, TICK_MS, 256);
            let mut checker = Checker::default();
            if let Err(e) = checker.run(&mut r, &live, &stop) {
                tracing::error!("health checks stopped: {e}");
            }
            let fds: Vec<i32> = r
                .slots
                .keys()
                .into_iter()
                .filter_map(|k| r.slots.get_any_mut(k).map(|(_, p)| p.conn.fd()))
                .filter(|fd| *fd >= 0)
                .collect();
            // The ring cancels and drains what is in flight as it drops; then the sockets close.
            drop(r);
            for fd in fds {
                let _ = nix::unistd::close(fd);
            }
        })
}

const TICK_MS: u64 = 50;

/// One server's record between probes.
#[derive(Clone, Copy)]
struct Track {
    next: Instant,
    passes: u32,
    fails: u32,
    busy: bool,
}

#[derive(Default)]
struct Checker {
    /// The configuration the tracks are for.
    cfg: Option<Arc<Config>>,
    /// Per upstream, per server of `cfg` (empty for an upstream without checks).
    tracks: Vec<Vec<Track>>,
    /// When a probe is next due (`start_due` has nothing to do before).
    earliest: Option<Instant>,
    /// Probes whose outcome is known and whose socket has closed: recorded after the turn.
    done: Vec<(Arc<Config>, (usize, usize), Outcome)>,
}

/// One probe in flight: a reactor slot.
struct Probe {
    /// The configuration it was started under and the server in it.
    cfg: Arc<Config>,
    at: (usize, usize),
    conn: Transport,
    cancels: u8,
    /// A check without a request: connecting is the whole check.
    connect_only: bool,
    answer: Vec<u8>,
    /// When it fails for want of an answer (reactor ms), and its timer entry.
    deadline_ms: u64,
    /// Decided: the socket is being closed.
    outcome: Option<Outcome>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Outcome {
    Pending,
    Pass,
    Fail(String),
}

impl Checker {
    fn run(
        &mut self,
        r: &mut Reactor<Probe>,
        live: &Live,
        stop: &AtomicBool,
    ) -> std::io::Result<()> {
        while !stop.load(Ordering::Relaxed) {
            let cfg = live.config();
            if !self.cfg.as_ref().is_some_and(|c| Arc::ptr_eq(c, &cfg)) {
                self.follow(cfg);
            }
            self.start_due(r);
            let wait = self.next_wake().min(Duration::from_millis(200));
            if r.slots.is_empty() && self.tracks.iter().all(Vec::is_empty) {
                // Nothing to check and no probe in flight.
                r.rest(wait);
                continue;
            }
            r.turn(self, wait)?;
            for (cfg, at, o) in std::mem::take(&mut self.done) {
                self.finish(&cfg, at, o);
            }
        }
        Ok(())
    }

    /// A configuration came into force: tracks for its servers, carried over by upstream name
    /// and address from the previous one; a new server's first probe is spread over its
    /// interval, so a thousand servers are not probed in the same millisecond.
    fn follow(&mut self, cfg: Arc<Config>) {
        let now = Instant::now();
        let mut old: HashMap<(&str, SocketAddr), Track> = HashMap::new();
        if let Some(prev) = &self.cfg {
            for (u, ts) in prev.upstreams.iter().zip(&self.tracks) {
                for (p, t) in u.peers.iter().zip(ts) {
                    old.insert((u.name.as_str(), p.addr), Track { busy: false, ..*t });
                }
            }
        }
        let tracks = cfg
            .upstreams
            .iter()
            .map(|u| match &u.health_check {
                None => Vec::new(),
                Some(h) => {
                    let n = u.peers.len().max(1) as u32;
                    u.peers
                        .iter()
                        .enumerate()
                        .map(|(i, p)| {
                            old.get(&(u.name.as_str(), p.addr))
                                // A check whose interval shrank is due within the new one.
                                .map(|t| Track {
                                    next: t.next.min(now + h.interval),
                                    ..*t
                                })
                                .unwrap_or(Track {
                                    next: now + h.interval * i as u32 / n,
                                    passes: 0,
                                    fails: 0,
                                    busy: false,
                                })
                        })
                        .collect()
                }
            })
            .collect();
        // A server whose checks were removed is no longer held down by them.
        for u in cfg.upstreams.iter().filter(|u| u.health_check.is_none()) {
            for p in &u.peers {
                if p.state.health() == Health::Down {
                    p.state.set_health(Health::Up);
                    tracing::warn!(target: "health", "upstream {:?} server {} is up: its health check was removed", u.name, p.addr);
                }
            }
        }
        self.tracks = tracks;
        self.cfg = Some(cfg);
        self.earliest = Some(now);
    }

    /// Start the probes that are due.
    fn start_due(&mut self, r: &mut Reactor<Probe>) {
        let now = Instant::now();
        if self.earliest.is_none_or(|e| e > now) {
            return;
        }
        let Some(cfg) = self.cfg.clone() else { return };
        let mut earliest: Option<Instant> = None;
        let mut failed = Vec::new();
        for (ui, u) in cfg.upstreams.iter().enumerate() {
            let Some(h) = &u.health_check else { continue };
            for (pi, p) in u.peers.iter().enumerate() {
                let t = &mut self.tracks[ui][pi];
                if t.busy {
                    continue;
                }
                if t.next > now || r.slots.len() >= IN_FLIGHT {
                    earliest = Some(earliest.map_or(t.next, |e| e.min(t.next)));
                    continue;
                }
                t.busy = true;
                t.next = (t.next + h.interval).max(now);
                let target = SocketAddr::new(p.addr.ip(), h.port.unwrap_or(p.addr.port()));
                if let Err(why) = Probe::start(r, &cfg, (ui, pi), target) {
                    failed.push(((ui, pi), why));
                }
            }
        }
        self.earliest = earliest;
        for (at, why) in failed {
            self.finish(&cfg, at, Outcome::Fail(why));
        }
    }

    /// How long until a probe is due (probes in flight wake the loop themselves).
    fn next_wake(&self) -> Duration {
        let now = Instant::now();
        self.earliest.map_or(Duration::from_millis(200), |t| {
            t.saturating_duration_since(now)
        })
    }

    /// Record a probe's result on server `at` of `cfg`; log the transitions.
    fn finish(&mut self, cfg: &Arc<Config>, at: (usize, usize), o: Outcome) {
        let u = &cfg.upstreams[at.0];
        let (p, Some(h)) = (&u.peers[at.1], &u.health_check) else {
            return;
        };
        let state = &p.state;
        state.check_done(matches!(o, Outcome::Pass));
        // A probe of a configuration no longer in force counts on its servers, nothing more.
        if !self.cfg.as_ref().is_some_and(|c| Arc::ptr_eq(c, cfg)) {
            return;
        }
        let t = &mut self.tracks[at.0][at.1];
        t.busy = false;
        self.earliest = Some(self.earliest.map_or(t.next, |e| e.min(t.next)));
        match o {
            Outcome::Pass => {
                t.passes += 1;
                t.fails = 0;
                if state.health() == Health::Down && t.passes >= h.rise {
                    state.set_health(Health::Up);
                    tracing::warn!(target: "health", "upstream {:?} server {} is up: {} check(s) in a row passed", u.name, p.addr, t.passes);
                }
            }
            Outcome::Fail(why) => {
                t.fails += 1;
                t.passes = 0;
                if state.health() == Health::Up && t.fails >= h.fall {
                    state.set_health(Health::Down);
                    tracing::warn!(target: "health", "upstream {:?} server {} is down: {} check(s) in a row failed, the last: {why}", u.name, p.addr, t.fails);
                }
            }
            Outcome::Pending => {}
        }
    }
}

impl Probe {
    /// Connect to `target` for server `at` of `cfg`, the request queued behind the connect (a
    /// PROXY header first when the upstream wants one, below TLS).
    fn start(
        r: &mut Reactor<Probe>,
        cfg: &Arc<Config>,
        at: (usize, usize),
        target: SocketAddr,
    ) -> Result<(), String> {
        let u = &cfg.upstreams[at.0];
        let h = u.health_check.as_ref().ok_or("no health_check")?;
        let now = r.now_ms();
        let deadline_ms = now + h.timeout.as_millis() as u64;
        let (slot, generation) = r.slots.insert(|_, _| Probe {
            cfg: cfg.clone(),
            at,
            conn: Transport::plain(-1),
            cancels: 0,
            connect_only: h.request.is_none(),
            answer: Vec::new(),
            deadline_ms,
            outcome: None,
        });
        r.wheel.insert(slot, deadline_ms);
        let Some((_, p, mut sys)) = r.split(slot, Some(generation)) else {
            return Err("no slot".into());
        };
        let started = (|| {
            let fd = sys
                .connect(target, None, ConnId::UPSTREAM)
                .map_err(|e| format!("socket: {}", crate::sys::errno_name(e)))?;
            let tls = u
                .tls
                .as_ref()
                .map(|t| (t.config.clone(), t.name_for(target.ip())));
            // The server wants a PROXY header on every connection: a LOCAL one (a check of the
            // proxy's own, no client).
            let preface = u.proxy_protocol.then(crate::http::proxy::v2_local);
            let r = p.conn.reset_fd(&mut sys, fd, tls, preface);
            p.conn.connect_started();
            r.map_err(|e| format!("TLS: {e}"))?;
            if let Some(req) = &h.request {
                let mut v = sys.scratch();
                v.extend_from_slice(req);
                let c = sys.put(v);
                p.conn.push(&mut sys, c);
            }
            Ok(())
        })();
        if let Err(why) = started {
            p.outcome = Some(Outcome::Fail(why));
        }
        let gone = p.settle(&mut sys);
        if gone {
            let p = r.slots.remove(slot);
            r.wheel.remove(slot, deadline_ms);
            // Nothing was in flight: a socket that could not be made.
            if let Some(Outcome::Fail(why)) = p.outcome {
                return Err(why);
            }
        }
        Ok(())
    }

    /// The check this probe runs.
    fn check(&self) -> &HealthCheck {
        let u = &self.cfg.upstreams[self.at.0];
        u.health_check
            .as_ref()
            .expect("a probe is started only for an upstream with checks")
    }

    /// Decide, once.
    fn decide(&mut self, o: Outcome) {
        if self.outcome.is_none() && o != Outcome::Pending {
            self.outcome = Some(o);
        }
    }

    fn on_connect(&mut self, sys: &mut RingSys<'_>, res: i32) {
        self.conn.connect_done();
        if self.conn.retiring() {
            return;
        }
        if res < 0 {
            let why = if res == -libc::ECANCELED {
                "connect: timed out".to_string()
            } else {
                format!("connect: {}", crate::sys::errno_name(-res))
            };
            return self.decide(Outcome::Fail(why));
        }
        self.conn.mark_ready();
        if self.connect_only {
            return self.decide(Outcome::Pass);
        }
        self.conn.kick(sys, ConnId::UPSTREAM);
    }

    fn on_recv(&mut self, sys: &mut RingSys<'_>, c: Cqe) {
        self.conn.recv_ended(c.more());
        if c.res <= 0 {
            sys.ring.pool.release_of(&c);
            match -c.res {
                libc::ENOBUFS | libc::ECANCELED => {}
                0 => {
                    self.conn.mark_eof();
                    let o = judge(&self.answer, self.check(), true);
                    self.decide(o);
                }
                e => self.decide(Outcome::Fail(format!(
                    "receive: {}",
                    crate::sys::errno_name(e)
                ))),
            }
            return;
        }
        let chunk = Chunk {
            src: Src::Pool(c.buf_id().expect("recv data has a buffer")),
            off: 0,
            len: c.res as u32,
        };
        if self.outcome.is_some() {
            return sys.release(chunk);
        }
        match self.conn.received(sys, ConnId::UPSTREAM, chunk) {
            Ok(None) => {}
            Ok(Some(plain)) => {
                let room = (ANSWER_MAX + 2).saturating_sub(self.answer.len());
                let data = sys.data_of(plain);
                self.answer.extend_from_slice(&data[..data.len().min(room)]);
                sys.release(plain);
                let o = judge(&self.answer, self.check(), false);
                self.decide(o);
            }
            Err(Fail::Tls(e)) => self.decide(Outcome::Fail(format!("TLS: {e}"))),
            Err(Fail::PlainHttp) => self.decide(Outcome::Fail("TLS: plain HTTP".into())),
        }
    }

    /// After any event: send, keep the recv armed, or close once decided. True when the
    /// socket is closed (the slot may go, the outcome be recorded).
    fn settle(&mut self, sys: &mut RingSys<'_>) -> bool {
        if self.outcome.is_some() {
            self.cancels += self.conn.retire(sys, ConnId::UPSTREAM);
            return self.conn.close_when_done(sys, self.cancels.into(), false)
                || self.conn.fd() < 0;
        }
        self.conn.kick(sys, ConnId::UPSTREAM);
        let want = self.conn.ready() && !self.conn.eof();
        self.cancels += self.conn.sync_recv(sys, ConnId::UPSTREAM, want, UNCAPPED);
        false
    }
}

impl Checker {
    /// Run `f` on a live probe with a `Sys` over the ring, then settle it; a probe that is done
    /// leaves its slot and its outcome for `run` to record.
    fn with(
        &mut self,
        r: &mut Reactor<Probe>,
        slot: u32,
        generation: u32,
        f: impl FnOnce(&mut Probe, &mut RingSys<'_>),
    ) {
        let Some((_, p, mut sys)) = r.split(slot, Some(generation)) else {
            return;
        };
        f(p, &mut sys);
        if p.settle(&mut sys) {
            let p = r.slots.remove(slot);
            r.wheel.remove(slot, p.deadline_ms);
            let o = p.outcome.unwrap_or(Outcome::Fail("closed".into()));
            self.done.push((p.cfg, p.at, o));
        }
    }
}

impl Handler<Probe> for Checker {
    fn on_core(&mut self, _: &mut Reactor<Probe>, _: Cqe) {}

    fn on_slot(&mut self, r: &mut Reactor<Probe>, c: Cqe) {
        let (slot, generation) = (c.ud.slot(), c.ud.generation());
        self.with(r, slot, generation, |p, sys| match c.ud.op() {
            Some(Op::Connect) => p.on_connect(sys, c.res),
            Some(Op::Recv) => p.on_recv(sys, c),
            Some(Op::Send) => {
                let closing = p.outcome.is_some();
                if let Sent::Failed(e) = p.conn.on_sent(sys, ConnId::UPSTREAM, c.res, closing) {
                    p.decide(Outcome::Fail(format!(
                        "send: {}",
                        crate::sys::errno_name(e)
                    )));
                }
            }
            Some(Op::Cancel) => p.cancels = p.cancels.saturating_sub(1),
            _ => {}
        });
    }

    fn on_timer(&mut self, r: &mut Reactor<Probe>, slot: u32, generation: u32, due: u64) {
        // Only this probe's own deadline (the wheel keeps no generation).
        if r.slots
            .get_mut(slot, generation)
            .is_none_or(|p| p.deadline_ms != due)
        {
            return;
        }
        self.with(r, slot, generation, |p, _| {
            let why = format!(
                "no answer within {}",
                crate::config::fmt_duration(p.check().timeout)
            );
            p.decide(Outcome::Fail(why));
        });
    }
}

/// Decide on the status line of `a` once it is there (`closed`: nothing more will come).
fn judge(a: &[u8], check: &HealthCheck, closed: bool) -> Outcome {
    match crate::http::status_line(a) {
        Ok(None) if closed => Outcome::Fail("closed without a status line".into()),
        Ok(None) if a.len() > ANSWER_MAX => {
            Outcome::Fail("no status line in the first 4096 bytes".into())
        }
        Ok(None) => Outcome::Pending,
        Ok(Some(s)) if check.passes(s) => Outcome::Pass,
        Ok(Some(s)) => Outcome::Fail(format!("status {s}")),
        Err(line) => Outcome::Fail(format!("not an HTTP status line: {line:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verdict(a: &[u8], closed: bool) -> String {
        let check = HealthCheck {
            interval: Duration::from_secs(1),
            rise: 2,
            fall: 3,
            timeout: Duration::from_secs(1),
            request: Some(b"GET / HTTP/1.0\r\n\r\n".to_vec()),
            expect: vec![crate::config::upstream::Expect::Class(2)],
            port: None,
        };
        match judge(a, &check, closed) {
            Outcome::Pending => "pending".into(),
            Outcome::Pass => "pass".into(),
            Outcome::Fail(why) => why,
        }
    }

    #[test]
    fn status_lines_are_judged_and_garbage_is_bounded() {
        assert_eq!(verdict(b"HTTP/1.1 204 No Content\r\n", false), "pass");
        assert_eq!(verdict(b"HTTP/1.0 503 Busy\r\n", false), "status 503");
        assert_eq!(verdict(b"HTTP/1.1 20", false), "pending");
        assert_eq!(
            verdict(b"HTTP/1.1 20", true),
            "closed without a status line"
        );
        assert!(verdict(b"SSH-2.0-OpenSSH\r\n", false).starts_with("not an HTTP status line"));
        assert_eq!(
            verdict(&[b'x'; 5000], false),
            "no status line in the first 4096 bytes"
        );
        let long = [b'y'; 3000]
            .iter()
            .chain(b"\r\n")
            .copied()
            .collect::<Vec<u8>>();
        assert!(
            verdict(&long, false).len() < 120,
            "the log line stays short"
        );
    }
}
