//! Header blocks: a request's decoded (HPACK, `hpack.rs`) and checked as RFC 9113
//! §8 asks; a response's encoded without the dynamic table, so the encoder holds no state and
//! whatever table size the peer allows is respected.

use super::hpack::{Decoder, STATIC};

/// Regular fields, in order, names lowercase.
pub type FieldList = Vec<(Vec<u8>, Vec<u8>)>;

/// What a request's header block said.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Request {
    pub method: Vec<u8>,
    pub scheme: Option<Vec<u8>>,
    pub authority: Option<Vec<u8>>,
    pub path: Option<Vec<u8>>,
    /// RFC 8441's `:protocol` of an extended CONNECT.
    pub protocol: Option<Vec<u8>>,
    /// The regular fields.
    pub fields: FieldList,
    /// `content-length`, when the request gave one.
    pub content_length: Option<u64>,
}

impl Request {
    /// A regular field's value (the first of that name).
    pub fn field(&self, name: &[u8]) -> Option<&[u8]> {
        self.fields
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| &v[..])
    }

    /// Whether this is an extended CONNECT (RFC 8441).
    pub fn is_extended_connect(&self) -> bool {
        self.protocol.is_some()
    }
}

/// Why a header block was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// HPACK could not decode it: a connection error (COMPRESSION_ERROR), since the decoder's
    /// table can no longer be trusted.
    Compression,
    /// The decoded list passed `SETTINGS_MAX_HEADER_LIST_SIZE`: answered 431.
    TooLarge,
    /// A malformed request (RFC 9113 §8.1.1): a stream error, PROTOCOL_ERROR.
    Malformed(&'static str),
}

/// The HPACK decoder of one connection, with its bounds.
pub struct Fields {
    decoder: Decoder,
    /// `SETTINGS_MAX_HEADER_LIST_SIZE` as announced (name + value + 32 per field).
    max_list: usize,
}

/// The dynamic table size this side allows (the default, announced as is).
pub const TABLE_SIZE: usize = 4_096;

/// Connection-specific fields HTTP/2 forbids (RFC 9113 §8.2.2).
const CONNECTION_SPECIFIC: [&[u8]; 5] = [
    b"connection",
    b"proxy-connection",
    b"keep-alive",
    b"transfer-encoding",
    b"upgrade",
];

impl Fields {
    pub fn new(max_list: usize) -> Fields {
        Fields {
            decoder: Decoder::new(TABLE_SIZE),
            max_list,
        }
    }

    /// What the decoder's table holds (RFC 7541's size: each entry's name, value and 32).
    pub fn table_bytes(&self) -> usize {
        self.decoder.size()
    }

    /// The decoder's table, for a binary upgrade (`Decoder::export`).
    pub fn export(&self, w: &mut crate::wire::W) {
        self.decoder.export(w);
    }

    /// Fields with a carried decoder table (`Decoder::import`).
    pub fn import(max_list: usize, r: &mut crate::wire::R<'_>) -> Result<Fields, String> {
        Ok(Fields {
            decoder: Decoder::import(TABLE_SIZE, r)?,
            max_list,
        })
    }

    /// Decodes a request's header block. `connect_protocol`: whether this side announced
    /// `SETTINGS_ENABLE_CONNECT_PROTOCOL`. On `Refusal::TooLarge` or `Malformed` the decoder's
    /// state is still in step with the peer's (the whole block was decoded).
    pub fn request(&mut self, block: &[u8], connect_protocol: bool) -> Result<Request, Refusal> {
        let mut req = Request::default();
        let mut st = Walk {
            size: 0,
            regular: false,
            error: None,
            method: false,
        };
        let max = self.max_list;
        let decoded = self.decoder.decode(block, |n, v| {
            if st.error.is_some() {
                return;
            }
            st.size += n.len() + v.len() + 32;
            if st.size > max {
                st.error = Some(Refusal::TooLarge);
                return;
            }
            if let Err(e) = st.request_field(&mut req, n, v) {
                st.error = Some(Refusal::Malformed(e));
            }
        });
        if decoded.is_err() {
            return Err(Refusal::Compression);
        }
        if let Some(e) = st.error {
            return Err(e);
        }
        check_request(&req, st.method, connect_protocol).map_err(Refusal::Malformed)?;
        Ok(req)
    }

