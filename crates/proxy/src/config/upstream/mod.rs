//! `[[upstream]]`: the servers, how one is picked (`balance`, `hash`), their parameters
//! (`weight`, `backup`, `down`, `max_conns`, `max_fails`, `fail_timeout`), and the state every
//! worker shares about each of them (connections, passive failures, health).

use super::*;

mod health;
mod state;

use health::health_check;
pub use health::{Expect, HealthCheck};
pub use state::{Health, PeerState, PeerStatus, clock_ms};

/// Most ketama points one consistent-hash upstream may have (160 per unit of weight, as
/// nginx): 1,024 servers of weight 12 fit; past it the configuration is refused rather than
/// allocating without bound.
pub const MAX_POINTS: usize = 2_000_000;

/// One backend address.
#[derive(Debug, Clone, PartialEq)]
pub struct Peer {
    pub addr: SocketAddr,
    /// The address as written (what nginx's consistent hash hashes, so that the same list
    /// gives the same ring).
    pub name: String,
    pub weight: u32,
    pub backup: bool,
    /// Marked `down`: never picked.
    pub down: bool,
    /// Most connections open to it at once across the process (0: no limit).
    pub max_conns: u32,
    /// Failures (as `next_upstream` defines them) that take it out for `fail_timeout`
    /// (0: never taken out).
    pub max_fails: u32,
    pub fail_timeout: Duration,
    /// What every worker and the health checker share about it.
    pub state: PeerState,
}

/// How an upstream picks a server.
#[derive(Debug, Clone, PartialEq)]
pub enum Balance {
    /// nginx's smooth weighted round robin.
    RoundRobin,
    /// Fewest open connections relative to weight, across every worker; ties by round robin.
    LeastConn,
    /// nginx's `ip_hash`: the first three octets of an IPv4 client, the whole IPv6 address.
    IpHash,
    /// nginx's `hash KEY [consistent]`.
    Hash(HashKey),
}

impl Balance {
    /// The name as written in the configuration (`/status`, `check`).
    pub fn name(&self) -> &'static str {
        match self {
            Balance::RoundRobin => "round_robin",
            Balance::LeastConn => "least_conn",
            Balance::IpHash => "ip_hash",
            Balance::Hash(h) if h.consistent => "hash consistent",
            Balance::Hash(_) => "hash",
        }
    }
}

/// What `hash` hashes: literal text and variables, and with `consistent` the ketama ring.
#[derive(Debug, Clone, PartialEq)]
pub struct HashKey {
    /// The key as written.
    pub text: String,
    pub parts: Vec<KeyPart>,
    pub consistent: bool,
    /// `consistent`: the ring as nginx builds it, sorted by point, each with its server index.
    pub points: Vec<(u32, u16)>,
}

/// A piece of a hash key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyPart {
    Text(String),
    /// `$remote_addr`: the client address as text.
    RemoteAddr,
    /// `$binary_remote_addr`: its 4 or 16 bytes.
    BinaryRemoteAddr,
    /// `$request_uri`: path and query as the client sent them.
    RequestUri,
    /// `$http_NAME` (lower case, `_` for `-`).
    Header(String),
    /// `$cookie_NAME`.
    Cookie(String),
    /// `$arg_NAME`.
    Arg(String),
}

/// What counts as a failure of a server and is tried on the next one (nginx's
/// `proxy_next_upstream`, `_tries`, `_timeout`), per location.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NextUpstream {
    /// The failures that send a request on to the next server.
    pub when: Failures,
    /// Most servers tried per request (0: no limit but the number of servers).
    pub tries: u32,
    /// How long after the request arrived a next server may still be tried (zero: no limit).
    pub timeout: Duration,
}

/// How a server can fail a request (nginx's `proxy_next_upstream` conditions, and a response
/// that cannot be used, which counts against the server but is never tried again elsewhere).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// Connect refused or reset, or the connection failed before a response head.
    Error,
    /// Connect or response head timed out.
    Timeout,
    Http502,
    Http503,
    Http504,
    /// A response head that cannot be used (malformed, too large).
    Invalid,
}

