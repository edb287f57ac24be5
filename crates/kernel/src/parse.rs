//! Header resolution and row validation: bytes of one record in, a typed trip
//! or a reason out (no I/O).
//!
//! Validation is strict because the database must never be the one to refuse a
//! row: a row the server refused would abort the whole file's COPY, so every
//! rule the schema enforces is checked here first, with a message that names
//! the column.

use crate::record::{FieldError, Fields};
use geo_types::Point;
use std::fmt;

/// The columns a trip file must have; matched by name, in any order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Column {
    Region,
    OriginCoord,
    DestinationCoord,
    Datetime,
    Datasource,
}

impl Column {
    pub const ALL: [Column; 5] = [
        Column::Region,
        Column::OriginCoord,
        Column::DestinationCoord,
        Column::Datetime,
        Column::Datasource,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Column::Region => "region",
            Column::OriginCoord => "origin_coord",
            Column::DestinationCoord => "destination_coord",
            Column::Datetime => "datetime",
            Column::Datasource => "datasource",
        }
    }
}

impl fmt::Display for Column {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// File-level problems: the file cannot be loaded at all.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    #[error("the file is empty (a header row naming the columns region, origin_coord, destination_coord, datetime, datasource is required)")]
    Empty,
    #[error("line {line}: the header row is not valid CSV: {source}")]
    Malformed { line: u64, source: FieldError },
    #[error("the header row is not valid UTF-8")]
    NotUtf8,
    #[error("missing required column(s): {missing} (the header has: {found})")]
    MissingColumns { missing: String, found: String },
    #[error("column {name:?} appears more than once in the header")]
    DuplicateColumn { name: String },
}

/// Where each required column sits in a record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    index: [usize; 5],
    /// Number of fields in the header; every row must have as many.
    pub width: usize,
    /// Extra columns that are not loaded.
    pub ignored: Vec<String>,
    /// Byte offset where the first data record starts.
    pub data_start: usize,
    /// Physical lines before `data_start` (BOM, blank lines, header).
    pub lines_before_data: u64,
    /// A longer record fails the file (`--max-record-bytes`; see
    /// [`crate::record::check_record`]).
    pub max_record_bytes: usize,
}

impl Header {
    pub fn index(&self, c: Column) -> usize {
        self.index[c as usize]
    }
}

const BOM: &[u8] = b"\xEF\xBB\xBF";

/// Reads the header row (after an optional BOM and blank lines).
pub fn parse_header(buf: &[u8]) -> Result<Header, HeaderError> {
    let mut pos = if buf.starts_with(BOM) { BOM.len() } else { 0 };
    let mut lines = 0u64;
    let span = loop {
        let Some(span) = crate::record::next_record(buf, pos) else {
            return Err(HeaderError::Empty);
        };
        lines += span.lines;
        pos = span.next;
        if !span.content.is_empty() {
            break span;
        }
    };
    let record = &buf[span.content.clone()];
    let mut fields = Fields::new();
    fields
        .split(record)
        .map_err(|source| HeaderError::Malformed {
            line: lines,
            source,
        })?;
    let mut index = [usize::MAX; 5];
    let mut ignored = Vec::new();
    let mut names = Vec::new();
    for i in 0..fields.len() {
        let name = std::str::from_utf8(fields.get(record, i))
            .map_err(|_| HeaderError::NotUtf8)?
            .trim();
        match Column::ALL
            .iter()
            .find(|c| c.name().eq_ignore_ascii_case(name))
        {
            Some(&c) if index[c as usize] != usize::MAX => {
                return Err(HeaderError::DuplicateColumn {
                    name: crate::excerpt::quoted(name),
                })
            }
            Some(&c) => index[c as usize] = i,
            None => ignored.push(crate::excerpt::quoted(name)),
        }
        names.push(name);
    }
    let missing: Vec<&str> = Column::ALL
        .iter()
        .filter(|c| index[**c as usize] == usize::MAX)
        .map(|c| c.name())
        .collect();
    if !missing.is_empty() {
        return Err(HeaderError::MissingColumns {
            missing: missing.join(", "),
            found: crate::excerpt::excerpt(
                names.join(", ").as_bytes(),
                crate::excerpt::MESSAGE_BYTES,
            ),
        });
    }
    Ok(Header {
        index,
        width: fields.len(),
        ignored,
        data_start: span.next,
        lines_before_data: lines,
        max_record_bytes: crate::record::DEFAULT_MAX_RECORD_BYTES,
    })
}

