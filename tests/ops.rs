//! Operations: reload (SIGHUP, config / allowlist edits, refused configs,
//! listen changes), connections surviving many reloads, signals, socket
//! activation, sd_notify, the admin endpoint (/healthz, /status, /metrics),
//! JSON logs, and one log line per maintenance flip.
mod common;
use common::*;

use std::io::Read as _;
use std::net::SocketAddr;
use std::os::unix::net::UnixDatagram;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------
// Local helpers
// ---------------------------------------------------------------------------

/// Number of lines of `log` that contain `needle`.
fn count(log: &str, needle: &str) -> usize {
    log.lines().filter(|l| l.contains(needle)).count()
}

/// Waits until `needle` appears in at least `n` lines of the daemon's log.
fn wait_count(gk: &Gatekeeper, needle: &str, n: usize, bound: Duration) -> bool {
    eventually(bound, || count(&gk.log(), needle) >= n)
}

/// Polls GET `path` on `c` until `ok` holds for the response (bounded).
async fn until_resp(c: &mut Conn, path: &str, bound: Duration, ok: impl Fn(&Resp) -> bool) -> Option<Resp> {
    let t0 = Instant::now();
    loop {
        let r = c.get(path).await;
        if ok(&r) {
            return Some(r);
        }
        if t0.elapsed() > bound {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn bypassed(r: &Resp) -> bool {
    r.status == 200 && r.header("x-maintenance-mode") == Some("bypass")
}

fn refused(addr: SocketAddr) -> bool {
    matches!(
        std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(300)),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused
    )
}

/// Replaces `path` the way editors and config management do: temp file + rename.
fn replace(path: &Path, content: &str) {
    let tmp = path.with_extension("tmp-new");
    std::fs::write(&tmp, content).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// A daemon started by hand (extra environment, inherited sockets), its
/// stderr in a file. Killed by PID on drop.
struct Proc {
    child: Child,
    log: PathBuf,
}

impl Proc {
    fn spawn(mut cmd: Command, log: PathBuf) -> Proc {
        let err = std::fs::File::create(&log).unwrap();
        // Nothing from the test runner's own environment leaks in, unless set on `cmd`.
        for var in [
            "RUST_LOG",
            "GATEKEEPER_CONFIG",
            "NOTIFY_SOCKET",
            "LISTEN_FDS",
            "LISTEN_PID",
        ] {
            if !cmd.get_envs().any(|(k, _)| k == var) {
                cmd.env_remove(var);
            }
        }
        cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(err);
        let child = cmd.spawn().expect("spawn");
        Proc { child, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn wait_log(&self, needle: &str, bound: Duration) -> bool {
        eventually(bound, || self.log().contains(needle))
    }

    fn signal(&self, sig: libc::c_int) {
        // SAFETY: plain kill(2) on our own child's PID.
        let r = unsafe { libc::kill(self.child.id() as libc::pid_t, sig) };
        assert_eq!(r, 0, "kill {sig}");
    }

    fn wait_exit(&mut self, bound: Duration) -> Option<std::process::ExitStatus> {
        let t0 = Instant::now();
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return Some(s);
            }
            if t0.elapsed() > bound {
                return None;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// `listening on ADDR (KIND)` addresses in a text log.
fn listening(log: &str, kind: &str) -> Vec<SocketAddr> {
    let re = regex::Regex::new(r"listening on (\S+) \((\w+)\)").unwrap();
    re.captures_iter(log)
        .filter(|c| &c[2] == kind)
        .map(|c| c[1].parse().unwrap())
        .collect()
}

// ---------------------------------------------------------------------------
// Reload
// ---------------------------------------------------------------------------

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
    let admin = with_admin(&mut cfg);
    let gk = Gatekeeper::start(&fx, &cfg);
    let mut c = Conn::open(LOCALHOST, gk.addr).await;
    let r = c.get("/x").await;
    assert_eq!(r.status, 503);
    assert!(r.text().contains("page one"), "{}", r.text());

    // The page directory is not watched: only SIGHUP picks up a new page.
    fx.write("page/index.html", "<h1>page two</h1>{{message}}");
    gk.signal(libc::SIGHUP);
    assert!(
        wait_count(&gk, "config reloaded", 1, Duration::from_secs(5)),
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
    assert!(
        gk.log()
            .contains("config, allowlist or certificate file changed: reloading"),
        "{}",
        gk.log()
    );
    assert!(wait_count(&gk, "config reloaded", 2, Duration::from_secs(3)));
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
    let admin = with_admin(&mut cfg);
    let gk = Gatekeeper::start(&fx, &cfg);
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
        wait_count(&gk, &want, 2, Duration::from_secs(5)),
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
        wait_count(&gk, "config reloaded", 1, Duration::from_secs(5)),
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
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!gk.log().contains("path=/quiet"), "{}", gk.log());

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
    let other = SocketAddr::from(([127, 0, 0, 1], dead_port()));
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
    assert!(refused(other), "{other} must not be bound before a restart");
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
    let admin = with_admin(&mut cfg);
    let gk = Gatekeeper::start(&fx, &cfg);
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
    tokio::time::sleep(Duration::from_millis(100)).await;

    let t0 = Instant::now();
    for i in 1..=RELOADS {
        gk.signal(libc::SIGHUP);
        // One at a time: signals sent while a reload runs would be coalesced.
        assert!(
            wait_count(&gk, "config reloaded", i, Duration::from_secs(5)),
            "reload {i} did not happen\n{}",
            gk.log()
        );
    }
    let reload_time = t0.elapsed();
    eprintln!("{RELOADS} reloads took {reload_time:?}");
    tokio::time::sleep(Duration::from_millis(200)).await;
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

// ---------------------------------------------------------------------------
// Signals, socket activation, sd_notify
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_and_sigint_exit_0() {
    let up = Upstream::start();
    for (sig, name) in [(libc::SIGTERM, "SIGTERM"), (libc::SIGINT, "SIGINT")] {
        let fx = Fixture::new();
        let mut gk = Gatekeeper::start(&fx, &fx.config(&up.url()));
        let mut c = Conn::open(LOCALHOST, gk.addr).await;
        assert_eq!(c.get("/").await.status, 200);
        gk.signal(sig);
        let status = gk.wait_exit(Duration::from_secs(10));
        assert_eq!(
            status.and_then(|s| s.code()),
            Some(0),
            "{name}: {status:?}\n{}",
            gk.log()
        );
        let log = gk.log();
        assert!(log.contains(&format!("{name}: stopping")), "{log}");
        assert!(log.contains("stopped"), "{log}");
    }
}

/// `sh -c 'LISTEN_PID=$$ … exec gatekeeper'` with a pre-bound socket as fd 3:
/// what systemd does, without systemd.
#[test]
fn socket_activation_serves_on_the_inherited_socket() {
    let fx = Fixture::new();
    let up = Upstream::start();
    let mut cfg = fx.config(&up.url());
    let ignored = SocketAddr::from(([127, 0, 0, 1], dead_port()));
    cfg.set("listen", &arr(&[&ignored.to_string()]));
    let path = cfg.write(&fx);
    let sock = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let inherited = sock.local_addr().unwrap();
    let fd = std::os::fd::AsRawFd::as_raw_fd(&sock);

    let mut cmd = Command::new("/bin/sh");
    cmd.arg("-c")
        .arg(r#"LISTEN_PID=$$ LISTEN_FDS=1 exec "$0" run -c "$1""#)
        .arg(BIN)
        .arg(&path);
    let pre_exec = move || {
        // SAFETY: only async-signal-safe calls (fcntl, dup2) between fork and exec.
        unsafe {
            if fd == 3 {
                let flags = libc::fcntl(3, libc::F_GETFD);
                if flags < 0 || libc::fcntl(3, libc::F_SETFD, flags & !libc::FD_CLOEXEC) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            } else if libc::dup2(fd, 3) < 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
        Ok(())
    };
    // SAFETY: the closure above only makes async-signal-safe calls.
    unsafe {
        cmd.pre_exec(pre_exec);
    }
    let mut gk = Proc::spawn(cmd, fx.path("gk.log"));
    drop(sock);
    assert!(gk.wait_log("ready", Duration::from_secs(10)), "not ready\n{}", gk.log());
    let log = gk.log();
    assert!(
        log.contains("socket activation: using inherited sockets; `listen` is ignored"),
        "{log}"
    );
    assert_eq!(listening(&log, "http"), vec![inherited], "{log}");
    assert!(refused(ignored), "`listen` must be ignored under socket activation");

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut c = Conn::open(LOCALHOST, inherited).await;
        for _ in 0..3 {
            let r = c.get("/echo").await;
            assert_eq!(r.echo().one("x-real-ip"), Some("127.0.0.1"));
        }
    });
    gk.signal(libc::SIGTERM);
    let status = gk.wait_exit(Duration::from_secs(10));
    assert_eq!(status.and_then(|s| s.code()), Some(0), "{}", gk.log());
}

/// The same through systemd's own `systemd-socket-activate` (Debian package
/// systemd): it binds, waits for the first connection, then execs gatekeeper.
#[test]
fn systemd_socket_activate_runs_gatekeeper() {
    let tool = ["/usr/bin/systemd-socket-activate", "/bin/systemd-socket-activate"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("systemd-socket-activate is missing: apt-get install systemd (.ci/install-deps does)");
    let fx = Fixture::new();
    let up = Upstream::start();
    let mut cfg = fx.config(&up.url());
    let ignored = SocketAddr::from(([127, 0, 0, 1], dead_port()));
    cfg.set("listen", &arr(&[&ignored.to_string()]));
    let path = cfg.write(&fx);
    let port = dead_port();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut cmd = Command::new(tool);
    cmd.arg("-l")
        .arg(addr.to_string())
        .arg(BIN)
        .arg("run")
        .arg("-c")
        .arg(&path);
    let mut gk = Proc::spawn(cmd, fx.path("gk.log"));
    // The tool listens first; gatekeeper starts on the first connection.
    let mut stream = None;
    for _ in 0..100 {
        match std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
            Ok(s) => {
                stream = Some(s);
                break;
            }
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
    let mut s = stream.unwrap_or_else(|| panic!("nothing listens on {addr}\n{}", gk.log()));
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    std::io::Write::write_all(
        &mut s,
        b"GET /hello HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    let mut resp = String::new();
    let _ = s.read_to_string(&mut resp);
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp:?}\n{}", gk.log());
    assert!(resp.ends_with("upstream:/hello"), "{resp:?}");
    let log = gk.log();
    assert!(log.contains("socket activation"), "{log}");
    assert_eq!(listening(&log, "http"), vec![addr], "{log}");
    assert!(refused(ignored));
    gk.signal(libc::SIGTERM);
    let status = gk.wait_exit(Duration::from_secs(10));
    assert_eq!(status.and_then(|s| s.code()), Some(0), "{}", gk.log());
}

fn monotonic_usec() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes into the stack value.
    assert_eq!(unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) }, 0);
    ts.tv_sec as u64 * 1_000_000 + ts.tv_nsec as u64 / 1000
}

/// Reads datagrams until one contains `want` (bounded); returns every datagram read.
fn recv_until(sock: &UnixDatagram, want: &str, bound: Duration) -> Vec<String> {
    let t0 = Instant::now();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while t0.elapsed() < bound {
        match sock.recv(&mut buf) {
            Ok(n) => {
                let m = String::from_utf8_lossy(&buf[..n]).into_owned();
                let done = m.lines().any(|l| l == want);
                got.push(m);
                if done {
                    return got;
                }
            }
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(e) => panic!("recv: {e}"),
        }
    }
    panic!("no {want:?} within {bound:?}; got {got:?}");
}

#[test]
fn sd_notify_ready_reloading_stopping() {
    let fx = Fixture::new();
    let up = Upstream::start();
    let cfg = fx.config(&up.url());
    let path = cfg.write(&fx);
    let sock_path = fx.path("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    let mut cmd = Command::new(BIN);
    cmd.arg("run").arg("-c").arg(&path).env("NOTIFY_SOCKET", &sock_path);
    let mut gk = Proc::spawn(cmd, fx.path("gk.log"));

    let first = recv_until(&sock, "READY=1", Duration::from_secs(10));
    assert!(
        gk.log().contains("ready"),
        "READY=1 before the `ready` log line\n{}",
        gk.log()
    );
    assert_eq!(first, vec!["READY=1\n".to_string()], "before ready");
    // Listening by the time READY=1 arrives.
    let addr = listening(&gk.log(), "http")[0];
    assert!(std::net::TcpStream::connect(addr).is_ok());

    for round in 0..2 {
        let before = monotonic_usec();
        gk.signal(libc::SIGHUP);
        let msgs = recv_until(&sock, "READY=1", Duration::from_secs(5));
        let after = monotonic_usec();
        assert_eq!(msgs.len(), 2, "round {round}: {msgs:?}");
        let reloading: Vec<&str> = msgs[0].lines().collect();
        assert_eq!(reloading.first(), Some(&"RELOADING=1"), "{msgs:?}");
        let usec: u64 = reloading
            .iter()
            .find_map(|l| l.strip_prefix("MONOTONIC_USEC="))
            .unwrap_or_else(|| panic!("no MONOTONIC_USEC with RELOADING=1: {msgs:?}"))
            .parse()
            .unwrap();
        assert!(
            (before..=after).contains(&usec),
            "MONOTONIC_USEC={usec} not within [{before}, {after}] (CLOCK_MONOTONIC)"
        );
        assert_eq!(msgs[1], "READY=1\n");
    }

    gk.signal(libc::SIGTERM);
    let msgs = recv_until(&sock, "STOPPING=1", Duration::from_secs(5));
    assert_eq!(msgs, vec!["STOPPING=1\n".to_string()]);
    let status = gk.wait_exit(Duration::from_secs(10));
    assert_eq!(status.and_then(|s| s.code()), Some(0), "{}", gk.log());
}

/// `systemctl start` returns at READY=1; a `systemctl reload` right after it
/// (ExecReload=kill -HUP) must reload, not kill the daemon with SIGHUP's
/// default action. Ten quick tries: the window is short but real.
#[test]
fn sighup_right_after_ready_reloads_instead_of_killing() {
    let fx = Fixture::new();
    let cfg = fx.config("http://127.0.0.1:9");
    let path = cfg.write(&fx);
    for attempt in 0..10 {
        let sock_path = fx.path(&format!("notify-{attempt}.sock"));
        let sock = UnixDatagram::bind(&sock_path).unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
        let mut cmd = Command::new(BIN);
        cmd.arg("run").arg("-c").arg(&path).env("NOTIFY_SOCKET", &sock_path);
        let mut gk = Proc::spawn(cmd, fx.path(&format!("gk-{attempt}.log")));
        recv_until(&sock, "READY=1", Duration::from_secs(10));
        gk.signal(libc::SIGHUP);
        let early_exit = gk.wait_exit(Duration::from_millis(300));
        assert!(
            early_exit.is_none(),
            "attempt {attempt}: SIGHUP right after READY=1 ended the daemon ({early_exit:?})\n{}",
            gk.log()
        );
        assert!(gk.wait_log("config reloaded", Duration::from_secs(5)), "{}", gk.log());
        gk.signal(libc::SIGTERM);
        assert_eq!(gk.wait_exit(Duration::from_secs(10)).and_then(|s| s.code()), Some(0));
    }
}

// ---------------------------------------------------------------------------
// Admin endpoint
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_healthz_status_and_metrics() {
    let fx = Fixture::new();
    let up = Upstream::start();
    let mut cfg = fx.config(&up.url());
    cfg.set("clients.allow", &arr(&["127.0.0.2", "10.0.0.0/8", "2001:db8::/32"]));
    let admin = with_admin(&mut cfg);
    let gk = Gatekeeper::start(&fx, &cfg);
    assert!(
        gk.listeners.contains(&(admin, "admin".to_string())),
        "{:?}",
        gk.listeners
    );

    let r = get(LOCALHOST, admin, "/healthz", &[]).await;
    assert_eq!((r.status, r.text().as_str()), (200, "ok\n"));
    let r = get(LOCALHOST, admin, "/nope", &[]).await;
    assert_eq!(r.status, 404);

    let r = get(LOCALHOST, admin, "/status", &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/json"));
    let s = r.json();
    for key in [
        "maintenance",
        "since",
        "message",
        "retry_after",
        "toggle",
        "config",
        "allowlist_entries",
        "version",
        "uptime_seconds",
        "source",
        "window",
        "until",
        "secret_set",
        "fleet",
    ] {
        assert!(s.get(key).is_some(), "/status has no {key:?}: {s}");
    }
    assert_eq!(s["maintenance"], "off", "{s}");
    assert!(s["since"].is_null(), "{s}");
    assert_eq!(s["toggle"], fx.toggle().display().to_string());
    assert_eq!(s["config"], gk.config.display().to_string());
    assert_eq!(s["allowlist_entries"], 3);
    assert_eq!(s["version"], env!("CARGO_PKG_VERSION"));
    assert!(s["uptime_seconds"].as_u64().is_some_and(|u| u < 60), "{s}");
    assert_eq!(s["retry_after"], 600, "{s}");
    assert_eq!(s["secret_set"], false);
    assert!(
        s["fleet"].is_null() && s["until"].is_null() && s["window"].is_null(),
        "{s}"
    );

    let m0 = metrics(admin).await;
    assert!(m0.ends_with("# EOF\n"), "{m0}");
    let r = get(LOCALHOST, admin, "/metrics", &[]).await;
    assert!(
        r.header("content-type")
            .is_some_and(|t| t.starts_with("application/openmetrics-text")),
        "{:?}",
        r.headers
    );
    for series in [
        "gatekeeper_requests_total{decision=\"proxy\",status=\"2xx\"}",
        "gatekeeper_requests_total{decision=\"page\",status=\"5xx\"}",
        "gatekeeper_upstream_errors_total{kind=\"unreachable\"}",
        "gatekeeper_upstream_errors_total{kind=\"timeout\"}",
        "gatekeeper_reloads_total{result=\"ok\"}",
        "gatekeeper_reloads_total{result=\"failed\"}",
        "gatekeeper_maintenance",
        "gatekeeper_maintenance_last_change_timestamp_seconds",
        "gatekeeper_maintenance_flips_total",
        "gatekeeper_allowlist_entries",
        "gatekeeper_open_connections",
        "gatekeeper_request_duration_seconds_count{decision=\"proxy\"}",
    ] {
        assert!(sample(&m0, series).is_some(), "no {series} in\n{m0}");
    }
    assert_eq!(sample(&m0, "gatekeeper_maintenance"), Some(0.0));
    assert_eq!(sample(&m0, "gatekeeper_allowlist_entries"), Some(3.0));
    let proxied0 = sample(&m0, "gatekeeper_requests_total{decision=\"proxy\",status=\"2xx\"}").unwrap();

    // Proxied requests, on one kept-alive connection (counted as open).
    let mut c = Conn::open(LOCALHOST, gk.addr).await;
    for _ in 0..5 {
        assert_eq!(c.get("/p").await.status, 200);
    }
    let m = metrics(admin).await;
    assert_eq!(
        sample(&m, "gatekeeper_requests_total{decision=\"proxy\",status=\"2xx\"}"),
        Some(proxied0 + 5.0),
        "{m}"
    );
    assert!(sample(&m, "gatekeeper_request_duration_seconds_count{decision=\"proxy\"}").unwrap() >= 5.0);
    assert!(sample(&m, "gatekeeper_open_connections").unwrap() >= 1.0, "{m}");
    let t_before = sample(&m, "gatekeeper_maintenance_last_change_timestamp_seconds").unwrap();

    // Maintenance on, with a message and retry time: page, asset, bypass.
    let o = gk_cmd(
        &[
            "on",
            "-c",
            gk.config.to_str().unwrap(),
            "--message",
            "Back at noon",
            "--retry-after",
            "5m",
        ],
        None,
        &[],
    );
    assert!(o.status.success(), "{}", show(&o));
    let r = until_resp(&mut c, "/p", Duration::from_secs(3), |r| r.status == 503).await;
    assert!(r.is_some(), "{}", gk.log());
    assert_eq!(get(LOCALHOST, gk.addr, "/style.css", &[]).await.status, 200);
    assert!(bypassed(&get(IP2, gk.addr, "/p", &[]).await));
    let s = get(LOCALHOST, admin, "/status", &[]).await.json();
    assert_eq!(s["maintenance"], "on", "{s}");
    assert_eq!(s["message"], "Back at noon", "{s}");
    assert_eq!(s["retry_after"], 300, "{s}");
    assert_eq!(s["source"], "file", "{s}");
    assert_eq!(s["window"], "active", "{s}");
    let since = s["since"].as_str().unwrap_or_else(|| panic!("no since: {s}"));
    assert!(
        regex::Regex::new(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")
            .unwrap()
            .is_match(since),
        "{since}"
    );
    let m = metrics(admin).await;
    assert_eq!(sample(&m, "gatekeeper_maintenance"), Some(1.0), "{m}");
    assert_eq!(sample(&m, "gatekeeper_maintenance_flips_total"), Some(1.0), "{m}");
    assert!(sample(&m, "gatekeeper_maintenance_last_change_timestamp_seconds").unwrap() >= t_before);
    assert!(sample(&m, "gatekeeper_requests_total{decision=\"page\",status=\"5xx\"}").unwrap() >= 1.0);
    assert_eq!(
        sample(&m, "gatekeeper_requests_total{decision=\"asset\",status=\"2xx\"}"),
        Some(1.0),
        "{m}"
    );
    assert_eq!(
        sample(&m, "gatekeeper_requests_total{decision=\"bypass\",status=\"2xx\"}"),
        Some(1.0),
        "{m}"
    );

    // A reload to a dead upstream: 502 counted as unreachable; the reload counted.
    let o = gk_cmd(&["off", "-c", gk.config.to_str().unwrap()], None, &[]);
    assert!(o.status.success(), "{}", show(&o));
    cfg.set("upstream.url", &q(&format!("http://127.0.0.1:{}", dead_port())));
    replace(&gk.config, &cfg.render());
    let r = until_resp(&mut c, "/p", Duration::from_secs(5), |r| r.status == 502).await;
    assert!(r.is_some(), "new upstream not applied\n{}", gk.log());
    let m = metrics(admin).await;
    assert!(
        sample(&m, "gatekeeper_upstream_errors_total{kind=\"unreachable\"}").unwrap() >= 1.0,
        "{m}"
    );
    assert!(
        sample(&m, "gatekeeper_requests_total{decision=\"proxy\",status=\"5xx\"}").unwrap() >= 1.0,
        "{m}"
    );
    assert_eq!(sample(&m, "gatekeeper_reloads_total{result=\"ok\"}"), Some(1.0), "{m}");
    assert_eq!(sample(&m, "gatekeeper_maintenance"), Some(0.0), "{m}");
    assert_eq!(sample(&m, "gatekeeper_maintenance_flips_total"), Some(2.0), "{m}");
    drop(c);
    assert!(
        eventually_async(Duration::from_secs(3), || async {
            metric(admin, "gatekeeper_open_connections").await == 0.0
        })
        .await,
        "open_connections does not go back to 0"
    );
}

/// `gatekeeper status` with [admin]: a "daemon:" line only when the running
/// daemon sees something else than the file says.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_command_adds_a_daemon_line_only_on_disagreement() {
    let fx = Fixture::new();
    let up = Upstream::start();
    let mut cfg = fx.config(&up.url());
    with_admin(&mut cfg);
    let gk = Gatekeeper::start(&fx, &cfg);
    let conf = gk.config.to_str().unwrap().to_string();
    let status = |path: &str| {
        let o = gk_cmd(&["status", "-c", path], None, &[]);
        assert!(o.status.success(), "{}", show(&o));
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    assert_eq!(status(&conf).trim_end(), "maintenance: off");
    fx.toggle_on();
    assert!(
        eventually_async(Duration::from_secs(3), || async {
            get(LOCALHOST, gk.addr, "/", &[]).await.status == 503
        })
        .await
    );
    let out = status(&conf);
    assert!(out.starts_with("maintenance: on since "), "{out}");
    assert!(!out.contains("daemon:"), "{out}");

    // The same admin endpoint, but another toggle file: the daemon disagrees.
    let mut other = cfg.clone();
    other.set(
        "maintenance.toggle",
        &q(fx.path("toggle/other-toggle").to_str().unwrap()),
    );
    let other_path = fx.write("other.toml", other.render());
    let out = status(other_path.to_str().unwrap());
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.first(), Some(&"maintenance: off"), "{out}");
    assert!(
        lines.iter().any(|l| l.starts_with("daemon: sees maintenance on")),
        "{out}"
    );
    assert_eq!(lines.iter().filter(|l| l.starts_with("daemon:")).count(), 1, "{out}");
}

// ---------------------------------------------------------------------------
// Logs
// ---------------------------------------------------------------------------

fn json_lines(log: &str) -> Vec<serde_json::Value> {
    log.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("log line is not JSON ({e}): {l:?}")))
        .collect()
}

fn flips(lines: &[serde_json::Value]) -> Vec<&serde_json::Value> {
    lines
        .iter()
        .filter(|v| {
            v["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("maintenance ") && m.contains(" -> "))
        })
        .collect()
}

/// `[log] format = "json"`: every stderr line is one JSON object (startup,
/// access, reload, refusal, flips, shutdown); access lines carry the decision;
/// every maintenance flip logs exactly one line with its source and cause.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_and_one_line_per_flip() {
    let fx = Fixture::new();
    let up = Upstream::start();
    let mut cfg = fx.config(&up.url());
    cfg.set("log.format", &q("json"));
    cfg.set("maintenance.recheck", &q("300ms"));
    cfg.set("clients.allow", &arr(&["127.0.0.2"]));
    let mut gk = Gatekeeper::start(&fx, &cfg);
    let mut c = Conn::open(LOCALHOST, gk.addr).await;
    assert_eq!(c.get("/proxied?q=1").await.status, 200);

    // Flips, each way the operators flip: touch, rm, mv in, mv out.
    let off_name = fx.toggle_dir().join("maintenance-mode-off");
    let steps: [(&str, bool); 4] = [("touch", true), ("rm", false), ("mv in", true), ("mv out", false)];
    for (i, (how, on)) in steps.iter().enumerate() {
        match *how {
            "touch" => fx.toggle_on(),
            "rm" => fx.toggle_off(),
            "mv in" => {
                std::fs::write(&off_name, b"").unwrap();
                std::fs::rename(&off_name, fx.toggle()).unwrap();
            }
            _ => std::fs::rename(fx.toggle(), &off_name).unwrap(),
        }
        let want = if *on { 503 } else { 200 };
        let r = until_resp(&mut c, "/flip", Duration::from_secs(3), |r| r.status == want).await;
        assert!(r.is_some(), "{how}: not applied\n{}", gk.log());
        // Longer than a few periodic re-checks: none of them may log again.
        tokio::time::sleep(Duration::from_millis(800)).await;
        let lines = json_lines(&gk.log());
        let f = flips(&lines);
        assert_eq!(f.len(), i + 1, "{how}: flip lines {f:#?}");
        let last = f[i];
        let want_msg = if *on {
            "maintenance off -> on"
        } else {
            "maintenance on -> off"
        };
        assert_eq!(last["message"], want_msg, "{last}");
        assert_eq!(last["source"], "file", "{last}");
        assert!(
            last["cause"].as_str().is_some_and(|c| !c.is_empty()),
            "flip line without cause: {last}"
        );
        assert_eq!(last["level"], "INFO", "{last}");
    }
    fx.toggle_on();
    let r = until_resp(&mut c, "/page", Duration::from_secs(3), |r| r.status == 503).await;
    assert!(r.is_some());
    assert!(bypassed(&get(IP2, gk.addr, "/bypassed", &[]).await));
    assert_eq!(c.get("/style.css").await.status, 200);

    // A refused reload and an accepted one are JSON too.
    std::fs::write(&gk.config, "listen = [\n").unwrap();
    assert!(gk.wait_for_log("reload refused", Duration::from_secs(5)).is_some());
    replace(&gk.config, &cfg.render());
    assert!(gk.wait_for_log("config reloaded", Duration::from_secs(5)).is_some());
    gk.sigterm();
    assert_eq!(gk.wait_exit(Duration::from_secs(10)).and_then(|s| s.code()), Some(0));
    let _ = gk.wait_for_log("\"stopped\"", Duration::from_secs(2));

    let lines = json_lines(&gk.log());
    assert!(lines.len() >= 10, "{}", gk.log());
    for v in &lines {
        assert!(v.is_object(), "{v}");
        for key in ["timestamp", "level", "target"] {
            assert!(v.get(key).is_some(), "no {key}: {v}");
        }
    }
    let msg = |m: &str| {
        lines
            .iter()
            .any(|v| v["message"].as_str().is_some_and(|s| s.contains(m)))
    };
    for m in [
        "(http)",
        "ready",
        "reload refused",
        "config reloaded",
        "SIGTERM: stopping",
        "stopped",
    ] {
        assert!(msg(m), "no JSON line with {m:?}\n{}", gk.log());
    }
    let access: Vec<&serde_json::Value> = lines.iter().filter(|v| v["target"] == "access").collect();
    let find = |path: &str| {
        // The last one: /page was polled until maintenance showed.
        access
            .iter()
            .rev()
            .find(|v| v["path"] == path)
            .unwrap_or_else(|| panic!("no access line for {path}: {access:#?}"))
    };
    for (path, decision, status, client) in [
        ("/proxied", "proxy", 200, "127.0.0.1"),
        ("/page", "page", 503, "127.0.0.1"),
        ("/bypassed", "bypass", 200, "127.0.0.2"),
        ("/style.css", "asset", 200, "127.0.0.1"),
    ] {
        let v = find(path);
        assert_eq!(v["decision"], decision, "{v}");
        assert_eq!(v["status"], status, "{v}");
        assert_eq!(v["client"], client, "{v}");
        assert_eq!(v["method"], "GET", "{v}");
        let peer: SocketAddr = v["peer"]
            .as_str()
            .unwrap_or_default()
            .parse()
            .unwrap_or_else(|e| panic!("peer: {e}: {v}"));
        assert_eq!(peer.ip().to_string(), client, "{v}");
        let ms = match &v["ms"] {
            serde_json::Value::String(s) => s.parse::<f64>().ok(),
            other => other.as_f64(),
        };
        assert!(ms.is_some_and(|ms| ms >= 0.0), "ms: {v}");
    }
    // The query string stays out of the access line's path.
    assert!(access.iter().all(|v| !v["path"].as_str().unwrap_or("").contains('?')));
    assert_eq!(flips(&lines).len(), 5, "{}", gk.log());
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
        wait_count(&gk, "config reloaded", 1, Duration::from_secs(5)),
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
        wait_count(&gk, "config reloaded", 2, Duration::from_secs(5)),
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
