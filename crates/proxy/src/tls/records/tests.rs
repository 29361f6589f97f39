//! ringway's records against rustls's own: both directions, key updates, close_notify, TLS 1.2
//! and 1.3 suites.

use std::io::{Read, Write};
use std::sync::Arc;

use rustls::server::UnbufferedServerConnection;

use super::*;
use crate::tls::Engine;

/// A rustls client (buffered, as browsers' stacks are to us: someone else's records) and
/// ringway's server side, handshaken in memory; then the server's records are ringway's.
fn pair() -> (
    rustls::ClientConnection,
    Records<Keys<rustls::server::ServerConnectionData>>,
) {
    pair_with(&rustls::version::TLS13, None)
}

/// As `pair_with`, without or with the server's secrets caught to be carried.
fn pair_with(
    version: &'static rustls::SupportedProtocolVersion,
    suite: Option<rustls::SupportedCipherSuite>,
) -> (
    rustls::ClientConnection,
    Records<Keys<rustls::server::ServerConnectionData>>,
) {
    pair_capturing(version, suite, false)
}

/// As `pair`, for one protocol version and (for the client) one cipher suite; with
/// `capture`, the server's configuration has the key log that catches its secrets.
fn pair_capturing(
    version: &'static rustls::SupportedProtocolVersion,
    suite: Option<rustls::SupportedCipherSuite>,
    capture: bool,
) -> (
    rustls::ClientConnection,
    Records<Keys<rustls::server::ServerConnectionData>>,
) {
    let (client, server, captured) = handshake(version, suite, capture);
    (client, server.into_records(captured.as_deref()).unwrap())
}

/// The handshake of `pair_capturing`, the server's records not taken over yet: the client, the
/// server, and what its key log caught.
fn handshake(
    version: &'static rustls::SupportedProtocolVersion,
    suite: Option<rustls::SupportedCipherSuite>,
    capture: bool,
) -> (
    rustls::ClientConnection,
    UnbufferedServerConnection,
    Option<Box<Captured>>,
) {
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let der = pki_types::CertificateDer::from(cert.der().to_vec());
    let kd = pki_types::PrivateKeyDer::try_from(key.serialize_der()).unwrap();
    let p = crate::tls::setup::provider();
    let mut client_provider = (*p).clone();
    if let Some(s) = suite {
        client_provider.cipher_suites = vec![s];
    }
    let mut sc = rustls::ServerConfig::builder_with_provider(p.clone())
        .with_protocol_versions(&[version])
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![der.clone()], kd)
        .unwrap();
    sc.enable_secret_extraction = true;
    if capture {
        sc.key_log = Arc::new(Capture);
    }
    let mut roots = rustls::RootCertStore::empty();
    roots.add(der).unwrap();
    let cc = rustls::ClientConfig::builder_with_provider(Arc::new(client_provider))
        .with_protocol_versions(&[version])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let mut client = rustls::ClientConnection::new(
        Arc::new(cc),
        pki_types::ServerName::try_from("localhost").unwrap(),
    )
    .unwrap();
    let mut server = UnbufferedServerConnection::new(Arc::new(sc)).unwrap();
    let mut pending = Vec::new();
    let mut shown = 0;
    let mut captured = None;
    for _ in 0..10 {
        client.write_tls(&mut pending).unwrap();
        let mut out = Vec::new();
        let used = capturing(&mut captured, || {
            crate::tls::drive(
                &mut server,
                &mut pending,
                &mut shown,
                &mut Vec::new(),
                &mut out,
            )
        })
        .unwrap();
        pending.drain(..used);
        client.read_tls(&mut &out[..]).unwrap();
        client.process_new_packets().unwrap();
        if !server.common().is_handshaking() && !client.is_handshaking() {
            break;
        }
    }
    assert!(pending.is_empty());
    assert_eq!(captured.is_some(), capture);
    (client, server, captured)
}

fn to_server(client: &mut rustls::ClientConnection) -> Vec<u8> {
    let mut v = Vec::new();
    while client.wants_write() {
        client.write_tls(&mut v).unwrap();
    }
    v
}

fn to_client(client: &mut rustls::ClientConnection, mut bytes: &[u8]) -> Vec<u8> {
    let mut got = Vec::new();
    while !bytes.is_empty() {
        client.read_tls(&mut bytes).unwrap();
        client.process_new_packets().unwrap();
        let _ = client.reader().read_to_end(&mut got);
    }
    got
}

