//! `/metrics`: the Prometheus exposition, rendered by the `prometheus-client` crate from a
//! custom collector that reads, at scrape time, what the workers publish (relaxed atomics)
//! and the servers' shared state. Nothing on the data path knows about it.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::{Registry, Unit};

use crate::config::PeerStatus;
use crate::live::Live;
use crate::metrics::{Histogram, WorkerMetrics};
use crate::session::End;

/// What the collector reads.
pub struct Sources {
    pub workers: Vec<Arc<WorkerMetrics>>,
    pub live: Arc<Live>,
    pub stopping: Arc<AtomicBool>,
}

impl fmt::Debug for Sources {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Sources({} workers)", self.workers.len())
    }
}

/// The whole exposition, in the OpenMetrics text format (which Prometheus scrapes and
/// `promtool check metrics` reads).
pub fn render(src: Arc<Sources>) -> String {
    let mut registry = Registry::with_prefix("ringway");
    registry.register_collector(Box::new(src));
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
    out
}

/// The same exposition in Prometheus's classic text format (0.0.4): a counter family is
/// named with its `_total` in `# HELP` and `# TYPE`, and OpenMetrics' `# UNIT` and `# EOF`
/// lines are left out. Every sample line is as `prometheus-client` wrote it.
pub fn classic(openmetrics: &str) -> String {
    let mut out = String::with_capacity(openmetrics.len());
    let mut help: Option<&str> = None;
    for line in openmetrics.lines() {
        if line.starts_with("# UNIT ") || line == "# EOF" {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            // Held until the TYPE line says whether the name takes `_total`.
            help = Some(rest);
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, ""));
            let name = if kind == "counter" {
                format!("{name}_total")
            } else {
                name.to_string()
            };
            if let Some(h) = help.take() {
                let text = h.split_once(' ').map_or("", |(_, t)| t);
                out.push_str(&format!("# HELP {name} {text}\n"));
            }
            out.push_str(&format!("# TYPE {name} {kind}\n"));
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

fn get(a: &AtomicU64) -> u64 {
    a.load(Ordering::Relaxed)
}

type Labels = Vec<(&'static str, String)>;

/// Counters by HTTP/2 error code, of one worker.
type CodeCounts = fn(&WorkerMetrics) -> &[AtomicU64; 14];

impl Sources {
    fn per_worker(
        &self,
        enc: &mut DescriptorEncoder<'_>,
        name: &str,
        help: &str,
        kind: MetricType,
        f: impl Fn(&WorkerMetrics) -> u64,
    ) -> fmt::Result {
        let mut d = enc.encode_descriptor(name, help, None, kind)?;
        for (i, w) in self.workers.iter().enumerate() {
            let labels: Labels = vec![("worker", i.to_string())];
            let m = d.encode_family(&labels)?;
            match kind {
                MetricType::Counter => ConstCounter::new(f(w)).encode(m)?,
                _ => ConstGauge::new(f(w) as i64).encode(m)?,
            }
        }
        Ok(())
    }

    fn histogram(
        &self,
        enc: &mut DescriptorEncoder<'_>,
        name: &str,
        help: &str,
        h: impl Fn(&WorkerMetrics) -> &Histogram,
    ) -> fmt::Result {
        let mut d =
            enc.encode_descriptor(name, help, Some(&Unit::Seconds), MetricType::Histogram)?;
        for (i, w) in self.workers.iter().enumerate() {
            let labels: Labels = vec![("worker", i.to_string())];
            let (buckets, sum, count) = h(w).snapshot();
            d.encode_family(&labels)?
                .encode_histogram::<NoLabelSet>(sum, count, &buckets, None)?;
        }
        Ok(())
    }
}

impl Collector for Sources {
    fn encode(&self, mut enc: DescriptorEncoder) -> fmt::Result {
        use MetricType::{Counter, Gauge};
        let e = &mut enc;
        self.sessions(e)?;
        self.http2(e)?;
        self.durations(e)?;
        self.per_worker(
            e,
            "buffer_pool_buffers",
            "Receive buffers in the worker's pool.",
            Gauge,
            |w| get(&w.pool_buffers),
        )?;
        self.per_worker(
            e,
            "buffer_pool_in_use",
            "Receive buffers held now (by the kernel or waiting to be sent).",
            Gauge,
            |w| get(&w.pool_in_use),
        )?;
        self.per_worker(
            e,
            "buffer_pool_circulating",
            "Receive buffers in circulation (resident); the pool's other buffers hold no memory.",
            Gauge,
            |w| get(&w.pool_circulating),
        )?;
        self.per_worker(
            e,
            "buffer_pool_waits",
            "Recvs that found no receive buffer ready and waited for one to come back (each a re-armed recv).",
            Counter,
            |w| get(&w.pool_waits),
        )?;
        self.upstreams(e)?;
        self.locations(e)?;
        self.messages(e)?;
        let d = e.encode_descriptor("up", "1 while serving, 0 while stopping.", None, Gauge)?;
        ConstGauge::new(i64::from(!self.stopping.load(Ordering::Relaxed))).encode(d)?;
        Ok(())
    }
}

impl Sources {
    /// Sessions: open, accepted, refused, limited, how they ended; bytes received.
    fn sessions(&self, e: &mut DescriptorEncoder<'_>) -> fmt::Result {
        use MetricType::{Counter, Gauge};
        self.per_worker(
            e,
            "sessions_active",
            "Client connections open now.",
            Gauge,
            |w| get(&w.active),
        )?;
        self.per_worker(
            e,
            "tunnels_active",
            "WebSocket tunnels open now.",
            Gauge,
            |w| get(&w.tunnels),
        )?;
        self.per_worker(
            e,
            "sessions_accepted",
            "Client connections accepted.",
            Counter,
            |w| get(&w.accepted),
        )?;
        self.per_worker(
            e,
            "sessions_rejected",
            "Client connections refused over max_connections.",
            Counter,
            |w| get(&w.rejected),
        )?;
        self.per_worker(
            e,
            "sessions_limited",
            "Requests refused by limit_conn or limit_req.",
            Counter,
            |w| w.ended(End::Limited.index()),
        )?;
        self.per_worker(
            e,
            "messages_delayed",
            "Client WebSocket frames a location's message_rate delayed (the client not read meanwhile).",
            Counter,
            |w| get(&w.messages_delayed),
        )?;
        self.per_worker(
            e,
            "tunnels_handed_over",
            "Tunnels handed to the process that took over in a binary upgrade (ringway run --upgrade).",
            Counter,
            |w| get(&w.tunnels_handed_over),
        )?;
        self.per_worker(
            e,
            "tunnels_taken_over",
            "Tunnels taken over from the process this one replaced in a binary upgrade.",
            Counter,
            |w| get(&w.tunnels_taken_over),
        )?;
        self.per_worker(
            e,
            "stale_completions",
            "Completions for freed sessions (should stay 0).",
            Counter,
            |w| get(&w.stale_cqes),
        )?;
        {
            let mut d = e.encode_descriptor(
                "sessions_ended",
                "Sessions ended (client connections, and HTTP/2 streams' inner sessions), by how they ended.",
                None,
                Counter,
            )?;
            for (i, w) in self.workers.iter().enumerate() {
                for (k, name) in End::KIND_NAMES.iter().enumerate() {
                    let labels: Labels = vec![("worker", i.to_string()), ("end", name.to_string())];
                    ConstCounter::new(w.ended(k)).encode(d.encode_family(&labels)?)?;
                }
            }
        }
        {
            let mut d = e.encode_descriptor(
                "received",
                "Bytes received from clients and from upstreams, counted as each request ends.",
                Some(&Unit::Bytes),
                Counter,
            )?;
            for (i, w) in self.workers.iter().enumerate() {
                for (from, v) in [
                    ("client", get(&w.bytes_from_client)),
                    ("upstream", get(&w.bytes_from_upstream)),
                ] {
                    let labels: Labels =
                        vec![("worker", i.to_string()), ("from", from.to_string())];
                    ConstCounter::new(v).encode(d.encode_family(&labels)?)?;
                }
            }
        }
        {
            let mut d = e.encode_descriptor(
                "spliced",
                "Bytes of tunnels moved by splice(2), socket to pipe to socket, as they go.",
                Some(&Unit::Bytes),
                Counter,
            )?;
            for (i, w) in self.workers.iter().enumerate() {
                let labels: Labels = vec![("worker", i.to_string())];
                ConstCounter::new(get(&w.bytes_spliced)).encode(d.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }

    /// HTTP/2 toward clients: connections, streams, the inner sessions carrying them, the
    /// RST_STREAM and GOAWAY frames by error code.
    fn http2(&self, e: &mut DescriptorEncoder<'_>) -> fmt::Result {
        use MetricType::{Counter, Gauge};
        self.per_worker(
            e,
            "http2_connections",
            "Client connections that spoke HTTP/2.",
            Counter,
            |w| get(&w.h2.connections),
        )?;
        self.per_worker(
            e,
            "http2_connections_active",
            "HTTP/2 client connections open now.",
            Gauge,
            |w| get(&w.h2.active),
        )?;
        self.per_worker(
            e,
            "http2_streams",
            "HTTP/2 streams taken (requests and WebSocket CONNECTs).",
            Counter,
            |w| get(&w.h2.streams),
        )?;
        self.per_worker(
            e,
            "http2_stream_sessions_active",
            "Inner sessions carrying HTTP/2 streams open now (in use, or kept for the next).",
            Gauge,
            |w| get(&w.h2.stream_sessions),
        )?;
        let frames: [(&str, &str, CodeCounts); 3] = [
            (
                "http2_resets_sent",
                "RST_STREAM frames sent to clients, by error code.",
                |w| &w.h2.resets_sent,
            ),
            (
                "http2_resets_received",
                "RST_STREAM frames clients sent for open streams, by error code.",
                |w| &w.h2.resets_received,
            ),
            (
                "http2_goaways_sent",
                "GOAWAY frames sent to clients, by error code.",
                |w| &w.h2.goaways,
            ),
        ];
        for (name, help, counts) in frames {
            let mut d = e.encode_descriptor(name, help, None, Counter)?;
            for (i, w) in self.workers.iter().enumerate() {
                for (c, n) in counts(w).iter().enumerate() {
                    let code = crate::h2::Code::from_u32(c as u32).name();
                    let labels: Labels = vec![("worker", i.to_string()), ("code", code.into())];
                    ConstCounter::new(get(n)).encode(d.encode_family(&labels)?)?;
                }
            }
        }
        Ok(())
    }

    /// How long sessions, handshakes, upstream connects and tunnels took.
    fn durations(&self, e: &mut DescriptorEncoder<'_>) -> fmt::Result {
        self.histogram(
            e,
            "session_duration",
            "How long client connections lasted.",
            |w| &w.session_duration,
        )?;
        self.histogram(
            e,
            "handshake_duration",
            "From an upgrade request's first byte to its 101 (ms resolution).",
            |w| &w.handshake,
        )?;
        self.histogram(
            e,
            "upstream_connect_duration",
            "Upstream TCP connects, from the attempt to the connection (ms resolution).",
            |w| &w.connect,
        )?;
        self.histogram(
            e,
            "tunnel_duration",
            "WebSocket tunnels, from the upgrade request to the end.",
            |w| &w.tunnel_lifetime,
        )?;
        Ok(())
    }

    /// Requests per location and what limit_conn zones count.
    fn locations(&self, e: &mut DescriptorEncoder<'_>) -> fmt::Result {
        use MetricType::Gauge;
        let cfg = self.live.config();
        let counts = [
            (
                "location_requests",
                "Requests routed to each location, across workers.",
                0,
            ),
            (
                "location_limited",
                "Requests each location refused by limit_conn or limit_req.",
                1,
            ),
        ];
        for (name, help, k) in counts {
            let mut d = e.encode_descriptor(name, help, None, MetricType::Counter)?;
            for s in &cfg.servers {
                let server_name = s.names.first().map_or("_", String::as_str).to_string();
                for l in &s.locations {
                    let labels: Labels = vec![
                        ("server_name", server_name.clone()),
                        ("location", l.path.clone()),
                    ];
                    ConstCounter::new(l.stats.counts()[k]).encode(d.encode_family(&labels)?)?;
                }
            }
        }
        {
            let mut d = e.encode_descriptor(
                "limit_conn_zone_addresses",
                "Client addresses counted in each limit_conn zone now.",
                None,
                Gauge,
            )?;
            for z in &cfg.conn_zones {
                let labels: Labels = vec![("zone", z.name.clone())];
                ConstGauge::new(z.table.keys() as i64).encode(d.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}

impl Sources {
    /// What each location's tunnels carried, summed over the workers' rows: messages and
    /// payload bytes by the side they came from, message sizes, the Close frames each side
    /// sent and those the proxy sent on its own, how the tunnels ended. Closes and ends are
    /// written where they are not zero.
    fn messages(&self, e: &mut DescriptorEncoder<'_>) -> fmt::Result {
        use crate::metrics::{CLOSE_WAYS, MESSAGE_BOUNDS, close_slot_name};
        use MetricType::Counter;
        const FROM: [&str; 2] = ["client", "upstream"];
        let cfg = self.live.config();
        let mut locs = Vec::new();
        for s in &cfg.servers {
            let server_name = s.names.first().map_or("_", String::as_str);
            for l in &s.locations {
                let labels: Labels = vec![
                    ("server_name", server_name.to_string()),
                    ("location", l.path.clone()),
                ];
                locs.push((labels, l.stats.messages()));
            }
        }
        let with = |labels: &Labels, more: &[(&'static str, String)]| {
            let mut l = labels.clone();
            l.extend_from_slice(more);
            l
        };
        let counts = [
            (
                "location_messages",
                "WebSocket messages through each location's tunnels, by the side they came from.",
                0,
            ),
            (
                "location_message_bytes",
                "Payload bytes of WebSocket data frames through each location's tunnels.",
                1,
            ),
        ];
        for (name, help, k) in counts {
            let mut d = e.encode_descriptor(name, help, None, Counter)?;
            for (labels, t) in &locs {
                for (i, from) in FROM.iter().enumerate() {
                    let n = if k == 0 { t.messages[i] } else { t.bytes[i] };
                    let l = with(labels, &[("from", from.to_string())]);
                    ConstCounter::new(n).encode(d.encode_family(&l)?)?;
                }
            }
        }
        {
            let mut d = e.encode_descriptor(
                "location_message_size",
                "WebSocket message sizes (payload, fragments summed) through each location's tunnels.",
                Some(&Unit::Bytes),
                MetricType::Histogram,
            )?;
            for (labels, t) in &locs {
                for (i, from) in FROM.iter().enumerate() {
                    let buckets: Vec<(f64, u64)> = t.sizes[i]
                        .iter()
                        .enumerate()
                        .map(|(b, n)| {
                            (
                                MESSAGE_BOUNDS.get(b).map_or(f64::INFINITY, |x| *x as f64),
                                *n,
                            )
                        })
                        .collect();
                    let l = with(labels, &[("from", from.to_string())]);
                    d.encode_family(&l)?.encode_histogram::<NoLabelSet>(
                        t.bytes[i] as f64,
                        t.messages[i],
                        &buckets,
                        None,
                    )?;
                }
            }
        }
        {
            let mut d = e.encode_descriptor(
                "location_closes",
                "WebSocket Close frames in each location's tunnels: received from a side, or sent to it by the proxy on its own; by code (3xxx, 4xxx: application codes).",
                None,
                Counter,
            )?;
            for (labels, t) in &locs {
                for (w, (side, way)) in CLOSE_WAYS.iter().enumerate() {
                    for (c, n) in t.closes[w].iter().enumerate().filter(|(_, n)| **n > 0) {
                        let l = with(
                            labels,
                            &[
                                ("side", side.to_string()),
                                ("way", way.to_string()),
                                ("code", close_slot_name(c)),
                            ],
                        );
                        ConstCounter::new(*n).encode(d.encode_family(&l)?)?;
                    }
                }
            }
        }
        let mut d = e.encode_descriptor(
            "location_tunnels_ended",
            "WebSocket tunnels of each location that ended, by how they ended.",
            None,
            Counter,
        )?;
        for (labels, t) in &locs {
            for (k, n) in t.ended.iter().enumerate().filter(|(_, n)| **n > 0) {
                let l = with(labels, &[("end", End::KIND_NAMES[k].to_string())]);
                ConstCounter::new(*n).encode(d.encode_family(&l)?)?;
            }
        }
        Ok(())
    }

    fn upstreams(&self, e: &mut DescriptorEncoder<'_>) -> fmt::Result {
        let cfg = self.live.config();
        let now = crate::config::clock_ms();
        let servers = || {
            cfg.upstreams.iter().flat_map(|u| {
                u.peers.iter().map(move |p| {
                    let labels: Labels =
                        vec![("upstream", u.name.clone()), ("server", p.addr.to_string())];
                    (labels, p)
                })
            })
        };
        {
            let mut d = e.encode_descriptor(
                "upstream_server_state",
                "1 for the state each upstream server is in (up, down, failed, backup).",
                None,
                MetricType::Gauge,
            )?;
            for (labels, p) in servers() {
                let now_is = p.status(now);
                for s in [
                    PeerStatus::Up,
                    PeerStatus::Down,
                    PeerStatus::Failed,
                    PeerStatus::Backup,
                ] {
                    let mut l = labels.clone();
                    l.push(("state", s.name().to_string()));
                    ConstGauge::new(i64::from(now_is == s)).encode(d.encode_family(&l)?)?;
                }
            }
        }
        {
            let mut d = e.encode_descriptor(
                "upstream_server_connections",
                "Connections open to each upstream server now, across workers.",
                None,
                MetricType::Gauge,
            )?;
            for (labels, p) in servers() {
                ConstGauge::new(i64::from(p.state.active())).encode(d.encode_family(&labels)?)?;
            }
        }
        let counts = [
            (
                "upstream_server_requests",
                "Connections attempted to each upstream server.",
                0,
            ),
            (
                "upstream_server_failures",
                "Failures of each upstream server (as next_upstream counts them).",
                1,
            ),
        ];
        for (name, help, k) in counts {
            let mut d = e.encode_descriptor(name, help, None, MetricType::Counter)?;
            for (labels, p) in servers() {
                ConstCounter::new(p.state.counts()[k]).encode(d.encode_family(&labels)?)?;
            }
        }
        let mut d = e.encode_descriptor(
            "upstream_server_health_checks",
            "Active health checks of each upstream server, by result.",
            None,
            MetricType::Counter,
        )?;
        for (labels, p) in servers() {
            let [_, _, ok, failed] = p.state.counts();
            for (result, v) in [("pass", ok), ("fail", failed)] {
                let mut l = labels.clone();
                l.push(("result", result.to_string()));
                ConstCounter::new(v).encode(d.encode_family(&l)?)?;
            }
        }
        Ok(())
    }
}
