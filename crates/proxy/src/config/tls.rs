//! TLS settings, loaded and checked when the configuration is resolved (so that a reload can
//! swap them): a server's certificates and keys (PEM; a chain per file; RSA and ECDSA side by
//! side, picked by what the client supports), its protocols, the certificate per name on a
//! shared listen address (SNI), and an upstream's CA, verification and server name.
//!
//! Every problem is a [`ConfigError`] naming the file, line and field of the setting: an
//! unreadable file, a file without a certificate or key, a key that is not the certificate's.
//! An expired certificate is a warning with its date (`Config::warnings`).

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use pki_types::pem::PemObject;
use pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::SupportedProtocolVersion;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use super::{ConfigError, Ctx, Spanned, raw};
use crate::tls::setup::{certs_from_pem, provider};

/// Session resumption state shared by every listener, worker and configuration of the
/// process: a ticket one worker issued is accepted by any other, and after a reload.
fn ticketer() -> Option<Arc<dyn rustls::server::ProducesTickets>> {
    static T: OnceLock<Option<Arc<dyn rustls::server::ProducesTickets>>> = OnceLock::new();
    // Keys rotate every 6 hours; tickets live 12 (rustls's `TicketRotator`).
    T.get_or_init(|| rustls::crypto::aws_lc_rs::Ticketer::new().ok())
        .clone()
}

/// TLS 1.2 session IDs remembered for resumption, process-wide (about 200 bytes each).
const SESSION_CACHE: usize = 20_000;

fn session_cache() -> Arc<dyn rustls::server::StoresServerSessions> {
    static C: OnceLock<Arc<rustls::server::ServerSessionMemoryCache>> = OnceLock::new();
    C.get_or_init(|| rustls::server::ServerSessionMemoryCache::new(SESSION_CACHE))
        .clone()
}

/// The TLS of one listen address: a rustls configuration whose certificate resolver picks
/// among the servers on that address by SNI, in two variants that differ only in whose order
/// of cipher suites decides.
#[derive(Clone)]
pub struct ListenerTls {
    /// ringway's order: AES-128-GCM first ([`server_provider`]).
    pub config: Arc<rustls::ServerConfig>,
    /// The client's order, for a client that lists ChaCha20-Poly1305 first (one without AES
    /// hardware: `tls::prefers_chacha`).
    pub by_client: Arc<rustls::ServerConfig>,
    desc: String,
}

/// The provider a TLS listener serves with: the suites ordered AES-128-GCM first, then
/// AES-256-GCM, then ChaCha20-Poly1305, in each protocol version; the server chooses by that
/// order, unless the client lists ChaCha20 first. What it saves and why it is as strong:
/// `docs/design-notes.md`, "The cipher suite a server chooses".
fn server_provider() -> Arc<rustls::crypto::CryptoProvider> {
    static P: OnceLock<Arc<rustls::crypto::CryptoProvider>> = OnceLock::new();
    P.get_or_init(|| {
        let mut p = (*provider()).clone();
        p.cipher_suites.sort_by_key(|s| {
            use rustls::CipherSuite as C;
            match s.suite() {
                C::TLS13_AES_128_GCM_SHA256
                | C::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
                | C::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256 => 0,
                C::TLS13_AES_256_GCM_SHA384
                | C::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384
                | C::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384 => 1,
                _ => 2,
            }
        });
        Arc::new(p)
    })
    .clone()
}

impl PartialEq for ListenerTls {
    fn eq(&self, o: &ListenerTls) -> bool {
        self.desc == o.desc
    }
}

impl std::fmt::Debug for ListenerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.desc)
    }
}

/// TLS toward the servers of one upstream (nginx's `proxy_ssl_*`).
#[derive(Clone)]
pub struct UpstreamTls {
    pub config: Arc<rustls::ClientConfig>,
    /// The name sent as SNI and verified; `None`: the server's IP address is verified, and no
    /// SNI is sent.
    pub name: Option<ServerName<'static>>,
    desc: String,
}

impl UpstreamTls {
    /// The name to verify a server at `ip` against.
    pub fn name_for(&self, ip: std::net::IpAddr) -> ServerName<'static> {
        self.name
            .clone()
            .unwrap_or_else(|| ServerName::IpAddress(ip.into()))
    }
}

impl PartialEq for UpstreamTls {
    fn eq(&self, o: &UpstreamTls) -> bool {
        self.desc == o.desc
    }
}

impl std::fmt::Debug for UpstreamTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.desc)
    }
}

/// A server's certified keys, in the order written.
type Keys = Arc<[Arc<CertifiedKey>]>;

/// One server's certificates, loaded.
pub(super) struct ServerCerts {
    keys: Keys,
    versions: Vec<&'static SupportedProtocolVersion>,
    /// The protocols as written, with the span of the setting (for mismatches on a listener).
    protocols: (Vec<String>, std::ops::Range<usize>),
    desc: String,
}

