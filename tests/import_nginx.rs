//! `ringway import-nginx` on the nginx playbook's configurations (tests/reference holds the
//! playbook as given to the project): each imports, the result checks, nothing in it passes
//! without a line of the output or a warning naming its file and line, and the imported
//! section 2 proxies a WebSocket end to end.

mod common;

use std::path::{Path, PathBuf};

use common::*;

const PLAYBOOK: &str = include_str!("reference/nginx-websocket-playbook.txt");

/// The text after the heading that starts with `heading` (from its first blank line) up to
/// `end`.
fn section(heading: &str, end: &str) -> String {
    let h = PLAYBOOK.find(heading).expect(heading);
    let start = h + PLAYBOOK[h..].find("\n\n").unwrap() + 2;
    let stop = start + PLAYBOOK[start..].find(end).expect(end);
    PLAYBOOK[start..stop].to_string()
}

fn s2() -> String {
    section("2. Basic Reverse", "Key points")
}

/// Section 3's map and its two location lines, placed where it says they go: the map in
/// `http`, the lines in section 2's location.
fn s3() -> String {
    let text = section("3. Production", "Using the map");
    let map_start = text.find("map ").unwrap();
    let map = &text[map_start..map_start + text[map_start..].find("}\n").unwrap() + 2];
    assert!(text.contains("proxy_set_header Connection $connection_upgrade;"));
    s2().replacen("http {\n", &format!("http {{\n{map}"), 1)
        .replace(
            "proxy_set_header Connection \"upgrade\";",
            "proxy_set_header Connection $connection_upgrade;",
        )
}

/// Section 8's upstream directives inside section 2's upstream.
fn s8() -> String {
    let text = section("8. Load", "WebSocket connections are not");
    let open = text.find("{\n").unwrap() + 2;
    let close = text.rfind('}').unwrap();
    s2().replacen(
        "upstream websocket_backend {\n",
        &format!("upstream websocket_backend {{\n{}", &text[open..close]),
        1,
    )
}

/// Section 10's nginx lines (its sysctl lines are a sysctl.conf, `ringway preflight`'s
/// business) at the top of section 2's nginx.conf.
fn s10() -> String {
    let text = section("10. Nginx", "net.core.somaxconn");
    format!("{text}{}", s2())
}

/// Import `text` written as `dir/name`; (exit code, the TOML written, all printed).
fn import(dir: &Path, name: &str, text: &str) -> (Option<i32>, String, String) {
    let file = dir.join(name);
    std::fs::write(&file, text).unwrap();
    import_file(&file)
}

fn import_file(file: &Path) -> (Option<i32>, String, String) {
    let out = file.with_extension("toml");
    let _ = std::fs::remove_file(&out);
    let (code, printed) = ringway(&[
        "import-nginx",
        file.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
    ]);
    (
        code,
        std::fs::read_to_string(&out).unwrap_or_default(),
        printed,
    )
}

fn check(toml: &Path) -> String {
    let (code, out) = ringway(&["check", "--config", toml.to_str().unwrap()]);
    assert_eq!(code, Some(0), "ringway check {}:\n{out}", toml.display());
    out
}

/// Every directive of `file` (and what it includes) is named by its file:line in the output
/// or in a warning, but for the blocks that only hold others and a map's entries.
fn nothing_silent(file: &Path, toml: &str, printed: &str) {
    fn walk(list: &[ringway_nginx::Directive], all: &str, missing: &mut Vec<String>) {
        for d in list {
            let at = d.at.to_string();
            let container = matches!(d.name.as_str(), "http" | "events");
            if !container
                && !all.contains(&format!("{at}:"))
                && !all.contains(&format!("{at})"))
                && !all.contains(&format!("{at},"))
                && !all.contains(&format!("{at}\n"))
            {
                missing.push(format!("{at} {} {:?}", d.name, d.args));
            }
            // A block left out as a whole (said so in its warning) covers what is inside.
            let left_out = all.lines().any(|l| {
                l.contains(&format!("{at}: `"))
                    && (l.contains("left out") || l.contains("not imported"))
            });
            if d.name != "map"
                && !left_out
                && let Some(b) = &d.block
            {
                walk(b, all, missing);
            }
        }
    }
    let list = ringway_nginx::directives(file).unwrap();
    let all = format!("{toml}\n{printed}\n");
    let mut missing = Vec::new();
    walk(&list, &all, &mut missing);
    assert!(
        missing.is_empty(),
        "directives neither translated nor warned about: {missing:#?}\n{all}"
    );
}