impl Failure {
    /// Every condition `next_upstream` can name, with its name.
    pub const NAMED: [(Failure, &'static str); 5] = [
        (Failure::Error, "error"),
        (Failure::Timeout, "timeout"),
        (Failure::Http502, "http_502"),
        (Failure::Http503, "http_503"),
        (Failure::Http504, "http_504"),
    ];

    /// The failure an upstream's response status is, when `next_upstream` can name it.
    pub fn of_status(status: u16) -> Option<Failure> {
        match status {
            502 => Some(Failure::Http502),
            503 => Some(Failure::Http503),
            504 => Some(Failure::Http504),
            _ => None,
        }
    }

    fn bit(self) -> u8 {
        match self {
            Failure::Error => 1,
            Failure::Timeout => 2,
            Failure::Http502 => 4,
            Failure::Http503 => 8,
            Failure::Http504 => 16,
            Failure::Invalid => 0,
        }
    }
}

/// A set of failures (`next_upstream`'s conditions). `Invalid` is never in one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Failures(u8);

impl Failures {
    pub const NONE: Failures = Failures(0);

    pub fn with(self, f: Failure) -> Failures {
        Failures(self.0 | f.bit())
    }

    pub fn contains(self, f: Failure) -> bool {
        self.0 & f.bit() != 0
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }
}

impl Default for NextUpstream {
    fn default() -> NextUpstream {
        NextUpstream {
            when: Failures::NONE.with(Failure::Error).with(Failure::Timeout),
            tries: 0,
            timeout: Duration::ZERO,
        }
    }
}

impl NextUpstream {
    pub fn on(&self, f: Failure) -> bool {
        self.when.contains(f)
    }