/// A path as written, relative to the configuration file's directory.
pub(super) fn path_of(cx: &Ctx<'_>, p: &str) -> PathBuf {
    let p = Path::new(p);
    if p.is_absolute() {
        return p.to_path_buf();
    }
    Path::new(cx.file)
        .parent()
        .map_or_else(|| p.to_path_buf(), |d| d.join(p))
}

/// A string or a list of strings.
fn strings(
    cx: &Ctx<'_>,
    v: &Spanned<toml::Value>,
    field: &str,
) -> Result<Vec<String>, ConfigError> {
    let bad = || {
        cx.err(
            v.span(),
            field,
            "expected a file name or a list of file names",
        )
    };
    match v.get_ref() {
        toml::Value::String(s) => Ok(vec![s.clone()]),
        toml::Value::Array(a) if !a.is_empty() => a
            .iter()
            .map(|x| x.as_str().map(str::to_string).ok_or_else(bad))
            .collect(),
        _ => Err(bad()),
    }
}

fn read(
    cx: &Ctx<'_>,
    span: std::ops::Range<usize>,
    field: &str,
    path: &Path,
) -> Result<Vec<u8>, ConfigError> {
    super::read_bounded_bytes(path, super::defaults::FILE_MAX)
        .map_err(|e| cx.err(span, field, format!("{}: {e}", path.display())))
}

/// The certificates (a chain) in a PEM file.
fn load_certs(
    cx: &Ctx<'_>,
    span: std::ops::Range<usize>,
    field: &str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, ConfigError> {
    let pem = read(cx, span.clone(), field, path)?;
    certs_from_pem(&pem).map_err(|e| {
        let e = if e == "no certificate" {
            format!("no certificate in {}", path.display())
        } else {
            format!("{}: {e}", path.display())
        };
        cx.err(span, field, e)
    })
}

/// Warn about a certificate outside its validity period.
fn check_validity(
    cx: &Ctx<'_>,
    span: std::ops::Range<usize>,
    field: &str,
    path: &Path,
    der: &[u8],
    warnings: &mut Vec<String>,
) {
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
        return;
    };
    let v = cert.validity();
    let now = x509_parser::time::ASN1Time::now();
    let (line, col) = super::line_col(cx.text, span.start);
    if v.not_after < now {
        warnings.push(format!(
            "{}:{line}:{col}: {field}: certificate {} expired on {}",
            cx.file,
            path.display(),
            v.not_after
        ));
    } else if v.not_before > now {
        warnings.push(format!(
            "{}:{line}:{col}: {field}: certificate {} is not valid before {}",
            cx.file,
            path.display(),
            v.not_before
        ));
    }
}

/// Load and check a server's `tls = { cert, key, protocols }`.
pub(super) fn load_server(
    cx: &Ctx<'_>,
    f: &str,
    t: &Spanned<raw::Tls>,
    warnings: &mut Vec<String>,
) -> Result<ServerCerts, ConfigError> {
    let t = t.get_ref();
    let cert_field = format!("{f}.tls.cert");
    let key_field = format!("{f}.tls.key");
    let certs = strings(cx, &t.cert, &cert_field)?;
    let keys = strings(cx, &t.key, &key_field)?;
    if certs.len() != keys.len() {
        return Err(cx.err(
            t.key.span(),
            key_field,
            format!(
                "{} certificate file(s) but {} key file(s): one key per certificate",
                certs.len(),
                keys.len()
            ),
        ));
    }
    let provider = provider();
    let mut loaded = Vec::new();
    let mut desc = String::new();
    for (c, k) in certs.iter().zip(&keys) {
        let (cp, kp) = (path_of(cx, c), path_of(cx, k));
        let chain = load_certs(cx, t.cert.span(), &cert_field, &cp)?;
        check_validity(cx, t.cert.span(), &cert_field, &cp, &chain[0], warnings);
        let pem = read(cx, t.key.span(), &key_field, &kp)?;
        let key = PrivateKeyDer::from_pem_slice(&pem).map_err(|e| {
            cx.err(
                t.key.span(),
                &key_field,
                format!("no private key in {}: {e}", kp.display()),
            )
        })?;
        let signing = provider.key_provider.load_private_key(key).map_err(|e| {
            cx.err(
                t.key.span(),
                &key_field,
                format!("cannot use the key in {}: {e}", kp.display()),
            )
        })?;
        let ck = CertifiedKey::new(chain, signing);
        match ck.keys_match() {
            Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {}
            Err(_) => {
                return Err(cx.err(
                    t.key.span(),
                    &key_field,
                    format!(
                        "the key in {} does not match the certificate in {}",
                        kp.display(),
                        cp.display()
                    ),
                ));
            }
        }
        desc.push_str(&format!("{}+{} ", cp.display(), kp.display()));
        loaded.push(Arc::new(ck));
    }
    let (names, span) = match &t.protocols {
        None => (
            vec!["TLSv1.2".to_string(), "TLSv1.3".to_string()],
            t.cert.span(),
        ),
        Some(p) => (
            p.get_ref().iter().map(|s| s.get_ref().clone()).collect(),
            p.span(),
        ),
    };
    let mut versions = Vec::new();
    for (i, n) in names.iter().enumerate() {
        let v = match n.as_str() {
            "TLSv1.3" => &rustls::version::TLS13,
            "TLSv1.2" => &rustls::version::TLS12,
            "TLSv1" | "TLSv1.0" | "TLSv1.1" | "SSLv2" | "SSLv3" => {
                return Err(cx.err(
                    span,
                    format!("{f}.tls.protocols[{i}]"),
                    format!("{n} is not supported (insecure); use \"TLSv1.2\" and/or \"TLSv1.3\""),
                ));
            }
            _ => {
                return Err(cx.err(
                    span,
                    format!("{f}.tls.protocols[{i}]"),
                    format!("unknown protocol {n:?}; expected \"TLSv1.2\" or \"TLSv1.3\""),
                ));
            }
        };
        if !versions.contains(&v) {
            versions.push(v);
        }
    }
    if versions.is_empty() {
        return Err(cx.err(
            span,
            format!("{f}.tls.protocols"),
            "needs at least one protocol",
        ));
    }
    let mut sorted = names.clone();
    sorted.sort();
    sorted.dedup();
    desc.push_str(&sorted.join(","));
    Ok(ServerCerts {
        keys: loaded.into(),
        versions,
        protocols: (sorted, span),
        desc,
    })
}

