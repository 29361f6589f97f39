use super::*;

#[test]
fn targets_and_sources() {
    let t = Target::parse("ws://127.0.0.1:8080/ws/chat").unwrap();
    assert_eq!(t.addr, "127.0.0.1:8080".parse().unwrap());
    assert_eq!(t.path, "/ws/chat");
    assert_eq!(Target::parse("ws://[::1]:9").unwrap().path, "/");
    assert!(Target::parse("http://x").is_err());
    assert!(Target::parse("ws://localhost:80/").is_err());
    let s = parse_source("127.0.0.0/30").unwrap();
    assert_eq!(
        s,
        vec![IpAddr::from([127, 0, 0, 1]), IpAddr::from([127, 0, 0, 2])]
    );
    assert_eq!(parse_source("127.0.0.0/16").unwrap().len(), 65534);
    assert_eq!(
        parse_source("10.0.0.5").unwrap(),
        vec![IpAddr::from([10, 0, 0, 5])]
    );
    assert!(parse_source("127.0.0.0/33").is_err());
}

#[test]
fn latency_report_reads_the_histogram() {
    let mut h = Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3).unwrap();
    for v in 1..=1000u64 {
        h.record(v).unwrap();
    }
    let l = Latency::of(&h);
    assert_eq!(l.count, 1000);
    assert!((499..=501).contains(&l.p50), "{}", l.p50);
    assert!((989..=991).contains(&l.p99), "{}", l.p99);
    assert_eq!(l.max, 1000);
    assert_eq!(Latency::of(&Histogram::<u64>::new(3).unwrap()).count, 0);
}

#[test]
fn the_frames_it_sends_are_masked_and_decode() {
    let payload = b"abc";
    let f = ws::frame(opcode::BINARY, payload, Some([0x5a, 0x17, 0xc3, 0x88]));
    let h = ws::parse_header(&f).unwrap().unwrap();
    assert!(h.mask.is_some());
    let mut p = f[h.header_len..].to_vec();
    ws::apply_mask(&mut p, h.mask.unwrap(), 0);
    assert_eq!(p, payload);
}

#[test]
fn a_worker_that_ends_early_ends_the_wait_for_it() {
    // A connect run waits (up to an hour) for every worker to report its share done; a worker
    // thread that returned an error or panicked never reports, so its end ends the wait.
    let opts = Opts {
        mode: Mode::Connect,
        target: Target::parse("ws://127.0.0.1:9/").unwrap(),
        connections: 1,
        count: 10,
        close_frame: true,
        size: 64,
        duration: Duration::from_secs(1),
        warmup: Duration::ZERO,
        rate: 0.0,
        hold: Duration::ZERO,
        interval: Duration::from_secs(1),
        source: Vec::new(),
        workers: 2,
        timeout: Duration::from_secs(1),
        ready_file: None,
        progress: false,
        tls: None,
    };
    let shared = Arc::new(Shared::default());
    let worker = {
        let shared = shared.clone();
        std::thread::spawn(move || {
            let _ended = Ended(shared);
            panic!("a worker's bug");
        })
    };
    assert!(worker.join().is_err());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(coordinate(&opts, &shared, Instant::now(), 1, 2));
    });
    // Without the end counted it would wait out `open_limit` (an hour).
    assert!(rx.recv_timeout(Duration::from_secs(30)).is_ok());
}
