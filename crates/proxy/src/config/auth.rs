//! `auth_request`: nginx's `auth_request` (with `auth_request_set` and `proxy_set_header` for
//! what the answer says of the client) as one table per location.

use std::time::Duration;

use super::{ConfigError, Ctx, raw};

/// A location's authentication at the upgrade: a subrequest to `upstream` before the request
/// is proxied (see `session/auth.rs`).
#[derive(Debug, Clone, PartialEq)]
pub struct AuthRequest {
    /// Index into `Config::upstreams`: balancing, keepalive, health and `max_fails` as any
    /// upstream's.
    pub upstream: usize,
    /// The target the subrequest asks for; `None`: the client's own.
    pub uri: Option<String>,
    /// For the whole subrequest (connect, request, answer): past it, 500.
    pub timeout: Duration,
    /// Headers the proxied request gets from the answer: `(request header, answer header)`.
    /// A client's own copy of a request header named here is never passed on.
    pub set: Vec<(String, String)>,
    /// How long an answer (2xx, 401, 403) is reused for a request with the same credentials.
    pub cache: Option<Duration>,
}

/// `auth_request.timeout` unless set.
pub const TIMEOUT: Duration = Duration::from_secs(5);

/// `<lf>.auth_request`; `by_name`: the upstreams.
pub(super) fn auth_request(
    cx: &Ctx<'_>,
    lf: &str,
    a: &toml::Spanned<raw::AuthRequest>,
    by_name: &std::collections::HashMap<String, usize>,
) -> Result<AuthRequest, ConfigError> {
    let f = format!("{lf}.auth_request");
    let a = a.get_ref();
    let name = a.upstream.get_ref();
    let upstream = *by_name.get(name).ok_or_else(|| {
        cx.err(
            a.upstream.span(),
            format!("{f}.upstream"),
            format!("unknown upstream {name:?}"),
        )
    })?;
    let uri = match &a.uri {
        None => None,
        Some(u) => {
            let v = u.get_ref();
            if !v.starts_with('/') || v.bytes().any(|b| b <= b' ' || b == 0x7f) {
                return Err(cx.err(
                    u.span(),
                    format!("{f}.uri"),
                    format!("{v:?} is not a request target (it starts with '/', no spaces or control bytes)"),
                ));
            }
            Some(v.clone())
        }
    };
    let token = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
    };
    let mut set = Vec::new();
    if let Some(m) = &a.set {
        for (to, from) in m.get_ref() {
            if !token(to) || !token(from.get_ref()) {
                return Err(cx.err(
                    from.span(),
                    format!("{f}.set.{to}"),
                    "expected header names: set = { \"X-User\" = \"X-Auth-User\" } (the request's header = the answer's)",
                ));
            }
            let hop = [
                "connection",
                "upgrade",
                "host",
                "content-length",
                "transfer-encoding",
            ];
            if hop.iter().any(|h| to.eq_ignore_ascii_case(h)) {
                return Err(cx.err(
                    from.span(),
                    format!("{f}.set.{to}"),
                    format!("{to} cannot be set from the answer (it frames the request)"),
                ));
            }
            set.push((to.clone(), from.get_ref().clone()));
        }
    }
    let cache = match &a.cache {
        None => None,
        Some(_) => Some(cx.timeout(&a.cache, &format!("{f}.cache"), Duration::ZERO)?),
    };
    Ok(AuthRequest {
        upstream,
        uri,
        timeout: cx.timeout(&a.timeout, &format!("{f}.timeout"), TIMEOUT)?,
        set,
        cache,
    })
}
