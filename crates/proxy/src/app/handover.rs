//! Tunnels carried from the old process to the new one in a binary upgrade, on the upgrade
//! socket's connection, after the listening sockets (`upgrade.rs`); what moves with each is in
//! `session/handoff.rs`.
//!
//! The new process says `ready\n`, then `tunnels V\n` (the description version it reads). An
//! old process that reads the same version answers `draining PID tunnels V\n` and sends the
//! tunnels its workers hand it, in batches; one that does not (another version, or a ringway
//! from before this) answers `draining PID\n` and drains its tunnels with the Close 1012 as
//! before. A batch is a 16-byte header — `RWT2`, the number of tunnels (0: the last batch),
//! the length of what follows, the number of descriptors — sent with the tunnels'
//! descriptors (SCM_RIGHTS: a tunnel's client then upstream; an HTTP/2 connection's client,
//! its streams' socket pairs, then the sockets of each stream's tunnel that goes with it),
//! then for each: its descriptors' count, its description behind its 32-bit length, and the
//! streams that go with it (their count, then each one's place among the pairs, descriptors'
//! count and description). The new process answers each batch with one byte once it has it;
//! at most [`IN_FLIGHT`] batches go unanswered.
//!
//! Bounds: at most [`BATCH`] tunnels, [`FDS_MAX`] descriptors and [`DESC_MAX`] bytes of
//! description each per batch; the old process ends the stream once no tunnel came from its workers for
//! `HANDOFF_WAIT` plus [`SEND_WAIT`]; the new one waits at most [`SEND_WAIT`] between batches. A tunnel the
//! new process cannot take gets its Close there (`session::refuse_handed`); a batch the
//! new process does not take (it died) is closed the same way by the old one.

