//! TLS end to end, with clients that are not ours: `openssl s_client` (SNI, certificate kinds,
//! resumption, old protocols), Python's `ssl` (protocols, ALPN) and rustls; upstreams that
//! speak TLS (Python's `http.server` over `ssl`, and a second ringway serving `wss://`); and
//! `ringway check` on broken certificates.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

/// Run `openssl s_client` against `addr` with `args`, sending `input`; its stdout and stderr.
fn s_client(addr: SocketAddr, args: &[&str], input: &[u8]) -> String {
    let mut child = Command::new("openssl")
        .arg("s_client")
        .arg("-connect")
        .arg(addr.to_string())
        // Keep reading after the request is sent, until the server closes.
        .arg("-ign_eof")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("openssl is installed (.ci/run)");
    child.stdin.take().unwrap().write_all(input).unwrap();
    let out = wait_output(child, 20);
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Wait for a child with a bound on the time; kill it (by its PID) past that.
fn wait_output(mut child: std::process::Child, secs: u64) -> std::process::Output {
    let deadline = std::time::Instant::now() + Duration::from_secs(secs);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

/// The subject's common name in an `s_client` transcript.
fn subject_cn(out: &str) -> String {
    out.lines()
        .find_map(|l| l.trim().strip_prefix("subject=CN"))
        .map(|s| s.trim_start_matches([' ', '=']).to_string())
        .unwrap_or_default()
}

fn write(dir: &std::path::Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.display().to_string()
}

const REQUEST: &[u8] = b"GET /health HTTP/1.0\r\nHost: localhost\r\n\r\n";

#[test]
fn sni_picks_the_certificate_and_strict_sni_refuses_unknown_names() {
    if !uring_ok() {
        return;
    }
    let dir = scratch("sni");
    let backends = [free_addr()];
    let _echo = echo(&backends, &dir);
    let (c, k) = pki().leaf(&["other.test"], None, None);
    let (oc, ok) = (write(&dir, "o.pem", &c), write(&dir, "o.key", &k));
    for strict in [false, true] {
        let listen = free_addr();
        let cfg = format!(
            "{}\n[[server]]\nlisten = [\"{listen}\"]\nserver_name = [\"other.test\"]\ntls = {{ cert = \"{oc}\", key = \"{ok}\" }}\nstrict_sni = {strict}\n[[server.location]]\npath = \"/\"\nupstream = \"backend\"\n",
            config(
                listen,
                &backends,
                "",
                &format!("server_name = [\"localhost\"]\n{}", tls_line()),
                ""
            )
        );
        let p = proxy(&cfg, listen, &dir);
        let out = s_client(listen, &["-servername", "other.test"], REQUEST);
        assert_eq!(subject_cn(&out), "other.test", "{out}");
        let out = s_client(listen, &["-servername", "localhost"], REQUEST);
        assert_eq!(subject_cn(&out), "localhost", "{out}");
        let out = s_client(listen, &["-servername", "unknown.test"], REQUEST);
        if strict {
            assert!(
                subject_cn(&out).is_empty(),
                "strict_sni served a certificate:\n{out}"
            );
            assert!(out.contains("alert"), "{out}");
        } else {
            // The first server on the address is the default.
            assert_eq!(subject_cn(&out), "localhost", "{out}");
            assert!(out.contains("HTTP/1.1 200"), "{out}");
        }
        // The access log names the SNI and what was negotiated.
        p.wait_log("sni=other.test", 5);
        p.wait_log("tls=TLSv1.3 cipher=TLS13_", 5);
        drop(p);
    }
}

#[test]
fn rsa_and_ecdsa_certificates_side_by_side() {
    if !uring_ok() {
        return;
    }
    let dir = scratch("dualcert");
    let (rc, rk) = pki().leaf(&["localhost"], Some(&rcgen::PKCS_RSA_SHA256), None);
    let (rc, rk) = (write(&dir, "rsa.pem", &rc), write(&dir, "rsa.key", &rk));
    let p = pki();
    let st = stack(
        "dualcert",
        "",
        &format!(
            "tls = {{ cert = [\"{}\", \"{rc}\"], key = [\"{}\", \"{rk}\"] }}",
            p.cert.display(),
            p.key.display()
        ),
        "",
    );
    // A client that can only verify RSA gets the RSA certificate; one that prefers ECDSA, the
    // ECDSA one.
    let out = s_client(st.listen, &["-sigalgs", "rsa_pss_rsae_sha256"], REQUEST);
    assert!(out.contains("Server public key is 2048 bit"), "{out}");
    assert!(out.contains("HTTP/1.1 200"), "{out}");
    let out = s_client(st.listen, &["-sigalgs", "ecdsa_secp256r1_sha256"], REQUEST);
    assert!(out.contains("Server public key is 256 bit"), "{out}");
    assert!(out.contains("HTTP/1.1 200"), "{out}");
}

/// Python's `ssl`: the protocol each side ends up with, and ALPN.
const PY_CLIENT: &str = r#"
import socket, ssl, sys
host, port, ca, maxv = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
ctx = ssl.create_default_context(cafile=ca)
ctx.maximum_version = getattr(ssl.TLSVersion, maxv)
ctx.set_alpn_protocols(["h2", "http/1.1"])
try:
    with socket.create_connection((host, port), timeout=10) as s:
        with ctx.wrap_socket(s, server_hostname="localhost") as t:
            version = t.version()
            t.sendall(b"GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            body = b""
            while True:
                d = t.recv(4096)
                if not d:
                    break
                body += d
            print(version, t.selected_alpn_protocol(), body.split(b"\r\n")[0].decode())
except ssl.SSLError as e:
    print("ERROR", e.reason)
"#;

fn python(args: &[&str]) -> String {
    let child = Command::new("python3")
        .arg("-c")
        .arg(PY_CLIENT)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = wait_output(child, 20);
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn protocols_and_alpn_as_python_sees_them() {
    if !uring_ok() {
        return;
    }
    let ca = pki().ca.display().to_string();
    let st = stack_mode(Mode::Tls, "protocols", "", "", "");
    let port = st.listen.port().to_string();
    let out = python(&["127.0.0.1", &port, &ca, "TLSv1_3"]);
    assert_eq!(out.trim(), "TLSv1.3 http/1.1 HTTP/1.1 200 OK", "{out}");
    let out = python(&["127.0.0.1", &port, &ca, "TLSv1_2"]);
    assert_eq!(out.trim(), "TLSv1.2 http/1.1 HTTP/1.1 200 OK", "{out}");
    // protocols = ["TLSv1.3"]: a TLS 1.2 client is refused.
    let p = pki();
    let st = stack(
        "protocols13",
        "",
        &format!(
            "tls = {{ cert = \"{}\", key = \"{}\", protocols = [\"TLSv1.3\"] }}",
            p.cert.display(),
            p.key.display()
        ),
        "",
    );
    let port = st.listen.port().to_string();
    let out = python(&["127.0.0.1", &port, &ca, "TLSv1_2"]);
    assert!(out.starts_with("ERROR"), "{out}");
    let out = python(&["127.0.0.1", &port, &ca, "TLSv1_3"]);
    assert!(out.starts_with("TLSv1.3 http/1.1"), "{out}");
}

#[test]
fn sessions_resume_on_any_worker() {
    if !uring_ok() {
        return;
    }
    let st = stack_mode(Mode::Tls, "resume", "", "", "");
    let sess = st.dir.join("session.pem");
    let sess = sess.to_str().unwrap();
    let ca = pki().ca.display().to_string();
    // TLS 1.3 tickets, TLS 1.2 tickets, TLS 1.2 session IDs. Two workers share the listen
    // address (SO_REUSEPORT), so the connections land on both: every one must resume.
    for proto in [&["-tls1_3"][..], &["-tls1_2"], &["-tls1_2", "-no_ticket"]] {
        let mut args = vec![
            "-servername",
            "localhost",
            "-CAfile",
            &ca,
            "-sess_out",
            sess,
        ];
        args.extend_from_slice(proto);
        let out = s_client(st.listen, &args, REQUEST);
        assert!(out.contains("HTTP/1.1 200"), "{proto:?}: {out}");
        let mut reused = 0;
        for _ in 0..12 {
            let mut args = vec!["-servername", "localhost", "-CAfile", &ca, "-sess_in", sess];
            args.extend_from_slice(proto);
            let out = s_client(st.listen, &args, REQUEST);
            assert!(out.contains("HTTP/1.1 200"), "{proto:?}: {out}");
            if out.contains("Reused, TLS") {
                reused += 1;
            }
        }
        assert_eq!(reused, 12, "{proto:?}: not every handshake resumed");
    }
}

/// The cipher suite in an `s_client` transcript.
fn cipher(out: &str) -> &str {
    out.lines()
        .find_map(|l| l.split_once("Cipher is ").map(|(_, c)| c.trim()))
        .unwrap_or("")
}

/// The server chooses AES-128-GCM among the suites a client offers, whatever its order, unless
/// the client lists ChaCha20-Poly1305 first (it has no AES hardware): then it gets that. A
/// client offering only AES-256 still gets it; sessions resume under either choice.
#[test]
fn the_server_prefers_aes_128_unless_the_client_puts_chacha_first() {
    if !uring_ok() {
        return;
    }
    let st = stack_mode(Mode::Tls, "suites", "", "", "");
    let ca = pki().ca.display().to_string();
    let base = ["-servername", "localhost", "-CAfile", ca.as_str()];
    let run = |extra: &[&str]| {
        let mut args = base.to_vec();
        args.extend_from_slice(extra);
        let out = s_client(st.listen, &args, REQUEST);
        assert!(out.contains("HTTP/1.1 200"), "{extra:?}: {out}");
        out
    };
    let v13 = |suites: &str| run(&["-tls1_3", "-ciphersuites", suites]);
    // OpenSSL's own order puts AES-256 first.
    assert_eq!(cipher(&run(&["-tls1_3"])), "TLS_AES_128_GCM_SHA256");
    assert_eq!(
        cipher(&v13("TLS_AES_256_GCM_SHA384:TLS_AES_128_GCM_SHA256")),
        "TLS_AES_128_GCM_SHA256"
    );
    assert_eq!(
        cipher(&v13("TLS_CHACHA20_POLY1305_SHA256:TLS_AES_128_GCM_SHA256")),
        "TLS_CHACHA20_POLY1305_SHA256"
    );
    assert_eq!(
        cipher(&v13("TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256")),
        "TLS_AES_256_GCM_SHA384"
    );
    assert_eq!(
        cipher(&v13("TLS_AES_256_GCM_SHA384")),
        "TLS_AES_256_GCM_SHA384"
    );
    // TLS 1.2 alike.
    let v12 = |suites: &str| run(&["-tls1_2", "-cipher", suites]);
    assert_eq!(
        cipher(&v12(
            "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-ECDSA-AES128-GCM-SHA256"
        )),
        "ECDHE-ECDSA-AES128-GCM-SHA256"
    );
    assert_eq!(
        cipher(&v12(
            "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-ECDSA-AES128-GCM-SHA256"
        )),
        "ECDHE-ECDSA-CHACHA20-POLY1305"
    );
    // Sessions resume under the choice they were made with: a client that keeps its order
    // gets the same suite again (rustls resumes a session only under its own suite).
    for (suites, chosen) in [
        (
            "TLS_AES_256_GCM_SHA384:TLS_AES_128_GCM_SHA256",
            "TLS_AES_128_GCM_SHA256",
        ),
        (
            "TLS_CHACHA20_POLY1305_SHA256:TLS_AES_128_GCM_SHA256",
            "TLS_CHACHA20_POLY1305_SHA256",
        ),
    ] {
        let sess = st.dir.join("session.pem");
        let sess = sess.to_str().unwrap();
        run(&["-tls1_3", "-ciphersuites", suites, "-sess_out", sess]);
        let out = run(&["-tls1_3", "-ciphersuites", suites, "-sess_in", sess]);
        assert!(out.contains("Reused, TLS"), "{suites}: {out}");
        assert_eq!(cipher(&out), chosen);
    }
}

#[test]
fn bad_input_on_a_tls_port_ends_that_connection_only() {
    if !uring_ok() {
        return;
    }
    let st = stack_mode(Mode::Tls, "tlsbad", "", "header_timeout = \"2s\"", "");
    let mut ws = st.ws("/ws/");
    ws_echo(&mut ws, b"before".to_vec());
    // Plain HTTP to the TLS port: nginx's answer.
    let out = raw_exchange(st.listen, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", 10);
    assert_eq!(status_of(&out), 400);
    assert!(
        String::from_utf8_lossy(&out).contains("The plain HTTP request was sent to HTTPS port"),
        "{}",
        String::from_utf8_lossy(&out)
    );
    // A TLS 1.0/1.1-only ClientHello: a protocol_version alert.
    let out = s_client(
        st.listen,
        &["-tls1_1", "-cipher", "DEFAULT:@SECLEVEL=0"],
        b"",
    );
    assert!(out.contains("alert protocol version"), "{out}");
    // Garbage that is not TLS: closed.
    let out = raw_exchange(st.listen, b"\x16\x03\x01\x00\x05hello", 10);
    assert!(out.len() < 64, "{out:?}");
    // Half a handshake, then silence: closed at header_timeout, not held.
    let mut half = TcpStream::connect(st.listen).unwrap();
    half.write_all(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")
        .unwrap();
    half.set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    let mut buf = [0u8; 64];
    assert!(
        matches!(half.read(&mut buf), Ok(0) | Err(_)),
        "half handshake not closed"
    );
    // A record larger than TLS allows: refused, not buffered.
    let mut big = TcpStream::connect(st.listen).unwrap();
    big.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let _ = big.write_all(b"\x16\x03\x03\xff\xff");
    let _ = big.write_all(&vec![0u8; 65535]);
    let mut rest = Vec::new();
    let _ = big.read_to_end(&mut rest);
    // A hello announced as 60,000 bytes, sent in full records: refused once 32 KiB of it is
    // held (the log says so; at header_timeout it would say header-timeout), not kept growing
    // toward rustls's 64 KiB.
    let mut huge = TcpStream::connect(st.listen).unwrap();
    huge.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut first = vec![1u8, 0, 0xea, 0x60];
    first.resize(16_384, 0x41);
    for i in 0..4 {
        let body = if i == 0 {
            first.clone()
        } else {
            vec![0x41; 16_384]
        };
        let mut rec = vec![22, 3, 1, 0x40, 0x00];
        rec.extend_from_slice(&body);
        if huge.write_all(&rec).is_err() {
            break;
        }
    }
    let mut rest = Vec::new();
    let _ = huge.read_to_end(&mut rest);
    st.proxy.wait_log(
        "TLS failed: unexpected error: record or handshake message too large",
        5,
    );
    // Every other connection kept working.
    ws_echo(&mut ws, b"after".to_vec());
    st.proxy.wait_log("end=plain-http", 5);
    st.proxy.wait_log("end=client-tls:incompatible", 5);
    st.proxy.wait_log("end=header-timeout", 5);
}

#[test]
fn check_names_the_file_line_and_field_of_certificate_problems() {
    let dir = scratch("tlscheck");
    let p = pki();
    let (other_c, other_k) = pki().leaf(&["localhost"], None, None);
    let other_key = write(&dir, "other.key", &other_k);
    let _ = other_c;
    let (old_c, old_k) = pki().leaf(&["localhost"], None, Some((2021, 1, 1)));
    let (old_c, old_k) = (
        write(&dir, "old.pem", &old_c),
        write(&dir, "old.key", &old_k),
    );
    let empty = write(&dir, "empty.pem", "not a certificate\n");
    let cert = p.cert.display().to_string();
    let key = p.key.display().to_string();
    let run = |tls: &str| {
        let cfg = format!(
            "[[upstream]]\nname = \"b\"\nservers = [{{ addr = \"127.0.0.1:9\" }}]\n\n[[server]]\nlisten = [\"127.0.0.1:8443\"]\n{tls}\n[[server.location]]\npath = \"/\"\nupstream = \"b\"\n"
        );
        let path = write(&dir, "t.toml", &cfg);
        ringway(&["check", "--config", &path])
    };
    let (code, out) = run(&format!(
        "tls = {{ cert = \"{}/missing.pem\", key = \"{key}\" }}",
        dir.display()
    ));
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("t.toml:7:")
            && out.contains("server[0].tls.cert: ")
            && out.contains("missing.pem: cannot read: No such file"),
        "{out}"
    );
    let (code, out) = run(&format!(
        "tls = {{ cert = \"{cert}\", key = \"{other_key}\" }}"
    ));
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("t.toml:7:")
            && out.contains("server[0].tls.key: the key in")
            && out.contains("does not match"),
        "{out}"
    );
    let (code, out) = run(&format!("tls = {{ cert = \"{empty}\", key = \"{key}\" }}"));
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("server[0].tls.cert: no certificate in"),
        "{out}"
    );
    let (code, out) = run(&format!("tls = {{ cert = \"{cert}\", key = \"{cert}\" }}"));
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("server[0].tls.key: no private key in"),
        "{out}"
    );
    let (code, out) = run(&format!(
        "tls = {{ cert = \"{cert}\", key = \"{key}\", protocols = [\"TLSv1.1\"] }}"
    ));
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("server[0].tls.protocols[0]: TLSv1.1 is not supported"),
        "{out}"
    );
    // Expired: a warning with the date, and the configuration still checks.
    let (code, out) = run(&format!(
        "tls = {{ cert = \"{old_c}\", key = \"{old_k}\" }}"
    ));
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("warning")
            && out.contains("t.toml:7:")
            && out.contains("expired on")
            && out.contains("2021"),
        "{out}"
    );
    assert!(out.contains("(tls)"), "{out}");
}

