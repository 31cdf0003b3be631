//! One request, start to end: load the snapshot once, gather the facts,
//! decide, turn the decision into a response, and log and count it — every
//! answer leaves through [`handle`]'s one exit. Never fails: every problem
//! becomes a response. Generic over the request body, so it runs in-process
//! in tests as it runs behind hyper.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, ACCEPT, CONNECTION, LOCATION, SET_COOKIE};
use http::{Request, Response, StatusCode};
use http_body::Body as HttpBody;
use http_body_util::Full;

use crate::body::{boxed, Body, BoxError};
use crate::buffer::{self, DISCARD_MAX};
use crate::bypass;
use crate::decision::{decide, Decision, Endpoint, Mark, Refusal};
use crate::endpoints;
use crate::facts::{gather, request_host, Conn, Gathered};
use crate::forward::{forward, ForwardError, Outcome};
use crate::hold::Held;
use crate::page;
use crate::rewrite::Origin;
use crate::state::{Snapshot, State};

static X_MAINTENANCE_MODE: HeaderName = HeaderName::from_static("x-maintenance-mode");

/// How long an answer waits for a small unread body to arrive and be thrown away.
const DISCARD_WITHIN: std::time::Duration = std::time::Duration::from_secs(1);

/// Handles one request.
///
/// An `async move` block rather than an `async fn`, which would keep the
/// request twice (its argument and a local copy); hyper moves this future
/// several times on its way into the connection's slot (see `forward`).
#[allow(clippy::manual_async_fn)] // deliberate: see above
pub fn handle<'a, B>(
    mut req: Request<B>,
    conn: &'a Conn,
    state: &'a State,
) -> impl std::future::Future<Output = Response<Body>> + 'a
where
    B: HttpBody<Data = Bytes> + Send + Sync + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    async move {
        let start = Instant::now();
        let mut held: Option<Duration> = None;
        // A released request's turn at the app, kept until its answer's head is in.
        let mut _admitted = None;
        loop {
            let snap = state.snapshot();
            // The clock matters only for cookies and windows: read it only then.
            let m = &snap.maint;
            let now = if m.present && (m.secret.is_some() || m.until.is_some() || !snap.rt.tokens.is_empty()) {
                jiff::Timestamp::now()
            } else {
                jiff::Timestamp::UNIX_EPOCH
            };
            let g = gather(&req, conn, &snap, now);
            let mut decision = decide(&g.facts);
            if decision == Decision::Hold {
                _admitted = None;
                let since = Instant::now();
                let cfg = &snap.rt.config.maintenance;
                // Boxed: rare, and the handler's future stays small.
                let waited = Box::pin(state.holds.wait(cfg.max_held, snap.maint.pause_max, || {
                    let now = state.snapshot();
                    now.maint.active && now.maint.paused
                }))
                .await;
                *held.get_or_insert(Duration::ZERO) += since.elapsed();
                match waited {
                    // Decided again on what is true now: the pause may have become anything.
                    Held::Released => {
                        _admitted = Box::pin(state.holds.admit()).await;
                        continue;
                    }
                    Held::TimedOut | Held::Full => decision = Decision::Page,
                }
            }
            let cfg = &snap.rt.config;
            let logged = cfg.log.access && (cfg.log.health || decision != Decision::Endpoint(Endpoint::Health));
            let line = logged.then(|| AccessLine {
                method: req.method().clone(),
                // SECURITY: the bypass link's path carries the token, a credential: never logged.
                path: match decision {
                    Decision::BypassLink => cfg.bypass.path.clone(),
                    _ => req.uri().path().to_string(),
                },
                held,
            });
            // Boxed: rare, and the handler's future stays small (hyper keeps one per connection).
            let keep_alive = matches!(decision, Decision::Proxy(_))
                || req.body().is_end_stream()
                || Box::pin(early_body_read(&mut req, &g)).await;
            let http1 = req.version() < http::Version::HTTP_2;
            // The app's answer, or gatekeeper's own; the request is moved only
            // where it goes on (a request head is large: every move is a copy).
            let (mut resp, outcome) = match decision {
                Decision::Proxy(mark) => match proxy(mark, req, &g, &snap, state, conn).await {
                    Ok(r) => (r, Some(Outcome::Ok)),
                    Err(e) => (e.response(), Some(e.outcome())),
                },
                _ => answer(decision, &req, &g, &snap, conn, now),
            };
            if !keep_alive && http1 {
                // Where the unread rest goes: hyper closes after this answer, and the
                // lingering close (see `linger`) lets the client read it first.
                resp.headers_mut().insert(CONNECTION, HeaderValue::from_static("close"));
            }
            let counted = if held.is_some() { Decision::Hold } else { decision };
            record(state, conn, &g, counted, &resp, outcome, line, start);
            return resp;
        }
    }
}

