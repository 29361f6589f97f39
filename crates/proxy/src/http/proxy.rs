//! The PROXY protocol (HAProxy's, versions 1 and 2): the header an L4 balancer puts before a
//! connection's bytes to say whom the connection is really from, and the v2 header ringway
//! sends to upstreams that want one.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The v2 signature.
pub const V2_SIG: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
/// Longest v1 header (the specification's bound, CRLF included).
pub const V1_MAX: usize = 107;
/// Longest v2 header accepted (16 bytes and the addresses with their TLVs).
pub const V2_MAX: usize = 16 + 2048;

/// A header read from the front of a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// Bytes it took.
    pub len: usize,
    /// The connection's real source and destination; `None` for `LOCAL` (the balancer's own
    /// health check) and `UNKNOWN` / non-TCP families: the connection's own address stands.
    pub source: Option<SocketAddr>,
    pub dest: Option<SocketAddr>,
}

/// Read a header at the front of `buf`: `Ok(None)` when more bytes are needed.
pub fn parse(buf: &[u8]) -> Result<Option<Header>, &'static str> {
    let n = buf.len().min(V2_SIG.len());
    if buf[..n] == V2_SIG[..n] {
        return if n < V2_SIG.len() { Ok(None) } else { v2(buf) };
    }
    let n = buf.len().min(6);
    if buf[..n] != b"PROXY "[..n] {
        return Err("not a PROXY protocol header");
    }
    v1(buf)
}

fn v1(buf: &[u8]) -> Result<Option<Header>, &'static str> {
    let Some(end) = buf.windows(2).position(|w| w == b"\r\n") else {
        return if buf.len() >= V1_MAX {
            Err("PROXY v1 header too long")
        } else {
            Ok(None)
        };
    };
    let len = end + 2;
    if len > V1_MAX {
        return Err("PROXY v1 header too long");
    }
    let line = std::str::from_utf8(&buf[..end]).map_err(|_| "PROXY v1 header not ASCII")?;
    let mut f = line.split(' ');
    let _proxy = f.next();
    let bad = "malformed PROXY v1 header";
    let (source, dest) = match f.next() {
        Some("UNKNOWN") => (None, None),
        Some(fam @ ("TCP4" | "TCP6")) => {
            let ip = |s: Option<&str>| -> Result<IpAddr, &'static str> {
                let ip: IpAddr = s.ok_or(bad)?.parse().map_err(|_| bad)?;
                match (fam, ip) {
                    ("TCP4", IpAddr::V4(_)) | ("TCP6", IpAddr::V6(_)) => Ok(ip),
                    _ => Err(bad),
                }
            };
            let port = |s: Option<&str>| -> Result<u16, &'static str> {
                let s = s.ok_or(bad)?;
                if s.is_empty() || s.len() > 5 || (s.len() > 1 && s.starts_with('0')) {
                    return Err(bad);
                }
                s.parse().map_err(|_| bad)
            };
            let (src, dst) = (ip(f.next())?, ip(f.next())?);
            let (sp, dp) = (port(f.next())?, port(f.next())?);
            if f.next().is_some() {
                return Err(bad);
            }
            (
                Some(SocketAddr::new(src, sp)),
                Some(SocketAddr::new(dst, dp)),
            )
        }
        _ => return Err(bad),
    };
    Ok(Some(Header { len, source, dest }))
}

fn v2(buf: &[u8]) -> Result<Option<Header>, &'static str> {
    if buf.len() < 16 {
        return Ok(None);
    }
    let ver_cmd = buf[12];
    if ver_cmd >> 4 != 2 {
        return Err("PROXY v2 header of an unknown version");
    }
    let local = match ver_cmd & 0xf {
        0 => true,
        1 => false,
        _ => return Err("PROXY v2 header with an unknown command"),
    };
    let body = usize::from(u16::from_be_bytes([buf[14], buf[15]]));
    let len = 16 + body;
    if len > V2_MAX {
        return Err("PROXY v2 header too long");
    }
    if buf.len() < len {
        return Ok(None);
    }
    let a = &buf[16..len];
    let short = "PROXY v2 addresses cut short";
    let (source, dest) = match (local, buf[13]) {
        (true, _) => (None, None),
        // TCP over IPv4, TCP over IPv6.
        (false, 0x11) => {
            if a.len() < 12 {
                return Err(short);
            }
            let ip = |i: usize| IpAddr::V4(Ipv4Addr::new(a[i], a[i + 1], a[i + 2], a[i + 3]));
            let port = |i: usize| u16::from_be_bytes([a[i], a[i + 1]]);
            (
                Some(SocketAddr::new(ip(0), port(8))),
                Some(SocketAddr::new(ip(4), port(10))),
            )
        }
        (false, 0x21) => {
            if a.len() < 36 {
                return Err(short);
            }
            let ip = |i: usize| {
                let b: [u8; 16] = a[i..i + 16].try_into().expect("16 bytes");
                IpAddr::V6(Ipv6Addr::from(b))
            };
            let port = |i: usize| u16::from_be_bytes([a[i], a[i + 1]]);
            (
                Some(SocketAddr::new(ip(0), port(32))),
                Some(SocketAddr::new(ip(16), port(34))),
            )
        }
        // UNSPEC, UDP, UNIX: the connection's own address stands.
        _ => (None, None),
    };
    Ok(Some(Header { len, source, dest }))
}

