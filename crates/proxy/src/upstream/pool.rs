//! Upstream keepalive (nginx's `keepalive` with `proxy_http_version 1.1`): the idle
//! connections one worker keeps toward its upstreams' servers for plain HTTP requests, plain
//! or TLS (a TLS connection keeps its records state with it).
//!
//! A connection enters the pool only after a whole response on it, with the request sent
//! whole, no op of it in flight and nothing unread; at most `keepalive` per upstream (the
//! oldest goes when a newer comes), each until `keepalive_timeout`. Before one is used it is
//! asked, without blocking, whether the backend closed it or sent something unasked
//! (`recv(MSG_PEEK | MSG_DONTWAIT)`): then it is closed and the next is tried. WebSocket
//! tunnels never enter it.

use std::net::SocketAddr;
use std::os::fd::RawFd;

use crate::config::Upstream;
use crate::tls::Transport;

/// One idle connection.
#[derive(Debug)]
struct Idle {
    /// The upstream (by name) whose `keepalive` it counts against.
    upstream: Box<str>,
    addr: SocketAddr,
    conn: Transport,
    expires_ms: u64,
    /// Requests it has carried.
    served: u32,
}

/// A worker's idle upstream connections.
#[derive(Debug, Default)]
pub struct Pool {
    idle: Vec<Idle>,
}

/// What `take` found: the connection and the requests it carried.
#[derive(Debug)]
pub struct Kept {
    pub conn: Transport,
    pub served: u32,
}

#[cfg(test)]
fn close(fd: RawFd) {
    let _ = nix::unistd::close(fd);
}

/// Whether an idle socket is still open with nothing unread: `recv` peeks without blocking.
fn alive(fd: RawFd) -> bool {
    use nix::sys::socket::{MsgFlags, recv};
    let mut b = [0u8; 1];
    matches!(
        recv(fd, &mut b, MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT),
        Err(nix::errno::Errno::EAGAIN)
    )
}

impl Pool {
    /// Keep `conn` (to `addr`, of upstream `u`, after `served` requests) until `u`'s
    /// `keepalive_timeout` from `now_ms`; `u`'s oldest idle connection goes when it has
    /// `keepalive` already.
    pub fn put(
        &mut self,
        u: &Upstream,
        addr: SocketAddr,
        conn: Transport,
        served: u32,
        now_ms: u64,
    ) {
        let cap = u.keepalive;
        if cap == 0 {
            conn.close_idle();
            return;
        }
        let full = self
            .idle
            .iter()
            .filter(|i| *i.upstream == *u.name)
            .nth(cap as usize - 1)
            .is_some();
        if full && let Some(oldest) = self.idle.iter().position(|i| *i.upstream == *u.name) {
            self.idle.remove(oldest).conn.close_idle();
        }
        self.idle.push(Idle {
            upstream: u.name.as_str().into(),
            addr,
            conn,
            expires_ms: now_ms + u.keepalive_timeout.as_millis() as u64,
            served,
        });
    }

    /// The most recently kept live connection of `upstream` to `addr`, if any (dead ones met
    /// on the way are closed).
    pub fn take(&mut self, upstream: &str, addr: SocketAddr, now_ms: u64) -> Option<Kept> {
        while let Some(i) = self
            .idle
            .iter()
            .rposition(|i| i.addr == addr && &*i.upstream == upstream)
        {
            let idle = self.idle.remove(i);
            if idle.expires_ms > now_ms && alive(idle.conn.fd()) {
                return Some(Kept {
                    conn: idle.conn,
                    served: idle.served,
                });
            }
            idle.conn.close_idle();
        }
        None
    }

    /// Close the connections idle past their `keepalive_timeout`.
    pub fn prune(&mut self, now_ms: u64) {
        let mut i = 0;
        while i < self.idle.len() {
            if self.idle[i].expires_ms > now_ms {
                i += 1;
            } else {
                self.idle.remove(i).conn.close_idle();
            }
        }
    }

    /// Idle connections kept now.
    pub fn len(&self) -> usize {
        self.idle.len()
    }

    pub fn is_empty(&self) -> bool {
        self.idle.is_empty()
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        for i in self.idle.drain(..) {
            i.conn.close_idle();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::fd::IntoRawFd;

    fn upstream(cap: u32) -> Upstream {
        Upstream {
            name: "u".into(),
            balance: crate::config::Balance::RoundRobin,
            peers: Vec::new(),
            source: Vec::new(),
            tls: None,
            health_check: None,
            keepalive: cap,
            keepalive_timeout: std::time::Duration::from_secs(1),
            keepalive_requests: 1000,
            proxy_protocol: false,
        }
    }

    fn pair() -> (std::net::TcpStream, RawFd, SocketAddr) {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let c = std::net::TcpStream::connect(addr).unwrap();
        let (s, _) = l.accept().unwrap();
        (s, c.into_raw_fd(), addr)
    }

    #[test]
    fn closed_or_chatty_connections_are_not_reused_and_the_cap_holds() {
        let mut p = Pool::default();
        let u = upstream(2);
        let (server_a, a, addr_a) = pair();
        let (_server_b, b, addr_b) = pair();
        p.put(&u, addr_a, Transport::plain(a), 3, 0);
        p.put(&u, addr_b, Transport::plain(b), 1, 0);
        let kept = p.take("u", addr_b, 10).unwrap();
        assert_eq!((kept.conn.fd(), kept.served), (b, 1));
        close(b);
        // The backend closed a: found dead, closed, not handed out.
        drop(server_a);
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert!(p.take("u", addr_a, 10).is_none());
        assert!(p.is_empty());
        // A connection with bytes nobody asked for is not reused either.
        let (mut server_c, c, addr_c) = pair();
        p.put(&u, addr_c, Transport::plain(c), 0, 0);
        server_c.write_all(b"HTTP/1.1 200 OK\r\n\r\n").unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert!(p.take("u", addr_c, 10).is_none());
        // Three for a cap of two: the oldest goes; expiry closes the rest.
        let conns: Vec<_> = (0..3).map(|_| pair()).collect();
        for (i, (_, fd, addr)) in conns.iter().enumerate() {
            p.put(&u, *addr, Transport::plain(*fd), 0, i as u64);
        }
        assert_eq!(p.len(), 2);
        assert!(
            p.take("u", conns[0].2, 10).is_none(),
            "the oldest was closed"
        );
        p.prune(5000);
        assert!(p.is_empty());
    }
}
