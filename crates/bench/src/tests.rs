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
