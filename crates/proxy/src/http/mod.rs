//! HTTP/1.x heads: parsing (httparse, fixed header array) and the framing decisions made from
//! them; the rewrites nginx's WebSocket `proxy_set_header` block does, keeping header names'
//! case and order, are in `rewrite.rs`.

pub mod body;
pub mod proxy;
mod rewrite;

pub use body::{BodyError, BodyKind, BodyTracker};
pub use rewrite::{
    ClientConnection, Forwarded, rewrite_request, rewrite_request_parsed, rewrite_response,
    rewrite_response_parsed,
};

/// Most headers a head may carry; more is answered with 431.
pub const MAX_HEADERS: usize = 100;

/// Why a head cannot be used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeadError {
    /// Larger than the limit, too many headers, or one header line too long: 431 (request) /
    /// 502 (response).
    TooLarge,
    /// The request line is longer than its limit: 414.
    UriTooLong,
    /// Not valid HTTP/1.x: 400 (request) / 502 (response).
    Invalid(&'static str),
}

/// Size limits for a request head (nginx: `client_header_buffer_size`,
/// `large_client_header_buffers`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeadLimits {
    /// The whole head, request line and headers: past it, 431.
    pub head_max: usize,
    /// The request line: past it, 414.
    pub request_line_max: usize,
    /// Any one header line: past it, 431.
    pub header_line_max: usize,
}

impl HeadLimits {
    /// One limit for everything (responses, tests).
    pub const fn flat(max: usize) -> HeadLimits {
        HeadLimits {
            head_max: max,
            request_line_max: max,
            header_line_max: max,
        }
    }
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
    /// The `Upgrade` header's value when the client sent a non-empty one (several headers
    /// joined with ", "). Whether it is honoured is the location's decision
    /// ([`upgrade_allowed`]); HTTP/1.0 requests are never upgraded.
    pub upgrade: Option<String>,
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
    /// The `Upgrade` header's value (checked on a 101 against what the client asked for).
    pub upgrade: Option<String>,
    /// Both `Content-Length` and `Transfer-Encoding` came: the length is dropped when
    /// forwarding (RFC 9112 §6.3), the body framed by the transfer coding.
    pub drop_length: bool,
    /// The upstream keeps the connection open after this response (HTTP/1.1 without
    /// `Connection: close`, and a body that does not end with the connection).
    pub keep_alive: bool,
}

/// Whether a comma-separated list has at least one element and every element passes `ok`.
fn every_token(value: &str, ok: impl Fn(&str) -> bool) -> bool {
    let mut tokens = value.split(',').map(str::trim).filter(|t| !t.is_empty());
    let mut any = false;
    tokens.all(|t| {
        any = true;
        ok(t)
    }) && any
}

/// Whether an `Upgrade` value asks only for protocols in `allowed` (lower-case names, compared
/// without a `/version`). Anything else (`h2c`, a mix) is not an upgrade: the header is dropped
/// and the request proxied as plain HTTP, closing the h2c path past the proxy's routing.
pub fn upgrade_allowed(value: &str, allowed: &[String]) -> bool {
    every_token(value, |t| {
        let name = t.split('/').next().unwrap_or("").trim();
        allowed.iter().any(|a| a.eq_ignore_ascii_case(name))
    })
}

