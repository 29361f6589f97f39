//! HPACK decoding (RFC 7541): integers, string literals (Huffman through `httlib-huffman`'s
//! table-driven decoder), the static table and one connection's dynamic table, bounded by the
//! size this side allows. A block is decoded whole, each field handed to a callback as it is
//! read; any error leaves the table unusable, which is a connection error for the caller.

use std::collections::VecDeque;

/// Why a block could not be decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Error(pub &'static str);

/// The static table (RFC 7541 Appendix A), index 1 first.
pub(super) const STATIC: [(&[u8], &[u8]); 61] = [
    (b":authority", b""),
    (b":method", b"GET"),
    (b":method", b"POST"),
    (b":path", b"/"),
    (b":path", b"/index.html"),
    (b":scheme", b"http"),
    (b":scheme", b"https"),
    (b":status", b"200"),
    (b":status", b"204"),
    (b":status", b"206"),
    (b":status", b"304"),
    (b":status", b"400"),
    (b":status", b"404"),
    (b":status", b"500"),
    (b"accept-charset", b""),
    (b"accept-encoding", b"gzip, deflate"),
    (b"accept-language", b""),
    (b"accept-ranges", b""),
    (b"accept", b""),
    (b"access-control-allow-origin", b""),
    (b"age", b""),
    (b"allow", b""),
    (b"authorization", b""),
    (b"cache-control", b""),
    (b"content-disposition", b""),
    (b"content-encoding", b""),
    (b"content-language", b""),
    (b"content-length", b""),
    (b"content-location", b""),
    (b"content-range", b""),
    (b"content-type", b""),
    (b"cookie", b""),
    (b"date", b""),
    (b"etag", b""),
    (b"expect", b""),
    (b"expires", b""),
    (b"from", b""),
    (b"host", b""),
    (b"if-match", b""),
    (b"if-modified-since", b""),
    (b"if-none-match", b""),
    (b"if-range", b""),
    (b"if-unmodified-since", b""),
    (b"last-modified", b""),
    (b"link", b""),
    (b"location", b""),
    (b"max-forwards", b""),
    (b"proxy-authenticate", b""),
    (b"proxy-authorization", b""),
    (b"range", b""),
    (b"referer", b""),
    (b"refresh", b""),
    (b"retry-after", b""),
    (b"server", b""),
    (b"set-cookie", b""),
    (b"strict-transport-security", b""),
    (b"transfer-encoding", b""),
    (b"user-agent", b""),
    (b"vary", b""),
    (b"via", b""),
    (b"www-authenticate", b""),
];

/// A dynamic table entry: name and value.
type Entry = (Box<[u8]>, Box<[u8]>);

/// One connection's decoder.
pub struct Decoder {
    /// Newest first.
    table: VecDeque<Entry>,
    /// Bytes the table holds (each entry: name + value + 32).
    size: usize,
    /// What the peer last set with a size update (at most `limit`).
    max: usize,
    /// What this side allows (`SETTINGS_HEADER_TABLE_SIZE`).
    limit: usize,
    name: Vec<u8>,
    value: Vec<u8>,
}

impl Decoder {
    pub fn new(limit: usize) -> Decoder {
        Decoder {
            table: VecDeque::new(),
            size: 0,
            max: limit,
            limit,
            name: Vec::new(),
            value: Vec::new(),
        }
    }

    /// Decodes a whole header block, showing each field to `field` as it is read.
    pub fn decode(
        &mut self,
        mut b: &[u8],
        mut field: impl FnMut(&[u8], &[u8]),
    ) -> Result<(), Error> {
        let mut first = true;
        while let Some(&o) = b.first() {
            if o & 0x80 != 0 {
                let i = integer(&mut b, 7)?;
                let (n, v) = self.entry(i)?;
                field(n, v);
            } else if o & 0xe0 == 0x20 {
                // A size update: only at a block's start (RFC 7541 §4.2).
                if !first {
                    return Err(Error("a table size update after a field"));
                }
                let size = integer(&mut b, 5)?;
                if size > self.limit {
                    return Err(Error("a table size past what was allowed"));
                }
                self.max = size;
                self.evict(0);
                continue;
            } else {
                let (prefix, index) = if o & 0xc0 == 0x40 {
                    (6, true)
                } else {
                    (4, false)
                };
                let i = integer(&mut b, prefix)?;
                let mut name = std::mem::take(&mut self.name);
                let mut value = std::mem::take(&mut self.value);
                name.clear();
                value.clear();
                let r = (|| {
                    if i == 0 {
                        string(&mut b, &mut name)?;
                    } else {
                        name.extend_from_slice(self.entry(i)?.0);
                    }
                    string(&mut b, &mut value)
                })();
                if r.is_ok() {
                    field(&name, &value);
                    if index {
                        self.insert(&name, &value);
                    }
                }
                self.name = name;
                self.value = value;
                r?;
            }
            first = false;
        }
        Ok(())
    }

