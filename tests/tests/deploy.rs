//! The manifests in `deploy/` are valid for the tools that read them:
//! Prometheus's config and alerting rules by `promtool` (the rules also
//! by their unit tests), the systemd unit by `systemd-analyze verify`,
//! and the Kubernetes manifest parsed and checked for what memtrace needs
//! (host PID namespace, privileges, tracefs and bpffs mounts, the port and
//! the `serve` flags, which the real binary must accept).

mod common;

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use common::{memtrace_bin, require_tool};
use yaml_rust2::{Yaml, YamlLoader};

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .join("deploy")
}

/// Run `cmd`; its combined output, failing the test unless it succeeds.
fn run_ok(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{cmd:?} failed:\n{text}");
    text
}

#[test]
fn promtool_accepts_the_scrape_config_and_the_alerting_rules() {
    require_tool("promtool", "prometheus");
    let dir = deploy_dir();
    // The config names the rules file: both are checked.
    let out = run_ok(
        Command::new("promtool")
            .args(["check", "config"])
            .arg(dir.join("prometheus.yml")),
    );
    assert!(out.contains("1 rule files found"), "{out}");
    let out = run_ok(
        Command::new("promtool")
            .args(["check", "rules"])
            .arg(dir.join("memtrace-alerts.yml")),
    );
    assert!(out.contains("SUCCESS: 4 rules found"), "{out}");
    // The rules fire on the series that should trip them, and only there.
    run_ok(
        Command::new("promtool")
            .args(["test", "rules"])
            .arg(dir.join("memtrace-alerts.test.yml")),
    );
}

#[test]
fn systemd_accepts_the_unit() {
    require_tool("systemd-analyze", "systemd");
    // An instance for a stand-in service, as `systemctl enable
    // memtrace@NAME` would make.
    let dir = common::temp_path("systemd-unit").with_extension("d");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    std::fs::copy(
        deploy_dir().join("memtrace@.service"),
        dir.join("memtrace@.service"),
    )
    .expect("copy unit");
    std::fs::write(
        dir.join("demo.service"),
        "[Service]\nExecStart=/bin/sleep 1000\n",
    )
    .expect("write stand-in service");
    std::os::unix::fs::symlink("memtrace@.service", dir.join("memtrace@demo.service"))
        .expect("instance link");
    // Unknown keys and bad values are only warned about: none may be.
    let out = run_ok(
        Command::new("systemd-analyze")
            .args(["verify", "--man=no", "./memtrace@demo.service"])
            .current_dir(&dir),
    );
    assert!(
        out.trim().is_empty(),
        "systemd-analyze verify warns:\n{out}"
    );
    let unit = std::fs::read_to_string(dir.join("memtrace@.service")).expect("read unit");
    let exec = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .expect("ExecStart");
    assert!(exec.contains("memtrace serve --trace --pid"), "{exec}");
    assert_serve_accepts(exec);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Every `--flag` after `memtrace serve` in `command` (outside `$(…)`,
/// which runs other programs) is one `memtrace serve` takes.
fn assert_serve_accepts(command: &str) {
    let help = run_ok(Command::new(memtrace_bin()).args(["serve", "--help"]));
    let (_, mut args) = command
        .split_once("memtrace serve")
        .unwrap_or_else(|| panic!("no `memtrace serve` in {command}"));
    let mut own = String::new();
    while let Some((before, rest)) = args.split_once("$(") {
        own.push_str(before);
        args = rest.split_once(')').map_or("", |(_, after)| after);
    }
    own.push_str(args);
    for flag in own
        .split_whitespace()
        .filter(|w| w.starts_with("--"))
        .map(|w| w.split('=').next().unwrap_or(w))
    {
        assert!(
            help.contains(&format!("{flag} ")) || help.contains(&format!("{flag}\n")),
            "`memtrace serve` has no {flag}:\n{help}"
        );
    }
}

fn str_of<'a>(y: &'a Yaml, what: &str) -> &'a str {
    y.as_str()
        .unwrap_or_else(|| panic!("{what}: not a string: {y:?}"))
}

fn list<'a>(y: &'a Yaml, what: &str) -> &'a [Yaml] {
    y.as_vec()
        .unwrap_or_else(|| panic!("{what}: not a list: {y:?}"))
}

