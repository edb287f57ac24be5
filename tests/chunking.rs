//! Property tests of the pure core: a chunked parse equals the sequential parse
//! for any chunk size, on CSV with quoted commas, quotes, newlines and CRLF;
//! both agree with the `csv` crate; and chunked encoding gives the same COPY
//! bytes and the same reject line numbers as encoding the file in one piece;
//! and damaged files (stray quotes, control bytes, invalid UTF-8, truncation,
//! CR-only line ends, very long lines) parse the same in any chunking and
//! account for every physical line.

use proptest::prelude::*;
use tripload::db::dims::Dims;
use tripload::kernel::chunk;
use tripload::kernel::encode::{encode_chunk, encode_in_chunks, physical_lines};
use tripload::kernel::parse::parse_header;
use tripload::kernel::record::{next_record, Fields};

/// (line, fields) of every non-blank record, splitting at chunk boundaries.
fn parse_chunked(buf: &[u8], target: usize) -> Vec<(u64, Vec<Vec<u8>>)> {
    let mut out = Vec::new();
    let mut line_base = 0;
    let mut fields = Fields::new();
    for r in chunk::split(buf, 0, target) {
        let c = &buf[r];
        let mut pos = 0;
        let mut lines = 0;
        while let Some(span) = next_record(c, pos) {
            let line = line_base + lines + 1;
            lines += span.lines;
            pos = span.next;
            let rec = &c[span.content];
            if rec.is_empty() {
                continue;
            }
            fields.split(rec).expect("generated CSV is valid");
            out.push((
                line,
                (0..fields.len())
                    .map(|i| fields.get(rec, i).to_vec())
                    .collect(),
            ));
        }
        line_base += lines;
    }
    out
}

fn field() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-zA-Z0-9 ._-]{0,8}",
        // Needs quoting: commas, quotes, LF, CRLF.
        "[a-z,\"\n]{0,8}",
        "[a-z]{0,3}\r\n[a-z]{0,3}",
    ]
}

fn quote(f: &str) -> String {
    if f.contains([',', '"', '\n', '\r']) || f.is_empty() {
        format!("\"{}\"", f.replace('"', "\"\""))
    } else {
        f.to_string()
    }
}

