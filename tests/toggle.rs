//! Area: the toggle file and how fast flips take effect.
//!
//! The toggle file: every way operators and tools switch it flips the next
//! requests on an already open kept-alive connection, quickly (inotify, not
//! the 2 s fallback timer).
mod common;
use common::*;
use std::os::unix::fs::symlink;
use std::time::{Duration, Instant};

/// A flip that takes longer than this is "slow". Inotify flips take about a
/// millisecond; a flip left to the 2 s fallback timer is slow 85 % of the
/// time. Each test tolerates a quarter of its flips being slow (a loaded CI
/// machine can stall the daemon for a few hundred ms), so a lost or ignored
/// event kind still fails the test with high probability.
const FAST: Duration = Duration::from_millis(300);
/// Hard bound for any flip: the fallback timer must have caught it by then.
const HARD: Duration = Duration::from_millis(2500);

/// The daemon, and how long each flip took.
struct Env {
    base: common::Env,
    flips: std::sync::Mutex<Vec<(String, Duration)>>,
}

impl std::ops::Deref for Env {
    type Target = common::Env;
    fn deref(&self) -> &common::Env {
        &self.base
    }
}

impl Env {
    fn record(&self, what: &str, d: Duration) {
        self.flips.lock().unwrap().push((what.to_string(), d));
    }

    /// At most a quarter of the flips recorded so far may have been slow.
    fn assert_fast(&self) {
        let flips = self.flips.lock().unwrap();
        let slow: Vec<_> = flips.iter().filter(|(_, d)| *d > FAST).collect();
        assert!(
            slow.len() <= flips.len() / 4,
            "{} of {} flips slower than {FAST:?} (events not acted on; fallback timer?): {slow:?}\nall: {flips:?}\n{}",
            slow.len(),
            flips.len(),
            self.gk.log()
        );
    }
}

fn start_with(fx: Fixture, edit: impl FnOnce(&Fixture, &mut Config)) -> Env {
    Env {
        base: common::Env::launch(fx, Upstream::start(), |fx, _, c| edit(fx, c)),
        flips: Default::default(),
    }
}

fn start() -> Env {
    start_with(Fixture::new(), |_, _| {})
}

/// Polls GET /ping on `conn` until the status is `want` (at most HARD) and
/// records how long it took.
async fn flip(env: &Env, conn: &mut Conn, want: u16, what: &str) -> Duration {
    let Some(d) = wait_status(conn, "/ping", want, HARD).await else {
        panic!("{what}: status never became {want} (waited {HARD:?})\n{}", env.gk.log());
    };
    env.record(what, d);
    if want == 200 {
        let r = conn.get("/ping").await;
        assert_eq!((r.status, r.text().as_str()), (200, "upstream:/ping"), "{what}");
        assert_eq!(r.header("x-maintenance-mode"), None, "{what}");
    }
    d
}

