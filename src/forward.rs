//! One exchange with the upstream: the request body read (buffered or
//! streamed), the head sent on a pooled connection (resent once on a fresh one
//! when the pooled one was stale), the response-head deadline, upgrade relay,
//! and the answer's body passed on (spooled against slow clients). Every way
//! it can fail is one [`ForwardError`], answered by [`ForwardError::response`].

use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body::Body as HttpBody;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;

use crate::body::{self, boxed, Body, BoxError};
use crate::buffer::{self, RequestBodyError};
use crate::config::Config;
use crate::decision::Mark;
use crate::hop;
use crate::page;
use crate::rewrite::{rewrite_request_headers, Origin};
use crate::stall::{self, Expired, SendWatch};
use crate::upstream::{error_chain, Answer, Hold, Lease, PooledBody, UpstreamClient};
use std::sync::atomic::AtomicBool;

static X_MAINTENANCE_MODE: HeaderName = HeaderName::from_static("x-maintenance-mode");
static X_ACCEL_BUFFERING: HeaderName = HeaderName::from_static("x-accel-buffering");

// Defined with the counters (which must not depend on this module: the
// upstream client counts too); the pipeline names it from here.
pub use crate::metrics::Outcome;

/// Why a forwarded request got no answer from the upstream.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    /// Reading the client's body failed (too large, too slow, malformed, no disk).
    #[error(transparent)]
    Body(#[from] RequestBodyError),
    /// The request target cannot be sent upstream.
    #[error("request target cannot be forwarded: {0}")]
    Target(http::Error),
    /// Connecting or exchanging with the upstream failed before a response head.
    #[error("{}", error_chain(&**.0))]
    Unreachable(BoxError),
    /// No response head within `upstream.timeout`.
    #[error("no response head from the upstream in time")]
    Timeout,
    /// The upstream took none of the request body for `upstream.send_timeout`.
    #[error("upstream took none of the request body for {0:?}")]
    SendTimeout(std::time::Duration),
    /// The upstream switched protocols on a request that did not ask to.
    #[error("upstream switched protocols unasked")]
    UnaskedUpgrade,
}

impl ForwardError {
    pub fn outcome(&self) -> Outcome {
        match self {
            ForwardError::Body(_) => Outcome::Refused,
            ForwardError::Target(_) => Outcome::Ok,
            ForwardError::Unreachable(_) | ForwardError::UnaskedUpgrade => Outcome::Unreachable,
            ForwardError::Timeout => Outcome::Timeout,
            ForwardError::SendTimeout(_) => Outcome::SendTimeout,
        }
    }

