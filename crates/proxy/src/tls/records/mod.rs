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

mod carried;

pub use carried::{Capture, Captured, Keys, STATE_BYTES, capturing};

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

/// One direction's traffic keys as the record layer takes them: its AEAD, key and IV.
pub struct Traffic {
    alg: &'static aead::Algorithm,
    key: [u8; 32],
    key_len: u8,
    iv: [u8; 12],
}

impl Traffic {
    /// `key` (16 or 32 bytes, as `alg` wants) and a 12-byte `iv`.
    pub fn new(alg: &'static aead::Algorithm, key: &[u8], iv: &[u8]) -> Result<Traffic, Error> {
        if key.len() != alg.key_len() || key.len() > 32 {
            return Err(Error::General("bad traffic key".into()));
        }
        let iv = iv
            .try_into()
            .map_err(|_| Error::General("bad traffic IV".into()))?;
        let mut k = [0u8; 32];
        k[..key.len()].copy_from_slice(key);
        Ok(Traffic {
            alg,
            key: k,
            key_len: key.len() as u8,
            iv,
        })
    }

    /// The keys rustls hands over.
    pub fn of(s: &ConnectionTrafficSecrets) -> Result<Traffic, Error> {
        let (alg, key, iv) = match s {
            ConnectionTrafficSecrets::Aes128Gcm { key, iv } => (&aead::AES_128_GCM, key, iv),
            ConnectionTrafficSecrets::Aes256Gcm { key, iv } => (&aead::AES_256_GCM, key, iv),
            ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv } => {
                (&aead::CHACHA20_POLY1305, key, iv)
            }
            _ => return Err(Error::General("unsupported record cipher".into())),
        };
        Traffic::new(alg, key.as_ref(), iv.as_ref())
    }

    /// Whether `self` and `other` are the same keys (tests).
    #[cfg(test)]
    pub fn same(&self, other: &Traffic) -> bool {
        self.alg == other.alg
            && self.key[..usize::from(self.key_len)] == other.key[..usize::from(other.key_len)]
            && self.iv == other.iv
    }
}

impl Dir {
    fn new((seq, t): (u64, Traffic)) -> Result<Dir, Error> {
        let key = UnboundKey::new(t.alg, &t.key[..usize::from(t.key_len)])
            .map_err(|_| Error::General("bad traffic key".into()))?;
        Ok(Dir {
            key: LessSafeKey::new(key),
            iv: t.iv,
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
    fn update_tx_secret(&mut self) -> Result<(u64, Traffic), Error>;
    fn update_rx_secret(&mut self) -> Result<(u64, Traffic), Error>;
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
            fn update_tx_secret(&mut self) -> Result<(u64, Traffic), Error> {
                let (seq, s) = KernelConnection::update_tx_secret(self)?;
                Ok((seq, Traffic::of(&s)?))
            }
            fn update_rx_secret(&mut self) -> Result<(u64, Traffic), Error> {
                let (seq, s) = KernelConnection::update_rx_secret(self)?;
                Ok((seq, Traffic::of(&s)?))
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
    fn update_tx_secret(&mut self) -> Result<(u64, Traffic), Error> {
        self.tx = StandIn::next(self.tx);
        Ok((0, Traffic::of(&self.secrets(self.tx).1)?))
    }
    fn update_rx_secret(&mut self) -> Result<(u64, Traffic), Error> {
        self.rx = StandIn::next(self.rx);
        Ok((0, Traffic::of(&self.secrets(self.rx).1)?))
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
            tx: Dir::new((secrets.tx.0, Traffic::of(&secrets.tx.1)?))?,
            rx: Dir::new((secrets.rx.0, Traffic::of(&secrets.rx.1)?))?,
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
mod tests;
