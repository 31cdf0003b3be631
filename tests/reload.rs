//! Area: reload (SIGHUP, watched config and allowlist edits).
//!
//! SIGHUP and watched edits of the config and allowlist files,
//! refused configs (with their location), listen changes, kept-alive
//! connections, requests in flight and upstream pools across reloads.
mod common;
use common::*;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// SIGHUP reloads what no file watch sees (the page directory), and a config
/// edit reloads without a signal; kept-alive connections see both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_and_config_edit_reload_on_kept_alive_connections() {
    let fx = Fixture::new();
    fx.toggle_on();
    fx.write("page/index.html", "<h1>page one</h1>{{message}}");
    let up = Upstream::start();
    let mut cfg = fx.config(&up.url());
    cfg.set("maintenance.dir", &q(fx.path("page").to_str().unwrap()));
    cfg.set("clients.allow", &arr(&["203.0.113.7"]));
    with_admin(&mut cfg);
    let gk = Gatekeeper::start(&fx, &cfg);
    let admin = gk.admin();
    let mut c = Conn::open(LOCALHOST, gk.addr).await;
    let r = c.get("/x").await;
    assert_eq!(r.status, 503);
    assert!(r.text().contains("page one"), "{}", r.text());

    // The page directory is not watched: only SIGHUP picks up a new page.
    fx.write("page/index.html", "<h1>page two</h1>{{message}}");
    gk.signal(libc::SIGHUP);
    assert!(
        gk.wait_count("config reloaded", 1, Duration::from_secs(5)),
        "no reload after SIGHUP\n{}",
        gk.log()
    );
    assert_eq!(count(&gk.log(), "SIGHUP: reloading"), 1, "{}", gk.log());
    let r = until_resp(&mut c, "/x", Duration::from_secs(3), |r| r.text().contains("page two")).await;
    assert!(r.is_some(), "new page not served after SIGHUP\n{}", gk.log());

    // An edit of the config file reloads by itself (watched, debounced).
    cfg.set("clients.allow", &arr(&["203.0.113.7", "127.0.0.1"]));
    replace(&gk.config, &cfg.render());
    let r = until_resp(&mut c, "/x", Duration::from_secs(5), bypassed).await;
    assert!(r.is_some(), "allowlist edit not applied\n{}", gk.log());
    // The line comes before the reload, but through a pipe that may lag the
    // answer the client has already seen.
    assert!(
        gk.wait_for_log(
            &regex::escape("config, allowlist or certificate file changed: reloading"),
            Duration::from_secs(3)
        )
        .is_some(),
        "{}",
        gk.log()
    );
    assert!(gk.wait_count("config reloaded", 2, Duration::from_secs(3)));
    assert_eq!(metric(admin, "gatekeeper_allowlist_entries").await, 2.0);

    // An allow_file added by a reload is watched from then on.
    let allow = fx.write("allowlist", "# nobody\n");
    cfg.set("clients.allow", &arr(&[]));
    cfg.set("clients.allow_file", &q(allow.to_str().unwrap()));
    replace(&gk.config, &cfg.render());
    let r = until_resp(&mut c, "/x", Duration::from_secs(5), |r| r.status == 503).await;
    assert!(r.is_some(), "allowlist removal not applied\n{}", gk.log());
    replace(&allow, "# office\n127.0.0.1\n198.51.100.0/24\n");
    let r = until_resp(&mut c, "/x", Duration::from_secs(5), bypassed).await;
    assert!(r.is_some(), "allow_file edit not applied\n{}", gk.log());
    assert_eq!(metric(admin, "gatekeeper_allowlist_entries").await, 2.0);
    assert!(!c.is_closed(), "the kept-alive connection was dropped by a reload");
    assert_eq!(metric(admin, "gatekeeper_reloads_total{result=\"failed\"}").await, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allowlist_file_change_is_picked_up() {
    let fx = Fixture::new();
    fx.toggle_on();
    let allowlist = fx.write("allowlist", "# nobody yet\n");
    let up = Upstream::start();
    let mut cfg = fx.config(&up.url());
    cfg.set("clients.allow_file", &q(allowlist.to_str().unwrap()));
    let gk = Gatekeeper::start(&fx, &cfg);
    let mut c = Conn::open(LOCALHOST, gk.addr).await;
    assert_eq!(c.get("/r").await.status, 503);
    std::fs::write(&allowlist, "# office\n127.0.0.1\n").unwrap();
    assert!(
        until_resp(&mut c, "/r", Duration::from_secs(3), bypassed)
            .await
            .is_some(),
        "allowlist change not applied\n{}",
        gk.log()
    );
    std::fs::write(&allowlist, "# office moved\n198.51.100.1\n").unwrap();
    assert!(
        until_resp(&mut c, "/r", Duration::from_secs(3), |r| r.status == 503)
            .await
            .is_some(),
        "allowlist removal not applied\n{}",
        gk.log()
    );
}

/// A broken config is refused with file:line:col and key in the log, by the
/// watcher and by SIGHUP alike; the running config keeps working; a fixed
/// file is then taken.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_config_is_refused_with_its_location_and_old_config_stays() {
    let fx = Fixture::new();
    fx.toggle_on();
    let up = Upstream::start();
    let mut cfg = fx.config(&up.url());
    cfg.set("clients.allow", &arr(&["127.0.0.1"]));
    with_admin(&mut cfg);
    let gk = Gatekeeper::start(&fx, &cfg);
    let admin = gk.admin();
    let mut c = Conn::open(LOCALHOST, gk.addr).await;
    assert!(bypassed(&c.get("/a").await));
    let path = gk.config.display().to_string();

    // A bad CIDR, written in place (watched).
    let bad = cfg
        .render()
        .replace("[\"127.0.0.1\"]", "[\"127.0.0.1\", \"10.0.0.0/33\"]");
    assert_ne!(bad, cfg.render());
    std::fs::write(&gk.config, &bad).unwrap();
    let (line, col) = loc(&bad, "\"10.0.0.0/33\"");
    let want = format!(
        "reload refused, keeping the running config: {path}:{line}:{col}: clients.allow[1]: \"10.0.0.0/33\" is not an IP address or CIDR range"
    );
    assert!(
        gk.wait_for_log(&regex::escape(&want), Duration::from_secs(5)).is_some(),
        "want {want:?} in the log\n{}",
        gk.log()
    );
    for _ in 0..3 {
        assert!(bypassed(&c.get("/a").await), "the old allowlist must stay");
    }
    // The same refusal on SIGHUP.
    gk.signal(libc::SIGHUP);
    assert!(
        gk.wait_count(&want, 2, Duration::from_secs(5)),
        "SIGHUP with a bad config: no second refusal\n{}",
        gk.log()
    );
    assert_eq!(metric(admin, "gatekeeper_reloads_total{result=\"failed\"}").await, 2.0);
    assert_eq!(metric(admin, "gatekeeper_reloads_total{result=\"ok\"}").await, 0.0);

    // A TOML syntax error names its position too.
    let broken = format!("{}\n[clients\n", cfg.render());
    replace(&gk.config, &broken);
    let (line, _) = loc(&broken, "[clients\n");
    let re = format!(
        r"reload refused, keeping the running config: {}:{line}:\d+: ",
        regex::escape(&path)
    );
    assert!(
        gk.wait_for_log(&re, Duration::from_secs(5)).is_some(),
        "syntax error not located\n{}",
        gk.log()
    );
    // An unknown key, and a bad line in the allow file (named by its own path and line).
    let typo = cfg.render().replace("[upstream]", "[upstream]\ntimeuot = \"5s\"");
    replace(&gk.config, &typo);
    let (line, col) = loc(&typo, "timeuot");
    let want = format!("{path}:{line}:{col}: upstream.timeuot: unknown field `timeuot` (unknown key)");
    assert!(
        gk.wait_for_log(&regex::escape(&want), Duration::from_secs(5)).is_some(),
        "want {want:?}\n{}",
        gk.log()
    );
    let allow = fx.write("allowlist", "127.0.0.1\nnot-an-address\n");
    cfg.set("clients.allow_file", &q(allow.to_str().unwrap()));
    replace(&gk.config, &cfg.render());
    let re = format!(
        r"reload refused, keeping the running config: .*{}:2\b",
        regex::escape(&allow.display().to_string())
    );
    assert!(
        gk.wait_for_log(&re, Duration::from_secs(5)).is_some(),
        "bad allow_file line not located (want {re:?})\n{}",
        gk.log()
    );
    assert!(bypassed(&c.get("/a").await), "the old config must stay");
    assert_eq!(metric(admin, "gatekeeper_reloads_total{result=\"ok\"}").await, 0.0);

    // Fixed: the next SIGHUP takes it, the allowlist now from the file.
    std::fs::write(&allow, "127.0.0.2\n").unwrap();
    gk.signal(libc::SIGHUP);
    assert!(
        gk.wait_count("config reloaded", 1, Duration::from_secs(5)),
        "fixed config not reloaded\n{}",
        gk.log()
    );
    let r = until_resp(&mut c, "/a", Duration::from_secs(3), |r| r.status == 200).await;
    assert!(r.is_some(), "{}", gk.log());
    assert!(!c.is_closed());
}