fn imported(dir: &Path, name: &str, text: &str) -> (String, String) {
    let (code, toml, printed) = import(dir, name, text);
    assert_eq!(code, Some(0), "import of {name}:\n{printed}\n{toml}");
    nothing_silent(&dir.join(name), &toml, &printed);
    (toml, printed)
}

#[test]
fn every_playbook_config_imports_and_checks() {
    let dir = scratch("import-playbook");

    // 2: the basic configuration.
    let (toml, printed) = imported(&dir, "s2.conf", &s2());
    for want in [
        "name = \"websocket_backend\"",
        "keepalive = 10",
        "{ addr = \"192.168.1.100:8080\" }",
        "{ addr = \"192.168.1.101:8080\" }",
        "listen = [\"0.0.0.0:80\"]",
        "server_name = [\"ws.example.com\"]",
        "path = \"/ws/\"",
        "read_timeout = \"1h\"",
        "send_timeout = \"1h\"",
        "connect_timeout = \"30s\"",
    ] {
        assert!(toml.contains(want), "{want} missing:\n{toml}");
    }
    // Warned about: the constant Connection (section 3's pitfall); noted: buffering, cache.
    for want in [
        "s2.conf:14: `proxy_set_header Connection upgrade`: ringway sends Connection: upgrade only with an upgrade",
        "s2.conf:22: `proxy_buffering off`: what ringway always does",
        "s2.conf:23: `proxy_cache off`: ringway caches nothing",
    ] {
        assert!(printed.contains(want), "{want} missing:\n{printed}");
    }
    // Recognised: the forwarding headers ringway sends anyway.
    assert!(toml.contains("# proxy_set_header Upgrade ("), "{toml}");
    assert!(!printed.contains("X-Real-IP $remote_addr`"), "{printed}");
    check(&dir.join("s2.toml"));

    // 3: the map, recognised as ringway's own rule; no Connection warning left.
    let (toml, printed) = imported(&dir, "s3.conf", &s3());
    assert!(
        toml.contains("s3.conf:2: map $http_upgrade $connection_upgrade: ringway's own rule"),
        "{toml}"
    );
    assert!(!printed.contains("Connection"), "{printed}");
    check(&dir.join("s3.toml"));

    // 4: the production configuration, with a certificate where its paths point.
    let pki = pki();
    let s4 = section("4. Full Production", "5. HTTP/2")
        .replace("/etc/nginx/ssl/example.com.crt", pki.cert.to_str().unwrap())
        .replace("/etc/nginx/ssl/example.com.key", pki.key.to_str().unwrap());
    let (toml, printed) = imported(&dir, "s4.conf", &s4);
    for want in [
        "balance = \"ip_hash\"",
        "{ addr = \"10.0.1.10:8080\", weight = 3 }",
        "{ addr = \"10.0.1.11:8080\", weight = 2 }",
        "{ addr = \"10.0.1.12:8080\", backup = true }",
        "health_check = { interval = \"3s\", rise = 2, fall = 3, timeout = \"1s\", type = \"http\", request = \"GET /health HTTP/1.0\\r\\n\\r\\n\", expect = [\"2xx\", \"3xx\"] }",
        "listen = [\"0.0.0.0:443\"]",
        "protocols = [\"TLSv1.2\", \"TLSv1.3\"]",
        "read_timeout = \"1d\"",
        "limit_conn = { zone = \"ws_conn\", max = 1000 }",
        "http2 = true",
        "[[limit_conn_zone]]",
        "size = \"10m\"",
    ] {
        assert!(toml.contains(want), "{want} missing:\n{toml}");
    }
    for want in [
        "$connection_upgrade is not defined in this configuration",
        "ip_hash with a backup server: nginx -t refuses this combination",
        "outside http { }",
    ] {
        assert!(printed.contains(want), "{want} missing:\n{printed}");
    }
    // `listen 443 ssl http2` is HTTP/2 on that server, without a warning.
    assert!(toml.contains("s4.conf:15: listen … http2"), "{toml}");
    assert!(!printed.contains("http2"), "{printed}");
    let described = check(&dir.join("s4.toml"));
    assert!(
        described.contains("balance=ip_hash") && described.contains("health_check"),
        "{described}"
    );

    // 6: Docker / Kubernetes: a service name (here one that resolves on any host).
    let s6 = section("6. Docker", "In cloud").replace("websocket-service", "localhost");
    let (toml, printed) = imported(&dir, "s6.conf", &s6);
    assert!(toml.contains("{ addr = \"localhost:8080\" }"), "{toml}");
    assert!(toml.contains("read_timeout = \"7d\""), "{toml}");
    assert!(
        printed.contains("no proxy_set_header Host: nginx would send the upstream's name"),
        "{printed}"
    );
    check(&dir.join("s6.toml"));
    // As written, the name does not resolve here: the import says where, and exits 1.
    let (code, _, printed) = import(&dir, "s6-name.conf", &section("6. Docker", "In cloud"));
    assert_eq!(code, Some(1), "{printed}");
    assert!(
        printed.contains("servers[0].addr: cannot resolve \"websocket-service\""),
        "{printed}"
    );

    // 8: ip_hash in section 2's upstream.
    let (toml, _) = imported(&dir, "s8.conf", &s8());
    assert!(toml.contains("balance = \"ip_hash\""), "{toml}");
    check(&dir.join("s8.toml"));

    // 10: the process-wide lines.
    let (toml, printed) = imported(&dir, "s10.conf", &s10());
    assert!(toml.contains("workers = \"auto\""), "{toml}");
    let cpus = std::thread::available_parallelism().unwrap().get() as u64;
    assert!(
        toml.contains(&format!("max_connections = {}", 65535 * cpus / 2)),
        "{toml}"
    );
    for want in [
        "s10.conf:2: `worker_rlimit_nofile 200000`: ringway does not set its descriptor limit: give the process LimitNOFILE=200000",
        "s10.conf:5: `use epoll`",
    ] {
        assert!(printed.contains(want), "{want} missing:\n{printed}");
    }
    check(&dir.join("s10.toml"));
}

