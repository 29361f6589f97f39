//! State shared between the main thread and the workers, read-mostly: the configuration in
//! force (an `ArcSwap`, so a reload swaps it without stopping anyone; every session keeps the
//! `Arc` it was accepted under, so no index it holds can be invalidated), and one inbox per
//! worker, through which the main thread tells it to drain, to close, or that the
//! configuration changed. The inbox is an eventfd the worker polls on its own ring: a message
//! wakes it at once, and the data path never takes the inbox's lock.

use std::collections::VecDeque;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;

use crate::config::Config;

/// What the process shares with every worker.
pub struct Live {
    config: ArcSwap<Config>,
}

impl Live {
    pub fn new(cfg: Arc<Config>) -> Arc<Live> {
        Arc::new(Live {
            config: ArcSwap::new(cfg),
        })
    }

    /// The configuration in force.
    pub fn config(&self) -> Arc<Config> {
        self.config.load_full()
    }

    /// Put `cfg` in force for what starts from now on (then tell the workers).
    pub fn swap(&self, cfg: Arc<Config>) {
        self.config.store(cfg);
    }
}

/// Why a reload was refused (the configuration in force stays).
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The file does not load (its file:line:col: field: message).
    #[error("{0}")]
    Config(#[from] crate::config::ConfigError),
    /// A new listen address cannot be listened on (a port in use).
    #[error("listening on {addr}: {source}")]
    Listen {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    /// A new listening socket cannot be kept for a binary upgrade.
    #[error("keeping {addr}: {source}")]
    Keep {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
}

/// A message from the main thread to a worker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Msg {
    /// Stop accepting; let sessions finish for up to `runtime.shutdown_grace`.
    Drain,
    /// Close every session now.
    CloseNow,
    /// `Live::config` changed: new sessions use the new one.
    Config,
    /// A new process took the listening sockets over (a binary upgrade): stop accepting
    /// without closing them for it, then drain as on `Drain`.
    Handover,
    /// A rebalance: tell `count` of this worker's tunnels to reconnect (the drain's Close, each
    /// at its time spread evenly over `over`).
    Shed {
        count: u64,
        over: std::time::Duration,
    },
    /// Tunnels handed over by the process this one took over from are waiting
    /// (`Inbox::take_adopted`): take them.
    Adopt,
    /// Re-arm every accept (sent while the process this one took the sockets from winds
    /// down): a wake-up for a queued connection may have gone to its accept as it was being
    /// cancelled (accept wake-ups are exclusive); a fresh accept takes what waits at once.
    Nudge,
}

/// One worker's inbox.
pub struct Inbox {
    event: OwnedFd,
    queue: Mutex<VecDeque<Msg>>,
    /// Listening sockets the main thread opened for this worker on a reload (taken with
    /// `Msg::Config`).
    sockets: Mutex<Vec<(std::net::SocketAddr, socket2::Socket)>>,
    /// On an upgrade that keeps tunnels: where the worker sends its tunnels (taken with
    /// `Msg::Handover`).
    handoff: Mutex<Option<std::sync::mpsc::Sender<crate::session::Departure>>>,
    /// Tunnels to take over (taken with `Msg::Adopt`).
    adopted: Mutex<Vec<crate::session::Handed>>,
}

impl Inbox {
    pub fn new() -> std::io::Result<Arc<Inbox>> {
        let event = nix::sys::eventfd::EventFd::from_value_and_flags(
            0,
            nix::sys::eventfd::EfdFlags::EFD_CLOEXEC | nix::sys::eventfd::EfdFlags::EFD_NONBLOCK,
        )
        .map_err(std::io::Error::from)?;
        Ok(Arc::new(Inbox {
            event: event.into(),
            queue: Mutex::new(VecDeque::new()),
            sockets: Mutex::new(Vec::new()),
            handoff: Mutex::new(None),
            adopted: Mutex::new(Vec::new()),
        }))
    }

    /// The fd the worker polls.
    pub fn fd(&self) -> RawFd {
        self.event.as_raw_fd()
    }

    /// Leave a message and wake the worker.
    pub fn send(&self, m: Msg) {
        self.queue
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push_back(m);
        let _ = nix::unistd::write(&self.event, &1u64.to_ne_bytes());
    }

    /// Hand listening sockets over (before `Msg::Config`).
    pub fn give_sockets(&self, mut s: Vec<(std::net::SocketAddr, socket2::Socket)>) {
        self.sockets
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .append(&mut s);
    }

    /// The sockets handed over, if any.
    pub fn take_sockets(&self) -> Vec<(std::net::SocketAddr, socket2::Socket)> {
        std::mem::take(&mut *self.sockets.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Where to send the tunnels on the coming `Msg::Handover`.
    pub fn give_handoff(&self, to: std::sync::mpsc::Sender<crate::session::Departure>) {
        *self.handoff.lock().unwrap_or_else(|e| e.into_inner()) = Some(to);
    }

    /// Where to send the tunnels, if they are to be handed over.
    pub fn take_handoff(&self) -> Option<std::sync::mpsc::Sender<crate::session::Departure>> {
        self.handoff
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
    }

    /// Tunnels to take over (before `Msg::Adopt`).
    pub fn give_adopted(&self, mut t: Vec<crate::session::Handed>) {
        self.adopted
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .append(&mut t);
    }

    /// The tunnels to take over.
    pub fn take_adopted(&self) -> Vec<crate::session::Handed> {
        std::mem::take(&mut *self.adopted.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Every message waiting, oldest first (and the wake-up consumed).
    pub fn take(&self) -> Vec<Msg> {
        let mut buf = [0u8; 8];
        let _ = nix::unistd::read(&self.event, &mut buf);
        self.queue
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inbox_keeps_order_and_wakes() {
        let i = Inbox::new().unwrap();
        assert!(i.take().is_empty());
        i.send(Msg::Drain);
        i.send(Msg::CloseNow);
        let mut fds = [nix::poll::PollFd::new(
            std::os::fd::AsFd::as_fd(&i.event),
            nix::poll::PollFlags::POLLIN,
        )];
        assert_eq!(nix::poll::poll(&mut fds, 0u16).unwrap(), 1, "readable");
        assert_eq!(i.take(), vec![Msg::Drain, Msg::CloseNow]);
        assert!(i.take().is_empty());
    }
}

/// A rebalance (`POST /rebalance`, `ringway rebalance`): how many tunnels to tell to
/// reconnect, and over how long.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Shed {
    pub what: ShedWhat,
    pub over: std::time::Duration,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ShedWhat {
    /// This fraction (0 < f ≤ 1) of the process's tunnels.
    Fraction(f64),
    /// Down to this many tunnels in the process.
    Keep(u64),
}

/// How many tunnels each worker sheds, given how many each holds: a fraction of all of them
/// (rounded once, for the process), or the excess over `Keep`; shared in proportion to what
/// each worker holds (the remainder to those that hold most).
pub fn shed_plan(tunnels: &[u64], what: ShedWhat) -> Vec<u64> {
    let total: u64 = tunnels.iter().sum();
    let shed = match what {
        ShedWhat::Fraction(f) => (((total as f64) * f.clamp(0.0, 1.0)).round() as u64).min(total),
        ShedWhat::Keep(keep) => total.saturating_sub(keep),
    };
    if shed == 0 {
        return vec![0; tunnels.len()];
    }
    let mut plan: Vec<u64> = tunnels.iter().map(|&t| shed * t / total).collect();
    let mut left = shed - plan.iter().sum::<u64>();
    let mut order: Vec<usize> = (0..tunnels.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(tunnels[i] - plan[i]));
    for i in order.into_iter().cycle().take(tunnels.len() * 2) {
        if left == 0 {
            break;
        }
        if plan[i] < tunnels[i] {
            plan[i] += 1;
            left -= 1;
        }
    }
    plan
}

#[cfg(test)]
mod shed_tests {
    use super::*;

    #[test]
    fn a_fraction_of_each_worker_or_the_excess_over_a_count_in_proportion() {
        assert_eq!(shed_plan(&[10, 30], ShedWhat::Fraction(0.5)), [5, 15]);
        // Rounded once for the process: 11 and 9 tunnels, half is 10 (not 6 + 5).
        assert_eq!(
            shed_plan(&[11, 9], ShedWhat::Fraction(0.5))
                .iter()
                .sum::<u64>(),
            10
        );
        assert_eq!(shed_plan(&[3, 0], ShedWhat::Fraction(1.0)), [3, 0]);
        assert_eq!(shed_plan(&[10, 30], ShedWhat::Keep(20)), [5, 15]);
        assert_eq!(
            shed_plan(&[10, 31], ShedWhat::Keep(20)).iter().sum::<u64>(),
            21
        );
        assert_eq!(
            shed_plan(&[1, 1, 1], ShedWhat::Keep(1)).iter().sum::<u64>(),
            2
        );
        assert_eq!(shed_plan(&[10, 30], ShedWhat::Keep(100)), [0, 0]);
        assert_eq!(shed_plan(&[0, 0], ShedWhat::Keep(0)), [0, 0]);
        for (t, k) in [([7u64, 2, 9], 5u64), ([1, 0, 0], 0), ([5, 5, 5], 14)] {
            let p = shed_plan(&t, ShedWhat::Keep(k));
            assert!(p.iter().zip(t).all(|(p, t)| *p <= t), "{p:?} of {t:?}");
            assert_eq!(
                p.iter().sum::<u64>(),
                t.iter().sum::<u64>().saturating_sub(k)
            );
        }
    }
}
