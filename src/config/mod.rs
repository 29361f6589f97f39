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
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: String,
    pub line: usize,
    pub col: usize,
    /// Dotted path of the field, e.g. `server[0].location[1].upstream`; empty when the TOML
    /// itself does not parse.
    pub field: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_empty() {
            write!(
                f,
                "{}:{}:{}: {}",
                self.file, self.line, self.col, self.message
            )
        } else {
            write!(
                f,
                "{}:{}:{}: {}: {}",
                self.file, self.line, self.col, self.field, self.message
            )
        }
    }
}

impl std::error::Error for ConfigError {}

mod raw {
    //! The file as written. Unknown keys are errors (`deny_unknown_fields`).
    use super::*;

    #[derive(Deserialize, Default)]
    #[serde(deny_unknown_fields)]
    pub struct File {
        #[serde(default)]
        pub runtime: Runtime,
        #[serde(default)]
        pub tuning: Tuning,
        #[serde(default)]
        pub admin: Admin,
        #[serde(default)]
        pub upstream: Vec<Spanned<Upstream>>,
        #[serde(default)]
        pub server: Vec<Spanned<Server>>,
    }

    #[derive(Deserialize, Default)]
    #[serde(deny_unknown_fields)]
    pub struct Runtime {
        pub workers: Option<Spanned<toml::Value>>,
        pub max_connections: Option<Spanned<i64>>,
        pub shutdown_grace: Option<Spanned<toml::Value>>,
        pub buffer_size: Option<Spanned<toml::Value>>,
        pub buffers: Option<Spanned<i64>>,
        pub access_log: Option<bool>,
    }

    #[derive(Deserialize, Default)]
    #[serde(deny_unknown_fields)]
    pub struct Admin {
        pub listen: Option<Spanned<String>>,
    }

