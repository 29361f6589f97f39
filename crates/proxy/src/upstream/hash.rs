//! `ip_hash` and `hash KEY [consistent]`, computed as nginx computes them, so that clients keep
//! their backend across a migration from nginx and several instances agree on the server for
//! a key without talking to each other.

use std::net::IpAddr;

use super::{HASH_TRIES, Tried};
use crate::config::upstream::crc32;
use crate::config::{Balance, HashKey, KeyPart, Upstream};

/// A request's hash state, kept across its retries so a retry goes on along the same chain
/// (nginx keeps it in the request's peer data).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Affinity {
    /// `hash`: the key's CRC-32 and length (for nginx's rehash, `crc32(N KEY)`).
    key_crc: u32,
    key_len: u32,
    /// ip_hash: the running hash; hash: the running sum; consistent: the point index.
    hash: u32,
    /// Steps that found no usable server (20 at most, then round robin).
    tries: u8,
    /// `hash`: steps taken, found or not (nginx's `rehash`).
    rehash: u16,
    /// The key was empty: round robin (as nginx).
    empty: bool,
}

/// What a hash key can be made of in a request.
pub struct KeyInput<'a> {
    pub client: IpAddr,
    /// The request target as the client sent it (`$request_uri`).
    pub uri: &'a str,
    /// The request head, for `$http_`, `$cookie_`.
    pub head: &'a [u8],
}

impl Affinity {
    /// The state a request starts with for `balance` (the key evaluated once, here).
    pub fn new(balance: &Balance, input: &KeyInput<'_>, scratch: &mut Vec<u8>) -> Affinity {
        match balance {
            Balance::IpHash => Affinity {
                hash: 89,
                ..Affinity::default()
            },
            Balance::Hash(h) => {
                scratch.clear();
                eval_key(&h.parts, input, scratch);
                let crc = crc32(scratch);
                Affinity {
                    key_crc: crc,
                    key_len: scratch.len() as u32,
                    hash: if h.consistent {
                        h.points.partition_point(|&(p, _)| p < crc) as u32
                    } else {
                        0
                    },
                    empty: scratch.is_empty(),
                    ..Affinity::default()
                }
            }
            _ => Affinity::default(),
        }
    }
}

/// The key's bytes for this request.
pub fn eval_key(parts: &[KeyPart], input: &KeyInput<'_>, out: &mut Vec<u8>) {
    use std::io::Write;
    let client = input.client.to_canonical();
    for part in parts {
        match part {
            KeyPart::Text(t) => out.extend_from_slice(t.as_bytes()),
            KeyPart::RemoteAddr => {
                let _ = write!(out, "{client}");
            }
            KeyPart::BinaryRemoteAddr => match client {
                IpAddr::V4(a) => out.extend_from_slice(&a.octets()),
                IpAddr::V6(a) => out.extend_from_slice(&a.octets()),
            },
            KeyPart::RequestUri => out.extend_from_slice(input.uri.as_bytes()),
            KeyPart::Header(name) => {
                // nginx (1.23+) joins repeated headers with ", " (cookies with "; ").
                let sep: &[u8] = if name == "cookie" { b"; " } else { b", " };
                for (i, v) in crate::http::header_values(input.head, name).enumerate() {
                    if i > 0 {
                        out.extend_from_slice(sep);
                    }
                    out.extend_from_slice(v);
                }
            }
            KeyPart::Cookie(name) => {
                let found = crate::http::header_values(input.head, "cookie")
                    .flat_map(|v| v.split(|&b| b == b';'))
                    .find_map(|c| pair(c.trim_ascii(), name));
                out.extend_from_slice(found.unwrap_or_default());
            }
            KeyPart::Arg(name) => {
                let query = input.uri.split_once('?').map_or("", |(_, q)| q);
                let found = query
                    .as_bytes()
                    .split(|&b| b == b'&')
                    .find_map(|a| pair(a, name));
                out.extend_from_slice(found.unwrap_or_default());
            }
        }
    }
}

/// The value of `name=value` when the name is `name` (any case).
fn pair<'a>(item: &'a [u8], name: &str) -> Option<&'a [u8]> {
    let eq = item.iter().position(|&b| b == b'=')?;
    item[..eq]
        .eq_ignore_ascii_case(name.as_bytes())
        .then(|| &item[eq + 1..])
}

/// Walk the primaries by weight to the one `w` (below their total weight) lands on (nginx's
/// loop over `peer->weight`); backups are not on the walk.
fn by_weight(u: &Upstream, mut w: u64) -> usize {
    let mut last = 0;
    for (i, p) in u.peers.iter().enumerate().filter(|(_, p)| !p.backup) {
        if w < u64::from(p.weight) {
            return i;
        }
        w -= u64::from(p.weight);
        last = i;
    }
    last
}

