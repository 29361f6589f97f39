//! Per-client limits shared by every worker of the process: `limit_conn` (connections open at
//! once per key) and `limit_req` (nginx's leaky bucket on the request rate per key).
//!
//! A zone has a fixed memory size: its table is allocated once, for `size / ENTRY_BYTES`
//! keys, split into shards behind their own locks (two workers rarely meet on one). When a
//! zone is full, a new key is refused (the request gets the limit's status, as nginx answers
//! when its zone is exhausted); it never grows. A `limit_req` zone first drops the states of
//! keys whose bucket has drained, so a full zone of old visitors makes room by itself.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;

/// Bytes of zone counted per key (nginx: 64 per `$binary_remote_addr` state).
pub const ENTRY_BYTES: usize = 64;
const SHARDS: usize = 64;

/// A client address as a zone key (IPv4 and IPv4-mapped IPv6 are the same client).
pub fn key_of(ip: IpAddr) -> u128 {
    match ip.to_canonical() {
        IpAddr::V4(a) => u128::from(u32::from(a)) | (0xffff << 32),
        IpAddr::V6(a) => u128::from(a),
    }
}

fn shard_of(key: u128) -> usize {
    // Fibonacci hashing of both halves: addresses differ in their low bits.
    let h = ((key as u64) ^ ((key >> 64) as u64)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    (h >> 58) as usize % SHARDS
}

/// A fixed-capacity table of per-key state, split into shards behind their own locks.
struct Table<V> {
    shards: Vec<Mutex<HashMap<u128, V>>>,
    per_shard: usize,
}

impl<V> Table<V> {
    /// Room for `bytes / ENTRY_BYTES` keys (at least one per shard), allocated now.
    fn new(bytes: usize) -> Table<V> {
        let per_shard = (bytes / ENTRY_BYTES / SHARDS).max(1);
        Table {
            shards: (0..SHARDS)
                .map(|_| Mutex::new(HashMap::with_capacity(per_shard)))
                .collect(),
            per_shard,
        }
    }

    /// The shard of `key`, locked (a poisoned lock still holds consistent counts).
    fn shard(&self, key: u128) -> std::sync::MutexGuard<'_, HashMap<u128, V>> {
        self.shards[shard_of(key)]
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    fn capacity(&self) -> usize {
        self.per_shard * SHARDS
    }

    fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|e| e.into_inner()).len())
            .sum()
    }
}

/// `limit_conn_zone`: connections per key.
pub struct ConnZone(Table<u32>);

impl std::fmt::Debug for ConnZone {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ConnZone({} keys)", self.0.capacity())
    }
}

/// What taking a connection slot said.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Taken {
    Yes,
    /// The key is at its maximum.
    Over,
    /// The zone has no room for another key.
    Full,
}

impl ConnZone {
    /// A zone of `bytes` (at least one key per shard).
    pub fn new(bytes: usize) -> ConnZone {
        ConnZone(Table::new(bytes))
    }

    /// Keys the zone holds at most.
    pub fn capacity(&self) -> usize {
        self.0.capacity()
    }

    /// Count one more connection of `key` unless it has `max` already.
    pub fn take(&self, key: u128, max: u32) -> Taken {
        let per_shard = self.0.per_shard;
        let mut s = self.0.shard(key);
        let len = s.len();
        match s.get_mut(&key) {
            Some(n) if *n >= max => Taken::Over,
            Some(n) => {
                *n += 1;
                Taken::Yes
            }
            None if len >= per_shard => Taken::Full,
            None if max == 0 => Taken::Over,
            None => {
                s.insert(key, 1);
                Taken::Yes
            }
        }
    }

    /// One connection of `key` ended.
    pub fn give_back(&self, key: u128) {
        let mut s = self.0.shard(key);
        if let Some(n) = s.get_mut(&key) {
            *n -= 1;
            if *n == 0 {
                s.remove(&key);
            }
        }
    }

    /// Connections counted now for `key`.
    pub fn count(&self, key: u128) -> u32 {
        self.0.shard(key).get(&key).copied().unwrap_or(0)
    }

    /// Keys counted now.
    pub fn keys(&self) -> usize {
        self.0.len()
    }
}

/// `limit_req_zone`: nginx's leaky bucket per key; rates are in requests per 1000 s (so
/// `10r/s` is 10,000 and `30r/m` is 500).
pub struct ReqZone(Table<Bucket>);

impl std::fmt::Debug for ReqZone {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ReqZone({} keys)", self.0.capacity())
    }
}

/// nginx's leaky bucket of one key (a zone's address, or one tunnel's messages).
#[derive(Clone, Copy, Debug)]
pub struct Bucket {
    /// Requests in the bucket, in thousandths.
    excess: u64,
    last_ms: u64,
}

impl Bucket {
    /// A bucket for a key's first request (nginx: excess 0; that request passes).
    pub fn first(now_ms: u64) -> Bucket {
        Bucket {
            excess: 0,
            last_ms: now_ms,
        }
    }