/// Why a row was rejected.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RowError {
    #[error("{0}")]
    Csv(FieldError),
    #[error("expected {expected} fields (as in the header), found {found}")]
    FieldCount { expected: usize, found: usize },
    #[error("value is empty")]
    Empty,
    #[error("value is not valid UTF-8")]
    NotUtf8,
    #[error("value is longer than {max} bytes")]
    TooLong { max: usize },
    #[error("value contains the control character {} at byte {at}; names must be printable text", crate::excerpt::excerpt(&[*byte], 8))]
    ControlCharacter { byte: u8, at: usize },
    #[error("expected a WKT point like `POINT (14.42 50.08)`, found {0:?}")]
    NotAPoint(String),
    #[error("POINT EMPTY has no coordinates")]
    EmptyPoint,
    #[error("a point needs exactly 2 coordinates (lon lat), found {0}")]
    Arity(usize),
    #[error("coordinate {0:?} is not a finite number")]
    BadNumber(String),
    #[error("longitude {0} is outside [-180, 180]")]
    Longitude(f64),
    #[error("latitude {0} is outside [-90, 90]")]
    Latitude(f64),
    #[error("expected a datetime like `2018-05-28 09:03:40`, found {0:?}")]
    BadDatetime(String),
    #[error("{0:?} is not a real calendar date and time")]
    ImpossibleDatetime(String),
}

/// A rejected row: which column (if one) and why.
#[derive(Debug, Clone, PartialEq)]
pub struct RowFault {
    pub column: Option<Column>,
    pub error: RowError,
}

/// A validated trip, borrowing its text fields from the record.
#[derive(Debug, Clone, PartialEq)]
pub struct Trip<'a> {
    pub region: &'a str,
    pub origin: Point<f64>,
    pub destination: Point<f64>,
    /// Microseconds since 1970-01-01 00:00:00 UTC.
    pub datetime_us: i64,
    pub datasource: &'a str,
}

/// Names longer than this are surely not a region or datasource; bounding them
/// keeps the dimension tables and reports sane.
pub const MAX_NAME_BYTES: usize = 200;

/// Validates one split record against the header. `text` is `record` as
/// text when the caller has already checked it is UTF-8, else `None`.
pub fn parse_trip<'a>(
    header: &Header,
    fields: &'a Fields,
    record: &'a [u8],
    text: Option<&'a str>,
) -> Result<Trip<'a>, RowFault> {
    if fields.len() != header.width {
        return Err(RowFault {
            column: None,
            error: RowError::FieldCount {
                expected: header.width,
                found: fields.len(),
            },
        });
    }
    let at = |column: Column| {
        move |error| RowFault {
            column: Some(column),
            error,
        }
    };
    let get = |c: Column| {
        fields
            .text(record, text, header.index(c))
            .ok_or(RowError::NotUtf8)
            .map_err(at(c))
    };
    let region = parse_name(get(Column::Region)?).map_err(at(Column::Region))?;
    let origin = parse_point(get(Column::OriginCoord)?).map_err(at(Column::OriginCoord))?;
    let destination =
        parse_point(get(Column::DestinationCoord)?).map_err(at(Column::DestinationCoord))?;
    // Datetimes are parsed as bytes: they need no text check.
    let datetime_us = parse_datetime(fields.get(record, header.index(Column::Datetime)))
        .map_err(at(Column::Datetime))?;
    let datasource = parse_name(get(Column::Datasource)?).map_err(at(Column::Datasource))?;
    Ok(Trip {
        region,
        origin,
        destination,
        datetime_us,
        datasource,
    })
}

