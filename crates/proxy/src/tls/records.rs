//! TLS records after the handshake (1.3 and 1.2), on the traffic secrets rustls hands over when the
//! handshake is done (`dangerous_into_kernel_connection`, its kTLS entry point): a received
//! record is decrypted in place in the buffer it arrived in, and its plaintext moved to the
//! front of that buffer, so a message goes on to the peer with no copy and no allocation;
//! plaintext to send is sealed into one buffer from the ring's recycled ones. rustls keeps
//! what only it can do (new secrets on a key update, session tickets a server sends a client)
//! in its `KernelConnection`.
//!
//! RFC 8446 §5 (TLS 1.3): an outer type of application_data, version 0x0303, a length of at
//! most 2^14 + 256; the nonce is the IV XOR the record's sequence number; the header is the
//! additional data; the plaintext ends with its real content type, then zero padding.
//! TLS 1.2 (RFC 5246 §6.2.3.3, RFC 5288, RFC 7905): the record's own type; the additional data
//! is sequence number, type, version and plaintext length; AES-GCM carries an 8-byte explicit
//! nonce after the header (ringway sends the IV XOR the sequence number there, as rustls
//! does), ChaCha20-Poly1305 uses the IV XOR the sequence number; no key updates.

use aws_lc_rs::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey};
use rustls::kernel::KernelConnection;
use rustls::{ConnectionTrafficSecrets, Error, ExtractedSecrets};

const HEADER: usize = 5;
const TAG: usize = 16;
/// Largest plaintext per record.
pub const PLAIN_MAX: usize = 16 * 1024;
/// Largest ciphertext per record (plaintext, content type, padding and tag).
pub const CIPHER_MAX: usize = PLAIN_MAX + 256;
/// Records sealed under one key before ringway moves to the next one: far below AES-GCM's
/// limit of 2^24.5 records per key (RFC 8446 §5.5).
const KEY_UPDATE_AFTER: u64 = 1 << 23;

const APPLICATION_DATA: u8 = 23;
const ALERT: u8 = 21;
const HANDSHAKE: u8 = 22;
const KEY_UPDATE: u8 = 24;
const NEW_SESSION_TICKET: u8 = 4;

/// One direction's key, IV and sequence number.
struct Dir {
    key: LessSafeKey,
    iv: [u8; 12],
    seq: u64,
}

impl Dir {
    fn new((seq, s): (u64, ConnectionTrafficSecrets)) -> Result<Dir, Error> {
        let (alg, key, iv) = match s {
            ConnectionTrafficSecrets::Aes128Gcm { key, iv } => (&aead::AES_128_GCM, key, iv),
            ConnectionTrafficSecrets::Aes256Gcm { key, iv } => (&aead::AES_256_GCM, key, iv),
            ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv } => {
                (&aead::CHACHA20_POLY1305, key, iv)
            }
            _ => return Err(Error::General("unsupported record cipher".into())),
        };
        let key = UnboundKey::new(alg, key.as_ref())
            .map_err(|_| Error::General("bad traffic key".into()))?;
        let iv = iv
            .as_ref()
            .try_into()
            .map_err(|_| Error::General("bad traffic IV".into()))?;
        Ok(Dir {
            key: LessSafeKey::new(key),
            iv,
            seq,
        })
    }

    /// The nonce of the next record (and the sequence number moves on).
    fn nonce(&mut self) -> Result<Nonce, Error> {
        let mut n = self.iv;
        for (a, b) in n[4..].iter_mut().zip(self.seq.to_be_bytes()) {
            *a ^= b;
        }
        self.seq = self.seq.checked_add(1).ok_or(Error::EncryptError)?;
        Ok(Nonce::assume_unique_for_key(n))
    }
}

/// What the record layer needs of the handshake's state once it is over: the next traffic
/// secrets on a key update, and what only one end can be sent (a client stores session
/// tickets). rustls's `KernelConnection` in the proxy; a stand-in with fixed secrets in the
/// fuzz target and the differential tests' own checks.
pub trait Kernel {
    fn protocol_version(&self) -> rustls::ProtocolVersion;
    fn negotiated_cipher_suite(&self) -> Option<rustls::SupportedCipherSuite>;
    fn update_tx_secret(&mut self) -> Result<(u64, ConnectionTrafficSecrets), Error>;
    fn update_rx_secret(&mut self) -> Result<(u64, ConnectionTrafficSecrets), Error>;
    fn new_session_ticket(&mut self, payload: &[u8]) -> Result<(), Error>;
}