    #[derive(Deserialize, Default)]
    #[serde(deny_unknown_fields)]
    pub struct Tuning {
        pub apply: Option<bool>,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Upstream {
        pub name: Spanned<String>,
        pub balance: Option<Spanned<String>>,
        pub servers: Spanned<Vec<Spanned<Peer>>>,
        pub source: Option<Spanned<toml::Value>>,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Peer {
        pub addr: Spanned<String>,
        pub weight: Option<Spanned<i64>>,
        #[serde(default)]
        pub backup: bool,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Server {
        pub listen: Spanned<Vec<Spanned<String>>>,
        #[serde(default)]
        pub server_name: Vec<Spanned<String>>,
        pub header_timeout: Option<Spanned<toml::Value>>,
        pub header_max: Option<Spanned<toml::Value>>,
        pub request_line_max: Option<Spanned<toml::Value>>,
        pub header_line_max: Option<Spanned<toml::Value>>,
        pub keepalive_timeout: Option<Spanned<toml::Value>>,
        pub keepalive_requests: Option<Spanned<i64>>,
        #[serde(default)]
        pub location: Vec<Spanned<Location>>,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Location {
        pub path: Spanned<String>,
        pub upstream: Spanned<String>,
        pub connect_timeout: Option<Spanned<toml::Value>>,
        pub read_timeout: Option<Spanned<toml::Value>>,
        pub send_timeout: Option<Spanned<toml::Value>>,
        pub body_timeout: Option<Spanned<toml::Value>>,
        pub upgrade: Option<Spanned<Vec<Spanned<String>>>>,
    }
}

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
}

/// Most servers one upstream may list (each is tried at most once per request).
pub const MAX_SERVERS: usize = 1024;

/// One backend address.
#[derive(Debug, Clone, PartialEq)]
pub struct Peer {
    pub addr: SocketAddr,
    pub weight: u32,
    pub backup: bool,
}

/// How an upstream picks a server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Balance {
    /// nginx's smooth weighted round robin.
    RoundRobin,
}

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
}

/// The resolved configuration the workers run on.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// The file it came from, for messages.
    pub source: String,
    pub runtime: Runtime,
    /// `[tuning] apply = true`: write the preflight's sysctl fixes at startup (when root).
    pub tuning_apply: bool,
    /// `[admin] listen`: where `/healthz`, `/status` and `/metrics` are served (none if unset).
    pub admin: Option<SocketAddr>,
    /// Distinct listen addresses; each worker opens one SO_REUSEPORT socket per entry.
    pub listeners: Vec<SocketAddr>,
    pub servers: Vec<Server>,
    pub upstreams: Vec<Upstream>,
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
        let d = self.duration(v, field, default)?;
        if d.is_zero() {
            let span = v.as_ref().map_or(0..0, |s| s.span());
            return Err(self.err(span, field, "must be more than zero"));
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
    use std::io::Read;
    let f = std::fs::File::open(path).map_err(|e| format!("cannot read: {e}"))?;
    let meta = f.metadata().map_err(|e| format!("cannot read: {e}"))?;
    if !meta.is_file() {
        return Err("not a regular file".into());
    }
    if meta.len() > max {
        return Err(format!(
            "file is {} bytes, larger than {max} bytes: not a configuration",
            meta.len()
        ));
    }
    let mut bytes = Vec::new();
    f.take(max + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read: {e}"))?;
    if bytes.len() as u64 > max {
        return Err(format!("file grew past {max} bytes while being read"));
    }
    String::from_utf8(bytes).map_err(|e| format!("not UTF-8 text: {e}"))
}

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

fn resolve(cx: &Ctx<'_>, raw: raw::File) -> Result<Config, ConfigError> {
    let rt = &raw.runtime;
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
    let runtime = Runtime {
        workers,
        max_connections,
        shutdown_grace,
        buffer_size: buffer_size as u32,
        buffers,
        access_log: rt.access_log.unwrap_or(true),
    };

    let mut upstreams = Vec::new();
    let mut by_name: HashMap<String, usize> = HashMap::new();
    for (ui, u) in raw.upstream.iter().enumerate() {
        let u = u.get_ref();
        let f = format!("upstream[{ui}]");
        let name = u.name.get_ref().clone();
        if name.is_empty() {
            return Err(cx.err(u.name.span(), format!("{f}.name"), "must not be empty"));
        }
        if by_name.insert(name.clone(), ui).is_some() {
            return Err(cx.err(
                u.name.span(),
                format!("{f}.name"),
                format!("duplicate upstream name {name:?}"),
            ));
        }
        let balance = match u.balance.as_ref().map(|b| b.get_ref().as_str()) {
            None | Some("round_robin") => Balance::RoundRobin,
            Some(other) => {
                let span = u.balance.as_ref().map_or(0..0, |b| b.span());
                let msg = if ["least_conn", "ip_hash", "hash"].contains(&other) {
                    format!(
                        "balance {other:?} is not available in this version; use \"round_robin\""
                    )
                } else {
                    format!("unknown balance {other:?}; expected \"round_robin\"")
                };
                return Err(cx.err(span, format!("{f}.balance"), msg));
            }
        };
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
            let addr = parse_addr(p.addr.get_ref())
                .map_err(|m| cx.err(p.addr.span(), format!("{pf}.addr"), m))?;
            let weight = match &p.weight {
                None => 1,
                Some(w) if (1..=1000).contains(w.get_ref()) => *w.get_ref() as u32,
                Some(w) => {
                    return Err(cx.err(w.span(), format!("{pf}.weight"), "must be from 1 to 1000"));
                }
            };
            peers.push(Peer {
                addr,
                weight,
                backup: p.backup,
            });
        }
        if peers.iter().all(|p| p.backup) {
            return Err(cx.err(
                u.servers.span(),
                format!("{f}.servers"),
                "needs at least one server that is not a backup",
            ));
        }
        let source = match &u.source {
            None => Vec::new(),
            Some(v) => {
                let field = format!("{f}.source");
                let items: Vec<String> = match v.get_ref() {
                    toml::Value::String(s) => vec![s.clone()],
                    toml::Value::Array(a) if a.iter().all(|x| x.is_str()) => {
                        a.iter().map(|x| x.as_str().unwrap_or_default().to_string()).collect()
                    }
                    _ => return Err(cx.err(v.span(), field, "expected an address, a CIDR such as \"127.0.1.0/24\", or a list of addresses")),
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
        };
        upstreams.push(Upstream {
            name,
            balance,
            peers,
            source,
        });
    }

    let admin = match &raw.admin.listen {
        None => None,
        Some(a) => Some(parse_addr(a.get_ref()).map_err(|m| cx.err(a.span(), "admin.listen", m))?),
    };
    let mut listeners: Vec<SocketAddr> = Vec::new();
    let mut servers = Vec::new();
    if raw.server.is_empty() {
        return Err(cx.err(0..0, "server", "at least one [[server]] is needed"));
    }
    for (si, s) in raw.server.iter().enumerate() {
        let s = s.get_ref();
        let f = format!("server[{si}]");
        if s.listen.get_ref().is_empty() {
            return Err(cx.err(
                s.listen.span(),
                format!("{f}.listen"),
                "needs at least one address",
            ));
        }
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
        let mut names = Vec::new();
        for (ni, n) in s.server_name.iter().enumerate() {
            let name = n.get_ref().trim().to_ascii_lowercase();
            if name.is_empty() || name.contains(|c: char| c.is_whitespace() || c == '/' || c == ':')
            {
                return Err(cx.err(
                    n.span(),
                    format!("{f}.server_name[{ni}]"),
                    format!("invalid server name {:?}", n.get_ref()),
                ));
            }
            names.push(name);
        }
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
        let keepalive_timeout = cx.duration(
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
            let l = l.get_ref();
            let lf = format!("{f}.location[{li}]");
            let path = l.path.get_ref().clone();
            if !path.starts_with('/') {
                return Err(cx.err(
                    l.path.span(),
                    format!("{lf}.path"),
                    format!("path {path:?} must start with '/'"),
                ));
            }
            if locations.iter().any(|x: &Location| x.path == path) {
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
                            || !v.bytes().all(|b| {
                                b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
                            })
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
            locations.push(Location {
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
            });
        }
        if locations.is_empty() {
            return Err(cx.err(
                0..0,
                format!("{f}.location"),
                "a server needs at least one [[server.location]]",
            ));
        }
        locations.sort_by_key(|l| std::cmp::Reverse(l.path.len()));
        servers.push(Server {
            listen,
            names,
            header_timeout,
            header_max: header_max as u32,
            request_line_max,
            header_line_max,
            keepalive_timeout,
            keepalive_requests,
            locations,
        });
    }
    Ok(Config {
        source: cx.file.to_string(),
        runtime,
        tuning_apply: raw.tuning.apply.unwrap_or(false),
        admin,
        listeners,
        servers,
        upstreams,
    })
}

impl Config {
    /// The server for a request that arrived on `listener` with Host `host` (already without
    /// port, any case): exact name, then `*.` wildcard, then the first server on that listener.
    pub fn find_server(&self, listener: usize, host: &[u8]) -> Option<usize> {
        let on: Vec<usize> = (0..self.servers.len())
            .filter(|&i| self.servers[i].listen.contains(&listener))
            .collect();
        let matches = |name: &str| -> bool {
            if let Some(suffix) = name.strip_prefix("*.") {
                host.len() > suffix.len() + 1
                    && host[host.len() - suffix.len() - 1] == b'.'
                    && host[host.len() - suffix.len()..].eq_ignore_ascii_case(suffix.as_bytes())
            } else {
                host.eq_ignore_ascii_case(name.as_bytes())
            }
        };
        on.iter()
            .copied()
            .find(|&i| {
                self.servers[i]
                    .names
                    .iter()
                    .any(|n| !n.starts_with("*.") && matches(n))
            })
            .or_else(|| {
                on.iter()
                    .copied()
                    .find(|&i| self.servers[i].names.iter().any(|n| matches(n)))
            })
            .or_else(|| on.first().copied())
    }

    /// The location of `server` with the longest prefix of `path`.
    pub fn find_location(&self, server: usize, path: &[u8]) -> Option<usize> {
        self.servers[server]
            .locations
            .iter()
            .position(|l| path.starts_with(l.path.as_bytes()))
    }

    /// What `ringway check` prints: the configuration as understood, with defaults filled in.
    pub fn describe(&self) -> String {
        use std::fmt::Write;
        let mut o = String::new();
        let r = &self.runtime;
        let _ = writeln!(
            o,
            "runtime: workers={} max_connections={} shutdown_grace={} buffers={}x{}B access_log={}",
            r.workers,
            r.max_connections,
            fmt_duration(r.shutdown_grace),
            r.buffers,
            r.buffer_size,
            r.access_log
        );
        for u in &self.upstreams {
            let _ = writeln!(o, "upstream {:?} balance={:?}", u.name, u.balance);
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
                    "  server {} weight={}{}",
                    p.addr,
                    p.weight,
                    if p.backup { " backup" } else { "" }
                );
            }
        }
        for (i, s) in self.servers.iter().enumerate() {
            let listen: Vec<String> = s
                .listen
                .iter()
                .map(|&l| self.listeners[l].to_string())
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
            for l in &s.locations {
                let _ = writeln!(
                    o,
                    "  location {:?} -> {} connect={} read={} send={} body={} upgrade={}",
                    l.path,
                    self.upstreams[l.upstream].name,
                    fmt_duration(l.connect_timeout),
                    fmt_duration(l.read_timeout),
                    fmt_duration(l.send_timeout),
                    fmt_duration(l.body_timeout),
                    l.upgrade.join(",")
                );
            }
        }
        o
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[runtime]
workers = 2
max_connections = 1000

[[upstream]]
name = "ws"
servers = [
  { addr = "127.0.0.1:9001", weight = 3 },
  { addr = "127.0.0.1:9002" },
  { addr = "127.0.0.1:9003", backup = true },
]

[[server]]
listen = ["127.0.0.1:8080"]
server_name = ["ws.example.com", "*.example.org"]

[[server.location]]
path = "/"
upstream = "ws"

[[server.location]]
path = "/ws/"
upstream = "ws"
read_timeout = "7d"

[[server]]
listen = ["127.0.0.1:8080", "8081"]
server_name = ["other.example.com"]
[[server.location]]
path = "/"
upstream = "ws"
"#;

    #[test]
    fn good_config_resolves() {
        let c = Config::parse("t.toml", GOOD).unwrap();
        assert_eq!(c.runtime.workers, 2);
        assert_eq!(c.listeners.len(), 2);
        assert_eq!(c.upstreams[0].peers[0].weight, 3);
        assert!(c.upstreams[0].peers[2].backup);
        assert_eq!(c.servers[0].locations[0].path, "/ws/");
        assert_eq!(
            c.servers[0].locations[0].read_timeout,
            Duration::from_secs(7 * 86400)
        );
        assert_eq!(
            c.servers[0].locations[1].read_timeout,
            defaults::READ_TIMEOUT
        );
        assert_eq!(c.servers[0].header_max, defaults::HEADER_MAX);
        assert_eq!(c.find_location(0, b"/ws/chat"), Some(0));
        assert_eq!(c.find_location(0, b"/other"), Some(1));
        assert_eq!(c.find_server(0, b"WS.example.com"), Some(0));
        assert_eq!(c.find_server(0, b"other.example.com"), Some(1));
        assert_eq!(c.find_server(0, b"a.example.org"), Some(0));
        assert_eq!(c.find_server(0, b"unknown"), Some(0));
        assert_eq!(c.find_server(1, b"unknown"), Some(1));
        assert!(c.describe().contains("location \"/ws/\" -> ws"));
    }

    fn err(text: &str) -> ConfigError {
        Config::parse("t.toml", text).unwrap_err()
    }

    #[test]
    fn unknown_key_names_line() {
        let e = err("[runtime]\nworkers = 1\nbogus = 3\n");
        assert_eq!(e.line, 3, "{e}");
        assert!(e.message.contains("bogus"), "{e}");
    }

    #[test]
    fn unknown_upstream_names_field_and_line() {
        let t = GOOD.replace(
            "path = \"/ws/\"\nupstream = \"ws\"",
            "path = \"/ws/\"\nupstream = \"nope\"",
        );
        let e = err(&t);
        assert_eq!(e.field, "server[0].location[1].upstream");
        let line = t.lines().position(|l| l.contains("\"nope\"")).unwrap() + 1;
        assert_eq!(e.line, line);
        assert!(e.to_string().starts_with(&format!("t.toml:{line}:")), "{e}");
        assert!(e.message.contains("defined: ws"), "{e}");
    }

    #[test]
    fn bad_address_and_duration() {
        let e = err(&GOOD.replace("127.0.0.1:9002", "localhost:9002"));
        assert_eq!(e.field, "upstream[0].servers[1].addr");
        let e = err(&GOOD.replace("\"7d\"", "\"7 days\""));
        assert_eq!(e.field, "server[0].location[1].read_timeout");
        assert!(e.message.contains("unknown unit"), "{e}");
        let e = err(&GOOD.replace("workers = 2", "workers = \"many\""));
        assert_eq!(e.field, "runtime.workers");
        assert_eq!(e.line, 3);
    }

    #[test]
    fn upstream_source_addresses() {
        let t = GOOD.replace("name = \"ws\"", "name = \"ws\"\nsource = \"127.0.1.0/30\"");
        let c = Config::parse("t.toml", &t).unwrap();
        assert_eq!(
            c.upstreams[0].source,
            vec![
                "127.0.1.1".parse::<std::net::IpAddr>().unwrap(),
                "127.0.1.2".parse().unwrap()
            ]
        );
        let t = GOOD.replace(
            "name = \"ws\"",
            "name = \"ws\"\nsource = [\"127.0.1.5\", \"127.0.1.9\"]",
        );
        assert_eq!(
            Config::parse("t.toml", &t).unwrap().upstreams[0]
                .source
                .len(),
            2
        );
        let e = err(&GOOD.replace("name = \"ws\"", "name = \"ws\"\nsource = \"127.0.1.0/8\""));
        assert_eq!(e.field, "upstream[0].source");
        let e = err(&GOOD.replace("name = \"ws\"", "name = \"ws\"\nsource = \"::1\""));
        assert!(e.message.contains("families"), "{e}");
    }

    #[test]
    fn other_errors() {
        assert!(err("").message.contains("[[server]]"));
        let e = err(&GOOD.replace("name = \"ws\"", "name = \"ws\"\nbalance = \"ip_hash\""));
        assert!(e.message.contains("not available"), "{e}");
        let e = err(&GOOD.replace("path = \"/ws/\"", "path = \"ws\""));
        assert!(e.message.contains("must start with"), "{e}");
        let e = err("[[server]\n");
        assert_eq!(e.line, 1);
    }
}
