//! `/metrics` read the way an operator's tools read it: `promtool check metrics` lints the
//! classic text format, Prometheus's own Python parsers read both formats, and the counters
//! move with traffic.

mod common;

use common::*;

#[test]
fn metrics_pass_promtool_and_prometheus_parsers_and_move_with_traffic() {
    if !uring_ok() {
        return;
    }
    let admin = free_addr();
    let st = stack(
        "metrics",
        "limit_conn = { zone = \"perip\", max = 12 }",
        "",
        &format!(
            "[admin]\nlisten = \"{admin}\"\n[[limit_conn_zone]]\nname = \"perip\"\nsize = \"1m\""
        ),
    );
    let (_, before) = scrape(admin, "");
    let b = parse_metrics(&before, "classic");
    // Traffic: ten tunnels echoing, five plain requests, one refused by limit_conn.
    let mut tunnels: Vec<Ws> = (0..10).map(|_| st.ws("/")).collect();
    for ws in &mut tunnels {
        ws_echo(ws, vec![7u8; 1000]);
    }
    for _ in 0..5 {
        let out = raw_exchange(
            st.listen,
            b"GET /bytes/100 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            10,
        );
        assert_eq!(status_of(&out), 200);
    }
    let mut extra: Vec<Ws> = (0..2).map(|_| st.ws("/")).collect();
    let out = raw_exchange(
        st.listen,
        format!("GET / HTTP/1.1\r\nHost: x\r\n{WS_REQ}\r\n").as_bytes(),
        10,
    );
    assert_eq!(status_of(&out), 503, "the 13th connection from one address");
    extra.clear();
    // The two closed tunnels end (their sessions finish on the proxy's side).
    let t = std::time::Instant::now();
    let (head, classic) = loop {
        let (head, classic) = scrape(admin, "");
        if total(
            &parse_metrics(&classic, "classic"),
            "ringway_tunnels_active{",
        ) == 10.0
        {
            break (head, classic);
        }
        assert!(
            t.elapsed() < std::time::Duration::from_secs(10),
            "{classic}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    assert!(
        head.contains("Content-Type: text/plain; version=0.0.4"),
        "{head}"
    );
    let m = parse_metrics(&classic, "classic");

    // promtool lints what Prometheus would scrape.
    promtool(&["check", "metrics"], &classic);
    // Prometheus asks for OpenMetrics: the same samples, in that format.
    let (head, om) = scrape(
        admin,
        "Accept: application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5\r\n",
    );
    assert!(head.contains("application/openmetrics-text"), "{head}");
    assert!(om.ends_with("# EOF\n"));
    let o = parse_metrics(&om, "openmetrics");
    assert!(
        (total(&o, "ringway_tunnels_active{") - total(&m, "ringway_tunnels_active{")).abs() < 0.5
    );

    let moved = |k: &str| total(&m, k) - total(&b, k);
    assert_eq!(
        total(&m, "ringway_tunnels_active{"),
        10.0,
        "ten tunnels open"
    );
    assert!(moved("ringway_sessions_accepted_total{") >= 18.0);
    assert!(moved("ringway_handshake_duration_seconds_count{") >= 12.0);
    assert!(moved("ringway_upstream_connect_duration_seconds_count{") >= 17.0);
    assert_eq!(moved("ringway_sessions_limited_total{"), 1.0);
    assert!(moved("ringway_sessions_ended_total{end=done") >= 5.0);
    assert!(
        moved("ringway_received_bytes_total{from=upstream") >= 500.0,
        "the /bytes answers"
    );
    assert!(moved("ringway_upstream_server_requests_total{") >= 17.0);
    // Two tunnels ended: their lifetimes were observed.
    assert!(moved("ringway_tunnel_duration_seconds_count{") >= 2.0);
    assert_eq!(
        total(&m, "ringway_limit_conn_zone_addresses{zone=perip"),
        1.0
    );
    let servers = m
        .keys()
        .filter(|k| k.starts_with("ringway_upstream_server_state{") && k.contains("state=up"))
        .count();
    assert_eq!(servers, st.backends.len());
    assert!(total(&m, "ringway_buffer_pool_buffers{") > 0.0);
    assert!(
        m.keys()
            .any(|k| k.starts_with("ringway_buffer_pool_waits_total{")),
        "{m:?}"
    );
    assert_eq!(total(&m, "ringway_up{"), 1.0);
    // Base units: every histogram is in seconds or bytes, every byte count in bytes.
    for k in m.keys() {
        if k.ends_with("_bucket") || k.contains("_bucket{") {
            assert!(
                k.contains("_seconds_bucket") || k.contains("_bytes_bucket"),
                "{k}"
            );
        }
    }
    drop(tunnels);
}

/// Every `expr` in a Grafana dashboard JSON (panels and rows, at any depth).
fn exprs(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, x) in m {
                match x {
                    serde_json::Value::String(s) if k == "expr" => out.push(s.clone()),
                    _ => exprs(x, out),
                }
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|x| exprs(x, out)),
        _ => {}
    }
}

