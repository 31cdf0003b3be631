//! Crash and restart (issue 21, item 4): a `kill -9` during toggle flips and a
//! reload storm loses nothing. The restarted daemon is in the toggle's state on
//! disk (and the fleet's last known state), no temporary file stays behind in
//! the toggle directory or `buffering.dir`, and no request that was answered is
//! sent to the upstream again; the stale-connection resend covers only
//! idempotent requests without a body. Also: exec -> READY=1, measured.
mod common;
use common::*;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

const FLIPS: usize = 200;
const KILL_AT: usize = 100;

/// A `.gatekeeper-*` file as a writer killed between create and rename leaves it, `age_secs` old.
fn temp_file(dir: &Path, name: &str, age_secs: u64) -> PathBuf {
    let p = dir.join(name);
    let f = std::fs::File::create(&p).unwrap();
    f.set_modified(SystemTime::now() - Duration::from_secs(age_secs))
        .unwrap();
    p
}

/// The names in `dir`, sorted; the audit trail (`<toggle>.history`) aside.
fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !n.contains(".history"))
        .collect();
    v.sort();
    v
}

/// Open descriptors of `pid` on deleted files in `dir`: spilled bodies.
fn spilled(pid: u32, dir: &Path) -> usize {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return 0;
    };
    fds.filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|t| {
            let t = t.to_string_lossy();
            t.starts_with(&*dir.to_string_lossy()) && t.ends_with("(deleted)")
        })
        .count()
}

