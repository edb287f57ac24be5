//! Quoting raw input safely: every place that shows bytes of a file (errors,
//! rejects, events, `.error.txt`, mail) goes through [`excerpt`], so no
//! output carries a file's content unbounded or with control characters that
//! a terminal, a mail client or the database would act on (no I/O).

use std::fmt::Write;

/// Bytes of raw input shown in messages (headers, values in errors).
pub const MESSAGE_BYTES: usize = 200;

/// `bytes` as printable text of at most about `max` bytes: invalid UTF-8 and
/// control characters (C0, DEL, C1) are escaped (`\n`, `\t`, `\r`, `\xNN`,
/// `\u{NN}`), `\` is doubled, and past `max` the text ends in
/// `…[N bytes in all]`.
pub fn excerpt(bytes: &[u8], max: usize) -> String {
    let mut out = String::with_capacity(bytes.len().min(max) + 24);
    let mut piece = String::new();
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            piece.clear();
            escape_char(c, &mut piece);
            if !push_within(&mut out, &piece, max, bytes.len()) {
                return out;
            }
        }
        for &b in chunk.invalid() {
            piece.clear();
            let _ = write!(piece, "\\x{b:02X}");
            if !push_within(&mut out, &piece, max, bytes.len()) {
                return out;
            }
        }
    }
    out
}

/// Appends `piece` if it fits in `max`; otherwise ends `out` with the
/// truncation mark and returns false.
fn push_within(out: &mut String, piece: &str, max: usize, total: usize) -> bool {
    if out.len() + piece.len() > max {
        let _ = write!(out, "…[{total} bytes in all]");
        return false;
    }
    out.push_str(piece);
    true
}

fn escape_char(c: char, out: &mut String) {
    match c {
        '\n' => out.push_str("\\n"),
        '\r' => out.push_str("\\r"),
        '\t' => out.push_str("\\t"),
        '\\' => out.push_str("\\\\"),
        c if (c as u32) < 0x20 || c as u32 == 0x7F => {
            let _ = write!(out, "\\x{:02X}", c as u32);
        }
        c if (0x80..0xA0).contains(&(c as u32)) => {
            let _ = write!(out, "\\u{{{:X}}}", c as u32);
        }
        c => out.push(c),
    }
}

/// [`excerpt`] of text (a name, a path) for messages.
pub fn quoted(text: &str) -> String {
    excerpt(text.as_bytes(), MESSAGE_BYTES)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_controls_and_invalid_utf8() {
        assert_eq!(excerpt(b"Praha", 100), "Praha");
        assert_eq!(excerpt("Zürich".as_bytes(), 100), "Zürich");
        assert_eq!(excerpt(b"a\0b\x1b[31m\x7f", 100), "a\\x00b\\x1B[31m\\x7F");
        assert_eq!(excerpt(b"x\n\r\ty\\", 100), "x\\n\\r\\ty\\\\");
        assert_eq!(excerpt(b"bad\xff\xfe", 100), "bad\\xFF\\xFE");
        assert_eq!(excerpt("c1\u{85}".as_bytes(), 100), "c1\\u{85}");
    }

    #[test]
    fn caps_the_length_and_says_how_long_it_was() {
        let long = vec![b'a'; 10_000];
        let e = excerpt(&long, 100);
        assert!(e.starts_with(&"a".repeat(100)), "{e}");
        assert!(e.ends_with("…[10000 bytes in all]"), "{e}");
        assert!(e.len() < 130);
        // Escapes count against the cap too, and never split.
        let e = excerpt(&[0u8; 1000], 10);
        assert_eq!(e, "\\x00\\x00…[1000 bytes in all]");
        // Multi-byte characters are never split.
        let e = excerpt("ééé".as_bytes(), 3);
        assert_eq!(e, "é…[6 bytes in all]");
    }
}
