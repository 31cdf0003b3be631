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
//!
//! The same timer enforces `header_timeout` on plain connections (hyper's
//! own costs a timer per request): a connection with no request in flight
//! that has not completed a head within `header_timeout` of its last answer
//! (or of its start) is closed.

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
use tokio_util::sync::CancellationToken;

/// How long a connection must be idle before it parks: long enough that a
/// client sending request after request never pays for rebuilding hyper's
/// connection, short enough that idle connections give their buffers back
/// before many pile up. Counted from the last answer.
pub const PARK_AFTER: Duration = Duration::from_millis(20);

const END_OF_HEAD: u32 = u32::from_be_bytes(*b"\r\n\r\n");

/// What a connection's service calls and its I/O wrapper share.
pub struct Shared {
    /// Requests whose response body has not been dropped yet.
    busy: AtomicU32,
    /// The last request had no body.
    bodiless: AtomicBool,
    /// HTTP/2 or an upgrade: hyper or the tunnel reads this stream to its end.
    never: AtomicBool,
    /// The socket, once the wrapper has parked it.
    parked: Mutex<Option<TcpStream>>,
    /// The socket, once hyper is done with it while the client may still be
    /// sending: for a lingering close (see [`crate::linger`]).
    closing: Mutex<Option<TcpStream>>,
    /// When the wait for the next head began (the last response body's drop,
    /// or the connection's (re)activation), in nanoseconds since `epoch`.
    waiting_since: AtomicU64,
    epoch: Instant,
}

impl Default for Shared {
    fn default() -> Self {
        Shared::new()
    }
}

impl Shared {
    pub fn new() -> Self {
        Shared {
            busy: AtomicU32::new(0),
            bodiless: AtomicBool::new(false),
            never: AtomicBool::new(false),
            parked: Mutex::new(None),
            closing: Mutex::new(None),
            waiting_since: AtomicU64::new(0),
            epoch: Instant::now(),
        }
    }

    /// The wait for the next head begins now ([`Parkable`] bounds it by `header_timeout`).
    pub fn mark_waiting(&self) {
        let ns = u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.waiting_since.store(ns, Relaxed);
    }

    /// When the wait for the next head began.
    fn waiting_since(&self) -> Instant {
        self.epoch + Duration::from_nanos(self.waiting_since.load(Relaxed))
    }

    /// Called for each request as the service receives it; the guard lives
    /// until the response body is dropped.
    #[inline]
    pub fn begin<B: Body>(self: &Arc<Self>, req: &Request<B>) -> Guard {
        self.busy.fetch_add(1, Relaxed);
        self.bodiless.store(req.body().is_end_stream(), Relaxed);
        // HTTP/2 frames can end in a blank line too; hyper reads them to the end.
        if req.version() == http::Version::HTTP_2 || req.method() == http::Method::CONNECT {
            self.never.store(true, Relaxed);
        }
        Guard(Some(self.clone()))
    }

    /// The socket the wrapper parked, if it did.
    pub fn take_parked(&self) -> Option<TcpStream> {
        self.parked.lock().ok().and_then(|mut s| s.take())
    }

