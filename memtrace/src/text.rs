//! Text from the target (region names, paths, file names, symbols) made
//! safe for a terminal: a name must not be able to move the cursor, change
//! colours, or print a fake line of memtrace's own. JSON output needs none
//! of this (serde escapes control characters). Folded stacks, and the SVG
//! flame graphs drawn from them, take names through [`folded_frame`].

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

/// `s` as one frame of a folded stack (`root;…;leaf COUNT`, the input of
/// flame graph tools): [`printable`], with the format's separators made
/// `_` — `;` between frames, and spaces, as readers take the last one or
/// two space-separated fields of a line as its counts (inferno does) — and
/// with what XML cannot hold or line readers may split on escaped too
/// (U+FFFE, U+FFFF; U+2028, U+2029), since the SVG is drawn from it.
pub fn folded_frame(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in printable(s).chars() {
        match c {
            ';' | ' ' => out.push('_'),
            '\u{2028}' | '\u{2029}' | '\u{fffe}' | '\u{ffff}' => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    out
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

    #[test]
    fn folded_frames_hold_no_separator_and_no_control_character() {
        assert_eq!(folded_frame("app::grow"), "app::grow");
        assert_eq!(folded_frame("a\nb"), "a\\nb");
        assert_eq!(folded_frame("\x1b[31mred\x07"), "\\x1b[31mred\\x07");
        assert_eq!(folded_frame("a;b c"), "a_b_c");
        assert_eq!(
            folded_frame("<T as Tr>::f 4096"),
            "<T_as_Tr>::f_4096",
            "no count can be read off a frame"
        );
        assert_eq!(folded_frame("x\u{ffff}\u{2028}"), "x\\u{ffff}\\u{2028}");
    }
}
