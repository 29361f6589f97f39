//! Listening sockets that outlive a process: a zero-downtime binary upgrade and systemd socket
//! activation.
//!
//! **Upgrade** (as HAProxy's `-x` and Pingora's graceful upgrade): the running process serves
//! `runtime.upgrade_socket` (a Unix socket). `ringway run --upgrade` connects to it, receives
//! every listening socket of the running process (SCM_RIGHTS), starts its workers on them —
//! the very sockets, so nothing queued in them is lost and no port is ever closed — and says
//! `ready`. The old process then stops accepting without closing the sockets for the new one
//! (its accepts are cancelled, its descriptors closed, no `shutdown`), drains its tunnels
//! (Close frames over `drain_spread`) and exits; the new process takes the upgrade socket over.
//!
//! **Socket activation**: with `LISTEN_PID` = this process and `LISTEN_FDS` = N, descriptors
//! 3..3+N are listening sockets opened by systemd; they are used for the configured addresses
//! they are bound to, and on shutdown they are left open for the next start.

use std::collections::HashMap;
use std::io::{IoSlice, IoSliceMut, Read, Write};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, bail};
use nix::sys::socket::{ControlMessage, ControlMessageOwned, MsgFlags, recvmsg, sendmsg};
use socket2::Socket;

/// Most descriptors handed over in one upgrade (workers × listeners).
pub const HANDOVER_MAX: usize = 4096;
/// How long the old process waits for the new one to say `ready`.
pub const READY_WAIT: Duration = Duration::from_secs(60);

/// Listening sockets a process starts with instead of binding, by address.
#[derive(Default)]
pub struct Inherited {
    by_addr: HashMap<SocketAddr, Vec<Socket>>,
    /// From systemd: leave them open on shutdown (for the next start), never `shutdown` them.
    pub activated: bool,
}

impl Inherited {
    fn add(&mut self, sockets: Vec<Socket>) -> anyhow::Result<()> {
        for s in sockets {
            let addr = s
                .local_addr()
                .ok()
                .and_then(|a| a.as_socket())
                .context("a handed-over descriptor is not a TCP/IP socket")?;
            self.by_addr.entry(addr).or_default().push(s);
        }
        Ok(())
    }

    pub fn is_empty(&self) -> bool {
        self.by_addr.is_empty()
    }

    /// Worker `id`'s share of the sockets for `addr` (of `workers`): every socket goes to some
    /// worker (a socket nobody accepts on would hold the connections the kernel gives it);
    /// when there are fewer sockets than workers, the rest share one (a duplicate descriptor).
    /// Empty when none was handed over for `addr` (the worker binds its own).
    pub fn share(
        &self,
        addr: SocketAddr,
        id: usize,
        workers: usize,
    ) -> anyhow::Result<Vec<Socket>> {
        let Some(all) = self.by_addr.get(&addr) else {
            return Ok(Vec::new());
        };
        let mut mine = Vec::new();
        for (j, s) in all.iter().enumerate() {
            if j % workers == id {
                mine.push(s.try_clone()?);
            }
        }
        if mine.is_empty() {
            mine.push(all[id % all.len()].try_clone()?);
        }
        Ok(mine)
    }

    /// The addresses handed over that the configuration does not listen on.
    pub fn unused(&self, listeners: &[SocketAddr]) -> Vec<SocketAddr> {
        self.by_addr
            .keys()
            .filter(|a| !listeners.contains(a))
            .copied()
            .collect()
    }
}

