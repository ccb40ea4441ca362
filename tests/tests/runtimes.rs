//! Real runtimes, not fixtures: python3, Go, node, redis-server (with
//! jemalloc) and OpenJDK, as Debian ships them (`cargo xtask setup`
//! installs them).
//! Each runs a small workload of ours under memtrace in launch mode; the
//! top call site must carry the runtime's sub-category, and its label the
//! caller past the runtime's own wrappers as far as the stack reaches.
//!
//! A missing runtime fails the test with the command that installs it.
//! The top rows are printed (`cargo test -- --nocapture` shows them).

mod common;

use std::{
    io::Read as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use common::{Background, report_of, run_launch};
use serde_json::Value;

const MIB: u64 = 1 << 20;

/// The runtime `name` as an ELF executable on `PATH` (version-manager
/// shims such as pyenv's are shell scripts: skipped), or a failure that
/// says how to install it.
fn runtime(name: &str, package: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| is_elf(p))
        .unwrap_or_else(|| {
            panic!(
                "{name} is missing: this test launches it. Install it with \
                 `apt-get install -y --no-install-recommends {package}` \
                 (`cargo xtask setup` does)"
            )
        })
}

fn is_elf(path: &Path) -> bool {
    let mut magic = [0u8; 4];
    std::fs::metadata(path).is_ok_and(|m| m.is_file())
        && std::fs::File::open(path)
            .and_then(|mut f| f.read_exact(&mut magic))
            .is_ok()
        && &magic == b"\x7fELF"
}

/// A workload file in `tests/runtimes/`.
fn workload(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("runtimes")
        .join(name)
        .to_string_lossy()
        .into_owned()
}

