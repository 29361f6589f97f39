//! rustls set-up shared by the proxy's configuration and the load generator: the crypto
//! provider, and a client configuration from a CA file or with verification off.

use std::path::Path;
use std::sync::{Arc, OnceLock};

use pki_types::pem::PemObject;
use pki_types::{CertificateDer, ServerName};
use rustls::crypto::CryptoProvider;
use rustls::crypto::hash::HashAlgorithm;
use rustls::crypto::hmac::Tag;
use rustls::crypto::tls13::{Hkdf, HkdfUsingHmac};
use rustls::{CipherSuiteCommon, SupportedCipherSuite, Tls13CipherSuite};

/// The crypto provider (aws-lc-rs; see `docs/design-notes.md` for the measurement), its TLS
/// 1.3 suites deriving their keys through [`KeyedHmac`].
pub fn provider() -> Arc<CryptoProvider> {
    static P: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    P.get_or_init(|| {
        let mut p = rustls::crypto::aws_lc_rs::default_provider();
        for s in &mut p.cipher_suites {
            if let SupportedCipherSuite::Tls13(t) = *s {
                let hkdf: &'static dyn Hkdf = match t.common.hash_provider.algorithm() {
                    HashAlgorithm::SHA256 => &HKDF_SHA256,
                    HashAlgorithm::SHA384 => &HKDF_SHA384,
                    _ => continue,
                };
                // Made once per process, for its whole life (rustls keeps suites as statics).
                *s = SupportedCipherSuite::Tls13(Box::leak(Box::new(Tls13CipherSuite {
                    common: CipherSuiteCommon {
                        suite: t.common.suite,
                        hash_provider: t.common.hash_provider,
                        confidentiality_limit: t.common.confidentiality_limit,
                    },
                    hkdf_provider: hkdf,
                    aead_alg: t.aead_alg,
                    quic: t.quic,
                })));
            }
        }
        Arc::new(p)
    })
    .clone()
}

/// HMAC for TLS 1.3's key schedule (rustls's `HkdfUsingHmac`), from aws-lc-rs: a key's inner
/// and outer pads are hashed once, when the key is made, and every HMAC under it starts from
/// that state. aws-lc-rs's own HKDF, which the provider uses otherwise, keys a fresh HMAC for
/// every HKDF-Expand (and extracts again for every expansion of a secret it has not extracted
/// yet): two SHA-384 blocks more per derived key or IV, ~40 % of the SHA-384 work of a full
/// handshake (`docs/design-notes.md`, "Where a full TLS 1.3 handshake's CPU goes").
struct KeyedHmac(&'static aws_lc_rs::hmac::Algorithm);

struct KeyedHmacKey(aws_lc_rs::hmac::Key);

static HMAC_SHA256: KeyedHmac = KeyedHmac(&aws_lc_rs::hmac::HMAC_SHA256);
static HMAC_SHA384: KeyedHmac = KeyedHmac(&aws_lc_rs::hmac::HMAC_SHA384);
static HKDF_SHA256: HkdfUsingHmac<'static> = HkdfUsingHmac(&HMAC_SHA256);
static HKDF_SHA384: HkdfUsingHmac<'static> = HkdfUsingHmac(&HMAC_SHA384);

impl rustls::crypto::hmac::Hmac for KeyedHmac {
    fn with_key(&self, key: &[u8]) -> Box<dyn rustls::crypto::hmac::Key> {
        Box::new(KeyedHmacKey(aws_lc_rs::hmac::Key::new(*self.0, key)))
    }

    fn hash_output_len(&self) -> usize {
        self.0.digest_algorithm().output_len()
    }
}

impl rustls::crypto::hmac::Key for KeyedHmacKey {
    fn sign_concat(&self, first: &[u8], middle: &[&[u8]], last: &[u8]) -> Tag {
        let mut cx = aws_lc_rs::hmac::Context::with_key(&self.0);
        cx.update(first);
        for m in middle {
            cx.update(m);
        }
        cx.update(last);
        Tag::new(cx.sign().as_ref())
    }

    fn tag_len(&self) -> usize {
        self.0.algorithm().digest_algorithm().output_len()
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Every TLS 1.3 suite of the provider derives exactly what aws-lc-rs's own HKDF derives
    /// for the same suite: extract from a secret and from zeros, with and without a salt,
    /// expansions of one block and of several (longer than a hash), an expander from an OKM,
    /// and the Finished MAC.
    #[test]
    fn the_keyed_hmac_hkdf_derives_what_aws_lc_rs_derives() {
        let ours = provider();
        let theirs = rustls::crypto::aws_lc_rs::default_provider();
        let tls13 = |p: &CryptoProvider| {
            p.cipher_suites
                .iter()
                .filter_map(|s| match s {
                    SupportedCipherSuite::Tls13(t) => Some(*t),
                    _ => None,
                })
                .collect::<Vec<_>>()
        };
        let (ours, theirs) = (tls13(&ours), tls13(&theirs));
        assert_eq!(ours.len(), theirs.len());
        assert!(ours.len() >= 2, "both hashes are covered");
        let secret: Vec<u8> = (0u8..48).map(|i| i.wrapping_mul(37) ^ 0x5a).collect();
        let salt: Vec<u8> = (0u8..48).map(|i| i.wrapping_mul(11)).collect();
        let infos: [&[&[u8]]; 3] = [&[], &[b"tls13 ", b"c hs traffic"], &[&[0u8; 300]]];
        for (a, b) in ours.iter().zip(&theirs) {
            assert_eq!(a.common.suite, b.common.suite);
            assert!(!std::ptr::eq(a.hkdf_provider, b.hkdf_provider));
            let (ha, hb) = (a.hkdf_provider, b.hkdf_provider);
            for salt in [None, Some(&salt[..])] {
                let pairs = [
                    (
                        ha.extract_from_secret(salt, &secret),
                        hb.extract_from_secret(salt, &secret),
                    ),
                    (
                        ha.extract_from_zero_ikm(salt),
                        hb.extract_from_zero_ikm(salt),
                    ),
                ];
                for (ea, eb) in pairs {
                    for info in infos {
                        assert_eq!(
                            ea.expand_block(info).as_ref(),
                            eb.expand_block(info).as_ref()
                        );
                        for len in [12, 32, 48, 100, 255] {
                            let (mut oa, mut ob) = (vec![0u8; len], vec![1u8; len]);
                            ea.expand_slice(info, &mut oa).unwrap();
                            eb.expand_slice(info, &mut ob).unwrap();
                            assert_eq!(oa, ob, "{:?} {len}", a.common.suite);
                        }
                    }
                    let okm = ea.expand_block(&[b"okm"]);
                    let (xa, xb) = (ha.expander_for_okm(&okm), hb.expander_for_okm(&okm));
                    assert_eq!(
                        xa.expand_block(&[b"x"]).as_ref(),
                        xb.expand_block(&[b"x"]).as_ref()
                    );
                    assert_eq!(
                        ha.hmac_sign(&okm, b"transcript").as_ref(),
                        hb.hmac_sign(&okm, b"transcript").as_ref()
                    );
                }
            }
        }
    }
}