    /// The one mapping from a failed exchange to what the client gets.
    pub fn response(&self) -> Response<Body> {
        let status = match self {
            ForwardError::Body(RequestBodyError::TooLarge(_)) => StatusCode::PAYLOAD_TOO_LARGE,
            ForwardError::Body(RequestBodyError::Timeout(_)) => StatusCode::REQUEST_TIMEOUT,
            ForwardError::Body(RequestBodyError::Client(_)) | ForwardError::Target(_) => StatusCode::BAD_REQUEST,
            ForwardError::Body(RequestBodyError::Disk(_)) => StatusCode::INTERNAL_SERVER_ERROR,
            ForwardError::Unreachable(_) | ForwardError::UnaskedUpgrade => StatusCode::BAD_GATEWAY,
            ForwardError::Timeout | ForwardError::SendTimeout(_) => StatusCode::GATEWAY_TIMEOUT,
        };
        match self {
            ForwardError::Body(RequestBodyError::Disk(_)) => tracing::error!(error = %self, "request refused"),
            ForwardError::Unreachable(_) | ForwardError::SendTimeout(_) => {
                tracing::warn!(error = %self, "upstream request failed")
            }
            _ => {}
        }
        let mut r = boxed(page::error_response(status));
        if let ForwardError::Body(_) = self {
            // The rest of the body is unread: this connection cannot carry another request.
            r.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        r
    }
}

/// Forwards `req` and returns the upstream's answer, marked with
/// `X-Maintenance-Mode` as `mark` says.
///
/// An `async move` block over the arguments rather than an `async fn`, and the
/// head prepared in a block of its own: a request head is ~250 bytes, and
/// every copy of it that a future keeps (an `async fn` keeps its arguments
/// and a local copy of each; a borrowed local is kept to the end of its
/// scope) is moved with the future and costs cache lines on every request.
pub fn forward<'a, B>(
    upstream: &'a UpstreamClient,
    cfg: &'a Config,
    mut req: Request<B>,
    origin: Origin<'a>,
    mark: Mark,
    paused: Option<&'a AtomicBool>,
) -> impl std::future::Future<Output = Result<Response<Body>, ForwardError>> + 'a
where
    B: HttpBody<Data = Bytes> + Send + Sync + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    let upgrade = hop::is_upgrade(req.headers());
    let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    let head_only = req.method() == http::Method::HEAD;
    async move {
        let b = &cfg.buffering;
        let Prepared { out, retry, watch } = {
            let (mut parts, body) = req.into_parts();
            // We answer `Expect: 100-continue` ourselves (hyper does when the body is first read).
            parts.headers.remove(header::EXPECT);
            let body: Body = if body.is_end_stream() {
                body::empty()
            } else if b.requests && !upgrade {
                let dir = buffer::temp_dir(b.dir.as_deref());
                // Boxed: only requests with a body pay for the reading state's size.
                let buffered = Box::pin(buffer::read_request(
                    body,
                    b.memory,
                    b.max_body,
                    &dir,
                    cfg.server.body_timeout,
                ))
                .await?;
                parts
                    .headers
                    .insert(header::CONTENT_LENGTH, HeaderValue::from(buffered.len()));
                buffered.into_body()
            } else {
                http_body_util::Limited::new(body, usize::try_from(b.max_body).unwrap_or(usize::MAX)).boxed()
            };
            prepare(upstream, parts, body, &origin, upgrade)?
        };
        let u = &cfg.upstream;
        // Counts inside the head deadline (the config keeps it shorter).
        let hold = Hold {
            until: (!u.wait.is_zero()).then(|| tokio::time::Instant::now() + u.wait),
            paused,
        };
        // The request goes into the sending future at once, and the block
        // below awaits that future where it is pinned (moved into the block,
        // it would be kept twice: captured, and moved again to be awaited).
        let mut first = std::pin::pin!(upstream.send(out, hold));
        // Pinned where it is: handing the future itself to `bounded` would copy it twice.
        let exchange = std::pin::pin!(async {
            match first.as_mut().await {
                // nginx's way: the pooled connection had been closed under the
                // request; resend once on a fresh connection, which cannot be stale.
                // With `upstream.wait`, a fresh connection closed unanswered too: an
                // app going away (a restart) drops what it accepted but never
                // answered, and the resend is held until it is back.
                (Err(e), reused)
                    if retry.is_some()
                        && (reused || hold.holds(tokio::time::Instant::now()))
                        && stale_connection(&*e) =>
                {
                    tracing::debug!(error = %error_chain(&*e), "upstream connection closed before any answer; resending on a new one");
                    let Some(retry) = retry else {
                        return Err(e);
                    };
                    // Boxed: rare, and the exchange's state stays small.
                    Box::pin(resend(upstream, retry, &origin, upgrade, hold)).await
                }
                (r, _) => r,
            }
        });

        let send = watch.as_ref().map(|w| (w, u.send_timeout));
        let (resp, lease) = match stall::bounded(exchange, u.timeout, send).await {
            Err(Expired::Head) => return Err(ForwardError::Timeout),
            Err(Expired::Send) => return Err(ForwardError::SendTimeout(u.send_timeout)),
            Ok(Err(e)) => return Err(ForwardError::Unreachable(e)),
            Ok(Ok(r)) => r,
        };

        relayed(resp, lease, client_upgrade, mark, head_only, cfg)
    }
}

/// The upstream's answer as the client gets it: its hop-by-hop headers gone,
/// an upgrade relayed, marked as `mark` says, its body on the way back to the
/// pool (or spooled, as `[buffering]` says).
fn relayed(
    mut resp: Response<Incoming>,
    lease: Option<Lease>,
    client_upgrade: Option<OnUpgrade>,
    mark: Mark,
    head_only: bool,
    cfg: &Config,
) -> Result<Response<Body>, ForwardError> {
    let (b, u) = (&cfg.buffering, &cfg.upstream);
    // Our own HTTP/1.1 towards the client, whatever the upstream spoke (an
    // HTTP/1.0 app's version would make hyper answer in HTTP/1.0 and close).
    *resp.version_mut() = http::Version::HTTP_11;
    // The connection goes back to the pool once its answer has been read to
    // the end; an upgraded one belongs to the relay from now on.
    let lease = lease.filter(|_| resp.status() != StatusCode::SWITCHING_PROTOCOLS);
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        // SECURITY: never switch protocols on a connection that did not ask to.
        let client_side = client_upgrade.ok_or(ForwardError::UnaskedUpgrade)?;
        let upstream_side = hyper::upgrade::on(&mut resp);
        tokio::spawn(async move {
            match tokio::try_join!(client_side, upstream_side) {
                Ok((c, u)) => {
                    let (mut c, mut u) = (TokioIo::new(c), TokioIo::new(u));
                    if let Err(e) = tokio::io::copy_bidirectional(&mut c, &mut u).await {
                        tracing::debug!(error = %e, "upgraded connection ended");
                    }
                }
                Err(e) => tracing::debug!(error = %e, "upgrade failed"),
            }
        });
        hop::strip(resp.headers_mut(), true);
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    } else {
        hop::strip(resp.headers_mut(), false);
    }
    match mark {
        Mark::None => {}
        Mark::Bypass => {
            resp.headers_mut()
                .insert(X_MAINTENANCE_MODE.clone(), HeaderValue::from_static("bypass"));
        }
        Mark::ReadOnly => {
            resp.headers_mut()
                .insert(X_MAINTENANCE_MODE.clone(), HeaderValue::from_static("read-only"));
        }
    }
    // nginx's convention: the app asks for this answer to be relayed unbuffered.
    let unbuffered = resp
        .headers_mut()
        .remove(&X_ACCEL_BUFFERING)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"no"));
    let status = resp.status();
    let no_body = head_only
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    // A small answer of known length is already out of the app's hands (it sits in
    // socket buffers); spooling it would only add work.
    let small = resp.body().size_hint().exact().is_some_and(|n| n <= b.memory as u64);
    let resp = resp.map(|inner| PooledBody::new(inner, lease, u.read_timeout));
    Ok(if no_body || unbuffered || !b.responses || small {
        resp.map(BodyExt::boxed)
    } else {
        let dir = buffer::temp_dir(b.dir.as_deref());
        resp.map(|body| buffer::spool_response(body, b.memory, dir))
    })
}

