//! The queue between the encoding stage and the trips' COPY: encoded buffers
//! wait in memory up to a small budget, then in an anonymous temporary file
//! (in `TMPDIR`) up to `--backlog-mib`, in first-in first-out order.
//!
//! Why: a file's cell points can only be sorted and written once its last
//! chunk is parsed, and the parser is faster than the server's COPY. With a
//! queue bounded in memory alone, parsing waits for the COPY and the cell
//! points all come after it: a serial tail of ~10 s on a 15M-row file. Letting
//! the parser run ahead into a file on disk (page cache, mostly) ends parsing
//! early, so the cell points' sort and their COPY on the second connection
//! run while the trips are still being copied. Memory stays bounded by the
//! budget; the disk by the limit, past which the producer waits as before.
//!
//! One producer, one consumer. Once a buffer has gone to disk, later ones
//! follow it there until the consumer has read them all, so order is kept.
//!
//! Pages on disk cost more than their write: each is a page of memory the
//! kernel must find for the page cache, and on a virtual machine whose free
//! memory goes back to the host (free page reporting, as on the machines
//! these figures come from) a page not used for a few seconds comes back
//! only through a host fault, about 2.5 s of CPU per GB (a 2 GB `dd` into
//! new pages: 5.4 s; into pages freed a moment before: 0.5 s). Two things
//! keep that down: buffers go to disk in a packed form ([`DiskForm`]; for
//! trips less than half the bytes, [`crate::kernel::encode::pack_tuples`]), and
//! what the consumer has read is punched out of the file at once, so its
//! pages are free again while they are still cheap to reuse, by the
//! server's growing table among others.

use bytes::Bytes;
use std::collections::VecDeque;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

/// Default `--backlog-mib`: room on disk for the encoded trips of a 2 GB file.
pub const DISK_MIB: u64 = 4096;

struct Queued<M> {
    bytes: Bytes,
    meta: M,
}

struct OnDisk<M> {
    at: u64,
    /// Bytes in the file (packed).
    len: usize,
    /// Bytes of the buffer it packs.
    logical: usize,
    meta: M,
}

/// How buffers are stored in the queue's file: `pack` on the way in,
/// `unpack` on the way out, so that `unpack(pack(b)) == b` for every buffer
/// the producer sends.
pub trait DiskForm: Send + Sync {
    fn pack(&self, buf: &[u8], out: &mut Vec<u8>);
    fn unpack(&self, packed: &[u8], out: &mut Vec<u8>);
}

struct State<M> {
    memory: VecDeque<Queued<M>>,
    memory_bytes: usize,
    disk: VecDeque<OnDisk<M>>,
    /// Bytes (as sent, before packing) waiting on disk or being written.
    disk_bytes: u64,
    /// The most `disk_bytes` has been.
    peak: u64,
    /// A buffer being written to disk, not yet in `disk`.
    writing: bool,
    /// Where the next buffer goes in the file; back to 0 when it is empty.
    end: u64,
    file: Option<Arc<File>>,
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
    dir: PathBuf,
    form: Option<Box<dyn DiskForm>>,
}

impl<M> Shared<M> {
    fn lock(&self) -> MutexGuard<'_, State<M>> {
        // A panicking holder leaves plain counters behind; keep going.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
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
/// more in a temporary file created in `dir` when first needed. A buffer
/// larger than the memory limit still passes when memory is empty.
pub fn channel<M>(memory_limit: usize, disk_limit: u64, dir: PathBuf) -> (Sender<M>, Receiver<M>) {
    channel_with(memory_limit, disk_limit, dir, None)
}

/// [`channel`], storing what goes to disk in `form` (the limits count
/// bytes as sent).
pub fn channel_with<M>(
    memory_limit: usize,
    disk_limit: u64,
    dir: PathBuf,
    form: Option<Box<dyn DiskForm>>,
) -> (Sender<M>, Receiver<M>) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            memory: VecDeque::new(),
            memory_bytes: 0,
            disk: VecDeque::new(),
            disk_bytes: 0,
            peak: 0,
            writing: false,
            end: 0,
            file: None,
            producer_gone: false,
            cancelled: false,
            consumer_gone: false,
        }),
        changed: Condvar::new(),
        memory_limit,
        disk_limit,
        dir,
        form,
    });
    (
        Sender {
            shared: Arc::clone(&shared),
        },
        Receiver { shared },
    )
}

