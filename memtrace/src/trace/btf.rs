//! Just enough of the kernel's BTF (`/sys/kernel/btf/vmlinux`) to find
//! struct member offsets and the prototypes of raw tracepoints, which the
//! eBPF programs need and which differ between kernel builds.
//!
//! Format: `Documentation/bpf/btf.rst`. Every type record is walked once to
//! index it by id; the few lookups by name scan the index (cheaper than
//! hashing a hundred thousand names, which would cost startup tens of
//! milliseconds).

use std::{io, path::Path};

const MAGIC: u16 = 0xeb9f;

const KIND_INT: u32 = 1;
const KIND_PTR: u32 = 2;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_TYPEDEF: u32 = 8;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_VAR: u32 = 14;
const KIND_DATASEC: u32 = 15;
const KIND_DECL_TAG: u32 = 17;
const KIND_ENUM64: u32 = 19;

/// Why BTF could not be read. Shown as the cause of
/// [`super::TraceError::Btf`], through the chain as that error's causes
/// are: the message leaves its own cause to `source()`.
#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    #[error("cannot read {path}")]
    Read {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("malformed BTF: {0}")]
    Malformed(&'static str),
}

/// One type record: kind, name, `size` (or referenced type) and where its
/// trailing data starts.
#[derive(Clone, Copy, Debug)]
struct Type {
    kind: u32,
    kind_flag: bool,
    vlen: usize,
    name_off: u32,
    size_or_type: u32,
    data: usize,
}

/// Parsed BTF: the type records, indexed by id.
pub struct Btf {
    bytes: Vec<u8>,
    strings: std::ops::Range<usize>,
    /// By type id; id 0 is `void`.
    types: Vec<Type>,
}

/// A struct member: byte offset and type id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Member {
    pub offset: u32,
    pub type_id: u32,
}

impl Btf {
    /// The running kernel's BTF.
    pub fn from_kernel() -> Result<Btf, BtfError> {
        Btf::from_file(Path::new("/sys/kernel/btf/vmlinux"))
    }