/// Replaces the config atomically: the CLI reads it for every flip.
fn replace(path: &Path, text: &str) {
    let tmp = path.with_extension("toml-new");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn cli(args: &[&str]) -> Output {
    let o = gk(args);
    assert!(o.status.success(), "{args:?}: {}", show(&o));
    o
}

/// The maintenance message on the page a fresh connection gets.
async fn page_message(addr: SocketAddr) -> (u16, String) {
    let r = get(LOCALHOST, addr, "/", &[("accept", "application/json")]).await;
    let msg = match r.status {
        503 => r.json()["message"].as_str().unwrap_or_default().to_string(),
        _ => String::new(),
    };
    (r.status, msg)
}

type Sender = hyper::client::conn::http1::SendRequest<Body>;

/// A client connection, or None once the daemon is gone (never panics).
async fn try_open(addr: SocketAddr) -> Option<Sender> {
    let s = tokio::time::timeout(Duration::from_secs(2), connect_from(LOCALHOST, addr))
        .await
        .ok()?
        .ok()?;
    let (sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(s))
        .await
        .ok()?;
    tokio::spawn(conn);
    Some(sender)
}

/// The status of a whole answer, or None when the connection failed.
async fn send(c: &mut Sender, req: http::Request<Body>) -> Option<u16> {
    use http_body_util::BodyExt;
    c.ready().await.ok()?;
    let r = c.send_request(req).await.ok()?;
    let status = r.status().as_u16();
    r.into_body().collect().await.ok()?;
    Some(status)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_flips_and_a_reload_storm_loses_nothing() {
    let fx = Fixture::new();
    let up = Upstream::start();
    let spill = fx.path("spill");
    std::fs::create_dir(&spill).unwrap();
    let mut cfg = fx.config(&up.url());
    cfg.set("server.workers", "2");
    cfg.set("buffering.memory", &q("16KiB"));
    cfg.set("buffering.dir", &q(spill.to_str().unwrap()));
    cfg.set("maintenance.recheck", &q("200ms"));
    cfg.set("log.access", "false");
    // Left by writers killed between create and rename: long ago, and just now
    // (which may be a write still under way: it stays).
    let stale = temp_file(&fx.toggle_dir(), ".gatekeeper-Stale1", 120);
    let fresh = temp_file(&fx.toggle_dir(), ".gatekeeper-Fresh1", 0);
    let mut gk = Gatekeeper::start(&fx, &cfg);
    let path = gk.config.clone();
    let pid = gk.pid();
    assert!(
        eventually(Duration::from_secs(5), || !stale.exists()),
        "stale temporary file not removed at start\n{}",
        gk.log()
    );
    assert!(fresh.exists(), "a fresh temporary file was removed");
    assert!(gk
        .wait_for_log("removed a stale temporary file", Duration::from_secs(5))
        .is_some());
    std::fs::remove_file(&fresh).unwrap();

    // A body being spilled when the daemon dies: an unlinked file, so nothing can stay behind.
    let mut held = tokio::net::TcpStream::connect(gk.addr).await.unwrap();
    held.write_all(b"POST /echo?id=held HTTP/1.1\r\nHost: localhost\r\nContent-Length: 1048576\r\n\r\n")
        .await
        .unwrap();
    held.write_all(&vec![b'x'; 100 << 10]).await.unwrap();
    assert!(
        eventually(Duration::from_secs(10), || spilled(pid, &spill) > 0),
        "no spilled request body in {}",
        spill.display()
    );
    assert!(names(&spill).is_empty(), "spill file has a name: {:?}", names(&spill));

    let cfg_arg = path.to_str().unwrap().to_string();
    let flips = Arc::new(AtomicUsize::new(0));
    let killed = Arc::new(AtomicBool::new(false));
    let flipper = {
        let (flips, cfg_arg) = (flips.clone(), cfg_arg.clone());
        std::thread::spawn(move || {
            // Odd flips on (with their number as the message), even off: the last one is on.
            for i in 0..FLIPS {
                if i % 2 == 1 {
                    cli(&["on", "-c", &cfg_arg, "--message", &format!("flip {i}")]);
                } else {
                    cli(&["off", "-c", &cfg_arg]);
                }
                flips.fetch_add(1, Ordering::SeqCst);
            }
        })
    };
    let reloader = {
        let (killed, path, mut cfg) = (killed.clone(), path.clone(), cfg.clone());
        std::thread::spawn(move || {
            let mut n = 0u32;
            while !killed.load(Ordering::SeqCst) && n < 2000 {
                cfg.set("maintenance.retry_after", &q(if n % 2 == 0 { "11m" } else { "10m" }));
                replace(&path, &cfg.render());
                // SAFETY: kill(2) on our own child's PID (a zombie until reaped).
                unsafe { libc::kill(pid as libc::pid_t, libc::SIGHUP) };
                n += 1;
                std::thread::sleep(Duration::from_millis(5));
            }
            n
        })
    };
    // Clients: POSTs that spill and GETs, each with its own id, none ever retried.
    let answered: Arc<Mutex<Vec<(String, u16)>>> = Arc::default();
    let clients = {
        let (killed, answered, addr) = (killed.clone(), answered.clone(), gk.addr);
        tokio::spawn(async move {
            let mut id = 0u32;
            let t0 = Instant::now();
            'outer: while t0.elapsed() < Duration::from_secs(120) && !killed.load(Ordering::SeqCst) {
                let Some(mut c) = try_open(addr).await else { break };
                loop {
                    if killed.load(Ordering::SeqCst) {
                        break 'outer;
                    }
                    id += 1;
                    let target = format!("/echo?id=c{id}");
                    let req = if id % 2 == 0 {
                        build_request("POST", &target, &[], full(vec![b'p'; 40 << 10]))
                    } else {
                        build_request("GET", &target, &[], empty())
                    };
                    match tokio::time::timeout(Duration::from_secs(10), send(&mut c, req)).await {
                        Ok(Some(status)) => answered.lock().unwrap().push((target, status)),
                        _ => continue 'outer,
                    }
                }
            }
        })
    };

    assert!(
        eventually(Duration::from_secs(120), || flips.load(Ordering::SeqCst) >= KILL_AT),
        "flips stalled at {}",
        flips.load(Ordering::SeqCst)
    );
    gk.signal(libc::SIGKILL);
    assert!(gk.wait_exit(Duration::from_secs(10)).is_some(), "no exit after SIGKILL");
    killed.store(true, Ordering::SeqCst);
    let reloads = reloader.join().unwrap();
    flipper.join().unwrap();
    tokio::time::timeout(Duration::from_secs(30), clients)
        .await
        .expect("clients stop")
        .unwrap();
    drop(held);
    let log = gk.log();
    let answered = answered.lock().unwrap().clone();
    eprintln!(
        "killed after {KILL_AT}+ flips, {reloads} reloads, {} answers ({} proxied); {} reload lines",
        answered.len(),
        answered.iter().filter(|a| a.1 == 200).count(),
        log.matches("config reloaded").count()
    );
    assert!(answered.len() > 10, "too few requests answered before the kill\n{log}");

    // Nothing left behind: the toggle (the last flip was `on`), no temporary file; no spill file.
    assert_eq!(names(&fx.toggle_dir()), [TOGGLE_NAME], "toggle directory");
    assert!(names(&spill).is_empty(), "buffering.dir: {:?}", names(&spill));

    // Restarted: the toggle's state on disk, from the first answer on.
    let gk2 = Gatekeeper::start_with_path(&path);
    let last = format!("flip {}", FLIPS - 1);
    assert_eq!(page_message(gk2.addr).await, (503, last.clone()), "{}", gk2.log());
    let o = cli(&["status", "-c", &cfg_arg]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("maintenance: on since") && out.contains(&last), "{out}");
    cli(&["off", "-c", &cfg_arg]);
    let ok = eventually_async(Duration::from_secs(5), || async {
        get(LOCALHOST, gk2.addr, "/echo?id=after", &[]).await.status == 200
    })
    .await;
    assert!(ok, "restarted daemon does not proxy\n{}", gk2.log());

    // No request reached the upstream twice; every proxied answer came from it
    // once; the body held at the kill never reached it.
    let mut seen: HashMap<String, usize> = HashMap::new();
    for h in up.hits() {
        *seen.entry(h.uri).or_default() += 1;
    }
    let twice: Vec<_> = seen.iter().filter(|(u, n)| **n > 1 && u.contains("id=c")).collect();
    assert!(twice.is_empty(), "sent to the upstream more than once: {twice:?}");
    for (target, status) in &answered {
        if *status == 200 {
            assert_eq!(seen.get(target), Some(&1), "{target} answered 200");
        }
    }
    assert!(
        !seen.contains_key("/echo?id=held"),
        "a partly received body was forwarded"
    );
    assert_eq!(names(&fx.toggle_dir()), Vec::<String>::new(), "after `off`");
    assert!(names(&spill).is_empty());
}

/// A temporary file abandoned while the daemon runs goes at the next re-check
/// (once it is a minute old); young ones and other names stay.
#[test]
fn stale_temporary_files_are_swept_while_running() {
    let fx = Fixture::new();
    let mut cfg = fx.config("http://127.0.0.1:9");
    cfg.set("maintenance.recheck", &q("100ms"));
    let gk = Gatekeeper::start(&fx, &cfg);
    let fresh = temp_file(&fx.toggle_dir(), ".gatekeeper-young1", 0);
    let other = temp_file(&fx.toggle_dir(), "notes.txt", 600);
    let stale = temp_file(&fx.toggle_dir(), ".gatekeeper-old123", 61);
    let fleet_tmp = temp_file(&fx.toggle_dir(), ".gatekeeper-old456", 3600);
    assert!(
        eventually(Duration::from_secs(5), || !stale.exists() && !fleet_tmp.exists()),
        "{}",
        gk.log()
    );
    // Each removal said once (the lines may still be on their way through the
    // pipe); several re-checks later the others are still there.
    let said = |gk: &Gatekeeper| gk.log().matches("removed a stale temporary file").count();
    assert!(eventually(Duration::from_secs(5), || said(&gk) >= 2), "{}", gk.log());
    assert!(!eventually(Duration::from_millis(500), || !fresh.exists() || !other.exists()));
    assert_eq!(said(&gk), 2, "{}", gk.log());
}

// ---------------------------------------------------------------------------
// The stale-connection resend
// ---------------------------------------------------------------------------

/// An upstream that answers the first request on each connection and reads a
/// later one whole, then closes without answering: a kept-alive connection
/// the app closes just as a request arrives. Records (target, nth on its connection).
struct Closer {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<(String, usize)>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Closer {
    async fn start() -> Closer {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let seen: Arc<Mutex<Vec<(String, usize)>>> = Arc::default();
        let s2 = seen.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                let seen = s2.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    for nth in 0.. {
                        let Some(target) = read_request(&mut s, &mut buf).await else {
                            return;
                        };
                        seen.lock().unwrap().push((target, nth));
                        if nth > 0 {
                            return; // closed under the request
                        }
                        let ok = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
                        if s.write_all(ok).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        Closer { addr, seen, task }
    }

    fn count(&self, target: &str) -> (usize, bool) {
        let seen = self.seen.lock().unwrap();
        let mine: Vec<_> = seen.iter().filter(|(t, _)| t == target).collect();
        (mine.len(), mine.iter().any(|(_, nth)| *nth > 0))
    }
}

impl Drop for Closer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Reads one request (head and Content-Length body) from `s`; its target.
async fn read_request(s: &mut tokio::net::TcpStream, buf: &mut Vec<u8>) -> Option<String> {
    let mut chunk = [0u8; 4096];
    let end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = s.read(&mut chunk).await.ok().filter(|n| *n > 0)?;
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    let len: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0);
    while buf.len() < end + len {
        let n = s.read(&mut chunk).await.ok().filter(|n| *n > 0)?;
        buf.extend_from_slice(&chunk[..n]);
    }
    buf.drain(..end + len);
    head.split(' ').nth(1).map(str::to_string)
}

/// A request lost with a pooled connection is sent again only when that cannot
/// do anything twice: idempotent and without a body. A POST or a PUT with a
/// body gets 502 and reaches the app once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_connection_resends_only_idempotent_bodiless_requests() {
    let fx = Fixture::new();
    let up = Closer::start().await;
    let mut cfg = fx.config(&format!("http://{}", up.addr));
    cfg.set("server.workers", "1");
    let gk = Gatekeeper::start(&fx, &cfg);
    let mut c = Conn::open(LOCALHOST, gk.addr).await;
    let cases = [
        ("POST", "body", false),
        ("PUT", "body", false),
        ("POST", "", false),
        ("GET", "", true),
        ("DELETE", "", true),
    ];
    for (method, body, resent) in cases {
        let mut landed = false;
        for attempt in 0..20 {
            // A request answered first on its connection, which then waits in the pool.
            let prime = c.get(&format!("/prime?{method}-{attempt}")).await;
            assert_eq!(prime.status, 200);
            let target = format!("/t?{method}-{}-{attempt}", body.len());
            let r = c.send(method, &target, &[], full(body)).await;
            let (n, on_pooled) = up.count(&target);
            if !on_pooled {
                // It went out on a fresh connection (the pool had none yet): answered.
                assert_eq!((r.status, n), (200, 1), "{method} {target}");
                continue;
            }
            landed = true;
            if resent {
                assert_eq!(
                    (r.status, n),
                    (200, 2),
                    "{method} {target}: resent once on a new connection"
                );
            } else {
                assert_eq!(
                    (r.status, n),
                    (502, 1),
                    "{method} {target} with {body:?}: never sent twice"
                );
            }
            break;
        }
        assert!(landed, "{method}: never went out on a pooled connection in 20 tries");
    }
}

// ---------------------------------------------------------------------------
// The fleet's last known state
// ---------------------------------------------------------------------------

const FLEET_KEY: &str = "/gatekeeper-recovery/maintenance";

/// A single-member etcd on loopback, killed on drop.
struct Etcd {
    child: Child,
    endpoint: String,
    _dir: tempfile::TempDir,
}

impl Etcd {
    fn start() -> Etcd {
        let dir = tempfile::Builder::new().prefix("gk-recovery-etcd-").tempdir().unwrap();
        let (client, peer) = (free_port(), free_port());
        let endpoint = format!("http://127.0.0.1:{client}");
        let peer_url = format!("http://127.0.0.1:{peer}");
        let child = Command::new("etcd")
            .args(["--name", "default", "--data-dir"])
            .arg(dir.path().join("data"))
            .args(["--listen-client-urls", &endpoint, "--advertise-client-urls", &endpoint])
            .args([
                "--listen-peer-urls",
                &peer_url,
                "--initial-advertise-peer-urls",
                &peer_url,
            ])
            .args(["--initial-cluster", &format!("default={peer_url}")])
            .args(["--logger", "zap", "--log-level", "error"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start etcd");
        let e = Etcd {
            child,
            endpoint,
            _dir: dir,
        };
        let up = eventually(Duration::from_secs(15), || e.ctl(&["get", "/probe"]).status.success());
        assert!(up, "etcd did not answer");
        e
    }

    fn ctl(&self, args: &[&str]) -> Output {
        Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .args([
                "--endpoints",
                &self.endpoint,
                "--dial-timeout=2s",
                "--command-timeout=3s",
            ])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run etcdctl")
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Killed (-9) right after fleet flips, restarted while etcd is down: it
/// comes up in the fleet's last known state, and the temporary file of a
/// persist that was cut short is swept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_then_restart_during_an_etcd_outage_keeps_the_fleet_state() {
    let mut etcd = Etcd::start();
    let fx = Fixture::new();
    let mut cfg = fx.config("http://127.0.0.1:9");
    cfg.set("fleet.endpoints", &arr(&[&etcd.endpoint]));
    cfg.set("fleet.key", &q(FLEET_KEY));
    cfg.set("fleet.on_error", &q("keep"));
    let mut gk = Gatekeeper::start(&fx, &cfg);
    for i in 0..10 {
        let o = if i % 2 == 0 {
            etcd.ctl(&["put", FLEET_KEY, &format!("message = \"fleet {i}\"")])
        } else {
            etcd.ctl(&["del", FLEET_KEY])
        };
        assert!(o.status.success(), "{}", show(&o));
    }
    let o = etcd.ctl(&["put", FLEET_KEY, "message = \"fleet last\""]);
    assert!(o.status.success(), "{}", show(&o));
    let persisted = fx.toggle_dir().join(format!("{TOGGLE_NAME}.fleet"));
    let ok = eventually(Duration::from_secs(10), || {
        std::fs::read_to_string(&persisted).is_ok_and(|t| t.contains("fleet last"))
    });
    assert!(ok, "last fleet state not persisted\n{}", gk.log());
    gk.signal(libc::SIGKILL);
    assert!(gk.wait_exit(Duration::from_secs(10)).is_some());
    let _ = etcd.child.kill();
    let _ = etcd.child.wait();
    // What a kill in the middle of persisting leaves.
    let cut = temp_file(&fx.toggle_dir(), ".gatekeeper-Fl33t0", 300);

    let gk2 = Gatekeeper::start_with_path(&gk.config);
    assert_eq!(
        page_message(gk2.addr).await,
        (503, "fleet last".to_string()),
        "{}",
        gk2.log()
    );
    assert!(gk2.log().contains("last known fleet state: on"), "{}", gk2.log());
    assert!(eventually(Duration::from_secs(5), || !cut.exists()), "{}", gk2.log());
    assert_eq!(
        names(&fx.toggle_dir()),
        [format!("{TOGGLE_NAME}.fleet")],
        "the local toggle stays off; nothing else is left"
    );
}

// ---------------------------------------------------------------------------
// exec -> READY=1
// ---------------------------------------------------------------------------

/// Time from spawning `gatekeeper run` to its READY=1 (what systemd waits for
/// before a restart counts as done). GATEKEEPER_READY_BIN measures another
/// build (e.g. target/release/gatekeeper).
#[test]
fn exec_to_ready_is_quick() {
    let bin = std::env::var("GATEKEEPER_READY_BIN").unwrap_or_else(|_| BIN.to_string());
    let fx = Fixture::new();
    let mut cfg = fx.config("http://127.0.0.1:9");
    cfg.set("clients.allow", &arr(&["127.0.0.2", "10.0.0.0/8"]));
    let path = cfg.write(&fx);
    let mut took = Vec::new();
    for run in 0..7 {
        let sock_path = fx.path(&format!("notify-{run}.sock"));
        let sock = UnixDatagram::bind(&sock_path).unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
        let t0 = Instant::now();
        let mut child = Command::new(&bin)
            .arg("run")
            .arg("-c")
            .arg(&path)
            .env("NOTIFY_SOCKET", &sock_path)
            .env_remove("LISTEN_FDS")
            .env_remove("LISTEN_PID")
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut buf = [0u8; 512];
        let ready = loop {
            match sock.recv(&mut buf) {
                Ok(n) if String::from_utf8_lossy(&buf[..n]).lines().any(|l| l == "READY=1") => {
                    break Some(t0.elapsed())
                }
                _ if t0.elapsed() > Duration::from_secs(10) => break None,
                _ => {}
            }
        };
        // SAFETY: kill(2) on our own child's PID.
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
        let _ = child.wait();
        took.push(ready.unwrap_or_else(|| panic!("run {run}: no READY=1 within 10 s from {bin}")));
    }
    took.sort();
    eprintln!(
        "exec -> READY=1 ({bin}): min {:?}, median {:?}, max {:?} over {} runs",
        took[0],
        took[took.len() / 2],
        took[took.len() - 1],
        took.len()
    );
    assert!(took[took.len() / 2] < Duration::from_secs(2), "{took:?}");
}
