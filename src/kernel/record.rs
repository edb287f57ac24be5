//! RFC 4180 record framing and field splitting over raw bytes (no I/O).
//!
//! One rule decides where a record ends, and both the chunker and the parser use
//! it: a `\n` ends a record unless an odd number of `"` precede it within the
//! record. Keeping a single rule is what makes a chunked parse equal a
//! sequential one, whatever the chunk size.

use memchr::{memchr, memchr2};
use std::ops::Range;

/// Where one record lies in a buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordSpan {
    /// The record's bytes, without its line terminator (`\n` or `\r\n`).
    pub content: Range<usize>,
    /// Where the next record starts.
    pub next: usize,
    /// Physical lines the record occupies (1 plus the newlines inside quotes).
    pub lines: u64,
    /// True when the buffer ended inside a quoted field.
    pub unterminated_quote: bool,
}

/// Frames the record starting at `start`; `None` at the end of `buf`.
pub fn next_record(buf: &[u8], start: usize) -> Option<RecordSpan> {
    if start >= buf.len() {
        return None;
    }
    let mut pos = start;
    let mut in_quote = false;
    let mut newlines = 0u64;
    loop {
        let Some(off) = memchr2(b'"', b'\n', &buf[pos..]) else {
            // A newline that is the buffer's last byte ends no further line.
            let last_line = u64::from(buf[buf.len() - 1] != b'\n');
            return Some(RecordSpan {
                content: start..buf.len(),
                next: buf.len(),
                lines: newlines + last_line,
                unterminated_quote: in_quote,
            });
        };
        let i = pos + off;
        if buf[i] == b'"' {
            in_quote = !in_quote;
        } else if in_quote {
            newlines += 1;
        } else {
            let end = if i > start && buf[i - 1] == b'\r' {
                i - 1
            } else {
                i
            };
            return Some(RecordSpan {
                content: start..end,
                next: i + 1,
                lines: newlines + 1,
                unterminated_quote: false,
            });
        }
        pos = i + 1;
    }
}

/// Bytes a record may take unless configured (`--max-record-bytes`).
pub const DEFAULT_MAX_RECORD_BYTES: usize = 64 * 1024;

/// A record whose framing cannot be trusted, which fails the whole file: a
/// quoted field that never closes, or a record past the size limit (almost
/// always a stray quote that swallowed the lines after it). Lines are 1-based
/// and relative to the buffer the record was framed in until
/// [`RecordError::shifted`] places them in the file; columns are 1-based bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordError {
    /// A quoted field runs to the end of the file.
    UnclosedQuote { line: u64, column: usize },
    /// The record starting at `line` is longer than `max` bytes; `open_quote`
    /// is where the field that was still open `max` bytes in began.
    TooLong {
        line: u64,
        max: usize,
        open_quote: Option<(u64, usize)>,
    },
}

impl std::fmt::Display for RecordError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            RecordError::UnclosedQuote { line, column } => write!(
                f,
                "line {line}, column {column}: a quoted field opens here and is never closed (it runs to the end of the file); a quote inside a field must be doubled and the field quoted"
            ),
            RecordError::TooLong {
                line,
                max,
                open_quote: Some((ql, qc)),
            } => write!(
                f,
                "line {ql}, column {qc}: a quoted field opens here and is still open {max} bytes into the record that starts at line {line} (--max-record-bytes {max}); probably a stray quote: a quote inside a field must be doubled and the field quoted"
            ),
            RecordError::TooLong {
                line,
                max,
                open_quote: None,
            } => write!(
                f,
                "line {line}: the record is longer than --max-record-bytes {max} bytes"
            ),
        }
    }
}

impl std::error::Error for RecordError {}

impl RecordError {
    /// Where the error points: the line and column where the open quote
    /// began, or the line of a record that is too long.
    pub fn position(&self) -> (u64, Option<usize>) {
        match *self {
            RecordError::UnclosedQuote { line, column } => (line, Some(column)),
            RecordError::TooLong {
                open_quote: Some((line, column)),
                ..
            } => (line, Some(column)),
            RecordError::TooLong { line, .. } => (line, None),
        }
    }

    /// The same error with its lines moved down by `base` lines.
    pub fn shifted(self, base: u64) -> Self {
        match self {
            RecordError::UnclosedQuote { line, column } => RecordError::UnclosedQuote {
                line: line + base,
                column,
            },
            RecordError::TooLong {
                line,
                max,
                open_quote,
            } => RecordError::TooLong {
                line: line + base,
                max,
                open_quote: open_quote.map(|(l, c)| (l + base, c)),
            },
        }
    }

    /// The line to look at first: where the open quote is, else where the record starts.
    pub fn line(&self) -> u64 {
        match *self {
            RecordError::UnclosedQuote { line, .. } => line,
            RecordError::TooLong {
                open_quote: Some((l, _)),
                ..
            } => l,
            RecordError::TooLong { line, .. } => line,
        }
    }
}