    /// Decodes a trailer block: regular fields only.
    pub fn trailers(&mut self, block: &[u8]) -> Result<FieldList, Refusal> {
        let mut out = Vec::new();
        let mut size = 0usize;
        let mut error = None;
        let max = self.max_list;
        let decoded = self.decoder.decode(block, |n, v| {
            if error.is_some() {
                return;
            }
            size += n.len() + v.len() + 32;
            if size > max {
                error = Some(Refusal::TooLarge);
            } else if n.first() == Some(&b':') {
                error = Some(Refusal::Malformed("a pseudo-header in trailers"));
            } else if let Err(e) = check_field(n, v) {
                error = Some(Refusal::Malformed(e));
            } else {
                out.push((n.to_vec(), v.to_vec()));
            }
        });
        if decoded.is_err() {
            return Err(Refusal::Compression);
        }
        match error {
            Some(e) => Err(e),
            None => Ok(out),
        }
    }
}

/// The state of one request block's walk.
struct Walk {
    size: usize,
    /// A regular field was seen (pseudo-headers must come before).
    regular: bool,
    error: Option<Refusal>,
    method: bool,
}

impl Walk {
    fn request_field(&mut self, req: &mut Request, n: &[u8], v: &[u8]) -> Result<(), &'static str> {
        if let Some(pseudo) = n.strip_prefix(b":") {
            if self.regular {
                return Err("a pseudo-header after a regular field");
            }
            if v.iter().any(|&b| b == 0 || b == b'\r' || b == b'\n') {
                return Err("a pseudo-header value with NUL, CR or LF");
            }
            let slot = match pseudo {
                b"method" => {
                    if self.method {
                        return Err("a repeated pseudo-header");
                    }
                    self.method = true;
                    req.method = v.to_vec();
                    return Ok(());
                }
                b"scheme" => &mut req.scheme,
                b"authority" => &mut req.authority,
                b"path" => &mut req.path,
                b"protocol" => &mut req.protocol,
                _ => return Err("an unknown or response pseudo-header"),
            };
            if slot.is_some() {
                return Err("a repeated pseudo-header");
            }
            *slot = Some(v.to_vec());
            return Ok(());
        }
        self.regular = true;
        check_field(n, v)?;
        if CONNECTION_SPECIFIC.contains(&n) {
            return Err("a connection-specific field");
        }
        if n == b"te" && v != b"trailers" {
            return Err("te other than trailers");
        }
        if n == b"content-length" {
            let len = parse_length(v).ok_or("a content-length that is not a number")?;
            if req.content_length.is_some_and(|l| l != len) {
                return Err("content-length given twice, differently");
            }
            req.content_length = Some(len);
        }
        req.fields.push((n.to_vec(), v.to_vec()));
        Ok(())
    }
}

/// RFC 9113 §8.2.1 on a regular field: a lowercase token for a name; a value without NUL, CR
/// or LF and without whitespace at either end.
fn check_field(n: &[u8], v: &[u8]) -> Result<(), &'static str> {
    if n.is_empty() || !n.iter().all(|&b| is_name_byte(b)) {
        return Err("a field name that is not a lowercase token");
    }
    if v.iter().any(|&b| b == 0 || b == b'\r' || b == b'\n') {
        return Err("a field value with NUL, CR or LF");
    }
    let ws = |b: Option<&u8>| matches!(b, Some(b' ' | b'\t'));
    if ws(v.first()) || ws(v.last()) {
        return Err("a field value with whitespace at an end");
    }
    Ok(())
}

/// A token byte of any case (a method).
fn is_token_byte(b: u8) -> bool {
    b.is_ascii_uppercase() || is_name_byte(b)
}