/// nginx takes any timeout; ringway's longest is 24 days (its sessions keep 32-bit clocks): a
/// longer one imports as 24 days with a warning naming the line, and the result checks.
#[test]
fn a_timeout_longer_than_ringways_longest_imports_as_24_days_with_a_warning() {
    let dir = scratch("import-long-timeout");
    let text = s2().replace("proxy_read_timeout 3600s;", "proxy_read_timeout 365d;");
    let (toml, printed) = imported(&dir, "nginx.conf", &text);
    assert!(toml.contains("read_timeout = \"24d\""), "{toml}");
    assert!(
        printed.contains("nginx.conf:19: `proxy_read_timeout 365d`: longer than ringway's longest timeout: imported as 24d"),
        "{printed}"
    );
}

#[test]
fn the_imported_section_2_proxies_a_websocket() {
    if !uring_ok() {
        return;
    }
    let dir = scratch("import-s2-run");
    let (b1, b2, listen) = (free_addr(), free_addr(), free_addr());
    let _echo = echo(&[b1, b2], &dir);
    let text = s2()
        .replace("192.168.1.100:8080", &b1.to_string())
        .replace("192.168.1.101:8080", &b2.to_string())
        .replace("listen 80;", &format!("listen {listen};"));
    let (toml, _) = imported(&dir, "nginx.conf", &text);
    // A process-wide limit this machine can hold (the imported file has none).
    let toml = format!("[runtime]\nworkers = 2\nmax_connections = 5000\n{toml}");
    let cfg = dir.join("nginx.toml");
    std::fs::write(&cfg, &toml).unwrap();
    let mut p = spawn(&["run", "--config", cfg.to_str().unwrap()], &dir, "proxy");
    wait_port(listen, &mut p);
    for i in 0..4u8 {
        let mut ws = ws_connect(listen, "/ws/chat");
        ws_echo(&mut ws, vec![i; 1000 + usize::from(i)]);
        let _ = ws.close(None);
    }
    // Both servers of the imported upstream served (round robin).
    let log = p.wait_log(&b2.to_string(), 5);
    assert!(log.contains(&b1.to_string()), "{log}");
    // Outside /ws/ nothing is proxied (nginx's config has no other location).
    let resp = raw_exchange(
        listen,
        b"GET /other HTTP/1.1\r\nHost: ws.example.com\r\n\r\n",
        5,
    );
    assert_eq!(status_of(&resp), 404);
}

