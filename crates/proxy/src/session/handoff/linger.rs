//! The lingering close of a session refused at a hand-over: its last words (a Close, a
//! GOAWAY) are in the socket, its write side is shut, and what the peer still sends is read
//! and dropped until the peer ends, falls quiet for `LINGER_MS`, or `LINGER_TIME_MS` has
//! passed; then the socket closes. Closed at once, a socket the peer still writes to answers
//! with a reset, and the peer's TLS library or kernel may then drop the last words unread
//! (nginx's lingering close, as a session's own answers have).
//!
//! Refusals happen on a worker or the hand-over's thread, which must not wait; one thread,
//! started on the first use, holds the lingering sockets (at most `MAX` at once; past that,
//! closed at once as before).

use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::sync::Mutex;
use std::sync::mpsc::{Receiver, Sender, TryRecvError, channel};
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::socket::{MsgFlags, recv};
use socket2::Socket;

use crate::session::{LINGER_MS, LINGER_TIME_MS};

/// Sockets lingering at once; past that a refused socket closes at once, as before. Each
/// holds a descriptor for up to `LINGER_TIME_MS`, and a refusal can come in a burst (a
/// worker at `max_connections` refuses what it is handed): the bound keeps the descriptors
/// the new process needs for its own sessions out of the lingering sockets' reach.
const MAX: usize = 1024;

/// How long the thread waits before it looks for sockets handed to it while others linger.
const TICK: Duration = Duration::from_millis(50);

/// Buffers read from one socket each time it is found readable.
const READS: usize = 64;

static TO: Mutex<Option<Sender<Socket>>> = Mutex::new(None);

/// Shut the write side of `fd` (a refused session's socket, handed to this process and
/// given up here) after what was sent, and close it after a lingering close, without
/// waiting here.
pub fn linger(fd: RawFd) {
    let fd = crate::uring::socket_from_handed(fd);
    let _ = fd.shutdown(std::net::Shutdown::Write);
    let mut to = TO.lock().unwrap_or_else(|e| e.into_inner());
    let sender = to.get_or_insert_with(|| {
        let (tx, rx) = channel();
        let spawned = std::thread::Builder::new()
            .name("ringway-linger".into())
            .spawn(move || run(rx));
        if let Err(e) = spawned {
            tracing::warn!("a refused socket closes at once: no thread to linger on ({e})");
        }
        tx
    });
    // A failed send hands the socket back inside the error, which closes it here.
    if sender.send(fd).is_err() {
        *to = None;
    }
}

/// One socket lingering: when it began, when its peer last sent something.
struct Held {
    fd: Socket,
    began: Instant,
    last: Instant,
}

impl Held {
    fn end(&self) -> Instant {
        (self.began.max(self.last) + Duration::from_millis(LINGER_MS))
            .min(self.began + Duration::from_millis(LINGER_TIME_MS))
    }
}

fn run(rx: Receiver<Socket>) {
    let mut held: Vec<Held> = Vec::new();
    let mut sink = vec![0u8; 16 * 1024];
    loop {
        // Sockets handed over since the last look; with none lingering, wait for one.
        loop {
            let next = if held.is_empty() {
                rx.recv().map_err(|_| TryRecvError::Disconnected)
            } else {
                rx.try_recv()
            };
            match next {
                Ok(fd) if held.len() < MAX => {
                    let now = Instant::now();
                    held.push(Held {
                        fd,
                        began: now,
                        last: now,
                    });
                }
                Ok(fd) => drop(fd),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) if held.is_empty() => return,
                Err(TryRecvError::Disconnected) => break,
            }
        }
        let now = Instant::now();
        let soonest = held.iter().map(Held::end).min().unwrap_or(now);
        let wait = soonest.saturating_duration_since(now).min(TICK);
        let mut fds: Vec<PollFd> = held
            .iter()
            .map(|h| PollFd::new(h.fd.as_fd(), PollFlags::POLLIN))
            .collect();
        // An error (EINTR) leaves every `revents` empty: nothing is read this time round.
        let _ = poll(
            &mut fds,
            PollTimeout::try_from(wait.as_millis() as i32).unwrap_or(PollTimeout::ZERO),
        );
        let readable: Vec<bool> = fds
            .iter()
            .map(|p| p.revents().is_some_and(|r| !r.is_empty()))
            .collect();
        drop(fds);
        let now = Instant::now();
        let mut readable = readable.into_iter();
        held.retain_mut(|h| {
            if readable.next() == Some(true) {
                // Read what is there, at most `READS` buffers a wake: a peer that sends as fast
                // as it is read cannot keep the thread on its socket past its own time, or
                // from the others. Its end (or an error) ends the linger.
                for _ in 0..READS {
                    match recv(h.fd.as_raw_fd(), &mut sink, MsgFlags::MSG_DONTWAIT) {
                        Ok(0) => return false,
                        Ok(_) => h.last = now,
                        Err(nix::errno::Errno::EAGAIN) => break,
                        Err(nix::errno::Errno::EINTR) => {}
                        Err(_) => return false,
                    }
                }
            }
            h.end() > now
        });
    }
}
