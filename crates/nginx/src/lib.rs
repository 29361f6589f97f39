//! `ringway import-nginx`: an nginx configuration (its WebSocket proxying) as ringway TOML.
//!
//! What maps onto a ringway key is written with the nginx line it came from; what ringway
//! always does (no buffering, the Upgrade/Connection rule, the forwarding headers) is
//! recognised; everything else gets a warning with its file and line saying what ringway does
//! instead. Nothing is dropped without one.

mod auth;
mod command;
mod common;
mod notes;
mod parse;
mod server;
mod toml_out;
mod upstream;

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

pub use command::{command, write_new};
use notes::note;
pub use parse::{Directive, ParseError, Where, read as directives};
use toml_out::{Table, V};

/// What an import produced: the TOML text and the warnings (also at its head, as comments).
pub struct Import {
    pub toml: String,
    pub warnings: Vec<String>,
}

/// Read `path` (and what it includes) and translate it.
pub fn import(path: &Path) -> Result<Import, ParseError> {
    let list = parse::read(path)?;
    let base = std::fs::canonicalize(path)
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf))
        .unwrap_or_else(|| path.parent().map(Path::to_path_buf).unwrap_or_default());
    let mut t = Translator {
        base,
        warnings: Vec::new(),
        recognised: Vec::new(),
        runtime: Table::default(),
        conn_zones: Vec::new(),
        req_zones: Vec::new(),
        upstreams: Vec::new(),
        servers: Vec::new(),
        maps: HashMap::new(),
        auth_targets: HashMap::new(),
        auth_vars: Vec::new(),
    };
    t.main(&list)?;
    // In file order; warnings about the whole file last.
    t.warnings.sort_by_key(|w| {
        let mut it = w.splitn(3, ':');
        match (it.next(), it.next().and_then(|l| l.parse::<u32>().ok())) {
            (Some(f), Some(l)) => (0, f.to_string(), l),
            _ => (1, String::new(), 0),
        }
    });
    Ok(Import {
        toml: t.emit(path),
        warnings: t.warnings,
    })
}

fn err(at: &Where, m: impl std::fmt::Display) -> ParseError {
    ParseError(format!("{at}: {m}"))
}

