//! What visitors see, in a real browser: headless Chromium (see `cdp`) in
//! front of the real binary in front of a small app.
//!
//! * `banner.js` on the app's page: shown while maintenance is scheduled
//!   within `maintenance.announce` (in the visitor's time zone) and while
//!   read-only, dismissible per window, absent otherwise.
//! * The built-in page reloads into the app within 30 s of `gatekeeper off`
//!   (real time: the product's 10-30 s poll).
//! * `refresh.js` backs off while gatekeeper is down, reloads when it is
//!   back, and never reloads into a loop (with the page's timers sped up 200x).
//! * The page without JavaScript, on desktop and phone, light and dark;
//!   screenshots go to `$GATEKEEPER_SCREENSHOTS` (e.g. `docs/screenshots`) when set.
//!
//! Skipped, with a note, where Chromium is not installed; under CI it must be.
mod cdp;
mod common;
use cdp::{Chromium, Tab, DESKTOP, PHONE};
use common::*;

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;

/// The app's page: a shop that includes the banner, as the README says to.
const SHOP: &str = r##"<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Shop</title>
<script src="/.gatekeeper/banner.js" defer></script>
<style>
body{margin:0;font:16px/1.5 system-ui,sans-serif;color:#1d2433;background:#fff}
header{display:flex;align-items:center;justify-content:space-between;padding:1rem 1.5rem;border-bottom:1px solid #e3e6eb}
header b{font-size:1.2rem}nav a{margin-left:1.25rem;color:inherit;text-decoration:none}
main{max-width:60rem;margin:0 auto;padding:1.5rem}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(13rem,1fr));gap:1.25rem}
.item{border:1px solid #e3e6eb;border-radius:12px;padding:1rem}
.ph{height:8rem;border-radius:8px;background:linear-gradient(135deg,#dbe4ff,#f3d9fa)}
</style></head><body>
<header><b>Acme Shop</b><nav><a href="#">Products</a><a href="#">Cart</a></nav></header>
<main><h1>New this week</h1><div class="grid">
<div class="item"><div class="ph"></div><p>Blue mug, €12</p></div>
<div class="item"><div class="ph"></div><p>Green teapot, €34</p></div>
<div class="item"><div class="ph"></div><p>Linen napkins, €18</p></div>
</div></main></body></html>
"##;

/// A page that includes refresh.js although it is the app's: the status says
/// maintenance is over, yet a reload comes back here — a reload loop's setting.
const STUCK: &str = "<!doctype html><title>Stuck</title>\
    <script src=\"/.gatekeeper/refresh.js\" defer></script><p>Still here.</p>";

/// Run before the page's scripts: timers 200x faster, and every delay asked for kept.
const FAST_TIMERS: &str = "window.__delays = []; const __setTimeout = window.setTimeout.bind(window); \
    window.setTimeout = (f, d, ...a) => { window.__delays.push(d); return __setTimeout(f, d / 200, ...a); };";

/// The app behind gatekeeper; counts requests per path.
struct App {
    addr: SocketAddr,
    hits: Arc<Mutex<HashMap<String, usize>>>,
}

impl App {
    async fn start() -> App {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let hits: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
        let h = hits.clone();
        tokio::spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                let h = h.clone();
                let svc = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let path = req.uri().path().to_string();
                    *h.lock().unwrap().entry(path.clone()).or_default() += 1;
                    let (status, body) = match path.as_str() {
                        "/" => (200, SHOP),
                        "/stuck" => (200, STUCK),
                        _ => (404, "not found"),
                    };
                    let r = http::Response::builder()
                        .status(status)
                        .header("content-type", "text/html; charset=utf-8")
                        .header("cache-control", "no-store")
                        .body(http_body_util::Full::new(bytes::Bytes::from_static(body.as_bytes())));
                    async move { Ok::<_, Infallible>(r.unwrap()) }
                });
                tokio::spawn(http1::Builder::new().serve_connection(TokioIo::new(s), svc));
            }
        });
        App { addr, hits }
    }

    fn hits(&self, path: &str) -> usize {
        self.hits.lock().unwrap().get(path).copied().unwrap_or(0)
    }
}

/// Chromium, the app, and gatekeeper in front of it.
struct Setup {
    browser: Arc<Chromium>,
    app: App,
    fx: Fixture,
    cfg: Config,
    gk: Option<Gatekeeper>,
}