#[test]
fn records_both_ways_with_key_updates_and_close_notify() {
    let (mut client, mut server) = pair();
    // The client's records (several in one buffer), opened in place: plaintext first.
    client.writer().write_all(b"hello, ").unwrap();
    client.writer().write_all(&vec![7u8; 40_000]).unwrap();
    let mut wire = to_server(&mut client);
    let (n, used) = server.open(&mut wire).unwrap();
    assert_eq!(used, wire.len());
    assert_eq!(n, 7 + 40_000);
    assert_eq!(&wire[..7], b"hello, ");
    assert!(wire[7..n].iter().all(|&b| b == 7));
    // A record cut short is left for later, untouched.
    client.writer().write_all(b"cut").unwrap();
    let mut wire = to_server(&mut client);
    let (n, used) = server.open(&mut wire[..10]).unwrap();
    assert_eq!((n, used), (0, 0));
    let (n, _) = server.open(&mut wire).unwrap();
    assert_eq!(&wire[..n], b"cut");
    // Sealed by ringway, read by rustls.
    let mut sealed = Vec::new();
    server.seal(&vec![9u8; 70_000], &mut sealed).unwrap();
    let got = to_client(&mut client, &sealed);
    assert!(
        got.len() == 70_000 && got.iter().all(|&b| b == 9),
        "{} bytes back",
        got.len()
    );
    // The client moves to new keys and asks us to: we follow both ways.
    client.refresh_traffic_keys().unwrap();
    client.writer().write_all(b"after update").unwrap();
    let mut wire = to_server(&mut client);
    let mut answer = Vec::new();
    let (n, _) = server.open(&mut wire).unwrap();
    assert_eq!(&wire[..n], b"after update");
    assert!(answer.is_empty(), "our update waits for our next data");
    // Asked again before we sent anything: still one update of ours, before the data.
    client.refresh_traffic_keys().unwrap();
    client.writer().write_all(b"again").unwrap();
    let mut wire = to_server(&mut client);
    let (n, _) = server.open(&mut wire).unwrap();
    assert_eq!(&wire[..n], b"again");
    server.seal(b"on new keys", &mut answer).unwrap();
    assert_eq!(to_client(&mut client, &answer), b"on new keys");
    // A flipped bit is refused.
    client.writer().write_all(b"tampered").unwrap();
    let mut wire = to_server(&mut client);
    let last = wire.len() - 1;
    wire[last] ^= 1;
    assert!(server.open(&mut wire).is_err());
}

#[test]
fn tls12_records_with_aes_gcm_and_chacha20() {
    use rustls::crypto::aws_lc_rs::cipher_suite as cs;
    for suite in [
        cs::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        cs::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
        cs::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
    ] {
        let (mut client, mut server) = pair_with(&rustls::version::TLS12, Some(suite));
        assert_eq!(client.negotiated_cipher_suite(), Some(suite));
        for size in [1usize, 100, 16_384, 40_000] {
            client.writer().write_all(&vec![5u8; size]).unwrap();
            let mut wire = to_server(&mut client);
            let (n, used) = server.open(&mut wire).unwrap();
            assert_eq!((n, used), (size, wire.len()), "{suite:?}");
            assert!(wire[..n].iter().all(|&b| b == 5));
            let mut sealed = Vec::new();
            server.seal(&vec![6u8; size], &mut sealed).unwrap();
            let got = to_client(&mut client, &sealed);
            assert!(
                got.len() == size && got.iter().all(|&b| b == 6),
                "{suite:?}"
            );
        }
        let mut out = Vec::new();
        server.close_notify(&mut out).unwrap();
        client.read_tls(&mut &out[..]).unwrap();
        assert!(client.process_new_packets().unwrap().peer_has_closed());
        // No key update in TLS 1.2: past its records per key, sealing refuses.
        server.tx.seq = TLS12_RECORDS_MAX;
        assert!(server.seal(b"one too many", &mut Vec::new()).is_err());
        client.send_close_notify();
        let mut wire = to_server(&mut client);
        server.open(&mut wire).unwrap();
        assert!(server.peer_closed);
    }
}

