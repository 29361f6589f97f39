//! Picking a backend, as nginx does: smooth weighted round robin, least_conn, ip_hash and
//! hash (plain or consistent) over the usable primary servers, the backup servers only when
//! no primary can be used for this request.

pub mod attempt;
mod hash;
pub mod health;
pub mod pool;

use std::net::IpAddr;
use std::sync::{Arc, Weak};

use crate::config::{Balance, Config, Upstream};
pub use hash::{Affinity, KeyInput};

/// A worker's balancers, one per upstream, for each configuration its sessions use: a session
/// accepted under an older configuration (before a reload) picks among that configuration's
/// servers, with that configuration's balancer state, so no index can point past a list that
/// a reload shortened.
#[derive(Debug)]
pub struct Balancers {
    /// Weak: a worker's balancers must not keep a configuration alive. (They held it strongly
    /// once, and each worker's sets then kept the other workers' old configurations alive:
    /// every reload leaked a whole configuration, ~4.6 KB plain, ~9 KB with TLS.) The
    /// allocation a `Weak` pins cannot be reused, so comparing addresses stays sound.
    sets: Vec<(Weak<Config>, Vec<Balancer>)>,
}

impl Balancers {
    pub fn new(cfg: &Arc<Config>) -> Balancers {
        let mut b = Balancers { sets: Vec::new() };
        b.of(cfg);
        b
    }

    /// The balancers for `cfg` (made on first use). The configuration in force is the newest
    /// set, looked at first: one comparison on almost every connect.
    pub fn of(&mut self, cfg: &Arc<Config>) -> &mut [Balancer] {
        let i = match self
            .sets
            .iter()
            .rposition(|(c, _)| std::ptr::eq(c.as_ptr(), Arc::as_ptr(cfg)))
        {
            Some(i) => i,
            None => {
                let rr = cfg.upstreams.iter().map(Balancer::new).collect();
                self.sets.push((Arc::downgrade(cfg), rr));
                self.sets.len() - 1
            }
        };
        &mut self.sets[i].1
    }

    /// Forget the balancers of configurations that nothing holds any more (no session of any
    /// worker, no worker as its current one); the newest is always kept.
    pub fn prune(&mut self) {
        let newest = self.sets.len().saturating_sub(1);
        let mut i = 0;
        self.sets.retain(|(c, _)| {
            i += 1;
            i - 1 == newest || c.strong_count() > 0
        });
    }

    /// Configurations with balancers here.
    pub fn len(&self) -> usize {
        self.sets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sets.is_empty()
    }
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