/// What a resend needs of the request: copied before gatekeeper's own
/// headers were added (fewer to copy; the resend adds them again).
struct Retry {
    method: http::Method,
    uri: http::Uri,
    headers: http::HeaderMap,
    host: Option<HeaderValue>,
}

/// The request as the upstream gets it, the copy a resend needs (for an
/// idempotent request without a body), and the watch on the body's sending.
struct Prepared {
    out: Request<Body>,
    retry: Option<Retry>,
    watch: Option<SendWatch>,
}

fn prepare(
    upstream: &UpstreamClient,
    mut parts: http::request::Parts,
    body: Body,
    origin: &Origin<'_>,
    upgrade: bool,
) -> Result<Prepared, ForwardError> {
    let uri = upstream.uri(parts.uri.path_and_query()).map_err(ForwardError::Target)?;
    // The target's authority wins over Host (RFC 9112 §3.2.2: an absolute-form
    // target; HTTP/2's :authority); the upstream speaks HTTP/1.1 and wants Host.
    let host = match parts.uri.authority() {
        Some(a) => HeaderValue::from_str(a.as_str()).ok(),
        None => parts.headers.get(header::HOST).cloned(),
    };
    parts.uri = uri;
    // The client picks the upstream's protocol (HTTP/1.1, or h2 for h2c://).
    parts.version = http::Version::HTTP_11;
    // A pooled connection the upstream is just closing loses the request written
    // to it. Resending is safe only for idempotent requests without a body.
    let retry = (is_idempotent(&parts.method) && body.is_end_stream()).then(|| Retry {
        method: parts.method.clone(),
        uri: parts.uri.clone(),
        headers: parts.headers.clone(),
        host: host.clone(),
    });
    rewrite_request_headers(&mut parts.headers, upstream, origin, host, upgrade);
    // A body is watched while the upstream takes it (`upstream.send_timeout`).
    let (watch, body) = if body.is_end_stream() {
        (None, body)
    } else {
        let (w, b) = SendWatch::new(body);
        (Some(w), b.boxed())
    };
    Ok(Prepared {
        out: Request::from_parts(parts, body),
        retry,
        watch,
    })
}

/// The request again, on a new connection.
async fn resend(upstream: &UpstreamClient, retry: Retry, origin: &Origin<'_>, upgrade: bool, hold: Hold<'_>) -> Answer {
    let Retry {
        method,
        uri,
        mut headers,
        host,
    } = retry;
    rewrite_request_headers(&mut headers, upstream, origin, host, upgrade);
    let mut again = Request::new(body::empty());
    *again.method_mut() = method;
    *again.uri_mut() = uri;
    *again.headers_mut() = headers;
    upstream.send_fresh(again, hold).await
}

fn is_idempotent(m: &http::Method) -> bool {
    use http::Method as M;
    matches!(*m, M::GET | M::HEAD | M::OPTIONS | M::TRACE | M::PUT | M::DELETE)
}

/// The upstream closed or reset the connection before any response head:
/// the request was lost with the connection, not refused by the app.
fn stale_connection(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(c) = cur {
        if let Some(h) = c.downcast_ref::<hyper::Error>() {
            if h.is_incomplete_message() || h.is_canceled() || h.is_closed() {
                return true;
            }
        }
        if let Some(io) = c.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind as K;
            if matches!(
                io.kind(),
                K::ConnectionReset | K::BrokenPipe | K::ConnectionAborted | K::UnexpectedEof
            ) {
                return true;
            }
        }
        cur = c.source();
    }
    false
}
