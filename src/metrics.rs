//! Per-worker metrics: counters and a histogram that one worker writes (relaxed atomics, no
//! lock, no shared cache line between workers) and the admin endpoint only reads and renders.
//! Sessions record here once, at the worker's end-of-session point.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::session::End;

/// Upper bounds (seconds) of the session-duration histogram buckets; the last is +Inf.
pub const DURATION_BOUNDS: [f64; 12] = [
    0.001, 0.005, 0.025, 0.1, 0.5, 1.0, 5.0, 30.0, 60.0, 300.0, 3600.0, 86400.0,
];

/// What one worker publishes.
#[derive(Debug, Default)]
pub struct WorkerMetrics {
    /// Client connections accepted.
    pub accepted: AtomicU64,
    /// Client connections open now.
    pub active: AtomicU64,
    /// Client connections refused over max_connections.
    pub rejected: AtomicU64,
    /// Completions for freed slots (a bug: should stay 0).
    pub stale_cqes: AtomicU64,
    /// Sessions ended, per kind of end (`End::index`).
    ended: [AtomicU64; End::KINDS],
    /// Session durations: per bucket of `DURATION_BOUNDS` (+Inf last), and their sum in ms.
    duration: [AtomicU64; DURATION_BOUNDS.len() + 1],
    duration_sum_ms: AtomicU64,
}

fn bump(a: &AtomicU64, n: u64) {
    // One writer per worker: a load and a store, no read-modify-write needed.
    a.store(a.load(Ordering::Relaxed).wrapping_add(n), Ordering::Relaxed);
}

impl WorkerMetrics {
    /// A session ended after `duration_ms`.
    pub fn session_ended(&self, end: End, duration_ms: u64) {
        bump(&self.ended[end.index()], 1);
        let secs = duration_ms as f64 / 1000.0;
        let bucket = DURATION_BOUNDS
            .iter()
            .position(|&b| secs <= b)
            .unwrap_or(DURATION_BOUNDS.len());
        bump(&self.duration[bucket], 1);
        bump(&self.duration_sum_ms, duration_ms);
    }

    /// Sessions ended with `end`'s kind.
    pub fn ended(&self, kind: usize) -> u64 {
        self.ended[kind].load(Ordering::Relaxed)
    }

    /// Session-duration buckets (not cumulative; +Inf last) and the sum in seconds.
    pub fn durations(&self) -> ([u64; DURATION_BOUNDS.len() + 1], f64) {
        let mut b = [0; DURATION_BOUNDS.len() + 1];
        for (o, a) in b.iter_mut().zip(&self.duration) {
            *o = a.load(Ordering::Relaxed);
        }
        (
            b,
            self.duration_sum_ms.load(Ordering::Relaxed) as f64 / 1000.0,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ends_and_durations_are_counted() {
        let m = WorkerMetrics::default();
        m.session_ended(End::Done, 3);
        m.session_ended(End::ClientError(104), 7_200_000);
        m.session_ended(End::ClientError(32), 400_000_000);
        assert_eq!(m.ended(End::Done.index()), 1);
        assert_eq!(m.ended(End::ClientError(0).index()), 2);
        let (b, sum) = m.durations();
        assert_eq!(b[1], 1, "3 ms falls in the 5 ms bucket");
        assert_eq!(
            b[DURATION_BOUNDS.len() - 1],
            1,
            "2 h falls in the 1 day bucket"
        );
        assert_eq!(b[DURATION_BOUNDS.len()], 1, "longer than a day: +Inf");
        assert!((sum - 407_200.003).abs() < 1e-6);
    }
}
