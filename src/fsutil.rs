//! File-system helpers shared by the toggle, the fleet state and the watchers.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

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
        .prefix(".gatekeeper-")
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
}
