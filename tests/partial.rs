//! Partial maintenance and holding, end to end with the CLI: `on --read-only`,
//! `--path`, `--host`, `pause` / `resume` (held requests released in arrival
//! order; a client that gives up never reaches the app), `drain` / `undrain`.

mod common;
use common::*;

use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;

fn cli(gk: &Gatekeeper, args: &[&str]) -> String {
    let c = gk.config.to_str().unwrap().to_string();
    let mut all = vec![args[0], "-c", &c];
    all.extend_from_slice(&args[1..]);
    let o = gk_cmd(&all, None, &[]);
    assert!(o.status.success(), "{}", show(&o));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

async fn wait_for(c: &mut Conn, path: &str, want: u16) {
    assert!(
        wait_status(c, path, want, Duration::from_secs(5)).await.is_some(),
        "{path} never answered {want}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_and_scope_from_the_cli() {
    let fx = Fixture::new();
    let up = Upstream::start();
    let gk = Gatekeeper::start(&fx, &fx.config(&up.url()));
    let mut c = Conn::open(LOCALHOST, gk.addr).await;
    let out = cli(&gk, &["on", "--read-only"]);
    assert!(out.contains("scope: read-only"), "{out}");
    wait_for(&mut c, "/probe-write", 200).await;
    let r = c.get("/r").await;
    assert_eq!((r.status, r.header("x-maintenance-mode")), (200, Some("read-only")));
    let post = c.send("POST", "/w", &[], full("x")).await;
    assert_eq!(
        (post.status, post.header("x-maintenance-mode")),
        (503, Some("read-only"))
    );
    assert!(!up.uris().contains(&"/w".to_string()), "a write reached the app");
    assert!(cli(&gk, &["status"]).starts_with("maintenance: read-only since"));

    let out = cli(&gk, &["on", "--path", "/api/", "--host", "shop.example"]);
    assert!(out.contains("scope: paths /api/; hosts shop.example"), "{out}");
    let shop = [("host", "shop.example")];
    assert!(
        eventually_async(Duration::from_secs(5), || async {
            get(LOCALHOST, gk.addr, "/api/x", &shop).await.status == 503
        })
        .await
    );
    assert_eq!(get(LOCALHOST, gk.addr, "/x/../api/y", &shop).await.status, 503);
    assert_eq!(get(LOCALHOST, gk.addr, "/shop", &shop).await.status, 200);
    assert_eq!(
        get(LOCALHOST, gk.addr, "/api/x", &[("host", "blog.example")])
            .await
            .status,
        200
    );
    let st = cli(&gk, &["status"]);
    assert!(st.contains("scope: paths /api/; hosts shop.example"), "{st}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_holds_and_resume_releases_in_order() {
    let fx = Fixture::new();
    let up = Upstream::start();
    let mut cfg = fx.config(&up.url());
    cfg.set("admin.listen", &q("127.0.0.1:0"));
    let gk = Gatekeeper::start(&fx, &cfg);
    let admin = gk
        .listeners
        .iter()
        .find(|(_, k)| k == "admin")
        .map(|(a, _)| *a)
        .unwrap();
    let out = cli(&gk, &["pause", "--max", "20s"]);
    assert!(out.contains("maintenance: paused"), "{out}");
    let mut probe = Conn::open(LOCALHOST, gk.addr).await;
    // The toggle is seen: the page's assets still come at once.
    assert!(
        eventually_async(Duration::from_secs(5), || async {
            get(LOCALHOST, gk.addr, "/.gatekeeper/status", &[])
                .await
                .text()
                .contains("paused")
        })
        .await
    );
    assert_eq!(probe.get("/style.css").await.status, 200);
    // Three held in a row (allowlisted or not: all held), one that gives up.
    let mut held = Vec::new();
    for i in 0..3 {
        let addr = gk.addr;
        held.push(tokio::spawn(async move {
            let r = get(LOCALHOST, addr, &format!("/held/{i}"), &[]).await;
            (r.status, Instant::now())
        }));
        assert!(
            eventually_async(Duration::from_secs(5), || async {
                metric(admin, "gatekeeper_held_requests").await == (i + 1) as f64
            })
            .await,
            "request {i} not held"
        );
    }
    let mut quitter = connect_from(LOCALHOST, gk.addr).await.unwrap();
    quitter
        .write_all(b"GET /gave-up HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    assert!(
        eventually_async(Duration::from_secs(5), || async {
            metric(admin, "gatekeeper_held_requests").await == 4.0
        })
        .await
    );
    drop(quitter);
    assert!(
        eventually_async(Duration::from_secs(5), || async {
            metric(admin, "gatekeeper_held_requests").await == 3.0
        })
        .await,
        "a client that gave up is still held"
    );
    let st: serde_json::Value = serde_json::from_str(&get(LOCALHOST, admin, "/status", &[]).await.text()).unwrap();
    assert_eq!(
        (st["state"].as_str(), st["held"].as_u64()),
        (Some("paused"), Some(3)),
        "{st}"
    );
    assert!(up.uris().iter().all(|u| !u.starts_with("/held")), "{:?}", up.uris());
    cli(&gk, &["resume"]);
    let mut done = Vec::new();
    for h in held {
        done.push(tokio::time::timeout(Duration::from_secs(10), h).await.unwrap().unwrap());
    }
    assert!(done.iter().all(|(s, _)| *s == 200), "{done:?}");
    // Released first come first (hold.rs's unit test checks the order); they
    // travel on their own connections, so the app may see them interleave.
    let mut seen: Vec<String> = up
        .uris()
        .into_iter()
        .filter(|u| u.starts_with("/held") || u == "/gave-up")
        .collect();
    seen.sort();
    assert_eq!(
        seen,
        vec!["/held/0", "/held/1", "/held/2"],
        "all of them, and never the quitter"
    );
    assert!(
        gk.log().contains("decision=\"held\"") || gk.log().contains("decision=held"),
        "{}",
        gk.log()
    );
    assert!(gk.log().contains("held_ms="), "{}", gk.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_is_kept_across_a_restart() {
    let fx = Fixture::new();
    let up = Upstream::start();
    let cfg = fx.config(&up.url());
    let gk = Gatekeeper::start(&fx, &cfg);
    let health = |gk: &Gatekeeper| {
        let addr = gk.addr;
        async move { get(LOCALHOST, addr, "/.gatekeeper/health", &[]).await }
    };
    assert_eq!(health(&gk).await.status, 200);
    cli(&gk, &["drain"]);
    assert!(eventually_async(Duration::from_secs(5), || async { health(&gk).await.status == 503 }).await);
    assert_eq!(health(&gk).await.text(), "draining\n");
    // Visitors are not turned away: only the health check says so.
    assert_eq!(get(LOCALHOST, gk.addr, "/", &[]).await.status, 200);
    drop(gk);
    let gk = Gatekeeper::start(&fx, &cfg);
    assert_eq!(health(&gk).await.status, 503, "drained after a restart");
    cli(&gk, &["undrain"]);
    assert!(eventually_async(Duration::from_secs(5), || async { health(&gk).await.status == 200 }).await);
    // Health checks are not access-logged by default.
    assert!(!gk.log().contains("path=/.gatekeeper/health"), "{}", gk.log());
}