/// rustls's post-handshake state, for either end.
macro_rules! kernel {
    ($data:ty, $ticket:expr) => {
        impl Kernel for KernelConnection<$data> {
            fn protocol_version(&self) -> rustls::ProtocolVersion {
                KernelConnection::protocol_version(self)
            }
            fn negotiated_cipher_suite(&self) -> Option<rustls::SupportedCipherSuite> {
                Some(KernelConnection::negotiated_cipher_suite(self))
            }
            fn update_tx_secret(&mut self) -> Result<(u64, ConnectionTrafficSecrets), Error> {
                KernelConnection::update_tx_secret(self)
            }
            fn update_rx_secret(&mut self) -> Result<(u64, ConnectionTrafficSecrets), Error> {
                KernelConnection::update_rx_secret(self)
            }
            fn new_session_ticket(&mut self, payload: &[u8]) -> Result<(), Error> {
                let ticket: fn(&mut Self, &[u8]) -> Result<(), Error> = $ticket;
                ticket(self, payload)
            }
        }
    };
}

kernel!(rustls::client::ClientConnectionData, |k, p| k
    .handle_new_session_ticket(p));
kernel!(rustls::server::ServerConnectionData, |_, _| Err(
    Error::General("a client sent a session ticket".into())
));

/// The record format in use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Form {
    Tls13,
    Tls12Gcm,
    Tls12ChaCha,
}

/// TLS 1.2 has no key update: past this many records under one key the connection ends
/// (as rustls does), below AES-GCM's limit.
const TLS12_RECORDS_MAX: u64 = 1 << 24;

/// A kernel with secrets of its own instead of a handshake's: for the receive path's fuzz
/// target (`ringway::fuzzing::tls_records`) and tests. A key update moves a direction's
/// ChaCha20 or AES-256-GCM key and IV to a hash of them, so two stand-ins started on mirrored
/// secrets stay in step. It cannot hold session tickets.
#[doc(hidden)]
pub struct StandIn {
    pub version: rustls::ProtocolVersion,
    pub chacha: bool,
    pub tx: ([u8; 32], [u8; 12]),
    pub rx: ([u8; 32], [u8; 12]),
}

impl StandIn {
    /// The traffic secrets for `key`, `iv`.
    pub fn secrets(&self, (key, iv): ([u8; 32], [u8; 12])) -> (u64, ConnectionTrafficSecrets) {
        let key = rustls::crypto::cipher::AeadKey::from(key);
        let iv = rustls::crypto::cipher::Iv::new(iv);
        (
            0,
            if self.chacha {
                ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv }
            } else {
                ConnectionTrafficSecrets::Aes256Gcm { key, iv }
            },
        )
    }

    fn next((key, iv): ([u8; 32], [u8; 12])) -> ([u8; 32], [u8; 12]) {
        let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA512, &[&key[..], &iv].concat());
        let d = d.as_ref();
        let mut k = [0u8; 32];
        let mut v = [0u8; 12];
        k.copy_from_slice(&d[..32]);
        v.copy_from_slice(&d[32..44]);
        (k, v)
    }
}

impl Kernel for StandIn {
    fn protocol_version(&self) -> rustls::ProtocolVersion {
        self.version
    }
    fn negotiated_cipher_suite(&self) -> Option<rustls::SupportedCipherSuite> {
        None
    }
    fn update_tx_secret(&mut self) -> Result<(u64, ConnectionTrafficSecrets), Error> {
        self.tx = StandIn::next(self.tx);
        Ok(self.secrets(self.tx))
    }
    fn update_rx_secret(&mut self) -> Result<(u64, ConnectionTrafficSecrets), Error> {
        self.rx = StandIn::next(self.rx);
        Ok(self.secrets(self.rx))
    }
    fn new_session_ticket(&mut self, _payload: &[u8]) -> Result<(), Error> {
        Err(Error::General("no tickets here".into()))
    }
}

/// KeyUpdates accepted in a row without application data between them (rustls's and
/// BoringSSL's bound): past it the connection ends with an unexpected_message alert, so a peer
/// cannot make us derive keys without end.
pub const KEY_UPDATES_MAX: u8 = 32;

/// A connection's records once the handshake is done.
pub struct Records<K> {
    kernel: K,
    form: Form,
    tx: Dir,
    rx: Dir,
    /// close_notify received: what follows is ignored (RFC 8446 §6.1).
    pub peer_closed: bool,
    /// The peer asked for a key update: ours goes out before our next application data
    /// (RFC 8446 §4.6.3), once however many requests came, so a peer that asks and never
    /// reads cannot make us queue anything.
    update_owed: bool,
    /// KeyUpdates still accepted before the next application data record.
    key_updates_left: u8,
}

