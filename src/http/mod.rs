//! HTTP/1.x heads: parsing (httparse, fixed header array) and the rewrites nginx's WebSocket
//! `proxy_set_header` block does, keeping header names' case and order.

pub mod body;

use std::io::Write;
use std::net::IpAddr;

pub use body::{BodyError, BodyKind, BodyTracker};

/// Most headers a head may carry; more is answered with 431.
pub const MAX_HEADERS: usize = 100;

/// Why a head cannot be used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeadError {
    /// Larger than the limit, or too many headers: 431 (request) / 502 (response).
    TooLarge,
    /// Not valid HTTP/1.x: 400 (request) / 502 (response).
    Invalid(&'static str),
}

/// What the proxy needs to know about a parsed request head.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// Bytes of the head including the final CRLF CRLF.
    pub head_len: usize,
    pub method: String,
    pub path: String,
    /// The Host header as sent (may carry a port).
    pub host: Option<String>,
    /// HTTP/1.0 (0) or 1.1 (1).
    pub version_minor: u8,
    /// The client sent a non-empty `Upgrade` (nginx's `map $http_upgrade` rule).
    pub upgrade: bool,
    /// The client allows the connection to be reused after the response.
    pub keep_alive: bool,
    pub body: BodyKind,
}

impl Request {
    /// Host without port, for server_name matching.
    pub fn host_name(&self) -> &[u8] {
        let h = self.host.as_deref().unwrap_or("").as_bytes();
        if h.first() == Some(&b'[') {
            // [v6]:port
            return match h.iter().position(|&b| b == b']') {
                Some(i) => &h[..=i],
                None => h,
            };
        }
        match h.iter().rposition(|&b| b == b':') {
            Some(i) => &h[..i],
            None => h,
        }
    }

    pub fn is_head(&self) -> bool {
        self.method == "HEAD"
    }
}

/// What the proxy needs to know about a parsed response head.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    pub head_len: usize,
    pub status: u16,
    pub body: BodyKind,
}

