//! ringway's own TLS record layer held to a TLS library's standard, against rustls as the peer
//! over real sockets: a KeyUpdate that comes in the same write as the client's Finished (or
//! just after it) is answered as RFC 8446 §4.6.3 says; a flood of KeyUpdates is cut off with an
//! alert; connections are closed with close_notify, toward clients and toward TLS upstreams.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use common::*;

/// A rustls client over a socket, driven by hand so a test decides what goes in each write.
struct Client {
    tls: rustls::ClientConnection,
    sock: TcpStream,
}

impl Client {
    fn connect(addr: SocketAddr) -> Client {
        let sock = TcpStream::connect(addr).unwrap();
        sock.set_nodelay(true).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let tls = rustls::ClientConnection::new(pki().client.clone(), name).unwrap();
        Client { tls, sock }
    }

    /// Everything rustls has to send, in one write.
    fn flush(&mut self) {
        let mut out = Vec::new();
        while self.tls.wants_write() {
            self.tls.write_tls(&mut out).unwrap();
        }
        self.sock.write_all(&out).unwrap();
    }

    /// Read from the socket once into rustls and process it.
    fn read_once(&mut self) -> Result<rustls::IoState, rustls::Error> {
        let mut buf = [0u8; 16384];
        let n = self.sock.read(&mut buf).unwrap_or(0);
        if n == 0 {
            return Err(rustls::Error::General("EOF".into()));
        }
        self.tls.read_tls(&mut &buf[..n]).unwrap();
        self.tls.process_new_packets()
    }

    /// Run the handshake up to the client's last flight, not sent yet: the client is no longer
    /// handshaking and its Finished waits in rustls.
    fn until_finished_pending(&mut self) {
        self.flush();
        while self.tls.is_handshaking() {
            self.read_once().unwrap();
        }
        assert!(self.tls.wants_write(), "the Finished waits");
    }

    /// The plaintext that has arrived, reading until `until` is in it (or the peer ends).
    fn read_until(&mut self, until: &[u8]) -> Result<Vec<u8>, rustls::Error> {
        let mut got = Vec::new();
        loop {
            let _ = self.tls.reader().read_to_end(&mut got);
            if got.windows(until.len()).any(|w| w == until) {
                return Ok(got);
            }
            self.read_once()?;
        }
    }
}

const REQUEST: &[u8] = b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n";

/// A KeyUpdate asking for ours, sent in the same write as the client's Finished (and the
/// request behind it), or a moment after it: ringway answers with its own KeyUpdate before its
/// response, so the client reads the response on the new keys. (It used to switch its sending
/// key without ever sending a KeyUpdate: every client of the first kind, a fifth of the
/// second, could not read the response.)
#[test]
fn a_key_update_beside_the_finished_is_answered() {
    if !uring_ok() {
        return;
    }
    let st = stack_mode(Mode::Tls, "tls-ku-finished", "", "", "");
    for round in 0..40 {
        let mut c = Client::connect(st.listen);
        c.until_finished_pending();
        if round % 2 == 1 {
            // The Finished alone first, then (microseconds later) the KeyUpdate and the request.
            c.flush();
        }
        c.tls.refresh_traffic_keys().unwrap();
        c.tls.writer().write_all(REQUEST).unwrap();
        c.flush();
        let got = c
            .read_until(b"ok")
            .unwrap_or_else(|e| panic!("round {round}: the response cannot be read: {e}"));
        assert!(got.starts_with(b"HTTP/1.1 200"), "round {round}");
    }
}

/// KeyUpdates without data between them are accepted up to the bound (and the bound starts
/// over with data); past it ringway ends the connection with an unexpected_message alert.
#[test]
fn a_key_update_flood_ends_with_an_alert() {
    if !uring_ok() {
        return;
    }
    let st = stack_mode(Mode::Tls, "tls-ku-flood", "", "", "");
    // Up to the bound, then data: fine, twice over.
    let mut c = Client::connect(st.listen);
    c.until_finished_pending();
    c.flush();
    for _ in 0..2 {
        for _ in 0..ringway_proxy::tls::records::KEY_UPDATES_MAX {
            c.tls.refresh_traffic_keys().unwrap();
            c.flush();
        }
        c.tls.writer().write_all(REQUEST).unwrap();
        c.flush();
        let got = c.read_until(b"ok").expect("answered");
        assert!(got.starts_with(b"HTTP/1.1 200"));
    }
    // Past it: an alert, and the end of the connection.
    let mut c = Client::connect(st.listen);
    c.until_finished_pending();
    c.flush();
    for _ in 0..=ringway_proxy::tls::records::KEY_UPDATES_MAX {
        c.tls.refresh_traffic_keys().unwrap();
        c.flush();
    }
    let e = loop {
        match c.read_once() {
            Ok(_) => continue,
            Err(e) => break e,
        }
    };
    assert_eq!(
        e,
        rustls::Error::AlertReceived(rustls::AlertDescription::UnexpectedMessage),
        "{e}"
    );
    st.proxy.wait_log("end=client-tls", 10);
}

