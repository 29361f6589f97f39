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

#[test]
fn chromium_echoes_over_wss_through_ringway() {
    if !uring_ok() {
        return;
    }
    if !std::path::Path::new(CHROMIUM).exists() {
        // .ci/run installs it; a developer machine without it says so.
        skip(&format!(
            "{CHROMIUM} is not installed (apt-get install chromium; scripts/test.sh does as root)"
        ));
        return;
    }
    let st = stack_mode(Mode::Tls, "browser", "", "", "");
    // The page and the report come from a small server of the test's own.
    let web = TcpListener::bind("127.0.0.1:0").unwrap();
    let web_addr = web.local_addr().unwrap();
    let page = PAGE.replace("PROXY_PORT", &st.listen.port().to_string());
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
    let profile = st.dir.join("chromium-profile");
    let mut chromium = Proc {
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
            .arg(format!("http://{web_addr}/"))
            .stdout(Stdio::null())
            .stderr(Stdio::from(
                std::fs::File::create(st.dir.join("chromium.log")).unwrap(),
            ))
            .spawn()
            .unwrap(),
        log: st.dir.join("chromium.log"),
    };
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