fn has_token(value: &[u8], token: &str) -> bool {
    value
        .split(|&b| b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
}

fn is(name: &str, want: &str) -> bool {
    name.eq_ignore_ascii_case(want)
}

/// Hop-by-hop headers (RFC 9110 §7.6.1) that are never forwarded as they came.
/// `Transfer-Encoding` is kept: bodies are forwarded as they are, not re-framed.
fn hop_by_hop(name: &str) -> bool {
    [
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "upgrade",
    ]
    .iter()
    .any(|h| name.eq_ignore_ascii_case(h))
}

/// Whether `name` is listed in any `Connection` header (and so hop-by-hop for this message).
fn named_by_connection(headers: &[httparse::Header<'_>], name: &str) -> bool {
    headers
        .iter()
        .filter(|h| is(h.name, "connection"))
        .any(|h| {
            h.value.split(|&b| b == b',').any(|t| {
                let t = t.trim_ascii();
                !t.eq_ignore_ascii_case(b"upgrade")
                    && !t.eq_ignore_ascii_case(b"close")
                    && !t.eq_ignore_ascii_case(b"keep-alive")
                    && t.eq_ignore_ascii_case(name.as_bytes())
            })
        })
}

fn content_length(headers: &[httparse::Header<'_>]) -> Result<Option<u64>, HeadError> {
    let mut found: Option<u64> = None;
    for h in headers.iter().filter(|h| is(h.name, "content-length")) {
        for part in h.value.split(|&b| b == b',') {
            let p = part.trim_ascii();
            if p.is_empty() || p.len() > 18 || !p.iter().all(u8::is_ascii_digit) {
                return Err(HeadError::Invalid("invalid Content-Length"));
            }
            let n: u64 = std::str::from_utf8(p)
                .ok()
                .and_then(|s| s.parse().ok())
                .ok_or(HeadError::Invalid("invalid Content-Length"))?;
            if found.is_some_and(|f| f != n) {
                return Err(HeadError::Invalid("conflicting Content-Length"));
            }
            found = Some(n);
        }
    }
    Ok(found)
}

/// `Some(true)` when the last transfer coding is chunked, `Some(false)` for another coding.
fn chunked(headers: &[httparse::Header<'_>]) -> Option<bool> {
    let mut last: Option<&[u8]> = None;
    for h in headers.iter().filter(|h| is(h.name, "transfer-encoding")) {
        for t in h.value.split(|&b| b == b',') {
            let t = t.trim_ascii();
            if !t.is_empty() {
                last = Some(t);
            }
        }
    }
    last.map(|t| t.eq_ignore_ascii_case(b"chunked"))
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// An incomplete head: wait for more, unless it is already at the limit.
fn partial<T>(buf: &[u8], max: usize) -> Result<Option<T>, HeadError> {
    if buf.len() >= max {
        Err(HeadError::TooLarge)
    } else {
        Ok(None)
    }
}

/// Parse a request head from the start of `buf`. `Ok(None)` means incomplete and still under
/// `max` bytes; past `max` it is [`HeadError::TooLarge`].
pub fn parse_request(buf: &[u8], max: usize) -> Result<Option<Request>, HeadError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return partial(buf, max),
        Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooLarge),
        Err(httparse::Error::Version) => {
            return Err(HeadError::Invalid("unsupported HTTP version"));
        }
        Err(_) => {
            return Err(if buf.len() >= max {
                HeadError::TooLarge
            } else {
                HeadError::Invalid("malformed request head")
            });
        }
    };
    if head_len > max {
        return Err(HeadError::TooLarge);
    }
    let method = req.method.unwrap_or("").to_string();
    let path = req.path.unwrap_or("");
    if !(path.starts_with('/') || path == "*") {
        // Absolute-form targets (proxy requests) are not routed.
        return Err(HeadError::Invalid("request target must be a path"));
    }
    let version_minor = req.version.unwrap_or(1);
    let hs = &*req.headers;
    let mut host = None;
    for h in hs.iter().filter(|h| is(h.name, "host")) {
        if host.is_some() {
            return Err(HeadError::Invalid("more than one Host header"));
        }
        host = Some(lossy(h.value.trim_ascii()));
    }
    if version_minor == 1 && host.is_none() {
        return Err(HeadError::Invalid("HTTP/1.1 request without Host"));
    }
    let conn = |token: &str| {
        hs.iter()
            .filter(|h| is(h.name, "connection"))
            .any(|h| has_token(h.value, token))
    };
    let upgrade = hs
        .iter()
        .any(|h| is(h.name, "upgrade") && !h.value.trim_ascii().is_empty());
    let keep_alive = if version_minor == 1 {
        !conn("close")
    } else {
        conn("keep-alive")
    };
    let cl = content_length(hs)?;
    let body = match (chunked(hs), cl) {
        (Some(_), Some(_)) => {
            return Err(HeadError::Invalid(
                "both Content-Length and Transfer-Encoding",
            ));
        }
        (Some(true), None) => BodyKind::Chunked,
        (Some(false), None) => return Err(HeadError::Invalid("unsupported Transfer-Encoding")),
        (None, Some(n)) => BodyKind::Length(n),
        (None, None) => BodyKind::None,
    };
    Ok(Some(Request {
        head_len,
        method,
        path: path.to_string(),
        host,
        version_minor,
        upgrade,
        keep_alive,
        body,
    }))
}

/// What the proxy adds to a request on its way upstream.
pub struct Forwarded<'a> {
    pub client_ip: IpAddr,
    /// `http` or `https`.
    pub proto: &'a str,
    /// Host to send when the client sent none (HTTP/1.0): the upstream name, as nginx's
    /// `$proxy_host`.
    pub default_host: &'a str,
}

/// Write the request head to send upstream into `out`: HTTP/1.1, hop-by-hop headers dropped,
/// `Connection: upgrade` or `close`, `X-Real-IP`, `X-Forwarded-For` appended,
/// `X-Forwarded-Proto`; everything else in its place with its case. `head` must have parsed
/// with [`parse_request`].
pub fn rewrite_request(
    head: &[u8],
    fwd: &Forwarded<'_>,
    out: &mut Vec<u8>,
) -> Result<(), HeadError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(head) {
        Ok(httparse::Status::Complete(_)) => {}
        _ => return Err(HeadError::Invalid("malformed request head")),
    }
    let hs = &*req.headers;
    let upgrade = hs
        .iter()
        .any(|h| is(h.name, "upgrade") && !h.value.trim_ascii().is_empty());
    let connection: &[u8] = if upgrade { b"upgrade" } else { b"close" };
    let _ = write!(
        out,
        "{} {} HTTP/1.1\r\n",
        req.method.unwrap_or("GET"),
        req.path.unwrap_or("/")
    );
    let header = |out: &mut Vec<u8>, name: &str, value: &[u8]| {
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value);
        out.extend_from_slice(b"\r\n");
    };
    let ip = fwd.client_ip.to_string();
    let xff = {
        let mut v: Vec<u8> = Vec::new();
        for h in hs.iter().filter(|h| is(h.name, "x-forwarded-for")) {
            let t = h.value.trim_ascii();
            if !t.is_empty() {
                v.extend_from_slice(t);
                v.extend_from_slice(b", ");
            }
        }
        v.extend_from_slice(ip.as_bytes());
        v
    };
    let (mut did_conn, mut did_real, mut did_xff, mut did_proto, mut did_host) =
        (false, false, false, false, false);
    for h in hs {
        let n = h.name;
        if is(n, "connection") {
            if !did_conn {
                header(out, n, connection);
                did_conn = true;
            }
        } else if is(n, "upgrade") {
            if upgrade {
                header(out, n, h.value);
            }
        } else if hop_by_hop(n) || named_by_connection(hs, n) {
            // dropped
        } else if is(n, "x-real-ip") {
            if !did_real {
                header(out, n, ip.as_bytes());
                did_real = true;
            }
        } else if is(n, "x-forwarded-for") {
            if !did_xff {
                header(out, n, &xff);
                did_xff = true;
            }
        } else if is(n, "x-forwarded-proto") {
            if !did_proto {
                header(out, n, fwd.proto.as_bytes());
                did_proto = true;
            }
        } else {
            if is(n, "host") {
                did_host = true;
            }
            header(out, n, h.value);
        }
    }
    if !did_host {
        header(out, "Host", fwd.default_host.as_bytes());
    }
    if !did_conn {
        header(out, "Connection", connection);
    }
    if !did_real {
        header(out, "X-Real-IP", ip.as_bytes());
    }
    if !did_xff {
        header(out, "X-Forwarded-For", &xff);
    }
    if !did_proto {
        header(out, "X-Forwarded-Proto", fwd.proto.as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    Ok(())
}

/// Parse a response head. `head_request`: the request was HEAD (no body follows).
pub fn parse_response(
    buf: &[u8],
    max: usize,
    head_request: bool,
) -> Result<Option<Response>, HeadError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    let head_len = match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return partial(buf, max),
        Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooLarge),
        Err(_) => return Err(HeadError::Invalid("malformed response head")),
    };
    if head_len > max {
        return Err(HeadError::TooLarge);
    }
    let status = resp.code.unwrap_or(0);
    let hs = &*resp.headers;
    let body = if head_request || (100..200).contains(&status) || status == 204 || status == 304 {
        BodyKind::None
    } else {
        match chunked(hs) {
            Some(true) => BodyKind::Chunked,
            Some(false) => BodyKind::UntilClose,
            None => match content_length(hs)? {
                Some(n) => BodyKind::Length(n),
                None => BodyKind::UntilClose,
            },
        }
    };
    Ok(Some(Response {
        head_len,
        status,
        body,
    }))
}

