//! The access log: one line per request, its network-given fields escaped.

use crate::session::{AccessLog, CloseSeen, TunnelLog};

/// What came from the network, made safe for one access-log line as nginx does: `"`, `\\`,
/// spaces, control bytes and non-ASCII bytes become `\xHH`, so no request can forge a field
/// or a line. Borrowed when nothing needs escaping (the common case).
pub fn escape_log(s: &str) -> std::borrow::Cow<'_, str> {
    let bad = |b: u8| b <= b' ' || b >= 0x7f || b == b'"' || b == b'\\';
    if !s.bytes().any(bad) {
        return std::borrow::Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 16);
    for b in s.bytes() {
        if bad(b) {
            out.push_str(&format!("\\x{b:02X}"));
        } else {
            out.push(b as char);
        }
    }
    std::borrow::Cow::Owned(out)
}

/// One access-log line, to the `access` tracing target.
pub(super) fn write_access_log(l: &AccessLog<'_>) {
    write_line(l, false)
}

/// The line of a tunnel's opening (`runtime.access_log_open`): the request's fields as far as
/// the 101 (its time, its bytes so far), ending `ws open`.
pub(super) fn write_open_log(l: &AccessLog<'_>) {
    write_line(l, true)
}

fn write_line(l: &AccessLog<'_>, open: bool) {
    let upstream = l.upstream.map_or("-".to_string(), |a| a.to_string());
    let status = if l.status == 0 {
        "-".to_string()
    } else {
        l.status.to_string()
    };
    let tls = match &l.tls {
        None => String::new(),
        Some(t) => format!(
            " tls={} cipher={} sni={}",
            t.version.unwrap_or("-"),
            t.cipher.unwrap_or("-"),
            escape_log(t.sni.unwrap_or("-"))
        ),
    };
    let messages = l.messages.as_ref().map_or(String::new(), messages_fields);
    if open {
        tracing::info!(
            target: "access",
            "{} \"{} {}\" host={} status={} upstream={} {}ms in={} out={} ws {}open{tls}",
            l.client, escape_log(l.method), escape_log(l.path), escape_log(l.host), status,
            upstream, l.duration_ms, l.bytes_in, l.bytes_out, if l.h2 { "h2 " } else { "" }
        );
        return;
    }
    tracing::info!(
        target: "access",
        "{} \"{} {}\" host={} status={} upstream={} {}ms in={} out={}{messages} {}{}end={}{tls}",
        l.client, escape_log(l.method), escape_log(l.path), escape_log(l.host), status, upstream,
        l.duration_ms, l.bytes_in, l.bytes_out, if l.tunnel { "ws " } else { "" },
        if l.h2 { "h2 " } else { "" }, l.end
    );
}

/// A tunnel's fields: ` msgs=IN/OUT close_client=CODE[:REASON] close_upstream=... closer=WHO`
/// (`-` where a side sent no Close; the reason escaped as any field from the network).
fn messages_fields(t: &TunnelLog<'_>) -> String {
    let close = |c: Option<CloseSeen>| match c {
        None => "-".to_string(),
        Some(c) if c.reason.is_empty() => c.code.to_string(),
        Some(c) => format!("{}:{}", c.code, escape_log(&c.reason)),
    };
    let m = t.messages();
    format!(
        " msgs={}/{} close_client={} close_upstream={} closer={}",
        m[0],
        m[1],
        close(t.close(0)),
        close(t.close(1)),
        t.closer()
    )
}
#[cfg(test)]
mod tests {
    use super::escape_log;

    #[test]
    fn access_log_fields_cannot_be_forged() {
        assert_eq!(escape_log("/ws/chat?x=1"), "/ws/chat?x=1");
        assert_eq!(
            escape_log("a\" status=200 upstream=evil"),
            "a\\x22\\x20status=200\\x20upstream=evil"
        );
        assert_eq!(escape_log("x\r\ny"), "x\\x0D\\x0Ay");
        assert_eq!(escape_log("caf\u{e9}"), "caf\\xC3\\xA9");
        assert_eq!(escape_log("a\\b"), "a\\x5Cb");
    }
}