/// A scratch directory of this test.
fn scratch(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir()
        .join("memtrace-tests")
        .join(format!("{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
    dir
}

/// A frame's function, or its module and offset.
fn frame_name(f: &Value) -> String {
    match f["function"].as_str() {
        Some(func) => func.to_string(),
        None => format!(
            "{}+{:#x}",
            f["module"].as_str().unwrap_or("?"),
            common::num(&f["module_offset"])
        ),
    }
}

fn functions(site: &Value) -> Vec<String> {
    site["stack"]
        .as_array()
        .map(|s| s.iter().map(frame_name).collect())
        .unwrap_or_default()
}

/// The top rows, for the test output.
fn print_top(what: &str, report: &Value, n: usize) {
    println!(
        "{what}: anonymous RSS {:.1} MiB, coverage {:.1}%",
        report["anon_rss_bytes"].as_u64().unwrap_or(0) as f64 / MIB as f64,
        report["coverage"].as_f64().unwrap_or(0.0) * 100.0
    );
    for site in report["call_sites"]
        .as_array()
        .into_iter()
        .flatten()
        .take(n)
    {
        let via = match &site["via"] {
            Value::Null => String::new(),
            v => format!(" via {}", frame_name(v)),
        };
        println!(
            "  {:>8.1} MiB  {:<18} {}{}  (stacks: {}, frames in the largest: {})",
            site["rss_bytes"].as_u64().unwrap_or(0) as f64 / MIB as f64,
            site["subcategory"].as_str().unwrap_or("?"),
            frame_name(&site["call_site"]),
            via,
            site["stack_count"],
            site["stack"].as_array().map_or(0, Vec::len)
        );
    }
}

/// Resident bytes of a sub-category.
fn subcategory_bytes(report: &Value, name: &str) -> u64 {
    report["categories"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|c| c["subcategories"].as_array().into_iter().flatten())
        .filter(|s| s["name"] == name)
        .filter_map(|s| s["rss_bytes"].as_u64())
        .sum()
}

fn top_site(report: &Value) -> &Value {
    &report["call_sites"][0]
}

/// Checks every runtime test makes of its top row.
fn assert_top(what: &str, report: &Value, subcategory: &str, category: &str, rt: &str) {
    let top = top_site(report);
    assert_eq!(
        (
            top["subcategory"].as_str(),
            top["category"].as_str(),
            top["runtime"].as_str()
        ),
        (Some(subcategory), Some(category), Some(rt)),
        "{what}: the top call site's class; it is {top}"
    );
}

/// Launch `cmd args` under memtrace and return its JSON report.
fn launch(what: &str, cmd: &Path, args: &[&str]) -> Value {
    let cmd = cmd.to_string_lossy();
    let run = run_launch(&["--json", "--quiet"], &cmd, args);
    assert_eq!(
        run.status, 0,
        "{what}: memtrace's status (the workload's); stderr:\n{}",
        run.stderr
    );
    let report = report_of(&run).clone();
    check_schema(what, &report);
    report
}

/// Real runtimes' reports carry every runtime field: they validate
/// against the documented schema too.
fn check_schema(what: &str, report: &Value) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/memtrace.schema.json");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let schema: Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()));
    let validator = jsonschema::validator_for(&schema)
        .unwrap_or_else(|e| panic!("{} is not a valid JSON Schema: {e}", path.display()));
    let errors: Vec<String> = validator
        .iter_errors(report)
        .map(|e| format!("{e} at {}", e.instance_path()))
        .collect();
    assert!(
        errors.is_empty(),
        "{what}: the report does not match docs/memtrace.schema.json:\n  {}",
        errors.join("\n  ")
    );
}

#[test]
fn python_small_objects_are_pymalloc_arenas_named_by_their_caller() {
    let python = runtime("python3", "python3");
    let started = Instant::now();
    let report = launch("python3", &python, &[&workload("alloc.py")]);
    print_top("python3", &report, 6);
    println!("python3 took {:?}", started.elapsed());
    assert_top(
        "python3",
        &report,
        "cpython_pymalloc",
        "runtime_heaps",
        "cpython",
    );
    let pymalloc = subcategory_bytes(&report, "cpython_pymalloc");
    assert!(
        pymalloc >= 80 * MIB,
        "a million small tuples live in pymalloc arenas: {pymalloc} bytes"
    );
    // The label is the arena code's caller (PyTuple_New…), not
    // _PyObject_ArenaMmap nor a nameless frame of the interpreter.
    let top = top_site(&report);
    let label = top["call_site"]["function"].as_str().unwrap_or("");
    assert!(
        !label.is_empty()
            && !label.starts_with("_PyObject_")
            && !label.starts_with("_PyMem_")
            && !label.starts_with("PyObject_Malloc"),
        "the call site is the caller of pymalloc: {top}"
    );
    assert!(
        top["via"].is_object(),
        "the arena code stays visible as via: {top}"
    );
}

#[test]
fn go_heap_growth_is_the_go_heap_even_stripped() {
    let go = runtime("go", "golang-go");
    let dir = scratch("go");
    let build = |out: &Path, flags: &[&str]| {
        let started = Instant::now();
        let mut cmd = Command::new(&go);
        // go needs a build cache: under HOME, or ours when HOME is unset.
        if std::env::var_os("GOCACHE").is_none() && std::env::var_os("HOME").is_none() {
            cmd.env(
                "GOCACHE",
                std::env::temp_dir().join("memtrace-tests/go-cache"),
            );
        }
        let status = cmd
            .arg("build")
            .args(flags)
            .arg("-o")
            .arg(out)
            .arg(".")
            .current_dir(workload("go"))
            // Go 1.21+ would fetch another toolchain for a newer go.mod.
            .env("GOTOOLCHAIN", "local")
            .env("GOFLAGS", "-mod=mod")
            .stdin(Stdio::null())
            .status()
            .unwrap_or_else(|e| panic!("running go build: {e}"));
        assert!(status.success(), "go build {flags:?} failed: {status}");
        println!("go build {flags:?} took {:?}", started.elapsed());
    };
    let plain = dir.join("goalloc");
    let stripped = dir.join("goalloc-stripped");
    build(&plain, &[]);
    build(&stripped, &["-ldflags=-s -w"]);

    let report = launch("go", &plain, &[]);
    print_top("go", &report, 6);
    assert_top("go", &report, "go_heap", "runtime_heaps", "go");
    let heap = subcategory_bytes(&report, "go_heap");
    assert!(heap >= 90 * MIB, "100 MiB of slices: go_heap {heap} bytes");
    let top = top_site(&report);
    let frames = functions(top);
    let label = top["call_site"]["function"].as_str().unwrap_or("");
    // The stack goes on past runtime.systemstack (the switch to the g0
    // stack, where the window's unwinding ends) by the frame-pointer walk:
    // the program's own function is the call site.
    assert!(
        frames.iter().any(|f| f == "main.buildIndex"),
        "the stack reaches main.buildIndex: {frames:?}"
    );
    assert_eq!(label, "main.buildIndex", "{top}");
    assert!(
        top["via"]["function"]
            .as_str()
            .is_some_and(|v| v.starts_with("runtime.")),
        "{top}"
    );

    // Without symbols the Go binary is still Go's: told by .go.buildinfo.
    let report = launch("go (stripped)", &stripped, &[]);
    print_top("go (stripped)", &report, 3);
    assert_top("go (stripped)", &report, "go_heap", "runtime_heaps", "go");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn node_buffers_are_malloced_array_buffers_not_the_js_heap() {
    let node = runtime("node", "nodejs");
    let started = Instant::now();
    let report = launch("node", &node, &[&workload("alloc.js")]);
    print_top("node", &report, 6);
    println!("node took {:?}", started.elapsed());
    assert_top(
        "node",
        &report,
        "v8_array_buffers",
        "allocator_arenas",
        "v8",
    );
    let buffers = subcategory_bytes(&report, "v8_array_buffers");
    assert!(
        buffers >= 90 * MIB,
        "100 Buffers of 1 MiB: v8_array_buffers {buffers} bytes"
    );
    let js_heap = subcategory_bytes(&report, "v8_heap");
    assert!(
        js_heap < 50 * MIB,
        "the buffers are not in the JS heap ({js_heap} bytes)"
    );
    let top = top_site(&report);
    let label = top["call_site"]["function"].as_str().unwrap_or("");
    assert!(
        !label.is_empty()
            && !label.contains("v8::base::")
            && !label.contains("NodeArrayBufferAllocator")
            && !label.contains("malloc"),
        "the call site is past malloc and the ArrayBuffer allocator: {top}"
    );
    assert!(top["via"].is_object(), "{top}");
}

#[test]
fn redis_memory_is_jemalloc_arenas() {
    let server = runtime("redis-server", "redis-server");
    let cli = runtime("redis-cli", "redis-tools");
    let dir = scratch("redis");
    let socket = dir.join("redis.sock");
    let socket_arg = socket.to_string_lossy().into_owned();
    let dir_arg = dir.to_string_lossy().into_owned();
    let started = Instant::now();
    let mt = Background::launch(
        &["--json", "--quiet"],
        &server.to_string_lossy(),
        &[
            "--port",
            "0",
            "--unixsocket",
            &socket_arg,
            "--dir",
            &dir_arg,
            "--save",
            "",
            "--appendonly",
            "no",
            "--enable-debug-command",
            "yes",
            "--loglevel",
            "warning",
        ],
    );
    let redis = |args: &[&str]| {
        Command::new(&cli)
            .arg("-s")
            .arg(&socket)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("running redis-cli: {e}"))
    };
    // Should an assertion fail with redis still up, shut it down: memtrace
    // then ends too.
    struct Shutdown<'a>(&'a dyn Fn(&[&str]) -> std::process::Output);
    impl Drop for Shutdown<'_> {
        fn drop(&mut self) {
            let _ = (self.0)(&["SHUTDOWN", "NOSAVE"]);
        }
    }
    let shutdown = Shutdown(&redis);
    let ready = common::wait_for(Duration::from_secs(20), || {
        redis(&["PING"]).stdout.starts_with(b"PONG")
    });
    assert!(ready, "redis-server never answered PING on {socket_arg}");
    // 200,000 keys with 256-byte values: about 70 MiB in jemalloc.
    let populate = redis(&["DEBUG", "POPULATE", "200000", "key", "256"]);
    assert!(
        populate.stdout.starts_with(b"OK"),
        "DEBUG POPULATE: {}{}",
        String::from_utf8_lossy(&populate.stdout),
        String::from_utf8_lossy(&populate.stderr)
    );
    // SHUTDOWN NOSAVE exits at once, keeping the data in memory for the
    // report at exit.
    drop(shutdown);
    let run = mt.finish(Duration::from_secs(60));
    assert_eq!(run.status, 0, "memtrace: {}", run.stderr);
    let report = report_of(&run);
    check_schema("redis-server", report);
    print_top("redis-server", report, 6);
    println!("redis took {:?}", started.elapsed());
    assert_top(
        "redis-server",
        report,
        "jemalloc",
        "allocator_arenas",
        "jemalloc",
    );
    let jemalloc = subcategory_bytes(report, "jemalloc");
    assert!(
        jemalloc >= 50 * MIB,
        "the populated keys live in jemalloc's arenas: {jemalloc} bytes"
    );
    let top = top_site(report);
    let frames = functions(top);
    let module = top["call_site"]["module"].as_str().unwrap_or("");
    // The stack reaches redis through jemalloc (frames without symbols)
    // and its zmalloc wrappers, up to main, as gdb shows it (26 frames):
    // the call site is past the wrappers, jemalloc is what it went
    // through.
    assert!(
        frames
            .iter()
            .any(|f| f.starts_with("zmalloc") || f.starts_with("ztrymalloc")),
        "the stack reaches redis's zmalloc: {frames:?}"
    );
    assert!(frames.len() >= 20, "{} frames: {frames:?}", frames.len());
    assert!(
        frames.iter().any(|f| f == "main"),
        "the stack reaches main: {frames:?}"
    );
    let label = top["call_site"]["function"].as_str().unwrap_or("");
    assert!(
        !label.starts_with('z') && !module.contains("libjemalloc"),
        "{top}"
    );
    assert!(top["via"].is_object(), "{top}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn jvm_heap_direct_buffers_and_metaspace() {
    let java = runtime("java", "openjdk-17-jre-headless");
    let javac = runtime("javac", "openjdk-17-jdk-headless");
    let dir = scratch("jvm");
    let started = Instant::now();
    let status = Command::new(&javac)
        .arg("-d")
        .arg(&dir)
        .arg(workload("Alloc.java"))
        .stdin(Stdio::null())
        .status()
        .unwrap_or_else(|e| panic!("running javac: {e}"));
    assert!(status.success(), "javac failed: {status}");
    println!("javac took {:?}", started.elapsed());
    let started = Instant::now();
    let classpath = dir.to_string_lossy().into_owned();
    // G1 whatever the machine: the JVM picks Serial on small ones.
    let report = launch("java", &java, &["-XX:+UseG1GC", "-cp", &classpath, "Alloc"]);
    print_top("java", &report, 8);
    println!("java took {:?}", started.elapsed());
    assert_top("java", &report, "jvm_heap", "runtime_heaps", "jvm");
    let heap = subcategory_bytes(&report, "jvm_heap");
    assert!(
        heap >= 100 * MIB,
        "100 MiB of byte arrays: jvm_heap {heap} bytes"
    );
    let direct = subcategory_bytes(&report, "jvm_direct_memory");
    assert!(
        direct >= 15 * MIB,
        "20 direct buffers of 1 MiB: jvm_direct_memory {direct} bytes"
    );
    let direct_site = report["call_sites"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|s| s["subcategory"] == "jvm_direct_memory")
        .unwrap_or_else(|| panic!("no jvm_direct_memory row"));
    assert_eq!(
        (
            direct_site["call_site"]["function"].as_str(),
            direct_site["via"]["function"]
                .as_str()
                .map(|v| v.starts_with("os::malloc"))
        ),
        (Some("Unsafe_AllocateMemory0"), Some(true)),
        "the JNI entry that malloc'd, via the VM's malloc: {direct_site}"
    );
    for sub in ["jvm_metaspace", "jvm_code_cache"] {
        assert!(subcategory_bytes(&report, sub) > 0, "{sub} holds memory");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