/// nginx's time (`30s`, `7d`, `1h 30m`, `500ms`; a bare number is seconds) in milliseconds:
/// ringway's durations are written the same way.
pub fn nginx_time(s: &str) -> Result<u64, String> {
    ringway_proxy::config::parse_duration(s)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Milliseconds as ringway writes a duration back: "7d", "30s", "1500ms".
fn dur(ms: u64) -> V {
    V::S(ringway_proxy::config::fmt_duration(
        std::time::Duration::from_millis(ms),
    ))
}

/// Bytes as ringway writes a size: "10m", "16k", or bytes.
fn size(bytes: u64) -> V {
    V::S(if bytes.is_multiple_of(1 << 20) {
        format!("{}m", bytes >> 20)
    } else if bytes.is_multiple_of(1 << 10) {
        format!("{}k", bytes >> 10)
    } else {
        bytes.to_string()
    })
}

/// Settings nginx inherits from http to server to location (a level that sets one of the
/// list directives — proxy_set_header, limit_conn, … — replaces the outer level's list).
#[derive(Clone, Default)]
struct Inherit {
    connect: Option<(u64, Where)>,
    read: Option<(u64, Where)>,
    send: Option<(u64, Where)>,
    body: Option<(u64, Where)>,
    headers: Option<Vec<Directive>>,
    limit_conn: Option<Vec<Directive>>,
    limit_conn_status: Option<(i64, Where)>,
    limit_req: Option<Vec<Directive>>,
    limit_req_status: Option<(i64, Where)>,
    next_upstream: Option<Directive>,
    next_tries: Option<(i64, Where)>,
    next_timeout: Option<(u64, Where)>,
    bind: Option<Directive>,
    ssl_verify: Option<bool>,
    ssl_ca: Option<String>,
    ssl_name: Option<String>,
    ssl_server_name: Option<bool>,
    // server level
    certs: Option<Vec<(String, Where)>>,
    keys: Option<Vec<(String, Where)>>,
    protocols: Option<Directive>,
    header_timeout: Option<(u64, Where)>,
    header_buffers: Option<(u64, u64, Where)>,
    keepalive_timeout: Option<(u64, Where)>,
    keepalive_requests: Option<(i64, Where)>,
    real_ip_header: Option<Directive>,
    set_real_ip_from: Option<Vec<Directive>>,
    auth_request: Option<Directive>,
    auth_set: Option<Vec<Directive>>,
    /// The list directives set at the level being read (the first replaces the outer list).
    here: Vec<&'static str>,
}

impl Inherit {
    /// What a block inside this level starts from.
    fn inner(&self) -> Inherit {
        Inherit {
            here: Vec::new(),
            ..self.clone()
        }
    }
}

struct Upstream {
    name: String,
    table: Table,
    servers: Vec<(V, Where)>,
    /// proxy_bind / TLS settings brought by the locations that use it.
    source: Option<(String, String)>,
    tls: Option<(Table, String)>,
}

struct Server {
    at: Where,
    table: Table,
    locations: Vec<(Where, Table)>,
    default_server: bool,
}

struct Translator {
    base: PathBuf,
    warnings: Vec<String>,
    /// Lines that say what ringway does anyway (written at the head of the output).
    recognised: Vec<String>,
    runtime: Table,
    conn_zones: Vec<(Where, Table)>,
    req_zones: Vec<(Where, Table)>,
    upstreams: Vec<Upstream>,
    servers: Vec<Server>,
    /// `map $http_upgrade $var { default upgrade; '' close; }`: the variables that are
    /// ringway's Connection rule.
    maps: HashMap<String, bool>,
    /// The server being read: its locations with a proxy_pass, by path (`auth_request`'s
    /// targets).
    auth_targets: HashMap<String, Directive>,
    /// The location being read: the variables its `auth_request_set` fills.
    auth_vars: Vec<String>,
}

impl Translator {
    fn warn(&mut self, d: &Directive, m: impl std::fmt::Display) {
        // Words as they would be written back: an empty one or one with blanks quoted.
        let words = std::iter::once(d.name.clone())
            .chain(d.args.iter().map(|a| {
                if a.is_empty() || a.contains([' ', '\t']) {
                    format!("\"{a}\"")
                } else {
                    a.clone()
                }
            }))
            .collect::<Vec<_>>()
            .join(" ");
        let words = if words.len() > 60 {
            format!("{}…", &words[..words.floor_char_boundary(57)])
        } else {
            words
        };
        self.warnings.push(format!(
            "{}: `{}`: {m}",
            d.at,
            words.replace('\n', "\\n").replace('\r', "\\r")
        ));
    }

    /// A directive this level does not translate: its note, or "not translated".
    fn other(&mut self, d: &Directive) {
        let what = note(&d.name).unwrap_or(
            "not translated: ringway has no equivalent (or the importer does not know this directive)",
        );
        match &d.block {
            Some(b) => self.warn(
                d,
                format!(
                    "{what}; this block and the {} directive(s) in it are left out",
                    b.len()
                ),
            ),
            None => self.warn(d, what),
        }
    }

    fn args<'a>(
        &self,
        d: &'a Directive,
        n: std::ops::RangeInclusive<usize>,
    ) -> Result<&'a [String], ParseError> {
        if n.contains(&d.args.len()) {
            Ok(&d.args)
        } else if n.start() == n.end() {
            Err(err(
                &d.at,
                format!(
                    "\"{}\" takes {} argument(s), has {}",
                    d.name,
                    n.start(),
                    d.args.len()
                ),
            ))
        } else {
            Err(err(
                &d.at,
                format!(
                    "\"{}\" takes {} to {} arguments, has {}",
                    d.name,
                    n.start(),
                    n.end(),
                    d.args.len()
                ),
            ))
        }
    }

    fn time(&self, d: &Directive) -> Result<u64, ParseError> {
        let a = self.args(d, 1..=1)?;
        nginx_time(&a[0]).map_err(|e| err(&d.at, format!("{}: {e}", d.name)))
    }

    /// A timeout ringway keeps, from `d`'s argument (see `at_most_max`).
    fn timeout(&mut self, d: &Directive) -> Result<u64, ParseError> {
        let ms = self.time(d)?;
        Ok(self.at_most_max(d, ms))
    }

    /// `ms` from directive `d`, at most ringway's longest timeout (24 days, which a config may
    /// not exceed), with a warning when it was longer.
    fn at_most_max(&mut self, d: &Directive, ms: u64) -> u64 {
        let max = ringway_proxy::config::MAX_TIMEOUT.as_millis() as u64;
        if ms > max {
            self.warn(d, "longer than ringway's longest timeout: imported as 24d");
        }
        ms.min(max)
    }

    /// The directive's one argument, a number.
    fn one_int(&self, d: &Directive) -> Result<i64, ParseError> {
        let a = self.args(d, 1..=1)?;
        self.int(d, &a[0])
    }

    fn int(&self, d: &Directive, s: &str) -> Result<i64, ParseError> {
        s.parse::<i64>()
            .ok()
            .filter(|n| *n >= 0)
            .ok_or_else(|| err(&d.at, format!("{}: invalid number {s:?}", d.name)))
    }

    fn on_off(&self, d: &Directive) -> Result<bool, ParseError> {
        match self.args(d, 1..=1)?[0].as_str() {
            "on" => Ok(true),
            "off" => Ok(false),
            o => Err(err(
                &d.at,
                format!("{}: expected on or off, got {o:?}", d.name),
            )),
        }
    }

    /// A path as written in nginx (relative to its configuration directory), absolute.
    fn path(&self, p: &str) -> String {
        let p = Path::new(p);
        if p.is_absolute() {
            p.display().to_string()
        } else {
            self.base.join(p).display().to_string()
        }
    }

    /// The main context: runtime directives, `events`, `http` (and `stream`); http-level
    /// directives written outside `http { }` (a conf.d file) are taken as http's.
    fn main(&mut self, list: &[Directive]) -> Result<(), ParseError> {
        let has_http = list.iter().any(|d| d.name == "http" && d.block.is_some());
        let mut http: Vec<Directive> = Vec::new();
        let mut workers: Option<(usize, String)> = None;
        let mut worker_conns: Option<(i64, Where)> = None;
        for d in list {
            match d.name.as_str() {
                "http" if d.block.is_some() => {
                    http.extend(d.block.clone().unwrap_or_default());
                }
                "events" if d.block.is_some() => {
                    for e in d.block.as_deref().unwrap_or_default() {
                        if e.name == "worker_connections" {
                            worker_conns = Some((self.one_int(e)?, e.at.clone()));
                        } else {
                            self.other(e);
                        }
                    }
                }
                "worker_processes" => {
                    let a = self.args(d, 1..=1)?;
                    if a[0] == "auto" {
                        self.runtime.set(
                            "workers",
                            V::S("auto".into()),
                            format!(
                                "{}: worker_processes auto: one worker thread per core",
                                d.at
                            ),
                        );
                        workers = Some((ringway_proxy::config::available_cpus(), "auto".into()));
                    } else {
                        let n = self.int(d, &a[0])?.max(1);
                        self.runtime
                            .set("workers", V::I(n), format!("{}: worker_processes", d.at));
                        workers = Some((n as usize, n.to_string()));
                    }
                }
                "worker_rlimit_nofile" => {
                    let n = self.one_int(d)?;
                    self.warn(
                        d,
                        format!(
                            "ringway does not set its descriptor limit: give the process LimitNOFILE={n} or more (tuning/ringway.service has 1048576); `ringway preflight --config` checks it against max_connections (two descriptors per WebSocket)"
                        ),
                    );
                }
                "worker_shutdown_timeout" => {
                    let ms = self.time(d)?;
                    self.runtime.set(
                        "shutdown_grace",
                        dur(ms),
                        format!(
                            "{}: worker_shutdown_timeout: sessions get this long after SIGTERM",
                            d.at
                        ),
                    );
                }
                "stream" | "mail" if d.block.is_some() => {
                    self.warn(
                        d,
                        "ringway proxies HTTP and WebSockets only: this block (TCP/UDP or mail proxying) is not imported",
                    );
                }
                _ => {
                    if has_http && is_http_level(&d.name) {
                        self.warn(
                            d,
                            "outside http { }: nginx accepts this directive only inside http; imported as if it were there",
                        );
                    }
                    http.push(d.clone());
                }
            }
        }
        if let Some((wc, at)) = worker_conns {
            let (n, how) = workers.unwrap_or((1, "1 (nginx's default worker_processes)".into()));
            let sessions = (wc as u64 * n as u64 / 2).max(1);
            self.runtime.set(
                "max_connections",
                V::I(sessions as i64),
                format!(
                    "{at}: worker_connections {wc} x worker_processes {how}{} / 2 (a proxied WebSocket is two connections)",
                    if how == "auto" { format!(" (= {n} here)") } else { String::new() }
                ),
            );
        }
        self.http(&http)
    }

    fn http(&mut self, list: &[Directive]) -> Result<(), ParseError> {
        let mut inh = Inherit::default();
        for d in list {
            match d.name.as_str() {
                "upstream" | "server" => {}
                "map" => self.map(d)?,
                "limit_conn_zone" | "limit_req_zone" => self.zone(d)?,
                _ => self.common(d, &mut inh)?,
            }
        }
        for d in list.iter().filter(|d| d.name == "upstream") {
            self.upstream(d)?;
        }
        for d in list.iter().filter(|d| d.name == "server") {
            let Some(block) = &d.block else {
                return Err(err(
                    &d.at,
                    "\"server\" outside an upstream needs a { } block",
                ));
            };
            self.server(d, block, &inh)?;
        }
        if self.servers.is_empty() {
            self.warnings.push(
                "no server { } with a proxy_pass location: the result has no [[server]] and does not check until one is added".into(),
            );
        }
        Ok(())
    }

    fn map(&mut self, d: &Directive) -> Result<(), ParseError> {
        let a = self.args(d, 2..=2)?;
        let body = d.block.as_deref().unwrap_or_default();
        let entry = |k: &str| {
            body.iter()
                .find(|e| e.name == k)
                .and_then(|e| e.args.first())
                .map(String::as_str)
        };
        let var = a[1].trim_start_matches('$').to_string();
        let is_rule = a[0] == "$http_upgrade"
            && entry("default") == Some("upgrade")
            && matches!(entry(""), Some("close" | ""))
            && body.len() == 2;
        if is_rule {
            self.recognised.push(format!(
                "{}: map $http_upgrade ${var}: ringway's own rule (Connection: upgrade with an upgrade, close otherwise)",
                d.at
            ));
            self.maps.insert(var, true);
        } else {
            self.maps.insert(var.clone(), false);
            self.warn(
                d,
                format!(
                    "ringway has no map: ${var} is not available (each use of it is warned about)"
                ),
            );
        }
        Ok(())
    }

    fn zone(&mut self, d: &Directive) -> Result<(), ParseError> {
        let a = self.args(d, 2..=3)?;
        let mut t = Table::default();
        let mut name = None;
        for w in &a[1..] {
            if let Some(z) = w.strip_prefix("zone=") {
                let (n, sz) = z.split_once(':').unwrap_or((z, ""));
                name = Some(n.to_string());
                t.set("name", V::S(n.into()), "");
                if !sz.is_empty() {
                    let b = ringway_proxy::config::parse_size(sz).map_err(|e| err(&d.at, e))?;
                    t.set("size", size(b), "");
                }
            } else if let Some(r) = w.strip_prefix("rate=")
                && d.name == "limit_req_zone"
            {
                t.set("rate", V::S(r.into()), "");
            } else if w == "sync" {
                self.warn(
                    d,
                    "sync: each ringway process keeps its own zone (its workers share it)",
                );
            } else {
                return Err(err(&d.at, format!("{}: unexpected {w:?}", d.name)));
            }
        }
        if name.is_none() {
            return Err(err(&d.at, format!("{} needs zone=NAME:SIZE", d.name)));
        }
        let key = a[0].as_str();
        if key != "$binary_remote_addr" && key != "$remote_addr" {
            self.warn(
                d,
                format!("ringway's zones count per client address: key {key} is imported as $binary_remote_addr"),
            );
        }
        t.rows.insert(
            1,
            toml_out::Row::new("key", V::S("$binary_remote_addr".into()), ""),
        );
        if d.name == "limit_conn_zone" {
            self.conn_zones.push((d.at.clone(), t));
        } else {
            self.req_zones.push((d.at.clone(), t));
        }
        Ok(())
    }

    fn emit(&mut self, path: &Path) -> String {
        let mut o = String::new();
        let _ = writeln!(
            o,
            "# Imported from {} by `ringway import-nginx` (ringway {}).",
            toml_out::comment(&path.display().to_string()),
            env!("CARGO_PKG_VERSION")
        );
        let _ = writeln!(
            o,
            "# Check it with `ringway check --config FILE`; `docs/configuration.md` lists every key."
        );
        if self.warnings.is_empty() {
            let _ = writeln!(o, "# Every directive was translated.");
        } else {
            let _ = writeln!(
                o,
                "#\n# Not translated as written ({}):",
                self.warnings.len()
            );
            for w in &self.warnings {
                let _ = writeln!(o, "#   {}", toml_out::comment(w));
            }
        }
        if !self.recognised.is_empty() {
            self.recognised.sort();
            self.recognised.dedup();
            let _ = writeln!(o, "#\n# Recognised as what ringway does anyway:");
            for r in &self.recognised {
                let _ = writeln!(o, "#   {}", toml_out::comment(r));
            }
        }
        if !self.runtime.rows.is_empty() {
            let _ = writeln!(o, "\n[runtime]");
            o.push_str(&self.runtime.render());
        }
        for (key, zones) in [
            ("limit_conn_zone", &self.conn_zones),
            ("limit_req_zone", &self.req_zones),
        ] {
            for (at, t) in zones {
                let _ = writeln!(o, "\n[[{key}]]   # {}", toml_out::comment(&at.to_string()));
                o.push_str(&t.render());
            }
        }
        for u in &mut self.upstreams {
            if let Some((s, c)) = u.source.take() {
                u.table.set("source", V::S(s), c);
            }
            if let Some((t, c)) = u.tls.take() {
                u.table.set("tls", t.inline(), c);
            }
            let _ = writeln!(o, "\n[[upstream]]");
            o.push_str(&u.table.render());
            let _ = writeln!(o, "servers = [");
            for (s, at) in &u.servers {
                let _ = writeln!(
                    o,
                    "  {:<40} # {}",
                    format!("{s},"),
                    toml_out::comment(&at.to_string())
                );
            }
            let _ = writeln!(o, "]");
        }
        // nginx's default server on an address is the one marked default_server, else the
        // first; ringway's is the first.
        self.servers.sort_by_key(|s| !s.default_server);
        for s in &self.servers {
            let _ = writeln!(
                o,
                "\n[[server]]   # {}",
                toml_out::comment(&s.at.to_string())
            );
            o.push_str(&s.table.render());
            for (at, l) in &s.locations {
                let _ = writeln!(
                    o,
                    "\n[[server.location]]   # {}",
                    toml_out::comment(&at.to_string())
                );
                o.push_str(&l.render());
            }
        }
        o
    }
}

