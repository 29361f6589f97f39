//! nginx's `upstream` blocks and `proxy_pass` targets as `[[upstream]]` tables: balancing,
//! server parameters, keepalive, the check module's health checks, and what locations bring to
//! an upstream (`proxy_bind`, `proxy_pass https://` with its `proxy_ssl_*`).

use super::*;

impl Translator {
    pub(super) fn upstream(&mut self, d: &Directive) -> Result<(), ParseError> {
        let a = self.args(d, 1..=1)?;
        let name = a[0].clone();
        if self.upstreams.iter().any(|u| u.name == name) {
            return Err(err(&d.at, format!("duplicate upstream \"{name}\"")));
        }
        let mut t = Table::default();
        t.set(
            "name",
            V::S(name.clone()),
            format!("{}: upstream {name}", d.at),
        );
        let mut servers = Vec::new();
        let mut health = Table::default();
        let mut health_at = None;
        let mut health_more: Vec<String> = Vec::new();
        let mut hashed = false;
        for e in d.block.as_deref().unwrap_or_default() {
            match e.name.as_str() {
                "server" => {
                    if let Some(s) = self.peer(e)? {
                        servers.push((s, e.at.clone()));
                    }
                }
                "ip_hash" => t.set(
                    "balance",
                    V::S("ip_hash".into()),
                    format!("{}: ip_hash", e.at),
                ),
                "least_conn" => t.set(
                    "balance",
                    V::S("least_conn".into()),
                    format!("{}: least_conn", e.at),
                ),
                "hash" => {
                    self.hash(e, &mut t)?;
                    hashed = true;
                }
                "random" => self.warn(
                    e,
                    "ringway has no random balancing: round robin (the default) is used",
                ),
                "keepalive" => {
                    t.set(
                        "keepalive",
                        V::I(self.one_int(e)?),
                        format!("{}: idle connections kept per worker", e.at),
                    );
                }
                "keepalive_timeout" => t.set(
                    "keepalive_timeout",
                    dur(self.time(e)?),
                    format!("{}: keepalive_timeout", e.at),
                ),
                "keepalive_requests" => {
                    t.set(
                        "keepalive_requests",
                        V::I(self.one_int(e)?),
                        format!("{}: keepalive_requests", e.at),
                    );
                }
                "check" => {
                    health_at = Some(e.at.clone());
                    self.check(e, &mut health)?;
                }
                "check_http_send" | "check_http_expect_alive" => {
                    self.check_http(e, &mut health)?;
                    health_more.push(format!("{}: {}", e.at, e.name));
                }
                "check_keepalive_requests" | "check_fastcgi_param" => self.warn(
                    e,
                    "not a ringway health check setting: each check is a new connection",
                ),
                "zone" => self.warn(e, "ringway's workers share server state without a zone"),
                _ => self.other(e),
            }
        }
        if servers.is_empty() {
            return Err(err(
                &d.at,
                format!("no servers are inside upstream \"{name}\""),
            ));
        }
        if hashed {
            self.no_backup_with(&mut servers, d, "hash");
        }
        let ip_hash = matches!(t.get("balance"), Some(V::S(b)) if b == "ip_hash");
        if ip_hash
            && servers
                .iter()
                .any(|(s, _)| matches!(s, V::T(r) if r.iter().any(|(k, _)| k == "backup")))
        {
            self.warn(
                d,
                "ip_hash with a backup server: nginx -t refuses this combination; ringway accepts it and sends a client to a backup only when no primary can take it",
            );
        }
        if let Some(at) = health_at {
            if health.get("type").is_none() {
                health.set("type", V::S("tcp".into()), "");
            }
            let mut note = format!("{at}: check (nginx_upstream_check_module)");
            for m in &health_more {
                note += &format!(", {m}");
            }
            t.set("health_check", health.inline(), note);
        }
        self.upstreams.push(Upstream {
            name,
            table: t,
            servers,
            source: None,
            tls: None,
        });
        Ok(())
    }

    /// `hash KEY [consistent]` as `balance = "hash"` and its `hash` table.
    fn hash(&mut self, e: &Directive, t: &mut Table) -> Result<(), ParseError> {
        let a = self.args(e, 1..=2)?;
        let mut h = Table::default();
        h.set("key", V::S(a[0].clone()), "");
        if a.get(1).map(String::as_str) == Some("consistent") {
            h.set("consistent", V::B(true), "");
        } else if a.len() == 2 {
            return Err(err(&e.at, format!("hash: unexpected {:?}", a[1])));
        }
        t.set("balance", V::S("hash".into()), format!("{}: hash", e.at));
        t.set("hash", h.inline(), "");
        Ok(())
    }

