//! The audit trail: `<toggle>.history`, one JSON object a line — what each
//! state-changing command asked, with who asked, and every flip the daemon
//! applied, with its source and cause. Appended under an exclusive lock by
//! commands and daemon alike; rotated at 1 MiB to `<toggle>.history.1` (one
//! old file kept). `gatekeeper history` reads both, newest last.

use std::ffi::OsString;
use std::fs::{self, OpenOptions};
use std::io::{self, BufRead, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::toggle::ToggleContent;

/// A history file is rotated once it is this large.
pub const MAX_BYTES: u64 = 1 << 20;

/// One line of the history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Entry {
    /// A command that changes state, as asked.
    Command {
        at: jiff::Timestamp,
        by: String,
        /// `on`, `off`, `token add alice`, ...
        command: String,
        /// What else was asked (`message="..." until=...`); never a secret.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        detail: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    /// A change the daemon applied.
    Flip {
        at: jiff::Timestamp,
        /// `on` or `off` after the change, and before it.
        state: String,
        was: String,
        /// `file`, `fleet` or `schedule`.
        source: String,
        /// `inotify`, `periodic re-check`, `watch`, ...
        cause: String,
        /// Who switched it on, as the toggle says.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        by: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
}

/// `<toggle>.history`.
pub fn path_for(toggle: &Path) -> PathBuf {
    with_suffix(toggle, ".history")
}

fn with_suffix(p: &Path, suffix: &str) -> PathBuf {
    let mut s: OsString = p.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// Who is typing: `$SUDO_USER` (the person behind sudo), else the user, `@host`.
pub fn operator() -> String {
    let user = std::env::var("SUDO_USER")
        .ok()
        .filter(|v| !v.is_empty())
        .or_else(user_name)
        .or_else(|| std::env::var("USER").ok().filter(|v| !v.is_empty()))
        // SAFETY: geteuid has no preconditions and cannot fail.
        .unwrap_or_else(|| format!("uid{}", unsafe { libc::geteuid() }));
    format!("{user}@{}", hostname())
}

/// The effective user's name from the password database.
fn user_name() -> Option<String> {
    let mut buf = vec![0 as libc::c_char; 4096];
    // SAFETY: an all-zero passwd is a valid value to be filled in.
    let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
    let mut out: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the call; `buf` outlives the use of `pw`'s strings.
    let rc = unsafe { libc::getpwuid_r(libc::geteuid(), &mut pw, buf.as_mut_ptr(), buf.len(), &mut out) };
    if rc != 0 || out.is_null() || pw.pw_name.is_null() {
        return None;
    }
    // SAFETY: getpwuid_r succeeded, so pw_name is a NUL-terminated string inside `buf`.
    let name = unsafe { std::ffi::CStr::from_ptr(pw.pw_name) };
    name.to_str().ok().filter(|n| !n.is_empty()).map(str::to_string)
}

/// This machine's name, for `by` and the webhook's text.
pub fn hostname() -> String {
    fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_string())
}

/// Appends what a command asked to `<toggle>.history`.
pub fn append_command(toggle: &Path, command: &str, detail: Option<String>, reason: Option<&str>) -> io::Result<()> {
    append(
        &path_for(toggle),
        &Entry::Command {
            at: jiff::Timestamp::now(),
            by: operator(),
            command: command.to_string(),
            detail: detail.filter(|d| !d.is_empty()),
            reason: reason.map(str::to_string),
        },
    )
}

/// What a command's history line says besides its name: the toggle content
/// it writes, one `key=value` a field — the secret only as set, never its value.
pub fn describe(content: &ToggleContent) -> String {
    let shown = ToggleContent {
        secret: content.secret.as_ref().map(|_| "(set)".to_string()),
        by: None,
        at: None,
        reason: None,
        ..content.clone()
    };
    shown
        .to_toml()
        .lines()
        .map(|l| l.trim().replacen(" = ", "=", 1))
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// `by: alice@web1 at 2026-05-01T10:00:00Z (db migration)` for `status`, when there is any of it.
pub fn who(by: Option<&str>, at: Option<jiff::Timestamp>, reason: Option<&str>) -> Option<String> {
    if by.is_none() && at.is_none() && reason.is_none() {
        return None;
    }
    let mut out = format!("by: {}", by.unwrap_or("unknown"));
    if let Some(t) = at {
        out.push_str(&format!(" at {}", seconds(t)));
    }
    if let Some(r) = reason {
        out.push_str(&format!(" ({r})"));
    }
    Some(out)
}

/// A command's output addition when its history line could not be written
/// (the command itself went ahead): empty, or a warning line.
pub fn note(written: io::Result<()>) -> String {
    match written {
        Ok(()) => String::new(),
        Err(e) => format!("\nwarning: not recorded in the history: {e}"),
    }
}

/// Appends one entry as one `write` on an `O_APPEND` file, under an exclusive
/// `flock`, rotating first when the file has reached [`MAX_BYTES`]. Commands
/// and the daemon may append at once; neither line is torn or lost.
pub fn append(path: &Path, entry: &Entry) -> io::Result<()> {
    let mut line = serde_json::to_string(entry).map_err(io::Error::other)?;
    line.push('\n');
    // A few rounds at most: another writer may rotate between open and lock.
    for _ in 0..4 {
        let owner = crate::fsutil::owner_for(path);
        let mut f = OpenOptions::new().append(true).create(true).mode(0o644).open(path)?;
        // SAFETY: flock on a descriptor this function owns; released when `f` closes.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(io::Error::last_os_error());
        }
        let mine = f.metadata()?;
        match fs::metadata(path) {
            Ok(m) if m.ino() == mine.ino() && m.dev() == mine.dev() => {}
            // Rotated away under us: open the new file.
            _ => continue,
        }
        if mine.len() >= MAX_BYTES {
            fs::rename(path, with_suffix(path, ".1"))?;
            continue;
        }
        if mine.len() == 0 {
            // Root (an operator with sudo) may create it; the daemon must still append.
            if let Some((uid, gid)) = owner {
                let _ = std::os::unix::fs::fchown(&f, Some(uid), Some(gid));
            }
        }
        return f.write_all(line.as_bytes());
    }
    Err(io::Error::other(
        "the history file kept being rotated; entry not written",
    ))
}

/// The last `n` entries of `<toggle>.history.1` and `<toggle>.history`,
/// oldest first, and how many lines could not be read as entries.
pub fn read_last(toggle: &Path, n: usize) -> io::Result<(Vec<Entry>, usize)> {
    let path = path_for(toggle);
    let mut entries = std::collections::VecDeque::with_capacity(n.min(4096));
    let mut bad = 0;
    for p in [with_suffix(&path, ".1"), path] {
        let f = match fs::File::open(&p) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io::Error::new(e.kind(), format!("{}: {e}", p.display()))),
        };
        for line in io::BufReader::new(f).lines() {
            let line = line?;
            if line.trim().is_empty() {
                continue;
            }
            match serde_json::from_str::<Entry>(&line) {
                Ok(e) => {
                    if entries.len() == n {
                        entries.pop_front();
                    }
                    if n > 0 {
                        entries.push_back(e);
                    }
                }
                Err(_) => bad += 1,
            }
        }
    }
    Ok((entries.into(), bad))
}