fn csv_text() -> impl Strategy<Value = (String, Vec<Vec<String>>)> {
    (
        prop::collection::vec(prop::collection::vec(field(), 3), 1..40),
        any::<bool>(),
    )
        .prop_map(|(rows, crlf)| {
            let eol = if crlf { "\r\n" } else { "\n" };
            let text: String = rows
                .iter()
                .map(|r| r.iter().map(|f| quote(f)).collect::<Vec<_>>().join(",") + eol)
                .collect();
            (text, rows)
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn chunked_parse_equals_sequential_parse((text, rows) in csv_text(), target in 1usize..200) {
        let buf = text.as_bytes();
        let sequential = parse_chunked(buf, usize::MAX);
        let chunked = parse_chunked(buf, target);
        prop_assert_eq!(&chunked, &sequential);
        // And both equal what was generated, and what the csv crate reads.
        let got: Vec<Vec<String>> = sequential
            .iter()
            .map(|(_, f)| f.iter().map(|b| String::from_utf8(b.clone()).unwrap()).collect())
            .collect();
        prop_assert_eq!(&got, &rows);
        let mut rdr = csv::ReaderBuilder::new().has_headers(false).from_reader(buf);
        let oracle: Vec<Vec<String>> = rdr
            .records()
            .map(|r| r.unwrap().iter().map(str::to_string).collect())
            .collect();
        prop_assert_eq!(&got, &oracle);
        // Line numbers count physical lines, including quoted newlines.
        let mut line = 1u64;
        for ((l, _), r) in sequential.iter().zip(&rows) {
            prop_assert_eq!(*l, line);
            line += 1 + r.iter().map(|f| f.matches('\n').count() as u64).sum::<u64>();
        }
    }

    #[test]
    fn chunked_encode_equals_whole_file_encode(seed in 0u64..1000, target in 64usize..4096, bad_every in 3usize..20) {
        // Generated trips with some rows broken and a quoted multi-line field.
        let clean = tripload::gen::trips_csv(300, seed);
        let text = String::from_utf8(clean).unwrap();
        let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
        for (i, l) in lines.iter_mut().enumerate().skip(1) {
            if i % bad_every == 0 {
                *l = l.replacen("POINT (", "POINT (999 ", 1);
            } else if i % bad_every == 1 {
                *l = l.replacen(",POINT", ",\"POINT", 1).replacen("),POINT", ")\n\",POINT", 1);
            }
        }
        let buf = (lines.join("\n") + "\n").into_bytes();
        let header = parse_header(&buf).unwrap();
        let dims = Dims::in_memory();
        let whole = encode_chunk(&buf[header.data_start..], &header, 1, &dims, None).unwrap();
        let mut tuples = Vec::new();
        let mut rejects = Vec::new();
        let mut line_base = 0;
        for r in chunk::split(&buf, header.data_start, target) {
            let enc = encode_chunk(&buf[r], &header, 1, &dims, None).unwrap();
            tuples.extend_from_slice(&enc.tuples);
            rejects.extend(enc.rejects.iter().map(|rj| (line_base + rj.line, rj.fault.clone())));
            line_base += enc.lines;
        }
        prop_assert!(!whole.rejects.is_empty());
        prop_assert_eq!(tuples, whole.tuples);
        let whole_rejects: Vec<_> = whole.rejects.iter().map(|rj| (rj.line, rj.fault.clone())).collect();
        prop_assert_eq!(rejects, whole_rejects);
    }
}

#[test]
fn header_is_consumed_exactly_once() {
    // The trap of per-batch HEADER options: the first row of each chunk must not be eaten.
    let buf = tripload::gen::trips_csv(5000, 3);
    let header = parse_header(&buf).unwrap();
    let dims = Dims::in_memory();
    let rows: u64 = chunk::split(&buf, header.data_start, 1000)
        .into_iter()
        .map(|r| encode_chunk(&buf[r], &header, 1, &dims, None).unwrap().rows)
        .sum();
    assert_eq!(rows, 5000);
}

/// One way to damage a valid file.
#[derive(Debug, Clone)]
enum Damage {
    InsertQuote(usize),
    RemoveQuoteOrByte(usize),
    InsertControl(usize, u8),
    InsertInvalidUtf8(usize, u8),
    Truncate(usize),
    CrOnlyLineEnds(usize, usize),
    LongLine(usize, usize, bool),
    BlankLines(usize, bool),
}

fn damage() -> impl Strategy<Value = Damage> {
    let at = any::<usize>();
    prop_oneof![
        at.prop_map(Damage::InsertQuote),
        at.prop_map(Damage::RemoveQuoteOrByte),
        (at, prop_oneof![0u8..0x20, Just(0x7f)]).prop_map(|(a, b)| Damage::InsertControl(a, b)),
        (at, 0x80u8..=0xff).prop_map(|(a, b)| Damage::InsertInvalidUtf8(a, b)),
        at.prop_map(Damage::Truncate),
        (at, 0usize..2000).prop_map(|(a, n)| Damage::CrOnlyLineEnds(a, n)),
        (at, 100usize..80_000, any::<bool>()).prop_map(|(a, n, q)| Damage::LongLine(a, n, q)),
        (at, any::<bool>()).prop_map(|(a, crlf)| Damage::BlankLines(a, crlf)),
    ]
}

/// Applies `d` past the header (so the file still has one).
fn apply(buf: &mut Vec<u8>, body: usize, d: &Damage) {
    let pos = |a: usize, len: usize| body + a % (len - body + 1);
    match *d {
        Damage::InsertQuote(a) => buf.insert(pos(a, buf.len()), b'"'),
        Damage::RemoveQuoteOrByte(a) => {
            if buf.len() > body {
                let p = pos(a, buf.len() - 1);
                let q = buf[p..]
                    .iter()
                    .position(|&b| b == b'"')
                    .map_or(p, |i| p + i);
                buf.remove(q);
            }
        }
        Damage::InsertControl(a, b) | Damage::InsertInvalidUtf8(a, b) => {
            buf.insert(pos(a, buf.len()), b)
        }
        Damage::Truncate(a) => buf.truncate(pos(a, buf.len())),
        Damage::CrOnlyLineEnds(a, n) => {
            let p = pos(a, buf.len());
            let end = (p + n).min(buf.len());
            for b in buf[p..end].iter_mut() {
                if *b == b'\n' {
                    *b = b'\r';
                }
            }
        }
        Damage::LongLine(a, n, quoted) => {
            let p = pos(a, buf.len());
            let mut long = vec![b'x'; n];
            if quoted {
                long[n / 2] = b'"';
            }
            long.push(b'\n');
            buf.splice(p..p, long);
        }
        Damage::BlankLines(a, crlf) => {
            let p = pos(a, buf.len());
            let blank: &[u8] = if crlf { b"\r\n\r\n" } else { b"\n\n" };
            buf.splice(p..p, blank.iter().copied());
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    /// Whatever the damage: no panic; chunked encoding equals sequential
    /// encoding (rows, tuples, rejects with their lines, the fatal error and
    /// its line) for several chunk sizes; and every physical line is a row,
    /// a rejected line, a blank line or the header (up to a fatal record).
    #[test]
    fn damaged_files_parse_the_same_in_chunks_and_account_for_every_line(
        rows in 1u64..60,
        seed in 0u64..1000,
        damages in prop::collection::vec(damage(), 1..6),
        max_record in prop_oneof![Just(65536usize), 64usize..3000],
        target in 1usize..5000,
    ) {
        let mut buf = tripload::gen::trips_csv(rows, seed);
        let body = parse_header(&buf).unwrap().data_start;
        for d in &damages {
            apply(&mut buf, body, d);
        }
        let Ok(mut header) = parse_header(&buf) else {
            return Ok(());
        };
        header.max_record_bytes = max_record;
        let dims = Dims::in_memory();
        let sequential = encode_in_chunks(&buf, &header, usize::MAX, &dims).unwrap();
        for t in [1, 7, 64, target] {
            let chunked = encode_in_chunks(&buf, &header, t, &dims).unwrap();
            prop_assert_eq!(&chunked, &sequential, "chunk target {}", t);
        }
        let s = &sequential;
        prop_assert_eq!(
            s.lines,
            header.lines_before_data + s.rows + s.rejected_lines + s.blank_lines
        );
        prop_assert_eq!(
            s.rejected_lines,
            s.rejects.iter().map(|r| r.1).sum::<u64>()
        );
        let physical = physical_lines(&buf);
        match &s.fatal {
            None => prop_assert_eq!(s.lines, physical),
            Some(f) => {
                prop_assert!(f.line() <= physical && f.line() > s.lines, "{f} of {physical} lines, {} counted", s.lines);
            }
        }
    }
}

/// The issue's file: 1,000 rows whose line 11 ends in `funny_car"`. Every
/// chunk size finds the same fatal error at line 11, and no chunk scans more
/// than the record limit past its target.
#[test]
fn a_stray_quote_is_the_same_fatal_error_in_any_chunking() {
    let clean = tripload::gen::trips_csv(999, 7);
    let text = String::from_utf8(clean).unwrap();
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    lines[10].push_str("funny_car\"");
    let buf = (lines.join("\n") + "\n").into_bytes();
    let header = parse_header(&buf).unwrap();
    let dims = Dims::in_memory();
    let sequential = encode_in_chunks(&buf, &header, usize::MAX, &dims).unwrap();
    let fatal = sequential.fatal.clone().expect("a fatal error");
    assert_eq!(fatal.line(), 11, "{fatal}");
    assert_eq!(sequential.rows, 9);
    for target in [1, 100, 4096, 1 << 20] {
        let chunked = encode_in_chunks(&buf, &header, target, &dims).unwrap();
        assert_eq!(chunked, sequential, "target {target}");
    }
    // The chunker stops within the limit of the target instead of at the end.
    let first = chunk::Chunker::new(&buf, header.data_start, 2000)
        .max_record_bytes(header.max_record_bytes)
        .next()
        .unwrap();
    assert!(first.end <= header.data_start + 2000 + header.max_record_bytes + 1);
    assert!(first.end < buf.len());
}
