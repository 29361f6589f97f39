//! `ringway import-nginx`: an nginx configuration (its WebSocket proxying) as ringway TOML.
//!
//! What maps onto a ringway key is written with the nginx line it came from; what ringway
//! always does (no buffering, the Upgrade/Connection rule, the forwarding headers) is
//! recognised; everything else gets a warning with its file and line saying what ringway does
//! instead. Nothing is dropped without one.

mod parse;
mod toml_out;

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

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
    crate::config::parse_duration(s).map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// nginx's size: `8k`, `10m`, `1g`, bytes.
pub fn nginx_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let (num, mul) = match t.as_bytes().last() {
        Some(b'k' | b'K') => (&t[..t.len() - 1], 1 << 10),
        Some(b'm' | b'M') => (&t[..t.len() - 1], 1 << 20),
        Some(b'g' | b'G') => (&t[..t.len() - 1], 1 << 30),
        _ => (t, 1),
    };
    num.parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mul))
        .ok_or_else(|| format!("invalid size {s:?}"))
}

/// Milliseconds as ringway's shortest exact duration: "7d", "30s", "1500ms".
fn dur(ms: u64) -> V {
    let s = if ms == 0 {
        "0s".to_string()
    } else if ms.is_multiple_of(86_400_000) {
        format!("{}d", ms / 86_400_000)
    } else if ms.is_multiple_of(3_600_000) {
        format!("{}h", ms / 3_600_000)
    } else if ms.is_multiple_of(60_000) {
        format!("{}m", ms / 60_000)
    } else if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    };
    V::S(s)
}

fn size(bytes: u64) -> V {
    V::S(if bytes.is_multiple_of(1 << 20) {
        format!("{}m", bytes >> 20)
    } else if bytes.is_multiple_of(1 << 10) {
        format!("{}k", bytes >> 10)
    } else {
        bytes.to_string()
    })
}

