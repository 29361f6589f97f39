//! The admin endpoint as something that may face a network: a bearer token (read from a file,
//! rotated by rewriting it, sent by `ringway reload`), the Host check against DNS rebinding, no
//! cross-site writes, reload only on loopback without a token, and `/healthz` answering while
//! hundreds of idle connections hold the port. Real processes and sockets.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::*;

const TOKEN: &str = "3f1c9a7e5b2d4f608a1b3c5d7e9f0a2b4c6d8e0f1a3b5c7d";
const ROTATED: &str = "9e8d7c6b5a4f3e2d1c0b9a8f7e6d5c4b3a2f1e0d9c8b7a6f";

fn bearer(t: &str) -> String {
    format!("Authorization: Bearer {t}\r\n")
}

fn body(out: &[u8]) -> String {
    let text = String::from_utf8_lossy(out);
    text.split_once("\r\n\r\n")
        .map_or(String::new(), |(_, b)| b.to_string())
}

/// The proxy on a config with `[admin]` as given.
fn start(name: &str, admin_table: &str) -> (Stack, std::path::PathBuf) {
    let st = stack(name, "", "", admin_table);
    let path = st.dir.join("ringway.toml");
    (st, path)
}

#[test]
fn the_token_guards_every_endpoint_but_healthz_and_follows_its_file() {
    if !uring_ok() {
        return;
    }
    let admin = free_addr();
    let dir = scratch("admin-token");
    let token_file = dir.join("admin.token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let (st, path) = start(
        "admin-token",
        &format!(
            "[admin]\nlisten = \"{admin}\"\ntoken_file = \"{}\"",
            token_file.display()
        ),
    );
    // /healthz needs no token; everything else does, and says how to give it.
    assert_eq!(status_of(&admin_get(admin, "/healthz")), 200);
    for path in ["/status", "/metrics"] {
        let out = admin_get(admin, path);
        assert_eq!(status_of(&out), 401, "{path}");
        let text = String::from_utf8_lossy(&out);
        assert!(
            text.contains("WWW-Authenticate: Bearer realm=\"ringway admin\""),
            "{text}"
        );
        assert!(!text.contains("127.0.0.1:"), "no address leaks: {text}");
    }
    assert_eq!(status_of(&admin_request(admin, "POST", "/reload", "")), 401);
    let wrong = format!("{}0", &TOKEN[..TOKEN.len() - 1]);
    assert_eq!(
        status_of(&admin_request(admin, "GET", "/status", &bearer(&wrong))),
        401
    );
    let out = admin_request(admin, "GET", "/status", &bearer(TOKEN));
    assert_eq!(status_of(&out), 200);
    let v: serde_json::Value = serde_json::from_str(&body(&out)).unwrap();
    assert_eq!(v["state"], "serving");
    // `ringway reload` reads the same file and is let in.
    let p = path.to_str().unwrap();
    let (code, out) = ringway(&["reload", "--config", p]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("configuration reloaded"), "{out}");
    // The token rotates by rewriting its file: the old one is refused at once, the new one
    // (and `ringway reload`, which reads it) let in.
    std::fs::write(&token_file, format!("{ROTATED}\n")).unwrap();
    assert_eq!(
        status_of(&admin_request(admin, "GET", "/status", &bearer(TOKEN))),
        401
    );
    assert_eq!(
        status_of(&admin_request(admin, "GET", "/status", &bearer(ROTATED))),
        200
    );
    let (code, out) = ringway(&["reload", "--config", p]);
    assert_eq!(code, Some(0), "{out}");
    // A file that goes bad keeps the last good token in force (and says so).
    std::fs::write(&token_file, "short\n").unwrap();
    assert_eq!(
        status_of(&admin_request(admin, "GET", "/status", &bearer(ROTATED))),
        200
    );
    st.proxy
        .wait_log("the token read before stays in force", 10);
    // The refusals are logged.
    st.proxy.wait_log("admin: GET /status refused (401)", 10);
}