impl<M> Sender<M> {
    /// Queues a buffer, waiting while memory and disk are both full. Returns
    /// `Ok(false)` when the consumer is gone (nothing more will be read).
    pub fn send(&self, bytes: Bytes, meta: M) -> io::Result<bool> {
        let s = &*self.shared;
        let len = bytes.len();
        let mut st = s.lock();
        loop {
            if st.consumer_gone {
                return Ok(false);
            }
            let on_disk = !st.disk.is_empty() || st.writing;
            if !on_disk && (st.memory.is_empty() || st.memory_bytes + len <= s.memory_limit) {
                st.memory_bytes += len;
                st.memory.push_back(Queued { bytes, meta });
                s.changed.notify_all();
                return Ok(true);
            }
            if st.disk_bytes + len as u64 <= s.disk_limit {
                break;
            }
            st = s.changed.wait(st).unwrap_or_else(|e| e.into_inner());
        }
        // From here the buffer counts as being written: later ones follow
        // it to disk, and the consumer waits for it before it ends.
        st.disk_bytes += len as u64;
        st.peak = st.peak.max(st.disk_bytes);
        st.writing = true;
        drop(st);
        // Packed and written unlocked: the consumer goes on with what is
        // queued before.
        let mut packed = Vec::new();
        let data: &[u8] = match &s.form {
            Some(form) => {
                form.pack(&bytes, &mut packed);
                &packed
            }
            None => &bytes,
        };
        let mut st = s.lock();
        let placed = match &st.file {
            Some(f) => Ok(Arc::clone(f)),
            None => tempfile::tempfile_in(&s.dir).map(|f| {
                let f = Arc::new(f);
                st.file = Some(Arc::clone(&f));
                f
            }),
        }
        .map(|file| {
            let at = st.end;
            st.end += data.len() as u64;
            (file, at)
        });
        drop(st);
        let written = placed.and_then(|(file, at)| file.write_all_at(data, at).map(|()| at));
        let mut st = s.lock();
        st.writing = false;
        match written {
            Err(e) => {
                st.disk_bytes = st.disk_bytes.saturating_sub(len as u64);
                s.changed.notify_all();
                Err(e)
            }
            Ok(at) => {
                st.disk.push_back(OnDisk {
                    at,
                    len: data.len(),
                    logical: len,
                    meta,
                });
                s.changed.notify_all();
                Ok(true)
            }
        }
    }
}

impl<M> Sender<M> {
    /// Drops what is queued and ends the stream at once: a file that failed
    /// need not have its backlog copied before it is rolled back.
    pub fn cancel(self) {
        let mut st = self.shared.lock();
        st.cancelled = true;
        st.memory.clear();
        st.memory_bytes = 0;
        st.disk.clear();
        st.disk_bytes = 0;
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
                let file = st.file.as_ref().map(Arc::clone);
                drop(st);
                let mut buf = vec![0u8; d.len];
                let read = match &file {
                    Some(f) => f
                        .read_exact_at(&mut buf, d.at)
                        .map(|()| punch(f, d.at, d.len)),
                    None => Err(io::Error::other("the backlog file is missing")),
                };
                let mut st = s.lock();
                // `cancel` may have zeroed the count while this was read.
                st.disk_bytes = st.disk_bytes.saturating_sub(d.logical as u64);
                if st.disk.is_empty() && !st.writing {
                    // Drained: reuse the file from its start, and give its
                    // pages back rather than keep the peak on disk.
                    st.end = 0;
                    if let Some(f) = &st.file {
                        // Only space is at stake: a file that keeps its
                        // length is overwritten from its start all the same.
                        let _ = f.set_len(0);
                    }
                }
                s.changed.notify_all();
                drop(st);
                read?;
                let buf = match &s.form {
                    Some(form) => {
                        let mut out = Vec::with_capacity(d.logical);
                        form.unpack(&buf, &mut out);
                        out
                    }
                    None => buf,
                };
                return Ok(Some((Bytes::from(buf), d.meta)));
            }
            if st.producer_gone && !st.writing {
                return Ok(None);
            }
            st = s.changed.wait(st).unwrap_or_else(|e| e.into_inner());
        }
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

