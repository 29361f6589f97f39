//! Test harness: start `ringway echo` and `ringway run` as real processes on loopback, with
//! real sockets, and stop them (by PID) when the test ends.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

pub mod h2;

pub const BIN: &str = env!("CARGO_BIN_EXE_ringway");

/// A test that cannot check what it is for (a real peer missing): says so on stderr, and
/// appends a line to the file named by `RINGWAY_SKIP_LOG` (set by `scripts/test.sh`, which
/// names every skipped test and why in the run's final summary, so a green run says what it
/// did not check).
pub fn skip(why: &str) {
    let test = std::thread::current().name().unwrap_or("?").to_string();
    let line = format!("{}::{test}: {why}", env!("CARGO_CRATE_NAME"));
    eprintln!("SKIPPED {line}");
    if let Ok(path) = std::env::var("RINGWAY_SKIP_LOG") {
        use std::io::Write;
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
        {
            let _ = writeln!(f, "{line}");
        }
    }
}

/// io_uring may be unavailable (seccomp, `kernel.io_uring_disabled`): then skip, loudly.
pub fn uring_ok() -> bool {
    match ringway_proxy::uring::probe() {
        Ok(_) => true,
        Err(why) => {
            skip(&format!("io_uring unavailable: {why}"));
            false
        }
    }
}

/// A port free right now on 127.0.0.1, and never handed out before in this test process.
///
/// The kernel may give a port it gave a moment ago once its socket is closed, and the tests in
/// one binary run in parallel. ringway and the echo bind with SO_REUSEPORT, so two tests given
/// the same port would share it silently, each getting about half of the other's connections
/// (a CI run's admin probe reached another test's echo backend, which answered and kept the
/// connection open). So each port is handed out once per process.
pub fn free_addr() -> SocketAddr {
    static GIVEN: std::sync::Mutex<Option<std::collections::HashSet<u16>>> =
        std::sync::Mutex::new(None);
    // Ports refused here are held until one is found, so the kernel does not offer them again.
    let mut held = Vec::new();
    loop {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
        if given.get_or_insert_default().insert(addr.port()) {
            return addr;
        }
        held.push(l);
    }
}

/// A loopback address where connects are refused: bound but not listening, and held, so that
/// no other test's `free_addr` can take the port until the returned socket is dropped.
pub fn refused_addr() -> (SocketAddr, socket2::Socket) {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    s.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .unwrap();
    let addr = s.local_addr().unwrap().as_socket().unwrap();
    (addr, s)
}

static SEQ: AtomicU32 = AtomicU32::new(0);

/// A fresh scratch directory for one test.
pub fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "ringway-test-{}-{}-{}",
        std::process::id(),
        name,
        SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A child process, killed (by its PID) when dropped.
pub struct Proc {
    pub child: Child,
    pub log: PathBuf,
}

