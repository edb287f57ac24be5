//! Property tests of the pure core: a chunked parse equals the sequential parse
//! for any chunk size, on CSV with quoted commas, quotes, newlines and CRLF;
//! both agree with the `csv` crate; and chunked encoding gives the same COPY
//! bytes and the same reject line numbers as encoding the file in one piece.

use proptest::prelude::*;
use tripload::chunk;
use tripload::dims::Dims;
use tripload::encode::encode_chunk;
use tripload::parse::parse_header;
use tripload::record::{next_record, Fields};

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
