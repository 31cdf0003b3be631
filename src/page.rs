//! The maintenance page and everything it needs to be answered.
//!
//! This module owns:
//! - loading the page directory (`maintenance.dir`) into memory once, at config
//!   load time ([`PageSet::load`]), or using the page compiled into the binary
//!   ([`PageSet::embedded`]);
//! - mapping a raw request path to one of the loaded assets ([`PageSet::asset`]);
//! - filling the template's placeholders ([`render`]);
//! - content negotiation between HTML and JSON ([`prefers_json`]);
//! - building the 503 maintenance response, asset responses and the proxy's
//!   small error pages ([`maintenance_response`], [`asset_response`],
//!   [`error_response`]).
//!
//! SECURITY: nothing is ever read from disk on the request path. At load time
//! only regular files whose canonical path lies inside the canonical page
//! directory become assets; a request can only ever select one of those by an
//! exact map lookup, so no input can reach a file outside the directory.

use std::collections::HashMap;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use http::header::{
    HeaderValue, CACHE_CONTROL, CONTENT_LENGTH, CONTENT_TYPE, RETRY_AFTER, VARY, X_CONTENT_TYPE_OPTIONS,
};
use http::{Method, Response, StatusCode};
use http_body_util::Full;
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

const HTML_UTF8: &str = "text/html; charset=utf-8";
const JSON: &str = "application/json";

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
const EMBEDDED_TEMPLATE: &str = include_str!("../static/index.html");
const EMBEDDED_ASSETS: &[(&str, &[u8])] = &[
    ("style.css", include_bytes!("../static/style.css")),
    ("maintenance.svg", include_bytes!("../static/maintenance.svg")),
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

/// The page with its placeholders filled, prepared once per toggle/config
/// change (not per request).
#[derive(Clone, Debug)]
pub struct Rendered {
    /// The HTML page, placeholders filled.
    pub html: Bytes,
    /// The message, unescaped, for the JSON answer.
    pub message: String,
    /// End of the scheduled window (RFC 3339), for the JSON answer.
    pub until: Option<String>,
    /// The Retry-After the page was rendered with.
    pub retry_after: u64,
    /// The HTML answer's headers with that Retry-After, built once and
    /// copied into every maintenance answer.
    pub html_headers: http::HeaderMap,
}

/// Fills `{{message}}`, `{{retry_after}}` and `{{until}}` (empty when `None`)
/// in the template. Message and `until` are HTML-escaped.
pub fn render(
    pages: &PageSet,
    message: &str,
    retry_after_secs: u64,
    until: Option<&str>,
    until_human: Option<&str>,
) -> Rendered {
    let tpl = pages.template();
    let mut out = String::with_capacity(tpl.len() + message.len() * 2);
    // Single pass over the template: substituted text is never rescanned, so
    // a message containing "{{until}}" stays literal.
    let mut rest = tpl;
    while let Some(pos) = rest.find("{{") {
        out.push_str(&rest[..pos]);
        let tail = &rest[pos..];
        if let Some(after) = tail.strip_prefix("{{message}}") {
            escape_html_into(&mut out, message);
            rest = after;
        } else if let Some(after) = tail.strip_prefix("{{retry_after}}") {
            out.push_str(&retry_after_secs.to_string());
            rest = after;
        } else if let Some(after) = tail.strip_prefix("{{until}}") {
            escape_html_into(&mut out, until.unwrap_or(""));
            rest = after;
        } else if let Some(after) = tail.strip_prefix("{{until_human}}") {
            escape_html_into(&mut out, until_human.or(until).unwrap_or(""));
            rest = after;
        } else {
            out.push_str("{{");
            rest = &tail[2..];
        }
    }
    out.push_str(rest);
    let html = Bytes::from(out);
    let mut html_headers = http::HeaderMap::with_capacity(6);
    page_headers(&mut html_headers, HeaderValue::from_static(HTML_UTF8), html.len());
    html_headers.insert(RETRY_AFTER, HeaderValue::from(retry_after_secs));
    html_headers.insert(VARY, HeaderValue::from_static("Accept"));
    Rendered {
        html,
        message: message.to_string(),
        until: until.map(str::to_string),
        retry_after: retry_after_secs,
        html_headers,
    }
}

/// HTML-escapes text for both element content and quoted attribute values.
fn escape_html_into(out: &mut String, s: &str) {
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(c),
        }
    }
}

