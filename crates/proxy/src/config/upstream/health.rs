//! `health_check` of an upstream: what is sent, what answer passes, how often, and how
//! many passes or failures in a row change a server's health.

use super::super::*;

/// `health_check`: probes each server of the upstream every `interval` from a thread of the
/// main process; `fall` failures in a row take it out, `rise` passes bring it back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheck {
    pub interval: Duration,
    pub rise: u32,
    pub fall: u32,
    pub timeout: Duration,
    /// What is sent (`type = "http"`); `None`: `type = "tcp"`, a connect is the check.
    pub request: Option<Vec<u8>>,
    /// Statuses that pass: a class (`2` for "2xx") or an exact status.
    pub expect: Vec<Expect>,
    /// Check this port instead of each server's own.
    pub port: Option<u16>,
}

/// One `expect` entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    Class(u16),
    Status(u16),
}

impl Expect {
    /// As written: `2xx` or `204`.
    pub fn name(&self) -> String {
        match self {
            Expect::Class(c) => format!("{c}xx"),
            Expect::Status(s) => s.to_string(),
        }
    }
}

impl HealthCheck {
    /// Whether an answer with `status` passes.
    pub fn passes(&self, status: u16) -> bool {
        self.expect.iter().any(|e| match *e {
            Expect::Class(c) => status / 100 == c,
            Expect::Status(s) => status == s,
        })
    }
}

pub(super) fn health_check(
    cx: &Ctx<'_>,
    f: &str,
    h: &Spanned<raw::HealthCheck>,
) -> Result<HealthCheck, ConfigError> {
    let f = format!("{f}.health_check");
    let h = h.get_ref();
    let count = |v: &Option<Spanned<i64>>, name: &str, default: u32| match v {
        None => Ok(default),
        Some(n) if (1..=1000).contains(n.get_ref()) => Ok(*n.get_ref() as u32),
        Some(n) => Err(cx.err(n.span(), format!("{f}.{name}"), "must be from 1 to 1000")),
    };
    let interval = cx.timeout(
        &h.interval,
        &format!("{f}.interval"),
        Duration::from_secs(5),
    )?;
    if interval < Duration::from_millis(100) {
        let span = h.interval.as_ref().map_or(0..0, |s| s.span());
        return Err(cx.err(span, format!("{f}.interval"), "must be at least 100ms"));
    }
    let timeout = cx.timeout(&h.timeout, &format!("{f}.timeout"), Duration::from_secs(1))?;
    if timeout > interval {
        let span = h.timeout.as_ref().map_or(0..0, |s| s.span());
        return Err(cx.err(
            span,
            format!("{f}.timeout"),
            "must not be longer than the interval",
        ));
    }
    let http = match h.kind.as_ref().map(|k| k.get_ref().as_str()) {
        None | Some("http") => true,
        Some("tcp") => false,
        Some(other) => {
            let span = h.kind.as_ref().map_or(0..0, |s| s.span());
            return Err(cx.err(
                span,
                format!("{f}.type"),
                format!("unknown type {other:?}; expected \"http\" or \"tcp\""),
            ));
        }
    };
    let request = match (&h.request, http) {
        (Some(r), false) => {
            return Err(cx.err(
                r.span(),
                format!("{f}.request"),
                "a tcp check sends nothing; use type = \"http\"",
            ));
        }
        (_, false) => None,
        (None, true) => Some(b"GET / HTTP/1.0\r\n\r\n".to_vec()),
        (Some(r), true) => {
            let text = r.get_ref();
            let line = text.split("\r\n").next().unwrap_or("");
            let parts: Vec<&str> = line.split(' ').collect();
            if parts.len() != 3 || !parts[2].starts_with("HTTP/1.") || !text.ends_with("\r\n\r\n") {
                return Err(cx.err(
                    r.span(),
                    format!("{f}.request"),
                    "expected a whole HTTP/1 request such as \"GET /health HTTP/1.0\\r\\n\\r\\n\" (request line, headers, and the empty line)",
                ));
            }
            if text.len() > 4096 {
                return Err(cx.err(r.span(), format!("{f}.request"), "longer than 4096 bytes"));
            }
            Some(text.as_bytes().to_vec())
        }
    };
    let expect = expect(cx, &f, &h.expect, http)?;
    let port = match &h.port {
        None => None,
        Some(p) if (1..=65535).contains(p.get_ref()) => Some(*p.get_ref() as u16),
        Some(p) => return Err(cx.err(p.span(), format!("{f}.port"), "must be from 1 to 65535")),
    };
    Ok(HealthCheck {
        interval,
        rise: count(&h.rise, "rise", 2)?,
        fall: count(&h.fall, "fall", 3)?,
        timeout,
        request,
        expect,
        port,
    })
}

/// `expect` of health check field `f`: status classes ("2xx") and statuses ("204").
fn expect(
    cx: &Ctx<'_>,
    f: &str,
    v: &Option<Spanned<Vec<Spanned<String>>>>,
    http: bool,
) -> Result<Vec<Expect>, ConfigError> {
    Ok(match v {
        None => vec![Expect::Class(2), Expect::Class(3)],
        Some(list) => {
            let mut out = Vec::new();
            for (i, e) in list.get_ref().iter().enumerate() {
                let t = e.get_ref().to_ascii_lowercase();
                let b = t.as_bytes();
                let x = match b {
                    [c @ b'1'..=b'5', b'x', b'x'] => Expect::Class(u16::from(c - b'0')),
                    [b'1'..=b'5', b'0'..=b'9', b'0'..=b'9'] => {
                        Expect::Status(t.parse().unwrap_or(0))
                    }
                    _ => {
                        return Err(cx.err(
                            e.span(),
                            format!("{f}.expect[{i}]"),
                            format!("{:?} is not a status class such as \"2xx\" or a status such as \"204\"", e.get_ref()),
                        ));
                    }
                };
                out.push(x);
            }
            if out.is_empty() {
                return Err(cx.err(
                    list.span(),
                    format!("{f}.expect"),
                    "needs at least one status",
                ));
            }
            if !http {
                return Err(cx.err(
                    list.span(),
                    format!("{f}.expect"),
                    "a tcp check reads no status",
                ));
            }
            out
        }
    })
}