/// What ringway does instead, for directives with no key of their own.
const NOTES: &[(&[&str], &str)] = &[
    (
        &["proxy_buffering", "proxy_request_buffering"],
        "ringway never buffers: bytes go on as they arrive (what `off` does), in both directions",
    ),
    (
        &[
            "proxy_buffers",
            "proxy_buffer_size",
            "proxy_busy_buffers_size",
            "proxy_max_temp_file_size",
            "proxy_temp_file_write_size",
            "proxy_temp_path",
            "client_body_buffer_size",
            "client_header_buffer_size",
            "client_body_temp_path",
            "output_buffers",
        ],
        "ringway's buffers are runtime.buffer_size x runtime.buffers, shared by all connections; nothing goes to disk",
    ),
    (
        &[
            "proxy_cache",
            "proxy_cache_path",
            "proxy_cache_valid",
            "proxy_cache_key",
            "proxy_cache_bypass",
            "proxy_no_cache",
            "proxy_store",
        ],
        "ringway caches nothing (a cache has no meaning for WebSockets)",
    ),
    (
        &["proxy_http_version"],
        "ringway speaks HTTP/1.1 to upstreams (what WebSockets need)",
    ),
    (
        &["access_log", "log_format", "open_log_file_cache"],
        "ringway writes one access-log line per session to stderr (journald under systemd), with its end= reason; runtime.access_log = false turns it off",
    ),
    (
        &["error_log"],
        "ringway logs to stderr (journald under systemd)",
    ),
    (
        &[
            "sendfile",
            "tcp_nopush",
            "aio",
            "directio",
            "root",
            "alias",
            "index",
            "autoindex",
            "try_files",
            "types",
            "default_type",
            "charset",
            "etag",
            "expires",
            "open_file_cache",
        ],
        "ringway serves no files: only proxied locations are imported",
    ),
    (
        &[
            "gzip",
            "gzip_types",
            "gzip_proxied",
            "gzip_comp_level",
            "gzip_vary",
            "gzip_min_length",
            "gzip_http_version",
            "gzip_buffers",
            "gzip_disable",
        ],
        "ringway does not compress responses (WebSocket compression, permessage-deflate, is the endpoints' and passes through)",
    ),
    (&["tcp_nodelay"], "not a ringway setting"),
    (
        &[
            "server_tokens",
            "server_names_hash_bucket_size",
            "server_names_hash_max_size",
            "types_hash_max_size",
            "variables_hash_max_size",
            "map_hash_bucket_size",
            "proxy_headers_hash_max_size",
            "proxy_headers_hash_bucket_size",
        ],
        "not a ringway setting",
    ),
    (
        &["client_max_body_size"],
        "ringway streams request bodies without a size limit; body_timeout bounds a body that stalls",
    ),
    (
        &[
            "reset_timedout_connection",
            "lingering_close",
            "lingering_time",
            "lingering_timeout",
        ],
        "ringway closes lingeringly (up to 2 s) after an answer of its own, and closes timed-out connections outright",
    ),
    (
        &["resolver", "resolver_timeout"],
        "ringway resolves upstream names with the system resolver when the configuration is loaded (run, check, each reload)",
    ),
    (
        &[
            "ssl_ciphers",
            "ssl_prefer_server_ciphers",
            "ssl_ecdh_curve",
            "ssl_dhparam",
            "ssl_conf_command",
            "ssl_buffer_size",
            "ssl_early_data",
        ],
        "rustls chooses the cipher suites and key exchange (TLS 1.3 suites, ECDHE with AES-GCM / ChaCha20 for TLS 1.2)",
    ),
    (
        &[
            "ssl_session_cache",
            "ssl_session_timeout",
            "ssl_session_tickets",
            "ssl_session_ticket_key",
        ],
        "session resumption is always on: tickets (keys rotated every 6 h) and TLS 1.2 session IDs shared by every worker",
    ),
    (
        &[
            "ssl_stapling",
            "ssl_stapling_verify",
            "ssl_trusted_certificate",
            "ssl_stapling_file",
            "ssl_client_certificate",
            "ssl_verify_client",
            "ssl_verify_depth",
            "ssl_crl",
            "ssl_password_file",
            "ssl_ocsp",
        ],
        "not supported by ringway's TLS (no OCSP stapling, no client certificates)",
    ),
    (
        &[
            "http2",
            "http2_max_concurrent_streams",
            "http2_recv_buffer_size",
            "http2_idle_timeout",
            "http3",
            "quic_retry",
            "add_header",
            "more_set_headers",
            "proxy_hide_header",
            "proxy_pass_header",
            "proxy_redirect",
            "proxy_intercept_errors",
            "proxy_ignore_headers",
            "proxy_cookie_domain",
            "proxy_cookie_path",
            "sub_filter",
        ],
        "ringway speaks HTTP/1.1 and passes responses unchanged but for hop-by-hop headers",
    ),
    (
        &[
            "return",
            "rewrite",
            "if",
            "set",
            "error_page",
            "break",
            "rewrite_log",
            "recursive_error_pages",
            "stub_status",
        ],
        "ringway has no rewriting or answers of its own beyond 400/404/408/414/431/502/503/504 (its status is on [admin] listen: /status, /metrics)",
    ),
    (
        &[
            "allow",
            "deny",
            "auth_basic",
            "auth_basic_user_file",
            "auth_request",
            "satisfy",
            "limit_except",
            "valid_referers",
            "secure_link",
        ],
        "ringway has no access control: put it in the backend, a firewall, or limit_conn / limit_req",
    ),
    (
        &["limit_rate", "limit_rate_after", "proxy_limit_rate"],
        "ringway does not limit bandwidth",
    ),
    (
        &["limit_conn_log_level", "limit_req_log_level"],
        "refused connections are in the access log with end=limited",
    ),
    (
        &["limit_conn_dry_run", "limit_req_dry_run"],
        "ringway has no dry-run mode for limits: they apply",
    ),
    (
        &["proxy_ignore_client_abort"],
        "a client that goes away takes its upstream connection with it",
    ),
    (
        &["proxy_socket_keepalive", "so_keepalive"],
        "ringway does not set SO_KEEPALIVE; use a location's heartbeat (WebSocket pings) to find dead peers",
    ),
    (
        &[
            "ignore_invalid_headers",
            "underscores_in_headers",
            "merge_slashes",
            "chunked_transfer_encoding",
            "keepalive_disable",
            "send_lowat",
            "postpone_output",
            "msie_padding",
        ],
        "not a ringway setting: headers are checked strictly (RFC 9112) and passed as sent",
    ),
    (
        &["real_ip_recursive"],
        "ringway takes the last address of real_ip_header (nginx's real_ip_recursive off)",
    ),
    (
        &[
            "proxy_ssl_protocols",
            "proxy_ssl_ciphers",
            "proxy_ssl_session_reuse",
            "proxy_ssl_certificate",
            "proxy_ssl_certificate_key",
            "proxy_ssl_verify_depth",
        ],
        "TLS toward upstreams: rustls chooses protocols (1.2, 1.3) and suites, sessions are resumed; no client certificates",
    ),
    (
        &[
            "user",
            "pid",
            "daemon",
            "master_process",
            "worker_cpu_affinity",
            "worker_priority",
            "pcre_jit",
            "load_module",
            "env",
            "lock_file",
            "timer_resolution",
            "working_directory",
            "thread_pool",
            "worker_aio_requests",
            "debug_points",
            "google_perftools_profiles",
            "ssl_engine",
        ],
        "ringway runs in the foreground as the user that starts it (the systemd unit sets it), one worker thread per core",
    ),
    (
        &[
            "use",
            "multi_accept",
            "accept_mutex",
            "accept_mutex_delay",
            "debug_connection",
        ],
        "ringway's workers accept on their own SO_REUSEPORT sockets through io_uring",
    ),
];

