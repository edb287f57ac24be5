//! Feeding a `COPY ... FROM STDIN` from a channel of buffers: shared by the
//! trips' COPY in the file's transaction and the cell points writer.

use bytes::Bytes;
use futures_util::SinkExt;

/// Sends every buffer from `brx` into the COPY until the producer is done;
/// stops at the first error and returns it (closing `brx`, so the producer
/// stops too).
pub async fn forward(
    sink: &mut std::pin::Pin<Box<tokio_postgres::CopyInSink<Bytes>>>,
    mut brx: tokio::sync::mpsc::Receiver<Bytes>,
) -> Option<tokio_postgres::Error> {
    while let Some(buf) = brx.recv().await {
        if let Err(e) = sink.send(buf).await {
            return Some(e);
        }
    }
    None
}
