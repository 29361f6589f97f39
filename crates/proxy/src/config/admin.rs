//! `[admin]`: where the control plane listens, the bearer token that guards it, and the names
//! it answers to (the `Host` check that stops DNS rebinding).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use super::{ConfigError, Ctx, raw};

/// Shortest token accepted: 128 bits of hex.
pub const TOKEN_MIN: usize = 32;
/// Largest token file read.
pub const TOKEN_FILE_MAX: u64 = 4096;

/// The resolved `[admin]` table.
#[derive(Debug, Clone, PartialEq)]
pub struct Admin {
    /// Where `/healthz`, `/status`, `/metrics` and `POST /reload` are served.
    pub listen: SocketAddr,
    /// `token_file`: when set, every endpoint but `/healthz` needs `Authorization: Bearer …`.
    pub token: Option<Token>,
    pub token_file: Option<PathBuf>,
    /// Names a request's `Host` may carry besides the listener's own address.
    pub server_name: Vec<String>,
}

impl Admin {
    /// Whether the listener only takes connections from this host.
    pub fn loopback(&self) -> bool {
        self.listen.ip().is_loopback()
    }
}

/// A bearer token. Never printed (`Debug` shows its length only); compared in constant time.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(Arc<[u8]>);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Token(<{} bytes, not shown>)", self.0.len())
    }
}

impl Token {
    pub fn new(bytes: &[u8]) -> Token {
        Token(bytes.into())
    }

    /// Whether `offered` is this token, in time that does not depend on where they differ.
    pub fn matches(&self, offered: &[u8]) -> bool {
        aws_lc_rs::constant_time::verify_slices_are_equal(&self.0, offered).is_ok()
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// Read a token file: one line of visible ASCII (surrounding blanks and the newline
    /// dropped), at least [`TOKEN_MIN`] characters. Also whether others may read the file.
    pub fn read(path: &std::path::Path) -> Result<(Token, bool), String> {
        use std::os::unix::fs::PermissionsExt;
        let bytes = super::read_bounded_bytes(path, TOKEN_FILE_MAX)?;
        let text = bytes.trim_ascii();
        if text.is_empty() {
            return Err("the token file is empty".into());
        }
        if !text.iter().all(|b| b.is_ascii_graphic()) {
            return Err(
                "the token must be one line of visible ASCII characters (no spaces)".into(),
            );
        }
        if text.len() < TOKEN_MIN {
            return Err(format!(
                "the token has {} characters, fewer than {TOKEN_MIN}: make one with `openssl rand -hex 32`",
                text.len()
            ));
        }
        let open = std::fs::metadata(path).is_ok_and(|m| m.permissions().mode() & 0o077 != 0);
        Ok((Token::new(text), open))
    }
}

pub(super) fn resolve(
    cx: &Ctx<'_>,
    a: &raw::Admin,
    warnings: &mut Vec<String>,
) -> Result<Option<Admin>, ConfigError> {
    let Some(listen) = &a.listen else {
        if let Some(t) = &a.token_file {
            return Err(cx.err(
                t.span(),
                "admin.token_file",
                "admin.listen is not set: there is no admin endpoint to guard",
            ));
        }
        return Ok(None);
    };
    let addr = super::parse_addr(listen.get_ref())
        .map_err(|m| cx.err(listen.span(), "admin.listen", m))?;
    let (token, token_file) = match &a.token_file {
        None => (None, None),
        Some(t) => {
            let path = super::tls::path_of(cx, t.get_ref());
            let (token, open) = Token::read(&path).map_err(|m| {
                cx.err(
                    t.span(),
                    "admin.token_file",
                    format!("{}: {m}", path.display()),
                )
            })?;
            if open {
                warnings.push(format!(
                    "admin.token_file {} can be read by other users: `chmod 600` it",
                    path.display()
                ));
            }
            (Some(token), Some(path))
        }
    };
    let mut server_name = Vec::new();
    for (i, n) in a.server_name.iter().flatten().enumerate() {
        let name = n
            .get_ref()
            .trim()
            .trim_end_matches('.')
            .to_ascii_lowercase();
        let ok = !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-.:[]".contains(&b));
        if !ok {
            return Err(cx.err(
                n.span(),
                format!("admin.server_name[{i}]"),
                format!("{:?} is not a host name", n.get_ref()),
            ));
        }
        server_name.push(name);
    }
    if token.is_none() && !addr.ip().is_loopback() {
        warnings.push(format!(
            "admin.listen {addr} is not a loopback address and admin.token_file is not set: \
             /status and /metrics answer whoever reaches it, and POST /reload is refused there; \
             set token_file (or listen on 127.0.0.1)"
        ));
    }
    Ok(Some(Admin {
        listen: addr,
        token,
        token_file,
        server_name,
    }))
}