#[test]
fn malformed_or_broken_nginx_files_get_a_file_and_line() {
    let dir = scratch("import-malformed");
    std::fs::create_dir_all(dir.join("conf.d")).unwrap();
    std::fs::write(
        dir.join("conf.d/ws.conf"),
        "server {\n    listen 80;\n    location /ws/ {\n        proxy_pass http://127.0.0.1:9001\n    }\n}\n",
    )
    .unwrap();
    let main = "http {\n    include conf.d/*.conf;\n}\n";
    let (code, toml, printed) = import(&dir, "nginx.conf", main);
    assert_eq!(code, Some(1), "{printed}");
    let inc = dir.join("conf.d/ws.conf");
    assert!(
        printed.contains(&format!(
            "{}:5: unexpected \"}}\": directive \"proxy_pass\" is not terminated by \";\"",
            inc.display()
        )),
        "{printed}"
    );
    assert!(toml.is_empty(), "nothing is written on an error: {toml}");

    let nginx = |name: &str| dir.join(name).display().to_string();
    for (name, text, want) in [
        (
            "brace.conf",
            "http {\n  server {\n    listen 80;\n",
            ":4: unexpected end of file, expecting \"}\"",
        ),
        ("extra.conf", "http {\n}\n}\n", ":3: unexpected \"}\""),
        (
            "quote.conf",
            "http {\n  server_name \"a;\n}\n",
            ":2: unterminated quoted string",
        ),
        (
            "time.conf",
            "http { server { listen 80; location / {\n proxy_pass http://127.0.0.1:1;\n proxy_read_timeout 5x;\n } } }\n",
            ":3: proxy_read_timeout: invalid duration \"5x\"",
        ),
        (
            "args.conf",
            "http { upstream u {\n server 127.0.0.1:1 weight=x;\n } }\n",
            ":2: server: invalid number \"x\"",
        ),
        (
            "empty-upstream.conf",
            "http {\n upstream u { ip_hash; }\n}\n",
            ":2: no servers are inside upstream \"u\"",
        ),
        (
            "sysctl.conf",
            "worker_processes auto;\nnet.core.somaxconn = 65535\nnet.ipv4.tcp_fin_timeout = 15\n",
            ":4: unexpected end of file: directive \"net.core.somaxconn\" is not terminated by \";\"",
        ),
        ("missing.conf", "include nowhere.conf;\n", ":1: include"),
        ("self.conf", "include self.conf;\n", ":1: include of"),
        (
            "nocert.conf",
            "http { server {\n listen 443 ssl;\n location / { proxy_pass http://127.0.0.1:1; }\n} }\n",
            ":1: server with listen … ssl has no ssl_certificate",
        ),
    ] {
        let (code, _, printed) = import(&dir, name, text);
        assert_eq!(code, Some(1), "{name}: {printed}");
        assert!(
            printed.contains(&format!("{}{want}", nginx(name))),
            "{name}: want {want:?}:\n{printed}"
        );
    }
    // Not an nginx file at all.
    let (code, printed) = ringway(&["import-nginx", "/dev/zero"]);
    assert_eq!(code, Some(1), "{printed}");
    assert!(
        printed.contains("/dev/zero: not a regular file"),
        "{printed}"
    );
}

