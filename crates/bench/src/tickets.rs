//! The load generator's TLS session store. rustls's in-memory store keeps at most eight TLS 1.3
//! tickets per server; each is used once, so with more handshakes than that in flight the rest
//! found none and made a full handshake (46 % resumed at 50 in flight against ringway, while a
//! client that keeps a ticket per connection resumes nearly all). This store keeps as many
//! tickets as twice the connections in flight, oldest given out first; everything else is as
//! rustls's store does it (the latest TLS 1.2 session and key-exchange group per server).

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use rustls::NamedGroup;
use rustls::client::{ClientSessionStore, Tls12ClientSessionValue, Tls13ClientSessionValue};
use rustls::pki_types::ServerName;

/// Session state kept for resumption, per server name.
#[derive(Debug)]
pub struct Tickets {
    /// TLS 1.3 tickets kept per server.
    per_server: usize,
    servers: Mutex<HashMap<ServerName<'static>, Server>>,
}

#[derive(Debug, Default)]
struct Server {
    kx_hint: Option<NamedGroup>,
    tls12: Option<Tls12ClientSessionValue>,
    tls13: VecDeque<Tls13ClientSessionValue>,
}

impl Tickets {
    /// A store for `in_flight` handshakes at once.
    pub fn new(in_flight: usize) -> Tickets {
        Tickets {
            per_server: in_flight.saturating_mul(2).max(8),
            servers: Mutex::new(HashMap::new()),
        }
    }

    fn with<R>(&self, name: &ServerName<'_>, f: impl FnOnce(&mut Server) -> R) -> R {
        let mut servers = self.servers.lock().unwrap_or_else(|e| e.into_inner());
        let server = servers.entry(name.to_owned()).or_default();
        f(server)
    }
}

impl ClientSessionStore for Tickets {
    fn set_kx_hint(&self, server_name: ServerName<'static>, group: NamedGroup) {
        self.with(&server_name, |s| s.kx_hint = Some(group));
    }

    fn kx_hint(&self, server_name: &ServerName<'_>) -> Option<NamedGroup> {
        self.with(server_name, |s| s.kx_hint)
    }

    fn set_tls12_session(&self, server_name: ServerName<'static>, value: Tls12ClientSessionValue) {
        self.with(&server_name, |s| s.tls12 = Some(value));
    }

    fn tls12_session(&self, server_name: &ServerName<'_>) -> Option<Tls12ClientSessionValue> {
        self.with(server_name, |s| s.tls12.clone())
    }

    fn remove_tls12_session(&self, server_name: &ServerName<'static>) {
        self.with(server_name, |s| s.tls12 = None);
    }

    fn insert_tls13_ticket(
        &self,
        server_name: ServerName<'static>,
        value: Tls13ClientSessionValue,
    ) {
        let cap = self.per_server;
        self.with(&server_name, |s| {
            if s.tls13.len() >= cap {
                s.tls13.pop_front();
            }
            s.tls13.push_back(value);
        });
    }

    fn take_tls13_ticket(
        &self,
        server_name: &ServerName<'static>,
    ) -> Option<Tls13ClientSessionValue> {
        self.with(server_name, |s| s.tls13.pop_front())
    }
}
