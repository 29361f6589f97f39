//! nginx's `server` and `location` blocks as `[[server]]` and `[[server.location]]`: listen
//! addresses and their TLS, names, client limits, the real client address, timeouts, limits,
//! and the `proxy_set_header` lines ringway's own headers make unnecessary.

use super::*;

impl Translator {
    pub(super) fn server(
        &mut self,
        d: &Directive,
        block: &[Directive],
        outer: &Inherit,
    ) -> Result<(), ParseError> {
        let mut inh = outer.inner();
        let mut listens: Vec<(String, Vec<String>, Where)> = Vec::new();
        let mut names: Vec<V> = Vec::new();
        let mut names_at = None;
        // `http2 on;` (nginx 1.25.1+): every address of the block; and its stream limit.
        let mut http2_on = None;
        let mut http2_streams = None;
        for e in block {
            match e.name.as_str() {
                "location" => {}
                "http2" => {
                    let a = self.args(e, 1..=1)?;
                    if a[0] != "on" {
                        self.recognised.push(format!(
                            "{}: http2 {}: HTTP/1.1 only, ringway's default",
                            e.at, a[0]
                        ));
                    }
                    http2_on = Some((a[0] == "on", e.at.clone()));
                }
                "http2_max_concurrent_streams" => {
                    let a = self.args(e, 1..=1)?;
                    match a[0].parse::<u32>() {
                        Ok(n) if n >= 1 => {
                            let max = u32::from(ringway_proxy::config::HTTP2_STREAMS_MAX);
                            if n > max {
                                self.warn(e, format!("ringway takes at most {max} streams at once on one connection: {max}"));
                            }
                            http2_streams = Some((n.min(max), e.at.clone()));
                        }
                        _ => self.warn(e, "not a number of streams: left out"),
                    }
                }
                "listen" => {
                    let a = self.args(e, 1..=16)?;
                    if a[0].starts_with("unix:") {
                        self.warn(
                            e,
                            "ringway listens on TCP addresses only: this one is left out",
                        );
                        continue;
                    }
                    let addr = self.listen_addr(e, &a[0])?;
                    listens.push((addr, a[1..].to_vec(), e.at.clone()));
                }
                "server_name" => {
                    names_at = Some(e.at.clone());
                    self.server_names(e, &mut names);
                }
                _ => self.common(e, &mut inh)?,
            }
        }
        if listens.is_empty() {
            listens.push(("0.0.0.0:80".into(), Vec::new(), d.at.clone()));
            self.warnings.push(format!(
                "{}: server without listen: nginx's default *:80 is used",
                d.at
            ));
        }
        let ssl_on = block
            .iter()
            .any(|e| e.name == "ssl" && e.args.first().map(String::as_str) == Some("on"));
        let Split {
            plain,
            tls,
            proxy_protocol,
            default_server,
            listen_at,
            http2_at,
        } = self.split_listens(&listens, ssl_on);
        let mut locations = Vec::new();
        self.auth_targets(block);
        for e in block.iter().filter(|e| e.name == "location") {
            self.location(e, "", &inh, &mut locations)?;
        }
        if locations.is_empty() {
            self.warn(
                d,
                "a server without a proxy_pass location: not imported (ringway proxies; it serves nothing itself)",
            );
            return Ok(());
        }
        let mut base = Table::default();
        if let Some(pat) = &proxy_protocol {
            base.set(
                "proxy_protocol",
                V::B(true),
                format!("{pat}: listen … proxy_protocol"),
            );
        }
        self.real_ip(d, &inh, proxy_protocol.is_some(), &mut base);
        if !names.is_empty() {
            base.set(
                "server_name",
                V::L(names),
                names_at
                    .map(|a| format!("{a}: server_name"))
                    .unwrap_or_default(),
            );
        }
        server_timeouts(&inh, &mut base);
        for (addrs, is_tls) in [(plain, false), (tls, true)] {
            if addrs.is_empty() {
                continue;
            }
            let mut t = Table::default();
            let k = usize::from(is_tls);
            t.set(
                "listen",
                V::L(addrs),
                format!("{}: server; listen {}", d.at, listen_at[k].join(", ")),
            );
            t.rows.extend(base.rows.iter().cloned());
            if is_tls {
                let (tls_v, tls_note) = self.server_tls(d, &inh)?;
                t.set("tls", tls_v, tls_note);
            }
            let http2 = match (&http2_on, &http2_at[k]) {
                (Some((on, at)), _) => on.then(|| format!("{at}: http2 on")),
                (None, Some(at)) => Some(format!("{at}: listen … http2")),
                (None, None) => None,
            };
            if let Some(note) = http2 {
                t.set("http2", V::B(true), note);
                if let Some((n, at)) = &http2_streams {
                    t.set(
                        "http2_max_concurrent_streams",
                        V::I(i64::from(*n)),
                        format!("{at}: http2_max_concurrent_streams"),
                    );
                }
            }
            self.servers.push(Server {
                at: d.at.clone(),
                table: t,
                locations: locations.clone(),
                default_server: default_server[k],
            });
        }
        Ok(())
    }

