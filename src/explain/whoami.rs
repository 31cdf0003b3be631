//! `GET /.gatekeeper/whoami` (only with `clients.whoami = true`): a visitor's
//! own request, explained as JSON. The question a visitor has is "why do I
//! get the maintenance page", so the request is explained as it would be for
//! `?path=` (default `/`) and `?method=` (default this request's), with
//! everything else — peer, headers, cookies, host — exactly as sent.

use bytes::Bytes;
use http::header::{HeaderValue, CACHE_CONTROL, CONTENT_LENGTH, CONTENT_TYPE};
use http::{Method, Request, Response, StatusCode, Uri};
use http_body_util::Full;

use super::explain;
use crate::facts::Conn;
use crate::state::Snapshot;

/// The longest `?path=` explained; longer ones are explained as `/`.
const MAX_PATH: usize = 2048;

/// The explanation of `req` (its path and method as the query says) as JSON.
#[inline]
pub fn whoami<B>(req: &Request<B>, conn: &Conn, snap: &Snapshot, now: jiff::Timestamp) -> Response<Full<Bytes>> {
    let head = (req.method(), req.uri(), req.version(), req.headers());
    answer(head, conn, snap, now)
}

/// [`whoami`] without the body type: cold and out of line, so that the
/// request path, which holds its call, stays as small as it was.
#[cold]
#[inline(never)]
fn answer(
    (method, uri, version, headers): (&Method, &Uri, http::Version, &http::HeaderMap),
    conn: &Conn,
    snap: &Snapshot,
    now: jiff::Timestamp,
) -> Response<Full<Bytes>> {
    let (path, asked) = params(uri.query());
    let mut probe = Request::new(());
    *probe.method_mut() = asked.unwrap_or_else(|| method.clone());
    *probe.uri_mut() = target(uri, &path);
    *probe.version_mut() = version;
    *probe.headers_mut() = headers.clone();
    let e = explain(&probe, conn, snap, now, &snap.rt.allow_entries);
    let body = Bytes::from(serde_json::to_vec_pretty(&e).unwrap_or_default());
    let len = body.len();
    let body = if method == Method::HEAD { Bytes::new() } else { body };
    let mut r = Response::new(Full::new(body));
    *r.status_mut() = StatusCode::OK;
    let h = r.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    h.insert(CONTENT_LENGTH, HeaderValue::from(len));
    // Personal: about this visitor's own address and cookies.
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store, private"));
    r
}

/// `path` (percent-decoded; `/` unless it is an absolute path) and `method` from the query.
fn params(query: Option<&str>) -> (String, Option<Method>) {
    let mut path = None;
    let mut method = None;
    for (k, v) in query.unwrap_or("").split('&').filter_map(|kv| kv.split_once('=')) {
        let v = percent_encoding::percent_decode_str(v).decode_utf8_lossy();
        match k {
            "path" => path = Some(v.into_owned()),
            "method" => method = Method::from_bytes(v.to_ascii_uppercase().as_bytes()).ok(),
            _ => {}
        }
    }
    let path = path
        .filter(|p| p.starts_with('/') && p.len() <= MAX_PATH && p.parse::<http::uri::PathAndQuery>().is_ok())
        .unwrap_or_else(|| "/".to_string());
    (path, method)
}

/// `path` on the same scheme and authority as `uri` (HTTP/2 carries the host there).
fn target(uri: &Uri, path: &str) -> Uri {
    let mut parts = http::uri::Builder::new();
    if let (Some(scheme), Some(authority)) = (uri.scheme(), uri.authority()) {
        parts = parts.scheme(scheme.clone()).authority(authority.clone());
    }
    parts
        .path_and_query(path)
        .build()
        .unwrap_or_else(|_| Uri::from_static("/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_parameters() {
        assert_eq!(params(None), ("/".to_string(), None));
        assert_eq!(
            params(Some("path=%2Fcheckout&method=post")),
            ("/checkout".to_string(), Some(Method::POST))
        );
        for bad in ["path=checkout", "path=http://x/", "path=/a%20b", "path=/%00"] {
            assert_eq!(params(Some(bad)).0, "/", "{bad}");
        }
        let u: Uri = "https://shop.example/.gatekeeper/whoami?path=/x".parse().unwrap();
        assert_eq!(target(&u, "/api/x?y=1").to_string(), "https://shop.example/api/x?y=1");
        let u: Uri = "/.gatekeeper/whoami".parse().unwrap();
        assert_eq!(target(&u, "/api").to_string(), "/api");
    }
}