#[test]
fn kubernetes_daemonset_has_what_tracing_needs() {
    let text = std::fs::read_to_string(deploy_dir().join("kubernetes-daemonset.yaml"))
        .expect("read the manifest");
    let docs = YamlLoader::load_from_str(&text).expect("the manifest parses as YAML");
    let kind = |k: &str| {
        docs.iter()
            .find(|d| d["kind"].as_str() == Some(k))
            .unwrap_or_else(|| panic!("no {k} in the manifest"))
    };
    let ds = kind("DaemonSet");
    assert_eq!(str_of(&ds["apiVersion"], "apiVersion"), "apps/v1");
    let namespace = str_of(&ds["metadata"]["namespace"], "namespace");
    let pod = &ds["spec"]["template"];
    assert_eq!(
        ds["spec"]["selector"]["matchLabels"], pod["metadata"]["labels"],
        "the selector picks the pods"
    );
    let spec = &pod["spec"];
    assert_eq!(spec["hostPID"].as_bool(), Some(true), "hostPID");
    let [container] = list(&spec["containers"], "containers") else {
        panic!("one container")
    };
    let sc = &container["securityContext"];
    let caps: Vec<&str> = sc["capabilities"]["add"]
        .as_vec()
        .map(|v| v.iter().filter_map(Yaml::as_str).collect())
        .unwrap_or_default();
    assert!(
        sc["privileged"].as_bool() == Some(true)
            || ["BPF", "PERFMON", "SYS_PTRACE"]
                .iter()
                .all(|c| caps.contains(c)),
        "privileged, or the capabilities to load eBPF programs and read /proc: {sc:?}"
    );

    // tracefs and bpffs from the host, mounted where memtrace looks.
    let volumes = list(&spec["volumes"], "volumes");
    for path in ["/sys/kernel/tracing", "/sys/fs/bpf"] {
        let mount = list(&container["volumeMounts"], "volumeMounts")
            .iter()
            .find(|m| m["mountPath"].as_str() == Some(path))
            .unwrap_or_else(|| panic!("no mount at {path}"));
        let volume = volumes
            .iter()
            .find(|v| v["name"] == mount["name"])
            .unwrap_or_else(|| panic!("no volume for the mount at {path}"));
        assert_eq!(
            volume["hostPath"]["path"].as_str(),
            Some(path),
            "{path} comes from the host"
        );
    }

    // The serve command, its port, and who finds it.
    let script = list(&container["args"], "args")
        .iter()
        .map(|a| str_of(a, "arg"))
        .collect::<Vec<_>>()
        .join(" ");
    let serve = script
        .lines()
        .find(|l| l.contains("memtrace serve"))
        .unwrap_or_else(|| panic!("no memtrace serve in {script}"));
    assert!(serve.contains("serve --trace --pid"), "{serve}");
    assert!(
        serve.contains("--listen 0.0.0.0:6060") && serve.contains("--allow-remote"),
        "reachable from Prometheus: {serve}"
    );
    assert_serve_accepts(serve);
    let [port] = list(&container["ports"], "ports") else {
        panic!("one port")
    };
    assert_eq!(port["containerPort"].as_i64(), Some(6060));
    let port_name = str_of(&port["name"], "port name");

    let service = kind("Service");
    assert_eq!(service["spec"]["clusterIP"].as_str(), Some("None"));
    assert_eq!(service["spec"]["selector"], pod["metadata"]["labels"]);
    let [sport] = list(&service["spec"]["ports"], "service ports") else {
        panic!("one service port")
    };
    assert_eq!(str_of(&sport["targetPort"], "targetPort"), port_name);

    // The scrape config resolves that Service on that port.
    let prom = std::fs::read_to_string(deploy_dir().join("prometheus.yml")).expect("read");
    let prom = &YamlLoader::load_from_str(&prom).expect("prometheus.yml parses")[0];
    let job = list(&prom["scrape_configs"], "scrape_configs")
        .iter()
        .find(|j| j["job_name"].as_str() == Some("memtrace"))
        .expect("job memtrace");
    let dns = &list(&job["dns_sd_configs"], "dns_sd_configs")[0];
    let service_name = str_of(&service["metadata"]["name"], "service name");
    assert_eq!(
        str_of(&list(&dns["names"], "names")[0], "name"),
        format!("{service_name}.{namespace}.svc.cluster.local")
    );
    assert_eq!(dns["port"].as_i64(), Some(6060));
}
