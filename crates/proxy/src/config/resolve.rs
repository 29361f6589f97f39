//! Resolving what was written into what the workers run on: addresses parsed, durations
//! converted, names turned into indices, every cross-reference checked.

use super::*;

pub(super) fn resolve(cx: &Ctx<'_>, raw: raw::File) -> Result<Config, ConfigError> {
    let runtime = runtime(cx, &raw.runtime)?;
    let zones = limits::zones(cx, &raw)?;
    let mut upstreams = Vec::new();
    let mut by_name: HashMap<String, usize> = HashMap::new();
    for (ui, u) in raw.upstream.iter().enumerate() {
        let u = u.get_ref();
        let up = upstream::resolve(cx, ui, u)?;
        if by_name.insert(up.name.clone(), ui).is_some() {
            return Err(cx.err(
                u.name.span(),
                format!("upstream[{ui}].name"),
                format!("duplicate upstream name {:?}", up.name),
            ));
        }
        upstreams.push(up);
    }

    let mut warnings = Vec::new();
    let admin = admin::resolve(cx, &raw.admin, &mut warnings)?;
    let mut listeners: Vec<SocketAddr> = Vec::new();
    let mut servers = Vec::new();
    let mut server_tls = Vec::new();
    let mut listen_proxy = Vec::new();
    if raw.server.is_empty() {
        return Err(cx.err(0..0, "server", "at least one [[server]] is needed"));
    }
    for (si, s) in raw.server.iter().enumerate() {
        let (server, certs, proxy_protocol) = server(
            cx,
            si,
            s.get_ref(),
            &mut listeners,
            &by_name,
            &zones,
            &mut warnings,
        )?;
        listen_proxy.push((
            server.listen.clone(),
            proxy_protocol,
            s.get_ref().listen.span(),
        ));
        server_tls.push(certs);
        servers.push(server);
    }
    let mut listener_proxy = Vec::new();
    for (li, addr) in listeners.iter().enumerate() {
        let on: Vec<usize> = (0..servers.len())
            .filter(|&si| servers[si].listen.contains(&li))
            .collect();
        let wants: Vec<bool> = on.iter().map(|&si| listen_proxy[si].1).collect();
        if wants.iter().any(|w| *w) && !wants.iter().all(|w| *w) {
            let si = on[wants.iter().position(|w| !*w).unwrap_or(0)];
            return Err(cx.err(
                listen_proxy[si].2.clone(),
                format!("server[{si}].proxy_protocol"),
                format!(
                    "{addr} is shared with a server that has proxy_protocol = true: every server \
                     on one address must agree"
                ),
            ));
        }
        listener_proxy.push(wants.first().copied().unwrap_or(false).then(|| {
            on.iter()
                .flat_map(|&si| servers[si].trusted_proxies.iter().copied())
                .collect::<std::sync::Arc<[Cidr]>>()
        }));
    }
    let mut listener_tls = Vec::new();
    for (li, addr) in listeners.iter().enumerate() {
        let on: Vec<tls::OnAddress<'_>> = servers
            .iter()
            .enumerate()
            .filter(|(_, s)| s.listen.contains(&li))
            .map(|(si, s)| tls::OnAddress {
                index: si,
                names: &s.names,
                certs: server_tls[si].as_ref(),
                strict_sni: raw.server[si].get_ref().strict_sni.unwrap_or(false),
                http2: s.http2.is_some(),
                listen_span: raw.server[si].get_ref().listen.span(),
            })
            .collect();
        listener_tls.push(tls::listener(cx, *addr, &on)?);
    }
    let listen = (0..listeners.len())
        .map(|li| {
            let server = servers
                .iter()
                .find(|s| s.listen.contains(&li))
                .expect("every listener belongs to a server");
            let tls = listener_tls[li].is_some();
            // HTTP/2 is a property of the connection, before any Host is known: the listener
            // speaks it when any of its servers asks (nginx's `http2 on` is the same), with
            // the settings of the first that does.
            let http2 = servers
                .iter()
                .filter(|s| s.listen.contains(&li))
                .find_map(|s| s.http2);
            Listen::of(li, server, tls, listener_proxy[li].is_some(), http2)
        })
        .collect();
    for l in servers.iter_mut().flat_map(|s| s.locations.iter_mut()) {
        l.stats = LocationStats::new(runtime.workers);
    }
    let mut cfg = Config {
        source: cx.file.to_string(),
        runtime,
        tuning_apply: raw.tuning.apply.unwrap_or(false),
        admin,
        listeners,
        listener_tls,
        listener_proxy,
        listen,
        servers,
        upstreams,
        conn_zones: zones.0,
        req_zones: zones.1.into_iter().map(|(z, _)| z).collect(),
        warnings,
        message_rows: Default::default(),
    };
    cfg.index_message_rows();
    if cfg.runtime.upgrade_tunnels {
        tls::carry_keys(&mut cfg);
    }
    Ok(cfg)
}

