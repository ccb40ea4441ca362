//! Prerequisites of the eBPF build and of tracing, and the runtimes the
//! real-program tests launch, installed when missing.

use std::{
    io::Read as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context as _, bail};

const BPF_LINKER_VERSION: &str = "0.10.4";

/// Install whatever is missing; print nothing when all is there.
pub fn ensure() -> anyhow::Result<()> {
    ensure_nightly()?;
    ensure_rust_src()?;
    ensure_bpf_linker()?;
    ensure_tracefs();
    Ok(())
}

/// A command with the environment of this cargo invocation removed, so the
/// nightly toolchain is really used.
fn clean(program: &str) -> Command {
    let mut cmd = Command::new(program);
    for var in [
        "RUSTUP_TOOLCHAIN",
        "RUSTC",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "CARGO",
        "CARGO_TARGET_DIR",
    ] {
        cmd.env_remove(var);
    }
    cmd
}

fn output_of(cmd: &mut Command) -> Option<String> {
    let out = cmd.stderr(Stdio::null()).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn ensure_nightly() -> anyhow::Result<()> {
    if output_of(clean("rustup").args(["run", "nightly", "rustc", "--version"])).is_some() {
        return Ok(());
    }
    eprintln!("xtask: installing the nightly toolchain (the eBPF programs need it)");
    let ok = clean("rustup")
        .args(["toolchain", "install", "nightly", "--profile", "minimal"])
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        bail!(
            "the nightly Rust toolchain is missing and could not be installed: run `rustup toolchain install nightly`"
        );
    }
    Ok(())
}

fn ensure_rust_src() -> anyhow::Result<()> {
    let installed = output_of(clean("rustup").args([
        "component",
        "list",
        "--toolchain",
        "nightly",
        "--installed",
    ]))
    .unwrap_or_default();
    if installed.lines().any(|l| l.starts_with("rust-src")) {
        return Ok(());
    }
    eprintln!("xtask: adding rust-src to the nightly toolchain (for -Z build-std=core)");
    let ok = clean("rustup")
        .args(["component", "add", "rust-src", "--toolchain", "nightly"])
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        bail!("could not add rust-src: run `rustup component add rust-src --toolchain nightly`");
    }
    Ok(())
}

fn ensure_bpf_linker() -> anyhow::Result<()> {
    let version = output_of(clean("bpf-linker").arg("--version")).unwrap_or_default();
    if version.contains(BPF_LINKER_VERSION) {
        return Ok(());
    }
    // 0.10.x links through the Rust toolchain's own libLLVM, so build and
    // run it with nightly; later versions need a system LLVM 22.
    eprintln!("xtask: installing bpf-linker {BPF_LINKER_VERSION} (about two minutes, once)");
    let status = clean("rustup")
        .args([
            "run",
            "nightly",
            "cargo",
            "install",
            "bpf-linker",
            "--version",
            BPF_LINKER_VERSION,
            "--locked",
            "--force",
        ])
        .status()
        .context("running cargo install bpf-linker")?;
    if !status.success() {
        bail!(
            "installing bpf-linker failed: run `cargo +nightly install bpf-linker --version {BPF_LINKER_VERSION} --locked`"
        );
    }
    Ok(())
}

/// memtrace mounts tracefs itself when it runs as root; mounting it here
/// too lets the tests that load programs directly find it.
fn ensure_tracefs() {
    if Path::new("/sys/kernel/tracing/events").is_dir()
        || Path::new("/sys/kernel/debug/tracing/events").is_dir()
    {
        return;
    }
    // SAFETY: no arguments.
    if unsafe { libc::geteuid() } != 0 {
        return;
    }
    let _ = Command::new("mount")
        .args(["-t", "tracefs", "nodev", "/sys/kernel/tracing"])
        .status();
}

/// Programs the real-runtime tests (`tests/tests/runtimes.rs`) launch, and
/// the Debian package of each (Debian 12's; `javac` compiles the JVM
/// workload).
pub const RUNTIMES: &[(&str, &str)] = &[
    ("python3", "python3"),
    ("go", "golang-go"),
    ("node", "nodejs"),
    ("redis-server", "redis-server"),
    ("redis-cli", "redis-tools"),
    ("java", "openjdk-17-jre-headless"),
    ("javac", "openjdk-17-jdk-headless"),
];

/// Monitoring peers the tests run: Prometheus scrapes `/metrics`;
/// promtool and systemd-analyze check the manifests in `deploy/`.
pub const MONITORING: &[(&str, &str)] = &[
    ("prometheus", "prometheus"),
    ("promtool", "prometheus"),
    ("systemd-analyze", "systemd"),
];

/// Install the runtimes the tests launch that are missing, with apt-get
/// when there is one and we are root; otherwise say what to install (the
/// tests then fail with the same command).
pub fn ensure_runtimes() -> anyhow::Result<()> {
    ensure_programs(RUNTIMES, "the runtime tests")?;
    ensure_browser()
}

/// Headless Chromium for the web page test (`tests/tests/web_ui.rs`).
/// Debian's `chromium` is a shell script starting the real binary, so it
/// is found by running it, not as an ELF file on `PATH`.
pub fn ensure_browser() -> anyhow::Result<()> {
    let runs = Command::new("chromium")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if runs {
        return Ok(());
    }
    install_packages(&["chromium"], "the web page test")
}

/// Install the Debian packages of the `(program, package)` pairs whose
/// program is missing, saying so; `why` names who needs them.
pub fn ensure_programs(programs: &[(&str, &str)], why: &str) -> anyhow::Result<()> {
    let mut missing: Vec<&str> = programs
        .iter()
        .filter(|(cmd, _)| find_program(cmd).is_none())
        .map(|(_, package)| *package)
        .collect();
    missing.dedup();
    if missing.is_empty() {
        return Ok(());
    }
    install_packages(&missing, why)
}

/// Install Debian `packages` with apt-get when root, else say what to
/// install; `why` names who needs them.
fn install_packages(missing: &[&str], why: &str) -> anyhow::Result<()> {
    let command = format!(
        "apt-get install -y --no-install-recommends {}",
        missing.join(" ")
    );
    // SAFETY: no arguments.
    let root = unsafe { libc::geteuid() } == 0;
    if !root || find_program("apt-get").is_none() {
        eprintln!(
            "xtask: {why} need {}: install them (Debian: `{command}`)",
            missing.join(", ")
        );
        return Ok(());
    }
    eprintln!(
        "xtask: installing {} for {why} ({command})",
        missing.join(" ")
    );
    let install = || {
        Command::new("apt-get")
            .args(["install", "-y", "--no-install-recommends"])
            .args(missing)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    // A fresh machine may have no package lists yet.
    let ok = install()
        || (Command::new("apt-get")
            .args(["update", "-qq"])
            .status()
            .is_ok_and(|s| s.success())
            && install());
    if !ok {
        bail!("installing what {why} need failed: run `{command}`");
    }
    Ok(())
}

/// The first `name` on `PATH` that is an ELF executable: version-manager
/// shims (pyenv's `python3` is a shell script) would put a shell between
/// memtrace and the runtime.
pub fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| is_elf_executable(p))
}

fn is_elf_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    let Ok(meta) = std::fs::metadata(path) else {
        return false;
    };
    if !meta.is_file() || meta.permissions().mode() & 0o111 == 0 {
        return false;
    }
    let mut magic = [0u8; 4];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut magic))
        .is_ok()
        && &magic == b"\x7fELF"
}
