//! Resource exhaustion keeps serving the page (issue 21, item 5): out of file
//! descriptors, at `server.max_connections`, or with `buffering.dir` full, the
//! maintenance page still goes out as soon as a connection frees up, the log
//! says what happened (without a line per attempt), and the daemon recovers
//! on its own.
mod common;
use common::*;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const PAGE_REQ: &[u8] = b"GET / HTTP/1.1\r\nHost: localhost\r\nAccept: application/json\r\n\r\n";

fn fd_count(pid: u32) -> u64 {
    std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap().count() as u64
}

/// Lowers `pid`'s open-files limit, soft and hard (the daemon lifts its soft
/// limit to the hard one at start, so the hard one is what counts).
fn set_nofile(pid: u32, n: u64) {
    let lim = libc::rlimit {
        rlim_cur: n,
        rlim_max: n,
    };
    // SAFETY: prlimit(2) on our own child with a stack value.
    let r = unsafe { libc::prlimit(pid as libc::pid_t, libc::RLIMIT_NOFILE, &lim, std::ptr::null_mut()) };
    assert_eq!(r, 0, "prlimit: {}", std::io::Error::last_os_error());
}

/// Nothing has arrived on `s` within `d` (the connection waits unanswered).
async fn silent(s: &TcpStream, d: Duration) -> bool {
    tokio::time::timeout(d, s.readable()).await.is_err()
}

/// The page's status and message, read off `s` within `bound`.
async fn page_on(s: &mut TcpStream, bound: Duration) -> (u16, String) {
    let r = tokio::time::timeout(bound, read_raw_response(s, false))
        .await
        .unwrap_or_else(|_| panic!("no answer within {bound:?}"));
    let msg = serde_json::from_slice::<serde_json::Value>(&r.body)
        .ok()
        .and_then(|v| v["message"].as_str().map(str::to_string))
        .unwrap_or_default();
    (r.status, msg)
}

async fn ask_page(addr: SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(PAGE_REQ).await.unwrap();
    s
}

