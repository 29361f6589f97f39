//! `[[limit_conn_zone]]`, `[[limit_req_zone]]` and the locations' `limit_conn` / `limit_req`.

use std::sync::Arc;

use super::*;
use crate::limits::{ConnZone, ReqZone};

/// A zone: its name and size as configured, and the shared table.
#[derive(Debug)]
pub struct Zone<T> {
    pub name: String,
    pub bytes: usize,
    pub table: Arc<T>,
}

impl<T> Clone for Zone<T> {
    fn clone(&self) -> Zone<T> {
        Zone {
            name: self.name.clone(),
            bytes: self.bytes,
            table: self.table.clone(),
        }
    }
}

impl<T> PartialEq for Zone<T> {
    fn eq(&self, o: &Zone<T>) -> bool {
        self.name == o.name && self.bytes == o.bytes
    }
}

/// `limit_conn` of a location.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimitConn {
    /// Index into `Config::conn_zones`.
    pub zone: usize,
    pub max: u32,
    pub status: u16,
}

/// `limit_req` of a location.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimitReq {
    /// Index into `Config::req_zones`.
    pub zone: usize,
    /// Requests per 1000 s.
    pub rate_milli: u64,
    pub burst: u32,
    pub nodelay: bool,
    pub status: u16,
}

/// `message_rate` of a location: nginx's leaky bucket over the WebSocket messages a client
/// sends through a tunnel, per tunnel, or per client address in a zone across its tunnels.
#[derive(Debug, Clone, PartialEq)]
pub struct MessageRate {
    /// A `[[limit_req_zone]]` shared by the client address's tunnels; None: per tunnel.
    pub zone: Option<Zone<ReqZone>>,
    /// Messages per 1000 s.
    pub rate_milli: u64,
    pub burst: u32,
    pub nodelay: bool,
}

/// nginx's rate: `10r/s` or `30r/m`, in requests per 1000 s.
pub fn parse_rate(s: &str) -> Result<u64, String> {
    let bad = || {
        format!(
            "invalid rate {s:?}: expected requests per second or minute such as \"10r/s\" or \"30r/m\""
        )
    };
    let (n, per) = s.trim().split_once("r/").ok_or_else(bad)?;
    let n: u64 = n.parse().map_err(|_| bad())?;
    let milli = match per {
        "s" => n.checked_mul(1000),
        "m" => n.checked_mul(1000).map(|x| x / 60),
        _ => None,
    }
    .ok_or_else(bad)?;
    if milli == 0 || n > 1_000_000 {
        return Err(format!("rate {s:?} must be from 1r/m to 1000000r/s"));
    }
    Ok(milli)
}

const DEFAULT_ZONE: u64 = 10 << 20;

fn zone_common(cx: &Ctx<'_>, f: &str, z: &raw::Zone) -> Result<(String, usize), ConfigError> {
    let name = z.name.get_ref().clone();
    if name.is_empty() {
        return Err(cx.err(z.name.span(), format!("{f}.name"), "must not be empty"));
    }
    if let Some(k) = &z.key
        && !["$binary_remote_addr", "$remote_addr"].contains(&k.get_ref().as_str())
    {
        return Err(cx.err(
            k.span(),
            format!("{f}.key"),
            format!(
                "key {:?} is not supported: zones count per client address (\"$binary_remote_addr\")",
                k.get_ref()
            ),
        ));
    }
    let bytes = cx.size(&z.size, &format!("{f}.size"), DEFAULT_ZONE)?;
    if !(64 << 10..=1 << 30).contains(&bytes) {
        let span = z.size.as_ref().map_or(0..0, |s| s.span());
        return Err(cx.err(span, format!("{f}.size"), "must be between 64k and 1g"));
    }
    Ok((name, bytes as usize))
}

/// The `limit_conn` zones, and the `limit_req` zones with their default rate.
pub(super) type Zones = (Vec<Zone<ConnZone>>, Vec<(Zone<ReqZone>, Option<u64>)>);

/// The zones, checked (unique names, supported keys, sizes), their tables allocated.
pub(super) fn zones(cx: &Ctx<'_>, raw: &raw::File) -> Result<Zones, ConfigError> {
    let mut conn: Vec<Zone<ConnZone>> = Vec::new();
    for (i, z) in raw.limit_conn_zone.iter().enumerate() {
        let f = format!("limit_conn_zone[{i}]");
        let z = z.get_ref();
        let (name, bytes) = zone_common(cx, &f, z)?;
        if let Some(r) = &z.rate {
            return Err(cx.err(
                r.span(),
                format!("{f}.rate"),
                "a limit_conn zone has no rate (limit_req_zone has)",
            ));
        }
        if conn.iter().any(|c| c.name == name) {
            return Err(cx.err(
                z.name.span(),
                format!("{f}.name"),
                format!("duplicate zone {name:?}"),
            ));
        }
        conn.push(Zone {
            name,
            bytes,
            table: Arc::new(ConnZone::new(bytes)),
        });
    }
    let mut req: Vec<(Zone<ReqZone>, Option<u64>)> = Vec::new();
    for (i, z) in raw.limit_req_zone.iter().enumerate() {
        let f = format!("limit_req_zone[{i}]");
        let z = z.get_ref();
        let (name, bytes) = zone_common(cx, &f, z)?;
        let rate = match &z.rate {
            None => None,
            Some(r) => Some(
                parse_rate(r.get_ref()).map_err(|m| cx.err(r.span(), format!("{f}.rate"), m))?,
            ),
        };
        if req.iter().any(|(c, _)| c.name == name) {
            return Err(cx.err(
                z.name.span(),
                format!("{f}.name"),
                format!("duplicate zone {name:?}"),
            ));
        }
        req.push((
            Zone {
                name,
                bytes,
                table: Arc::new(ReqZone::new(bytes)),
            },
            rate,
        ));
    }
    Ok((conn, req))
}

