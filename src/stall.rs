//! An upstream that stops mid-exchange: silence while it sends its answer's
//! body (`upstream.read_timeout`), or while it should take the request's body
//! (`upstream.send_timeout`). Each exchange has at most one timer, set when it
//! first waits and moved on only when it fires (as `buffer::read_request`
//! does): progress costs no timer registration.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use tokio::time::{Instant, Sleep};

/// The upstream sent nothing for `upstream.read_timeout` in the middle of its answer.
#[derive(Debug, thiserror::Error)]
#[error("upstream sent nothing for {0:?} in the middle of its answer")]
pub struct ReadTimeout(pub Duration);

/// Tells when a stream has made no progress for `limit`.
pub struct Silence {
    limit: Duration,
    /// Created on the first wait: an answer that never waits costs no timer.
    timer: Option<Pin<Box<Sleep>>>,
    /// When the current wait began (set on the first wait: no clock read for
    /// an answer that never waits).
    since: Option<Instant>,
    /// Progress since `since`: the next wait starts a new silence.
    progressed: bool,
}

impl Silence {
    pub fn new(limit: Duration) -> Silence {
        Silence {
            limit,
            timer: None,
            since: None,
            progressed: true,
        }
    }

    pub fn limit(&self) -> Duration {
        self.limit
    }

    /// Something came: the next wait is a new silence.
    #[inline]
    pub fn progress(&mut self) {
        self.progressed = true;
    }

    /// Called whenever the stream waits; ready once it has been silent for `limit`.
    pub fn poll_expired(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let since = match self.since {
            Some(t) if !self.progressed => t,
            // Only the time is read here; a timer set for an earlier wait
            // fires early and is moved on below.
            _ => *self.since.insert(Instant::now()),
        };
        self.progressed = false;
        let due = since + self.limit;
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(due)));
        while timer.as_mut().poll(cx).is_ready() {
            if Instant::now() >= due {
                return Poll::Ready(());
            }
            timer.as_mut().reset(due);
        }
        Poll::Pending
    }
}

/// How a request body is being taken by the upstream's connection, shared
/// between the body (on the connection's task) and the exchange that bounds it.
#[derive(Clone)]
pub struct SendWatch(Arc<Shared>);

struct Shared {
    base: Instant,
    /// Milliseconds since `base` of the last frame taken, shifted left by 2,
    /// with `WAITING_ON_SOURCE` and `DONE`.
    state: AtomicU64,
}

/// The body's own source has nothing yet (a slow client, a file read): the
/// upstream is not the one holding things up.
const WAITING_ON_SOURCE: u64 = 1;
/// The whole body has been handed to the connection.
const DONE: u64 = 2;

/// What the upstream has done with the request body so far.
pub enum Taken {
    /// All of it (what may still sit in buffers is `upstream.timeout`'s business).
    All,
    /// More waits; the upstream last took some at this instant.
    LastAt(Instant),
}

impl SendWatch {
    /// Watches `body`; the returned body goes to the upstream.
    pub fn new<B>(body: B) -> (SendWatch, Watched<B>) {
        let watch = SendWatch(Arc::new(Shared {
            base: Instant::now(),
            state: AtomicU64::new(0),
        }));
        (watch.clone(), Watched { inner: body, watch })
    }

    fn mark(&self, flags: u64) {
        let ms = u64::try_from(self.0.base.elapsed().as_millis()).unwrap_or(u64::MAX >> 2);
        self.0.state.store(ms << 2 | flags, Ordering::Relaxed);
    }

    pub fn taken(&self) -> Taken {
        let s = self.0.state.load(Ordering::Relaxed);
        if s & DONE != 0 {
            Taken::All
        } else if s & WAITING_ON_SOURCE != 0 {
            Taken::LastAt(Instant::now())
        } else {
            Taken::LastAt(self.0.base + Duration::from_millis(s >> 2))
        }
    }
}

/// A request body whose taking is reported to a [`SendWatch`].
pub struct Watched<B> {
    inner: B,
    watch: SendWatch,
}

