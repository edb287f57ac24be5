//! PostgreSQL binary COPY encoding of trips, and the per-chunk kernel that
//! frames, validates and encodes a whole chunk into one buffer (no I/O).
//!
//! Layout follows the server's binary COPY format (see tokio-postgres'
//! `binary_copy.rs`): a signature header, then per tuple an i16 field count and
//! for each field an i32 length and the value in the type's `recv` format;
//! geometry goes as EWKB (little-endian point with SRID 4326).

use crate::kernel::parse::{parse_trip, Header, RowError, RowFault};
use crate::kernel::record::{check_record, next_record, Fields, RecordError};
use geo_types::Point;

/// Columns in the order the tuples carry them.
pub const COPY_COLUMNS: &str = "region_id, datasource_id, origin, destination, datetime, file_id";

/// `PGCOPY\n\xff\r\n\0`, flags (0), header extension length (0).
pub const COPY_HEADER: &[u8] = b"PGCOPY\n\xff\r\n\0\0\0\0\0\0\0\0\0";
/// File trailer: a field count of -1.
pub const COPY_TRAILER: &[u8] = &[0xff, 0xff];

pub const SRID: u32 = 4326;
const EWKB_POINT_WITH_SRID: u32 = 0x2000_0001;
/// Seconds between the Unix epoch and PostgreSQL's (2000-01-01).
const PG_EPOCH_OFFSET_US: i64 = 946_684_800 * 1_000_000;
/// Bytes one encoded tuple takes.
pub const TUPLE_BYTES: usize = 2 + 2 * (4 + 2) + 2 * (4 + 25) + (4 + 8) + (4 + 4);

fn put_ewkb_point(buf: &mut Vec<u8>, p: Point<f64>) {
    buf.extend_from_slice(&25i32.to_be_bytes());
    buf.push(1); // little-endian
    buf.extend_from_slice(&EWKB_POINT_WITH_SRID.to_le_bytes());
    buf.extend_from_slice(&SRID.to_le_bytes());
    buf.extend_from_slice(&p.x().to_le_bytes());
    buf.extend_from_slice(&p.y().to_le_bytes());
}

/// Appends one tuple to `buf`.
pub fn encode_trip(
    buf: &mut Vec<u8>,
    region_id: i16,
    datasource_id: i16,
    origin: Point<f64>,
    destination: Point<f64>,
    datetime_us: i64,
    file_id: i32,
) {
    buf.extend_from_slice(&6i16.to_be_bytes());
    buf.extend_from_slice(&2i32.to_be_bytes());
    buf.extend_from_slice(&region_id.to_be_bytes());
    buf.extend_from_slice(&2i32.to_be_bytes());
    buf.extend_from_slice(&datasource_id.to_be_bytes());
    put_ewkb_point(buf, origin);
    put_ewkb_point(buf, destination);
    buf.extend_from_slice(&8i32.to_be_bytes());
    buf.extend_from_slice(&(datetime_us - PG_EPOCH_OFFSET_US).to_be_bytes());
    buf.extend_from_slice(&4i32.to_be_bytes());
    buf.extend_from_slice(&file_id.to_be_bytes());
}

/// Resolves dimension names to the smallint ids stored in `trips`; `E` is
/// the error of the store behind it (the database's dictionary in the loader).
pub trait Dictionary<E>: Sync {
    fn region_id(&self, name: &str) -> Result<i16, E>;
    fn datasource_id(&self, name: &str) -> Result<i16, E>;
}

/// The names a chunk has already resolved, looked up before the shared
/// dictionary: a file has a handful of regions and datasources, and the
/// dictionary's lock and hash on every row were ~7% of the loader's CPU
/// samples (15M-row load). Bounded, so a file of endless distinct names only
/// falls back to the dictionary.
#[derive(Default)]
struct NameCache {
    regions: Vec<(String, i16)>,
    sources: Vec<(String, i16)>,
}

impl NameCache {
    const MAX: usize = 32;

    fn get<E>(
        cache: &mut Vec<(String, i16)>,
        name: &str,
        resolve: impl FnOnce(&str) -> Result<i16, E>,
    ) -> Result<i16, E> {
        if let Some(&(_, id)) = cache.iter().find(|(n, _)| *n == name) {
            return Ok(id);
        }
        let id = resolve(name)?;
        if cache.len() < Self::MAX {
            cache.push((name.to_owned(), id));
        }
        Ok(id)
    }