fn status(cx: &Ctx<'_>, f: &str, v: &Option<Spanned<i64>>) -> Result<u16, ConfigError> {
    match v {
        None => Ok(503),
        Some(s) if (400..=599).contains(s.get_ref()) => Ok(*s.get_ref() as u16),
        Some(s) => Err(cx.err(
            s.span(),
            format!("{f}.status"),
            "must be from 400 to 599 (nginx: 503, or 429)",
        )),
    }
}

fn find<'a>(
    cx: &Ctx<'_>,
    f: &str,
    kind: &str,
    names: impl Iterator<Item = &'a str> + Clone,
    zone: &Spanned<String>,
) -> Result<usize, ConfigError> {
    names
        .clone()
        .position(|n| n == zone.get_ref())
        .ok_or_else(|| {
            let known: Vec<&str> = names.collect();
            cx.err(
                zone.span(),
                format!("{f}.zone"),
                format!(
                    "zone {:?} is not defined by any [[{kind}]] (defined: {})",
                    zone.get_ref(),
                    if known.is_empty() {
                        "none".into()
                    } else {
                        known.join(", ")
                    }
                ),
            )
        })
}

pub(super) fn limit_conn(
    cx: &Ctx<'_>,
    lf: &str,
    l: &Spanned<raw::LimitConn>,
    zones: &[Zone<ConnZone>],
) -> Result<LimitConn, ConfigError> {
    let f = format!("{lf}.limit_conn");
    let l = l.get_ref();
    let zone = find(
        cx,
        &f,
        "limit_conn_zone",
        zones.iter().map(|z| z.name.as_str()),
        &l.zone,
    )?;
    let max = match *l.max.get_ref() {
        n @ 1..=100_000_000 => n as u32,
        _ => {
            return Err(cx.err(
                l.max.span(),
                format!("{f}.max"),
                "must be from 1 to 100000000",
            ));
        }
    };
    Ok(LimitConn {
        zone,
        max,
        status: status(cx, &f, &l.status)?,
    })
}

pub(super) fn limit_req(
    cx: &Ctx<'_>,
    lf: &str,
    l: &Spanned<raw::LimitReq>,
    zones: &[(Zone<ReqZone>, Option<u64>)],
) -> Result<LimitReq, ConfigError> {
    let f = format!("{lf}.limit_req");
    let span = l.span();
    let l = l.get_ref();
    let zone = find(
        cx,
        &f,
        "limit_req_zone",
        zones.iter().map(|z| z.0.name.as_str()),
        &l.zone,
    )?;
    let rate_milli = rate_of(cx, &f, span, &l.rate, zones[zone].1)?;
    let burst = burst_of(cx, &f, &l.burst)?;
    Ok(LimitReq {
        zone,
        rate_milli,
        burst,
        nodelay: l.nodelay.unwrap_or(false),
        status: status(cx, &f, &l.status)?,
    })
}

/// The rate given here, else the zone's (`zone_rate`), else an error at `span`.
fn rate_of(
    cx: &Ctx<'_>,
    f: &str,
    span: std::ops::Range<usize>,
    rate: &Option<Spanned<String>>,
    zone_rate: Option<u64>,
) -> Result<u64, ConfigError> {
    match (rate, zone_rate) {
        (Some(r), _) => {
            parse_rate(r.get_ref()).map_err(|m| cx.err(r.span(), format!("{f}.rate"), m))
        }
        (None, Some(r)) => Ok(r),
        (None, None) => Err(cx.err(
            span,
            format!("{f}.rate"),
            "needs a rate (here, or on its limit_req_zone), such as \"10r/s\"",
        )),
    }
}

fn burst_of(cx: &Ctx<'_>, f: &str, b: &Option<Spanned<i64>>) -> Result<u32, ConfigError> {
    match b {
        None => Ok(0),
        Some(b) if (0..=100_000).contains(b.get_ref()) => Ok(*b.get_ref() as u32),
        Some(b) => Err(cx.err(b.span(), format!("{f}.burst"), "must be from 0 to 100000")),
    }
}

pub(super) fn message_rate(
    cx: &Ctx<'_>,
    lf: &str,
    l: &Spanned<raw::MessageRate>,
    zones: &[(Zone<ReqZone>, Option<u64>)],
) -> Result<MessageRate, ConfigError> {
    let f = format!("{lf}.message_rate");
    let span = l.span();
    let l = l.get_ref();
    let zone = match &l.zone {
        None => None,
        Some(z) => Some(find(
            cx,
            &f,
            "limit_req_zone",
            zones.iter().map(|z| z.0.name.as_str()),
            z,
        )?),
    };
    let rate_milli = rate_of(cx, &f, span, &l.rate, zone.and_then(|z| zones[z].1))?;
    Ok(MessageRate {
        zone: zone.map(|z| zones[z].0.clone()),
        rate_milli,
        burst: burst_of(cx, &f, &l.burst)?,
        nodelay: l.nodelay.unwrap_or(false),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_as_nginx_writes_them() {
        assert_eq!(parse_rate("10r/s"), Ok(10_000));
        assert_eq!(parse_rate("30r/m"), Ok(500));
        for bad in ["10", "10r/h", "r/s", "0r/s", "-1r/s"] {
            assert!(parse_rate(bad).is_err(), "{bad}");
        }
    }
}