#[test]
fn the_grafana_dashboard_queries_only_metrics_ringway_exposes() {
    if !uring_ok() {
        return;
    }
    let dash: serde_json::Value =
        serde_json::from_str(include_str!("../deploy/grafana-dashboard.json")).unwrap();
    let mut all = Vec::new();
    exprs(&dash, &mut all);
    assert!(all.len() >= 15, "{all:?}");
    // A proxy with everything the metrics describe: a health-checked upstream, a limit zone.
    let dir = scratch("grafana");
    let (backend, listen, admin) = (free_addr(), free_addr(), free_addr());
    let _echo = echo(&[backend], &dir);
    let cfg = format!(
        "[runtime]\nworkers = 2\nmax_connections = 1000\n[admin]\nlisten = \"{admin}\"\n[[limit_conn_zone]]\nname = \"z\"\n[[upstream]]\nname = \"u\"\nservers = [{{ addr = \"{backend}\" }}]\nhealth_check = {{ interval = \"200ms\", timeout = \"100ms\" }}\n[[server]]\nlisten = [\"{listen}\"]\n[[server.location]]\npath = \"/\"\nupstream = \"u\"\nlimit_conn = {{ zone = \"z\", max = 10 }}\n"
    );
    let _p = proxy(&cfg, listen, &dir);
    let mut ws = ws_connect(listen, "/");
    ws_echo(&mut ws, vec![1; 100]);
    // A tunnel that closed with a Close each way (its location's closes and ends are written
    // once there are some).
    let mut done = ws_connect(listen, "/");
    done.close(None).unwrap();
    while done.read().is_ok() {}
    drop(done);
    let t = std::time::Instant::now();
    let text = loop {
        let (_, text) = scrape(admin, "");
        if text.contains("ringway_location_tunnels_ended_total{") {
            break text;
        }
        assert!(t.elapsed() < std::time::Duration::from_secs(10), "{text}");
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let names: std::collections::HashSet<String> = parse_metrics(&text, "classic")
        .keys()
        .map(|k| k.split('{').next().unwrap().to_string())
        .collect();
    let mut missing = Vec::new();
    for e in &all {
        let b = e.as_bytes();
        let mut i = 0;
        while let Some(at) = e[i..].find("ringway_") {
            let start = i + at;
            let mut end = start;
            while end < b.len() && (b[end].is_ascii_alphanumeric() || b[end] == b'_') {
                end += 1;
            }
            let name = &e[start..end];
            if !names.contains(name) {
                missing.push(format!("{name} (in {e})"));
            }
            i = end;
        }
    }
    assert!(
        missing.is_empty(),
        "the dashboard queries metrics /metrics does not have: {missing:#?}\nexposed: {names:?}"
    );
    // Each query is PromQL Prometheus accepts (promtool reads them as recording rules).
    let mut rules = String::from("groups:\n- name: dashboard\n  rules:\n");
    for (i, e) in all.iter().enumerate() {
        let e = e
            .replace("$__rate_interval", "5m")
            .replace("$instance", ".*");
        rules.push_str(&format!(
            "  - record: dashboard:q{i}\n    expr: {}\n",
            serde_json::to_string(&e).unwrap()
        ));
    }
    let f = dir.join("rules.yml");
    std::fs::write(&f, rules).unwrap();
    promtool(&["check", "rules", f.to_str().unwrap()], "");
}