fn is_name_byte(b: u8) -> bool {
    matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'!' | b'#' | b'$' | b'%' | b'&' | b'\'' | b'*'
        | b'+' | b'-' | b'.' | b'^' | b'_' | b'`' | b'|' | b'~')
}

fn parse_length(v: &[u8]) -> Option<u64> {
    if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(v).ok()?.parse().ok()
}

/// The pseudo-headers a request must have (RFC 9113 §8.3.1, §8.5; RFC 8441 §4).
fn check_request(req: &Request, method: bool, connect_protocol: bool) -> Result<(), &'static str> {
    if !method {
        return Err(":method missing");
    }
    let connect = req.method == b"CONNECT";
    if let Some(p) = &req.protocol {
        if !connect_protocol {
            return Err(":protocol without SETTINGS_ENABLE_CONNECT_PROTOCOL");
        }
        if !connect {
            return Err(":protocol on a method other than CONNECT");
        }
        if p.is_empty() {
            return Err(":protocol empty");
        }
    } else if connect {
        // A plain CONNECT: only :method and :authority.
        if req.scheme.is_some() || req.path.is_some() {
            return Err("CONNECT with :scheme or :path");
        }
        return match &req.authority {
            Some(a) if !a.is_empty() => Ok(()),
            _ => Err("CONNECT without :authority"),
        };
    }
    if req.scheme.as_ref().is_none_or(|s| s.is_empty()) {
        return Err(":scheme missing");
    }
    if !req.method.iter().all(|&b| is_token_byte(b)) || req.method.is_empty() {
        return Err(":method not a token");
    }
    if req.scheme.as_ref().is_some_and(|s| {
        !s.iter()
            .all(|&b| b.is_ascii_alphanumeric() || b"+-.".contains(&b))
    }) {
        return Err(":scheme not a scheme");
    }
    // What becomes an HTTP/1.1 request line and Host must not carry a space or a control byte
    // (a request line split in two past the proxy: h2-to-h1 desync).
    let visible = |v: &[u8]| v.iter().all(|&b| (0x21..0x7f).contains(&b));
    if req
        .path
        .as_ref()
        .is_some_and(|p| !visible(p) || !(p.starts_with(b"/") || p == b"*"))
    {
        return Err(":path not an origin-form target");
    }
    if req.authority.as_ref().is_some_and(|a| !visible(a)) {
        return Err(":authority with a space or a control byte");
    }
    match &req.path {
        None => Err(":path missing"),
        Some(p) if p.is_empty() => Err(":path empty"),
        Some(_) if req.protocol.is_some() && req.authority.is_none() => {
            Err("extended CONNECT without :authority")
        }
        Some(_) => Ok(()),
    }
}

/// The `:status` values the static table holds whole (index, status).
const STATIC_STATUS: [(u8, u16); 7] = [
    (8, 200),
    (9, 204),
    (10, 206),
    (11, 304),
    (12, 400),
    (13, 404),
    (14, 500),
];

/// Appends an HPACK integer with an `n`-bit prefix whose high bits are `high`.
fn integer(out: &mut Vec<u8>, high: u8, n: u8, mut v: usize) {
    let max = (1usize << n) - 1;
    if v < max {
        out.push(high | v as u8);
        return;
    }
    out.push(high | max as u8);
    v -= max;
    while v >= 128 {
        out.push((v % 128) as u8 | 0x80);
        v /= 128;
    }
    out.push(v as u8);
}

fn string(out: &mut Vec<u8>, s: &[u8]) {
    integer(out, 0, 7, s.len());
    out.extend_from_slice(s);
}

/// Appends one field as a literal without indexing (RFC 7541 §6.2.2), its name indexed when
/// the static table has it.
pub fn encode_field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    match STATIC.iter().position(|(n, _)| *n == name) {
        Some(i) => integer(out, 0, 4, i + 1),
        None => {
            out.push(0);
            string(out, name);
        }
    }
    string(out, value);
}