    /// What the dynamic table holds (each entry's name, value and 32).
    pub fn size(&self) -> usize {
        self.size
    }

    /// The dynamic table, for the process that takes the connection over (a binary upgrade):
    /// the size the peer set, then each entry, oldest first.
    pub fn export(&self, w: &mut crate::wire::W) {
        w.u32(self.max as u32);
        w.u32(self.table.len() as u32);
        for (n, v) in self.table.iter().rev() {
            w.bytes(n);
            w.bytes(v);
        }
    }

    /// A decoder with what [`Decoder::export`] wrote, under this side's `limit`; an entry
    /// list that would not fit the table as the peer set it is refused.
    pub fn import(limit: usize, r: &mut crate::wire::R<'_>) -> Result<Decoder, String> {
        let max = r.u32()? as usize;
        if max > limit {
            return Err("an HPACK table larger than allowed".into());
        }
        let mut d = Decoder::new(limit);
        d.max = max;
        let n = r.u32()? as usize;
        for _ in 0..n {
            let (name, value) = (r.bytes(max)?, r.bytes(max)?);
            if d.size + name.len() + value.len() + 32 > max {
                return Err("HPACK entries past the table's size".into());
            }
            d.insert(name, value);
        }
        Ok(d)
    }

    fn entry(&self, i: usize) -> Result<(&[u8], &[u8]), Error> {
        match i {
            0 => Err(Error("index 0")),
            1..=61 => Ok(STATIC[i - 1]),
            _ => self
                .table
                .get(i - 62)
                .map(|(n, v)| (&n[..], &v[..]))
                .ok_or(Error("an index past the tables")),
        }
    }

    fn insert(&mut self, name: &[u8], value: &[u8]) {
        let size = name.len() + value.len() + 32;
        if size > self.max {
            // Larger than the table: it empties it, and is not kept (RFC 7541 §4.4).
            self.table.clear();
            self.size = 0;
            return;
        }
        self.evict(size);
        self.table.push_front((name.into(), value.into()));
        self.size += size;
    }

    /// Evicts the oldest entries until `room` more bytes fit.
    fn evict(&mut self, room: usize) {
        while self.size + room > self.max {
            match self.table.pop_back() {
                Some((n, v)) => self.size -= n.len() + v.len() + 32,
                None => break,
            }
        }
    }
}

/// An integer with an `n`-bit prefix (RFC 7541 §5.1), at most 2^28.
fn integer(b: &mut &[u8], n: u8) -> Result<usize, Error> {
    let (&first, mut rest) = b.split_first().ok_or(Error("a truncated integer"))?;
    let max = (1usize << n) - 1;
    let mut v = usize::from(first) & max;
    if v == max {
        let mut shift = 0;
        loop {
            let (&o, r) = rest.split_first().ok_or(Error("a truncated integer"))?;
            rest = r;
            v += usize::from(o & 0x7f) << shift;
            shift += 7;
            if o & 0x80 == 0 {
                break;
            }
            if shift > 21 {
                return Err(Error("an integer too large"));
            }
        }
    }
    *b = rest;
    Ok(v)
}

