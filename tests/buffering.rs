//! Shielding the app from slow clients (`[buffering]`, on by default): the
//! request body is complete before the upstream is contacted, `max_body`
//! gives 413, the upstream's answer is taken as fast as it comes (spooled,
//! not held in RAM), `X-Accel-Buffering: no` opts out, and bytes still flow
//! as they arrive.
//!
//! The "has not happened" checks need a fixed observation window
//! (`ABSENCE`): there is nothing to poll for.
mod common;
use common::*;
use http_body_util::BodyExt;
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;

const MIB: u64 = 1024 * 1024;
const RSS_LIMIT_KIB: u64 = 60 * 1024;
const ABSENCE: Duration = Duration::from_millis(300);

struct Env {
    _fx: Fixture,
    up: Upstream,
    gk: Gatekeeper,
}

fn start_with(edit: impl FnOnce(&Fixture, &mut Config)) -> Env {
    let fx = Fixture::new();
    std::fs::create_dir(fx.path("spool")).unwrap();
    let up = Upstream::start();
    let mut c = fx.config(&up.url());
    c.set("buffering.dir", &q(fx.path("spool").to_str().unwrap()));
    edit(&fx, &mut c);
    let gk = Gatekeeper::start(&fx, &c);
    Env { _fx: fx, up, gk }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_body_is_complete_before_the_upstream_is_contacted() {
    let env = start_with(|_, _| {});
    let mut s = connect_from(LOCALHOST, env.gk.addr).await.unwrap();
    s.write_all(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nhello")
        .await
        .unwrap();
    tokio::time::sleep(ABSENCE).await;
    assert!(
        env.up.uris().is_empty(),
        "upstream contacted before the body was complete"
    );
    s.write_all(b"world").await.unwrap();
    let r = read_raw_response(&mut s, false).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let e = Echo::parse(&r.body);
    assert_eq!((e.body_len, e.body_fnv.as_str()), (10, fnv_hex(b"helloworld").as_str()));
    // the upstream got a plain Content-Length body
    assert_eq!(e.all("content-length"), vec!["10"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buffered_upload_64mib_bounded_memory() {
    let env = start_with(|_, _| {});
    let n = 64 * MIB;
    let expect = tokio::task::spawn_blocking(move || pattern_fnv(n));
    let mut c = Conn::open(LOCALHOST, env.gk.addr).await;
    let r = c
        .send("PUT", "/echo", &[("content-length", &n.to_string())], pattern_body(n))
        .await;
    let e = r.echo();
    assert_eq!((e.body_len, e.body_fnv), (n, expect.await.unwrap()));
    let hwm = env.gk.vm_hwm_kib();
    eprintln!("64 MiB buffered upload: daemon VmHWM {hwm} KiB");
    assert!(hwm < RSS_LIMIT_KIB, "daemon peak RSS {hwm} KiB: body held in memory?");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_over_max_body_gets_413() {
    let env = start_with(|_, c| {
        c.set("buffering.max_body", &q("1MiB"));
    });
    // Content-Length says so: 413 at once, without sending the body
    let mut s = connect_from(LOCALHOST, env.gk.addr).await.unwrap();
    s.write_all(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 2097152\r\n\r\n")
        .await
        .unwrap();
    let t0 = Instant::now();
    let r = read_raw_response(&mut s, false).await;
    assert_eq!(r.status, 413);
    assert!(t0.elapsed() < Duration::from_secs(2));

    // chunked body that grows past the limit
    let mut s = connect_from(LOCALHOST, env.gk.addr).await.unwrap();
    s.write_all(b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
        .await
        .unwrap();
    let (mut rd, mut wr) = s.into_split();
    let writer = tokio::spawn(async move {
        let chunk = vec![b'a'; 64 * 1024];
        for _ in 0..24 {
            let head = format!("{:x}\r\n", chunk.len());
            if wr.write_all(head.as_bytes()).await.is_err()
                || wr.write_all(&chunk).await.is_err()
                || wr.write_all(b"\r\n").await.is_err()
            {
                return;
            }
        }
        let _ = wr.write_all(b"0\r\n\r\n").await;
    });
    let mut buf = Vec::new();
    let status = tokio::time::timeout(Duration::from_secs(5), async {
        use tokio::io::AsyncReadExt;
        let mut tmp = [0u8; 4096];
        loop {
            if let Some((r, _)) = parse_response(&buf, false, false) {
                return r.status;
            }
            match rd.read(&mut tmp).await {
                Ok(0) | Err(_) => return parse_response(&buf, false, true).map(|x| x.0.status).unwrap_or(0),
                Ok(n) => buf.extend_from_slice(&tmp[..n]),
            }
        }
    })
    .await
    .expect("answer within 5 s");
    assert_eq!(status, 413);
    let _ = writer.await;
    assert!(
        env.up.uris().is_empty(),
        "oversized bodies reached the upstream: {:?}",
        env.up.uris()
    );

    // exactly max_body is fine
    let n = MIB;
    let r = request(
        LOCALHOST,
        env.gk.addr,
        "PUT",
        "/echo",
        &[("content-length", &n.to_string())],
        pattern_body(n),
    )
    .await;
    assert_eq!(r.echo().body_len, n);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_client_does_not_hold_the_upstream() {
    let env = start_with(|_, _| {});
    let n = 64 * MIB;
    let target = format!("/download?bytes={n}");
    let expect = tokio::task::spawn_blocking(move || pattern_fnv(n));
    let mut c = Conn::open(LOCALHOST, env.gk.addr).await;
    let resp = c
        .request_streaming(build_request("GET", &target, &[], empty()))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    // the client reads nothing; the daemon must still take everything
    assert!(
        eventually(Duration::from_secs(10), || env.up.downloads_done().contains(&target)),
        "upstream still held by a client that does not read\n{}",
        env.gk.log()
    );
    let hwm = env.gk.vm_hwm_kib();
    let mut body = resp.into_body();
    let mut f = Fnv::default();
    let mut len = 0u64;
    while let Some(fr) = body.frame().await {
        if let Some(d) = fr.unwrap().data_ref() {
            len += d.len() as u64;
            f.update(d);
        }
    }
    assert_eq!((len, f.hex()), (n, expect.await.unwrap()));
    eprintln!("64 MiB spooled response: daemon VmHWM {hwm} KiB");
    assert!(
        hwm < RSS_LIMIT_KIB,
        "daemon peak RSS {hwm} KiB: response held in memory?"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn x_accel_buffering_no_is_relayed_unbuffered() {
    let env = start_with(|_, _| {});
    let n = 64 * MIB;
    let target = format!("/download?bytes={n}&accel=no");
    let mut c = Conn::open(LOCALHOST, env.gk.addr).await;
    let resp = c
        .request_streaming(build_request("GET", &target, &[], empty()))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    tokio::time::sleep(ABSENCE).await;
    assert!(
        !env.up.downloads_done().contains(&target),
        "X-Accel-Buffering: no answer was buffered anyway"
    );
    let (mut len, mut f) = (0u64, Fnv::default());
    let mut body = resp.into_body();
    while let Some(fr) = body.frame().await {
        if let Some(d) = fr.unwrap().data_ref() {
            len += d.len() as u64;
            f.update(d);
        }
    }
    assert_eq!((len, f.hex()), (n, pattern_fnv(n)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buffered_responses_still_flow_as_they_arrive() {
    let env = start_with(|_, c| {
        c.set("buffering.requests", "false");
    });
    let mut c = Conn::open(LOCALHOST, env.gk.addr).await;
    stream_echo_rounds(&mut c, 10, Duration::from_secs(3))
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", env.gk.log()));
}