/// A v2 `LOCAL` header: a connection of the proxy's own (a health check), no client.
pub fn v2_local() -> Vec<u8> {
    let mut out = V2_SIG.to_vec();
    out.extend_from_slice(&[0x20, 0x00, 0, 0]);
    out
}

/// A v2 `PROXY` header for a connection from `src` to `dst` (both of one family; mixed, or
/// unknown, gives a `LOCAL` header).
pub fn v2_header(src: SocketAddr, dst: SocketAddr) -> Vec<u8> {
    let mut out = V2_SIG.to_vec();
    let (src, dst) = match (src, dst) {
        (SocketAddr::V6(s), SocketAddr::V4(d)) if s.ip().to_ipv4_mapped().is_some() => (
            SocketAddr::new(
                IpAddr::V4(s.ip().to_ipv4_mapped().expect("checked")),
                s.port(),
            ),
            SocketAddr::V4(d),
        ),
        other => other,
    };
    match (src, dst) {
        (SocketAddr::V4(s), SocketAddr::V4(d)) => {
            out.extend_from_slice(&[0x21, 0x11, 0, 12]);
            out.extend_from_slice(&s.ip().octets());
            out.extend_from_slice(&d.ip().octets());
            out.extend_from_slice(&s.port().to_be_bytes());
            out.extend_from_slice(&d.port().to_be_bytes());
        }
        (SocketAddr::V6(s), SocketAddr::V6(d)) => {
            out.extend_from_slice(&[0x21, 0x21, 0, 36]);
            out.extend_from_slice(&s.ip().octets());
            out.extend_from_slice(&d.ip().octets());
            out.extend_from_slice(&s.port().to_be_bytes());
            out.extend_from_slice(&d.port().to_be_bytes());
        }
        _ => return v2_local(),
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v1_addresses_unknown_and_bad_ones() {
        let h = parse(b"PROXY TCP4 192.0.2.7 10.0.0.1 56324 443\r\nGET /")
            .unwrap()
            .unwrap();
        assert_eq!(h.len, 41);
        assert_eq!(h.source, Some("192.0.2.7:56324".parse().unwrap()));
        assert_eq!(h.dest, Some("10.0.0.1:443".parse().unwrap()));
        let h = parse(b"PROXY TCP6 2001:db8::1 ::1 1 2\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(h.source, Some("[2001:db8::1]:1".parse().unwrap()));
        let h = parse(b"PROXY UNKNOWN whatever\r\n").unwrap().unwrap();
        assert_eq!(h.source, None);
        for cut in 0..20 {
            assert_eq!(
                parse(&b"PROXY TCP4 192.0.2.7 10.0.0.1 56324 443\r\n"[..cut]),
                Ok(None)
            );
        }
        for bad in [
            &b"GET / HTTP/1.1\r\n"[..],
            b"PROXY TCP4 192.0.2.7 10.0.0.1 56324\r\n",
            b"PROXY TCP4 2001:db8::1 10.0.0.1 1 2\r\n",
            b"PROXY TCP4 1.2.3.4 1.2.3.4 01 2\r\n",
            b"PROXY TCP4 1.2.3.4 1.2.3.4 1 99999\r\n",
            b"PROXY UDP4 1.2.3.4 1.2.3.4 1 2\r\n",
        ] {
            assert!(parse(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
        assert!(parse(format!("PROXY TCP4 {}", "1".repeat(200)).as_bytes()).is_err());
    }

    #[test]
    fn v2_round_trips_and_local() {
        for (s, d) in [
            ("192.0.2.7:56324", "10.0.0.1:443"),
            ("[2001:db8::1]:5", "[::1]:443"),
        ] {
            let (s, d): (SocketAddr, SocketAddr) = (s.parse().unwrap(), d.parse().unwrap());
            let mut b = v2_header(s, d);
            let n = b.len();
            b.extend_from_slice(b"\x16\x03\x01");
            let h = parse(&b).unwrap().unwrap();
            assert_eq!((h.len, h.source, h.dest), (n, Some(s), Some(d)));
            for cut in 0..n {
                assert_eq!(parse(&b[..cut]), Ok(None), "cut {cut}");
            }
        }
        assert_eq!(parse(&v2_local()).unwrap().unwrap().source, None);
        let mut big = V2_SIG.to_vec();
        big.extend_from_slice(&[0x21, 0x11, 0xff, 0xff]);
        assert!(parse(&big).is_err());
        let mut v3 = V2_SIG.to_vec();
        v3.extend_from_slice(&[0x31, 0x11, 0, 12]);
        assert!(parse(&v3).is_err());
    }
}