/// `[runtime]`.
fn runtime(cx: &Ctx<'_>, rt: &raw::Runtime) -> Result<Runtime, ConfigError> {
    let workers = match &rt.workers {
        None => available_cpus(),
        Some(w) => match w.get_ref() {
            toml::Value::String(s) if s == "auto" => available_cpus(),
            toml::Value::Integer(n) if (1..=1024).contains(n) => *n as usize,
            _ => {
                return Err(cx.err(
                    w.span(),
                    "runtime.workers",
                    "expected \"auto\" or a number from 1 to 1024",
                ));
            }
        },
    };
    let max_connections = match &rt.max_connections {
        None => defaults::MAX_CONNECTIONS,
        Some(m) if (1..=100_000_000).contains(m.get_ref()) => *m.get_ref() as u32,
        Some(m) => {
            return Err(cx.err(
                m.span(),
                "runtime.max_connections",
                "expected a number from 1 to 100000000",
            ));
        }
    };
    let shutdown_grace = cx.duration(
        &rt.shutdown_grace,
        "runtime.shutdown_grace",
        defaults::SHUTDOWN_GRACE,
    )?;
    let buffer_size = cx.size(
        &rt.buffer_size,
        "runtime.buffer_size",
        u64::from(defaults::BUFFER_SIZE),
    )?;
    if !(1024..=1 << 20).contains(&buffer_size) {
        let span = rt.buffer_size.as_ref().map_or(0..0, |s| s.span());
        return Err(cx.err(span, "runtime.buffer_size", "must be between 1k and 1m"));
    }
    let buffers = match &rt.buffers {
        None => defaults::BUFFERS,
        Some(b) => {
            let n = *b.get_ref();
            if !(16..=32768).contains(&n) || !(n as u64).is_power_of_two() {
                return Err(cx.err(
                    b.span(),
                    "runtime.buffers",
                    "must be a power of two from 16 to 32768",
                ));
            }
            n as u16
        }
    };
    let drain_spread = cx.duration(
        &rt.drain_spread,
        "runtime.drain_spread",
        shutdown_grace / defaults::DRAIN_SPREAD_DIV,
    )?;
    if drain_spread > shutdown_grace {
        let span = rt.drain_spread.as_ref().map_or(0..0, |s| s.span());
        return Err(cx.err(
            span,
            "runtime.drain_spread",
            format!(
                "must not be longer than shutdown_grace ({}): what is left at the grace is closed",
                fmt_duration(shutdown_grace)
            ),
        ));
    }
    let (drain_code, drain_reason) = drain_close(cx, rt.drain_close.as_ref())?;
    let splice_min = cx.size(&rt.splice_min, "runtime.splice_min", defaults::SPLICE_MIN)?;
    Ok(Runtime {
        splice_min,
        workers,
        max_connections,
        shutdown_grace,
        buffer_size: buffer_size as u32,
        buffers,
        access_log: rt.access_log.unwrap_or(true),
        access_log_open: rt.access_log_open.unwrap_or(false),
        drain_spread,
        drain_code,
        drain_reason,
        upgrade_socket: match &rt.upgrade_socket {
            None => None,
            Some(p) if p.get_ref().trim().is_empty() => {
                return Err(cx.err(p.span(), "runtime.upgrade_socket", "an empty path"));
            }
            Some(p) => Some(std::path::PathBuf::from(p.get_ref())),
        },
        upgrade_tunnels: rt.upgrade_tunnels.unwrap_or(true),
    })
}