    /// The conditions as written (`check`).
    pub fn names(&self) -> String {
        let on: Vec<&str> = Failure::NAMED
            .iter()
            .filter(|(f, _)| self.on(*f))
            .map(|(_, n)| *n)
            .collect();
        if on.is_empty() {
            "off".into()
        } else {
            on.join(",")
        }
    }
}

/// nginx's CRC-32 (the IEEE one) of `bytes`.
pub fn crc32(bytes: &[u8]) -> u32 {
    crc32fast::hash(bytes)
}

/// The ketama ring nginx's `hash … consistent` builds: per primary server (in order), its
/// name split at the last `:` before a run of digits into host and port, 160 points per unit
/// of weight, each `crc32(host \0 port prev_point_le)`; sorted, equal points kept once.
pub fn ketama(peers: &[Peer]) -> Vec<(u32, u16)> {
    let mut points = Vec::new();
    for (i, p) in peers.iter().enumerate() {
        if p.backup {
            continue;
        }
        let s = p.name.as_bytes();
        let digits = s.iter().rev().take_while(|b| b.is_ascii_digit()).count();
        let (host, port): (&[u8], &[u8]) = if digits < s.len() && s[s.len() - digits - 1] == b':' {
            (&s[..s.len() - digits - 1], &s[s.len() - digits..])
        } else {
            (s, b"")
        };
        let mut base = crc32fast::Hasher::new();
        base.update(host);
        base.update(b"\0");
        base.update(port);
        let mut prev = 0u32;
        for _ in 0..p.weight * 160 {
            let mut h = base.clone();
            h.update(&prev.to_le_bytes());
            prev = h.finalize();
            points.push((prev, i as u16));
        }
    }
    // nginx sorts by point only (its qsort is not stable; equal points are then merged, the
    // first kept), so ties between servers are resolved by order here.
    points.sort_by_key(|&(h, i)| (h, i));
    points.dedup_by_key(|&mut (h, _)| h);
    points
}

/// Parse a `hash` key: literal text and `$name` / `${name}` variables.
pub fn parse_key(key: &str) -> Result<Vec<KeyPart>, String> {
    let mut parts = Vec::new();
    let mut text = String::new();
    let mut rest = key;
    while let Some(i) = rest.find('$') {
        text.push_str(&rest[..i]);
        rest = &rest[i + 1..];
        let (name, after) = if let Some(r) = rest.strip_prefix('{') {
            let end = r
                .find('}')
                .ok_or_else(|| format!("unclosed \"${{\" in hash key {key:?}"))?;
            (&r[..end], &r[end + 1..])
        } else {
            let end = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            (&rest[..end], &rest[end..])
        };
        if name.is_empty() {
            return Err(format!("\"$\" without a variable name in hash key {key:?}"));
        }
        let field = |prefix: &str| {
            name.strip_prefix(prefix)
                .filter(|n| !n.is_empty())
                .map(|n| n.to_ascii_lowercase())
        };
        let part = match name {
            "remote_addr" => KeyPart::RemoteAddr,
            "binary_remote_addr" => KeyPart::BinaryRemoteAddr,
            "request_uri" => KeyPart::RequestUri,
            _ => {
                // nginx compares header, cookie and argument names without case.
                if let Some(h) = field("http_") {
                    KeyPart::Header(h.replace('_', "-"))
                } else if let Some(c) = field("cookie_") {
                    KeyPart::Cookie(c)
                } else if let Some(a) = field("arg_") {
                    KeyPart::Arg(a)
                } else {
                    return Err(format!(
                        "unknown variable ${name} in hash key {key:?}; expected $remote_addr, $binary_remote_addr, $request_uri, $http_NAME, $cookie_NAME or $arg_NAME"
                    ));
                }
            }
        };
        if !text.is_empty() {
            parts.push(KeyPart::Text(std::mem::take(&mut text)));
        }
        parts.push(part);
        rest = after;
    }
    text.push_str(rest);
    if !text.is_empty() {
        parts.push(KeyPart::Text(text));
    }
    if parts.iter().all(|p| matches!(p, KeyPart::Text(_))) {
        return Err(format!(
            "hash key {key:?} has no variable: every request would go to one server"
        ));
    }
    Ok(parts)
}

impl NextUpstream {
    fn parse(
        cx: &Ctx<'_>,
        lf: &str,
        when: &Option<Spanned<Vec<Spanned<String>>>>,
        tries: &Option<Spanned<i64>>,
        timeout: &Option<Spanned<toml::Value>>,
    ) -> Result<NextUpstream, ConfigError> {
        let mut n = NextUpstream::default();
        if let Some(list) = when {
            n.when = Failures::NONE;
            let off = list.get_ref().iter().any(|w| w.get_ref() == "off");
            for (i, w) in list.get_ref().iter().enumerate() {
                let named = Failure::NAMED
                    .iter()
                    .find(|(_, name)| name == w.get_ref())
                    .map(|(f, _)| *f);
                let failure = match (named, w.get_ref().as_str()) {
                    (Some(f), _) => Some(f),
                    (None, "off") => None,
                    (None, other) => {
                        return Err(cx.err(
                            w.span(),
                            format!("{lf}.next_upstream[{i}]"),
                            format!("unknown condition {other:?}; expected \"error\", \"timeout\", \"http_502\", \"http_503\", \"http_504\" or \"off\""),
                        ));
                    }
                };
                if let Some(f) = failure {
                    if off {
                        return Err(cx.err(
                            w.span(),
                            format!("{lf}.next_upstream[{i}]"),
                            "\"off\" cannot be combined with other conditions",
                        ));
                    }
                    n.when = n.when.with(f);
                }
            }
        }
        if let Some(t) = tries {
            if !(0..=i64::from(u32::MAX)).contains(t.get_ref()) {
                return Err(cx.err(
                    t.span(),
                    format!("{lf}.next_upstream_tries"),
                    "must be 0 (no limit) or more",
                ));
            }
            n.tries = *t.get_ref() as u32;
        }
        n.timeout = cx.duration(
            timeout,
            &format!("{lf}.next_upstream_timeout"),
            Duration::ZERO,
        )?;
        Ok(n)
    }
}

pub(super) fn next_upstream(
    cx: &Ctx<'_>,
    lf: &str,
    l: &raw::Location,
) -> Result<NextUpstream, ConfigError> {
    NextUpstream::parse(
        cx,
        lf,
        &l.next_upstream,
        &l.next_upstream_tries,
        &l.next_upstream_timeout,
    )
}

/// A server's address: `IP:PORT`, or `NAME:PORT` resolved now (when the configuration is
/// loaded: `run`, `check`, each reload), one server per address, as nginx does at start.
fn peer_addrs(s: &str) -> Result<Vec<SocketAddr>, String> {
    use std::net::ToSocketAddrs;
    let s = s.trim();
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Ok(vec![a]);
    }
    let invalid = || {
        format!(
            "invalid address {s:?}: expected IP:PORT such as \"127.0.0.1:8080\", \"[::1]:8080\" or NAME:PORT"
        )
    };
    let Some((host, port)) = s.rsplit_once(':') else {
        return Err(invalid());
    };
    let name_ok = !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    let Some(port) = port.parse::<u16>().ok().filter(|_| name_ok) else {
        return Err(invalid());
    };
    let mut out: Vec<SocketAddr> = Vec::new();
    for a in (host, port)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {host:?}: {e}"))?
    {
        if !out.contains(&a) {
            out.push(a);
        }
    }
    if out.is_empty() {
        return Err(format!("cannot resolve {host:?}: no addresses"));
    }
    Ok(out)
}