impl<B> HttpBody for Watched<B>
where
    B: HttpBody<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let r = Pin::new(&mut self.inner).poll_frame(cx);
        match &r {
            Poll::Pending => self.watch.mark(WAITING_ON_SOURCE),
            // hyper asks no more once the body says it has ended.
            Poll::Ready(Some(Ok(_))) if !self.inner.is_end_stream() => self.watch.mark(0),
            Poll::Ready(_) => self.watch.mark(DONE),
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Which bound an exchange ran into.
#[derive(Debug, PartialEq, Eq)]
pub enum Expired {
    /// No response head within `upstream.timeout`.
    Head,
    /// The upstream took none of the request body for `upstream.send_timeout`.
    Send,
}

/// Runs `exchange` until the response head, within `head` from now and, while
/// the request body is being sent, with no more than `send.1` between two
/// pieces the upstream takes. One timer for both.
pub async fn bounded<F: Future>(
    exchange: Pin<&mut F>,
    head: Duration,
    send: Option<(&SendWatch, Duration)>,
) -> Result<F::Output, Expired> {
    let start = Instant::now();
    let head_due = start + head;
    let first = send.map_or(head_due, |(_, limit)| (start + limit).min(head_due));
    let mut timer = std::pin::pin!(crate::timers::Timer::at(first));
    let mut exchange = exchange;
    std::future::poll_fn(|cx| {
        if let Poll::Ready(v) = exchange.as_mut().poll(cx) {
            return Poll::Ready(Ok(v));
        }
        while timer.as_mut().poll(cx).is_ready() {
            let now = Instant::now();
            if now >= head_due {
                return Poll::Ready(Err(Expired::Head));
            }
            let next = match send.map(|(w, limit)| (w.taken(), limit)) {
                Some((Taken::LastAt(at), limit)) if now >= at + limit => return Poll::Ready(Err(Expired::Send)),
                Some((Taken::LastAt(at), limit)) => (at + limit).min(head_due),
                Some((Taken::All, _)) | None => head_due,
            };
            timer.as_mut().get_mut().reset(next);
        }
        Poll::Pending
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, StreamBody};

    const MS: Duration = Duration::from_millis(1);

    fn three_frames() -> impl HttpBody<Data = Bytes, Error = std::io::Error> + Unpin {
        StreamBody::new(futures_util::stream::iter(
            (0..3).map(|_| Ok(Frame::data(Bytes::from_static(b"x")))),
        ))
    }

    #[tokio::test]
    async fn silence_counts_from_the_last_progress() {
        let mut s = Silence::new(100 * MS);
        let t0 = Instant::now();
        std::future::poll_fn(|cx| {
            assert!(s.poll_expired(cx).is_pending());
            Poll::Ready(())
        })
        .await;
        tokio::time::sleep(60 * MS).await;
        s.progress();
        // The timer set at 0 fires at 100 ms and is moved on to 160 ms.
        std::future::poll_fn(|cx| s.poll_expired(cx)).await;
        let took = t0.elapsed();
        assert!(took >= 160 * MS && took < 2000 * MS, "{took:?}");
    }

    #[tokio::test]
    async fn a_body_that_is_taken_meets_no_send_timeout() {
        let (watch, mut body) = SendWatch::new(three_frames());
        let taker = async move {
            while let Some(f) = body.frame().await {
                f.map(drop).unwrap_or_else(|e| panic!("{e}"));
                tokio::time::sleep(60 * MS).await;
            }
            // All taken: only the head deadline is left.
            std::future::pending::<()>().await;
        };
        let t0 = Instant::now();
        let r = bounded(std::pin::pin!(taker), 400 * MS, Some((&watch, 100 * MS))).await;
        assert_eq!(r, Err(Expired::Head));
        assert!(t0.elapsed() >= 400 * MS);
    }

    #[tokio::test]
    async fn a_body_nobody_takes_meets_the_send_timeout() {
        let (watch, mut body) = SendWatch::new(three_frames());
        let stuck = async move {
            let _ = body.frame().await;
            std::future::pending::<()>().await;
        };
        let t0 = Instant::now();
        let r = bounded(std::pin::pin!(stuck), 5000 * MS, Some((&watch, 100 * MS))).await;
        assert_eq!(r, Err(Expired::Send));
        let took = t0.elapsed();
        assert!(took >= 100 * MS && took < 3000 * MS, "{took:?}");
    }
}