/// The `Connection` value the proxy gives the client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientConnection {
    Upgrade,
    KeepAlive,
    Close,
}

/// Write the response head for the client: status as sent (as HTTP/1.1), hop-by-hop headers
/// dropped (`Upgrade` kept on a 101), our `Connection` value, everything else untouched.
pub fn rewrite_response(
    head: &[u8],
    conn: ClientConnection,
    out: &mut Vec<u8>,
) -> Result<(), HeadError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    match resp.parse(head) {
        Ok(httparse::Status::Complete(_)) => {}
        _ => return Err(HeadError::Invalid("malformed response head")),
    }
    let _ = write!(
        out,
        "HTTP/1.1 {} {}\r\n",
        resp.code.unwrap_or(502),
        resp.reason.unwrap_or("")
    );
    let value: &[u8] = match conn {
        ClientConnection::Upgrade => b"upgrade",
        ClientConnection::KeepAlive => b"keep-alive",
        ClientConnection::Close => b"close",
    };
    let hs = &*resp.headers;
    let mut did_conn = false;
    for h in hs {
        let n = h.name;
        let keep = if is(n, "connection") {
            if !did_conn {
                out.extend_from_slice(n.as_bytes());
                out.extend_from_slice(b": ");
                out.extend_from_slice(value);
                out.extend_from_slice(b"\r\n");
                did_conn = true;
            }
            false
        } else if is(n, "upgrade") {
            conn == ClientConnection::Upgrade
        } else {
            !hop_by_hop(n) && !named_by_connection(hs, n)
        };
        if keep {
            out.extend_from_slice(n.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(h.value);
            out.extend_from_slice(b"\r\n");
        }
    }
    if !did_conn {
        out.extend_from_slice(b"Connection: ");
        out.extend_from_slice(value);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    Ok(())
}

/// Reason phrase for the statuses the proxy itself answers with.
pub fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        408 => "Request Timeout",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Error",
    }
}

