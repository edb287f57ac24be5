//! The queue between the encoding stage and the trips' COPY: encoded buffers
//! wait in memory up to a small budget, then in anonymous temporary files
//! (in `TMPDIR`) up to `--backlog-mib`, in first-in first-out order.
//!
//! Why: a file's cell points can only be sorted and written once its last
//! chunk is parsed, and the parser is faster than the server's COPY. With a
//! queue bounded in memory alone, parsing waits for the COPY and the cell
//! points all come after it, a serial tail. Letting the parser run ahead
//! onto disk ends parsing early, so the cell points' sort and their COPY on
//! the second connection run while the trips are still being copied. Memory
//! stays bounded by the budget; past the disk limit the producer waits.
//!
//! One producer, one consumer. Once a buffer has gone to disk, later ones
//! follow it there until the consumer has read them all, so order is kept.
//! The disk part is a series of files of [`SEGMENT_BYTES`] each: a file is
//! closed (and its space freed) as soon as the consumer has read past it, so
//! the disk holds at most the limit plus one file's worth of read buffers.

use bytes::Bytes;
use std::collections::VecDeque;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

/// Default `--backlog-mib`: room on disk for the encoded trips of a 2 GB file.
pub const DISK_MIB: u64 = 4096;

/// Bytes written to one backlog file before the next buffer starts another.
pub const SEGMENT_BYTES: u64 = 64 << 20;

struct Queued<M> {
    bytes: Bytes,
    meta: M,
}

struct OnDisk<M> {
    /// The file holding it; the last reference to a segment closes it.
    file: Arc<File>,
    at: u64,
    len: usize,
    meta: M,
}

/// The file buffers are being appended to, and where the next one goes.
struct Segment {
    file: Arc<File>,
    end: u64,
}

struct State<M> {
    memory: VecDeque<Queued<M>>,
    memory_bytes: usize,
    disk: VecDeque<OnDisk<M>>,
    /// Bytes waiting on disk or being written.
    disk_bytes: u64,
    /// The most `disk_bytes` has been.
    peak: u64,
    /// A buffer being written to disk, not yet in `disk`.
    writing: bool,
    segment: Option<Segment>,
    producer_gone: bool,
    /// The producer gave up: what is queued is not to be read.
    cancelled: bool,
    consumer_gone: bool,
}

struct Shared<M> {
    state: Mutex<State<M>>,
    changed: Condvar,
    memory_limit: usize,
    disk_limit: u64,
    segment_bytes: u64,
    dir: PathBuf,
}

impl<M> Shared<M> {
    fn lock(&self) -> MutexGuard<'_, State<M>> {
        // A panicking holder leaves plain counters behind; keep going.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn wait<'a>(&self, st: MutexGuard<'a, State<M>>) -> MutexGuard<'a, State<M>> {
        self.changed.wait(st).unwrap_or_else(|e| e.into_inner())
    }
}

/// The producer's end.
pub struct Sender<M> {
    shared: Arc<Shared<M>>,
}

/// The consumer's end.
pub struct Receiver<M> {
    shared: Arc<Shared<M>>,
}

/// A queue holding up to `memory_limit` bytes in memory and `disk_limit`
/// more in temporary files created in `dir` when first needed. A buffer
/// larger than the memory limit still passes when memory is empty.
pub fn channel<M>(memory_limit: usize, disk_limit: u64, dir: PathBuf) -> (Sender<M>, Receiver<M>) {
    channel_in_segments(memory_limit, disk_limit, dir, SEGMENT_BYTES)
}

/// [`channel`] with files of `segment_bytes` each.
fn channel_in_segments<M>(
    memory_limit: usize,
    disk_limit: u64,
    dir: PathBuf,
    segment_bytes: u64,
) -> (Sender<M>, Receiver<M>) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            memory: VecDeque::new(),
            memory_bytes: 0,
            disk: VecDeque::new(),
            disk_bytes: 0,
            peak: 0,
            writing: false,
            segment: None,
            producer_gone: false,
            cancelled: false,
            consumer_gone: false,
        }),
        changed: Condvar::new(),
        memory_limit,
        disk_limit,
        segment_bytes,
        dir,
    });
    (
        Sender {
            shared: Arc::clone(&shared),
        },
        Receiver { shared },
    )
}

