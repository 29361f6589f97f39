//! The TOML configuration: what the user wrote (`raw`, read by serde) and what the workers run
//! on (`Config`, resolved: addresses parsed, durations converted, names turned into indices,
//! everything checked). A worker never sees a string it must interpret.
//!
//! Every error names the file, line, column and field, like `nginx -t`.

pub mod units;

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

pub use units::{fmt_duration, parse_duration, parse_size};

/// A configuration error: where, which field, what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}:{line}:{col}: {}{message}", FieldPrefix(field))]
pub struct ConfigError {
    pub file: String,
    pub line: usize,
    pub col: usize,
    /// Dotted path of the field, e.g. `server[0].location[1].upstream`; empty when the TOML
    /// itself does not parse.
    pub field: String,
    pub message: String,
}

/// `FIELD: `, or nothing for an error without a field.
struct FieldPrefix<'a>(&'a str);

impl fmt::Display for FieldPrefix<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            Ok(())
        } else {
            write!(f, "{}: ", self.0)
        }
    }
}

pub mod admin;
pub mod auth;
pub mod limits;
mod raw;
mod resolve;
mod stats;
pub mod tls;
pub mod upstream;

pub use stats::{LocationStats, MessageRows};
pub use tls::{ListenerTls, UpstreamTls};
pub use upstream::{
    Balance, HashKey, HealthCheck, KeyPart, NextUpstream, Peer, PeerState, PeerStatus, clock_ms,
};

use resolve::resolve;

/// Process-wide settings.
#[derive(Debug, Clone, PartialEq)]
pub struct Runtime {
    /// Worker threads (one per core with "auto").
    pub workers: usize,
    /// Sessions per process, split evenly across workers.
    pub max_connections: u32,
    /// How long shutdown waits for sessions before closing them.
    pub shutdown_grace: Duration,
    /// Bytes per provided buffer.
    pub buffer_size: u32,
    /// Provided buffers per worker (a power of two).
    pub buffers: u16,
    /// One line per request / WebSocket session on stderr (nginx's `access_log`).
    pub access_log: bool,
    /// A line also when a tunnel opens (after its 101), so one that lasts for days is seen
    /// the day it opens.
    pub access_log_open: bool,
    /// On shutdown, the Close frames to tunnels' clients are spread evenly over this window.
    pub drain_spread: Duration,
    /// The Close frame's code and reason on shutdown (1012 "service restart" by default).
    pub drain_code: u16,
    pub drain_reason: String,
    /// Where a new binary asks for the listening sockets (`ringway run --upgrade`).
    pub upgrade_socket: Option<std::path::PathBuf>,
    /// On `ringway run --upgrade`, take the old process's tunnels over (those the handover
    /// covers) instead of letting it drain them.
    pub upgrade_tunnels: bool,
    /// A plain tunnel splices a frame's payload (socket → pipe → socket) when at least this
    /// much of it is still to come; 0: never.
    pub splice_min: u64,
}

/// A location's heartbeat: ping a peer that has sent nothing for `interval`; close it when it
/// stays silent for `timeout` after the ping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Heartbeat {
    pub interval: Duration,
    pub timeout: Duration,
    /// Ping the upstream too (masked frames), when it has sent nothing for this long.
    pub upstream_interval: Option<Duration>,
}

/// Most servers one upstream may list (each is tried at most once per request).
pub const MAX_SERVERS: usize = 1024;

/// A named group of backends.
#[derive(Debug, Clone, PartialEq)]
pub struct Upstream {
    pub name: String,
    pub balance: Balance,
    pub peers: Vec<Peer>,
    /// Local addresses upstream sockets bind to, in turn (nginx's `proxy_bind`, HAProxy's
    /// `source`); empty: the kernel picks. Each address has its own ephemeral port range, so
    /// N addresses allow N times ~64k connections to one server.
    pub source: Vec<std::net::IpAddr>,
    /// TLS toward the servers (`wss://`, `https://` backends).
    pub tls: Option<UpstreamTls>,
    /// Active health checks of the servers.
    pub health_check: Option<HealthCheck>,
    /// Idle connections kept per worker for plain HTTP requests (nginx's `keepalive`); 0: a
    /// connection per request.
    pub keepalive: u32,
    /// How long an idle kept connection waits for its next request.
    pub keepalive_timeout: Duration,
    /// Requests one kept connection carries before it is closed.
    pub keepalive_requests: u32,
    /// Each connection to a server starts with a PROXY protocol v2 header (the client's
    /// address and the address it connected to).
    pub proxy_protocol: bool,
}