#[test]
fn includes_servers_on_two_kinds_of_listener_and_what_has_no_equivalent() {
    let dir = scratch("import-conf-d");
    std::fs::create_dir_all(dir.join("conf.d")).unwrap();
    let pki = pki();
    std::fs::write(
        dir.join("conf.d/10-upstreams.conf"),
        "upstream chat {\n    least_conn;\n    server 127.0.0.1:9001 max_fails=2 fail_timeout=5s;\n    server 127.0.0.1:9002 down;\n    server 127.0.0.1:9003 max_conns=100;\n    keepalive 16;\n}\nupstream feed {\n    hash $arg_room consistent;\n    server 127.0.0.1:9004;\n    server 127.0.0.1:9005 backup;\n}\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("conf.d/20-chat.conf"),
        format!(
            "server {{\n    listen 127.0.0.1:18080;\n    listen 127.0.0.1:18443 ssl default_server;\n    server_name chat.example.com .example.org;\n    ssl_certificate {};\n    ssl_certificate_key {};\n    ssl_protocols TLSv1 TLSv1.2;\n    client_header_timeout 5s;\n    large_client_header_buffers 4 16k;\n    add_header X-Frame-Options DENY;\n    location /chat/ {{\n        proxy_pass http://chat;\n        proxy_set_header X-Request-Id $request_id;\n        proxy_bind 127.0.0.2;\n        limit_req zone=hs burst=20 nodelay;\n        limit_req_status 429;\n        proxy_next_upstream error timeout http_502 non_idempotent;\n    }}\n    location /feed/ {{\n        proxy_pass https://feed;\n    }}\n    location ~ \\.php$ {{\n        fastcgi_pass 127.0.0.1:9000;\n    }}\n    location /static/ {{\n        root /srv;\n    }}\n    location /old/ {{\n        proxy_pass http://chat;\n        if ($http_upgrade = \"\") {{\n            return 426;\n        }}\n    }}\n}}\n",
            pki.cert.display(),
            pki.key.display()
        ),
    )
    .unwrap();
    let main = "user www-data;\nworker_processes 4;\nevents {\n    worker_connections 10000;\n    multi_accept on;\n}\nhttp {\n    include conf.d/*.conf;\n    limit_req_zone $binary_remote_addr zone=hs:10m rate=10r/s;\n    gzip on;\n    proxy_read_timeout 120s;\n}\nstream {\n    server { listen 5000; proxy_pass 127.0.0.1:5001; }\n}\n";
    let (toml, printed) = imported(&dir, "nginx.conf", main);
    for want in [
        "workers = 4",
        "max_connections = 20000",
        "balance = \"least_conn\"",
        "max_fails = 2, fail_timeout = \"5s\"",
        "down = true",
        "max_conns = 100",
        "keepalive = 16",
        "balance = \"hash\"",
        "hash = { key = \"$arg_room\", consistent = true }",
        "listen = [\"127.0.0.1:18080\"]",
        "listen = [\"127.0.0.1:18443\"]",
        "server_name = [\"chat.example.com\", \"example.org\", \"*.example.org\"]",
        "protocols = [\"TLSv1.2\"]",
        "header_timeout = \"5s\"",
        "header_max = \"64k\"",
        "header_line_max = \"16k\"",
        "source = \"127.0.0.2\"",
        "limit_req = { zone = \"hs\", burst = 20, nodelay = true, status = 429 }",
        "next_upstream = [\"error\", \"timeout\", \"http_502\"]",
        "read_timeout = \"2m\"",
        "tls = { verify = false }",
        "rate = \"10r/s\"",
    ] {
        assert!(toml.contains(want), "{want} missing:\n{toml}");
    }
    // The TLS server (default_server) comes first; the plain one is its own [[server]].
    let tls_at = toml.find("listen = [\"127.0.0.1:18443\"]").unwrap();
    let plain_at = toml.find("listen = [\"127.0.0.1:18080\"]").unwrap();
    assert!(tls_at < plain_at, "{toml}");
    let inc = dir.join("conf.d/20-chat.conf").display().to_string();
    for want in [
        format!(
            "{inc}:7: `ssl_protocols TLSv1 TLSv1.2`: TLSv1: rustls speaks TLS 1.2 and 1.3 only"
        ),
        format!("{inc}:10: `add_header X-Frame-Options DENY`"),
        format!(
            "{inc}:13: `proxy_set_header X-Request-Id $request_id`: ringway sends no headers of its own making"
        ),
        format!(
            "{inc}:17: `proxy_next_upstream error timeout http_502 non_idempotent`: non_idempotent"
        ),
        format!("{inc}:22: `location ~ \\.php$`: regular-expression locations are not supported"),
        format!("{inc}:25: `location /static/`: no proxy_pass"),
        format!("{inc}:30: `if ($http_upgrade = \"\" )`: ringway has no rewriting"),
        "this block and the 1 directive(s) in it are left out".to_string(),
        format!("{inc}:20: `proxy_pass https://feed`: nginx does not verify upstream certificates"),
        format!("{}:13: `stream`", dir.join("nginx.conf").display()),
        format!("{}:10: `gzip on`", dir.join("nginx.conf").display()),
        format!("{}:1: `user www-data`", dir.join("nginx.conf").display()),
        format!("{}:5: `multi_accept on`", dir.join("nginx.conf").display()),
    ] {
        assert!(printed.contains(&want), "{want} missing:\n{printed}");
    }
    assert!(
        printed.contains("backup servers cannot be used with hash"),
        "{printed}"
    );
    check(&dir.join("nginx.toml"));
    // -o does not overwrite what exists.
    let out: PathBuf = dir.join("nginx.toml");
    let (code, printed) = ringway(&[
        "import-nginx",
        dir.join("nginx.conf").to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
    ]);
    assert_eq!(code, Some(1));
    assert!(
        printed.contains("exists: choose another --output or add --force"),
        "{printed}"
    );
}