impl Proc {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything the process wrote to stderr so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Wait until the log contains `needle` (or fail after `secs`).
    pub fn wait_log(&self, needle: &str, secs: u64) -> String {
        let t = Instant::now();
        loop {
            let s = self.log_text();
            if s.contains(needle) {
                return s;
            }
            assert!(
                t.elapsed() < Duration::from_secs(secs),
                "log never showed {needle:?}:\n{s}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Resident set size in KiB.
    pub fn rss_kib(&self) -> u64 {
        let s = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        s.lines()
            .find(|l| l.starts_with("VmRSS:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn spawn(args: &[&str], dir: &std::path::Path, name: &str) -> Proc {
    spawn_env(args, &[], dir, name)
}

/// [`spawn`] with environment variables set.
pub fn spawn_env(args: &[&str], env: &[(&str, &str)], dir: &std::path::Path, name: &str) -> Proc {
    let log = dir.join(format!("{name}.log"));
    let f = std::fs::File::create(&log).unwrap();
    let child = Command::new(BIN)
        .args(args)
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(f)
        .spawn()
        .expect("start ringway");
    Proc { child, log }
}

/// Wait until `addr` accepts connections.
pub fn wait_port(addr: SocketAddr, p: &mut Proc) {
    let t = Instant::now();
    loop {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok() {
            return;
        }
        if let Ok(Some(status)) = p.child.try_wait() {
            panic!(
                "process exited ({status}) before listening on {addr}:\n{}",
                p.log_text()
            );
        }
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "{addr} never listened:\n{}",
            p.log_text()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Start an echo backend on each of `addrs`.
pub fn echo(addrs: &[SocketAddr], dir: &std::path::Path) -> Proc {
    let mut args = vec!["echo".to_string(), "--workers".into(), "2".into()];
    for a in addrs {
        args.push("--listen".into());
        args.push(a.to_string());
    }
    let argv: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
    let mut p = spawn(&argv, dir, "echo");
    for a in addrs {
        wait_port(*a, &mut p);
    }
    p
}

/// A config with one server on `listen` and location `/` to the given upstream servers.
pub fn config(
    listen: SocketAddr,
    servers: &[SocketAddr],
    extra_location: &str,
    extra_server: &str,
    runtime: &str,
) -> String {
    let list: Vec<String> = servers
        .iter()
        .map(|s| format!("{{ addr = \"{s}\" }}"))
        .collect();
    format!(
        "[runtime]\nworkers = 2\nmax_connections = 5000\n{runtime}\n\n[[upstream]]\nname = \"backend\"\nservers = [{}]\n\n[[server]]\nlisten = [\"{listen}\"]\n{extra_server}\n\n[[server.location]]\npath = \"/\"\nupstream = \"backend\"\n{extra_location}\n",
        list.join(", ")
    )
}

/// One of several ringway instances in front of the same backends (see [`instances`]).
pub struct Instance {
    pub cfg: String,
    pub dir: PathBuf,
    pub listen: SocketAddr,
    pub admin: SocketAddr,
}

/// `n` instances' configurations, each with its own listen and admin address and directory
/// under `dir` (`r0`, `r1`, …), `extra_server` in its server and `runtime` (before its
/// `[admin]`) in its `[runtime]`; none started.
pub fn instances(
    dir: &std::path::Path,
    n: usize,
    backends: &[SocketAddr],
    extra_server: &str,
    runtime: &str,
) -> Vec<Instance> {
    (0..n)
        .map(|i| {
            let (listen, admin) = (free_addr(), free_addr());
            let d = dir.join(format!("r{i}"));
            std::fs::create_dir_all(&d).unwrap();
            let cfg = config(
                listen,
                backends,
                "",
                extra_server,
                &format!("{runtime}\n[admin]\nlisten = \"{admin}\""),
            );
            Instance {
                cfg,
                dir: d,
                listen,
                admin,
            }
        })
        .collect()
}

/// Start the proxy on a config text.
pub fn proxy(cfg: &str, listen: SocketAddr, dir: &std::path::Path) -> Proc {
    let path = dir.join("ringway.toml");
    std::fs::write(&path, cfg).unwrap();
    let mut p = spawn(&["run", "--config", path.to_str().unwrap()], dir, "proxy");
    wait_port(listen, &mut p);
    p
}

/// Echo backend(s) plus a proxy in front: the usual setup.
pub struct Stack {
    pub echo: Proc,
    pub proxy: Proc,
    pub listen: SocketAddr,
    pub backends: Vec<SocketAddr>,
    pub dir: PathBuf,
    pub mode: Mode,
}

pub fn stack(name: &str, extra_location: &str, extra_server: &str, runtime: &str) -> Stack {
    stack_mode(Mode::Plain, name, extra_location, extra_server, runtime)
}

/// The usual setup, the proxy's listener plain or TLS (the test certificate).
pub fn stack_mode(
    mode: Mode,
    name: &str,
    extra_location: &str,
    extra_server: &str,
    runtime: &str,
) -> Stack {
    let extra_server = match mode {
        Mode::Plain => extra_server.to_string(),
        Mode::Tls => format!("{}\n{extra_server}", tls_line()),
    };
    let extra_server = extra_server.as_str();
    let dir = scratch(name);
    let backends = vec![free_addr(), free_addr()];
    let echo = echo(&backends, &dir);
    let listen = free_addr();
    let proxy = proxy(
        &config(listen, &backends, extra_location, extra_server, runtime),
        listen,
        &dir,
    );
    Stack {
        echo,
        proxy,
        listen,
        backends,
        dir,
        mode,
    }
}

impl Stack {
    pub fn ws(&self, path: &str) -> Ws {
        ws_connect_mode(self.listen, path, self.mode)
    }
    pub fn raw_ws(&self, path: &str, extra_headers: &str) -> RawWs {
        RawWs::connect_mode(self.listen, path, extra_headers, self.mode)
    }
    pub fn connect(&self) -> Stream {
        connect(self.listen, self.mode)
    }
}

/// Send raw bytes, read until the peer closes (or `secs` pass), return what came back.
pub fn raw_exchange(addr: SocketAddr, send: &[u8], secs: u64) -> Vec<u8> {
    raw_exchange_mode(addr, send, secs, Mode::Plain)
}

/// `raw_exchange` over plain TCP or TLS.
pub fn raw_exchange_mode(addr: SocketAddr, send: &[u8], secs: u64, mode: Mode) -> Vec<u8> {
    let mut s = connect(addr, mode);
    s.set_read_timeout(Some(Duration::from_secs(secs))).unwrap();
    let _ = s.write_all(send);
    let mut out = Vec::new();
    let mut buf = [0u8; 65536];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) => panic!(
                "no close within {secs}s ({e}); got {:?}",
                String::from_utf8_lossy(&out)
            ),
        }
    }
    out
}

/// Status code of a raw HTTP response.
pub fn status_of(resp: &[u8]) -> u16 {
    let s = String::from_utf8_lossy(resp);
    s.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

pub type Ws = tungstenite::WebSocket<Stream>;

/// A WebSocket client connected through `addr` to `path`.
pub fn ws_connect(addr: SocketAddr, path: &str) -> Ws {
    ws_connect_mode(addr, path, Mode::Plain)
}

/// A WebSocket client over `mode` (`ws://` or `wss://`, trusting the test CA).
pub fn ws_connect_mode(addr: SocketAddr, path: &str, mode: Mode) -> Ws {
    ws_connect_from(addr, path, mode, None)
}

/// A WebSocket client from source address `from`.
pub fn ws_connect_from(
    addr: SocketAddr,
    path: &str,
    mode: Mode,
    from: Option<std::net::IpAddr>,
) -> Ws {
    ws_over(connect_from(addr, from, mode), addr, path)
}

/// A WebSocket client over TLS with client configuration `config` (SNI `localhost`).
pub fn ws_connect_tls_with(
    addr: SocketAddr,
    path: &str,
    config: std::sync::Arc<rustls::ClientConfig>,
) -> Ws {
    let s = tcp_from(addr, None).unwrap();
    let _ = s.set_nodelay(true);
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let c = rustls::ClientConnection::new(config, name).unwrap();
    ws_over(
        Stream::Tls(Box::new(rustls::StreamOwned::new(c, s))),
        addr,
        path,
    )
}

/// The WebSocket handshake over `stream` (connected to `addr`), toward `path`.
pub fn ws_over(stream: Stream, addr: SocketAddr, path: &str) -> Ws {
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let cfg = tungstenite::protocol::WebSocketConfig::default()
        .max_message_size(Some(64 << 20))
        .max_frame_size(Some(64 << 20));
    let scheme = if matches!(stream, Stream::Tls(_)) {
        "wss"
    } else {
        "ws"
    };
    let (ws, resp) = tungstenite::client::client_with_config(
        format!("{scheme}://localhost:{}{path}", addr.port()),
        stream,
        Some(cfg),
    )
    .expect("handshake");
    assert_eq!(resp.status(), 101);
    ws
}

/// Two tests from one body that takes a [`Mode`]: `$plain` over plain TCP, `$tls` over TLS.
/// (Test files use it after `use common::*;`.)
#[macro_export]
macro_rules! plain_and_tls {
    ($plain:ident, $tls:ident, $body:ident) => {
        #[test]
        fn $plain() {
            if uring_ok() {
                $body(Mode::Plain);
            }
        }

        #[test]
        fn $tls() {
            if uring_ok() {
                $body(Mode::Tls);
            }
        }
    };
}

/// Plain TCP or TLS toward the proxy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Plain,
    Tls,
}

/// A client connection, plain or TLS (rustls), readable and writable either way.
pub enum Stream {
    Plain(TcpStream),
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>),
}

impl Stream {
    pub fn tcp(&self) -> &TcpStream {
        match self {
            Stream::Plain(s) => s,
            Stream::Tls(t) => &t.sock,
        }
    }
    pub fn set_read_timeout(&self, d: Option<Duration>) -> std::io::Result<()> {
        self.tcp().set_read_timeout(d)
    }
    /// Half-close: a TLS stream sends its close_notify first.
    pub fn shutdown(&mut self, how: std::net::Shutdown) -> std::io::Result<()> {
        if let Stream::Tls(t) = self {
            t.conn.send_close_notify();
            t.flush()?;
        }
        self.tcp().shutdown(how)
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Stream::Plain(s) => s.read(buf),
            // A peer that closes without close_notify ends the stream like a FIN.
            Stream::Tls(t) => match t.read(buf) {
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(0),
                r => r,
            },
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Stream::Plain(s) => s.write(buf),
            Stream::Tls(t) => t.write(buf),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Stream::Plain(s) => s.flush(),
            Stream::Tls(t) => t.flush(),
        }
    }
}

/// Connect to `addr`; over TLS with SNI `localhost`, trusting the test CA.
pub fn connect(addr: SocketAddr, mode: Mode) -> Stream {
    connect_from(addr, None, mode)
}

/// Connect to `addr` from source address `from` (any of 127/8 on loopback), or the kernel's
/// choice.
/// A TCP connection to `addr`, from source address `from` when given.
pub fn tcp_from(addr: SocketAddr, from: Option<std::net::IpAddr>) -> std::io::Result<TcpStream> {
    let s = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        None,
    )?;
    if let Some(ip) = from {
        s.bind(&SocketAddr::new(ip, 0).into())?;
    }
    s.connect_timeout(&addr.into(), Duration::from_secs(5))?;
    Ok(s.into())
}

pub fn connect_from(addr: SocketAddr, from: Option<std::net::IpAddr>, mode: Mode) -> Stream {
    let s = tcp_from(addr, from).unwrap();
    let _ = s.set_nodelay(true);
    match mode {
        Mode::Plain => Stream::Plain(s),
        Mode::Tls => {
            let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
            let c = rustls::ClientConnection::new(pki().client.clone(), name).unwrap();
            Stream::Tls(Box::new(rustls::StreamOwned::new(c, s)))
        }
    }
}

/// A test CA and a server certificate for `localhost` and 127.0.0.1 (ECDSA P-256), written
/// once per test process, and a client configuration that trusts the CA.
pub struct Pki {
    pub dir: PathBuf,
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client: std::sync::Arc<rustls::ClientConfig>,
    /// The same, offering TLS 1.2 only.
    pub client12: std::sync::Arc<rustls::ClientConfig>,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

impl Pki {
    /// Another certificate from the test CA: for `names`, with a key of `alg` (ECDSA P-256
    /// when `None`), valid until `not_after` (a year from now when `None`). Returns (cert PEM,
    /// key PEM).
    pub fn leaf(
        &self,
        names: &[&str],
        alg: Option<&'static rcgen::SignatureAlgorithm>,
        not_after: Option<(i32, u8, u8)>,
    ) -> (String, String) {
        let key = match alg {
            None => rcgen::KeyPair::generate().unwrap(),
            Some(a) => rcgen::KeyPair::generate_for(a).unwrap(),
        };
        let mut params =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, names[0]);
        if let Some((y, m, d)) = not_after {
            params.not_before = rcgen::date_time_ymd(y - 1, m, d);
            params.not_after = rcgen::date_time_ymd(y, m, d);
        }
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

pub fn pki() -> &'static Pki {
    static P: std::sync::OnceLock<Pki> = std::sync::OnceLock::new();
    P.get_or_init(|| {
        let dir = scratch("pki");
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "ringway test CA");
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let ca_pem = ca.pem();
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params =
            rcgen::CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
                .unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "localhost");
        let cert = params.signed_by(&key, &issuer).unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca.der().clone()).unwrap();
        let p = Pki {
            ca: dir.join("ca.pem"),
            cert: dir.join("cert.pem"),
            key: dir.join("key.pem"),
            client: std::sync::Arc::new(
                rustls::ClientConfig::builder()
                    .with_root_certificates(roots.clone())
                    .with_no_client_auth(),
            ),
            client12: std::sync::Arc::new(
                rustls::ClientConfig::builder_with_protocol_versions(&[&rustls::version::TLS12])
                    .with_root_certificates(roots)
                    .with_no_client_auth(),
            ),
            dir,
            issuer,
        };
        std::fs::write(&p.ca, ca_pem).unwrap();
        std::fs::write(&p.cert, cert.pem()).unwrap();
        std::fs::write(&p.key, key.serialize_pem()).unwrap();
        p
    })
}

