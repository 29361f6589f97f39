//! The rewrites of a head on its way through the proxy, as nginx's WebSocket
//! `proxy_set_header` block does them: the request toward the upstream (hop-by-hop headers
//! dropped, `Connection`, `X-Real-IP`, `X-Forwarded-For`, `X-Forwarded-Proto`), the response
//! toward the client (its `Connection`), names' case and order kept. Parsing is in `mod.rs`.

use std::net::IpAddr;

use super::{
    HeadError, Headers, RequestLines, ResponseLines, connection_names_any, hop_by_hop, is,
    named_by_connection,
};

/// What the proxy adds to a request on its way upstream.
pub struct Forwarded<'a> {
    /// The request is forwarded as an upgrade (`Upgrade` kept, `Connection: upgrade`);
    /// otherwise `Upgrade` is dropped and `Connection: close` sent.
    pub upgrade: bool,
    pub client_ip: IpAddr,
    /// `http` or `https`.
    pub proto: &'a str,
    /// Host to send when the client sent none (HTTP/1.0): the upstream name, as nginx's
    /// `$proxy_host`.
    pub default_host: &'a str,
    /// Not an upgrade, and the upstream keeps connections: `Connection: keep-alive` instead
    /// of `close`.
    pub keepalive: bool,
    /// The request target to send instead of the client's (an `auth_request` subrequest's).
    pub target: Option<&'a str>,
    /// Headers the proxy sets: the client's own of these names are dropped, and each is
    /// written with its value when it has one (`auth_request`'s `set`, the subrequest's
    /// `X-Original-URI`).
    pub set: &'a [(&'a str, Option<&'a [u8]>)],
    /// The request goes without its body (a subrequest): its framing headers are dropped.
    pub no_body: bool,
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
    let mut headers = Headers::new();
    let mut req = httparse::Request::new(&mut []);
    match headers.request(&mut req, head) {
        Ok(httparse::Status::Complete(_)) => {}
        _ => return Err(HeadError::Invalid("malformed request head")),
    }
    let named = connection_names_any(req.headers);
    rewrite_request_parsed(&RequestLines::of(req, named), fwd, out);
    Ok(())
}

/// [`rewrite_request`] of a head [`parse_request_in`] has already parsed into `req`.
pub fn rewrite_request_parsed(req: &RequestLines<'_, '_>, fwd: &Forwarded<'_>, out: &mut Vec<u8>) {
    let hs = req.headers;
    let upgrade = fwd.upgrade;
    let connection: &[u8] = match (upgrade, fwd.keepalive) {
        (true, _) => b"upgrade",
        (false, true) => b"keep-alive",
        (false, false) => b"close",
    };
    out.extend_from_slice(req.method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(fwd.target.unwrap_or(req.target).as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let named = req.named;
    let header = |out: &mut Vec<u8>, name: &str, value: &[u8]| {
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value);
        out.extend_from_slice(b"\r\n");
    };
    let mut ip_buf = [0; IP_TEXT_MAX];
    let ip = ip_text(fwd.client_ip, &mut ip_buf);
    // `X-Forwarded-For`: what came (every such header, in order), then the client; written
    // where the first one stood, or at the end.
    let xff = |out: &mut Vec<u8>, name: &str| {
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        for h in hs.iter().filter(|h| is(h.name, "x-forwarded-for")) {
            let t = h.value.trim_ascii();
            if !t.is_empty() {
                out.extend_from_slice(t);
                out.extend_from_slice(b", ");
            }
        }
        out.extend_from_slice(ip);
        out.extend_from_slice(b"\r\n");
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
        } else if hop_by_hop(n)
            || (named && named_by_connection(hs, n))
            || fwd.set.iter().any(|(s, _)| is(n, s))
            || (fwd.no_body
                && ["content-length", "transfer-encoding", "expect"]
                    .iter()
                    .any(|b| is(n, b)))
        {
            // dropped
        } else if is(n, "x-real-ip") {
            if !did_real {
                header(out, n, ip);
                did_real = true;
            }
        } else if is(n, "x-forwarded-for") {
            if !did_xff {
                xff(out, n);
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
        header(out, "X-Real-IP", ip);
    }
    if !did_xff {
        xff(out, "X-Forwarded-For");
    }
    if !did_proto {
        header(out, "X-Forwarded-Proto", fwd.proto.as_bytes());
    }
    for (name, value) in fwd.set {
        if let Some(v) = value {
            header(out, name, v);
        }
    }
    out.extend_from_slice(b"\r\n");
}

/// The longest text of an IP address (an IPv6 address with an IPv4 tail).
pub(super) const IP_TEXT_MAX: usize = 45;

/// `ip` as text, in `buf`: an IPv4 address written digit by digit (once per proxied request,
/// where `to_string` cost a formatter and an allocation), an IPv6 one by its `Display`.
pub(super) fn ip_text(ip: IpAddr, buf: &mut [u8; IP_TEXT_MAX]) -> &[u8] {
    let mut n = 0;
    match ip {
        IpAddr::V4(v4) => {
            for (i, o) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    buf[n] = b'.';
                    n += 1;
                }
                if o >= 100 {
                    buf[n] = b'0' + o / 100;
                    n += 1;
                }
                if o >= 10 {
                    buf[n] = b'0' + o / 10 % 10;
                    n += 1;
                }
                buf[n] = b'0' + o % 10;
                n += 1;
            }
        }
        IpAddr::V6(v6) => {
            let mut w = &mut buf[..];
            // Fits: `IP_TEXT_MAX` is the longest an IPv6 address is written.
            let _ = std::io::Write::write_fmt(&mut w, format_args!("{v6}"));
            n = IP_TEXT_MAX - w.len();
        }
    }
    &buf[..n]
}