/// The alert that ends a connection whose records failed with `e` (RFC 8446 §6.2), `None`
/// when the peer ended it with an alert of its own.
pub fn alert_for(e: &Error) -> Option<u8> {
    Some(match e {
        Error::AlertReceived(_) => return None,
        Error::DecryptError => 20,      // bad_record_mac
        Error::InvalidMessage(_) => 50, // decode_error
        Error::EncryptError => 80,      // internal_error
        _ => 10,                        // unexpected_message
    })
}

impl<K: Kernel> Records<K> {
    pub fn new(secrets: ExtractedSecrets, kernel: K) -> Result<Records<K>, Error> {
        let form = match (kernel.protocol_version(), &secrets.tx.1) {
            (rustls::ProtocolVersion::TLSv1_3, _) => Form::Tls13,
            (
                rustls::ProtocolVersion::TLSv1_2,
                ConnectionTrafficSecrets::Chacha20Poly1305 { .. },
            ) => Form::Tls12ChaCha,
            (rustls::ProtocolVersion::TLSv1_2, _) => Form::Tls12Gcm,
            _ => return Err(Error::General("unsupported protocol for records".into())),
        };
        Ok(Records {
            kernel,
            form,
            tx: Dir::new(secrets.tx)?,
            rx: Dir::new(secrets.rx)?,
            peer_closed: false,
            update_owed: false,
            key_updates_left: KEY_UPDATES_MAX,
        })
    }

    /// Records on given secrets (a stand-in kernel: the fuzz target, the tests).
    pub fn from_secrets(
        tx: (u64, ConnectionTrafficSecrets),
        rx: (u64, ConnectionTrafficSecrets),
        kernel: K,
    ) -> Result<Records<K>, Error> {
        Records::new(ExtractedSecrets { tx, rx }, kernel)
    }

    /// TLS 1.2's additional data: sequence number, type, version, plaintext length.
    fn aad12(seq: u64, kind: u8, len: usize) -> [u8; 13] {
        let mut a = [0u8; 13];
        a[..8].copy_from_slice(&seq.to_be_bytes());
        a[8] = kind;
        a[9] = 3;
        a[10] = 3;
        a[11..].copy_from_slice(&(len as u16).to_be_bytes());
        a
    }

    /// Open one record in place: (content type, where the content starts in `body`, its
    /// length).
    fn open_record(
        &mut self,
        h: [u8; HEADER],
        body: &mut [u8],
    ) -> Result<(u8, usize, usize), Error> {
        let bad = || Error::InvalidMessage(rustls::InvalidMessage::InvalidContentType);
        match self.form {
            Form::Tls13 => {
                if h[0] != APPLICATION_DATA {
                    return Err(bad());
                }
                let nonce = self.rx.nonce()?;
                let plain = self
                    .rx
                    .key
                    .open_in_place(nonce, Aad::from(h), body)
                    .map_err(|_| Error::DecryptError)?;
                // The content type is the last byte that is not padding.
                let end = plain.iter().rposition(|&b| b != 0).ok_or_else(bad)?;
                Ok((plain[end], 0, end))
            }
            Form::Tls12Gcm | Form::Tls12ChaCha => {
                let explicit = if self.form == Form::Tls12Gcm { 8 } else { 0 };
                if body.len() < explicit + TAG {
                    return Err(bad());
                }
                let n = body.len() - explicit - TAG;
                let seq = self.rx.seq;
                let nonce = if explicit > 0 {
                    self.rx.seq += 1;
                    let mut v = [0u8; 12];
                    v[..4].copy_from_slice(&self.rx.iv[..4]);
                    v[4..].copy_from_slice(&body[..8]);
                    Nonce::assume_unique_for_key(v)
                } else {
                    self.rx.nonce()?
                };
                self.rx
                    .key
                    .open_in_place(
                        nonce,
                        Aad::from(Self::aad12(seq, h[0], n)),
                        &mut body[explicit..],
                    )
                    .map_err(|_| Error::DecryptError)?;
                Ok((h[0], explicit, n))
            }
        }
    }

    pub fn kernel(&self) -> &K {
        &self.kernel
    }