    fn region<E>(&mut self, name: &str, dict: &dyn Dictionary<E>) -> Result<i16, E> {
        Self::get(&mut self.regions, name, |n| dict.region_id(n))
    }

    fn datasource<E>(&mut self, name: &str, dict: &dyn Dictionary<E>) -> Result<i16, E> {
        Self::get(&mut self.sources, name, |n| dict.datasource_id(n))
    }
}

/// Bytes of a rejected record kept to show in the rejects file.
pub const RAW_EXCERPT_BYTES: usize = 4096;

/// A rejected row, positioned relative to its chunk until the in-order stage
/// adds the chunk's starting line.
#[derive(Debug, Clone, PartialEq)]
pub struct Reject {
    /// Physical line the record starts on.
    pub line: u64,
    /// Physical lines the record spans (each counts as a rejected line).
    pub lines: u64,
    pub fault: RowFault,
    /// The record's first [`RAW_EXCERPT_BYTES`] bytes.
    pub raw: Vec<u8>,
    /// The record's length in bytes.
    pub raw_len: usize,
}

/// Does nothing but accept names: for a file that already failed, whose
/// remaining chunks are parsed only to list their bad lines.
pub struct NoDictionary;

impl<E> Dictionary<E> for NoDictionary {
    fn region_id(&self, _: &str) -> Result<i16, E> {
        Ok(0)
    }
    fn datasource_id(&self, _: &str) -> Result<i16, E> {
        Ok(0)
    }
}

/// What one chunk turned into. Every physical line is accounted for:
/// `lines == rows + rejected_lines + blank_lines` (the lines of a `fatal`
/// record and after it are not counted: the file fails).
#[derive(Debug, Default)]
pub struct Encoded {
    pub tuples: Vec<u8>,
    pub rows: u64,
    /// Physical lines in the chunk up to a `fatal` record (to position the
    /// next chunk's rejects).
    pub lines: u64,
    /// Physical lines of the rejected records.
    pub rejected_lines: u64,
    /// Lines with nothing on them (or only `\r`), skipped.
    pub blank_lines: u64,
    pub rejects: Vec<Reject>,
    /// A record that fails the whole file; encoding stopped there.
    pub fatal: Option<RecordError>,
    /// Bytes of input the chunk covered.
    pub bytes: usize,
    /// Aggregates of the chunk's trips (when rollups are maintained).
    pub rollup: crate::kernel::rollup::Rollup,
}

/// Frames, validates and encodes every record of `chunk` (which starts and
/// ends on record boundaries, or ends inside a record over
/// `header.max_record_bytes`). Blank lines are skipped. Stops at the first
/// record that fails the file ([`check_record`]). Line numbers in the rejects
/// are 1-based within the chunk.
pub fn encode_chunk<E>(
    chunk: &[u8],
    header: &Header,
    file_id: i32,
    dict: &dyn Dictionary<E>,
    grid: Option<&crate::kernel::grid::Grid>,
) -> Result<Encoded, E> {
    let mut out = Encoded {
        tuples: Vec::with_capacity(chunk.len() / 100 * TUPLE_BYTES + TUPLE_BYTES),
        bytes: chunk.len(),
        ..Encoded::default()
    };
    let mut enc = RecordEncoder {
        header,
        file_id,
        dict,
        grid,
        fields: Fields::new(),
        names: NameCache::default(),
    };
    // Checked once here rather than field by field; a chunk that is not all
    // UTF-8 falls back to checking each field, which finds the bad ones.
    let text = std::str::from_utf8(chunk).ok();
    let mut pos = 0;
    while let Some(span) = next_record(chunk, pos) {
        let line = out.lines + 1;
        let record = &chunk[span.content.clone()];
        if let Some(fatal) = check_record(
            record,
            span.unterminated_quote,
            line,
            header.max_record_bytes,
        ) {
            out.fatal = Some(fatal);
            break;
        }
        out.lines += span.lines;
        pos = span.next;
        if record.is_empty() {
            out.blank_lines += span.lines;
            continue;
        }
        let record_text = text.and_then(|t| t.get(span.content.clone()));
        if let Some(fault) = enc.record(&mut out, record, record_text)? {
            out.rejected_lines += span.lines;
            out.rejects.push(Reject {
                line,
                lines: span.lines,
                fault,
                raw: record[..record.len().min(RAW_EXCERPT_BYTES)].to_vec(),
                raw_len: record.len(),
            });
        }
    }
    debug_assert_eq!(
        out.lines,
        out.rows + out.rejected_lines + out.blank_lines,
        "every line of a chunk is a row, a rejected line or a blank line"
    );
    Ok(out)
}