#[test]
fn close_notify_each_way() {
    let (mut client, mut server) = pair();
    let mut out = Vec::new();
    server.close_notify(&mut out).unwrap();
    client.read_tls(&mut &out[..]).unwrap();
    let state = client.process_new_packets().unwrap();
    // (one record: read whole)
    assert!(state.peer_has_closed());
    client.send_close_notify();
    let mut wire = to_server(&mut client);
    let (n, _) = server.open(&mut wire).unwrap();
    assert_eq!(n, 0);
    assert!(server.peer_closed);
}

/// A seeded xorshift generator (a failing seed replays the same case).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Every record suite ringway enables (TLS 1.3's three, TLS 1.2's three ciphers).
fn every_suite() -> Vec<(
    &'static rustls::SupportedProtocolVersion,
    rustls::SupportedCipherSuite,
)> {
    use rustls::crypto::aws_lc_rs::cipher_suite as cs;
    let provider = crate::tls::setup::provider();
    let mut out = Vec::new();
    for s in &provider.cipher_suites {
        let v = match s {
            rustls::SupportedCipherSuite::Tls13(_) => &rustls::version::TLS13,
            rustls::SupportedCipherSuite::Tls12(_) => &rustls::version::TLS12,
        };
        // The test certificate is ECDSA: TLS 1.2's RSA suites use the same three ciphers.
        if [
            cs::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
            cs::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
            cs::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
        ]
        .contains(s)
        {
            continue;
        }
        out.push((v, *s));
    }
    assert_eq!(out.len(), 6, "{out:?}");
    out
}

/// ringway's records against rustls's own, both ways, for every suite: random plaintext
/// sizes, the ciphertext cut at random points before each side reads it (ringway keeps a
/// cut record as `Tls` does), key updates both ways in TLS 1.3 (asked for by the peer, and
/// ringway's own), and past 2^16 records each way (the sequence number's third byte).
#[test]
fn differential_against_rustls_records() {
    for (i, (version, suite)) in every_suite().into_iter().enumerate() {
        let seed = 0x5eed_0000 + i as u64;
        let mut rng = Rng(seed);
        let (mut client, mut server) = pair_with(version, Some(suite));
        assert_eq!(client.negotiated_cipher_suite(), Some(suite));
        client.set_buffer_limit(None);
        let tls13 = version == &rustls::version::TLS13;
        // ringway reads what rustls sealed.
        let mut wire = Vec::new();
        let mut sent = Vec::new();
        let mut got = Vec::new();
        let mut pending = Vec::new();
        let mut read_some = |wire: &mut Vec<u8>,
                             pending: &mut Vec<u8>,
                             got: &mut Vec<u8>,
                             rng: &mut Rng,
                             all: bool| {
            while !wire.is_empty() {
                let n = if all {
                    wire.len()
                } else {
                    1 + rng.below(wire.len())
                };
                pending.extend(wire.drain(..n));
                let (plain, used) = server
                    .open(pending)
                    .unwrap_or_else(|e| panic!("seed {seed:#x} {suite:?}: {e}"));
                got.extend_from_slice(&pending[..plain]);
                pending.drain(..used);
                if !all {
                    break;
                }
            }
        };
        // Large and small messages, in random cuts.
        for round in 0..300 {
            let size = match rng.below(4) {
                0 => rng.below(16),
                1 => rng.below(2000),
                2 => 16_384 + rng.below(3) - 1,
                _ => rng.below(70_000),
            };
            let msg: Vec<u8> = (0..size).map(|_| rng.next() as u8).collect();
            client.writer().write_all(&msg).unwrap();
            sent.extend_from_slice(&msg);
            if tls13 && round % 37 == 5 {
                client.refresh_traffic_keys().unwrap();
            }
            wire.extend(to_server(&mut client));
            let all = rng.below(3) == 0;
            read_some(&mut wire, &mut pending, &mut got, &mut rng, all);
        }
        read_some(&mut wire, &mut pending, &mut got, &mut rng, true);
        assert!(pending.is_empty());
        assert!(
            got == sent,
            "seed {seed:#x} {suite:?}: client to ringway differs"
        );
        // rustls reads what ringway sealed (its own key updates, and the ones asked for).
        let mut expect = Vec::new();
        let mut read = Vec::new();
        for round in 0..300 {
            let size = rng.below(40_000);
            let msg: Vec<u8> = (0..size).map(|_| rng.next() as u8).collect();
            let mut sealed = Vec::new();
            if tls13 && round % 41 == 7 {
                server.update_keys(&mut sealed).unwrap();
            }
            server.seal(&msg, &mut sealed).unwrap();
            expect.extend_from_slice(&msg);
            let mut at = 0;
            while at < sealed.len() {
                let n = 1 + rng.below(sealed.len() - at);
                read.extend(to_client(&mut client, &sealed[at..at + n]));
                at += n;
            }
        }
        assert!(
            read == expect,
            "seed {seed:#x} {suite:?}: ringway to client differs"
        );
        // Past 2^16 records each way.
        let mut wire = Vec::new();
        let mut count = 0u32;
        for k in 0..66_000u32 {
            client.writer().write_all(&k.to_be_bytes()).unwrap();
            wire.extend(to_server(&mut client));
            if wire.len() > 1 << 16 {
                let (n, used) = server.open(&mut wire).unwrap();
                count += (n / 4) as u32;
                wire.drain(..used);
            }
        }
        let (n, used) = server.open(&mut wire).unwrap();
        count += (n / 4) as u32;
        assert_eq!(used, wire.len());
        assert_eq!(count, 66_000, "{suite:?}");
        let mut sealed = Vec::new();
        for k in 0..66_000u32 {
            server.seal(&k.to_be_bytes(), &mut sealed).unwrap();
        }
        assert_eq!(
            to_client(&mut client, &sealed).len(),
            66_000 * 4,
            "{suite:?}"
        );
        assert!(server.rx.seq > 1 << 16 && server.tx.seq > 1 << 16);
        // Still in step after all that.
        client.writer().write_all(b"last").unwrap();
        let mut wire = to_server(&mut client);
        let (n, _) = server.open(&mut wire).unwrap();
        assert_eq!(&wire[..n], b"last");
    }
}

