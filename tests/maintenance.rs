//! Area: the maintenance answer (page, JSON, HEAD, assets, bypass paths).
//!
//! The maintenance response: 503 page (exact headers and body), JSON, HEAD,
//! page assets, path traversal attempts, bypass paths, the default page.
mod common;
use common::*;
use std::os::unix::fs::symlink;
use std::time::Duration;

const TEMPLATE: &str = "<!doctype html>\n<title>{{message}}</title>\n<p class=\"m\">{{message}}</p>\n";
const MESSAGE: &str = "Upgrading <db> & co";
const ESCAPED: &str = "Upgrading &lt;db&gt; &amp; co";
const CSS: &str = "p.m { color: #c00 }\n";
const SVG: &str = "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"1\" height=\"1\"/>\n";
const SECRET: &str = "TOP-SECRET-CONTENT";

fn expected_page() -> String {
    TEMPLATE.replace("{{message}}", ESCAPED)
}

/// Page dir with assets, a secret file next to it, symlinks leading out;
/// maintenance on with MESSAGE.
fn start_with(on: bool, edit: impl FnOnce(&Fixture, &mut Config)) -> Env {
    let fx = Fixture::new();
    fx.write("static/index.html", TEMPLATE);
    fx.write("static/style.css", CSS);
    fx.write("static/img/logo.svg", SVG);
    fx.write("static/sub/ok.txt", "plain text\n");
    fx.write("secret", SECRET);
    fx.write("Cargo.toml", format!("[package] # {SECRET}\n"));
    fx.write("outside/secret2", SECRET);
    symlink(fx.path("secret"), fx.path("static/link-out")).unwrap();
    symlink("../outside", fx.path("static/outdir")).unwrap();
    if on {
        std::fs::write(fx.toggle(), format!("message = {}\n", q(MESSAGE))).unwrap();
    }
    Env::launch(fx, Upstream::start(), |fx, _, c| {
        c.set("maintenance.dir", &q(fx.path("static").to_str().unwrap()));
        edit(fx, c);
    })
}

fn start() -> Env {
    start_with(true, |_, _| {})
}

