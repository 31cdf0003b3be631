//! Loading the page directory into memory once, and looking assets up by
//! request path.
//!
//! SECURITY: see [`crate::page`]: only regular files inside the canonical page
//! directory become assets, and a request selects one by an exact map lookup.

use std::collections::HashMap;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use http::header::HeaderValue;
use percent_encoding::percent_decode_str;

/// The template file inside a page directory.
const INDEX: &str = "index.html";
/// Files larger than this are skipped (and an oversized `index.html` is an error).
const MAX_FILE_BYTES: u64 = 8 * 1024 * 1024;
/// Loading stops adding assets once this much has been read in total.
const MAX_TOTAL_BYTES: u64 = 64 * 1024 * 1024;
/// Directory nesting deeper than this is not walked.
const MAX_DEPTH: usize = 16;
/// At most this many assets are kept.
const MAX_FILES: usize = 10_000;
/// Raw request paths longer than this never name an asset.
const MAX_PATH_BYTES: usize = 1024;

/// Errors from loading a page directory. Every message names the offending path.
#[derive(thiserror::Error, Debug)]
pub enum PageError {
    /// `maintenance.dir` exists but is not a directory.
    #[error("maintenance.dir \"{}\" is not a directory", path.display())]
    NotADirectory {
        /// The configured directory.
        path: PathBuf,
    },
    /// An I/O error on the directory itself or on `index.html`.
    #[error("{}: {source}", path.display())]
    Io {
        /// The path that could not be read.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// `index.html` is not valid UTF-8.
    #[error("{}: not valid UTF-8", path.display())]
    NotUtf8 {
        /// The template path.
        path: PathBuf,
    },
    /// `index.html` is larger than the per-file limit.
    #[error("{}: larger than {limit} bytes", path.display())]
    TooLarge {
        /// The template path.
        path: PathBuf,
        /// The limit in bytes.
        limit: u64,
    },
}

/// One static file served next to the page (CSS, images, fonts...).
#[derive(Clone, Debug)]
pub struct Asset {
    /// The file's content.
    pub body: Bytes,
    /// The `Content-Type` to answer with, guessed from the file extension.
    pub content_type: HeaderValue,
}

/// The maintenance page template and its assets, all held in memory.
#[derive(Clone, Debug)]
pub struct PageSet {
    template: String,
    /// Key: path relative to the page directory, `/`-separated, no leading `/`.
    assets: HashMap<String, Asset>,
}

/// Files compiled into the binary: the default page. Every file under
/// `static/` except `index.html` must be listed here (a test checks this).
const EMBEDDED_TEMPLATE: &str = include_str!("../../static/index.html");
const EMBEDDED_ASSETS: &[(&str, &[u8])] = &[
    ("style.css", include_bytes!("../../static/style.css")),
    ("maintenance.svg", include_bytes!("../../static/maintenance.svg")),
];

impl PageSet {
    /// Loads `dir/index.html` as the template and every other regular file
    /// under `dir` as an asset.
    ///
    /// Hidden files and directories (name starting with `.`), symlinks leading
    /// outside `dir`, symlinked directories, files over 8 MiB and files beyond
    /// a 64 MiB total are skipped with a warning. Only a missing, unreadable,
    /// oversized or non-UTF-8 `index.html` (or an unusable `dir`) is an error.
    pub fn load(dir: &Path) -> Result<PageSet, PageError> {
        let meta = fs::metadata(dir).map_err(|source| PageError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        if !meta.is_dir() {
            return Err(PageError::NotADirectory {
                path: dir.to_path_buf(),
            });
        }
        let root = fs::canonicalize(dir).map_err(|source| PageError::Io {
            path: dir.to_path_buf(),
            source,
        })?;

        // The template is the operator's fixed choice, not selected by any
        // request, so it is read as configured (a symlinked index.html is fine).
        let index_path = dir.join(INDEX);
        let raw = read_limited(&index_path).map_err(|e| match e {
            ReadError::Io(source) => PageError::Io {
                path: index_path.clone(),
                source,
            },
            ReadError::TooLarge => PageError::TooLarge {
                path: index_path.clone(),
                limit: MAX_FILE_BYTES,
            },
        })?;
        let template = String::from_utf8(raw).map_err(|_| PageError::NotUtf8 {
            path: index_path.clone(),
        })?;

        let mut walker = Walker {
            root: &root,
            assets: HashMap::new(),
            total: template.len() as u64,
            exhausted: false,
        };
        // The top directory must be listable; problems further down only
        // cost the affected assets.
        let entries = read_dir_sorted(&root).map_err(|source| PageError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        walker.walk_entries(entries, &mut Vec::new(), 0);

        Ok(PageSet {
            template,
            assets: walker.assets,
        })
    }

    /// The default page compiled into the binary (from `static/`), used when
    /// `maintenance.dir` is not configured.
    pub fn embedded() -> PageSet {
        let assets = EMBEDDED_ASSETS
            .iter()
            .map(|(name, body)| {
                (
                    (*name).to_string(),
                    Asset {
                        body: Bytes::from_static(body),
                        content_type: content_type_for(name),
                    },
                )
            })
            .collect();
        PageSet {
            template: EMBEDDED_TEMPLATE.to_string(),
            assets,
        }
    }

    /// The raw template (`index.html`), placeholders not yet filled.
    pub fn template(&self) -> &str {
        &self.template
    }

    /// The asset named by a request path, if any.
    ///
    /// `raw_path` is `req.uri().path()`, still percent-encoded. Returns `None`
    /// for `/`, `/index.html`, anything not loaded, and any path that is
    /// suspicious once decoded (invalid UTF-8, NUL or control characters,
    /// backslashes, encoded slashes, `.`/`..` or empty segments, too long).
    pub fn asset(&self, raw_path: &str) -> Option<&Asset> {
        let key = decode_asset_path(raw_path)?;
        // SECURITY: an exact lookup among files found inside the directory at
        // load time; the decoded path is never handed to the filesystem.
        self.assets.get(&key)
    }

    /// How many assets (files besides `index.html`) were loaded.
    pub fn asset_count(&self) -> usize {
        self.assets.len()
    }
}

/// Turns a raw, percent-encoded request path into an asset key, or `None`
/// when it cannot (or must not) name one.
fn decode_asset_path(raw_path: &str) -> Option<String> {
    if raw_path.len() > MAX_PATH_BYTES {
        return None;
    }
    let rest = raw_path.strip_prefix('/')?;
    if rest.is_empty() {
        return None;
    }
    let mut key = String::with_capacity(rest.len());
    // Split before decoding so that an encoded `%2f` stays inside its segment,
    // where it is then rejected below.
    for (i, seg) in rest.split('/').enumerate() {
        if seg.is_empty() {
            // SECURITY: `//x` or a trailing `/` never names a file; rejecting
            // empty segments also rules out absolute-path tricks.
            return None;
        }
        let bytes: Vec<u8> = percent_decode_str(seg).collect();
        // SECURITY: overlong encodings such as `%c0%ae` are invalid UTF-8 and
        // end here, before any comparison against "." or "..".
        let seg = String::from_utf8(bytes).ok()?;
        // SECURITY: encoded separators, NUL and control characters are never
        // part of a legitimate asset name.
        if seg.chars().any(|c| c == '/' || c == '\\' || c.is_control()) {
            return None;
        }
        if seg == "." || seg == ".." {
            return None;
        }
        if i > 0 {
            key.push('/');
        }
        key.push_str(&seg);
    }
    Some(key)
}

/// Whether a key segment could ever be produced by [`decode_asset_path`];
/// files whose names cannot be requested are not worth loading.
fn reachable_segment(seg: &str) -> bool {
    !seg.is_empty() && seg != "." && seg != ".." && !seg.chars().any(|c| c == '/' || c == '\\' || c.is_control())
}

enum ReadError {
    Io(std::io::Error),
    TooLarge,
}

/// Reads a whole file, refusing anything over [`MAX_FILE_BYTES`] even if it
/// grows while being read.
fn read_limited(path: &Path) -> Result<Vec<u8>, ReadError> {
    let file = fs::File::open(path).map_err(ReadError::Io)?;
    let len = file.metadata().map_err(ReadError::Io)?.len();
    if len > MAX_FILE_BYTES {
        return Err(ReadError::TooLarge);
    }
    let mut buf = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
    file.take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut buf)
        .map_err(ReadError::Io)?;
    if buf.len() as u64 > MAX_FILE_BYTES {
        return Err(ReadError::TooLarge);
    }
    Ok(buf)
}

/// Directory entries sorted by name, so that which files fit in the budget
/// does not depend on directory order.
fn read_dir_sorted(dir: &Path) -> std::io::Result<Vec<fs::DirEntry>> {
    let mut entries = fs::read_dir(dir)?.collect::<std::io::Result<Vec<_>>>()?;
    entries.sort_by_key(|e| e.file_name());
    Ok(entries)
}

/// Logs a file or directory left out of the page set.
fn skip(path: &Path, reason: &str) {
    tracing::warn!(path = %path.display(), "maintenance page: skipping {reason}");
}

/// Like [`skip`], with the error that caused it.
fn skip_err(path: &Path, reason: &str, err: &std::io::Error) {
    tracing::warn!(path = %path.display(), error = %err, "maintenance page: skipping {reason}");
}

/// State of the load-time directory walk.
struct Walker<'a> {
    /// The canonical page directory.
    root: &'a Path,
    assets: HashMap<String, Asset>,
    total: u64,
    /// Set once the file count or byte budget ran out: nothing more is added.
    exhausted: bool,
}

impl Walker<'_> {
    /// Visits `entries`, which live at `rel` (segments relative to the root).
    fn walk_entries(&mut self, entries: Vec<fs::DirEntry>, rel: &mut Vec<String>, depth: usize) {
        for entry in entries {
            let path = entry.path();
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                skip(&path, "non-UTF-8 file name");
                continue;
            };
            if name.starts_with('.') {
                continue; // hidden: .git, .DS_Store, editor swap files...
            }
            if !reachable_segment(&name) {
                skip(&path, "file whose name cannot be requested");
                continue;
            }
            // The template lives at the root only; it is not an asset.
            if depth == 0 && name == INDEX {
                continue;
            }
            // file_type() does not follow symlinks.
            let file_type = match entry.file_type() {
                Ok(t) => t,
                Err(e) => {
                    skip_err(&path, "unreadable entry", &e);
                    continue;
                }
            };
            if file_type.is_dir() {
                if depth + 1 >= MAX_DEPTH {
                    skip(&path, "directory nested too deep");
                    continue;
                }
                match read_dir_sorted(&path) {
                    Ok(children) => {
                        rel.push(name);
                        self.walk_entries(children, rel, depth + 1);
                        rel.pop();
                    }
                    Err(e) => {
                        skip_err(&path, "unreadable directory", &e);
                    }
                }
                continue;
            }
            let mut key_parts = rel.clone();
            key_parts.push(name);
            self.add_file(&path, file_type.is_symlink(), key_parts.join("/"));
        }
    }

    /// Adds one regular file (or symlink to one) if it is contained and fits.
    fn add_file(&mut self, path: &Path, is_symlink: bool, key: String) {
        if self.exhausted {
            return;
        }
        if self.assets.len() >= MAX_FILES {
            self.exhaust(path);
            return;
        }
        // SECURITY: canonicalize resolves every symlink; only files that end
        // up inside the canonical root are ever kept, so a link pointing out
        // of the directory can never be served.
        let canonical = match fs::canonicalize(path) {
            Ok(c) => c,
            Err(e) => {
                skip_err(path, "unresolvable file (dangling symlink?)", &e);
                return;
            }
        };
        if !canonical.starts_with(self.root) {
            tracing::warn!(
                path = %path.display(),
                target = %canonical.display(),
                "maintenance page: skipping symlink leading outside the page directory"
            );
            return;
        }
        let meta = match fs::metadata(&canonical) {
            Ok(m) => m,
            Err(e) => {
                skip_err(path, "unreadable file", &e);
                return;
            }
        };
        if meta.is_dir() {
            // SECURITY: symlinked directories are not followed at all (no
            // loops, no second route into or out of the tree).
            skip(path, "symlinked directory (not followed)");
            return;
        }
        if !meta.is_file() {
            // FIFOs, sockets, devices: reading them could block or never end.
            skip(path, "non-regular file");
            return;
        }
        if meta.len() > MAX_FILE_BYTES {
            skip(path, "file over the 8 MiB size limit");
            return;
        }
        if self.total + meta.len() > MAX_TOTAL_BYTES {
            self.exhaust(path);
            return;
        }
        let body = match read_limited(&canonical) {
            Ok(b) => b,
            Err(ReadError::TooLarge) => {
                skip(path, "file over the 8 MiB size limit");
                return;
            }
            Err(ReadError::Io(e)) => {
                skip_err(path, "unreadable file", &e);
                return;
            }
        };
        // Re-checked with the real size: the file may have grown since stat.
        if self.total + body.len() as u64 > MAX_TOTAL_BYTES {
            self.exhaust(path);
            return;
        }
        self.total += body.len() as u64;
        if is_symlink {
            tracing::debug!(
                path = %path.display(),
                target = %canonical.display(),
                "maintenance page: symlinked asset inside the directory"
            );
        }
        let content_type = content_type_for(&key);
        self.assets.insert(
            key,
            Asset {
                body: Bytes::from(body),
                content_type,
            },
        );
    }

    /// Stops the load from adding more assets; warns once.
    fn exhaust(&mut self, path: &Path) {
        if !self.exhausted {
            self.exhausted = true;
            tracing::warn!(
                path = %path.display(),
                max_total_bytes = MAX_TOTAL_BYTES,
                max_files = MAX_FILES,
                "maintenance page: asset budget exhausted, remaining files are not served"
            );
        }
    }
}

