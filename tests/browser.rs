//! A real browser as the client: Debian's Chromium, headless, opens `wss://` through ringway
//! (trusting the test certificate by its public key) and echoes messages of several sizes
//! and a text message; the page reports what it saw to the test.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::*;

const CHROMIUM: &str = "/usr/bin/chromium";

const PAGE: &str = r#"<!doctype html>
<html><head><title>ringway wss test</title></head><body><script>
const sizes = [0, 1, 125, 126, 65535, 65536, 300000];
let i = 0, ok = 0;
const errors = [];
function payload(n, seed) {
  const a = new Uint8Array(n);
  for (let k = 0; k < n; k++) a[k] = (k * 7 + seed) & 255;
  return a;
}
function done(text) {
  document.title = text;
  fetch("/report?result=" + encodeURIComponent(text + " ok=" + ok + " errors=" + errors.join(",")));
}
const ws = new WebSocket("wss://localhost:PROXY_PORT/ws/");
ws.binaryType = "arraybuffer";
function next() {
  if (i < sizes.length) ws.send(payload(sizes[i], i));
  else ws.send("text \u2713 message");
}
ws.onopen = next;
ws.onmessage = (e) => {
  if (typeof e.data === "string") {
    done(e.data === "text \u2713 message" ? "done" : "bad-text");
    ws.close(1000, "bye");
    return;
  }
  const got = new Uint8Array(e.data), want = payload(sizes[i], i);
  let same = got.length === want.length;
  for (let k = 0; same && k < got.length; k++) same = got[k] === want[k];
  if (same) ok++; else errors.push(sizes[i]);
  i++;
  next();
};
ws.onerror = () => done("error");
</script></body></html>"#;

/// base64(SHA-256(SubjectPublicKeyInfo)) of a PEM certificate, for Chromium's
/// `--ignore-certificate-errors-spki-list` (trust this key, as a pinned test CA would).
fn spki_hash(cert: &std::path::Path) -> String {
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "openssl x509 -in '{}' -pubkey -noout | openssl pkey -pubin -outform der | openssl dgst -sha256 -binary | base64",
            cert.display()
        ))
        .output()
        .unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// A small HTTP/1.1 server of the test's own: `/` answers `page`, `/report?result=…` sends the
