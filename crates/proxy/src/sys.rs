//! What the process asks of the operating system, once for the proxy and its tools: sockets
//! (listening, connecting from a source address, taking an accepted fd), the fd limit, the
//! signal mask, errno names, and source-address blocks.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::fd::RawFd;

use nix::sys::signal::{SigSet, Signal};
use socket2::{Domain, Protocol, Socket, Type};

/// A short name for the errnos sockets end with.
pub fn errno_name(e: i32) -> String {
    match e {
        libc::ECONNRESET => "ECONNRESET".into(),
        libc::EPIPE => "EPIPE".into(),
        libc::ECONNREFUSED => "ECONNREFUSED".into(),
        libc::ETIMEDOUT => "ETIMEDOUT".into(),
        libc::ECANCELED => "ECANCELED".into(),
        libc::EHOSTUNREACH => "EHOSTUNREACH".into(),
        libc::ENETUNREACH => "ENETUNREACH".into(),
        libc::EADDRNOTAVAIL => "EADDRNOTAVAIL".into(),
        libc::EMFILE => "EMFILE".into(),
        libc::ENFILE => "ENFILE".into(),
        libc::ENOBUFS => "ENOBUFS".into(),
        e => format!("errno{e}"),
    }
}

/// The errno of an I/O error (EIO when it carries none).
pub fn errno_of(e: &std::io::Error) -> i32 {
    e.raw_os_error().unwrap_or(libc::EIO)
}

/// A listening socket opened with SO_REUSEPORT, so each worker (and each process on the same
/// port) gets its own accept queue and the kernel spreads connections; with TCP_NODELAY (see
/// [`listening`]).
pub fn listen_socket(addr: SocketAddr, backlog: i32) -> std::io::Result<Socket> {
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    s.set_reuse_address(true)?;
    s.set_reuse_port(true)?;
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    s.bind(&addr.into())?;
    s.listen(backlog)?;
    listening(&s);
    Ok(s)
}

/// Ready a listening socket, ours or handed over (by an older ringway, or systemd): TCP_NODELAY
/// on it, which Linux copies into every connection it accepts, so an accept costs no
/// setsockopt of its own.
pub fn listening(s: &Socket) {
    let _ = s.set_tcp_nodelay(true);
}

/// A TCP socket for connecting to `to` (with TCP_NODELAY when `nodelay`: else the caller sets
/// it), bound to `source` when given. The port is left to connect, per destination
/// (IP_BIND_ADDRESS_NO_PORT), instead of bind reserving one across every destination: what
/// lets one source address carry more than the ephemeral range of connections. The errno when
/// the socket cannot be made or bound.
pub fn connect_socket(to: SocketAddr, source: Option<IpAddr>, nodelay: bool) -> Result<RawFd, i32> {
    use std::os::fd::IntoRawFd;
    let sock = Socket::new(Domain::for_address(to), Type::STREAM, Some(Protocol::TCP))
        .map_err(|e| errno_of(&e))?;
    if let Some(src) = source {
        let _ = nix::sys::socket::setsockopt(
            &sock,
            nix::sys::socket::sockopt::IpBindAddressNoPort,
            &true,
        );
        sock.bind(&SocketAddr::new(src, 0).into())
            .map_err(|e| errno_of(&e))?;
    }
    if nodelay {
        let _ = sock.set_tcp_nodelay(true);
    }
    Ok(sock.into_raw_fd())
}