#[test]
fn requests_that_do_not_name_the_endpoint_or_come_cross_site_are_refused() {
    if !uring_ok() {
        return;
    }
    let admin = free_addr();
    let (st, _) = start(
        "admin-host",
        &format!("[admin]\nlisten = \"{admin}\"\nserver_name = [\"ringway-admin.internal\"]"),
    );
    let with_host = |host: &str, path: &str| {
        raw_exchange(
            admin,
            format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes(),
            10,
        )
    };
    // DNS rebinding: a page of attacker.example resolved to 127.0.0.1 sends its own name.
    for host in [
        "attacker.example".to_string(),
        format!("attacker.example:{}", admin.port()),
        format!("127.0.0.2:{}", admin.port()),
        format!("127.0.0.1:{}", admin.port() + 1),
    ] {
        let out = with_host(&host, "/status");
        assert_eq!(status_of(&out), 403, "{host}");
        assert!(!body(&out).contains("\"upstreams\""), "{host}");
    }
    for host in [
        admin.to_string(),
        format!("localhost:{}", admin.port()),
        format!("ringway-admin.internal:{}", admin.port()),
        format!("RINGWAY-ADMIN.internal.:{}", admin.port()),
    ] {
        assert_eq!(status_of(&with_host(&host, "/status")), 200, "{host}");
    }
    // HTTP/1.1 without Host is malformed; HTTP/1.0 without it is a plain balancer check.
    assert_eq!(
        status_of(&raw_exchange(admin, b"GET /healthz HTTP/1.1\r\n\r\n", 10)),
        400
    );
    assert_eq!(
        status_of(&raw_exchange(admin, b"GET /healthz HTTP/1.0\r\n\r\n", 10)),
        200
    );
    // A cross-site form or fetch: refused, and nothing reloaded.
    for extra in [
        "Origin: http://attacker.example\r\n",
        "Origin: null\r\n",
        "Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 3\r\n\r\na=b",
        "Content-Type: text/plain\r\n",
        "Content-Type: multipart/form-data; boundary=x\r\n",
    ] {
        let out = admin_request(admin, "POST", "/reload", extra);
        assert_eq!(status_of(&out), 403, "{extra}");
    }
    assert!(!st.proxy.log_text().contains("configuration reloaded"));
    // The same request without the browser's marks is a reload.
    let out = admin_request(admin, "POST", "/reload", "Content-Length: 0\r\n");
    assert_eq!(status_of(&out), 200, "{}", String::from_utf8_lossy(&out));
    st.proxy.wait_log("configuration reloaded", 10);
    // HEAD gets the head only; other methods 405 with Allow.
    let out = admin_request(admin, "HEAD", "/healthz", "");
    assert_eq!(status_of(&out), 200);
    assert!(body(&out).is_empty());
    let out = admin_request(admin, "DELETE", "/status", "");
    assert_eq!(status_of(&out), 405);
    assert!(String::from_utf8_lossy(&out).contains("Allow: GET, HEAD"));
}

#[test]
fn without_a_token_reload_answers_only_on_loopback_and_check_warns() {
    if !uring_ok() {
        return;
    }
    let port = free_addr().port();
    let admin = SocketAddr::from(([0, 0, 0, 0], port));
    let (st, path) = start("admin-open", &format!("[admin]\nlisten = \"{admin}\""));
    let p = path.to_str().unwrap();
    let (code, out) = ringway(&["check", "--config", p]);
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("is not a loopback address and admin.token_file is not set"),
        "{out}"
    );
    let local = SocketAddr::from(([127, 0, 0, 1], port));
    let out = admin_request(local, "POST", "/reload", "");
    assert_eq!(status_of(&out), 403, "{}", String::from_utf8_lossy(&out));
    assert!(body(&out).contains("admin.token_file"));
    let (code, out) = ringway(&["reload", "--config", p]);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("reload refused (403)"), "{out}");
    assert_eq!(status_of(&admin_get(local, "/healthz")), 200);
    drop(st);
}

#[test]
fn token_file_mistakes_are_config_errors() {
    let dir = scratch("admin-token-errors");
    let cfg = |table: &str| {
        let path = dir.join("ringway.toml");
        std::fs::write(
            &path,
            format!(
                "{table}\n[[upstream]]\nname = \"b\"\nservers = [{{ addr = \"127.0.0.1:1\" }}]\n[[server]]\nlisten = [\"127.0.0.1:1\"]\n[[server.location]]\npath = \"/\"\nupstream = \"b\"\n"
            ),
        )
        .unwrap();
        ringway(&["check", "--config", path.to_str().unwrap()])
    };
    let short = dir.join("short.token");
    std::fs::write(&short, "abc\n").unwrap();
    let (code, out) = cfg(&format!(
        "[admin]\nlisten = \"127.0.0.1:9\"\ntoken_file = \"{}\"",
        short.display()
    ));
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains(":3:14: admin.token_file:") && out.contains("fewer than 32"),
        "{out}"
    );
    let (code, out) = cfg("[admin]\nlisten = \"127.0.0.1:9\"\ntoken_file = \"missing.token\"");
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("admin.token_file") && out.contains("missing.token"),
        "{out}"
    );
    let (code, out) = cfg("[admin]\ntoken_file = \"x\"");
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("admin.listen is not set"), "{out}");
    let open = dir.join("open.token");
    std::fs::write(&open, TOKEN).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (code, out) = cfg(&format!(
        "[admin]\nlisten = \"127.0.0.1:9\"\ntoken_file = \"{}\"",
        open.display()
    ));
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("can be read by other users"), "{out}");
    assert!(!out.contains(TOKEN), "the token is never printed: {out}");
}