impl Setup {
    async fn start(extra: &[(&str, &str)]) -> Option<Setup> {
        let browser = Chromium::launch().await?;
        let app = App::start().await;
        let fx = Fixture::new();
        let mut cfg = fx.config(&format!("http://{}", app.addr));
        for (k, v) in extra {
            cfg.set(k, v);
        }
        let gk = Some(Gatekeeper::start(&fx, &cfg));
        Some(Setup {
            browser,
            app,
            fx,
            cfg,
            gk,
        })
    }

    fn gk(&self) -> &Gatekeeper {
        self.gk.as_ref().unwrap()
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.gk().addr)
    }

    /// `gatekeeper <args> -c <config>`, then waits until the daemon's status says `state`.
    async fn cli(&self, args: &[&str], state: &str) {
        let mut all = args.to_vec();
        all.extend(["-c", self.gk().config.to_str().unwrap()]);
        let out = gk(&all);
        assert!(out.status.success(), "gatekeeper {args:?}: {}", show(&out));
        let seen = eventually_async(Duration::from_secs(10), || async {
            get(LOCALHOST, self.gk().addr, "/.gatekeeper/status", &[]).await.json()["maintenance"] == state
        })
        .await;
        assert!(seen, "status never said {state}:\n{}", self.gk().log());
    }
}

const BANNER: &str = "document.getElementById('gatekeeper-banner')";

/// True when `expr` stays falsy for `d` (a bounded look for something that must not happen).
async fn stays_falsy(tab: &Tab, expr: &str, d: Duration) -> bool {
    tab.wait_for(expr, d).await.is_none()
}

/// Waits until the page has asked for the status (and so decided about the banner).
async fn status_asked(tab: &Tab) {
    let asked = "performance.getEntriesByType('resource').some(e => e.name.endsWith('/.gatekeeper/status'))";
    assert!(tab.wait_for(asked, Duration::from_secs(10)).await.is_some());
}

/// Where screenshots go: `$GATEKEEPER_SCREENSHOTS` (relative to the crate), else nowhere.
fn save(name: &str, png: &[u8]) {
    assert!(png.starts_with(b"\x89PNG"), "{name} is not a PNG");
    eprintln!("screenshot {name}: {} bytes", png.len());
    if let Some(dir) = std::env::var_os("GATEKEEPER_SCREENSHOTS") {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(name), png).unwrap();
    }
}