/// systemd socket activation: the listening sockets in `LISTEN_FDS`, when they are ours.
pub fn from_systemd() -> anyhow::Result<Inherited> {
    let mut out = Inherited::default();
    let pid = std::env::var("LISTEN_PID").ok();
    let fds = std::env::var("LISTEN_FDS").ok();
    let (Some(pid), Some(fds)) = (pid, fds) else {
        return Ok(out);
    };
    if pid.trim().parse::<u32>().ok() != Some(std::process::id()) {
        return Ok(out);
    }
    let n: RawFd = fds
        .trim()
        .parse()
        .ok()
        .filter(|n| (0..HANDOVER_MAX as RawFd).contains(n))
        .context("LISTEN_FDS is not a count of descriptors")?;
    let sockets = (3..3 + n)
        .map(|fd| {
            let s = crate::uring::socket_from_handed(fd);
            nix::fcntl::fcntl(
                &s,
                nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
            )
            .with_context(|| format!("LISTEN_FDS descriptor {fd}"))?;
            Ok(s)
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    out.add(sockets)?;
    out.activated = true;
    Ok(out)
}

/// The new process's side of an upgrade: the listening sockets of the process serving `path`,
/// and the connection to say `ready` on.
pub fn take_over(path: &Path) -> anyhow::Result<(Inherited, Handover)> {
    let mut s = UnixStream::connect(path).with_context(|| {
        format!(
            "connecting to the running ringway's upgrade socket {} (is it running with this \
             runtime.upgrade_socket?)",
            path.display()
        )
    })?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.write_all(b"sockets\n")?;
    let mut fds = Vec::new();
    let mut count = [0u8; 8];
    {
        let mut iov = [IoSliceMut::new(&mut count)];
        let mut space = nix::cmsg_space!([RawFd; HANDOVER_MAX]);
        let msg = recvmsg::<()>(
            s.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::MSG_CMSG_CLOEXEC,
        )
        .context("receiving the listening sockets")?;
        for c in msg.cmsgs()? {
            if let ControlMessageOwned::ScmRights(v) = c {
                fds.extend(v);
            }
        }
    }
    let sockets: Vec<Socket> = fds
        .into_iter()
        .map(crate::uring::socket_from_handed)
        .collect();
    if sockets.len() as u64 != u64::from_le_bytes(count) {
        bail!(
            "the running ringway sent {} of {} listening sockets",
            sockets.len(),
            u64::from_le_bytes(count)
        );
    }
    let mut inherited = Inherited::default();
    inherited.add(sockets)?;
    let pid = nix::sys::socket::getsockopt(&s, nix::sys::socket::sockopt::PeerCredentials)
        .map_or(0, |p| p.pid() as u32);
    Ok((inherited, Handover { conn: s, pid }))
}

/// The new process's connection to the old one, until it says `ready`.
pub struct Handover {
    conn: UnixStream,
    /// The old process (SO_PEERCRED).
    pub pid: u32,
}

impl Handover {
    /// The workers serve: tell the old process, and offer to take its tunnels over
    /// (`handover.rs`); it says it drains, and whether its tunnels come. They are taken in on a
    /// thread of their own, spread over `inboxes`. From here on this process serves whatever
    /// the old one answers (at worst both accept on the sockets).
    pub fn ready(mut self, inboxes: Vec<Arc<crate::live::Inbox>>, tunnels: bool) -> u32 {
        let offer = match tunnels {
            true => format!("ready\ntunnels {}\n", super::handover::version()),
            false => "ready\nno tunnels\n".to_string(),
        };
        let sent = self.conn.write_all(offer.as_bytes());
        let _ = self.conn.set_read_timeout(Some(Duration::from_secs(30)));
        let answer = read_line(&mut self.conn, 128);
        if sent.is_err() || !answer.starts_with("draining ") {
            tracing::warn!(
                "upgrade: pid {} did not confirm it drains (answered {answer:?}); serving anyway",
                self.pid
            );
            return self.pid;
        }
        let pid = self.pid;
        if answer
            .trim_end()
            .ends_with(&format!(" tunnels {}", super::handover::version()))
        {
            let conn = self.conn;
            let spawned = std::thread::Builder::new()
                .name("ringway-takeover".into())
                .spawn(move || match super::handover::receive(conn, &inboxes) {
                    Ok(n) if n.http2 == 0 => {
                        tracing::info!("upgrade: took over {} tunnel(s) from pid {pid}", n.tunnels)
                    }
                    Ok(n) => tracing::info!(
                        "upgrade: took over {} tunnel(s) from pid {pid} ({} HTTP/2 connection(s) with them)",
                        n.tunnels,
                        n.http2
                    ),
                    Err(e) => tracing::error!(
                        "upgrade: taking tunnels over from pid {pid} stopped: {e:#}; those it \
                         still held stay there and get its drain's Close"
                    ),
                });
            if let Err(e) = spawned {
                tracing::error!("upgrade: no thread to take tunnels over: {e}");
            }
        } else {
            tracing::info!("upgrade: pid {pid} keeps its tunnels and drains them");
        }
        pid
    }
}

/// One line from `c` (at most `max` bytes, without its newline; what came if it ends first).
fn read_line(c: &mut UnixStream, max: usize) -> String {
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    while line.len() < max {
        match c.read(&mut b) {
            Ok(1) if b[0] == b'\n' => break,
            Ok(1) => line.push(b[0]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&line).into_owned()
}

/// The old process's side: the sockets it would hand over (one descriptor per worker and
/// listener, kept up to date by reloads), served on `runtime.upgrade_socket`.
pub struct Offer {
    pub sockets: Mutex<Vec<(SocketAddr, Socket)>>,
}

/// Serve `path`: hand the sockets of `offer` to the process that asks, and when it is ready
/// call `hand_over` (stop accepting, drain) and say so. One upgrade at a time; a new process
/// that fails before `ready` changes nothing here.
///
/// A new process that offers to take the tunnels over in a version this one writes
/// (`handover.rs`) gets them: `hand_over` is given where the workers send them, and this
/// thread carries them to the new process (`workers` say when they are through), with
/// `carrying` set meanwhile.
pub fn serve(
    path: &Path,
    offer: Arc<Offer>,
    workers: usize,
    carrying: Arc<std::sync::atomic::AtomicBool>,
    hand_over: impl Fn(Option<std::sync::mpsc::Sender<crate::session::Departure>>) + Send + 'static,
) -> anyhow::Result<()> {
    let l = bind_private(path)
        .with_context(|| format!("runtime.upgrade_socket: listening on {}", path.display()))?;
    std::thread::Builder::new()
        .name("ringway-upgrade".into())
        .spawn(move || {
            for c in l.incoming() {
                let Ok(c) = c else { continue };
                match hand(c, &offer) {
                    Ok(Some((mut c, tunnels))) => {
                        let peer = nix::sys::socket::getsockopt(
                            &c,
                            nix::sys::socket::sockopt::PeerCredentials,
                        )
                        .map_or(0, |p| p.pid());
                        if tunnels {
                            tracing::info!(
                                "upgrade: the new process is ready; handing over: not \
                                 accepting, handing the tunnels to it (those that cannot go \
                                 are drained), then exiting"
                            );
                            let (tx, rx) = std::sync::mpsc::channel();
                            let _ = writeln!(
                                c,
                                "draining {} tunnels {}",
                                std::process::id(),
                                crate::session::HANDOFF_VERSION
                            );
                            carrying.store(true, std::sync::atomic::Ordering::Release);
                            hand_over(Some(tx));
                            super::handover::send(c, rx, workers, peer);
                            carrying.store(false, std::sync::atomic::Ordering::Release);
                            return;
                        }
                        tracing::info!(
                            "upgrade: the new process is ready; handing over: not accepting, \
                             draining the tunnels, then exiting"
                        );
                        // Answer first: once the workers are told, the process may be gone
                        // within a millisecond.
                        let _ = writeln!(c, "draining {}", std::process::id());
                        drop(c);
                        hand_over(None);
                        // The new process listens on the upgrade socket from now on.
                        return;
                    }
                    Ok(None) => {}
                    Err(e) => tracing::warn!("upgrade: {e:#}; still serving"),
                }
            }
        })?;
    Ok(())
}

/// Whether `path` may be taken for the upgrade socket: nothing there, or a socket this user
/// owns (the socket of a previous run, or of the process being upgraded, which has already
/// handed its sockets over). A symbolic link, a regular file (a typo in the configuration), or
/// a socket of another user is refused, never followed, deleted or replaced.
pub fn check_path(path: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let meta = match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => bail!("runtime.upgrade_socket {}: {e}", path.display()),
        Ok(m) => m,
    };
    let t = meta.file_type();
    if t.is_symlink() {
        bail!(
            "runtime.upgrade_socket {} is a symbolic link: refusing to follow or replace it",
            path.display()
        );
    }
    if !t.is_socket() {
        bail!(
            "runtime.upgrade_socket {} exists and is not a socket: refusing to replace it \
             (a typo in the path?)",
            path.display()
        );
    }
    let me = nix::unistd::geteuid().as_raw();
    if meta.uid() != me {
        bail!(
            "runtime.upgrade_socket {} is a socket of uid {}, not this user's ({me}): refusing \
             to replace it",
            path.display(),
            meta.uid()
        );
    }
    Ok(())
}

/// A listening Unix socket at `path` that nobody but this user (and root) can ever connect
/// to: bound inside a fresh 0700 directory beside `path`, set to 0600 there, then renamed into
/// place (the rename replaces a socket left at `path`, and never follows a link).
fn bind_private(path: &Path) -> anyhow::Result<UnixListener> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    check_path(path)?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let private = dir.join(format!(".ringway-upgrade-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&private);
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&private)
        .with_context(|| format!("creating {}", private.display()))?;
    let inner = private.join("s");
    let bound = (|| {
        let l = UnixListener::bind(&inner)?;
        std::fs::set_permissions(&inner, std::fs::Permissions::from_mode(0o600))?;
        check_path(path)?;
        std::fs::rename(&inner, path)?;
        Ok(l)
    })();
    let _ = std::fs::remove_file(&inner);
    let _ = std::fs::remove_dir(&private);
    bound
}

/// One upgrade attempt: send the sockets, wait for `ready`. `Some` when the new process is,
/// with whether it takes the tunnels over in this process's version.
fn hand(mut c: UnixStream, offer: &Offer) -> anyhow::Result<Option<(UnixStream, bool)>> {
    let (peer, uid) =
        match nix::sys::socket::getsockopt(&c, nix::sys::socket::sockopt::PeerCredentials) {
            Ok(p) => (p.pid(), p.uid()),
            Err(e) => bail!("a connection on the upgrade socket without credentials: {e}"),
        };
    tracing::info!("upgrade: a connection on the upgrade socket from pid {peer}, uid {uid}");
    c.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut line = [0u8; 8];
    c.read_exact(&mut line)?;
    if &line != b"sockets\n" {
        bail!("unexpected request on the upgrade socket from pid {peer}, uid {uid}");
    }
    let sockets = offer.sockets.lock().unwrap_or_else(|e| e.into_inner());
    let fds: Vec<RawFd> = sockets.iter().map(|(_, s)| s.as_raw_fd()).collect();
    let count = (fds.len() as u64).to_le_bytes();
    let iov = [IoSlice::new(&count)];
    sendmsg::<()>(
        c.as_raw_fd(),
        &iov,
        &[ControlMessage::ScmRights(&fds)],
        MsgFlags::empty(),
        None,
    )
    .context("sending the listening sockets")?;
    drop(sockets);
    tracing::info!(
        "upgrade: pid {peer} took {} listening socket(s); waiting for it to be ready",
        fds.len()
    );
    c.set_read_timeout(Some(READY_WAIT))?;
    let mut line = [0u8; 6];
    match c.read_exact(&mut line) {
        Ok(()) if &line == b"ready\n" => {
            // A ringway from before tunnels moved says nothing more: a short wait.
            c.set_read_timeout(Some(Duration::from_millis(300)))?;
            let tunnels = super::handover::agreed(&read_line(&mut c, 64));
            c.set_read_timeout(None)?;
            Ok(Some((c, tunnels)))
        }
        _ => bail!("pid {peer} did not become ready"),
    }
}