/// The error of a refused reload names a file (here the new allow_file); the
/// operator fixes that file and expects the fix to be picked up like any other
/// watched edit, without a SIGHUP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fixing_the_file_a_refused_reload_named_is_picked_up() {
    let fx = Fixture::new();
    fx.toggle_on();
    let up = Upstream::start();
    let mut cfg = fx.config(&up.url());
    let gk = Gatekeeper::start(&fx, &cfg);
    let mut c = Conn::open(LOCALHOST, gk.addr).await;
    assert_eq!(c.get("/a").await.status, 503);
    let allow = fx.write("allowlist", "127.0.0.1\nnot-an-address\n");
    cfg.set("clients.allow_file", &q(allow.to_str().unwrap()));
    replace(&gk.config, &cfg.render());
    let named = format!("{}:2:", allow.display());
    assert!(
        gk.wait_for_log(&regex::escape(&named), Duration::from_secs(5))
            .is_some(),
        "{}",
        gk.log()
    );
    replace(&allow, "127.0.0.1\n");
    let r = until_resp(&mut c, "/a", Duration::from_secs(5), bypassed).await;
    assert!(
        r.is_some(),
        "the fixed allow_file ({}) was not picked up without a SIGHUP\n{}",
        allow.display(),
        gk.log()
    );
}

