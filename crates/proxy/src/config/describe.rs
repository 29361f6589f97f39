//! `ringway check`'s description of a configuration as it will run: every setting resolved,
//! defaults filled in, one line per object.

use std::fmt::Write;

use super::*;

impl Config {
    /// What `ringway check` prints: the configuration as understood, with defaults filled in.
    pub fn describe(&self) -> String {
        let mut o = String::new();
        let r = &self.runtime;
        let _ = writeln!(
            o,
            "runtime: workers={} max_connections={} shutdown_grace={} drain_spread={} drain_close={} {:?} buffers={}x{}B access_log={} access_log_open={} splice_min={} upgrade_tunnels={}",
            r.workers,
            r.max_connections,
            fmt_duration(r.shutdown_grace),
            fmt_duration(r.drain_spread),
            r.drain_code,
            r.drain_reason,
            r.buffers,
            r.buffer_size,
            r.access_log,
            r.access_log_open,
            match r.splice_min {
                0 => "off".to_string(),
                n => format!("{n}B"),
            },
            r.upgrade_tunnels
        );
        for z in &self.conn_zones {
            let _ = writeln!(
                o,
                "limit_conn_zone {:?} size={}B ({} addresses)",
                z.name,
                z.bytes,
                z.table.capacity()
            );
        }
        for z in &self.req_zones {
            let _ = writeln!(
                o,
                "limit_req_zone {:?} size={}B ({} addresses)",
                z.name,
                z.bytes,
                z.table.capacity()
            );
        }
        for u in &self.upstreams {
            describe_upstream(&mut o, u);
        }
        if let Some(p) = &r.upgrade_socket {
            let _ = writeln!(o, "upgrade_socket {}", p.display());
        }
        for (i, s) in self.servers.iter().enumerate() {
            let listen: Vec<String> = s
                .listen
                .iter()
                .map(|&l| {
                    let mut a = self.listeners[l].to_string();
                    if self.listener_tls[l].is_some() {
                        a.push_str(" (tls)");
                    }
                    if self.listener_proxy[l].is_some() {
                        a.push_str(" (proxy_protocol)");
                    }
                    a
                })
                .collect();
            let names = if s.names.is_empty() {
                "(default)".to_string()
            } else {
                s.names.join(" ")
            };
            let _ = writeln!(
                o,
                "server[{i}] listen={} server_name={} header_timeout={} header_max={} request_line_max={} header_line_max={} keepalive_timeout={} keepalive_requests={}",
                listen.join(","),
                names,
                fmt_duration(s.header_timeout),
                s.header_max,
                s.request_line_max,
                s.header_line_max,
                fmt_duration(s.keepalive_timeout),
                s.keepalive_requests
            );
            if let Some(h) = s.http2 {
                let _ = writeln!(
                    o,
                    "  http2 websocket={} max_concurrent_streams={}",
                    h.websocket, h.max_streams
                );
            }
            if !s.trusted_proxies.is_empty() {
                let blocks: Vec<String> = s
                    .trusted_proxies
                    .iter()
                    .map(|c| format!("{}/{}", c.net, c.bits))
                    .collect();
                let _ = writeln!(
                    o,
                    "  trusted_proxies={} real_ip_header={}",
                    blocks.join(","),
                    s.real_ip_header.as_deref().unwrap_or("-")
                );
            }
            for l in &s.locations {
                self.describe_location(&mut o, l);
            }
        }
        o
    }

