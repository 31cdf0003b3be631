//! Named bypass tokens: one per person, each with its own expiry, revocable
//! alone. Only a SHA-256 of each token is stored, in `bypass.tokens_file`
//! (default `tokens` next to the toggle), one token a line:
//!
//! ```text
//! # name  sha256(token)  created  expires ("-": never)
//! alice 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08 2026-05-01T10:00:00Z 2026-05-31T10:00:00Z
//! ```
//!
//! A token's cookie is `<name>.<expiry>.<hex HMAC-SHA256("<name>.<expiry>")>`
//! keyed by the stored hash, so removing the line (`revoke`) or replacing the
//! token ends every cookie it set, as soon as the file is reloaded. The daemon
//! loads the file with the config; the request path only reads memory.

use std::fmt::Write as _;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use http::HeaderMap;
use sha2::{Digest, Sha256};

use crate::bypass;
use crate::config::Bypass;

/// Longest token name; names are `[A-Za-z0-9_-]`, so they never contain the cookie's `.`.
const MAX_NAME: usize = 64;

/// One named token, as the file holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token {
    pub name: Arc<str>,
    /// SHA-256 of the token; also the key of its cookies' MAC.
    hash: [u8; 32],
    pub created: jiff::Timestamp,
    pub expires: Option<jiff::Timestamp>,
}

impl Token {
    fn live_at(&self, now: i64) -> bool {
        self.expires.is_none_or(|e| e.as_second() > now)
    }

    /// The cookie value and its lifetime in seconds for a visit at `now`:
    /// `ttl`, cut short by the token's own expiry.
    pub fn cookie(&self, now: i64, ttl: Duration) -> (String, u64) {
        let ttl = i64::try_from(ttl.as_secs().max(1)).unwrap_or(i64::MAX);
        let mut expires = now.saturating_add(ttl);
        if let Some(e) = self.expires {
            expires = expires.min(e.as_second());
        }
        let msg = format!("{}.{expires}", self.name);
        let value = format!("{msg}.{}", bypass::mac_hex(&self.hash, &msg));
        (value, u64::try_from(expires.saturating_sub(now)).unwrap_or(0).max(1))
    }
}

/// A named token a request presents, and whether through the bypass link.
#[derive(Debug, Clone, Copy)]
pub struct Presented<'a> {
    pub token: &'a Token,
    pub link: bool,
}

/// Every named token, in file order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TokenStore {
    tokens: Vec<Token>,
}

/// A line of the tokens file that is not a token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct LineError {
    pub line: usize,
    pub message: String,
}

/// Why the tokens file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read {0}: {1}")]
    Read(String, std::io::Error),
    #[error("{file}:{}: {}", .error.line, .error.message)]
    Line { file: String, error: LineError },
}

/// Why `add` or `revoke` cannot be done.
#[derive(Debug, thiserror::Error)]
pub enum EditError {
    #[error("{0:?} is not a token name (1 to 64 letters, digits, '-' or '_')")]
    BadName(String),
    #[error("a token named {0:?} exists; `gatekeeper token revoke {0}` first")]
    Exists(String),
    #[error("no token named {0:?}")]
    Unknown(String),
    #[error("no randomness for a token: {0}")]
    Random(String),
    #[error("--ttl is too long")]
    TooLong,
}

fn valid_name(n: &str) -> bool {
    !n.is_empty() && n.len() <= MAX_NAME && n.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn parse_time(s: &str, what: &str) -> Result<jiff::Timestamp, String> {
    s.parse()
        .map_err(|e| format!("{what} {s:?} is not an RFC 3339 time: {e}"))
}

fn parse_line(line: &str) -> Result<Token, String> {
    let fields: Vec<&str> = line.split_whitespace().collect();
    let [name, hash, created, expires] = fields[..] else {
        return Err(format!(
            "expected `name sha256-hex created expires`, found {} field(s)",
            fields.len()
        ));
    };
    if !valid_name(name) {
        return Err(format!("{name:?} is not a token name (letters, digits, '-', '_')"));
    }
    let hash: [u8; 32] = bypass::decode_hex(hash)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| format!("{hash:?} is not a SHA-256 in hex (64 characters)"))?;
    Ok(Token {
        name: Arc::from(name),
        hash,
        created: parse_time(created, "created")?,
        expires: match expires {
            "-" => None,
            e => Some(parse_time(e, "expires")?),
        },
    })
}