/// Where a buffer goes once there is room for it.
enum Place {
    Memory,
    Disk,
    /// The consumer is gone: nothing more will be read.
    Nowhere,
}

impl<M> Sender<M> {
    /// Queues a buffer, waiting while memory and disk are both full. Returns
    /// `Ok(false)` when the consumer is gone (nothing more will be read).
    pub fn send(&self, bytes: Bytes, meta: M) -> io::Result<bool> {
        let s = &*self.shared;
        let len = bytes.len();
        let mut st = s.lock();
        let place = loop {
            if st.consumer_gone {
                break Place::Nowhere;
            }
            let on_disk = !st.disk.is_empty() || st.writing;
            if !on_disk && (st.memory.is_empty() || st.memory_bytes + len <= s.memory_limit) {
                break Place::Memory;
            }
            if st.disk_bytes + len as u64 <= s.disk_limit {
                break Place::Disk;
            }
            st = s.wait(st);
        };
        match place {
            Place::Nowhere => Ok(false),
            Place::Memory => {
                st.memory_bytes += len;
                st.memory.push_back(Queued { bytes, meta });
                s.changed.notify_all();
                Ok(true)
            }
            Place::Disk => {
                // From here the buffer counts as being written: later ones
                // follow it to disk, and the consumer waits for it before it
                // ends.
                st.disk_bytes += len as u64;
                st.peak = st.peak.max(st.disk_bytes);
                st.writing = true;
                let placed = self.place_on_disk(&mut st, len as u64);
                drop(st);
                // Written unlocked: the consumer goes on with what is queued
                // before.
                let written = placed
                    .and_then(|(file, at)| file.write_all_at(&bytes, at).map(|()| (file, at)));
                self.written(written, len, meta)
            }
        }
    }

    /// The file and offset for a buffer of `len` bytes: the current
    /// segment's end, or the start of a new segment when it is full.
    fn place_on_disk(&self, st: &mut State<M>, len: u64) -> io::Result<(Arc<File>, u64)> {
        let full = st
            .segment
            .as_ref()
            .is_none_or(|seg| seg.end >= self.shared.segment_bytes);
        if full {
            let file = Arc::new(tempfile::tempfile_in(&self.shared.dir)?);
            st.segment = Some(Segment { file, end: 0 });
        }
        let seg = st.segment.as_mut().expect("a segment was just ensured");
        let at = seg.end;
        seg.end += len;
        Ok((Arc::clone(&seg.file), at))
    }

    /// Queues a buffer whose write to disk ended with `written`.
    fn written(
        &self,
        written: io::Result<(Arc<File>, u64)>,
        len: usize,
        meta: M,
    ) -> io::Result<bool> {
        let s = &*self.shared;
        let mut st = s.lock();
        st.writing = false;
        let result = match written {
            Err(e) => {
                st.disk_bytes = st.disk_bytes.saturating_sub(len as u64);
                Err(e)
            }
            Ok((file, at)) => {
                st.disk.push_back(OnDisk {
                    file,
                    at,
                    len,
                    meta,
                });
                Ok(true)
            }
        };
        s.changed.notify_all();
        result
    }

    /// Drops what is queued and ends the stream at once: a file that failed
    /// need not have its backlog copied before it is rolled back.
    pub fn cancel(self) {
        let mut st = self.shared.lock();
        st.cancelled = true;
        st.memory.clear();
        st.memory_bytes = 0;
        st.disk.clear();
        st.disk_bytes = 0;
        st.segment = None;
        drop(st);
        self.shared.changed.notify_all();
    }
}

impl<M> Drop for Sender<M> {
    fn drop(&mut self) {
        self.shared.lock().producer_gone = true;
        self.shared.changed.notify_all();
    }
}