    /// `server_name`'s names as ringway takes them (`.example.com` is the name and its
    /// subdomains; regular expressions and trailing wildcards are left out, with a warning).
    fn server_names(&mut self, e: &Directive, names: &mut Vec<V>) {
        for n in &e.args {
            if n == "_" || n.is_empty() || n == "\"\"" {
                continue;
            } else if n.starts_with('~') {
                self.warn(
                    e,
                    format!("regular-expression names ({n}) are not supported: left out"),
                );
            } else if let Some(domain) = n.strip_prefix('.') {
                names.push(V::S(domain.to_ascii_lowercase()));
                names.push(V::S(format!("*{n}").to_ascii_lowercase()));
            } else if n.ends_with(".*") {
                self.warn(
                    e,
                    format!("trailing wildcards ({n}) are not supported: left out"),
                );
            } else {
                names.push(V::S(n.to_ascii_lowercase()));
            }
        }
    }

    /// The block's `listen`s, split by kind: one ringway server per kind, since nginx may put
    /// `listen 80` and `listen 443 ssl` in one block and ringway's tls belongs to all of a
    /// server's addresses.
    fn split_listens(&mut self, listens: &[(String, Vec<String>, Where)], ssl_on: bool) -> Split {
        // One ringway server per kind of listener: nginx may put `listen 80` and `listen 443
        // ssl` in one block; ringway's tls belongs to all of a server's addresses.
        let mut plain: Vec<V> = Vec::new();
        let mut tls: Vec<V> = Vec::new();
        let mut proxy_protocol = None;
        let mut default_server = [false; 2];
        let mut listen_at: [Vec<String>; 2] = [Vec::new(), Vec::new()];
        let mut http2_at: [Option<String>; 2] = [None, None];
        for (addr, params, at) in listens {
            let mut is_tls = ssl_on;
            for p in params {
                let (k, _) = p.split_once('=').unwrap_or((p, ""));
                match k {
                    "ssl" => is_tls = true,
                    "default_server" | "default" => {}
                    "proxy_protocol" => proxy_protocol = Some(at.clone()),
                    "reuseport" => {}
                    // The block's server speaks HTTP/2 on this kind of address (ALPN h2 on
                    // TLS, h2c with prior knowledge on plain ones), as nginx does.
                    "http2" => {}
                    "quic" | "http3" => self.warnings.push(format!(
                        "{at}: listen … {k}: ringway does not speak QUIC; this address is left out"
                    )),
                    "backlog" => self.warnings.push(format!(
                        "{at}: listen … backlog=: ringway asks for the kernel's net.core.somaxconn (`ringway preflight` checks it)"
                    )),
                    _ => self.warnings.push(format!(
                        "{at}: listen … {p}: not a ringway listen setting; left out"
                    )),
                }
            }
            if params.iter().any(|p| p == "quic" || p == "http3") {
                continue;
            }
            if params.iter().any(|p| p == "http2") {
                http2_at[usize::from(is_tls)].get_or_insert_with(|| at.to_string());
            }
            if params
                .iter()
                .any(|p| p == "default_server" || p == "default")
            {
                default_server[usize::from(is_tls)] = true;
            }
            listen_at[usize::from(is_tls)].push(at.to_string());
            if is_tls { &mut tls } else { &mut plain }.push(V::S(addr.clone()));
        }
        Split {
            plain,
            tls,
            proxy_protocol,
            default_server,
            listen_at,
            http2_at,
        }
    }

