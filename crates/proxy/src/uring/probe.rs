//! Whether io_uring can be used here, asked once at start.

use super::*;

/// Why io_uring cannot be used here, in one line, or `Ok` with the setup mode.
///
/// The probe rings live on a short-lived thread of their own. A thread that has used a ring
/// keeps io_uring task state; when the ring is torn down (asynchronously, after close) the
/// kernel's exit work sends that thread task work with TWA_SIGNAL, and a blocking socket call
/// with a timeout (SO_RCVTIMEO) in progress on it then fails with EINTR. Measured: a thread
/// that probed, then sat in timed reads, saw ~1 EINTR per probe. A thread that exits drops its
/// task state, so the caller's thread stays clean.
pub fn probe() -> Result<TaskrunMode, String> {
    std::thread::scope(|s| {
        s.spawn(probe_here)
            .join()
            .unwrap_or_else(|_| Err("the io_uring probe thread panicked".into()))
    })
}

fn probe_here() -> Result<TaskrunMode, String> {
    if let Ok(v) = std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled") {
        match v.trim() {
            "2" => {
                return Err("io_uring is disabled: kernel.io_uring_disabled = 2; \
                            set it to 0 (sysctl -w kernel.io_uring_disabled=0)"
                    .into());
            }
            "1" => {
                // Allowed only for a group; setup below tells whether we are in it.
            }
            _ => {}
        }
    }
    let ring = match IoUring::new(8) {
        Ok(r) => r,
        Err(e) => {
            let why = match e.raw_os_error() {
                Some(libc::ENOSYS) => {
                    "the kernel has no io_uring (ENOSYS): needs Linux 6.1 or later"
                }
                Some(libc::EPERM) => {
                    "io_uring_setup is not permitted (EPERM): kernel.io_uring_disabled = 1 \
                     without the io_uring_group, or a seccomp profile (container runtime) \
                     blocks it; allow io_uring_setup/io_uring_enter/io_uring_register"
                }
                _ => "io_uring_setup failed",
            };
            return Err(format!("{why} ({e})"));
        }
    };
    let mut probe = io_uring::Probe::new();
    if let Err(e) = ring.submitter().register_probe(&mut probe) {
        return Err(format!(
            "io_uring opcode probe failed ({e}): needs Linux 6.1 or later"
        ));
    }
    let missing: Vec<&str> = OPCODES_USED
        .iter()
        .filter(|(c, _)| !probe.is_supported(*c))
        .map(|(_, n)| *n)
        .collect();
    if !missing.is_empty() {
        return Err(format!(
            "the kernel's io_uring lacks opcodes {}: needs Linux 6.1 or later",
            missing.join(", ")
        ));
    }
    drop(ring);
    let r = Ring::new(RingConfig {
        sq_entries: 8,
        buffers: 8,
        buf_size: 4096,
    })
    .map_err(|e| format!("io_uring buffer ring registration failed ({e}): needs Linux 5.19+"))?;
    Ok(r.mode())
}
