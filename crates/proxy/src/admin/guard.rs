//! Who may ask the admin endpoint what. Pure decisions over a parsed request head, the
//! address the connection reached and the `[admin]` policy in force; the event loop does the
//! rest.
//!
//! The model (README, "Limits and defences"; `docs/operations.md`, "The admin endpoint"):
//! - **Host.** A request names this endpoint: its `Host` is the address the connection reached
//!   (`127.0.0.1:9900`, `[::1]:9900`, a pod's IP), `localhost` on a loopback listener, or one
//!   of `admin.server_name`; anything else is 403. A page on another origin that a DNS
//!   rebinding attack points at this address carries its own name in `Host`, so it cannot read
//!   `/status` or `/metrics`. HTTP/1.1 without `Host` is 400 (RFC 9112 §3.2); HTTP/1.0 may
//!   leave it out (HAProxy's and other balancers' plain checks do).
//! - **No cross-site writes.** A `POST` that carries an `Origin` header (every browser sends
//!   one with a cross-origin `fetch` or form) or a form's content type
//!   (`application/x-www-form-urlencoded`, `multipart/form-data`, `text/plain`) is 403:
//!   `ringway reload` sends neither.
//! - **Token.** With `admin.token_file`, every endpoint but `/healthz` needs
//!   `Authorization: Bearer TOKEN` (401 otherwise, compared in constant time).
//! - **Without a token**, `POST /reload` answers only on a loopback listener (403 elsewhere);
//!   `ringway check` warns about a non-loopback listener without a token.
//! - `/healthz` needs neither token nor anything else but a right `Host`: probes must always get
//!   an answer.

use std::net::SocketAddr;

use crate::config::admin::{Admin, Token};

/// What a request asks for, once allowed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoint {
    /// A `GET` or `HEAD` of one of the reports.
    Read(Read),
    /// `POST /reload`.
    Reload,
    /// `POST /rebalance?shed=FRACTION|keep=COUNT[&over=DURATION]`.
    Rebalance,
}

/// The reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Read {
    Healthz,
    Status,
    /// `/metrics`, in OpenMetrics when the scraper asks for it.
    Metrics {
        openmetrics: bool,
    },
}

/// Why a request is refused: the status and a line for the body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    pub status: u16,
    pub why: String,
}

fn refuse(status: u16, why: impl Into<String>) -> Refusal {
    Refusal {
        status,
        why: why.into(),
    }
}

/// The parts of a request head the guard looks at.
#[derive(Debug, Default)]
pub struct Request<'a> {
    pub method: String,
    pub path: String,
    /// HTTP/1.x minor version.
    pub minor: u8,
    pub host: Option<&'a [u8]>,
    pub origin: bool,
    pub content_type: Option<&'a [u8]>,
    pub authorization: Option<&'a [u8]>,
    pub openmetrics: bool,
}

/// Read a complete head (ending in an empty line) with the proxy's own HTTP/1 parser, which
/// refuses what it refuses from any client: a malformed head, more than one Host, HTTP/1.1
/// without Host, ambiguous framing. `Err` says why (a 400).
pub fn parse(head: &[u8]) -> Result<Request<'_>, &'static str> {
    let req = match crate::http::parse_request(head, &crate::http::HeadLimits::flat(head.len())) {
        Ok(Some(r)) => r,
        Ok(None) => return Err("incomplete request head"),
        Err(crate::http::HeadError::Invalid(why)) => return Err(why),
        Err(_) => return Err("request head too large"),
    };
    let head = &head[..req.head_len];
    let first = |name| crate::http::header_values(head, name).next();
    Ok(Request {
        host: first("host"),
        origin: first("origin").is_some(),
        content_type: first("content-type"),
        authorization: first("authorization"),
        openmetrics: crate::http::header_values(head, "accept").any(|v| {
            v.windows(b"application/openmetrics-text".len())
                .any(|w| w.eq_ignore_ascii_case(b"application/openmetrics-text"))
        }),
        method: req.method,
        path: req.path,
        minor: req.version_minor,
    })
}

