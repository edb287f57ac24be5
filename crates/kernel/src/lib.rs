//! The pure kernel: bytes in, values out, no I/O and no database.
//!
//! ```text
//! file bytes ──chunk──▶ chunks on record boundaries
//!            ──record─▶ records (RFC 4180 framing, fields)
//!            ──parse──▶ typed trips, or a rejected line with its reason
//!            ──encode─▶ binary COPY buffers (+ the chunk's rollup partials)
//! ```
//! [`grid`] places a point in its cell and week; [`rollup`] holds the
//! partials and their merge. A crate of its own (`tripload-kernel`) whose
//! only dependencies are small pure crates (memchr, geo-types, xxhash,
//! rustc-hash, thiserror): the compiler, not a convention, keeps tripload's
//! database, file and network code out of it (`tests/layering.rs` also
//! checks that none of its files uses `std::fs`, `std::net` or
//! `std::process`). `tripload` re-exports it as `tripload::kernel`.
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