    /// nginx_upstream_check_module's `check` as ringway's health check settings.
    fn check(&mut self, e: &Directive, health: &mut Table) -> Result<(), ParseError> {
        for w in &e.args {
            let (k, v) = w.split_once('=').unwrap_or((w, ""));
            let ms = |v: &str| {
                v.parse::<u64>()
                    .map_err(|_| err(&e.at, format!("check: invalid {k}={v:?} (milliseconds)")))
            };
            match k {
                "interval" => health.set("interval", dur(ms(v)?), ""),
                "timeout" => health.set("timeout", dur(ms(v)?), ""),
                "rise" | "fall" => health.set(k, V::I(self.int(e, v)?), ""),
                "port" => health.set("port", V::I(self.int(e, v)?), ""),
                "type" => match v {
                    "http" | "tcp" => health.set("type", V::S(v.into()), ""),
                    _ => {
                        self.warn(e, format!("check type={v}: ringway checks by tcp (a connect) or http; tcp is used"));
                        health.set("type", V::S("tcp".into()), "");
                    }
                },
                "default_down" => {
                    if v == "false" {
                        self.warn(e, "default_down=false: ringway starts servers as up and takes them out after fall failures; this is what it does");
                    }
                }
                _ => self.warn(e, format!("check {k}: not a ringway health check setting")),
            }
        }
        Ok(())
    }

    /// `check_http_send` (the request, made a whole one) and `check_http_expect_alive` (the
    /// status classes that pass).
    fn check_http(&mut self, e: &Directive, health: &mut Table) -> Result<(), ParseError> {
        if e.name == "check_http_send" {
            let a = self.args(e, 1..=1)?;
            // The check module sends the string as it is; a request written with bare
            // newlines (or whose \r\n escapes were lost) becomes a proper one.
            let mut r = a[0].replace("\r\n", "\n").replace('\n', "\r\n");
            if !r.ends_with("\r\n\r\n") {
                r = format!("{}\r\n\r\n", r.trim_end_matches("\r\n"));
            }
            health.set("request", V::S(r), "");
            return Ok(());
        }
        let mut list = Vec::new();
        for w in &e.args {
            match w.strip_prefix("http_") {
                Some(c @ ("2xx" | "3xx" | "4xx" | "5xx")) => list.push(V::S(c.into())),
                _ => {
                    return Err(err(
                        &e.at,
                        format!("check_http_expect_alive: unexpected {w:?}"),
                    ));
                }
            }
        }
        health.set("expect", V::L(list), "");
        Ok(())
    }

    fn no_backup_with(&mut self, servers: &mut [(V, Where)], d: &Directive, method: &str) {
        let mut any = false;
        for (s, _) in servers.iter_mut() {
            if let V::T(rows) = s
                && rows.iter().any(|(k, _)| k == "backup")
            {
                rows.retain(|(k, _)| k != "backup");
                any = true;
            }
        }
        if any {
            self.warn(
                d,
                format!("backup servers cannot be used with {method} (nginx refuses it too): imported as ordinary servers"),
            );
        }
    }

    /// `server ADDR [weight=] [max_fails=] [fail_timeout=] [backup] [down] [max_conns=]`.
    fn peer(&mut self, e: &Directive) -> Result<Option<V>, ParseError> {
        let a = self.args(e, 1..=10)?;
        let addr = &a[0];
        if addr.starts_with("unix:") {
            self.warn(
                e,
                "ringway connects to upstreams over TCP only: this server is left out",
            );
            return Ok(None);
        }
        let addr = with_port(addr, 80);
        let mut row: Vec<(String, V)> = vec![("addr".into(), V::S(addr))];
        for w in &a[1..] {
            let (k, v) = w.split_once('=').unwrap_or((w, ""));
            match k {
                "weight" | "max_fails" | "max_conns" => row.push((k.into(), V::I(self.int(e, v)?))),
                "fail_timeout" => row.push((
                    k.into(),
                    dur(nginx_time(v).map_err(|m| err(&e.at, format!("server: fail_timeout: {m}")))?),
                )),
                "backup" | "down" => row.push((k.into(), V::B(true))),
                "resolve" | "service" => self.warn(
                    e,
                    format!("{k}: ringway resolves the name when the configuration is loaded (run, check, each reload), not on a timer"),
                ),
                "slow_start" | "route" | "drain" => self.warn(e, format!("{k}: not supported by ringway; the server takes its share at once")),
                _ => return Err(err(&e.at, format!("server: invalid parameter {w:?}"))),
            }
        }
        Ok(Some(V::T(row)))
    }