/// The `tls = …` line of a server using the test certificate.
pub fn tls_line() -> String {
    let p = pki();
    format!(
        "tls = {{ cert = \"{}\", key = \"{}\" }}",
        p.cert.display(),
        p.key.display()
    )
}

/// One echo round trip of a binary message.
pub fn ws_echo(ws: &mut Ws, payload: Vec<u8>) {
    ws.send(tungstenite::Message::binary(payload.clone()))
        .unwrap();
    loop {
        match ws.read().unwrap() {
            tungstenite::Message::Binary(b) => {
                assert!(
                    b[..] == payload[..],
                    "echo differs: {} vs {} bytes",
                    b.len(),
                    payload.len()
                );
                return;
            }
            tungstenite::Message::Ping(_) | tungstenite::Message::Pong(_) => continue,
            other => panic!("unexpected {other:?}"),
        }
    }
}

/// Raw WebSocket over a socket (plain or TLS), for frame-level checks.
pub struct RawWs {
    pub s: Stream,
    pub buf: Vec<u8>,
    pub head: String,
}

impl RawWs {
    pub fn connect(addr: SocketAddr, path: &str, extra_headers: &str) -> RawWs {
        RawWs::connect_mode(addr, path, extra_headers, Mode::Plain)
    }

    pub fn connect_mode(addr: SocketAddr, path: &str, extra_headers: &str, mode: Mode) -> RawWs {
        let mut s = connect(addr, mode);
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: test.local\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra_headers}\r\n"
        );
        s.write_all(req.as_bytes()).unwrap();
        let mut buf = Vec::new();
        let mut tmp = [0u8; 4096];
        let end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let n = s.read(&mut tmp).unwrap();
            assert!(
                n > 0,
                "closed during handshake: {:?}",
                String::from_utf8_lossy(&buf)
            );
            buf.extend_from_slice(&tmp[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        buf.drain(..end);
        RawWs { s, buf, head }
    }

    pub fn send_frame(&mut self, fin: bool, rsv: u8, opcode: u8, payload: &[u8]) {
        let mut out = Vec::new();
        let mask = [0x12, 0x34, 0x56, 0x78];
        ringway_proxy::ws::write_header(
            &mut out,
            fin,
            rsv,
            opcode,
            Some(mask),
            payload.len() as u64,
        );
        let start = out.len();
        out.extend_from_slice(payload);
        ringway_proxy::ws::apply_mask(&mut out[start..], mask, 0);
        self.s.write_all(&out).unwrap();
    }

    /// Read one frame: (fin, rsv, opcode, payload).
    pub fn read_frame(&mut self) -> (bool, u8, u8, Vec<u8>) {
        let mut tmp = vec![0u8; 65536];
        loop {
            if let Some(h) = ringway_proxy::ws::parse_header(&self.buf).unwrap() {
                let total = h.header_len + h.len as usize;
                if self.buf.len() >= total {
                    assert!(h.mask.is_none(), "server frames must not be masked");
                    let p = self.buf[h.header_len..total].to_vec();
                    self.buf.drain(..total);
                    return (h.fin, h.rsv, h.opcode, p);
                }
            }
            let n = self.s.read(&mut tmp).unwrap();
            assert!(n > 0, "connection closed while reading a frame");
            self.buf.extend_from_slice(&tmp[..n]);
        }
    }
}