/// A path prefix routed to an upstream.
#[derive(Debug, Clone, PartialEq)]
pub struct Location {
    pub path: String,
    /// Index into `Config::upstreams`.
    pub upstream: usize,
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
    pub send_timeout: Duration,
    /// How long a request body may pause between two reads before 408
    /// (`client_body_timeout`).
    pub body_timeout: Duration,
    /// Upgrade protocols tunnelled (lower case); any other `Upgrade` is dropped and the
    /// request proxied as plain HTTP.
    pub upgrade: Vec<String>,
    /// What counts as a server's failure and is tried on the next server.
    pub next_upstream: NextUpstream,
    /// Connections per client address at once.
    pub limit_conn: Option<limits::LimitConn>,
    /// Requests per client address over time.
    pub limit_req: Option<limits::LimitReq>,
    /// Pings toward idle tunnel peers.
    pub heartbeat: Option<Heartbeat>,
    /// The largest WebSocket frame payload a tunnel passes, either way (bytes).
    pub max_frame_size: Option<u64>,
    /// The largest WebSocket message (its fragments' payloads summed) a tunnel passes, either
    /// way (bytes).
    pub max_message_size: Option<u64>,
    /// The client's messages through a tunnel over time.
    pub message_rate: Option<limits::MessageRate>,
    /// How long a tunnel may last: `(max, jitter)`; each tunnel's is `max` less a random part
    /// of `jitter`, and at its end the client gets the drain's Close (reconnect).
    pub max_lifetime: Option<(Duration, Duration)>,
    /// A subrequest that must allow each request before it is proxied.
    pub auth_request: Option<auth::AuthRequest>,
    /// Requests routed here and refused by its limits, across workers (for `/metrics`).
    pub stats: LocationStats,
}

/// A virtual server: listen addresses, names, locations.
#[derive(Debug, Clone, PartialEq)]
pub struct Server {
    /// Indices into `Config::listeners`.
    pub listen: Vec<usize>,
    /// Lower-cased names; `*.example.com` matches any subdomain.
    pub names: Vec<String>,
    pub header_timeout: Duration,
    pub header_max: u32,
    /// Longest request line (414 past it).
    pub request_line_max: u32,
    /// Longest single header line (431 past it).
    pub header_line_max: u32,
    /// How long an idle keep-alive connection waits for its next request (0: no keep-alive).
    pub keepalive_timeout: Duration,
    /// Requests served on one client connection before it is closed.
    pub keepalive_requests: u32,
    /// Sorted longest path first, so the first match is the longest prefix.
    pub locations: Vec<Location>,
    /// Addresses whose word about the client is taken: a PROXY protocol header on its
    /// listeners, `real_ip_header`.
    pub trusted_proxies: Vec<Cidr>,
    /// nginx's `real_ip_header X-Forwarded-For` (or X-Real-IP): from a trusted proxy, the
    /// client is the header's last address.
    pub real_ip_header: Option<String>,
    /// HTTP/2 on its listeners (`http2 = true`), if on.
    pub http2: Option<Http2>,
}

/// A server's HTTP/2 (`http2 = true`): ALPN `h2` on TLS listeners, the client preface on plain
/// ones (h2c with prior knowledge).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Http2 {
    /// WebSockets over HTTP/2 (RFC 8441's extended CONNECT): `http2_websocket`.
    pub websocket: bool,
    /// Streams open at once on one connection: `http2_max_concurrent_streams`.
    pub max_streams: u8,
}

/// The most streams one HTTP/2 connection may have open at once (nginx's default): each is an
/// inner HTTP/1 session on a connection of its own (a session tells `CONN_MAX` + 1 apart).
pub const HTTP2_STREAMS_MAX: u8 = 128;
/// Streams at once when `http2_max_concurrent_streams` is not set (HAProxy's default).
pub const HTTP2_STREAMS_DEFAULT: u8 = 100;