/// A connected pair of local stream sockets (close-on-exec): an HTTP/2 stream's way into the
/// inner HTTP/1 session that carries it. The errno when none can be made.
pub fn socketpair() -> Result<(RawFd, RawFd), i32> {
    use nix::sys::socket::{AddressFamily, SockFlag, SockType};
    use std::os::fd::IntoRawFd;
    let (a, b) = nix::sys::socket::socketpair(
        AddressFamily::Unix,
        SockType::Stream,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .map_err(|e| e as i32)?;
    Ok((a.into_raw_fd(), b.into_raw_fd()))
}

/// Take an fd returned by an accept completion, with the peer's address. (TCP_NODELAY came
/// with it from the listening socket: [`listening`].)
pub fn accepted(fd: RawFd) -> (RawFd, SocketAddr) {
    use std::os::fd::IntoRawFd;
    let sock = crate::uring::socket_from_accepted(fd);
    let peer = sock
        .peer_addr()
        .ok()
        .and_then(|a| a.as_socket())
        .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)));
    (sock.into_raw_fd(), peer)
}

/// The address a connected socket's peer has (its TCP peer, whatever a PROXY header said).
pub fn peer_of(fd: RawFd) -> Option<SocketAddr> {
    let a: nix::sys::socket::SockaddrStorage = nix::sys::socket::getpeername(fd).ok()?;
    sockaddr(&a)
}

/// The local address of a connected socket (what the client connected to).
pub fn local_of(fd: RawFd) -> Option<SocketAddr> {
    let a: nix::sys::socket::SockaddrStorage = nix::sys::socket::getsockname(fd).ok()?;
    sockaddr(&a)
}

pub fn sockaddr(a: &nix::sys::socket::SockaddrStorage) -> Option<SocketAddr> {
    if let Some(v4) = a.as_sockaddr_in() {
        return Some(SocketAddr::from(std::net::SocketAddrV4::from(*v4)));
    }
    a.as_sockaddr_in6()
        .map(|v6| SocketAddr::from(std::net::SocketAddrV6::from(*v6)))
}

/// Raise RLIMIT_NOFILE to `want`: the soft limit up to the hard one, and the hard one too (up
/// to fs.nr_open) when the process may (CAP_SYS_RESOURCE). Returns the new soft limit.
pub fn raise_nofile(want: u64) -> u64 {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return 1024;
    };
    if want > hard {
        // Root with CAP_SYS_RESOURCE may raise the hard limit as well, up to fs.nr_open.
        let nr_open = std::fs::read_to_string("/proc/sys/fs/nr_open")
            .ok()
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(hard);
        let target = want.min(nr_open);
        if target > hard && setrlimit(Resource::RLIMIT_NOFILE, target, target).is_ok() {
            return target;
        }
    }
    let target = want.min(hard).max(soft);
    if target > soft && setrlimit(Resource::RLIMIT_NOFILE, target, hard).is_ok() {
        return target;
    }
    soft
}

/// Block the signals the main thread waits for, before any thread is spawned (threads inherit
/// the mask, so only `sigwait` sees them).
pub fn block_signals() -> SigSet {
    let mut set = SigSet::empty();
    set.add(Signal::SIGINT);
    set.add(Signal::SIGTERM);
    set.add(Signal::SIGHUP);
    let _ = set.thread_block();
    // Sends use MSG_NOSIGNAL, so a peer closing under a send cannot raise SIGPIPE; block it as
    // well for anything else that writes to a socket.
    let mut pipe = SigSet::empty();
    pipe.add(Signal::SIGPIPE);
    let _ = pipe.thread_block();
    set
}