/// A string literal (RFC 7541 §5.2), appended to `out`.
fn string(b: &mut &[u8], out: &mut Vec<u8>) -> Result<(), Error> {
    let huffman = b.first().is_some_and(|&o| o & 0x80 != 0);
    let len = integer(b, 7)?;
    if len > b.len() {
        return Err(Error("a string past the block"));
    }
    let (s, rest) = b.split_at(len);
    *b = rest;
    if huffman {
        httlib_huffman::decode(s, out, httlib_huffman::DecoderSpeed::FourBits)
            .map_err(|_| Error("a bad Huffman string"))
    } else {
        out.extend_from_slice(s);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(d: &mut Decoder, b: &[u8]) -> Result<crate::h2::fields::FieldList, Error> {
        let mut v = Vec::new();
        d.decode(b, |n, val| v.push((n.to_vec(), val.to_vec())))?;
        Ok(v)
    }

    #[test]
    fn rfc_7541_c_4_requests_with_huffman_share_one_table() {
        // RFC 7541 Appendix C.4: three requests, Huffman-coded, on one connection.
        let hex = |s: &str| -> Vec<u8> {
            let s: String = s.split_whitespace().collect();
            (0..s.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
                .collect()
        };
        let mut d = Decoder::new(4096);
        let one = all(&mut d, &hex("8286 8441 8cf1 e3c2 e5f2 3a6b a0ab 90f4 ff")).unwrap();
        assert_eq!(
            one[3],
            (b":authority".to_vec(), b"www.example.com".to_vec())
        );
        let two = all(&mut d, &hex("8286 84be 5886 a8eb 1064 9cbf")).unwrap();
        assert_eq!(
            two[3],
            (b":authority".to_vec(), b"www.example.com".to_vec())
        );
        assert_eq!(two[4], (b"cache-control".to_vec(), b"no-cache".to_vec()));
        let three = all(
            &mut d,
            &hex("8287 85bf 4088 25a8 49e9 5ba9 7d7f 8925 a849 e95b b8e8 b4bf"),
        )
        .unwrap();
        assert_eq!(three[1], (b":scheme".to_vec(), b"https".to_vec()));
        assert_eq!(three[2], (b":path".to_vec(), b"/index.html".to_vec()));
        assert_eq!(three[4], (b"custom-key".to_vec(), b"custom-value".to_vec()));
        assert_eq!(d.size, 164);
    }

    #[test]
    fn what_loona_hpack_encodes_decodes_the_same() {
        // A reference encoder (with its dynamic table) against this decoder, block after
        // block on one connection.
        let mut enc = loona_hpack::Encoder::new();
        let mut d = Decoder::new(4096);
        let mut seed = 7u64;
        for round in 0..2_000 {
            let mut fields: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
            for k in 0..(round % 12) {
                seed = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let name = format!("x-f{}", (seed >> 40) % 50);
                let value = "v".repeat(((seed >> 20) % 300) as usize) + &k.to_string();
                fields.push((name.into_bytes(), value.into_bytes()));
            }
            fields.push((b":path".to_vec(), b"/index.html".to_vec()));
            let block = enc.encode(fields.iter().map(|(n, v)| (&n[..], &v[..])));
            assert_eq!(all(&mut d, &block).unwrap(), fields, "round {round}");
        }
    }

    #[test]
    fn bad_blocks_are_errors_and_never_panics() {
        let mut d = Decoder::new(4096);
        assert_eq!(all(&mut d, &[0x80]), Err(Error("index 0")));
        assert_eq!(all(&mut d, &[0xbe]), Err(Error("an index past the tables")));
        assert_eq!(
            all(&mut d, &[0x82, 0x20]),
            Err(Error("a table size update after a field"))
        );
        assert_eq!(
            all(&mut d, &[0x3f, 0xe2, 0x1f]),
            Err(Error("a table size past what was allowed"))
        );
        assert_eq!(
            all(&mut d, &[0xff, 0xff, 0xff, 0xff, 0xff, 0x7f]),
            Err(Error("an integer too large"))
        );
        assert_eq!(
            all(&mut d, &[0x00, 0x05, b'a']),
            Err(Error("a string past the block"))
        );
        // Huffman: the EOS inside a string; padding longer than 7 bits. (Padding of zeros
        // within 7 bits, which RFC 7541 §5.2 also calls an error, is taken by httlib-huffman:
        // it changes nothing that is decoded.)
        for bad in [
            &[0x00, 0x84, 0xff, 0xff, 0xff, 0xff, 0x00][..],
            &[0x00, 0x81, 0xff, 0x00],
        ] {
            assert_eq!(
                all(&mut d, bad),
                Err(Error("a bad Huffman string")),
                "{bad:?}"
            );
        }
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        for round in 0..50_000 {
            let mut b = Vec::new();
            for _ in 0..(round % 48) {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                b.push(seed as u8);
            }
            let mut d = Decoder::new(4096);
            let _ = all(&mut d, &b);
            assert!(d.size <= 4096);
        }
    }

    #[test]
    fn the_table_stays_within_its_size_and_an_entry_too_large_empties_it() {
        let mut d = Decoder::new(100);
        // Literal with indexing, new name: 40 + 20 + 32 = 92 bytes.
        let mut b = vec![0x40, 40];
        b.extend_from_slice(&[b'n'; 40]);
        b.push(20);
        b.extend_from_slice(&[b'v'; 20]);
        all(&mut d, &b).unwrap();
        assert_eq!((d.table.len(), d.size), (1, 92));
        all(&mut d, &b).unwrap();
        assert_eq!((d.table.len(), d.size), (1, 92));
        let mut big = vec![0x40, 50];
        big.extend_from_slice(&[b'n'; 50]);
        big.push(50);
        big.extend_from_slice(&[b'v'; 50]);
        all(&mut d, &big).unwrap();
        assert_eq!((d.table.len(), d.size), (0, 0));
        // A size update to 0 at a block's start empties it too.
        all(&mut d, &b).unwrap();
        all(&mut d, &[0x20]).unwrap();
        assert_eq!(d.size, 0);
    }
}