/// An address block (`10.0.0.0/8`, `2001:db8::/32`, or one address).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    pub net: std::net::IpAddr,
    pub bits: u8,
}

impl Cidr {
    pub fn parse(s: &str) -> Result<Cidr, String> {
        let (ip, bits) = match s.split_once('/') {
            Some((ip, b)) => (ip, Some(b)),
            None => (s, None),
        };
        let bad = || format!("invalid address block {s:?} (e.g. \"10.0.0.0/8\", \"::1\")");
        let net: std::net::IpAddr = ip.trim().parse().map_err(|_| bad())?;
        let max = if net.is_ipv4() { 32 } else { 128 };
        let bits = match bits {
            None => max,
            Some(b) => b
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|b| *b <= max)
                .ok_or_else(bad)?,
        };
        Ok(Cidr { net, bits })
    }

    /// Whether `ip` is in the block (an IPv4-mapped IPv6 address counts as its IPv4 one).
    pub fn contains(&self, ip: std::net::IpAddr) -> bool {
        use std::net::IpAddr;
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        let (a, b, width) = match (self.net, ip) {
            (IpAddr::V4(n), IpAddr::V4(i)) => {
                (u128::from(u32::from(n)), u128::from(u32::from(i)), 32u32)
            }
            (IpAddr::V6(n), IpAddr::V6(i)) => (u128::from(n), u128::from(i), 128),
            _ => return false,
        };
        let bits = u32::from(self.bits);
        bits == 0 || (a ^ b) >> (width - bits) == 0
    }
}

/// Whether any block of `list` holds `ip`.
pub fn trusted(list: &[Cidr], ip: std::net::IpAddr) -> bool {
    list.iter().any(|c| c.contains(ip))
}

/// The resolved configuration the workers run on.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// The file it came from, for messages.
    pub source: String,
    pub runtime: Runtime,
    /// `[tuning] apply = true`: write the preflight's sysctl fixes at startup (when root).
    pub tuning_apply: bool,
    /// `[admin]`: where `/healthz`, `/status`, `/metrics` and `POST /reload` are served, and
    /// what guards them (none if `listen` is unset).
    pub admin: Option<admin::Admin>,
    /// Distinct listen addresses; each worker opens one SO_REUSEPORT socket per entry.
    pub listeners: Vec<SocketAddr>,
    /// Per listener (same index): its TLS, when its servers have `tls`.
    pub listener_tls: Vec<Option<ListenerTls>>,
    /// Per listener: connections start with a PROXY protocol header, accepted only from these
    /// addresses (its servers' `trusted_proxies`); `None`: no header.
    pub listener_proxy: Vec<Option<std::sync::Arc<[Cidr]>>>,
    /// What sessions accepted on each listener are accepted with, by listener index.
    pub listen: Vec<Listen>,
    pub servers: Vec<Server>,
    pub upstreams: Vec<Upstream>,
    /// `[[limit_conn_zone]]`s, shared by every worker.
    pub conn_zones: Vec<limits::Zone<crate::limits::ConnZone>>,
    /// `[[limit_req_zone]]`s.
    pub req_zones: Vec<limits::Zone<crate::limits::ReqZone>>,
    /// What `check` and `run` print as warnings (an expired certificate).
    pub warnings: Vec<String>,
    /// Every location's per-worker message counters in one table, for a tunnel to reach its
    /// own in a few loads per message (`message_row`).
    pub message_rows: MessageRows,
}

/// What a listener's sessions are accepted with (from its default server: the first that
/// listens on it), resolved once per configuration; a session names it by index.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Listen {
    pub index: u16,
    pub header_timeout_ms: u32,
    pub header_max: u32,
    pub request_line_max: u32,
    pub header_line_max: u32,
    /// How long an idle keep-alive connection waits for its next request; 0: no keep-alive.
    pub keepalive_timeout_ms: u32,
    /// Requests served on one connection before it is closed.
    pub keepalive_requests: u32,
    /// `X-Forwarded-Proto` value.
    pub tls: bool,
    /// Connections start with a PROXY protocol header.
    pub proxy_header: bool,
    /// HTTP/2 on this listener (from its servers), if on.
    pub http2: Option<Http2>,
}