/// Resolve `upstream[ui]`.
pub(super) fn resolve(cx: &Ctx<'_>, ui: usize, u: &raw::Upstream) -> Result<Upstream, ConfigError> {
    let f = format!("upstream[{ui}]");
    let name = u.name.get_ref().clone();
    if name.is_empty() {
        return Err(cx.err(u.name.span(), format!("{f}.name"), "must not be empty"));
    }
    let mut balance = balance(cx, &f, u)?;
    let peers = peers(cx, &f, u, &mut balance)?;
    let source = source(cx, &f, u, &peers)?;
    let tls = match &u.tls {
        None => None,
        Some(t) => Some(tls::upstream(cx, &f, t)?),
    };
    let health_check = match &u.health_check {
        None => None,
        Some(h) => Some(health_check(cx, &f, h)?),
    };
    let keepalive = match &u.keepalive {
        None => 0,
        Some(k) if (0..=10_000).contains(k.get_ref()) => *k.get_ref() as u32,
        Some(k) => {
            return Err(cx.err(
                k.span(),
                format!("{f}.keepalive"),
                "must be from 0 to 10000",
            ));
        }
    };
    let keepalive_timeout = cx.timeout(
        &u.keepalive_timeout,
        &format!("{f}.keepalive_timeout"),
        Duration::from_secs(60),
    )?;
    let keepalive_requests = match &u.keepalive_requests {
        None => 1000,
        Some(k) if (1..=65535).contains(k.get_ref()) => *k.get_ref() as u32,
        Some(k) => {
            return Err(cx.err(
                k.span(),
                format!("{f}.keepalive_requests"),
                "must be from 1 to 65535",
            ));
        }
    };
    let proxy_protocol = match &u.proxy_protocol {
        None => false,
        Some(v) if v.get_ref() == "v2" => true,
        Some(v) => {
            return Err(cx.err(
                v.span(),
                format!("{f}.proxy_protocol"),
                "expected \"v2\" (the binary PROXY protocol header before each connection's bytes)",
            ));
        }
    };
    Ok(Upstream {
        name,
        balance,
        peers,
        source,
        tls,
        health_check,
        keepalive,
        keepalive_timeout,
        keepalive_requests,
        proxy_protocol,
    })
}

