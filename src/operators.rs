//! The bodies of `token add|list|revoke` and `history`: short and synchronous.

use std::path::Path;

use anyhow::Context;

use crate::cli::TokenAction;
use crate::config::Config;
use crate::history;
use crate::tokens::TokenStore;

/// `gatekeeper token ...`: edits `bypass.tokens_file` (mode 0600, atomically);
/// a running daemon picks the change up like an allowlist edit.
pub fn token(path: &Path, action: TokenAction) -> anyhow::Result<String> {
    let cfg = Config::load(path)?;
    let file = &cfg.bypass.tokens_file;
    let toggle = &cfg.maintenance.toggle;
    // A file with a bad line is never rewritten: what is wrong is said first.
    let mut store = TokenStore::load(file)?;
    let now = jiff::Timestamp::now();
    match action {
        TokenAction::Add { name, ttl } => {
            let value = store.add(&name, ttl, now)?;
            let detail = ttl.map(|d| format!("ttl={}", humantime::format_duration(d)));
            let noted = history::note(history::append_command(
                toggle,
                &format!("token add {name}"),
                detail,
                None,
            ));
            save(file, &store)?;
            let expires = store
                .tokens()
                .iter()
                .find(|t| *t.name == *name)
                .and_then(|t| t.expires)
                .map_or_else(|| "until revoked".to_string(), |e| format!("until {e}"));
            let link = cfg.bypass.path.trim_end_matches('/');
            Ok(format!(
                "token {name} added, valid {expires} in every maintenance window\n\
                 bypass link: http://<your-site>{link}/{value}\n\
                 bypass header: {}: {value}\n\
                 This is the only time the token is shown: only its hash is kept (in {}).{noted}",
                cfg.bypass.header,
                file.display()
            ))
        }
        TokenAction::List => Ok(list(&store, now)),
        TokenAction::Revoke { name } => {
            store.revoke(&name)?;
            let noted = history::note(history::append_command(
                toggle,
                &format!("token revoke {name}"),
                None,
                None,
            ));
            save(file, &store)?;
            Ok(format!(
                "token {name} revoked: its link, header and cookies stop working as soon as the daemon reloads {}{noted}",
                file.display()
            ))
        }
    }
}

/// Root (sudo) writes it for the daemon's user, which must read it.
fn save(file: &Path, store: &TokenStore) -> anyhow::Result<()> {
    crate::fsutil::write_atomic_owned(file, store.to_text().as_bytes(), 0o600, crate::fsutil::owner_for(file))
        .with_context(|| format!("cannot write {}", file.display()))
}

fn list(store: &TokenStore, now: jiff::Timestamp) -> String {
    if store.is_empty() {
        return "no named tokens (`gatekeeper token add NAME` creates one)".to_string();
    }
    let w = store.tokens().iter().map(|t| t.name.len()).max().unwrap_or(0).max(4);
    let mut out = format!("{:<w$}  {:<20}  EXPIRES", "NAME", "CREATED");
    for t in store.tokens() {
        let expires = match t.expires {
            None => "never".to_string(),
            Some(e) if e <= now => format!("{e} (expired)"),
            Some(e) => e.to_string(),
        };
        out.push_str(&format!("\n{:<w$}  {:<20}  {expires}", t.name, t.created.to_string()));
    }
    out
}

/// `gatekeeper history [-n N]`: the last N entries, newest last.
pub fn history(path: &Path, n: usize) -> anyhow::Result<String> {
    let cfg = Config::load(path)?;
    let toggle = &cfg.maintenance.toggle;
    let (entries, bad) = history::read_last(toggle, n).context("cannot read the history")?;
    if entries.is_empty() {
        return Ok(format!("no history yet ({})", history::path_for(toggle).display()));
    }
    let mut out = history::table(&entries);
    if bad > 0 {
        out.push_str(&format!("\n({bad} unreadable line(s) skipped)"));
    }
    Ok(out)
}
