//! The state every worker shares about each server: connections open, passive failures (on
//! a clock every thread shares), health.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, Ordering};

use super::super::*;

/// Milliseconds on a clock every thread of the process shares (for passive failures, which
/// every worker reads and writes).
pub fn clock_ms() -> u64 {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    START
        .get_or_init(std::time::Instant::now)
        .elapsed()
        .as_millis() as u64
}

/// A server's shared state: relaxed atomics, written by the workers (connections, passive
/// failures) and the health checker (health), read by everyone choosing and reporting. Runtime
/// state: it takes no part in comparing configurations, and a clone shares it.
#[derive(Clone, Default)]
pub struct PeerState(Arc<Shared>);

#[derive(Default)]
struct Shared {
    /// Connections open to the server now.
    active: AtomicU32,
    /// Failures since the last success (nginx's `fails`).
    fails: AtomicU32,
    /// `clock_ms` (+1, so 0 is "never") of the last failure or of the last try after
    /// `fail_timeout` (nginx's `checked`).
    checked: AtomicU64,
    /// `Health`, as its `u8`.
    health: AtomicU8,
    /// Connections attempted, failures counted, health checks passed and failed.
    requests: AtomicU64,
    failures: AtomicU64,
    checks_ok: AtomicU64,
    checks_failed: AtomicU64,
}

/// What the active health checks say of a server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Health {
    /// No active health check, or it passes.
    Up = 0,
    /// `fall` checks in a row failed (until `rise` pass).
    Down = 1,
}

/// What a server is, for `/status` and `/metrics`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PeerStatus {
    Up,
    /// Marked `down`, or its health check fails.
    Down,
    /// Taken out by passive failures for `fail_timeout`.
    Failed,
    /// A backup, up, waiting for every primary to fail.
    Backup,
}

impl PeerStatus {
    pub fn name(self) -> &'static str {
        match self {
            PeerStatus::Up => "up",
            PeerStatus::Down => "down",
            PeerStatus::Failed => "failed",
            PeerStatus::Backup => "backup",
        }
    }
}

fn load(a: &AtomicU64) -> u64 {
    a.load(Ordering::Relaxed)
}

impl PeerState {
    pub fn active(&self) -> u32 {
        self.0.active.load(Ordering::Relaxed)
    }

    pub fn add(&self) {
        self.0.active.fetch_add(1, Ordering::Relaxed);
        self.0.requests.fetch_add(1, Ordering::Relaxed);
    }

    pub fn sub(&self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }

    pub fn fails(&self) -> u32 {
        self.0.fails.load(Ordering::Relaxed)
    }

    pub fn health(&self) -> Health {
        match self.0.health.load(Ordering::Relaxed) {
            0 => Health::Up,
            _ => Health::Down,
        }
    }

    pub fn set_health(&self, h: Health) {
        self.0.health.store(h as u8, Ordering::Relaxed);
    }

    /// Connections attempted, failures, health checks passed, health checks failed.
    pub fn counts(&self) -> [u64; 4] {
        let s = &self.0;
        [
            load(&s.requests),
            load(&s.failures),
            load(&s.checks_ok),
            load(&s.checks_failed),
        ]
    }

    pub fn check_done(&self, ok: bool) {
        let c = if ok {
            &self.0.checks_ok
        } else {
            &self.0.checks_failed
        };
        c.fetch_add(1, Ordering::Relaxed);
    }
}

impl PartialEq for PeerState {
    fn eq(&self, _: &PeerState) -> bool {
        true
    }
}

impl fmt::Debug for PeerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.active())
    }
}

impl Peer {
    fn fail_ms(&self) -> u64 {
        self.fail_timeout.as_millis() as u64
    }

    /// Taken out by passive failures at `now` (nginx: `fails >= max_fails` and the last
    /// failure or try less than `fail_timeout` ago).
    pub fn failed(&self, now: u64) -> bool {
        self.max_fails > 0
            && self.state.fails() >= self.max_fails
            && now < self.state.0.checked.load(Ordering::Relaxed) + self.fail_ms()
    }

    /// Whether a new connection may go to it at `now`.
    pub fn usable(&self, now: u64) -> bool {
        !self.down
            && self.state.health() == Health::Up
            && !self.failed(now)
            && (self.max_conns == 0 || self.state.active() < self.max_conns)
    }

    /// It was picked at `now`: when it is out of failures' reach again, this is the one try
    /// per `fail_timeout` that says whether it is back (nginx sets `checked`).
    pub fn picked(&self, now: u64) {
        if self.max_fails > 0 && self.state.fails() >= self.max_fails {
            self.state.0.checked.store(now + 1, Ordering::Relaxed);
        }
    }

    /// A failure at `now`; true when it took the server out (the moment to log it).
    pub fn failure(&self, now: u64) -> bool {
        let s = &self.state.0;
        s.failures.fetch_add(1, Ordering::Relaxed);
        s.checked.store(now + 1, Ordering::Relaxed);
        let fails = s.fails.fetch_add(1, Ordering::Relaxed) + 1;
        self.max_fails > 0 && fails == self.max_fails
    }

    /// A success: its failures are forgotten; true when it had been taken out.
    pub fn success(&self) -> bool {
        let s = &self.state.0;
        if s.fails.load(Ordering::Relaxed) == 0 {
            return false;
        }
        let was = s.fails.swap(0, Ordering::Relaxed);
        self.max_fails > 0 && was >= self.max_fails
    }

    pub fn status(&self, now: u64) -> PeerStatus {
        if self.down || self.state.health() != Health::Up {
            PeerStatus::Down
        } else if self.failed(now) {
            PeerStatus::Failed
        } else if self.backup {
            PeerStatus::Backup
        } else {
            PeerStatus::Up
        }
    }
}