/// An HTTPS backend that is not ours: Python's `http.server` over `ssl`.
const PY_HTTPS: &str = r#"
import http.server, ssl, sys
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = ("hello over tls " + self.path + " sni-host=" + self.headers.get("Host", "")).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
srv = http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(sys.argv[2], sys.argv[3])
srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
print("ready", flush=True)
srv.serve_forever()
"#;

/// Python's `http.server` over `ssl` with the test certificate: an HTTPS backend not ours.
fn py_https(dir: &std::path::Path) -> (SocketAddr, Proc) {
    let p = pki();
    let https = free_addr();
    let mut py = Proc {
        child: Command::new("python3")
            .arg("-c")
            .arg(PY_HTTPS)
            .arg(https.port().to_string())
            .arg(&p.cert)
            .arg(&p.key)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
        log: dir.join("none"),
    };
    wait_port(https, &mut py);
    (https, py)
}

#[test]
fn tls_to_upstreams_https_and_wss_and_a_bad_certificate_is_502() {
    if !uring_ok() {
        return;
    }
    let dir = scratch("uptls");
    let p = pki();
    // An HTTPS backend not ours.
    let (https, _py) = py_https(&dir);
    let listen = free_addr();
    let ca = p.ca.display().to_string();
    let cfg = |up: SocketAddr, tls: &str| {
        format!(
            "[runtime]\nworkers = 2\n[[upstream]]\nname = \"b\"\nservers = [{{ addr = \"{up}\" }}]\ntls = {tls}\n[[server]]\nlisten = [\"{listen}\"]\n[[server.location]]\npath = \"/\"\nupstream = \"b\"\n"
        )
    };
    let proxy1 = proxy(
        &cfg(https, &format!("{{ ca = \"{ca}\", sni = \"localhost\" }}")),
        listen,
        &dir,
    );
    let out = raw_exchange(listen, b"GET /x HTTP/1.0\r\nHost: client.test\r\n\r\n", 10);
    let text = String::from_utf8_lossy(&out);
    assert_eq!(status_of(&out), 200, "{text}");
    assert!(
        text.contains("hello over tls /x sni-host=client.test"),
        "{text}"
    );
    drop(proxy1);

    // A CA that did not sign the backend's certificate: 502 and a clear log line.
    let (other_ca, _) = pki().leaf(&["someone-else"], None, None);
    let other_ca = write(&dir, "other-ca.pem", &other_ca);
    let dir2 = scratch("uptls-bad");
    let listen2 = free_addr();
    let cfg2 = cfg(
        https,
        &format!("{{ ca = \"{other_ca}\", sni = \"localhost\" }}"),
    )
    .replace(&listen.to_string(), &listen2.to_string());
    let proxy2 = proxy(&cfg2, listen2, &dir2);
    let out = raw_exchange(listen2, b"GET /x HTTP/1.0\r\nHost: client.test\r\n\r\n", 10);
    assert_eq!(status_of(&out), 502, "{}", String::from_utf8_lossy(&out));
    let log = proxy2.wait_log("end=upstream-tls", 5);
    assert!(
        log.contains(&format!(
            "TLS with {https} failed: invalid peer certificate"
        )),
        "{log}"
    );
    drop(proxy2);
    // verify = false accepts it (nginx's proxy_ssl_verify off).
    let dir3 = scratch("uptls-noverify");
    let listen3 = free_addr();
    let cfg3 = cfg(https, "{ verify = false }").replace(&listen.to_string(), &listen3.to_string());
    let _proxy3 = proxy(&cfg3, listen3, &dir3);
    let out = raw_exchange(listen3, b"GET /y HTTP/1.0\r\nHost: client.test\r\n\r\n", 10);
    assert_eq!(status_of(&out), 200, "{}", String::from_utf8_lossy(&out));

    // A wss:// backend: a second ringway terminating TLS in front of the echo. Messages of
    // every size go client -> ws -> ringway -> wss -> ringway -> echo and back.
    let inner = stack_mode(Mode::Tls, "uptls-inner", "", "", "");
    let dir4 = scratch("uptls-outer");
    let listen4 = free_addr();
    let cfg4 = cfg(
        inner.listen,
        &format!("{{ ca = \"{ca}\", sni = \"localhost\" }}"),
    )
    .replace(&listen.to_string(), &listen4.to_string());
    let _outer = proxy(&cfg4, listen4, &dir4);
    let mut ws = ws_connect(listen4, "/ws/");
    for size in [0usize, 1, 125, 16_000, 16_384, 16_385, 100_000, 1 << 20] {
        let payload: Vec<u8> = (0..size).map(|i| (i * 13 % 251) as u8).collect();
        ws_echo(&mut ws, payload);
    }
    ws.close(None).unwrap();
}