/// A seeded xorshift generator: the same seed gives the same cases (a failing seed can be
/// replayed).
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// A number below `n` (0 when `n` is 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    pub fn pick<'a>(&mut self, xs: &[&'a str]) -> &'a str {
        xs[self.below(xs.len())]
    }
}

/// The headers of a WebSocket upgrade request (after the request line and Host).
pub const WS_REQ: &str = "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n";

/// Descriptors the process holds.
pub fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

/// A request to the admin endpoint at `admin`, naming it in `Host` as a client would, with
/// `extra` header lines (each ending in CRLF): the whole response.
pub fn admin_request(admin: SocketAddr, method: &str, path: &str, extra: &str) -> Vec<u8> {
    let req = format!("{method} {path} HTTP/1.1\r\nHost: {admin}\r\n{extra}\r\n");
    raw_exchange(admin, req.as_bytes(), 10)
}

/// `GET path` of the admin endpoint: the whole response.
pub fn admin_get(admin: SocketAddr, path: &str) -> Vec<u8> {
    admin_request(admin, "GET", path, "")
}

/// `/status` of the admin endpoint, parsed.
pub fn admin_status(admin: SocketAddr) -> serde_json::Value {
    let out = admin_get(admin, "/status");
    let text = String::from_utf8_lossy(&out);
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("");
    serde_json::from_str(body).unwrap_or_else(|e| panic!("status JSON: {e}: {text}"))
}

