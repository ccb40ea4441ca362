//! Live tests: map known memory in this process or a child, snapshot it,
//! and check categories, sizes and agreement with smaps_rollup.

use std::process::{Child, Command};
use std::time::{Duration, Instant};

use memtrace::proc::ProcError;
use memtrace::snapshot::classify::Category;
use memtrace::snapshot::{self, Snapshot, Totals};

const MIB: usize = 1 << 20;

fn page() -> usize {
    // SAFETY: sysconf has no preconditions.
    usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).expect("page size")
}

/// An anonymous private mapping of `len` bytes with `prot`, fenced by
/// PROT_NONE guard pages so the kernel cannot merge it with a neighbour.
/// Returns the start of the usable part.
fn fenced_anon(len: usize, prot: libc::c_int) -> usize {
    let pg = page();
    // SAFETY: a fresh anonymous mapping; we only touch memory we mapped.
    unsafe {
        let base = libc::mmap(
            std::ptr::null_mut(),
            len + 2 * pg,
            libc::PROT_NONE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        );
        assert_ne!(base, libc::MAP_FAILED, "mmap failed");
        let start = base.cast::<u8>().add(pg);
        assert_eq!(
            libc::mprotect(start.cast(), len, prot),
            0,
            "mprotect failed"
        );
        start as usize
    }
}

fn touch(start: usize, len: usize) {
    for off in (0..len).step_by(page()) {
        // SAFETY: the range is mapped writable by the caller.
        unsafe { std::ptr::write_volatile((start + off) as *mut u8, 1) };
    }
}

fn vma_at(snap: &Snapshot, start: usize) -> (usize, &memtrace::proc::smaps::Vma) {
    snap.vmas
        .iter()
        .enumerate()
        .find(|(_, v)| v.start == start as u64)
        .unwrap_or_else(|| panic!("no VMA starts at {start:#x}"))
}

#[test]
fn touched_anonymous_memory_lands_in_anon_rw_with_exact_rss() {
    let len = 4 * MIB;
    let start = fenced_anon(len, libc::PROT_READ | libc::PROT_WRITE);
    touch(start, len);
    let snap = snapshot::capture_self().expect("capture self");
    let (i, v) = vma_at(&snap, start);
    assert_eq!(v.end - v.start, len as u64);
    assert_eq!(v.rss, len as u64, "4 MiB touched = 4 MiB resident");
    assert_eq!(snap.classes[i], Category::AnonRw);
    // The guard page before it is anon-none.
    let guard = snap
        .vmas
        .iter()
        .position(|g| g.end == start as u64)
        .expect("guard page");
    assert_eq!(snap.classes[guard], Category::AnonNone);
    assert!(snap.category(Category::AnonRw).rss_bytes >= len as u64);
}

#[test]
fn dev_shm_memfd_and_sysv_land_in_shared_memory() {
    let len = MIB;
    let name = format!("/dev/shm/memtrace-test-{}", std::process::id());
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&name)
        .expect("create /dev/shm file");
    file.set_len(len as u64).expect("size /dev/shm file");
    let _ = std::fs::remove_file(&name);
    let shm = map_shared(std::os::fd::AsRawFd::as_raw_fd(&file), len);

    // SAFETY: memfd_create with a valid C string.
    let memfd = unsafe { libc::memfd_create(c"memtrace-test".as_ptr(), 0) };
    assert!(memfd >= 0, "memfd_create failed");
    // SAFETY: valid fd.
    assert_eq!(unsafe { libc::ftruncate(memfd, len as libc::off_t) }, 0);
    let mfd = map_shared(memfd, len);

    // SAFETY: plain SysV calls; the segment is marked for removal at once.
    let sysv = unsafe {
        let id = libc::shmget(libc::IPC_PRIVATE, len, libc::IPC_CREAT | 0o600);
        assert!(id >= 0, "shmget failed");
        let p = libc::shmat(id, std::ptr::null(), 0);
        libc::shmctl(id, libc::IPC_RMID, std::ptr::null_mut());
        assert_ne!(p as isize, -1, "shmat failed");
        p as usize
    };
    for s in [shm, mfd, sysv] {
        touch(s, len);
    }
    let snap = snapshot::capture_self().expect("capture self");
    for (what, s) in [("/dev/shm", shm), ("memfd", mfd), ("SysV", sysv)] {
        let (i, v) = vma_at(&snap, s);
        assert_eq!(
            snap.classes[i],
            Category::SharedMemory,
            "{what}: {:?}",
            v.name
        );
        assert_eq!(v.rss, len as u64, "{what} rss");
    }
    let memfd_vma = vma_at(&snap, mfd).1;
    assert!(memfd_vma.name.starts_with("/memfd:memtrace-test") && memfd_vma.deleted);
    assert!(vma_at(&snap, sysv).1.name.starts_with("/SYSV"));
}

fn map_shared(fd: libc::c_int, len: usize) -> usize {
    // SAFETY: maps a file we own.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            fd,
            0,
        )
    };
    assert_ne!(p, libc::MAP_FAILED, "mmap shared failed");
    p as usize
}

