//! `ringway preflight` for real on this machine, and the tuning and deploy files.

mod common;

use std::process::Command;

use common::BIN;

fn proc_sys(key: &str) -> String {
    std::fs::read_to_string(format!("/proc/sys/{key}"))
        .unwrap()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

#[test]
fn json_matches_proc_and_exit_code_matches_status() {
    let out = Command::new(BIN)
        .args(["preflight", "--json", "--connections", "1000"])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)));
    assert_eq!(v["connections"], 1000);
    assert!(v["file_descriptors"].as_u64().unwrap() >= 2000);
    let status = v["status"].as_str().unwrap();
    assert!(["ok", "warn", "fail"].contains(&status));
    assert_eq!(
        out.status.code(),
        Some(if status == "fail" { 1 } else { 0 })
    );
    let findings = v["findings"].as_array().unwrap();
    let get = |s: &str| {
        findings
            .iter()
            .find(|f| f["setting"] == s)
            .unwrap_or_else(|| panic!("no {s}"))
    };
    for f in findings {
        for k in ["setting", "current", "needed", "status", "why"] {
            assert!(f[k].is_string(), "{k} missing in {f}");
        }
    }
    for (setting, key) in [
        ("fs.nr_open", "fs/nr_open"),
        ("fs.file-max", "fs/file-max"),
        ("net.core.somaxconn", "net/core/somaxconn"),
        (
            "net.ipv4.tcp_max_syn_backlog",
            "net/ipv4/tcp_max_syn_backlog",
        ),
        ("net.core.netdev_max_backlog", "net/core/netdev_max_backlog"),
        ("net.ipv4.tcp_tw_reuse", "net/ipv4/tcp_tw_reuse"),
        ("net.ipv4.tcp_fin_timeout", "net/ipv4/tcp_fin_timeout"),
        ("net.ipv4.tcp_migrate_req", "net/ipv4/tcp_migrate_req"),
        (
            "net.ipv4.ip_local_port_range",
            "net/ipv4/ip_local_port_range",
        ),
    ] {
        assert_eq!(
            get(setting)["current"].as_str().unwrap(),
            proc_sys(key),
            "{setting}"
        );
    }
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap();
    let l: Vec<&str> = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap()["Max open files".len()..]
        .split_whitespace()
        .collect();
    // The child raised nothing before reading: it sees the limits it inherited from us.
    assert_eq!(
        get("RLIMIT_NOFILE (soft/hard)")["current"]
            .as_str()
            .unwrap(),
        format!("{}/{}", l[0], l[1])
    );
    let uring = get("io_uring")["status"].as_str().unwrap();
    assert_eq!(uring == "ok", ringway_proxy::uring::probe().is_ok());
}