/// How well one media range matches a target type: `(q in thousandths, specificity)`.
type Match = (u16, u8);

/// true when the Accept header prefers application/json over text/html
/// (q-values honoured; `*/*` alone → html; "application/json, text/plain, */*"
/// → json; "text/html,application/json" → html; malformed → html).
///
/// Each type's quality comes from its most specific matching range. JSON wins
/// on a higher q, or on equal non-zero q when it was named more specifically
/// (e.g. `application/json` against `*/*`). A full tie goes to HTML.
pub fn prefers_json(accept: Option<&HeaderValue>) -> bool {
    let Some(value) = accept.and_then(|v| v.to_str().ok()) else {
        return false;
    };
    // curl's and most API clients' value: both match equally, HTML wins.
    if value == "*/*" {
        return false;
    }
    let mut json: Option<Match> = None;
    let mut html: Option<Match> = None;
    for element in value.split(',') {
        let element = element.trim();
        if element.is_empty() {
            continue; // RFC 9110 allows empty list elements
        }
        let Some((ty, sub, q)) = parse_media_range(element) else {
            return false;
        };
        for (target, best) in [(("application", "json"), &mut json), (("text", "html"), &mut html)] {
            let specificity = if ty == "*" && sub == "*" {
                1
            } else if ty.eq_ignore_ascii_case(target.0) && sub == "*" {
                2
            } else if ty.eq_ignore_ascii_case(target.0) && sub.eq_ignore_ascii_case(target.1) {
                3
            } else {
                continue;
            };
            if best.is_none_or(|(_, s)| specificity > s) {
                *best = Some((q, specificity));
            }
        }
    }
    let (jq, js) = json.unwrap_or((0, 0));
    let (hq, hs) = html.unwrap_or((0, 0));
    jq > hq || (jq == hq && jq > 0 && js > hs)
}

/// Parses `type/subtype *( ; param )` and returns the q-value in thousandths.
fn parse_media_range(element: &str) -> Option<(&str, &str, u16)> {
    let mut parts = element.split(';');
    let range = parts.next()?.trim();
    let (ty, sub) = range.split_once('/')?;
    let valid_token = |t: &str| {
        !t.is_empty()
            && t.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
    };
    if !valid_token(ty) || !valid_token(sub) || (ty == "*" && sub != "*") {
        return None;
    }
    let mut q = 1000;
    for param in parts {
        let param = param.trim();
        if param.is_empty() {
            continue;
        }
        let (name, val) = param.split_once('=')?;
        if name.trim().eq_ignore_ascii_case("q") {
            q = parse_qvalue(val.trim())?;
            // Anything after q is an accept-extension; ignored.
            break;
        }
    }
    Some((ty, sub, q))
}

/// `qvalue = ( "0" [ "." 0*3DIGIT ] ) / ( "1" [ "." 0*3("0") ] )`, in thousandths.
fn parse_qvalue(s: &str) -> Option<u16> {
    let (int, frac) = match s.split_once('.') {
        Some((i, f)) => (i, f),
        None => (s, ""),
    };
    if frac.len() > 3 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let mut thousandths: u16 = 0;
    for (i, b) in frac.bytes().enumerate() {
        thousandths += u16::from(b - b'0') * [100, 10, 1][i];
    }
    match int {
        "0" => Some(thousandths),
        "1" if thousandths == 0 => Some(1000),
        _ => None,
    }
}

/// The JSON maintenance body:
/// `{"status":"maintenance","message":...,"retry_after":N[,"until":...]}`.
fn json_body(r: &Rendered, retry_after_secs: u64) -> String {
    // Built by hand to keep the documented key order; serde_json does the
    // string escaping (Value's Display cannot fail).
    let mut s = format!(
        "{{\"status\":\"maintenance\",\"message\":{},\"retry_after\":{}",
        serde_json::Value::from(r.message.as_str()),
        retry_after_secs
    );
    if let Some(until) = &r.until {
        s.push_str(",\"until\":");
        s.push_str(&serde_json::Value::from(until.as_str()).to_string());
    }
    s.push('}');
    s
}

