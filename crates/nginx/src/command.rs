//! `ringway import-nginx`: translate, write the result without following links, then check it
//! as `ringway check` would.

use std::path::Path;
use std::process::ExitCode;

use ringway_proxy::config::Config;

/// `ringway import-nginx`: translate, write, then check the result as `ringway check` would.
/// Exit 0 when it checks, 1 on an nginx syntax error or a result that does not check (it is
/// still written, with the reason on stderr).
pub fn command(file: &Path, output: Option<&Path>, force: bool) -> ExitCode {
    let imported = match crate::import(file) {
        Ok(i) => i,
        Err(e) => {
            eprintln!("ringway import-nginx: {e}");
            return ExitCode::from(1);
        }
    };
    for w in &imported.warnings {
        eprintln!("warning: {w}");
    }
    let name = match output {
        Some(out) => {
            match write_new(out, imported.toml.as_bytes(), force) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    eprintln!(
                        "ringway import-nginx: {} exists: choose another --output or add --force",
                        out.display()
                    );
                    return ExitCode::from(1);
                }
                Err(e) => {
                    eprintln!("ringway import-nginx: {}: {e}", out.display());
                    return ExitCode::from(1);
                }
            }
            out.display().to_string()
        }
        None => {
            print!("{}", imported.toml);
            "<stdout>".to_string()
        }
    };
    let checked = match output {
        Some(out) => Config::load(out),
        None => Config::parse(&name, &imported.toml),
    };
    match checked {
        Ok(_) => {
            eprintln!(
                "{name}: configuration OK ({} warning(s) above); `ringway check --config` prints what it understood",
                imported.warnings.len()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("ringway import-nginx: the result does not check: {e}");
            ExitCode::from(1)
        }
    }
}

/// Write `bytes` to `path` as a new regular file: into a temporary file beside it (created
/// exclusively, never through a link), then renamed into place. A symbolic link at `path` is
/// replaced, never followed (its target is left alone, and a dangling link's target is not
/// created); without `replace`, anything at `path` — a dangling link included — stays and the
/// error is `AlreadyExists`, checked by the rename itself (`RENAME_NOREPLACE`), not before it.
pub fn write_new(path: &Path, bytes: &[u8], replace: bool) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let name = path
        .file_name()
        .ok_or_else(|| std::io::Error::other("not a file name"))?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let written = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .custom_flags(libc::O_NOFOLLOW)
            .mode(0o644)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        let flags = if replace {
            nix::fcntl::RenameFlags::empty()
        } else {
            nix::fcntl::RenameFlags::RENAME_NOREPLACE
        };
        nix::fcntl::renameat2(
            nix::fcntl::AT_FDCWD,
            &tmp,
            nix::fcntl::AT_FDCWD,
            path,
            flags,
        )
        .map_err(std::io::Error::from)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}