    /// The upstream a `proxy_pass` names, made from its host when no upstream block has it.
    pub(super) fn proxy_pass(
        &mut self,
        d: &Directive,
        path: &str,
        inh: &Inherit,
    ) -> Result<Option<String>, ParseError> {
        let a = self.args(d, 1..=1)?;
        let url = a[0].as_str();
        let (tls, rest) = if let Some(r) = url.strip_prefix("http://") {
            (false, r)
        } else if let Some(r) = url.strip_prefix("https://") {
            (true, r)
        } else {
            return Err(err(
                &d.at,
                format!("proxy_pass: {url:?} is not an http:// or https:// URL"),
            ));
        };
        if url.contains('$') {
            self.warn(
                d,
                "proxy_pass with variables is not supported: this location is left out",
            );
            return Ok(None);
        }
        if rest.starts_with("unix:") {
            self.warn(
                d,
                "ringway connects to upstreams over TCP only: this location is left out",
            );
            return Ok(None);
        }
        let (host, uri) = match rest.find('/') {
            Some(i) => (&rest[..i], Some(&rest[i..])),
            None => (rest, None),
        };
        if host.is_empty() {
            return Err(err(&d.at, format!("proxy_pass: no host in {url:?}")));
        }
        if let Some(u) = uri
            && u != path
        {
            self.warn(
                d,
                format!("the URI part ({u}) is not applied: ringway passes the request's path unchanged (nginx would replace {path} with {u})"),
            );
        }
        // An upstream block of that name, else one made from host:port (reused by the next
        // proxy_pass to the same place).
        let implicit = host.replace([':', '[', ']'], "_");
        let ui = match self.upstreams.iter().position(|u| u.name == host) {
            Some(u) => u,
            None => match self.upstreams.iter().position(|u| u.name == implicit) {
                Some(u) => u,
                None => {
                    let mut t = Table::default();
                    t.set(
                        "name",
                        V::S(implicit.clone()),
                        format!("{}: proxy_pass {url} (no upstream block: one server)", d.at),
                    );
                    self.upstreams.push(Upstream {
                        name: implicit,
                        table: t,
                        servers: vec![(
                            V::T(vec![(
                                "addr".into(),
                                V::S(with_port(host, if tls { 443 } else { 80 })),
                            )]),
                            d.at.clone(),
                        )],
                        source: None,
                        tls: None,
                    });
                    self.upstreams.len() - 1
                }
            },
        };
        let name = self.upstreams[ui].name.clone();
        self.proxy_bind(inh, ui);
        self.upstream_tls(d, inh, ui, tls, host);
        Ok(Some(name))
    }

    /// `proxy_bind` (a fixed local address) as upstream `ui`'s `source`.
    fn proxy_bind(&mut self, inh: &Inherit, ui: usize) {
        let name = self.upstreams[ui].name.clone();
        if let Some(b) = &inh.bind {
            let src = b.args[0].clone();
            if src == "off" {
            } else if src.contains('$') || b.args.len() > 1 {
                self.warn(b, "ringway binds upstream sockets to fixed local addresses only (no variables, no transparent)");
            } else {
                let src = src.split(':').next().unwrap_or("").to_string();
                match &self.upstreams[ui].source {
                    Some((s, _)) if *s != src => self.warn(
                        b,
                        format!("upstream {name} is bound to {s} by another location; ringway binds per upstream, this one is left out"),
                    ),
                    _ => self.upstreams[ui].source = Some((src, format!("{}: proxy_bind", b.at))),
                }
            }
        }
    }

    /// Upstream `ui`'s `tls` when `proxy_pass https://host` reaches it: verify, ca and the
    /// name sent and verified (nginx's proxy_ssl_*).
    fn upstream_tls(&mut self, d: &Directive, inh: &Inherit, ui: usize, tls: bool, host: &str) {
        let name = self.upstreams[ui].name.clone();
        if tls {
            let mut t = Table::default();
            let verify = inh.ssl_verify.unwrap_or(false);
            t.set("verify", V::B(verify), "");
            if let Some(ca) = &inh.ssl_ca {
                t.set("ca", V::S(ca.clone()), "");
            }
            // nginx sends SNI with proxy_ssl_server_name on and verifies with proxy_ssl_verify
            // on, both against proxy_ssl_name or else the proxy_pass host; ringway's sni is the
            // name sent and verified (without it the address is verified, no SNI sent).
            let host_name = host.rsplit_once(':').map_or(host, |(h, _)| h);
            let by_name = inh.ssl_server_name.unwrap_or(false) || verify;
            if let Some(n) = inh.ssl_name.clone().or_else(|| {
                host_name
                    .parse::<std::net::IpAddr>()
                    .is_err()
                    .then(|| host_name.to_string())
            }) && by_name
            {
                t.set("sni", V::S(n), "");
            }
            if !verify {
                self.warn(d, "nginx does not verify upstream certificates (proxy_ssl_verify off); the import keeps that: set verify = true and ca to verify");
            }
            let note = format!("{}: proxy_pass https://", d.at);
            if self.upstreams[ui]
                .tls
                .as_ref()
                .is_some_and(|(old, _)| old.render() != t.render())
            {
                self.warn(d, format!("upstream {name} has other TLS settings from another location; ringway keeps them per upstream: the first are used"));
            } else {
                self.upstreams[ui].tls = Some((t, note));
            }
        } else if self.upstreams[ui].tls.is_some() {
            self.warn(d, format!("upstream {name} is reached over https:// by another location; ringway's TLS is per upstream"));
        }
    }
}