/// One `[[server]]` (`si` its index): its listen addresses are added to `listeners` (each
/// distinct address once); its certificates and whether it takes the PROXY protocol come back
/// beside it.
fn server(
    cx: &Ctx<'_>,
    si: usize,
    s: &raw::Server,
    listeners: &mut Vec<SocketAddr>,
    by_name: &HashMap<String, usize>,
    zones: &limits::Zones,
    warnings: &mut Vec<String>,
) -> Result<(Server, Option<tls::ServerCerts>, bool), ConfigError> {
    let f = format!("server[{si}]");
    if s.listen.get_ref().is_empty() {
        return Err(cx.err(
            s.listen.span(),
            format!("{f}.listen"),
            "needs at least one address",
        ));
    }
    let listen = listen_addrs(cx, &f, s, listeners)?;
    let names = server_names(cx, &f, s)?;
    let header_timeout = cx.timeout(
        &s.header_timeout,
        &format!("{f}.header_timeout"),
        defaults::HEADER_TIMEOUT,
    )?;
    let line_limit = |v: &Option<Spanned<toml::Value>>, name: &str, default: u32| {
        let field = format!("{f}.{name}");
        let n = cx.size(v, &field, u64::from(default))?;
        if !(256..=1 << 20).contains(&n) {
            let span = v.as_ref().map_or(0..0, |h| h.span());
            return Err(cx.err(span, field, "must be between 256 and 1m"));
        }
        Ok(n as u32)
    };
    let request_line_max = line_limit(
        &s.request_line_max,
        "request_line_max",
        defaults::REQUEST_LINE_MAX,
    )?;
    let header_line_max = line_limit(
        &s.header_line_max,
        "header_line_max",
        defaults::HEADER_LINE_MAX,
    )?;
    let keepalive_timeout = cx.time_limit(
        &s.keepalive_timeout,
        &format!("{f}.keepalive_timeout"),
        defaults::KEEPALIVE_TIMEOUT,
    )?;
    let keepalive_requests = match &s.keepalive_requests {
        None => defaults::KEEPALIVE_REQUESTS,
        Some(n) if (1..=i64::from(u32::MAX)).contains(n.get_ref()) => *n.get_ref() as u32,
        Some(n) => {
            return Err(cx.err(
                n.span(),
                format!("{f}.keepalive_requests"),
                "must be 1 or more",
            ));
        }
    };
    let header_max = cx.size(
        &s.header_max,
        &format!("{f}.header_max"),
        u64::from(defaults::HEADER_MAX),
    )?;
    if !(1024..=1 << 20).contains(&header_max) {
        let span = s.header_max.as_ref().map_or(0..0, |h| h.span());
        return Err(cx.err(span, format!("{f}.header_max"), "must be between 1k and 1m"));
    }
    let mut locations = Vec::new();
    for (li, l) in s.location.iter().enumerate() {
        let lf = format!("{f}.location[{li}]");
        let loc = location(cx, &lf, l.get_ref(), &locations, by_name, zones)?;
        locations.push(loc);
    }
    if locations.is_empty() {
        return Err(cx.err(
            0..0,
            format!("{f}.location"),
            "a server needs at least one [[server.location]]",
        ));
    }
    locations.sort_by_key(|l| std::cmp::Reverse(l.path.len()));
    let tls = match &s.tls {
        None => None,
        Some(t) => Some(tls::load_server(cx, &f, t, warnings)?),
    };
    let (trusted_proxies, real_ip_header, proxy_protocol) = real_ip(cx, &f, s)?;
    let http2 = http2(cx, &f, s)?;
    let server = Server {
        http2,
        trusted_proxies,
        real_ip_header,
        listen,
        names,
        header_timeout,
        header_max: header_max as u32,
        request_line_max,
        header_line_max,
        keepalive_timeout,
        keepalive_requests,
        locations,
    };
    Ok((server, tls, proxy_protocol))
}