fn assert_html_ct(ct: Option<&str>) {
    let ct = ct.expect("content-type").to_ascii_lowercase().replace(' ', "");
    assert_eq!(ct, "text/html;charset=utf-8");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn page_status_headers_and_body_exact() {
    let env = start();
    for path in ["/", "/some/app/page?x=1", "/api/v1/items"] {
        let r = get(
            LOCALHOST,
            env.gk.addr,
            path,
            &[("accept", "text/html,application/xhtml+xml,*/*;q=0.8")],
        )
        .await;
        assert_eq!(r.status, 503, "{path}");
        assert_eq!(r.header("retry-after"), Some("600"), "{path}");
        assert_eq!(r.header("cache-control"), Some("no-store"), "{path}");
        assert_html_ct(r.header("content-type"));
        assert_eq!(r.header("x-maintenance-mode"), None);
        assert_eq!(r.text(), expected_page(), "{path}");
        assert_eq!(
            r.header("content-length"),
            Some(r.body.len().to_string().as_str()),
            "{path}"
        );
    }
    // the reason phrase on the wire
    let raw = raw(env.gk.addr, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await;
    assert!(raw.starts_with("HTTP/1.1 503 Service Unavailable\r\n"), "{raw}");
    // any method
    let r = request(
        LOCALHOST,
        env.gk.addr,
        "POST",
        "/form",
        &[("content-type", "text/plain")],
        full("a=1"),
    )
    .await;
    assert_eq!((r.status, r.text()), (503, expected_page()));
    assert!(env.up.uris().is_empty(), "upstream was contacted: {:?}", env.up.uris());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_when_accept_prefers_json() {
    let env = start();
    let want = serde_json::json!({"status": "maintenance", "message": MESSAGE, "retry_after": 600});
    for accept in [
        "application/json",
        "application/json, text/html;q=0.5",
        "text/html;q=0.5, application/json",
        "application/json;q=0.9, */*;q=0.1",
    ] {
        let r = get(LOCALHOST, env.gk.addr, "/api/x", &[("accept", accept)]).await;
        assert_eq!(r.status, 503, "{accept}");
        assert_eq!(r.header("retry-after"), Some("600"), "{accept}");
        assert_eq!(r.header("cache-control"), Some("no-store"), "{accept}");
        let ct = r.header("content-type").unwrap_or("");
        assert!(ct.starts_with("application/json"), "{accept}: content-type {ct}");
        assert_eq!(r.json(), want, "{accept}");
    }
    for accept in [
        "text/html, application/json;q=0.9",
        "*/*",
        "text/*",
        "application/json;q=0, text/html",
    ] {
        let r = get(LOCALHOST, env.gk.addr, "/api/x", &[("accept", accept)]).await;
        assert_eq!(r.status, 503, "{accept}");
        assert_html_ct(r.header("content-type"));
        assert_eq!(r.text(), expected_page(), "{accept}");
    }
    let r = get(LOCALHOST, env.gk.addr, "/api/x", &[]).await;
    assert_eq!(r.text(), expected_page(), "no Accept header means HTML");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_gets_same_headers_without_body() {
    let env = start();
    let get_r = get(LOCALHOST, env.gk.addr, "/", &[]).await;
    let mut c = Conn::open(LOCALHOST, env.gk.addr).await;
    let r = c.send("HEAD", "/", &[], empty()).await;
    assert_eq!(r.status, 503);
    assert_eq!(r.header("retry-after"), Some("600"));
    assert_eq!(r.header("cache-control"), Some("no-store"));
    assert_html_ct(r.header("content-type"));
    assert!(r.body.is_empty());
    assert_eq!(
        r.header("content-length"),
        Some(get_r.body.len().to_string().as_str()),
        "HEAD Content-Length must be the GET body's"
    );
    // on the wire: no body bytes before the next pipelined response
    let wire = raw(
        env.gk.addr,
        b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\nGET /style.css HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    let (first, used) = parse_response(wire.as_bytes(), true, false).expect("HEAD response");
    assert_eq!(first.status, 503);
    assert_eq!(first.header("retry-after"), Some("600"));
    let rest = &wire[used..];
    assert!(rest.starts_with("HTTP/1.1 200 "), "HEAD leaked body bytes: {rest:?}");
    assert_eq!(parse_raw(rest).text(), CSS);
    // JSON HEAD
    let r = c.send("HEAD", "/", &[("accept", "application/json")], empty()).await;
    assert_eq!((r.status, r.header("retry-after"), r.body.len()), (503, Some("600"), 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_from_the_toggle() {
    let env = start();
    std::fs::write(env.fx.toggle(), "message = \"soon\"\nretry_after = \"2m\"\n").unwrap();
    let mut c = Conn::open(LOCALHOST, env.gk.addr).await;
    let r = until_resp(&mut c, "/", Duration::from_secs(3), |r| {
        r.header("retry-after") == Some("120")
    })
    .await;
    assert!(r.is_some(), "Retry-After never became 120\n{}", env.gk.log());
    let r = c.get_with("/", &[("accept", "application/json")]).await;
    assert_eq!(
        r.json(),
        serde_json::json!({"status": "maintenance", "message": "soon", "retry_after": 120})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn page_assets_are_served() {
    let env = start();
    let mut c = Conn::open(LOCALHOST, env.gk.addr).await;
    for (path, ct, body) in [
        ("/style.css", "text/css", CSS),
        ("/style.css?v=3", "text/css", CSS),
        ("/img/logo.svg", "image/svg+xml", SVG),
        ("/sub/ok.txt", "text/plain", "plain text\n"),
    ] {
        let r = c.get(path).await;
        assert_eq!(r.status, 200, "{path}: {}", r.text());
        let got = r.header("content-type").unwrap_or("");
        assert!(
            got == ct || got.starts_with(&format!("{ct};")),
            "{path}: content-type {got:?}, want {ct}"
        );
        assert_eq!(r.text(), body, "{path}");
        assert_eq!(r.header("x-maintenance-mode"), None);
        let h = c.send("HEAD", path, &[], empty()).await;
        assert_eq!((h.status, h.body.len()), (200, 0), "HEAD {path}");
    }
    // the page itself, directories and missing files: the maintenance page
    for path in ["/index.html", "/img", "/img/", "/missing.css", "/sub/nope.txt"] {
        let r = c.get(path).await;
        assert_eq!(r.status, 503, "{path}");
        assert_eq!(r.text(), expected_page(), "{path}");
    }
    assert!(env.up.uris().is_empty(), "upstream contacted: {:?}", env.up.uris());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traversal_attempts_never_escape_the_page_dir() {
    let env = start();
    let long = format!("/{}secret", "../".repeat(2731));
    assert!(long.len() > 8192);
    let long2 = format!("/{}/../secret", "a".repeat(8200));
    let targets: Vec<String> = [
        "/../secret",
        "/../Cargo.toml",
        "/%2e%2e/secret",
        "/%2E%2E/secret",
        "/%2E%2E%2Fsecret",
        "/%2e%2e%2f%2e%2e%2fsecret",
        "/..%2fsecret",
        "/..%2Fsecret",
        "/..%5csecret",
        "/..%5c..%5csecret",
        "/..\\secret",
        "/%c0%ae%c0%ae/secret",
        "/%c0%ae%c0%ae%c0%afsecret",
        "/.%2e/secret",
        "/%2e./secret",
        "/sub/../../secret",
        "/sub/%2e%2e/%2e%2e/secret",
        "/sub/..%2f..%2fsecret",
        "/./../secret",
        "//../secret",
        "/style.css%00.html",
        "/style.css%00",
        "/link-out",
        "/outdir/secret2",
        "/outdir/../secret",
        "//etc/passwd",
        "/%2fetc%2fpasswd",
        "/..%252fsecret",
        "http://localhost/../secret",
        "http://localhost/%2e%2e/secret",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([long, long2])
    .collect();
    let mut failures = Vec::new();
    for t in &targets {
        let req = format!("GET {t} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
        let resp = raw(env.gk.addr, req.as_bytes()).await;
        let status = raw_status(&resp);
        let leaked = resp.contains(SECRET) || resp.contains("root:x:0:0");
        let shown = if t.len() > 60 {
            format!("{}…({} bytes)", &t[..40], t.len())
        } else {
            t.clone()
        };
        if leaked {
            failures.push(format!("{shown}: LEAKED the file outside dir (status {status})"));
        } else if status != 503 {
            failures.push(format!(
                "{shown}: status {status}, want 503: {:?}",
                &resp[..resp.len().min(200)]
            ));
        }
    }
    assert!(env.up.uris().is_empty(), "upstream contacted: {:?}", env.up.uris());
    assert!(failures.is_empty(), "traversal attempts:\n{}", failures.join("\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bypass_paths_are_proxied() {
    let env = start_with(true, |_, c| {
        c.set("maintenance.bypass_paths", &arr(&["/healthz", "/api/public/"]));
    });
    let mut c = Conn::open(LOCALHOST, env.gk.addr).await;
    for path in ["/healthz", "/healthz/deep", "/healthz?full=1", "/api/public/x"] {
        let r = c.get(path).await;
        let p = path.split('?').next().unwrap();
        assert_eq!((r.status, r.text()), (200, format!("upstream:{p}")), "{path}");
        assert_eq!(r.header("x-maintenance-mode"), Some("bypass"), "{path}");
        assert_eq!(r.header("retry-after"), None, "{path}");
    }
    for path in ["/", "/api/public", "/api/private", "/health", "/other/healthz"] {
        let r = c.get(path).await;
        assert_eq!((r.status, r.text()), (503, expected_page()), "{path}");
    }
    assert_eq!(
        env.up.uris(),
        vec!["/healthz", "/healthz/deep", "/healthz?full=1", "/api/public/x"]
    );
}

/// A bypass prefix must not be a way around maintenance for any other path:
/// dot segments (plain or percent-encoded) that leave the prefix are not
/// bypass requests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bypass_prefix_cannot_be_escaped_with_dot_segments() {
    let env = start_with(true, |_, c| {
        c.set("maintenance.bypass_paths", &arr(&["/healthz"]));
    });
    let mut failures = Vec::new();
    for t in [
        "/healthz/../admin",
        "/healthz/%2e%2e/admin",
        "/healthz/..%2fadmin",
        "/healthz/./../admin",
    ] {
        let req = format!("GET {t} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
        let resp = raw(env.gk.addr, req.as_bytes()).await;
        if raw_status(&resp) != 503 {
            failures.push(format!(
                "{t}: status {} ({:?})",
                raw_status(&resp),
                parse_raw(&resp).text()
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "escaped the bypass prefix:\n{}\nupstream saw {:?}",
        failures.join("\n"),
        env.up.uris()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maintenance_off_proxies_everything() {
    let env = start_with(false, |_, c| {
        c.set("maintenance.bypass_paths", &arr(&["/healthz"]));
    });
    let mut c = Conn::open(LOCALHOST, env.gk.addr).await;
    for path in ["/", "/style.css", "/index.html", "/healthz", "/link-out"] {
        let r = c.get(path).await;
        assert_eq!((r.status, r.text()), (200, format!("upstream:{path}")), "{path}");
        assert_eq!(r.header("x-maintenance-mode"), None, "{path}");
        assert_eq!(r.header("retry-after"), None, "{path}");
    }
    let _ = &env.fx;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_embedded_page_and_assets() {
    let fx = Fixture::new();
    std::fs::write(fx.toggle(), "message = \"Default page test <x>\"\n").unwrap();
    let up = Upstream::start();
    let c = fx.config(&up.url());
    let gk = Gatekeeper::start(&fx, &c);
    let r = get(LOCALHOST, gk.addr, "/", &[]).await;
    assert_eq!(r.status, 503);
    assert_eq!(r.header("retry-after"), Some("600"));
    assert_eq!(r.header("cache-control"), Some("no-store"));
    assert_html_ct(r.header("content-type"));
    let html = r.text();
    assert!(html.contains("Default page test &lt;x&gt;"), "{html}");
    assert!(!html.contains("<x>"), "unescaped message");
    assert!(
        !html.contains("{{"),
        "unreplaced placeholder in the default page:\n{html}"
    );
    let css = get(LOCALHOST, gk.addr, "/style.css", &[]).await;
    assert_eq!(css.status, 200, "the default page's stylesheet");
    assert!(css.header("content-type").unwrap_or("").starts_with("text/css"));
    assert!(!css.body.is_empty());
    let svg = get(LOCALHOST, gk.addr, "/maintenance.svg", &[]).await;
    assert_eq!(svg.status, 200, "the default page's image");
    assert!(svg.header("content-type").unwrap_or("").starts_with("image/svg+xml"));
    assert!(up.uris().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_log_line_per_request() {
    let env = start();
    let r = get(LOCALHOST, env.gk.addr, "/access-probe-503", &[]).await;
    assert_eq!(r.status, 503);
    let r = get(LOCALHOST, env.gk.addr, "/sub/ok.txt", &[]).await;
    assert_eq!(r.status, 200);
    for (probe, status) in [("/access-probe-503", "503"), ("/sub/ok.txt", "200")] {
        let found = eventually(Duration::from_secs(3), || {
            env.gk
                .log()
                .lines()
                .any(|l| l.contains(probe) && l.contains(status) && l.contains("127.0.0.1"))
        });
        assert!(
            found,
            "no access log line with {probe}, {status} and the client address:\n{}",
            env.gk.log()
        );
        let n = env.gk.log().lines().filter(|l| l.contains(probe)).count();
        assert_eq!(n, 1, "exactly one line per request for {probe}:\n{}", env.gk.log());
    }
}