/// 600 idle connections (past the 256 the endpoint serves at once) and a trickling client
/// cannot keep a probe out: every `/healthz` is answered in time, and the idle ones are the
/// ones let go.
#[test]
fn healthz_answers_while_hundreds_of_idle_connections_hold_the_port() {
    if !uring_ok() {
        return;
    }
    let admin = free_addr();
    let (st, _) = start("admin-idle", &format!("[admin]\nlisten = \"{admin}\""));
    let mut idle: Vec<TcpStream> = Vec::new();
    for i in 0..600 {
        let s = TcpStream::connect(admin).unwrap();
        if i % 2 == 0 {
            // Half of them start a request and stop.
            let _ = (&s).write_all(b"GET /status HTTP/1.1\r\n");
        }
        idle.push(s);
    }
    let t = Instant::now();
    for i in 0..20 {
        let mut s = TcpStream::connect(admin).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        s.write_all(format!("GET /healthz HTTP/1.1\r\nHost: {admin}\r\n\r\n").as_bytes())
            .unwrap();
        let mut out = Vec::new();
        s.read_to_end(&mut out)
            .unwrap_or_else(|e| panic!("probe {i} not answered: {e}"));
        assert_eq!(
            status_of(&out),
            200,
            "probe {i}: {}",
            String::from_utf8_lossy(&out)
        );
    }
    eprintln!(
        "20 probes answered in {:?} beside 600 idle connections",
        t.elapsed()
    );
    // The idle connections were let go: the oldest first, each by its deadline at the latest.
    let mut closed = 0;
    for s in &mut idle {
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut b = [0u8; 64];
        if matches!(s.read(&mut b), Ok(0) | Err(_)) {
            closed += 1;
        }
    }
    assert_eq!(closed, idle.len(), "every idle connection was closed");
    assert_eq!(status_of(&admin_get(admin, "/healthz")), 200);
    drop(st);
}

/// The admin endpoint's socket is bound before the proxy's listeners: a port already taken
/// stops the start with an error naming the endpoint and the address, and the proxy's own port
/// was never opened (before, the workers listened first and the process served for a moment
/// before it failed; and a client that reached the proxy's port could find the admin port
/// still closed).
#[test]
fn an_admin_port_taken_stops_the_start_before_the_proxy_listens() {
    // A plain listener without SO_REUSEPORT: ringway's bind on the same address fails.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let admin = taken.local_addr().unwrap();
    let dir = scratch("admin-taken");
    let listen = free_addr();
    let path = dir.join("ringway.toml");
    std::fs::write(
        &path,
        config(
            listen,
            &[free_addr()],
            "",
            "",
            &format!("[admin]\nlisten = \"{admin}\""),
        ),
    )
    .unwrap();
    // Watch the proxy's port while the process starts and fails.
    let watching = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let w = watching.clone();
    let watcher = std::thread::spawn(move || {
        let mut reached = 0;
        while w.load(std::sync::atomic::Ordering::Relaxed) {
            if TcpStream::connect_timeout(&listen, Duration::from_millis(50)).is_ok() {
                reached += 1;
            }
        }
        reached
    });
    let (code, text) = ringway(&["run", "--config", path.to_str().unwrap()]);
    watching.store(false, std::sync::atomic::Ordering::Relaxed);
    let reached = watcher.join().unwrap();
    assert_ne!(code, Some(0), "{text}");
    assert!(
        text.contains(&format!("admin endpoint on {admin}")) && text.contains("in use"),
        "{text}"
    );
    assert_eq!(reached, 0, "the proxy's port accepted connections: {text}");
    drop(taken);
}
