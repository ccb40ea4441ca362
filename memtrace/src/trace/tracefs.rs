//! tracefs: find or mount it, and check the syscall tracepoint record
//! layouts the eBPF programs read.

use std::{
    collections::{HashMap, hash_map::Entry},
    fmt, fs, io,
    path::Path,
};

use memtrace_common::tracepoints::{self, Field, TracepointField};

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

/// Where a field is in a tracepoint record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FieldLayout {
    pub offset: usize,
    pub size: usize,
}

impl fmt::Display for FieldLayout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "offset {} ({} bytes)", self.offset, self.size)
    }
}

impl From<Field> for FieldLayout {
    fn from(field: Field) -> Self {
        FieldLayout {
            offset: field.offset,
            size: field.size,
        }
    }
}

/// The fields of one tracepoint's record, by name, from its `format` file.
pub fn fields(
    tracefs: &Path,
    category: &str,
    name: &str,
) -> Result<HashMap<String, FieldLayout>, TraceError> {
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

/// Parse `field:TYPE NAME;\toffset:N;\tsize:M;…` lines into NAME → (N, M).
fn parse_format(text: &str) -> HashMap<String, FieldLayout> {
    let mut out = HashMap::new();
    for line in text.lines() {
        let line = line.trim();
        let Some(rest) = line.strip_prefix("field:") else {
            continue;
        };
        let mut parts = rest.split(';').map(str::trim);
        let (Some(decl), Some(offset), Some(size)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let number = |part: &str, key: &str| part.strip_prefix(key)?.parse().ok();
        let (Some(offset), Some(size)) = (number(offset, "offset:"), number(size, "size:")) else {
            continue;
        };
        // The name is the last word of the declaration, minus any array suffix.
        let Some(name) = decl.split_whitespace().last() else {
            continue;
        };
        let name = name.split('[').next().unwrap_or(name);
        out.insert(name.to_string(), FieldLayout { offset, size });
    }
    out
}

/// Check every syscall record field of the kernel/eBPF contract
/// ([`memtrace_common::tracepoints::fields`]) against the running kernel's
/// records before attaching.
pub fn check_layouts(tracefs: &Path) -> Result<(), TraceError> {
    let mut formats: HashMap<&str, HashMap<String, FieldLayout>> = HashMap::new();
    for TracepointField {
        category,
        tracepoint,
        field,
    } in tracepoints::fields()
    {
        let format = match formats.entry(tracepoint) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(e) => e.insert(fields(tracefs, category, tracepoint)?),
        };
        let found = format.get(field.name).copied();
        if found != Some(field.into()) {
            return Err(TraceError::Layout {
                category,
                tracepoint,
                field: field.name,
                found,
                expected: field.into(),
            });
        }
    }
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
        let at = |offset, size| Some(FieldLayout { offset, size });
        assert_eq!(o.get("addr").copied(), at(16, 8));
        assert_eq!(o.get("comm").copied(), at(24, 16));
        assert_eq!(o.get("__syscall_nr").copied(), at(8, 4));
    }

    /// A tracefs tree holding a `format` file for every tracepoint of the
    /// contract, as the kernel writes them.
    fn fake_tracefs(dir: &Path, shift: Option<(&str, &str)>) {
        let mut formats: HashMap<(&str, &str), String> = HashMap::new();
        for tf in tracepoints::fields() {
            let text = formats.entry((tf.category, tf.tracepoint)).or_default();
            let offset =
                tf.field.offset + usize::from(shift == Some((tf.tracepoint, tf.field.name))) * 8;
            text.push_str(&format!(
                "\tfield:long {};\toffset:{offset};\tsize:{};\tsigned:0;\n",
                tf.field.name, tf.field.size
            ));
        }
        for ((category, tracepoint), text) in formats {
            let d = dir.join("events").join(category).join(tracepoint);
            fs::create_dir_all(&d).expect("create tracepoint dir");
            fs::write(
                d.join("format"),
                format!("name: {tracepoint}\nformat:\n{text}"),
            )
            .expect("write format");
        }
    }

    #[test]
    fn check_layouts_names_the_field_that_moved() {
        let dir = std::env::temp_dir().join(format!("memtrace-tracefs-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fake_tracefs(&dir.join("ok"), None);
        assert!(check_layouts(&dir.join("ok")).is_ok());

        fake_tracefs(&dir.join("moved"), Some(("sys_exit_mremap", "ret")));
        let err = check_layouts(&dir.join("moved")).expect_err("ret moved");
        assert!(
            matches!(
                err,
                TraceError::Layout {
                    tracepoint: "sys_exit_mremap",
                    field: "ret",
                    found: Some(FieldLayout {
                        offset: 24,
                        size: 8
                    }),
                    expected: FieldLayout {
                        offset: 16,
                        size: 8
                    },
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(
            err.to_string().starts_with(
                "syscalls:sys_exit_mremap field `ret` is at offset 24 (8 bytes), \
                 memtrace's eBPF programs read it at offset 16 (8 bytes)"
            ),
            "{err}"
        );

        fs::remove_dir_all(dir.join("ok/events/syscalls/sys_exit_brk")).expect("rm brk");
        assert!(matches!(
            check_layouts(&dir.join("ok")),
            Err(TraceError::MissingTracepoint { .. })
        ));
        let _ = fs::remove_dir_all(&dir);
    }
}
