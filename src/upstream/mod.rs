//! Picking a backend: nginx's smooth weighted round robin over the primary servers, the backup
//! servers only when every primary has been tried for this request.

use std::sync::Arc;

use crate::config::{Config, Upstream};

/// A worker's balancers, one per upstream, for each configuration its sessions use: a session
/// accepted under an older configuration (before a reload) picks among that configuration's
/// servers, with that configuration's balancer state, so no index can point past a list that
/// a reload shortened.
#[derive(Debug)]
pub struct Balancers {
    sets: Vec<(Arc<Config>, Vec<RoundRobin>)>,
}

impl Balancers {
    pub fn new(cfg: &Arc<Config>) -> Balancers {
        let mut b = Balancers { sets: Vec::new() };
        b.of(cfg);
        b
    }

    /// The balancers for `cfg` (made on first use).
    pub fn of(&mut self, cfg: &Arc<Config>) -> &mut [RoundRobin] {
        let i = match self.sets.iter().position(|(c, _)| Arc::ptr_eq(c, cfg)) {
            Some(i) => i,
            None => {
                let rr = cfg.upstreams.iter().map(RoundRobin::new).collect();
                self.sets.push((cfg.clone(), rr));
                self.sets.len() - 1
            }
        };
        &mut self.sets[i].1
    }

    /// Forget the balancers of configurations that no session holds any more (the newest is
    /// always kept).
    pub fn prune(&mut self) {
        let newest = self.sets.len().saturating_sub(1);
        let mut i = 0;
        self.sets.retain(|(c, _)| {
            i += 1;
            i - 1 == newest || Arc::strong_count(c) > 1
        });
    }
}

/// Per-worker balancer state for one upstream (nginx keeps it per worker too).
#[derive(Clone, Debug)]
pub struct RoundRobin {
    current: Vec<i64>,
    /// Next backup to start from, so backups share the load too.
    backup_next: usize,
    /// Next `source` address to bind.
    source_next: usize,
}

/// Which servers a request has already tried: a bit per server, inline for up to 64 servers,
/// on the heap for larger upstreams (up to `config::MAX_SERVERS`). Every server is tried at
/// most once per request, whatever the upstream's size.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Tried {
    Small(u64),
    Large(Box<[u64]>),
}

impl Default for Tried {
    fn default() -> Tried {
        Tried::Small(0)
    }
}

impl Tried {
    /// Nothing tried yet, for an upstream of `servers` servers.
    pub fn new(servers: usize) -> Tried {
        if servers <= 64 {
            Tried::Small(0)
        } else {
            Tried::Large(vec![0; servers.div_ceil(64)].into_boxed_slice())
        }
    }

    pub fn has(&self, i: usize) -> bool {
        match self {
            Tried::Small(b) => i < 64 && b & (1 << i) != 0,
            Tried::Large(v) => v.get(i / 64).is_some_and(|w| w & (1 << (i % 64)) != 0),
        }
    }

    pub fn mark(&mut self, i: usize) {
        match self {
            Tried::Small(b) => {
                assert!(i < 64, "server {i} in an upstream sized for 64");
                *b |= 1 << i;
            }
            Tried::Large(v) => v[i / 64] |= 1 << (i % 64),
        }
    }
}

impl RoundRobin {
    pub fn new(u: &Upstream) -> RoundRobin {
        RoundRobin {
            current: vec![0; u.peers.len()],
            backup_next: 0,
            source_next: 0,
        }
    }

    /// The next server to try, skipping those in `tried`; `None` when all were tried.
    pub fn pick(&mut self, u: &Upstream, tried: &Tried) -> Option<usize> {
        let mut total = 0i64;
        let mut best: Option<usize> = None;
        for (i, p) in u.peers.iter().enumerate() {
            if p.backup || tried.has(i) {
                continue;
            }
            let w = i64::from(p.weight);
            self.current[i] += w;
            total += w;
            if best.is_none_or(|b| self.current[i] > self.current[b]) {
                best = Some(i);
            }
        }
        if let Some(b) = best {
            self.current[b] -= total;
            return Some(b);
        }
        let n = u.peers.len();
        for k in 0..n {
            let i = (self.backup_next + k) % n;
            if u.peers[i].backup && !tried.has(i) {
                self.backup_next = i + 1;
                return Some(i);
            }
        }
        None
    }

    /// The local address for the next upstream socket, in turn over `source`.
    pub fn next_source(&mut self, u: &Upstream) -> Option<std::net::IpAddr> {
        if u.source.is_empty() {
            return None;
        }
        let a = u.source[self.source_next % u.source.len()];
        self.source_next = self.source_next.wrapping_add(1);
        Some(a)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Balance, Peer};

    fn up(weights: &[(u32, bool)]) -> Upstream {
        Upstream {
            name: "u".into(),
            balance: Balance::RoundRobin,
            peers: weights
                .iter()
                .enumerate()
                .map(|(i, &(weight, backup))| Peer {
                    active: Default::default(),
                    addr: format!("127.0.0.1:{}", 9000 + i).parse().unwrap(),
                    weight,
                    backup,
                })
                .collect(),
            source: Vec::new(),
            tls: None,
        }
    }

    #[test]
    fn smooth_sequence_matches_nginx() {
        // nginx's documented example: weights 5, 1, 1 give a a b a c a a.
        let u = up(&[(5, false), (1, false), (1, false)]);
        let mut rr = RoundRobin::new(&u);
        let seq: Vec<usize> = (0..7)
            .map(|_| rr.pick(&u, &Tried::default()).unwrap())
            .collect();
        assert_eq!(seq, vec![0, 0, 1, 0, 2, 0, 0]);
    }

    #[test]
    fn weights_hold_over_many_picks() {
        let u = up(&[(3, false), (2, false), (1, true)]);
        let mut rr = RoundRobin::new(&u);
        let mut count = [0; 3];
        for _ in 0..500 {
            count[rr.pick(&u, &Tried::default()).unwrap()] += 1;
        }
        assert_eq!(count, [300, 200, 0]);
    }

    #[test]
    fn retries_skip_tried_then_use_backup_then_give_up() {
        let u = up(&[(1, false), (1, false), (1, true)]);
        let mut rr = RoundRobin::new(&u);
        let mut t = Tried::new(3);
        let a = rr.pick(&u, &t).unwrap();
        t.mark(a);
        let b = rr.pick(&u, &t).unwrap();
        assert_ne!(a, b);
        t.mark(b);
        assert_eq!(rr.pick(&u, &t), Some(2));
        t.mark(2);
        assert_eq!(rr.pick(&u, &t), None);
    }

    #[test]
    fn large_upstreams_try_each_server_once() {
        // 300 primaries and 10 backups, all failing: each is picked exactly once, then none.
        let mut w = vec![(1, false); 300];
        w.extend(vec![(2, true); 10]);
        let u = up(&w);
        let mut rr = RoundRobin::new(&u);
        let mut t = Tried::new(u.peers.len());
        let mut seen = vec![0u32; u.peers.len()];
        while let Some(i) = rr.pick(&u, &t) {
            seen[i] += 1;
            t.mark(i);
            assert!(seen[i] == 1, "server {i} picked twice");
        }
        assert!(seen.iter().all(|&n| n == 1), "every server tried once");
    }
}