/// The entries as a table: time, who (or which source), what.
pub fn table(entries: &[Entry]) -> String {
    let rows: Vec<[String; 3]> = entries.iter().map(row).collect();
    let who_w = rows.iter().map(|r| r[1].chars().count()).max().unwrap_or(0).max(3);
    let mut out = format!("{:<20}  {:<who_w$}  WHAT\n", "TIME", "WHO");
    for [at, who, what] in rows {
        out.push_str(format!("{at:<20}  {who:<who_w$}  {what}").trim_end());
        out.push('\n');
    }
    out.pop();
    out
}

fn seconds(t: jiff::Timestamp) -> String {
    jiff::Timestamp::from_second(t.as_second()).unwrap_or(t).to_string()
}

fn row(e: &Entry) -> [String; 3] {
    match e {
        Entry::Command {
            at,
            by,
            command,
            detail,
            reason,
        } => {
            let mut what = command.clone();
            if let Some(d) = detail {
                what = format!("{what} {d}");
            }
            if let Some(r) = reason {
                what = format!("{what} (reason: {r})");
            }
            [seconds(*at), by.clone(), what]
        }
        Entry::Flip {
            at,
            state,
            was,
            source,
            cause,
            by,
            reason,
        } => {
            let change = if state == was {
                format!("maintenance {state}: settings changed")
            } else {
                format!("maintenance {was} -> {state}")
            };
            let mut what = format!("{change} ({cause})");
            if let Some(b) = by {
                what = format!("{what}, by {b}");
            }
            if let Some(r) = reason {
                what = format!("{what}: {r}");
            }
            [seconds(*at), format!("daemon/{source}"), what]
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> jiff::Timestamp {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn flip(i: i64) -> Entry {
        Entry::Flip {
            at: jiff::Timestamp::from_second(1_800_000_000 + i).unwrap_or_default(),
            state: "on".into(),
            was: "off".into(),
            source: "file".into(),
            cause: format!("inotify {i:06}"),
            by: None,
            reason: None,
        }
    }

    #[test]
    fn appends_reads_and_rotates() -> io::Result<()> {
        let dir = tempfile::tempdir()?;
        let toggle = dir.path().join("on");
        append_command(&toggle, "on", Some("message=\"x\"".into()), Some("deploy"))?;
        let (e, bad) = read_last(&toggle, 10)?;
        assert_eq!((e.len(), bad), (1, 0));
        assert!(matches!(&e[0], Entry::Command { command, reason: Some(r), .. } if command == "on" && r == "deploy"));
        fs::OpenOptions::new()
            .append(true)
            .open(path_for(&toggle))?
            .write_all(b"not json\n")?;
        // Fill past 1 MiB: the file rotates once, one old file is kept.
        let line = serde_json::to_string(&flip(0)).map_err(io::Error::other)?.len() as u64 + 1;
        let n = MAX_BYTES / line + 10;
        for i in 0..n as i64 {
            append(&path_for(&toggle), &flip(i))?;
        }
        let old = fs::metadata(with_suffix(&path_for(&toggle), ".1"))?.len();
        assert!((MAX_BYTES..MAX_BYTES + line).contains(&old), "{old}");
        assert!(fs::metadata(path_for(&toggle))?.len() < 20 * line);
        let (e, bad) = read_last(&toggle, 3)?;
        assert_eq!(bad, 1);
        assert_eq!(e, vec![flip(n as i64 - 3), flip(n as i64 - 2), flip(n as i64 - 1)]);
        assert_eq!(read_last(&toggle, 0)?.0, vec![]);
        assert_eq!(read_last(&dir.path().join("none"), 5)?, (vec![], 0));
        Ok(())
    }

    #[test]
    fn concurrent_appends_are_whole_lines() -> io::Result<()> {
        let dir = tempfile::tempdir()?;
        let p = dir.path().join("h");
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| (0..200).for_each(|i| append(&p, &flip(i)).unwrap_or_else(|e| panic!("{e}"))));
            }
        });
        let text = fs::read_to_string(&p)?;
        assert_eq!(text.lines().count(), 800);
        assert!(text.lines().all(|l| serde_json::from_str::<Entry>(l).is_ok()));
        Ok(())
    }

    #[test]
    fn table_reads_as_a_log() {
        let t = table(&[
            Entry::Command {
                at: at("2026-05-01T10:00:00.123Z"),
                by: "alice@web1".into(),
                command: "on".into(),
                detail: Some("message=\"Upgrading\"".into()),
                reason: Some("db migration".into()),
            },
            Entry::Flip {
                at: at("2026-05-01T10:00:00.200Z"),
                state: "on".into(),
                was: "off".into(),
                source: "file".into(),
                cause: "inotify".into(),
                by: Some("alice@web1".into()),
                reason: None,
            },
        ]);
        assert_eq!(
            t,
            "TIME                  WHO          WHAT\n\
             2026-05-01T10:00:00Z  alice@web1   on message=\"Upgrading\" (reason: db migration)\n\
             2026-05-01T10:00:00Z  daemon/file  maintenance off -> on (inotify), by alice@web1"
        );
    }
}