impl Listen {
    /// The settings of `server` for sessions accepted on listener `index`.
    pub fn of(
        index: usize,
        server: &Server,
        tls: bool,
        proxy_header: bool,
        http2: Option<Http2>,
    ) -> Listen {
        Listen {
            index: index as u16,
            header_timeout_ms: ms32(server.header_timeout),
            header_max: server.header_max,
            request_line_max: server.request_line_max,
            header_line_max: server.header_line_max,
            keepalive_timeout_ms: ms32(server.keepalive_timeout),
            keepalive_requests: server.keepalive_requests,
            tls,
            proxy_header,
            http2,
        }
    }

    /// The bounds of a request head.
    pub fn limits(&self) -> crate::http::HeadLimits {
        crate::http::HeadLimits {
            head_max: self.header_max as usize,
            request_line_max: self.request_line_max as usize,
            header_line_max: self.header_line_max as usize,
        }
    }
}

/// The longest timeout a configuration may set (`Ctx::time_limit`): less than 2^31 ms, so a
/// 32-bit clock stamp (`uring::timer::Stamp`) reads any deadline it sets exactly.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(24 * 86_400);
const _: () = assert!(MAX_TIMEOUT.as_millis() < 1 << 31);

/// Milliseconds of a configured duration, as sessions and requests keep it: at most
/// [`MAX_TIMEOUT`] (the configuration refuses longer), within the span a session's 32-bit
/// clock stamps reach (`uring::timer::Stamp`).
pub fn ms32(d: Duration) -> u32 {
    d.min(MAX_TIMEOUT).as_millis() as u32
}

/// Defaults: the safe production values for long-lived WebSockets, not nginx's 60 s.
pub mod defaults {
    use std::time::Duration;
    pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
    pub const READ_TIMEOUT: Duration = Duration::from_secs(3600);
    pub const SEND_TIMEOUT: Duration = Duration::from_secs(3600);
    pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
    pub const HEADER_MAX: u32 = 16 * 1024;
    /// nginx's `large_client_header_buffers 4 8k`: one line fits one 8k buffer.
    pub const REQUEST_LINE_MAX: u32 = 8 * 1024;
    pub const HEADER_LINE_MAX: u32 = 8 * 1024;
    pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(75);
    pub const KEEPALIVE_REQUESTS: u32 = 1000;
    pub const BODY_TIMEOUT: Duration = Duration::from_secs(60);
    /// Largest config file read (a typo pointing at a device or a log must not hang `check`).
    pub const FILE_MAX: u64 = 16 << 20;
    pub const MAX_CONNECTIONS: u32 = 200_000;
    pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(60);
    /// `drain_spread` is this fraction of `shutdown_grace` unless set: the rest of the grace
    /// is for the close handshakes and for clients that answer late.
    pub const DRAIN_SPREAD_DIV: u32 = 2;
    pub const DRAIN_CODE: u16 = 1012;
    /// `runtime.splice_min` unless set (see `docs/design-notes.md`, "Splice for bulk frames").
    pub const SPLICE_MIN: u64 = 64 * 1024;
    pub const DRAIN_REASON: &str = "service restart";
    /// `heartbeat.timeout` unless set.
    pub const HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(10);
    pub const BUFFER_SIZE: u32 = 16 * 1024;
    pub const BUFFERS: u16 = 4096;
}

struct Ctx<'a> {
    file: &'a str,
    text: &'a str,
}