/// The `Connection` value the proxy gives the client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientConnection {
    Upgrade,
    KeepAlive,
    Close,
}

/// Write the response head for the client: status as sent (as HTTP/1.1), hop-by-hop headers
/// dropped (`Upgrade` kept on a 101), our `Connection` value, `Content-Length` dropped when
/// `drop_length` (it came beside `Transfer-Encoding`), everything else untouched.
pub fn rewrite_response(
    head: &[u8],
    conn: ClientConnection,
    drop_length: bool,
    out: &mut Vec<u8>,
) -> Result<(), HeadError> {
    let mut headers = Headers::new();
    let mut resp = httparse::Response::new(&mut []);
    match headers.response(&mut resp, head) {
        Ok(httparse::Status::Complete(_)) => {}
        _ => return Err(HeadError::Invalid("malformed response head")),
    }
    let named = connection_names_any(resp.headers);
    rewrite_response_parsed(&ResponseLines::of(resp, named), conn, drop_length, out);
    Ok(())
}

/// [`rewrite_response`] of a head [`parse_response_in`] has already parsed into `resp`.
pub fn rewrite_response_parsed(
    resp: &ResponseLines<'_, '_>,
    conn: ClientConnection,
    drop_length: bool,
    out: &mut Vec<u8>,
) {
    let code = resp.code;
    out.extend_from_slice(b"HTTP/1.1 ");
    // httparse takes exactly three digits.
    out.extend_from_slice(&[
        b'0' + (code / 100 % 10) as u8,
        b'0' + (code / 10 % 10) as u8,
        b'0' + (code % 10) as u8,
        b' ',
    ]);
    out.extend_from_slice(resp.reason.as_bytes());
    out.extend_from_slice(b"\r\n");
    let value: &[u8] = match conn {
        ClientConnection::Upgrade => b"upgrade",
        ClientConnection::KeepAlive => b"keep-alive",
        ClientConnection::Close => b"close",
    };
    let hs = resp.headers;
    let named = resp.named;
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
        } else if drop_length && is(n, "content-length") {
            false
        } else {
            !(hop_by_hop(n) || (named && named_by_connection(hs, n)))
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
}