/// The bound on KeyUpdates: 32 in a row are followed, the 33rd without data between is
/// refused (and data starts the count over).
#[test]
fn key_updates_in_a_row_are_bounded() {
    let (mut client, mut server) = pair();
    for _ in 0..2 {
        for _ in 0..KEY_UPDATES_MAX {
            client.refresh_traffic_keys().unwrap();
            let mut wire = to_server(&mut client);
            assert_eq!(server.open(&mut wire).unwrap().0, 0);
        }
        client.writer().write_all(b"data").unwrap();
        let mut wire = to_server(&mut client);
        let (n, _) = server.open(&mut wire).unwrap();
        assert_eq!(&wire[..n], b"data");
    }
    for _ in 0..KEY_UPDATES_MAX {
        client.refresh_traffic_keys().unwrap();
    }
    client.refresh_traffic_keys().unwrap();
    let mut wire = to_server(&mut client);
    let e = server.open(&mut wire).unwrap_err();
    assert_eq!(
        e,
        Error::PeerMisbehaved(rustls::PeerMisbehaved::TooManyKeyUpdateRequests)
    );
    assert_eq!(alert_for(&e), Some(10));
    // The alert is sealed for the peer, which reads it as such.
    let mut out = Vec::new();
    server.alert(10, &mut out).unwrap();
    client.read_tls(&mut &out[..]).unwrap();
    assert_eq!(
        client.process_new_packets().unwrap_err(),
        Error::AlertReceived(rustls::AlertDescription::UnexpectedMessage)
    );
}

#[test]
fn garbage_records_are_refused_without_panic() {
    use rustls::crypto::aws_lc_rs::cipher_suite as cs;
    garbage(pair().1);
    garbage(
        pair_with(
            &rustls::version::TLS12,
            Some(cs::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256),
        )
        .1,
    );
    garbage(
        pair_with(
            &rustls::version::TLS12,
            Some(cs::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256),
        )
        .1,
    );
}

fn garbage(mut server: Records<Keys<rustls::server::ServerConnectionData>>) {
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    for _ in 0..2000 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let len = (seed % 300) as usize;
        let mut buf: Vec<u8> = (0..len).map(|i| (seed >> (i % 56)) as u8).collect();
        if len >= 5 {
            buf[0] = [23, 21, 22][(seed % 3) as usize];
            buf[1] = 3;
            buf[2] = 3;
        }
        let _ = server.open(&mut buf);
    }
}