#[test]
fn mangled_nginx_files_never_panic_the_importer() {
    let dir = scratch("import-mangled");
    let seeds = [
        s2(),
        s3(),
        s8(),
        s10(),
        section("4. Full Production", "5. HTTP/2"),
    ];
    let pieces = [
        "{",
        "}",
        ";",
        "\"",
        "'",
        "\\",
        "$",
        "#",
        "\n",
        " ",
        "=",
        ":",
        "location",
        "server",
        "listen",
        "ssl",
        "proxy_pass",
        "http://",
        "upstream",
        "include",
        "*",
        "map",
        "0",
        "99999999999999999999",
        "é",
        "\u{0}",
    ];
    let mut rng = Rng(0x5eed_2026);
    let file = dir.join("m.conf");
    let (mut ok, mut err) = (0, 0);
    for i in 0..3000 {
        let mut t: Vec<char> = seeds[i % seeds.len()].chars().collect();
        for _ in 0..1 + rng.below(6) {
            let at = rng.below(t.len() + 1);
            match rng.below(3) {
                0 if at < t.len() => {
                    let n = 1 + rng.below(8).min(t.len() - at - 1);
                    t.drain(at..at + n);
                }
                _ => {
                    let p = pieces[rng.below(pieces.len())];
                    for (k, c) in p.chars().enumerate() {
                        t.insert(at + k, c);
                    }
                }
            }
        }
        let text: String = t.into_iter().collect();
        std::fs::write(&file, &text).unwrap();
        match ringway_nginx::import(&file) {
            Ok(out) => {
                ok += 1;
                // What it writes is TOML (it may not check: a mangled address, say).
                assert!(
                    toml::from_str::<toml::Table>(&out.toml).is_ok(),
                    "{text}\n{}",
                    out.toml
                );
            }
            Err(e) => {
                err += 1;
                assert!(
                    e.to_string().starts_with(&format!("{}", file.display())),
                    "{e}"
                );
            }
        }
    }
    assert!(ok > 100 && err > 100, "{ok} imported, {err} refused");
}

#[test]
fn balancers_in_front_proxy_protocol_and_the_real_client_address() {
    let dir = scratch("import-real-ip");
    let text = "http {\n    set_real_ip_from 10.0.0.0/8;\n    set_real_ip_from 192.0.2.7;\n    real_ip_header proxy_protocol;\n    server {\n        listen 127.0.0.1:18081 proxy_protocol;\n        location / { proxy_pass http://127.0.0.1:9001; proxy_set_header Host $host; }\n    }\n    server {\n        listen 127.0.0.1:18082;\n        set_real_ip_from 192.168.0.0/16;\n        real_ip_header X-Forwarded-For;\n        real_ip_recursive on;\n        location / { proxy_pass http://127.0.0.1:9001; proxy_set_header Host $host; }\n    }\n}\n";
    let (toml, printed) = imported(&dir, "nginx.conf", text);
    for want in [
        "proxy_protocol = true",
        "trusted_proxies = [\"10.0.0.0/8\", \"192.0.2.7\"]",
        "trusted_proxies = [\"192.168.0.0/16\"]",
        "real_ip_header = \"X-Forwarded-For\"",
    ] {
        assert!(toml.contains(want), "{want} missing:\n{toml}");
    }
    assert!(
        printed.contains("`real_ip_recursive on`: ringway takes the last address"),
        "{printed}"
    );
    check(&dir.join("nginx.toml"));
    // A PROXY listener without set_real_ip_from: nginx trusts anyone; the import says so.
    let text = "server {\n    listen 127.0.0.1:18083 proxy_protocol;\n    location / { proxy_pass http://127.0.0.1:9001; proxy_set_header Host $host; }\n}\n";
    let (toml, printed) = imported(&dir, "open.conf", text);
    assert!(
        toml.contains("trusted_proxies = [\"0.0.0.0/0\", \"::/0\"]"),
        "{toml}"
    );
    assert!(
        printed.contains("no set_real_ip_from: nginx trusts any peer's PROXY header"),
        "{printed}"
    );
    check(&dir.join("open.toml"));
}

#[test]
fn https_upstreams_send_sni_and_verify_only_as_nginx_was_told() {
    let dir = scratch("import-ssl-upstream");
    let ca = pki().ca.display().to_string();
    let text = format!(
        "server {{\n    listen 127.0.0.1:18090;\n    proxy_set_header Host $host;\n    location /plain/ {{ proxy_pass https://localhost:8443; }}\n    location /sni/ {{ proxy_pass https://127.0.0.1:8444; proxy_ssl_server_name on; proxy_ssl_name chat.internal; }}\n    location /verify/ {{ proxy_pass https://localhost:8445; proxy_ssl_verify on; proxy_ssl_trusted_certificate {ca}; }}\n}}\n"
    );
    let (toml, printed) = imported(&dir, "nginx.conf", &text);
    for want in [
        // nginx's defaults: no SNI, no verification.
        "tls = { verify = false }",
        "tls = { verify = false, sni = \"chat.internal\" }",
        &format!("tls = {{ verify = true, ca = \"{ca}\", sni = \"localhost\" }}"),
    ] {
        assert!(toml.contains(want), "{want} missing:\n{toml}");
    }
    assert!(
        printed
            .matches("nginx does not verify upstream certificates")
            .count()
            == 2,
        "{printed}"
    );
    check(&dir.join("nginx.toml"));
}

