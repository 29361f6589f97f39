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
    /// Tunnels handed to the process that took over in an upgrade, and taken over from the
    /// process this one took over from.
    pub tunnels_handed_over: AtomicU64,
    pub tunnels_taken_over: AtomicU64,
    /// Provided buffers of the worker's pool, how many are held now, and how many are in
    /// circulation (resident; set once a tick).
    pub pool_buffers: AtomicU64,
    pub pool_in_use: AtomicU64,
    pub pool_circulating: AtomicU64,
    /// Recvs that found no buffer in the ring and waited for one (set once a tick).
    pub pool_waits: AtomicU64,
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

    /// A connection came from the process this one took over from.
    pub fn taken(&self) {
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
            tunnels_handed_over: AtomicU64::new(0),
            tunnels_taken_over: AtomicU64::new(0),
            pool_buffers: AtomicU64::new(0),
            pool_in_use: AtomicU64::new(0),
            pool_circulating: AtomicU64::new(0),
            pool_waits: AtomicU64::new(0),
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

    /// A tunnel went to the process that took over (an upgrade that keeps tunnels).
    pub fn tunnel_left(&self) {
        self.tunnels
            .store(get(&self.tunnels).saturating_sub(1), Ordering::Relaxed);
        bump(&self.tunnels_handed_over, 1);
    }

    /// A tunnel came from the process this one took over from.
    pub fn tunnel_taken(&self) {
        bump(&self.tunnels, 1);
        bump(&self.tunnels_taken_over, 1);
    }

    /// A tunnel ended `ms` after its request began.
    pub fn tunnel_closed(&self, ms: u64) {
        self.tunnel_lifetime.observe_ms(ms);
        self.tunnels
            .store(get(&self.tunnels).saturating_sub(1), Ordering::Relaxed);
    }
}

/// Upper bounds (bytes) of the buckets of WebSocket message sizes (+Inf after the last).
pub const MESSAGE_BOUNDS: [u64; 10] = [
    64,
    256,
    1024,
    4096,
    16384,
    65536,
    262_144,
    1 << 20,
    4 << 20,
    16 << 20,
];

/// The bucket of a message of `size` bytes: bounds grow fourfold from 64 (a `leading_zeros`,
/// no search: this runs once per message).
#[inline(always)]
pub fn message_bucket(size: u64) -> usize {
    if size <= 64 {
        return 0;
    }
    // ceil(log2(size)) is 7 for 65..=128, 8 for 129..=256, ...
    let bits = 64 - (size - 1).leading_zeros() as usize;
    ((bits - 5) / 2).min(MESSAGE_BOUNDS.len())
}

/// Close codes counted one by one (1000..=1015), then 3000..=3999, 4000..=4999, and any other
/// (not a valid code on the wire).
pub const CLOSE_SLOTS: usize = 19;

/// The slot of Close code `code` (1005: the Close had no code, RFC 6455 7.1.5).
pub fn close_slot(code: u16) -> usize {
    match code {
        1000..=1015 => usize::from(code - 1000),
        3000..=3999 => 16,
        4000..=4999 => 17,
        _ => 18,
    }
}

/// The label of close slot `i`.
pub fn close_slot_name(i: usize) -> String {
    match i {
        0..=15 => (1000 + i).to_string(),
        16 => "3xxx".into(),
        17 => "4xxx".into(),
        _ => "invalid".into(),
    }
}

/// Which Close frames a [`MessageRow`] counts: received from the client, from the upstream;
/// sent by the proxy itself (its drain, a heartbeat's or a policy's Close) to the client, to
/// the upstream.
pub const CLOSE_WAYS: [(&str, &str); 4] = [
    ("client", "received"),
    ("upstream", "received"),
    ("client", "sent"),
    ("upstream", "sent"),
];

