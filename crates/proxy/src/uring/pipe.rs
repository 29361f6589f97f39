//! Pipes for splicing a bulk payload socket → pipe → socket: the kernel moves the payload's
//! pages from one socket to the other without copying them through user space. A worker keeps
//! the empty pipes a tunnel gave back for the next splice; a pipe that still holds bytes when
//! its tunnel ends is closed with it. The pipes a process has open at once are bounded
//! ([`PIPES_MAX`], two descriptors each): past it, a tunnel forwards through buffers as usual.

use std::os::fd::RawFd;
use std::sync::atomic::{AtomicU32, Ordering};

/// Pipes open at once in a process. Each is two descriptors (kept aside in
/// `tuning::FDS_RESERVED`, so sessions never lack one for a pipe) and pins at most its
/// capacity (64 KiB by default) of socket pages while a direction splices through it.
pub const PIPES_MAX: u32 = 64;

/// Empty pipes a worker keeps for the next splice.
const KEPT_MAX: usize = 16;

/// Pipes open in this process (made and not yet closed).
static LIVE: AtomicU32 = AtomicU32::new(0);

/// A pipe: its read and write ends, non-blocking, closed when it is dropped.
#[derive(Debug)]
pub struct Pipe {
    r: RawFd,
    w: RawFd,
}

impl Pipe {
    /// A new non-blocking pipe, unless [`PIPES_MAX`] are open or none can be made (out of
    /// descriptors: the tunnel forwards through buffers instead).
    fn new() -> Option<Pipe> {
        // A plain load first: while every pipe is taken, each bulk chunk of every tunnel asks
        // again, and that must not be a read-modify-write shared across the workers' cores.
        if LIVE.load(Ordering::Relaxed) >= PIPES_MAX {
            return None;
        }
        if LIVE.fetch_add(1, Ordering::Relaxed) >= PIPES_MAX {
            LIVE.fetch_sub(1, Ordering::Relaxed);
            return None;
        }
        use nix::fcntl::OFlag;
        match nix::unistd::pipe2(OFlag::O_NONBLOCK | OFlag::O_CLOEXEC) {
            Ok((r, w)) => {
                use std::os::fd::IntoRawFd;
                Some(Pipe {
                    r: r.into_raw_fd(),
                    w: w.into_raw_fd(),
                })
            }
            Err(e) => {
                LIVE.fetch_sub(1, Ordering::Relaxed);
                tracing::debug!("pipe2: {e}: forwarding through buffers");
                None
            }
        }
    }

    /// A pipe whose ends are numbers of the session simulation's own (nothing is closed).
    #[cfg(test)]
    pub fn detached(r: RawFd, w: RawFd) -> Pipe {
        debug_assert!(r < 0 && w < 0, "simulated pipes have negative numbers");
        Pipe { r, w }
    }

    /// The end bytes are read from.
    pub fn read_end(&self) -> RawFd {
        self.r
    }

    /// The end bytes are written to.
    pub fn write_end(&self) -> RawFd {
        self.w
    }
}

impl Drop for Pipe {
    fn drop(&mut self) {
        if self.r < 0 {
            return;
        }
        // Nothing is in flight on a pipe: splice(2) runs inline, never through the ring.
        let _ = nix::unistd::close(self.r);
        let _ = nix::unistd::close(self.w);
        LIVE.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A worker's empty pipes, kept for the next splice.
#[derive(Debug, Default)]
pub struct Pipes {
    kept: Vec<Pipe>,
}

impl Pipes {
    /// A pipe to splice through: a kept one, or a new one.
    pub fn take(&mut self) -> Option<Pipe> {
        self.kept.pop().or_else(Pipe::new)
    }

    /// An empty pipe back (kept, or closed past [`KEPT_MAX`]).
    pub fn give_back(&mut self, p: Pipe) {
        if self.kept.len() < KEPT_MAX {
            self.kept.push(p);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pipes_are_kept_for_reuse_and_bounded() {
        let mut pipes = Pipes::default();
        let a = pipes.take().expect("a pipe");
        let (r, w) = (a.read_end(), a.write_end());
        assert!(r >= 0 && w >= 0 && r != w);
        pipes.give_back(a);
        let b = pipes.take().expect("the kept pipe");
        assert_eq!(
            (b.read_end(), b.write_end()),
            (r, w),
            "reused, not made anew"
        );
    }
}