#[test]
fn failing_fake_host_exits_1_and_apply_without_root_only_says_so() {
    let d = std::env::temp_dir().join(format!("ringway-pf-{}", std::process::id()));
    let w = |rel: &str, v: &str| {
        let p = d.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, v).unwrap();
    };
    w(
        "proc/self/limits",
        "Max open files            1024                 4096                 files     \n",
    );
    w(
        "proc/self/status",
        "Uid:\t1000\t1000\t1000\t1000\nCapEff:\t0000000000000000\n",
    );
    w("proc/sys/net/core/somaxconn", "128\n");
    w("proc/sys/fs/nr_open", "1048576\n");
    let out = Command::new(BIN)
        .args([
            "preflight",
            "-n",
            "100000",
            "--apply",
            "--root",
            d.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("FAIL") && text.contains("RLIMIT_NOFILE"),
        "{text}"
    );
    assert!(
        text.contains("not applied net.core.somaxconn: 128 -> 65535 (not root: would write this)"),
        "{text}"
    );
    assert_eq!(
        std::fs::read_to_string(d.join("proc/sys/net/core/somaxconn")).unwrap(),
        "128\n"
    );
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn deploy_and_tuning_files_are_valid() {
    let root = env!("CARGO_MANIFEST_DIR");
    // Kubernetes: every document parses; the Deployment has what operators rely on.
    let text = std::fs::read_to_string(format!("{root}/deploy/kubernetes.yaml")).unwrap();
    let docs: Vec<serde_yaml::Value> = serde_yaml::Deserializer::from_str(&text)
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .collect();
    let kinds: Vec<&str> = docs.iter().map(|d| d["kind"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        [
            "ConfigMap",
            "Deployment",
            "Service",
            "PodDisruptionBudget",
            "NetworkPolicy",
            "PodMonitor"
        ]
    );
    // The embedded configuration checks (with a token where the Secret would put it), and the
    // pod's grace covers preStop + shutdown_grace.
    let toml = docs[0]["data"]["ringway.toml"].as_str().unwrap();
    let dir = std::env::temp_dir().join(format!("ringway-k8s-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let token = dir.join("token");
    std::fs::write(&token, "0123456789abcdef0123456789abcdef\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o400)).unwrap();
    const TOKEN_PATH: &str = "/etc/ringway-admin/token";
    assert!(toml.contains(TOKEN_PATH));
    std::fs::write(
        dir.join("ringway.toml"),
        toml.replace(TOKEN_PATH, token.to_str().unwrap()),
    )
    .unwrap();
    let cfg = ringway_proxy::config::Config::load(&dir.join("ringway.toml"))
        .expect("the ConfigMap's ringway.toml");
    let _ = std::fs::remove_dir_all(&dir);
    // The admin endpoint listens for probes and Prometheus, and a token guards it.
    let admin = cfg
        .admin
        .as_ref()
        .expect("an admin endpoint for the probes");
    assert!(admin.token.is_some(), "a token guards the admin port");
    assert!(cfg.warnings.is_empty(), "{:?}", cfg.warnings);
    let docs = &docs[1..];
    check_admin_exposure(docs, admin.listen.port(), TOKEN_PATH);
    let spec = &docs[0]["spec"]["template"]["spec"];
    let grace = spec["terminationGracePeriodSeconds"].as_u64().unwrap();
    let pre_stop: u64 = spec["containers"][0]["lifecycle"]["preStop"]["exec"]["command"][1]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(cfg.runtime.drain_spread < cfg.runtime.shutdown_grace);
    assert!(
        pre_stop + cfg.runtime.shutdown_grace.as_secs() < grace,
        "terminationGracePeriodSeconds covers preStop and shutdown_grace"
    );
    assert_eq!(
        docs[2]["spec"]["selector"]["matchLabels"]["app"].as_str(),
        Some("ringway")
    );
    let sysctls: Vec<&str> = spec["securityContext"]["sysctls"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert!(sysctls.contains(&"net.core.somaxconn"));
    let c = &spec["containers"][0];
    assert_eq!(
        c["readinessProbe"]["httpGet"]["path"].as_str(),
        Some("/healthz")
    );
    let admin_port = c["readinessProbe"]["httpGet"]["port"].as_str().unwrap();
    assert!(
        c["ports"]
            .as_sequence()
            .unwrap()
            .iter()
            .any(|p| p["name"].as_str() == Some(admin_port))
    );
    assert_eq!(
        docs[0]["spec"]["selector"]["matchLabels"],
        docs[0]["spec"]["template"]["metadata"]["labels"]
    );
    assert_eq!(docs[1]["spec"]["selector"]["app"].as_str(), Some("ringway"));
    // sysctl.d: every key exists on this kernel and every value has the right shape.
    for line in std::fs::read_to_string(format!("{root}/tuning/99-ringway.conf"))
        .unwrap()
        .lines()
    {
        let l = line.trim();
        if l.is_empty() || l.starts_with('#') {
            continue;
        }
        let (k, v) = l.split_once('=').unwrap();
        // A leading '-' tells sysctl to skip a key the kernel lacks (module not loaded).
        let optional = k.trim().starts_with('-');
        let path = format!(
            "/proc/sys/{}",
            k.trim().trim_start_matches('-').replace('.', "/")
        );
        assert!(
            optional || std::path::Path::new(&path).exists(),
            "{k} is not a sysctl here"
        );
        assert!(
            v.split_whitespace().all(|x| x.parse::<u64>().is_ok()),
            "{l}"
        );
    }
    // systemd: stop timeout above the default shutdown grace, SIGTERM, preflight before start.
    let unit = std::fs::read_to_string(format!("{root}/tuning/ringway.service")).unwrap();
    let val = |k: &str| {
        unit.lines()
            .find(|l| l.starts_with(&format!("{k}=")))
            .map(|l| l[k.len() + 1..].to_string())
            .unwrap_or_default()
    };
    let stop = ringway_proxy::config::parse_duration(&val("TimeoutStopSec")).unwrap();
    assert!(stop > ringway_proxy::config::defaults::SHUTDOWN_GRACE);
    assert_eq!(val("KillSignal"), "SIGTERM");
    assert!(val("LimitNOFILE").parse::<u64>().unwrap() >= 200_000);
    assert!(unit.contains("ExecStartPre=/usr/local/bin/ringway preflight"));
    assert_eq!(
        val("ExecReload"),
        "/usr/local/bin/ringway reload --config /etc/ringway/ringway.toml"
    );
    // The example config is valid.
    let out = Command::new(BIN)
        .args([
            "check",
            "--config",
            &format!("{root}/examples/ringway.toml"),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// What the manifest exposes of the admin port (`docs` from the Deployment on): the token
/// Secret is mounted read-only for the owner at the configured path; the readiness probe
/// tolerates a miss; no Service carries the admin port; a NetworkPolicy opens the WebSocket port
/// to all and the admin port only to named peers; Prometheus scrapes with the token.
fn check_admin_exposure(docs: &[serde_yaml::Value], admin_port: u16, token_path: &str) {
    let find = |kind: &str| {
        docs.iter()
            .find(|d| d["kind"].as_str() == Some(kind))
            .unwrap()
    };
    let spec = &find("Deployment")["spec"]["template"]["spec"];
    let c = &spec["containers"][0];
    let port_named = |name: &str| -> u64 {
        c["ports"]
            .as_sequence()
            .unwrap()
            .iter()
            .find(|p| p["name"].as_str() == Some(name))
            .unwrap_or_else(|| panic!("container port {name}"))["containerPort"]
            .as_u64()
            .unwrap()
    };
    assert_eq!(port_named("admin"), u64::from(admin_port));
    let ready = &c["readinessProbe"];
    assert!(
        ready["failureThreshold"].as_u64().unwrap_or(3) >= 2,
        "the readiness probe tolerates one miss"
    );
    assert!(
        c["livenessProbe"]["httpGet"].is_null(),
        "liveness does not use /healthz, which is 503 while draining"
    );
    // The token Secret, mounted where the configuration reads it, 0400.
    let dir = std::path::Path::new(token_path).parent().unwrap();
    let mount = c["volumeMounts"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|m| m["mountPath"].as_str() == dir.to_str())
        .expect("the token's directory is mounted");
    let volume = spec["volumes"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|v| v["name"] == mount["name"])
        .unwrap();
    let secret = volume["secret"]["secretName"].as_str().expect("a Secret");
    assert_eq!(volume["secret"]["defaultMode"].as_u64(), Some(0o400));
    // No Service exposes the admin port.
    for svc in docs
        .iter()
        .filter(|d| d["kind"].as_str() == Some("Service"))
    {
        for p in svc["spec"]["ports"].as_sequence().unwrap() {
            assert_ne!(p["targetPort"].as_str(), Some("admin"), "{p:?}");
            assert_ne!(p["targetPort"].as_u64(), Some(u64::from(admin_port)));
        }
    }
    // The NetworkPolicy: ingress limited, the admin port only from named peers.
    let np = &find("NetworkPolicy")["spec"];
    assert_eq!(
        np["podSelector"]["matchLabels"]["app"].as_str(),
        Some("ringway")
    );
    assert!(
        np["policyTypes"]
            .as_sequence()
            .unwrap()
            .iter()
            .any(|t| t.as_str() == Some("Ingress"))
    );
    let rules = np["ingress"].as_sequence().unwrap();
    let opens = |rule: &serde_yaml::Value, port: &str| {
        rule["ports"]
            .as_sequence()
            .is_none_or(|ps| ps.iter().any(|p| p["port"].as_str() == Some(port)))
    };
    assert!(rules.iter().any(|r| opens(r, "ws")));
    for r in rules.iter().filter(|r| opens(r, "admin")) {
        let from = r["from"]
            .as_sequence()
            .expect("the admin port has a `from`");
        assert!(!from.is_empty());
    }
    assert!(
        rules.iter().any(|r| opens(r, "admin")),
        "Prometheus may scrape"
    );
    // Prometheus scrapes /metrics with the same Secret.
    let ep = &find("PodMonitor")["spec"]["podMetricsEndpoints"][0];
    assert_eq!(ep["port"].as_str(), Some("admin"));
    assert_eq!(ep["path"].as_str(), Some("/metrics"));
    assert_eq!(
        ep["authorization"]["credentials"]["name"].as_str(),
        Some(secret)
    );
}

#[test]
fn run_caps_sessions_to_the_descriptor_limit_and_logs_the_preflight() {
    if !common::uring_ok() {
        return;
    }
    let dir = common::scratch("cap");
    let listen = common::free_addr();
    let backend = common::free_addr();
    // Far more sessions than RLIMIT_NOFILE can hold here (and than most test machines allow).
    let cfg = format!(
        "[runtime]\nmax_connections = 50000000\n[[upstream]]\nname = \"b\"\nservers = [{{ addr = \"{backend}\" }}]\n[[server]]\nlisten = [\"{listen}\"]\n[[server.location]]\npath = \"/\"\nupstream = \"b\"\n"
    );
    let p = common::proxy(&cfg, listen, &dir);
    let log = p.wait_log("capping at", 10);
    assert!(log.contains("RLIMIT_NOFILE is"), "{log}");
    assert!(
        log.contains("preflight"),
        "the preflight summary is logged at start:\n{log}"
    );
}