impl Ctx<'_> {
    fn err(
        &self,
        span: std::ops::Range<usize>,
        field: impl Into<String>,
        message: impl Into<String>,
    ) -> ConfigError {
        let (line, col) = line_col(self.text, span.start);
        ConfigError {
            file: self.file.to_string(),
            line,
            col,
            field: field.into(),
            message: message.into(),
        }
    }

    /// A duration: a string such as `"30s"` or `"7d"`, or a bare number of seconds.
    fn duration(
        &self,
        v: &Option<Spanned<toml::Value>>,
        field: &str,
        default: Duration,
    ) -> Result<Duration, ConfigError> {
        match v {
            None => Ok(default),
            Some(s) => match s.get_ref() {
                toml::Value::String(t) => {
                    parse_duration(t).map_err(|m| self.err(s.span(), field, m))
                }
                toml::Value::Integer(n) if *n >= 0 => Ok(Duration::from_secs(*n as u64)),
                _ => Err(self.err(
                    s.span(),
                    field,
                    "expected a duration such as \"30s\" or \"7d\", or a number of seconds",
                )),
            },
        }
    }

    /// A duration that must not be zero (a timeout of zero could never be met).
    fn timeout(
        &self,
        v: &Option<Spanned<toml::Value>>,
        field: &str,
        default: Duration,
    ) -> Result<Duration, ConfigError> {
        let d = self.time_limit(v, field, default)?;
        if d.is_zero() {
            let span = v.as_ref().map_or(0..0, |s| s.span());
            return Err(self.err(span, field, "must be more than zero"));
        }
        Ok(d)
    }

    /// A duration a session times itself by: at most [`MAX_TIMEOUT`] (its clocks are 32-bit
    /// stamps, exact within 24 days).
    fn time_limit(
        &self,
        v: &Option<Spanned<toml::Value>>,
        field: &str,
        default: Duration,
    ) -> Result<Duration, ConfigError> {
        let d = self.duration(v, field, default)?;
        if d > MAX_TIMEOUT {
            let span = v.as_ref().map_or(0..0, |s| s.span());
            return Err(self.err(
                span,
                field,
                "at most 24 days (\"24d\"): a session keeps its clocks in 32 bits",
            ));
        }
        Ok(d)
    }

    fn size(
        &self,
        v: &Option<Spanned<toml::Value>>,
        field: &str,
        default: u64,
    ) -> Result<u64, ConfigError> {
        match v {
            None => Ok(default),
            Some(s) => match s.get_ref() {
                toml::Value::Integer(n) if *n >= 0 => Ok(*n as u64),
                toml::Value::String(t) => parse_size(t).map_err(|m| self.err(s.span(), field, m)),
                _ => Err(self.err(
                    s.span(),
                    field,
                    "expected a size such as \"16k\" or a number of bytes",
                )),
            },
        }
    }
}

/// 1-based line and column of byte offset `pos`.
fn line_col(text: &str, pos: usize) -> (usize, usize) {
    let pos = pos.min(text.len());
    let before = &text[..pos];
    let line = before.bytes().filter(|&b| b == b'\n').count() + 1;
    let col = pos - before.rfind('\n').map_or(0, |i| i + 1) + 1;
    (line, col)
}

fn parse_addr(s: &str) -> Result<SocketAddr, String> {
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Ok(a);
    }
    // nginx accepts a bare port for `listen 80`.
    if let Ok(port) = s.parse::<u16>() {
        return Ok(SocketAddr::from(([0, 0, 0, 0], port)));
    }
    Err(format!(
        "invalid address {s:?}: expected IP:PORT such as \"127.0.0.1:8080\" or \"[::1]:8080\" (host names are not resolved)"
    ))
}

/// Read a regular file of at most `max` bytes as UTF-8. A device (`/dev/zero`), a FIFO or a
/// directory is refused before anything is read, so a wrong path cannot hang the caller.
pub fn read_bounded(path: &Path, max: u64) -> Result<String, String> {
    let bytes = read_bounded_bytes(path, max)?;
    String::from_utf8(bytes).map_err(|e| format!("not UTF-8 text: {e}"))
}

pub use crate::sys::read_bounded_bytes;

