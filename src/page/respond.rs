//! Building the answers: the 503 maintenance page (HTML or JSON), assets and
//! the proxy's small error pages.

use bytes::Bytes;
use http::header::{
    HeaderValue, ACCESS_CONTROL_ALLOW_CREDENTIALS, ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS,
    ACCESS_CONTROL_ALLOW_ORIGIN, ACCESS_CONTROL_REQUEST_HEADERS, ACCESS_CONTROL_REQUEST_METHOD, CACHE_CONTROL,
    CONTENT_LENGTH, CONTENT_TYPE, RETRY_AFTER, VARY, X_CONTENT_TYPE_OPTIONS,
};
use http::{Method, Response, StatusCode};
use http_body_util::Full;

use super::load::Asset;
use super::negotiate::prefers_json;
use super::render::Rendered;

pub(super) const HTML_UTF8: &str = "text/html; charset=utf-8";
const JSON: &str = "application/json";

/// The JSON maintenance body:
/// `{"status":"maintenance","message":...,"retry_after":N[,"until":...]}`.
fn json_body(r: &Rendered, retry_after_secs: u64) -> String {
    // Built by hand to keep the documented key order; serde_json does the
    // string escaping (Value's Display cannot fail).
    let mut s = format!(
        "{{\"status\":\"maintenance\",\"message\":{},\"retry_after\":{}",
        serde_json::Value::from(r.message.as_str()),
        retry_after_secs
    );
    if let Some(until) = &r.until {
        s.push_str(",\"until\":");
        s.push_str(&serde_json::Value::from(until.as_str()).to_string());
    }
    s.push('}');
    s
}

/// Builds a response with the headers every answer of this module carries.
fn respond(status: StatusCode, content_type: HeaderValue, body: Bytes, method: &Method) -> Response<Full<Bytes>> {
    let mut h = http::HeaderMap::with_capacity(4);
    page_headers(&mut h, content_type, body.len());
    answer(status, h, body, method)
}

/// `body` with `headers`; for HEAD the same headers (including the would-be
/// Content-Length) and no body.
fn answer(status: StatusCode, headers: http::HeaderMap, body: Bytes, method: &Method) -> Response<Full<Bytes>> {
    let body = if method == Method::HEAD { Bytes::new() } else { body };
    let mut resp = Response::new(Full::new(body));
    *resp.status_mut() = status;
    *resp.headers_mut() = headers;
    resp
}

pub(super) fn page_headers(h: &mut http::HeaderMap, content_type: HeaderValue, len: usize) {
    h.insert(CONTENT_TYPE, content_type);
    h.insert(CONTENT_LENGTH, HeaderValue::from(len));
    // The page and its assets may change at the next flip; never cache them.
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
}

/// The 503 answer. Headers: Content-Type (text/html; charset=utf-8 or
/// application/json), Retry-After, Cache-Control: no-store, Content-Length,
/// Vary: Accept. HEAD → empty body, same headers.
pub fn maintenance_response(
    r: &Rendered,
    method: &Method,
    accept: Option<&HeaderValue>,
    retry_after_secs: u64,
) -> Response<Full<Bytes>> {
    let json = prefers_json(accept).then(|| Bytes::from(json_body(r, retry_after_secs)));
    // The rendering's headers, changed where this answer differs: a copy costs
    // a fraction of inserting them one by one.
    let mut h = r.html_headers.clone();
    if let Some(body) = &json {
        h.insert(CONTENT_TYPE, HeaderValue::from_static(JSON));
        h.insert(CONTENT_LENGTH, HeaderValue::from(body.len()));
    }
    if retry_after_secs != r.retry_after {
        h.insert(RETRY_AFTER, HeaderValue::from(retry_after_secs));
    }
    let body = json.unwrap_or_else(|| r.html.clone());
    answer(StatusCode::SERVICE_UNAVAILABLE, h, body, method)
}

/// 200 with the asset: Content-Type, Content-Length, Cache-Control: no-store
/// (the page may change at the next flip). HEAD → no body.
pub fn asset_response(a: &Asset, method: &Method) -> Response<Full<Bytes>> {
    respond(StatusCode::OK, a.content_type.clone(), a.body.clone(), method)
}

