//! A session handed over that is not taken: its peers are told, as a drain would tell them.

use super::desc::{Desc, Parsed};
use super::linger::linger;
use super::*;

/// A tunnel handed over that is not taken (see [`refuse`]); an HTTP/2 connection's streams
/// first.
pub fn refuse_handed(t: Handed, why: &str) {
    for (_, s) in t.streams {
        refuse(&s.fds, &s.desc, why);
    }
    refuse(&t.fds, &t.desc, why);
}

/// A session handed over that cannot be taken (`why`). A tunnel: each side is sent what
/// waited for it, then the Close it would get from a drain — 1012 to the client, 1001 to the
/// upstream — where its stream stands at a frame boundary, sealed in a record and followed by
/// close_notify on a TLS connection (sent at once, without waiting: a socket at rest has room
/// for a few bytes; what does not go whole is followed by nothing), then both sockets close
/// after a lingering close (`linger.rs`).
/// An HTTP/2 connection: its client is sent what waited, then a GOAWAY (NO_ERROR) the same
/// way, and its socket closes after a lingering close, its other sockets at once (its
/// streams' sessions, refused with it, have had their Close sent into their socket pairs,
/// which nothing reads any more). A description that cannot be read at all says nothing of
/// the boundaries: nothing is sent, and the sockets close (the first, the client's, after a
/// lingering close too).
pub fn refuse(fds: &[RawFd], desc: &[u8], why: &str) {
    tracing::warn!("upgrade: a tunnel handed over is not taken ({why}): closing it");
    let send = |fd: RawFd, bytes: &[u8]| {
        let sent = nix::sys::socket::send(
            fd,
            bytes,
            nix::sys::socket::MsgFlags::MSG_DONTWAIT | nix::sys::socket::MsgFlags::MSG_NOSIGNAL,
        );
        sent == Ok(bytes.len())
    };
    let sealed = |tls: Option<&[u8]>, plain: &[u8]| match tls {
        None if plain.is_empty() => None,
        None => Some(plain.to_vec()),
        Some(state) => crate::tls::seal_carried(state, plain),
    };
    // How many of `fds` were sent last words: the client's socket, and a tunnel's upstream.
    let mut spoke = 1;
    match Desc::parse(desc) {
        Ok(Parsed::Tunnel(d)) if fds.len() == 2 => {
            spoke = 2;
            // Toward the client goes what the upstream's stream carries, and the other way.
            let sides = [
                (0, &d.frames[1], crate::ws::close_payload(1012, ""), None),
                (
                    1,
                    &d.frames[0],
                    crate::ws::close_payload(1001, ""),
                    // Masked as the tunnel masks its own frames (random keys, `mask_for`).
                    Some(crate::session::tunnel::mask_for(fds[1] as u64)),
                ),
            ];
            for (i, t, payload, mask) in sides {
                if !d.unsent[i].is_empty() && !send(fds[i], d.unsent[i]) {
                    continue;
                }
                let close = if t.at_boundary() && !t.lost() {
                    crate::ws::frame(crate::ws::opcode::CLOSE, &payload, mask)
                } else {
                    Vec::new()
                };
                if let Some(b) = sealed(d.tls[i], &close) {
                    send(fds[i], &b);
                }
            }
        }
        Ok(Parsed::Http2(h))
            if !fds.is_empty()
                && h.unsent
                    .first()
                    .is_none_or(|u| u.is_empty() || send(fds[0], u)) =>
        {
            let mut goaway = Vec::new();
            crate::h2::frame::goaway(
                &mut goaway,
                crate::h2::frame::MAX_WINDOW,
                crate::h2::Code::NoError,
            );
            if let Some(b) = sealed(h.tls, &goaway) {
                send(fds[0], &b);
            }
        }
        _ => {}
    }
    // The sockets that were sent last words end after them with a lingering close: what
    // their peers still send is read and dropped for a while (a close with bytes unread, or
    // arriving after it, would be a reset, which can discard the last words at the peer).
    // The others (an HTTP/2 connection's ends of its streams' socket pairs) close at once.
    for (i, &fd) in fds.iter().enumerate() {
        if i < spoke {
            linger(fd);
        } else {
            let _ = nix::unistd::close(fd);
        }
    }
}
