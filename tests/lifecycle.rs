//! Area: process lifecycle (startup, shutdown, signals, socket activation, sd_notify).
//!
//! Startup lines and listeners, bind failure, SIGTERM/SIGINT
//! graceful shutdown, socket activation and sd_notify.
mod common;
use common::*;

use std::io::Read as _;
use std::net::SocketAddr;
use std::os::unix::net::UnixDatagram;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

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
        // The last lines may still be on their way through the pipe.
        for line in [format!("{name}: stopping"), "stopped".to_string()] {
            assert!(
                gk.wait_for_log(&regex::escape(&line), Duration::from_secs(3)).is_some(),
                "{name}: no {line:?}\n{}",
                gk.log()
            );
        }
    }
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
// Socket activation, sd_notify
// ---------------------------------------------------------------------------

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

/// A config whose `listen` names a held port: under socket activation it
/// must be ignored (whether it is shows in the log's `listening on` lines).
fn activation_setup() -> (Fixture, Upstream, HeldPort, PathBuf) {
    let fx = Fixture::new();
    let up = Upstream::start();
    let mut cfg = fx.config(&up.url());
    let ignored = HeldPort::new();
    cfg.set("listen", &arr(&[&ignored.addr.to_string()]));
    let path = cfg.write(&fx);
    (fx, up, ignored, path)
}

/// `sh -c 'LISTEN_PID=$$ … exec gatekeeper'` with a pre-bound socket as fd 3:
/// what systemd does, without systemd.
#[test]
fn socket_activation_serves_on_the_inherited_socket() {
    let (fx, _up, _ignored, path) = activation_setup();
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
    let (fx, _up, _ignored, path) = activation_setup();
    // The tool takes a fixed port only (not :0): pick a free one, and when
    // something took it before the tool bound it (the tool then exits with
    // "Address already in use"), another. Once the tool listens, it is its own.
    let mut started = None;
    for attempt in 0..5 {
        let addr = HeldPort::new().addr;
        let mut cmd = Command::new(tool);
        cmd.arg("-l")
            .arg(addr.to_string())
            .arg(BIN)
            .arg("run")
            .arg("-c")
            .arg(&path);
        let mut gk = Proc::spawn(cmd, fx.path(&format!("gk-{attempt}.log")));
        let listens = format!("Listening on {addr}");
        assert!(
            eventually(Duration::from_secs(10), || gk.log().contains(&listens)
                || gk.wait_exit(Duration::ZERO).is_some()),
            "{tool} neither listens nor exits\n{}",
            gk.log()
        );
        if gk.log().contains(&listens) {
            started = Some((gk, addr));
            break;
        }
        assert!(gk.log().contains("Address already in use"), "{}", gk.log());
    }
    let (mut gk, addr) = started.expect("no free port in 5 attempts");
    // The tool listens; gatekeeper starts on the first connection.
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