/// The certificate of the first server on an address whose names match the client's SNI.
#[derive(Debug)]
struct Sni {
    /// (names, certificates) per server on the address, in order; the first is the default.
    servers: Vec<(Vec<String>, Keys)>,
    /// Refuse a handshake without a known name instead of using the default.
    strict: bool,
}

impl ResolvesServerCert for Sni {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let chosen = match hello.server_name() {
            Some(name) => super::match_name(
                self.servers
                    .iter()
                    .enumerate()
                    .map(|(i, (n, _))| (i, n.as_slice())),
                name.as_bytes(),
            ),
            None => None,
        };
        let keys = match (chosen, self.strict) {
            (Some(i), _) => &self.servers[i].1,
            (None, false) => &self.servers.first()?.1,
            (None, true) => return None,
        };
        // The first key the client can verify (ECDSA before RSA when listed so).
        let schemes = hello.signature_schemes();
        keys.iter()
            .find(|k| k.key.choose_scheme(schemes).is_some())
            .or_else(|| keys.first())
            .cloned()
    }
}

/// One server on an address, for [`listener`].
pub(super) struct OnAddress<'a> {
    pub index: usize,
    pub names: &'a [String],
    pub certs: Option<&'a ServerCerts>,
    pub strict_sni: bool,
    pub listen_span: std::ops::Range<usize>,
    /// The server has `http2 = true`: ALPN offers `h2` on this address.
    pub http2: bool,
}