impl<M> Receiver<M> {
    /// The next buffer in order; `Ok(None)` once the producer is gone and
    /// everything it queued has been read.
    pub fn recv(&self) -> io::Result<Option<(Bytes, M)>> {
        let s = &*self.shared;
        let mut st = s.lock();
        loop {
            if st.cancelled {
                return Ok(None);
            }
            if let Some(q) = st.memory.pop_front() {
                st.memory_bytes -= q.bytes.len();
                s.changed.notify_all();
                return Ok(Some((q.bytes, q.meta)));
            }
            if let Some(d) = st.disk.pop_front() {
                drop(st);
                return self.read_back(d).map(Some);
            }
            if st.producer_gone && !st.writing {
                return Ok(None);
            }
            st = s.wait(st);
        }
    }

    /// Reads a buffer back from its file, which closes once nothing queued
    /// refers to it.
    fn read_back(&self, d: OnDisk<M>) -> io::Result<(Bytes, M)> {
        let OnDisk {
            file,
            at,
            len,
            meta,
        } = d;
        let mut buf = vec![0u8; len];
        let read = file.read_exact_at(&mut buf, at);
        drop(file);
        let s = &*self.shared;
        let mut st = s.lock();
        // `cancel` may have zeroed the count while this was read.
        st.disk_bytes = st.disk_bytes.saturating_sub(len as u64);
        if st.disk.is_empty() && !st.writing {
            // Drained: the next buffer to go to disk starts a new file.
            st.segment = None;
        }
        s.changed.notify_all();
        drop(st);
        read?;
        Ok((Bytes::from(buf), meta))
    }

    /// Bytes waiting on disk.
    pub fn on_disk(&self) -> u64 {
        self.shared.lock().disk_bytes
    }

    /// The most bytes that have waited on disk at once.
    pub fn peak_on_disk(&self) -> u64 {
        self.shared.lock().peak
    }
}