    /// Decrypt the complete records at the start of `buf` in place and move their plaintext
    /// to its front. Returns (plaintext bytes now at the front, bytes of `buf` used); the rest
    /// is a record not complete yet. Nothing is sent in answer here: a key update the peer
    /// asks for goes out before our next data (`seal`).
    pub fn open(&mut self, buf: &mut [u8]) -> Result<(usize, usize), Error> {
        let (mut w, mut o) = (0, 0);
        while buf.len() - o >= HEADER {
            let h: [u8; HEADER] = buf[o..o + HEADER].try_into().expect("5 bytes");
            let len = usize::from(u16::from_be_bytes([h[3], h[4]]));
            if h[1] != 3 || !(TAG + 1..=CIPHER_MAX).contains(&len) {
                return Err(Error::InvalidMessage(
                    rustls::InvalidMessage::InvalidContentType,
                ));
            }
            if buf.len() - o < HEADER + len {
                break;
            }
            let body = &mut buf[o + HEADER..o + HEADER + len];
            let (kind, at, n) = self.open_record(h, body)?;
            let start = o + HEADER + at;
            o += HEADER + len;
            if self.peer_closed {
                continue;
            }
            match kind {
                APPLICATION_DATA => {
                    self.key_updates_left = KEY_UPDATES_MAX;
                    buf.copy_within(start..start + n, w);
                    w += n;
                }
                ALERT => {
                    let alert = &buf[start..start + n];
                    if alert.len() == 2 && alert[1] == 0 {
                        self.peer_closed = true;
                    } else {
                        return Err(Error::AlertReceived(
                            alert.get(1).copied().unwrap_or(0).into(),
                        ));
                    }
                }
                HANDSHAKE if self.form == Form::Tls13 => {
                    let msgs = buf[start..start + n].to_vec();
                    self.post_handshake(&msgs)?;
                }
                // TLS 1.2 renegotiation is refused (as rustls does).
                _ => {
                    return Err(Error::InvalidMessage(
                        rustls::InvalidMessage::InvalidContentType,
                    ));
                }
            }
        }
        Ok((w, o))
    }

    /// Handshake messages after the handshake: key updates, session tickets. A message cut
    /// across records is refused (neither rustls's peers nor browsers send one).
    fn post_handshake(&mut self, mut m: &[u8]) -> Result<(), Error> {
        while !m.is_empty() {
            let &[kind, a, b, c, ref rest @ ..] = m else {
                return Err(Error::General(
                    "handshake message cut across records".into(),
                ));
            };
            let len = u32::from_be_bytes([0, a, b, c]) as usize;
            if rest.len() < len {
                return Err(Error::General(
                    "handshake message cut across records".into(),
                ));
            }
            let (body, next) = rest.split_at(len);
            match kind {
                KEY_UPDATE if body.len() == 1 && body[0] <= 1 => {
                    self.key_updates_left =
                        self.key_updates_left
                            .checked_sub(1)
                            .ok_or(Error::PeerMisbehaved(
                                rustls::PeerMisbehaved::TooManyKeyUpdateRequests,
                            ))?;
                    self.rx = Dir::new(self.kernel.update_rx_secret()?)?;
                    if body[0] == 1 {
                        self.update_owed = true;
                    }
                }
                NEW_SESSION_TICKET => self.kernel.new_session_ticket(body)?,
                _ => {
                    return Err(Error::InvalidMessage(
                        rustls::InvalidMessage::UnexpectedMessage("post-handshake message"),
                    ));
                }
            }
            m = next;
        }
        Ok(())
    }

    /// Tell the peer we move to the next key (not asking it to), and move.
    fn update_tx(&mut self, out: &mut Vec<u8>) -> Result<(), Error> {
        self.seal_record(HANDSHAKE, &[KEY_UPDATE, 0, 0, 1, 0], out)?;
        self.tx = Dir::new(self.kernel.update_tx_secret()?)?;
        Ok(())
    }

    /// Seal `plain` into records appended to `out`.
    pub fn seal(&mut self, plain: &[u8], out: &mut Vec<u8>) -> Result<(), Error> {
        out.reserve(plain.len() + plain.len().div_ceil(PLAIN_MAX).max(1) * (HEADER + 1 + TAG));
        for piece in plain.chunks(PLAIN_MAX) {
            if self.form == Form::Tls13 && (self.update_owed || self.tx.seq >= KEY_UPDATE_AFTER) {
                self.update_owed = false;
                self.update_tx(out)?;
            }
            self.seal_record(APPLICATION_DATA, piece, out)?;
        }
        Ok(())
    }

    /// A close_notify alert, appended to `out`.
    pub fn close_notify(&mut self, out: &mut Vec<u8>) -> Result<(), Error> {
        self.seal_record(ALERT, &[1, 0], out)
    }

    /// A fatal alert `description`, appended to `out` (the last thing sent).
    pub fn alert(&mut self, description: u8, out: &mut Vec<u8>) -> Result<(), Error> {
        self.seal_record(ALERT, &[2, description], out)
    }

    /// Move to the next sending key without telling the peer (the fuzz target's peer, which
    /// has sealed its KeyUpdate itself with `seal_raw`).
    #[doc(hidden)]
    pub fn rotate_tx(&mut self) -> Result<(), Error> {
        self.tx = Dir::new(self.kernel.update_tx_secret()?)?;
        Ok(())
    }

