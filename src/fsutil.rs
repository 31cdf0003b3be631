//! File-system helpers shared by the toggle, the fleet state and the watchers.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// Name prefix of [`write_atomic`]'s temporary files.
const TEMP_PREFIX: &str = ".gatekeeper-";

/// A temporary file this old was abandoned: its writer (a `gatekeeper on`, the
/// daemon persisting the fleet state) was killed between create and rename. A
/// live write takes milliseconds.
pub const STALE_TEMP_AGE: Duration = Duration::from_secs(60);

/// The directory `path` lives in; `.` when it names none ("file", "/").
pub fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    }
}

/// Creates or replaces `path` with `bytes` and permissions `mode`, atomically:
/// a dot-prefixed temporary file in the same directory, synced, renamed into
/// place. A reader sees the old content or all of the new; on error the
/// temporary file is removed.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    write_atomic_owned(path, bytes, mode, None)
}

/// [`write_atomic`], the new file owned by `owner` (uid, gid) when given.
pub fn write_atomic_owned(path: &Path, bytes: &[u8], mode: u32, owner: Option<(u32, u32)>) -> io::Result<()> {
    let mut tmp = tempfile::Builder::new()
        .prefix(TEMP_PREFIX)
        .tempfile_in(parent_dir(path))?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    tmp.as_file().set_permissions(fs::Permissions::from_mode(mode))?;
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::fchown(tmp.as_file(), Some(uid), Some(gid))?;
    }
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

/// Removes [`write_atomic`]'s temporary files in `dir` last modified more than
/// `older_than` ago; returns the ones removed. Only regular files are touched
/// (never what a symlink points to). Fails only when `dir` cannot be listed.
pub fn remove_stale_temps(dir: &Path, older_than: Duration) -> io::Result<Vec<PathBuf>> {
    let now = SystemTime::now();
    let mut removed = Vec::new();
    for entry in fs::read_dir(dir)? {
        let Ok(entry) = entry else { continue };
        if !entry.file_name().to_string_lossy().starts_with(TEMP_PREFIX) {
            continue;
        }
        // DirEntry::metadata does not follow symlinks.
        let Ok(meta) = entry.metadata() else { continue };
        let old = meta
            .modified()
            .ok()
            .and_then(|m| now.duration_since(m).ok())
            .is_some_and(|age| age > older_than);
        if meta.is_file() && old && fs::remove_file(entry.path()).is_ok() {
            removed.push(entry.path());
        }
    }
    Ok(removed)
}

/// Who should own a file that root creates or replaces at `path`: its present
/// owner, else the owner of its directory — the daemon's user, which must still
/// read (and append to) what an operator wrote with sudo. None when not root.
pub fn owner_for(path: &Path) -> Option<(u32, u32)> {
    use std::os::unix::fs::MetadataExt;
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return None;
    }
    let meta = fs::metadata(path).or_else(|_| fs::metadata(parent_dir(path))).ok()?;
    Some((meta.uid(), meta.gid()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parent_of_bare_and_nested_paths() {
        assert_eq!(parent_dir(Path::new("on")), Path::new("."));
        assert_eq!(parent_dir(Path::new("/")), Path::new("."));
        assert_eq!(parent_dir(Path::new("state/on")), Path::new("state"));
        assert_eq!(parent_dir(Path::new("/var/lib/gk/on")), Path::new("/var/lib/gk"));
    }

    #[test]
    fn replaces_with_mode_and_leaves_nothing_behind() -> io::Result<()> {
        let dir = tempfile::tempdir()?;
        let p = dir.path().join("f");
        write_atomic(&p, b"one", 0o600)?;
        write_atomic(&p, b"two", 0o644)?;
        assert_eq!(fs::read(&p)?, b"two");
        assert_eq!(fs::metadata(&p)?.permissions().mode() & 0o777, 0o644);
        // Renaming onto a directory fails; the temporary file goes with it.
        let sub = dir.path().join("sub");
        fs::create_dir(&sub)?;
        fs::write(sub.join("x"), "")?;
        assert!(write_atomic(&sub, b"three", 0o644).is_err());
        let mut names: Vec<_> = fs::read_dir(dir.path())?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<io::Result<_>>()?;
        names.sort();
        assert_eq!(names, ["f", "sub"]);
        Ok(())
    }

    #[test]
    fn removes_only_old_temporary_files() -> io::Result<()> {
        let dir = tempfile::tempdir()?;
        let at = |name: &str, age: u64| -> io::Result<PathBuf> {
            let p = dir.path().join(name);
            fs::File::create(&p)?.set_modified(SystemTime::now() - Duration::from_secs(age))?;
            Ok(p)
        };
        let old = at(".gatekeeper-AbC123", 120)?;
        at(".gatekeeper-fresh1", 0)?;
        at("maintenance-mode-on", 120)?;
        at(".other-old", 120)?;
        fs::create_dir(dir.path().join(".gatekeeper-dir"))?;
        std::os::unix::fs::symlink(&old, dir.path().join(".gatekeeper-link"))?;
        assert_eq!(remove_stale_temps(dir.path(), STALE_TEMP_AGE)?, [old]);
        let mut names: Vec<_> = fs::read_dir(dir.path())?
            .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
            .collect::<io::Result<_>>()?;
        names.sort();
        assert_eq!(
            names,
            [
                ".gatekeeper-dir",
                ".gatekeeper-fresh1",
                ".gatekeeper-link",
                ".other-old",
                "maintenance-mode-on"
            ]
        );
        assert!(remove_stale_temps(&dir.path().join("absent"), STALE_TEMP_AGE).is_err());
        Ok(())
    }
}
