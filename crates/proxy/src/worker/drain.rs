//! The end of a worker's tunnels on its terms: a drain (listeners left, every session told,
//! tunnels told to reconnect spread over `drain_spread`) and a rebalance's shed (some tunnels
//! told to reconnect, spread over its window), through one queue of farewells.

use std::time::{Duration, Instant};

use super::{Core, Slot};
use crate::reactor::Reactor;
use crate::session::{Role, Stage};
use crate::uring::{ConnId, Op, SLOT_CORE};

/// A tunnel to be told to reconnect at its time in a drain's spread (or a rebalance's):
/// its slot, while it still has this generation.
#[derive(Clone, Copy, Debug)]
pub(super) struct Farewell {
    slot: u32,
    generation: u32,
    at: Instant,
    /// A rebalance's (`end=shed`), not a drain's.
    shed: bool,
}

/// `tunnels` told one by one over `over` from `now`: the window cut in n equal parts, tunnel i
/// told in the middle of part i, so reconnects arrive evenly.
fn spread_over(
    tunnels: Vec<(u32, u32)>,
    now: Instant,
    over: Duration,
    shed: bool,
) -> impl Iterator<Item = Farewell> {
    let n = tunnels.len().max(1) as u32;
    tunnels
        .into_iter()
        .enumerate()
        .map(move |(i, (slot, generation))| Farewell {
            slot,
            generation,
            at: now + over * (2 * i as u32 + 1) / (2 * n),
            shed,
        })
}

impl Core {
    /// Stop accepting and tell every session. `shutdown(SHUT_RD)` stops each listener at once:
    /// it leaves its SO_REUSEPORT group (new connections go to the other processes on the
    /// port; with `net.ipv4.tcp_migrate_req` so do the queued ones) and its multishot accept
    /// ends with EINVAL. Closing the fd alone would not do either: the pending accept holds a
    /// reference to the socket. On a handover (`hand_over`), and for sockets systemd holds,
    /// the socket must live on for the other holder: the accept is cancelled instead and the
    /// descriptor closed once its last completion is in.
    ///
    /// With `tunnels_to` (an upgrade that keeps tunnels), the tunnels that can go to the new
    /// process are handed over instead (`handoff.rs`); only the rest get the drain's Close.
    pub(super) fn begin_drain(
        &mut self,
        r: &mut Reactor<Slot>,
        hand_over: bool,
        tunnels_to: Option<std::sync::mpsc::Sender<crate::session::Departure>>,
    ) {
        self.drain_began = Some(Instant::now());
        let keep_open = hand_over || self.spec.activated;
        let mut queued = Vec::new();
        for (i, slot) in self.listeners.iter_mut().enumerate() {
            let Some(l) = slot else { continue };
            if keep_open && self.accept_paused {
                // No accept in flight (over max_sessions): the descriptor closes now.
                *slot = None;
            } else if keep_open {
                l.leaving = true;
                let target = crate::uring::UserData::new(i as u32, 0, Op::Accept, ConnId::CLIENT);
                let ud = crate::uring::UserData::new(SLOT_CORE, 0, Op::Cancel, ConnId::CLIENT);
                r.ring.cancel_op(target, ud);
            } else {
                // What already waits in the accept queue would be reset by the shutdown: it
                // is taken first (the socket is this worker's alone; non-blocking from now on,
                // so the sweep stops at an empty queue), then served like any connection
                // accepted during a drain. At most a backlog's worth: connections arriving
                // as fast as they are taken do not hold the sweep (or `queued`) without end.
                let _ = l.sock.set_nonblocking(true);
                let listen = l.listen;
                for _ in 0..self.spec.backlog.max(1) {
                    let Ok(fd) = nix::sys::socket::accept4(
                        &l.sock,
                        nix::sys::socket::SockFlag::SOCK_CLOEXEC,
                    ) else {
                        break;
                    };
                    queued.push((std::os::fd::IntoRawFd::into_raw_fd(fd), listen));
                }
                let _ = l.sock.shutdown(std::net::Shutdown::Read);
                *slot = None;
            }
        }
        for (fd, listen) in queued {
            self.serve(r, fd, listen);
        }
        let now = Instant::now();
        let mut tunnels = Vec::new();
        // HTTP/2 connections are not told to go (no GOAWAY) before the hand-over decides.
        let mut conns = Vec::new();
        for k in r.slots.keys() {
            if tunnels_to.is_some()
                && let Some((g, e)) = r.slots.get_any_mut(k)
                && e.session.role() == Role::Http2
            {
                conns.push((k, g));
                continue;
            }
            self.with_session(r, k, |s, io, env| s.drain(io, env));
            if let Some((g, e)) = r.slots.get_any_mut(k)
                && e.session.stage() == Stage::Tunnel
            {
                tunnels.push((k, g));
            }
        }
        if let Some(to) = tunnels_to {
            tunnels = self.hand_off(r, to, tunnels, conns);
        }
        // The spread cut in n equal slots, tunnel i told in the middle of slot i: reconnects
        // arrive evenly over it. (Whatever a rebalance had queued is part of it now.)
        let spread = self.cfg.runtime.drain_spread;
        self.drain_queue = spread_over(tunnels, now, spread, false).collect();
    }

    /// A rebalance: `count` of this worker's tunnels (the first found) are told to reconnect,
    /// spread evenly over `over` as a drain spreads its Close frames; with those already
    /// waiting from an earlier rebalance, in time order.
    pub(super) fn shed(&mut self, r: &mut Reactor<Slot>, count: u64, over: Duration) {
        let now = Instant::now();
        let waiting: std::collections::HashSet<u32> =
            self.drain_queue.iter().map(|f| f.slot).collect();
        let mut tunnels = Vec::new();
        for k in r.slots.keys() {
            if tunnels.len() as u64 >= count {
                break;
            }
            if let Some((g, e)) = r.slots.get_any_mut(k)
                && e.session.stage() == Stage::Tunnel
                && !waiting.contains(&k)
            {
                tunnels.push((k, g));
            }
        }
        let mut all: Vec<Farewell> = self.drain_queue.drain(..).collect();
        all.extend(spread_over(tunnels, now, over, true));
        all.sort_by_key(|f| f.at);
        self.drain_queue = all.into();
    }

    /// Send the Close of every tunnel whose time in the drain spread (or a rebalance's) has
    /// come.
    pub(super) fn drain_due(&mut self, r: &mut Reactor<Slot>) {
        // Every turn comes here: the clock is read only while tunnels wait for their time.
        if self.drain_queue.is_empty() {
            return;
        }
        let now = Instant::now();
        while let Some(&f) = self.drain_queue.front() {
            if f.at > now {
                break;
            }
            self.drain_queue.pop_front();
            let g = Some(f.generation);
            if f.shed {
                self.with_session_of(r, f.slot, g, |s, io, env| s.shed(io, env));
            } else {
                self.with_session_of(r, f.slot, g, |s, io, env| s.drain_tunnel(io, env));
            }
        }
    }
}
