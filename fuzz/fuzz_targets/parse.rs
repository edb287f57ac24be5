//! Coverage-guided fuzzing of the record/parse/encode core: arbitrary bytes
//! after a fixed header are framed, split, validated and encoded as the
//! loader does, in one piece and in chunks of several sizes. Checks: no
//! panic; chunked == sequential (rows, tuples, rejects and their lines, the
//! fatal error and its line); every physical line is a row, a rejected line,
//! a blank line or the header; raw-text excerpts stay bounded and printable.

#![no_main]

use libfuzzer_sys::fuzz_target;
use tripload::db::dims::Dims;
use tripload::kernel::encode::{encode_in_chunks, physical_lines};
use tripload::kernel::parse::parse_header;

const HEADER: &[u8] = b"region,origin_coord,destination_coord,datetime,datasource\n";

fuzz_target!(|data: &[u8]| {
    let Some((&control, body)) = data.split_first() else {
        return;
    };
    let mut buf = HEADER.to_vec();
    buf.extend_from_slice(body);
    let mut header = parse_header(&buf).expect("the fixed header parses");
    // Small record limits, so that over-long records are reached often.
    header.max_record_bytes = 8 + usize::from(control & 0x0f) * 40;
    let dims = Dims::in_memory();
    let sequential = encode_in_chunks(&buf, &header, usize::MAX, &dims).expect("names resolve");
    for target in [1, 2 + usize::from(control >> 4) * 17, 4096] {
        let chunked = encode_in_chunks(&buf, &header, target, &dims).expect("names resolve");
        assert_eq!(chunked, sequential, "chunk target {target}");
    }
    let s = &sequential;
    assert_eq!(
        s.lines,
        header.lines_before_data + s.rows + s.rejected_lines + s.blank_lines
    );
    assert_eq!(s.rejected_lines, s.rejects.iter().map(|r| r.1).sum::<u64>());
    let physical = physical_lines(&buf);
    match &s.fatal {
        None => assert_eq!(s.lines, physical),
        Some(f) => assert!(f.line() > s.lines && f.line() <= physical, "{f}"),
    }
    let e = tripload::kernel::excerpt::excerpt(body, 100);
    assert!(e.len() <= 100 + 40, "{}", e.len());
    assert!(!e.chars().any(|c| c.is_control()), "{e:?}");
});