    /// Move to the next sending key now, telling the peer (not asking it to).
    pub fn update_keys(&mut self, out: &mut Vec<u8>) -> Result<(), Error> {
        if self.form != Form::Tls13 {
            return Err(Error::General("no key update before TLS 1.3".into()));
        }
        self.update_tx(out)
    }

    /// Seal `data` as one record of content type `kind` (anything a peer could send: the fuzz
    /// target's peer writes records of every type with it).
    #[doc(hidden)]
    pub fn seal_raw(&mut self, kind: u8, data: &[u8], out: &mut Vec<u8>) -> Result<(), Error> {
        self.seal_record(kind, data, out)
    }

    /// Whether the peer has sent close_notify.
    pub fn peer_closed(&self) -> bool {
        self.peer_closed
    }

    fn seal_record(&mut self, kind: u8, data: &[u8], out: &mut Vec<u8>) -> Result<(), Error> {
        if self.form != Form::Tls13 {
            return self.seal_record12(kind, data, out);
        }
        let len = data.len() + 1 + TAG;
        let h = [APPLICATION_DATA, 3, 3, (len >> 8) as u8, len as u8];
        let start = out.len();
        out.extend_from_slice(&h);
        out.extend_from_slice(data);
        out.push(kind);
        let nonce = self.tx.nonce()?;
        let tag = self
            .tx
            .key
            .seal_in_place_separate_tag(nonce, Aad::from(h), &mut out[start + HEADER..])
            .map_err(|_| Error::EncryptError)?;
        out.extend_from_slice(tag.as_ref());
        Ok(())
    }

    fn seal_record12(&mut self, kind: u8, data: &[u8], out: &mut Vec<u8>) -> Result<(), Error> {
        if self.tx.seq >= TLS12_RECORDS_MAX {
            return Err(Error::EncryptError);
        }
        let explicit = if self.form == Form::Tls12Gcm { 8 } else { 0 };
        let len = explicit + data.len() + TAG;
        let aad = Self::aad12(self.tx.seq, kind, data.len());
        let nonce = self.tx.nonce()?;
        let start = out.len();
        out.extend_from_slice(&[kind, 3, 3, (len >> 8) as u8, len as u8]);
        if explicit > 0 {
            out.extend_from_slice(&nonce.as_ref()[4..]);
        }
        out.extend_from_slice(data);
        let tag = self
            .tx
            .key
            .seal_in_place_separate_tag(
                nonce,
                Aad::from(aad),
                &mut out[start + HEADER + explicit..],
            )
            .map_err(|_| Error::EncryptError)?;
        out.extend_from_slice(tag.as_ref());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::sync::Arc;

    use rustls::server::UnbufferedServerConnection;

    use super::*;
    use crate::tls::Engine;

    /// A rustls client (buffered, as browsers' stacks are to us: someone else's records) and
    /// ringway's server side, handshaken in memory; then the server's records are ringway's.
    fn pair() -> (
        rustls::ClientConnection,
        Records<KernelConnection<rustls::server::ServerConnectionData>>,
    ) {
        pair_with(&rustls::version::TLS13, None)
    }

    /// As `pair`, for one protocol version and (for the client) one cipher suite.
    fn pair_with(
        version: &'static rustls::SupportedProtocolVersion,
        suite: Option<rustls::SupportedCipherSuite>,
    ) -> (
        rustls::ClientConnection,
        Records<KernelConnection<rustls::server::ServerConnectionData>>,
    ) {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let der = pki_types::CertificateDer::from(cert.der().to_vec());
        let kd = pki_types::PrivateKeyDer::try_from(key.serialize_der()).unwrap();
        let p = crate::tls::setup::provider();
        let mut client_provider = (*p).clone();
        if let Some(s) = suite {
            client_provider.cipher_suites = vec![s];
        }
        let mut sc = rustls::ServerConfig::builder_with_provider(p.clone())
            .with_protocol_versions(&[version])
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![der.clone()], kd)
            .unwrap();
        sc.enable_secret_extraction = true;
        let mut roots = rustls::RootCertStore::empty();
        roots.add(der).unwrap();
        let cc = rustls::ClientConfig::builder_with_provider(Arc::new(client_provider))
            .with_protocol_versions(&[version])
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let mut client = rustls::ClientConnection::new(
            Arc::new(cc),
            pki_types::ServerName::try_from("localhost").unwrap(),
        )
        .unwrap();
        let mut server = UnbufferedServerConnection::new(Arc::new(sc)).unwrap();
        let mut pending = Vec::new();
        let mut shown = 0;
        for _ in 0..10 {
            client.write_tls(&mut pending).unwrap();
            let mut out = Vec::new();
            let used = crate::tls::drive(
                &mut server,
                &mut pending,
                &mut shown,
                &mut Vec::new(),
                &mut out,
            )
            .unwrap();
            pending.drain(..used);
            client.read_tls(&mut &out[..]).unwrap();
            client.process_new_packets().unwrap();
            if !server.common().is_handshaking() && !client.is_handshaking() {
                break;
            }
        }
        assert!(pending.is_empty());
        (client, server.into_records().unwrap())
    }