/// A reload also takes trusted proxies, maintenance settings and the log level.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_applies_trusted_proxies_maintenance_settings_and_log_level() {
    let fx = Fixture::new();
    fx.toggle_on();
    let up = Upstream::start();
    let mut cfg = fx.config(&up.url());
    cfg.set("clients.allow", &arr(&["203.0.113.9"]));
    let gk = Gatekeeper::start(&fx, &cfg);
    let xff = [("x-forwarded-for", "203.0.113.9")];
    let mut c = Conn::open(LOCALHOST, gk.addr).await;
    let r = c.get_with("/a", &xff).await;
    assert_eq!((r.status, r.header("retry-after")), (503, Some("600")));

    cfg.set("clients.trusted_proxies", &arr(&["127.0.0.1"]));
    cfg.set("maintenance.message", &q("Reloaded message"));
    cfg.set("maintenance.retry_after", &q("90s"));
    cfg.set("log.level", &q("warn"));
    replace(&gk.config, &cfg.render());
    let r = until_resp(&mut c, "/b", Duration::from_secs(5), |r| {
        r.header("retry-after") == Some("90")
    })
    .await;
    let r = r.unwrap_or_else(|| panic!("maintenance settings not reloaded\n{}", gk.log()));
    assert!(r.text().contains("Reloaded message"), "{}", r.text());
    assert!(bypassed(&c.get_with("/c", &xff).await), "trusted proxies not reloaded");
    // At "warn", access lines (info) are no longer written.
    for _ in 0..3 {
        assert_eq!(c.get("/quiet").await.status, 503);
    }

    cfg.set("log.level", &q("info"));
    replace(&gk.config, &cfg.render());
    assert!(
        gk.wait_for_log("config reloaded", Duration::from_secs(5)).is_some(),
        "{}",
        gk.log()
    );
    assert_eq!(c.get("/loud").await.status, 503);
    assert!(
        gk.wait_for_log("path=/loud", Duration::from_secs(3)).is_some(),
        "{}",
        gk.log()
    );
    // The line for /loud is the barrier: a line for /quiet, answered before
    // it on the same connection, would have been written before it.
    assert!(!gk.log().contains("path=/quiet"), "{}", gk.log());
}