/// Small self-contained HTML error pages used by the proxy: 502 "Bad Gateway"
/// and 504 "Gateway Timeout" (and 413, 400; any other status gets a generic
/// page). Cache-Control: no-store, text/html.
pub fn error_response(status: StatusCode) -> Response<Full<Bytes>> {
    let detail = match status {
        StatusCode::BAD_GATEWAY => "The server could not get a valid response from the application.",
        StatusCode::GATEWAY_TIMEOUT => "The application took too long to respond.",
        StatusCode::PAYLOAD_TOO_LARGE => "The request body is too large.",
        StatusCode::BAD_REQUEST => "The request could not be understood.",
        _ => "The request could not be completed.",
    };
    let title = format!("{} {}", status.as_u16(), status.canonical_reason().unwrap_or("Error"));
    let html = format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <meta name=\"color-scheme\" content=\"light dark\"><title>{title}</title>\
         <style>body{{font:16px/1.5 system-ui,sans-serif;margin:0;min-height:100vh;\
         display:flex;align-items:center;justify-content:center;padding:1rem;\
         box-sizing:border-box}}\
         main{{max-width:32rem;text-align:center}}h1{{font-size:1.6rem;margin:0 0 .5rem}}\
         p{{margin:0;opacity:.75}}</style></head>\
         <body><main><h1>{title}</h1><p>{detail}</p></main></body></html>\n"
    );
    respond(
        status,
        HeaderValue::from_static(HTML_UTF8),
        Bytes::from(html),
        &Method::GET,
    )
}

/// CORS on the maintenance answer: a single-page app calling the API reads
/// the 503 and its JSON instead of a CORS error. The page holds nothing of
/// the app, so any origin may read it, with credentials.
pub fn allow_origin(h: &mut http::HeaderMap, origin: Option<&HeaderValue>) {
    if let Some(o) = origin {
        h.insert(ACCESS_CONTROL_ALLOW_ORIGIN, o.clone());
        h.insert(ACCESS_CONTROL_ALLOW_CREDENTIALS, HeaderValue::from_static("true"));
        h.append(VARY, HeaderValue::from_static("Origin"));
    }
}

/// 204 to a CORS preflight that would get the maintenance answer: the method
/// and headers asked for are allowed, so the real request goes out and reads the 503.
pub fn preflight_response(req: &http::HeaderMap) -> Response<Full<Bytes>> {
    let mut h = http::HeaderMap::with_capacity(8);
    allow_origin(&mut h, req.get(http::header::ORIGIN));
    if let Some(m) = req.get(ACCESS_CONTROL_REQUEST_METHOD) {
        h.insert(ACCESS_CONTROL_ALLOW_METHODS, m.clone());
    }
    if let Some(hs) = req.get(ACCESS_CONTROL_REQUEST_HEADERS) {
        h.insert(ACCESS_CONTROL_ALLOW_HEADERS, hs.clone());
    }
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(CONTENT_LENGTH, HeaderValue::from(0));
    answer(StatusCode::NO_CONTENT, h, Bytes::new(), &Method::OPTIONS)
}

#[cfg(test)]
mod tests {
    use super::super::load::simple_pages;
    use super::super::render::render;
    use super::*;
    use http::header::VARY;
    use http_body_util::BodyExt;

    #[test]
    fn prebuilt_page_headers_match_the_built_ones() {
        use http_body::Body as _;
        let r = render(&simple_pages("<p>{{retry_after}}</p>"), "m", 600, None, None);
        for method in [Method::GET, Method::HEAD] {
            let pre = maintenance_response(&r, &method, None, 600);
            let built = maintenance_response(&r, &method, None, 599);
            assert_eq!(pre.status(), StatusCode::SERVICE_UNAVAILABLE);
            assert_eq!(pre.status(), built.status());
            let names = |resp: &Response<Full<Bytes>>| {
                let mut v: Vec<String> = resp.headers().keys().map(|k| k.to_string()).collect();
                v.sort();
                v
            };
            assert_eq!(names(&pre), names(&built));
            assert_eq!(pre.headers()["retry-after"], "600");
            assert_eq!(built.headers()["retry-after"], "599");
            assert_eq!(pre.headers()["content-length"], r.html.len().to_string().as_str());
            assert_eq!(
                pre.body().size_hint().exact(),
                Some(if method == Method::HEAD { 0 } else { r.html.len() as u64 })
            );
        }
    }

    async fn collect(resp: Response<Full<Bytes>>) -> (http::response::Parts, Bytes) {
        let (parts, body) = resp.into_parts();
        let bytes = body.collect().await.unwrap().to_bytes();
        (parts, bytes)
    }