    fn to_server(client: &mut rustls::ClientConnection) -> Vec<u8> {
        let mut v = Vec::new();
        while client.wants_write() {
            client.write_tls(&mut v).unwrap();
        }
        v
    }

    fn to_client(client: &mut rustls::ClientConnection, mut bytes: &[u8]) -> Vec<u8> {
        let mut got = Vec::new();
        while !bytes.is_empty() {
            client.read_tls(&mut bytes).unwrap();
            client.process_new_packets().unwrap();
            let _ = client.reader().read_to_end(&mut got);
        }
        got
    }

    #[test]
    fn records_both_ways_with_key_updates_and_close_notify() {
        let (mut client, mut server) = pair();
        // The client's records (several in one buffer), opened in place: plaintext first.
        client.writer().write_all(b"hello, ").unwrap();
        client.writer().write_all(&vec![7u8; 40_000]).unwrap();
        let mut wire = to_server(&mut client);
        let (n, used) = server.open(&mut wire).unwrap();
        assert_eq!(used, wire.len());
        assert_eq!(n, 7 + 40_000);
        assert_eq!(&wire[..7], b"hello, ");
        assert!(wire[7..n].iter().all(|&b| b == 7));
        // A record cut short is left for later, untouched.
        client.writer().write_all(b"cut").unwrap();
        let mut wire = to_server(&mut client);
        let (n, used) = server.open(&mut wire[..10]).unwrap();
        assert_eq!((n, used), (0, 0));
        let (n, _) = server.open(&mut wire).unwrap();
        assert_eq!(&wire[..n], b"cut");
        // Sealed by ringway, read by rustls.
        let mut sealed = Vec::new();
        server.seal(&vec![9u8; 70_000], &mut sealed).unwrap();
        let got = to_client(&mut client, &sealed);
        assert!(
            got.len() == 70_000 && got.iter().all(|&b| b == 9),
            "{} bytes back",
            got.len()
        );
        // The client moves to new keys and asks us to: we follow both ways.
        client.refresh_traffic_keys().unwrap();
        client.writer().write_all(b"after update").unwrap();
        let mut wire = to_server(&mut client);
        let mut answer = Vec::new();
        let (n, _) = server.open(&mut wire).unwrap();
        assert_eq!(&wire[..n], b"after update");
        assert!(answer.is_empty(), "our update waits for our next data");
        // Asked again before we sent anything: still one update of ours, before the data.
        client.refresh_traffic_keys().unwrap();
        client.writer().write_all(b"again").unwrap();
        let mut wire = to_server(&mut client);
        let (n, _) = server.open(&mut wire).unwrap();
        assert_eq!(&wire[..n], b"again");
        server.seal(b"on new keys", &mut answer).unwrap();
        assert_eq!(to_client(&mut client, &answer), b"on new keys");
        // A flipped bit is refused.
        client.writer().write_all(b"tampered").unwrap();
        let mut wire = to_server(&mut client);
        let last = wire.len() - 1;
        wire[last] ^= 1;
        assert!(server.open(&mut wire).is_err());
    }

    #[test]
    fn tls12_records_with_aes_gcm_and_chacha20() {
        use rustls::crypto::aws_lc_rs::cipher_suite as cs;
        for suite in [
            cs::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
            cs::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
            cs::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
        ] {
            let (mut client, mut server) = pair_with(&rustls::version::TLS12, Some(suite));
            assert_eq!(client.negotiated_cipher_suite(), Some(suite));
            for size in [1usize, 100, 16_384, 40_000] {
                client.writer().write_all(&vec![5u8; size]).unwrap();
                let mut wire = to_server(&mut client);
                let (n, used) = server.open(&mut wire).unwrap();
                assert_eq!((n, used), (size, wire.len()), "{suite:?}");
                assert!(wire[..n].iter().all(|&b| b == 5));
                let mut sealed = Vec::new();
                server.seal(&vec![6u8; size], &mut sealed).unwrap();
                let got = to_client(&mut client, &sealed);
                assert!(
                    got.len() == size && got.iter().all(|&b| b == 6),
                    "{suite:?}"
                );
            }
            let mut out = Vec::new();
            server.close_notify(&mut out).unwrap();
            client.read_tls(&mut &out[..]).unwrap();
            assert!(client.process_new_packets().unwrap().peer_has_closed());
            // No key update in TLS 1.2: past its records per key, sealing refuses.
            server.tx.seq = TLS12_RECORDS_MAX;
            assert!(server.seal(b"one too many", &mut Vec::new()).is_err());
            client.send_close_notify();
            let mut wire = to_server(&mut client);
            server.open(&mut wire).unwrap();
            assert!(server.peer_closed);
        }
    }

