//! memtrace leaves nothing in the kernel: after every way a tracing session
//! can end, none of its programs is still loaded.
//!
//! Other memtrace sessions may run on the same machine meanwhile (other
//! test binaries, other checkouts), so the test follows the objects of the
//! memtrace process it started: it reads their ids from that process's file
//! descriptors while it runs, and checks that those ids are gone once it
//! has exited.
//!
//! memtrace does not wait for the kernel to finish detaching (that costs a
//! grace period per tracepoint, see `memtrace::trace::release`): it drops
//! its last references, and the kernel releases links and programs in the
//! background within a grace period or two. So everything must be gone
//! within a bound (10 s, a hundred times what it takes here), and nothing
//! may stay.

mod common;

use std::{
    collections::BTreeSet,
    fs,
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use common::{memtrace_bin, require_root, wait_with_timeout};

/// The BPF programs and links of one memtrace process, by id.
#[derive(Default)]
struct Objects {
    programs: BTreeSet<u32>,
    links: BTreeSet<u32>,
}

/// Add the ids of the BPF programs and links process `pid` holds open
/// (`prog_id:` and `link_id:` lines of its fdinfo).
fn add_objects_of(pid: u32, objects: &mut Objects) {
    let Ok(dir) = fs::read_dir(format!("/proc/{pid}/fdinfo")) else {
        return;
    };
    for info in dir
        .filter_map(Result::ok)
        .filter_map(|e| fs::read_to_string(e.path()).ok())
    {
        for line in info.lines() {
            let id = |v: &str| v.trim().parse::<u32>().ok();
            if let Some(v) = line.strip_prefix("prog_id:").and_then(id) {
                objects.programs.insert(v);
            }
            if let Some(v) = line.strip_prefix("link_id:").and_then(id) {
                objects.links.insert(v);
            }
        }
    }
}

/// Collect the objects `child` holds until it has attached `want`
/// programs (or exited, or `limit` passed).
fn objects_while_running(child: &mut Child, want: usize, limit: Duration) -> Objects {
    let start = Instant::now();
    let mut seen = Objects::default();
    while start.elapsed() < limit {
        add_objects_of(child.id(), &mut seen);
        if seen.links.len() >= want || matches!(child.try_wait(), Ok(Some(_))) {
            break;
        }
        thread::sleep(Duration::from_millis(2));
    }
    seen
}

/// Fail unless every one of the links and programs is gone within the
/// bound.
fn assert_gone(objects: &Objects, after: &str) {
    let start = Instant::now();
    loop {
        let links: Vec<u32> = aya::programs::loaded_links()
            .filter_map(Result::ok)
            .map(|l| l.id())
            .filter(|id| objects.links.contains(id))
            .collect();
        let programs: Vec<String> = aya::programs::loaded_programs()
            .filter_map(Result::ok)
            .filter(|p| objects.programs.contains(&p.id()))
            .map(|p| format!("{} ({:?})", p.id(), p.name_as_str()))
            .collect();
        if links.is_empty() && programs.is_empty() {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "10 s after {after}, links still attached: {links:?}; programs still loaded: \
             {programs:?}"
        );
        thread::sleep(Duration::from_millis(20));
    }
}

/// memtrace's programs without `--follow-forks`: the exit of seven
/// syscalls, the entry of the four ordered by entry (munmap, mprotect,
/// madvise, prctl), sched_process_exec and sched_process_exit.
const PROGRAMS: usize = 13;

fn spawn(args: &[&str]) -> Child {
    Command::new(memtrace_bin())
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn memtrace")
}

#[test]
fn no_program_stays_loaded_on_any_exit_path() {
    require_root();

    // The launched target exits.
    let mut mt = spawn(&["--quiet", "--", "sleep", "0.5"]);
    let ids = objects_while_running(&mut mt, PROGRAMS, Duration::from_secs(10));
    assert_eq!(ids.links.len(), PROGRAMS, "memtrace's links while it runs");
    assert_eq!(wait_with_timeout(&mut mt, Duration::from_secs(20)), 0);
    assert_gone(&ids, "the launched target exited");

    // --duration expires while the target lives on.
    let mut sleeper = Command::new("sleep")
        .arg("30")
        .spawn()
        .expect("spawn sleep");
    let pid = sleeper.id().to_string();
    let mut mt = spawn(&["--quiet", "--duration", "500ms", "--pid", &pid]);
    let ids = objects_while_running(&mut mt, PROGRAMS, Duration::from_secs(10));
    assert_eq!(ids.links.len(), PROGRAMS, "memtrace's links while it runs");
    assert_eq!(wait_with_timeout(&mut mt, Duration::from_secs(20)), 0);
    assert_gone(&ids, "--duration");

    // Ctrl-C (SIGINT) while attached, with --follow-forks (one more
    // program).
    let mut mt = spawn(&["--quiet", "--follow-forks", "--pid", &pid]);
    let ids = objects_while_running(&mut mt, PROGRAMS + 1, Duration::from_secs(10));
    assert_eq!(
        ids.links.len(),
        PROGRAMS + 1,
        "memtrace's links while it runs"
    );
    // SAFETY: signalling our own child.
    unsafe { libc::kill(mt.id() as i32, libc::SIGINT) };
    assert_eq!(wait_with_timeout(&mut mt, Duration::from_secs(20)), 0);
    assert_gone(&ids, "SIGINT");
    let _ = sleeper.kill();
    let _ = sleeper.wait();

    // An error after loading: the command cannot be run. memtrace fails
    // within milliseconds, so its programs may not be seen; those that are
    // must be gone.
    let mut mt = Command::new(memtrace_bin())
        .args(["--quiet", "--", "/nonexistent/program"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn memtrace");
    let ids = objects_while_running(&mut mt, PROGRAMS, Duration::from_secs(10));
    let out = mt.wait_with_output().expect("wait for memtrace");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("cannot run"), "{stderr}");
    assert_gone(&ids, "a launch error");
}
