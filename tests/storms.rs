//! Issue "hostile clients", item 8, in a test binary of its own: RSS is measured, so nothing else
//! may run beside it.

mod common;

use std::time::{Duration, Instant};

use common::*;

/// Item 8: memory comes back after bursts. Five identical storms of 20,000 WebSocket
/// handshakes, each closed at once: the proxy's live heap (`heap_bytes` in `/status`, counted
/// by its global allocator: an exact figure) after each storm is where it was after the first;
/// RSS, which moves in the allocator's steps, is only a coarse second check.
#[test]
fn memory_returns_after_storms() {
    if !uring_ok() {
        return;
    }
    let admin = free_addr();
    // connect_timeout shorter than header_timeout (as in examples/ringway.toml): every session's
    // deadline moves earlier once, which once left a dead timer entry behind per session.
    let st = stack(
        "storms",
        "connect_timeout = \"5s\"",
        "",
        &format!("access_log = false\n[admin]\nlisten = \"{admin}\""),
    );
    let target = format!("ws://{}/ws/", st.listen);
    let (mut heap, mut rss) = (Vec::new(), Vec::new());
    for storm in 0..5 {
        let (code, text) = ringway(&[
            "bench", "connect", "--target", &target, "-c", "50", "-n", "20000", "--json", "--quiet",
        ]);
        assert_eq!(code, Some(0), "storm {storm}: {text}");
        // Measure once every session of the storm has closed (bounded: 20 s).
        let t = Instant::now();
        while active(admin) > 0 && t.elapsed() < Duration::from_secs(20) {
            std::thread::sleep(Duration::from_millis(100));
        }
        std::thread::sleep(Duration::from_millis(300));
        heap.push(admin_status(admin)["heap_bytes"].as_u64().unwrap() as i64);
        rss.push(st.proxy.rss_kib() as i64);
    }
    eprintln!("proxy live heap after each storm (bytes): {heap:?}; RSS (KiB): {rss:?}");
    // An earlier main grew ~400 KiB every storm here (dead timer entries); a later one ~20 KiB
    // (each timer-wheel slot a storm passed through kept its list's memory). What a storm
    // leaves may differ by a few KiB (which buffers the pool happens to hold, a recycled
    // allocation kept for reuse); a leak of one timer entry or one small allocation per session
    // is 20,000 × that per storm.
    let first = heap[0];
    for (i, h) in heap.iter().enumerate() {
        assert!(
            (h - first).abs() <= 64 * 1024,
            "live heap after storm {i} is {h} bytes, {} from the first storm's: {heap:?}",
            h - first
        );
    }
    // Coarse: RSS may step with the allocator's arenas, but not storm after storm.
    let mut growth: Vec<i64> = rss.windows(2).map(|w| w[1] - w[0]).collect();
    growth.sort_unstable();
    assert!(
        growth[growth.len() / 2] <= 512,
        "RSS grew storm after storm: {rss:?} KiB"
    );
}