/// A complete response the proxy sends itself, closing the connection after it.
pub fn error_response(status: u16) -> Vec<u8> {
    let body = format!("{status} {}\n", reason(status));
    format!(
        "HTTP/1.1 {status} {}\r\nServer: ringway\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        reason(status),
        body.len()
    )
    .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    const WS: &[u8] = b"GET /chat?x=1 HTTP/1.1\r\nhost: ws.example.com:8080\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nsec-websocket-extensions: permessage-deflate; client_max_window_bits\r\nX-Forwarded-For: 1.2.3.4\r\nKeep-Alive: 300\r\nX-Custom-Case: A\r\nSec-WebSocket-Version: 13\r\n\r\n";

    fn fwd() -> Forwarded<'static> {
        Forwarded {
            client_ip: "10.0.0.7".parse().unwrap(),
            proto: "http",
            default_host: "backend",
        }
    }

    #[test]
    fn parses_websocket_request() {
        let r = parse_request(WS, 16384).unwrap().unwrap();
        assert_eq!(r.head_len, WS.len());
        assert!(r.upgrade && r.keep_alive);
        assert_eq!(r.path, "/chat?x=1");
        assert_eq!(r.host_name(), b"ws.example.com");
        assert_eq!(r.body, BodyKind::None);
    }

    #[test]
    fn partial_then_complete_at_every_split() {
        for cut in 0..WS.len() {
            assert_eq!(parse_request(&WS[..cut], 16384), Ok(None), "cut {cut}");
        }
    }

    #[test]
    fn rewrites_like_nginx_playbook() {
        let mut out = Vec::new();
        rewrite_request(WS, &fwd(), &mut out).unwrap();
        let s = String::from_utf8(out).unwrap();
        let expect = "GET /chat?x=1 HTTP/1.1\r\nhost: ws.example.com:8080\r\nUpgrade: websocket\r\nConnection: upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nsec-websocket-extensions: permessage-deflate; client_max_window_bits\r\nX-Forwarded-For: 1.2.3.4, 10.0.0.7\r\nX-Custom-Case: A\r\nSec-WebSocket-Version: 13\r\nX-Real-IP: 10.0.0.7\r\nX-Forwarded-Proto: http\r\n\r\n";
        assert_eq!(s, expect);
    }

    #[test]
    fn plain_get_gets_connection_close_and_default_host() {
        let req = b"GET /health HTTP/1.0\r\nConnection: keep-alive, X-Secret\r\nX-Secret: 1\r\nX-Real-IP: spoofed\r\n\r\n";
        let r = parse_request(req, 16384).unwrap().unwrap();
        assert!(!r.upgrade && r.keep_alive && r.version_minor == 0);
        let mut out = Vec::new();
        rewrite_request(req, &fwd(), &mut out).unwrap();
        let s = String::from_utf8(out).unwrap();
        assert_eq!(
            s,
            "GET /health HTTP/1.1\r\nConnection: close\r\nX-Real-IP: 10.0.0.7\r\nHost: backend\r\nX-Forwarded-For: 10.0.0.7\r\nX-Forwarded-Proto: http\r\n\r\n"
        );
    }

    #[test]
    fn bad_requests() {
        let big = format!(
            "GET / HTTP/1.1\r\nHost: a\r\nX: {}\r\n\r\n",
            "a".repeat(20000)
        );
        assert_eq!(
            parse_request(big.as_bytes(), 16384),
            Err(HeadError::TooLarge)
        );
        assert_eq!(
            parse_request(&big.as_bytes()[..17000], 16384),
            Err(HeadError::TooLarge)
        );
        let many: String = (0..200).map(|i| format!("X-{i}: v\r\n")).collect();
        let many = format!("GET / HTTP/1.1\r\nHost: a\r\n{many}\r\n");
        assert_eq!(
            parse_request(many.as_bytes(), 65536),
            Err(HeadError::TooLarge)
        );
        for bad in [
            &b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03garbage\r\n\r\n"[..],
            b"GET / HTTP/1.1\r\n\r\n",
            b"GET / HTTP/2.0\r\nHost: a\r\n\r\n",
            b"GET http://x/ HTTP/1.1\r\nHost: a\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -5\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        ] {
            assert!(matches!(parse_request(bad, 16384), Err(HeadError::Invalid(_))), "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn request_bodies() {
        let r = parse_request(
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            1024,
        )
        .unwrap()
        .unwrap();
        assert_eq!(r.body, BodyKind::Chunked);
        let r = parse_request(
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 12\r\n\r\n",
            1024,
        )
        .unwrap()
        .unwrap();
        assert_eq!(r.body, BodyKind::Length(12));
    }

    #[test]
    fn response_framing_and_rewrite() {
        let r = parse_response(
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
            1024,
            false,
        )
        .unwrap()
        .unwrap();
        assert_eq!((r.status, r.body), (200, BodyKind::Length(5)));
        let r = parse_response(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
            1024,
            false,
        )
        .unwrap()
        .unwrap();
        assert_eq!(r.body, BodyKind::Chunked);
        let r = parse_response(b"HTTP/1.0 200 OK\r\n\r\n", 1024, false)
            .unwrap()
            .unwrap();
        assert_eq!(r.body, BodyKind::UntilClose);
        let r = parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", 1024, true)
            .unwrap()
            .unwrap();
        assert_eq!(r.body, BodyKind::None);
        let r = parse_response(b"HTTP/1.1 304 Not Modified\r\n\r\n", 1024, false)
            .unwrap()
            .unwrap();
        assert_eq!(r.body, BodyKind::None);

        let up = b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\nSec-WebSocket-Extensions: permessage-deflate\r\nKeep-Alive: 5\r\n\r\n";
        let mut out = Vec::new();
        rewrite_response(up, ClientConnection::Upgrade, &mut out).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nConnection: upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\nSec-WebSocket-Extensions: permessage-deflate\r\n\r\n"
        );
        let mut out = Vec::new();
        rewrite_response(
            b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            ClientConnection::KeepAlive,
            &mut out,
        )
        .unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: keep-alive\r\n\r\n"
        );
        assert!(parse_response(b"garbage\r\n\r\n", 1024, false).is_err());
    }

    #[test]
    fn error_pages_are_complete() {
        let r = error_response(502);
        let p = parse_response(&r, 1024, false).unwrap().unwrap();
        assert_eq!(p.status, 502);
        assert_eq!(p.body, BodyKind::Length((r.len() - p.head_len) as u64));
    }
}