    /// The socket hyper let go of while the client may still be sending, if so.
    pub fn take_closing(&self) -> Option<TcpStream> {
        self.closing.lock().ok().and_then(|mut s| s.take())
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
            s.mark_waiting();
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

/// Waits, parked, for the client's next bytes: true once the socket is
/// readable (a request, or an end or error that the next hyper connection
/// reads), false after `limit` or on shutdown.
///
/// This is all a parked connection runs, so it is kept small: the socket's
/// readiness is polled directly (no waiter node), beside one timer and the
/// shutdown's waiter. A task is as large as its largest state, and this is
/// the state 10,000 idle connections sit in.
#[allow(clippy::manual_async_fn)] // deliberate: see above
pub fn wait<'a>(
    stream: &'a TcpStream,
    limit: Duration,
    shutdown: &'a CancellationToken,
) -> impl Future<Output = bool> + Send + 'a {
    // An `async move` block over references, not an `async fn` (which keeps
    // a copy of its arguments); the polling closure owns the pinned handles.
    async move {
        let mut timer = std::pin::pin!(tokio::time::sleep(limit));
        let mut cancelled = std::pin::pin!(shutdown.cancelled());
        std::future::poll_fn(move |cx| {
            // Every source is polled while pending, so each holds this task's waker.
            if cancelled.as_mut().poll(cx).is_ready() {
                return Poll::Ready(false);
            }
            if let Poll::Ready(r) = stream.poll_read_ready(cx) {
                return Poll::Ready(r.is_ok());
            }
            if timer.as_mut().poll(cx).is_ready() {
                return Poll::Ready(false);
            }
            Poll::Pending
        })
        .await
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
    header_timeout: Duration,
    timer: Option<Pin<Box<Sleep>>>,
    /// The timer is set for the head deadline, not for the next idle check.
    long: bool,
    /// The client ended its side, or kept it idle past the head deadline:
    /// nothing to linger for when hyper lets go.
    done: bool,
}

/// What a connection with nothing to read does.
enum Idle {
    Wait,
    Park,
    /// No complete head within `header_timeout`.
    Expired,
}

impl Parkable {
    /// `header_timeout` bounds the wait for each request head, the first from
    /// the last [`Shared::mark_waiting`]; hyper's own header timeout is off for
    /// connections served through this wrapper.
    pub fn new(stream: TcpStream, shared: Arc<Shared>, header_timeout: Duration) -> Self {
        Parkable {
            stream: Some(stream),
            shared,
            tail: 0,
            write_blocked: false,
            header_timeout,
            timer: None,
            long: false,
            done: false,
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

    /// The socket has nothing to read: park once [`PARK_AFTER`] has passed
    /// since the last answer, close if the head is overdue. The timer is moved
    /// on only when it fires (or to bring a far head deadline nearer once the
    /// connection can park), so a busy connection pays for one timer per
    /// period, not per request. Deadlines only move later, so a timer set
    /// earlier than needed is safe: it fires, finds nothing due and is set again.
    fn poll_idle(&mut self, cx: &mut Context<'_>) -> Idle {
        let s = &*self.shared;
        // In flight: body and upstream deadlines apply. A tunnel or HTTP/2 is
        // not waiting for an HTTP/1 head.
        if s.busy.load(Relaxed) > 0 || s.never.load(Relaxed) {
            return Idle::Wait;
        }
        let parkable = self.parkable();
        let since = s.waiting_since();
        let (quiet, due) = (since + PARK_AFTER, since + self.header_timeout);
        match self.timer.as_mut() {
            None => {}
            // The timer has this task's waker since it was armed: no need to
            // poll it until it fires (a far head deadline is brought nearer
            // once the connection can park).
            Some(t) if !t.is_elapsed() => {
                let nearer = parkable && self.long;
                if !nearer {
                    return Idle::Wait;
                }
            }
            Some(_) => {
                let now = Instant::now();
                if parkable && now >= quiet {
                    if let Ok(mut slot) = s.parked.lock() {
                        *slot = self.stream.take();
                    }
                    return Idle::Park;
                }
                if now >= due {
                    return Idle::Expired;
                }
            }
        }
        if parkable {
            self.arm(cx, quiet.min(due), false);
        } else {
            self.arm(cx, due, true);
        }
        Idle::Wait
    }

    /// Bytes moved: make sure the timer runs. hyper reads again only when
    /// woken, so an idle connection learns that it is idle from this timer
    /// (one that fired while a request was in flight is set again here, by the
    /// answer's writes).
    fn keep_timer(&mut self, cx: &mut Context<'_>) {
        // A far head deadline is brought nearer too: the connection may be able to
        // park sooner. A tunnel or HTTP/2 connection needs no timer.
        if (self.long || self.timer.as_ref().is_none_or(|t| t.is_elapsed())) && !self.shared.never.load(Relaxed) {
            let due = self.shared.waiting_since() + self.header_timeout;
            self.arm(cx, (Instant::now() + PARK_AFTER).min(due), false);
        }
    }

    fn arm(&mut self, cx: &mut Context<'_>, deadline: Instant, long: bool) {
        self.long = long;
        let timer = match self.timer.as_mut() {
            Some(t) => {
                t.as_mut().reset(deadline);
                t
            }
            None => self.timer.insert(Box::pin(tokio::time::sleep_until(deadline))),
        };
        let _ = timer.as_mut().poll(cx);
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
                this.done |= got.is_empty() && buf.remaining() > 0;
                this.tail = match got.last_chunk::<4>() {
                    Some(last) => u32::from_be_bytes(*last),
                    None => got.iter().fold(this.tail, |t, &b| (t << 8) | u32::from(b)),
                };
                this.keep_timer(cx);
                Poll::Ready(Ok(()))
            }
            Poll::Pending => match this.poll_idle(cx) {
                Idle::Wait => Poll::Pending,
                Idle::Park => Poll::Ready(Ok(())),
                Idle::Expired => {
                    this.done = true;
                    Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "no complete request head within header_timeout",
                    )))
                }
            },
            other => other,
        }
    }
}

impl Drop for Parkable {
    /// hyper is done with the connection. Unless the client has ended its
    /// side (or it is HTTP/2 or a tunnel, which read to their end), the client
    /// may still be sending what hyper did not read: keep the socket for a
    /// lingering close instead of closing it under unread data.
    fn drop(&mut self) {
        if let Some(stream) = self.stream.take() {
            if !self.done && !self.shared.never.load(Relaxed) {
                if let Ok(mut slot) = self.shared.closing.lock() {
                    *slot = Some(stream);
                }
            }
        }
    }
}

impl Parkable {
    fn track<T>(&mut self, cx: &mut Context<'_>, r: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        self.write_blocked = r.is_pending();
        self.keep_timer(cx);
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
        self.track(cx, r)
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
        self.track(cx, r)
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.stream.as_mut() {
            Some(s) => {
                let r = Pin::new(s).poll_flush(cx);
                self.keep_timer(cx);
                r
            }
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