/// Whether `host` (a `Host` header value) names this endpoint, reached at `local`.
pub fn host_allowed(host: &[u8], local: SocketAddr, names: &[String]) -> bool {
    let Ok(host) = std::str::from_utf8(host) else {
        return false;
    };
    let host = host.to_ascii_lowercase();
    // Split off the port: `[v6]:port`, `name:port`, or no port (80 is implied).
    let (name, port) = match host.rfind(':') {
        Some(i) if !host.starts_with('[') || host[..i].ends_with(']') => {
            match host[i + 1..].parse::<u16>() {
                Ok(p) => (&host[..i], p),
                Err(_) => return false,
            }
        }
        _ => (host.as_str(), 80),
    };
    // An IPv6 literal is bracketed (RFC 3986 §3.2.2).
    if port != local.port() || (name.contains(':') && !name.starts_with('[')) {
        return false;
    }
    let name = name.strip_suffix('.').unwrap_or(name);
    let ip = match local {
        SocketAddr::V4(a) => a.ip().to_string(),
        SocketAddr::V6(a) => match a.ip().to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => format!("[{}]", a.ip()),
        },
    };
    // A literal address is compared as an address (`[::0001]` is `[::1]`).
    let same_ip = match name
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<std::net::IpAddr>()
    {
        Ok(a) => a == local.ip() || ip == a.to_string(),
        Err(_) => false,
    };
    same_ip
        || name == ip
        || (name == "localhost" && local.ip().is_loopback())
        || names.iter().any(|n| n == name)
}

/// Decide what `req`, which reached `local`, may have. `token` is the token in force (read
/// from `admin.token_file`), if any.
pub fn check(
    req: &Request<'_>,
    local: SocketAddr,
    policy: &Admin,
    token: Option<&Token>,
) -> Result<Endpoint, Refusal> {
    // (More than one Host, or HTTP/1.1 without one, is refused by the parser: 400.)
    match req.host {
        Some(h) if !host_allowed(h, local, &policy.server_name) => {
            return Err(refuse(
                403,
                format!(
                    "Host {:?} is not this admin endpoint ({local}) nor one of admin.server_name",
                    String::from_utf8_lossy(h)
                ),
            ));
        }
        _ => {}
    }
    let path = req.path.split('?').next().unwrap_or("");
    let read = matches!(req.method.as_str(), "GET" | "HEAD");
    let endpoint = match path {
        "/healthz" if read => Endpoint::Read(Read::Healthz),
        "/status" if read => Endpoint::Read(Read::Status),
        "/metrics" if read => Endpoint::Read(Read::Metrics {
            openmetrics: req.openmetrics,
        }),
        "/reload" if req.method == "POST" => Endpoint::Reload,
        "/rebalance" if req.method == "POST" => Endpoint::Rebalance,
        "/healthz" | "/status" | "/metrics" => {
            return Err(refuse(405, "only GET and HEAD here"));
        }
        "/reload" | "/rebalance" => return Err(refuse(405, "only POST here")),
        _ => return Err(refuse(404, "not found: try /healthz, /status or /metrics")),
    };
    if req.method == "POST" {
        if req.origin {
            return Err(refuse(
                403,
                "a POST with an Origin header (a browser's cross-site request) is refused",
            ));
        }
        if req.content_type.is_some_and(form_type) {
            return Err(refuse(
                403,
                "a POST with a form's content type (a browser's cross-site request) is refused",
            ));
        }
    }
    if endpoint == Endpoint::Read(Read::Healthz) {
        return Ok(endpoint);
    }
    match token {
        Some(t) => {
            let offered = req
                .authorization
                .and_then(|a| bearer(a))
                .unwrap_or_default();
            if !t.matches(offered) {
                return Err(refuse(
                    401,
                    "this endpoint needs Authorization: Bearer <the token in admin.token_file>",
                ));
            }
        }
        None if req.method == "POST" && !policy.loopback() => {
            return Err(refuse(
                403,
                format!(
                    "POST {path} needs admin.token_file on an admin listener that is not loopback"
                ),
            ));
        }
        None => {}
    }
    Ok(endpoint)
}

/// What `POST /rebalance?…` asks: `shed=F` (a fraction, 0 < F ≤ 1, of the tunnels) or
/// `keep=N` (down to N tunnels), and `over=DURATION` (the spread; `default_over` unless given).
pub fn rebalance_of(
    path: &str,
    default_over: std::time::Duration,
) -> Result<crate::live::Shed, String> {
    use crate::live::{Shed, ShedWhat};
    let usage = "expected /rebalance?shed=FRACTION (0 < FRACTION <= 1) or ?keep=COUNT, and \
                 optionally &over=DURATION (such as 30s)";
    let query = path.split_once('?').map_or("", |(_, q)| q);
    let (mut what, mut over) = (None, default_over);
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        match k {
            "shed" if what.is_none() => match v.parse::<f64>() {
                Ok(f) if f > 0.0 && f <= 1.0 => what = Some(ShedWhat::Fraction(f)),
                _ => return Err(format!("shed={v:?}: {usage}")),
            },
            "keep" if what.is_none() => match v.parse::<u64>() {
                Ok(n) => what = Some(ShedWhat::Keep(n)),
                _ => return Err(format!("keep={v:?}: {usage}")),
            },
            "over" => {
                over = crate::config::parse_duration(v).map_err(|e| format!("over={v:?}: {e}"))?
            }
            _ => return Err(format!("{pair:?}: {usage}")),
        }
    }
    let what = what.ok_or_else(|| usage.to_string())?;
    if over > std::time::Duration::from_secs(24 * 3600) {
        return Err(format!("over={over:?}: at most 24h"));
    }
    Ok(Shed { what, over })
}

