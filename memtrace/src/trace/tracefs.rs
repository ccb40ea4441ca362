//! tracefs: find or mount it, and check the tracepoint record layouts the
//! eBPF programs read.

use std::{collections::HashMap, fs, io, path::Path};

use super::TraceError;

/// Where tracefs is (or gets) mounted.
pub(crate) const TRACEFS: &str = "/sys/kernel/tracing";
const DEBUGFS_TRACING: &str = "/sys/kernel/debug/tracing";

/// Path of the mounted tracefs; mounts it at `/sys/kernel/tracing` when it
/// is missing (fresh machines do not mount it).
pub fn ensure_mounted() -> Result<&'static Path, TraceError> {
    for dir in [TRACEFS, DEBUGFS_TRACING] {
        if Path::new(dir).join("events").is_dir() {
            return Ok(Path::new(dir));
        }
    }
    let target = c"/sys/kernel/tracing";
    // SAFETY: static NUL-terminated strings; no data argument.
    let rc = unsafe {
        libc::mount(
            c"nodev".as_ptr(),
            target.as_ptr(),
            c"tracefs".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(TraceError::Tracefs {
            source: io::Error::last_os_error(),
        });
    }
    Ok(Path::new(TRACEFS))
}

/// Field offsets of one tracepoint's record, from its `format` file.
pub fn field_offsets(
    tracefs: &Path,
    category: &str,
    name: &str,
) -> Result<HashMap<String, usize>, TraceError> {
    let path = tracefs
        .join("events")
        .join(category)
        .join(name)
        .join("format");
    let text = fs::read_to_string(&path).map_err(|source| TraceError::MissingTracepoint {
        category: category.to_owned(),
        name: name.to_owned(),
        path: path.clone(),
        source,
    })?;
    Ok(parse_format(&text))
}

/// Parse `field:TYPE NAME;\toffset:N;\tsize:M;…` lines into NAME → N.
fn parse_format(text: &str) -> HashMap<String, usize> {
    let mut out = HashMap::new();
    for line in text.lines() {
        let line = line.trim();
        let Some(rest) = line.strip_prefix("field:") else {
            continue;
        };
        let mut parts = rest.split(';');
        let (Some(decl), Some(offset)) = (parts.next(), parts.next()) else {
            continue;
        };
        let Some(offset) = offset
            .trim()
            .strip_prefix("offset:")
            .and_then(|o| o.parse().ok())
        else {
            continue;
        };
        // The name is the last word of the declaration, minus any array suffix.
        let Some(name) = decl.split_whitespace().last() else {
            continue;
        };
        let name = name.split('[').next().unwrap_or(name);
        out.insert(name.to_string(), offset);
    }
    out
}

/// What the eBPF programs assume about each record; verified before attach.
pub fn check_layouts(tracefs: &Path, follow_forks: bool) -> Result<(), TraceError> {
    let expect = |cat: &str, tp: &str, fields: &[(&str, usize)]| -> Result<(), TraceError> {
        let offsets = field_offsets(tracefs, cat, tp)?;
        for (field, want) in fields {
            match offsets.get(*field) {
                Some(got) if got == want => {}
                got => {
                    return Err(TraceError::Layout(format!(
                        "{cat}:{tp} field `{field}` is at offset {got:?}, memtrace's eBPF \
                         programs expect {want}"
                    )));
                }
            }
        }
        Ok(())
    };
    for (name, args) in super::SYSCALLS {
        let fields: Vec<(&str, usize)> = args
            .iter()
            .enumerate()
            .map(|(i, a)| (*a, 16 + 8 * i))
            .collect();
        expect("syscalls", &format!("sys_enter_{name}"), &fields)?;
        expect("syscalls", &format!("sys_exit_{name}"), &[("ret", 16)])?;
    }
    // The fork program is attached only with --follow-forks.
    if follow_forks {
        expect("sched", "sched_process_fork", &[("child_pid", 20)])?;
    }
    expect("sched", "sched_process_exec", &[("filename", 8)])?;
    expect("sched", "sched_process_exit", &[("group_dead", 32)])?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_format_offsets() {
        let text = "name: sys_enter_mmap\nID: 1\nformat:\n\
            \tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;\n\
            \tfield:int __syscall_nr;\toffset:8;\tsize:4;\tsigned:1;\n\
            \tfield:unsigned long addr;\toffset:16;\tsize:8;\tsigned:0;\n\
            \tfield:char comm[16];\toffset:24;\tsize:16;\tsigned:0;\n\
            \nprint fmt: \"x\"\n";
        let o = parse_format(text);
        assert_eq!(o.get("addr"), Some(&16));
        assert_eq!(o.get("comm"), Some(&24));
        assert_eq!(o.get("__syscall_nr"), Some(&8));
    }
}
