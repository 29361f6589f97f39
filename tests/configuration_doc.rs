//! `docs/configuration.md` lists every key of the configuration schema
//! (`crates/proxy/src/config/raw.rs`, the structs serde reads the file into), as `section.key`
//! paths, and no key the schema lacks.

use std::collections::{BTreeSet, HashMap};

const RAW: &str = include_str!("../crates/proxy/src/config/raw.rs");
const DOC: &str = include_str!("../docs/configuration.md");

/// Struct name → its fields (serde name, type text), from the schema's source.
fn structs() -> HashMap<String, Vec<(String, String)>> {
    let mut out: HashMap<String, Vec<(String, String)>> = HashMap::new();
    let mut current: Option<String> = None;
    let mut rename: Option<String> = None;
    for line in RAW.lines() {
        let t = line.trim();
        if let Some(rest) = t.strip_prefix("pub struct ") {
            let name = rest.split([' ', '{']).next().unwrap().to_string();
            out.insert(name.clone(), Vec::new());
            current = Some(name);
        } else if t == "}" {
            current = None;
        } else if let Some(r) = t.strip_prefix("#[serde(rename = \"") {
            rename = Some(r.split('"').next().unwrap().to_string());
        } else if let (Some(s), Some(rest)) = (&current, t.strip_prefix("pub ")) {
            let (field, ty) = rest.split_once(':').unwrap();
            let name = rename.take().unwrap_or_else(|| field.trim().to_string());
            out.get_mut(s)
                .unwrap()
                .push((name, ty.trim().trim_end_matches(',').to_string()));
        }
    }
    out
}

/// Every key path: `runtime.workers`, `server.location.heartbeat.interval`, …
fn keys() -> BTreeSet<String> {
    fn walk(
        s: &str,
        prefix: &str,
        all: &HashMap<String, Vec<(String, String)>>,
        out: &mut BTreeSet<String>,
    ) {
        for (name, ty) in &all[s] {
            let path = if prefix.is_empty() {
                name.clone()
            } else {
                format!("{prefix}.{name}")
            };
            // The type names a schema struct: a table (or array of tables) with keys of its own.
            let words: Vec<&str> = ty
                .split(|c: char| !c.is_alphanumeric() && c != '_')
                .collect();
            let inner = all.keys().find(|k| words.contains(&k.as_str()));
            if !prefix.is_empty() || inner.is_none() {
                out.insert(path.clone());
            }
            if let Some(k) = inner {
                walk(k, &path, all, out);
            }
        }
    }
    let all = structs();
    let mut out = BTreeSet::new();
    walk("File", "", &all, &mut out);
    out
}

#[test]
fn the_configuration_reference_lists_every_key_of_the_schema() {
    let keys = keys();
    // The walk itself: keys from every level are there.
    for k in [
        "runtime.workers",
        "runtime.drain_close.code",
        "upstream.servers.addr",
        "upstream.health_check.type",
        "server.location.heartbeat.upstream_interval",
        "limit_req_zone.rate",
        "tuning.apply",
        "admin.listen",
    ] {
        assert!(
            keys.contains(k),
            "{k} not found in the schema walk: {keys:#?}"
        );
    }
    assert!(keys.len() > 90, "{}", keys.len());
    let missing: Vec<&String> = keys
        .iter()
        .filter(|k| !DOC.contains(&format!("| `{k}` |")))
        .collect();
    assert!(
        missing.is_empty(),
        "docs/configuration.md lacks these keys: {missing:#?}"
    );
    // And documents no key the schema does not have.
    let documented: Vec<&str> = DOC
        .lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split('`').next())
        .filter(|k| k.contains('.'))
        .collect();
    let unknown: Vec<&&str> = documented.iter().filter(|k| !keys.contains(**k)).collect();
    assert!(
        unknown.is_empty(),
        "documented but not in the schema: {unknown:#?}"
    );
}