    fn describe_location(&self, o: &mut String, l: &Location) {
        let n = &l.next_upstream;
        let _ = writeln!(
            o,
            "  location {:?} -> {} connect={} read={} send={} body={} upgrade={} next_upstream={} tries={} timeout={}",
            l.path,
            self.upstreams[l.upstream].name,
            fmt_duration(l.connect_timeout),
            fmt_duration(l.read_timeout),
            fmt_duration(l.send_timeout),
            fmt_duration(l.body_timeout),
            l.upgrade.join(","),
            n.names(),
            n.tries,
            fmt_duration(n.timeout)
        );
        if let Some(max) = l.max_frame_size {
            let _ = writeln!(o, "    max_frame_size={max}B");
        }
        if let Some((max, jitter)) = l.max_lifetime {
            let _ = writeln!(
                o,
                "    max_lifetime={} jitter={}",
                fmt_duration(max),
                fmt_duration(jitter)
            );
        }
        if let Some(max) = l.max_message_size {
            let _ = writeln!(o, "    max_message_size={max}B");
        }
        if let Some(r) = &l.message_rate {
            let _ = writeln!(
                o,
                "    message_rate rate={}r/s burst={} nodelay={} per={}",
                r.rate_milli as f64 / 1000.0,
                r.burst,
                r.nodelay,
                r.zone.as_ref().map_or("tunnel".to_string(), |z| format!(
                    "address in zone {:?}",
                    z.name
                ))
            );
        }
        if let Some(a) = &l.auth_request {
            let set: Vec<String> = a
                .set
                .iter()
                .map(|(to, from)| format!("{to}<-{from}"))
                .collect();
            let _ = writeln!(
                o,
                "    auth_request upstream={:?} uri={} timeout={} set=[{}] cache={}",
                self.upstreams[a.upstream].name,
                a.uri.as_deref().unwrap_or("(the request's)"),
                fmt_duration(a.timeout),
                set.join(", "),
                a.cache.map_or("off".to_string(), fmt_duration)
            );
        }
        if let Some(c) = l.limit_conn {
            let _ = writeln!(
                o,
                "    limit_conn zone={:?} max={} status={}",
                self.conn_zones[c.zone].name, c.max, c.status
            );
        }
        if let Some(r) = l.limit_req {
            let _ = writeln!(
                o,
                "    limit_req zone={:?} rate={}r/s burst={} nodelay={} status={}",
                self.req_zones[r.zone].name,
                r.rate_milli as f64 / 1000.0,
                r.burst,
                r.nodelay,
                r.status
            );
        }
        if let Some(h) = l.heartbeat {
            let _ = writeln!(
                o,
                "    heartbeat interval={} timeout={} upstream_interval={}",
                fmt_duration(h.interval),
                fmt_duration(h.timeout),
                h.upstream_interval.map_or("-".into(), fmt_duration)
            );
        }
    }
}

fn describe_upstream(o: &mut String, u: &Upstream) {
    let key = match &u.balance {
        Balance::Hash(h) => format!(" key={:?}", h.text),
        _ => String::new(),
    };
    let _ = writeln!(
        o,
        "upstream {:?} balance={}{key} keepalive={} keepalive_timeout={} keepalive_requests={}",
        u.name,
        u.balance.name(),
        u.keepalive,
        fmt_duration(u.keepalive_timeout),
        u.keepalive_requests
    );
    if let Some(h) = &u.health_check {
        let _ = writeln!(
            o,
            "  health_check {} interval={} rise={} fall={} timeout={} expect={}{}",
            match &h.request {
                Some(r) => format!("{:?}", String::from_utf8_lossy(r)),
                None => "tcp".into(),
            },
            fmt_duration(h.interval),
            h.rise,
            h.fall,
            fmt_duration(h.timeout),
            h.expect
                .iter()
                .map(|e| e.name())
                .collect::<Vec<_>>()
                .join(","),
            h.port.map_or(String::new(), |p| format!(" port={p}"))
        );
    }
    if u.proxy_protocol {
        let _ = writeln!(o, "  proxy_protocol v2");
    }
    if !u.source.is_empty() {
        let _ = writeln!(
            o,
            "  source {} address(es), {} .. {}",
            u.source.len(),
            u.source[0],
            u.source[u.source.len() - 1]
        );
    }
    for p in &u.peers {
        let _ = writeln!(
            o,
            "  server {} weight={} max_fails={} fail_timeout={} max_conns={}{}{}",
            p.addr,
            p.weight,
            p.max_fails,
            fmt_duration(p.fail_timeout),
            p.max_conns,
            if p.backup { " backup" } else { "" },
            if p.down { " down" } else { "" }
        );
    }
}