/// Frees the file's pages that lie wholly within what has been read up to
/// `at + len` (buffers are read in file order, so the page `at` starts in
/// holds nothing still to be read). Best effort: where the file system
/// cannot punch holes the pages are freed when the file is, as before.
fn punch(file: &File, at: u64, len: usize) {
    use std::os::fd::AsRawFd;
    const PAGE: u64 = 4096;
    let from = at / PAGE * PAGE;
    let to = (at + len as u64) / PAGE * PAGE;
    if to > from {
        // SAFETY: plain syscall on an open descriptor; no memory is passed.
        let _ = unsafe {
            libc::fallocate(
                file.as_raw_fd(),
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                from as libc::off_t,
                (to - from) as libc::off_t,
            )
        };
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

    /// Stores a buffer as every other byte, the rest recomputed: a form that
    /// really shrinks what goes to disk, for buffers made by [`pairs`].
    struct Halves;
    impl DiskForm for Halves {
        fn pack(&self, buf: &[u8], out: &mut Vec<u8>) {
            out.extend(buf.iter().step_by(2));
        }
        fn unpack(&self, packed: &[u8], out: &mut Vec<u8>) {
            out.extend(packed.iter().flat_map(|&b| [b, b.wrapping_add(1)]));
        }
    }
    fn pairs(i: u32, len: usize) -> Bytes {
        (0..len / 2)
            .flat_map(|k| {
                let b = (i as usize * 31 + k) as u8;
                [b, b.wrapping_add(1)]
            })
            .collect::<Vec<u8>>()
            .into()
    }

    /// Allocated bytes of the queue's file.
    fn file_bytes<M>(rx: &Receiver<M>) -> u64 {
        use std::os::unix::fs::MetadataExt;
        let st = rx.shared.lock();
        st.file
            .as_ref()
            .map_or(0, |f| f.metadata().unwrap().blocks() * 512)
    }

    #[test]
    fn a_packed_form_comes_back_whole_and_read_pages_are_given_back() {
        let dir = tempfile::tempdir().unwrap();
        let (tx, rx) =
            channel_with::<u32>(0, 1 << 30, dir.path().to_path_buf(), Some(Box::new(Halves)));
        // 64 buffers of 64 KiB: all but the first on disk, at half size.
        let n = 64u32;
        for i in 0..n {
            assert!(tx.send(pairs(i, 64 << 10), i).unwrap());
        }
        drop(tx);
        let logical = u64::from(n - 1) * (64 << 10);
        assert_eq!(rx.on_disk(), logical);
        let full = file_bytes(&rx);
        assert!(
            full >= logical / 2 && full < logical,
            "packed: {full} of {logical}"
        );
        // Can this file system punch holes? (ext4, xfs and tmpfs can.)
        let probe = tempfile::tempfile_in(dir.path()).unwrap();
        probe.set_len(1 << 20).unwrap();
        use std::os::fd::AsRawFd;
        let punches = unsafe {
            libc::fallocate(
                probe.as_raw_fd(),
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                0,
                4096,
            )
        } == 0;
        for i in 0..n {
            let (b, m) = rx.recv().unwrap().unwrap();
            assert_eq!((m, b), (i, pairs(i, 64 << 10)));
            if i == n / 2 && punches {
                let now = file_bytes(&rx);
                assert!(
                    now <= full / 2 + 8192,
                    "read half, still {now} of {full} allocated"
                );
            }
        }
        assert!(rx.recv().unwrap().is_none());
        assert_eq!(rx.on_disk(), 0);
    }
}