/// Appends `:status` (indexed whole when the static table has it).
pub fn encode_status(out: &mut Vec<u8>, status: u16) {
    if let Some(&(i, _)) = STATIC_STATUS.iter().find(|&&(_, s)| s == status) {
        integer(out, 0x80, 7, usize::from(i));
        return;
    }
    let mut digits = [0u8; 3];
    let s = status.clamp(100, 999);
    digits[0] = b'0' + (s / 100) as u8;
    digits[1] = b'0' + (s / 10 % 10) as u8;
    digits[2] = b'0' + (s % 10) as u8;
    integer(out, 0, 4, 8);
    string(out, &digits);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block(fields: &[(&str, &str)]) -> Vec<u8> {
        let mut out = Vec::new();
        for (n, v) in fields {
            encode_field(&mut out, n.as_bytes(), v.as_bytes());
        }
        out
    }

    fn get(extra: &[(&str, &str)]) -> Vec<(&'static str, &'static str)> {
        let mut f = vec![
            (":method", "GET"),
            (":scheme", "https"),
            (":path", "/a"),
            (":authority", "x"),
        ];
        for &(n, v) in extra {
            // Leaked for the test's 'static slices: a handful of bytes per test.
            f.push((
                Box::leak(n.to_string().into_boxed_str()),
                Box::leak(v.to_string().into_boxed_str()),
            ));
        }
        f
    }

    #[test]
    fn a_request_decodes_with_its_pseudo_headers_and_fields() {
        let mut f = Fields::new(16_384);
        let r = f
            .request(
                &block(&get(&[("accept", "*/*"), ("content-length", "5")])),
                false,
            )
            .unwrap();
        assert_eq!(r.method, b"GET");
        assert_eq!(r.path.as_deref(), Some(&b"/a"[..]));
        assert_eq!(r.authority.as_deref(), Some(&b"x"[..]));
        assert_eq!(r.field(b"accept"), Some(&b"*/*"[..]));
        assert_eq!(r.content_length, Some(5));
    }

    #[test]
    fn malformed_requests_are_refused_with_a_reason() {
        let cases: Vec<(Vec<(&str, &str)>, &str)> = vec![
            (
                vec![(":scheme", "https"), (":path", "/")],
                ":method missing",
            ),
            (vec![(":method", "GET"), (":path", "/")], ":scheme missing"),
            (
                vec![(":method", "GET"), (":scheme", "https")],
                ":path missing",
            ),
            (
                get(&[("Upper", "x")]),
                "a field name that is not a lowercase token",
            ),
            (
                get(&[("connection", "close")]),
                "a connection-specific field",
            ),
            (
                get(&[("transfer-encoding", "chunked")]),
                "a connection-specific field",
            ),
            (get(&[("te", "gzip")]), "te other than trailers"),
            (
                get(&[("x", " padded")]),
                "a field value with whitespace at an end",
            ),
            (
                get(&[("content-length", "1x")]),
                "a content-length that is not a number",
            ),
            (
                vec![(":method", "GET"), ("a", "b"), (":path", "/")],
                "a pseudo-header after a regular field",
            ),
            (
                vec![(":method", "GET"), (":method", "GET")],
                "a repeated pseudo-header",
            ),
            (
                vec![(":status", "200")],
                "an unknown or response pseudo-header",
            ),
            (
                vec![
                    (":method", "CONNECT"),
                    (":authority", "h:1"),
                    (":path", "/"),
                ],
                "CONNECT with :scheme or :path",
            ),
            (
                get(&[])
                    .into_iter()
                    .chain([(":protocol", "websocket")])
                    .collect(),
                ":protocol without SETTINGS_ENABLE_CONNECT_PROTOCOL",
            ),
            (
                vec![
                    (":method", "GET"),
                    (":scheme", "https"),
                    (":path", "/a b HTTP/1.1"),
                ],
                ":path not an origin-form target",
            ),
            (
                vec![(":method", "GET"), (":scheme", "https"), (":path", "a")],
                ":path not an origin-form target",
            ),
            (
                vec![(":method", "G T"), (":scheme", "https"), (":path", "/")],
                ":method not a token",
            ),
            (
                vec![(":method", "GET"), (":scheme", "ht tp"), (":path", "/")],
                ":scheme not a scheme",
            ),
            (
                vec![
                    (":method", "GET"),
                    (":scheme", "https"),
                    (":path", "/"),
                    (":authority", "a b"),
                ],
                ":authority with a space or a control byte",
            ),
        ];
        for (fields, why) in cases {
            let mut f = Fields::new(16_384);
            assert_eq!(
                f.request(&block(&fields), false),
                Err(Refusal::Malformed(why)),
                "{fields:?}"
            );
        }
    }

    #[test]
    fn extended_connect_needs_the_setting_and_its_pseudo_headers() {
        let ws = [
            (":method", "CONNECT"),
            (":protocol", "websocket"),
            (":scheme", "https"),
            (":path", "/chat"),
            (":authority", "x"),
        ];
        let r = Fields::new(16_384).request(&block(&ws), true).unwrap();
        assert!(r.is_extended_connect());
        let no_auth = &ws[..4];
        assert_eq!(
            Fields::new(16_384).request(&block(no_auth), true),
            Err(Refusal::Malformed("extended CONNECT without :authority"))
        );
        let get_ws = [
            (":method", "GET"),
            (":protocol", "websocket"),
            (":scheme", "https"),
            (":path", "/"),
            (":authority", "x"),
        ];
        assert_eq!(
            Fields::new(16_384).request(&block(&get_ws), true),
            Err(Refusal::Malformed(
                ":protocol on a method other than CONNECT"
            ))
        );
    }

    #[test]
    fn a_list_past_the_limit_is_too_large_and_the_decoder_stays_in_step() {
        let mut f = Fields::new(200);
        let big = "v".repeat(300);
        // Indexed into the dynamic table by the peer: the next block refers to it.
        let mut b = block(&get(&[]));
        b.push(0x40);
        string(&mut b, b"x-big");
        string(&mut b, big.as_bytes());
        assert_eq!(f.request(&b, false), Err(Refusal::TooLarge));
        // Index 62 is the entry just added: still decodable, still too large.
        let mut again = block(&get(&[]));
        again.push(0x80 | 62);
        assert_eq!(f.request(&again, false), Err(Refusal::TooLarge));
        assert_eq!(f.request(&block(&get(&[])), false).unwrap().method, b"GET");
    }

    #[test]
    fn garbage_is_a_compression_error_and_never_a_panic() {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut f = Fields::new(16_384);
        for round in 0..20_000 {
            let mut b = Vec::new();
            for _ in 0..(round % 40) {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                b.push(seed as u8);
            }
            let _ = f.request(&b, round % 2 == 0);
            let _ = f.trailers(&b);
        }
        assert_eq!(
            f.request(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f], false),
            Err(Refusal::Compression)
        );
    }

    #[test]
    fn encoded_responses_decode_as_written() {
        let mut out = Vec::new();
        encode_status(&mut out, 200);
        encode_status(&mut out, 101);
        encode_field(&mut out, b"content-type", b"text/plain");
        encode_field(&mut out, b"x-long", "y".repeat(300).as_bytes());
        // Decoded by the reference (loona-hpack) and by this side's decoder.
        let got = loona_hpack::Decoder::new().decode(&out).unwrap();
        let mut ours = Vec::new();
        Decoder::new(TABLE_SIZE)
            .decode(&out, |n, v| ours.push((n.to_vec(), v.to_vec())))
            .unwrap();
        assert_eq!(ours, got);
        assert_eq!(got[0], (b":status".to_vec(), b"200".to_vec()));
        assert_eq!(got[1], (b":status".to_vec(), b"101".to_vec()));
        assert_eq!(got[2], (b"content-type".to_vec(), b"text/plain".to_vec()));
        assert_eq!(got[3].1.len(), 300);
        for (i, (n, _)) in STATIC.iter().enumerate() {
            let mut one = Vec::new();
            encode_field(&mut one, n, b"v");
            assert_eq!(
                loona_hpack::Decoder::new().decode(&one).unwrap()[0].0,
                n.to_vec(),
                "static index {}",
                i + 1
            );
        }
    }
}
