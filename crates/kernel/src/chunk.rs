//! Splits a buffer into chunks that end on record boundaries (no I/O).
//!
//! One sequential pass decides each boundary with the same quote-parity rule as
//! [`crate::record::next_record`]: counting `"` since the last boundary (memchr
//! speed) tells whether the target offset is inside a quoted field, then the
//! scan moves to the first `\n` outside quotes. Boundaries are found lazily, one
//! chunk ahead of the workers, so only the pages in flight are touched.
//!
//! With a record size limit the scan also stops early: once it has gone more
//! than the limit past the target without a boundary, the record it is in is
//! over the limit and fails the file anyway, so the chunk ends there instead
//! of scanning on (a stray quote would otherwise be followed to the end of
//! the file). The record cut there is judged by
//! [`crate::record::check_record`] on its first `limit + 1` bytes, exactly
//! as a sequential parse judges it.

use memchr::{memchr2, memchr_iter};
use std::ops::Range;

/// Returns the end (exclusive) of the chunk starting at `from`, a record
/// boundary: the first record boundary at or after `from + target`, or the end.
pub fn next_boundary(buf: &[u8], from: usize, target: usize) -> usize {
    next_boundary_within(buf, from, target, usize::MAX)
}

/// [`next_boundary`], but a record found longer than `max_record` bytes may
/// be cut (see the module doc).
pub fn next_boundary_within(buf: &[u8], from: usize, target: usize, max_record: usize) -> usize {
    let want = from.saturating_add(target.max(1));
    if want >= buf.len() {
        return buf.len();
    }
    let mut in_quote = memchr_iter(b'"', &buf[from..want]).count() % 2 == 1;
    // A boundary is the position just after a `\n`; if `want` itself is one, take it.
    if !in_quote && buf[want - 1] == b'\n' {
        return want;
    }
    // Every byte from `want` on, up to the boundary, is in the record that
    // holds byte `want - 1`: past `limit` that record has over `max_record` bytes.
    let limit = want
        .saturating_add(max_record)
        .saturating_add(1)
        .min(buf.len());
    let mut pos = want;
    while let Some(off) = memchr2(b'"', b'\n', &buf[pos..limit]) {
        let i = pos + off;
        if buf[i] == b'"' {
            in_quote = !in_quote;
        } else if !in_quote {
            return i + 1;
        }
        pos = i + 1;
    }
    limit
}

/// Iterator over chunk ranges of `buf` starting at `start` (a record boundary).
pub struct Chunker<'a> {
    buf: &'a [u8],
    pos: usize,
    target: usize,
    max_record: usize,
}

impl<'a> Chunker<'a> {
    pub fn new(buf: &'a [u8], start: usize, target: usize) -> Self {
        Chunker {
            buf,
            pos: start,
            target,
            max_record: usize::MAX,
        }
    }

    /// Lets a chunk end inside a record longer than `max` bytes (the one
    /// the encode kernel will fail the file for), instead of scanning on.
    pub fn max_record_bytes(mut self, max: usize) -> Self {
        self.max_record = max;
        self
    }
}

impl Iterator for Chunker<'_> {
    type Item = Range<usize>;
    fn next(&mut self) -> Option<Range<usize>> {
        if self.pos >= self.buf.len() {
            return None;
        }
        let end = next_boundary_within(self.buf, self.pos, self.target, self.max_record);
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
    fn stops_early_in_an_over_long_record() {
        // A stray quote on the second line runs to the end of the buffer.
        let mut buf = b"a,b\nc,d\"\n".to_vec();
        for _ in 0..1000 {
            buf.extend_from_slice(b"e,f\n");
        }
        assert_eq!(next_boundary(&buf, 0, 6), buf.len());
        let cut = next_boundary_within(&buf, 0, 6, 100);
        assert_eq!(cut, 6 + 100 + 1);
        // The record in the cut (from line 2) is over the limit.
        assert!(cut - 4 > 100);
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