/// The TLS of the listen address `addr` from the servers on it: `None` when none has TLS; an
/// error when some have and some have not, or their protocols differ.
pub(super) fn listener(
    cx: &Ctx<'_>,
    addr: std::net::SocketAddr,
    on: &[OnAddress<'_>],
) -> Result<Option<ListenerTls>, ConfigError> {
    let Some(first) = on.iter().find(|s| s.certs.is_some()) else {
        return Ok(None);
    };
    let first_certs = first.certs.expect("found with certs");
    if let Some(plain) = on.iter().find(|s| s.certs.is_none()) {
        return Err(cx.err(
            plain.listen_span.clone(),
            format!("server[{}].listen", plain.index),
            format!(
                "{addr} has tls in server[{}] but not in this server: every server on one address needs tls, or none",
                first.index
            ),
        ));
    }
    for s in on {
        let c = s.certs.expect("checked above");
        if c.protocols.0 != first_certs.protocols.0 {
            return Err(cx.err(
                c.protocols.1.clone(),
                format!("server[{}].tls.protocols", s.index),
                format!(
                    "{addr}: the protocols of every server on one address must be the same (server[{}] has {})",
                    first.index,
                    first_certs.protocols.0.join(", ")
                ),
            ));
        }
    }
    let sni = Sni {
        servers: on
            .iter()
            .map(|s| (s.names.to_vec(), s.certs.expect("checked").keys.clone()))
            .collect(),
        strict: on.iter().any(|s| s.strict_sni),
    };
    let mut config = rustls::ServerConfig::builder_with_provider(server_provider())
        .with_protocol_versions(&first_certs.versions)
        .map_err(|e| {
            cx.err(
                first.listen_span.clone(),
                format!("server[{}].tls", first.index),
                e.to_string(),
            )
        })?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(sni));
    config.alpn_protocols = if on.iter().any(|s| s.http2) {
        vec![b"h2".to_vec(), b"http/1.1".to_vec()]
    } else {
        vec![b"http/1.1".to_vec()]
    };
    // The records are ringway's own once the handshake is done (tls/records/).
    config.enable_secret_extraction = true;
    if let Some(t) = ticketer() {
        config.ticketer = t;
    }
    config.session_storage = session_cache();
    let by_client = Arc::new(config.clone());
    config.ignore_client_order = true;
    let desc = format!(
        "{addr} strict_sni={} {}",
        on.iter().any(|s| s.strict_sni),
        on.iter()
            .map(|s| format!("{:?}={}", s.names, s.certs.map_or("", |c| c.desc.as_str())))
            .collect::<Vec<_>>()
            .join(" ")
    );
    let config = Arc::new(config);
    // Prove the configuration makes connections, here rather than on the first accept.
    rustls::server::UnbufferedServerConnection::new(config.clone()).map_err(|e| {
        cx.err(
            first.listen_span.clone(),
            format!("server[{}].tls", first.index),
            e.to_string(),
        )
    })?;
    Ok(Some(ListenerTls {
        config,
        by_client,
        desc,
    }))
}

/// Resolve an upstream's `tls = { ca, verify, sni }`.
pub(super) fn upstream(
    cx: &Ctx<'_>,
    f: &str,
    t: &Spanned<raw::UpstreamTls>,
) -> Result<UpstreamTls, ConfigError> {
    let span = t.span();
    let t = t.get_ref();
    let verify = t.verify.unwrap_or(true);
    let name = match &t.sni {
        None => None,
        Some(s) => Some(ServerName::try_from(s.get_ref().clone()).map_err(|_| {
            cx.err(
                s.span(),
                format!("{f}.tls.sni"),
                format!("{:?} is not a valid server name", s.get_ref()),
            )
        })?),
    };
    let (config, ca_desc) = if verify {
        let (ca_span, ca_field, ca_path) = match &t.ca {
            Some(c) => (c.span(), format!("{f}.tls.ca"), path_of(cx, c.get_ref())),
            None => (
                span.clone(),
                format!("{f}.tls.ca"),
                PathBuf::from(SYSTEM_CA),
            ),
        };
        if t.ca.is_none() && !ca_path.exists() {
            return Err(cx.err(
                span,
                ca_field,
                format!("verify = true needs ca = \"FILE\" (no system CA bundle at {SYSTEM_CA})"),
            ));
        }
        let roots = load_certs(cx, ca_span.clone(), &ca_field, &ca_path)?;
        let config = crate::tls::setup::client_config(Some(&roots))
            .map_err(|e| cx.err(ca_span, &ca_field, format!("{}: {e}", ca_path.display())))?;
        (config, ca_path.display().to_string())
    } else {
        let config = crate::tls::setup::client_config(None)
            .map_err(|e| cx.err(span.clone(), format!("{f}.tls"), e))?;
        (config, "-".to_string())
    };
    let desc = format!(
        "ca={ca_desc} verify={verify} sni={:?}",
        t.sni.as_ref().map(|s| s.get_ref())
    );
    Ok(UpstreamTls {
        config: Arc::new(config),
        name,
        desc,
    })
}

/// A configuration that hands its tunnels over in a binary upgrade (`runtime.upgrade_tunnels`)
/// keeps what a TLS connection's records need to go on in another process: every TLS
/// configuration, toward clients and toward upstreams, gets the key log that catches a
/// handshake's secrets for its own connection (`tls::records::Capture`; it writes nothing
/// anywhere).
pub(super) fn carry_keys(cfg: &mut super::Config) {
    let capture = || -> Arc<dyn rustls::KeyLog> { Arc::new(crate::tls::records::Capture) };
    for t in cfg.listener_tls.iter_mut().flatten() {
        for config in [&mut t.config, &mut t.by_client] {
            let mut c = (**config).clone();
            c.key_log = capture();
            *config = Arc::new(c);
        }
    }
    for t in cfg.upstreams.iter_mut().filter_map(|u| u.tls.as_mut()) {
        let mut c = (*t.config).clone();
        c.key_log = capture();
        t.config = Arc::new(c);
    }
}

/// Debian's bundle of the system's trusted CAs.
const SYSTEM_CA: &str = "/etc/ssl/certs/ca-certificates.crt";
