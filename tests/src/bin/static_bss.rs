//! Fixture: a 100 MiB zero-initialised static array (`.bss`, mapped by exec,
//! not by any call the program makes), every page touched, then exit.

const LEN: usize = 100 << 20;

static mut BIG: [u8; LEN] = [0; LEN];

fn main() {
    let base = &raw mut BIG;
    for off in (0..LEN).step_by(memtrace_tests::PAGE) {
        // SAFETY: in bounds of the static; one thread; volatile so the
        // writes stay.
        unsafe { base.cast::<u8>().add(off).write_volatile(1) };
    }
}