    pub fn unmark(&mut self, i: usize) {
        match self {
            Tried::Small(b) => *b &= !(1u64.checked_shl(i as u32).unwrap_or(0)),
            Tried::Large(v) => {
                if let Some(w) = v.get_mut(i / 64) {
                    *w &= !(1 << (i % 64));
                }
            }
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

/// Per-worker balancer state for one upstream (nginx keeps it per worker too; what every
/// worker must agree on — connections, failures, health — is in the servers' shared state).
#[derive(Clone, Debug)]
pub struct Balancer {
    /// Smooth weighted round robin's current weights (also least_conn's tie-break).
    current: Vec<i64>,
    /// Next backup to start from, so backups share the load too.
    backup_next: usize,
    /// Next `source` address to bind.
    source_next: usize,
}

/// What one pick needs besides the balancer: what the request tried, the time on the shared
/// clock, and its hash state.
pub struct Pick<'a> {
    pub tried: &'a Tried,
    pub now: u64,
    pub client: IpAddr,
    pub affinity: &'a mut Affinity,
}

/// How many hash steps a request takes before falling back to round robin (nginx: 20).
const HASH_TRIES: u8 = 20;

impl Balancer {
    pub fn new(u: &Upstream) -> Balancer {
        Balancer {
            current: vec![0; u.peers.len()],
            backup_next: 0,
            source_next: 0,
        }
    }

    /// The next server to try: usable (not `down`, not failed, healthy, under `max_conns`)
    /// and not in `tried`; `None` when there is none.
    pub fn pick(&mut self, u: &Upstream, p: Pick<'_>) -> Option<usize> {
        let (tried, now) = (p.tried, p.now);
        let hashed = match &u.balance {
            Balance::RoundRobin => None,
            Balance::LeastConn => self
                .least_conn(u, tried, now, false)
                .or_else(|| self.least_conn(u, tried, now, true)),
            Balance::IpHash => hash::ip_hash(u, tried, now, p.client, p.affinity),
            Balance::Hash(h) => hash::key_hash(u, h, tried, now, p.affinity),
        };
        let i = hashed.or_else(|| self.round_robin(u, tried, now))?;
        u.peers[i].picked(now);
        Some(i)
    }

    fn round_robin(&mut self, u: &Upstream, tried: &Tried, now: u64) -> Option<usize> {
        let mut total = 0i64;
        let mut best: Option<usize> = None;
        for (i, p) in u.peers.iter().enumerate() {
            if p.backup || tried.has(i) || !p.usable(now) {
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
            let p = &u.peers[i];
            if p.backup && !tried.has(i) && p.usable(now) {
                self.backup_next = i + 1;
                return Some(i);
            }
        }
        None
    }

    /// nginx's least_conn over the primaries (or the backups): the fewest open connections
    /// per unit of weight, ties shared by smooth weighted round robin.
    fn least_conn(&mut self, u: &Upstream, tried: &Tried, now: u64, backup: bool) -> Option<usize> {
        let candidates = || {
            u.peers
                .iter()
                .enumerate()
                .filter(move |(i, p)| p.backup == backup && !tried.has(*i) && p.usable(now))
        };
        let mut best: Option<(usize, u64)> = None;
        let mut many = false;
        for (i, p) in candidates() {
            let c = u64::from(p.state.active());
            match best {
                None => best = Some((i, c)),
                Some((b, bc)) => {
                    let (l, r) = (c * u64::from(u.peers[b].weight), bc * u64::from(p.weight));
                    if l < r {
                        best = Some((i, c));
                        many = false;
                    } else if l == r {
                        many = true;
                    }
                }
            }
        }
        let (b, bc) = best?;
        if !many {
            return Some(b);
        }
        let bw = u64::from(u.peers[b].weight);
        let mut total = 0i64;
        let mut pick: Option<usize> = None;
        for (i, p) in candidates().filter(|(i, _)| *i >= b) {
            if u64::from(p.state.active()) * bw != bc * u64::from(p.weight) {
                continue;
            }
            self.current[i] += i64::from(p.weight);
            total += i64::from(p.weight);
            if pick.is_none_or(|x| self.current[i] > self.current[x]) {
                pick = Some(i);
            }
        }
        let pick = pick.unwrap_or(b);
        self.current[pick] -= total;
        Some(pick)
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
    use crate::config::{Balance, Peer, PeerState};
    use std::time::Duration;

    fn config() -> Arc<Config> {
        Arc::new(
            Config::parse(
                "t.toml",
                "[[upstream]]\nname = \"b\"\nservers = [{ addr = \"127.0.0.1:1\" }]\n\
                 [[server]]\nlisten = [\"127.0.0.1:2\"]\n\
                 [[server.location]]\npath = \"/\"\nupstream = \"b\"\n",
            )
            .unwrap(),
        )
    }

    /// Two workers' balancers through many reloads: neither keeps the other's old
    /// configurations alive (each reload used to leak a whole configuration).
    #[test]
    fn balancers_of_several_workers_keep_no_old_configuration_alive() {
        let first = config();
        let mut workers = [Balancers::new(&first), Balancers::new(&first)];
        let mut current = [first.clone(), first.clone()];
        let old = Arc::downgrade(&first);
        drop(first);
        // A session of worker 1 still runs under the first configuration.
        let session = current[1].clone();
        for _ in 0..100 {
            let next = config();
            for (w, b) in workers.iter_mut().enumerate() {
                current[w] = next.clone();
                b.of(&current[w]);
                b.prune();
            }
        }
        assert!(old.upgrade().is_some(), "the session holds it");
        drop(session);
        let next = config();
        for (w, b) in workers.iter_mut().enumerate() {
            current[w] = next.clone();
            b.of(&current[w]);
            b.prune();
        }
        assert!(old.upgrade().is_none(), "freed once its last session ended");
        // Worker 0 pruned while worker 1 was still on the previous configuration: that one
        // set waits for the next reload, no more.
        assert_eq!(workers[0].len(), 2);
        assert_eq!(workers[1].len(), 1);
    }

    fn peer(i: usize, weight: u32, backup: bool) -> Peer {
        let addr: std::net::SocketAddr = format!("10.0.{}.{}:8080", i / 200, 10 + i % 200)
            .parse()
            .unwrap();
        Peer {
            addr,
            name: addr.to_string(),
            weight,
            backup,
            down: false,
            max_conns: 0,
            max_fails: 1,
            fail_timeout: Duration::from_secs(10),
            state: PeerState::default(),
        }
    }

    fn up(weights: &[(u32, bool)]) -> Upstream {
        Upstream {
            name: "u".into(),
            balance: Balance::RoundRobin,
            peers: weights
                .iter()
                .enumerate()
                .map(|(i, &(w, b))| peer(i, w, b))
                .collect(),
            source: Vec::new(),
            tls: None,
            health_check: None,
            keepalive: 0,
            keepalive_timeout: Duration::from_secs(60),
            keepalive_requests: 1000,
            proxy_protocol: false,
        }
    }

    fn pick_from(
        b: &mut Balancer,
        u: &Upstream,
        tried: &Tried,
        client: &str,
        aff: &mut Affinity,
    ) -> Option<usize> {
        b.pick(
            u,
            Pick {
                tried,
                now: 1_000_000,
                client: client.parse().unwrap(),
                affinity: aff,
            },
        )
    }

    fn pick(b: &mut Balancer, u: &Upstream, tried: &Tried) -> Option<usize> {
        let mut aff = Affinity::new(&u.balance, &input("192.0.2.1", ""), &mut Vec::new());
        pick_from(b, u, tried, "192.0.2.1", &mut aff)
    }

    fn input<'a>(client: &str, uri: &'a str) -> KeyInput<'a> {
        KeyInput {
            client: client.parse().unwrap(),
            uri,
            head: b"GET / HTTP/1.1\r\n\r\n",
        }
    }

    #[test]
    fn smooth_sequence_matches_nginx() {
        // nginx's documented example: weights 5, 1, 1 give a a b a c a a.
        let u = up(&[(5, false), (1, false), (1, false)]);
        let mut rr = Balancer::new(&u);
        let seq: Vec<usize> = (0..7)
            .map(|_| pick(&mut rr, &u, &Tried::default()).unwrap())
            .collect();
        assert_eq!(seq, vec![0, 0, 1, 0, 2, 0, 0]);
    }

    #[test]
    fn weights_hold_over_many_picks() {
        let u = up(&[(3, false), (2, false), (1, true)]);
        let mut rr = Balancer::new(&u);
        let mut count = [0; 3];
        for _ in 0..500 {
            count[pick(&mut rr, &u, &Tried::default()).unwrap()] += 1;
        }
        assert_eq!(count, [300, 200, 0]);
    }

    #[test]
    fn retries_skip_tried_then_use_backup_then_give_up() {
        let u = up(&[(1, false), (1, false), (1, true)]);
        let mut rr = Balancer::new(&u);
        let mut t = Tried::new(3);
        let a = pick(&mut rr, &u, &t).unwrap();
        t.mark(a);
        let b = pick(&mut rr, &u, &t).unwrap();
        assert_ne!(a, b);
        t.mark(b);
        assert_eq!(pick(&mut rr, &u, &t), Some(2));
        t.mark(2);
        assert_eq!(pick(&mut rr, &u, &t), None);
    }

    #[test]
    fn large_upstreams_try_each_server_once() {
        // 300 primaries and 10 backups, all failing: each is picked exactly once, then none.
        let mut w = vec![(1, false); 300];
        w.extend(vec![(2, true); 10]);
        let u = up(&w);
        let mut rr = Balancer::new(&u);
        let mut t = Tried::new(u.peers.len());
        let mut seen = vec![0u32; u.peers.len()];
        while let Some(i) = pick(&mut rr, &u, &t) {
            seen[i] += 1;
            t.mark(i);
            assert!(seen[i] == 1, "server {i} picked twice");
        }
        assert!(seen.iter().all(|&n| n == 1), "every server tried once");
    }

    #[test]
    fn failures_take_a_server_out_for_fail_timeout_then_one_try_brings_it_back() {
        let mut u = up(&[(1, false), (1, false)]);
        u.peers[0].max_fails = 2;
        let p = &u.peers[0];
        assert!(!p.failure(999_000), "one failure of two");
        assert!(p.usable(999_000));
        assert!(p.failure(999_500), "the second takes it out");
        assert!(!p.usable(999_500) && !p.usable(1_009_499));
        assert!(p.usable(1_009_501), "fail_timeout later it may be tried");
        let mut rr = Balancer::new(&u);
        for _ in 0..4 {
            assert_eq!(pick(&mut rr, &u, &Tried::default()), Some(1));
        }
        // A success forgets the failures.
        assert!(p.success());
        assert!(p.usable(999_600));
        // max_fails = 0: never taken out.
        u.peers[1].max_fails = 0;
        for t in 0..5 {
            u.peers[1].failure(t);
        }
        assert!(u.peers[1].usable(5));
    }

    #[test]
    fn down_max_conns_and_backups() {
        let mut u = up(&[(1, false), (1, false), (1, true)]);
        u.peers[0].down = true;
        u.peers[1].max_conns = 2;
        let mut rr = Balancer::new(&u);
        assert_eq!(pick(&mut rr, &u, &Tried::default()), Some(1));
        u.peers[1].state.add();
        u.peers[1].state.add();
        assert_eq!(
            pick(&mut rr, &u, &Tried::default()),
            Some(2),
            "backup once no primary can take it"
        );
        u.peers[1].state.sub();
        assert_eq!(pick(&mut rr, &u, &Tried::default()), Some(1));
    }

    #[test]
    fn least_conn_counts_connections_per_weight_and_shares_ties() {
        let mut u = up(&[(1, false), (2, false), (1, false)]);
        u.balance = Balance::LeastConn;
        let mut b = Balancer::new(&u);
        // 2 on a (weight 1), 3 on b (weight 2: 1.5 each), 1 on c.
        for (i, n) in [(0, 2), (1, 3), (2, 1)] {
            for _ in 0..n {
                u.peers[i].state.add();
            }
        }
        assert_eq!(pick(&mut b, &u, &Tried::default()), Some(2));
        u.peers[2].state.add(); // c: 2, b: 1.5
        assert_eq!(pick(&mut b, &u, &Tried::default()), Some(1));
        // All equal per weight: shared by weight (b twice as often).
        let mut u = up(&[(1, false), (2, false)]);
        u.balance = Balance::LeastConn;
        let mut b = Balancer::new(&u);
        let mut count = [0; 2];
        for _ in 0..300 {
            count[pick(&mut b, &u, &Tried::default()).unwrap()] += 1;
        }
        assert_eq!(count, [100, 200]);
    }

    #[test]
    fn ip_hash_keeps_a_24_together_and_skips_down_without_remapping_others() {
        let mut u = up(&[(3, false), (2, false), (1, false)]);
        u.balance = Balance::IpHash;
        let mut b = Balancer::new(&u);
        let on = |b: &mut Balancer, u: &Upstream, ip: &str| {
            let mut aff = Affinity::new(&u.balance, &input(ip, "/"), &mut Vec::new());
            pick_from(b, u, &Tried::default(), ip, &mut aff).unwrap()
        };
        let mut spread = [0; 3];
        let mut before = Vec::new();
        for n in 0..=255 {
            let ip = format!("10.{n}.7.1");
            let s = on(&mut b, &u, &ip);
            assert_eq!(
                on(&mut b, &u, &format!("10.{n}.7.200")),
                s,
                "same /24, same server"
            );
            spread[s] += 1;
            before.push(s);
        }
        assert!(spread.iter().all(|&n| n > 20), "{spread:?}");
        u.peers[1].down = true;
        for (n, was) in before.iter().enumerate() {
            let s = on(&mut b, &u, &format!("10.{n}.7.1"));
            assert_ne!(s, 1);
            if *was != 1 {
                assert_eq!(s, *was, "a client of another server moved");
            }
        }
    }

    #[test]
    fn consistent_hash_moves_about_one_in_n_keys_when_a_server_goes() {
        let key = |u: &Upstream, k: usize| {
            let mut aff = Affinity::new(
                &u.balance,
                &input("192.0.2.1", &format!("/room/{k}")),
                &mut Vec::new(),
            );
            pick_from(
                &mut Balancer::new(u),
                u,
                &Tried::default(),
                "192.0.2.1",
                &mut aff,
            )
            .unwrap()
        };
        let make = |n: usize| {
            let mut u = up(&vec![(1, false); n]);
            let mut h = crate::config::HashKey {
                text: "$request_uri".into(),
                parts: crate::config::upstream::parse_key("$request_uri").unwrap(),
                consistent: true,
                points: Vec::new(),
            };
            h.points = crate::config::upstream::ketama(&u.peers);
            u.balance = Balance::Hash(h);
            u
        };
        let all = make(10);
        // The same ring without the last server.
        let mut fewer = make(10);
        fewer.peers.truncate(9);
        if let Balance::Hash(h) = &mut fewer.balance {
            h.points = crate::config::upstream::ketama(&fewer.peers);
        }
        let keys = 20_000;
        let mut moved = 0;
        for k in 0..keys {
            let (a, b) = (key(&all, k), key(&fewer, k));
            if a != b {
                assert_eq!(a, 9, "only keys of the removed server move");
                moved += 1;
            }
        }
        let share = moved as f64 / keys as f64;
        assert!(
            (0.05..0.16).contains(&share),
            "{share} of keys moved, about 1/10 expected"
        );
    }
}