/// Builds a response with the headers every answer of this module carries.
fn respond(status: StatusCode, content_type: HeaderValue, body: Bytes, method: &Method) -> Response<Full<Bytes>> {
    let mut h = http::HeaderMap::with_capacity(4);
    page_headers(&mut h, content_type, body.len());
    answer(status, h, body, method)
}

/// `body` with `headers`; for HEAD the same headers (including the would-be
/// Content-Length) and no body.
fn answer(status: StatusCode, headers: http::HeaderMap, body: Bytes, method: &Method) -> Response<Full<Bytes>> {
    let body = if method == Method::HEAD { Bytes::new() } else { body };
    let mut resp = Response::new(Full::new(body));
    *resp.status_mut() = status;
    *resp.headers_mut() = headers;
    resp
}

fn page_headers(h: &mut http::HeaderMap, content_type: HeaderValue, len: usize) {
    h.insert(CONTENT_TYPE, content_type);
    h.insert(CONTENT_LENGTH, HeaderValue::from(len));
    // The page and its assets may change at the next flip; never cache them.
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
}

/// The 503 answer. Headers: Content-Type (text/html; charset=utf-8 or
/// application/json), Retry-After, Cache-Control: no-store, Content-Length,
/// Vary: Accept. HEAD → empty body, same headers.
pub fn maintenance_response(
    r: &Rendered,
    method: &Method,
    accept: Option<&HeaderValue>,
    retry_after_secs: u64,
) -> Response<Full<Bytes>> {
    let json = prefers_json(accept).then(|| Bytes::from(json_body(r, retry_after_secs)));
    // The rendering's headers, changed where this answer differs: a copy costs
    // a fraction of inserting them one by one.
    let mut h = r.html_headers.clone();
    if let Some(body) = &json {
        h.insert(CONTENT_TYPE, HeaderValue::from_static(JSON));
        h.insert(CONTENT_LENGTH, HeaderValue::from(body.len()));
    }
    if retry_after_secs != r.retry_after {
        h.insert(RETRY_AFTER, HeaderValue::from(retry_after_secs));
    }
    let body = json.unwrap_or_else(|| r.html.clone());
    answer(StatusCode::SERVICE_UNAVAILABLE, h, body, method)
}

/// 200 with the asset: Content-Type, Content-Length, Cache-Control: no-store
/// (the page may change at the next flip). HEAD → no body.
pub fn asset_response(a: &Asset, method: &Method) -> Response<Full<Bytes>> {
    respond(StatusCode::OK, a.content_type.clone(), a.body.clone(), method)
}

/// Small self-contained HTML error pages used by the proxy: 502 "Bad Gateway"
/// and 504 "Gateway Timeout" (and 413, 400; any other status gets a generic
/// page). Cache-Control: no-store, text/html.
pub fn error_response(status: StatusCode) -> Response<Full<Bytes>> {
    let detail = match status {
        StatusCode::BAD_GATEWAY => "The server could not get a valid response from the application.",
        StatusCode::GATEWAY_TIMEOUT => "The application took too long to respond.",
        StatusCode::PAYLOAD_TOO_LARGE => "The request body is too large.",
        StatusCode::BAD_REQUEST => "The request could not be understood.",
        _ => "The request could not be completed.",
    };
    let title = format!("{} {}", status.as_u16(), status.canonical_reason().unwrap_or("Error"));
    let html = format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <meta name=\"color-scheme\" content=\"light dark\"><title>{title}</title>\
         <style>body{{font:16px/1.5 system-ui,sans-serif;margin:0;min-height:100vh;\
         display:flex;align-items:center;justify-content:center;padding:1rem;\
         box-sizing:border-box}}\
         main{{max-width:32rem;text-align:center}}h1{{font-size:1.6rem;margin:0 0 .5rem}}\
         p{{margin:0;opacity:.75}}</style></head>\
         <body><main><h1>{title}</h1><p>{detail}</p></main></body></html>\n"
    );
    respond(
        status,
        HeaderValue::from_static(HTML_UTF8),
        Bytes::from(html),
        &Method::GET,
    )
}