/// result to the returned channel.
fn web_server(page: String) -> (std::net::SocketAddr, mpsc::Receiver<String>) {
    let web = TcpListener::bind("127.0.0.1:0").unwrap();
    let web_addr = web.local_addr().unwrap();
    let (tx, rx) = mpsc::channel::<String>();
    std::thread::spawn(move || {
        for conn in web.incoming() {
            let Ok(mut conn) = conn else { return };
            let mut line = String::new();
            let mut r = BufReader::new(conn.try_clone().unwrap());
            if r.read_line(&mut line).is_err() {
                continue;
            }
            // Skip the rest of the head.
            let mut h = String::new();
            while r.read_line(&mut h).is_ok_and(|n| n > 2) {
                h.clear();
            }
            let path = line.split_whitespace().nth(1).unwrap_or("/").to_string();
            let (ctype, body) = if let Some(q) = path.strip_prefix("/report?result=") {
                let _ = tx.send(q.to_string());
                ("text/plain", String::new())
            } else if path == "/" {
                ("text/html", page.clone())
            } else {
                ("text/plain", "not found".to_string())
            };
            let _ = write!(
                conn,
                "HTTP/1.1 200 OK\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    (web_addr, rx)
}

/// Headless Chromium on `url`, trusting the test certificate, with a profile in `dir`.
fn chromium(dir: &std::path::Path, url: &str) -> Proc {
    let profile = dir.join("chromium-profile");
    Proc {
        child: Command::new(CHROMIUM)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-dev-shm-usage",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg(format!(
                "--ignore-certificate-errors-spki-list={}",
                spki_hash(&pki().cert)
            ))
            .arg(url)
            .stdout(Stdio::null())
            .stderr(Stdio::from(
                std::fs::File::create(dir.join("chromium.log")).unwrap(),
            ))
            .spawn()
            .unwrap(),
        log: dir.join("chromium.log"),
    }
}

/// io_uring works and Chromium is installed (`.ci/run` installs it; a developer machine
/// without it says so, and the test is named among the skipped).
fn runnable() -> bool {
    if !uring_ok() {
        return false;
    }
    if !std::path::Path::new(CHROMIUM).exists() {
        skip(&format!(
            "{CHROMIUM} is not installed (apt-get install chromium; scripts/test.sh does as root)"
        ));
        return false;
    }
    true
}

#[test]
fn chromium_echoes_over_wss_through_ringway() {
    if !runnable() {
        return;
    }
    let st = stack_mode(Mode::Tls, "browser", "", "", "");
    // The page and the report come from a small server of the test's own.
    let page = PAGE.replace("PROXY_PORT", &st.listen.port().to_string());
    let (web_addr, rx) = web_server(page);
    let mut chromium = chromium(&st.dir, &format!("http://{web_addr}/"));
    let result = rx.recv_timeout(Duration::from_secs(60));
    let _ = chromium.child.kill();
    let result = result.unwrap_or_else(|_| {
        panic!(
            "no report from the page within 60 s\nchromium:\n{}\nproxy:\n{}",
            chromium.log_text(),
            st.proxy.log_text()
        )
    });
    let result = result
        .replace("%20", " ")
        .replace("%3D", "=")
        .replace("%2C", ",");
    assert_eq!(result, "done ok=7 errors=", "{}", st.proxy.log_text());
    // The proxy saw a browser's TLS: the tunnel's log line names what was negotiated.
    st.proxy.wait_log("\"GET /ws/\"", 10);
    let log = st.proxy.log_text();
    assert!(
        log.lines().any(|l| l.contains("\"GET /ws/\"")
            && l.contains("tls=TLSv1.3")
            && l.contains("sni=localhost")),
        "{log}"
    );
}

/// The page of the HTTP/2 test: served by ringway over HTTP/2 from a backend of the test's
/// own, it opens a WebSocket to its own origin (Chromium then uses an extended CONNECT on
/// the page's connection, RFC 8441) and reports through the same origin.
const H2_PAGE: &str = r#"<!doctype html>
<html><head><title>ringway h2 test</title></head><body><script>
const sizes = [0, 125, 65536, 300000];
let i = 0, ok = 0;
function payload(n, seed) {
  const a = new Uint8Array(n);
  for (let k = 0; k < n; k++) a[k] = (k * 13 + seed) & 255;
  return a;
}
function done(text) {
  fetch("/report?result=" + encodeURIComponent(text + " ok=" + ok));
}
// Once the page is whole and one more request has gone over its connection: Chromium takes a
// WebSocket over HTTP/2 only on a session that has settled (opened while the page itself was
// still arriving, it went over a new HTTP/1.1 connection 2 runs in ~10).
window.addEventListener("load", () => fetch("/").then(() => {
  const ws = new WebSocket("wss://" + location.host + "/ws/h2-browser");
  ws.binaryType = "arraybuffer";
  ws.onopen = () => ws.send(payload(sizes[0], 0));
  ws.onmessage = (e) => {
    const got = new Uint8Array(e.data), want = payload(sizes[i], i);
    let same = got.length === want.length;
    for (let k = 0; same && k < got.length; k++) same = got[k] === want[k];
    if (same) ok++;
    i++;
    if (i < sizes.length) ws.send(payload(sizes[i], i));
    else { ws.close(1000, "bye"); done("done"); }
  };
  ws.onerror = () => done("error");
}));
</script></body></html>"#;

#[test]
fn chromium_loads_a_page_over_h2_and_opens_its_websocket_on_the_same_connection() {
    if !runnable() {
        return;
    }
    let dir = scratch("browser-h2");
    let backends = vec![free_addr()];
    let _echo = echo(&backends, &dir);
    // The page and the report: a small HTTP/1.1 server of the test's own, behind ringway.
    let (web_addr, rx) = web_server(H2_PAGE.to_string());
    let listen = free_addr();
    let cfg = format!(
        "[runtime]\nworkers = 1\n\n[[upstream]]\nname = \"web\"\nservers = [{{ addr = \"{web_addr}\" }}]\n\n[[upstream]]\nname = \"ws\"\nservers = [{{ addr = \"{}\" }}]\n\n[[server]]\nlisten = [\"{listen}\"]\nhttp2 = true\n{}\n\n[[server.location]]\npath = \"/\"\nupstream = \"web\"\n\n[[server.location]]\npath = \"/ws/\"\nupstream = \"ws\"\nupgrade = [\"websocket\"]\n",
        backends[0],
        tls_line()
    );
    let proxy = proxy(&cfg, listen, &dir);
    let mut chromium = chromium(&dir, &format!("https://localhost:{}/", listen.port()));
    let result = rx.recv_timeout(Duration::from_secs(60));
    let _ = chromium.child.kill();
    let result = result.unwrap_or_else(|_| {
        panic!(
            "no report from the page within 60 s\nchromium:\n{}\nproxy:\n{}",
            chromium.log_text(),
            proxy.log_text()
        )
    });
    let result = result.replace("%20", " ").replace("%3D", "=");
    assert_eq!(result, "done ok=4", "{}", proxy.log_text());
    // On the server side: the WebSocket came as a stream (h2) of a connection that
    // also carried a request of the page (the same client address and port), as an extended CONNECT that the
    // inner session turned into a 101 (ws).
    proxy.wait_log("\"GET /ws/h2-browser\"", 10);
    let log = proxy.log_text();
    let client_of = |needle: &str| {
        log.lines()
            .find(|l| l.contains(needle))
            .and_then(|l| {
                assert!(l.contains(" h2 "), "not over HTTP/2: {l}");
                l.split_whitespace()
                    .find(|w| w.starts_with("127.0.0.1:"))
                    .map(str::to_string)
            })
            .unwrap_or_else(|| panic!("no line with {needle}:\n{log}"))
    };
    client_of("\"GET /\" host=localhost");
    let ws = client_of("\"GET /ws/h2-browser\"");
    // Chromium may open a second HTTP/2 connection for the page's own requests after the
    // navigation's (seen 1 run in ~8): the WebSocket shares one with a request of the page.
    assert!(
        log.lines()
            .any(|l| l.contains("\"GET /\" host=localhost") && l.contains(&format!("{ws} "))),
        "{log}"
    );
    assert!(
        log.lines().any(|l| l.contains("\"GET /ws/h2-browser\"")
            && l.contains("status=101")
            && l.contains(" ws h2 ")),
        "{log}"
    );
}

/// The page of the upgrade test: a WebSocket through ringway that sends a numbered message every
/// 20 ms for 4 s and checks each echo, then closes and reports (to the test's own server, not
/// through ringway) how many came back right, how many did not, and whether the socket closed
/// before the page closed it.
const UPGRADE_PAGE: &str = r#"<!doctype html>
<html><head><title>ringway upgrade test</title></head><body><script>
let sent = 0, ok = 0, bad = 0, closed = 0, mine = false;
const ws = new WebSocket("SCHEME://HOST:PROXY_PORT/ws/upgrade");
CHAT
</script></body></html>"#;

/// What both upgrade pages do with their WebSocket `ws` once it is made: a numbered message
/// every 20 ms for 4 s, each echo checked, then the close and the report.
const UPGRADE_CHAT: &str = r#"ws.onopen = () => {
  const t = setInterval(() => { sent++; ws.send("m" + sent); }, 20);
  setTimeout(() => {
    clearInterval(t);
    setTimeout(() => {
      mine = true;
      ws.close(1000, "bye");
      fetch("/report?result=" + encodeURIComponent(
        "sent=" + sent + " ok=" + ok + " bad=" + bad + " closed=" + closed));
    }, 300);
  }, 4000);
};
ws.onmessage = (e) => { if (e.data === "m" + (ok + bad + 1)) ok++; else bad++; };
ws.onclose = () => { if (!mine) closed++; };"#;

/// A browser's WebSocket lives through `ringway run --upgrade`: its tunnel moves to the new
/// process mid-conversation, and every message it sends comes back, in order, with no close.
#[test]
fn chromium_keeps_its_websocket_across_an_upgrade() {
    if runnable() {
        keeps_its_websocket_across_an_upgrade(Mode::Plain);
    }
}

/// The same over `wss://` (TLS 1.3): the TLS connection's records go on in the new process.
#[test]
fn chromium_keeps_its_wss_websocket_across_an_upgrade() {
    if runnable() {
        keeps_its_websocket_across_an_upgrade(Mode::Tls);
    }
}

fn keeps_its_websocket_across_an_upgrade(mode: Mode) {
    let tls = mode == Mode::Tls;
    let dir = scratch(if tls {
        "browser-upgrade-wss"
    } else {
        "browser-upgrade"
    });
    let backends = vec![free_addr()];
    let _echo = echo(&backends, &dir);
    let (listen, admin) = (free_addr(), free_addr());
    let sock = dir.join("upgrade.sock");
    let cfg = config(
        listen,
        &backends,
        "",
        &if tls { tls_line() } else { String::new() },
        &format!(
            "upgrade_socket = \"{}\"\n[admin]\nlisten = \"{admin}\"",
            sock.display()
        ),
    );
    let mut old = proxy(&cfg, listen, &dir);
    let page = UPGRADE_PAGE
        .replace("CHAT", UPGRADE_CHAT)
        .replace("PROXY_PORT", &listen.port().to_string())
        .replace("SCHEME", if tls { "wss" } else { "ws" })
        .replace("HOST", if tls { "localhost" } else { "127.0.0.1" });
    let (web_addr, rx) = web_server(page);
    let mut chromium = chromium(&dir, &format!("http://{web_addr}/"));
    let new = upgrade_while_talking(admin, &mut old, &dir);
    talked_through(&rx, &mut chromium, &new);
    // The tunnel ended in the new process, its line counting what it carried in both.
    let log = new.wait_log("\"GET /ws/upgrade\"", 10);
    if tls {
        assert!(
            log.lines()
                .any(|l| l.contains("\"GET /ws/upgrade\"") && l.contains("tls=TLSv1.3")),
            "{log}"
        );
    }
}

/// The page of the HTTP/2 upgrade test, served through ringway over HTTP/2: once the page has
/// settled (Chromium takes a WebSocket over HTTP/2 only on a session that has), a WebSocket on
/// the same connection (RFC 8441) sends a numbered message every 20 ms for 4 s and checks each
/// echo, then closes and reports through ringway, on the same connection.
const H2_UPGRADE_PAGE: &str = r#"<!doctype html>
<html><head><title>ringway h2 upgrade test</title></head><body><script>
let sent = 0, ok = 0, bad = 0, closed = 0, mine = false;
window.addEventListener("load", () => fetch("/").then(() => {
  const ws = new WebSocket("wss://" + location.host + "/ws/upgrade");
CHAT
}));
</script></body></html>"#;

/// A browser's WebSocket over HTTP/2 lives through `ringway run --upgrade`: the page and its
/// WebSocket share one HTTP/2 connection over TLS, which moves to the new process whole with
/// the WebSocket's stream mid-conversation; every message comes back, in order, with no close,
/// and the page's report after it goes over the same connection, now the new process's.
#[test]
fn chromium_keeps_its_websocket_over_http2_across_an_upgrade() {
    if !runnable() {
        return;
    }
    let dir = scratch("browser-upgrade-h2");
    let backends = vec![free_addr()];
    let _echo = echo(&backends, &dir);
    let (web_addr, rx) = web_server(H2_UPGRADE_PAGE.replace("CHAT", UPGRADE_CHAT));
    let (listen, admin) = (free_addr(), free_addr());
    let sock = dir.join("upgrade.sock");
    let cfg = format!(
        "[runtime]\nworkers = 1\nupgrade_socket = \"{}\"\n[admin]\nlisten = \"{admin}\"\n\n[[upstream]]\nname = \"web\"\nservers = [{{ addr = \"{web_addr}\" }}]\n\n[[upstream]]\nname = \"ws\"\nservers = [{{ addr = \"{}\" }}]\n\n[[server]]\nlisten = [\"{listen}\"]\nhttp2 = true\n{}\n\n[[server.location]]\npath = \"/\"\nupstream = \"web\"\n\n[[server.location]]\npath = \"/ws/\"\nupstream = \"ws\"\nupgrade = [\"websocket\"]\n",
        sock.display(),
        backends[0],
        tls_line()
    );
    let mut old = proxy(&cfg, listen, &dir);
    let mut chromium = chromium(&dir, &format!("https://localhost:{}/", listen.port()));
    let new = upgrade_while_talking(admin, &mut old, &dir);
    talked_through(&rx, &mut chromium, &new);
    // The WebSocket was a stream of an HTTP/2 connection, and ended in the new process; the
    // report came over the connection the new process took over (its first request there).
    let log = new.wait_log("\"GET /ws/upgrade\"", 10);
    assert!(
        log.lines().any(|l| l.contains("\"GET /ws/upgrade\"")
            && l.contains("status=101")
            && l.contains(" ws h2 ")),
        "{log}"
    );
    let log = new.wait_log("\"GET /report?result=", 10);
    assert!(
        log.lines()
            .any(|l| l.contains("\"GET /report?result=") && l.contains(" h2 ")),
        "{log}"
    );
}

/// Once the page's WebSocket is open (the proxy counts one tunnel) and has talked for a second,
/// `ringway run --upgrade` in `dir`: the new process, once it took the tunnel over and the old
/// one exited.
fn upgrade_while_talking(
    admin: std::net::SocketAddr,
    old: &mut Proc,
    dir: &std::path::Path,
) -> Proc {
    let t = std::time::Instant::now();
    while admin_status(admin)["tunnels"].as_u64() != Some(1) {
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "the page's WebSocket never opened\n{}",
            old.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(1000));
    let path = dir.join("ringway.toml");
    let new = spawn(
        &["run", "--config", path.to_str().unwrap(), "--upgrade"],
        dir,
        "proxy-1",
    );
    new.wait_log("took over 1 tunnel(s) from pid", 20);
    assert!(wait_exit(old, 30).success());
    new
}

/// The upgrade page's report: every message it sent came back, in order, and its WebSocket
/// never closed before it closed it.
fn talked_through(rx: &mpsc::Receiver<String>, chromium: &mut Proc, new: &Proc) {
    let result = rx.recv_timeout(Duration::from_secs(60));
    let _ = chromium.child.kill();
    let result = result
        .unwrap_or_else(|_| panic!("no report from the page within 60 s\n{}", new.log_text()))
        .replace("%20", " ")
        .replace("%3D", "=");
    let field = |k: &str| -> u64 {
        result
            .split(' ')
            .find_map(|w| w.strip_prefix(&format!("{k}=")))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{result}"))
    };
    assert_eq!((field("bad"), field("closed")), (0, 0), "{result}");
    assert!(
        field("sent") > 100 && field("ok") == field("sent"),
        "{result}"
    );
}
