//! Runtime state a configuration carries for its locations: the counters every worker adds
//! to (requests routed and limited; what their tunnels' messages were), kept across reloads by
//! `Config::carry_from` and left out of comparing configurations.

use std::fmt;

/// A location's counters (runtime state: it takes no part in comparing configurations, and a
/// clone shares it): requests routed and limited, across workers (relaxed atomics, once per
/// request); and per worker, what its tunnels' messages were (`MessageRow`, per message).
#[derive(Clone)]
pub struct LocationStats(std::sync::Arc<LocationShared>);

struct LocationShared {
    requests: [std::sync::atomic::AtomicU64; 2],
    /// One row per worker, each its own allocation.
    rows: Box<[std::sync::Arc<crate::metrics::MessageRow>]>,
}

impl Default for LocationStats {
    fn default() -> LocationStats {
        LocationStats::new(1)
    }
}

impl LocationStats {
    /// Counters for a process of `workers` workers.
    pub fn new(workers: usize) -> LocationStats {
        LocationStats(std::sync::Arc::new(LocationShared {
            requests: Default::default(),
            rows: (0..workers.max(1)).map(|_| Default::default()).collect(),
        }))
    }

    /// A request was routed here.
    pub fn routed(&self) {
        self.0.requests[0].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// A request here was refused by limit_conn or limit_req.
    pub fn limited(&self) {
        self.0.requests[1].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// Requests routed, requests limited.
    pub fn counts(&self) -> [u64; 2] {
        let get = |i: usize| self.0.requests[i].load(std::sync::atomic::Ordering::Relaxed);
        [get(0), get(1)]
    }

    /// How many workers it has a row for.
    pub fn workers(&self) -> usize {
        self.0.rows.len()
    }

    /// Worker `w`'s row of message counters.
    pub fn row(&self, w: usize) -> std::sync::Arc<crate::metrics::MessageRow> {
        self.0.rows[w % self.0.rows.len()].clone()
    }

    /// Every worker's rows summed.
    pub fn messages(&self) -> crate::metrics::MessageTotals {
        crate::metrics::MessageRow::sum(self.0.rows.iter().map(|r| &**r))
    }
}

impl PartialEq for LocationStats {
    fn eq(&self, _: &LocationStats) -> bool {
        true
    }
}

impl fmt::Debug for LocationStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.counts())
    }
}

/// The `MessageRow`s of every location (`Config::location_id` order), `workers` per location;
/// runtime state, as `LocationStats` (it takes no part in comparing configurations).
#[derive(Clone, Default)]
pub struct MessageRows {
    rows: Box<[std::sync::Arc<crate::metrics::MessageRow>]>,
    workers: usize,
}

impl MessageRows {
    /// The rows of `locations` (in `Config::location_id` order), `workers` each.
    pub fn of<'a>(
        locations: impl Iterator<Item = &'a super::Location>,
        workers: usize,
    ) -> MessageRows {
        let workers = workers.max(1);
        let rows = locations
            .flat_map(|l| (0..workers).map(|w| l.stats.row(w)))
            .collect();
        MessageRows { rows, workers }
    }

    /// Worker `worker`'s row of location `loc`.
    #[inline(always)]
    pub fn get(&self, loc: u16, worker: usize) -> Option<&crate::metrics::MessageRow> {
        if worker >= self.workers {
            return None;
        }
        self.rows
            .get(usize::from(loc) * self.workers + worker)
            .map(|r| &**r)
    }
}

impl PartialEq for MessageRows {
    fn eq(&self, _: &MessageRows) -> bool {
        true
    }
}

impl fmt::Debug for MessageRows {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MessageRows({})", self.rows.len())
    }
}