/// Whether a 101's `Upgrade` value switches only to protocols the client asked for.
pub fn upgrade_matches(response: &str, requested: &str) -> bool {
    every_token(response, |t| {
        requested
            .split(',')
            .any(|r| r.trim().eq_ignore_ascii_case(t))
    })
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

/// Whether a `Connection` header's token other than `upgrade`, `close` or `keep-alive` is
/// `name` (`Some(name)`), or any such token at all (`None`): such a token names a header that
/// is hop-by-hop for this message.
fn connection_token(headers: &[httparse::Header<'_>], name: Option<&str>) -> bool {
    headers
        .iter()
        .filter(|h| is(h.name, "connection"))
        .any(|h| {
            h.value.split(|&b| b == b',').any(|t| {
                let t = t.trim_ascii();
                !t.is_empty()
                    && !t.eq_ignore_ascii_case(b"upgrade")
                    && !t.eq_ignore_ascii_case(b"close")
                    && !t.eq_ignore_ascii_case(b"keep-alive")
                    && name.is_none_or(|n| t.eq_ignore_ascii_case(n.as_bytes()))
            })
        })
}

/// Headers a `Connection` header names besides the usual tokens. Asked once per head: a head
/// rewritten header by header asks [`named_by_connection`] for each only when there are some
/// (a browser's `Connection: Upgrade` has none), without building anything.
fn connection_names_any(headers: &[httparse::Header<'_>]) -> bool {
    connection_token(headers, None)
}

/// Whether `name` is listed in any `Connection` header (and so hop-by-hop for this message).
fn named_by_connection(headers: &[httparse::Header<'_>], name: &str) -> bool {
    connection_token(headers, Some(name))
}

/// The body length. Repeated values (`5, 5`, or two headers) must be the same text: `017` beside
/// `17` is refused, as other parsers refuse it, so that no two readers disagree.
fn content_length(headers: &[httparse::Header<'_>]) -> Result<Option<u64>, HeadError> {
    let mut found: Option<&[u8]> = None;
    for h in headers.iter().filter(|h| is(h.name, "content-length")) {
        for part in h.value.split(|&b| b == b',') {
            let p = part.trim_ascii();
            if p.is_empty() || p.len() > 18 || !p.iter().all(u8::is_ascii_digit) {
                return Err(HeadError::Invalid("invalid Content-Length"));
            }
            if found.is_some_and(|f| f != p) {
                return Err(HeadError::Invalid("conflicting Content-Length"));
            }
            found = Some(p);
        }
    }
    found
        .map(|p| {
            std::str::from_utf8(p)
                .ok()
                .and_then(|s| s.parse().ok())
                .ok_or(HeadError::Invalid("invalid Content-Length"))
        })
        .transpose()
}

/// The message's transfer codings: `Ok(None)` without `Transfer-Encoding`, `Ok(Some(true))`
/// when the last coding is chunked, `Ok(Some(false))` for another last coding. A header with
/// an empty element (`""`, `","`, `, chunked`) or chunked before another coding is refused: a
/// peer could read such a message's end differently (RFC 9112 §6.1).
fn chunked(headers: &[httparse::Header<'_>]) -> Result<Option<bool>, HeadError> {
    let mut seen = false;
    let mut last_chunked = false;
    for h in headers.iter().filter(|h| is(h.name, "transfer-encoding")) {
        seen = true;
        for t in h.value.split(|&b| b == b',') {
            let t = t.trim_ascii();
            if t.is_empty() {
                // `, chunked` or `chunked,`: RFC 9110 lets a recipient skip empty elements,
                // but other parsers refuse them; the framing must read the same everywhere.
                return Err(HeadError::Invalid("empty element in Transfer-Encoding"));
            }
            if last_chunked {
                return Err(HeadError::Invalid(
                    "chunked is not the last transfer coding",
                ));
            }
            last_chunked = t.eq_ignore_ascii_case(b"chunked");
        }
    }
    // Every header seen had at least one element (an empty value is one empty element).
    Ok(seen.then_some(last_chunked))
}

/// Headers a `Connection` header must not name: dropping them as hop-by-hop would change how
/// the message is framed or routed after the proxy has decided it.
const FRAMING: [&str; 3] = ["content-length", "transfer-encoding", "host"];

/// Whether a `Connection` header names a framing header.
fn connection_names_framing(headers: &[httparse::Header<'_>], named: bool) -> bool {
    named && FRAMING.iter().any(|f| named_by_connection(headers, f))
}

/// Check every line of a (maybe partial) request head against the line limits.
fn check_lines(buf: &[u8], lim: &HeadLimits) -> Result<(), HeadError> {
    let mut lines = buf.split(|&b| b == b'\n');
    if let Some(first) = lines.next() {
        // An unfinished first line counts too: a client cannot stream an endless target.
        if first.len() > lim.request_line_max {
            return Err(HeadError::UriTooLong);
        }
    }
    for line in lines {
        if line.is_empty() || line == b"\r" {
            break;
        }
        if line.len() > lim.header_line_max {
            return Err(HeadError::TooLarge);
        }
    }
    Ok(())
}

/// `b` as text, each invalid sequence replaced; valid text (the usual) copied as it is.
fn lossy(b: &[u8]) -> String {
    match std::str::from_utf8(b) {
        Ok(s) => s.to_owned(),
        Err(_) => String::from_utf8_lossy(b).into_owned(),
    }
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
/// the limits; past `lim.head_max` it is [`HeadError::TooLarge`], a request line past
/// `lim.request_line_max` is [`HeadError::UriTooLong`], a header line past
/// `lim.header_line_max` is [`HeadError::TooLarge`].
pub fn parse_request(buf: &[u8], lim: &HeadLimits) -> Result<Option<Request>, HeadError> {
    let mut headers = Headers::new();
    Ok(parse_request_in(buf, lim, &mut headers)?.map(|(r, _)| r))
}

/// Room for a head's headers as httparse finds them: filled by a parse, borrowed by what reads
/// the head after it (the rewrite), so that a head is parsed once.
/// Left uninitialised: httparse writes what it finds, and filling 100 empty headers first
/// cost more than the parse of a short head's request line.
pub struct Headers<'b>([std::mem::MaybeUninit<httparse::Header<'b>>; MAX_HEADERS]);

impl<'b> Headers<'b> {
    pub fn new() -> Headers<'b> {
        Headers([const { std::mem::MaybeUninit::uninit() }; MAX_HEADERS])
    }

    /// Parse a request head into `req`, with this as the room for its headers.
    fn request<'h>(
        &'h mut self,
        req: &mut httparse::Request<'h, 'b>,
        buf: &'b [u8],
    ) -> httparse::Result<usize> {
        req.parse_with_uninit_headers(buf, &mut self.0)
    }

    /// Parse a response head into `resp`, with this as the room for its headers.
    fn response<'h>(
        &'h mut self,
        resp: &mut httparse::Response<'h, 'b>,
        buf: &'b [u8],
    ) -> httparse::Result<usize> {
        httparse::ParserConfig::default().parse_response_with_uninit_headers(resp, buf, &mut self.0)
    }
}

impl Default for Headers<'_> {
    fn default() -> Self {
        Headers::new()
    }
}

/// A whole request head as httparse read it: what [`rewrite_request_parsed`] writes upstream
/// from, borrowing the head.
#[derive(Clone, Copy, Debug)]
pub struct RequestLines<'h, 'b> {
    pub method: &'b str,
    pub target: &'b str,
    pub headers: &'h [httparse::Header<'b>],
    /// A `Connection` header names other headers (hop-by-hop for this message).
    pub named: bool,
}

impl<'h, 'b> RequestLines<'h, 'b> {
    /// The lines of a request httparse has parsed whole; `named`: what
    /// [`connection_names_any`] says of its headers.
    fn of(req: httparse::Request<'h, 'b>, named: bool) -> RequestLines<'h, 'b> {
        RequestLines {
            method: req.method.unwrap_or(""),
            target: req.path.unwrap_or(""),
            headers: req.headers,
            named,
        }
    }
}

/// [`parse_request`], with the head's request line and headers as parsed (in `headers`) beside
/// what the proxy needs to know of it.
pub fn parse_request_in<'h, 'b>(
    buf: &'b [u8],
    lim: &HeadLimits,
    headers: &'h mut Headers<'b>,
) -> Result<Option<(Request, RequestLines<'h, 'b>)>, HeadError> {
    let max = lim.head_max;
    let mut req = httparse::Request::new(&mut []);
    let parsed = headers.request(&mut req, buf);
    let scanned = match parsed {
        Ok(httparse::Status::Complete(n)) => &buf[..n],
        _ => buf,
    };
    check_lines(scanned, lim)?;
    let head_len = match parsed {
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
    let upgrade = upgrade_value(hs);
    let keep_alive = if version_minor == 1 {
        !conn("close")
    } else {
        conn("keep-alive")
    };
    let named = connection_names_any(hs);
    if connection_names_framing(hs, named) {
        return Err(HeadError::Invalid("Connection names a framing header"));
    }
    let cl = content_length(hs)?;
    let body = match (chunked(hs)?, cl) {
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
    let path = path.to_string();
    Ok(Some((
        Request {
            head_len,
            method,
            path,
            host,
            version_minor,
            upgrade,
            keep_alive,
            body,
        },
        RequestLines::of(req, named),
    )))
}

/// The `Upgrade` headers' values joined, if any is non-empty.
fn upgrade_value(hs: &[httparse::Header<'_>]) -> Option<String> {
    let mut v: Option<String> = None;
    for h in hs.iter().filter(|h| is(h.name, "upgrade")) {
        let t = h.value.trim_ascii();
        if t.is_empty() {
            continue;
        }
        match &mut v {
            // The usual one header: one allocation of its size.
            None => v = Some(lossy(t)),
            Some(v) => {
                v.push_str(", ");
                v.push_str(&String::from_utf8_lossy(t));
            }
        }
    }
    v
}

/// The path a location is matched against, as nginx computes it: the query cut off, every
/// percent-escape decoded once (`%2F` is a `/` and `%2E` a `.`, so they take part in what
/// follows; `%25` is a `%` and is not decoded again), repeated slashes merged, `.` and `..`
/// segments resolved. A path that climbs above `/` or holds an escaped NUL is refused (400).
/// The request itself is forwarded as the client sent it.
pub fn normalize_path(target: &str) -> Result<std::borrow::Cow<'_, str>, HeadError> {
    use std::borrow::Cow;
    let path = target.split(['?', '#']).next().unwrap_or("");
    let b = path.as_bytes();
    let plain = !b.contains(&b'%')
        && !path.contains("//")
        && !path.contains("/.")
        && b.first() == Some(&b'/');
    if plain || path == "*" {
        return Ok(Cow::Borrowed(path));
    }
    // Decode every %XX once (an escape that is not two hex digits stays as it is).
    let mut dec = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let (Some(h), Some(l)) = (body::hex(b[i + 1]), body::hex(b[i + 2]))
        {
            let c = h << 4 | l;
            if c == 0 {
                return Err(HeadError::Invalid("escaped NUL in the path"));
            }
            dec.push(c);
            i += 3;
            continue;
        }
        dec.push(b[i]);
        i += 1;
    }
    let mut segs: Vec<&[u8]> = Vec::new();
    let mut trailing = false;
    for seg in dec.split(|&c| c == b'/') {
        trailing = false;
        match seg {
            b"" => trailing = true,
            b"." => trailing = true,
            b".." => {
                if segs.pop().is_none() {
                    return Err(HeadError::Invalid("path climbs above /"));
                }
                trailing = true;
            }
            s => segs.push(s),
        }
    }
    let mut out = Vec::with_capacity(dec.len() + 1);
    for s in &segs {
        out.push(b'/');
        out.extend_from_slice(s);
    }
    if trailing || segs.is_empty() {
        out.push(b'/');
    }
    Ok(Cow::Owned(String::from_utf8_lossy(&out).into_owned()))
}

/// The values of header `name` (any case) in a head that parsed with [`parse_request`] or
/// [`parse_response`], in order, without surrounding blanks.
pub fn header_values<'a>(head: &'a [u8], name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
    head.split(|&b| b == b'\n').skip(1).filter_map(move |line| {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let colon = line.iter().position(|&b| b == b':')?;
        line[..colon]
            .eq_ignore_ascii_case(name.as_bytes())
            .then(|| line[colon + 1..].trim_ascii())
    })
}

/// A response's status from its first line alone, for a client that needs nothing else (the
/// health checker): `Ok(None)` while the line is not complete, `Err` with the line (cut to 80
/// bytes) when it is not `HTTP/1.x NNN …`.
pub fn status_line(buf: &[u8]) -> Result<Option<u16>, String> {
    let Some(end) = buf.windows(2).position(|w| w == b"\r\n") else {
        return Ok(None);
    };
    let line = String::from_utf8_lossy(&buf[..end.min(80)]);
    let mut parts = line.splitn(3, ' ');
    match (parts.next(), parts.next()) {
        (Some(v), Some(s)) if v.starts_with("HTTP/1.") && s.len() == 3 => {
            s.parse::<u16>().map(Some).map_err(|_| line.to_string())
        }
        _ => Err(line.to_string()),
    }
}

/// Parse a response head. `head_request`: the request was HEAD (no body follows).
pub fn parse_response(
    buf: &[u8],
    max: usize,
    head_request: bool,
) -> Result<Option<Response>, HeadError> {
    let mut headers = Headers::new();
    Ok(parse_response_in(buf, max, head_request, &mut headers)?.map(|(r, _)| r))
}

/// A whole response head as httparse read it: what [`rewrite_response_parsed`] writes toward
/// the client from, borrowing the head.
#[derive(Clone, Copy, Debug)]
pub struct ResponseLines<'h, 'b> {
    pub code: u16,
    pub reason: &'b str,
    pub headers: &'h [httparse::Header<'b>],
    /// A `Connection` header names other headers (hop-by-hop for this message).
    pub named: bool,
}

