//! Parking idle HTTP/1.1 keep-alive connections outside hyper.
//!
//! hyper keeps a connection's read buffer (8–16 KiB), write buffer (8 KiB) and
//! dispatcher state for as long as the connection is open, so 10,000 idle
//! keep-alive connections would cost ~220 MiB. nginx frees its buffers when a
//! connection goes idle; this does the same: once a plain HTTP/1.1 connection
//! has been idle for [`PARK_AFTER`], its I/O wrapper ([`Parkable`]) hands the
//! socket back and tells hyper "end of stream", hyper ends its connection
//! cleanly, and the caller waits for the socket to become readable before
//! serving it again with a fresh hyper connection.
//!
//! Telling hyper "end of stream" is only safe when hyper holds nothing of the
//! client's: no unparsed bytes and no unwritten response. hyper does not say,
//! so the wrapper parks only when all of these hold — no request in flight
//! ([`Shared::busy`], counted from the service call to the response body's
//! drop), the last request had no body, the last bytes read were the blank
//! line ending a head (a partial next head cannot end that way: it would be a
//! complete head), and no write is waiting for the socket. Connections that
//! speak HTTP/2 or were upgraded (101, CONNECT) never park.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};

/// How long a connection must be idle before it parks: long enough that a
/// client sending request after request never pays for rebuilding hyper's
/// connection, short enough that idle connections give their buffers back
/// before many pile up. A connection parks after 1–2 times this.
pub const PARK_AFTER: Duration = Duration::from_millis(20);

const END_OF_HEAD: u32 = u32::from_be_bytes(*b"\r\n\r\n");

/// What a connection's service calls and its I/O wrapper share.
#[derive(Default)]
pub struct Shared {
    /// Requests whose response body has not been dropped yet.
    busy: AtomicU32,
    /// Requests begun on this connection (the idle timer's activity mark).
    begun: AtomicU64,
    /// The last request had no body.
    bodiless: AtomicBool,
    /// HTTP/2 or an upgrade: hyper or the tunnel reads this stream to its end.
    never: AtomicBool,
    /// The socket, once the wrapper has parked it.
    parked: Mutex<Option<TcpStream>>,
}

impl Shared {
    /// Called for each request as the service receives it; the guard lives
    /// until the response body is dropped.
    #[inline]
    pub fn begin<B: Body>(self: &Arc<Self>, req: &Request<B>) -> Guard {
        self.busy.fetch_add(1, Relaxed);
        self.begun.fetch_add(1, Relaxed);
        self.bodiless.store(req.body().is_end_stream(), Relaxed);
        // HTTP/2 frames can end in a blank line too; hyper reads them to the end.
        if req.version() == http::Version::HTTP_2 || req.method() == http::Method::CONNECT {
            self.never.store(true, Relaxed);
        }
        Guard(Some(self.clone()))
    }

    /// Whether this connection has served a request: it speaks HTTP/1.1 (an
    /// HTTP/2 one never parks), so its next activation needs no protocol sniffing.
    pub fn served(&self) -> bool {
        self.begun.load(Relaxed) > 0
    }

    /// The socket the wrapper parked, if it did.
    pub fn take_parked(&self) -> Option<TcpStream> {
        self.parked.lock().ok().and_then(|mut s| s.take())
    }
}

/// One request in flight; see [`Shared::begin`].
pub struct Guard(Option<Arc<Shared>>);

impl Guard {
    /// A guard that counts nothing (connections that never park).
    pub fn none() -> Self {
        Guard(None)
    }

    /// Called with each response: after a 101 the stream is the tunnel's.
    #[inline]
    pub fn answered<B>(&self, resp: &Response<B>) {
        if let Some(s) = &self.0 {
            if resp.status() == http::StatusCode::SWITCHING_PROTOCOLS {
                s.never.store(true, Relaxed);
            }
        }
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(s) = &self.0 {
            s.busy.fetch_sub(1, Relaxed);
        }
    }
}

