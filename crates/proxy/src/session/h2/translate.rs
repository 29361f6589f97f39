//! HTTP/2 to HTTP/1.1 and back: a stream's request as the HTTP/1.1 request its inner session
//! reads, an HTTP/1.1 answer's fields and trailers as HTTP/2 fields.

use super::*;

/// An HTTP/1 response head's fields as HTTP/2 fields: names lowercased, the connection-specific
/// ones dropped (RFC 9113 §8.2.2), `content-length` dropped when the body is chunked as well;
/// for a 101 that opened a WebSocket, its handshake fields too (RFC 8441 §5).
pub(super) fn response_fields(head: &[u8], drop_length: bool, upgraded: bool) -> FieldList {
    let mut headers = [httparse::EMPTY_HEADER; 128];
    let mut r = httparse::Response::new(&mut headers);
    if r.parse(head).is_err() {
        return Vec::new();
    }
    let mut out = Vec::new();
    for h in r.headers.iter() {
        let name = h.name.to_ascii_lowercase();
        let drop = matches!(
            name.as_str(),
            "connection" | "keep-alive" | "proxy-connection" | "transfer-encoding" | "upgrade"
        ) || (drop_length && name == "content-length")
            || (upgraded
                && name.starts_with("sec-websocket-")
                && name != "sec-websocket-protocol"
                && name != "sec-websocket-extensions");
        if !drop {
            out.push((name.into_bytes(), h.value.to_vec()));
        }
    }
    out
}

/// A chunked answer's trailer lines as HTTP/2 fields: names lowercased; the fields HTTP/2
/// forbids, and any that would not be a field, left out.
pub(super) fn trailer_fields(text: &[u8]) -> FieldList {
    let mut out = Vec::new();
    for line in text.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let name = line[..colon].to_ascii_lowercase();
        let value = line[colon + 1..].trim_ascii();
        let forbidden = matches!(
            &name[..],
            b"connection"
                | b"keep-alive"
                | b"proxy-connection"
                | b"transfer-encoding"
                | b"upgrade"
                | b"content-length"
                | b"host"
                | b"te"
        );
        if !name.is_empty() && !forbidden {
            out.push((name, value.to_vec()));
        }
    }
    out
}

/// Writes the HTTP/1.1 request for an HTTP/2 request: the request line, `Host` from
/// `:authority`, the fields (cookies joined, RFC 9113 §8.2.3), the body's framing; an extended
/// CONNECT for `websocket` as the GET of an upgrade with a generated key.
pub(super) fn request_head(
    out: &mut Vec<u8>,
    req: &H2Request,
    end: bool,
    ws_key: Option<&str>,
) -> Body {
    let method: &[u8] = if ws_key.is_some() {
        b"GET"
    } else {
        &req.method
    };
    out.extend_from_slice(method);
    out.push(b' ');
    out.extend_from_slice(req.path.as_deref().unwrap_or(b"/"));
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let host = req.authority.as_deref().or_else(|| req.field(b"host"));
    if let Some(h) = host {
        out.extend_from_slice(b"host: ");
        out.extend_from_slice(h);
        out.extend_from_slice(b"\r\n");
    }
    let mut cookies = 0;
    for (n, v) in &req.fields {
        match &n[..] {
            b"host" => continue,
            b"cookie" => {
                out.extend_from_slice(if cookies == 0 { b"cookie: " } else { b"; " });
                out.extend_from_slice(v);
                cookies += 1;
                continue;
            }
            b"sec-websocket-key" | b"sec-websocket-version" if ws_key.is_some() => continue,
            _ => {}
        }
        if cookies > 0 {
            out.extend_from_slice(b"\r\n");
            cookies = 0;
        }
        out.extend_from_slice(n);
        out.extend_from_slice(b": ");
        out.extend_from_slice(v);
        out.extend_from_slice(b"\r\n");
    }
    if cookies > 0 {
        out.extend_from_slice(b"\r\n");
    }
    let body = if let Some(key) = ws_key {
        out.extend_from_slice(b"upgrade: websocket\r\nconnection: upgrade\r\nsec-websocket-version: 13\r\nsec-websocket-key: ");
        out.extend_from_slice(key.as_bytes());
        out.extend_from_slice(b"\r\n");
        Body::Tunnel
    } else if end {
        if req.content_length.is_none() && matches!(&req.method[..], b"POST" | b"PUT" | b"PATCH") {
            out.extend_from_slice(b"content-length: 0\r\n");
        }
        Body::Ended
    } else if req.content_length.is_some() {
        Body::Plain
    } else {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
        Body::Chunked
    };
    out.extend_from_slice(b"\r\n");
    body
}
