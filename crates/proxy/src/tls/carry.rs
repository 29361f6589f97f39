//! A TLS connection that goes on in another process (a tunnel handed over in a binary
//! upgrade, `session/handoff.rs`): what it writes there ([`Tls::export`]), how the other
//! process takes it up ([`Tls::import`]), and what a tunnel that is not taken is sent
//! ([`seal_carried`]). The records' own state is `records/carried.rs`'s.

use rustls::kernel::KernelConnection;

use super::records::{self, Keys, Records};
use super::{Engine, Stage, State, Tls};

/// The longest server name a TLS state carries (a DNS name is at most 253 bytes).
const SNI_MAX: usize = 255;

/// The most [`Tls::export`] writes: which end, the records' state, how the handshake went, the
/// server name, and a record received but not complete.
pub const CARRIED_MAX: usize =
    1 + records::STATE_BYTES + 1 + 2 + SNI_MAX + 4 + 5 + records::CIPHER_MAX;

impl<E: Engine> Tls<E>
where
    KernelConnection<E::Data>: records::Kernel,
{
    /// Whether this connection's TLS can go on in another process as it stands (a tunnel
    /// handed over in a binary upgrade): open, its keys carried, nothing held back for a
    /// handshake, no close_notify either way, not HTTP/2.
    pub fn carriable(&self) -> bool {
        self.state == State::Open
            && self.held.is_empty()
            && !self.notified
            && matches!(&self.stage, Stage::Records(r) if r.kernel().carried() && !r.peer_closed())
    }

    /// What another process needs to go on with this connection's TLS ([`Tls::import`]): the
    /// records' keys and sequence numbers, the start of a record received but not complete,
    /// how the handshake went. `None` unless [`Tls::carriable`].
    pub fn export(&self) -> Option<Vec<u8>> {
        let Stage::Records(r) = &self.stage else {
            return None;
        };
        if !self.carriable() {
            return None;
        }
        let state = r.export()?;
        // (A server name is a DNS name: at most 253 bytes; a longer one is not logged there.)
        let sni = self
            .sni
            .as_deref()
            .filter(|s| s.len() <= SNI_MAX)
            .unwrap_or("")
            .as_bytes();
        let mut out = Vec::with_capacity(1 + state.len() + 3 + sni.len() + 4 + self.partial.len());
        out.push(u8::from(E::CLIENT));
        out.extend_from_slice(&state);
        // How the handshake went: resumed (bit 0), ALPN chose h2 (bit 1).
        out.push(u8::from(self.resumed) | u8::from(self.h2) << 1);
        out.extend_from_slice(&(sni.len() as u16).to_le_bytes());
        out.extend_from_slice(sni);
        out.extend_from_slice(&(self.partial.len() as u32).to_le_bytes());
        out.extend_from_slice(&self.partial);
        Some(out)
    }

    /// The TLS of a connection another process exported ([`Tls::export`]), for this end;
    /// every field is checked.
    pub fn import(b: &[u8]) -> Result<Tls<E>, String> {
        let cut = || "a TLS state cut short".to_string();
        let (&end, b) = b.split_first().ok_or_else(cut)?;
        if end != u8::from(E::CLIENT) {
            return Err("a TLS state of the other end".into());
        }
        let (state, b) = b.split_at_checked(records::STATE_BYTES).ok_or_else(cut)?;
        let records = Records::import(state)?;
        let (&how, b) = b.split_first().ok_or_else(cut)?;
        let (n, b) = b.split_at_checked(2).ok_or_else(cut)?;
        let (sni, b) = b
            .split_at_checked(usize::from(u16::from_le_bytes([n[0], n[1]])))
            .ok_or_else(cut)?;
        let sni = std::str::from_utf8(sni)
            .ok()
            .filter(|s| s.len() <= SNI_MAX)
            .ok_or("a bad server name")?;
        let (n, b) = b.split_at_checked(4).ok_or_else(cut)?;
        let n = u32::from_le_bytes(n.try_into().expect("4 bytes")) as usize;
        // What the records keep of a received record is less than one whole record.
        if n > 5 + records::CIPHER_MAX || n != b.len() || how > 3 {
            return Err("a bad TLS state".into());
        }
        Ok(Tls {
            stage: Stage::Records(Box::new(records)),
            state: State::Open,
            partial: b.to_vec(),
            shown: 0,
            held: Vec::new(),
            started: true,
            notified: false,
            sni: (!sni.is_empty()).then(|| sni.into()),
            resumed: how & 1 != 0,
            h2: how & 2 != 0,
            captured: None,
            by_client: None,
        })
    }
}

/// What to send on a TLS connection handed over by another process and not taken: `plain`
/// (may be empty) sealed under the records' state that [`Tls::export`] wrote in `carried`, then
/// close_notify. `None` when the state cannot be read.
pub fn seal_carried(carried: &[u8], plain: &[u8]) -> Option<Vec<u8>> {
    let state = carried.get(1..1 + records::STATE_BYTES)?;
    let mut r = Records::<Keys<rustls::server::ServerConnectionData>>::import(state).ok()?;
    let mut out = Vec::new();
    if !plain.is_empty() {
        r.seal(plain, &mut out).ok()?;
    }
    r.close_notify(&mut out).ok()?;
    Some(out)
}