#[test]
fn executable_libraries_and_files() {
    let path = std::env::temp_dir().join(format!("memtrace-data-{}.bin", std::process::id()));
    std::fs::write(&path, vec![7u8; 64 * 1024]).expect("write data file");
    let file = std::fs::File::open(&path).expect("open data file");
    // SAFETY: read-only private mapping of our file.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            64 * 1024,
            libc::PROT_READ,
            libc::MAP_PRIVATE,
            std::os::fd::AsRawFd::as_raw_fd(&file),
            0,
        )
    };
    assert_ne!(p, libc::MAP_FAILED);
    let snap = snapshot::capture_self().expect("capture self");
    let _ = std::fs::remove_file(&path);
    let (i, _) = vma_at(&snap, p as usize);
    assert_eq!(snap.classes[i], Category::OtherFile);

    let exe = std::env::current_exe().expect("current exe");
    assert_eq!(snap.exe.as_deref(), Some(exe.as_path()));
    assert!(
        snap.category(Category::Executable).vma_count >= 2,
        "test binary segments"
    );
    for (v, c) in snap.vmas.iter().zip(&snap.classes) {
        if v.path() == exe.to_str().unwrap_or_default() {
            assert_eq!(*c, Category::Executable);
        }
        if v.path().contains("/libc.so") {
            assert_eq!(*c, Category::SharedLibrary, "{}", v.name);
        }
    }
    assert!(snap.category(Category::SharedLibrary).vma_count > 0);
}

struct Stopped(Child);

impl Drop for Stopped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn state_of(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?.1.trim_start().chars().next()
}

fn stopped_child() -> Stopped {
    let child = Command::new("sleep")
        .arg("60")
        .spawn()
        .expect("spawn sleep");
    let pid = child.id();
    let child = Stopped(child);
    // SAFETY: signalling our own child.
    assert_eq!(unsafe { libc::kill(pid as libc::pid_t, libc::SIGSTOP) }, 0);
    let deadline = Instant::now() + Duration::from_secs(10);
    while state_of(pid) != Some('T') {
        assert!(Instant::now() < deadline, "child did not stop");
        std::thread::sleep(Duration::from_millis(5));
    }
    child
}

#[test]
fn totals_equal_smaps_rollup_of_a_stopped_process() {
    let child = stopped_child();
    let pid = child.0.id();
    let snap = snapshot::capture(pid).expect("capture child");
    let rollup = snapshot::read_rollup(pid).expect("read rollup");
    let t = snap.totals;
    // Whole-page fields must match exactly. (The rollup excludes the
    // [vsyscall] gate area, which has no resident pages.)
    let exact = |t: &Totals| {
        [
            t.rss_bytes,
            t.private_bytes,
            t.private_clean_bytes,
            t.private_dirty_bytes,
            t.shared_bytes,
            t.shared_clean_bytes,
            t.shared_dirty_bytes,
            t.referenced_bytes,
            t.anonymous_bytes,
            t.file_backed_bytes,
            t.ksm_bytes,
            t.lazy_free_bytes,
            t.huge_pages_bytes,
            t.anon_huge_pages_bytes,
            t.swap_bytes,
            t.locked_bytes,
        ]
    };
    assert_eq!(exact(&t), exact(&rollup), "smaps totals vs smaps_rollup");
    // PSS: smaps rounds each VMA down to a whole kB, the rollup rounds once.
    let slack = t.vma_count * 1024;
    for (ours, theirs, what) in [
        (t.pss_bytes, rollup.pss_bytes, "Pss"),
        (t.pss_dirty_bytes, rollup.pss_dirty_bytes, "Pss_Dirty"),
        (t.swap_pss_bytes, rollup.swap_pss_bytes, "SwapPss"),
    ] {
        assert!(
            ours <= theirs && theirs - ours < slack.max(1),
            "{what}: {ours} vs rollup {theirs}"
        );
    }
    // And the categories add up.
    let mut sum = Totals::default();
    for c in &snap.categories {
        sum.merge(&c.totals);
    }
    assert_eq!(sum, t);
    assert_eq!(t.vma_count, snap.vmas.len() as u64);
}

#[test]
fn errors_are_specific() {
    // No such process (pids are below 2^22 on Linux).
    assert!(matches!(
        snapshot::capture(99_999_999),
        Err(ProcError::NoSuchProcess { .. })
    ));
    // kthreadd is pid 2 and a kernel thread, when we share its pid namespace.
    if std::fs::read_to_string("/proc/2/comm").is_ok_and(|c| c.trim() == "kthreadd") {
        let err = snapshot::capture(2).expect_err("kernel thread");
        assert!(matches!(err, ProcError::KernelThread { .. }), "{err}");
        assert!(err.to_string().contains("kernel thread"));
    }
    // An exited (zombie) child.
    let mut child = Command::new("true").spawn().expect("spawn true");
    let pid = child.id();
    let deadline = Instant::now() + Duration::from_secs(10);
    while state_of(pid) != Some('Z') {
        assert!(Instant::now() < deadline, "child did not exit");
        std::thread::sleep(Duration::from_millis(5));
    }
    let err = snapshot::capture(pid).expect_err("zombie");
    assert!(matches!(err, ProcError::NoSuchProcess { .. }), "{err}");
    let _ = child.wait();
    let err = snapshot::capture(pid).expect_err("reaped");
    assert!(matches!(err, ProcError::NoSuchProcess { .. }), "{err}");
    assert!(!err.to_string().contains('\n'));
}
