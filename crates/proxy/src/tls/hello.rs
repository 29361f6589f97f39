//! What ringway reads itself from a ClientHello before rustls sees it: the server name (for
//! the access log), whether only TLS 1.0/1.1 is offered (refused with the alert that
//! version understands), and whether the client puts ChaCha20-Poly1305 first (it then gets
//! it, where ringway would choose AES-128-GCM: `config/tls.rs`).

/// What ringway reads itself from a ClientHello.
#[derive(Debug, PartialEq, Eq)]
pub struct Hello<'a> {
    /// The server name asked for (for the access log: rustls reads it again for itself).
    pub sni: Option<&'a str>,
    /// Only TLS 1.0 or 1.1 offered (legacy version below 1.2, no supported_versions).
    pub old_only: bool,
}

/// A ClientHello at the start of `data` (its first record), if it is there whole; anything
/// unexpected is `None` and left to rustls.
pub fn peek_hello(data: &[u8]) -> Option<Hello<'_>> {
    let mut r = Reader(data);
    // Record: type 22, version, length.
    if r.u8()? != 22 {
        return None;
    }
    r.take(2)?;
    let n = r.u16()? as usize;
    let mut rec = Reader(r.take(n)?);
    // Handshake: type 1 (ClientHello), 24-bit length.
    if rec.u8()? != 1 {
        return None;
    }
    let len = (rec.u8()? as usize) << 16 | rec.u16()? as usize;
    let mut h = Reader(rec.take(len)?);
    let legacy = h.u16()?;
    h.take(32)?; // random
    let n = h.u8()? as usize;
    h.take(n)?; // session id
    let n = h.u16()? as usize;
    h.take(n)?; // cipher suites
    let n = h.u8()? as usize;
    h.take(n)?; // compression
    let mut hello = Hello {
        sni: None,
        old_only: legacy < 0x0303,
    };
    // Extensions are optional in a TLS 1.0 hello.
    let n = match h.u16() {
        Some(n) => n as usize,
        None => return Some(hello),
    };
    let mut ext = Reader(h.take(n)?);
    while !ext.0.is_empty() {
        let kind = ext.u16()?;
        let n = ext.u16()? as usize;
        let body = ext.take(n)?;
        match kind {
            0 => hello.sni = server_name(body),
            43 => hello.old_only = false,
            _ => {}
        }
    }
    Some(hello)
}

/// Whether the first cipher suite a ClientHello lists (GREASE values skipped) is a
/// ChaCha20-Poly1305 one: a client that says so has no AES hardware, and gets its choice.
/// Read from the start of `data` alone, so a hello whose record is cut (a post-quantum key
/// share makes it longer than a segment) is read as well: the suites come in its first ~80
/// bytes. Anything unexpected is `false`.
pub fn prefers_chacha(data: &[u8]) -> bool {
    let first = || -> Option<u16> {
        let mut r = Reader(data);
        // Record (type 22, version, length), handshake (type 1, 24-bit length).
        if r.u8()? != 22 {
            return None;
        }
        r.take(4)?;
        if r.u8()? != 1 {
            return None;
        }
        r.take(3)?;
        r.take(2 + 32)?; // legacy version, random
        let n = r.u8()? as usize;
        r.take(n)?; // session id
        let n = r.u16()? as usize;
        let mut suites = Reader(&r.0[..n.min(r.0.len())]);
        loop {
            let s = suites.u16()?;
            // GREASE (RFC 8701): 0x?A?A with both bytes equal.
            if s & 0x0f0f != 0x0a0a || s >> 8 != s & 0xff {
                return Some(s);
            }
        }
    };
    // TLS_CHACHA20_POLY1305_SHA256, and TLS 1.2's ECDHE_RSA and ECDHE_ECDSA ones.
    matches!(first(), Some(0x1303 | 0xcca8 | 0xcca9))
}

/// The host name in a server_name extension.
fn server_name(body: &[u8]) -> Option<&str> {
    let mut b = Reader(body);
    let n = b.u16()? as usize;
    let mut list = Reader(b.take(n)?);
    while !list.0.is_empty() {
        let t = list.u8()?;
        let n = list.u16()? as usize;
        let name = list.take(n)?;
        if t == 0 {
            return std::str::from_utf8(name)
                .ok()
                .filter(|s| s.bytes().all(|c| c.is_ascii_graphic()));
        }
    }
    None
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Some(a)
    }
    fn u8(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }
    fn u16(&mut self) -> Option<u16> {
        let b = self.take(2)?;
        Some(u16::from_be_bytes([b[0], b[1]]))
    }
}
