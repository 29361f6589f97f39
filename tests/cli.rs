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