/// `host[:port]` with the default port added.
fn with_port(a: &str, port: u16) -> String {
    if a.starts_with('[') {
        if a.contains("]:") {
            a.to_string()
        } else {
            format!("{a}:{port}")
        }
    } else if a.contains(':') {
        a.to_string()
    } else {
        format!("{a}:{port}")
    }
}

/// Directives nginx takes only inside `http { }` (or deeper).
fn is_http_level(name: &str) -> bool {
    matches!(
        name,
        "server"
            | "upstream"
            | "map"
            | "limit_conn_zone"
            | "limit_req_zone"
            | "proxy_set_header"
            | "proxy_read_timeout"
            | "proxy_send_timeout"
            | "proxy_connect_timeout"
            | "limit_conn"
            | "limit_req"
            | "keepalive_timeout"
            | "client_header_timeout"
            | "ssl_certificate"
            | "ssl_certificate_key"
            | "ssl_protocols"
            | "real_ip_header"
            | "set_real_ip_from"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_and_sizes() {
        assert_eq!(nginx_time("3600s").unwrap(), 3_600_000);
        assert_eq!(nginx_time("7d").unwrap(), 7 * 86_400_000);
        assert_eq!(nginx_time("1h 30m").unwrap(), 5_400_000);
        assert_eq!(nginx_time("1h30m").unwrap(), 5_400_000);
        assert_eq!(nginx_time("500ms").unwrap(), 500);
        assert_eq!(nginx_time("60").unwrap(), 60_000);
        assert!(nginx_time("5x").is_err());
        assert_eq!(ringway_proxy::config::parse_size("10m").unwrap(), 10 << 20);
        assert_eq!(ringway_proxy::config::parse_size("8k").unwrap(), 8192);
        assert!(ringway_proxy::config::parse_size("k").is_err());
        assert!(matches!(dur(86_400_000), V::S(s) if s == "1d"));
        assert!(matches!(dur(1500), V::S(s) if s == "1500ms"));
    }
}
