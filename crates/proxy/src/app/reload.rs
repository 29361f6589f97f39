//! A configuration reload (SIGHUP, `ringway reload`): the file is read and resolved on the main
//! process's threads; when it is invalid the error (file:line:col: field) is reported and the
//! configuration in force stays. When it is valid, sockets for new listen addresses are opened
//! (one per worker, SO_REUSEPORT) before anything changes, the shared state of what stays is
//! carried over, the new configuration is put in force and every worker told: new sessions use
//! it, sessions already established keep the one they started under.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use crate::config::Config;
use crate::live::{Inbox, Live, Msg, ReloadError};

pub struct Reloader {
    path: PathBuf,
    live: Arc<Live>,
    inboxes: Vec<Arc<Inbox>>,
    backlog: i32,
    /// The listening sockets a binary upgrade would hand over: kept up to date.
    offer: Arc<super::upgrade::Offer>,
    /// One reload at a time (a signal and `ringway reload` may come together).
    lock: Mutex<()>,
}

impl Reloader {
    pub fn new(
        path: PathBuf,
        live: Arc<Live>,
        inboxes: Vec<Arc<Inbox>>,
        backlog: i32,
        offer: Arc<super::upgrade::Offer>,
    ) -> Self {
        Reloader {
            path,
            live,
            inboxes,
            backlog,
            offer,
            lock: Mutex::new(()),
        }
    }

    /// Reload; a one-line summary (and warnings) when the new configuration is in force, the
    /// reason when the old one stays.
    pub fn reload(&self) -> Result<String, ReloadError> {
        let _one_at_a_time = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        let old = self.live.config();
        let mut new = Config::load(&self.path)?;
        let added: Vec<SocketAddr> = new
            .listeners
            .iter()
            .filter(|a| !old.listeners.contains(a))
            .copied()
            .collect();
        let removed = old
            .listeners
            .iter()
            .filter(|a| !new.listeners.contains(a))
            .count();
        // Every socket is opened before anything changes: a port in use fails the reload.
        let mut sockets: Vec<Vec<_>> = Vec::new();
        for _ in &self.inboxes {
            let mut mine = Vec::new();
            for a in &added {
                let s = crate::sys::listen_socket(*a, self.backlog)
                    .map_err(|source| ReloadError::Listen { addr: *a, source })?;
                mine.push((*a, s));
            }
            sockets.push(mine);
        }
        {
            let mut held = self.offer.sockets.lock().unwrap_or_else(|e| e.into_inner());
            held.retain(|(a, _)| new.listeners.contains(a));
            for (a, s) in sockets.iter().flatten() {
                let kept = s
                    .try_clone()
                    .map_err(|source| ReloadError::Keep { addr: *a, source })?;
                held.push((*a, kept));
            }
        }
        new.carry_from(&old);
        let mut warnings = new.restart_only(&old);
        warnings.append(&mut new.warnings);
        let summary = format!(
            "{}: configuration reloaded: {} listener(s) (+{} -{removed}), {} server(s), {} upstream(s)",
            self.path.display(),
            new.listeners.len(),
            added.len(),
            new.servers.len(),
            new.upstreams.len()
        );
        self.live.swap(Arc::new(new));
        for (inbox, mine) in self.inboxes.iter().zip(sockets) {
            inbox.give_sockets(mine);
            inbox.send(Msg::Config);
        }
        Ok(std::iter::once(summary)
            .chain(warnings.into_iter().map(|w| format!("warning: {w}")))
            .collect::<Vec<_>>()
            .join("\n"))
    }
}
