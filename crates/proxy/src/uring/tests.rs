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

/// The kernel's side of a provided-buffer ring, for tests of the pool alone: take the buffer
/// at the ring's head and write into it, as a recv would.
fn kernel_take(p: &mut BufPool, head: &mut u16) -> u16 {
    assert!(p.available() > 0, "ring empty");
    // SAFETY: the entry at the head is one the pool published (available > 0), inside the
    // ring mapping.
    let e = unsafe { &*p.ring.as_ptr().add(usize::from(*head & p.mask)) };
    let bid = e.bid();
    *head = head.wrapping_add(1);
    p.take(bid);
    p.bytes_mut(bid, 1)[0] = 0xA5;
    bid
}

/// Pages of buffer `bid` resident now (mincore).
fn resident_pages(p: &BufPool, bid: u16) -> usize {
    let size = p.buf_size() as usize;
    let mut v = vec![0u8; size.div_ceil(4096)];
    // SAFETY: the range is inside the pool's data mapping, page-aligned (the mapping is, and
    // buffers are 4096 bytes here); `v` has one byte per page.
    let rc = unsafe {
        libc::mincore(
            p.data.as_ptr().add(usize::from(bid) * size).cast(),
            size,
            v.as_mut_ptr(),
        )
    };
    assert_eq!(rc, 0);
    v.iter().filter(|&&b| b & 1 == 1).count()
}

/// Bursts of varying size (heartbeats due together: 8 to 20 buffers taken a turn, each held
/// until the next turn, turns 10 ms apart): a growth fills the ring to `GROW_TO` and no
/// further, so circulation stays within 8 of what the trim leaves (`TRIM_KEEP` unused at the
/// window's peak). With a fixed growth step of 64 it went up to 64 past that.
#[test]
fn bursts_of_varying_size_keep_circulation_near_what_they_need() {
    let mut p = BufPool::new(1024, 4096).unwrap();
    let mut head = 0u16;
    let mut now = 0;
    p.grow_if_low();
    let mut held = Vec::new();
    let mut most = 0;
    let mut rng = 0x9e37_79b9u32;
    for turn in 0..2000 {
        now += 10;
        rng ^= rng << 13;
        rng ^= rng >> 17;
        rng ^= rng << 5;
        let burst = 8 + rng % 13;
        // This turn's burst is taken while the last one is still held (its sends in flight);
        // the pool looks at its ring at the end of the turn, then the last burst comes back.
        let last = std::mem::take(&mut held);
        for _ in 0..burst {
            held.push(kernel_take(&mut p, &mut head));
        }
        p.grow_if_low();
        for bid in last {
            p.release(bid);
        }
        p.settle(now);
        if turn >= 200 {
            most = most.max(p.circulating());
        }
    }
    // At most two bursts held at once (40), the trim's reserve and the growth's 8 over it.
    assert!(
        most <= GROW_TO + 40,
        "{most} in circulation for bursts of at most 20"
    );
    for bid in held.drain(..) {
        p.release(bid);
    }
    assert_eq!(p.free(), p.count(), "nothing held, nothing lost");
}

/// After a burst, the pool keeps in circulation what the load still needs and gives back the
/// memory of the rest; when the load comes back, parked buffers return before fresh ones, and
/// no buffer in the ring or held by anyone is ever parked.
#[test]
fn a_burst_s_buffers_leave_circulation_and_their_memory_is_given_back() {
    let mut p = BufPool::new(1024, 4096).unwrap();
    let mut head = 0u16;
    let mut now = 0;
    p.grow_if_low();
    assert_eq!(p.circulating(), GROW_TO);
    // A burst: 300 buffers held at once (the pool grows as the ring runs low, once a turn).
    let mut held = Vec::new();
    while held.len() < 300 {
        for _ in 0..20 {
            held.push(kernel_take(&mut p, &mut head));
        }
        p.grow_if_low();
    }
    let peak = p.circulating();
    assert!(peak >= 300 + 32, "{peak}");
    for bid in held.drain(..) {
        p.release(bid);
    }
    // A quiet load: at most 4 buffers held at a time, for six windows (buffers leave
    // circulation only as they come back: 400 a second here).
    for _ in 0..300 {
        now += 10;
        for _ in 0..4 {
            held.push(kernel_take(&mut p, &mut head));
        }
        for bid in held.drain(..) {
            p.release(bid);
        }
        p.grow_if_low();
        p.settle(now);
    }
    let quiet = p.circulating();
    assert!(
        (TRIM_KEEP..=TRIM_KEEP + 8).contains(&quiet),
        "{quiet} in circulation, peak {peak}"
    );
    assert_eq!(p.parked.len() as u32, peak - quiet);
    assert_eq!(p.free(), p.count(), "nothing held, nothing lost");
    // Parked buffers hold no memory; the ones in circulation do.
    for &bid in &p.parked {
        assert_eq!(p.state[usize::from(bid)], BufState::Parked);
        assert_eq!(resident_pages(&p, bid), 0, "parked buffer {bid}");
    }
    let in_ring: Vec<u16> = (0..p.count() as u16)
        .filter(|&b| p.state[usize::from(b)] == BufState::InRing)
        .collect();
    assert_eq!(in_ring.len() as u32, quiet);
    assert!(in_ring.iter().all(|&b| resident_pages(&p, b) == 1));
    // The load comes back: parked buffers go back into circulation before any fresh one, and
    // read as zeros (their old bytes were given back with their pages).
    let provided = p.provided();
    while held.len() < 200 {
        for _ in 0..20 {
            let bid = kernel_take(&mut p, &mut head);
            assert_eq!(p.bytes(bid, 2)[1], 0);
            held.push(bid);
        }
        p.grow_if_low();
        now += 10;
        p.settle(now);
    }
    assert_eq!(
        p.provided(),
        provided,
        "no fresh buffer while parked ones last"
    );
    assert!(p.circulating() >= 200 + 32);
    for bid in held.drain(..) {
        p.release(bid);
    }
    assert_eq!(p.free(), p.count());
}
