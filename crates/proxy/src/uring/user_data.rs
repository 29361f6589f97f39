//! The SQE `user_data` word: which slot, which incarnation of it, which op on which of the
//! slot's connections.
//!
//! Layout: `| slot: u32 | generation: u20 | conn: u8 | op: 4 bits |`. `conn` 0 is a
//! session's client connection and 1.. its upstream connections ([`ConnId`]); up to
//! [`CONN_MAX`] connections of one slot are told apart, so that one client connection can own
//! several upstream streams (HTTP/2) without a slot each. One place encodes and
//! decodes it, so a late completion for a reused slab slot is recognised by its generation and
//! dropped instead of being applied to the wrong connection.

/// What kind of operation a completion belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Op {
    /// Multishot accept on a listener (slot = listener index).
    Accept = 1,
    /// Receive with a buffer picked from the provided-buffer ring.
    Recv = 2,
    /// Send of a chunk (pool buffer or heap bytes).
    Send = 3,
    /// Outgoing TCP connect.
    Connect = 4,
    /// An `AsyncCancel` we issued; its own completion only balances the in-flight count.
    Cancel = 5,
    /// A one-shot poll for the peer hanging up (`POLLRDHUP`), while its socket is not read.
    Hangup = 6,
    /// A poll on the worker's inbox (an eventfd the main thread writes), on `SLOT_CORE`.
    Inbox = 7,
    /// A socket's close, on `SLOT_CORE` (the slot it belonged to may be reused by then).
    Close = 8,
    /// A socket option set through the ring, on `SLOT_CORE`.
    SockOpt = 9,
    /// A one-shot poll for `POLLIN` on a socket a tunnel splices from (its recv is off).
    Readable = 10,
    /// A one-shot poll for `POLLOUT` on a socket a tunnel splices into (its pipe waits).
    Writable = 11,
}

/// Every 4-bit op value, decoded: one load per completion, whatever the number of ops.
const OPS: [Option<Op>; 16] = [
    None,
    Some(Op::Accept),
    Some(Op::Recv),
    Some(Op::Send),
    Some(Op::Connect),
    Some(Op::Cancel),
    Some(Op::Hangup),
    Some(Op::Inbox),
    Some(Op::Close),
    Some(Op::SockOpt),
    Some(Op::Readable),
    Some(Op::Writable),
    None,
    None,
    None,
    None,
];

impl Op {
    #[inline]
    fn from_u8(v: u8) -> Option<Op> {
        OPS[usize::from(v & 0xf)]
    }
}

/// Which connection of a slot an op belongs to (0: the client's).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnId(pub u8);

/// Largest connection index in one slot (an HTTP/2 connection's streams each take one).
pub const CONN_MAX: u8 = u8::MAX;

impl ConnId {
    /// A session's client connection (and the one connection of an admin slot).
    pub const CLIENT: ConnId = ConnId(0);
    /// A slot's first outgoing connection: a session's upstream, a health check's socket.
    pub const UPSTREAM: ConnId = ConnId(1);
}

/// Largest generation value; generations wrap to 0 after it (a slot reused a million times
/// while a completion of its first incarnation is still on its way).
pub const GENERATION_MAX: u32 = (1 << 20) - 1;

/// Slot value for core-owned ops that belong to no session (listeners use their index).
pub const SLOT_CORE: u32 = u32::MAX;

/// An encoded SQE `user_data`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UserData(pub u64);

impl UserData {
    /// Encode. `generation` must be at most [`GENERATION_MAX`].
    pub fn new(slot: u32, generation: u32, op: Op, conn: ConnId) -> UserData {
        debug_assert!(generation <= GENERATION_MAX);
        let ConnId(conn) = conn;
        UserData(
            (u64::from(slot) << 32)
                | (u64::from(generation & GENERATION_MAX) << 12)
                | (u64::from(conn) << 4)
                | op as u64,
        )
    }

    pub fn slot(self) -> u32 {
        (self.0 >> 32) as u32
    }

    pub fn generation(self) -> u32 {
        ((self.0 >> 12) as u32) & GENERATION_MAX
    }

    /// Which connection of the slot.
    pub fn conn(self) -> ConnId {
        ConnId(((self.0 >> 4) & 0xff) as u8)
    }

    /// The op kind, or `None` for a word we never encoded (counted as corrupt by callers).
    pub fn op(self) -> Option<Op> {
        Op::from_u8((self.0 & 0xf) as u8)
    }
}

/// The next generation after `g`, wrapping inside 20 bits.
pub fn next_generation(g: u32) -> u32 {
    if g >= GENERATION_MAX { 0 } else { g + 1 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_decoding_table_holds_each_op_at_its_value() {
        for (i, op) in OPS.iter().enumerate() {
            if let Some(op) = op {
                assert_eq!(*op as usize, i, "{op:?}");
            }
        }
        assert_eq!(OPS.iter().flatten().count(), 11, "every op decodes");
    }

    #[test]
    fn round_trip_edges() {
        for slot in [0, 1, 12345, u32::MAX - 1, u32::MAX] {
            for generation in [0, 1, GENERATION_MAX] {
                for op in [
                    Op::Accept,
                    Op::Recv,
                    Op::Send,
                    Op::Connect,
                    Op::Cancel,
                    Op::Hangup,
                    Op::Inbox,
                    Op::Close,
                    Op::SockOpt,
                    Op::Readable,
                    Op::Writable,
                ] {
                    for conn in 0..=CONN_MAX {
                        let ud = UserData::new(slot, generation, op, ConnId(conn));
                        assert_eq!(ud.conn(), ConnId(conn));
                        assert_eq!((ud.slot(), ud.generation()), (slot, generation));
                        assert_eq!(ud.op(), Some(op));
                    }
                }
            }
        }
    }

    #[test]
    fn corrupt_op_is_none() {
        assert_eq!(UserData(0).op(), None);
        assert_eq!(UserData(0x7f).op(), None);
    }

    #[test]
    fn generation_wraps() {
        assert_eq!(next_generation(0), 1);
        assert_eq!(next_generation(GENERATION_MAX), 0);
    }
}