/// The addresses of `s`: one IP (v4 or v6), or the hosts of an IPv4 CIDR such as
/// `127.0.1.0/24` with a prefix of `min_prefix` to 32 (network and broadcast addresses skipped
/// when the block has more than two). The message names what was wrong.
pub fn source_addresses(s: &str, min_prefix: u32) -> Result<Vec<IpAddr>, String> {
    let Some((ip, bits)) = s.split_once('/') else {
        return s.trim().parse::<IpAddr>().map(|a| vec![a]).map_err(|_| {
            format!(
                "invalid source {s:?}: expected an IP address or an IPv4 CIDR such as \"127.0.1.0/24\""
            )
        });
    };
    let ip: Ipv4Addr = ip.trim().parse().map_err(|_| {
        format!("invalid source {s:?}: a CIDR block must be IPv4, such as \"127.0.1.0/24\"")
    })?;
    let bits: u32 = bits
        .trim()
        .parse()
        .ok()
        .filter(|b| (min_prefix..=32).contains(b))
        .ok_or_else(|| format!("invalid source {s:?}: prefix length must be {min_prefix} to 32"))?;
    let size = 1u64 << (32 - bits);
    let base = u32::from(ip) & u32::MAX.checked_shl(32 - bits).unwrap_or(0);
    let (first, last) = if size > 2 { (1, size - 1) } else { (0, size) };
    Ok((first..last)
        .map(|i| IpAddr::V4(Ipv4Addr::from(base + i as u32)))
        .collect())
}

/// The bytes of a regular file of at most `max` bytes. Opened without blocking
/// (`O_NONBLOCK`, `O_NOCTTY`), so a FIFO, a device or a terminal named by mistake is refused at
/// once instead of hanging `check`, `run` or `reload` in `open`.
pub fn read_bounded_bytes(path: &std::path::Path, max: u64) -> Result<Vec<u8>, String> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(|e| format!("cannot read: {e}"))?;
    let meta = f.metadata().map_err(|e| format!("cannot read: {e}"))?;
    if !meta.is_file() {
        return Err(format!("not a regular file ({})", file_kind(&meta)));
    }
    if meta.len() > max {
        return Err(format!(
            "file is {} bytes, larger than {max} bytes: not a configuration",
            meta.len()
        ));
    }
    let mut bytes = Vec::new();
    f.take(max + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read: {e}"))?;
    if bytes.len() as u64 > max {
        return Err(format!("file grew past {max} bytes while being read"));
    }
    Ok(bytes)
}

/// What kind of file a non-regular file is, for messages.
fn file_kind(meta: &std::fs::Metadata) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    let t = meta.file_type();
    if t.is_dir() {
        "a directory"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_socket() {
        "a socket"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_block_device() {
        "a block device"
    } else {
        "not a file"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The accept path sets no TCP_NODELAY of its own: it relies on Linux copying the
    /// listening socket's into each accepted connection.
    #[test]
    fn accepted_connections_inherit_nodelay_from_the_listener() {
        let l = listen_socket("127.0.0.1:0".parse().unwrap(), 16).unwrap();
        let addr = l.local_addr().unwrap().as_socket().unwrap();
        let _c = std::net::TcpStream::connect(addr).unwrap();
        let (a, _) = l.accept().unwrap();
        assert!(
            a.tcp_nodelay().unwrap(),
            "the accepted socket has TCP_NODELAY"
        );
        // And without it on the listener, it would not: the test can tell.
        let plain = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP)).unwrap();
        plain
            .bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
            .unwrap();
        plain.listen(16).unwrap();
        let addr = plain.local_addr().unwrap().as_socket().unwrap();
        let _c = std::net::TcpStream::connect(addr).unwrap();
        let (a, _) = plain.accept().unwrap();
        assert!(!a.tcp_nodelay().unwrap());
    }

    #[test]
    fn source_blocks() {
        let s = source_addresses("127.0.0.0/30", 16).unwrap();
        assert_eq!(s.len(), 2);
        assert_eq!(s[0], "127.0.0.1".parse::<IpAddr>().unwrap());
        assert_eq!(source_addresses("127.0.0.0/16", 16).unwrap().len(), 65534);
        assert_eq!(source_addresses("127.0.0.9/32", 16).unwrap().len(), 1);
        assert_eq!(source_addresses("::1", 16).unwrap().len(), 1);
        assert!(source_addresses("127.0.0.0/33", 0).is_err());
        assert!(
            source_addresses("127.0.0.0/8", 16)
                .unwrap_err()
                .contains("16 to 32")
        );
        assert!(source_addresses("::1/64", 0).is_err());
    }
}