impl TokenStore {
    /// Parses the file's text; the first bad line is the error.
    pub fn parse(text: &str) -> Result<TokenStore, LineError> {
        let mut tokens: Vec<Token> = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let line = raw.split_once('#').map_or(raw, |(l, _)| l).trim();
            if line.is_empty() {
                continue;
            }
            let err = |message| LineError { line: i + 1, message };
            let t = parse_line(line).map_err(err)?;
            if tokens.iter().any(|o| o.name == t.name) {
                return Err(err(format!("token {:?} is listed twice", &*t.name)));
            }
            tokens.push(t);
        }
        Ok(TokenStore { tokens })
    }

    /// Reads the file; a missing file holds no tokens.
    pub fn load(path: &Path) -> Result<TokenStore, LoadError> {
        let name = path.display().to_string();
        match std::fs::read_to_string(path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(TokenStore::default()),
            Err(e) => Err(LoadError::Read(name, e)),
            Ok(text) => TokenStore::parse(&text).map_err(|error| LoadError::Line { file: name, error }),
        }
    }

    /// The file's text, with a header that says what the columns are.
    pub fn to_text(&self) -> String {
        let mut out = String::from(
            "# gatekeeper named bypass tokens (`gatekeeper token add|list|revoke`); hashes only.\n\
             # name  sha256(token)  created  expires (\"-\": never)\n",
        );
        for t in &self.tokens {
            let hex: String = t.hash.iter().map(|b| format!("{b:02x}")).collect();
            let expires = t.expires.map_or_else(|| "-".to_string(), |e| e.to_string());
            let _ = writeln!(out, "{} {hex} {} {expires}", t.name, t.created);
        }
        out
    }

    pub fn tokens(&self) -> &[Token] {
        &self.tokens
    }

    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// Adds a fresh 128-bit token named `name`; returns it (the only time it is known).
    pub fn add(&mut self, name: &str, ttl: Option<Duration>, now: jiff::Timestamp) -> Result<String, EditError> {
        if !valid_name(name) {
            return Err(EditError::BadName(name.to_string()));
        }
        if self.tokens.iter().any(|t| &*t.name == name) {
            return Err(EditError::Exists(name.to_string()));
        }
        let expires = match ttl {
            None => None,
            Some(d) => {
                let span = jiff::SignedDuration::try_from(d).map_err(|_| EditError::TooLong)?;
                let end = now.checked_add(span).map_err(|_| EditError::TooLong)?;
                Some(jiff::Timestamp::from_second(end.as_second()).map_err(|_| EditError::TooLong)?)
            }
        };
        let mut b = [0u8; 16];
        getrandom::fill(&mut b).map_err(|e| EditError::Random(e.to_string()))?;
        let secret: String = b.iter().map(|x| format!("{x:02x}")).collect();
        self.tokens.push(Token {
            name: Arc::from(name),
            hash: Sha256::digest(secret.as_bytes()).into(),
            created: jiff::Timestamp::from_second(now.as_second()).unwrap_or(now),
            expires,
        });
        Ok(secret)
    }

    /// Removes the token named `name`.
    pub fn revoke(&mut self, name: &str) -> Result<(), EditError> {
        let before = self.tokens.len();
        self.tokens.retain(|t| &*t.name != name);
        if self.tokens.len() == before {
            return Err(EditError::Unknown(name.to_string()));
        }
        Ok(())
    }

    /// The live token whose value is `candidate`. SECURITY: every stored hash
    /// is compared, each in constant time, so timing says nothing of which matched.
    pub fn by_value(&self, candidate: &str, now: i64) -> Option<&Token> {
        let h: [u8; 32] = Sha256::digest(candidate.as_bytes()).into();
        let mut found = None;
        for t in &self.tokens {
            let diff = t.hash.iter().zip(h.iter()).fold(0u8, |acc, (x, y)| acc | (x ^ y));
            if diff == 0 {
                found = Some(t);
            }
        }
        found.filter(|t| t.live_at(now))
    }

    /// The live token that signed cookie `value`, when its signature and expiry hold.
    pub fn by_cookie(&self, value: &str, now: i64) -> Option<&Token> {
        let (msg, sig) = value.rsplit_once('.')?;
        let (name, exp) = msg.split_once('.')?;
        bypass::live_expiry(exp, now)?;
        let t = self.tokens.iter().find(|t| &*t.name == name)?;
        (t.live_at(now) && bypass::mac_ok(&t.hash, msg, sig)).then_some(t)
    }

    /// The named token a request carries at `now`: in the bypass link's path,
    /// the bypass header, or the bypass cookie, in that order.
    pub fn presented(&self, path: &str, headers: &HeaderMap, bp: &Bypass, now: i64) -> Option<Presented<'_>> {
        if self.tokens.is_empty() {
            return None;
        }
        let link = path.strip_prefix(bp.path.as_str()).and_then(|v| self.by_value(v, now));
        if let Some(token) = link {
            return Some(Presented { token, link: true });
        }
        let header = headers.get(&bp.header).and_then(|v| v.to_str().ok());
        header
            .and_then(|v| self.by_value(v, now))
            .or_else(|| bypass::cookie(headers, &bp.cookie_name).and_then(|c| self.by_cookie(c, now)))
            .map(|token| Presented { token, link: false })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> jiff::Timestamp {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    const HASH: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"; // sha256("test")

    #[test]
    fn parses_lines_comments_and_reports_the_bad_line() {
        let text = format!(
            "# header\n\nalice {HASH} 2026-05-01T10:00:00Z 2026-05-31T10:00:00Z  # trailing\nbob {HASH} 2026-05-01T10:00:00Z -\n"
        );
        let s = TokenStore::parse(&text).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(s.tokens().len(), 2);
        assert_eq!(s.tokens()[0].expires, Some(at("2026-05-31T10:00:00Z")));
        assert_eq!(s.tokens()[1].expires, None);
        assert_eq!(TokenStore::parse(&s.to_text()), Ok(s.clone()));
        for (bad, line, says) in [
            (
                format!("{text}carol {HASH} 2026-05-01T10:00:00Z\n"),
                5,
                "found 3 field(s)",
            ),
            (format!("x\nal.ice {HASH} 2026-05-01T10:00:00Z -\n"), 1, "found 1 field"),
            (format!("al.ice {HASH} 2026-05-01T10:00:00Z -\n"), 1, "not a token name"),
            ("a abc 2026-05-01T10:00:00Z -\n".to_string(), 1, "not a SHA-256"),
            (format!("a {HASH} yesterday -\n"), 1, "created \"yesterday\""),
            (format!("a {HASH} 2026-05-01T10:00:00Z soon\n"), 1, "expires \"soon\""),
            (
                format!("\na {HASH} 2026-05-01T10:00:00Z -\na {HASH} 2026-05-01T10:00:00Z -\n"),
                3,
                "twice",
            ),
        ] {
            match TokenStore::parse(&bad) {
                Err(e) => assert!(e.line == line && e.message.contains(says), "{bad:?}: {e}"),
                Ok(_) => panic!("{bad:?} parsed"),
            }
        }
    }

    #[test]
    fn add_finds_by_value_and_cookie_until_revoked_or_expired() {
        let now = at("2026-05-01T10:00:00Z");
        let t0 = now.as_second();
        let mut s = TokenStore::default();
        let alice = s.add("alice", Some(Duration::from_secs(3600)), now).unwrap_or_default();
        let bob = s.add("bob", None, now).unwrap_or_default();
        assert_eq!(alice.len(), 32);
        assert!(matches!(s.add("alice", None, now), Err(EditError::Exists(_))));
        assert!(matches!(s.add("a b", None, now), Err(EditError::BadName(_))));
        assert!(!s.to_text().contains(&alice), "only the hash is stored");
        assert_eq!(s.by_value(&alice, t0).map(|t| &*t.name), Some("alice"));
        assert_eq!(s.by_value(&bob, t0 + 10_000_000).map(|t| &*t.name), Some("bob"));
        assert!(s.by_value(&alice, t0 + 3600).is_none(), "expired");
        assert!(s.by_value("nope", t0).is_none());

        // The cookie lasts the ttl, cut short by the token's expiry.
        let (c, max_age) = s.tokens()[0].cookie(t0, Duration::from_secs(12 * 3600));
        assert_eq!(max_age, 3600);
        assert!(c.starts_with(&format!("alice.{}.", t0 + 3600)), "{c}");
        assert_eq!(s.by_cookie(&c, t0 + 10).map(|t| &*t.name), Some("alice"));
        assert!(s.by_cookie(&c, t0 + 3600).is_none(), "expired cookie");
        let forged = c.replacen("alice", "bob", 1);
        assert!(s.by_cookie(&forged, t0).is_none(), "another name");
        let longer = c.replacen(&(t0 + 3600).to_string(), &(t0 + 7200).to_string(), 1);
        assert!(s.by_cookie(&longer, t0).is_none(), "another expiry");
        for junk in ["", "alice", "alice.1", "alice..x", ".1.x", "alice.01.x"] {
            assert!(s.by_cookie(junk, t0).is_none(), "{junk:?}");
        }

        // Revoked: the value and every cookie it set stop working.
        let mut after = s.clone();
        after.revoke("alice").unwrap_or_else(|e| panic!("{e}"));
        assert!(after.by_value(&alice, t0).is_none() && after.by_cookie(&c, t0).is_none());
        assert!(matches!(after.revoke("alice"), Err(EditError::Unknown(_))));
        // Re-added under the same name: a new token, the old cookies stay dead.
        let again = after.add("alice", None, now).unwrap_or_default();
        assert!(after.by_cookie(&c, t0).is_none() && after.by_value(&again, t0).is_some());
    }

    #[test]
    fn presented_through_link_header_or_cookie() {
        let cfg = crate::config::Config::parse(
            Path::new("g.toml"),
            "listen = [\"127.0.0.1:1\"]\n[upstream]\nurl = \"http://127.0.0.1:2\"\n[maintenance]\ntoggle = \"/tmp/x/on\"\n",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let bp = &cfg.bypass;
        let now = at("2026-05-01T10:00:00Z");
        let mut s = TokenStore::default();
        let v = s.add("alice", None, now).unwrap_or_default();
        let t0 = now.as_second();
        let none = HeaderMap::new();
        let link = s.presented(&format!("/.gatekeeper/bypass/{v}"), &none, bp, t0);
        assert!(link.is_some_and(|p| p.link && &*p.token.name == "alice"));
        assert!(s.presented("/.gatekeeper/bypass/other", &none, bp, t0).is_none());
        let mut h = HeaderMap::new();
        h.insert("x-gatekeeper-bypass", v.parse().unwrap_or_else(|e| panic!("{e}")));
        assert!(s.presented("/", &h, bp, t0).is_some_and(|p| !p.link));
        let (c, _) = s.tokens()[0].cookie(t0, bp.cookie_ttl);
        let mut h = HeaderMap::new();
        let pair = format!("a=1; gatekeeper_bypass={c}");
        h.insert(http::header::COOKIE, pair.parse().unwrap_or_else(|e| panic!("{e}")));
        assert!(s.presented("/", &h, bp, t0).is_some_and(|p| &*p.token.name == "alice"));
        assert!(TokenStore::default().presented("/", &h, bp, t0).is_none());
    }
}
