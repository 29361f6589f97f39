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

use super::End;
use super::Side;
use crate::config::Location;
use crate::ws::FrameHeader;

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

/// The filters a tunnel of location `l` runs, if any.
pub fn for_location(l: &Location) -> Option<Box<dyn FrameFilter>> {
    l.max_frame_size
        .map(|max| Box::new(MaxFrameSize { max }) as Box<dyn FrameFilter>)
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
