//! The tunnel's hook for policy at WebSocket message boundaries. A tunnel knows where every
//! frame begins in both directions (its frame trackers); a `FrameFilter` is shown each frame's
//! header there, before any byte of the frame goes on, and says whether it passes or ends the
//! tunnel (each side then gets a Close with a code of the filter's choosing). Nothing is
//! buffered to ask it: the header is held only until it is whole (a few bytes), as the
//! heartbeat's Pong check already does.
//!
//! The tunnel runs whatever `for_location` builds for its location; a policy is added here, as a
//! type and a line in `for_location`, without editing the tunnel.

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use super::End;
use super::Side;
use crate::config::Location;
use crate::limits::{self, Bucket, ReqZone};
use crate::ws::{FrameHeader, opcode};

/// A policy over the frames of one tunnel.
pub trait FrameFilter: fmt::Debug {
    /// A frame from `from` starts: its header (its payload follows, `h.len` bytes). `now_ms`
    /// on the worker's clock.
    fn frame(&mut self, from: Side, h: &FrameHeader, now_ms: u64) -> Verdict;
}

/// What a filter decides of a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The frame goes on.
    Pass,
    /// The frame goes on at `until` (worker clock, ms), and nothing from its side is read
    /// before: the tunnel keeps what it has already read from that frame on, and the frame is
    /// not shown to the filters again (they counted it now).
    Delay { until: u64 },
    /// The frame does not go on, nor anything after it: the side it came from gets a Close
    /// with `offender` (at once where its stream allows), the other side one with `other`,
    /// and the tunnel ends with `end`.
    Close {
        offender: u16,
        other: u16,
        reason: &'static str,
        end: End,
    },
}

/// The filters a tunnel of location `l` runs, if any, for a client at `client`.
pub fn for_location(l: &Location, client: IpAddr) -> Option<Box<dyn FrameFilter>> {
    let mut all: Vec<Box<dyn FrameFilter>> = Vec::new();
    if let Some(max) = l.max_frame_size {
        all.push(Box::new(MaxFrameSize { max }));
    }
    if let Some(max) = l.max_message_size {
        all.push(Box::new(MaxMessageSize { max, sum: [0; 2] }));
    }
    if let Some(r) = &l.message_rate {
        all.push(Box::new(MessageRate {
            zone: r
                .zone
                .as_ref()
                .map(|z| (z.table.clone(), limits::key_of(client))),
            rate_milli: r.rate_milli,
            burst: r.burst,
            nodelay: r.nodelay,
            bucket: None,
        }));
    }
    match all.len() {
        0 => None,
        1 => all.pop(),
        _ => Some(Box::new(Chain(all))),
    }
}

/// Several filters: each sees every frame; the first Close wins, else the latest Delay.
#[derive(Debug)]
struct Chain(Vec<Box<dyn FrameFilter>>);

impl FrameFilter for Chain {
    fn frame(&mut self, from: Side, h: &FrameHeader, now_ms: u64) -> Verdict {
        let mut v = Verdict::Pass;
        for f in &mut self.0 {
            match (f.frame(from, h, now_ms), v) {
                (c @ Verdict::Close { .. }, _) => return c,
                (Verdict::Delay { until }, Verdict::Delay { until: was }) => {
                    v = Verdict::Delay {
                        until: until.max(was),
                    }
                }
                (d @ Verdict::Delay { .. }, _) => v = d,
                _ => {}
            }
        }
        v
    }
}

/// `max_message_size`: a message whose fragments' payloads add up to more ends the tunnel,
/// Close 1009 to the side that sent it and 1001 to the other. Control frames (which may
/// come between fragments) are not part of a message.
#[derive(Debug)]
pub struct MaxMessageSize {
    max: u64,
    /// Payload bytes of the current message from each side so far (as `Tunnel::frames`).
    sum: [u64; 2],
}

impl FrameFilter for MaxMessageSize {
    fn frame(&mut self, from: Side, h: &FrameHeader, _now_ms: u64) -> Verdict {
        if h.opcode >= 0x8 {
            return Verdict::Pass;
        }
        let i = usize::from(from == Side::Up);
        self.sum[i] = if h.opcode == opcode::CONTINUATION {
            self.sum[i].saturating_add(h.len)
        } else {
            h.len
        };
        if self.sum[i] <= self.max {
            return Verdict::Pass;
        }
        Verdict::Close {
            offender: 1009,
            other: 1001,
            reason: "message too large",
            end: End::MessageTooLarge(from),
        }
    }
}

/// `message_rate`: nginx's leaky bucket over the frames the client sends (each data frame,
/// a fragment as much as a whole message, and each control frame), per tunnel or per client
/// address in a zone. Within the burst a data frame waits for its turn (`Delay`: the client
/// is not read meanwhile, so it slows down and nothing piles up here) unless `nodelay`;
/// past the burst the tunnel ends with Close 1008 (policy violation) to the client and 1001
/// to the upstream. A control frame is never delayed: past the burst it ends the tunnel.
#[derive(Debug)]
pub struct MessageRate {
    /// The zone's table and the client's key in it; None: the tunnel's own bucket.
    zone: Option<(Arc<ReqZone>, u128)>,
    rate_milli: u64,
    burst: u32,
    nodelay: bool,
    bucket: Option<Bucket>,
}

impl FrameFilter for MessageRate {
    fn frame(&mut self, from: Side, h: &FrameHeader, now_ms: u64) -> Verdict {
        if from == Side::Up {
            return Verdict::Pass;
        }
        let nodelay = self.nodelay || h.opcode >= 0x8;
        let v = match (&self.zone, &mut self.bucket) {
            (Some((z, key)), _) => z.check(*key, now_ms, self.rate_milli, self.burst, nodelay),
            (None, Some(b)) => b.take(now_ms, self.rate_milli, self.burst, nodelay),
            (None, b @ None) => {
                *b = Some(Bucket::first(now_ms));
                limits::Verdict::Pass
            }
        };
        match v {
            limits::Verdict::Pass => Verdict::Pass,
            limits::Verdict::Delay(ms) => Verdict::Delay { until: now_ms + ms },
            limits::Verdict::Refuse => Verdict::Close {
                offender: 1008,
                other: 1001,
                reason: "message rate exceeded",
                end: End::MessageRate,
            },
        }
    }
}

/// `max_frame_size`: a frame whose payload is larger ends the tunnel, Close 1009 ("message
/// too big", RFC 6455 §7.4.1) to the side that sent it and 1001 to the other.
#[derive(Debug)]
pub struct MaxFrameSize {
    max: u64,
}

impl FrameFilter for MaxFrameSize {
    fn frame(&mut self, from: Side, h: &FrameHeader, _now_ms: u64) -> Verdict {
        if h.len <= self.max {
            return Verdict::Pass;
        }
        Verdict::Close {
            offender: 1009,
            other: 1001,
            reason: "frame too large",
            end: End::FrameTooLarge(from),
        }
    }
}
