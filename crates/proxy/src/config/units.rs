//! Durations ("30s", "7d", "1h 30m", "250ms") and sizes ("16k", "10m") as operators write them
//! in nginx configs.

use std::time::Duration;

/// Parse an nginx-style duration. A bare number is seconds, as in nginx.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    if t.is_empty() {
        return Err("empty duration".into());
    }
    if let Ok(n) = t.parse::<u64>() {
        return Ok(Duration::from_secs(n));
    }
    let mut total_ms: u128 = 0;
    let b = t.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b' ' {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        if start == i {
            return Err(format!(
                "invalid duration {s:?}: expected a number followed by a unit (ms, s, m, h, d, w), e.g. \"30s\" or \"7d\""
            ));
        }
        let n: u128 = t[start..i]
            .parse()
            .map_err(|_| format!("invalid duration {s:?}: number too large"))?;
        while i < b.len() && b[i] == b' ' {
            i += 1;
        }
        let ustart = i;
        while i < b.len() && b[i].is_ascii_alphabetic() {
            i += 1;
        }
        let unit_ms: u128 = match &t[ustart..i] {
            "ms" => 1,
            "s" => 1000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            "w" => 604_800_000,
            "" => {
                return Err(format!(
                    "invalid duration {s:?}: missing unit after {n} (ms, s, m, h, d, w)"
                ));
            }
            u => {
                return Err(format!(
                    "invalid duration {s:?}: unknown unit {u:?} (ms, s, m, h, d, w)"
                ));
            }
        };
        total_ms = total_ms
            .checked_add(
                n.checked_mul(unit_ms)
                    .ok_or_else(|| format!("invalid duration {s:?}: too large"))?,
            )
            .ok_or_else(|| format!("invalid duration {s:?}: too large"))?;
    }
    if total_ms > u128::from(u64::MAX / 2) {
        return Err(format!("invalid duration {s:?}: too large"));
    }
    Ok(Duration::from_millis(total_ms as u64))
}

/// Parse a size: bytes, or with a k/m/g suffix (powers of 1024), as nginx does.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let (num, mult) = match t.as_bytes().last() {
        Some(b'k' | b'K') => (&t[..t.len() - 1], 1u64 << 10),
        Some(b'm' | b'M') => (&t[..t.len() - 1], 1u64 << 20),
        Some(b'g' | b'G') => (&t[..t.len() - 1], 1u64 << 30),
        _ => (t, 1),
    };
    let n: u64 = num.trim().parse().map_err(|_| {
        format!("invalid size {s:?}: expected bytes or a number with k, m or g, e.g. \"16k\"")
    })?;
    n.checked_mul(mult)
        .ok_or_else(|| format!("invalid size {s:?}: too large"))
}

/// Render a duration the way a user would write it back.
pub fn fmt_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms == 0 {
        return "0s".into();
    }
    for (unit, len) in [
        ("d", 86_400_000u128),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1000),
    ] {
        if ms.is_multiple_of(len) {
            return format!("{}{unit}", ms / len);
        }
    }
    format!("{ms}ms")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("3600s").unwrap(), Duration::from_secs(3600));
        assert_eq!(
            parse_duration("7d").unwrap(),
            Duration::from_secs(7 * 86400)
        );
        assert_eq!(parse_duration("1h 30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("60").unwrap(), Duration::from_secs(60));
        for bad in [
            "",
            "s",
            "30x",
            "30",
            "-1s",
            "1.5s",
            "99999999999999999999999d",
        ] {
            if bad == "30" {
                continue;
            }
            assert!(parse_duration(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("16k").unwrap(), 16384);
        assert_eq!(parse_size("10m").unwrap(), 10 << 20);
        assert_eq!(parse_size("512").unwrap(), 512);
        assert!(parse_size("ten").is_err());
        assert!(parse_size("99999999999999g").is_err());
    }

    #[test]
    fn formatting_round_trips() {
        for s in ["30s", "7d", "1h", "250ms", "90m"] {
            let d = parse_duration(s).unwrap();
            assert_eq!(parse_duration(&fmt_duration(d)).unwrap(), d);
        }
        assert_eq!(fmt_duration(Duration::from_secs(86400)), "1d");
    }
}
