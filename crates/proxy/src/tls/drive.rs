//! Driving rustls's unbuffered handshake: shown one whole record at a time, never past the
//! record that completes the handshake; what it wants to send encoded into the send queue.

use rustls::unbuffered::{ConnectionState, EncodeError, UnbufferedStatus};

use super::Engine;

/// Run rustls's handshake over `buf` until it needs more bytes or is done: records to send
/// are appended to `out`. Returns the bytes of `buf` consumed; the rest — a record not complete
/// yet, or the records after the one that completed the handshake — is kept by the caller (for
/// the next call, or for ringway's own record layer).
///
/// rustls is shown one whole record more at a time, never past the record that completes the
/// handshake: a KeyUpdate (or data) the peer sent in the same write as its Finished is then
/// read by ringway's records, which answer it, and not by rustls, which would switch its
/// sending key for a KeyUpdate of its own it never gets to send once the secrets are handed
/// over. `shown` is how much of `buf` rustls has been shown and not discarded (a handshake
/// message spanning records); it is carried to the next call, whose `buf` starts where this
/// one's consumed bytes end, so rustls never sees less than it saw. On an error, the alert
/// rustls queued is encoded into `out` before the error is returned.
pub(crate) fn drive<E: Engine>(
    engine: &mut E,
    buf: &mut [u8],
    shown: &mut usize,
    plain: &mut Vec<u8>,
    out: &mut Vec<u8>,
) -> Result<usize, rustls::Error> {
    let mut off = 0;
    // rustls's unbuffered state machine asserts on some sequences of calls; a peer must not be
    // able to reach one and take the worker down, so a panic in it fails this connection only.
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let r = turns(engine, buf, &mut off, shown, plain, out);
        if r.is_err() {
            // The fatal alert rustls queued with the error is the next thing it hands out.
            // Only that: calling on would read the bad bytes again.
            let end = (off + *shown).min(buf.len());
            let UnbufferedStatus { discard, state } = engine.process(&mut buf[off..end]);
            if let Ok(ConnectionState::EncodeTlsData(mut e)) = state {
                encode(&mut e, out);
                off += discard;
            }
        }
        r
    }));
    match r {
        Ok(r) => r.map(|()| off),
        Err(_) => Err(rustls::Error::General("TLS state machine failed".into())),
    }
}

/// Handshake bytes rustls has ready, appended to `out`.
fn encode<D>(e: &mut rustls::unbuffered::EncodeTlsData<'_, D>, out: &mut Vec<u8>) {
    let start = out.len();
    let mut size = 1024;
    loop {
        out.resize(start + size, 0);
        match e.encode(&mut out[start..]) {
            Ok(n) => {
                out.truncate(start + n);
                return;
            }
            Err(EncodeError::InsufficientSize(s)) => size = s.required_size,
            Err(_) => {
                out.truncate(start);
                return;
            }
        }
    }
}

/// Where the TLS record that starts at `at` in `buf` ends, when it is there whole. A header no
/// record can have (a content type or version that is not TLS's, a length past the largest
/// ciphertext) is shown to rustls at once, which refuses it, rather than waited for.
fn record_end(buf: &[u8], at: usize) -> Option<usize> {
    let h = buf.get(at..at + 5)?;
    let len = usize::from(u16::from_be_bytes([h[3], h[4]]));
    if !(20..=24).contains(&h[0]) || h[1] != 3 || len > (1 << 14) + 2048 {
        return Some(buf.len());
    }
    let end = at + 5 + len;
    (end <= buf.len()).then_some(end)
}

fn turns<E: Engine>(
    engine: &mut E,
    buf: &mut [u8],
    off: &mut usize,
    shown: &mut usize,
    plain: &mut Vec<u8>,
    out: &mut Vec<u8>,
) -> Result<(), rustls::Error> {
    // rustls sees `buf[off..limit]`: what it saw before, then one more whole record each time
    // it has done all it can with that.
    let mut limit = (*off + *shown).min(buf.len());
    // Each turn either consumes bytes, produces some, shows one more record, or ends; rustls's
    // states are finite between two, but a bound keeps a bug from spinning the worker.
    for _ in 0..10_000 {
        let UnbufferedStatus { discard, state } = engine.process(&mut buf[*off..limit]);
        let state = match state {
            Ok(s) => s,
            Err(e) => {
                *off += discard;
                *shown = limit.saturating_sub(*off);
                return Err(e);
            }
        };
        let done = match state {
            ConnectionState::ReadTraffic(mut r) => {
                let mut failed = None;
                while let Some(rec) = r.next_record() {
                    match rec {
                        Ok(rec) => plain.extend_from_slice(rec.payload),
                        Err(e) => {
                            failed = Some(e);
                            break;
                        }
                    }
                }
                if let Some(e) = failed {
                    *off += discard;
                    *shown = limit.saturating_sub(*off);
                    return Err(e);
                }
                false
            }
            ConnectionState::EncodeTlsData(mut e) => {
                encode(&mut e, out);
                false
            }
            // What was encoded is in `out`, which the caller queues on the socket.
            ConnectionState::TransmitTlsData(t) => {
                t.done();
                false
            }
            // The handshake is done: the records are ringway's from here (`hand_over`).
            ConnectionState::WriteTraffic(_) => true,
            ConnectionState::PeerClosed => false,
            // All that can be done with what was shown: show the next whole record, if any.
            ConnectionState::BlockedHandshake => {
                let at = *off + discard;
                match record_end(buf, limit.max(at)) {
                    Some(end) => {
                        *off = at;
                        limit = end;
                        continue;
                    }
                    None => true,
                }
            }
            // Closed; early data is not enabled.
            _ => true,
        };
        *off += discard;
        if done {
            *shown = limit.saturating_sub(*off);
            return Ok(());
        }
    }
    Err(rustls::Error::General(
        "TLS state machine did not settle".into(),
    ))
}
