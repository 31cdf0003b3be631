//! Named bypass tokens end to end: `token add` prints a link and a header
//! once and stores only a hash (mode 0600); the link sets a signed cookie
//! carrying the name and expiry; link, header and cookie work in maintenance
//! with or without a toggle secret; the access log names the token and never
//! its value; `token list` never shows a token; `token revoke` on a running
//! daemon refuses the token's cookies within 1 s; a hand-edited file with a bad
//! line is refused with file:line and the old tokens stay; expired tokens are
//! refused.
mod common;
use common::*;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

const LINK: &str = "/.gatekeeper/bypass/";
const HEADER: &str = "x-gatekeeper-bypass";

/// Runs `gatekeeper <args> -c <cfg>`, requires success, returns stdout.
fn cli_ok(cfg: &Path, args: &[&str]) -> String {
    let mut all: Vec<&str> = args.to_vec();
    all.extend(["-c", cfg.to_str().unwrap()]);
    let o = gk(&all);
    assert!(o.status.success(), "gatekeeper {all:?} failed:\n{}", show(&o));
    String::from_utf8(o.stdout).unwrap()
}

/// The token in `token add`'s output (the bypass link's last segment).
fn token_of(out: &str) -> String {
    let link = out
        .lines()
        .find_map(|l| l.strip_prefix("bypass link: http://<your-site>/.gatekeeper/bypass/"))
        .unwrap_or_else(|| panic!("no bypass link in:\n{out}"));
    assert!(out.contains(&format!("bypass header: {HEADER}: {link}")), "{out}");
    link.to_string()
}

struct Env {
    fx: Fixture,
    _up: Upstream,
    cfg: PathBuf,
}

impl Env {
    fn new() -> Env {
        let fx = Fixture::new();
        let up = Upstream::start();
        let cfg = fx.config(&up.url()).write(&fx);
        Env { fx, _up: up, cfg }
    }

    fn tokens_file(&self) -> PathBuf {
        self.fx.toggle_dir().join("tokens")
    }

    fn add(&self, name: &str, ttl: Option<&str>) -> String {
        let mut args = vec!["token", "add", name];
        args.extend(ttl.iter().flat_map(|t| ["--ttl", *t]));
        token_of(&cli_ok(&self.cfg, &args))
    }
}

/// Visits the link; returns the `name=value` pair of the cookie it sets.
async fn visit(gk: &Gatekeeper, token: &str) -> String {
    let r = get(IP3, gk.addr, &format!("{LINK}{token}?next=/echo"), &[]).await;
    assert_eq!(r.status, 303, "{}", r.text());
    assert_eq!(r.header("location"), Some("/echo"));
    let c = r
        .header("set-cookie")
        .unwrap_or_else(|| panic!("no cookie: {:?}", r.headers));
    c.split(';').next().unwrap().to_string()
}

async fn status_with(gk: &Gatekeeper, headers: &[(&str, &str)]) -> u16 {
    get(IP3, gk.addr, "/echo", headers).await.status
}