/// Listen addresses cannot change without a restart: the reload says so, the
/// old socket keeps serving and the new address is not bound; the rest of the
/// new config is applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listen_change_is_logged_as_needing_a_restart() {
    let fx = Fixture::new();
    fx.toggle_on();
    let up = Upstream::start();
    let mut cfg = fx.config(&up.url());
    let gk = Gatekeeper::start(&fx, &cfg);
    let mut c = Conn::open(LOCALHOST, gk.addr).await;
    assert_eq!(c.get("/").await.status, 503);
    // Held (bound, not listening) by the test: whether the daemon binds it
    // shows in its log, not in a connect.
    let held = HeldPort::new();
    let other = held.addr;
    cfg.set("listen", &arr(&[&other.to_string()]));
    cfg.set("clients.allow", &arr(&["127.0.0.1"]));
    replace(&gk.config, &cfg.render());
    assert!(
        gk.wait_for_log("take effect only after a restart", Duration::from_secs(5))
            .is_some(),
        "listen change not logged\n{}",
        gk.log()
    );
    let r = until_resp(&mut c, "/", Duration::from_secs(3), bypassed).await;
    assert!(r.is_some(), "the rest of the config must be applied\n{}", gk.log());
    let log = gk.log();
    assert!(
        !log.contains(&format!("listening on {other}")) && !log.contains("ERROR"),
        "{other} must not be bound before a restart\n{log}"
    );
    assert_eq!(gk.listeners, vec![(gk.addr, "http".to_string())]);
    let r = get(LOCALHOST, gk.addr, "/", &[]).await;
    assert!(bypassed(&r), "old listener must keep serving new connections");
}