/// A server's `http2`, `http2_websocket` and `http2_max_concurrent_streams`.
fn http2(cx: &Ctx<'_>, f: &str, s: &raw::Server) -> Result<Option<Http2>, ConfigError> {
    let on = s.http2.as_ref().is_some_and(|h| *h.get_ref());
    if !on {
        for (key, span) in [
            (
                "http2_websocket",
                s.http2_websocket.as_ref().map(|v| v.span()),
            ),
            (
                "http2_max_concurrent_streams",
                s.http2_max_concurrent_streams.as_ref().map(|v| v.span()),
            ),
        ] {
            if let Some(span) = span {
                return Err(cx.err(span, format!("{f}.{key}"), "needs http2 = true"));
            }
        }
        return Ok(None);
    }
    let max_streams = match &s.http2_max_concurrent_streams {
        None => HTTP2_STREAMS_DEFAULT,
        Some(n) if (1..=i64::from(HTTP2_STREAMS_MAX)).contains(n.get_ref()) => *n.get_ref() as u8,
        Some(n) => {
            return Err(cx.err(
                n.span(),
                format!("{f}.http2_max_concurrent_streams"),
                format!("must be between 1 and {HTTP2_STREAMS_MAX}"),
            ));
        }
    };
    Ok(Some(Http2 {
        websocket: s.http2_websocket.as_ref().is_none_or(|w| *w.get_ref()),
        max_streams,
    }))
}

/// A server's `listen` addresses, as indices into `listeners` (each distinct address once).
fn listen_addrs(
    cx: &Ctx<'_>,
    f: &str,
    s: &raw::Server,
    listeners: &mut Vec<SocketAddr>,
) -> Result<Vec<usize>, ConfigError> {
    let mut listen = Vec::new();
    for (li, l) in s.listen.get_ref().iter().enumerate() {
        let addr = parse_addr(l.get_ref())
            .map_err(|m| cx.err(l.span(), format!("{f}.listen[{li}]"), m))?;
        if addr.port() == 0 {
            return Err(cx.err(
                l.span(),
                format!("{f}.listen[{li}]"),
                "port 0 is not allowed: each worker would listen on a different random port",
            ));
        }
        let idx = match listeners.iter().position(|a| *a == addr) {
            Some(i) => i,
            None => {
                listeners.push(addr);
                listeners.len() - 1
            }
        };
        listen.push(idx);
    }
    Ok(listen)
}

/// A server's `server_name`s, lower case.
fn server_names(cx: &Ctx<'_>, f: &str, s: &raw::Server) -> Result<Vec<String>, ConfigError> {
    let mut names = Vec::new();
    for (ni, n) in s.server_name.iter().enumerate() {
        let name = n.get_ref().trim().to_ascii_lowercase();
        if name.is_empty() || name.contains(|c: char| c.is_whitespace() || c == '/' || c == ':') {
            return Err(cx.err(
                n.span(),
                format!("{f}.server_name[{ni}]"),
                format!("invalid server name {:?}", n.get_ref()),
            ));
        }
        names.push(name);
    }
    Ok(names)
}

/// Whose word about the client counts: `trusted_proxies`, `real_ip_header`, `proxy_protocol`.
fn real_ip(
    cx: &Ctx<'_>,
    f: &str,
    s: &raw::Server,
) -> Result<(Vec<Cidr>, Option<String>, bool), ConfigError> {
    let mut trusted_proxies = Vec::new();
    for (ti, t) in s.trusted_proxies.iter().enumerate() {
        trusted_proxies.push(
            Cidr::parse(t.get_ref())
                .map_err(|m| cx.err(t.span(), format!("{f}.trusted_proxies[{ti}]"), m))?,
        );
    }
    let real_ip_header = match &s.real_ip_header {
        None => None,
        Some(h) => {
            let v = h.get_ref().trim().to_ascii_lowercase();
            if v != "x-forwarded-for" && v != "x-real-ip" {
                return Err(cx.err(
                    h.span(),
                    format!("{f}.real_ip_header"),
                    "expected \"X-Forwarded-For\" or \"X-Real-IP\" (for the PROXY protocol, set proxy_protocol = true)",
                ));
            }
            Some(v)
        }
    };
    let proxy_protocol = s.proxy_protocol.as_ref().is_some_and(|p| *p.get_ref());
    if (proxy_protocol || real_ip_header.is_some()) && trusted_proxies.is_empty() {
        let span = s
            .proxy_protocol
            .as_ref()
            .map(|p| p.span())
            .or(s.real_ip_header.as_ref().map(|h| h.span()))
            .unwrap_or(0..0);
        return Err(cx.err(
            span,
            format!("{f}.trusted_proxies"),
            "needed with proxy_protocol or real_ip_header: the addresses of the balancers \
             whose word about the client is taken (nginx's set_real_ip_from)",
        ));
    }
    Ok((trusted_proxies, real_ip_header, proxy_protocol))
}