/// `balance` and `hash` of upstream field `f`.
fn balance(cx: &Ctx<'_>, f: &str, u: &raw::Upstream) -> Result<Balance, ConfigError> {
    let balance_span = u.balance.as_ref().map_or(0..0, |b| b.span());
    let named = u.balance.as_ref().map(|b| b.get_ref().as_str());
    Ok(match (named, &u.hash) {
        (None | Some("round_robin"), None) => Balance::RoundRobin,
        (Some("least_conn"), None) => Balance::LeastConn,
        (Some("ip_hash"), None) => Balance::IpHash,
        (None | Some("hash"), Some(h)) => {
            let h = h.get_ref();
            let parts = parse_key(h.key.get_ref())
                .map_err(|m| cx.err(h.key.span(), format!("{f}.hash.key"), m))?;
            Balance::Hash(HashKey {
                text: h.key.get_ref().clone(),
                parts,
                consistent: h.consistent.unwrap_or(false),
                points: Vec::new(),
            })
        }
        (Some("hash"), None) => {
            return Err(cx.err(
                balance_span,
                format!("{f}.balance"),
                "balance = \"hash\" needs hash = { key = \"$remote_addr\" } (and consistent = true for ketama)",
            ));
        }
        (Some(b @ ("round_robin" | "least_conn" | "ip_hash")), Some(h)) => {
            return Err(cx.err(
                h.span(),
                format!("{f}.hash"),
                format!("hash is set but balance is {b:?}; remove one of them"),
            ));
        }
        (Some(other), _) => {
            return Err(cx.err(
                balance_span,
                format!("{f}.balance"),
                format!("unknown balance {other:?}; expected \"round_robin\", \"least_conn\", \"ip_hash\" or \"hash\""),
            ));
        }
    })
}

/// The servers of upstream field `f` (a name may resolve to several), checked against its
/// `balance`, whose consistent-hash points they fill in.
fn peers(
    cx: &Ctx<'_>,
    f: &str,
    u: &raw::Upstream,
    balance: &mut Balance,
) -> Result<Vec<Peer>, ConfigError> {
    if u.servers.get_ref().is_empty() {
        return Err(cx.err(
            u.servers.span(),
            format!("{f}.servers"),
            "needs at least one server",
        ));
    }
    if u.servers.get_ref().len() > MAX_SERVERS {
        return Err(cx.err(
            u.servers.span(),
            format!("{f}.servers"),
            format!(
                "{} servers: at most {MAX_SERVERS} per upstream",
                u.servers.get_ref().len()
            ),
        ));
    }
    let mut peers = Vec::new();
    for (pi, p) in u.servers.get_ref().iter().enumerate() {
        let p = p.get_ref();
        let pf = format!("{f}.servers[{pi}]");
        let addrs = peer_addrs(p.addr.get_ref())
            .map_err(|m| cx.err(p.addr.span(), format!("{pf}.addr"), m))?;
        let count = |v: &Option<Spanned<i64>>,
                     field: &str,
                     range: std::ops::RangeInclusive<i64>,
                     default: u32| {
            match v {
                None => Ok(default),
                Some(w) if range.contains(w.get_ref()) => Ok(*w.get_ref() as u32),
                Some(w) => Err(cx.err(
                    w.span(),
                    format!("{pf}.{field}"),
                    format!("must be from {} to {}", range.start(), range.end()),
                )),
            }
        };
        let weight = count(&p.weight, "weight", 1..=1000, 1)?;
        let max_conns = count(&p.max_conns, "max_conns", 0..=100_000_000, 0)?;
        let max_fails = count(&p.max_fails, "max_fails", 0..=1000, 1)?;
        let fail_timeout = cx.timeout(
            &p.fail_timeout,
            &format!("{pf}.fail_timeout"),
            Duration::from_secs(10),
        )?;
        if p.backup && matches!(balance, Balance::Hash(_)) {
            return Err(cx.err(
                p.addr.span(),
                format!("{pf}.backup"),
                "backup servers cannot be used with balance = \"hash\" (as in nginx): the key decides the server; mark it down or remove it",
            ));
        }
        for addr in addrs {
            peers.push(Peer {
                addr,
                name: p.addr.get_ref().trim().to_string(),
                weight,
                backup: p.backup,
                down: p.down,
                max_conns,
                max_fails,
                fail_timeout,
                state: PeerState::default(),
            });
        }
    }
    if peers.len() > MAX_SERVERS {
        return Err(cx.err(
            u.servers.span(),
            format!("{f}.servers"),
            format!(
                "the names resolve to {} servers: at most {MAX_SERVERS} per upstream",
                peers.len()
            ),
        ));
    }
    // As nginx: a lone server is never taken out by its failures (there is nowhere else to
    // send the next request); `down`, `max_conns` and health checks still apply.
    if let [p] = peers.as_mut_slice() {
        p.max_fails = 0;
    }
    if peers.iter().all(|p| p.backup) {
        return Err(cx.err(
            u.servers.span(),
            format!("{f}.servers"),
            "needs at least one server that is not a backup",
        ));
    }
    if let Balance::Hash(h) = balance
        && h.consistent
    {
        let n: usize = peers.iter().map(|p| p.weight as usize * 160).sum();
        if n > MAX_POINTS {
            return Err(cx.err(
                u.servers.span(),
                format!("{f}.servers"),
                format!("consistent hash over these weights needs {n} points, more than {MAX_POINTS}: lower the weights"),
            ));
        }
        h.points = ketama(&peers);
    }
    Ok(peers)
}

