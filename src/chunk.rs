//! Splits a buffer into chunks that end on record boundaries (no I/O).
//!
//! One sequential pass decides each boundary with the same quote-parity rule as
//! [`crate::record::next_record`]: counting `"` since the last boundary (memchr
//! speed) tells whether the target offset is inside a quoted field, then the
//! scan moves to the first `\n` outside quotes. Boundaries are found lazily, one
//! chunk ahead of the workers, so only the pages in flight are touched.

use memchr::{memchr2, memchr_iter};
use std::ops::Range;

/// Returns the end (exclusive) of the chunk starting at `from`, a record
/// boundary: the first record boundary at or after `from + target`, or the end.
pub fn next_boundary(buf: &[u8], from: usize, target: usize) -> usize {
    let want = from.saturating_add(target.max(1));
    if want >= buf.len() {
        return buf.len();
    }
    let mut in_quote = memchr_iter(b'"', &buf[from..want]).count() % 2 == 1;
    // A boundary is the position just after a `\n`; if `want` itself is one, take it.
    if !in_quote && buf[want - 1] == b'\n' {
        return want;
    }
    let mut pos = want;
    while let Some(off) = memchr2(b'"', b'\n', &buf[pos..]) {
        let i = pos + off;
        if buf[i] == b'"' {
            in_quote = !in_quote;
        } else if !in_quote {
            return i + 1;
        }
        pos = i + 1;
    }
    buf.len()
}

/// Iterator over chunk ranges of `buf` starting at `start` (a record boundary).
pub struct Chunker<'a> {
    buf: &'a [u8],
    pos: usize,
    target: usize,
}

impl<'a> Chunker<'a> {
    pub fn new(buf: &'a [u8], start: usize, target: usize) -> Self {
        Chunker {
            buf,
            pos: start,
            target,
        }
    }
}

impl Iterator for Chunker<'_> {
    type Item = Range<usize>;
    fn next(&mut self) -> Option<Range<usize>> {
        if self.pos >= self.buf.len() {
            return None;
        }
        let end = next_boundary(self.buf, self.pos, self.target);
        let r = self.pos..end;
        self.pos = end;
        Some(r)
    }
}

/// All chunk ranges at once (tests and benches).
pub fn split(buf: &[u8], start: usize, target: usize) -> Vec<Range<usize>> {
    Chunker::new(buf, start, target).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_cuts_inside_quotes() {
        let buf = b"a,\"x\ny\nz\",b\nc,d\n";
        for target in 1..buf.len() + 2 {
            for r in split(buf, 0, target) {
                assert!(r.end == buf.len() || buf[r.end - 1] == b'\n');
                let quotes = buf[r.clone()].iter().filter(|&&b| b == b'"').count();
                assert_eq!(quotes % 2, 0, "target {target} range {r:?}");
            }
        }
    }

    #[test]
    fn covers_the_buffer_contiguously() {
        let buf = b"1\n22\n333\n4444";
        let chunks = split(buf, 2, 3);
        assert_eq!(chunks.first().unwrap().start, 2);
        assert_eq!(chunks.last().unwrap().end, buf.len());
        for w in chunks.windows(2) {
            assert_eq!(w[0].end, w[1].start);
        }
    }
}
