//! How a request or a session ended, and the access-log line that says so.

use std::fmt;
use std::net::SocketAddr;

use super::Side;
use crate::sys::errno_name;

/// Why a request or session ended (the access log's last field).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum End {
    /// Response complete (HTTP) or both sides closed (tunnel).
    Done,
    /// The client closed or reset.
    ClientClosed,
    /// The upstream closed (tunnel) or closed before the response was complete.
    UpstreamClosed,
    /// Socket error, with errno.
    ClientError(i32),
    UpstreamError(i32),
    /// Not HTTP, or broken framing: 400.
    BadRequest(&'static str),
    /// Head (or one header line) over the limit: 431.
    HeadTooLarge,
    /// Request line over the limit: 414.
    UriTooLong,
    /// The request body stopped arriving for body_timeout: 408.
    BodyTimeout,
    /// An idle keep-alive connection reached keepalive_timeout (not logged, as in nginx).
    KeepaliveTimeout,
    /// No location matched: 404.
    NoRoute,
    /// Every server refused or timed out: 502.
    NoUpstream,
    /// The upstream's response could not be used: 502.
    BadResponse(&'static str),
    /// The upstream said nothing within read_timeout: 504.
    UpstreamTimeout,
    /// The client did not finish its head within header_timeout.
    HeaderTimeout,
    /// No bytes either way within read_timeout.
    IdleTimeout,
    /// A send made no progress within send_timeout.
    SendTimeout,
    /// The worker is stopping.
    Shutdown,
    /// Plain HTTP on a TLS listener: 400 in plain text (nginx's answer).
    PlainHttp,
    /// The client's TLS failed (handshake or record); the alert went out, no HTTP answer.
    ClientTls(&'static str),
    /// TLS with the upstream failed (a bad certificate, no common protocol): 502.
    UpstreamTls(&'static str),
    /// Over the location's `limit_conn` or `limit_req` (503 or the configured status).
    Limited,
    /// A heartbeat went unanswered: the client (or, with `upstream_interval`, the upstream)
    /// stayed silent past `heartbeat.timeout` after a ping.
    HeartbeatTimeout(Side),
    /// Shutdown: the proxy's Close went to the client and the close handshake completed.
    Drained,
    /// A WebSocket frame over the location's `max_frame_size` came from that side.
    FrameTooLarge(Side),
    /// A side sent a WebSocket message over the location's `max_message_size`.
    MessageTooLarge(Side),
    /// The client's messages went past the location's `message_rate` and its burst.
    MessageRate,
    /// A side's stream broke RFC 6455 in a tunnel whose location has a message policy (which
    /// could not be applied to it any more).
    BadFrame(Side),
    /// The tunnel reached its location's `max_lifetime` (its client told to reconnect).
    Lifetime,
    /// The tunnel was shed by a rebalance (its client told to reconnect elsewhere).
    Shed,
    /// The location's `auth_request` answered 401 or 403, which went to the client.
    AuthDenied,
    /// The location's `auth_request` could not say (no server, a timeout, an answer other
    /// than 2xx, 401, 403): 500, as nginx answers.
    AuthFailed(&'static str),
}

impl fmt::Display for End {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            End::Done => write!(f, "done"),
            End::ClientClosed => write!(f, "client-closed"),
            End::UpstreamClosed => write!(f, "upstream-closed"),
            End::ClientError(e) => write!(f, "client-error:{}", errno_name(*e)),
            End::UpstreamError(e) => write!(f, "upstream-error:{}", errno_name(*e)),
            End::BadRequest(why) => write!(f, "bad-request:{}", Dashed(why)),
            End::HeadTooLarge => write!(f, "head-too-large"),
            End::UriTooLong => write!(f, "uri-too-long"),
            End::BodyTimeout => write!(f, "body-timeout"),
            End::KeepaliveTimeout => write!(f, "keepalive-timeout"),
            End::NoRoute => write!(f, "no-route"),
            End::NoUpstream => write!(f, "no-upstream"),
            End::BadResponse(why) => write!(f, "bad-response:{}", Dashed(why)),
            End::UpstreamTimeout => write!(f, "upstream-timeout"),
            End::HeaderTimeout => write!(f, "header-timeout"),
            End::IdleTimeout => write!(f, "idle-timeout"),
            End::SendTimeout => write!(f, "send-timeout"),
            End::Shutdown => write!(f, "shutdown"),
            End::PlainHttp => write!(f, "plain-http"),
            End::ClientTls(why) => write!(f, "client-tls:{why}"),
            End::UpstreamTls(why) => write!(f, "upstream-tls:{why}"),
            End::Limited => write!(f, "limited"),
            End::HeartbeatTimeout(Side::Down) => write!(f, "heartbeat-timeout"),
            End::HeartbeatTimeout(Side::Up) => write!(f, "heartbeat-timeout:upstream"),
            End::Drained => write!(f, "drained"),
            End::FrameTooLarge(Side::Down) => write!(f, "frame-too-large"),
            End::FrameTooLarge(Side::Up) => write!(f, "frame-too-large:upstream"),
            End::MessageTooLarge(Side::Down) => write!(f, "message-too-large"),
            End::MessageTooLarge(Side::Up) => write!(f, "message-too-large:upstream"),
            End::MessageRate => write!(f, "message-rate"),
            End::BadFrame(Side::Down) => write!(f, "bad-frame"),
            End::BadFrame(Side::Up) => write!(f, "bad-frame:upstream"),
            End::Lifetime => write!(f, "lifetime"),
            End::Shed => write!(f, "shed"),
            End::AuthDenied => write!(f, "auth-denied"),
            End::AuthFailed(why) => write!(f, "auth-failed:{why}"),
        }
    }
}

/// A reason with its spaces written as dashes (one word in the log's `end=` field), without
/// allocating.
struct Dashed(&'static str);

impl fmt::Display for Dashed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, word) in self.0.split(' ').enumerate() {
            if i > 0 {
                f.write_str("-")?;
            }
            f.write_str(word)?;
        }
        Ok(())
    }
}