/// Records carried to another process go on there: for every suite, a server whose secrets
/// were caught exports its records mid-stream (after a key update each way in TLS 1.3), and
/// records imported from that export talk on with the same rustls client, both ways, through
/// key updates the client asks for and ringway's own — so ringway's key schedule derives what
/// rustls derives. Every byte flip of an export is refused or taken, never a panic.
#[test]
fn carried_records_go_on_in_another_process() {
    for (version, suite) in every_suite() {
        let tls13 = matches!(suite, rustls::SupportedCipherSuite::Tls13(_));
        let (mut client, mut server) = pair_capturing(version, Some(suite), true);
        assert!(server.kernel().carried(), "{suite:?}");
        // A server end that carries its keys needs nothing of rustls (its 560 bytes stay
        // out of every connection); one that does not keeps it, boxed.
        assert!(!server.kernel().holds_rustls());
        let (_, plain) = pair_with(version, Some(suite));
        assert!(!plain.kernel().carried(), "nothing caught, nothing carried");
        assert!(plain.kernel().holds_rustls());
        assert!(
            std::mem::size_of::<Records<Keys<rustls::server::ServerConnectionData>>>() <= 128,
            "rustls's state is boxed, not in every connection's records"
        );
        assert!(plain.export().is_none());
        let talk = |client: &mut rustls::ClientConnection,
                    server: &mut Records<Keys<rustls::server::ServerConnectionData>>,
                    tag: u8| {
            client.writer().write_all(&[tag; 3000]).unwrap();
            let mut wire = to_server(client);
            let (n, used) = server
                .open(&mut wire)
                .unwrap_or_else(|e| panic!("{suite:?} {tag}: {e:?}"));
            assert_eq!((n, used), (3000, wire.len()), "{suite:?} {tag}");
            assert!(wire[..n].iter().all(|&b| b == tag));
            let mut sealed = Vec::new();
            server.seal(&[tag ^ 0xff; 2000], &mut sealed).unwrap();
            let got = to_client(client, &sealed);
            assert!(
                got.len() == 2000 && got.iter().all(|&b| b == tag ^ 0xff),
                "{suite:?}"
            );
        };
        talk(&mut client, &mut server, 1);
        if tls13 {
            client.refresh_traffic_keys().unwrap();
            talk(&mut client, &mut server, 2);
        }
        let state = server.export().expect("carried");
        drop(server);
        let mut moved =
            Records::<Keys<rustls::server::ServerConnectionData>>::import(&state).unwrap();
        talk(&mut client, &mut moved, 3);
        if tls13 {
            client.refresh_traffic_keys().unwrap();
            talk(&mut client, &mut moved, 4);
            let mut out = Vec::new();
            moved.update_keys(&mut out).unwrap();
            assert!(to_client(&mut client, &out).is_empty());
            talk(&mut client, &mut moved, 5);
            // Moved again, after updates on both sides.
            let again = moved.export().unwrap();
            moved = Records::import(&again).unwrap();
            talk(&mut client, &mut moved, 6);
        }
        let mut rng = Rng(0xc0ffee);
        for _ in 0..2000 {
            let mut b = state.to_vec();
            let at = rng.below(b.len());
            b[at] ^= 1 << rng.below(8);
            let _ = Records::<Keys<rustls::server::ServerConnectionData>>::import(&b);
        }
        for n in 0..state.len() {
            assert!(
                Records::<Keys<rustls::server::ServerConnectionData>>::import(&state[..n]).is_err()
            );
        }
    }
}

/// The secrets the key log catches derive exactly the keys rustls hands over, for every suite
/// (the handshake does not check it: see `Carried::of`).
#[test]
fn caught_secrets_derive_the_keys_rustls_derives() {
    for (version, suite) in every_suite() {
        let (_client, server, captured) = handshake(version, Some(suite), true);
        let (secrets, kernel) = server.dangerous_into_kernel_connection().unwrap();
        let c = carried::Carried::of(
            captured.as_deref().unwrap(),
            &secrets,
            kernel.protocol_version(),
            kernel.negotiated_cipher_suite(),
            false,
        )
        .expect("carried");
        assert!(c.agrees(&secrets), "{suite:?}");
        // The other end's view (ringway the client) swaps them: they do not agree.
        let swapped = carried::Carried::of(
            captured.as_deref().unwrap(),
            &secrets,
            kernel.protocol_version(),
            kernel.negotiated_cipher_suite(),
            true,
        )
        .expect("carried");
        let tls13 = matches!(suite, rustls::SupportedCipherSuite::Tls13(_));
        assert_eq!(swapped.agrees(&secrets), !tls13, "{suite:?}");
    }
}