    /// `Full` resolves immediately, so a trivial executor suffices.
    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        use std::task::{Context, Poll, Waker};
        let mut f = std::pin::pin!(f);
        struct Noop;
        impl std::task::Wake for Noop {
            fn wake(self: std::sync::Arc<Self>) {}
        }
        let waker = Waker::from(std::sync::Arc::new(Noop));
        let mut cx = Context::from_waker(&waker);
        loop {
            if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
                return v;
            }
        }
    }

    #[test]
    fn maintenance_html_and_head() {
        let r = render(&simple_pages("<p>{{message}}</p>"), "Back soon", 60, None, None);
        let (parts, body) = block_on(collect(maintenance_response(&r, &Method::GET, None, 60)));
        assert_eq!(parts.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(parts.headers[CONTENT_TYPE], "text/html; charset=utf-8");
        assert_eq!(parts.headers[RETRY_AFTER], "60");
        assert_eq!(parts.headers[CACHE_CONTROL], "no-store");
        assert_eq!(parts.headers[CONTENT_LENGTH], "16");
        assert_eq!(parts.headers[VARY], "Accept");
        assert_eq!(&body[..], b"<p>Back soon</p>");

        let (head, body) = block_on(collect(maintenance_response(&r, &Method::HEAD, None, 60)));
        assert!(body.is_empty());
        assert_eq!(head.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(head.headers, parts.headers);
    }

    #[test]
    fn maintenance_json_exact() {
        let r = render(&simple_pages("x"), "Down for \"upgrades\" <b>", 120, None, None);
        let json = HeaderValue::from_static("application/json");
        let (parts, body) = block_on(collect(maintenance_response(&r, &Method::GET, Some(&json), 120)));
        assert_eq!(parts.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(parts.headers[CONTENT_TYPE], "application/json");
        assert_eq!(parts.headers[RETRY_AFTER], "120");
        assert_eq!(parts.headers[CACHE_CONTROL], "no-store");
        let expected = r#"{"status":"maintenance","message":"Down for \"upgrades\" <b>","retry_after":120}"#;
        assert_eq!(std::str::from_utf8(&body).unwrap(), expected);
        assert_eq!(parts.headers[CONTENT_LENGTH], expected.len().to_string().as_str());

        let r = render(&simple_pages("x"), "m", 30, Some("2030-01-01T00:00:00Z"), None);
        let (_, body) = block_on(collect(maintenance_response(&r, &Method::GET, Some(&json), 30)));
        assert_eq!(
            std::str::from_utf8(&body).unwrap(),
            r#"{"status":"maintenance","message":"m","retry_after":30,"until":"2030-01-01T00:00:00Z"}"#
        );
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["retry_after"], 30);

        let (head, body) = block_on(collect(maintenance_response(&r, &Method::HEAD, Some(&json), 30)));
        assert!(body.is_empty());
        assert_eq!(head.headers[CONTENT_TYPE], "application/json");
        assert_eq!(head.headers[CONTENT_LENGTH], "86");
    }

    #[test]
    fn asset_response_get_and_head() {
        let a = Asset {
            body: Bytes::from_static(b"body{}"),
            content_type: HeaderValue::from_static("text/css; charset=utf-8"),
        };
        let (parts, body) = block_on(collect(asset_response(&a, &Method::GET)));
        assert_eq!(parts.status, StatusCode::OK);
        assert_eq!(parts.headers[CONTENT_TYPE], "text/css; charset=utf-8");
        assert_eq!(parts.headers[CONTENT_LENGTH], "6");
        assert_eq!(parts.headers[CACHE_CONTROL], "no-store");
        assert_eq!(parts.headers[X_CONTENT_TYPE_OPTIONS], "nosniff");
        assert_eq!(&body[..], b"body{}");
        let (head, body) = block_on(collect(asset_response(&a, &Method::HEAD)));
        assert!(body.is_empty());
        assert_eq!(head.headers, parts.headers);
    }

    #[test]
    fn error_pages() {
        for (status, text) in [
            (StatusCode::BAD_GATEWAY, "502 Bad Gateway"),
            (StatusCode::GATEWAY_TIMEOUT, "504 Gateway Timeout"),
            (StatusCode::PAYLOAD_TOO_LARGE, "413 Payload Too Large"),
            (StatusCode::BAD_REQUEST, "400 Bad Request"),
            (StatusCode::from_u16(599).unwrap(), "599 Error"),
        ] {
            let (parts, body) = block_on(collect(error_response(status)));
            assert_eq!(parts.status, status);
            assert_eq!(parts.headers[CONTENT_TYPE], "text/html; charset=utf-8");
            assert_eq!(parts.headers[CACHE_CONTROL], "no-store");
            assert_eq!(parts.headers[CONTENT_LENGTH], body.len().to_string().as_str());
            let html = std::str::from_utf8(&body).unwrap();
            assert!(html.contains(&format!("<title>{text}</title>")), "{html}");
            assert!(!html.contains("http"), "self-contained");
        }
    }
}
