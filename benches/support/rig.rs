//! A session driven through its public events with effects as lean as the worker's (pool
//! buffers in a vector, no ring): what the proxy's own code spends on one message of a
//! tunnel, with the kernel's share left out.

use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::sync::Arc;

use ringway_proxy::config::Config;
use ringway_proxy::reactor::{Pipe, Sys};
use ringway_proxy::session::{AccessLog, Env, Io, Kit, Next, Observed, Session};
use ringway_proxy::upstream::Balancers;
use ringway_proxy::uring::{Chunk, ConnId, Op, Src};

const CONNS: usize = 2;
const CLIENT_FD: RawFd = 100;
const UPSTREAM_FD: RawFd = 101;

/// The session's effects: buffers by id, one send in flight per connection, the armed recvs.
#[derive(Default)]
struct Effects {
    now: u64,
    bufs: Vec<Vec<u8>>,
    free: Vec<u16>,
    heap: Vec<Option<Vec<u8>>>,
    sending: [Option<Chunk>; CONNS],
    /// Buffers the armed recv may still bring (none armed: 0).
    recv_left: [u32; CONNS],
    connecting: bool,
}

impl Sys for Effects {
    fn now_ms(&self) -> u64 {
        self.now
    }
    fn data(&self, bid: u16, len: u32) -> &[u8] {
        &self.bufs[usize::from(bid)][..len as usize]
    }
    fn data_mut(&mut self, bid: u16, len: u32) -> &mut [u8] {
        &mut self.bufs[usize::from(bid)][..len as usize]
    }
    fn heap(&self, id: u32) -> &[u8] {
        self.heap[id as usize].as_deref().expect("live heap bytes")
    }
    fn recycle(&mut self, _v: Vec<u8>) {}
    fn scratch(&mut self) -> Vec<u8> {
        Vec::new()
    }
    fn put(&mut self, bytes: Vec<u8>) -> Chunk {
        let len = bytes.len() as u32;
        let id = match self.heap.iter().position(Option::is_none) {
            Some(i) => {
                self.heap[i] = Some(bytes);
                i
            }
            None => {
                self.heap.push(Some(bytes));
                self.heap.len() - 1
            }
        };
        Chunk {
            src: Src::Heap(id as u32),
            off: 0,
            len,
        }
    }
    fn release(&mut self, c: Chunk) {
        match c.src {
            Src::Pool(b) => self.free.push(b),
            Src::Heap(h) => self.heap[h as usize] = None,
        }
    }
    fn sent(&mut self, _c: Chunk) {}
    fn recv(&mut self, _fd: RawFd, id: ConnId, buffers: u32) {
        assert_eq!(self.recv_left[usize::from(id.0)], 0, "two recvs on {id:?}");
        self.recv_left[usize::from(id.0)] = buffers;
    }
    fn pool_low(&self) -> bool {
        false
    }
    fn watch_hangup(&mut self, _fd: RawFd, _id: ConnId) {}
    fn cancel(&mut self, id: ConnId, op: Op) {
        panic!("a cancel of {op:?} on {id:?}: the tunnel left its steady state");
    }
    fn send(&mut self, _fd: RawFd, id: ConnId, c: Chunk) {
        assert!(self.sending[usize::from(id.0)].replace(c).is_none());
    }
    fn connect(
        &mut self,
        _addr: SocketAddr,
        _source: Option<std::net::IpAddr>,
        _id: ConnId,
    ) -> Result<RawFd, i32> {
        self.connecting = true;
        Ok(UPSTREAM_FD)
    }
    fn shutdown(&mut self, _fd: RawFd) {}
    fn close(&mut self, _fd: RawFd) {}
    fn send_now(&mut self, _fd: RawFd, _bytes: &[u8]) -> bool {
        true
    }
    fn park(&mut self, _id: ConnId) {}
    // The rig's messages are far below `runtime.splice_min`, and it has no pipes: a tunnel
    // here never splices.
    fn watch_ready(&mut self, _fd: RawFd, _id: ConnId, _write: bool) {}
    fn splice(&mut self, _from: RawFd, _to: RawFd, _len: u32) -> Result<u32, i32> {
        Err(38) // ENOSYS
    }
    fn pipe(&mut self) -> Option<Pipe> {
        None
    }
    fn pipe_back(&mut self, _p: Pipe) {}
    fn nonblocking(&mut self, _fd: RawFd) -> bool {
        true
    }
    fn socketpair(&mut self) -> Result<(RawFd, RawFd), i32> {
        Err(24) // EMFILE: the rig runs HTTP/1 only.
    }
}

