//! Socket memory: what the connections planned cost the kernel, and the `tcp_mem`,
//! `tcp_rmem` and `tcp_wmem` that hold them.
//!
//! Measured on Linux 6.x (BENCHMARKS.md, issue 23's second steps): an idle socket holds no
//! socket-buffer pages at all (heartbeats are read as they come), but its slab objects — the
//! TCP socket (2,368 B), its inode (832), file (192) and dentries, plus the event machinery
//! around it — grow the kernel's slab by about 4.4 KiB, twice per proxied connection (the whole
//! slab's growth over 10,000 idle proxied WebSockets, four sockets each on that host, was 17.7
//! KiB per WebSocket with ringway, 17.5 with nginx, 17.0 with HAProxy). Socket-buffer pages are
//! what bursts cost: a socket holding anything queued charges at least one page to `tcp_mem`,
//! so a message to every connection at once (a broadcast, a heartbeat round, a reconnect
//! storm) needs a page per socket.

use super::*;

/// Slab bytes of one idle TCP socket with what the kernel keeps around it, measured.
pub const KERNEL_BYTES_PER_SOCKET: u64 = 4_400;

/// Three numbers of a sysctl (`tcp_mem`, `tcp_rmem`, `tcp_wmem`).
fn triple(r: &Reading) -> Option<[u64; 3]> {
    let mut it = r.as_ref().ok()?.split_whitespace().map(|x| x.parse().ok());
    Some([it.next()??, it.next()??, it.next()??])
}

fn gib(bytes: u64) -> String {
    format!("{:.1} GiB", bytes as f64 / (1u64 << 30) as f64)
}

/// The section: tcp_mem sized for the sockets, the per-socket buffers, and whether the host
/// has the memory.
pub(super) fn socket_memory(rows: &mut Rows, s: &State, n: &Needs) {
    let sockets = n.connections * FDS_PER_SESSION;
    // One page per socket before pressure, with the kernel's own ratios around it (its
    // default tcp_mem is 3/4, 1 and 3/2 of one figure).
    let need = [sockets * 3 / 4, sockets, sockets * 3 / 2];
    tcp_mem(rows, s, sockets, need);
    buffers(rows, s, sockets);
    host(rows, s, sockets, need[1] * s.page_size.max(1));
}

fn shown(v: [u64; 3]) -> String {
    format!("{} {} {}", v[0], v[1], v[2])
}

/// `tcp_mem` against a page per socket.
fn tcp_mem(rows: &mut Rows, s: &State, sockets: u64, need: [u64; 3]) {
    let mem = triple(&s.tcp_mem);
    match mem {
        Some(cur) if cur[1] >= need[1] && cur[2] >= need[2] => rows.add(
            "net.ipv4.tcp_mem",
            shown(cur),
            format!(">= {}", shown(need)),
            Status::Ok,
            format!(
                "pages for all socket buffers: a message to all {sockets} sockets at once fits before memory pressure"
            ),
            None,
        ),
        Some(cur) => {
            let fix = [0, 1, 2].map(|i| cur[i].max(need[i]));
            rows.add(
                "net.ipv4.tcp_mem",
                shown(cur),
                format!(">= {}", shown(need)),
                Status::Warn,
                format!(
                    "a socket holding anything queued takes a page: a message to all {sockets} sockets at once (a broadcast, a reconnect storm) puts TCP under memory pressure at {} pages and drops past {}",
                    cur[1], cur[2]
                ),
                Some(("net/ipv4/tcp_mem", shown(fix))),
            );
        }
        None => rows.add(
            "net.ipv4.tcp_mem",
            show(&s.tcp_mem),
            format!(">= {}", shown(need)),
            Status::Warn,
            "could not read it".into(),
            None,
        ),
    }
}

/// Per-socket buffers: pressure cuts every socket back to the minimum, which must be small for
/// pressure to free anything; the maximum is what one stalled peer can pin.
fn buffers(rows: &mut Rows, s: &State, sockets: u64) {
    let page = s.page_size.max(1);
    let (mem, rmem, wmem) = (triple(&s.tcp_mem), triple(&s.tcp_rmem), triple(&s.tcp_wmem));
    let stalled = match (mem, rmem, wmem) {
        (Some(m), Some(r), Some(w)) => {
            // A stalled client: its socket's send buffer fills to the wmem maximum, and the
            // upstream's receive buffer (ringway stops reading it) to the rmem maximum.
            let per = (r[2] + w[2]).max(1);
            format!(
                "; a stalled client pins up to {} KiB here, so {} stalled sessions reach tcp_mem's pressure value",
                per / 1024,
                m[1] * page / per
            )
        }
        _ => String::new(),
    };
    for (name, key, reading, v) in [
        ("net.ipv4.tcp_rmem", "net/ipv4/tcp_rmem", &s.tcp_rmem, rmem),
        ("net.ipv4.tcp_wmem", "net/ipv4/tcp_wmem", &s.tcp_wmem, wmem),
    ] {
        match v {
            Some(cur) if cur[0] <= page => rows.add(
                name,
                shown(cur),
                format!("min <= {page}"),
                Status::Ok,
                format!(
                    "under memory pressure each socket shrinks to one page{}",
                    if key.ends_with("wmem") { &stalled[..] } else { "" }
                ),
                None,
            ),
            Some(cur) => rows.add(
                name,
                shown(cur),
                format!("min <= {page}"),
                Status::Warn,
                format!(
                    "under memory pressure every socket keeps {} bytes: {sockets} sockets cannot shrink below {}",
                    cur[0],
                    gib(cur[0] * sockets)
                ),
                Some((key, shown([page, cur[1], cur[2]]))),
            ),
            None => rows.add(
                name,
                show(reading),
                format!("min <= {page}"),
                Status::Warn,
                "could not read it".into(),
                None,
            ),
        }
    }
}

/// Whether the host has the memory: slab for every socket, plus `buffers`, the socket buffers
/// up to the pressure value.
fn host(rows: &mut Rows, s: &State, sockets: u64, buffers: u64) {
    let slab = sockets * KERNEL_BYTES_PER_SOCKET;
    let want = slab + buffers;
    let (status, why) = match s.mem_total {
        Some(total) if total >= want * 2 => (
            Status::Ok,
            format!(
                "{} of socket slab (~{} KiB per connection) and {} of buffers for a burst, with room",
                gib(slab),
                KERNEL_BYTES_PER_SOCKET * FDS_PER_SESSION / 1024,
                gib(buffers)
            ),
        ),
        Some(total) => (
            if total >= want {
                Status::Warn
            } else {
                Status::Fail
            },
            format!(
                "the kernel alone needs {} for these sockets (slab {}, a burst's buffers {}) of {} here: plan fewer connections per host",
                gib(want),
                gib(slab),
                gib(buffers),
                gib(total)
            ),
        ),
        None => (Status::Warn, "could not read /proc/meminfo".into()),
    };
    rows.add(
        "kernel memory for sockets",
        s.mem_total.map_or("?".into(), gib),
        format!(">= {}", gib(want * 2)),
        status,
        why,
        None,
    );
}
