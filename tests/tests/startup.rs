//! A session costs little wall time of its own: `memtrace -- /bin/true`
//! loads, attaches, traces, reports and detaches in well under a second
//! (it took 1.3 s when each tracepoint's detach waited for the kernel). A
//! behavioural check with a generous bound, not a benchmark: the best of
//! three runs, so a busy machine does not fail it. (Its own binary, so no
//! other test of this crate runs meanwhile.)

mod common;

use std::time::{Duration, Instant};

use common::run_launch;

#[test]
fn a_short_command_is_traced_in_well_under_a_second() {
    let best = (0..3)
        .map(|_| {
            let start = Instant::now();
            let run = run_launch(&["--quiet"], "/bin/true", &[]);
            let took = start.elapsed();
            assert_eq!(run.status, 0, "{}", run.stderr);
            assert!(
                run.stdout.contains("events:"),
                "the session ran to its summary: {}",
                run.stdout
            );
            took
        })
        .min()
        .expect("three runs");
    assert!(
        best < Duration::from_secs(1),
        "memtrace -- /bin/true took {best:?} at best"
    );
}