/// Polls (JSON) until `pred` holds for the maintenance response (at most
/// HARD) and records how long it took.
async fn wait_json(
    env: &Env,
    conn: &mut Conn,
    what: &str,
    pred: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let t0 = Instant::now();
    loop {
        let r = conn.get_with("/ping", &[("accept", "application/json")]).await;
        if r.status == 503 {
            let j = r.json();
            if pred(&j) {
                env.record(what, t0.elapsed());
                return j;
            }
        }
        if t0.elapsed() > HARD {
            panic!(
                "{what}: not seen within {HARD:?}; last: {} {}\n{}",
                r.status,
                r.text(),
                env.gk.log()
            );
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

async fn assert_stays(conn: &mut Conn, want: u16, what: &str) {
    for _ in 0..3 {
        let r = conn.get("/ping").await;
        assert_eq!(r.status, want, "{what}: flipped back unexpectedly");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn touch_and_rm() {
    let env = start();
    let mut c = Conn::open(LOCALHOST, env.gk.addr).await;
    assert_eq!(c.get("/ping").await.status, 200);
    for i in 0..3 {
        std::fs::File::create(env.fx.toggle()).unwrap();
        flip(&env, &mut c, 503, &format!("touch #{i}")).await;
        assert_stays(&mut c, 503, "after touch").await;
        std::fs::remove_file(env.fx.toggle()).unwrap();
        flip(&env, &mut c, 200, &format!("rm #{i}")).await;
        assert_stays(&mut c, 200, "after rm").await;
    }
    assert!(!c.is_closed());
    env.assert_fast();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mv_off_to_on_and_back() {
    let env = start();
    let off = env.fx.toggle_dir().join("maintenance-mode-off");
    std::fs::write(&off, b"").unwrap();
    let mut c = Conn::open(LOCALHOST, env.gk.addr).await;
    assert_eq!(c.get("/ping").await.status, 200);
    for i in 0..3 {
        std::fs::rename(&off, env.fx.toggle()).unwrap();
        flip(&env, &mut c, 503, &format!("mv off on #{i}")).await;
        assert_stays(&mut c, 503, "after mv off on").await;
        std::fs::rename(env.fx.toggle(), &off).unwrap();
        flip(&env, &mut c, 200, &format!("mv on off #{i}")).await;
        assert_stays(&mut c, 200, "after mv on off").await;
    }
    env.assert_fast();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moved_in_from_another_directory() {
    let env = start();
    let staged = env.fx.write("elsewhere/staged", "message = \"moved in\"\n");
    let mut c = Conn::open(LOCALHOST, env.gk.addr).await;
    assert_eq!(c.get("/ping").await.status, 200);
    for i in 0..2 {
        std::fs::rename(&staged, env.fx.toggle()).unwrap();
        flip(&env, &mut c, 503, &format!("moved in #{i}")).await;
        wait_json(&env, &mut c, "message of moved-in toggle", |j| {
            j["message"] == "moved in"
        })
        .await;
        std::fs::rename(env.fx.toggle(), &staged).unwrap();
        flip(&env, &mut c, 200, &format!("moved out #{i}")).await;
    }
    env.assert_fast();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn editor_style_rewrites_change_the_message() {
    let env = start();
    let t = env.fx.toggle();
    let mut c = Conn::open(LOCALHOST, env.gk.addr).await;
    std::fs::write(&t, "message = \"first\"\n").unwrap();
    flip(&env, &mut c, 503, "write toggle").await;
    wait_json(&env, &mut c, "first message", |j| j["message"] == "first").await;

    // vim/sed -i style: write a temp file next to it, rename over it
    let tmp = env.fx.toggle_dir().join(".maintenance-mode-on.swp");
    std::fs::write(&tmp, "message = \"second\"\nretry_after = \"90s\"\n").unwrap();
    std::fs::rename(&tmp, &t).unwrap();
    let j = wait_json(&env, &mut c, "message after rename-over", |j| j["message"] == "second").await;
    assert_eq!(j["retry_after"], 90);

    // in-place rewrite (truncate + write)
    std::fs::write(&t, "message = \"third\"\n").unwrap();
    let j = wait_json(&env, &mut c, "message after in-place rewrite", |j| {
        j["message"] == "third"
    })
    .await;
    assert_eq!(j["retry_after"], 600, "retry_after back to the configured default");

    std::fs::remove_file(&t).unwrap();
    flip(&env, &mut c, 200, "rm").await;
    env.assert_fast();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn symlinked_toggle_follows_its_target() {
    let env = start();
    let target = env.fx.path("elsewhere/real-toggle");
    std::fs::create_dir_all(target.parent().unwrap()).unwrap();
    symlink(&target, env.fx.toggle()).unwrap();
    let mut c = Conn::open(LOCALHOST, env.gk.addr).await;
    assert_eq!(c.get("/ping").await.status, 200, "dangling symlink = off");
    for i in 0..2 {
        std::fs::write(&target, b"").unwrap();
        flip(&env, &mut c, 503, &format!("symlink target appears #{i}")).await;
        std::fs::remove_file(&target).unwrap();
        flip(&env, &mut c, 200, &format!("symlink target disappears #{i}")).await;
    }
    // the symlink itself removed / re-created while the target exists
    std::fs::write(&target, b"").unwrap();
    flip(&env, &mut c, 503, "target re-created").await;
    std::fs::remove_file(env.fx.toggle()).unwrap();
    flip(&env, &mut c, 200, "symlink removed").await;
    symlink(&target, env.fx.toggle()).unwrap();
    flip(&env, &mut c, 503, "symlink re-created").await;
    env.assert_fast();
}

/// Kubernetes ConfigMap volume layout:
/// dir/maintenance-mode-on -> ..data/maintenance-mode-on, ..data -> ..<ts>,
/// updates swap `..data` atomically (new symlink + rename) and delete the old
/// timestamped directory.
struct ConfigMapDir {
    dir: std::path::PathBuf,
    current: Option<std::path::PathBuf>,
    n: u32,
}

impl ConfigMapDir {
    fn new(dir: std::path::PathBuf) -> Self {
        std::fs::create_dir_all(&dir).unwrap();
        symlink(format!("..data/{TOGGLE_NAME}"), dir.join(TOGGLE_NAME)).unwrap();
        ConfigMapDir {
            dir,
            current: None,
            n: 0,
        }
    }
    /// Publishes a new version: `Some(content)` = the key exists.
    fn publish(&mut self, content: Option<&str>) {
        self.n += 1;
        let name = format!("..2026_11_23_12_00_00.{:09}", self.n);
        let ts = self.dir.join(&name);
        std::fs::create_dir(&ts).unwrap();
        if let Some(c) = content {
            std::fs::write(ts.join(TOGGLE_NAME), c).unwrap();
        }
        let tmp = self.dir.join("..data_tmp");
        symlink(&name, &tmp).unwrap();
        std::fs::rename(&tmp, self.dir.join("..data")).unwrap();
        if let Some(old) = self.current.replace(ts) {
            std::fs::remove_dir_all(old).unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubernetes_configmap_data_symlink_swap() {
    let fx = Fixture::new();
    let mut cm = ConfigMapDir::new(fx.path("cm"));
    cm.publish(None);
    let toggle = fx.path("cm").join(TOGGLE_NAME);
    let env = start_with(fx, |_, c| {
        c.set("maintenance.toggle", &q(toggle.to_str().unwrap()));
    });
    let mut c = Conn::open(LOCALHOST, env.gk.addr).await;
    assert_eq!(c.get("/ping").await.status, 200);

    cm.publish(Some("message = \"cm one\"\n"));
    flip(&env, &mut c, 503, "..data swapped to a version with the key").await;
    wait_json(&env, &mut c, "configmap message", |j| j["message"] == "cm one").await;

    cm.publish(Some("message = \"cm two\"\n"));
    wait_json(&env, &mut c, "configmap message update", |j| j["message"] == "cm two").await;

    cm.publish(None);
    flip(&env, &mut c, 200, "..data swapped to a version without the key").await;

    cm.publish(Some(""));
    flip(&env, &mut c, 503, "key back").await;
    cm.publish(None);
    flip(&env, &mut c, 200, "key gone again").await;
    env.assert_fast();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gatekeeper_on_off_commands_while_running() {
    let env = start();
    let cfg = env.gk.config.to_str().unwrap().to_string();
    let mut c = Conn::open(LOCALHOST, env.gk.addr).await;
    assert_eq!(c.get("/ping").await.status, 200);

    let o = gk(&[
        "on",
        "-c",
        &cfg,
        "--message",
        "Back at 15:00 <b>",
        "--retry-after",
        "5m",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    flip(&env, &mut c, 503, "gatekeeper on").await;
    let j = wait_json(&env, &mut c, "message from `on`", |j| {
        j["message"] == "Back at 15:00 <b>"
    })
    .await;
    assert_eq!(
        j,
        serde_json::json!({"status": "maintenance", "message": "Back at 15:00 <b>", "retry_after": 300})
    );
    let r = c.get("/ping").await;
    assert_eq!(r.status, 503);
    assert_eq!(r.header("retry-after"), Some("300"));
    let html = r.text();
    assert!(
        html.contains("Back at 15:00 &lt;b&gt;"),
        "escaped message not in page:\n{html}"
    );
    assert!(!html.contains("<b>"), "unescaped message in page");

    let o = gk(&["on", "-c", &cfg, "--message", "changed"]);
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    let j = wait_json(&env, &mut c, "message replaced by a second `on`", |j| {
        j["message"] == "changed"
    })
    .await;
    assert_eq!(j["retry_after"], 600);

    let o = gk(&["off", "-c", &cfg]);
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    flip(&env, &mut c, 200, "gatekeeper off").await;
    env.assert_fast();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_toggle_content_means_on_with_defaults() {
    let env = start();
    let t = env.fx.toggle();
    let mut c = Conn::open(LOCALHOST, env.gk.addr).await;

    // defaults, from an empty toggle
    std::fs::write(&t, b"").unwrap();
    flip(&env, &mut c, 503, "empty toggle").await;
    let defaults = c.get_with("/ping", &[("accept", "application/json")]).await;
    assert_eq!(defaults.header("retry-after"), Some("600"));
    let defaults = defaults.json();
    assert_eq!(defaults["status"], "maintenance");
    assert_eq!(defaults["retry_after"], 600);
    assert!(defaults["message"].is_string());
    std::fs::remove_file(&t).unwrap();
    flip(&env, &mut c, 200, "rm").await;

    for (i, content) in [
        &b"this is = not [[ toml"[..],
        &b"message = \"unterminated\n"[..],
        &b"\xff\xfe\x00garbage\x01"[..],
    ]
    .iter()
    .enumerate()
    {
        std::fs::write(&t, content).unwrap();
        flip(&env, &mut c, 503, &format!("malformed toggle #{i}")).await;
        let r = c.get_with("/ping", &[("accept", "application/json")]).await;
        assert_eq!(r.status, 503);
        assert_eq!(r.header("retry-after"), Some("600"), "malformed #{i}");
        assert_eq!(r.json(), defaults, "malformed #{i} must mean the configured defaults");
        std::fs::remove_file(&t).unwrap();
        flip(&env, &mut c, 200, "rm").await;
    }

    // a good message, then garbage over it: back to the defaults
    std::fs::write(&t, "message = \"good\"\n").unwrap();
    wait_json(&env, &mut c, "good message", |j| j["message"] == "good").await;
    std::fs::write(&t, "message = [[[").unwrap();
    wait_json(&env, &mut c, "defaults after garbage", |j| *j == defaults).await;
    env.assert_fast();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn toggle_present_at_startup() {
    let fx = Fixture::new();
    std::fs::write(fx.toggle(), "message = \"from the start\"\n").unwrap();
    let env = start_with(fx, |_, _| {});
    let r = get(LOCALHOST, env.gk.addr, "/ping", &[("accept", "application/json")]).await;
    assert_eq!(r.status, 503);
    assert_eq!(r.json()["message"], "from the start");
    let mut c = Conn::open(LOCALHOST, env.gk.addr).await;
    std::fs::remove_file(env.fx.toggle()).unwrap();
    flip(&env, &mut c, 200, "rm after start").await;
    for i in 0..2 {
        std::fs::write(env.fx.toggle(), b"").unwrap();
        flip(&env, &mut c, 503, &format!("touch #{i}")).await;
        std::fs::remove_file(env.fx.toggle()).unwrap();
        flip(&env, &mut c, 200, &format!("rm #{i}")).await;
    }
    env.assert_fast();
}

/// The toggle directory is deleted and re-created (the inotify watch dies
/// with it): the change must still be noticed (re-watch or the 2 s timer).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn toggle_directory_recreated() {
    let env = start();
    let mut c = Conn::open(LOCALHOST, env.gk.addr).await;
    assert_eq!(c.get("/ping").await.status, 200);
    std::fs::remove_dir_all(env.fx.toggle_dir()).unwrap();
    std::fs::create_dir(env.fx.toggle_dir()).unwrap();
    std::fs::write(env.fx.toggle(), b"").unwrap();
    let d = wait_status(&mut c, "/ping", 503, Duration::from_millis(4500)).await;
    assert!(
        d.is_some(),
        "toggle in re-created directory never noticed\n{}",
        env.gk.log()
    );
    std::fs::remove_file(env.fx.toggle()).unwrap();
    let d = wait_status(&mut c, "/ping", 200, Duration::from_millis(4500)).await;
    assert!(
        d.is_some(),
        "removal in re-created directory never noticed\n{}",
        env.gk.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn toggle_to_effect_delay_over_100_flips() {
    let env = start();
    let off = env.fx.toggle_dir().join("maintenance-mode-off");
    std::fs::write(&off, b"").unwrap();
    let mut c = Conn::open(LOCALHOST, env.gk.addr).await;
    assert_eq!(c.get("/ping").await.status, 200);
    let mut delays = Vec::new();
    let mut immediate = 0;
    for i in 0..100 {
        let (from, to, want) = if i % 2 == 0 {
            (&off, env.fx.toggle(), 503)
        } else {
            (&env.fx.toggle(), off.clone(), 200)
        };
        std::fs::rename(from, &to).unwrap();
        let t0 = Instant::now();
        let mut first = true;
        loop {
            let r = c.get("/ping").await;
            if r.status == want {
                break;
            }
            first = false;
            assert!(
                t0.elapsed() < Duration::from_secs(2),
                "flip #{i} to {want} not seen within 2 s\n{}",
                env.gk.log()
            );
            tokio::time::sleep(Duration::from_micros(500)).await;
        }
        if first {
            immediate += 1;
        }
        delays.push(t0.elapsed());
    }
    delays.sort();
    eprintln!(
        "toggle-to-effect over 100 renames: median {:?}, p90 {:?}, max {:?}; very next request already flipped in {immediate}/100",
        delays[50], delays[90], delays[99]
    );
    assert!(delays[99] < Duration::from_secs(2));
}

/// Several kept-alive connections and fresh ones all agree after a flip.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_connections_see_the_flip() {
    let env = start();
    let mut conns = Vec::new();
    for ip in [LOCALHOST, IP2, IP3] {
        let mut c = Conn::open(ip, env.gk.addr).await;
        assert_eq!(c.get("/ping").await.status, 200);
        conns.push(c);
    }
    for i in 0..2 {
        std::fs::write(env.fx.toggle(), b"").unwrap();
        flip(&env, &mut conns[i], 503, "touch").await;
        for c in conns.iter_mut() {
            assert_eq!(c.get("/ping").await.status, 503);
        }
        assert_eq!(get(LOCALHOST, env.gk.addr, "/ping", &[]).await.status, 503);
        std::fs::remove_file(env.fx.toggle()).unwrap();
        flip(&env, &mut conns[i + 1], 200, "rm").await;
        for c in conns.iter_mut() {
            assert_eq!(c.get("/ping").await.status, 200);
        }
        assert_eq!(get(LOCALHOST, env.gk.addr, "/ping", &[]).await.status, 200);
    }
    env.assert_fast();
}
