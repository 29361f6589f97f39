//! Active health checks: one thread of the main process probes every server of every upstream
//! that has `health_check`, once per interval (not once per worker), off the data path. A
//! probe connects (with TLS when the upstream uses TLS), sends the request and reads the
//! status line; `fall` failures in a row take the server out, `rise` passes bring it back.
//! The result is an atomic in the server's shared state, which the workers read when they
//! choose. Established tunnels are never touched. Transitions are logged once each.
//!
//! Sockets are non-blocking and driven by one `poll(2)`, at most `IN_FLIGHT` at once, each
//! under the check's `timeout`, so a thousand servers, some of them black holes, cost one
//! thread and a few hundred descriptors at most.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::config::upstream::Health;
use crate::config::{Config, HealthCheck};
use crate::live::Live;

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
        .spawn(move || Checker::default().run(&live, &stop))
}

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
    probes: Vec<Probe>,
    /// When a probe is next due (`start_due` has nothing to do before).
    earliest: Option<Instant>,
}

/// One probe in flight.
struct Probe {
    /// The configuration it was started under and the server in it.
    cfg: Arc<Config>,
    at: (usize, usize),
    sock: std::net::TcpStream,
    tls: Option<rustls::ClientConnection>,
    connected: bool,
    /// What is left to send (plain).
    out: Vec<u8>,
    answer: Vec<u8>,
    deadline: Instant,
}

enum Outcome {
    Pending,
    Pass,
    Fail(String),
}