/// Checks a framed record (`content` of a [`RecordSpan`] starting at physical
/// `line`) against the two rules that fail a file. A record longer than `max`
/// is judged on its first `max + 1` bytes only, so a chunk that ends inside
/// an over-long record (see [`crate::kernel::chunk`]) gives the same error as the
/// whole file.
pub fn check_record(
    record: &[u8],
    unterminated_quote: bool,
    line: u64,
    max: usize,
) -> Option<RecordError> {
    if record.len() > max {
        let prefix = &record[..max.saturating_add(1).min(record.len())];
        let open_quote = open_quote(prefix).map(|at| position(prefix, at, line));
        return Some(RecordError::TooLong {
            line,
            max,
            open_quote,
        });
    }
    if unterminated_quote {
        let at = open_quote(record).unwrap_or(0);
        let (line, column) = position(record, at, line);
        return Some(RecordError::UnclosedQuote { line, column });
    }
    None
}

/// Offset of the quote that opened the field still open at the end of `bytes`.
fn open_quote(bytes: &[u8]) -> Option<usize> {
    let mut open = None;
    for at in memchr::memchr_iter(b'"', bytes) {
        open = match open {
            None => Some(at),
            Some(_) => None,
        };
    }
    open
}

/// (line, 1-based byte column) of offset `at` in a record starting at `line`.
fn position(record: &[u8], at: usize, line: u64) -> (u64, usize) {
    let before = &record[..at];
    let newlines = memchr::memchr_iter(b'\n', before).count() as u64;
    let line_start = memchr::memrchr(b'\n', before).map_or(0, |i| i + 1);
    (line + newlines, at - line_start + 1)
}

/// Why a record could not be split into fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FieldError {
    #[error("a quote (\") appears inside an unquoted field; quote the whole field and double inner quotes")]
    StrayQuote { field: usize },
    #[error("characters follow the closing quote of a quoted field (expected a comma)")]
    TextAfterQuote { field: usize },
    #[error("quoted field is never closed (missing closing quote)")]
    Unterminated { field: usize },
}

