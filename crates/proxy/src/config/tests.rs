use super::*;

const GOOD: &str = r#"
[runtime]
workers = 2
max_connections = 1000

[[upstream]]
name = "ws"
servers = [
  { addr = "127.0.0.1:9001", weight = 3 },
  { addr = "127.0.0.1:9002" },
  { addr = "127.0.0.1:9003", backup = true },
]

[[server]]
listen = ["127.0.0.1:8080"]
server_name = ["ws.example.com", "*.example.org"]

[[server.location]]
path = "/"
upstream = "ws"

[[server.location]]
path = "/ws/"
upstream = "ws"
read_timeout = "7d"

[[server]]
listen = ["127.0.0.1:8080", "8081"]
server_name = ["other.example.com"]
[[server.location]]
path = "/"
upstream = "ws"
"#;

#[test]
fn upstream_names_resolve_at_load_and_unknown_ones_are_errors() {
    let cfg = |addr: &str| {
        format!(
            "[[upstream]]\nname = \"u\"\nservers = [{{ addr = \"{addr}\" }}]\n[[server]]\nlisten = [\"127.0.0.1:8080\"]\n[[server.location]]\npath = \"/\"\nupstream = \"u\"\n"
        )
    };
    let c = Config::parse("t.toml", &cfg("localhost:9001")).unwrap();
    assert!(
        c.upstreams[0]
            .peers
            .iter()
            .all(|p| p.addr.ip().is_loopback() && p.addr.port() == 9001)
    );
    assert_eq!(c.upstreams[0].peers[0].name, "localhost:9001");
    let e = Config::parse("t.toml", &cfg("no-such-host.invalid:80"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("t.toml:3:")
            && e.contains("upstream[0].servers[0].addr: cannot resolve \"no-such-host.invalid\""),
        "{e}"
    );
    let e = Config::parse("t.toml", &cfg("bad_name:80"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("invalid address"), "{e}");
}

#[test]
fn good_config_resolves() {
    let c = Config::parse("t.toml", GOOD).unwrap();
    assert_eq!(c.runtime.workers, 2);
    assert_eq!(c.listeners.len(), 2);
    assert_eq!(c.upstreams[0].peers[0].weight, 3);
    assert!(c.upstreams[0].peers[2].backup);
    assert_eq!(c.servers[0].locations[0].path, "/ws/");
    assert_eq!(
        c.servers[0].locations[0].read_timeout,
        Duration::from_secs(7 * 86400)
    );
    assert_eq!(
        c.servers[0].locations[1].read_timeout,
        defaults::READ_TIMEOUT
    );
    assert_eq!(c.servers[0].header_max, defaults::HEADER_MAX);
    assert_eq!(c.find_location(0, b"/ws/chat"), Some(0));
    assert_eq!(c.find_location(0, b"/other"), Some(1));
    assert_eq!(c.find_server(0, b"WS.example.com"), Some(0));
    assert_eq!(c.find_server(0, b"other.example.com."), Some(1));
    assert_eq!(c.find_server(0, b"a.example.org."), Some(0));
    assert_eq!(c.find_server(0, b"other.example.com"), Some(1));
    assert_eq!(c.find_server(0, b"a.example.org"), Some(0));
    assert_eq!(c.find_server(0, b"unknown"), Some(0));
    assert_eq!(c.find_server(1, b"unknown"), Some(1));
    assert!(c.describe().contains("location \"/ws/\" -> ws"));
}

fn err(text: &str) -> ConfigError {
    Config::parse("t.toml", text).unwrap_err()
}

#[test]
fn unknown_key_names_line() {
    let e = err("[runtime]\nworkers = 1\nbogus = 3\n");
    assert_eq!(e.line, 3, "{e}");
    assert!(e.message.contains("bogus"), "{e}");
}

#[test]
fn unknown_upstream_names_field_and_line() {
    let t = GOOD.replace(
        "path = \"/ws/\"\nupstream = \"ws\"",
        "path = \"/ws/\"\nupstream = \"nope\"",
    );
    let e = err(&t);
    assert_eq!(e.field, "server[0].location[1].upstream");
    let line = t.lines().position(|l| l.contains("\"nope\"")).unwrap() + 1;
    assert_eq!(e.line, line);
    assert!(e.to_string().starts_with(&format!("t.toml:{line}:")), "{e}");
    assert!(e.message.contains("defined: ws"), "{e}");
}

#[test]
fn bad_address_and_duration() {
    let e = err(&GOOD.replace("127.0.0.1:9002", "local_host:9002"));
    assert_eq!(e.field, "upstream[0].servers[1].addr");
    let e = err(&GOOD.replace("\"7d\"", "\"7 days\""));
    assert_eq!(e.field, "server[0].location[1].read_timeout");
    assert!(e.message.contains("unknown unit"), "{e}");
    let e = err(&GOOD.replace("workers = 2", "workers = \"many\""));
    assert_eq!(e.field, "runtime.workers");
    assert_eq!(e.line, 3);
}

#[test]
fn upstream_source_addresses() {
    let t = GOOD.replace("name = \"ws\"", "name = \"ws\"\nsource = \"127.0.1.0/30\"");
    let c = Config::parse("t.toml", &t).unwrap();
    assert_eq!(
        c.upstreams[0].source,
        vec![
            "127.0.1.1".parse::<std::net::IpAddr>().unwrap(),
            "127.0.1.2".parse().unwrap()
        ]
    );
    let t = GOOD.replace(
        "name = \"ws\"",
        "name = \"ws\"\nsource = [\"127.0.1.5\", \"127.0.1.9\"]",
    );
    assert_eq!(
        Config::parse("t.toml", &t).unwrap().upstreams[0]
            .source
            .len(),
        2
    );
    let e = err(&GOOD.replace("name = \"ws\"", "name = \"ws\"\nsource = \"127.0.1.0/8\""));
    assert_eq!(e.field, "upstream[0].source");
    let e = err(&GOOD.replace("name = \"ws\"", "name = \"ws\"\nsource = \"::1\""));
    assert!(e.message.contains("families"), "{e}");
}

#[test]
fn other_errors() {
    assert!(err("").message.contains("[[server]]"));
    let e = err(&GOOD.replace("path = \"/ws/\"", "path = \"ws\""));
    assert!(e.message.contains("must start with"), "{e}");
    let e = err("[[server]\n");
    assert_eq!(e.line, 1);
}

#[test]
fn upstream_policy_errors_name_the_field() {
    let with = |extra: &str| GOOD.replace("name = \"ws\"", &format!("name = \"ws\"\n{extra}"));
    let ok = Config::parse("t.toml", &with("balance = \"least_conn\"")).unwrap();
    assert_eq!(ok.upstreams[0].balance, Balance::LeastConn);
    let e = err(&with("balance = \"random\""));
    assert_eq!(e.field, "upstream[0].balance");
    assert!(e.message.contains("unknown balance \"random\""), "{e}");
    let e = err(&with("balance = \"hash\""));
    assert!(e.message.contains("needs hash = {"), "{e}");
    let e = err(&with("hash = { key = \"$http_\" }"));
    assert_eq!(e.field, "upstream[0].hash.key");
    assert!(e.message.contains("unknown variable $http_"), "{e}");
    let e = err(&with("hash = { key = \"room\" }"));
    assert!(e.message.contains("no variable"), "{e}");
    let e = err(&with("balance = \"ip_hash\"\nhash = { key = \"$arg_x\" }"));
    assert_eq!(e.field, "upstream[0].hash");
    let e = err(&with("hash = { key = \"$arg_room\", consistent = true }"));
    assert_eq!(e.field, "upstream[0].servers[2].backup", "{e}");
    let e = err(&with("hash = { key = \"$arg_room\", colour = 1 }"));
    assert!(e.message.contains("colour"), "{e}");
    let e = err(&GOOD.replace(
        "{ addr = \"127.0.0.1:9002\"",
        "{ addr = \"127.0.0.1:9002\", max_fails = -1",
    ));
    assert_eq!(e.field, "upstream[0].servers[1].max_fails");
    let e = err(&GOOD.replace(
        "{ addr = \"127.0.0.1:9002\"",
        "{ addr = \"127.0.0.1:9002\", fail_timeout = \"0s\"",
    ));
    assert_eq!(e.field, "upstream[0].servers[1].fail_timeout");
    let e = err(&GOOD.replace(
        "path = \"/ws/\"",
        "path = \"/ws/\"\nnext_upstream = [\"error\", \"http_500\"]",
    ));
    assert_eq!(e.field, "server[0].location[1].next_upstream[1]");
    let e = err(&GOOD.replace(
        "path = \"/ws/\"",
        "path = \"/ws/\"\nnext_upstream = [\"off\", \"timeout\"]",
    ));
    assert!(e.message.contains("cannot be combined"), "{e}");
    let c = Config::parse(
        "t.toml",
        &GOOD.replace(
            "path = \"/ws/\"",
            "path = \"/ws/\"\nnext_upstream = [\"off\"]\nnext_upstream_tries = 2",
        ),
    )
    .unwrap();
    let l = &c.servers[0].locations[0];
    assert_eq!(
        (l.next_upstream.when, l.next_upstream.tries),
        (crate::config::upstream::Failures::NONE, 2)
    );
}

#[test]
fn health_check_errors_name_the_field() {
    let with = |hc: &str| {
        GOOD.replace(
            "name = \"ws\"",
            &format!("name = \"ws\"\nhealth_check = {{ {hc} }}"),
        )
    };
    let c = Config::parse("t.toml", &with("interval = \"3s\", request = \"GET /health HTTP/1.0\\r\\n\\r\\n\", expect = [\"2xx\", \"301\"]")).unwrap();
    let h = c.upstreams[0].health_check.as_ref().unwrap();
    assert_eq!(
        (h.rise, h.fall, h.timeout),
        (2, 3, std::time::Duration::from_secs(1))
    );
    assert!(h.passes(204) && h.passes(301) && !h.passes(302) && !h.passes(503));
    let e = err(&with("interval = \"1s\", timeout = \"2s\""));
    assert_eq!(e.field, "upstream[0].health_check.timeout");
    let e = err(&with("request = \"GET /health\""));
    assert_eq!(e.field, "upstream[0].health_check.request");
    let e = err(&with("expect = [\"2xx\", \"ok\"]"));
    assert_eq!(e.field, "upstream[0].health_check.expect[1]");
    let e = err(&with("type = \"udp\""));
    assert!(e.message.contains("unknown type"), "{e}");
    let e = err(&with(
        "type = \"tcp\", request = \"GET / HTTP/1.0\\r\\n\\r\\n\"",
    ));
    assert!(e.message.contains("tcp check sends nothing"), "{e}");
    let e = err(&with("fall = 0"));
    assert_eq!(e.field, "upstream[0].health_check.fall");
    let e = err(&with("port = 70000"));
    assert_eq!(e.field, "upstream[0].health_check.port");
    let e = err(&with("interval = \"10ms\""));
    assert!(e.message.contains("at least 100ms"), "{e}");
}

#[test]
fn limit_errors_name_the_field() {
    let zones = "[[limit_conn_zone]]\nname = \"perip\"\nkey = \"$binary_remote_addr\"\nsize = \"1m\"\n[[limit_req_zone]]\nname = \"rate\"\nsize = \"1m\"\nrate = \"10r/s\"\n";
    let with = |loc: &str| {
        format!(
            "{zones}{}",
            GOOD.replace("path = \"/ws/\"", &format!("path = \"/ws/\"\n{loc}"))
        )
    };
    let c = Config::parse(
        "t.toml",
        &with("limit_conn = { zone = \"perip\", max = 1000 }\nlimit_req = { zone = \"rate\", burst = 5, nodelay = true, status = 429 }"),
    )
    .unwrap();
    let l = &c.servers[0].locations[0];
    assert_eq!(l.limit_conn.unwrap().max, 1000);
    assert_eq!(l.limit_conn.unwrap().status, 503);
    let r = l.limit_req.unwrap();
    assert_eq!(
        (r.rate_milli, r.burst, r.nodelay, r.status),
        (10_000, 5, true, 429)
    );
    let e = err(&with("limit_conn = { zone = \"nope\", max = 10 }"));
    assert_eq!(e.field, "server[0].location[1].limit_conn.zone");
    assert!(
        e.message
            .contains("not defined by any [[limit_conn_zone]] (defined: perip)"),
        "{e}"
    );
    let e = err(&with("limit_conn = { zone = \"perip\", max = 0 }"));
    assert_eq!(e.field, "server[0].location[1].limit_conn.max");
    let e = err(&with("limit_req = { zone = \"rate\", rate = \"fast\" }"));
    assert_eq!(e.field, "server[0].location[1].limit_req.rate");
    let e = err(&with("limit_req = { zone = \"rate\", status = 200 }"));
    assert_eq!(e.field, "server[0].location[1].limit_req.status");
    let e = err(&format!(
        "[[limit_conn_zone]]\nname = \"z\"\nkey = \"$http_x\"\n{GOOD}"
    ));
    assert_eq!(e.field, "limit_conn_zone[0].key");
    let e = err(&format!(
        "[[limit_conn_zone]]\nname = \"z\"\nsize = \"1k\"\n{GOOD}"
    ));
    assert_eq!(e.field, "limit_conn_zone[0].size");
    let e = err(&format!(
        "[[limit_req_zone]]\nname = \"z\"\n{}",
        GOOD.replace(
            "path = \"/ws/\"",
            "path = \"/ws/\"\nlimit_req = { zone = \"z\" }"
        )
    ));
    assert!(e.message.contains("needs a rate"), "{e}");
}

#[test]
fn message_policy_keys_resolve_and_their_errors_name_the_field() {
    let zones = "[[limit_req_zone]]\nname = \"msgs\"\nsize = \"1m\"\nrate = \"30r/m\"\n";
    let with = |loc: &str| {
        format!(
            "{zones}{}",
            GOOD.replace("path = \"/ws/\"", &format!("path = \"/ws/\"\n{loc}"))
        )
    };
    let c = Config::parse(
        "t.toml",
        &with("max_message_size = \"1m\"\nmessage_rate = { rate = \"20r/s\", burst = 40 }"),
    )
    .unwrap();
    let l = &c.servers[0].locations[0];
    assert_eq!(l.max_message_size, Some(1 << 20));
    let r = l.message_rate.as_ref().unwrap();
    assert_eq!((r.rate_milli, r.burst, r.nodelay), (20_000, 40, false));
    assert!(r.zone.is_none());
    // A zone: its rate unless one is given; the address's bucket is the zone's.
    let c = Config::parse(
        "t.toml",
        &with("message_rate = { zone = \"msgs\", nodelay = true }"),
    )
    .unwrap();
    let r = c.servers[0].locations[0].message_rate.clone().unwrap();
    assert_eq!((r.rate_milli, r.burst, r.nodelay), (500, 0, true));
    assert_eq!(r.zone.unwrap().name, "msgs");
    let e = err(&with("max_message_size = 0"));
    assert_eq!(e.field, "server[0].location[1].max_message_size");
    let e = err(&with("message_rate = { burst = 5 }"));
    assert_eq!(e.field, "server[0].location[1].message_rate.rate");
    assert!(e.message.contains("needs a rate"), "{e}");
    let e = err(&with("message_rate = { rate = \"20r/h\" }"));
    assert_eq!(e.field, "server[0].location[1].message_rate.rate");
    let e = err(&with("message_rate = { rate = \"20r/s\", burst = -1 }"));
    assert_eq!(e.field, "server[0].location[1].message_rate.burst");
    let e = err(&with("message_rate = { zone = \"nope\" }"));
    assert_eq!(e.field, "server[0].location[1].message_rate.zone");
    assert!(e.message.contains("(defined: msgs)"), "{e}");
    let e = err(&with(
        "message_rate = { rate = \"20r/s\", action = \"drop\" }",
    ));
    assert!(e.message.contains("action"), "{e}");
}

#[test]
fn max_lifetime_and_its_jitter() {
    let with = |loc: &str| GOOD.replace("path = \"/ws/\"", &format!("path = \"/ws/\"\n{loc}"));
    let c = Config::parse("t.toml", &with("max_lifetime = \"24h\"")).unwrap();
    let d = |s| Duration::from_secs(s);
    assert_eq!(
        c.servers[0].locations[0].max_lifetime,
        Some((d(86_400), d(8_640)))
    );
    let c = Config::parse(
        "t.toml",
        &with("max_lifetime = \"1h\"\nlifetime_jitter = \"1h\""),
    )
    .unwrap();
    assert_eq!(
        c.servers[0].locations[0].max_lifetime,
        Some((d(3600), d(3600)))
    );
    let e = err(&with("lifetime_jitter = \"1m\""));
    assert_eq!(e.field, "server[0].location[1].lifetime_jitter");
    assert!(e.message.contains("needs max_lifetime"), "{e}");
    let e = err(&with("max_lifetime = \"1h\"\nlifetime_jitter = \"2h\""));
    assert_eq!(e.field, "server[0].location[1].lifetime_jitter");
    let e = err(&with("max_lifetime = \"0s\""));
    assert_eq!(e.field, "server[0].location[1].max_lifetime");
}

#[test]
fn keepalive_settings_and_errors() {
    let with = |extra: &str| GOOD.replace("name = \"ws\"", &format!("name = \"ws\"\n{extra}"));
    let c = Config::parse(
        "t.toml",
        &with("keepalive = 16\nkeepalive_timeout = \"30s\""),
    )
    .unwrap();
    let u = &c.upstreams[0];
    assert_eq!((u.keepalive, u.keepalive_requests), (16, 1000));
    assert_eq!(u.keepalive_timeout, std::time::Duration::from_secs(30));
    let e = err(&with("keepalive = -1"));
    assert_eq!(e.field, "upstream[0].keepalive");
    let e = err(&with("keepalive = 4\nkeepalive_requests = 0"));
    assert_eq!(e.field, "upstream[0].keepalive_requests");
    let c = Config::parse("t.toml", &with("keepalive = 4\ntls = { verify = false }")).unwrap();
    assert_eq!(
        c.upstreams[0].keepalive, 4,
        "keepalive toward a TLS upstream"
    );
}

#[test]
fn check_prints_the_upstream_policy_as_understood() {
    let t = format!(
        "[[limit_conn_zone]]\nname = \"perip\"\nsize = \"1m\"\n{}",
        GOOD.replace(
            "name = \"ws\"",
            "name = \"ws\"\nhash = { key = \"$arg_room\", consistent = true }\nkeepalive = 8\nhealth_check = { interval = \"3s\", expect = [\"2xx\", \"301\"], port = 8081 }",
        )
        .replace("{ addr = \"127.0.0.1:9003\", backup = true }", "{ addr = \"127.0.0.1:9003\", down = true }")
        .replace(
            "path = \"/ws/\"",
            "path = \"/ws/\"\nnext_upstream = [\"error\", \"http_503\"]\nlimit_conn = { zone = \"perip\", max = 10 }",
        )
    );
    let d = Config::parse("t.toml", &t).unwrap().describe();
    for want in [
        "limit_conn_zone \"perip\" size=1048576B (16384 addresses)",
        "upstream \"ws\" balance=hash consistent key=\"$arg_room\" keepalive=8",
        "health_check \"GET / HTTP/1.0\\r\\n\\r\\n\" interval=3s rise=2 fall=3 timeout=1s expect=2xx,301 port=8081",
        "server 127.0.0.1:9003 weight=1 max_fails=1 fail_timeout=10s max_conns=0 down",
        "next_upstream=error,http_503 tries=0 timeout=0s",
        "limit_conn zone=\"perip\" max=10 status=503",
    ] {
        assert!(d.contains(want), "{want:?} not in:\n{d}");
    }
}

#[test]
fn heartbeat_and_drain_close_are_read_and_checked() {
    let text = "[runtime]\nshutdown_grace = \"40s\"\ndrain_close = { code = 1001, reason = \"bye\" }\n[[upstream]]\nname = \"u\"\nservers = [{ addr = \"127.0.0.1:9\" }]\n[[server]]\nlisten = [\"127.0.0.1:8080\"]\n[[server.location]]\npath = \"/\"\nupstream = \"u\"\nheartbeat = { interval = \"25s\", upstream_interval = \"30s\" }\n";
    let c = Config::parse("t.toml", text).unwrap();
    assert_eq!(
        c.runtime.drain_spread,
        Duration::from_secs(20),
        "half the grace"
    );
    assert_eq!(
        (c.runtime.drain_code, c.runtime.drain_reason.as_str()),
        (1001, "bye")
    );
    let h = c.servers[0].locations[0].heartbeat.unwrap();
    assert_eq!(
        (h.interval, h.timeout, h.upstream_interval),
        (
            Duration::from_secs(25),
            Duration::from_secs(10),
            Some(Duration::from_secs(30))
        )
    );
    assert!(
        c.describe()
            .contains("heartbeat interval=25s timeout=10s upstream_interval=30s")
    );
    for (bad, field) in [
        ("drain_close = { code = 1005 }", "runtime.drain_close.code"),
        ("drain_spread = \"2m\"", "runtime.drain_spread"),
    ] {
        let t = text.replace("drain_close = { code = 1001, reason = \"bye\" }", bad);
        let e = Config::parse("t.toml", &t).unwrap_err().to_string();
        assert!(e.contains(field), "{e}");
        assert!(e.starts_with("t.toml:3:"), "{e}");
    }
    let t = text.replace("interval = \"25s\",", "interval = \"0s\",");
    let e = Config::parse("t.toml", &t).unwrap_err().to_string();
    assert!(
        e.contains("server[0].location[0].heartbeat.interval"),
        "{e}"
    );
}

#[test]
fn proxy_protocol_and_real_ip_are_read_and_checked() {
    let text = "[[upstream]]\nname = \"u\"\nproxy_protocol = \"v2\"\nservers = [{ addr = \"127.0.0.1:9\" }]\n[[server]]\nlisten = [\"127.0.0.1:8080\"]\nproxy_protocol = true\ntrusted_proxies = [\"10.0.0.0/8\", \"::1\"]\n[[server.location]]\npath = \"/\"\nupstream = \"u\"\n";
    let c = Config::parse("t.toml", text).unwrap();
    assert!(c.upstreams[0].proxy_protocol);
    let t = c.listener_proxy[0].as_ref().unwrap();
    assert!(trusted(t, "10.9.8.7".parse().unwrap()));
    assert!(
        trusted(t, "::ffff:10.0.0.1".parse().unwrap()),
        "IPv4-mapped"
    );
    assert!(trusted(t, "::1".parse().unwrap()));
    assert!(!trusted(t, "11.0.0.1".parse().unwrap()));
    let d = c.describe();
    assert!(d.contains("127.0.0.1:8080 (proxy_protocol)"), "{d}");
    assert!(d.contains("trusted_proxies=10.0.0.0/8,::1/128"), "{d}");
    for (from, to, field) in [
        (
            "trusted_proxies = [\"10.0.0.0/8\", \"::1\"]\n",
            "",
            "server[0].trusted_proxies",
        ),
        ("\"::1\"", "\"10.0.0.0/33\"", "server[0].trusted_proxies[1]"),
        (
            "proxy_protocol = \"v2\"",
            "proxy_protocol = \"v1\"",
            "upstream[0].proxy_protocol",
        ),
        (
            "proxy_protocol = true\n",
            "real_ip_header = \"Forwarded\"\n",
            "server[0].real_ip_header",
        ),
    ] {
        let e = Config::parse("t.toml", &text.replace(from, to))
            .unwrap_err()
            .to_string();
        assert!(e.contains(field), "{e}");
    }
    // Every server on one address agrees.
    let two = format!(
        "{text}[[server]]\nlisten = [\"127.0.0.1:8080\"]\nserver_name = [\"b\"]\n[[server.location]]\npath = \"/\"\nupstream = \"u\"\n"
    );
    let e = Config::parse("t.toml", &two).unwrap_err().to_string();
    assert!(e.contains("must agree"), "{e}");
}

#[test]
fn a_timeout_longer_than_24_days_is_an_error_naming_the_field() {
    let with = |t: &str| GOOD.replace("read_timeout = \"7d\"", &format!("read_timeout = \"{t}\""));
    assert!(Config::parse("t.toml", &with("24d")).is_ok());
    let e = err(&with("25d")).to_string();
    assert!(
        e.contains("t.toml:25:16: server[0].location[1].read_timeout")
            && e.contains("at most 24 days"),
        "{e}"
    );
    let e = err(&format!("{GOOD}\n").replace(
        "[[server]]\nlisten = [\"127.0.0.1:8080\"]",
        "[[server]]\nlisten = [\"127.0.0.1:8080\"]\nkeepalive_timeout = \"30d\"",
    ))
    .to_string();
    assert!(
        e.contains("keepalive_timeout") && e.contains("at most 24 days"),
        "{e}"
    );
}

#[test]
fn http2_keys_resolve_per_listener_with_their_bounds() {
    let base = "[[upstream]]\nname = \"u\"\nservers = [{ addr = \"127.0.0.1:9\" }]\n\n[[server]]\nlisten = [\"127.0.0.1:8080\"]\nKEYS\n[[server.location]]\npath = \"/\"\nupstream = \"u\"\n\n[[server]]\nlisten = [\"127.0.0.1:8081\"]\n[[server.location]]\npath = \"/\"\nupstream = \"u\"\n";
    let with = |keys: &str| base.replace("KEYS", keys);
    let c = Config::parse("t.toml", &with("http2 = true")).unwrap();
    // On the address of the server that asks, with the defaults; not on the other.
    assert_eq!(
        c.listen[0].http2,
        Some(Http2 {
            websocket: true,
            max_streams: HTTP2_STREAMS_DEFAULT
        })
    );
    assert_eq!(c.listen[1].http2, None);
    assert!(
        c.describe()
            .contains("http2 websocket=true max_concurrent_streams=100")
    );
    let c = Config::parse(
        "t.toml",
        &with("http2 = true\nhttp2_websocket = false\nhttp2_max_concurrent_streams = 128"),
    )
    .unwrap();
    assert_eq!(
        c.listen[0].http2,
        Some(Http2 {
            websocket: false,
            max_streams: 128
        })
    );
    let e = err(&with("http2_websocket = false"));
    assert_eq!(
        (e.field.as_str(), e.message.as_str()),
        ("server[0].http2_websocket", "needs http2 = true")
    );
    let e = err(&with("http2 = true\nhttp2_max_concurrent_streams = 129"));
    assert_eq!(e.field, "server[0].http2_max_concurrent_streams");
    assert_eq!(e.message, "must be between 1 and 128");
    let e = err(&with("http2 = true\nhttp2_max_concurrent_streams = 0"));
    assert_eq!(e.field, "server[0].http2_max_concurrent_streams");
}

#[test]
fn auth_request_names_its_upstream_target_headers_and_cache() {
    let with = |loc: &str| GOOD.replace("path = \"/ws/\"", &format!("path = \"/ws/\"\n{loc}"));
    let c = Config::parse(
        "t.toml",
        &with("auth_request = { upstream = \"ws\", uri = \"/auth\", set = { \"X-User\" = \"X-Auth-User\" }, cache = \"30s\" }"),
    )
    .unwrap();
    let a = c.servers[0].locations[0].auth_request.clone().unwrap();
    assert_eq!(a.uri.as_deref(), Some("/auth"));
    assert_eq!(a.set, [("X-User".to_string(), "X-Auth-User".to_string())]);
    assert_eq!(a.cache, Some(Duration::from_secs(30)));
    assert_eq!(a.timeout, crate::config::auth::TIMEOUT);
    let f = "server[0].location[1].auth_request";
    let e = err(&with("auth_request = { upstream = \"nope\" }"));
    assert_eq!(e.field, format!("{f}.upstream"));
    assert!(e.message.contains("unknown upstream"), "{e}");
    let e = err(&with(
        "auth_request = { upstream = \"ws\", uri = \"auth\" }",
    ));
    assert_eq!(e.field, format!("{f}.uri"));
    let e = err(&with(
        "auth_request = { upstream = \"ws\", uri = \"/a b\" }",
    ));
    assert_eq!(e.field, format!("{f}.uri"));
    let e = err(&with(
        "auth_request = { upstream = \"ws\", set = { \"X User\" = \"Y\" } }",
    ));
    assert_eq!(e.field, format!("{f}.set.X User"));
    let e = err(&with(
        "auth_request = { upstream = \"ws\", set = { \"Host\" = \"Y\" } }",
    ));
    assert!(e.message.contains("cannot be set"), "{e}");
    let e = err(&with(
        "auth_request = { upstream = \"ws\", timeout = \"0s\" }",
    ));
    assert_eq!(e.field, format!("{f}.timeout"));
    let text = with("auth_request = { upstream = \"ws\", cach = \"1s\" }");
    let e = err(&text);
    assert!(e.message.contains("cach"), "{e}");
    let line = text.lines().position(|l| l.contains("cach =")).unwrap() + 1;
    assert_eq!(e.line, line, "{e}");
}