/// The dotted field a byte offset of a TOML text sits in, for errors the TOML reader reports
/// without one (a wrong type): the table header above it (with its index among array tables
/// of the same name) and the key on its line.
fn field_at(text: &str, pos: usize) -> String {
    let pos = pos.min(text.len());
    let line_start = text[..pos].rfind('\n').map_or(0, |i| i + 1);
    // The nearest `key =` before the position on its line (inline tables have several).
    let before = &text[line_start..pos];
    let key = before
        .rfind('=')
        .map(|eq| {
            let k = before[..eq].trim_end();
            let start = k
                .rfind(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.'))
                .map_or(0, |i| i + 1);
            k[start..].to_string()
        })
        .unwrap_or_default();
    let mut table = String::new();
    let mut counts: HashMap<String, usize> = HashMap::new();
    for line in text[..line_start].lines() {
        let t = line.trim();
        if let Some(name) = t.strip_prefix("[[").and_then(|r| r.split("]]").next()) {
            let name = name.trim().to_string();
            let n = counts.entry(name.clone()).or_insert(0);
            *n += 1;
            // `server.location` entries count within their server.
            if name == "server" {
                counts.remove("server.location");
            }
            let n = counts[&name];
            table = match name.rsplit_once('.') {
                Some((parent, leaf)) => {
                    let pi = counts.get(parent).copied().unwrap_or(1);
                    format!("{parent}[{}].{leaf}[{}]", pi - 1, n - 1)
                }
                None => format!("{name}[{}]", n - 1),
            };
        } else if let Some(name) = t.strip_prefix('[').and_then(|r| r.split(']').next()) {
            table = name.trim().to_string();
        }
    }
    match (table.is_empty(), key.is_empty()) {
        (_, true) => table,
        (true, false) => key,
        (false, false) => format!("{table}.{key}"),
    }
}

/// Number of CPUs this process may run on.
pub fn available_cpus() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

impl Config {
    /// Read and resolve a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let file = path.display().to_string();
        let fail = |message: String| ConfigError {
            file: file.clone(),
            line: 0,
            col: 0,
            field: String::new(),
            message,
        };
        let text = read_bounded(path, defaults::FILE_MAX).map_err(fail)?;
        Config::parse(&file, &text)
    }

    /// Parse and resolve config text; `file` names it in errors.
    pub fn parse(file: &str, text: &str) -> Result<Config, ConfigError> {
        let cx = Ctx { file, text };
        let raw: raw::File = toml::from_str(text).map_err(|e| {
            let span = e.span().unwrap_or(0..0);
            let message = e.message().trim().to_string();
            // Wrong types come without a field name: find it from where the value stands.
            let field =
                if message.starts_with("invalid type") || message.starts_with("invalid value") {
                    field_at(text, span.start)
                } else {
                    String::new()
                };
            cx.err(span, field, message)
        })?;
        resolve(&cx, raw)
    }
}