#[test]
fn what_an_import_reads_is_bounded() {
    let dir = scratch("import-bounds");
    let expect = |main: &Path, want: &str| {
        let (code, printed) = ringway(&["import-nginx", main.to_str().unwrap()]);
        assert_eq!(code, Some(1), "{printed}");
        assert!(printed.contains(want), "want {want:?}:\n{printed}");
    };
    // One file over 4 MiB.
    let big = dir.join("big.conf");
    std::fs::write(&big, "#".repeat(5 << 20)).unwrap();
    expect(&big, "larger than 4194304 bytes");
    // Files that come to more than 16 MiB together.
    std::fs::create_dir_all(dir.join("many-big")).unwrap();
    for i in 0..5 {
        let f = dir.join(format!("many-big/{i}.conf"));
        std::fs::write(f, format!("{}\n", "#".repeat(7 << 19))).unwrap();
    }
    let main = dir.join("many-big.conf");
    std::fs::write(&main, "include many-big/*.conf;\n").unwrap();
    expect(&main, "with it the files included come to more than 16 MiB");
    // More than 1,000 files.
    std::fs::create_dir_all(dir.join("many")).unwrap();
    for i in 0..1001 {
        std::fs::write(dir.join(format!("many/{i:04}.conf")), "").unwrap();
    }
    let main = dir.join("many.conf");
    std::fs::write(&main, "include many/*.conf;\n").unwrap();
    expect(&main, "many.conf:1: more than 1000 files included");
    // A chain of includes deeper than 16.
    for i in 0..20 {
        std::fs::write(
            dir.join(format!("chain{i}.conf")),
            format!("include chain{}.conf;\n", i + 1),
        )
        .unwrap();
    }
    std::fs::write(dir.join("chain20.conf"), "").unwrap();
    expect(
        &dir.join("chain0.conf"),
        "include nested deeper than 16 files",
    );
}

#[test]
fn limits_one_per_location_with_their_status() {
    let dir = scratch("import-limits");
    let text = "http {\n    limit_conn_zone $binary_remote_addr zone=per_ip:10m;\n    limit_conn_zone $server_name zone=per_host:1m;\n    limit_req_zone $binary_remote_addr zone=rps:10m rate=20r/s;\n    limit_conn_status 429;\n    limit_conn per_ip 50;\n    server {\n        listen 127.0.0.1:18091;\n        location /a/ {\n            proxy_pass http://127.0.0.1:9001;\n            proxy_set_header Host $host;\n        }\n        location /b/ {\n            limit_conn per_ip 10;\n            limit_conn per_host 1000;\n            limit_req zone=rps burst=40 nodelay;\n            limit_req zone=rps burst=5 delay=2;\n            limit_req_status 503;\n            proxy_pass http://127.0.0.1:9001;\n            proxy_set_header Host $host;\n        }\n    }\n}\n";
    let (toml, printed) = imported(&dir, "nginx.conf", text);
    // /a/ inherits the http level's limit_conn and its status; /b/ replaces the list.
    for want in [
        "limit_conn = { zone = \"per_ip\", max = 50, status = 429 }",
        "limit_conn = { zone = \"per_ip\", max = 10, status = 429 }",
        "limit_req = { zone = \"rps\", burst = 40, nodelay = true, status = 503 }",
    ] {
        assert!(toml.contains(want), "{want} missing:\n{toml}");
    }
    assert!(!toml.contains("per_host\", max"), "{toml}");
    for want in [
        "nginx.conf:15: `limit_conn per_host 1000`: ringway takes one limit_conn per location: this one is left out",
        "nginx.conf:17: `limit_req zone=rps burst=5 delay=2`: ringway takes one limit_req per location: this one is left out",
    ] {
        assert!(printed.contains(want), "{want} missing:\n{printed}");
    }
    check(&dir.join("nginx.toml"));
}