/// One access-log line.
#[derive(Debug)]
pub struct AccessLog<'a> {
    pub client: SocketAddr,
    pub method: &'a str,
    pub host: &'a str,
    pub path: &'a str,
    pub upstream: Option<SocketAddr>,
    pub status: u16,
    pub duration_ms: u64,
    /// Bytes from the client.
    pub bytes_in: u64,
    /// Bytes from the upstream.
    pub bytes_out: u64,
    pub end: End,
    pub tunnel: bool,
    /// The request came as an HTTP/2 stream.
    pub h2: bool,
    /// The client connection's TLS (version, cipher, SNI), on a TLS listener.
    pub tls: Option<crate::tls::Info<'a>>,
    /// A tunnel's record of its messages, at its end.
    pub messages: Option<TunnelLog<'a>>,
    /// The line is written (`runtime.access_log`; it is counted either way).
    pub write: bool,
}

/// What a tunnel's log line says of its messages: how many each way (from the client, from
/// the upstream), the Close frame each side sent, who closed first. Read from the tunnel's
/// record when the line is written (nothing is decoded when the access log is off).
#[derive(Clone, Copy, Debug)]
pub struct TunnelLog<'a>(pub(super) &'a super::tunnel::Seen);

impl TunnelLog<'_> {
    /// Messages from the client, from the upstream.
    pub fn messages(&self) -> [u64; 2] {
        self.0.messages()
    }

    /// The Close the client (0) or the upstream (1) sent, if one came.
    pub fn close(&self, i: usize) -> Option<super::tunnel::CloseSeen> {
        self.0.close_of(i)
    }

    /// Who sent the first Close: `client`, `upstream`, `proxy` or `-`.
    pub fn closer(&self) -> &'static str {
        self.0.closer().name()
    }
}

/// A short reason for a TLS failure (the log's `end=client-tls:REASON`).
pub fn tls_reason(e: &rustls::Error) -> &'static str {
    use rustls::Error as E;
    match e {
        E::InvalidMessage(_) => "bad-message",
        E::PeerIncompatible(_) => "incompatible",
        E::PeerMisbehaved(_) => "misbehaved",
        E::AlertReceived(_) => "alert",
        E::NoCertificatesPresented => "no-certificate",
        E::InvalidCertificate(_) => "bad-certificate",
        E::DecryptError => "decrypt",
        E::NoApplicationProtocol => "no-alpn",
        E::General(_) => "general",
        _ => "handshake",
    }
}

impl End {
    /// Which side's socket ended it, when a socket did.
    pub fn side(&self) -> Option<Side> {
        match self {
            End::ClientClosed | End::ClientError(_) => Some(Side::Down),
            End::UpstreamClosed | End::UpstreamError(_) => Some(Side::Up),
            End::HeartbeatTimeout(side)
            | End::FrameTooLarge(side)
            | End::MessageTooLarge(side)
            | End::BadFrame(side) => Some(*side),
            End::MessageRate => Some(Side::Down),
            _ => None,
        }
    }

