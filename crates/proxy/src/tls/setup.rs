//! rustls set-up shared by the proxy's configuration and the load generator: the crypto
//! provider, and a client configuration from a CA file or with verification off.

use std::path::Path;
use std::sync::{Arc, OnceLock};

use pki_types::pem::PemObject;
use pki_types::{CertificateDer, ServerName};
use rustls::crypto::CryptoProvider;

/// The crypto provider (aws-lc-rs; see `docs/design-notes.md` for the measurement).
pub fn provider() -> Arc<CryptoProvider> {
    static P: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    P.get_or_init(|| Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
        .clone()
}

/// The certificates (a chain, or a CA bundle) in PEM bytes; an error says what is wrong.
pub fn certs_from_pem(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("not a valid PEM file: {e}"))?;
    if certs.is_empty() {
        return Err("no certificate".into());
    }
    Ok(certs)
}

/// A client configuration: verifying servers against `roots` (PEM certificates), or
/// accepting any certificate when `roots` is `None`; ALPN `http/1.1`.
pub fn client_config(
    roots: Option<&[CertificateDer<'static>]>,
) -> Result<rustls::ClientConfig, String> {
    let provider = provider();
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let mut config = match roots {
        Some(certs) => {
            let mut store = rustls::RootCertStore::empty();
            for c in certs {
                store.add(c.clone()).map_err(|e| e.to_string())?;
            }
            builder.with_root_certificates(store).with_no_client_auth()
        }
        None => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerify(provider)))
            .with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    // The records are ringway's own once the handshake is done (tls/records/).
    config.enable_secret_extraction = true;
    Ok(config)
}

/// A client configuration from a CA file (`None`: verification off).
pub fn client_config_from(ca: Option<&Path>) -> Result<rustls::ClientConfig, String> {
    let roots = match ca {
        None => None,
        Some(p) => {
            let pem = crate::sys::read_bounded_bytes(p, 16 << 20)
                .map_err(|e| format!("{}: {e}", p.display()))?;
            Some(certs_from_pem(&pem).map_err(|e| format!("{}: {e}", p.display()))?)
        }
    };
    client_config(roots.as_deref())
}

/// Verification off (nginx's `proxy_ssl_verify off`, a load generator's `--insecure`): any
/// certificate is accepted; the handshake's signatures are still checked.
#[derive(Debug)]
struct NoVerify(Arc<CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
