//! Area: scheduled maintenance windows (`on --from/--until/--for`).
//!
//! `on --from/--until` and `--for` switched
//! on time by the daemon, with a counting-down `Retry-After`, `until` in the
//! JSON answer and the admin /status, and the window arguments checked.
mod common;
use common::*;

use std::net::SocketAddr;
use std::time::Duration;

/// The schedule is switched by a timer: this is the lateness allowed at a boundary.
const ON_TIME: f64 = 0.100;

fn rfc3339(unix: i64) -> String {
    jiff::Timestamp::from_second(unix).unwrap().to_string()
}

/// One timed probe: when it was sent, when its answer was complete, what it was.
#[derive(Debug)]
struct Probe {
    sent: f64,
    recv: f64,
    status: u16,
    retry_after: Option<u64>,
    mode: Option<String>,
}

async fn probe(conn: &mut Conn, path: &str) -> Probe {
    let sent = wall();
    let r = conn.get(path).await;
    let recv = wall();
    Probe {
        sent,
        recv,
        status: r.status,
        retry_after: r.header("retry-after").map(|v| v.parse().expect("integer Retry-After")),
        mode: r.header("x-maintenance-mode").map(str::to_string),
    }
}

/// Seconds left until `t` as the daemon computes them at some instant in
/// [sent, recv]: ceil, at least 1.
fn retry_range(p: &Probe, t: f64) -> (u64, u64) {
    let f = |x: f64| ((t - x).ceil().max(1.0)) as u64;
    (f(p.recv), f(p.sent))
}