/// "h:mm AM" of `t` at UTC+5:30 (Asia/Kolkata: no summer time), as en-US says it.
fn kolkata_time(t: jiff::Timestamp) -> String {
    let secs = (t.as_second() + 5 * 3600 + 1800).rem_euclid(86_400);
    let (h, m) = (secs / 3600, secs % 3600 / 60);
    let h12 = if h % 12 == 0 { 12 } else { h % 12 };
    format!("{h12}:{m:02} {}", if h < 12 { "AM" } else { "PM" })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn banner_announces_the_window_in_local_time_and_says_read_only() {
    let Some(s) = Setup::start(&[("maintenance.announce", &q("2h"))]).await else {
        return;
    };
    let now = jiff::Timestamp::now();
    let from = (now + jiff::SignedDuration::from_mins(40))
        .round(jiff::Unit::Minute)
        .unwrap();
    let until = from + jiff::SignedDuration::from_mins(45);
    let (f, u) = (from.to_string(), until.to_string());
    s.cli(
        &["on", "--from", &f, "--until", &u, "--message", "Database upgrade."],
        "scheduled",
    )
    .await;

    let tab = s.browser.tab().await;
    tab.locale("Asia/Kolkata", "en-US").await;
    tab.emulate(DESKTOP, false).await;
    let t = Instant::now();
    tab.goto(&s.url("/")).await;
    let shown = format!("(b => b && b.getAttribute('role') === 'status' && b.innerText)({BANNER})");
    let text = tab.wait_for(&shown, Duration::from_secs(10)).await;
    let text = text.unwrap_or_else(|| panic!("no banner:\n{}", s.gk().log()));
    let text = text.as_str().unwrap();
    eprintln!("banner found {:?} after navigation: {text:?}", t.elapsed());
    let local = kolkata_time(from);
    assert!(text.starts_with("Scheduled maintenance from "), "{text}");
    assert!(text.contains(&format!("{local} to ")), "{local} in {text}");
    assert!(text.contains(" GMT+5:30."), "{text}");
    assert!(text.contains("Database upgrade."), "{text}");
    let first = tab.eval(&format!("document.body.firstElementChild === {BANNER}")).await;
    assert_eq!(first, Ok(serde_json::json!(true)), "at the top of the page");
    let height = tab
        .eval(&format!("{BANNER}.getBoundingClientRect().height"))
        .await
        .unwrap();
    eprintln!(
        "banner height: {height} px at 1280 px; banner.js: {} bytes",
        include_str!("../src/scripts/banner.js").len()
    );
    save("banner-desktop.png", &tab.screenshot().await);
    tab.emulate(PHONE, false).await;
    save("banner-phone.png", &tab.screenshot().await);

    // Dismissed: gone, and not back in this window; a new window shows it again.
    tab.eval(&format!("{BANNER}.querySelector('button').click()"))
        .await
        .unwrap();
    assert!(tab
        .wait_for(&format!("!{BANNER}"), Duration::from_secs(5))
        .await
        .is_some());
    tab.goto(&s.url("/")).await;
    status_asked(&tab).await;
    assert!(
        stays_falsy(&tab, BANNER, Duration::from_millis(500)).await,
        "dismissed, yet back"
    );
    let other = s.browser.tab().await;
    other.goto(&s.url("/")).await;
    assert!(
        other.wait_for(BANNER, Duration::from_secs(10)).await.is_some(),
        "a new window"
    );

    // Read-only: the app's pages are served, with the banner saying so.
    s.cli(&["on", "--read-only"], "read-only").await;
    let tab = s.browser.tab().await;
    tab.goto(&s.url("/")).await;
    let text = tab
        .wait_for(&format!("{BANNER} && {BANNER}.innerText"), Duration::from_secs(10))
        .await;
    let text = text.unwrap_or_default();
    assert!(text.as_str().unwrap_or("").contains("read-only"), "{text}");

    // Further ahead than `announce`, or off: no banner.
    let later = (now + jiff::SignedDuration::from_hours(3)).to_string();
    s.cli(&["on", "--from", &later], "scheduled").await;
    for state in ["scheduled", "off"] {
        if state == "off" {
            s.cli(&["off"], "off").await;
        }
        let tab = s.browser.tab().await;
        tab.goto(&s.url("/")).await;
        status_asked(&tab).await;
        assert!(
            stays_falsy(&tab, BANNER, Duration::from_millis(500)).await,
            "{state}: a banner"
        );
    }
    assert!(s.app.hits("/") >= 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_reloads_into_the_app_within_30_s_of_off() {
    let Some(s) = Setup::start(&[]).await else { return };
    s.cli(&["on", "--message", "Back in a moment."], "on").await;
    let tab = s.browser.tab().await;
    tab.goto(&s.url("/")).await;
    assert_eq!(
        tab.eval("document.title").await,
        Ok(serde_json::json!("Down for maintenance"))
    );
    let promised = "!document.querySelector('[data-gatekeeper-reloads]').hidden";
    assert!(
        tab.wait_for(promised, Duration::from_secs(5)).await.is_some(),
        "refresh.js ran"
    );
    s.cli(&["off"], "off").await;
    let off = Instant::now();
    let back = tab.wait_for("document.title === 'Shop'", Duration::from_secs(40)).await;
    let took = off.elapsed();
    assert!(back.is_some(), "still on the page 40 s after off:\n{}", s.gk().log());
    eprintln!("reloaded into the app {took:?} after `gatekeeper off`");
    // The poll is 10-30 s; a little more for the status request and the load.
    assert!(took < Duration::from_secs(32), "{took:?}");
    assert_eq!(s.app.hits("/"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_backs_off_while_gatekeeper_is_down_and_never_loops() {
    let Some(mut s) = Setup::start(&[]).await else { return };
    // 1. The status says "off" but reloading lands on a page with refresh.js again:
    //    three reloads, then none for now.
    let tab = s.browser.tab().await;
    tab.before_scripts(FAST_TIMERS).await;
    tab.goto(&s.url("/stuck")).await;
    assert!(
        eventually_async(Duration::from_secs(20), || async { s.app.hits("/stuck") >= 4 }).await,
        "reloads: {}",
        s.app.hits("/stuck")
    );
    // Long enough for the backed-off retries (sped up: 0.05 s to 2.4 s apart).
    let more = eventually_async(Duration::from_secs(3), || async { s.app.hits("/stuck") > 4 }).await;
    assert!(!more, "a fourth reload within two minutes: {}", s.app.hits("/stuck"));
    let kept = tab
        .eval("JSON.parse(sessionStorage.getItem('gatekeeper-reloads')).length")
        .await;
    assert_eq!(kept, Ok(serde_json::json!(3)));
    // The last page's first wait, then one per blocked reload: doubled each time, up to 16x.
    let d = delays(&tab, 4).await;
    for (k, d) in d.iter().enumerate() {
        let f = f64::from(1u32 << k.min(4));
        assert!((10_000.0 * f..=30_000.0 * f).contains(d), "wait {k}: {d} ms");
    }

    // 2. gatekeeper down: the page stays, polling further and further apart.
    s.cli(&["on"], "on").await;
    let tab = s.browser.tab().await;
    tab.before_scripts(FAST_TIMERS).await;
    tab.goto(&s.url("/")).await;
    tab.eval("window.__stay = 1").await.unwrap();
    let addr = s.gk().addr;
    drop(s.gk.take());
    let n = tab.eval("window.__delays.length").await.unwrap().as_u64().unwrap() as usize;
    // A poll answered just before the end may add one more 10-30 s wait; from
    // then on each failure doubles it, up to 16x (160-480 s).
    let d = delays(&tab, n + 5).await;
    assert!(d[n + 3] >= 80_000.0, "{:?}", &d[n..]);
    assert!((160_000.0..=480_000.0).contains(&d[n + 4]), "{:?}", &d[n..]);
    assert!(d[n..].iter().all(|d| *d <= 480_000.0), "{:?}", &d[n..]);
    assert_eq!(
        tab.eval("window.__stay").await,
        Ok(serde_json::json!(1)),
        "reloaded while down"
    );
    // 3. Back, and out of maintenance: the page reloads into the app.
    s.fx.toggle_off();
    s.cfg.set("listen", &arr(&[&addr.to_string()]));
    s.gk = Some(Gatekeeper::start(&s.fx, &s.cfg));
    let back = tab.wait_for("document.title === 'Shop'", Duration::from_secs(20)).await;
    assert!(back.is_some(), "no reload after gatekeeper came back");
}

/// The waits the page asked for, once there are `n`.
async fn delays(tab: &Tab, n: usize) -> Vec<f64> {
    let enough = format!("window.__delays.length >= {n} && window.__delays");
    let d = tab.wait_for(&enough, Duration::from_secs(15)).await;
    let d: Vec<f64> = serde_json::from_value(d.expect("timers")).unwrap();
    eprintln!("refresh.js waits (ms): {d:?}");
    d
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_on_desktop_and_phone_light_and_dark_and_without_javascript() {
    let Some(s) = Setup::start(&[]).await else { return };
    let message = "We're upgrading our database to make things faster. Thanks for your patience!";
    s.cli(&["on", "--message", message, "--for", "45m"], "on").await;
    let tab = s.browser.tab().await;
    tab.locale("America/New_York", "en-US").await;
    for (name, device) in [("desktop", DESKTOP), ("phone", PHONE)] {
        for dark in [false, true] {
            tab.emulate(device, dark).await;
            tab.goto(&s.url("/")).await;
            let promised = "!document.querySelector('[data-gatekeeper-reloads]').hidden";
            assert!(tab.wait_for(promised, Duration::from_secs(5)).await.is_some());
            // The end of the window in the visitor's zone, by refresh.js.
            let until = tab.eval("document.querySelector('time').textContent").await.unwrap();
            let until = until.as_str().unwrap();
            assert!(until.ends_with(" EST") || until.ends_with(" EDT"), "{until}");
            let fits = tab.eval("document.documentElement.scrollWidth <= innerWidth").await;
            assert_eq!(fits, Ok(serde_json::json!(true)), "{name}: wider than the screen");
            let scheme = if dark { "dark" } else { "light" };
            save(&format!("page-{name}-{scheme}.png"), &tab.screenshot().await);
        }
    }
    // Without JavaScript: the message and the times are there, the reload is not promised.
    let tab = s.browser.tab().await;
    tab.disable_scripts().await;
    tab.goto(&s.url("/")).await;
    let text = tab.eval("document.body.innerText").await.unwrap();
    let text = text.as_str().unwrap();
    assert!(text.contains(message), "{text}");
    assert!(text.contains("Please try again in about 4"), "{text}");
    assert!(text.contains(" UTC on "), "{text}");
    assert!(!text.contains("reloads by itself"), "{text}");
}