/// A region or datasource name: trimmed, not empty, no control characters
/// (C0 or DEL: the server refuses a NUL, and the others would reach
/// reports and terminals).
pub fn parse_name(raw: &str) -> Result<&str, RowError> {
    let s = raw.trim();
    if s.is_empty() {
        return Err(RowError::Empty);
    }
    if s.len() > MAX_NAME_BYTES {
        return Err(RowError::TooLong {
            max: MAX_NAME_BYTES,
        });
    }
    if let Some(at) = s.bytes().position(|b| b < 0x20 || b == 0x7F) {
        return Err(RowError::ControlCharacter {
            byte: s.as_bytes()[at],
            at,
        });
    }
    Ok(s)
}

/// A value quoted in a reason: capped, control characters escaped.
fn lossy(raw: &[u8]) -> String {
    crate::excerpt::excerpt(raw, 80)
}

/// WKT `POINT (lon lat)`: any case, any ASCII spacing, optional space before `(`.
pub fn parse_point(raw: &str) -> Result<Point<f64>, RowError> {
    let s = raw.trim_ascii();
    let not_point = || RowError::NotAPoint(lossy(raw.as_bytes()));
    if s.len() < 5 || !s.as_bytes()[..5].eq_ignore_ascii_case(b"POINT") {
        return Err(not_point());
    }
    // Byte 5 is a character boundary: the five before it are ASCII.
    let rest = s.get(5..).ok_or_else(not_point)?.trim_ascii_start();
    if rest.eq_ignore_ascii_case("EMPTY") {
        return Err(RowError::EmptyPoint);
    }
    let inner = rest
        .strip_prefix('(')
        .and_then(|r| r.strip_suffix(')'))
        .ok_or_else(not_point)?;
    let mut coords = [0f64; 2];
    let mut n = 0;
    for tok in inner.split_ascii_whitespace() {
        if n < 2 {
            coords[n] = parse_number(tok)?;
        }
        n += 1;
    }
    if n != 2 {
        return Err(RowError::Arity(n));
    }
    let [lon, lat] = coords;
    if !(-180.0..=180.0).contains(&lon) {
        return Err(RowError::Longitude(lon));
    }
    if !(-90.0..=90.0).contains(&lat) {
        return Err(RowError::Latitude(lat));
    }
    Ok(Point::new(lon, lat))
}

fn parse_number(tok: &str) -> Result<f64, RowError> {
    // Rust's float parser is correctly rounded (the same f64 PostgreSQL would
    // produce) but also accepts "inf"/"nan" spellings, hence the finiteness check.
    match tok.parse::<f64>() {
        Ok(v) if v.is_finite() => Ok(v),
        _ => Err(RowError::BadNumber(lossy(tok.as_bytes()))),
    }
}

/// Days from 1970-01-01 to a proleptic Gregorian date (Hinnant's algorithm).
pub fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = m as i64;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146097 + doe - 719468
}

fn days_in_month(y: i64, m: u32) -> u32 {
    match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        _ if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        _ => 28,
    }
}

fn digits(s: &[u8]) -> Option<u32> {
    let mut v = 0u32;
    for &b in s {
        if !b.is_ascii_digit() {
            return None;
        }
        v = v * 10 + (b - b'0') as u32;
    }
    Some(v)
}