/// `-o PATH` never writes through a symbolic link at PATH: with `--force` the link itself is
/// replaced by the new file (its target untouched), and without it a dangling link counts as
/// something that exists (its target is not created).
#[test]
fn output_never_follows_a_link() {
    let dir = scratch("import-links");
    let conf = dir.join("nginx.conf");
    std::fs::write(&conf, s2()).unwrap();
    let conf = conf.to_str().unwrap();
    // A link to a file that must stay as it is.
    let precious = dir.join("precious");
    std::fs::write(&precious, "keep me\n").unwrap();
    let out = dir.join("out.toml");
    std::os::unix::fs::symlink(&precious, &out).unwrap();
    let (code, printed) = ringway(&["import-nginx", conf, "-o", out.to_str().unwrap()]);
    assert_eq!(code, Some(1), "{printed}");
    assert!(printed.contains("exists"), "{printed}");
    let (code, printed) = ringway(&["import-nginx", conf, "-o", out.to_str().unwrap(), "--force"]);
    assert_eq!(code, Some(0), "{printed}");
    assert_eq!(std::fs::read_to_string(&precious).unwrap(), "keep me\n");
    let meta = std::fs::symlink_metadata(&out).unwrap();
    assert!(
        meta.file_type().is_file(),
        "the link was replaced by a file"
    );
    assert!(
        std::fs::read_to_string(&out)
            .unwrap()
            .contains("[[upstream]]")
    );
    // A dangling link: its target is never created.
    let target = dir.join("created-through-the-link");
    let dangling = dir.join("dangling.toml");
    std::os::unix::fs::symlink(&target, &dangling).unwrap();
    let (code, printed) = ringway(&["import-nginx", conf, "-o", dangling.to_str().unwrap()]);
    assert_eq!(code, Some(1), "{printed}");
    assert!(printed.contains("exists"), "{printed}");
    assert!(!target.exists());
    let (code, printed) = ringway(&[
        "import-nginx",
        conf,
        "-o",
        dangling.to_str().unwrap(),
        "--force",
    ]);
    assert_eq!(code, Some(0), "{printed}");
    assert!(!target.exists());
    assert!(
        std::fs::symlink_metadata(&dangling)
            .unwrap()
            .file_type()
            .is_file()
    );
    // No temporary file is left beside the output.
    let left: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".tmp-"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn http2_on_and_its_stream_limit_import_as_server_keys() {
    let dir = scratch("import-http2");
    let conf = "events {}\nhttp {\n  upstream app { server 127.0.0.1:8080; }\n  server {\n    listen 8443;\n    http2 on;\n    http2_max_concurrent_streams 500;\n    location / { proxy_pass http://app; }\n  }\n  server {\n    listen 8444;\n    http2 off;\n    location / { proxy_pass http://app; }\n  }\n}\n";
    let (toml, printed) = imported(&dir, "h2.conf", conf);
    assert_eq!(toml.matches("http2 = true").count(), 1, "{toml}");
    assert!(toml.contains("h2.conf:6: http2 on"), "{toml}");
    // More than ringway takes on one connection: its most, with a warning.
    assert!(
        toml.contains("http2_max_concurrent_streams = 128"),
        "{toml}"
    );
    assert!(
        printed
            .contains("h2.conf:7: `http2_max_concurrent_streams 500`: ringway takes at most 128"),
        "{printed}"
    );
    check(&dir.join("h2.toml"));
}

/// nginx's auth_request with its internal location and auth_request_set: one `auth_request`
/// table in the location that asks (the internal location is not imported: clients must not
/// reach it), and a location whose target is missing is left out, not imported open.
#[test]
fn auth_request_and_its_internal_location_become_one_table() {
    let dir = scratch("import-auth");
    let text = "http {\n    upstream chat { server 127.0.0.1:9001; }\n    upstream auth_backend { server 127.0.0.1:9002; keepalive 16; }\n    server {\n        listen 127.0.0.1:18093;\n        location /ws/ {\n            auth_request /auth;\n            auth_request_set $user $upstream_http_x_user;\n            proxy_set_header X-User $user;\n            proxy_set_header Host $host;\n            proxy_pass http://chat;\n        }\n        location = /auth {\n            internal;\n            proxy_pass http://auth_backend/verify;\n            proxy_pass_request_body off;\n            proxy_set_header Content-Length \"\";\n            proxy_set_header X-Original-URI $request_uri;\n        }\n        location /open/ {\n            auth_request /nowhere;\n            proxy_set_header Host $host;\n            proxy_pass http://chat;\n        }\n    }\n}\n";
    let (toml, printed) = imported(&dir, "nginx.conf", text);
    assert!(
        toml.contains("auth_request = { upstream = \"auth_backend\", uri = \"/verify\", set = { \"X-User\" = \"x-user\" } }"),
        "{toml}"
    );
    assert!(!toml.contains("path = \"/auth\""), "{toml}");
    assert!(!toml.contains("path = \"/open/\""), "{toml}");
    assert!(
        printed.contains("nginx.conf:13: `location = /auth`: internal"),
        "{printed}"
    );
    assert!(
        printed.contains(
            "nginx.conf:20: `location /open/`: auth_request /nowhere: no location /nowhere"
        ),
        "{printed}"
    );
    let checked = check(&dir.join("nginx.toml"));
    assert!(checked.contains("configuration OK"), "{checked}");
}