async fn admin_status(admin: SocketAddr) -> serde_json::Value {
    let r = get(LOCALHOST, admin, "/status", &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()
}

/// Polls GET `path` every ~5 ms until the status is `want`; every earlier
/// answer goes through `each`. Panics after `bound` seconds past `boundary`.
async fn poll_until(conn: &mut Conn, path: &str, want: u16, boundary: f64, mut each: impl FnMut(&Probe)) -> Probe {
    loop {
        let p = probe(conn, path).await;
        if p.status == want {
            return p;
        }
        each(&p);
        assert!(
            p.recv < boundary + 3.0,
            "still {} {:.3} s after the boundary (wanted {want})",
            p.status,
            p.recv - boundary
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduled_window_switches_on_time() {
    let env = CliEnv::new(|_, c| {
        c.set("admin.listen", &q("127.0.0.1:0"));
    });
    let gk = env.start();
    let admin = gk.listener("admin");
    let mut c = Conn::open(LOCALHOST, gk.addr).await;
    assert_eq!(c.get("/").await.status, 200);

    // A window 2–3 s ahead (room for the CLI and the daemon on a busy machine),
    // 2 s long, whole seconds.
    let t1 = wall().floor() as i64 + 3;
    let t2 = t1 + 2;
    let (s1, s2) = (rfc3339(t1), rfc3339(t2));
    let (t1, t2) = (t1 as f64, t2 as f64);
    let out = env.on(&["--from", &s1, "--until", &s2, "--message", "Planned upgrade"]);
    assert!(first_line(&out).starts_with("maintenance: on"), "{out}");
    assert!(out.contains(&format!("window: {s1} .. {s2} (starts in")), "{out}");
    let text = env.toggle_text();
    assert!(
        text.contains(&format!("from = \"{s1}\"")) && text.contains(&format!("until = \"{s2}\"")),
        "{text}"
    );
    let st = env.status(false);
    assert!(
        first_line(&st).starts_with("maintenance: scheduled (Planned upgrade)"),
        "{st}"
    );
    assert!(st.contains(&format!("window: {s1} .. {s2} (starts in")), "{st}");

    // The daemon has read the toggle and waits for the window.
    wait_until("the daemon sees the scheduled window", Duration::from_secs(5), || {
        Box::pin(async move { admin_status(admin).await["window"] == "scheduled" })
    })
    .await;
    let s = admin_status(admin).await;
    assert_eq!(
        (s["maintenance"].as_str(), s["until"].as_str()),
        (Some("off"), Some(s2.as_str())),
        "{s}"
    );
    assert!(wall() < t1 - 0.2, "test setup took too long: the window already began");

    // Before `from`: untouched traffic, no maintenance mark.
    let r = c.get("/echo").await;
    assert_eq!(r.status, 200);
    assert!(r.header("x-maintenance-mode").is_none(), "{:?}", r.headers);
    let e = r.echo();
    assert!(e.all("x-maintenance-mode").is_empty());
    let mut before = 0;
    let on = poll_until(&mut c, "/", 503, t1, |p| {
        assert_eq!(p.status, 200, "before the window: {p:?}");
        assert!(p.mode.is_none(), "before the window: {p:?}");
        before += 1;
    })
    .await;
    assert!(before > 0, "no request answered before the window opened");
    assert!(on.recv >= t1, "maintenance began {:.3} s before `from`", t1 - on.recv);
    let late_from = on.recv - t1;
    println!("window start: 503 within {:.1} ms of `from`", late_from * 1000.0);
    assert!(
        late_from <= ON_TIME,
        "maintenance began {:.1} ms after `from`",
        late_from * 1000.0
    );

    // Inside: Retry-After counts down to `until`; the JSON names it.
    let mut seen: Vec<u64> = Vec::new();
    let mut check_retry = |p: &Probe| {
        let r = p.retry_after.expect("Retry-After on the 503");
        let (lo, hi) = retry_range(p, t2);
        assert!(
            (lo..=hi).contains(&r),
            "Retry-After {r} not in {lo}..={hi} at {:.3} s before `until`",
            t2 - p.recv
        );
        assert!(r >= 1);
        if seen.last() != Some(&r) {
            assert!(
                seen.last().is_none_or(|&l| r < l),
                "Retry-After went up: {seen:?} then {r}"
            );
            seen.push(r);
        }
    };
    check_retry(&on);
    let sent = wall();
    let r = c.get_with("/", &[("accept", "application/json")]).await;
    let recv = wall();
    assert_eq!(r.status, 503);
    let j = r.json();
    assert_eq!(j["until"].as_str(), Some(s2.as_str()), "{j}");
    assert_eq!(j["message"].as_str(), Some("Planned upgrade"), "{j}");
    let ra: u64 = r.header("retry-after").unwrap().parse().unwrap();
    let (lo, hi) = retry_range(
        &Probe {
            sent,
            recv,
            status: 503,
            retry_after: None,
            mode: None,
        },
        t2,
    );
    assert!(
        (lo..=hi).contains(&ra),
        "JSON answer: Retry-After {ra} not in {lo}..={hi}"
    );
    assert_eq!(j["retry_after"].as_u64(), Some(ra), "{j}");
    let st = env.status(false);
    assert!(first_line(&st).starts_with("maintenance: on since"), "{st}");
    assert!(
        st.contains(&format!("window: {s1} .. {s2} (")) && st.contains("left"),
        "{st}"
    );
    assert_eq!(admin_status(admin).await["window"], "active");

    // At `until`: traffic flows again, on time.
    let off = poll_until(&mut c, "/", 200, t2, |p| {
        assert_eq!(p.status, 503, "inside the window: {p:?}");
        check_retry(p);
    })
    .await;
    assert!(
        off.recv >= t2,
        "maintenance ended {:.3} s before `until`",
        t2 - off.recv
    );
    let late_until = off.recv - t2;
    println!("window end: proxied within {:.1} ms of `until`", late_until * 1000.0);
    assert!(
        late_until <= ON_TIME,
        "maintenance ended {:.1} ms after `until`",
        late_until * 1000.0
    );
    assert!(off.mode.is_none(), "after the window: {off:?}");
    assert_eq!(seen, vec![2, 1], "Retry-After counted down");

    let r = c.get("/echo").await;
    assert_eq!(r.status, 200);
    assert!(r.header("x-maintenance-mode").is_none());
    let st = env.status(false);
    assert!(first_line(&st).starts_with("maintenance: expired"), "{st}");
    assert_eq!(admin_status(admin).await["window"], "expired");
    gk.wait_for_log(r"maintenance on -> off.*schedule", Duration::from_secs(2))
        .unwrap_or_else(|| panic!("the schedule's switch is logged:\n{}", gk.log()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn window_for_a_duration() {
    let env = CliEnv::new(|_, _| {});
    let gk = env.start();
    let addr = gk.addr;
    let mut c = Conn::open(LOCALHOST, addr).await;

    // --from + --for: the end is computed from the start.
    let base = wall() as i64 + 86400 * 30;
    let (from, end) = (rfc3339(base), rfc3339(base + 1800));
    let out = env.on(&["--from", &from, "--for", "30m"]);
    assert!(out.contains(&format!("window: {from} .. {end} (starts in")), "{out}");
    assert!(first_line(&env.status(false)).starts_with("maintenance: scheduled"));
    assert!(
        env.toggle_text().contains(&format!("until = \"{end}\"")),
        "{}",
        env.toggle_text()
    );

    // --for alone: from now.
    let before = wall();
    let out = env.on(&["--for", "2s"]);
    let after = wall();
    assert!(out.contains("window: now .. "), "{out}");
    let st = env.status(false);
    assert!(first_line(&st).starts_with("maintenance: on since"), "{st}");
    wait_until("the window is active", Duration::from_secs(5), || {
        Box::pin(async move { get(LOCALHOST, addr, "/", &[]).await.status == 503 })
    })
    .await;
    let r = c.get_with("/", &[("accept", "application/json")]).await;
    assert_eq!(r.status, 503);
    let j = r.json();
    let until: jiff::Timestamp = j["until"].as_str().unwrap_or_else(|| panic!("{j}")).parse().unwrap();
    let u = until.as_millisecond() as f64 / 1000.0;
    // The end is rounded up to a whole second (the window is for people to read).
    assert_eq!(until.subsec_nanosecond(), 0, "until {until} not whole seconds");
    assert!(
        u >= before + 2.0 - 0.001 && u <= after + 3.0 + 0.001,
        "until {u} not 2 s (rounded up to the second) after the command ({before}..{after})"
    );
    let ra: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=3).contains(&ra), "Retry-After {ra}");

    let off = poll_until(&mut c, "/", 200, u, |p| {
        assert_eq!(p.status, 503, "inside the window: {p:?}");
        let (lo, hi) = retry_range(p, u);
        let ra = p.retry_after.unwrap();
        assert!((lo..=hi).contains(&ra), "Retry-After {ra} not in {lo}..={hi}");
    })
    .await;
    assert!(off.recv >= u, "ended {:.3} s early", u - off.recv);
    let late = off.recv - u;
    println!("--for 2s: proxied within {:.1} ms of its end", late * 1000.0);
    assert!(late <= ON_TIME, "ended {:.1} ms late", late * 1000.0);
    assert!(off.mode.is_none());
    assert!(first_line(&env.status(false)).starts_with("maintenance: expired"));
}

#[test]
fn window_arguments_are_checked() {
    let env = CliEnv::new(|_, _| {});
    let cfg = env.cfg.to_str().unwrap();
    let now = wall() as i64;
    let (past, soon, later) = (rfc3339(now - 60), rfc3339(now + 3600), rfc3339(now + 7200));
    for (args, says) in [
        (vec!["on", "--until", past.as_str()], "already past"),
        (
            vec!["on", "--from", later.as_str(), "--until", soon.as_str()],
            "is not before",
        ),
        (
            vec!["on", "--from", soon.as_str(), "--until", soon.as_str()],
            "is not before",
        ),
        (
            vec!["on", "--until", soon.as_str(), "--for", "10m"],
            "cannot be used with",
        ),
        (vec!["on", "--from", "tomorrow"], "RFC 3339"),
    ] {
        let mut all = args.clone();
        all.extend(["-c", cfg]);
        let o = gk(&all);
        assert!(!o.status.success(), "{all:?} succeeded:\n{}", show(&o));
        assert!(
            String::from_utf8_lossy(&o.stderr).contains(says),
            "{all:?}:\n{}",
            show(&o)
        );
        assert!(!env.fx.toggle().exists(), "{all:?} left a toggle behind");
    }
}