#[test]
fn mutated_handshakes_never_take_the_proxy_down() {
    if !uring_ok() {
        return;
    }
    let st = stack_mode(Mode::Tls, "tlsfuzz", "", "header_timeout = \"1s\"", "");
    let mut ws = st.ws("/ws/");
    ws_echo(&mut ws, b"before".to_vec());
    // A real ClientHello (rustls's), then mutated: bytes flipped, cut short, repeated, record
    // lengths changed. Each goes on its own connection, which may end any way but must end.
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut c = rustls::ClientConnection::new(pki().client.clone(), name).unwrap();
    let mut hello = Vec::new();
    c.write_tls(&mut hello).unwrap();
    let mut rng = Rng(0x7157_1a5e);
    let listen = st.listen;
    let cases: Vec<Vec<u8>> = (0..300)
        .map(|i| {
            let mut m = hello.clone();
            match i % 5 {
                0 => {
                    for _ in 0..1 + rng.below(8) {
                        let at = rng.below(m.len());
                        m[at] ^= 1 << rng.below(8);
                    }
                }
                1 => m.truncate(rng.below(m.len())),
                2 => {
                    let copy = m.clone();
                    m.extend_from_slice(&copy);
                }
                3 => {
                    m[3] = rng.below(256) as u8;
                    m[4] = rng.below(256) as u8;
                }
                _ => {
                    let at = 5 + rng.below(m.len() - 5);
                    let n = rng.below(m.len() - at);
                    m.drain(at..at + n);
                }
            }
            m
        })
        .collect();
    let threads: Vec<_> = cases
        .chunks(30)
        .map(|chunk| {
            let chunk = chunk.to_vec();
            std::thread::spawn(move || {
                for m in chunk {
                    let mut s = TcpStream::connect(listen).unwrap();
                    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
                    let _ = s.write_all(&m);
                    let mut sink = Vec::new();
                    let r = s.read_to_end(&mut sink);
                    assert!(
                        !matches!(&r, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
                        "a mutated hello was held open past header_timeout"
                    );
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    ws_echo(&mut ws, b"after".to_vec());
    let log = st.proxy.log_text();
    assert!(!log.contains("panicked"), "{log}");
}

/// `/status` of the first upstream's first server.
fn first_server(admin: SocketAddr) -> serde_json::Value {
    let out = admin_get(admin, "/status");
    let text = String::from_utf8_lossy(&out);
    let v: serde_json::Value =
        serde_json::from_str(text.split("\r\n\r\n").nth(1).unwrap_or("")).unwrap();
    v["upstreams"][0]["servers"][0].clone()
}

#[test]
fn health_checks_of_a_tls_upstream_go_over_tls_and_verify_it() {
    if !uring_ok() {
        return;
    }
    let dir = scratch("health-tls");
    let p = pki();
    let (https, _py) = py_https(&dir);
    let (other_ca, _) = p.leaf(&["someone-else"], None, None);
    let other_ca = write(&dir, "other-ca.pem", &other_ca);
    for (ca, want) in [(p.ca.display().to_string(), "up"), (other_ca, "down")] {
        let listen = free_addr();
        let admin = free_addr();
        let cfg = format!(
            "[runtime]\nworkers = 1\n[admin]\nlisten = \"{admin}\"\n[[upstream]]\nname = \"b\"\nservers = [{{ addr = \"{https}\" }}]\ntls = {{ ca = \"{ca}\", sni = \"localhost\" }}\nhealth_check = {{ interval = \"200ms\", timeout = \"150ms\", fall = 2, request = \"GET /health HTTP/1.0\\r\\nHost: localhost\\r\\n\\r\\n\" }}\n[[server]]\nlisten = [\"{listen}\"]\n[[server.location]]\npath = \"/\"\nupstream = \"b\"\n"
        );
        let d = scratch("health-tls-run");
        let proxy = proxy(&cfg, listen, &d);
        let t = std::time::Instant::now();
        loop {
            let s = first_server(admin);
            let (passed, failed) = (
                s["health_checks_passed"].as_u64().unwrap(),
                s["health_checks_failed"].as_u64().unwrap(),
            );
            if want == "up" && passed >= 3 {
                assert_eq!((s["state"].as_str(), failed), (Some("up"), 0), "{s}");
                break;
            }
            if want == "down" && s["state"] == "down" {
                assert_eq!(passed, 0, "{s}");
                let log = proxy.log_text();
                assert!(log.contains("is down: 2 check(s) in a row failed, the last: TLS: invalid peer certificate"), "{log}");
                break;
            }
            assert!(t.elapsed() < Duration::from_secs(20), "{s}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

#[test]
fn a_kept_alive_client_gets_every_answer_through_a_tls_upstream() {
    if !uring_ok() {
        return;
    }
    // Each request of a kept-alive client goes on a new TLS connection upstream; the next one
    // arrives while the previous connection is being closed (it used to be sealed under that
    // connection's keys and lost with it: the client waited for read_timeout).
    let inner = stack_mode(Mode::Tls, "ka-inner", "", "", "");
    let dir = scratch("ka-outer");
    let listen = free_addr();
    let ca = pki().ca.display().to_string();
    let cfg = format!(
        "[runtime]\nworkers = 1\n[[upstream]]\nname = \"b\"\nservers = [{{ addr = \"{}\" }}]\ntls = {{ ca = \"{ca}\", sni = \"localhost\" }}\n[[server]]\nlisten = [\"{listen}\"]\n[[server.location]]\npath = \"/\"\nupstream = \"b\"\n",
        inner.listen
    );
    let _p = proxy(&cfg, listen, &dir);
    let mut s = TcpStream::connect(listen).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    for i in 0..5 {
        s.write_all(format!("GET /bytes/{i} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
            .unwrap();
        let mut got = Vec::new();
        let mut b = [0u8; 4096];
        let whole = |got: &[u8]| {
            got.windows(4)
                .position(|w| w == b"\r\n\r\n")
                .is_some_and(|h| got.len() >= h + 4 + i)
        };
        while !whole(&got) {
            let n = s.read(&mut b).unwrap_or(0);
            assert!(
                n > 0,
                "request {i}: no answer; got {:?}",
                String::from_utf8_lossy(&got)
            );
            got.extend_from_slice(&b[..n]);
        }
        assert_eq!(status_of(&got), 200, "request {i}");
    }
}

#[test]
fn keepalive_toward_a_tls_upstream_reuses_one_tls_connection() {
    if !uring_ok() {
        return;
    }
    let inner_admin = free_addr();
    let inner = stack_mode(
        Mode::Tls,
        "ka-tls-inner",
        "",
        "",
        &format!("[admin]\nlisten = \"{inner_admin}\""),
    );
    let dir = scratch("ka-tls-outer");
    let listen = free_addr();
    let ca = pki().ca.display().to_string();
    let cfg = format!(
        "[runtime]\nworkers = 1\n[[upstream]]\nname = \"b\"\nservers = [{{ addr = \"{}\" }}]\ntls = {{ ca = \"{ca}\", sni = \"localhost\" }}\nkeepalive = 4\n[[server]]\nlisten = [\"{listen}\"]\n[[server.location]]\npath = \"/\"\nupstream = \"b\"\n",
        inner.listen
    );
    let _p = proxy(&cfg, listen, &dir);
    for i in 0..10 {
        let out = raw_exchange(
            listen,
            format!("GET /bytes/{i} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
            10,
        );
        assert_eq!(status_of(&out), 200, "request {i}");
    }
    // The inner proxy (the TLS upstream) carried the ten requests on one connection (besides
    // the harness's readiness probe, which sends nothing), still open in the outer's pool.
    let out = admin_get(inner_admin, "/status");
    let text = String::from_utf8_lossy(&out);
    let v: serde_json::Value =
        serde_json::from_str(text.split("\r\n\r\n").nth(1).unwrap_or("")).unwrap();
    // Without keepalive it would have accepted ten (besides the probe) and kept none open.
    assert!(v["accepted"].as_u64().unwrap() <= 2, "{v}");
    assert_eq!(v["active"], 1, "{v}");
}