impl<M> Drop for Receiver<M> {
    fn drop(&mut self) {
        self.shared.lock().consumer_gone = true;
        self.shared.changed.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::thread;

    fn buf(i: u32, len: usize) -> Bytes {
        let mut v = vec![(i % 251) as u8; len];
        v[..4].copy_from_slice(&i.to_le_bytes());
        Bytes::from(v)
    }

    #[test]
    fn order_is_kept_across_memory_and_disk() {
        let dir = tempfile::tempdir().unwrap();
        let (tx, rx) = channel::<u32>(10_000, 1 << 30, dir.path().to_path_buf());
        // All 200 buffers (220 KB) are queued before anything is read.
        // Buffers 0..9 (9036 bytes) fit in memory; from buffer 9 on, all go
        // to disk.
        for i in 0..200 {
            assert!(tx.send(buf(i, 1000 + i as usize), i).unwrap());
        }
        let on_disk: u64 = (9..200).map(|i| 1000 + i).sum();
        assert_eq!(rx.on_disk(), on_disk);
        drop(tx);
        for i in 0..200 {
            let (b, m) = rx.recv().unwrap().unwrap();
            assert_eq!(m, i);
            assert_eq!(b, buf(i, 1000 + i as usize));
        }
        assert!(rx.recv().unwrap().is_none());
        assert_eq!(rx.on_disk(), 0);
        assert_eq!(rx.peak_on_disk(), on_disk);
    }

    #[test]
    fn concurrent_producer_and_consumer_see_the_same_sequence() {
        let dir = tempfile::tempdir().unwrap();
        // Small limits: the producer switches between memory, disk and
        // waiting many times.
        let (tx, rx) = channel::<u32>(3000, 20_000, dir.path().to_path_buf());
        let producer = thread::spawn(move || {
            for i in 0..2000u32 {
                assert!(tx.send(buf(i, 500 + (i as usize * 7) % 1500), i).unwrap());
            }
        });
        let mut seen = 0u32;
        while let Some((b, m)) = rx.recv().unwrap() {
            assert_eq!(m, seen);
            assert_eq!(b, buf(seen, 500 + (seen as usize * 7) % 1500));
            assert!(rx.on_disk() <= 20_000);
            if seen.is_multiple_of(97) {
                thread::sleep(std::time::Duration::from_millis(1));
            }
            seen += 1;
        }
        producer.join().unwrap();
        assert_eq!(seen, 2000);
    }

    #[test]
    fn without_disk_the_producer_waits_for_the_consumer() {
        let dir = tempfile::tempdir().unwrap();
        let (tx, rx) = channel::<u32>(2000, 0, dir.path().to_path_buf());
        assert!(tx.send(buf(0, 1500), 0).unwrap());
        let producer = thread::spawn(move || tx.send(buf(1, 1500), 1).unwrap());
        thread::sleep(std::time::Duration::from_millis(50));
        assert!(
            !producer.is_finished(),
            "a full queue with no disk must block"
        );
        assert_eq!(rx.recv().unwrap().unwrap().1, 0);
        assert!(producer.join().unwrap());
        assert_eq!(rx.recv().unwrap().unwrap().1, 1);
        assert!(rx.recv().unwrap().is_none());
        // Nothing ever went to disk: no file was created.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn a_cancelled_queue_ends_without_what_it_held() {
        let dir = tempfile::tempdir().unwrap();
        let (tx, rx) = channel::<u32>(1000, 1 << 20, dir.path().to_path_buf());
        for i in 0..50 {
            assert!(tx.send(buf(i, 500), i).unwrap());
        }
        assert!(rx.on_disk() > 0);
        assert_eq!(rx.recv().unwrap().unwrap().1, 0);
        tx.cancel();
        assert!(rx.recv().unwrap().is_none());
        assert_eq!(rx.on_disk(), 0);
    }

    #[test]
    fn a_gone_consumer_stops_a_waiting_producer() {
        let dir = tempfile::tempdir().unwrap();
        let (tx, rx) = channel::<u32>(100, 0, dir.path().to_path_buf());
        assert!(tx.send(buf(0, 100), 0).unwrap());
        let producer = thread::spawn(move || tx.send(buf(1, 100), 1).unwrap());
        thread::sleep(std::time::Duration::from_millis(20));
        drop(rx);
        assert!(!producer.join().unwrap());
    }

    #[test]
    fn an_unwritable_directory_is_an_error_not_a_loss() {
        let (tx, rx) = channel::<u32>(10, 1 << 20, PathBuf::from("/nonexistent/backlog"));
        assert!(tx.send(buf(0, 100), 0).unwrap());
        assert!(tx.send(buf(1, 100), 1).is_err());
        drop(tx);
        assert_eq!(rx.recv().unwrap().unwrap().1, 0);
        assert!(rx.recv().unwrap().is_none());
    }

    /// Bytes in the backlog's files still open (the segments queued
    /// buffers refer to, and the one being appended to).
    fn file_bytes<M>(rx: &Receiver<M>) -> u64 {
        let st = rx.shared.lock();
        let mut files: Vec<&Arc<File>> = st.disk.iter().map(|d| &d.file).collect();
        files.extend(st.segment.as_ref().map(|s| &s.file));
        files.dedup_by(|a, b| Arc::ptr_eq(a, b));
        files.iter().map(|f| f.metadata().unwrap().len()).sum()
    }

    #[test]
    fn read_segments_are_freed_while_the_rest_waits() {
        let dir = tempfile::tempdir().unwrap();
        // Segments of 64 KiB: 4 buffers of 16 KiB each.
        let (tx, rx) = channel_in_segments::<u32>(0, 1 << 30, dir.path().to_path_buf(), 64 << 10);
        let n = 64u32;
        for i in 0..n {
            assert!(tx.send(buf(i, 16 << 10), i).unwrap());
        }
        drop(tx);
        // All but the first (in memory) on disk.
        let queued = u64::from(n - 1) * (16 << 10);
        assert_eq!(rx.on_disk(), queued);
        assert_eq!(file_bytes(&rx), queued);
        for i in 0..n {
            let (b, m) = rx.recv().unwrap().unwrap();
            assert_eq!((m, b), (i, buf(i, 16 << 10)));
            // What was read is gone but for the segment being read.
            assert!(
                file_bytes(&rx) <= rx.on_disk() + (64 << 10),
                "{} bytes in files for {} queued",
                file_bytes(&rx),
                rx.on_disk()
            );
        }
        assert!(rx.recv().unwrap().is_none());
        assert_eq!((rx.on_disk(), file_bytes(&rx)), (0, 0));
    }
}
