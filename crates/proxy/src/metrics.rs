//! Per-worker metrics: counters and histograms that one worker writes (relaxed atomics, no
//! lock, no shared cache line between workers) and the admin endpoint only reads and renders.
//! Sessions record here at a few points per request (a 101, a connect, the end of a request),
//! never per message.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::session::End;

/// Upper bounds (seconds) of the buckets of lifetimes: sessions, tunnels.
pub const LIFETIME_BOUNDS: [f64; 12] = [
    0.001, 0.005, 0.025, 0.1, 0.5, 1.0, 5.0, 30.0, 60.0, 300.0, 3600.0, 86400.0,
];

/// Upper bounds (seconds) of the buckets of waits: time to 101, upstream connect time.
pub const WAIT_BOUNDS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

fn bump(a: &AtomicU64, n: u64) {
    // One writer per worker: a load and a store, no read-modify-write needed.
    a.store(a.load(Ordering::Relaxed).wrapping_add(n), Ordering::Relaxed);
}

fn get(a: &AtomicU64) -> u64 {
    a.load(Ordering::Relaxed)
}

/// A histogram of millisecond observations over fixed bounds (in seconds).
#[derive(Debug)]
pub struct Histogram {
    pub bounds: &'static [f64; 12],
    /// Per bucket (not cumulative), +Inf last.
    buckets: [AtomicU64; 13],
    sum_ms: AtomicU64,
}

impl Histogram {
    pub const fn new(bounds: &'static [f64; 12]) -> Histogram {
        Histogram {
            bounds,
            buckets: [const { AtomicU64::new(0) }; 13],
            sum_ms: AtomicU64::new(0),
        }
    }

    pub fn observe_ms(&self, ms: u64) {
        let secs = ms as f64 / 1000.0;
        let i = self
            .bounds
            .iter()
            .position(|&b| secs <= b)
            .unwrap_or(self.bounds.len());
        bump(&self.buckets[i], 1);
        bump(&self.sum_ms, ms);
    }

    /// `(upper bound, count)` per bucket (not cumulative), +Inf last; the sum in seconds; the
    /// count.
    pub fn snapshot(&self) -> (Vec<(f64, u64)>, f64, u64) {
        let mut out = Vec::with_capacity(13);
        let mut total = 0;
        for (i, b) in self.buckets.iter().enumerate() {
            total += get(b);
            out.push((self.bounds.get(i).copied().unwrap_or(f64::INFINITY), get(b)));
        }
        (out, get(&self.sum_ms) as f64 / 1000.0, total)
    }
}

/// What one worker publishes.
#[derive(Debug)]
pub struct WorkerMetrics {
    /// Client connections accepted.
    pub accepted: AtomicU64,
    /// Client connections open now.
    pub active: AtomicU64,
    /// Client connections refused over max_connections.
    pub rejected: AtomicU64,
    /// Completions for freed slots (a bug: should stay 0).
    pub stale_cqes: AtomicU64,
    /// WebSocket (upgraded) tunnels open now.
    pub tunnels: AtomicU64,
    /// Bytes from clients and from upstreams, counted when each request ends.
    pub bytes_from_client: AtomicU64,
    pub bytes_from_upstream: AtomicU64,
    /// Bytes of tunnels that went by splice(2), as they go.
    pub bytes_spliced: AtomicU64,
    /// Client WebSocket frames a `message_rate` delayed.
    pub messages_delayed: AtomicU64,
    /// Provided buffers of the worker's pool, and how many are held now (set once a tick).
    pub pool_buffers: AtomicU64,
    pub pool_in_use: AtomicU64,
    /// Sessions ended, per kind of end (`End::index`).
    ended: [AtomicU64; End::KINDS],
    /// How long client connections lasted.
    pub session_duration: Histogram,
    /// From an upgrade request's first byte to its 101 going to the client.
    pub handshake: Histogram,
    /// Upstream connects, from the attempt to the connection.
    pub connect: Histogram,
    /// Tunnels, from the upgrade request to the session's end.
    pub tunnel_lifetime: Histogram,
    /// HTTP/2 toward clients: its connections, their streams, the inner sessions carrying them.
    pub h2: Http2Metrics,
}

/// HTTP/2 connections and what their peers and this side did on them.
#[derive(Debug, Default)]
pub struct Http2Metrics {
    /// Client connections that spoke HTTP/2.
    pub connections: AtomicU64,
    /// Of them, open now.
    pub active: AtomicU64,
    /// Streams taken (requests and extended CONNECTs handed on).
    pub streams: AtomicU64,
    /// Inner sessions (one per stream in flight, and idle ones kept for the next) open now.
    pub stream_sessions: AtomicU64,
    /// RST_STREAM frames sent and received, by error code.
    pub resets_sent: [AtomicU64; 14],
    pub resets_received: [AtomicU64; 14],
    /// GOAWAY frames sent, by error code.
    pub goaways: [AtomicU64; 14],
}