    /// The socket's errno, when one ended it.
    pub fn errno(&self) -> Option<i32> {
        match self {
            End::ClientError(e) | End::UpstreamError(e) => Some(*e),
            _ => None,
        }
    }

    /// A short name per kind, without the errno or reason (a metrics label).
    pub fn kind(&self) -> &'static str {
        End::KIND_NAMES[self.index()]
    }

    /// The kind names, by [`End::index`].
    pub const KIND_NAMES: [&'static str; End::KINDS] = [
        "done",
        "client-closed",
        "upstream-closed",
        "client-error",
        "upstream-error",
        "bad-request",
        "head-too-large",
        "uri-too-long",
        "body-timeout",
        "keepalive-timeout",
        "no-route",
        "no-upstream",
        "bad-response",
        "upstream-timeout",
        "header-timeout",
        "idle-timeout",
        "send-timeout",
        "shutdown",
        "plain-http",
        "client-tls",
        "upstream-tls",
        "limited",
        "heartbeat-timeout",
        "drained",
        "frame-too-large",
        "message-too-large",
        "message-rate",
        "bad-frame",
        "lifetime",
        "shed",
        "auth-denied",
        "auth-failed",
    ];

    /// Every kind, in the order of [`End::index`] (for per-kind counters).
    pub const KINDS: usize = 32;

    /// A dense index per kind, below [`End::KINDS`].
    pub fn index(&self) -> usize {
        match self {
            End::Done => 0,
            End::ClientClosed => 1,
            End::UpstreamClosed => 2,
            End::ClientError(_) => 3,
            End::UpstreamError(_) => 4,
            End::BadRequest(_) => 5,
            End::HeadTooLarge => 6,
            End::UriTooLong => 7,
            End::BodyTimeout => 8,
            End::KeepaliveTimeout => 9,
            End::NoRoute => 10,
            End::NoUpstream => 11,
            End::BadResponse(_) => 12,
            End::UpstreamTimeout => 13,
            End::HeaderTimeout => 14,
            End::IdleTimeout => 15,
            End::SendTimeout => 16,
            End::Shutdown => 17,
            End::PlainHttp => 18,
            End::ClientTls(_) => 19,
            End::UpstreamTls(_) => 20,
            End::Limited => 21,
            End::HeartbeatTimeout(_) => 22,
            End::Drained => 23,
            End::FrameTooLarge(_) => 24,
            End::MessageTooLarge(_) => 25,
            End::MessageRate => 26,
            End::BadFrame(_) => 27,
            End::Lifetime => 28,
            End::Shed => 29,
            End::AuthDenied => 30,
            End::AuthFailed(_) => 31,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_end_says_its_kind_side_and_errno() {
        let all = [
            End::Done,
            End::ClientClosed,
            End::UpstreamClosed,
            End::ClientError(libc::ECONNRESET),
            End::UpstreamError(libc::ETIMEDOUT),
            End::BadRequest("bad head"),
            End::HeadTooLarge,
            End::UriTooLong,
            End::BodyTimeout,
            End::KeepaliveTimeout,
            End::NoRoute,
            End::NoUpstream,
            End::BadResponse("bad head"),
            End::UpstreamTimeout,
            End::HeaderTimeout,
            End::IdleTimeout,
            End::SendTimeout,
            End::Shutdown,
            End::PlainHttp,
            End::ClientTls("bad-record"),
            End::UpstreamTls("bad-certificate"),
            End::Limited,
            End::HeartbeatTimeout(Side::Up),
            End::Drained,
            End::FrameTooLarge(Side::Down),
            End::MessageTooLarge(Side::Up),
            End::MessageRate,
            End::BadFrame(Side::Down),
            End::Lifetime,
            End::Shed,
            End::AuthDenied,
            End::AuthFailed("timeout"),
        ];
        assert_eq!(all.len(), End::KINDS);
        for (i, e) in all.iter().enumerate() {
            assert_eq!(e.index(), i);
            // The log's `end=` field starts with the metrics label.
            assert!(e.to_string().starts_with(e.kind()), "{e} vs {}", e.kind());
        }
        assert_eq!(End::ClientError(libc::ECONNRESET).side(), Some(Side::Down));
        assert_eq!(End::UpstreamError(libc::ETIMEDOUT).side(), Some(Side::Up));
        assert_eq!(
            End::UpstreamError(libc::ETIMEDOUT).errno(),
            Some(libc::ETIMEDOUT)
        );
        assert_eq!(End::NoRoute.side(), None);
        assert_eq!(
            End::BadResponse("101 before the request body was complete").to_string(),
            "bad-response:101-before-the-request-body-was-complete"
        );
    }
}