    pub fn from_file(path: &Path) -> Result<Btf, BtfError> {
        let bytes = std::fs::read(path).map_err(|source| BtfError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Btf::parse(bytes)
    }

    /// Parse little-endian BTF (the only byte order memtrace's programs
    /// run on).
    pub fn parse(bytes: Vec<u8>) -> Result<Btf, BtfError> {
        let u16_at = |off: usize| {
            bytes
                .get(off..off + 2)
                .map(|b| u16::from_le_bytes([b[0], b[1]]))
        };
        if u16_at(0) != Some(MAGIC) {
            return Err(BtfError::Malformed("bad magic (not little-endian BTF)"));
        }
        let word = |off: usize| read_u32(&bytes, off).ok_or(BtfError::Malformed("short header"));
        let hdr_len = word(4)? as usize;
        let (type_off, type_len) = (word(8)? as usize, word(12)? as usize);
        let (str_off, str_len) = (word(16)? as usize, word(20)? as usize);
        let span = |off: usize, len: usize| {
            let start = hdr_len.checked_add(off)?;
            let end = start.checked_add(len)?;
            (end <= bytes.len()).then_some(start..end)
        };
        let types_range = span(type_off, type_len).ok_or(BtfError::Malformed("type section"))?;
        let strings = span(str_off, str_len).ok_or(BtfError::Malformed("string section"))?;

        let mut types = vec![Type {
            kind: 0,
            kind_flag: false,
            vlen: 0,
            name_off: 0,
            size_or_type: 0,
            data: 0,
        }];
        let mut at = types_range.start;
        while at < types_range.end {
            let field = |i: usize| read_u32(&bytes, at + 4 * i).ok_or(BtfError::Malformed("type"));
            let (name_off, info, size_or_type) = (field(0)?, field(1)?, field(2)?);
            let kind = (info >> 24) & 0x1f;
            let vlen = (info & 0xffff) as usize;
            let data = at + 12;
            let extra = match kind {
                KIND_INT | KIND_VAR | KIND_DECL_TAG => 4,
                KIND_ARRAY => 12,
                KIND_STRUCT | KIND_UNION | KIND_DATASEC | KIND_ENUM64 => 12 * vlen,
                KIND_ENUM | KIND_FUNC_PROTO => 8 * vlen,
                _ => 0,
            };
            types.push(Type {
                kind,
                kind_flag: info >> 31 != 0,
                vlen,
                name_off,
                size_or_type,
                data,
            });
            at = data + extra;
        }
        if at != types_range.end {
            return Err(BtfError::Malformed("type section ends inside a type"));
        }
        Ok(Btf {
            bytes,
            strings,
            types,
        })
    }

    /// The NUL-terminated name at `off` in the string section.
    fn string(&self, off: u32) -> &[u8] {
        let Some(start) = self.strings.start.checked_add(off as usize) else {
            return b"";
        };
        let bytes = self.bytes.get(start..self.strings.end).unwrap_or_default();
        let end = bytes.iter().position(|b| *b == 0).unwrap_or(bytes.len());
        &bytes[..end]
    }

    /// The first type of `kind` called `name` (for structs, one with
    /// members: not a forward declaration).
    fn named(&self, name: &str, kind: u32) -> Option<&Type> {
        self.types.iter().find(|t| {
            t.kind == kind
                && (kind != KIND_STRUCT || t.vlen > 0)
                && self.string(t.name_off) == name.as_bytes()
        })
    }

    /// Size in bytes of `struct name`.
    pub fn struct_size(&self, name: &str) -> Option<u32> {
        self.named(name, KIND_STRUCT).map(|t| t.size_or_type)
    }

    /// Member `member` of `struct ty`, also inside its anonymous structs
    /// and unions (`pt_regs.cs` is in one). Bitfields are not members one
    /// can read this way.
    pub fn member(&self, ty: &str, member: &str) -> Option<Member> {
        self.member_in(self.named(ty, KIND_STRUCT)?, member, 0)
    }

    fn member_in(&self, t: &Type, member: &str, depth: u32) -> Option<Member> {
        if !matches!(t.kind, KIND_STRUCT | KIND_UNION) || depth > 8 {
            return None;
        }
        (0..t.vlen).find_map(|i| {
            let at = t.data + 12 * i;
            let name = self.string(read_u32(&self.bytes, at)?);
            let type_id = read_u32(&self.bytes, at + 4)?;
            let raw = read_u32(&self.bytes, at + 8)?;
            let (bits, bitfield) = if t.kind_flag {
                (raw & 0xff_ffff, raw >> 24 != 0)
            } else {
                (raw, false)
            };
            if bitfield || bits % 8 != 0 {
                return None;
            }
            if name.is_empty() {
                let inner = self.types.get(type_id as usize)?;
                let found = self.member_in(inner, member, depth + 1)?;
                return Some(Member {
                    offset: found.offset.checked_add(bits / 8)?,
                    ..found
                });
            }
            (name == member.as_bytes()).then_some(Member {
                offset: bits / 8,
                type_id,
            })
        })
    }

    /// Number of arguments of raw tracepoint `name` (its `TP_PROTO`), from
    /// the function type behind `btf_trace_NAME` less the leading data
    /// pointer the kernel passes to every probe.
    pub fn raw_tracepoint_args(&self, name: &str) -> Option<usize> {
        let typedef = self.named(&format!("btf_trace_{name}"), KIND_TYPEDEF)?;
        let ptr = self.types.get(typedef.size_or_type as usize)?;
        if ptr.kind != KIND_PTR {
            return None;
        }
        let proto = self.types.get(ptr.size_or_type as usize)?;
        (proto.kind == KIND_FUNC_PROTO).then(|| proto.vlen.saturating_sub(1))
    }
}

fn read_u32(bytes: &[u8], off: usize) -> Option<u32> {
    let b = bytes.get(off..off.checked_add(4)?)?;
    Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A BTF blob: `int`, `struct s { int a; int b; union { int c; }; }`
    /// (b at byte 4, c at 8), a typedef `btf_trace_t` to a pointer to
    /// `void (void *, int)`.
    fn sample() -> Vec<u8> {
        let strings = b"\0int\0s\0a\0b\0c\0btf_trace_t\0".to_vec();
        let name = |s: &str| {
            let needle = format!("\0{s}\0");
            strings
                .windows(needle.len())
                .position(|w| w == needle.as_bytes())
                .map(|p| p as u32 + 1)
                .expect("name in table")
        };
        let mut types = Vec::new();
        let mut push = |words: &[u32]| {
            for w in words {
                types.extend_from_slice(&w.to_le_bytes());
            }
        };
        // 1: int, 4 bytes, 32 bits.
        push(&[name("int"), KIND_INT << 24, 4, 32]);
        // 2: struct s, 12 bytes, three members.
        push(&[name("s"), KIND_STRUCT << 24 | 3, 12]);
        push(&[name("a"), 1, 0]);
        push(&[name("b"), 1, 32]);
        push(&[0, 7, 64]);
        // 3: func proto (void *, int) -> void.
        push(&[0, KIND_FUNC_PROTO << 24 | 2, 0]);
        push(&[0, 4, 0, 1]);
        // 4: pointer to void.
        push(&[0, KIND_PTR << 24, 0]);
        // 5: pointer to 3; 6: typedef btf_trace_t to 5.
        push(&[0, KIND_PTR << 24, 3]);
        push(&[name("btf_trace_t"), KIND_TYPEDEF << 24, 5]);
        // 7: union { int c; }.
        push(&[0, KIND_UNION << 24 | 1, 4]);
        push(&[name("c"), 1, 0]);
        let mut out = Vec::new();
        out.extend_from_slice(&MAGIC.to_le_bytes());
        out.extend_from_slice(&[1, 0]);
        for w in [
            24,
            0,
            types.len() as u32,
            types.len() as u32,
            strings.len() as u32,
        ] {
            out.extend_from_slice(&w.to_le_bytes());
        }
        out.extend_from_slice(&types);
        out.extend_from_slice(&strings);
        out
    }

    #[test]
    fn finds_members_sizes_and_prototypes() {
        let btf = Btf::parse(sample()).expect("parses");
        assert_eq!(btf.struct_size("s"), Some(12));
        assert_eq!(btf.member("s", "c").map(|m| m.offset), Some(8));
        assert_eq!(
            btf.member("s", "b"),
            Some(Member {
                offset: 4,
                type_id: 1
            })
        );
        assert_eq!(btf.member("s", "d"), None);
        assert_eq!(btf.member("nothing", "a"), None);
        assert_eq!(btf.raw_tracepoint_args("t"), Some(1));
        assert_eq!(btf.raw_tracepoint_args("u"), None);
    }

    #[test]
    fn rejects_truncated_or_foreign_data() {
        let mut bytes = sample();
        assert!(Btf::parse(bytes[..30].to_vec()).is_err());
        bytes[0] = 0;
        assert!(Btf::parse(bytes).is_err());
        assert!(Btf::parse(Vec::new()).is_err());
    }
}