/// Sessions active now, from the admin endpoint's `/status`.
pub fn active(admin: SocketAddr) -> u64 {
    let out = admin_get(admin, "/status");
    let text = String::from_utf8_lossy(&out);
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("");
    let v: serde_json::Value = serde_json::from_str(body).expect("status JSON");
    v["active"].as_u64().unwrap()
}

/// Run the ringway binary to completion (bounded by 20 s); exit code and all it printed.
pub fn ringway(args: &[&str]) -> (Option<i32>, String) {
    let mut child = std::process::Command::new(BIN)
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let t = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let out = child.wait_with_output().unwrap();
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            return (status.code(), text);
        }
        if t.elapsed() > Duration::from_secs(20) {
            let _ = child.kill();
            let _ = child.wait();
            return (None, format!("ringway {args:?} did not finish in 20 s"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A WebSocket upgrade of `path` sent raw through `addr` from source `from` (no WebSocket
/// library: thousands of these stay open cheaply): the status and the open stream.
pub fn upgrade_from(
    addr: SocketAddr,
    from: std::net::IpAddr,
    path: &str,
    mode: Mode,
) -> (u16, Stream) {
    let mut s = connect_from(addr, Some(from), mode);
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n{WS_REQ}\r\n").unwrap();
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") && s.read(&mut b).unwrap_or(0) == 1 {
        head.push(b[0]);
    }
    (status_of(&head), s)
}

/// After a limited connection closed: upgrades from `from` are refused (503) until its slot is
/// given back, then one is accepted; that one, and no more.
pub fn upgrade_when_slot_returns(
    addr: SocketAddr,
    from: std::net::IpAddr,
    path: &str,
    mode: Mode,
) -> Stream {
    let t = Instant::now();
    let s = loop {
        let (status, s) = upgrade_from(addr, from, path, mode);
        if status == 101 {
            break s;
        }
        assert_eq!(status, 503);
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "the closed connection's slot never came back"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(
        upgrade_from(addr, from, path, mode).0,
        503,
        "exactly one slot came back"
    );
    s
}

/// What one chatting client saw (see [`chatter`]).
#[derive(Debug, Default)]
pub struct Chat {
    /// When the proxy's Close arrived (since the instant in `since`), and its code.
    pub close_at: Option<Duration>,
    pub code: Option<u16>,
    pub closes: u32,
    /// Messages sent, and echoes received (in order, none missing: else `error`).
    pub sent: u64,
    pub echoed: u64,
    pub error: Option<String>,
}

/// A tungstenite client on `path` sending `i:N` every 200 ms and checking each echo comes back
/// in order, until the proxy closes it (its Close answered, as clients do) or `stop` is set
/// (then it waits for its last echoes and closes). It waits at `ready` once its first echo
/// came back.
pub fn chatter(
    i: u32,
    addr: SocketAddr,
    path: &str,
    ready: std::sync::Arc<std::sync::Barrier>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    since: std::sync::Arc<std::sync::Mutex<Option<Instant>>>,
) -> Chat {
    use tungstenite::Message;
    let mut c = Chat {
        sent: 1,
        ..Chat::default()
    };
    // Whatever happens, the barrier is passed: a failed client is reported, not a hang.
    let first = std::panic::catch_unwind(|| {
        let mut ws = ws_connect(addr, path);
        ws.send(Message::text(format!("{i}:1"))).unwrap();
        match ws.read() {
            Ok(Message::Text(t)) if t.as_str() == format!("{i}:1") => ws,
            other => panic!("first echo: {other:?}"),
        }
    });
    ready.wait();
    let mut ws = match first {
        Ok(ws) => ws,
        Err(_) => {
            c.error = Some("could not connect and echo once".into());
            return c;
        }
    };
    c.echoed = 1;
    ws.get_ref()
        .set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    let t0 = Instant::now();
    let mut next = Duration::from_millis(u64::from(i % 200));
    let mut stopped_at = None;
    loop {
        let stopping = stop.load(Ordering::Relaxed);
        if stopping && stopped_at.is_none() {
            stopped_at = Some(Instant::now());
        }
        if c.closes == 0 && !stopping && t0.elapsed() >= next {
            c.sent += 1;
            if let Err(e) = ws.send(Message::text(format!("{i}:{}", c.sent))) {
                c.error = Some(format!("send: {e}"));
                return c;
            }
            next += Duration::from_millis(200);
        }
        if stopping && c.echoed == c.sent && c.closes == 0 {
            let _ = ws.close(None);
            while ws.read().is_ok() {}
            return c;
        }
        match ws.read() {
            Ok(Message::Text(t)) => {
                let n: u64 = t.split_once(':').unwrap().1.parse().unwrap();
                if n != c.echoed + 1 {
                    c.error = Some(format!("echo {n} after {}", c.echoed));
                }
                c.echoed = n;
            }
            Ok(Message::Close(f)) => {
                c.closes += 1;
                c.code = f.map(|f| u16::from(f.code));
                c.close_at = since.lock().unwrap().map(|t| t.elapsed());
                if c.close_at.is_none() {
                    c.error = Some("closed by the proxy unasked".into());
                }
            }
            Ok(m) => c.error = Some(format!("unexpected {m:?}")),
            Err(tungstenite::Error::Io(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(tungstenite::Error::ConnectionClosed) => return c,
            Err(e) => {
                c.error = Some(format!("read: {e}"));
                return c;
            }
        }
        if t0.elapsed() > Duration::from_secs(300)
            || stopped_at.is_some_and(|t| t.elapsed() > Duration::from_secs(20))
        {
            c.error = Some(format!("still open: sent {} echoed {}", c.sent, c.echoed));
            return c;
        }
    }
}

/// `n` chatters on `path`, each on a thread of its own; returns once all of them are chatting.
pub fn chatters(
    n: usize,
    addr: SocketAddr,
    path: &str,
    stop: &std::sync::Arc<std::sync::atomic::AtomicBool>,
    since: &std::sync::Arc<std::sync::Mutex<Option<Instant>>>,
) -> Vec<std::thread::JoinHandle<Chat>> {
    let ready = std::sync::Arc::new(std::sync::Barrier::new(n + 1));
    let handles = (0..n as u32)
        .map(|i| {
            let (ready, stop, since) = (ready.clone(), stop.clone(), since.clone());
            let path = path.to_string();
            std::thread::Builder::new()
                .stack_size(256 << 10)
                .spawn(move || chatter(i, addr, &path, ready, stop, since))
                .unwrap()
        })
        .collect();
    ready.wait();
    handles
}

/// Wait until the proxy reports `n` active sessions (short connections of the test itself end
/// within moments), failing after 5 s.
pub fn wait_active(admin: SocketAddr, n: u64) {
    wait_active_within(admin, n, 5)
}

/// The same, failing after `secs`.
pub fn wait_active_within(admin: SocketAddr, n: u64, secs: u64) {
    let t = Instant::now();
    loop {
        let now = active(admin);
        if now == n {
            return;
        }
        assert!(
            t.elapsed() < Duration::from_secs(secs),
            "{now} sessions active, expected {n}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Wait for `p` to exit (failing after `secs`, with its log); its exit status.
pub fn wait_exit(p: &mut Proc, secs: u64) -> std::process::ExitStatus {
    let t = Instant::now();
    loop {
        if let Some(status) = p.child.try_wait().unwrap() {
            return status;
        }
        assert!(
            t.elapsed() < Duration::from_secs(secs),
            "still running {secs}s on:\n{}",
            p.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Start an installed program (not ringway) with its stderr in `dir/NAME.log`; `None`, and a
/// loud SKIPPED, when it is not installed (`.ci/run` installs it).
pub fn tool(program: &str, args: &[&str], dir: &std::path::Path, name: &str) -> Option<Proc> {
    let log = dir.join(format!("{name}.log"));
    match Command::new(program)
        .args(args)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
    {
        Ok(child) => Some(Proc { child, log }),
        Err(e) => {
            skip(&format!(
                "{program} cannot be started ({e}); scripts/test.sh installs it as root"
            ));
            None
        }
    }
}

/// One whole WebSocket exchange on a fresh connection (from `from` when given): upgrade, one
/// echo, close. `Ok(false)` when the proxy told it to reconnect instead (a Close: it was
/// accepted just as its process began to drain); `Err` for a refused, reset or broken one.
pub fn one_exchange(
    addr: SocketAddr,
    from: Option<std::net::IpAddr>,
    n: u64,
) -> Result<bool, String> {
    use tungstenite::Message;
    let s = tcp_from(addr, from).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let (mut ws, _) = tungstenite::client(format!("ws://localhost:{}/ws/", addr.port()), s)
        .map_err(|e| format!("handshake: {e}"))?;
    let m = format!("loop {n}");
    ws.send(Message::text(m.clone()))
        .map_err(|e| format!("send: {e}"))?;
    match ws.read().map_err(|e| format!("read: {e}"))? {
        Message::Text(t) if t.as_str() == m => {}
        Message::Close(_) => return Ok(false),
        other => return Err(format!("unexpected {other:?}")),
    }
    let _ = ws.close(None);
    Ok(true)
}

/// A client loop making [`one_exchange`]s one after another on a thread, until stopped.
pub struct ConnectLoop {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    pub ok: std::sync::Arc<std::sync::atomic::AtomicU64>,
    failed: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ConnectLoop {
    /// Exchange `n` goes from `from(n)`.
    pub fn start(
        addr: SocketAddr,
        from: impl Fn(u64) -> Option<std::net::IpAddr> + Send + 'static,
    ) -> ConnectLoop {
        let l = ConnectLoop {
            stop: Default::default(),
            ok: Default::default(),
            failed: Default::default(),
            thread: None,
        };
        let (stop, ok, failed) = (l.stop.clone(), l.ok.clone(), l.failed.clone());
        let thread = std::thread::spawn(move || {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                match one_exchange(addr, from(n), n) {
                    Ok(_) => {
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => failed.lock().unwrap().push(format!("exchange {n}: {e}")),
                }
            }
        });
        ConnectLoop {
            thread: Some(thread),
            ..l
        }
    }

    /// Exchanges done so far (echoed, or told to reconnect).
    pub fn done(&self) -> u64 {
        self.ok.load(Ordering::Relaxed)
    }

    /// Stop; what failed.
    pub fn stop(mut self) -> Vec<String> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
        std::mem::take(&mut *self.failed.lock().unwrap())
    }
}

/// Samples by `name{sorted labels}`, through prometheus_client's parser for `format`
/// ("classic" or "openmetrics").
pub fn parse_metrics(text: &str, format: &str) -> std::collections::HashMap<String, f64> {
    let module = match format {
        "classic" => "prometheus_client.parser",
        _ => "prometheus_client.openmetrics.parser",
    };
    let script = format!(
        "import sys, json\nfrom {module} import text_string_to_metric_families as p\nout = {{}}\nfor f in p(sys.stdin.read()):\n    for s in f.samples:\n        out[s.name + '{{' + ','.join(k + '=' + v for k, v in sorted(s.labels.items())) + '}}'] = s.value\nprint(json.dumps(out))\n"
    );
    let mut child = Command::new("python3")
        .args(["-c", &script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the {format} parser refused the exposition: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

pub fn scrape(admin: SocketAddr, accept: &str) -> (String, String) {
    let out = admin_request(admin, "GET", "/metrics", accept);
    let text = String::from_utf8(out).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    (head.to_string(), body.to_string())
}

/// `promtool ARGS` with `input` on stdin must succeed (skipped, saying so, where promtool is not
/// installed; `.ci/run` installs it).
pub fn promtool(args: &[&str], input: &str) {
    if Command::new("promtool").arg("--version").output().is_err() {
        skip(
            "promtool is not installed (apt-get install prometheus; scripts/test.sh does as root)",
        );
        return;
    }
    let mut p = Command::new("promtool")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    p.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    let out = p.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The sum of every sample whose key starts with `prefix`.
pub fn total(m: &std::collections::HashMap<String, f64>, prefix: &str) -> f64 {
    m.iter()
        .filter(|(k, _)| k.starts_with(prefix))
        .map(|(_, v)| v)
        .sum()
}
