//! Process lifecycle: startup lines, several listeners, SIGTERM/SIGINT
//! graceful shutdown, bind failure, SIGHUP / file-change reload.
mod common;
use common::*;
use std::time::{Duration, Instant};

fn refused(addr: std::net::SocketAddr) -> bool {
    match std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
        Err(e) => e.kind() == std::io::ErrorKind::ConnectionRefused,
        Ok(_) => false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_in_flight_request_and_exits_0() {
    let fx = Fixture::new();
    let up = Upstream::start();
    let mut gk = Gatekeeper::start(&fx, &fx.config(&up.url()));
    let addr = gk.addr;
    let inflight = tokio::spawn(async move {
        let t0 = Instant::now();
        let r = get(LOCALHOST, addr, "/slow?ms=1000", &[]).await;
        (r, t0.elapsed())
    });
    assert!(
        eventually(Duration::from_secs(3), || up
            .uris()
            .iter()
            .any(|u| u == "/slow?ms=1000")),
        "request never reached the upstream\n{}",
        gk.log()
    );
    gk.sigterm();
    // stops accepting at once, while the request is still in flight
    assert!(
        eventually(Duration::from_millis(500), || refused(addr)),
        "new connections still accepted 500 ms after SIGTERM\n{}",
        gk.log()
    );
    assert!(
        !inflight.is_finished(),
        "in-flight request ended before the listener closed"
    );
    let (r, took) = tokio::time::timeout(Duration::from_secs(5), inflight)
        .await
        .expect("in-flight request")
        .unwrap();
    assert_eq!(
        (r.status, r.text().as_str()),
        (200, "slow"),
        "in-flight request must complete"
    );
    assert!(took >= Duration::from_millis(980));
    let status = gk
        .wait_exit(Duration::from_secs(5))
        .unwrap_or_else(|| panic!("no exit within 5 s\n{}", gk.log()));
    assert_eq!(status.code(), Some(0), "exit status {status:?}\n{}", gk.log());
    assert!(refused(addr));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_exits_0() {
    let fx = Fixture::new();
    let up = Upstream::start();
    let mut gk = Gatekeeper::start(&fx, &fx.config(&up.url()));
    assert_eq!(get(LOCALHOST, gk.addr, "/x", &[]).await.status, 200);
    gk.signal(libc::SIGINT);
    let status = gk
        .wait_exit(Duration::from_secs(5))
        .unwrap_or_else(|| panic!("no exit within 5 s\n{}", gk.log()));
    assert_eq!(status.code(), Some(0), "{}", gk.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_keepalive_connections_do_not_delay_shutdown() {
    let fx = Fixture::new();
    let up = Upstream::start();
    let mut gk = Gatekeeper::start(&fx, &fx.config(&up.url()));
    let mut conns = Vec::new();
    for _ in 0..3 {
        let mut c = Conn::open(LOCALHOST, gk.addr).await;
        assert_eq!(c.get("/x").await.status, 200);
        conns.push(c);
    }
    // an idle h2 connection too
    let s = connect_from(LOCALHOST, gk.addr).await.unwrap();
    let (mut h2, h2conn) =
        hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), hyper_util::rt::TokioIo::new(s))
            .await
            .unwrap();
    let h2task = tokio::spawn(h2conn);
    let r = h2
        .send_request(http::Request::builder().uri("http://x/y").body(empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let t0 = Instant::now();
    gk.sigterm();
    let status = gk
        .wait_exit(Duration::from_secs(5))
        .unwrap_or_else(|| panic!("idle connections held the daemon\n{}", gk.log()));
    assert_eq!(status.code(), Some(0));
    eprintln!("shutdown with idle keep-alive connections took {:?}", t0.elapsed());
    assert!(
        t0.elapsed() < Duration::from_secs(3),
        "shutdown took {:?}",
        t0.elapsed()
    );
    assert!(eventually(Duration::from_secs(2), || conns
        .iter()
        .all(|c| c.is_closed())));
    let _ = tokio::time::timeout(Duration::from_secs(2), h2task)
        .await
        .expect("h2 connection closed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn startup_lines_and_several_listeners() {
    let fx = Fixture::new();
    let up = Upstream::start();
    let mut c = fx.config(&up.url());
    c.set("listen", r#"["127.0.0.1:0", "127.0.0.2:0"]"#);
    let gk = Gatekeeper::start(&fx, &c);
    assert_eq!(gk.listeners.len(), 2, "{}", gk.log());
    assert_eq!(gk.listeners[0].0.ip(), LOCALHOST);
    assert_eq!(gk.listeners[1].0.ip(), IP2);
    assert!(gk.listeners.iter().all(|(a, kind)| kind == "http" && a.port() != 0));
    let log = gk.log();
    let ready_at = log
        .lines()
        .position(|l| regex::Regex::new(r"\bready\b").unwrap().is_match(l))
        .unwrap();
    let last_listen = log
        .lines()
        .collect::<Vec<_>>()
        .iter()
        .rposition(|l| l.contains("listening on"))
        .unwrap();
    assert!(
        last_listen < ready_at,
        "`ready` must come after every `listening on`:\n{log}"
    );
    for (a, _) in &gk.listeners {
        let r = get(LOCALHOST, *a, "/which", &[]).await;
        assert_eq!((r.status, r.text().as_str()), (200, "upstream:/which"), "listener {a}");
    }
}

#[test]
fn listen_address_in_use_fails_clearly() {
    let fx = Fixture::new();
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = busy.local_addr().unwrap().to_string();
    let mut c = fx.config("http://127.0.0.1:9");
    c.set("listen", &arr(&[&addr]));
    let p = c.write(&fx);
    let o = gk(&["run", "-c", p.to_str().unwrap()]);
    assert!(!o.status.success(), "{}", show(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains(&addr), "error should name {addr}:\n{}", show(&o));
    drop(busy);
}

// ---------------------------------------------------------------------------
// Reload (SIGHUP, config file change, allowlist file change)
// ---------------------------------------------------------------------------

async fn wait_bypass(c: &mut Conn, want: bool, bound: Duration) -> bool {
    let t0 = Instant::now();
    loop {
        let r = c.get("/r").await;
        let is_bypass = r.status == 200 && r.header("x-maintenance-mode") == Some("bypass");
        let is_page = r.status == 503;
        if (want && is_bypass) || (!want && is_page) {
            return true;
        }
        if t0.elapsed() > bound {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_allowlist_without_dropping_connections() {
    let fx = Fixture::new();
    fx.toggle_on();
    let up = Upstream::start();
    let mut cfg = fx.config(&up.url());
    cfg.set("clients.allow", &arr(&["203.0.113.7"]));
    let gk = Gatekeeper::start(&fx, &cfg);
    let mut c = Conn::open(LOCALHOST, gk.addr).await;
    assert_eq!(c.get("/r").await.status, 503);

    cfg.set("clients.allow", &arr(&["203.0.113.7", "127.0.0.1"]));
    cfg.write(&fx);
    gk.signal(libc::SIGHUP);
    assert!(
        wait_bypass(&mut c, true, Duration::from_secs(3)).await,
        "new allowlist not applied\n{}",
        gk.log()
    );

    // an invalid config is refused and the running one stays
    let text = cfg.render().replace("\"127.0.0.1\"]", "\"127.0.0.1/33\"]");
    std::fs::write(&gk.config, &text).unwrap();
    gk.signal(libc::SIGHUP);
    assert!(
        gk.wait_for_log(r"clients\.allow\[1\]", Duration::from_secs(3))
            .is_some(),
        "invalid config on reload must be logged with its key\n{}",
        gk.log()
    );
    for _ in 0..5 {
        let r = c.get("/r").await;
        assert_eq!(
            (r.status, r.header("x-maintenance-mode")),
            (200, Some("bypass")),
            "old config must stay"
        );
    }
    assert!(!c.is_closed());
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
        wait_bypass(&mut c, true, Duration::from_secs(3)).await,
        "allowlist change not applied\n{}",
        gk.log()
    );
    std::fs::write(&allowlist, "# office moved\n198.51.100.1\n").unwrap();
    assert!(
        wait_bypass(&mut c, false, Duration::from_secs(3)).await,
        "allowlist removal not applied\n{}",
        gk.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_file_change_is_picked_up() {
    let fx = Fixture::new();
    fx.toggle_on();
    let up = Upstream::start();
    let mut cfg = fx.config(&up.url());
    let gk = Gatekeeper::start(&fx, &cfg);
    let mut c = Conn::open(LOCALHOST, gk.addr).await;
    assert_eq!(c.get("/r").await.status, 503);
    cfg.set("maintenance.retry_after", &q("42s"));
    cfg.set("clients.allow", &arr(&["127.0.0.2"]));
    // editor-style: write a temp file and rename it over the config
    let tmp = fx.path("gatekeeper.toml.tmp");
    std::fs::write(&tmp, cfg.render()).unwrap();
    std::fs::rename(&tmp, &gk.config).unwrap();
    let t0 = Instant::now();
    loop {
        let r = c.get("/r").await;
        if r.header("retry-after") == Some("42") {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(3),
            "config change not applied\n{}",
            gk.log()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let r = get(IP2, gk.addr, "/r", &[]).await;
    assert_eq!((r.status, r.header("x-maintenance-mode")), (200, Some("bypass")));
}