fn count(log: &str, needle: &str) -> usize {
    log.lines().filter(|l| l.contains(needle)).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_file_descriptors_the_page_goes_out_as_soon_as_one_frees() {
    let fx = Fixture::new();
    std::fs::write(fx.toggle(), "message = \"Back at noon\"\n").unwrap();
    let mut cfg = fx.config("http://127.0.0.1:9");
    cfg.set("server.workers", "1");
    cfg.set("server.header_timeout", &q("60s"));
    cfg.set("maintenance.recheck", &q("200ms"));
    let gk = Gatekeeper::start(&fx, &cfg);
    let pid = gk.pid();
    let spare = 10;
    set_nofile(pid, fd_count(pid) + spare);

    // Kept-alive connections until the daemon cannot accept another.
    let mut held = Vec::new();
    let pending = loop {
        assert!(
            held.len() <= 3 * spare as usize,
            "never ran out at {} connections",
            held.len()
        );
        let mut s = ask_page(gk.addr).await;
        let t0 = Instant::now();
        let answered = loop {
            if !silent(&s, Duration::from_millis(20)).await {
                break true;
            }
            if gk.log().contains("accept failed") {
                break false;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "neither answered nor refused\n{}",
                gk.log()
            );
        };
        if !answered {
            break s;
        }
        assert_eq!(page_on(&mut s, Duration::from_secs(5)).await.0, 503);
        held.push(s);
    };
    let t_out = Instant::now();
    // The re-check cannot open the toggle either: the content it knew stays.
    assert!(
        gk.wait_for_log("cannot read toggle .*Too many open files", Duration::from_secs(5))
            .is_some(),
        "{}",
        gk.log()
    );
    // Said about once a second, not every 100 ms attempt.
    assert!(eventually(Duration::from_secs(10), || count(
        &gk.log(),
        "accept failed"
    ) >= 2));
    let lines = count(&gk.log(), "accept failed");
    let secs = t_out.elapsed().as_secs_f64();
    assert!(
        lines as f64 <= secs + 2.0,
        "{lines} 'accept failed' lines in {secs:.1} s\n{}",
        gk.log()
    );
    let mut pending = pending;
    assert!(
        silent(&pending, Duration::from_millis(200)).await,
        "answered while out of descriptors"
    );

    // Three free (the waiting connection, one more, a look at the toggle): the
    // waiting connection gets the page promptly, with its message.
    drop(held.drain(..3));
    let t_free = Instant::now();
    let got = page_on(&mut pending, Duration::from_secs(3)).await;
    eprintln!(
        "out of descriptors for {secs:.1} s ({} connections held, {lines} log lines); \
         page {:?} after freeing",
        held.len() + 3,
        t_free.elapsed()
    );
    assert_eq!(got, (503, "Back at noon".to_string()), "{}", gk.log());
    let lines_at_free = count(&gk.log(), "accept failed");
    let mut s = ask_page(gk.addr).await;
    assert_eq!(page_on(&mut s, Duration::from_secs(3)).await.0, 503);
    let log = gk.log();
    assert_eq!(count(&log, "maintenance settings changed"), 0, "{log}");
    // Said once, not at every re-check.
    assert_eq!(count(&log, "cannot read toggle"), 1, "{log}");
    assert!(log.contains("keeping the content last read"), "{log}");
    assert_eq!(count(&log, "maintenance on -> off"), 0, "{log}");

    // Recovered on its own: all held connections gone, it serves as before.
    drop(held);
    for _ in 0..5 {
        let mut s = ask_page(gk.addr).await;
        assert_eq!(
            page_on(&mut s, Duration::from_secs(3)).await,
            (503, "Back at noon".into())
        );
    }
    let after = count(&gk.log(), "accept failed");
    assert!(after <= lines_at_free + 1, "accept still failing\n{}", gk.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_max_connections_new_ones_wait_and_are_served_as_slots_free() {
    let fx = Fixture::new();
    fx.toggle_on();
    let mut cfg = fx.config("http://127.0.0.1:9");
    cfg.set("server.workers", "1");
    cfg.set("server.max_connections", "3");
    cfg.set("server.header_timeout", &q("60s"));
    let gk = Gatekeeper::start(&fx, &cfg);

    let mut held = Vec::new();
    for _ in 0..3 {
        let mut s = ask_page(gk.addr).await;
        assert_eq!(page_on(&mut s, Duration::from_secs(5)).await.0, 503);
        held.push(s);
    }
    let mut first = ask_page(gk.addr).await;
    let mut second = ask_page(gk.addr).await;
    assert!(
        gk.wait_for_log("server.max_connections reached", Duration::from_secs(5))
            .is_some(),
        "{}",
        gk.log()
    );
    assert!(
        silent(&first, Duration::from_millis(300)).await,
        "served beyond max_connections"
    );
    assert!(silent(&second, Duration::from_millis(1)).await);

    drop(held.remove(0));
    assert_eq!(page_on(&mut first, Duration::from_secs(3)).await.0, 503);
    assert!(
        silent(&second, Duration::from_millis(200)).await,
        "served beyond max_connections"
    );
    drop(held.remove(0));
    assert_eq!(page_on(&mut second, Duration::from_secs(3)).await.0, 503);

    // More waiting ones: served in turn as the others go; the log said it once.
    let mut more = Vec::new();
    for _ in 0..6 {
        more.push(ask_page(gk.addr).await);
    }
    drop(held);
    drop(first);
    drop(second);
    for s in &mut more {
        assert_eq!(page_on(s, Duration::from_secs(5)).await.0, 503);
        // Each takes a slot while kept alive: close it to make room for the next.
        s.shutdown().await.unwrap();
    }
    assert_eq!(count(&gk.log(), "server.max_connections reached"), 1, "{}", gk.log());
}

// ---------------------------------------------------------------------------
// buffering.dir full
// ---------------------------------------------------------------------------

/// A small tmpfs mounted in a private mount namespace held by a helper process
/// (nothing is mounted where the rest of the machine sees it; gone with the
/// helper). The daemon reaches it through `/proc/<helper>/root`.
struct Tmpfs {
    helper: Child,
    path: PathBuf,
}

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(dir).unwrap();
        let script = format!("mount -t tmpfs -o size={size} gk-test \"$1\" && exec sleep 600");
        let mut helper = Command::new("unshare")
            .args(["--mount", "--propagation", "private", "sh", "-c", &script, "sh"])
            .arg(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run unshare (util-linux)");
        let pid = helper.id();
        let mounted = || {
            std::fs::read_to_string(format!("/proc/{pid}/mounts"))
                .is_ok_and(|m| m.lines().any(|l| l.starts_with("gk-test ")))
        };
        let ok = eventually(Duration::from_secs(10), || {
            mounted() || helper.try_wait().ok().flatten().is_some()
        });
        if !ok || !mounted() {
            let _ = helper.kill();
            let out = helper.wait_with_output().map(|o| o.stderr).unwrap_or_default();
            panic!(
                "this test needs to mount a tmpfs in a private mount namespace (root with \
                 CAP_SYS_ADMIN, as on the developers' machines and in CI): {}",
                String::from_utf8_lossy(&out)
            );
        }
        Tmpfs {
            path: PathBuf::from(format!("/proc/{pid}/root")).join(dir.strip_prefix("/").unwrap()),
            helper,
        }
    }

    /// Writes `name` until the file system is full.
    fn fill(&self, name: &str) -> PathBuf {
        use std::io::Write;
        let p = self.path.join(name);
        let mut f = std::fs::File::create(&p).unwrap();
        let chunk = vec![0u8; 64 << 10];
        for _ in 0..1024 {
            if let Err(e) = f.write_all(&chunk) {
                assert_eq!(e.raw_os_error(), Some(libc::ENOSPC), "{e}");
                return p;
            }
        }
        panic!("{} never filled up", self.path.display());
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = self.helper.kill();
        let _ = self.helper.wait();
    }
}

/// POSTs `len` bytes to /echo?id=`id`, reading while writing (a refusal may
/// come before the body is all sent); the status, 0 when none came.
async fn post(addr: SocketAddr, id: &str, len: usize) -> u16 {
    let s = TcpStream::connect(addr).await.unwrap();
    let (mut rd, mut wr) = s.into_split();
    let head = format!("POST /echo?id={id} HTTP/1.1\r\nHost: localhost\r\nContent-Length: {len}\r\n\r\n");
    let writer = tokio::spawn(async move {
        let _ = wr.write_all(head.as_bytes()).await;
        let _ = wr.write_all(&vec![b'b'; len]).await;
        wr
    });
    let status = tokio::time::timeout(Duration::from_secs(10), async {
        let mut buf = Vec::new();
        let mut tmp = [0u8; 4096];
        loop {
            if let Some((r, _)) = parse_response(&buf, false, false) {
                return r.status;
            }
            match rd.read(&mut tmp).await {
                Ok(0) | Err(_) => return parse_response(&buf, false, true).map_or(0, |x| x.0.status),
                Ok(n) => buf.extend_from_slice(&tmp[..n]),
            }
        }
    })
    .await
    .expect("an answer within 10 s");
    let _ = writer.await;
    status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_buffering_dir_refuses_spilling_bodies_only_and_recovers() {
    let fx = Fixture::new();
    let up = Upstream::start();
    let tmpfs = Tmpfs::mount(&fx.path("spill"), "512k");
    let mut cfg = fx.config(&up.url());
    cfg.set("buffering.memory", &q("16KiB"));
    cfg.set("buffering.dir", &q(tmpfs.path.to_str().unwrap()));
    let gk = Gatekeeper::start(&fx, &cfg);
    const BIG: usize = 200 << 10;

    assert_eq!(post(gk.addr, "before", BIG).await, 200, "{}", gk.log());
    let filler = tmpfs.fill("filler");

    // Full: a body that must spill is refused with 500, and said so; it never reaches the app.
    assert_eq!(post(gk.addr, "full", BIG).await, 500, "{}", gk.log());
    let line = gk
        .wait_for_log(
            r"(?m)^.*cannot buffer the request body on disk.*$",
            Duration::from_secs(5),
        )
        .unwrap_or_else(|| panic!("no log line\n{}", gk.log()));
    assert!(line.contains("No space left on device"), "{line}");
    assert!(!up.uris().iter().any(|u| u.contains("id=full")), "{:?}", up.uris());

    // Everything that needs no disk goes on: small bodies, GETs, the page.
    assert_eq!(post(gk.addr, "small", 4 << 10).await, 200);
    assert_eq!(get(LOCALHOST, gk.addr, "/echo?id=get", &[]).await.status, 200);
    fx.toggle_on();
    let page = eventually_async(Duration::from_secs(5), || async {
        get(LOCALHOST, gk.addr, "/", &[]).await.status == 503
    })
    .await;
    assert!(page, "no page while buffering.dir is full");
    fx.toggle_off();
    let off = eventually_async(Duration::from_secs(5), || async {
        get(LOCALHOST, gk.addr, "/", &[]).await.status != 503
    })
    .await;
    assert!(off);

    // Space again: spilling works again, by itself.
    std::fs::remove_file(&filler).unwrap();
    assert_eq!(post(gk.addr, "after", BIG).await, 200, "{}", gk.log());
    let errors = count(&gk.log(), "cannot buffer the request body on disk");
    assert_eq!(errors, 1, "{}", gk.log());
}