fn note(name: &str) -> Option<&'static str> {
    NOTES
        .iter()
        .find(|(names, _)| names.contains(&name))
        .map(|(_, n)| *n)
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
    at: Where,
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
}

impl Translator {
    fn warn(&mut self, d: &Directive, m: impl std::fmt::Display) {
        let words = std::iter::once(d.name.as_str())
            .chain(d.args.iter().map(String::as_str))
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
        match note(&d.name) {
            Some(n) => self.warn(d, n),
            None => self.warn(
                d,
                "not translated: ringway has no equivalent (or the importer does not know this directive)",
            ),
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
                        workers = Some((crate::config::available_cpus(), "auto".into()));
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
                    let b = nginx_size(sz).map_err(|e| err(&d.at, e))?;
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

    /// Directives valid at http, server and location level.
    fn common(&mut self, d: &Directive, inh: &mut Inherit) -> Result<(), ParseError> {
        let at = d.at.clone();
        match d.name.as_str() {
            "proxy_connect_timeout" => inh.connect = Some((self.time(d)?, at)),
            "proxy_read_timeout" => inh.read = Some((self.time(d)?, at)),
            "proxy_send_timeout" => inh.send = Some((self.time(d)?, at)),
            "client_body_timeout" => inh.body = Some((self.time(d)?, at)),
            "send_timeout" => {
                self.time(d)?;
                self.warn(
                    d,
                    "ringway's send_timeout (set from proxy_send_timeout) bounds a send making no progress in either direction",
                );
            }
            "proxy_set_header" => {
                self.args(d, 2..=2)?;
                list_push(
                    &mut inh.headers,
                    &mut inh.here,
                    "proxy_set_header",
                    d.clone(),
                );
            }
            "limit_conn" => {
                let a = self.args(d, 2..=2)?;
                self.int(d, &a[1])?;
                list_push(&mut inh.limit_conn, &mut inh.here, "limit_conn", d.clone());
            }
            "limit_req" => {
                self.args(d, 1..=4)?;
                list_push(&mut inh.limit_req, &mut inh.here, "limit_req", d.clone());
            }
            "limit_conn_status" => {
                inh.limit_conn_status = Some((self.one_int(d)?, at));
            }
            "limit_req_status" => {
                inh.limit_req_status = Some((self.one_int(d)?, at));
            }
            "proxy_next_upstream" => {
                self.args(d, 1..=12)?;
                inh.next_upstream = Some(d.clone());
            }
            "proxy_next_upstream_tries" => {
                inh.next_tries = Some((self.one_int(d)?, at));
            }
            "proxy_next_upstream_timeout" => inh.next_timeout = Some((self.time(d)?, at)),
            "proxy_bind" => {
                self.args(d, 1..=2)?;
                inh.bind = Some(d.clone());
            }
            "proxy_ssl_verify" => inh.ssl_verify = Some(self.on_off(d)?),
            "proxy_ssl_trusted_certificate" => {
                let a = self.args(d, 1..=1)?;
                inh.ssl_ca = Some(self.path(&a[0]));
            }
            "proxy_ssl_name" => {
                let a = self.args(d, 1..=1)?;
                inh.ssl_name = Some(a[0].clone());
            }
            "proxy_ssl_server_name" => {
                if self.on_off(d)? {
                    self.warn(
                        d,
                        "ringway sends SNI toward an upstream when its tls has sni = \"NAME\" (proxy_ssl_name, else the proxy_pass host name)",
                    );
                }
            }
            "proxy_http_version" => {
                let a = self.args(d, 1..=1)?;
                if a[0] != "1.1" {
                    self.warn(
                        d,
                        "ringway always speaks HTTP/1.1 to upstreams (WebSockets need it)",
                    );
                } else {
                    self.recognised.push(format!(
                        "{}: proxy_http_version 1.1: what ringway speaks to upstreams",
                        d.at
                    ));
                }
            }
            "ssl_certificate" | "ssl_certificate_key" => {
                let a = self.args(d, 1..=1)?;
                if a[0].contains('$') || a[0].starts_with("data:") {
                    self.warn(d, "certificates named by variables or given inline are not supported: write the file's path");
                } else {
                    let p = self.path(&a[0]);
                    if d.name == "ssl_certificate" {
                        list_push(&mut inh.certs, &mut inh.here, "ssl_certificate", (p, at));
                    } else {
                        list_push(&mut inh.keys, &mut inh.here, "ssl_certificate_key", (p, at));
                    }
                }
            }
            "ssl_protocols" => {
                self.args(d, 1..=6)?;
                inh.protocols = Some(d.clone());
            }
            "client_header_timeout" => inh.header_timeout = Some((self.time(d)?, at)),
            "large_client_header_buffers" => {
                let a = self.args(d, 2..=2)?;
                let n = self.int(d, &a[0])? as u64;
                let sz = nginx_size(&a[1]).map_err(|e| err(&d.at, e))?;
                inh.header_buffers = Some((n, sz, at));
            }
            "keepalive_timeout" => {
                let a = self.args(d, 1..=2)?;
                let ms =
                    nginx_time(&a[0]).map_err(|e| err(&d.at, format!("keepalive_timeout: {e}")))?;
                if a.len() == 2 {
                    self.warn(
                        d,
                        "the second value (a Keep-Alive: timeout= header) is not sent",
                    );
                }
                inh.keepalive_timeout = Some((ms, at));
            }
            "keepalive_requests" => {
                inh.keepalive_requests = Some((self.one_int(d)?, at));
            }
            "real_ip_header" => {
                self.args(d, 1..=1)?;
                inh.real_ip_header = Some(d.clone());
            }
            "set_real_ip_from" => {
                self.args(d, 1..=1)?;
                list_push(
                    &mut inh.set_real_ip_from,
                    &mut inh.here,
                    "set_real_ip_from",
                    d.clone(),
                );
            }
            "proxy_buffering" | "proxy_request_buffering"
                if d.args.first().map(String::as_str) == Some("off") =>
            {
                self.warn(d, "what ringway always does (it never buffers, in either direction): nothing to write");
            }
            "proxy_cache" if d.args.first().map(String::as_str) == Some("off") => {
                self.warn(d, "ringway caches nothing: nothing to write");
            }
            "ssl" => {
                self.warn(d, "`ssl on` is written as `listen … ssl` in ringway's terms: this server's listen addresses are taken as TLS");
            }
            _ => self.other(d),
        }
        Ok(())
    }

    fn upstream(&mut self, d: &Directive) -> Result<(), ParseError> {
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
                    hashed = true;
                }
                "random" => self.warn(
                    e,
                    "ringway has no random balancing: round robin (the default) is used",
                ),
                "keepalive" => {
                    let a = self.args(e, 1..=1)?;
                    t.set(
                        "keepalive",
                        V::I(self.int(e, &a[0])?),
                        format!("{}: idle connections kept per worker", e.at),
                    );
                }
                "keepalive_timeout" => t.set(
                    "keepalive_timeout",
                    dur(self.time(e)?),
                    format!("{}: keepalive_timeout", e.at),
                ),
                "keepalive_requests" => {
                    let a = self.args(e, 1..=1)?;
                    t.set(
                        "keepalive_requests",
                        V::I(self.int(e, &a[0])?),
                        format!("{}: keepalive_requests", e.at),
                    );
                }
                "check" => {
                    health_at = Some(e.at.clone());
                    for w in &e.args {
                        let (k, v) = w.split_once('=').unwrap_or((w, ""));
                        let ms = |v: &str| {
                            v.parse::<u64>().map_err(|_| {
                                err(&e.at, format!("check: invalid {k}={v:?} (milliseconds)"))
                            })
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
                            _ => self
                                .warn(e, format!("check {k}: not a ringway health check setting")),
                        }
                    }
                }
                "check_http_send" => {
                    let a = self.args(e, 1..=1)?;
                    // The check module sends the string as it is; a request written with bare
                    // newlines (or whose \r\n escapes were lost) becomes a proper one.
                    let mut r = a[0].replace("\r\n", "\n").replace('\n', "\r\n");
                    if !r.ends_with("\r\n\r\n") {
                        r = format!("{}\r\n\r\n", r.trim_end_matches("\r\n"));
                    }
                    health.set("request", V::S(r), "");
                    health_more.push(format!("{}: check_http_send", e.at));
                }
                "check_http_expect_alive" => {
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
                    health_more.push(format!("{}: check_http_expect_alive", e.at));
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
            at: d.at.clone(),
        });
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

    fn server(
        &mut self,
        d: &Directive,
        block: &[Directive],
        outer: &Inherit,
    ) -> Result<(), ParseError> {
        let mut inh = outer.inner();
        let mut listens: Vec<(String, Vec<String>, Where)> = Vec::new();
        let mut names: Vec<V> = Vec::new();
        let mut names_at = None;
        for e in block {
            match e.name.as_str() {
                "location" => {}
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
                    for n in &e.args {
                        if n == "_" || n.is_empty() || n == "\"\"" {
                            continue;
                        } else if n.starts_with('~') {
                            self.warn(
                                e,
                                format!(
                                    "regular-expression names ({n}) are not supported: left out"
                                ),
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
        // One ringway server per kind of listener: nginx may put `listen 80` and `listen 443
        // ssl` in one block; ringway's tls belongs to all of a server's addresses.
        let mut plain: Vec<V> = Vec::new();
        let mut tls: Vec<V> = Vec::new();
        let mut proxy_protocol = None;
        let mut default_server = [false; 2];
        let mut listen_at: [Vec<String>; 2] = [Vec::new(), Vec::new()];
        for (addr, params, at) in &listens {
            let mut is_tls = ssl_on;
            for p in params {
                let (k, _) = p.split_once('=').unwrap_or((p, ""));
                match k {
                    "ssl" => is_tls = true,
                    "default_server" | "default" => {}
                    "proxy_protocol" => proxy_protocol = Some(at.clone()),
                    "reuseport" => {}
                    "http2" => self.warnings.push(format!(
                        "{at}: listen … http2: ringway offers HTTP/1.1 only (ALPN http/1.1); browsers open WebSockets over HTTP/1.1"
                    )),
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
            if params
                .iter()
                .any(|p| p == "default_server" || p == "default")
            {
                default_server[usize::from(is_tls)] = true;
            }
            listen_at[usize::from(is_tls)].push(at.to_string());
            if is_tls { &mut tls } else { &mut plain }.push(V::S(addr.clone()));
        }
        let mut locations = Vec::new();
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
                    format!("{}: set_real_ip_from", list[0].at),
                );
            }
            _ if proxy_protocol.is_some() || inh.real_ip_header.is_some() => {
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
                    if proxy_protocol.is_none() {
                        self.warn(h, "real_ip_header proxy_protocol without listen … proxy_protocol: no PROXY header to take it from");
                    }
                }
                _ => self.warn(h, "ringway takes the client address from X-Forwarded-For or X-Real-IP (or the PROXY header)"),
            }
        }
        if !names.is_empty() {
            base.set(
                "server_name",
                V::L(names),
                names_at
                    .map(|a| format!("{a}: server_name"))
                    .unwrap_or_default(),
            );
        }
        if let Some((ms, at)) = &inh.header_timeout {
            base.set(
                "header_timeout",
                dur(*ms),
                format!("{at}: client_header_timeout"),
            );
        }
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
        if let Some((ms, at)) = &inh.keepalive_timeout {
            base.set(
                "keepalive_timeout",
                dur(*ms),
                format!("{at}: keepalive_timeout"),
            );
        }
        if let Some((n, at)) = &inh.keepalive_requests {
            base.set(
                "keepalive_requests",
                V::I(*n),
                format!("{at}: keepalive_requests"),
            );
        }
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
            self.servers.push(Server {
                at: d.at.clone(),
                table: t,
                locations: locations.clone(),
                default_server: default_server[k],
            });
        }
        Ok(())
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
                return Ok(());
            }
            ("@", _) | (_, None) if a[0].starts_with('@') => {
                self.warn(d, "named locations (error_page / try_files targets) have no meaning in ringway: left out");
                return Ok(());
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
        let mut inh = outer.inner();
        let mut pass = None;
        let block = d.block.as_deref().unwrap_or_default();
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
        if let Some((ms, at)) = &inh.body {
            t.set(
                "body_timeout",
                dur(*ms),
                format!("{at}: client_body_timeout"),
            );
        }
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
        if let Some((n, at)) = &inh.next_tries {
            t.set(
                "next_upstream_tries",
                V::I(*n),
                format!("{at}: proxy_next_upstream_tries"),
            );
        }
        if let Some((ms, at)) = &inh.next_timeout {
            t.set(
                "next_upstream_timeout",
                dur(*ms),
                format!("{at}: proxy_next_upstream_timeout"),
            );
        }
        if let Some(list) = &inh.limit_conn {
            for (i, l) in list.iter().enumerate() {
                if i > 0 {
                    self.warn(
                        l,
                        "ringway takes one limit_conn per location: this one is left out",
                    );
                    continue;
                }
                let mut lt: Vec<(String, V)> = vec![
                    ("zone".into(), V::S(l.args[0].clone())),
                    ("max".into(), V::I(self.int(l, &l.args[1])?)),
                ];
                let mut note = format!("{}: limit_conn", l.at);
                if let Some((s, at)) = &inh.limit_conn_status {
                    lt.push(("status".into(), V::I(*s)));
                    note += &format!(", {at}: limit_conn_status");
                }
                t.set("limit_conn", V::T(lt), note);
            }
        }
        if let Some(list) = &inh.limit_req {
            for (i, l) in list.iter().enumerate() {
                if i > 0 {
                    self.warn(
                        l,
                        "ringway takes one limit_req per location: this one is left out",
                    );
                    continue;
                }
                let mut lt: Vec<(String, V)> = Vec::new();
                for w in &l.args {
                    let (k, v) = w.split_once('=').unwrap_or((w, ""));
                    match k {
                        "zone" => lt.push(("zone".into(), V::S(v.into()))),
                        "burst" => lt.push(("burst".into(), V::I(self.int(l, v)?))),
                        "nodelay" => lt.push(("nodelay".into(), V::B(true))),
                        "delay" => self.warn(l, "delay=N: ringway either delays every request within the burst or none (nodelay)"),
                        _ => return Err(err(&l.at, format!("limit_req: unexpected {w:?}"))),
                    }
                }
                let mut note = format!("{}: limit_req", l.at);
                if let Some((s, at)) = &inh.limit_req_status {
                    lt.push(("status".into(), V::I(*s)));
                    note += &format!(", {at}: limit_req_status");
                }
                t.set("limit_req", V::T(lt), note);
            }
        }
        self.headers(d, &inh, &mut t);
        if read_ms >= 120_000 {
            t.comments.push(format!(
                "read_timeout {} closes a silent WebSocket; behind NAT or a balancer with a shorter idle timer, add:\n# heartbeat = {{ interval = \"25s\", timeout = \"10s\" }}   # ringway pings quiet clients itself",
                match dur(read_ms) { V::S(s) => s, _ => String::new() }
            ));
        }
        out.push((d.at.clone(), t));
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

    /// The upstream a `proxy_pass` names, made from its host when no upstream block has it.
    fn proxy_pass(
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
        let name = if let Some(u) = self.upstreams.iter().position(|u| u.name == host) {
            self.upstreams[u].name.clone()
        } else {
            let name = host.replace([':', '[', ']'], "_");
            if !self.upstreams.iter().any(|u| u.name == name) {
                let mut t = Table::default();
                t.set(
                    "name",
                    V::S(name.clone()),
                    format!("{}: proxy_pass {url} (no upstream block: one server)", d.at),
                );
                self.upstreams.push(Upstream {
                    name: name.clone(),
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
                    at: d.at.clone(),
                });
            }
            name
        };
        let ui = self
            .upstreams
            .iter()
            .position(|u| u.name == name)
            .unwrap_or(0);
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
        if tls {
            let mut t = Table::default();
            let verify = inh.ssl_verify.unwrap_or(false);
            t.set("verify", V::B(verify), "");
            if let Some(ca) = &inh.ssl_ca {
                t.set("ca", V::S(ca.clone()), "");
            }
            let host_name = host.rsplit_once(':').map_or(host, |(h, _)| h);
            if let Some(n) = inh.ssl_name.clone().or_else(|| {
                (host_name.parse::<std::net::IpAddr>().is_err()
                    && !self
                        .upstreams
                        .iter()
                        .any(|u| u.name == host_name && u.at.line != d.at.line))
                .then(|| host_name.to_string())
            }) {
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
        Ok(Some(name))
    }

    fn emit(&mut self, path: &Path) -> String {
        let mut o = String::new();
        let _ = writeln!(
            o,
            "# Imported from {} by `ringway import-nginx` (ringway {}).",
            path.display(),
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
                let _ = writeln!(o, "#   {}", w.replace('\n', " "));
            }
        }
        if !self.recognised.is_empty() {
            self.recognised.sort();
            self.recognised.dedup();
            let _ = writeln!(o, "#\n# Recognised as what ringway does anyway:");
            for r in &self.recognised {
                let _ = writeln!(o, "#   {r}");
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
                let _ = writeln!(o, "\n[[{key}]]   # {at}");
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
                let _ = writeln!(o, "  {:<40} # {at}", format!("{s},"));
            }
            let _ = writeln!(o, "]");
        }
        // nginx's default server on an address is the one marked default_server, else the
        // first; ringway's is the first.
        self.servers.sort_by_key(|s| !s.default_server);
        for s in &self.servers {
            let _ = writeln!(o, "\n[[server]]   # {}", s.at);
            o.push_str(&s.table.render());
            for (at, l) in &s.locations {
                let _ = writeln!(o, "\n[[server.location]]   # {at}");
                o.push_str(&l.render());
            }
        }
        o
    }
}

/// A list directive: the first one at a level replaces what was inherited, the next add to it.
fn list_push<T>(list: &mut Option<Vec<T>>, here: &mut Vec<&'static str>, key: &'static str, v: T) {
    if here.contains(&key) {
        list.get_or_insert_with(Vec::new).push(v);
    } else {
        here.push(key);
        *list = Some(vec![v]);
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
        assert_eq!(nginx_size("10m").unwrap(), 10 << 20);
        assert_eq!(nginx_size("8k").unwrap(), 8192);
        assert!(nginx_size("k").is_err());
        assert!(matches!(dur(86_400_000), V::S(s) if s == "1d"));
        assert!(matches!(dur(1500), V::S(s) if s == "1500ms"));
    }
}
