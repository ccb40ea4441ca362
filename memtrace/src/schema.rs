//! The JSON output contract shared by every command: its version and its
//! conventions. The schema itself is `docs/memtrace.schema.json`, described
//! in `docs/json-schema.md`; a test validates everything memtrace prints
//! against it.
//!
//! - Every object carries `schema_version` ([`SCHEMA_VERSION`]) and a `type`.
//! - Sizes are integers in bytes with a `_bytes` suffix (or `len`).
//! - Addresses and file offsets are hex strings (`"0x7f8a40000000"`): they
//!   can exceed 2^53, beyond which JSON numbers lose precision in many
//!   parsers. [`hex`] and its friends serialize them so.

use serde::Serializer;

/// Version of the JSON output. Adding a field keeps it; renaming or
/// removing one, or changing its meaning, bumps it.
///
/// 2: the trace output (`memtrace --json`) joined the schema: every line
/// has `schema_version`, and addresses in it became hex strings.
pub const SCHEMA_VERSION: u32 = 2;

/// Serialize an address as `"0x…"`.
pub fn hex<S: Serializer>(v: &u64, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&format_args!("{v:#x}"))
}

/// Serialize an optional address as `"0x…"` or null.
pub fn hex_opt<S: Serializer>(v: &Option<u64>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(v) => hex(v, s),
        None => s.serialize_none(),
    }
}

/// Serialize address ranges as `[["0x…","0x…"], …]`.
pub fn hex_ranges<S: Serializer>(v: &[[u64; 2]], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(
        v.iter()
            .map(|[a, b]| [format!("{a:#x}"), format!("{b:#x}")]),
    )
}

/// Parse `"0x…"` (as [`hex`] writes it) back; for readers and tests.
pub fn parse_hex(s: &str) -> Option<u64> {
    u64::from_str_radix(s.strip_prefix("0x")?, 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Serialize)]
    struct A {
        #[serde(serialize_with = "hex")]
        a: u64,
        #[serde(serialize_with = "hex_opt")]
        b: Option<u64>,
    }

    #[test]
    fn addresses_are_hex_strings() {
        let v = serde_json::to_string(&A {
            a: 0x7fff_0000_1000,
            b: None,
        })
        .expect("serialize");
        assert_eq!(v, r#"{"a":"0x7fff00001000","b":null}"#);
        assert_eq!(parse_hex("0x7fff00001000"), Some(0x7fff_0000_1000));
        assert_eq!(parse_hex("12"), None);
    }
}