    /// One more request at `now_ms` (rate in requests per 1000 s, `burst` requests of room):
    /// nginx's `excess = max(0, excess - rate * elapsed + 1)`, refused past the burst (a
    /// refused request does not fill the bucket), delayed by `excess / rate` unless `nodelay`.
    pub fn take(&mut self, now_ms: u64, rate: u64, burst: u32, nodelay: bool) -> Verdict {
        let rate = rate.max(1);
        let drained = rate.saturating_mul(now_ms.saturating_sub(self.last_ms)) / 1000;
        let excess = (self.excess + 1000).saturating_sub(drained);
        if excess > u64::from(burst) * 1000 {
            return Verdict::Refuse;
        }
        self.excess = excess;
        self.last_ms = now_ms;
        // nginx's delay: the bucket's excess leaking out at `rate` (under a millisecond: none).
        match excess * 1000 / rate {
            0 => Verdict::Pass,
            _ if nodelay => Verdict::Pass,
            ms => Verdict::Delay(ms),
        }
    }
}

/// What the leaky bucket says about one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Go now.
    Pass,
    /// Go after this many milliseconds (within `burst`, without `nodelay`).
    Delay(u64),
    /// Over the burst (or the zone is full): refuse.
    Refuse,
}

impl ReqZone {
    pub fn new(bytes: usize) -> ReqZone {
        ReqZone(Table::new(bytes))
    }

    /// A request of `key` at `now_ms` with `burst` requests of room: nginx's
    /// `excess = max(0, excess - rate * elapsed + 1)` (a new key starts at 0), refused past
    /// the burst, delayed by `excess / rate` unless `nodelay`. A refused request does not fill
    /// the bucket.
    pub fn check(&self, key: u128, now_ms: u64, rate: u64, burst: u32, nodelay: bool) -> Verdict {
        let rate = rate.max(1);
        let per_shard = self.0.per_shard;
        let mut s = self.0.shard(key);
        if !s.contains_key(&key) && s.len() >= per_shard {
            // Make room: buckets that have drained are the same as no bucket.
            s.retain(|_, b| {
                b.excess > rate.saturating_mul(now_ms.saturating_sub(b.last_ms)) / 1000
            });
            if s.len() >= per_shard {
                return Verdict::Refuse;
            }
        }
        let Some(b) = s.get_mut(&key) else {
            // A new key starts with an empty bucket (nginx: excess 0).
            s.insert(key, Bucket::first(now_ms));
            return Verdict::Pass;
        };
        b.take(now_ms, rate, burst, nodelay)
    }

    pub fn capacity(&self) -> usize {
        self.0.capacity()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_delay_under_a_millisecond_is_none() {
        // 1,000,000 a second: the second request in the same millisecond is a microsecond
        // early, which is no delay at all.
        let mut b = Bucket::first(0);
        assert_eq!(b.take(0, 1_000_000_000, 10, false), Verdict::Pass);
        // 10 a second: the second in the same millisecond waits 100 ms.
        let mut b = Bucket::first(0);
        assert_eq!(b.take(0, 10_000, 10, false), Verdict::Delay(100));
        assert_eq!(b.take(0, 10_000, 10, true), Verdict::Pass);
    }

    #[test]
    fn connections_are_counted_per_key_and_given_back() {
        let z = ConnZone::new(1 << 20);
        let k = key_of("192.0.2.7".parse().unwrap());
        assert_eq!(k, key_of("::ffff:192.0.2.7".parse().unwrap()));
        for _ in 0..3 {
            assert_eq!(z.take(k, 3), Taken::Yes);
        }
        assert_eq!(z.take(k, 3), Taken::Over);
        z.give_back(k);
        assert_eq!(z.take(k, 3), Taken::Yes);
        for _ in 0..3 {
            z.give_back(k);
        }
        assert_eq!((z.count(k), z.keys()), (0, 0), "an idle key takes no room");
    }

    #[test]
    fn a_full_zone_refuses_new_keys_and_never_grows() {
        let z = ConnZone::new(SHARDS * ENTRY_BYTES); // one key per shard
        let mut full = 0;
        for i in 0..10_000u32 {
            if z.take(u128::from(i), 10) == Taken::Full {
                full += 1;
            }
        }
        assert_eq!(z.keys(), SHARDS);
        assert_eq!(full, 10_000 - SHARDS);
    }

    #[test]
    fn leaky_bucket_as_nginx() {
        // 10r/s, burst 5, nodelay: 6 at once pass (1 + burst 5), the 7th is refused; 100 ms
        // later one more has leaked out.
        let z = ReqZone::new(1 << 20);
        let k = 1;
        let v: Vec<Verdict> = (0..7).map(|_| z.check(k, 1000, 10_000, 5, true)).collect();
        assert_eq!(v[..6], [Verdict::Pass; 6]);
        assert_eq!(v[6], Verdict::Refuse);
        assert_eq!(z.check(k, 1100, 10_000, 5, true), Verdict::Pass);
        assert_eq!(z.check(k, 1100, 10_000, 5, true), Verdict::Refuse);
        // Without nodelay the burst waits its turn: the second request 100 ms, the third 200.
        let z = ReqZone::new(1 << 20);
        assert_eq!(z.check(k, 0, 10_000, 5, false), Verdict::Pass);
        assert_eq!(z.check(k, 0, 10_000, 5, false), Verdict::Delay(100));
        assert_eq!(z.check(k, 0, 10_000, 5, false), Verdict::Delay(200));
        // Burst 0: one request per 100 ms, never delayed.
        let z = ReqZone::new(1 << 20);
        assert_eq!(z.check(k, 0, 10_000, 0, false), Verdict::Pass);
        assert_eq!(z.check(k, 50, 10_000, 0, false), Verdict::Refuse);
        assert_eq!(z.check(k, 100, 10_000, 0, false), Verdict::Pass);
    }
}
