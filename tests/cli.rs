//! The command line: every subcommand's `--help` ends with an example of its use.

mod common;

use common::ringway;

#[test]
fn every_subcommand_help_has_an_example() {
    let (code, top) = ringway(&["--help"]);
    assert_eq!(code, Some(0), "{top}");
    // The subcommands as clap lists them ("Commands:" up to "Options:").
    let list = &top[top.find("Commands:").unwrap()..top.find("Options:").unwrap()];
    let subs: Vec<&str> = list
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next())
        .filter(|s| *s != "help")
        .collect();
    assert!(subs.len() >= 8, "{subs:?}");
    for sub in subs {
        let (code, help) = ringway(&[sub, "--help"]);
        assert_eq!(code, Some(0), "{sub}: {help}");
        assert!(
            help.contains("Example") && help.contains(&format!("\n  ringway {sub} ")),
            "ringway {sub} --help has no example line:\n{help}"
        );
    }
}

/// A FIFO (or any file that is not a regular file) named as the configuration, or as a
/// certificate in it, is refused at once: `open` never blocks waiting for a writer.
#[test]
fn a_fifo_is_refused_without_blocking() {
    let dir = common::scratch("fifo");
    let fifo = dir.join("ringway.toml");
    nix::unistd::mkfifo(
        &fifo,
        nix::sys::stat::Mode::S_IRUSR | nix::sys::stat::Mode::S_IWUSR,
    )
    .unwrap();
    let f = fifo.to_str().unwrap();
    for args in [
        vec!["check", "--config", f],
        vec!["reload", "--config", f],
        vec!["run", "--config", f],
    ] {
        let (code, out) = ringway(&args);
        assert_eq!(code, Some(1), "{args:?}: {out}");
        assert!(
            out.contains("not a regular file (a FIFO)"),
            "{args:?}: {out}"
        );
    }
    // A certificate path that is a FIFO.
    let pem = dir.join("cert.pem");
    nix::unistd::mkfifo(
        &pem,
        nix::sys::stat::Mode::S_IRUSR | nix::sys::stat::Mode::S_IWUSR,
    )
    .unwrap();
    let cfg = dir.join("tls.toml");
    std::fs::write(
        &cfg,
        format!(
            "[[upstream]]\nname = \"b\"\nservers = [{{ addr = \"127.0.0.1:1\" }}]\n\n[[server]]\nlisten = [\"127.0.0.1:1\"]\ntls = {{ cert = \"{0}\", key = \"{0}\" }}\n\n[[server.location]]\npath = \"/\"\nupstream = \"b\"\n",
            pem.display()
        ),
    )
    .unwrap();
    let (code, out) = ringway(&["check", "--config", cfg.to_str().unwrap()]);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("server[0].tls.cert") && out.contains("not a regular file (a FIFO)"),
        "{out}"
    );
}