impl<'h, 'b> ResponseLines<'h, 'b> {
    /// The lines of a response httparse has parsed whole; `named`: what
    /// [`connection_names_any`] says of its headers.
    fn of(resp: httparse::Response<'h, 'b>, named: bool) -> ResponseLines<'h, 'b> {
        ResponseLines {
            code: resp.code.unwrap_or(0),
            reason: resp.reason.unwrap_or(""),
            headers: resp.headers,
            named,
        }
    }
}

/// [`parse_response`], with the head's status line and headers as parsed (in `headers`)
/// beside what the proxy needs to know of it.
pub fn parse_response_in<'h, 'b>(
    buf: &'b [u8],
    max: usize,
    head_request: bool,
    headers: &'h mut Headers<'b>,
) -> Result<Option<(Response, ResponseLines<'h, 'b>)>, HeadError> {
    let mut resp = httparse::Response::new(&mut []);
    let head_len = match headers.response(&mut resp, buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return partial(buf, max),
        Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooLarge),
        Err(_) => return Err(HeadError::Invalid("malformed response head")),
    };
    if head_len > max {
        return Err(HeadError::TooLarge);
    }
    let status = resp.code.unwrap_or(0);
    if status < 100 {
        // `000` parses as a number, but no client can read it back as a status line.
        return Err(HeadError::Invalid("invalid status code"));
    }
    let hs = &*resp.headers;
    let named = connection_names_any(hs);
    if connection_names_framing(hs, named) {
        return Err(HeadError::Invalid("Connection names a framing header"));
    }
    let te = chunked(hs)?;
    let cl = content_length(hs)?;
    let body = if head_request || (100..200).contains(&status) || status == 204 || status == 304 {
        BodyKind::None
    } else {
        match (te, cl) {
            (Some(true), _) => BodyKind::Chunked,
            (Some(false), _) => BodyKind::UntilClose,
            (None, Some(n)) => BodyKind::Length(n),
            (None, None) => BodyKind::UntilClose,
        }
    };
    let close = hs
        .iter()
        .any(|h| is(h.name, "connection") && has_token(h.value, "close"));
    let response = Response {
        head_len,
        status,
        keep_alive: resp.version == Some(1) && !close && body != BodyKind::UntilClose,
        body,
        upgrade: upgrade_value(hs),
        drop_length: te.is_some() && cl.is_some(),
    };
    Ok(Some((response, ResponseLines::of(resp, named))))
}

/// Reason phrase for the statuses the proxy itself answers with.
pub fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        414 => "URI Too Long",
        422 => "Unprocessable Content",
        429 => "Too Many Requests",
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
    error_page(status, reason(status))
}

/// Our own answer with `detail` as its body (nginx's "The plain HTTP request was sent to HTTPS
/// port" for plain HTTP on a TLS port).
pub fn error_page(status: u16, detail: &str) -> Vec<u8> {
    let body = format!("{status} {detail}\n");
    format!(
        "HTTP/1.1 {status} {}\r\nServer: ringway\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        reason(status),
        body.len()
    )
    .into_bytes()
}

#[cfg(test)]
mod tests;