    /// `set_real_ip_from` and `real_ip_header` as `trusted_proxies` and `real_ip_header`.
    fn real_ip(&mut self, d: &Directive, inh: &Inherit, proxy_protocol: bool, base: &mut Table) {
        match &inh.set_real_ip_from {
            Some(list) if !list.is_empty() => {
                let v = list
                    .iter()
                    .map(|x| V::S(x.args[0].clone()))
                    .filter(|v| !matches!(v, V::S(s) if s.starts_with("unix:")))
                    .collect();
                base.set(
                    "trusted_proxies",
                    V::L(v),
                    list.iter()
                        .map(|x| format!("{}: set_real_ip_from", x.at))
                        .collect::<Vec<_>>()
                        .join(", "),
                );
            }
            _ if proxy_protocol || inh.real_ip_header.is_some() => {
                base.set(
                    "trusted_proxies",
                    V::L(vec![V::S("0.0.0.0/0".into()), V::S("::/0".into())]),
                    "nginx takes the PROXY header / real-IP header from any peer without set_real_ip_from: narrow this to your balancers",
                );
                self.warnings.push(format!(
                    "{}: no set_real_ip_from: nginx trusts any peer's PROXY header or real-IP header; so does the import (trusted_proxies = everything): narrow it to your balancers",
                    d.at
                ));
            }
            _ => {}
        }
        if let Some(h) = &inh.real_ip_header {
            match h.args[0].to_ascii_lowercase().as_str() {
                "x-forwarded-for" => base.set("real_ip_header", V::S("X-Forwarded-For".into()), format!("{}: real_ip_header", h.at)),
                "x-real-ip" => base.set("real_ip_header", V::S("X-Real-IP".into()), format!("{}: real_ip_header", h.at)),
                "proxy_protocol" => {
                    if !proxy_protocol {
                        self.warn(h, "real_ip_header proxy_protocol without listen … proxy_protocol: no PROXY header to take it from");
                    } else {
                        self.recognised.push(format!(
                            "{}: real_ip_header proxy_protocol: what proxy_protocol = true does (the PROXY header's address is the client)",
                            h.at
                        ));
                    }
                }
                _ => self.warn(h, "ringway takes the client address from X-Forwarded-For or X-Real-IP (or the PROXY header)"),
            }
        }
    }

    /// The server's `tls` and where it came from.
    fn server_tls(&mut self, d: &Directive, inh: &Inherit) -> Result<(V, String), ParseError> {
        let certs = inh.certs.clone().unwrap_or_default();
        let keys = inh.keys.clone().unwrap_or_default();
        if certs.is_empty() || keys.is_empty() {
            return Err(err(
                &d.at,
                "server with listen … ssl has no ssl_certificate / ssl_certificate_key (nginx -t refuses it too)",
            ));
        }
        if certs.len() != keys.len() {
            return Err(err(
                &d.at,
                "ssl_certificate and ssl_certificate_key are not paired one to one",
            ));
        }
        let mut note: Vec<String> = certs
            .iter()
            .map(|(_, at)| format!("{at}: ssl_certificate"))
            .chain(
                keys.iter()
                    .map(|(_, at)| format!("{at}: ssl_certificate_key")),
            )
            .collect();
        let one = |v: Vec<(String, Where)>| {
            if v.len() == 1 {
                V::S(v[0].0.clone())
            } else {
                V::L(v.into_iter().map(|(p, _)| V::S(p)).collect())
            }
        };
        let mut t: Vec<(String, V)> = vec![("cert".into(), one(certs)), ("key".into(), one(keys))];
        if let Some(p) = &inh.protocols {
            let mut keep = Vec::new();
            for w in &p.args {
                match w.as_str() {
                    "TLSv1.2" | "TLSv1.3" => keep.push(V::S(w.clone())),
                    _ => self.warn(
                        p,
                        format!("{w}: rustls speaks TLS 1.2 and 1.3 only; {w} is left out"),
                    ),
                }
            }
            if keep.is_empty() {
                return Err(err(
                    &p.at,
                    "ssl_protocols: none of TLSv1.2, TLSv1.3 is listed",
                ));
            }
            t.push(("protocols".into(), V::L(keep)));
            note.push(format!("{}: ssl_protocols", p.at));
        }
        Ok((V::T(t), note.join(", ")))
    }

