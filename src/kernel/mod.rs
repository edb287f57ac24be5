//! The pure kernel: bytes in, values out, no I/O and no database.
//!
//! ```text
//! file bytes ──chunk──▶ chunks on record boundaries
//!            ──record─▶ records (RFC 4180 framing, fields)
//!            ──parse──▶ typed trips, or a rejected line with its reason
//!            ──encode─▶ binary COPY buffers (+ the chunk's rollup partials)
//! ```
//! [`grid`] places a point in its cell and week; [`rollup`] holds the
//! partials and their merge. Nothing here imports anything outside `kernel`
//! (`tests/layering.rs` checks it).
//! [`excerpt`] bounds and escapes any raw input shown to people. [`days`]
//! lists the UTC days a chunk's trips fall on (the Citus time partitions).

pub mod chunk;
pub mod days;
pub mod encode;
pub mod excerpt;
pub mod grid;
pub mod hash;
pub mod parse;
pub mod record;
pub mod rollup;