use std::collections::BTreeMap;
use std::io::{IoSlice, IoSliceMut, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use nix::sys::socket::{ControlMessage, ControlMessageOwned, MsgFlags, recvmsg, sendmsg};

use crate::live::{Inbox, Msg};
use crate::session::{
    DESC_MAX, Departure, FDS_MAX, HANDOFF_VERSION, Handed, describes_http2, refuse_handed,
};

/// Tunnels per batch.
pub const BATCH: usize = 32;

/// How long either side waits on the other while tunnels move.
pub const SEND_WAIT: Duration = Duration::from_secs(5);
/// How long a batch may wait for more tunnels before it goes.
const GATHER: Duration = Duration::from_millis(5);
const MAGIC: &[u8; 4] = b"RWT2";
/// What the new process answers each batch with, once it has it.
const ACK: &[u8; 1] = b"k";

/// The version this process reads (`RINGWAY_HANDOVER_VERSION` overrides it: a test's stand-in
/// for a binary with another description format).
pub fn version() -> u32 {
    std::env::var("RINGWAY_HANDOVER_VERSION")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(HANDOFF_VERSION)
}

/// A pause after each batch sent (`RINGWAY_HANDOVER_PAUSE_MS`, a test knob: it stretches the
/// hand-over so a test can end the old process in the middle of it). None by default.
fn pause() -> Option<Duration> {
    std::env::var("RINGWAY_HANDOVER_PAUSE_MS")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .map(Duration::from_millis)
}

/// What the old process learned from the new one's `tunnels V` line: whether they move.
pub fn agreed(line: &str) -> bool {
    line.strip_prefix("tunnels ")
        .and_then(|v| v.trim().parse::<u32>().ok())
        == Some(HANDOFF_VERSION)
}

/// The old process's side: send what `workers` workers hand over on `conn` until each says it
/// is through (or the time is up), then the last batch.
pub fn send(conn: UnixStream, from: Receiver<Departure>, workers: usize, peer: i32) {
    // Bounded by progress: the workers send tunnels in waves; none for this long ends it.
    let patience = crate::worker::HANDOFF_WAIT + SEND_WAIT;
    let mut until = Instant::now() + patience;
    let _ = conn.set_write_timeout(Some(SEND_WAIT));
    let _ = conn.set_read_timeout(Some(SEND_WAIT));
    let mut batch: Vec<Handed> = Vec::new();
    let (mut done, mut moved, mut lost, mut waiting, mut http2) = (0, 0u64, 0u64, 0u64, 0u64);
    let mut stayed: BTreeMap<&'static str, u64> = BTreeMap::new();
    let mut broken = false;
    let pause = pause();
    // Batches sent and not yet answered.
    let mut unanswered = 0usize;
    let mut flush = |batch: &mut Vec<Handed>, broken: &mut bool| {
        if batch.is_empty() {
            return;
        }
        // The tunnels in it (an HTTP/2 connection's streams; the connection is not one).
        let n: u64 = batch
            .iter()
            .map(|t| (t.streams.len() + usize::from(!describes_http2(&t.desc))) as u64)
            .sum();
        let sent = if *broken {
            Ok(())
        } else {
            send_batch(&conn, batch).and_then(|()| {
                unanswered += 1;
                if unanswered < IN_FLIGHT {
                    return Ok(());
                }
                unanswered -= 1;
                acked(&conn)
            })
        };
        if let Err(e) = sent {
            tracing::error!("upgrade: pid {peer} took no more tunnels ({e:#}): closing the rest");
            *broken = true;
        }
        if *broken {
            lost += n;
            for t in batch.drain(..) {
                refuse_handed(t, "the new process is gone");
            }
        } else {
            for t in batch.drain(..) {
                for fd in t.all_fds() {
                    let _ = nix::unistd::close(fd);
                }
            }
        }
        if let Some(p) = pause {
            std::thread::sleep(p);
        }
    };
    while done < workers {
        let now = Instant::now();
        if now >= until {
            tracing::warn!("upgrade: the workers took too long handing tunnels over: ending");
            break;
        }
        let wait = if batch.is_empty() {
            until - now
        } else {
            GATHER
        };
        match from.recv_timeout(wait) {
            Ok(Departure::Tunnel(t)) => {
                until = Instant::now() + patience;
                let fds = |b: &[Handed]| b.iter().map(|t| t.all_fds().count()).sum::<usize>();
                if fds(&batch) + t.all_fds().count() > FDS_MAX {
                    flush(&mut batch, &mut broken);
                }
                batch.push(t);
                if batch.len() >= BATCH {
                    flush(&mut batch, &mut broken);
                }
            }
            Ok(Departure::Done {
                moved: m,
                http2: h,
                waiting: w,
                stayed: s,
                ..
            }) => {
                done += 1;
                moved += m;
                http2 += h;
                waiting += w;
                for (k, v) in s {
                    *stayed.entry(k).or_default() += v;
                }
            }
            Err(RecvTimeoutError::Timeout) => flush(&mut batch, &mut broken),
            Err(RecvTimeoutError::Disconnected) => break,
        }
    }
    flush(&mut batch, &mut broken);
    if !broken {
        let _ = send_header(&conn, 0, 0, &[]);
    }
    drop(from);
    let stayed_n: u64 = stayed.values().sum();
    let why: Vec<String> = stayed.iter().map(|(k, v)| format!("{k} {v}")).collect();
    tracing::info!(
        "upgrade: handed {} tunnel(s) to pid {peer} ({}{waiting} bytes waiting to be sent went \
         with them); {stayed_n} stay here and get the drain's Close{}",
        moved.saturating_sub(lost),
        if http2 > 0 {
            format!("{http2} HTTP/2 connection(s) carrying some; ")
        } else {
            String::new()
        },
        if why.is_empty() {
            String::new()
        } else {
            format!(" ({})", why.join(", "))
        }
    );
    if lost > 0 {
        tracing::error!("upgrade: {lost} tunnel(s) were closed: pid {peer} did not take them");
    }
    let _ = conn.shutdown(std::net::Shutdown::Write);
}

fn send_header(conn: &UnixStream, n: usize, len: usize, fds: &[RawFd]) -> anyhow::Result<()> {
    let mut h = [0u8; 16];
    h[..4].copy_from_slice(MAGIC);
    h[4..8].copy_from_slice(&(n as u32).to_le_bytes());
    h[8..12].copy_from_slice(&(len as u32).to_le_bytes());
    h[12..16].copy_from_slice(&(fds.len() as u32).to_le_bytes());
    let iov = [IoSlice::new(&h)];
    let cmsg = [ControlMessage::ScmRights(fds)];
    let cmsgs: &[ControlMessage] = if fds.is_empty() { &[] } else { &cmsg };
    let sent = sendmsg::<()>(conn.as_raw_fd(), &iov, cmsgs, MsgFlags::MSG_NOSIGNAL, None)
        .context("sending a batch's header")?;
    if sent != h.len() {
        bail!("a batch's header went out cut short");
    }
    Ok(())
}

/// One tunnel's part of a batch's body: its descriptors' count and description.
fn put_one(body: &mut Vec<u8>, t: &Handed) {
    body.extend_from_slice(&(t.fds.len() as u32).to_le_bytes());
    body.extend_from_slice(&(t.desc.len() as u32).to_le_bytes());
    body.extend_from_slice(&t.desc);
}

/// Batches sent and not yet answered at most. With batches sent back to back, descriptors of
/// Unix sockets (HTTP/2 streams' socket pairs) piled up in flight and a send waited 15–36 ms
/// in the kernel now and then (5,000 streams; Linux makes a sender with many Unix sockets in
/// flight wait for its garbage collector of them). With one batch in flight none waited, but
/// every batch waited for the new process's thread to run (HTTP/1 tunnels' pause grew from
/// 20 to 38 ms); four keep both down (at most 1,000 descriptors in flight).
const IN_FLIGHT: usize = 4;

/// The new process's word that it has taken a batch in (its descriptors received).
fn acked(conn: &UnixStream) -> anyhow::Result<()> {
    let mut ack = [0u8; 1];
    (&*conn)
        .read_exact(&mut ack)
        .context("waiting for the new process to take a batch")?;
    if ack != *ACK {
        bail!("the new process answered a batch with {ack:?}");
    }
    Ok(())
}

fn send_batch(conn: &UnixStream, batch: &[Handed]) -> anyhow::Result<()> {
    use std::io::Write;
    let fds: Vec<RawFd> = batch.iter().flat_map(Handed::all_fds).collect();
    let mut body = Vec::new();
    for t in batch {
        put_one(&mut body, t);
        body.extend_from_slice(&(t.streams.len() as u32).to_le_bytes());
        for (i, s) in &t.streams {
            body.extend_from_slice(&i.to_le_bytes());
            put_one(&mut body, s);
        }
    }
    send_header(conn, batch.len(), body.len(), &fds)?;
    (&*conn)
        .write_all(&body)
        .context("sending a batch's descriptions")
}

/// What the new process took in: tunnels (an HTTP/2 stream's among them), and HTTP/2
/// connections.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Received {
    pub tunnels: u64,
    pub http2: u64,
}