impl Checker {
    fn run(mut self, live: &Live, stop: &AtomicBool) {
        while !stop.load(Ordering::Relaxed) {
            let cfg = live.config();
            if !self.cfg.as_ref().is_some_and(|c| Arc::ptr_eq(c, &cfg)) {
                self.follow(cfg);
            }
            self.start_due();
            let wait = self.next_wake().min(Duration::from_millis(200));
            self.poll(wait);
        }
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
    fn start_due(&mut self) {
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
                if t.next > now || self.probes.len() >= IN_FLIGHT {
                    earliest = Some(earliest.map_or(t.next, |e| e.min(t.next)));
                    continue;
                }
                t.busy = true;
                t.next = (t.next + h.interval).max(now);
                let target = SocketAddr::new(p.addr.ip(), h.port.unwrap_or(p.addr.port()));
                match Probe::start(&cfg, (ui, pi), target) {
                    Ok(probe) => self.probes.push(probe),
                    Err(why) => failed.push(((ui, pi), why)),
                }
            }
        }
        self.earliest = earliest;
        for (at, why) in failed {
            self.finish(&cfg, at, Outcome::Fail(why));
        }
    }

    fn next_wake(&self) -> Duration {
        let now = Instant::now();
        let deadlines = self.probes.iter().map(|p| p.deadline);
        self.earliest
            .into_iter()
            .chain(deadlines)
            .min()
            .map_or(Duration::from_millis(200), |t| {
                t.saturating_duration_since(now)
            })
    }

    fn poll(&mut self, wait: Duration) {
        use nix::poll::{PollFd, PollTimeout, poll};
        let mut fds: Vec<PollFd<'_>> = self
            .probes
            .iter()
            .map(|p| PollFd::new(p.sock.as_fd(), p.interest()))
            .collect();
        let ms =
            PollTimeout::try_from(wait.as_millis().min(1000) as u32).unwrap_or(PollTimeout::ZERO);
        if fds.is_empty() {
            std::thread::sleep(wait);
        } else {
            let _ = poll(&mut fds, ms);
        }
        let ready: Vec<bool> = fds
            .iter()
            .map(|f| f.revents().is_some_and(|r| !r.is_empty()))
            .collect();
        drop(fds);
        let now = Instant::now();
        let mut outcomes: Vec<Outcome> = Vec::with_capacity(self.probes.len());
        for (p, &r) in self.probes.iter_mut().zip(&ready) {
            let o = if r { p.progress() } else { Outcome::Pending };
            outcomes.push(match o {
                Outcome::Pending if now >= p.deadline => Outcome::Fail(format!(
                    "no answer within {}",
                    crate::config::fmt_duration(p.check().timeout)
                )),
                o => o,
            });
        }
        // From the end, so each swap_remove brings in a probe already looked at.
        for i in (0..outcomes.len()).rev() {
            let o = std::mem::replace(&mut outcomes[i], Outcome::Pending);
            if matches!(o, Outcome::Pending) {
                continue;
            }
            let p = self.probes.swap_remove(i);
            self.finish(&p.cfg, p.at, o);
        }
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
    fn start(cfg: &Arc<Config>, at: (usize, usize), target: SocketAddr) -> Result<Probe, String> {
        let u = &cfg.upstreams[at.0];
        let h = u.health_check.as_ref().ok_or("no health_check")?;
        let sock =
            crate::sys::tcp_socket_nonblocking(target).map_err(|e| format!("socket: {e}"))?;
        let tls = match &u.tls {
            None => None,
            Some(t) => {
                let mut c =
                    rustls::ClientConnection::new(t.config.clone(), t.name_for(target.ip()))
                        .map_err(|e| format!("TLS: {e}"))?;
                if let Some(r) = &h.request {
                    let _ = c.writer().write_all(r);
                }
                Some(c)
            }
        };
        Ok(Probe {
            cfg: cfg.clone(),
            at,
            out: match (&tls, &h.request) {
                (None, Some(r)) => r.clone(),
                _ => Vec::new(),
            },
            sock,
            tls,
            connected: false,
            answer: Vec::new(),
            deadline: Instant::now() + h.timeout,
        })
    }

    /// The check this probe runs.
    fn check(&self) -> &HealthCheck {
        let u = &self.cfg.upstreams[self.at.0];
        u.health_check
            .as_ref()
            .expect("a probe is started only for an upstream with checks")
    }

    fn interest(&self) -> nix::poll::PollFlags {
        use nix::poll::PollFlags;
        let write = !self.connected
            || !self.out.is_empty()
            || self.tls.as_ref().is_some_and(|t| t.wants_write());
        if write {
            PollFlags::POLLOUT | PollFlags::POLLIN
        } else {
            PollFlags::POLLIN
        }
    }

    /// Move on as far as the socket allows.
    fn progress(&mut self) -> Outcome {
        let check = self.cfg.upstreams[self.at.0]
            .health_check
            .as_ref()
            .expect("a probe is started only for an upstream with checks");
        if !self.connected {
            match self.sock.take_error() {
                Ok(None) => {}
                Ok(Some(e)) | Err(e) => return Outcome::Fail(format!("connect: {e}")),
            }
            match self.sock.peer_addr() {
                Ok(_) => self.connected = true,
                Err(e) if e.kind() == std::io::ErrorKind::NotConnected => return Outcome::Pending,
                Err(e) => return Outcome::Fail(format!("connect: {e}")),
            }
            if check.request.is_none() {
                return Outcome::Pass;
            }
            if self.cfg.upstreams[self.at.0].proxy_protocol {
                // The server wants a PROXY header on every connection: a LOCAL one (a check
                // of the proxy's own, no client). 16 bytes on a fresh socket: written whole.
                let local = crate::http::proxy::v2_local();
                if let Err(e) = self.sock.write_all(&local) {
                    return Outcome::Fail(format!("send: {e}"));
                }
            }
        }
        if let Some(t) = &mut self.tls {
            loop {
                if let Err(e) = flush_tls(t, &mut self.sock) {
                    return Outcome::Fail(format!("send: {e}"));
                }
                match t.read_tls(&mut self.sock) {
                    Ok(0) => return judge(&self.answer, check, true),
                    Ok(_) => {
                        if let Err(e) = t.process_new_packets() {
                            return Outcome::Fail(format!("TLS: {e}"));
                        }
                        match read_answer(&mut t.reader(), &mut self.answer, check) {
                            Outcome::Pending => {}
                            o => return o,
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        // A handshake message may want an answer before more comes.
                        return match flush_tls(t, &mut self.sock) {
                            Ok(()) => Outcome::Pending,
                            Err(e) => Outcome::Fail(format!("send: {e}")),
                        };
                    }
                    Err(e) => return Outcome::Fail(format!("receive: {e}")),
                }
            }
        }
        while !self.out.is_empty() {
            match self.sock.write(&self.out) {
                Ok(n) => {
                    self.out.drain(..n);
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Outcome::Pending,
                Err(e) => return Outcome::Fail(format!("send: {e}")),
            }
        }
        read_answer(&mut self.sock, &mut self.answer, check)
    }
}

/// Write what TLS has to send, as far as the socket takes it.
fn flush_tls(
    t: &mut rustls::ClientConnection,
    sock: &mut std::net::TcpStream,
) -> std::io::Result<()> {
    while t.wants_write() {
        match t.write_tls(sock) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Read what `r` has into `answer` and judge it: `Pending` when nothing more can be read now
/// and the status line is not there yet.
fn read_answer(r: &mut impl Read, answer: &mut Vec<u8>, check: &HealthCheck) -> Outcome {
    let mut buf = [0u8; 1024];
    loop {
        match r.read(&mut buf) {
            Ok(0) => return judge(answer, check, true),
            Ok(n) => {
                answer.extend_from_slice(&buf[..n]);
                if let o @ (Outcome::Pass | Outcome::Fail(_)) = judge(answer, check, false) {
                    return o;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Outcome::Pending,
            Err(_) => return judge(answer, check, true),
        }
    }
}

/// Decide on the status line of `a` once it is there (`closed`: nothing more will come).
fn judge(a: &[u8], check: &HealthCheck, closed: bool) -> Outcome {
    let Some(end) = a.windows(2).position(|w| w == b"\r\n") else {
        if closed {
            return Outcome::Fail("closed without a status line".into());
        }
        if a.len() > ANSWER_MAX {
            return Outcome::Fail("no status line in the first 4096 bytes".into());
        }
        return Outcome::Pending;
    };
    let line = String::from_utf8_lossy(&a[..end.min(80)]);
    let mut parts = line.splitn(3, ' ');
    let status = match (parts.next(), parts.next()) {
        (Some(v), Some(s)) if v.starts_with("HTTP/1.") && s.len() == 3 => s.parse::<u16>().ok(),
        _ => None,
    };
    match status {
        Some(s) if check.passes(s) => Outcome::Pass,
        Some(s) => Outcome::Fail(format!("status {s}")),
        None => Outcome::Fail(format!("not an HTTP status line: {line:?}")),
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