/// Answers that are not the app's leave the request body unread. A small one
/// is read and thrown away (briefly: the answer waits for it), so the
/// connection can serve the next request; false when the connection must end
/// after the answer instead.
async fn early_body_read<B>(req: &mut Request<B>, g: &Gathered<'_>) -> bool
where
    B: HttpBody<Data = Bytes> + Unpin,
{
    // SECURITY: a body whose end is ambiguous is never read.
    if g.facts.bad_framing || g.declared_length.is_some_and(|n| n > DISCARD_MAX) {
        return false;
    }
    buffer::discard(req.body_mut(), DISCARD_WITHIN).await
}

/// Turns a decision other than `Proxy` into gatekeeper's own answer: the one
/// place where each kind of them is made (`proxy` makes the app's).
fn answer<B>(
    decision: Decision,
    req: &Request<B>,
    g: &Gathered<'_>,
    snap: &Snapshot,
    conn: &Conn,
    now: jiff::Timestamp,
) -> (Response<Body>, Option<Outcome>) {
    let (rt, m) = (&*snap.rt, &snap.maint);
    let cfg = &rt.config;
    let method = req.method();
    let resp = match decision {
        // Decided by `proxy`; here only for the match to be whole.
        Decision::Proxy(_) => page::error_response(StatusCode::INTERNAL_SERVER_ERROR),
        Decision::Endpoint(Endpoint::Health) => endpoints::health(snap.drained, method),
        Decision::Endpoint(Endpoint::Status) => {
            let announce = cfg.maintenance.announce.as_secs();
            endpoints::status(m, request_host(req), announce, jiff::Timestamp::now(), method)
        }
        Decision::Endpoint(Endpoint::Script(s)) => endpoints::script(s, method),
        Decision::Endpoint(Endpoint::Whoami) => crate::explain::whoami(req, conn, snap, now),
        Decision::Endpoint(Endpoint::PageAsset) => {
            let asset = req
                .uri()
                .path()
                .strip_prefix("/.gatekeeper/page")
                .and_then(|p| rt.pages.asset(p));
            match asset {
                Some(a) => page::asset_response(a, method),
                None => page::error_response(StatusCode::NOT_FOUND),
            }
        }
        Decision::RedirectHttps => {
            let mut r = page::error_response(StatusCode::PERMANENT_REDIRECT);
            if let Some(loc) = g.location.clone() {
                r.headers_mut().insert(LOCATION, loc);
            }
            r
        }
        Decision::BypassLink => bypass_link(req, snap, g, conn.https, now),
        Decision::Refuse(Refusal::Framing) => {
            let status = g.framing.as_ref().map_or(StatusCode::BAD_REQUEST, |e| e.status());
            let mut r = boxed(page::error_response(status));
            // Where this request ends is unclear: nothing after it on this connection is read.
            r.headers_mut().insert(CONNECTION, HeaderValue::from_static("close"));
            return (r, Some(Outcome::Refused));
        }
        Decision::Refuse(Refusal::TooLarge) => {
            return (
                boxed(page::error_response(StatusCode::PAYLOAD_TOO_LARGE)),
                Some(Outcome::Refused),
            )
        }
        Decision::Preflight => page::preflight_response(req.headers()),
        // A held request that got no release is answered as a Page.
        Decision::Asset | Decision::Page | Decision::Hold => match g.asset.filter(|_| decision == Decision::Asset) {
            Some(a) => page::asset_response(a, method),
            None => {
                let retry = m.retry_after_at(now);
                let accept = req.headers().get(ACCEPT);
                let mut resp = if m.until.is_some() {
                    // The countdown changes every second; the page is rendered for this moment.
                    let r = page::render_at(&rt.pages, &m.message, retry, m.until);
                    page::maintenance_response(&r, method, accept, retry)
                } else {
                    page::maintenance_response(&snap.rendered, method, accept, retry)
                };
                page::allow_origin(resp.headers_mut(), g.origin.as_ref());
                if m.read_only {
                    resp.headers_mut()
                        .insert(X_MAINTENANCE_MODE.clone(), HeaderValue::from_static("read-only"));
                }
                resp
            }
        },
    };
    (boxed(resp), None)
}

/// The app's answer to `req`, marked as `mark` says.
///
/// Boxed: the exchange's state is large, and hyper keeps the handler's
/// future in a slot of its own size for as long as a connection lives.
fn proxy<'a, B>(
    mark: Mark,
    mut req: Request<B>,
    g: &'a Gathered<'_>,
    snap: &'a Snapshot,
    state: &'a State,
    conn: &'a Conn,
) -> std::pin::Pin<Box<impl std::future::Future<Output = Result<Response<Body>, ForwardError>> + 'a>>
where
    B: HttpBody<Data = Bytes> + Send + Sync + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    let (rt, cfg) = (&*snap.rt, &snap.rt.config);
    // SECURITY: bypass credentials are gatekeeper's business, never the app's.
    let bp = &cfg.bypass;
    req.headers_mut().remove(&bp.header);
    bypass::strip_cookie(req.headers_mut(), &bp.cookie_name);
    let origin = Origin {
        resolved: &g.resolved,
        conn,
    };
    Box::pin(forward(&rt.upstream, cfg, req, origin, mark, Some(&state.paused)))
}