/// The new process's side: take the tunnels the old one sends on `conn`, spread over the
/// workers' `inboxes` in turn (an HTTP/2 connection with its streams to one worker). Returns
/// how many were taken in; each worker decides on its own (`Msg::Adopt`).
pub fn receive(mut conn: UnixStream, inboxes: &[Arc<Inbox>]) -> anyhow::Result<Received> {
    conn.set_read_timeout(Some(SEND_WAIT))?;
    let mut next = 0usize;
    let mut total = Received::default();
    loop {
        let (n, len, fds) = receive_header(&conn)?;
        if n == 0 {
            for fd in fds {
                let _ = nix::unistd::close(fd);
            }
            return Ok(total);
        }
        let mut body = vec![0u8; len];
        if let Err(e) = conn.read_exact(&mut body) {
            for fd in fds {
                let _ = nix::unistd::close(fd);
            }
            bail!("reading a batch's descriptions: {e}");
        }
        // Taken in: the old process sends the next. (If it cannot hear it, it is gone, and the
        // next header says so.)
        let _ = (&conn).write_all(ACK);
        let tunnels = match take_batch(&body, n, &fds) {
            Some(t) => t,
            None => {
                // Nothing of it can be trusted: its sockets close.
                for fd in fds {
                    let _ = nix::unistd::close(fd);
                }
                tracing::warn!("upgrade: a batch of tunnels that does not add up: closed");
                continue;
            }
        };
        for t in &tunnels {
            if !crate::session::describes_http2(&t.desc) {
                total.tunnels += 1;
            } else {
                total.http2 += 1;
                total.tunnels += t.streams.len() as u64;
            }
        }
        // Round robin, a batch's tunnels spread one by one.
        let mut per: Vec<Vec<Handed>> = (0..inboxes.len()).map(|_| Vec::new()).collect();
        for t in tunnels {
            per[next % inboxes.len()].push(t);
            next += 1;
        }
        for (inbox, mine) in inboxes.iter().zip(per) {
            if !mine.is_empty() {
                inbox.give_adopted(mine);
                inbox.send(Msg::Adopt);
            }
        }
    }
}