fn total_weight(u: &Upstream) -> u64 {
    u.peers
        .iter()
        .filter(|p| !p.backup)
        .map(|p| u64::from(p.weight))
        .sum()
}

fn take(u: &Upstream, i: usize, tried: &Tried, now: u64) -> bool {
    !tried.has(i) && u.peers[i].usable(now)
}

/// nginx's ip_hash: `hash = (hash * 113 + octet) % 6271` over the first three octets of an
/// IPv4 address (all 16 of an IPv6 one), from 89; the server where `hash % total_weight`
/// lands; again from there while that one cannot be used, 20 times, then round robin (`None`).
pub fn ip_hash(
    u: &Upstream,
    tried: &Tried,
    now: u64,
    client: IpAddr,
    a: &mut Affinity,
) -> Option<usize> {
    let (v4, v6);
    let bytes: &[u8] = match client.to_canonical() {
        IpAddr::V4(x) => {
            v4 = x.octets();
            &v4[..3]
        }
        IpAddr::V6(x) => {
            v6 = x.octets();
            &v6
        }
    };
    let total = total_weight(u);
    while a.tries <= HASH_TRIES {
        for &b in bytes {
            a.hash = (a.hash * 113 + u32::from(b)) % 6271;
        }
        let i = by_weight(u, u64::from(a.hash) % total);
        if take(u, i, tried, now) {
            return Some(i);
        }
        a.tries += 1;
    }
    None
}

/// nginx's `hash KEY` and `hash KEY consistent`.
pub fn key_hash(
    u: &Upstream,
    h: &HashKey,
    tried: &Tried,
    now: u64,
    a: &mut Affinity,
) -> Option<usize> {
    if a.empty {
        return None;
    }
    if h.consistent {
        // The first point at or after the key's CRC-32, then the next points.
        let n = h.points.len() as u32;
        while a.tries <= HASH_TRIES {
            let i = usize::from(h.points[(a.hash % n) as usize].1);
            if take(u, i, tried, now) {
                return Some(i);
            }
            a.hash += 1;
            a.tries += 1;
        }
        return None;
    }
    // Compatible with Cache::Memcached: `((crc32([REHASH] KEY) >> 16) & 0x7fff) + PREV`, with
    // REHASH (the step number in decimal) left out of the first step.
    let total = total_weight(u);
    let key = crc32fast::Hasher::new_with_initial_len(a.key_crc, u64::from(a.key_len));
    while a.tries <= HASH_TRIES {
        let mut c = crc32fast::Hasher::new();
        if a.rehash > 0 {
            c.update(a.rehash.to_string().as_bytes());
        }
        c.combine(&key);
        // At most 21 steps per server of at most 0x7fff each: no overflow.
        a.hash = a.hash.wrapping_add((c.finalize() >> 16) & 0x7fff);
        a.rehash = a.rehash.wrapping_add(1);
        let i = by_weight(u, u64::from(a.hash) % total);
        if take(u, i, tried, now) {
            return Some(i);
        }
        a.tries += 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn combined_crc_is_the_crc_of_the_concatenation() {
        let key = b"user-42";
        let k = crc32fast::Hasher::new_with_initial_len(crc32(key), key.len() as u64);
        let mut c = crc32fast::Hasher::new();
        c.update(b"7");
        c.combine(&k);
        assert_eq!(c.finalize(), crc32(b"7user-42"));
    }

    #[test]
    fn cookies_args_and_headers_make_the_key() {
        let head = b"GET /ws?room=7&User=ann HTTP/1.1\r\nHost: x\r\nCookie: a=1; SID=abc\r\nX-Tag: one\r\nx-tag: two\r\n\r\n";
        let input = KeyInput {
            client: "127.0.0.9".parse().unwrap(),
            uri: "/ws?room=7&User=ann",
            head,
        };
        let key = |k: &str| {
            let mut out = Vec::new();
            eval_key(
                &crate::config::upstream::parse_key(k).unwrap(),
                &input,
                &mut out,
            );
            String::from_utf8(out).unwrap()
        };
        assert_eq!(key("$cookie_sid|$arg_user|$arg_room"), "abc|ann|7");
        assert_eq!(key("$http_x_tag"), "one, two");
        assert_eq!(
            key("$remote_addr $request_uri"),
            "127.0.0.9 /ws?room=7&User=ann"
        );
        assert_eq!(key("[$arg_missing]"), "[]");
    }
}