/// What one worker saw of the WebSocket messages through one location's tunnels. Written by
/// that worker alone, per message, with a relaxed load and store (no read-modify-write, no
/// line shared with another worker: a row is a cache line aligned allocation of its own).
/// Arrays of two are indexed by the side a message came from (0: the client, 1: the
/// upstream).
#[repr(align(64))]
#[derive(Debug, Default)]
pub struct MessageRow {
    /// Payload bytes of data frames.
    pub bytes: [AtomicU64; 2],
    /// Messages per size bucket (`MESSAGE_BOUNDS`, +Inf last), not cumulative: their sum is
    /// the messages (one counter less to write per message).
    pub sizes: [[AtomicU64; MESSAGE_BOUNDS.len() + 1]; 2],
    /// Close frames per `CLOSE_WAYS` and code slot.
    pub closes: [[AtomicU64; CLOSE_SLOTS]; 4],
    /// Tunnels ended, per kind of end.
    pub ended: [AtomicU64; End::KINDS],
}

impl MessageRow {
    /// A data frame with `len` payload bytes came from side `i`.
    #[inline(always)]
    pub fn frame(&self, i: usize, len: u64) {
        bump(&self.bytes[i], len);
    }

    /// A message of `size` payload bytes (its fragments summed) came from side `i`.
    #[inline(always)]
    pub fn message(&self, i: usize, size: u64) {
        bump(&self.sizes[i][message_bucket(size)], 1);
    }

    /// A Close frame went `way` (`CLOSE_WAYS`) with `code`.
    pub fn close(&self, way: usize, code: u16) {
        bump(&self.closes[way][close_slot(code)], 1);
    }

    /// A tunnel ended with `end`.
    pub fn ended(&self, end: End) {
        bump(&self.ended[end.index()], 1);
    }

    /// Sums of rows: one location's across workers.
    pub fn sum<'a>(rows: impl Iterator<Item = &'a MessageRow>) -> MessageTotals {
        let mut t = MessageTotals::default();
        for r in rows {
            for i in 0..2 {
                t.bytes[i] += get(&r.bytes[i]);
                for (b, a) in r.sizes[i].iter().enumerate() {
                    t.sizes[i][b] += get(a);
                    t.messages[i] += get(a);
                }
            }
            for (w, way) in r.closes.iter().enumerate() {
                for (c, a) in way.iter().enumerate() {
                    t.closes[w][c] += get(a);
                }
            }
            for (k, a) in r.ended.iter().enumerate() {
                t.ended[k] += get(a);
            }
        }
        t
    }
}

/// A location's [`MessageRow`]s summed (plain numbers, for rendering).
#[derive(Debug, Default, PartialEq)]
pub struct MessageTotals {
    pub messages: [u64; 2],
    pub bytes: [u64; 2],
    pub sizes: [[u64; MESSAGE_BOUNDS.len() + 1]; 2],
    pub closes: [[u64; CLOSE_SLOTS]; 4],
    pub ended: [u64; End::KINDS],
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_sizes_find_their_buckets() {
        for (size, want) in [
            (0, 0),
            (64, 0),
            (65, 1),
            (256, 1),
            (257, 2),
            (1024, 2),
            (4096, 3),
            (4097, 4),
            (16 << 20, 9),
            ((16 << 20) + 1, 10),
            (u64::MAX, 10),
        ] {
            assert_eq!(message_bucket(size), want, "{size} bytes");
        }
        // Each bucket's bound is the largest size it takes.
        for (b, bound) in MESSAGE_BOUNDS.iter().enumerate() {
            assert_eq!(message_bucket(*bound), b);
            assert_eq!(message_bucket(bound + 1), b + 1);
        }
    }

    #[test]
    fn close_codes_find_their_slots() {
        assert_eq!(close_slot_name(close_slot(1000)), "1000");
        assert_eq!(close_slot_name(close_slot(1015)), "1015");
        assert_eq!(close_slot_name(close_slot(4001)), "4xxx");
        assert_eq!(close_slot_name(close_slot(3999)), "3xxx");
        assert_eq!(close_slot_name(close_slot(999)), "invalid");
        assert_eq!(close_slot_name(close_slot(2000)), "invalid");
        assert!((0..CLOSE_SLOTS).all(|i| i == close_slot(1000 + i as u16) || i >= 16));
    }

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