impl FieldError {
    /// Zero-based index of the field the error is in.
    pub fn field(&self) -> usize {
        match *self {
            FieldError::StrayQuote { field }
            | FieldError::TextAfterQuote { field }
            | FieldError::Unterminated { field } => field,
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct FieldRef {
    start: usize,
    end: usize,
    in_scratch: bool,
}

/// Reusable field splitter: one per chunk, so splitting a record allocates
/// nothing unless a quoted field contains doubled quotes.
#[derive(Debug, Default)]
pub struct Fields {
    refs: Vec<FieldRef>,
    scratch: Vec<u8>,
}

impl Fields {
    pub fn new() -> Self {
        Self::default()
    }

    /// Splits `record` (framed by [`next_record`], terminator excluded).
    pub fn split(&mut self, record: &[u8]) -> Result<(), FieldError> {
        self.refs.clear();
        self.scratch.clear();
        let len = record.len();
        let mut i = 0;
        loop {
            let field = self.refs.len();
            if i < len && record[i] == b'"' {
                let mut j = i + 1;
                let mut escaped = false;
                let close = loop {
                    let Some(off) = memchr(b'"', &record[j..]) else {
                        return Err(FieldError::Unterminated { field });
                    };
                    let k = j + off;
                    if k + 1 < len && record[k + 1] == b'"' {
                        escaped = true;
                        j = k + 2;
                    } else {
                        break k;
                    }
                };
                if escaped {
                    let start = self.scratch.len();
                    let mut rest = &record[i + 1..close];
                    while let Some(q) = memchr(b'"', rest) {
                        self.scratch.extend_from_slice(&rest[..=q]);
                        rest = &rest[q + 2..];
                    }
                    self.scratch.extend_from_slice(rest);
                    self.refs.push(FieldRef {
                        start,
                        end: self.scratch.len(),
                        in_scratch: true,
                    });
                } else {
                    self.refs.push(FieldRef {
                        start: i + 1,
                        end: close,
                        in_scratch: false,
                    });
                }
                let after = close + 1;
                if after == len {
                    return Ok(());
                }
                if record[after] != b',' {
                    return Err(FieldError::TextAfterQuote { field });
                }
                i = after + 1;
            } else {
                match memchr2(b',', b'"', &record[i..]) {
                    Some(off) if record[i + off] == b'"' => {
                        return Err(FieldError::StrayQuote { field })
                    }
                    Some(off) => {
                        self.refs.push(FieldRef {
                            start: i,
                            end: i + off,
                            in_scratch: false,
                        });
                        i += off + 1;
                    }
                    None => {
                        self.refs.push(FieldRef {
                            start: i,
                            end: len,
                            in_scratch: false,
                        });
                        return Ok(());
                    }
                }
            }
        }
    }

    pub fn len(&self) -> usize {
        self.refs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.refs.is_empty()
    }

    /// Field `i` of the record last split as text, or `None` if it is not
    /// UTF-8. `record` must be that same record, and `text`, when given, the
    /// same bytes already validated (a whole chunk is checked at once, ~9% of
    /// the loader's CPU went to checking each field apart): fields end at
    /// ASCII delimiters, so they are slices of it.
    pub fn text<'a>(
        &'a self,
        record: &'a [u8],
        text: Option<&'a str>,
        i: usize,
    ) -> Option<&'a str> {
        let r = self.refs[i];
        if !r.in_scratch {
            if let Some(s) = text.and_then(|t| t.get(r.start..r.end)) {
                return Some(s);
            }
        }
        std::str::from_utf8(self.get(record, i)).ok()
    }

    /// Field `i` of the record last split; `record` must be that same record.
    pub fn get<'a>(&'a self, record: &'a [u8], i: usize) -> &'a [u8] {
        let r = self.refs[i];
        if r.in_scratch {
            &self.scratch[r.start..r.end]
        } else {
            &record[r.start..r.end]
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(rec: &str) -> Result<Vec<String>, FieldError> {
        let mut f = Fields::new();
        f.split(rec.as_bytes())?;
        Ok((0..f.len())
            .map(|i| String::from_utf8(f.get(rec.as_bytes(), i).to_vec()).unwrap())
            .collect())
    }

    #[test]
    fn frames_lf_crlf_and_quoted_newlines() {
        let buf = b"a,b\r\n\"x\ny\",z\nlast";
        let r1 = next_record(buf, 0).unwrap();
        assert_eq!(&buf[r1.content.clone()], b"a,b");
        assert_eq!(r1.lines, 1);
        let r2 = next_record(buf, r1.next).unwrap();
        assert_eq!(&buf[r2.content.clone()], b"\"x\ny\",z");
        assert_eq!(r2.lines, 2);
        let r3 = next_record(buf, r2.next).unwrap();
        assert_eq!(&buf[r3.content.clone()], b"last");
        assert_eq!(r3.next, buf.len());
        assert!(next_record(buf, r3.next).is_none());
    }

    #[test]
    fn unterminated_quote_runs_to_end() {
        let buf = b"a,\"b\nc\n";
        let r = next_record(buf, 0).unwrap();
        assert!(r.unterminated_quote);
        assert_eq!(r.next, buf.len());
        // Two physical lines, the last newline ending the second.
        assert_eq!(r.lines, 2);
        let buf = b"a,\"b\nc";
        assert_eq!(next_record(buf, 0).unwrap().lines, 2);
    }

    #[test]
    fn runaway_records_name_the_opening_quote() {
        let rec = b"x,y,funny_car\"\nz,w\nlast";
        assert_eq!(
            check_record(rec, true, 11, 1000),
            Some(RecordError::UnclosedQuote {
                line: 11,
                column: 14
            })
        );
        assert_eq!(check_record(rec, false, 11, rec.len()), None);
        // Too long: judged on the first max + 1 bytes.
        let e = check_record(rec, true, 11, 16).unwrap();
        assert_eq!(
            e,
            RecordError::TooLong {
                line: 11,
                max: 16,
                open_quote: Some((11, 14))
            }
        );
        assert_eq!(check_record(&rec[..17], true, 11, 16), Some(e.clone()));
        assert_eq!(e.clone().shifted(100).line(), 111);
        assert!(e.to_string().starts_with("line 11, column 14:"), "{e}");
        // A long line without quotes names its own line.
        let e = check_record(&[b'a'; 50], false, 3, 10).unwrap();
        assert_eq!(e.line(), 3);
        assert!(e.to_string().contains("--max-record-bytes 10"), "{e}");
        // The quote may open on a later line of a multi-line record.
        let rec = b"\"a\nb\",c\nd,\"e";
        assert_eq!(
            check_record(rec, true, 5, 1000),
            Some(RecordError::UnclosedQuote { line: 7, column: 3 })
        );
    }

    #[test]
    fn splits_quoted_and_plain_fields() {
        assert_eq!(fields("a,b,,c").unwrap(), ["a", "b", "", "c"]);
        assert_eq!(fields("a,").unwrap(), ["a", ""]);
        assert_eq!(
            fields("\"a,b\",\"he said \"\"hi\"\"\",c").unwrap(),
            ["a,b", "he said \"hi\"", "c"]
        );
        assert_eq!(fields("\"x\ny\"").unwrap(), ["x\ny"]);
        assert_eq!(fields("\"\"").unwrap(), [""]);
        assert_eq!(fields("\"\"\"\"").unwrap(), ["\""]);
    }

    #[test]
    fn rejects_malformed_quoting() {
        assert_eq!(fields("ab\"c,d"), Err(FieldError::StrayQuote { field: 0 }));
        assert_eq!(
            fields("a,\"b\"x"),
            Err(FieldError::TextAfterQuote { field: 1 })
        );
        assert_eq!(fields("a,\"b"), Err(FieldError::Unterminated { field: 1 }));
    }
}
