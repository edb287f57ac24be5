//! The content hash that identifies a file in the ledger: xxh3-128 of its
//! bytes, written `xxh3-128:` and 32 hex digits. Bytes in, text out; the
//! reading is the caller's (`ingest::map`, `serve`'s uploads, `lifecycle`).

use xxhash_rust::xxh3::Xxh3;

/// A content hash fed piece by piece.
#[derive(Default)]
pub struct ContentHash(Xxh3);

impl ContentHash {
    pub fn new() -> ContentHash {
        ContentHash(Xxh3::new())
    }

    /// Adds the next bytes of the content.
    pub fn update(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }

    /// The hash as the ledger writes it.
    pub fn finish(&self) -> String {
        format!("xxh3-128:{:032x}", self.0.digest128())
    }
}

/// The content hash of whole bytes.
pub fn of(bytes: &[u8]) -> String {
    format!("xxh3-128:{:032x}", xxhash_rust::xxh3::xxh3_128(bytes))
}

#[cfg(test)]
mod tests {
    #[test]
    fn pieces_hash_as_the_whole() {
        let mut h = super::ContentHash::new();
        h.update(b"hel");
        h.update(b"lo");
        assert_eq!(h.finish(), super::of(b"hello"));
        assert!(super::of(b"").starts_with("xxh3-128:"));
        assert_eq!(super::of(b"").len(), "xxh3-128:".len() + 32);
    }
}
