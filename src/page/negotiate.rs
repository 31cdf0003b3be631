//! Content negotiation between the HTML page and the JSON answer.

use crate::syntax::is_token;
use http::header::HeaderValue;

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
    if !is_token(ty) || !is_token(sub) || (ty == "*" && sub != "*") {
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

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

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

    proptest! {
        #![proptest_config(ProptestConfig { cases: 4000, ..ProptestConfig::default() })]

        #[test]
        fn prefers_json_never_panics(s in "[ -~]{0,64}") {
            if let Ok(hv) = HeaderValue::from_str(&s) {
                let _ = prefers_json(Some(&hv));
            }
        }
    }
}