/// The page for a message, retry time and optional window end.
pub fn render_at(pages: &PageSet, message: &str, retry_after: u64, until: Option<jiff::Timestamp>) -> Rendered {
    let rfc = until.map(|u| u.to_string());
    let human = until.map(human_until);
    render(pages, message, retry_after, rfc.as_deref(), human.as_deref())
}

/// "2026-12-01T02:30:00Z" → "02:30 UTC on 2026-12-01": for people, script-free.
pub fn human_until(t: jiff::Timestamp) -> String {
    t.strftime("%H:%M UTC on %Y-%m-%d").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
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
            Path::new(file!()).parent().map(|p| p.join("../static")),
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
            "{{retry_after}}",
            "{{until}}",
            "We'll be right back",
            "/style.css",
            "/maintenance.svg",
        ] {
            assert!(t.contains(needle), "{needle}");
        }
        assert!(!t.contains("<script"));
        assert!(!t.contains("http://") && !t.contains("https://"));
        assert!(p.asset("/style.css").is_some());
        assert_eq!(
            p.asset("/maintenance.svg").unwrap().content_type,
            "image/svg+xml; charset=utf-8"
        );
        assert!(p.asset("/index.html").is_none());
    }

    #[test]
    fn prebuilt_page_headers_match_the_built_ones() {
        use http_body::Body as _;
        let r = render(&simple_pages("<p>{{retry_after}}</p>"), "m", 600, None, None);
        for method in [Method::GET, Method::HEAD] {
            let pre = maintenance_response(&r, &method, None, 600);
            let built = maintenance_response(&r, &method, None, 599);
            assert_eq!(pre.status(), StatusCode::SERVICE_UNAVAILABLE);
            assert_eq!(pre.status(), built.status());
            let names = |resp: &Response<Full<Bytes>>| {
                let mut v: Vec<String> = resp.headers().keys().map(|k| k.to_string()).collect();
                v.sort();
                v
            };
            assert_eq!(names(&pre), names(&built));
            assert_eq!(pre.headers()["retry-after"], "600");
            assert_eq!(built.headers()["retry-after"], "599");
            assert_eq!(pre.headers()["content-length"], r.html.len().to_string().as_str());
            assert_eq!(
                pre.body().size_hint().exact(),
                Some(if method == Method::HEAD { 0 } else { r.html.len() as u64 })
            );
        }
    }

    fn simple_pages(tpl: &str) -> PageSet {
        PageSet {
            template: tpl.to_string(),
            assets: HashMap::new(),
        }
    }

    #[test]
    fn render_escapes_and_fills() {
        let p = simple_pages("<p>{{message}}</p><b>{{retry_after}}</b><t d=\"{{until}}\">{{until}}</t>{{other}} {{");
        let r = render(&p, "<script>alert('x')</script> & \"q\"", 120, None, None);
        assert_eq!(
            std::str::from_utf8(&r.html).unwrap(),
            "<p>&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; &quot;q&quot;</p><b>120</b><t d=\"\"></t>{{other}} {{"
        );
        assert_eq!(r.message, "<script>alert('x')</script> & \"q\"");
        assert_eq!(r.until, None);

        let r = render(&p, "{{until}}{{retry_after}}", 5, Some("2030-01-01T00:00:00Z"), None);
        assert_eq!(
            std::str::from_utf8(&r.html).unwrap(),
            "<p>{{until}}{{retry_after}}</p><b>5</b><t d=\"2030-01-01T00:00:00Z\">2030-01-01T00:00:00Z</t>{{other}} {{"
        );
        assert_eq!(r.until.as_deref(), Some("2030-01-01T00:00:00Z"));
    }

    #[test]
    fn render_embedded() {
        let r = render(&PageSet::embedded(), "Upgrading <db>", 300, None, None);
        let html = std::str::from_utf8(&r.html).unwrap();
        assert!(html.contains("Upgrading &lt;db&gt;"));
        assert!(html.contains("300"));
        assert!(!html.contains("{{"));
    }

    #[test]
    fn accept_negotiation() {
        let cases: &[(Option<&str>, bool)] = &[
            (None, false),
            (Some(""), false),
            (Some("*/*"), false),
            (Some("application/json"), true),
            (Some("Application/JSON"), true),
            (Some("application/json; charset=utf-8"), true),
            (Some("application/json, text/plain, */*"), true),
            (Some("text/html,application/json"), false),
            (Some("application/json,text/html"), false),
            (Some("text/html"), false),
            (Some("text/html;q=0.5, application/json"), true),
            (Some("application/json;q=0.9, text/html"), false),
            (Some("application/json;q=0.9, text/html;q=0.8"), true),
            (
                Some("text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"),
                false,
            ),
            (Some("application/*"), true),
            (Some("application/*, text/*"), false),
            (Some("application/json, text/*"), true),
            (Some("application/json;q=0"), false),
            (Some("application/json;q=0, */*"), false),
            (Some("text/html;q=0, */*"), true),
            (Some("text/plain"), false),
            (Some("application/json;q=1.0"), true),
            (Some("application/json;q=0.001, text/html;q=0"), true),
            (Some("application/json,,text/html;q=0.1"), true),
            (Some("application/json;q=2"), false),
            (Some("application/json;q=abc"), false),
            (Some("application/json;q=0.0001"), false),
            (Some("application/json;q=1.5"), false),
            (Some("application/json;q"), false),
            (Some("json"), false),
            (Some("application/json, garbage"), false),
            (Some("*/json"), false),
            (Some("application/"), false),
            (Some("application/json;level=1;q=0.5, text/html;q=0.4"), true),
        ];
        for (accept, want) in cases {
            let hv = accept.map(|a| HeaderValue::from_str(a).unwrap());
            assert_eq!(prefers_json(hv.as_ref()), *want, "{accept:?}");
        }
        let bin = HeaderValue::from_bytes(b"application/json\xff").unwrap();
        assert!(!prefers_json(Some(&bin)));
    }

    async fn collect(resp: Response<Full<Bytes>>) -> (http::response::Parts, Bytes) {
        let (parts, body) = resp.into_parts();
        let bytes = body.collect().await.unwrap().to_bytes();
        (parts, bytes)
    }

    /// `Full` resolves immediately, so a trivial executor suffices.
    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        use std::task::{Context, Poll, Waker};
        let mut f = std::pin::pin!(f);
        struct Noop;
        impl std::task::Wake for Noop {
            fn wake(self: std::sync::Arc<Self>) {}
        }
        let waker = Waker::from(std::sync::Arc::new(Noop));
        let mut cx = Context::from_waker(&waker);
        loop {
            if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
                return v;
            }
        }
    }

    #[test]
    fn maintenance_html_and_head() {
        let r = render(&simple_pages("<p>{{message}}</p>"), "Back soon", 60, None, None);
        let (parts, body) = block_on(collect(maintenance_response(&r, &Method::GET, None, 60)));
        assert_eq!(parts.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(parts.headers[CONTENT_TYPE], "text/html; charset=utf-8");
        assert_eq!(parts.headers[RETRY_AFTER], "60");
        assert_eq!(parts.headers[CACHE_CONTROL], "no-store");
        assert_eq!(parts.headers[CONTENT_LENGTH], "16");
        assert_eq!(parts.headers[VARY], "Accept");
        assert_eq!(&body[..], b"<p>Back soon</p>");

        let (head, body) = block_on(collect(maintenance_response(&r, &Method::HEAD, None, 60)));
        assert!(body.is_empty());
        assert_eq!(head.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(head.headers, parts.headers);
    }

    #[test]
    fn maintenance_json_exact() {
        let r = render(&simple_pages("x"), "Down for \"upgrades\" <b>", 120, None, None);
        let json = HeaderValue::from_static("application/json");
        let (parts, body) = block_on(collect(maintenance_response(&r, &Method::GET, Some(&json), 120)));
        assert_eq!(parts.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(parts.headers[CONTENT_TYPE], "application/json");
        assert_eq!(parts.headers[RETRY_AFTER], "120");
        assert_eq!(parts.headers[CACHE_CONTROL], "no-store");
        let expected = r#"{"status":"maintenance","message":"Down for \"upgrades\" <b>","retry_after":120}"#;
        assert_eq!(std::str::from_utf8(&body).unwrap(), expected);
        assert_eq!(parts.headers[CONTENT_LENGTH], expected.len().to_string().as_str());

        let r = render(&simple_pages("x"), "m", 30, Some("2030-01-01T00:00:00Z"), None);
        let (_, body) = block_on(collect(maintenance_response(&r, &Method::GET, Some(&json), 30)));
        assert_eq!(
            std::str::from_utf8(&body).unwrap(),
            r#"{"status":"maintenance","message":"m","retry_after":30,"until":"2030-01-01T00:00:00Z"}"#
        );
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["retry_after"], 30);

        let (head, body) = block_on(collect(maintenance_response(&r, &Method::HEAD, Some(&json), 30)));
        assert!(body.is_empty());
        assert_eq!(head.headers[CONTENT_TYPE], "application/json");
        assert_eq!(head.headers[CONTENT_LENGTH], "86");
    }

    #[test]
    fn asset_response_get_and_head() {
        let a = Asset {
            body: Bytes::from_static(b"body{}"),
            content_type: HeaderValue::from_static("text/css; charset=utf-8"),
        };
        let (parts, body) = block_on(collect(asset_response(&a, &Method::GET)));
        assert_eq!(parts.status, StatusCode::OK);
        assert_eq!(parts.headers[CONTENT_TYPE], "text/css; charset=utf-8");
        assert_eq!(parts.headers[CONTENT_LENGTH], "6");
        assert_eq!(parts.headers[CACHE_CONTROL], "no-store");
        assert_eq!(parts.headers[X_CONTENT_TYPE_OPTIONS], "nosniff");
        assert_eq!(&body[..], b"body{}");
        let (head, body) = block_on(collect(asset_response(&a, &Method::HEAD)));
        assert!(body.is_empty());
        assert_eq!(head.headers, parts.headers);
    }

    #[test]
    fn error_pages() {
        for (status, text) in [
            (StatusCode::BAD_GATEWAY, "502 Bad Gateway"),
            (StatusCode::GATEWAY_TIMEOUT, "504 Gateway Timeout"),
            (StatusCode::PAYLOAD_TOO_LARGE, "413 Payload Too Large"),
            (StatusCode::BAD_REQUEST, "400 Bad Request"),
            (StatusCode::from_u16(599).unwrap(), "599 Error"),
        ] {
            let (parts, body) = block_on(collect(error_response(status)));
            assert_eq!(parts.status, status);
            assert_eq!(parts.headers[CONTENT_TYPE], "text/html; charset=utf-8");
            assert_eq!(parts.headers[CACHE_CONTROL], "no-store");
            assert_eq!(parts.headers[CONTENT_LENGTH], body.len().to_string().as_str());
            let html = std::str::from_utf8(&body).unwrap();
            assert!(html.contains(&format!("<title>{text}</title>")), "{html}");
            assert!(!html.contains("http"), "self-contained");
        }
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

        #[test]
        fn prefers_json_never_panics(s in "[ -~]{0,64}") {
            if let Ok(hv) = HeaderValue::from_str(&s) {
                let _ = prefers_json(Some(&hv));
            }
        }

        #[test]
        fn render_never_rescans(msg in any::<String>(), secs in any::<u64>()) {
            let r = render(&simple_pages("{{message}}|{{retry_after}}"), &msg, secs, None, None);
            let html = std::str::from_utf8(&r.html).unwrap().to_string();
            let mut expected = String::new();
            escape_html_into(&mut expected, &msg);
            prop_assert_eq!(html, format!("{expected}|{secs}"));
        }
    }
}