    fn listen_addr(&mut self, e: &Directive, a: &str) -> Result<String, ParseError> {
        use std::net::{SocketAddr, ToSocketAddrs};
        if let Ok(p) = a.parse::<u16>() {
            return Ok(format!("0.0.0.0:{p}"));
        }
        if let Some(p) = a.strip_prefix("*:") {
            let p: u16 = p
                .parse()
                .map_err(|_| err(&e.at, format!("listen: invalid port in {a:?}")))?;
            return Ok(format!("0.0.0.0:{p}"));
        }
        let full = with_port(a, 80);
        if let Ok(s) = full.parse::<SocketAddr>() {
            return Ok(s.to_string());
        }
        match full.to_socket_addrs().ok().and_then(|mut i| i.next()) {
            Some(s) => {
                self.warn(
                    e,
                    format!("ringway listens on addresses: {a} is written as {s} (resolved now)"),
                );
                Ok(s.to_string())
            }
            None => Err(err(&e.at, format!("listen: invalid address {a:?}"))),
        }
    }

    /// A `location` (and the ones nested in it, flattened: ringway's are prefixes, longest
    /// first).
    fn location(
        &mut self,
        d: &Directive,
        outer_path: &str,
        outer: &Inherit,
        out: &mut Vec<(Where, Table)>,
    ) -> Result<(), ParseError> {
        let block = d.block.as_deref().unwrap_or_default();
        if block.iter().any(|e| e.name == "internal") {
            self.warn(d, "internal: clients cannot reach it, so it is not imported as a location; a location whose auth_request names it carries its proxy_pass (ringway's subrequest goes without a body and with X-Original-URI and X-Original-Method of its own)");
            return Ok(());
        }
        let Some(path) = self.location_path(d, outer_path)? else {
            return Ok(());
        };
        let mut inh = outer.inner();
        let mut pass = None;
        for e in block {
            match e.name.as_str() {
                "location" => {}
                "proxy_pass" => pass = Some(e),
                "grpc_pass" | "fastcgi_pass" | "uwsgi_pass" | "scgi_pass" | "memcached_pass" => {
                    self.warn(
                        e,
                        "ringway proxies HTTP and WebSockets only: this location is left out",
                    );
                    return Ok(());
                }
                _ => self.common(e, &mut inh)?,
            }
        }
        for e in block.iter().filter(|e| e.name == "location") {
            self.location(e, &path, &inh, out)?;
        }
        let Some(pass) = pass else {
            if !block.iter().any(|e| e.name == "location") {
                self.warn(d, "no proxy_pass: ringway only proxies, this location is left out (requests for it go to the longest matching proxied prefix, or 404)");
            }
            return Ok(());
        };
        let Some(upstream) = self.proxy_pass(pass, &path, &inh)? else {
            return Ok(());
        };
        let mut t = Table::default();
        t.set(
            "path",
            V::S(path.clone()),
            format!("{}: location {path}", d.at),
        );
        t.set(
            "upstream",
            V::S(upstream),
            format!("{}: proxy_pass", pass.at),
        );
        let read_ms = self.location_timeouts(&inh, &mut t);
        self.location_limits(&inh, &mut t)?;
        if self.auth_request(d, &inh, &mut t)?.is_err() {
            return Ok(());
        }
        self.headers(d, &inh, &mut t);
        if read_ms >= 120_000 {
            t.comments.push(format!(
                "read_timeout {} closes a silent WebSocket; behind NAT or a balancer with a shorter idle timer, add:\n# heartbeat = {{ interval = \"25s\", timeout = \"10s\" }}   # ringway pings quiet clients itself",
                ringway_proxy::config::fmt_duration(std::time::Duration::from_millis(read_ms))
            ));
        }
        out.push((d.at.clone(), t));
        Ok(())
    }

