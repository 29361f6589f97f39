//! For the HTTP/2 tests: the real peers they need (curl, nghttp2's tools, Python's h2) and
//! the scripts of `tests/h2/`.

use std::process::Command;

use super::skip;

/// A server block's line that turns HTTP/2 on.
pub const H2_SERVER: &str = "http2 = true";

/// Whether `cmd` runs here; a test that needs it says so when it does not.
pub fn have(cmd: &str, args: &[&str]) -> bool {
    let ok = Command::new(cmd)
        .args(args)
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        skip(&format!(
            "{cmd} is missing (scripts/test.sh installs nghttp2-client and curl as root, and h2 from PyPI)"
        ));
    }
    ok
}

/// Whether Python's h2 (with hpack and hyperframe) is importable.
pub fn python_h2() -> bool {
    let ok = Command::new("python3")
        .args(["-c", "import h2, hpack, hyperframe"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        skip("Python's h2 is missing (scripts/test.sh installs it from PyPI)");
    }
    ok
}

/// The path of a script of tests/h2.
pub fn script(name: &str) -> String {
    format!("{}/tests/h2/{name}", env!("CARGO_MANIFEST_DIR"))
}

/// Runs a script of tests/h2 and parses the JSON line it prints.
pub fn run_py(name: &str, args: &[String]) -> serde_json::Value {
    let out = Command::new("timeout")
        .arg("60")
        .arg("python3")
        .arg(script(name))
        .args(args)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    serde_json::from_str(text.trim()).unwrap_or_else(|e| {
        panic!(
            "{name} {args:?}: {e}\nstdout: {text}\nstderr: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

pub fn curl(args: &[&str]) -> (String, String) {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "20"])
        .args(args)
        .output()
        .unwrap();
    (
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}