    #[test]
    fn close_notify_each_way() {
        let (mut client, mut server) = pair();
        let mut out = Vec::new();
        server.close_notify(&mut out).unwrap();
        client.read_tls(&mut &out[..]).unwrap();
        let state = client.process_new_packets().unwrap();
        // (one record: read whole)
        assert!(state.peer_has_closed());
        client.send_close_notify();
        let mut wire = to_server(&mut client);
        let (n, _) = server.open(&mut wire).unwrap();
        assert_eq!(n, 0);
        assert!(server.peer_closed);
    }

    /// A seeded xorshift generator (a failing seed replays the same case).
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    /// Every record suite ringway enables (TLS 1.3's three, TLS 1.2's three ciphers).
    fn every_suite() -> Vec<(
        &'static rustls::SupportedProtocolVersion,
        rustls::SupportedCipherSuite,
    )> {
        use rustls::crypto::aws_lc_rs::cipher_suite as cs;
        let provider = crate::tls::setup::provider();
        let mut out = Vec::new();
        for s in &provider.cipher_suites {
            let v = match s {
                rustls::SupportedCipherSuite::Tls13(_) => &rustls::version::TLS13,
                rustls::SupportedCipherSuite::Tls12(_) => &rustls::version::TLS12,
            };
            // The test certificate is ECDSA: TLS 1.2's RSA suites use the same three ciphers.
            if [
                cs::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
                cs::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
                cs::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
            ]
            .contains(s)
            {
                continue;
            }
            out.push((v, *s));
        }
        assert_eq!(out.len(), 6, "{out:?}");
        out
    }

    /// ringway's records against rustls's own, both ways, for every suite: random plaintext
    /// sizes, the ciphertext cut at random points before each side reads it (ringway keeps a
    /// cut record as `Tls` does), key updates both ways in TLS 1.3 (asked for by the peer, and
    /// ringway's own), and past 2^16 records each way (the sequence number's third byte).
    #[test]
    fn differential_against_rustls_records() {
        for (i, (version, suite)) in every_suite().into_iter().enumerate() {
            let seed = 0x5eed_0000 + i as u64;
            let mut rng = Rng(seed);
            let (mut client, mut server) = pair_with(version, Some(suite));
            assert_eq!(client.negotiated_cipher_suite(), Some(suite));
            client.set_buffer_limit(None);
            let tls13 = version == &rustls::version::TLS13;
            // ringway reads what rustls sealed.
            let mut wire = Vec::new();
            let mut sent = Vec::new();
            let mut got = Vec::new();
            let mut pending = Vec::new();
            let mut read_some = |wire: &mut Vec<u8>,
                                 pending: &mut Vec<u8>,
                                 got: &mut Vec<u8>,
                                 rng: &mut Rng,
                                 all: bool| {
                while !wire.is_empty() {
                    let n = if all {
                        wire.len()
                    } else {
                        1 + rng.below(wire.len())
                    };
                    pending.extend(wire.drain(..n));
                    let (plain, used) = server
                        .open(pending)
                        .unwrap_or_else(|e| panic!("seed {seed:#x} {suite:?}: {e}"));
                    got.extend_from_slice(&pending[..plain]);
                    pending.drain(..used);
                    if !all {
                        break;
                    }
                }
            };
            // Large and small messages, in random cuts.
            for round in 0..300 {
                let size = match rng.below(4) {
                    0 => rng.below(16),
                    1 => rng.below(2000),
                    2 => 16_384 + rng.below(3) - 1,
                    _ => rng.below(70_000),
                };
                let msg: Vec<u8> = (0..size).map(|_| rng.next() as u8).collect();
                client.writer().write_all(&msg).unwrap();
                sent.extend_from_slice(&msg);
                if tls13 && round % 37 == 5 {
                    client.refresh_traffic_keys().unwrap();
                }
                wire.extend(to_server(&mut client));
                let all = rng.below(3) == 0;
                read_some(&mut wire, &mut pending, &mut got, &mut rng, all);
            }
            read_some(&mut wire, &mut pending, &mut got, &mut rng, true);
            assert!(pending.is_empty());
            assert!(
                got == sent,
                "seed {seed:#x} {suite:?}: client to ringway differs"
            );
            // rustls reads what ringway sealed (its own key updates, and the ones asked for).
            let mut expect = Vec::new();
            let mut read = Vec::new();
            for round in 0..300 {
                let size = rng.below(40_000);
                let msg: Vec<u8> = (0..size).map(|_| rng.next() as u8).collect();
                let mut sealed = Vec::new();
                if tls13 && round % 41 == 7 {
                    server.update_keys(&mut sealed).unwrap();
                }
                server.seal(&msg, &mut sealed).unwrap();
                expect.extend_from_slice(&msg);
                let mut at = 0;
                while at < sealed.len() {
                    let n = 1 + rng.below(sealed.len() - at);
                    read.extend(to_client(&mut client, &sealed[at..at + n]));
                    at += n;
                }
            }
            assert!(
                read == expect,
                "seed {seed:#x} {suite:?}: ringway to client differs"
            );
            // Past 2^16 records each way.
            let mut wire = Vec::new();
            let mut count = 0u32;
            for k in 0..66_000u32 {
                client.writer().write_all(&k.to_be_bytes()).unwrap();
                wire.extend(to_server(&mut client));
                if wire.len() > 1 << 16 {
                    let (n, used) = server.open(&mut wire).unwrap();
                    count += (n / 4) as u32;
                    wire.drain(..used);
                }
            }
            let (n, used) = server.open(&mut wire).unwrap();
            count += (n / 4) as u32;
            assert_eq!(used, wire.len());
            assert_eq!(count, 66_000, "{suite:?}");
            let mut sealed = Vec::new();
            for k in 0..66_000u32 {
                server.seal(&k.to_be_bytes(), &mut sealed).unwrap();
            }
            assert_eq!(
                to_client(&mut client, &sealed).len(),
                66_000 * 4,
                "{suite:?}"
            );
            assert!(server.rx.seq > 1 << 16 && server.tx.seq > 1 << 16);
            // Still in step after all that.
            client.writer().write_all(b"last").unwrap();
            let mut wire = to_server(&mut client);
            let (n, _) = server.open(&mut wire).unwrap();
            assert_eq!(&wire[..n], b"last");
        }
    }