/// 303 to `next` (same-site only) or "/", with a fresh signed bypass cookie.
fn bypass_link<B>(
    req: &Request<B>,
    snap: &Snapshot,
    g: &Gathered<'_>,
    https: bool,
    now: jiff::Timestamp,
) -> Response<Full<Bytes>> {
    let bp = &snap.rt.config.bypass;
    let mut r = page::error_response(StatusCode::SEE_OTHER);
    let ttl = bp.cookie_ttl.as_secs().max(1);
    let (value, ttl) = match (g.named.filter(|n| n.link), snap.maint.secret.as_deref()) {
        (Some(n), _) => n.token.cookie(now.as_second(), bp.cookie_ttl),
        (None, Some(secret)) => {
            let expires = now.as_second().saturating_add(i64::try_from(ttl).unwrap_or(i64::MAX));
            (bypass::sign(secret, expires), ttl)
        }
        (None, None) => return r,
    };
    let target = bypass::redirect_target(req.uri().query());
    if let Ok(loc) = HeaderValue::from_str(&target) {
        r.headers_mut().insert(LOCATION, loc);
    }
    if let Some(c) = bypass::set_cookie(&bp.cookie_name, &value, ttl, https) {
        r.headers_mut().insert(SET_COOKIE, c);
    }
    r
}

/// What the access log needs of the request, taken before it is consumed.
struct AccessLine {
    method: http::Method,
    path: String,
    /// How long the request was held by a pause, if it was.
    held: Option<Duration>,
}