/// `YYYY-MM-DD[ T]HH:MM:SS[.ffffff][Z|±HH[:MM]]`; no zone means UTC.
/// Returns microseconds since the Unix epoch (fractions beyond 1 µs are rounded,
/// as PostgreSQL does).
pub fn parse_datetime(raw: &[u8]) -> Result<i64, RowError> {
    let s = raw.trim_ascii();
    let bad = || RowError::BadDatetime(lossy(raw));
    if s.len() < 19 || s[4] != b'-' || s[7] != b'-' || s[13] != b':' || s[16] != b':' {
        return Err(bad());
    }
    if s[10] != b' ' && s[10] != b'T' && s[10] != b't' {
        return Err(bad());
    }
    let (y, mo, d) = (digits(&s[0..4]), digits(&s[5..7]), digits(&s[8..10]));
    let (h, mi, se) = (digits(&s[11..13]), digits(&s[14..16]), digits(&s[17..19]));
    let (Some(y), Some(mo), Some(d), Some(h), Some(mi), Some(se)) = (y, mo, d, h, mi, se) else {
        return Err(bad());
    };
    let y = y as i64;
    if y == 0
        || !(1..=12).contains(&mo)
        || d == 0
        || d > days_in_month(y, mo)
        || h > 23
        || mi > 59
        || se > 59
    {
        return Err(RowError::ImpossibleDatetime(lossy(raw)));
    }
    let mut rest = &s[19..];
    let mut micros = 0i64;
    if let Some(frac) = rest.strip_prefix(b".") {
        let n = frac.iter().take_while(|b| b.is_ascii_digit()).count();
        if n == 0 {
            return Err(bad());
        }
        let mut scale = 100_000i64;
        for (i, &b) in frac[..n].iter().enumerate() {
            let digit = (b - b'0') as i64;
            if i < 6 {
                micros += digit * scale;
                scale /= 10;
            } else if i == 6 {
                micros += (digit >= 5) as i64;
            }
        }
        rest = &frac[n..];
    }
    let offset_s = parse_offset(rest.trim_ascii_start()).ok_or_else(bad)?;
    let secs =
        days_from_civil(y, mo, d) * 86_400 + (h as i64) * 3600 + (mi as i64) * 60 + se as i64
            - offset_s;
    Ok(secs * 1_000_000 + micros)
}

