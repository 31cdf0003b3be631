//! Lingering close. An answer given before the request body was read (413,
//! the maintenance page, a redirect, a refusal) is lost if the connection is
//! then closed with the body still arriving: the kernel resets a socket closed
//! with unread data, and a client that sends its whole body before reading
//! (Python's http.client, many SDKs, form posts) sees a broken pipe instead of
//! the answer. nginx's cure, here too: shut down the write side (the answer and
//! a FIN are on their way), then read and discard what the client still sends
//! — at most `server.linger` in all, and no longer than [`SILENCE`] without a
//! byte — and only then close.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;

/// A lingering connection whose client sent nothing for this long is closed
/// (nginx's `lingering_timeout`).
pub const SILENCE: Duration = Duration::from_secs(5);

/// What is read and thrown away at a time: the only memory a lingering connection holds.
const DISCARD_CHUNK: usize = 4096;

/// Reads and discards what the client still sends, then lets `io` close.
pub async fn drain<IO>(mut io: IO, total: Duration, metrics: &Metrics, shutdown: &CancellationToken)
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    metrics.lingering.inc();
    metrics.lingering_total.inc();
    let deadline = tokio::time::Instant::now() + total;
    let work = async {
        // The write side first: the client then has the whole answer and its end.
        if tokio::time::timeout(SILENCE, io.shutdown()).await.is_err() {
            return;
        }
        let mut buf = vec![0u8; DISCARD_CHUNK];
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return;
            }
            match tokio::time::timeout(SILENCE.min(left), io.read(&mut buf)).await {
                Ok(Ok(n)) if n > 0 => {}
                // End of stream, an error, or silence: done.
                _ => return,
            }
        }
    };
    tokio::select! {
        () = work => {}
        () = shutdown.cancelled() => {}
    }
    metrics.lingering.dec();
}

/// Wraps a connection hyper serves and, when hyper is done with it, hands it
/// back (through [`Returning::slot`]) instead of closing it — unless the
/// client had already ended its side, when there is nothing to linger for.
pub struct Returning<IO> {
    io: Option<IO>,
    eof: bool,
    slot: Arc<Mutex<Option<IO>>>,
}

impl<IO> Returning<IO> {
    pub fn new(io: IO) -> Self {
        Returning {
            io: Some(io),
            eof: false,
            slot: Arc::default(),
        }
    }

    /// Where the connection is left once hyper drops it.
    pub fn slot(&self) -> Arc<Mutex<Option<IO>>> {
        self.slot.clone()
    }
}

/// The connection a [`Returning`] left behind, if any.
pub fn take<IO>(slot: &Mutex<Option<IO>>) -> Option<IO> {
    slot.lock().ok().and_then(|mut s| s.take())
}

impl<IO> Drop for Returning<IO> {
    fn drop(&mut self) {
        if let Some(io) = self.io.take() {
            if !self.eof {
                if let Ok(mut slot) = self.slot.lock() {
                    *slot = Some(io);
                }
            }
        }
    }
}

fn gone() -> io::Error {
    io::Error::new(io::ErrorKind::NotConnected, "connection handed back")
}

impl<IO: AsyncRead + Unpin> AsyncRead for Returning<IO> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let Some(io) = this.io.as_mut() else {
            return Poll::Ready(Err(gone()));
        };
        let before = buf.filled().len();
        let r = Pin::new(io).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = r {
            this.eof |= buf.filled().len() == before && buf.remaining() > 0;
        }
        r
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Returning<IO> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.io.as_mut() {
            Some(io) => Pin::new(io).poll_write(cx, buf),
            None => Poll::Ready(Err(gone())),
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.io.as_mut() {
            Some(io) => Pin::new(io).poll_write_vectored(cx, bufs),
            None => Poll::Ready(Err(gone())),
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.io.as_ref().is_some_and(|io| io.is_write_vectored())
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.io.as_mut() {
            Some(io) => Pin::new(io).poll_flush(cx),
            None => Poll::Ready(Ok(())),
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.io.as_mut() {
            Some(io) => Pin::new(io).poll_shutdown(cx),
            None => Poll::Ready(Ok(())),
        }
    }
}