/// One `[[server.location]]` (`lf` names it in errors); `taken`: the server's locations so far.
fn location(
    cx: &Ctx<'_>,
    lf: &str,
    l: &raw::Location,
    taken: &[Location],
    by_name: &HashMap<String, usize>,
    zones: &limits::Zones,
) -> Result<Location, ConfigError> {
    let (conn_zones, req_zones) = zones;
    let path = l.path.get_ref().clone();
    if !path.starts_with('/') {
        return Err(cx.err(
            l.path.span(),
            format!("{lf}.path"),
            format!("path {path:?} must start with '/'"),
        ));
    }
    if taken.iter().any(|x: &Location| x.path == path) {
        return Err(cx.err(
            l.path.span(),
            format!("{lf}.path"),
            format!("duplicate location {path:?}"),
        ));
    }
    let name = l.upstream.get_ref();
    let upstream = *by_name.get(name).ok_or_else(|| {
        let mut known: Vec<&str> = by_name.keys().map(|s| s.as_str()).collect();
        known.sort();
        cx.err(
            l.upstream.span(),
            format!("{lf}.upstream"),
            format!(
                "unknown upstream {name:?} (defined: {})",
                if known.is_empty() {
                    "none".into()
                } else {
                    known.join(", ")
                }
            ),
        )
    })?;
    let upgrade = match &l.upgrade {
        None => vec!["websocket".to_string()],
        Some(list) => {
            let mut out = Vec::new();
            for (pi, p) in list.get_ref().iter().enumerate() {
                let v = p.get_ref().trim().to_ascii_lowercase();
                if v.is_empty()
                    || !v
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
                {
                    return Err(cx.err(
                        p.span(),
                        format!("{lf}.upgrade[{pi}]"),
                        format!(
                            "invalid protocol name {:?} (a token such as \"websocket\")",
                            p.get_ref()
                        ),
                    ));
                }
                out.push(v);
            }
            out
        }
    };
    Ok(Location {
        path,
        upstream,
        connect_timeout: cx.timeout(
            &l.connect_timeout,
            &format!("{lf}.connect_timeout"),
            defaults::CONNECT_TIMEOUT,
        )?,
        read_timeout: cx.timeout(
            &l.read_timeout,
            &format!("{lf}.read_timeout"),
            defaults::READ_TIMEOUT,
        )?,
        send_timeout: cx.timeout(
            &l.send_timeout,
            &format!("{lf}.send_timeout"),
            defaults::SEND_TIMEOUT,
        )?,
        body_timeout: cx.timeout(
            &l.body_timeout,
            &format!("{lf}.body_timeout"),
            defaults::BODY_TIMEOUT,
        )?,
        upgrade,
        next_upstream: upstream::next_upstream(cx, lf, l)?,
        limit_conn: match &l.limit_conn {
            None => None,
            Some(x) => Some(limits::limit_conn(cx, lf, x, conn_zones)?),
        },
        limit_req: match &l.limit_req {
            None => None,
            Some(x) => Some(limits::limit_req(cx, lf, x, req_zones)?),
        },
        heartbeat: match &l.heartbeat {
            None => None,
            Some(h) => Some(heartbeat(cx, lf, h.get_ref())?),
        },
        max_frame_size: positive_size(cx, &l.max_frame_size, &format!("{lf}.max_frame_size"))?,
        max_message_size: positive_size(
            cx,
            &l.max_message_size,
            &format!("{lf}.max_message_size"),
        )?,
        message_rate: match &l.message_rate {
            None => None,
            Some(x) => Some(limits::message_rate(cx, lf, x, req_zones)?),
        },
        max_lifetime: max_lifetime(cx, lf, l)?,
        auth_request: match &l.auth_request {
            None => None,
            Some(a) => Some(super::auth::auth_request(cx, lf, a, by_name)?),
        },
        stats: LocationStats::default(),
    })
}

