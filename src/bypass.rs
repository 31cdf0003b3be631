//! Letting the team in without an IP: the secret bypass link, its signed
//! cookie, and the bypass header. Pure functions; the server does the I/O.
//!
//! Cookie value: `<expiry unix seconds>.<hex HMAC-SHA256(expiry) keyed by the secret>`.
//! Changing or removing the secret invalidates every cookie at once.

use hmac::{Hmac, Mac};
use http::header::{self, HeaderMap, HeaderValue};
use sha2::{Digest, Sha256};

type HmacSha256 = Hmac<Sha256>;

/// The cookie value for a given expiry.
pub fn sign(secret: &str, expires: i64) -> String {
    format!("{expires}.{}", mac_hex(secret.as_bytes(), &expires.to_string()))
}

/// Whether a cookie value is a valid, unexpired signature by `secret`.
pub fn verify(secret: &str, value: &str, now: i64) -> bool {
    let Some((exp, sig)) = value.split_once('.') else {
        return false;
    };
    live_expiry(exp, now).is_some() && mac_ok(secret.as_bytes(), exp, sig)
}

/// The expiry in a cookie when it is in canonical decimal form (so the MAC
/// covers exactly what was signed) and still ahead of `now`.
pub fn live_expiry(exp: &str, now: i64) -> Option<i64> {
    let expires = exp.parse::<i64>().ok()?;
    (expires.to_string() == exp && expires > now).then_some(expires)
}

/// Hex HMAC-SHA256 of `msg` keyed by `key`.
pub fn mac_hex(key: &[u8], msg: &str) -> String {
    let mut hex = String::with_capacity(64);
    if let Ok(mut m) = HmacSha256::new_from_slice(key) {
        m.update(msg.as_bytes());
        for b in m.finalize().into_bytes() {
            hex.push_str(&format!("{b:02x}"));
        }
    }
    hex
}

/// Whether `sig` is the hex HMAC-SHA256 of `msg` keyed by `key`.
pub fn mac_ok(key: &[u8], msg: &str, sig: &str) -> bool {
    if sig.len() != 64 {
        return false;
    }
    let Some(bytes) = decode_hex(sig) else { return false };
    let Ok(mut m) = HmacSha256::new_from_slice(key) else {
        return false;
    };
    m.update(msg.as_bytes());
    // SECURITY: verify_slice compares in constant time.
    m.verify_slice(&bytes).is_ok()
}

/// Bytes from lowercase or uppercase hex; None for anything else.
pub fn decode_hex(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| s.get(i..i + 2).and_then(|h| u8::from_str_radix(h, 16).ok()))
        .collect()
}