/// The source addresses of upstream field `f`, of the same IP family as its `peers`.
fn source(
    cx: &Ctx<'_>,
    f: &str,
    u: &raw::Upstream,
    peers: &[Peer],
) -> Result<Vec<std::net::IpAddr>, ConfigError> {
    Ok(match &u.source {
        None => Vec::new(),
        Some(v) => {
            let field = format!("{f}.source");
            let items: Vec<String> = match v.get_ref() {
                toml::Value::String(s) => vec![s.clone()],
                toml::Value::Array(a) if a.iter().all(|x| x.is_str()) => a
                    .iter()
                    .map(|x| x.as_str().unwrap_or_default().to_string())
                    .collect(),
                _ => return Err(cx.err(
                    v.span(),
                    field,
                    "expected an address, a CIDR such as \"127.0.1.0/24\", or a list of addresses",
                )),
            };
            let mut out = Vec::new();
            for it in &items {
                out.extend(
                    crate::sys::source_addresses(it, 16)
                        .map_err(|m| cx.err(v.span(), field.clone(), m))?,
                );
            }
            if let Some(p) = peers
                .iter()
                .find(|p| out.iter().any(|s| s.is_ipv4() != p.addr.is_ipv4()))
            {
                return Err(cx.err(
                    v.span(),
                    field,
                    format!(
                        "source addresses and server {} are of different IP families",
                        p.addr
                    ),
                ));
            }
            out
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_parse_into_text_and_variables() {
        assert_eq!(
            parse_key("room:$arg_room/${http_x_user_id}").unwrap(),
            vec![
                KeyPart::Text("room:".into()),
                KeyPart::Arg("room".into()),
                KeyPart::Text("/".into()),
                KeyPart::Header("x-user-id".into()),
            ]
        );
        assert_eq!(
            parse_key("$remote_addr").unwrap(),
            vec![KeyPart::RemoteAddr]
        );
        assert_eq!(
            parse_key("$cookie_SID").unwrap(),
            vec![KeyPart::Cookie("sid".into())]
        );
        for bad in ["", "plain", "$", "${arg_x", "$nope", "$http_", "a$"] {
            assert!(parse_key(bad).is_err(), "{bad:?} accepted");
        }
    }
}