/// The one place every answer is counted and logged.
#[allow(clippy::too_many_arguments)]
fn record(
    state: &State,
    conn: &Conn,
    g: &Gathered<'_>,
    decision: Decision,
    resp: &Response<Body>,
    outcome: Option<Outcome>,
    line: Option<AccessLine>,
    start: Instant,
) {
    let elapsed = start.elapsed();
    if let Some(header) = g.untrusted_forwarding {
        state.untrusted.saw(conn.peer.ip(), header, Instant::now());
    }
    let status = resp.status().as_u16();
    state.metrics.request(decision, status, outcome, elapsed);
    if let Some(line) = line {
        let client: &dyn std::fmt::Display = match &g.resolved.client {
            Some(c) => c,
            None => &"unknown",
        };
        let (peer, method, path) = (&conn.peer, &line.method, &line.path);
        let (decision, upstream) = (decision.label(), outcome.map_or("-", Outcome::label));
        // The named token's name; SECURITY: never its value.
        let bypass = g.named.map_or("-", |n| &*n.token.name);
        let ms = format_args!("{:.3}", elapsed.as_secs_f64() * 1000.0);
        match line.held {
            None => {
                tracing::info!(target: "access", %client, %peer, %method, %path, status, decision, %bypass, upstream, ms)
            }
            Some(h) => {
                let held_ms = format_args!("{:.0}", h.as_secs_f64() * 1000.0);
                tracing::info!(target: "access", %client, %peer, %method, %path, status, decision, %bypass, upstream, ms, held_ms)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::runtime::Runtime;
    use crate::toggle::{Observed, ToggleContent};
    use http_body_util::BodyExt;
    use std::sync::Arc;

    /// A daemon's state without a socket: the upstream is a Unix socket that
    /// does not exist, so whatever is proxied ends in a 502.
    struct Setup {
        _dir: tempfile::TempDir,
        state: State,
    }

    fn setup(extra: &str, toggle: Option<ToggleContent>) -> Setup {
        setup_with(extra, "", toggle)
    }

    /// `extra`: top-level keys and tables; `maint`: more `[maintenance]` keys.
    fn setup_with(extra: &str, maint: &str, toggle: Option<ToggleContent>) -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display();
        let text = format!(
            "listen = [\"127.0.0.1:0\"]\n{extra}\n[upstream]\nurl = \"unix:{d}/no-app.sock\"\n\
             [maintenance]\ntoggle = \"{d}/maintenance-mode-on\"\nbypass_paths = [\"/healthz\"]\n{maint}\n\
             [clients]\nallow = [\"127.0.0.2\"]\n[buffering]\nmax_body = \"1KiB\"\n"
        );
        let file = dir.path().join("gatekeeper.toml");
        std::fs::write(&file, text).unwrap();
        let cfg = Config::load(&file).unwrap_or_else(|e| panic!("{e}"));
        let rt = Runtime::build(cfg).unwrap_or_else(|e| panic!("{e}"));
        let observed = match toggle {
            None => Observed::default(),
            Some(content) => Observed {
                exists: true,
                content,
                ..Observed::default()
            },
        };
        Setup {
            state: State::new(rt, observed),
            _dir: dir,
        }
    }

    fn on() -> Option<ToggleContent> {
        Some(ToggleContent {
            message: Some("Back soon".into()),
            secret: Some("s3cret".into()),
            ..ToggleContent::default()
        })
    }

    const VISITOR: &str = "127.0.0.3:5000";
    const TEAM: &str = "127.0.0.2:5000";

    async fn send(
        s: &Setup,
        from: &str,
        https: bool,
        req: http::request::Builder,
        body: &'static str,
    ) -> Response<Body> {
        let conn = Conn::new(from.parse().unwrap(), https, Some(8443));
        let req = req.body(Full::new(Bytes::from_static(body.as_bytes()))).unwrap();
        handle(req, &conn, &s.state).await
    }

    fn get(path: &str) -> http::request::Builder {
        Request::get(path).header("host", "shop.example")
    }

    async fn text(r: Response<Body>) -> String {
        let b = r.into_body().collect().await.map(|c| c.to_bytes()).unwrap_or_default();
        String::from_utf8_lossy(&b).into_owned()
    }

    fn counted(s: &Setup, decision: &str, class: &str) -> bool {
        let want = format!("gatekeeper_requests_total{{decision=\"{decision}\",status=\"{class}\"}} 1");
        s.state.metrics.encode().contains(&want)
    }

    #[tokio::test]
    async fn off_proxies_everyone() {
        let s = setup("", None);
        let r = send(&s, VISITOR, false, get("/"), "").await;
        assert_eq!(r.status(), StatusCode::BAD_GATEWAY);
        assert!(counted(&s, "proxy", "5xx"));
        let r = send(
            &s,
            VISITOR,
            false,
            get("/").method("POST").header("content-length", "2000"),
            "",
        )
        .await;
        assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
        assert!(counted(&s, "refused", "4xx"));
    }

    #[tokio::test]
    async fn on_answers_visitors_with_the_page() {
        let s = setup("", on());
        let r = send(&s, VISITOR, false, get("/x"), "").await;
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(r.headers()["retry-after"], "600");
        assert_eq!(r.headers()["cache-control"], "no-store");
        assert!(text(r).await.contains("Back soon"));
        let r = send(&s, VISITOR, false, get("/x").header("accept", "application/json"), "").await;
        assert_eq!(r.headers()["content-type"], "application/json");
        assert!(text(r)
            .await
            .starts_with("{\"status\":\"maintenance\",\"message\":\"Back soon\""));
        let r = send(&s, VISITOR, false, get("/x").method("HEAD"), "").await;
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(text(r).await, "");
        // A visitor's oversized upload gets the page, not a 413 that says the app is there.
        let r = send(
            &s,
            VISITOR,
            false,
            get("/x").method("POST").header("content-length", "2000"),
            "",
        )
        .await;
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        let r = send(&s, VISITOR, false, get("/style.css"), "").await;
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.headers()["content-type"], "text/css; charset=utf-8");
        assert!(counted(&s, "asset", "2xx"));
    }

    #[tokio::test]
    async fn on_lets_the_team_through() {
        let s = setup("", on());
        // Allowed client, bypass path, bypass header: all reach the (missing) app.
        let r = send(&s, TEAM, false, get("/"), "").await;
        assert_eq!(r.status(), StatusCode::BAD_GATEWAY);
        let r = send(&s, VISITOR, false, get("/healthz"), "").await;
        assert_eq!(r.status(), StatusCode::BAD_GATEWAY);
        let r = send(&s, VISITOR, false, get("/").header("x-gatekeeper-bypass", "s3cret"), "").await;
        assert_eq!(r.status(), StatusCode::BAD_GATEWAY);
        let r = send(&s, VISITOR, false, get("/").header("x-gatekeeper-bypass", "wrong"), "").await;
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        // An allowed client's style.css is the app's, not the page's.
        let r = send(&s, TEAM, false, get("/style.css"), "").await;
        assert_eq!(r.status(), StatusCode::BAD_GATEWAY);
        let m = s.state.metrics.encode();
        assert!(
            m.contains("gatekeeper_requests_total{decision=\"bypass\",status=\"5xx\"} 4"),
            "{m}"
        );
    }

    #[tokio::test]
    async fn ambiguous_framing_is_refused_for_everyone() {
        let s = setup("", None);
        let req = get("/")
            .method("POST")
            .header("transfer-encoding", "chunked")
            .header("transfer-encoding", "chunked");
        let r = send(&s, TEAM, false, req, "").await;
        assert_eq!(r.status(), StatusCode::BAD_REQUEST);
        assert_eq!(r.headers()["connection"], "close");
        let req = get("/").method("POST").header("transfer-encoding", "gzip, chunked");
        assert_eq!(
            send(&s, TEAM, false, req, "").await.status(),
            StatusCode::NOT_IMPLEMENTED
        );
        assert!(s
            .state
            .metrics
            .encode()
            .contains("gatekeeper_requests_total{decision=\"refused\",status=\"4xx\"} 1"));
    }

    #[tokio::test]
    async fn bypass_link_sets_a_cookie_that_lets_in() {
        let s = setup("", on());
        let r = send(&s, VISITOR, false, get("/.gatekeeper/bypass/s3cret?next=/cart"), "").await;
        assert_eq!(r.status(), StatusCode::SEE_OTHER);
        assert_eq!(r.headers()["location"], "/cart");
        let cookie = r.headers()["set-cookie"].to_str().unwrap().to_string();
        assert!(cookie.contains("HttpOnly"), "{cookie}");
        assert!(counted(&s, "bypass-link", "3xx"));
        let pair = cookie.split(';').next().unwrap().to_string();
        let r = send(&s, VISITOR, false, get("/").header("cookie", pair.as_str()), "").await;
        assert_eq!(r.status(), StatusCode::BAD_GATEWAY);
        let r = send(&s, VISITOR, false, get("/.gatekeeper/bypass/nope"), "").await;
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    }

    #[tokio::test]
    async fn plain_http_is_redirected_when_tls_asks() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
        let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
        std::fs::write(&cert, ck.cert.pem()).unwrap();
        std::fs::write(&key, ck.signing_key.serialize_pem()).unwrap();
        let tls = format!(
            "[tls]\nlisten = [\"127.0.0.1:0\"]\ncert = \"{}\"\nkey = \"{}\"\nredirect_http = true",
            cert.display(),
            key.display()
        );
        let s = setup(&tls, on());
        let r = send(&s, VISITOR, false, get("/a?b=1"), "").await;
        assert_eq!(r.status(), StatusCode::PERMANENT_REDIRECT);
        assert_eq!(r.headers()["location"], "https://shop.example:8443/a?b=1");
        assert!(counted(&s, "redirect", "3xx"));
        // Bypass paths stay plain; TLS requests are decided as usual.
        let r = send(&s, VISITOR, false, get("/healthz"), "").await;
        assert_eq!(r.status(), StatusCode::BAD_GATEWAY);
        let r = send(&s, VISITOR, true, get("/a"), "").await;
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    }

    fn content(toml: &str) -> Option<ToggleContent> {
        Some(ToggleContent::parse(toml).unwrap_or_else(|e| panic!("{e}")))
    }

    fn post(path: &str) -> http::request::Builder {
        get(path).method("POST")
    }

    #[tokio::test]
    async fn scope_by_path_and_host() {
        let s = setup(
            "",
            content("paths = [\"/api/\"]\nhosts = [\"shop.example\", \"*.tenant.example\"]"),
        );
        let on_host = |p: &str, h: &str| Request::get(p).header("host", h);
        // Inside both: the page.
        for (p, h) in [
            ("/api/x", "shop.example"),
            ("/%61pi/x", "SHOP.example:443"),
            ("/x/../api/", "a.b.tenant.example"),
        ] {
            let r = send(&s, VISITOR, false, on_host(p, h), "").await;
            assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE, "{p} on {h}");
        }
        // Outside either: the app (here: the missing app's 502), unmarked.
        for (p, h) in [
            ("/shop", "shop.example"),
            ("/api/x", "blog.example"),
            ("/api/x", "tenant.example"),
        ] {
            let r = send(&s, VISITOR, false, on_host(p, h), "").await;
            assert_eq!(r.status(), StatusCode::BAD_GATEWAY, "{p} on {h}");
        }
        // Fail closed: an encoded slash is inside every prefix; an absolute-form target's host wins.
        let r = send(&s, VISITOR, false, on_host("/static%2f..%2fapi", "shop.example"), "").await;
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        let r = send(
            &s,
            VISITOR,
            false,
            Request::get("http://shop.example/api/x").header("host", "blog.example"),
            "",
        )
        .await;
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        // The public status follows the host.
        let st = |h: &'static str| Request::get("/.gatekeeper/status").header("host", h);
        let v: serde_json::Value =
            serde_json::from_str(&text(send(&s, VISITOR, false, st("shop.example"), "").await).await).unwrap();
        assert_eq!(
            (v["maintenance"].as_str(), v["paths"][0].as_str()),
            (Some("on"), Some("/api/"))
        );
        let v: serde_json::Value =
            serde_json::from_str(&text(send(&s, VISITOR, false, st("blog.example"), "").await).await).unwrap();
        assert_eq!(v["maintenance"], "off");
    }

    #[tokio::test]
    async fn read_only_lets_reads_through() {
        let s = setup("", content("read_only = true"));
        let r = send(&s, VISITOR, false, get("/"), "").await;
        assert_eq!(r.status(), StatusCode::BAD_GATEWAY, "GET reaches the app");
        assert!(counted(&s, "read-only", "5xx"));
        let r = send(&s, VISITOR, false, post("/cart").header("content-length", "2"), "ab").await;
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(r.headers()["x-maintenance-mode"], "read-only");
        assert!(
            r.headers().get("connection").is_none(),
            "a small body is read: kept alive"
        );
        let r = send(&s, TEAM, false, post("/cart"), "").await;
        assert_eq!(r.status(), StatusCode::BAD_GATEWAY, "the team's writes go through");
        assert!(counted(&s, "bypass", "5xx"));
        // Login stays possible: a bypass path.
        let r = send(&s, VISITOR, false, post("/healthz"), "").await;
        assert_eq!(r.status(), StatusCode::BAD_GATEWAY);
    }

    #[tokio::test]
    async fn pause_holds_until_resumed_then_decides_again() {
        let s = Arc::new(setup("", content("pause = true\nmax = \"10s\"")));
        let s2 = s.clone();
        let held = tokio::spawn(async move { send(&s2, TEAM, false, get("/"), "").await.status() });
        let s3 = s.clone();
        let asset = send(&s3, VISITOR, false, get("/style.css"), "").await;
        assert_eq!(asset.status(), StatusCode::OK, "the page's assets are answered at once");
        while s.state.holds.count() < 1 {
            tokio::task::yield_now().await;
        }
        // Resumed into maintenance on: decided again, the team goes to the app.
        s.state.set_observed(Observed {
            exists: true,
            content: on().unwrap(),
            ..Observed::default()
        });
        assert_eq!(held.await.unwrap(), StatusCode::BAD_GATEWAY);
        assert!(counted(&s, "held", "5xx"));
        assert_eq!(s.state.holds.count(), 0);
    }

    #[tokio::test]
    async fn pause_max_and_max_held_give_the_page() {
        let s = setup("", content("pause = true\nmax = \"50ms\""));
        let r = send(&s, VISITOR, false, get("/"), "").await;
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(counted(&s, "held", "5xx"));
        let s = setup_with("", "max_held = 0", content("pause = true"));
        let r = send(&s, VISITOR, false, get("/"), "").await;
        assert_eq!(
            r.status(),
            StatusCode::SERVICE_UNAVAILABLE,
            "over max_held: the page at once"
        );
    }

    #[tokio::test]
    async fn own_endpoints_answer_first() {
        let s = setup("", content("pause = true\nmax = \"50ms\""));
        let r = send(&s, VISITOR, false, get("/.gatekeeper/health"), "").await;
        assert_eq!((r.status(), text(r).await.as_str()), (StatusCode::OK, "ok\n"));
        s.state.set_drained(true);
        let r = send(&s, VISITOR, false, get("/.gatekeeper/health"), "").await;
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        let r = send(&s, VISITOR, false, get("/.gatekeeper/refresh.js"), "").await;
        assert_eq!(r.headers()["content-type"], "text/javascript; charset=utf-8");
        let r = send(&s, VISITOR, false, get("/.gatekeeper/page/style.css"), "").await;
        assert_eq!(
            (r.status(), &r.headers()["content-type"]),
            (StatusCode::OK, &HeaderValue::from_static("text/css; charset=utf-8"))
        );
        let r = send(&s, VISITOR, false, get("/.gatekeeper/page/nope.css"), "").await;
        assert_eq!(
            r.status(),
            StatusCode::SERVICE_UNAVAILABLE,
            "not ours: decided as any path (held, then the page)"
        );
        let r = send(&s, VISITOR, false, get("/.gatekeeper/status"), "").await;
        assert_eq!(r.headers()["access-control-allow-origin"], "*");
        let v: serde_json::Value = serde_json::from_str(&text(r).await).unwrap();
        assert_eq!(v["maintenance"], "paused");
    }

    #[tokio::test]
    async fn cors_on_the_page_and_its_preflight() {
        let s = setup("", on());
        let origin = "https://app.example";
        let r = send(
            &s,
            VISITOR,
            false,
            get("/api")
                .header("origin", origin)
                .header("accept", "application/json"),
            "",
        )
        .await;
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(r.headers()["access-control-allow-origin"], origin);
        assert_eq!(r.headers()["access-control-allow-credentials"], "true");
        let vary: Vec<&str> = r
            .headers()
            .get_all("vary")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        assert!(vary.contains(&"Origin"), "{vary:?}");
        let pre = Request::builder()
            .method("OPTIONS")
            .uri("/api")
            .header("host", "a")
            .header("origin", origin)
            .header("access-control-request-method", "PUT")
            .header("access-control-request-headers", "content-type, x-csrf");
        let r = send(&s, VISITOR, false, pre, "").await;
        assert_eq!(r.status(), StatusCode::NO_CONTENT);
        assert_eq!(r.headers()["access-control-allow-methods"], "PUT");
        assert_eq!(r.headers()["access-control-allow-headers"], "content-type, x-csrf");
        assert!(counted(&s, "preflight", "2xx"));
        // ACME renewal reaches the app during maintenance.
        let r = send(&s, VISITOR, false, get("/.well-known/acme-challenge/tok"), "").await;
        assert_eq!(r.status(), StatusCode::BAD_GATEWAY);
    }
}