    /// The prefix a `location` matches (exact matches imported as prefixes; regular
    /// expressions and named locations left out: None), checked to start with `/`.
    fn location_path(
        &mut self,
        d: &Directive,
        outer_path: &str,
    ) -> Result<Option<String>, ParseError> {
        let a = self.args(d, 1..=2)?;
        let path = match (a[0].as_str(), a.get(1)) {
            ("=", Some(p)) => {
                self.warn(
                    d,
                    "an exact match (=) is imported as a prefix: longer paths under it match too",
                );
                p.clone()
            }
            ("^~", Some(p)) => p.clone(),
            ("~" | "~*", Some(_)) => {
                self.warn(d, "regular-expression locations are not supported: left out (its requests go to the longest matching prefix)");
                return Ok(None);
            }
            ("@", _) | (_, None) if a[0].starts_with('@') => {
                self.warn(d, "named locations (error_page / try_files targets) have no meaning in ringway: left out");
                return Ok(None);
            }
            (p, None) => p.to_string(),
            (m, Some(_)) => return Err(err(&d.at, format!("location: unknown modifier {m:?}"))),
        };
        if !path.starts_with('/') {
            return Err(err(
                &d.at,
                format!("location: {path:?} does not start with /"),
            ));
        }
        if !outer_path.is_empty() && !path.starts_with(outer_path) {
            self.warn(
                d,
                format!(
                    "nested location {path} is outside {outer_path}: imported as its own prefix"
                ),
            );
        }
        Ok(Some(path))
    }

    /// The location's timeouts (nginx's 60 s written out where ringway's default differs) and
    /// proxy_next_upstream; the read timeout in ms.
    fn location_timeouts(&mut self, inh: &Inherit, t: &mut Table) -> u64 {
        // nginx's defaults where ringway's differ (connect 60s, read 60s, send 60s).
        let timeout = |v: &Option<(u64, Where)>, nginx: &str| match v {
            Some((ms, at)) => (dur(*ms), format!("{at}: {nginx}")),
            None => (
                dur(60_000),
                format!("nginx's default {nginx}, written out (ringway's own default differs)"),
            ),
        };
        let (v, c) = timeout(&inh.connect, "proxy_connect_timeout");
        t.set("connect_timeout", v, c);
        let (v, c) = timeout(&inh.read, "proxy_read_timeout");
        let read_ms = inh.read.as_ref().map_or(60_000, |(ms, _)| *ms);
        t.set("read_timeout", v, c);
        let (v, c) = timeout(&inh.send, "proxy_send_timeout");
        t.set("send_timeout", v, c);
        t.set_from("body_timeout", &inh.body, "client_body_timeout", dur);
        if let Some(n) = &inh.next_upstream {
            let mut list = Vec::new();
            for w in &n.args {
                match w.as_str() {
                    "error" | "timeout" | "http_502" | "http_503" | "http_504" | "off" => list.push(V::S(w.clone())),
                    "non_idempotent" => self.warn(n, "non_idempotent: ringway never sends a request with a body or a non-idempotent method again once its bytes went up"),
                    _ => self.warn(n, format!("{w}: ringway goes on to the next server on error, timeout, http_502, http_503, http_504 only")),
                }
            }
            if !list.is_empty() {
                t.set(
                    "next_upstream",
                    V::L(list),
                    format!("{}: proxy_next_upstream", n.at),
                );
            }
        }
        t.set_from(
            "next_upstream_tries",
            &inh.next_tries,
            "proxy_next_upstream_tries",
            V::I,
        );
        t.set_from(
            "next_upstream_timeout",
            &inh.next_timeout,
            "proxy_next_upstream_timeout",
            dur,
        );
        read_ms
    }