/// What [`encode_chunk`] keeps from one record to the next: the file's
/// header and ids, the dictionary, the grid, and reused buffers.
struct RecordEncoder<'a, E> {
    header: &'a Header,
    file_id: i32,
    dict: &'a dyn Dictionary<E>,
    grid: Option<&'a crate::kernel::grid::Grid>,
    fields: Fields,
    names: NameCache,
}

impl<E> RecordEncoder<'_, E> {
    /// Encodes one non-blank record into `out` (and its rollup); returns the
    /// fault of a rejected row. `Err` only when the dictionary fails.
    #[inline]
    fn record(
        &mut self,
        out: &mut Encoded,
        record: &[u8],
        text: Option<&str>,
    ) -> Result<Option<RowFault>, E> {
        if let Err(e) = self.fields.split(record) {
            return Ok(Some(RowFault {
                column: None,
                error: RowError::Csv(e),
            }));
        }
        let t = match parse_trip(self.header, &self.fields, record, text) {
            Ok(t) => t,
            Err(f) => return Ok(Some(f)),
        };
        let r = self.names.region(t.region, self.dict)?;
        let d = self.names.datasource(t.datasource, self.dict)?;
        encode_trip(
            &mut out.tuples,
            r,
            d,
            t.origin,
            t.destination,
            t.datetime_us,
            self.file_id,
        );
        if let Some(g) = self.grid {
            out.rollup.add(
                g,
                r,
                d,
                (t.origin.x(), t.origin.y()),
                (t.destination.x(), t.destination.y()),
                t.datetime_us,
            );
        }
        out.rows += 1;
        Ok(None)
    }
}

/// Physical lines in `bytes`: its newlines, plus one for a last line
/// without one. Independent of the framing, to check the accounting.
pub fn physical_lines(bytes: &[u8]) -> u64 {
    let newlines = memchr::memchr_iter(b'\n', bytes).count() as u64;
    newlines + u64::from(bytes.last().is_some_and(|&b| b != b'\n'))
}

/// A whole file encoded chunk by chunk, as the loader's in-order stage
/// folds the chunks (rejects placed at their file line, stop at the first
/// fatal record): what tests and the fuzz target compare between chunk sizes.
#[derive(Debug, Default, PartialEq)]
pub struct FileOutcome {
    pub tuples: Vec<u8>,
    pub rows: u64,
    /// (line, lines, fault) of every reject, in file order.
    pub rejects: Vec<(u64, u64, RowFault)>,
    pub rejected_lines: u64,
    pub blank_lines: u64,
    /// Lines counted up to a fatal record (all of them without one),
    /// header included.
    pub lines: u64,
    pub fatal: Option<RecordError>,
}