/// `Content-Type` from the file extension; text types get an explicit charset.
fn content_type_for(name: &str) -> HeaderValue {
    let mime = mime_guess::from_path(name).first_or_octet_stream();
    let text_like = mime.type_() == mime_guess::mime::TEXT
        || mime.subtype() == mime_guess::mime::JAVASCRIPT
        || mime.subtype() == mime_guess::mime::JSON
        || mime.suffix() == Some(mime_guess::mime::XML);
    let value = if text_like && mime.get_param(mime_guess::mime::CHARSET).is_none() {
        format!("{}; charset=utf-8", mime.essence_str())
    } else {
        mime.to_string()
    };
    HeaderValue::from_str(&value).unwrap_or_else(|_| HeaderValue::from_static("application/octet-stream"))
}

/// A page set of just this template, without assets: the fixture of the
/// rendering and answering tests.
#[cfg(test)]
pub(super) fn simple_pages(tpl: &str) -> PageSet {
    PageSet {
        template: tpl.to_string(),
        assets: HashMap::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::os::unix::fs::symlink;
    use tempfile::TempDir;

    /// Layout:
    /// ```text
    /// tmp/secret.txt              <- outside, must never be served
    /// tmp/outside/inner.txt       <- outside dir, target of a dir symlink
    /// tmp/page/index.html
    /// tmp/page/style.css
    /// tmp/page/css/site.css
    /// tmp/page/img/logo.svg, img/pic.png, fonts/f.woff2
    /// tmp/page/sub/index.html     <- a nested index.html is an ordinary asset
    /// tmp/page/.hidden, tmp/page/.git/config
    /// tmp/page/leak -> ../secret.txt        (file symlink out)
    /// tmp/page/leakdir -> ../outside        (dir symlink out)
    /// tmp/page/alias.css -> style.css       (symlink inside: kept)
    /// ```
    struct Fixture {
        _tmp: TempDir,
        root: PathBuf,
        dir: PathBuf,
    }

    const SECRET: &[u8] = b"TOP SECRET";

    fn fixture() -> Fixture {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().to_path_buf();
        let dir = root.join("page");
        fs::write(root.join("secret.txt"), SECRET).unwrap();
        fs::create_dir(root.join("outside")).unwrap();
        fs::write(root.join("outside/inner.txt"), SECRET).unwrap();
        for d in ["css", "img", "fonts", "sub", ".git"] {
            fs::create_dir_all(dir.join(d)).unwrap();
        }
        fs::write(dir.join("index.html"), "<p>{{message}}</p>").unwrap();
        fs::write(dir.join("style.css"), "body{}").unwrap();
        fs::write(dir.join("css/site.css"), "h1{}").unwrap();
        fs::write(dir.join("img/logo.svg"), "<svg/>").unwrap();
        fs::write(dir.join("img/pic.png"), b"\x89PNG").unwrap();
        fs::write(dir.join("fonts/f.woff2"), b"wOF2").unwrap();
        fs::write(dir.join("sub/index.html"), "nested").unwrap();
        fs::write(dir.join("caf\u{e9}.txt"), "cafe").unwrap();
        fs::write(dir.join(".hidden"), SECRET).unwrap();
        fs::write(dir.join(".git/config"), SECRET).unwrap();
        symlink("../secret.txt", dir.join("leak")).unwrap();
        symlink("../outside", dir.join("leakdir")).unwrap();
        symlink(root.join("secret.txt"), dir.join("abs-leak")).unwrap();
        symlink("style.css", dir.join("alias.css")).unwrap();
        Fixture { _tmp: tmp, root, dir }
    }

    fn body_of(a: Option<&Asset>) -> Option<&[u8]> {
        a.map(|a| &a.body[..])
    }

    #[test]
    fn loads_expected_assets() {
        let f = fixture();
        let p = PageSet::load(&f.dir).unwrap();
        assert_eq!(p.template(), "<p>{{message}}</p>");
        let mut keys: Vec<_> = p.assets.keys().cloned().collect();
        keys.sort();
        assert_eq!(
            keys,
            [
                "alias.css",
                "caf\u{e9}.txt",
                "css/site.css",
                "fonts/f.woff2",
                "img/logo.svg",
                "img/pic.png",
                "style.css",
                "sub/index.html"
            ]
        );
        assert_eq!(p.asset_count(), 8);
        assert_eq!(body_of(p.asset("/caf%C3%A9.txt")), Some(&b"cafe"[..]));
        assert_eq!(body_of(p.asset("/alias.css")), Some(&b"body{}"[..]));
    }

    #[test]
    fn content_types() {
        let f = fixture();
        let p = PageSet::load(&f.dir).unwrap();
        let ct = |path: &str| p.asset(path).unwrap().content_type.to_str().unwrap().to_string();
        assert_eq!(ct("/css/site.css"), "text/css; charset=utf-8");
        assert_eq!(ct("/img/logo.svg"), "image/svg+xml; charset=utf-8");
        assert_eq!(ct("/img/pic.png"), "image/png");
        assert_eq!(ct("/fonts/f.woff2"), "font/woff2");
        assert_eq!(body_of(p.asset("/css/site.css")), Some(&b"h1{}"[..]));
    }

    #[test]
    fn index_and_root_are_not_assets() {
        let f = fixture();
        let p = PageSet::load(&f.dir).unwrap();
        for path in ["/", "", "/index.html", "/./index.html", "/index.html/", "index.html"] {
            assert!(p.asset(path).is_none(), "{path:?}");
        }
        assert!(p.asset("/sub/index.html").is_some());
    }

    #[test]
    fn hidden_files_excluded() {
        let f = fixture();
        let p = PageSet::load(&f.dir).unwrap();
        for path in ["/.hidden", "/.git/config", "/%2ehidden", "/%2Egit/config"] {
            assert!(p.asset(path).is_none(), "{path:?}");
        }
    }

    #[test]
    fn traversal_attacks_rejected() {
        let f = fixture();
        let p = PageSet::load(&f.dir).unwrap();
        let long = format!("/{}", "a/".repeat(5 * 1024));
        let long_file = format!("/{}style.css", "x".repeat(10 * 1024));
        let attacks: Vec<&str> = vec![
            "/leak",
            "/abs-leak",
            "/leakdir/inner.txt",
            "/leakdir",
            "/../secret.txt",
            "/css/../../secret.txt",
            "/css/../style.css",
            "/%2e%2e/secret.txt",
            "/%2E%2E/secret.txt",
            "/%2e%2E/secret.txt",
            "/.%2e/secret.txt",
            "/css/%2e%2e/%2e%2e/secret.txt",
            "/%2e%2e%2fsecret.txt",
            "/..%2fsecret.txt",
            "/css%2fsite.css",
            "/css%2Fsite.css",
            "/..%5csecret.txt",
            "/css%5csite.css",
            "/css\\site.css",
            "/..\\secret.txt",
            "/%c0%ae%c0%ae/secret.txt",
            "/%C0%AE%C0%AE/secret.txt",
            "/%c0%afsecret.txt",
            "/%e0%80%ae%e0%80%ae/secret.txt",
            "/style.css%00",
            "/style.css%00.png",
            "/%00",
            "//etc/passwd",
            "//style.css",
            "/css//site.css",
            "/./style.css",
            "/css/./site.css",
            "/css/",
            "/css",
            "style.css",
            "*",
            "/etc/passwd",
            &long,
            &long_file,
        ];
        for path in attacks {
            let got = p.asset(path);
            assert!(got.is_none(), "{path:?} -> {:?}", got.map(|a| &a.body));
        }
        // Sanity: the legitimate spellings still work.
        assert!(p.asset("/style.css").is_some());
        assert!(p.asset("/%73tyle.css").is_some());
        assert!(p.asset("/css/site.css").is_some());
        // Just under / over the length cap.
        assert!(decode_asset_path(&format!("/{}", "a".repeat(MAX_PATH_BYTES - 1))).is_some());
        assert!(decode_asset_path(&format!("/{}", "a".repeat(MAX_PATH_BYTES))).is_none());
        // The secret really exists next to the dir.
        assert_eq!(fs::read(f.root.join("secret.txt")).unwrap(), SECRET);
    }

    #[test]
    fn no_loaded_asset_contains_secret() {
        let f = fixture();
        let p = PageSet::load(&f.dir).unwrap();
        assert!(p.assets.values().all(|a| &a.body[..] != SECRET));
    }

    #[test]
    fn symlinked_page_dir_still_contains() {
        let f = fixture();
        let link = f.root.join("pagelink");
        symlink(&f.dir, &link).unwrap();
        let p = PageSet::load(&link).unwrap();
        assert_eq!(p.asset_count(), 8);
        assert!(p.asset("/leak").is_none());
        assert!(p.asset("/style.css").is_some());
    }

    #[test]
    fn load_errors_name_the_path() {
        let tmp = tempfile::tempdir().unwrap();
        let missing = tmp.path().join("nope");
        let e = PageSet::load(&missing).unwrap_err();
        assert!(matches!(e, PageError::Io { .. }));
        assert!(e.to_string().starts_with(&format!("{}: ", missing.display())), "{e}");

        let file = tmp.path().join("file");
        fs::write(&file, "x").unwrap();
        let e = PageSet::load(&file).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("maintenance.dir \"{}\" is not a directory", file.display())
        );

        let empty = tmp.path().join("empty");
        fs::create_dir(&empty).unwrap();
        let e = PageSet::load(&empty).unwrap_err();
        let idx = empty.join("index.html");
        assert!(e.to_string().starts_with(&format!("{}: ", idx.display())), "{e}");
        assert!(e.to_string().contains("os error 2"), "{e}");

        fs::write(&idx, b"\xff\xfe bad").unwrap();
        let e = PageSet::load(&empty).unwrap_err();
        assert_eq!(e.to_string(), format!("{}: not valid UTF-8", idx.display()));
    }

    #[test]
    fn size_limits() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        fs::write(dir.join("index.html"), "x").unwrap();
        let big = fs::File::create(dir.join("big.bin")).unwrap();
        big.set_len(MAX_FILE_BYTES + 1).unwrap();
        let ok = fs::File::create(dir.join("ok.bin")).unwrap();
        ok.set_len(MAX_FILE_BYTES).unwrap();
        let p = PageSet::load(dir).unwrap();
        assert!(p.asset("/big.bin").is_none());
        assert_eq!(p.asset("/ok.bin").map(|a| a.body.len()), Some(MAX_FILE_BYTES as usize));

        // Total budget: 9 files of 8 MiB = 72 MiB > 64 MiB; 7 fit next to index.html.
        for i in 0..9 {
            let f = fs::File::create(dir.join(format!("f{i}.bin"))).unwrap();
            f.set_len(MAX_FILE_BYTES).unwrap();
        }
        fs::remove_file(dir.join("ok.bin")).unwrap();
        let p = PageSet::load(dir).unwrap();
        assert_eq!(p.asset_count(), 7);
        assert!(p.asset("/f0.bin").is_some());
        assert!(p.asset("/f8.bin").is_none());

        let tmp2 = tempfile::tempdir().unwrap();
        let idx = fs::File::create(tmp2.path().join("index.html")).unwrap();
        idx.set_len(MAX_FILE_BYTES + 1).unwrap();
        assert!(matches!(PageSet::load(tmp2.path()), Err(PageError::TooLarge { .. })));
    }

    #[test]
    fn fifo_is_skipped() {
        let tmp = tempfile::tempdir().unwrap();
        fs::write(tmp.path().join("index.html"), "x").unwrap();
        let fifo = tmp.path().join("pipe");
        let ok = std::process::Command::new("mkfifo").arg(&fifo).status();
        if !matches!(ok, Ok(s) if s.success()) {
            return; // mkfifo unavailable; nothing to test
        }
        // Must not block on the FIFO.
        let p = PageSet::load(tmp.path()).unwrap();
        assert_eq!(p.asset_count(), 0);
    }

    /// The embedded list must match `static/` exactly.
    #[test]
    fn embedded_matches_static_dir() {
        let candidates = [
            Path::new(file!()).parent().map(|p| p.join("../../static")),
            Some(Path::new(env!("CARGO_MANIFEST_DIR")).join("static")),
        ];
        let Some(dir) = candidates
            .into_iter()
            .flatten()
            .find(|d| d.join("index.html").is_file())
        else {
            panic!("static/ directory not found");
        };
        let loaded = PageSet::load(&dir).unwrap();
        let embedded = PageSet::embedded();
        assert_eq!(loaded.template(), embedded.template());
        assert_eq!(loaded.asset_count(), embedded.asset_count());
        for (k, a) in &loaded.assets {
            let e = embedded.assets.get(k).unwrap_or_else(|| panic!("{k} not embedded"));
            assert_eq!(a.body, e.body, "{k}");
            assert_eq!(a.content_type, e.content_type, "{k}");
        }
        let total: usize = embedded.template().len() + embedded.assets.values().map(|a| a.body.len()).sum::<usize>();
        assert!(total < 10 * 1024, "default page is {total} bytes");
    }

    #[test]
    fn embedded_page_shape() {
        let p = PageSet::embedded();
        let t = p.template();
        for needle in [
            "{{message}}",
            "{{retry_after_human}}",
            "{{until}}",
            "We'll be right back",
            "/.gatekeeper/page/style.css",
            "/.gatekeeper/page/maintenance.svg",
            // The one script: it reloads the page when maintenance ends; the
            // message and the time are in the HTML for visitors without JavaScript.
            "<script src=\"/.gatekeeper/refresh.js\" defer></script>",
        ] {
            assert!(t.contains(needle), "{needle}");
        }
        assert_eq!(t.matches("<script").count(), 1);
        assert!(!t.contains("http://") && !t.contains("https://"));
        assert!(p.asset("/style.css").is_some());
        assert_eq!(
            p.asset("/maintenance.svg").unwrap().content_type,
            "image/svg+xml; charset=utf-8"
        );
        assert!(p.asset("/index.html").is_none());
    }

    /// Segments that exercise the decoder: legit names, traversal spellings,
    /// encoded separators, overlong UTF-8, control bytes, the hidden files and
    /// the symlinks leading out.
    fn segment() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("style.css".to_string()),
            Just("css".to_string()),
            Just("site.css".to_string()),
            Just("img".to_string()),
            Just("logo.svg".to_string()),
            Just("index.html".to_string()),
            Just("sub".to_string()),
            Just("leak".to_string()),
            Just("abs-leak".to_string()),
            Just("leakdir".to_string()),
            Just("inner.txt".to_string()),
            Just("secret.txt".to_string()),
            Just("outside".to_string()),
            Just(".hidden".to_string()),
            Just(".git".to_string()),
            Just("config".to_string()),
            Just("".to_string()),
            Just(".".to_string()),
            Just("..".to_string()),
            Just("%2e%2e".to_string()),
            Just("%2E%2e".to_string()),
            Just(".%2e".to_string()),
            Just("%2f".to_string()),
            Just("%2F".to_string()),
            Just("%5c".to_string()),
            Just("\\".to_string()),
            Just("%c0%ae".to_string()),
            Just("%c0%af".to_string()),
            Just("%00".to_string()),
            Just("%".to_string()),
            Just("%zz".to_string()),
            "[a-z.%/\\\\]{0,12}",
            any::<String>(),
            // Arbitrary bytes, percent-encoded.
            proptest::collection::vec(any::<u8>(), 0..8)
                .prop_map(|b| b.iter().map(|x| format!("%{x:02x}")).collect::<String>()),
            // Legit names with arbitrary chars percent-encoded.
            (
                prop::sample::select(vec!["style.css", "css", "site.css", "leak", "secret.txt"]),
                any::<u64>()
            )
                .prop_map(|(s, mask)| encode_some(s, mask)),
        ]
    }

    /// Percent-encodes the bytes of `s` selected by the bits of `mask`.
    fn encode_some(s: &str, mask: u64) -> String {
        s.bytes()
            .enumerate()
            .map(|(i, b)| {
                if (mask >> (i % 64)) & 1 == 1 {
                    format!("%{b:02X}")
                } else {
                    char::from(b).to_string()
                }
            })
            .collect()
    }

    fn path_strategy() -> impl Strategy<Value = String> {
        prop_oneof![
            any::<String>(),
            proptest::collection::vec(segment(), 0..6).prop_map(|s| format!("/{}", s.join("/"))),
            proptest::collection::vec(segment(), 0..6).prop_map(|s| s.join("/")),
            // Paths that do hit, so the "is one of the loaded files" check bites.
            (
                prop::sample::select(vec![
                    "/style.css",
                    "/alias.css",
                    "/css/site.css",
                    "/img/logo.svg",
                    "/sub/index.html",
                    "/index.html",
                    "/leak",
                    "/leakdir/inner.txt",
                ]),
                any::<u64>()
            )
                .prop_map(|(s, mask)| {
                    // Keep the separators literal; encode anything else at random.
                    s.split('/')
                        .map(|seg| encode_some(seg, mask))
                        .collect::<Vec<_>>()
                        .join("/")
                }),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 4000, ..ProptestConfig::default() })]

        #[test]
        fn asset_only_returns_loaded_files(path in path_strategy()) {
            thread_local! {
                static FIX: (Fixture, PageSet) = {
                    let f = fixture();
                    let p = PageSet::load(&f.dir).unwrap();
                    (f, p)
                };
            }
            FIX.with(|(_, p)| {
                if let Some(a) = p.asset(&path) {
                    // Same object as one of the loaded assets...
                    prop_assert!(p.assets.values().any(|v| std::ptr::eq(v, a)));
                    // ...and never the secret (which no loaded file contains).
                    prop_assert_ne!(&a.body[..], SECRET);
                    prop_assert!(path.len() <= MAX_PATH_BYTES);
                    // A hit decodes to exactly a key without any traversal bits.
                    let key = decode_asset_path(&path).unwrap();
                    let bad = |s: &str| s == ".." || s == "." || s.is_empty() || s.starts_with('.');
                    prop_assert!(!key.split('/').any(bad));
                }
                Ok(())
            })?;
        }
    }
}