/// Constant-time comparison of a presented token with the secret. Hashing
/// both first makes the comparison independent of their lengths too.
pub fn token_matches(secret: &str, candidate: &str) -> bool {
    let a = Sha256::digest(secret.as_bytes());
    let b = Sha256::digest(candidate.as_bytes());
    a.iter().zip(b.iter()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The value of cookie `name` in the request's Cookie headers.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim_matches('"'))
}

/// Removes cookie `name` from the Cookie headers, keeping the app's own cookies.
pub fn strip_cookie(headers: &mut HeaderMap, name: &str) {
    if !headers.contains_key(header::COOKIE) {
        return;
    }
    let kept: Vec<String> = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .map(str::trim)
        .filter(|pair| !pair.is_empty() && pair.split_once('=').map_or(*pair, |(k, _)| k) != name)
        .map(str::to_string)
        .collect();
    headers.remove(header::COOKIE);
    if !kept.is_empty() {
        if let Ok(v) = HeaderValue::from_str(&kept.join("; ")) {
            headers.insert(header::COOKIE, v);
        }
    }
}

/// The Set-Cookie for a fresh bypass cookie.
pub fn set_cookie(name: &str, value: &str, max_age: u64, secure: bool) -> Option<HeaderValue> {
    let secure = if secure { "; Secure" } else { "" };
    HeaderValue::from_str(&format!(
        "{name}={value}; Path=/; Max-Age={max_age}; HttpOnly; SameSite=Lax{secure}"
    ))
    .ok()
}

/// Where to send the visitor after the bypass link: `next` when it is a
/// same-site relative path, else "/".
pub fn redirect_target(query: Option<&str>) -> String {
    let next = query.and_then(|q| {
        q.split('&')
            .filter_map(|kv| kv.split_once('='))
            .find(|(k, _)| *k == "next")
            .map(|(_, v)| v.replace('+', " "))
    });
    next.and_then(|raw| {
        let decoded = percent_encoding::percent_decode_str(&raw)
            .decode_utf8()
            .ok()?
            .into_owned();
        safe_relative(&decoded).then_some(decoded)
    })
    .unwrap_or_else(|| "/".to_string())
}

/// SECURITY: never an open redirect. Only "/path..." on this site: not
/// "//host" or "/\host" (browsers treat both as another host), no scheme, no
/// backslashes, no control characters or spaces, ASCII only.
pub fn safe_relative(p: &str) -> bool {
    p.starts_with('/')
        && !p.starts_with("//")
        && !p.contains('\\')
        && p.len() <= 2048
        && p.bytes().all(|b| b.is_ascii_graphic())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn sign_and_verify() {
        let c = sign("s3cret", 2_000);
        assert!(verify("s3cret", &c, 1_000));
        assert!(!verify("s3cret", &c, 2_000), "expired at the instant");
        assert!(!verify("other", &c, 1_000), "another secret");
        let (exp, sig) = c.split_once('.').unwrap_or_default();
        assert!(
            !verify("s3cret", &format!("{}.{sig}", exp.replace('2', "3")), 1_000),
            "tampered expiry"
        );
        let mut bad = sig.to_string();
        bad.replace_range(0..1, if bad.starts_with('0') { "1" } else { "0" });
        assert!(!verify("s3cret", &format!("{exp}.{bad}"), 1_000), "tampered signature");
        for junk in ["", ".", "2000", "2000.", "+2000.aa", "02000.x", "x.y", "2000.zz"] {
            assert!(!verify("s3cret", junk, 1_000), "{junk:?}");
        }
    }

    #[test]
    fn tokens() {
        assert!(token_matches("abc", "abc"));
        assert!(!token_matches("abc", "abd"));
        assert!(!token_matches("abc", "abcd"));
        assert!(!token_matches("abc", ""));
    }

    #[test]
    fn cookies_are_found_and_stripped() {
        let mut h = HeaderMap::new();
        h.append(
            header::COOKIE,
            HeaderValue::from_static("a=1; gatekeeper_bypass=xyz; b=2"),
        );
        h.append(header::COOKIE, HeaderValue::from_static("c=3"));
        assert_eq!(cookie(&h, "gatekeeper_bypass"), Some("xyz"));
        strip_cookie(&mut h, "gatekeeper_bypass");
        assert_eq!(
            h.get(header::COOKIE).and_then(|v| v.to_str().ok()),
            Some("a=1; b=2; c=3")
        );
        assert_eq!(cookie(&h, "gatekeeper_bypass"), None);
        let mut only = HeaderMap::new();
        only.insert(header::COOKIE, HeaderValue::from_static("gatekeeper_bypass=1"));
        strip_cookie(&mut only, "gatekeeper_bypass");
        assert!(!only.contains_key(header::COOKIE));
    }

    #[test]
    fn set_cookie_attributes() {
        let v = set_cookie("gk", "1.ab", 43200, true).map(|v| v.to_str().unwrap_or("").to_string());
        assert_eq!(
            v.as_deref(),
            Some("gk=1.ab; Path=/; Max-Age=43200; HttpOnly; SameSite=Lax; Secure")
        );
    }

    #[test]
    fn redirects_stay_on_site() {
        assert_eq!(redirect_target(None), "/");
        assert_eq!(redirect_target(Some("next=/admin/login?x=1")), "/admin/login?x=1");
        assert_eq!(redirect_target(Some("next=%2Fdocs%2Fa")), "/docs/a");
        for evil in [
            "next=//evil.example",
            "next=https://evil.example",
            "next=/\\evil.example",
            "next=%2F%2Fevil.example",
            "next=%5C%5Cevil.example",
            "next=/%5Cevil.example",
            "next=javascript:alert(1)",
            "next=evil.example",
            "next=/a%0d%0aSet-Cookie:x=1",
            "next=/%E2%80%AE",
            "next=",
        ] {
            assert_eq!(redirect_target(Some(evil)), "/", "{evil}");
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(3000))]
        #[test]
        fn verify_never_panics_and_rejects_noise(s in ".{0,120}", secret in ".{1,40}") {
            prop_assert!(!verify(&secret, &s, 0) || s == sign(&secret, s.split('.').next().and_then(|e| e.parse().ok()).unwrap_or(0)));
        }

        #[test]
        fn redirect_target_is_always_relative(q in ".{0,80}") {
            let t = redirect_target(Some(&q));
            prop_assert!(t.starts_with('/') && !t.starts_with("//") && !t.contains('\\'));
        }
    }
}