/// Encodes `buf` (whose header is `header`) in chunks of about `target`
/// bytes; `usize::MAX` is the sequential parse.
pub fn encode_in_chunks<E>(
    buf: &[u8],
    header: &Header,
    target: usize,
    dict: &dyn Dictionary<E>,
) -> Result<FileOutcome, E> {
    let mut out = FileOutcome {
        lines: header.lines_before_data,
        ..FileOutcome::default()
    };
    let chunks = crate::kernel::chunk::Chunker::new(buf, header.data_start, target)
        .max_record_bytes(header.max_record_bytes);
    for r in chunks {
        let enc = encode_chunk(&buf[r], header, 1, dict, None)?;
        let base = out.lines;
        out.tuples.extend_from_slice(&enc.tuples);
        out.rows += enc.rows;
        out.rejects.extend(
            enc.rejects
                .into_iter()
                .map(|rj| (base + rj.line, rj.lines, rj.fault)),
        );
        out.rejected_lines += enc.rejected_lines;
        out.blank_lines += enc.blank_lines;
        out.lines += enc.lines;
        if let Some(f) = enc.fatal {
            out.fatal = Some(f.shifted(base));
            break;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::sync::Mutex;

    /// A dictionary in memory: ids in order of first appearance, per dimension.
    #[derive(Default)]
    struct Names {
        regions: Mutex<HashMap<String, i16>>,
        sources: Mutex<HashMap<String, i16>>,
    }

    fn id_of(map: &Mutex<HashMap<String, i16>>, name: &str) -> Result<i16, String> {
        let mut m = map.lock().map_err(|e| e.to_string())?;
        let next = m.len() as i16 + 1;
        Ok(*m.entry(name.to_owned()).or_insert(next))
    }

    impl Dictionary<String> for Names {
        fn region_id(&self, name: &str) -> Result<i16, String> {
            id_of(&self.regions, name)
        }
        fn datasource_id(&self, name: &str) -> Result<i16, String> {
            id_of(&self.sources, name)
        }
    }

    #[test]
    fn tuple_layout() {
        let mut buf = Vec::new();
        encode_trip(
            &mut buf,
            3,
            4,
            Point::new(1.5, -2.0),
            Point::new(0.0, 0.0),
            PG_EPOCH_OFFSET_US + 7,
            9,
        );
        assert_eq!(buf.len(), TUPLE_BYTES);
        assert_eq!(&buf[0..2], &6i16.to_be_bytes());
        assert_eq!(&buf[6..8], &3i16.to_be_bytes());
        assert_eq!(&buf[14..18], &25i32.to_be_bytes());
        assert_eq!(buf[18], 1);
        assert_eq!(&buf[19..23], &0x2000_0001u32.to_le_bytes());
        assert_eq!(&buf[23..27], &4326u32.to_le_bytes());
        assert_eq!(&buf[27..35], &1.5f64.to_le_bytes());
        assert_eq!(
            &buf[buf.len() - 16..buf.len() - 8],
            &[0, 0, 0, 0, 0, 0, 0, 7]
        );
        assert_eq!(&buf[buf.len() - 4..], &9i32.to_be_bytes());
    }

    #[test]
    fn names_resolve_to_the_dictionarys_ids_past_the_chunk_cache() {
        // More distinct regions than the per-chunk cache holds, repeated and
        // interleaved: every row must carry the dictionary's id for its name.
        let mut csv = String::from("region,origin_coord,destination_coord,datetime,datasource\n");
        for i in 0..200 {
            csv.push_str(&format!(
                "r{},POINT (1 2),POINT (3 4),2018-05-28 09:03:40,s{}\n",
                (i * 7) % 45,
                i % 3
            ));
        }
        let buf = csv.into_bytes();
        let header = crate::kernel::parse::parse_header(&buf).unwrap();
        let dims = Names::default();
        let e = encode_chunk(&buf[header.data_start..], &header, 1, &dims, None).unwrap();
        assert_eq!(e.rows, 200);
        assert!(e.rejects.is_empty());
        for (i, t) in e.tuples.chunks(TUPLE_BYTES).enumerate() {
            let region = dims.region_id(&format!("r{}", (i * 7) % 45)).unwrap();
            let source = dims.datasource_id(&format!("s{}", i % 3)).unwrap();
            assert_eq!(&t[6..8], &region.to_be_bytes(), "row {i}");
            assert_eq!(&t[12..14], &source.to_be_bytes(), "row {i}");
        }
    }

    fn encode_all(buf: &[u8], max: usize) -> (crate::kernel::parse::Header, Encoded) {
        let mut header = crate::kernel::parse::parse_header(buf).unwrap();
        header.max_record_bytes = max;
        let dims = Names::default();
        let e = encode_chunk(&buf[header.data_start..], &header, 1, &dims, None).unwrap();
        (header, e)
    }

    const ROW: &str = "Turin,POINT (7.6 45.0),POINT (7.7 45.1),2018-05-29 11:00:00,cheap_mobile";

    /// Rows + rejected lines + blank lines + header lines = physical lines,
    /// with a rejected record over three lines counting three.
    #[test]
    fn every_line_is_accounted_for() {
        let head = "region,origin_coord,destination_coord,datetime,datasource\n";
        let text = format!("\n{head}{ROW}\n\r\n\n\"bad\nthree\nlines\",x\n{ROW}\nnot,a,row\n{ROW}");
        let (header, e) = encode_all(text.as_bytes(), 1000);
        assert_eq!(header.lines_before_data, 2);
        assert_eq!((e.rows, e.rejected_lines, e.blank_lines), (3, 4, 2));
        assert_eq!(
            e.rejects
                .iter()
                .map(|r| (r.line, r.lines))
                .collect::<Vec<_>>(),
            [(4, 3), (8, 1)]
        );
        assert_eq!(
            header.lines_before_data + e.rows + e.rejected_lines + e.blank_lines,
            physical_lines(text.as_bytes())
        );
        assert_eq!(physical_lines(text.as_bytes()), 11);
    }

    /// A stray quote at the end of line 11 fails the file at that line, and
    /// encoding stops there (nothing after it is rows or rejects).
    #[test]
    fn a_stray_quote_fails_the_file_at_its_line() {
        let head = "region,origin_coord,destination_coord,datetime,datasource\n";
        let mut text = head.to_string();
        for i in 2..=1000 {
            if i == 11 {
                text.push_str(&ROW.replace("cheap_mobile", "funny_car\""));
            } else {
                text.push_str(ROW);
            }
            text.push('\n');
        }
        let (_, e) = encode_all(text.as_bytes(), 1 << 20);
        assert_eq!(e.rows, 9);
        assert!(e.rejects.is_empty());
        let col = ROW.len() - "cheap_mobile".len() + "funny_car".len() + 1;
        assert_eq!(
            e.fatal,
            Some(RecordError::UnclosedQuote {
                line: 10,
                column: col
            })
        );
        // With the default limit the record is too long instead, same line.
        let (_, e) = encode_all(text.as_bytes(), 65536);
        assert_eq!(e.fatal.as_ref().map(|f| f.line()), Some(10));
        assert!(
            matches!(e.fatal, Some(RecordError::TooLong { open_quote: Some((10, c)), .. }) if c == col)
        );
    }

    #[test]
    fn rejects_keep_a_bounded_excerpt() {
        let head = "region,origin_coord,destination_coord,datetime,datasource\n";
        let text = format!("{head}{}\n", "x".repeat(20_000));
        let (_, e) = encode_all(text.as_bytes(), 65536);
        assert_eq!(e.rejects.len(), 1);
        assert_eq!(e.rejects[0].raw.len(), RAW_EXCERPT_BYTES);
        assert_eq!(e.rejects[0].raw_len, 20_000);
    }

    /// The chunk is checked for UTF-8 once: names with multi-byte characters,
    /// quoted and escaped ones, come out whole whether the chunk is all valid
    /// (one check) or holds a bad byte somewhere (each field checked, only the
    /// bad field's row rejected, at its line and column).
    #[test]
    fn utf8_is_checked_per_chunk_and_bad_fields_still_found() {
        let head = "region,origin_coord,destination_coord,datetime,datasource\n";
        let rows = [
            "Zürich,POINT (8.5 47.3),POINT (8.6 47.4),2018-05-28 09:03:40,app_ü",
            "\"Praha \"\"Smíchov\"\"\",POINT (14.4 50.07),POINT (14.5 50.1),2018-05-28 10:00:00,\"a,b\"",
            "Turin,POINT (7.6 45.0),POINT (7.7 45.1),2018-05-29 11:00:00,cheap_mobile",
        ];
        let names = [
            ("Zürich", "app_ü"),
            ("Praha \"Smíchov\"", "a,b"),
            ("Turin", "cheap_mobile"),
        ];
        for bad in [false, true] {
            let mut buf = format!("{head}{}\n", rows.join("\n")).into_bytes();
            if bad {
                // A fourth row whose datasource is not UTF-8.
                buf.extend_from_slice(
                    b"Turin,POINT (7.6 45.0),POINT (7.7 45.1),2018-05-29 11:00:00,x\xff\n",
                );
            }
            let header = crate::kernel::parse::parse_header(&buf).unwrap();
            let dims = Names::default();
            let e = encode_chunk(&buf[header.data_start..], &header, 1, &dims, None).unwrap();
            assert_eq!(e.rows, 3, "with a non-UTF-8 row: {bad}");
            for (t, (region, source)) in e.tuples.chunks(TUPLE_BYTES).zip(names) {
                assert_eq!(&t[6..8], &dims.region_id(region).unwrap().to_be_bytes());
                assert_eq!(
                    &t[12..14],
                    &dims.datasource_id(source).unwrap().to_be_bytes()
                );
            }
            if bad {
                assert_eq!(e.rejects.len(), 1);
                assert_eq!(e.rejects[0].line, 4);
                assert_eq!(
                    e.rejects[0].fault.column,
                    Some(crate::kernel::parse::Column::Datasource)
                );
                assert_eq!(e.rejects[0].fault.error, RowError::NotUtf8);
            } else {
                assert!(e.rejects.is_empty());
            }
        }
    }
}
