//! gatekeeper's own answers under `/.gatekeeper/`, on every listener and in
//! maintenance or not: `health` for load balancers (200, or 503 while this
//! instance is drained), the public `status` the page's refresh and the banner
//! read, and those two scripts. Tiny, cheap, never proxied.

use bytes::Bytes;
use http::header::{
    HeaderValue, ACCESS_CONTROL_ALLOW_ORIGIN, CACHE_CONTROL, CONTENT_LENGTH, CONTENT_TYPE, X_CONTENT_TYPE_OPTIONS,
};
use http::{Method, Response, StatusCode};
use http_body_util::Full;

use crate::decision::Script;
use crate::maint::Maint;
use crate::paths::host_in_scope;

const REFRESH_JS: &str = include_str!("scripts/refresh.js");
const BANNER_JS: &str = include_str!("scripts/banner.js");

fn answer(
    status: StatusCode,
    ctype: &'static str,
    cache: &'static str,
    body: Bytes,
    method: &Method,
) -> Response<Full<Bytes>> {
    let len = body.len();
    let body = if method == Method::HEAD { Bytes::new() } else { body };
    let mut r = Response::new(Full::new(body));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static(ctype));
    h.insert(CONTENT_LENGTH, HeaderValue::from(len));
    h.insert(CACHE_CONTROL, HeaderValue::from_static(cache));
    // The status is JSON and the scripts are scripts, whatever a browser would guess.
    h.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    r
}

/// `200 ok`, or `503 draining` after `gatekeeper drain`.
pub fn health(drained: bool, method: &Method) -> Response<Full<Bytes>> {
    let (status, body) = if drained {
        (StatusCode::SERVICE_UNAVAILABLE, "draining\n")
    } else {
        (StatusCode::OK, "ok\n")
    };
    answer(
        status,
        "text/plain; charset=utf-8",
        "no-store",
        Bytes::from_static(body.as_bytes()),
        method,
    )
}

/// What a visitor of `host` may know: whether maintenance applies to it, and
/// when. SECURITY: nothing of the config, the allowlist or the secret.
pub fn status_json(m: &Maint, host: Option<&str>, announce: u64, now: jiff::Timestamp) -> serde_json::Value {
    let state = match m.label() {
        "expired" => "off",
        _ if !host_in_scope(host, &m.hosts) => "off",
        label => label,
    };
    let on = state != "off";
    serde_json::json!({
        "maintenance": state,
        "message": on.then_some(m.message.as_str()),
        "from": m.from.filter(|_| on).map(|t| t.to_string()),
        "until": m.until.filter(|_| on).map(|t| t.to_string()),
        "retry_after": on.then(|| m.retry_after_at(now)),
        "paths": if on { m.paths.clone() } else { Vec::new() },
        "announce": announce,
    })
}

/// The public status, JSON, readable from any origin (it is public anyway).
pub fn status(
    m: &Maint,
    host: Option<&str>,
    announce: u64,
    now: jiff::Timestamp,
    method: &Method,
) -> Response<Full<Bytes>> {
    let body = Bytes::from(status_json(m, host, announce, now).to_string());
    let mut r = answer(StatusCode::OK, "application/json", "no-store", body, method);
    r.headers_mut()
        .insert(ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
    r
}

pub fn script(s: Script, method: &Method) -> Response<Full<Bytes>> {
    let text = match s {
        Script::Refresh => REFRESH_JS,
        Script::Banner => BANNER_JS,
    };
    // Cached briefly: they change only with the binary.
    answer(
        StatusCode::OK,
        "text/javascript; charset=utf-8",
        "public, max-age=300",
        Bytes::from_static(text.as_bytes()),
        method,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::toggle::{Observed, ToggleContent};

    fn maint(toml: &str, now: jiff::Timestamp) -> Maint {
        let observed = Observed {
            exists: true,
            content: ToggleContent::parse(toml).unwrap_or_else(|e| panic!("{e}")),
            ..Observed::default()
        };
        let cfg = crate::config::Maintenance {
            toggle: "/t".into(),
            dir: None,
            retry_after: std::time::Duration::from_secs(900),
            message: "Back soon".into(),
            bypass_paths: vec![],
            recheck: std::time::Duration::from_secs(2),
            acme: true,
            max_held: 10,
            announce: std::time::Duration::ZERO,
        };
        Maint::derive(&observed, None, &cfg, now)
    }

    #[test]
    fn status_says_what_a_visitor_may_know() {
        let now: jiff::Timestamp = "2026-12-01T12:00:00Z".parse().unwrap();
        let m = maint("secret = \"s3cret\"\npaths = [\"/api/\"]", now);
        let v = status_json(&m, Some("a.example"), 3600, now);
        assert_eq!(v["maintenance"], "on");
        assert_eq!(v["message"], "Back soon");
        assert_eq!(v["retry_after"], 900);
        assert_eq!(v["paths"], serde_json::json!(["/api/"]));
        assert_eq!(v["announce"], 3600);
        assert!(!v.to_string().contains("s3cret"));
        let m = maint("hosts = [\"shop.example\"]\nread_only = true", now);
        assert_eq!(
            status_json(&m, Some("shop.example:443"), 0, now)["maintenance"],
            "read-only"
        );
        let other = status_json(&m, Some("blog.example"), 0, now);
        assert_eq!(
            (other["maintenance"].as_str(), other["message"].as_str()),
            (Some("off"), None)
        );
        let m = maint("from = \"2026-12-01T13:00:00Z\"\nuntil = \"2026-12-01T14:00:00Z\"", now);
        let v = status_json(&m, None, 0, now);
        assert_eq!(
            (v["maintenance"].as_str(), v["from"].as_str()),
            (Some("scheduled"), Some("2026-12-01T13:00:00Z"))
        );
        let m = maint("pause = true", now);
        assert_eq!(status_json(&m, None, 0, now)["maintenance"], "paused");
        let later: jiff::Timestamp = "2026-12-01T15:00:00Z".parse().unwrap();
        let m = maint("until = \"2026-12-01T14:00:00Z\"", later);
        assert_eq!(status_json(&m, None, 0, later)["maintenance"], "off");
    }

    #[test]
    fn health_and_scripts() {
        assert_eq!(health(false, &Method::GET).status(), StatusCode::OK);
        assert_eq!(health(true, &Method::GET).status(), StatusCode::SERVICE_UNAVAILABLE);
        for s in [Script::Refresh, Script::Banner] {
            let r = script(s, &Method::GET);
            assert_eq!(r.headers()[CONTENT_TYPE], "text/javascript; charset=utf-8");
        }
        // banner.js is small: it rides along on every page of the app.
        assert!(BANNER_JS.len() < 4096, "{} bytes", BANNER_JS.len());
    }
}