impl Http2Metrics {
    /// `n` RST_STREAM frames with `code`, sent by this side or received.
    pub fn resets(&self, sent: bool, code: crate::h2::Code, n: u32) {
        let a = if sent {
            &self.resets_sent
        } else {
            &self.resets_received
        };
        bump(&a[code as usize], u64::from(n));
    }

    pub fn goaway(&self, code: crate::h2::Code) {
        bump(&self.goaways[code as usize], 1);
    }

    pub fn streams(&self, n: u32) {
        bump(&self.streams, u64::from(n));
    }

    pub fn opened(&self) {
        bump(&self.connections, 1);
        bump(&self.active, 1);
    }

    pub fn closed(&self) {
        self.active
            .store(get(&self.active).saturating_sub(1), Ordering::Relaxed);
    }
}

impl Default for WorkerMetrics {
    fn default() -> WorkerMetrics {
        WorkerMetrics {
            accepted: AtomicU64::new(0),
            active: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            stale_cqes: AtomicU64::new(0),
            tunnels: AtomicU64::new(0),
            bytes_from_client: AtomicU64::new(0),
            bytes_from_upstream: AtomicU64::new(0),
            bytes_spliced: AtomicU64::new(0),
            messages_delayed: AtomicU64::new(0),
            pool_buffers: AtomicU64::new(0),
            pool_in_use: AtomicU64::new(0),
            ended: [const { AtomicU64::new(0) }; End::KINDS],
            session_duration: Histogram::new(&LIFETIME_BOUNDS),
            handshake: Histogram::new(&WAIT_BOUNDS),
            connect: Histogram::new(&WAIT_BOUNDS),
            tunnel_lifetime: Histogram::new(&LIFETIME_BOUNDS),
            h2: Http2Metrics::default(),
        }
    }
}

impl WorkerMetrics {
    /// A client connection's session ended after `duration_ms`.
    pub fn session_ended(&self, end: End, duration_ms: u64) {
        self.count_end(end);
        self.session_duration.observe_ms(duration_ms);
    }

    /// A session ended (a client connection's, or an HTTP/2 stream's inner session).
    pub fn count_end(&self, end: End) {
        bump(&self.ended[end.index()], 1);
    }

    /// Sessions ended with `end`'s kind.
    pub fn ended(&self, kind: usize) -> u64 {
        get(&self.ended[kind])
    }

    /// A request ended having carried these bytes.
    pub fn request_done(&self, from_client: u64, from_upstream: u64) {
        bump(&self.bytes_from_client, from_client);
        bump(&self.bytes_from_upstream, from_upstream);
    }

    /// A `message_rate` delayed a client's frame.
    pub fn message_delayed(&self) {
        bump(&self.messages_delayed, 1);
    }

    /// `n` bytes of a tunnel went by splice(2).
    pub fn spliced(&self, n: u32) {
        bump(&self.bytes_spliced, u64::from(n));
    }

    /// A 101 went to the client `ms` after its request began.
    pub fn tunnel_opened(&self, ms: u64) {
        self.handshake.observe_ms(ms);
        bump(&self.tunnels, 1);
    }

    /// A tunnel ended `ms` after its request began.
    pub fn tunnel_closed(&self, ms: u64) {
        self.tunnel_lifetime.observe_ms(ms);
        self.tunnels
            .store(get(&self.tunnels).saturating_sub(1), Ordering::Relaxed);
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
        let (b, sum, count) = m.session_duration.snapshot();
        assert_eq!(count, 3);
        assert_eq!(b[1], (0.005, 1), "3 ms falls in the 5 ms bucket");
        assert_eq!(b[10].1, 0, "nothing between 5 min and an hour");
        assert_eq!(b[11], (86400.0, 1), "2 h falls in the 1 day bucket");
        assert_eq!(b[12], (f64::INFINITY, 1), "longer than a day: +Inf");
        assert!((sum - 407_200.003).abs() < 1e-6);
    }

    #[test]
    fn tunnels_open_and_close() {
        let m = WorkerMetrics::default();
        m.tunnel_opened(2);
        m.tunnel_opened(30);
        m.tunnel_closed(60_000);
        assert_eq!(get(&m.tunnels), 1);
        assert_eq!(m.handshake.snapshot().2, 2);
        assert_eq!(m.tunnel_lifetime.snapshot().2, 1);
    }
}
