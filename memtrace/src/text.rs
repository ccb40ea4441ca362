//! Text from the target (region names, paths, file names, symbols) made
//! safe for a terminal: a name must not be able to move the cursor, change
//! colours, or print a fake line of memtrace's own. JSON output needs none
//! of this (serde escapes control characters).

use std::{borrow::Cow, fmt::Write as _};

/// `s` with every control character (C0, DEL, C1) and every bidirectional
/// override escaped (`\n`, `\t`, `\x1b`, `\u{202e}`); unchanged, without
/// copying, when there is none.
pub fn printable(s: &str) -> Cow<'_, str> {
    if !s.chars().any(needs_escape) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x80 && needs_escape(c) => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c if needs_escape(c) => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

fn needs_escape(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_what_a_terminal_would_obey() {
        assert!(matches!(printable("demo-cache"), Cow::Borrowed(_)));
        assert_eq!(printable("a\nb"), "a\\nb");
        assert_eq!(printable("\x1b[2J"), "\\x1b[2J");
        assert_eq!(printable("x\u{9b}31m"), "x\\u{9b}31m");
        assert_eq!(printable("abc\u{202e}cba"), "abc\\u{202e}cba");
        assert_eq!(printable("\n=== Summary ==="), "\\n=== Summary ===");
        assert_eq!(printable("café ✓"), "café ✓");
    }
}