/// Whether a TLS stream read to its end by `c` ended with close_notify (and not a bare FIN).
fn ends_with_close_notify(c: &mut Client) -> bool {
    loop {
        let mut buf = [0u8; 16384];
        let n = match c.sock.read(&mut buf) {
            Ok(n) => n,
            Err(e) => panic!("no end: {e}"),
        };
        if n == 0 {
            return false;
        }
        c.tls.read_tls(&mut &buf[..n]).unwrap();
        match c.tls.process_new_packets() {
            Ok(s) if s.peer_has_closed() => return true,
            Ok(_) => {
                let _ = c.tls.reader().read_to_end(&mut Vec::new());
            }
            Err(e) => panic!("{e}"),
        }
    }
}

/// ringway closes a TLS connection with close_notify, as nginx does: a client that asked for
/// `Connection: close`, a client given an error of ringway's own, a tunnel the upstream ended;
/// and a TLS upstream connection it closes after the response.
#[test]
fn connections_end_with_close_notify() {
    if !uring_ok() {
        return;
    }
    let st = stack_mode(Mode::Tls, "tls-close-notify", "", "", "");
    // A response, then the close the client asked for.
    let mut c = Client::connect(st.listen);
    c.until_finished_pending();
    c.tls
        .writer()
        .write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .unwrap();
    c.flush();
    assert!(ends_with_close_notify(&mut c), "after Connection: close");
    // An answer of ringway's own (400), then the close.
    let mut c = Client::connect(st.listen);
    c.until_finished_pending();
    c.tls.writer().write_all(b"NOT HTTP\r\n\r\n").unwrap();
    c.flush();
    assert!(ends_with_close_notify(&mut c), "after a 400");
    // A tunnel whose upstream closes first.
    let mut c = Client::connect(st.listen);
    c.until_finished_pending();
    c.tls
        .writer()
        .write_all(b"GET /close/1000 HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
        .unwrap();
    c.flush();
    let _ = c.read_until(b"\r\n\r\n").unwrap();
    // The upstream's Close; the client answers it, and the proxy closes.
    let mut close = Vec::new();
    ringway_proxy::ws::write_header(
        &mut close,
        true,
        0,
        ringway_proxy::ws::opcode::CLOSE,
        Some([1, 2, 3, 4]),
        2,
    );
    let mut payload = 1000u16.to_be_bytes();
    ringway_proxy::ws::apply_mask(&mut payload, [1, 2, 3, 4], 0);
    close.extend_from_slice(&payload);
    c.tls.writer().write_all(&close).unwrap();
    c.flush();
    assert!(ends_with_close_notify(&mut c), "after a tunnel's end");

    // Toward a TLS upstream (a rustls server of the test's own).
    let upstream = TcpListener::bind("127.0.0.1:0").unwrap();
    let up_addr = upstream.local_addr().unwrap();
    let server = std::thread::spawn(move || {
        let p = pki();
        let certs = rustls::pki_types::CertificateDer::pem_file_iter(&p.cert)
            .unwrap()
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        use rustls::pki_types::pem::PemObject;
        let key = rustls::pki_types::PrivateKeyDer::from_pem_file(&p.key).unwrap();
        let cfg = Arc::new(
            rustls::ServerConfig::builder()
                .with_no_client_auth()
                .with_single_cert(certs, key)
                .unwrap(),
        );
        let (s, _) = upstream.accept().unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut t = rustls::StreamOwned::new(rustls::ServerConnection::new(cfg).unwrap(), s);
        let mut head = Vec::new();
        let mut b = [0u8; 4096];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = t.read(&mut b).unwrap();
            assert!(n > 0);
            head.extend_from_slice(&b[..n]);
        }
        t.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
            .unwrap();
        t.flush().unwrap();
        // Read on until the proxy closes: with close_notify, rustls says so.
        loop {
            match t.read(&mut b) {
                Ok(0) => return true,
                Ok(_) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return false,
                Err(e) => panic!("{e}"),
            }
        }
    });
    let dir = scratch("tls-close-notify-up");
    let listen = free_addr();
    let cfg = format!(
        "[[upstream]]\nname = \"s\"\nservers = [{{ addr = \"{up_addr}\" }}]\ntls = {{ ca = \"{}\", sni = \"localhost\" }}\n\
         [[server]]\nlisten = [\"{listen}\"]\n[[server.location]]\npath = \"/\"\nupstream = \"s\"\n",
        pki().ca.display()
    );
    let _p = proxy(&cfg, listen, &dir);
    let out = raw_exchange(
        listen,
        b"GET /x HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        10,
    );
    assert_eq!(status_of(&out), 200, "{}", String::from_utf8_lossy(&out));
    assert!(
        server.join().unwrap(),
        "the upstream connection ended with close_notify"
    );
}