impl Io for Effects {
    fn log(&mut self, _line: &AccessLog) {}
    fn observe(&mut self, _what: Observed) {}
    fn as_dyn(&mut self) -> &mut dyn Io {
        self
    }
}

/// One session in its tunnel, and what it runs against.
pub struct Tunnel {
    s: Session,
    fx: Effects,
    kit: Kit,
}

const CFG: &str = r#"
[[upstream]]
name = "echo"
servers = [{ addr = "127.0.0.1:9000" }]
[[server]]
listen = ["127.0.0.1:8080"]
[[server.location]]
path = "/"
upstream = "echo"
"#;

impl Tunnel {
    /// A session taken through `request` and the backend's `response` (a 101) by its events.
    pub fn open(request: &[u8], response: &[u8]) -> Tunnel {
        let cfg = Arc::new(Config::parse("bench.toml", CFG).expect("the bench's config"));
        let client = "10.1.2.3:5555".parse().unwrap();
        let s = Session::new(CLIENT_FD, client, cfg.listen[0], cfg.clone(), 0);
        let mut t = Tunnel {
            s,
            fx: Effects::default(),
            kit: Kit::new(Balancers::new(&cfg)),
        };
        t.s.start(&mut t.fx, &mut Env::new(&mut t.kit, false));
        t.deliver(ConnId::CLIENT, request);
        assert!(t.fx.connecting, "the request did not connect upstream");
        let mut env = Env::new(&mut t.kit, false);
        let next = t.s.on_connect(ConnId::UPSTREAM, 0, &mut t.fx, &mut env);
        assert_eq!(next, Next::Continue);
        t.complete_send(ConnId::UPSTREAM);
        t.deliver(ConnId::UPSTREAM, response);
        t.complete_send(ConnId::CLIENT);
        t
    }

    /// `bytes` arrive on `id`, in a pool buffer, through its armed recv.
    pub fn deliver(&mut self, id: ConnId, bytes: &[u8]) {
        let i = usize::from(id.0);
        assert!(self.fx.recv_left[i] > 0, "no recv armed on {id:?}");
        self.fx.recv_left[i] -= 1;
        let more = self.fx.recv_left[i] > 0;
        let bid = match self.fx.free.pop() {
            Some(b) => b,
            None => {
                self.fx.bufs.push(vec![0; 16 * 1024]);
                (self.fx.bufs.len() - 1) as u16
            }
        };
        self.fx.bufs[usize::from(bid)][..bytes.len()].copy_from_slice(bytes);
        let mut env = Env::new(&mut self.kit, false);
        let next = self.s.on_recv(
            id,
            bytes.len() as i32,
            more,
            Some(bid),
            &mut self.fx,
            &mut env,
        );
        assert_eq!(next, Next::Continue);
    }

    /// The send in flight on `id` completes whole.
    pub fn complete_send(&mut self, id: ConnId) {
        let c = self.fx.sending[usize::from(id.0)]
            .take()
            .expect("a send in flight");
        let mut env = Env::new(&mut self.kit, false);
        let next = self.s.on_send(id, c.len as i32, &mut self.fx, &mut env);
        assert_eq!(next, Next::Continue);
    }

    /// One message each way, as the proxy sees an echoed message: the client's frame arrives
    /// and goes up, the backend's echo arrives and goes down, each send completes.
    pub fn round_trip(&mut self, up: &[u8], down: &[u8]) {
        self.fx.now += 1;
        self.deliver(ConnId::CLIENT, up);
        self.complete_send(ConnId::UPSTREAM);
        self.deliver(ConnId::UPSTREAM, down);
        self.complete_send(ConnId::CLIENT);
    }
}