    /// The bound on KeyUpdates: 32 in a row are followed, the 33rd without data between is
    /// refused (and data starts the count over).
    #[test]
    fn key_updates_in_a_row_are_bounded() {
        let (mut client, mut server) = pair();
        for _ in 0..2 {
            for _ in 0..KEY_UPDATES_MAX {
                client.refresh_traffic_keys().unwrap();
                let mut wire = to_server(&mut client);
                assert_eq!(server.open(&mut wire).unwrap().0, 0);
            }
            client.writer().write_all(b"data").unwrap();
            let mut wire = to_server(&mut client);
            let (n, _) = server.open(&mut wire).unwrap();
            assert_eq!(&wire[..n], b"data");
        }
        for _ in 0..KEY_UPDATES_MAX {
            client.refresh_traffic_keys().unwrap();
        }
        client.refresh_traffic_keys().unwrap();
        let mut wire = to_server(&mut client);
        let e = server.open(&mut wire).unwrap_err();
        assert_eq!(
            e,
            Error::PeerMisbehaved(rustls::PeerMisbehaved::TooManyKeyUpdateRequests)
        );
        assert_eq!(alert_for(&e), Some(10));
        // The alert is sealed for the peer, which reads it as such.
        let mut out = Vec::new();
        server.alert(10, &mut out).unwrap();
        client.read_tls(&mut &out[..]).unwrap();
        assert_eq!(
            client.process_new_packets().unwrap_err(),
            Error::AlertReceived(rustls::AlertDescription::UnexpectedMessage)
        );
    }

    #[test]
    fn garbage_records_are_refused_without_panic() {
        use rustls::crypto::aws_lc_rs::cipher_suite as cs;
        garbage(pair().1);
        garbage(
            pair_with(
                &rustls::version::TLS12,
                Some(cs::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256),
            )
            .1,
        );
        garbage(
            pair_with(
                &rustls::version::TLS12,
                Some(cs::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256),
            )
            .1,
        );
    }

    fn garbage(mut server: Records<KernelConnection<rustls::server::ServerConnectionData>>) {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..2000 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let len = (seed % 300) as usize;
            let mut buf: Vec<u8> = (0..len).map(|i| (seed >> (i % 56)) as u8).collect();
            if len >= 5 {
                buf[0] = [23, 21, 22][(seed % 3) as usize];
                buf[1] = 3;
                buf[2] = 3;
            }
            let _ = server.open(&mut buf);
        }
    }
}