    /// The location's limit_conn and limit_req.
    fn location_limits(&mut self, inh: &Inherit, t: &mut Table) -> Result<(), ParseError> {
        self.limit(
            t,
            "limit_conn",
            &inh.limit_conn,
            &inh.limit_conn_status,
            |me, l| {
                Ok(vec![
                    ("zone".into(), V::S(l.args[0].clone())),
                    ("max".into(), V::I(me.int(l, &l.args[1])?)),
                ])
            },
        )?;
        self.limit(t, "limit_req", &inh.limit_req, &inh.limit_req_status, |me, l| {
            let mut lt = Vec::new();
            for w in &l.args {
                let (k, v) = w.split_once('=').unwrap_or((w, ""));
                match k {
                    "zone" => lt.push(("zone".into(), V::S(v.into()))),
                    "burst" => lt.push(("burst".into(), V::I(me.int(l, v)?))),
                    "nodelay" => lt.push(("nodelay".into(), V::B(true))),
                    "delay" => me.warn(l, "delay=N: ringway either delays every request within the burst or none (nodelay)"),
                    _ => return Err(err(&l.at, format!("limit_req: unexpected {w:?}"))),
                }
            }
            Ok(lt)
        })?;
        Ok(())
    }

    /// `key` (limit_conn, limit_req) in a location: its first directive in force (`fields`
    /// reads its arguments) with the `*_status` in force; ringway takes one per location, so
    /// any other is warned about.
    fn limit(
        &mut self,
        t: &mut Table,
        key: &str,
        list: &Option<Vec<Directive>>,
        status: &Option<(i64, Where)>,
        fields: impl Fn(&mut Self, &Directive) -> Result<Vec<(String, V)>, ParseError>,
    ) -> Result<(), ParseError> {
        let Some((first, rest)) = list.as_deref().and_then(<[Directive]>::split_first) else {
            return Ok(());
        };
        for l in rest {
            self.warn(
                l,
                format!("ringway takes one {key} per location: this one is left out"),
            );
        }
        let mut lt = fields(self, first)?;
        let mut note = format!("{}: {key}", first.at);
        if let Some((s, at)) = status {
            lt.push(("status".into(), V::I(*s)));
            note += &format!(", {at}: {key}_status");
        }
        t.set(key, V::T(lt), note);
        Ok(())
    }

