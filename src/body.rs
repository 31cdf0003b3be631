//! The one body type every response gatekeeper sends and every request it
//! forwards carries, and the small constructors for it.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::Response;
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The body type of every response gatekeeper sends and every request it forwards.
pub type Body = BoxBody<Bytes, BoxError>;

/// Boxes a fixed response (page, asset, error) into the common body type.
pub fn boxed(resp: Response<Full<Bytes>>) -> Response<Body> {
    resp.map(|b| b.map_err(|never| match never {}).boxed())
}

pub fn empty() -> Body {
    Empty::new().map_err(|never| match never {}).boxed()
}

pub fn full(b: Bytes) -> Body {
    Full::new(b).map_err(|never| match never {}).boxed()
}

/// A body of known length, so that hyper frames it with Content-Length.
pub struct Sized {
    inner: Body,
    len: u64,
}

impl Sized {
    pub fn new(inner: Body, len: u64) -> Sized {
        Sized { inner, len }
    }
}

impl HttpBody for Sized {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.len)
    }
}