#[tokio::test]
async fn a_named_token_lets_its_holder_in_and_is_logged_by_name() {
    let env = Env::new();
    let out = cli_ok(&env.cfg, &["token", "add", "alice", "--ttl", "30d"]);
    let alice = token_of(&out);
    assert_eq!(alice.len(), 32, "128 bits in hex");
    // Only a hash is stored, readable by its owner only.
    let stored = std::fs::read_to_string(env.tokens_file()).unwrap();
    assert!(!stored.contains(&alice), "{stored}");
    let hash: String = Sha256::digest(alice.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert!(stored.contains(&format!("alice {hash} ")), "{stored}");
    let mode = std::fs::metadata(env.tokens_file()).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let list = cli_ok(&env.cfg, &["token", "list"]);
    assert!(
        list.contains("alice") && !list.contains(&alice) && !list.contains(&hash),
        "{list}"
    );
    assert!(list.lines().next().unwrap().starts_with("NAME"), "{list}");

    // Maintenance without a toggle secret: the named token still works.
    cli_ok(&env.cfg, &["on"]);
    let gk = Gatekeeper::start_with_path(&env.cfg);
    assert_eq!(status_with(&gk, &[]).await, 503);
    let t0 = jiff::Timestamp::now().as_second();
    let pair = visit(&gk, &alice).await;
    let value = pair.strip_prefix("gatekeeper_bypass=").expect("the bypass cookie");
    // <name>.<expiry>.<HMAC>: the name and the expiry (cookie_ttl, 12h) are in it, signed.
    let parts: Vec<&str> = value.split('.').collect();
    assert_eq!(parts.len(), 3, "{value}");
    assert_eq!(parts[0], "alice");
    let exp: i64 = parts[1].parse().unwrap();
    assert!((t0 + 43_200..=t0 + 43_202).contains(&exp), "{exp} vs {t0}");
    let r = get(IP3, gk.addr, "/echo", &[("cookie", pair.as_str())]).await;
    assert_eq!(r.header("x-maintenance-mode"), Some("bypass"));
    let echo = r.echo();
    assert!(echo.all("cookie").is_empty(), "the cookie never reaches the app");
    // The header, and a toggle secret alongside.
    assert_eq!(status_with(&gk, &[(HEADER, alice.as_str())]).await, 200);
    assert_eq!(
        status_with(&gk, &[(HEADER, "0123456789abcdef0123456789abcdef")]).await,
        503
    );
    let tampered = pair.replacen(&format!(".{exp}."), &format!(".{}.", exp + 1), 1);
    assert_eq!(status_with(&gk, &[("cookie", tampered.as_str())]).await, 503);
    cli_ok(&env.cfg, &["on", "--secret", "team-secret"]);
    assert!(gk
        .wait_for_log("maintenance settings changed", Duration::from_secs(5))
        .is_some());
    assert_eq!(status_with(&gk, &[(HEADER, "team-secret")]).await, 200);
    assert_eq!(status_with(&gk, &[("cookie", pair.as_str())]).await, 200);

    // The access log names the token, never its value.
    assert!(
        gk.wait_for_log(r#"status=200 decision="bypass" bypass=alice "#, Duration::from_secs(5))
            .is_some(),
        "{}",
        gk.log()
    );
    assert!(
        !gk.log().contains(&alice),
        "the token leaked into the log:\n{}",
        gk.log()
    );
    // Maintenance off: nothing to bypass, the link is an ordinary path.
    cli_ok(&env.cfg, &["off"]);
    assert!(gk
        .wait_for_log("maintenance on -> off", Duration::from_secs(5))
        .is_some());
    assert_eq!(status_with(&gk, &[]).await, 200);
}

#[tokio::test]
async fn a_revoked_tokens_cookie_is_refused_within_a_second() {
    let env = Env::new();
    let alice = env.add("alice", None);
    let bob = env.add("bob", Some("1h"));
    cli_ok(&env.cfg, &["on"]);
    let gk = Gatekeeper::start_with_path(&env.cfg);
    let alice_cookie = visit(&gk, &alice).await;
    let bob_cookie = visit(&gk, &bob).await;
    assert_eq!(status_with(&gk, &[("cookie", alice_cookie.as_str())]).await, 200);

    let out = cli_ok(&env.cfg, &["token", "revoke", "alice"]);
    assert!(out.contains("token alice revoked"), "{out}");
    let revoked = Instant::now();
    loop {
        let s = status_with(&gk, &[("cookie", alice_cookie.as_str())]).await;
        if s == 503 {
            break;
        }
        assert!(
            revoked.elapsed() < Duration::from_secs(1),
            "still {s} after {:?}",
            revoked.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(revoked.elapsed() < Duration::from_secs(1), "{:?}", revoked.elapsed());
    // Her link and header too; bob is untouched.
    assert_eq!(status_with(&gk, &[(HEADER, alice.as_str())]).await, 503);
    assert_eq!(get(IP3, gk.addr, &format!("{LINK}{alice}"), &[]).await.status, 503);
    assert_eq!(status_with(&gk, &[("cookie", bob_cookie.as_str())]).await, 200);
    let list = cli_ok(&env.cfg, &["token", "list"]);
    assert!(!list.contains("alice") && list.contains("bob"), "{list}");
    let o = gk_cmd(
        &["token", "revoke", "alice", "-c", env.cfg.to_str().unwrap()],
        None,
        &[],
    );
    assert!(
        !o.status.success() && show(&o).contains("no token named \"alice\""),
        "{}",
        show(&o)
    );
}

#[tokio::test]
async fn a_bad_line_is_refused_with_file_and_line_and_the_old_tokens_stay() {
    let env = Env::new();
    let alice = env.add("alice", None);
    cli_ok(&env.cfg, &["on"]);
    let gk = Gatekeeper::start_with_path(&env.cfg);
    let cookie = visit(&gk, &alice).await;

    let file = env.tokens_file();
    let good = std::fs::read_to_string(&file).unwrap();
    let lines = good.lines().count();
    std::fs::write(&file, format!("{good}carol not-a-hash 2026-05-01T10:00:00Z -\n")).unwrap();
    let want = format!(
        "reload refused, keeping the running config: {}:{}:1: bypass.tokens_file: \"not-a-hash\" is not a SHA-256",
        file.display(),
        lines + 1
    );
    assert!(
        gk.wait_for_log(&regex::escape(&want), Duration::from_secs(5)).is_some(),
        "{}",
        gk.log()
    );
    assert_eq!(
        status_with(&gk, &[("cookie", cookie.as_str())]).await,
        200,
        "old tokens kept"
    );
    assert_eq!(status_with(&gk, &[(HEADER, alice.as_str())]).await, 200);
    // `check`, `token add` say the same and change nothing.
    let o = gk_cmd(&["check", "-c", env.cfg.to_str().unwrap()], None, &[]);
    assert_eq!(o.status.code(), Some(2), "{}", show(&o));
    assert!(show(&o).contains(&format!("{}:{}:1: bypass.tokens_file", file.display(), lines + 1)));
    let o = gk_cmd(&["token", "add", "dave", "-c", env.cfg.to_str().unwrap()], None, &[]);
    assert!(!o.status.success(), "{}", show(&o));
    assert!(std::fs::read_to_string(&file).unwrap().contains("carol not-a-hash"));

    // Fixed by hand with a token that has already expired: applied, and refused.
    let expired = "expired-token-value";
    let hash: String = Sha256::digest(expired.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    std::fs::write(
        &file,
        format!("{good}carol {hash} 2020-01-01T00:00:00Z 2020-02-01T00:00:00Z\n"),
    )
    .unwrap();
    assert!(
        gk.wait_for_log("config reloaded", Duration::from_secs(5)).is_some(),
        "{}",
        gk.log()
    );
    assert_eq!(status_with(&gk, &[(HEADER, expired)]).await, 503, "expired");
    assert_eq!(status_with(&gk, &[(HEADER, alice.as_str())]).await, 200);
    let list = cli_ok(&env.cfg, &["token", "list"]);
    assert!(list.contains("2020-02-01T00:00:00Z (expired)"), "{list}");
}
