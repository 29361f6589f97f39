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
    pub limit_conn_zone: Vec<Spanned<Zone>>,
    #[serde(default)]
    pub limit_req_zone: Vec<Spanned<Zone>>,
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
    pub access_log_open: Option<bool>,
    pub drain_spread: Option<Spanned<toml::Value>>,
    pub drain_close: Option<Spanned<DrainClose>>,
    pub upgrade_socket: Option<Spanned<String>>,
    pub upgrade_tunnels: Option<bool>,
    pub splice_min: Option<Spanned<toml::Value>>,
}

/// `[runtime] drain_close = { code, reason }`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DrainClose {
    pub code: Option<Spanned<i64>>,
    pub reason: Option<Spanned<String>>,
}

/// `heartbeat = { interval, timeout, upstream_interval }`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Heartbeat {
    pub interval: Spanned<toml::Value>,
    pub timeout: Option<Spanned<toml::Value>>,
    pub upstream_interval: Option<Spanned<toml::Value>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Admin {
    pub listen: Option<Spanned<String>>,
    pub token_file: Option<Spanned<String>>,
    pub server_name: Option<Vec<Spanned<String>>>,
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
    pub hash: Option<Spanned<Hash>>,
    pub servers: Spanned<Vec<Spanned<Peer>>>,
    pub source: Option<Spanned<toml::Value>>,
    pub tls: Option<Spanned<UpstreamTls>>,
    pub proxy_protocol: Option<Spanned<String>>,
    pub health_check: Option<Spanned<HealthCheck>>,
    pub keepalive: Option<Spanned<i64>>,
    pub keepalive_timeout: Option<Spanned<toml::Value>>,
    pub keepalive_requests: Option<Spanned<i64>>,
}

/// `[[upstream]] health_check = { type, interval, rise, fall, timeout, request, expect, port }`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheck {
    #[serde(rename = "type")]
    pub kind: Option<Spanned<String>>,
    pub interval: Option<Spanned<toml::Value>>,
    pub rise: Option<Spanned<i64>>,
    pub fall: Option<Spanned<i64>>,
    pub timeout: Option<Spanned<toml::Value>>,
    pub request: Option<Spanned<String>>,
    pub expect: Option<Spanned<Vec<Spanned<String>>>>,
    pub port: Option<Spanned<i64>>,
}

/// `[[limit_conn_zone]]` / `[[limit_req_zone]]`: name, key, size (and rate).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Zone {
    pub name: Spanned<String>,
    pub key: Option<Spanned<String>>,
    pub size: Option<Spanned<toml::Value>>,
    pub rate: Option<Spanned<String>>,
}

/// `limit_conn = { zone, max, status }`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitConn {
    pub zone: Spanned<String>,
    pub max: Spanned<i64>,
    pub status: Option<Spanned<i64>>,
}

/// `limit_req = { zone, rate, burst, nodelay, status }`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitReq {
    pub zone: Spanned<String>,
    pub rate: Option<Spanned<String>>,
    pub burst: Option<Spanned<i64>>,
    pub nodelay: Option<bool>,
    pub status: Option<Spanned<i64>>,
}

/// `[[upstream]] hash = { key, consistent }`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hash {
    pub key: Spanned<String>,
    pub consistent: Option<bool>,
}

/// `[[upstream]] tls = { ca, verify, sni }`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamTls {
    pub ca: Option<Spanned<String>>,
    pub verify: Option<bool>,
    pub sni: Option<Spanned<String>>,
}

/// `[[server]] tls = { cert, key, protocols }`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tls {
    pub cert: Spanned<toml::Value>,
    pub key: Spanned<toml::Value>,
    pub protocols: Option<Spanned<Vec<Spanned<String>>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Peer {
    pub addr: Spanned<String>,
    pub weight: Option<Spanned<i64>>,
    #[serde(default)]
    pub backup: bool,
    #[serde(default)]
    pub down: bool,
    pub max_conns: Option<Spanned<i64>>,
    pub max_fails: Option<Spanned<i64>>,
    pub fail_timeout: Option<Spanned<toml::Value>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Server {
    pub listen: Spanned<Vec<Spanned<String>>>,
    pub proxy_protocol: Option<Spanned<bool>>,
    #[serde(default)]
    pub trusted_proxies: Vec<Spanned<String>>,
    pub real_ip_header: Option<Spanned<String>>,
    #[serde(default)]
    pub server_name: Vec<Spanned<String>>,
    pub header_timeout: Option<Spanned<toml::Value>>,
    pub header_max: Option<Spanned<toml::Value>>,
    pub request_line_max: Option<Spanned<toml::Value>>,
    pub header_line_max: Option<Spanned<toml::Value>>,
    pub keepalive_timeout: Option<Spanned<toml::Value>>,
    pub keepalive_requests: Option<Spanned<i64>>,
    pub tls: Option<Spanned<Tls>>,
    pub strict_sni: Option<bool>,
    pub http2: Option<Spanned<bool>>,
    pub http2_websocket: Option<Spanned<bool>>,
    pub http2_max_concurrent_streams: Option<Spanned<i64>>,
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
    pub next_upstream: Option<Spanned<Vec<Spanned<String>>>>,
    pub next_upstream_tries: Option<Spanned<i64>>,
    pub next_upstream_timeout: Option<Spanned<toml::Value>>,
    pub limit_conn: Option<Spanned<LimitConn>>,
    pub limit_req: Option<Spanned<LimitReq>>,
    pub heartbeat: Option<Spanned<Heartbeat>>,
    pub max_frame_size: Option<Spanned<toml::Value>>,
    pub max_message_size: Option<Spanned<toml::Value>>,
    pub message_rate: Option<Spanned<MessageRate>>,
    pub max_lifetime: Option<Spanned<toml::Value>>,
    pub lifetime_jitter: Option<Spanned<toml::Value>>,
    pub auth_request: Option<Spanned<AuthRequest>>,
}

/// `auth_request = { upstream, uri, timeout, set, cache }`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthRequest {
    pub upstream: Spanned<String>,
    pub uri: Option<Spanned<String>>,
    pub timeout: Option<Spanned<toml::Value>>,
    pub set: Option<Spanned<std::collections::BTreeMap<String, Spanned<String>>>>,
    pub cache: Option<Spanned<toml::Value>>,
}

/// `message_rate = { rate, burst, nodelay, zone }`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MessageRate {
    pub rate: Option<Spanned<String>>,
    pub burst: Option<Spanned<i64>>,
    pub nodelay: Option<bool>,
    pub zone: Option<Spanned<String>>,
}