/// A response body that holds its request's [`Guard`] until hyper drops it.
pub struct Tracked<B> {
    inner: B,
    _guard: Guard,
}

impl<B> Tracked<B> {
    pub fn new(inner: B, guard: Guard) -> Self {
        Tracked { inner, _guard: guard }
    }
}

impl<B: Body + Unpin> Body for Tracked<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A plain TCP stream that, once idle long enough, parks itself in
/// [`Shared`] and reads as end of stream.
pub struct Parkable {
    stream: Option<TcpStream>,
    shared: Arc<Shared>,
    /// The last four bytes read, big-endian.
    tail: u32,
    write_blocked: bool,
    idle: Option<Pin<Box<Sleep>>>,
    begun_at_arm: u64,
}

impl Parkable {
    pub fn new(stream: TcpStream, shared: Arc<Shared>) -> Self {
        Parkable {
            stream: Some(stream),
            shared,
            tail: 0,
            write_blocked: false,
            idle: None,
            begun_at_arm: 0,
        }
    }

    fn parkable(&self) -> bool {
        let s = &self.shared;
        self.tail == END_OF_HEAD
            && !self.write_blocked
            && s.busy.load(Relaxed) == 0
            && s.bodiless.load(Relaxed)
            && !s.never.load(Relaxed)
    }

    /// The socket has nothing to read: park if idle for a whole [`PARK_AFTER`].
    /// The timer is armed once and moved on only when it fires after activity,
    /// so a busy connection pays for one timer per period, not per request.
    fn poll_idle(&mut self, cx: &mut Context<'_>) -> bool {
        if !self.parkable() {
            return false;
        }
        let begun = self.shared.begun.load(Relaxed);
        let Some(idle) = self.idle.as_mut() else {
            let mut sleep = Box::pin(tokio::time::sleep(PARK_AFTER));
            let _ = sleep.as_mut().poll(cx);
            self.idle = Some(sleep);
            self.begun_at_arm = begun;
            return false;
        };
        // The timer has this task's waker since it was armed: no need to poll it until it fires.
        if !idle.is_elapsed() {
            return false;
        }
        if begun != self.begun_at_arm {
            self.begun_at_arm = begun;
            idle.as_mut().reset(Instant::now() + PARK_AFTER);
            let _ = idle.as_mut().poll(cx);
            return false;
        }
        if let Ok(mut slot) = self.shared.parked.lock() {
            *slot = self.stream.take();
        }
        true
    }
}

impl AsyncRead for Parkable {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let Some(stream) = this.stream.as_mut() else {
            return Poll::Ready(Ok(()));
        };
        let before = buf.filled().len();
        match Pin::new(stream).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let got = &buf.filled()[before..];
                this.tail = match got.last_chunk::<4>() {
                    Some(last) => u32::from_be_bytes(*last),
                    None => got.iter().fold(this.tail, |t, &b| (t << 8) | u32::from(b)),
                };
                Poll::Ready(Ok(()))
            }
            Poll::Pending if this.poll_idle(cx) => Poll::Ready(Ok(())),
            other => other,
        }
    }
}

impl Parkable {
    fn track<T>(&mut self, r: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        self.write_blocked = r.is_pending();
        r
    }
}

fn gone() -> io::Error {
    io::Error::new(io::ErrorKind::BrokenPipe, "connection parked")
}

impl AsyncWrite for Parkable {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let r = match self.stream.as_mut() {
            Some(s) => Pin::new(s).poll_write(cx, buf),
            None => Poll::Ready(Err(gone())),
        };
        self.track(r)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = match self.stream.as_mut() {
            Some(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            None => Poll::Ready(Err(gone())),
        };
        self.track(r)
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.stream.as_mut() {
            Some(s) => Pin::new(s).poll_flush(cx),
            None => Poll::Ready(Ok(())),
        }
    }

    /// A parked socket is not shut down: hyper is done with it, the caller is not.
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.stream.as_mut() {
            Some(s) => Pin::new(s).poll_shutdown(cx),
            None => Poll::Ready(Ok(())),
        }
    }
}