/// `max_lifetime` and its `lifetime_jitter` (a tenth of it unless given, at most all of it).
fn max_lifetime(
    cx: &Ctx<'_>,
    lf: &str,
    l: &raw::Location,
) -> Result<Option<(Duration, Duration)>, ConfigError> {
    let jf = format!("{lf}.lifetime_jitter");
    let Some(m) = &l.max_lifetime else {
        if let Some(j) = &l.lifetime_jitter {
            return Err(cx.err(j.span(), jf, "needs max_lifetime"));
        }
        return Ok(None);
    };
    let max = cx.timeout(
        &l.max_lifetime,
        &format!("{lf}.max_lifetime"),
        Duration::ZERO,
    )?;
    let jitter = cx.duration(&l.lifetime_jitter, &jf, max / 10)?;
    if jitter > max {
        let span = l.lifetime_jitter.as_ref().map_or(m.span(), |j| j.span());
        return Err(cx.err(span, jf, "must not be more than max_lifetime"));
    }
    Ok(Some((max, jitter)))
}

/// An optional size that, when given, is more than 0.
fn positive_size(
    cx: &Ctx<'_>,
    v: &Option<toml::Spanned<toml::Value>>,
    field: &str,
) -> Result<Option<u64>, ConfigError> {
    match v {
        None => Ok(None),
        Some(s) => match cx.size(v, field, 0)? {
            0 => Err(cx.err(s.span(), field.to_string(), "must be more than 0")),
            n => Ok(Some(n)),
        },
    }
}

/// `drain_close = { code, reason }`: a code an endpoint may send (RFC 6455 7.4: 1000-1003,
/// 1007-1014, or 3000-4999) and a reason that fits a control frame.
fn drain_close(
    cx: &Ctx<'_>,
    d: Option<&toml::Spanned<raw::DrainClose>>,
) -> Result<(u16, String), ConfigError> {
    let Some(d) = d.map(|d| d.get_ref()) else {
        return Ok((defaults::DRAIN_CODE, defaults::DRAIN_REASON.to_string()));
    };
    let code = match &d.code {
        None => defaults::DRAIN_CODE,
        Some(c) => {
            let n = *c.get_ref();
            if !matches!(n, 1000..=1003 | 1007..=1014 | 3000..=4999) {
                return Err(cx.err(
                    c.span(),
                    "runtime.drain_close.code",
                    "expected a Close code an endpoint may send: 1000-1003, 1007-1014 or 3000-4999 \
                     (1001 going away, 1012 service restart)",
                ));
            }
            n as u16
        }
    };
    let reason = match &d.reason {
        None if code == defaults::DRAIN_CODE => defaults::DRAIN_REASON.to_string(),
        None => String::new(),
        Some(r) => {
            if r.get_ref().len() > 123 {
                return Err(cx.err(
                    r.span(),
                    "runtime.drain_close.reason",
                    "at most 123 bytes (a Close frame carries 125, the code takes 2)",
                ));
            }
            r.get_ref().clone()
        }
    };
    Ok((code, reason))
}

/// `heartbeat = { interval, timeout, upstream_interval }`.
fn heartbeat(cx: &Ctx<'_>, lf: &str, h: &raw::Heartbeat) -> Result<Heartbeat, ConfigError> {
    let interval = cx.timeout(
        &Some(h.interval.clone()),
        &format!("{lf}.heartbeat.interval"),
        Duration::ZERO,
    )?;
    let timeout = cx.timeout(
        &h.timeout,
        &format!("{lf}.heartbeat.timeout"),
        defaults::HEARTBEAT_TIMEOUT,
    )?;
    let upstream_interval = match &h.upstream_interval {
        None => None,
        Some(_) => Some(cx.timeout(
            &h.upstream_interval,
            &format!("{lf}.heartbeat.upstream_interval"),
            Duration::ZERO,
        )?),
    };
    Ok(Heartbeat {
        interval,
        timeout,
        upstream_interval,
    })
}
