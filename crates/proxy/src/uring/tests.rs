use super::*;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;

fn ring() -> Option<Ring> {
    match probe() {
        Ok(_) => Some(
            Ring::new(RingConfig {
                sq_entries: 64,
                buffers: 16,
                buf_size: 4096,
            })
            .unwrap(),
        ),
        Err(e) => {
            eprintln!("skipping: {e}");
            None
        }
    }
}

/// A capped recv with plenty of data waiting brings exactly its buffers and ends (on a
/// kernel with the cap; a single recv brings one otherwise). What the budget rests on.
#[test]
fn capped_recv_brings_exactly_its_buffers() {
    let Some(mut r) = ring() else { return };
    eprintln!("multishot recv byte cap supported: {}", r.recv_cap());
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut c = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let (s, _) = l.accept().unwrap();
    c.write_all(&[7u8; 60_000]).unwrap();
    std::thread::sleep(Duration::from_millis(50));
    let ud = UserData::new(9, 1, Op::Recv, ConnId::UPSTREAM);
    r.recv_capped(s.as_raw_fd(), ud, 3);
    let want = if r.recv_cap() { 3 } else { 1 };
    let mut out = Vec::with_capacity(16);
    let mut got = Vec::new();
    for _ in 0..50 {
        r.submit_and_wait(Duration::from_millis(50)).unwrap();
        r.reap(&mut out);
        got.extend(out.iter().copied());
        if got.iter().any(|c| !c.more()) {
            break;
        }
    }
    assert_eq!(got.len(), want, "{got:?}");
    assert!(got.iter().all(|c| c.res == 4096), "{got:?}");
    assert!(
        !got.last().unwrap().more(),
        "the last completion ends the recv"
    );
    for c in &got {
        r.pool.release_of(c);
    }
}

#[test]
fn recv_into_pool_and_send_back() {
    let Some(mut r) = ring() else { return };
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut c = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let (s, _) = l.accept().unwrap();
    c.write_all(b"hello ring").unwrap();
    let ud = UserData::new(7, 3, Op::Recv, ConnId::CLIENT);
    r.recv_multi(s.as_raw_fd(), ud);
    let mut out = Vec::with_capacity(16);
    let (bid, n) = loop {
        r.submit_and_wait(Duration::from_millis(100)).unwrap();
        r.reap(&mut out);
        if let Some(c) = out.first() {
            assert_eq!(c.ud, ud);
            break (c.buf_id().unwrap(), c.res as u32);
        }
    };
    assert_eq!(r.pool.bytes(bid, n), b"hello ring");
    assert_eq!(r.pool.available(), 15);
    assert_eq!(r.pool.provided(), 16);
    let chunk = Chunk {
        src: Src::Pool(bid),
        off: 6,
        len: n - 6,
    };
    let sud = UserData::new(7, 3, Op::Send, ConnId::CLIENT);
    r.send(s.as_raw_fd(), chunk, sud);
    loop {
        r.submit_and_wait(Duration::from_millis(100)).unwrap();
        r.reap(&mut out);
        if let Some(c) = out.iter().find(|c| c.ud == sud) {
            assert_eq!(c.res, 4);
            break;
        }
    }
    r.send_done(chunk);
    r.pool.release(bid);
    assert_eq!(r.pool.available(), 16);
    let mut got = [0u8; 4];
    c.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"ring");
    // The multishot recv is still armed: drop must cancel and drain it.
    assert_eq!(r.inflight(), 1);
    drop(r);
}

#[test]
#[should_panic(expected = "wrong state")]
fn double_release_is_caught() {
    let Some(mut r) = ring() else {
        panic!("wrong state (no io_uring)")
    };
    r.pool.release(0);
}

/// A timed blocking read on the thread that called `probe` is not interrupted (EINTR) by
/// the probe rings' teardown. Fails without the probe's own thread (~1 EINTR per probe).
#[test]
fn probe_leaves_the_callers_timed_reads_alone() {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut c = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
    c.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let mut interrupted = 0;
    for _ in 0..5 {
        if probe().is_err() {
            return;
        }
        let t = std::time::Instant::now();
        while t.elapsed() < Duration::from_millis(150) {
            if let Err(e) = c.read(&mut [0u8; 8])
                && e.kind() == std::io::ErrorKind::Interrupted
            {
                interrupted += 1;
            }
        }
    }
    assert_eq!(interrupted, 0, "timed reads interrupted after probe()");
}

#[test]
fn nodelay_through_the_ring_is_set_before_the_connect_completes() {
    let Some(mut r) = ring() else { return };
    eprintln!("setsockopt through the ring supported: {}", r.sockopt_cmd());
    if !r.sockopt_cmd() {
        // This kernel cannot: `connect_socket` sets it by a syscall (checked below too).
        let fd = crate::sys::connect_socket("127.0.0.1:9".parse().unwrap(), None, true).unwrap();
        let s = super::socket_from_accepted(fd);
        assert!(s.tcp_nodelay().unwrap());
        return;
    }
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let to = l.local_addr().unwrap();
    let fd = crate::sys::connect_socket(to, None, false).unwrap();
    let s = super::socket_from_accepted(fd);
    assert!(!s.tcp_nodelay().unwrap(), "a bare socket starts without it");
    // As the reactor does: the option's SQE, then the connect's, in one submission.
    r.set_nodelay(fd);
    let ud = UserData::new(7, 1, Op::Connect, ConnId::UPSTREAM);
    r.connect(fd, to, ud);
    let mut cqes = Vec::with_capacity(8);
    let mut seen = (None, None);
    for _ in 0..50 {
        r.submit_and_wait(Duration::from_millis(100)).unwrap();
        r.reap(&mut cqes);
        for c in &cqes {
            match c.ud.op() {
                Some(Op::SockOpt) => seen.0 = Some(c.res),
                Some(Op::Connect) => {
                    // By the connect's completion the option is in place.
                    assert!(s.tcp_nodelay().unwrap());
                    seen.1 = Some(c.res);
                }
                _ => {}
            }
        }
        if seen.0.is_some() && seen.1.is_some() {
            break;
        }
    }
    assert_eq!(seen, (Some(0), Some(0)));
    assert!(s.tcp_nodelay().unwrap());
}