/// The credentials of `Authorization: Bearer CREDENTIALS` (the scheme in any case).
fn bearer(value: &[u8]) -> Option<&[u8]> {
    let (scheme, rest) = value.split_at_checked(7)?;
    scheme
        .eq_ignore_ascii_case(b"bearer ")
        .then(|| rest.trim_ascii())
}

/// The content types an HTML form (or a "simple" cross-origin request) can send.
fn form_type(ct: &[u8]) -> bool {
    let essence = ct.split(|&b| b == b';').next().unwrap_or(b"").trim_ascii();
    [
        &b"application/x-www-form-urlencoded"[..],
        b"multipart/form-data",
        b"text/plain",
    ]
    .iter()
    .any(|f| essence.eq_ignore_ascii_case(f))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(listen: &str, token: bool) -> (Admin, Option<Token>) {
        let t = token.then(|| Token::new(b"0123456789abcdef0123456789abcdef"));
        (
            Admin {
                listen: listen.parse().unwrap(),
                token: t.clone(),
                token_file: None,
                server_name: vec!["admin.internal".into()],
            },
            t,
        )
    }

    fn ask(head: &str, local: &str, listen: &str, token: bool) -> Result<Endpoint, u16> {
        let (p, t) = policy(listen, token);
        let req = parse(head.as_bytes()).map_err(|_| 400u16)?;
        check(&req, local.parse().unwrap(), &p, t.as_ref()).map_err(|r| r.status)
    }

    const LO: &str = "127.0.0.1:9900";
    const STATUS: Endpoint = Endpoint::Read(Read::Status);
    const HEALTHZ: Endpoint = Endpoint::Read(Read::Healthz);

    #[test]
    fn host_must_name_this_endpoint() {
        let get = |host: &str| {
            ask(
                &format!("GET /status HTTP/1.1\r\nHost: {host}\r\n\r\n"),
                LO,
                LO,
                false,
            )
        };
        assert_eq!(get("127.0.0.1:9900"), Ok(STATUS));
        assert_eq!(get("localhost:9900"), Ok(STATUS));
        assert_eq!(get("LOCALHOST.:9900"), Ok(STATUS));
        assert_eq!(get("admin.internal:9900"), Ok(STATUS));
        assert_eq!(get("evil.example:9900"), Err(403));
        assert_eq!(get("127.0.0.1:9901"), Err(403));
        assert_eq!(get("127.0.0.1"), Err(403), "port 80 implied");
        assert_eq!(get("127.0.0.1:x"), Err(403));
        assert_eq!(get(""), Err(403));
        // HTTP/1.0 may leave Host out; HTTP/1.1 may not; two are refused.
        assert_eq!(
            ask("GET /healthz HTTP/1.0\r\n\r\n", LO, LO, false),
            Ok(HEALTHZ)
        );
        assert_eq!(
            ask("GET /healthz HTTP/1.1\r\n\r\n", LO, LO, false),
            Err(400)
        );
        assert_eq!(
            ask(
                "GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:9900\r\nHost: evil\r\n\r\n",
                LO,
                LO,
                false
            ),
            Err(400)
        );
        // A listener on every address: the address the connection reached.
        let pod = |host: &str| {
            ask(
                &format!("GET /healthz HTTP/1.1\r\nHost: {host}\r\n\r\n"),
                "10.1.2.3:9900",
                "0.0.0.0:9900",
                false,
            )
        };
        assert_eq!(pod("10.1.2.3:9900"), Ok(HEALTHZ));
        assert_eq!(pod("localhost:9900"), Err(403), "not a loopback connection");
        let v6 = |host: &str| {
            ask(
                &format!("GET /healthz HTTP/1.1\r\nHost: {host}\r\n\r\n"),
                "[::1]:9900",
                "[::1]:9900",
                false,
            )
        };
        assert_eq!(v6("[::1]:9900"), Ok(HEALTHZ));
        assert_eq!(v6("[0:0::1]:9900"), Ok(HEALTHZ));
        assert_eq!(v6("[::2]:9900"), Err(403));
        assert_eq!(v6("::1:9900"), Err(403));
    }

    #[test]
    fn cross_site_writes_are_refused() {
        let post = |extra: &str| {
            ask(
                &format!("POST /reload HTTP/1.1\r\nHost: {LO}\r\n{extra}\r\n"),
                LO,
                LO,
                false,
            )
        };
        assert_eq!(post(""), Ok(Endpoint::Reload));
        assert_eq!(post("Content-Length: 0\r\n"), Ok(Endpoint::Reload));
        assert_eq!(post("Origin: http://127.0.0.1:9900\r\n"), Err(403));
        assert_eq!(post("Origin: null\r\n"), Err(403));
        for ct in [
            "application/x-www-form-urlencoded",
            "Multipart/Form-Data; boundary=x",
            "text/plain;charset=UTF-8",
        ] {
            assert_eq!(post(&format!("Content-Type: {ct}\r\n")), Err(403), "{ct}");
        }
        assert_eq!(
            post("Content-Type: application/json\r\n"),
            Ok(Endpoint::Reload)
        );
    }

    #[test]
    fn the_token_guards_all_but_healthz() {
        let req = |method: &str, path: &str, auth: &str| {
            ask(
                &format!("{method} {path} HTTP/1.1\r\nHost: {LO}\r\n{auth}\r\n"),
                "10.0.0.1:9900",
                "0.0.0.0:9900",
                true,
            )
        };
        let good = "Authorization: Bearer 0123456789abcdef0123456789abcdef\r\n";
        assert_eq!(
            req("GET", "/healthz", ""),
            Err(403),
            "Host is the listener's"
        );
        let req = |method: &str, path: &str, auth: &str| {
            ask(
                &format!("{method} {path} HTTP/1.1\r\nHost: 10.0.0.1:9900\r\n{auth}\r\n"),
                "10.0.0.1:9900",
                "0.0.0.0:9900",
                true,
            )
        };
        assert_eq!(req("GET", "/healthz", ""), Ok(HEALTHZ));
        assert_eq!(req("GET", "/status", ""), Err(401));
        assert_eq!(req("GET", "/metrics", ""), Err(401));
        assert_eq!(req("POST", "/reload", ""), Err(401));
        assert_eq!(req("GET", "/nothing", ""), Err(404));
        assert_eq!(req("GET", "/status", good), Ok(STATUS));
        assert_eq!(
            req("GET", "/status", &good.replace("Bearer", "bearer")),
            Ok(STATUS)
        );
        assert_eq!(req("POST", "/reload", good), Ok(Endpoint::Reload));
        for bad in [
            "Authorization: Bearer 0123456789abcdef0123456789abcdeF\r\n",
            "Authorization: Bearer 0123456789abcdef0123456789abcde\r\n",
            "Authorization: Bearer \r\n",
            "Authorization: Basic MDEyMzQ1Njc4OWFiY2RlZg==\r\n",
        ] {
            assert_eq!(req("GET", "/status", bad), Err(401), "{bad}");
        }
        assert_eq!(req("DELETE", "/status", good), Err(405));
        assert_eq!(req("GET", "/reload", good), Err(405));
    }

    #[test]
    fn without_a_token_reload_is_for_loopback_only() {
        let post = |local: &str, listen: &str| {
            ask(
                &format!("POST /reload HTTP/1.1\r\nHost: {local}\r\n\r\n"),
                local,
                listen,
                false,
            )
        };
        assert_eq!(post(LO, LO), Ok(Endpoint::Reload));
        assert_eq!(post("10.0.0.1:9900", "0.0.0.0:9900"), Err(403));
        // Reading stays open (check warns about it).
        assert_eq!(
            ask(
                "GET /status HTTP/1.1\r\nHost: 10.0.0.1:9900\r\n\r\n",
                "10.0.0.1:9900",
                "0.0.0.0:9900",
                false
            ),
            Ok(STATUS)
        );
    }

    #[test]
    fn rebalance_asks_a_fraction_or_a_count_and_a_window() {
        use crate::live::{Shed, ShedWhat};
        use std::time::Duration;
        let over = Duration::from_secs(5);
        assert_eq!(
            rebalance_of("/rebalance?shed=0.25&over=1m", over),
            Ok(Shed {
                what: ShedWhat::Fraction(0.25),
                over: Duration::from_secs(60)
            })
        );
        assert_eq!(
            rebalance_of("/rebalance?keep=100", over),
            Ok(Shed {
                what: ShedWhat::Keep(100),
                over
            })
        );
        for bad in [
            "/rebalance",
            "/rebalance?shed=0",
            "/rebalance?shed=1.5",
            "/rebalance?shed=x",
            "/rebalance?keep=-1",
            "/rebalance?shed=0.5&keep=3",
            "/rebalance?shed=0.5&over=soon",
            "/rebalance?shed=0.5&over=2d",
            "/rebalance?shed=0.5&what=1",
        ] {
            assert!(rebalance_of(bad, over).is_err(), "{bad}");
        }
    }
}