/// Among `candidates` (index, names), the first with an exact name equal to `host` (any case),
/// else the first with a `*.` wildcard matching it. A trailing dot (`b.example.`, the
/// fully-qualified form) is not part of the name, as in nginx.
pub fn match_name<'a, I>(candidates: I, host: &[u8]) -> Option<usize>
where
    I: Iterator<Item = (usize, &'a [String])> + Clone,
{
    let host = host.strip_suffix(b".").unwrap_or(host);
    let matches = |name: &str| -> bool {
        if let Some(suffix) = name.strip_prefix("*.") {
            host.len() > suffix.len() + 1
                && host[host.len() - suffix.len() - 1] == b'.'
                && host[host.len() - suffix.len()..].eq_ignore_ascii_case(suffix.as_bytes())
        } else {
            host.eq_ignore_ascii_case(name.as_bytes())
        }
    };
    candidates
        .clone()
        .find(|(_, names)| names.iter().any(|n| !n.starts_with("*.") && matches(n)))
        .or_else(|| {
            candidates
                .clone()
                .find(|(_, names)| names.iter().any(|n| matches(n)))
        })
        .map(|(i, _)| i)
}

impl Config {
    /// The server for a request that arrived on `listener` with Host `host` (already without
    /// port, any case): exact name, then `*.` wildcard, then the first server on that listener.
    pub fn find_server(&self, listener: usize, host: &[u8]) -> Option<usize> {
        let on = || {
            self.servers
                .iter()
                .enumerate()
                .filter(move |(_, s)| s.listen.contains(&listener))
                .map(|(i, s)| (i, s.names.as_slice()))
        };
        match_name(on(), host).or_else(|| on().next().map(|(i, _)| i))
    }

    /// Worker `worker`'s row of the message counters of location `loc` (`location_id`).
    #[inline(always)]
    pub fn message_row(&self, loc: u16, worker: usize) -> Option<&crate::metrics::MessageRow> {
        self.message_rows.get(loc, worker)
    }

    /// `message_rows` made from the locations' counters (after they are made or carried).
    pub fn index_message_rows(&mut self) {
        let locations = self.servers.iter().flat_map(|s| &s.locations);
        self.message_rows = MessageRows::of(locations, self.runtime.workers);
    }

    /// The location numbered `id` counting across servers in order (`location_id`).
    pub fn location_by_id(&self, id: u16) -> Option<&Location> {
        if id == u16::MAX {
            return None;
        }
        let mut id = usize::from(id);
        for s in &self.servers {
            if id < s.locations.len() {
                return s.locations.get(id);
            }
            id -= s.locations.len();
        }
        None
    }

    /// The number of location `loc` of server `server`, counting across servers in order
    /// (`u16::MAX`, which names none, past 65,535 locations).
    pub fn location_id(&self, server: usize, loc: usize) -> u16 {
        let before: usize = self.servers[..server]
            .iter()
            .map(|s| s.locations.len())
            .sum();
        u16::try_from(before + loc).unwrap_or(u16::MAX)
    }

    /// The location of `server` with the longest prefix of `path`.
    pub fn find_location(&self, server: usize, path: &[u8]) -> Option<usize> {
        self.servers[server]
            .locations
            .iter()
            .position(|l| path.starts_with(l.path.as_bytes()))
    }
}

mod describe;
#[cfg(test)]
mod tests;

impl Config {
    /// A reload keeps the counters and shared tables of what stays: each server's state
    /// (connections, failures, health) by upstream name and address, each zone's table by name
    /// and size, each location's counters by server and path. Sessions under the old
    /// configuration keep using theirs, which are then the same ones.
    pub fn carry_from(&mut self, old: &Config) {
        for u in &mut self.upstreams {
            let Some(o) = old.upstreams.iter().find(|o| o.name == u.name) else {
                continue;
            };
            for p in &mut u.peers {
                if let Some(op) = o.peers.iter().find(|op| op.addr == p.addr) {
                    p.state = op.state.clone();
                }
            }
        }
        fn zones<T>(new: &mut [limits::Zone<T>], old: &[limits::Zone<T>]) {
            for z in new {
                if let Some(o) = old.iter().find(|o| o.name == z.name && o.bytes == z.bytes) {
                    z.table = o.table.clone();
                }
            }
        }
        zones(&mut self.conn_zones, &old.conn_zones);
        zones(&mut self.req_zones, &old.req_zones);
        for s in &mut self.servers {
            let Some(os) = old.servers.iter().find(|o| o.names == s.names) else {
                continue;
            };
            for l in &mut s.locations {
                if let Some(ol) = os.locations.iter().find(|o| o.path == l.path)
                    && ol.stats.workers() == l.stats.workers()
                {
                    l.stats = ol.stats.clone();
                }
            }
        }
        self.index_message_rows();
    }

    /// What a reload cannot change in a running process (it needs a restart), as warnings.
    pub fn restart_only(&self, old: &Config) -> Vec<String> {
        let (r, o) = (&self.runtime, &old.runtime);
        let mut out = Vec::new();
        let mut differ = |what: &str, changed: bool| {
            if changed {
                out.push(format!(
                    "{what} changed: it takes effect on restart (or a binary upgrade)"
                ));
            }
        };
        differ("runtime.workers", r.workers != o.workers);
        differ(
            "runtime.max_connections",
            r.max_connections != o.max_connections,
        );
        differ(
            "runtime.buffers / buffer_size",
            r.buffers != o.buffers || r.buffer_size != o.buffer_size,
        );
        differ(
            "admin.listen",
            self.admin.as_ref().map(|a| a.listen) != old.admin.as_ref().map(|a| a.listen),
        );
        differ(
            "runtime.upgrade_socket",
            r.upgrade_socket != o.upgrade_socket,
        );
        out
    }
}
