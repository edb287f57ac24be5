//! Runs the encode kernel over a file's chunks on the rayon pool and hands the
//! results back in file order, with at most `depth` chunks in flight.
//!
//! The bound is what keeps memory flat whatever the file size: the producer
//! blocks on a full queue, so neither the map's pages nor encoded buffers pile
//! up ahead of the COPY.

use std::ops::Range;
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Arc;

/// Calls `work` on every range (in parallel), then `sink` on each result in
/// range order. `sink` returning `false` stops the run early; chunks already
/// started finish and are dropped. Returns the number of results sunk.
pub fn run<T, I, W, S>(ranges: I, depth: usize, work: W, mut sink: S) -> usize
where
    T: Send + 'static,
    I: Iterator<Item = Range<usize>> + Send,
    W: Fn(Range<usize>) -> T + Send + Sync + 'static,
    S: FnMut(Range<usize>, T) -> bool,
{
    let work = Arc::new(work);
    let (queue_tx, queue_rx) = sync_channel::<(Range<usize>, Receiver<T>)>(depth.max(1));
    let mut sunk = 0;
    std::thread::scope(|scope| {
        scope.spawn(move || {
            for range in ranges {
                let (tx, rx) = sync_channel(1);
                // The consumer hung up: stop producing.
                if queue_tx.send((range.clone(), rx)).is_err() {
                    break;
                }
                let work = Arc::clone(&work);
                rayon::spawn(move || {
                    let _ = tx.send(work(range));
                });
            }
        });
        for (range, rx) in queue_rx.iter() {
            // A worker that panicked drops its sender: treat as a stop.
            let Ok(result) = rx.recv() else { break };
            sunk += 1;
            if !sink(range, result) {
                break;
            }
        }
        // Hanging up unblocks the producer if it waits on a full queue.
        drop(queue_rx);
    });
    sunk
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_come_back_in_order() {
        let ranges = (0..200).map(|i| i..i + 1);
        let mut seen = Vec::new();
        run(
            ranges,
            4,
            |r: Range<usize>| {
                // Uneven work so completion order differs from input order.
                std::thread::sleep(std::time::Duration::from_micros(
                    ((r.start * 7919) % 13) as u64 * 50,
                ));
                r.start * 2
            },
            |_, v| {
                seen.push(v);
                true
            },
        );
        assert_eq!(seen, (0..200).map(|i| i * 2).collect::<Vec<_>>());
    }

    #[test]
    fn stops_early() {
        let n = run(
            (0..1000).map(|i| i..i + 1),
            2,
            |r: Range<usize>| r.start,
            |_, v| v < 10,
        );
        assert_eq!(n, 11);
    }
}