/// A batch's `n` tunnels from its body, each with its share of `fds`; None when the body and
/// the descriptors do not add up (every count is checked against what is left).
fn take_batch(body: &[u8], n: usize, fds: &[RawFd]) -> Option<Vec<Handed>> {
    let mut r = crate::wire::R(body);
    let mut fds = fds;
    let mut one = |r: &mut crate::wire::R<'_>| -> Option<Handed> {
        let k = r.u32().ok()? as usize;
        let desc = r.bytes(DESC_MAX).ok()?;
        if k > fds.len() {
            return None;
        }
        let (mine, rest) = fds.split_at(k);
        fds = rest;
        Some(Handed {
            fds: mine.to_vec(),
            desc: desc.to_vec(),
            streams: Vec::new(),
        })
    };
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let mut t = one(&mut r)?;
        let m = r.u32().ok()? as usize;
        if m > FDS_MAX {
            return None;
        }
        for _ in 0..m {
            let i = r.u32().ok()?;
            t.streams.push((i, one(&mut r)?));
        }
        out.push(t);
    }
    (r.done() && fds.is_empty()).then_some(out)
}

/// A batch's header and its descriptors (checked: a count of tunnels within [`BATCH`], the
/// descriptors announced, a length within bounds).
fn receive_header(conn: &UnixStream) -> anyhow::Result<(usize, usize, Vec<RawFd>)> {
    let mut h = [0u8; 16];
    let mut fds = Vec::new();
    let got = {
        let mut iov = [IoSliceMut::new(&mut h)];
        let mut space = nix::cmsg_space!([RawFd; FDS_MAX]);
        let msg = recvmsg::<()>(
            conn.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::MSG_CMSG_CLOEXEC | MsgFlags::MSG_WAITALL,
        )
        .context("receiving a batch of tunnels")?;
        for c in msg.cmsgs()? {
            if let ControlMessageOwned::ScmRights(v) = c {
                fds.extend(v);
            }
        }
        msg.bytes
    };
    let bad = |fds: &[RawFd], why: &str| {
        for fd in fds {
            let _ = nix::unistd::close(*fd);
        }
        anyhow::anyhow!("a batch of tunnels: {why}")
    };
    if got != h.len() || &h[..4] != MAGIC {
        return Err(bad(&fds, "not a batch header"));
    }
    let n = u32::from_le_bytes(h[4..8].try_into().expect("4 bytes")) as usize;
    let len = u32::from_le_bytes(h[8..12].try_into().expect("4 bytes")) as usize;
    let nfds = u32::from_le_bytes(h[12..16].try_into().expect("4 bytes")) as usize;
    if n > BATCH || len > BATCH * (DESC_MAX + 4) + FDS_MAX * 16 || fds.len() != nfds {
        return Err(bad(&fds, "out of bounds"));
    }
    Ok((n, len, fds))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    fn header(n: u32, len: u32) -> [u8; 16] {
        let mut h = [0u8; 16];
        h[..4].copy_from_slice(MAGIC);
        h[4..8].copy_from_slice(&n.to_le_bytes());
        h[8..12].copy_from_slice(&len.to_le_bytes());
        h
    }

    #[test]
    fn a_batch_out_of_bounds_is_refused_and_its_descriptors_closed() {
        let inbox = Inbox::new().unwrap();
        // More tunnels than a batch holds.
        let (a, b) = UnixStream::pair().unwrap();
        (&a).write_all(&header(BATCH as u32 + 1, 0)).unwrap();
        let e = receive(b, std::slice::from_ref(&inbox)).unwrap_err();
        assert!(e.to_string().contains("out of bounds"), "{e}");
        // A description length past the bound.
        let (a, b) = UnixStream::pair().unwrap();
        (&a).write_all(&header(1, u32::MAX)).unwrap();
        assert!(receive(b, std::slice::from_ref(&inbox)).is_err());
        // Two tunnels announced, one descriptor sent: refused, and the one that came is closed.
        let (a, b) = UnixStream::pair().unwrap();
        let (x, mut y) = UnixStream::pair().unwrap();
        let mut h = header(2, 0);
        h[12..16].copy_from_slice(&2u32.to_le_bytes());
        let fd = [x.as_raw_fd()];
        let cmsg = [ControlMessage::ScmRights(&fd)];
        sendmsg::<()>(
            a.as_raw_fd(),
            &[IoSlice::new(&h)],
            &cmsg,
            MsgFlags::empty(),
            None,
        )
        .unwrap();
        assert!(receive(b, std::slice::from_ref(&inbox)).is_err());
        // With our own copy gone too, the other end sees the socket closed.
        drop(x);
        y.set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        assert_eq!(
            y.read(&mut [0u8; 1]).unwrap(),
            0,
            "the descriptor received was closed"
        );
        // Not a batch at all.
        let (a, b) = UnixStream::pair().unwrap();
        (&a).write_all(b"GET / HTTP/1.1\r\n").unwrap();
        assert!(receive(b, std::slice::from_ref(&inbox)).is_err());
        assert!(inbox.take_adopted().is_empty());
    }

    #[test]
    fn an_http2_connection_goes_whole_with_its_streams_and_a_batch_that_does_not_add_up_is_closed()
    {
        // One HTTP/2 connection with two stream pairs, one stream's tunnel going with it.
        let socks: Vec<(UnixStream, UnixStream)> =
            (0..5).map(|_| UnixStream::pair().unwrap()).collect();
        let fd = |i: usize| socks[i].0.as_raw_fd();
        let t = Handed {
            fds: vec![fd(0), fd(1), fd(2)],
            desc: {
                let mut d = crate::session::HANDOFF_VERSION.to_le_bytes().to_vec();
                d.push(2);
                d
            },
            streams: vec![(
                1,
                Handed {
                    fds: vec![fd(3), fd(4)],
                    desc: b"stream".to_vec(),
                    streams: Vec::new(),
                },
            )],
        };
        let inbox = Inbox::new().unwrap();
        let (a, b) = UnixStream::pair().unwrap();
        send_batch(&a, std::slice::from_ref(&t)).unwrap();
        send_header(&a, 0, 0, &[]).unwrap();
        assert_eq!(
            receive(b, std::slice::from_ref(&inbox)).unwrap(),
            Received {
                tunnels: 1,
                http2: 1
            }
        );
        let got = inbox.take_adopted();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].fds.len(), 3);
        assert!(crate::session::describes_http2(&got[0].desc));
        assert_eq!(got[0].streams.len(), 1);
        let (place, s) = &got[0].streams[0];
        assert_eq!((*place, s.fds.len(), &s.desc[..]), (1, 2, &b"stream"[..]));
        // The descriptors arrive in order: the stream's first is socket 3's.
        (&socks[3].1).write_all(b"x").unwrap();
        let mut one = [0u8; 1];
        let n = nix::sys::socket::recv(s.fds[0], &mut one, MsgFlags::empty()).unwrap();
        assert_eq!(&one[..n], b"x");
        for t in got {
            for fd in t.all_fds() {
                let _ = nix::unistd::close(fd);
            }
        }
        // A body whose counts do not add up to the descriptors sent: all of them closed.
        let mut body = Vec::new();
        put_one(
            &mut body,
            &Handed {
                fds: vec![0; 3],
                desc: Vec::new(),
                streams: Vec::new(),
            },
        );
        body.extend_from_slice(&0u32.to_le_bytes());
        assert!(take_batch(&body, 1, &[fd(0), fd(1)]).is_none());
        assert!(take_batch(&body, 1, &[fd(0), fd(1), fd(2)]).is_some());
        assert!(take_batch(&body, 2, &[fd(0), fd(1), fd(2)]).is_none());
    }

    #[test]
    fn the_last_batch_ends_the_stream_and_a_cut_description_gets_refused() {
        let inbox = Inbox::new().unwrap();
        let (a, b) = UnixStream::pair().unwrap();
        // One tunnel whose description is cut short (its length says more than came):
        // refused (its sockets closed), then the last batch.
        let (x, mut xe) = UnixStream::pair().unwrap();
        let (y, _y) = UnixStream::pair().unwrap();
        let body = 100u32.to_le_bytes();
        send_header(&a, 1, body.len(), &[x.as_raw_fd(), y.as_raw_fd()]).unwrap();
        (&a).write_all(&body).unwrap();
        send_header(&a, 0, 0, &[]).unwrap();
        assert_eq!(
            receive(b, std::slice::from_ref(&inbox)).unwrap(),
            Received::default()
        );
        assert!(inbox.take_adopted().is_empty());
        drop(x);
        xe.set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        assert_eq!(
            xe.read(&mut [0u8; 1]).unwrap(),
            0,
            "the refused tunnel's socket closed"
        );
    }
}
