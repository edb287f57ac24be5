//! The UTC days a chunk's trips fall on, read from the datetime field alone
//! (no I/O): what the Citus layout's time partitions of `trips` must cover
//! before a file's rows are copied.
//!
//! Records are framed and split exactly as the encoder does
//! ([`crate::record`]), and the datetime is read by the same
//! [`parse_datetime`], so every row the encoder accepts has its day here. A
//! record with the wrong number of fields or an unreadable datetime is
//! skipped (the encoder rejects it); one rejected for another column still
//! counts its day, which at worst asks for a partition that stays empty.

use crate::parse::{parse_datetime, Column, Header};
use crate::record::{next_record, Fields};
use std::collections::BTreeSet;

/// Microseconds in a day.
const DAY_US: i64 = 86_400_000_000;

/// The day (days since 1970-01-01, UTC) of a datetime in microseconds.
pub fn day_of(us: i64) -> i32 {
    us.div_euclid(DAY_US) as i32
}

/// The days of the rows in `chunk`, a run of whole records (a chunk of
/// [`crate::chunk::Chunker`]).
pub fn days_in_chunk(chunk: &[u8], header: &Header) -> BTreeSet<i32> {
    let mut days = BTreeSet::new();
    let mut fields = Fields::new();
    let column = header.index(Column::Datetime);
    let mut pos = 0;
    let mut last: Option<i32> = None;
    while let Some(span) = next_record(chunk, pos) {
        pos = span.next;
        let record = &chunk[span.content];
        if record.is_empty() || fields.split(record).is_err() || fields.len() != header.width {
            continue;
        }
        let Ok(us) = parse_datetime(fields.get(record, column)) else {
            continue;
        };
        let day = day_of(us);
        // Rows usually come in time order: most repeat the last day.
        if last != Some(day) {
            days.insert(day);
            last = Some(day);
        }
    }
    days
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse::parse_header;

    fn days(csv: &[u8]) -> Vec<i32> {
        let header = parse_header(csv).unwrap();
        days_in_chunk(&csv[header.data_start..], &header)
            .into_iter()
            .collect()
    }

    #[test]
    fn each_accepted_row_has_its_utc_day() {
        let csv = b"region,origin_coord,destination_coord,datetime,datasource\n\
            Turin,POINT (7.6 45.0),POINT (7.7 45.1),2018-05-28 09:03:40,a\n\
            Turin,POINT (7.6 45.0),POINT (7.7 45.1),2018-05-28 23:59:59,a\n\
            \n\
            Turin,POINT (7.6 45.0),POINT (7.7 45.1),2018-05-29 00:30:00+02:00,a\n\
            \"Turin\",POINT (7.6 45.0),POINT (7.7 45.1),1969-12-31 23:00:00,a\n";
        let may_28 = (parse_datetime(b"2018-05-28 00:00:00").unwrap() / DAY_US) as i32;
        // 00:30 at +02:00 is the 28th in UTC; before 1970 rounds down.
        assert_eq!(days(csv), vec![-1, may_28]);
    }

    #[test]
    fn rows_the_encoder_rejects_for_their_datetime_or_width_are_skipped() {
        let csv = b"region,origin_coord,destination_coord,datetime,datasource\n\
            Turin,POINT (7.6 45.0),POINT (7.7 45.1),2018-02-30 09:03:40,a\n\
            Turin,POINT (7.6 45.0),POINT (7.7 45.1),2018-05-28 09:03:40\n\
            Turin,POINT (7.6 45.0),POINT (7.7 45.1),yesterday,a\n\
            Turin,\"POINT (7.6 45.0),POINT (7.7 45.1),2018-06-01 09:03:40,a\n";
        assert_eq!(days(csv), Vec::<i32>::new());
    }

    #[test]
    fn a_row_rejected_for_another_column_still_counts_its_day() {
        let csv = b"region,origin_coord,destination_coord,datetime,datasource\n\
            Turin,POINT (x 45.0),POINT (7.7 45.1),1970-01-02 00:00:00,a\n";
        assert_eq!(days(csv), vec![1]);
    }
}
