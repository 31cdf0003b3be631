//! Slow readers that pipeline (issue 21, item 7): a client sends two GETs at
//! once and reads the first answer a little at a time. In front of a sync app
//! the danger would be the second request reaching the app (and its answer
//! being produced and spooled) while the first is still on its way to the
//! client: every slow reader would then cost the app twice. gatekeeper (hyper's
//! HTTP/1.1 server) takes a connection's next request only once the previous
//! answer is wholly in the socket, so the second request waits in gatekeeper,
//! costs the app nothing, and reaches it when the client has read the first.
//!
//! The stand-in app is tests/common/syncapp.rs (as in tests/slow_clients.rs);
//! the client helpers below are the few this file needs.
mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::syncapp::{probe_once, Probe, SyncApp};
use common::*;

const MIB: u64 = 1024 * 1024;
/// Larger than any kernel buffer on loopback (send buffers grow to 4 MiB): a
/// client that reads nothing cannot have the first answer taken whole.
const ANSWER: u64 = 8 * MIB;
/// "Has not happened" checks need a fixed observation window (after the
/// probes' own second).
const ABSENCE: Duration = Duration::from_millis(500);

/// A client connection that reads nothing until told: the kernel buffers
/// (its receive buffer stays at tcp_rmem's default while unread; gatekeeper's
/// send buffer grows to at most 4 MiB) hold less than one answer.
fn slow_reader(addr: SocketAddr) -> TcpStream {
    TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect")
}

/// Reads one answer with a Content-Length of `n` bytes; returns (status line, body length, fnv).
fn read_answer(s: &mut TcpStream, n: u64) -> (String, u64, String) {
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(s.read(&mut byte).expect("response head"), 1, "EOF in the head");
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let len = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length:")
                .map(|v| v.trim().to_string())
        })
        .and_then(|v| v.parse::<u64>().ok());
    assert_eq!(len, Some(n), "{head}");
    let mut f = Fnv::default();
    let mut got = 0u64;
    let mut buf = vec![0u8; 1 << 16];
    while got < n {
        let want = usize::try_from(n - got).unwrap_or(usize::MAX).min(buf.len());
        let k = s
            .read(&mut buf[..want])
            .unwrap_or_else(|e| panic!("response body after {got} of {n} bytes: {e}"));
        assert!(k > 0, "EOF after {got} of {n} body bytes");
        f.update(&buf[..k]);
        got += k as u64;
    }
    (head.lines().next().unwrap_or("").to_string(), got, f.hex())
}

fn big_requests(app: &SyncApp) -> usize {
    app.conns()
        .iter()
        .filter(|c| c.request_line.as_deref().unwrap_or("").starts_with("GET /big"))
        .count()
}

#[test]
fn a_pipelined_request_behind_a_slow_read_waits_in_gatekeeper_not_in_the_app() {
    const READERS: usize = 8;
    let app = SyncApp::start(2);
    let fx = Fixture::new();
    let spool = fx.path("spool");
    std::fs::create_dir(&spool).unwrap();
    let gk = Gatekeeper::start(
        &fx,
        fx.config(&app.url()).set("buffering.dir", &q(spool.to_str().unwrap())),
    );
    let target = format!("/big?bytes={ANSWER}");
    let two = format!("GET {target} HTTP/1.1\r\nHost: x\r\n\r\nGET {target} HTTP/1.1\r\nHost: x\r\n\r\n");

    // READERS clients send two requests at once, then read nothing.
    let mut readers: Vec<TcpStream> = (0..READERS).map(|_| slow_reader(gk.addr)).collect();
    for s in &mut readers {
        s.write_all(two.as_bytes()).unwrap();
    }
    // The first answers are taken from the app (2 workers) and spooled.
    let released = eventually(Duration::from_secs(30), || {
        let conns = app.conns();
        conns.len() >= READERS && conns.iter().all(|c| c.released.is_some() && c.written == ANSWER)
    });
    assert!(
        released,
        "the app was not let go of the first answers: {:?}\n{}",
        app.conns()
            .iter()
            .map(|c| (c.written, c.released.is_some()))
            .collect::<Vec<_>>(),
        gk.log()
    );
    // The second requests wait in gatekeeper while the first answers are unread,
    // and the app serves others meanwhile.
    let probes = Probe::start(
        gk.addr,
        "/probe",
        Duration::from_millis(100),
        Duration::from_secs(3),
        10,
    )
    .wait();
    std::thread::sleep(ABSENCE);
    assert_eq!(
        big_requests(&app),
        READERS,
        "a pipelined request reached the app while the answer before it was unread"
    );
    assert_eq!(
        probes.ok(),
        probes.sent(),
        "probes while pipelined readers wait: {}",
        probes.summary()
    );
    assert_eq!(app.busy(), 0, "a worker is held");

    // Once a client reads its first answer, its second request is served, in order and intact.
    let expect = pattern_fnv(ANSWER);
    let t0 = Instant::now();
    for s in &mut readers {
        let (status, len, fnv) = read_answer(s, ANSWER);
        assert!(status.starts_with("HTTP/1.1 200"), "{status}");
        assert_eq!((len, fnv.as_str()), (ANSWER, expect.as_str()), "first answer");
    }
    for s in &mut readers {
        let (status, len, fnv) = read_answer(s, ANSWER);
        assert!(status.starts_with("HTTP/1.1 200"), "{status}");
        assert_eq!((len, fnv.as_str()), (ANSWER, expect.as_str()), "second answer");
    }
    assert_eq!(big_requests(&app), 2 * READERS);
    eprintln!(
        "{READERS} pipelined slow readers of {} MiB answers: app released after the first answers, \
         second requests held back until read ({:.1} s to read all); probes {}",
        ANSWER / MIB,
        t0.elapsed().as_secs_f64(),
        probes.summary()
    );
    drop(readers);
    // The spool files are closed (off the worker threads) once the answers are done.
    let pid = gk.pid();
    let open_spool = || {
        std::fs::read_dir(format!("/proc/{pid}/fd"))
            .map(|d| {
                d.filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
                    .filter(|t| t.starts_with(&spool))
                    .count()
            })
            .unwrap_or(0)
    };
    assert!(
        eventually(Duration::from_secs(5), || open_spool() == 0),
        "spool files still open: {}",
        open_spool()
    );
    assert_eq!(probe_once(gk.addr, "/probe", Duration::from_secs(3)).status, 200);
}