    /// `proxy_set_header` lines: ringway's own headers recognised, others warned about.
    fn headers(&mut self, loc: &Directive, inh: &Inherit, t: &mut Table) {
        let list = inh.headers.clone().unwrap_or_default();
        let mut seen = Vec::new();
        let mut recognised = Vec::new();
        for h in &list {
            let name = h.args[0].to_ascii_lowercase();
            let v = h.args[1].as_str();
            let var = v.strip_prefix('$').unwrap_or("");
            if self.auth_vars.iter().any(|a| a == var) {
                // What the auth answer gave: written as auth_request's `set`.
                seen.push(name);
                continue;
            }
            let verdict: Result<(), String> = match name.as_str() {
                "upgrade" if v == "$http_upgrade" => Ok(()),
                "connection" if self.maps.get(var) == Some(&true) => Ok(()),
                "connection" if v.eq_ignore_ascii_case("upgrade") => Err(
                    "ringway sends Connection: upgrade only with an upgrade and close otherwise (the map $http_upgrade rule of the playbook's section 3), not upgrade on every request".into(),
                ),
                "connection" if v.is_empty() || v.eq_ignore_ascii_case("close") => Ok(()),
                "host" if v == "$host" || v == "$http_host" => Ok(()),
                "host" => Err(format!(
                    "ringway passes the client's Host as it came; it does not send {v}"
                )),
                "x-real-ip" if v == "$remote_addr" => Ok(()),
                "x-forwarded-for" if v == "$proxy_add_x_forwarded_for" => Ok(()),
                "x-forwarded-for" if v == "$remote_addr" => Err(
                    "ringway appends the client address to the X-Forwarded-For the client sent ($proxy_add_x_forwarded_for)".into(),
                ),
                "x-forwarded-proto" if v == "$scheme" => Ok(()),
                "connection" => Err(format!(
                    "{v} is {}; ringway sends Connection: upgrade with an upgrade and close otherwise (the map $http_upgrade rule of the playbook's section 3)",
                    if self.maps.contains_key(var) {
                        "not the map $http_upgrade rule"
                    } else {
                        "not defined in this configuration (nginx -t: unknown variable)"
                    }
                )),
                _ if self.maps.contains_key(var) => Err(format!(
                    "${var} comes from a map ringway does not have: {} is not sent",
                    h.args[0]
                )),
                _ => Err(format!(
                    "ringway sends no headers of its own making beyond Host, X-Real-IP, X-Forwarded-For, X-Forwarded-Proto and Upgrade/Connection: {} is not sent",
                    h.args[0]
                )),
            };
            match verdict {
                Ok(()) => {
                    recognised.push(format!("{} ({})", h.args[0], h.at));
                    seen.push(name);
                }
                Err(m) => {
                    seen.push(name);
                    self.warn(h, m);
                }
            }
        }
        if !recognised.is_empty() {
            t.comments.push(format!(
                "proxy_set_header {}: what ringway sends anyway",
                recognised.join(", ")
            ));
        }
        let added: Vec<&str> = ["X-Real-IP", "X-Forwarded-For", "X-Forwarded-Proto"]
            .into_iter()
            .filter(|n| !seen.contains(&n.to_ascii_lowercase()))
            .collect();
        if !seen.contains(&"host".to_string()) {
            self.warn(
                loc,
                "no proxy_set_header Host: nginx would send the upstream's name ($proxy_host); ringway passes the client's Host",
            );
        }
        if !added.is_empty() {
            self.warn(
                loc,
                format!(
                    "ringway also sends {} (this location did not set them)",
                    added.join(", ")
                ),
            );
        }
        if !seen.contains(&"upgrade".to_string()) || !seen.contains(&"connection".to_string()) {
            self.warn(
                loc,
                "without proxy_set_header Upgrade / Connection nginx does not pass a WebSocket upgrade; ringway does (location upgrade = [\"websocket\"])",
            );
        }
    }
}

/// The server's header limits and keep-alive, from nginx's client_header_timeout,
/// large_client_header_buffers, keepalive_timeout and keepalive_requests.
fn server_timeouts(inh: &Inherit, base: &mut Table) {
    base.set_from(
        "header_timeout",
        &inh.header_timeout,
        "client_header_timeout",
        dur,
    );
    if let Some((n, sz, at)) = &inh.header_buffers {
        let (n, sz) = (*n, *sz);
        base.set(
            "header_max",
            size(n * sz),
            format!("{at}: large_client_header_buffers: number x size"),
        );
        base.set("request_line_max", size(sz), "");
        base.set("header_line_max", size(sz), "");
    }
    base.set_from(
        "keepalive_timeout",
        &inh.keepalive_timeout,
        "keepalive_timeout",
        dur,
    );
    base.set_from(
        "keepalive_requests",
        &inh.keepalive_requests,
        "keepalive_requests",
        V::I,
    );
}

/// A server block's listen addresses by kind (plain, TLS), with what their parameters said.
struct Split {
    plain: Vec<V>,
    tls: Vec<V>,
    /// Where `listen … proxy_protocol` was.
    proxy_protocol: Option<Where>,
    /// A `default_server` among the plain, the TLS addresses.
    default_server: [bool; 2],
    /// Where each kind's listens were.
    listen_at: [Vec<String>; 2],
    /// Where a listen of each kind said `http2`.
    http2_at: [Option<String>; 2],
}