/// Kept-alive HTTP/1.1 and h2c clients looping, plus a slow request in
/// flight, while 100 reloads happen: every request answered, no connection lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_in_flight_and_kept_alive_connections_survive_100_reloads() {
    const RELOADS: usize = 100;
    let fx = Fixture::new();
    let up = Upstream::start();
    let mut cfg = fx.config(&up.url());
    cfg.set("log.access", "false");
    with_admin(&mut cfg);
    let gk = Gatekeeper::start(&fx, &cfg);
    let admin = gk.admin();
    let addr = gk.addr;

    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicU64::new(0));
    let mut clients = Vec::new();
    for i in 0..3 {
        let (stop, ok) = (stop.clone(), ok.clone());
        clients.push(tokio::spawn(async move {
            let mut c = Conn::open(LOCALHOST, addr).await;
            let local = c.local;
            let mut errors = Vec::new();
            let mut n = 0u64;
            // Bounded: at most 100k requests or until told to stop.
            while !stop.load(Ordering::Relaxed) && n < 100_000 {
                let path = format!("/echo/c{i}/{n}");
                match c.request(build_request("GET", &path, &[], empty())).await {
                    Ok(r) if r.status == 200 && r.echo().uri == path => {
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(r) => errors.push(format!("{path}: {} {}", r.status, r.text())),
                    Err(e) => {
                        errors.push(format!("{path}: {e:?}"));
                        break;
                    }
                }
                n += 1;
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            (local, c.is_closed(), n, errors)
        }));
    }
    // One h2c client multiplexing on a single connection.
    let h2 = {
        let (stop, ok) = (stop.clone(), ok.clone());
        tokio::spawn(async move {
            let s = connect_from(LOCALHOST, addr).await.unwrap();
            let (mut tx, conn) = hyper::client::conn::http2::handshake(
                hyper_util::rt::TokioExecutor::new(),
                hyper_util::rt::TokioIo::new(s),
            )
            .await
            .unwrap();
            let driver = tokio::spawn(conn);
            let mut errors = Vec::new();
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) && n < 100_000 {
                let req = http::Request::builder()
                    .uri(format!("http://localhost/h2/{n}"))
                    .body(empty())
                    .unwrap();
                match tx.send_request(req).await {
                    Ok(r) if r.status() == 200 => {
                        use http_body_util::BodyExt as _;
                        match r.into_body().collect().await {
                            Ok(_) => {
                                ok.fetch_add(1, Ordering::Relaxed);
                            }
                            Err(e) => errors.push(format!("h2 body {n}: {e:?}")),
                        }
                    }
                    Ok(r) => errors.push(format!("h2 {n}: status {}", r.status())),
                    Err(e) => {
                        errors.push(format!("h2 {n}: {e:?}"));
                        break;
                    }
                }
                n += 1;
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            let closed = tx.is_closed() || driver.is_finished();
            (closed, n, errors)
        })
    };
    // A slow request in flight through all the reloads.
    let slow = tokio::spawn(async move {
        let t0 = Instant::now();
        let r = get(LOCALHOST, addr, "/slow?ms=6000", &[]).await;
        (r.status, r.text(), t0.elapsed())
    });
    assert!(
        eventually(Duration::from_secs(5), || up
            .uris()
            .iter()
            .any(|u| u == "/slow?ms=6000")),
        "slow request never reached the upstream"
    );

    let t0 = Instant::now();
    for i in 1..=RELOADS {
        gk.signal(libc::SIGHUP);
        // One at a time: signals sent while a reload runs would be coalesced.
        assert!(
            gk.wait_count("config reloaded", i, Duration::from_secs(5)),
            "reload {i} did not happen\n{}",
            gk.log()
        );
    }
    let reload_time = t0.elapsed();
    eprintln!("{RELOADS} reloads took {reload_time:?}");
    let (slow_status, slow_body, slow_time) = slow.await.unwrap();
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        let (local, closed, n, errors) = c.await.unwrap();
        assert!(errors.is_empty(), "client {local}: {errors:?}\n{}", gk.log());
        assert!(!closed, "client {local}: connection closed");
        assert!(n > 10, "client {local} sent only {n} requests");
    }
    let (closed, n, errors) = h2.await.unwrap();
    assert!(errors.is_empty(), "h2 client: {errors:?}");
    assert!(!closed, "h2 connection closed");
    assert!(n > 10, "h2 client sent only {n} requests");
    assert_eq!((slow_status, slow_body.as_str()), (200, "slow"), "slow request");
    assert!(slow_time >= Duration::from_millis(5900), "{slow_time:?}");
    assert!(
        reload_time < slow_time,
        "the reloads ({reload_time:?}) must happen while the slow request ({slow_time:?}) is in flight"
    );
    assert!(ok.load(Ordering::Relaxed) > 40);
    let m = metrics(admin).await;
    assert_eq!(
        sample(&m, "gatekeeper_reloads_total{result=\"ok\"}"),
        Some(RELOADS as f64),
        "{m}"
    );
    assert_eq!(
        sample(&m, "gatekeeper_reloads_total{result=\"failed\"}"),
        Some(0.0),
        "{m}"
    );
    assert_eq!(count(&gk.log(), "ERROR"), 0, "{}", gk.log());
}

async fn three_gets(c: &mut Conn) {
    for _ in 0..3 {
        assert_eq!(c.get("/echo").await.status, 200);
    }
}

/// A reload that leaves the upstream alone keeps its pooled connections; one
/// that names another upstream sends every next request there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_keeps_upstream_connections_unless_the_upstream_changes() {
    let fx = Fixture::new();
    let a = Upstream::start();
    let b = Upstream::start();
    let mut cfg = fx.config(&a.url());
    let gk = Gatekeeper::start(&fx, &cfg);
    let mut c = Conn::open(LOCALHOST, gk.addr).await;
    three_gets(&mut c).await;
    let opened = a.connections();
    let served = a.hits().len();

    gk.signal(libc::SIGHUP);
    assert!(
        gk.wait_count("config reloaded", 1, Duration::from_secs(5)),
        "{}",
        gk.log()
    );
    three_gets(&mut c).await;
    assert_eq!(a.hits().len(), served + 3);
    assert_eq!(
        a.connections(),
        opened,
        "a reload with the same upstream opened new connections"
    );

    cfg.set("upstream.url", &q(&b.url()));
    replace(&gk.config, &cfg.render());
    assert!(
        gk.wait_count("config reloaded", 2, Duration::from_secs(5)),
        "{}",
        gk.log()
    );
    three_gets(&mut c).await;
    assert_eq!(
        a.hits().len(),
        served + 3,
        "the old upstream got requests after the reload"
    );
    assert_eq!(b.hits().len(), 3);
    assert_eq!(b.connections(), 1);
    assert!(!c.is_closed());
}
