//! Filling the template's placeholders, once per toggle or config change.

use bytes::Bytes;
use http::header::{HeaderValue, RETRY_AFTER, VARY};

use super::load::PageSet;
use super::respond::{page_headers, HTML_UTF8};

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

/// Fills `{{message}}`, `{{retry_after}}`, `{{retry_after_human}}` and
/// `{{until}}` (empty when `None`) in the template. Message and `until` are
/// HTML-escaped.
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
        } else if let Some(after) = tail.strip_prefix("{{retry_after_human}}") {
            out.push_str(&human_duration(retry_after_secs));
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

/// 900 → "about 15 minutes": Retry-After for people. Rounded up, so a
/// visitor is never told to come back too early.
pub fn human_duration(secs: u64) -> String {
    let up = |unit: u64| secs.div_ceil(unit);
    match secs {
        0..=59 => "less than a minute".to_string(),
        60 => "about a minute".to_string(),
        61..=5399 => format!("about {} minutes", up(60)),
        5400..=129_599 => format!("about {} hours", up(3600)),
        _ => format!("about {} days", up(86_400)),
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

#[cfg(test)]
mod tests {
    use super::super::load::simple_pages;
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn human_durations() {
        for (secs, want) in [
            (0, "less than a minute"),
            (59, "less than a minute"),
            (60, "about a minute"),
            (61, "about 2 minutes"),
            (900, "about 15 minutes"),
            (5399, "about 90 minutes"),
            (5400, "about 2 hours"),
            (7200, "about 2 hours"),
            (86_400, "about 24 hours"),
            (200_000, "about 3 days"),
        ] {
            assert_eq!(human_duration(secs), want, "{secs}");
        }
        let r = render(&simple_pages("{{retry_after_human}}"), "m", 900, None, None);
        assert_eq!(std::str::from_utf8(&r.html).unwrap(), "about 15 minutes");
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
        assert!(html.contains("about 5 minutes"));
        assert!(!html.contains("{{"));
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 4000, ..ProptestConfig::default() })]

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