fn parse_offset(z: &[u8]) -> Option<i64> {
    match z {
        [] | b"Z" | b"z" => Some(0),
        [sign @ (b'+' | b'-'), rest @ ..] => {
            let (hh, mm) = match rest {
                [a, b] => (digits(&[*a, *b])?, 0),
                [a, b, b':', c, d] | [a, b, c, d] => (digits(&[*a, *b])?, digits(&[*c, *d])?),
                _ => return None,
            };
            if hh > 15 || mm > 59 {
                return None;
            }
            let v = (hh * 3600 + mm * 60) as i64;
            Some(if *sign == b'-' { -v } else { v })
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_by_name_any_order_with_bom_and_extras() {
        let buf = b"\xEF\xBB\xBF\r\nDatasource, datetime,extra,region,destination_coord,origin_coord\r\nx";
        let h = parse_header(buf).unwrap();
        assert_eq!(h.index(Column::Datasource), 0);
        assert_eq!(h.index(Column::Region), 3);
        assert_eq!(h.width, 6);
        assert_eq!(h.ignored, ["extra"]);
        assert_eq!(&buf[h.data_start..], b"x");
        assert_eq!(h.lines_before_data, 2);
    }

    #[test]
    fn header_errors_name_the_problem() {
        assert_eq!(parse_header(b""), Err(HeaderError::Empty));
        assert_eq!(parse_header(b"\n\n"), Err(HeaderError::Empty));
        let e = parse_header(b"region,origin_coord,datetime\n").unwrap_err();
        assert!(
            e.to_string().contains("destination_coord, datasource"),
            "{e}"
        );
        assert!(matches!(
            parse_header(b"region,region,origin_coord,destination_coord,datetime,datasource"),
            Err(HeaderError::DuplicateColumn { .. })
        ));
    }

    #[test]
    fn points() {
        assert_eq!(
            parse_point("POINT (14.5 50.1)").unwrap(),
            Point::new(14.5, 50.1)
        );
        assert_eq!(
            parse_point(" point(  -1e1\t+2.5E0 ) ").unwrap(),
            Point::new(-10.0, 2.5)
        );
        assert_eq!(parse_point("POINT EMPTY"), Err(RowError::EmptyPoint));
        assert_eq!(parse_point("POINT (1 2 3)"), Err(RowError::Arity(3)));
        assert_eq!(parse_point("POINT (1)"), Err(RowError::Arity(1)));
        assert!(matches!(
            parse_point("POINT (NaN 2)"),
            Err(RowError::BadNumber(_))
        ));
        assert!(matches!(
            parse_point("POINT (inf 2)"),
            Err(RowError::BadNumber(_))
        ));
        assert_eq!(
            parse_point("POINT (180.5 2)"),
            Err(RowError::Longitude(180.5))
        );
        assert_eq!(
            parse_point("POINT (1 -90.1)"),
            Err(RowError::Latitude(-90.1))
        );
        assert!(matches!(
            parse_point("LINESTRING (1 2, 3 4)"),
            Err(RowError::NotAPoint(_))
        ));
        assert!(matches!(
            parse_point("POINT 1 2"),
            Err(RowError::NotAPoint(_))
        ));
    }

    #[test]
    fn datetimes() {
        assert_eq!(parse_datetime(b"1970-01-01 00:00:00").unwrap(), 0);
        assert_eq!(
            parse_datetime(b"2018-05-28 09:03:40").unwrap(),
            1_527_498_220_000_000
        );
        assert_eq!(
            parse_datetime(b"2018-05-28T09:03:40.25").unwrap(),
            1_527_498_220_250_000
        );
        assert_eq!(
            parse_datetime(b"2018-05-28 11:03:40+02:00").unwrap(),
            1_527_498_220_000_000
        );
        assert_eq!(
            parse_datetime(b"2018-05-28 09:03:40Z").unwrap(),
            1_527_498_220_000_000
        );
        assert_eq!(
            parse_datetime(b"2000-02-29 00:00:00.0000005").unwrap(),
            951_782_400_000_001
        );
        assert!(matches!(
            parse_datetime(b"2018-02-30 00:00:00"),
            Err(RowError::ImpossibleDatetime(_))
        ));
        assert!(matches!(
            parse_datetime(b"1900-02-29 00:00:00"),
            Err(RowError::ImpossibleDatetime(_))
        ));
        assert!(matches!(
            parse_datetime(b"2018-05-28 24:00:00"),
            Err(RowError::ImpossibleDatetime(_))
        ));
        assert!(matches!(
            parse_datetime(b"2018-05-28"),
            Err(RowError::BadDatetime(_))
        ));
        assert!(matches!(
            parse_datetime(b"2018-05-28 09:03:40 PM"),
            Err(RowError::BadDatetime(_))
        ));
    }

    #[test]
    fn days_from_civil_matches_chrono() {
        use chrono::NaiveDate;
        let epoch = NaiveDate::from_ymd_opt(1970, 1, 1).unwrap();
        for (y, m, d) in [
            (1, 1, 1),
            (1600, 2, 29),
            (1999, 12, 31),
            (2018, 5, 28),
            (9999, 12, 31),
        ] {
            let want = NaiveDate::from_ymd_opt(y, m, d)
                .unwrap()
                .signed_duration_since(epoch)
                .num_days();
            assert_eq!(days_from_civil(y as i64, m, d), want);
        }
    }

    #[test]
    fn names_are_trimmed_and_required() {
        assert_eq!(parse_name("  Prague ").unwrap(), "Prague");
        assert_eq!(parse_name("   "), Err(RowError::Empty));
        assert_eq!(parse_name("Zürich").unwrap(), "Zürich");
    }

    #[test]
    fn names_with_control_characters_are_refused() {
        assert_eq!(
            parse_name("Pra\0gue"),
            Err(RowError::ControlCharacter { byte: 0, at: 3 })
        );
        assert_eq!(
            parse_name("a\x1b[31m"),
            Err(RowError::ControlCharacter { byte: 0x1b, at: 1 })
        );
        assert_eq!(
            parse_name("a\tb"),
            Err(RowError::ControlCharacter { byte: 9, at: 1 })
        );
        assert_eq!(
            parse_name("del\x7f"),
            Err(RowError::ControlCharacter { byte: 0x7f, at: 3 })
        );
        let e = parse_name("Pra\0gue").unwrap_err().to_string();
        assert!(e.contains("\\x00 at byte 3"), "{e}");
    }

    #[test]
    fn raw_text_in_errors_is_capped_and_escaped() {
        let long = format!("a\x1b{}", "b".repeat(5000));
        let e = parse_header(format!("region,{long}\n").as_bytes()).unwrap_err();
        let msg = e.to_string();
        assert!(msg.len() < 500, "{}", msg.len());
        assert!(msg.contains("a\\x1Bbbb"), "{msg}");
        let e = parse_point(&format!("\0{long}")).unwrap_err().to_string();
        assert!(e.len() < 200 && e.contains("\\x00"), "{e}");
    }
}
