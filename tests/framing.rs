//! Ambiguous framing is refused, never read one way (issue 21, item 8).
//!
//! Behind a CDN or load balancer, a request whose end the two read differently
//! smuggles what follows its body in as a request of its own. Every case below
//! sends one raw request and, on the same connection, a second one
//! (`GET /smuggled`, `Connection: close`), reads until the server closes
//! (5 s bound), and checks what came back and what the upstream saw.
//!
//! RFC 9112 §6.3 asks a server to answer 400 and close when a request's length
//! cannot be determined reliably; a request with both Content-Length and
//! Transfer-Encoding may instead be processed by Transfer-Encoding alone, the
//! connection closed after. Cases whose framing the RFC makes unambiguous
//! (`Chunked` in any case, OWS around values, identical duplicate lengths) are
//! read as the RFC says: both requests answered, the first with the right body.
mod common;
use common::*;

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Pipelined after every case: answered only when the case's framing is unambiguous.
const SMUGGLED: &str = "GET /smuggled HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
const CHUNKED_HELLO: &str = "5\r\nhello\r\n0\r\n\r\n";
/// How long one case may take until the server closes.
const BOUND: Duration = Duration::from_secs(5);

#[derive(Clone, Copy, Debug)]
enum Want {
    /// One answer with this status, then the connection closed; the upstream saw nothing.
    Refused(u16),
    /// The first request reached the upstream with a body of this many bytes and
    /// was answered 200; the connection closed after it, the rest unread.
    ProcessedThenClosed(u64),
    /// Unambiguous: both requests answered 200 in order, the first with a body of
    /// this many bytes.
    Pipelined(u64),
    /// Anything else, spelled out: the answers' statuses and the upstream's paths.
    Exactly {
        answers: &'static [u16],
        upstream: &'static [&'static str],
    },
}

struct Case {
    name: &'static str,
    /// The first request; `/echo` and `/smuggled` get the case's number appended.
    req: Vec<u8>,
    want: Want,
}

/// What one case produced.
#[derive(Debug, PartialEq)]
struct Seen {
    answers: Vec<u16>,
    /// Body length the upstream reported for the first request (`/echo` answers).
    first_body: Option<u64>,
    /// Whether the first answer says `Connection: close` (checked for refusals).
    says_close: Option<bool>,
    upstream: Vec<String>,
    /// EOF within the bound.
    closed: bool,
}

fn expected(want: Want) -> Seen {
    let s = |v: &[&str]| v.iter().map(|p| p.to_string()).collect();
    match want {
        Want::Refused(status) => Seen {
            answers: vec![status],
            first_body: None,
            says_close: Some(true),
            upstream: vec![],
            closed: true,
        },
        Want::ProcessedThenClosed(n) => Seen {
            answers: vec![200],
            first_body: Some(n),
            says_close: None,
            upstream: s(&["/echo"]),
            closed: true,
        },
        Want::Pipelined(n) => Seen {
            answers: vec![200, 200],
            first_body: Some(n),
            says_close: None,
            upstream: s(&["/echo", "/smuggled"]),
            closed: true,
        },
        Want::Exactly { answers, upstream } => Seen {
            answers: answers.to_vec(),
            first_body: None,
            says_close: None,
            upstream: s(upstream),
            closed: true,
        },
    }
}

/// `POST /echo` with `Host: x`, the given field lines, and `body`.
fn post(fields: &[&str], body: &str) -> Vec<u8> {
    request("POST /echo HTTP/1.1", &[&["Host: x"], fields].concat(), body)
}

/// A request line, field lines (CRLF after each), an empty line and `body`.
fn request(line: &str, fields: &[&str], body: &str) -> Vec<u8> {
    let mut s = format!("{line}\r\n");
    for f in fields {
        let _ = write!(s, "{f}\r\n");
    }
    let _ = write!(s, "\r\n{body}");
    s.into_bytes()
}

fn case(name: &'static str, req: Vec<u8>, want: Want) -> Case {
    Case { name, req, want }
}

fn cases() -> Vec<Case> {
    use Want::*;
    let te = |v: &str| format!("Transfer-Encoding: {v}");
    let cl = |v: &str| format!("Content-Length: {v}");
    let chunked = |v: &str| post(&[&te(v)], CHUNKED_HELLO);
    let length = |v: &str| post(&[&cl(v)], "hello");
    vec![
        // Content-Length (RFC 9112 §6.3 item 5, RFC 9110 §8.6)
        case(
            "CL+CL different",
            post(&["Content-Length: 5", "Content-Length: 6"], "hello"),
            Refused(400),
        ),
        case(
            "CL+CL identical",
            post(&["Content-Length: 5", "Content-Length: 5"], "hello"),
            Pipelined(5),
        ),
        case("CL list identical", length("5, 5"), Refused(400)),
        case("CL list different", length("5, 6"), Refused(400)),
        case("CL plus sign", length("+5"), Refused(400)),
        case("CL negative", length("-5"), Refused(400)),
        case("CL space inside", length("5 0"), Refused(400)),
        case("CL OWS around", length(" \t5\t "), Pipelined(5)),
        case("CL leading zeros", length("0005"), Pipelined(5)),
        case("CL non-digit", length("5a"), Refused(400)),
        case("CL hex", length("0x5"), Refused(400)),
        case("CL empty", length(""), Refused(400)),
        case("CL overflow", length("99999999999999999999"), Refused(400)),
        // hyper takes a length it cannot represent for an oversized head.
        case("CL u64 max", length("18446744073709551615"), Refused(431)),
        // Transfer-Encoding (RFC 9112 §6.1, §6.3 item 4, §7)
        case("TE chunked", chunked("chunked"), Pipelined(5)),
        case("TE Chunked case", chunked("Chunked"), Pipelined(5)),
        case("TE CHUNKED case", chunked("CHUNKED"), Pipelined(5)),
        case("TE OWS and tabs around", chunked("\t chunked \t"), Pipelined(5)),
        case("TE empty list element", chunked(", chunked"), Pipelined(5)),
        case(
            "TE chunked on two lines",
            post(&[&te("chunked"), &te("chunked")], CHUNKED_HELLO),
            Refused(400),
        ),
        case("TE chunked, chunked", chunked("chunked, chunked"), Refused(400)),
        case("TE Chunked,CHUNKED", chunked("Chunked,CHUNKED"), Refused(400)),
        case(
            "TE chunked twice with empty elements",
            chunked("chunked, ,\tchunked"),
            Refused(400),
        ),
        case(
            "TE empty line then chunked twice",
            post(&["Transfer-Encoding:", &te("chunked, chunked")], CHUNKED_HELLO),
            Refused(400),
        ),
        case("TE xchunked", chunked("xchunked"), Refused(400)),
        case("TE chunked with parameter", chunked("chunked;foo=bar"), Refused(400)),
        case("TE quoted", chunked("\"chunked\""), Refused(400)),
        case("TE identity", chunked("identity"), Refused(400)),
        case("TE identity, chunked", chunked("identity, chunked"), Refused(501)),
        case("TE gzip, chunked", chunked("gzip, chunked"), Refused(501)),
        case(
            "TE gzip line then chunked line",
            post(&[&te("gzip"), &te("chunked")], CHUNKED_HELLO),
            Refused(501),
        ),
        case("TE chunked, gzip", chunked("chunked, gzip"), Refused(400)),
        case(
            "TE chunked line then gzip line",
            post(&[&te("chunked"), &te("gzip")], CHUNKED_HELLO),
            Refused(400),
        ),
        case("TE chunked then trailing comma", chunked("chunked,"), Refused(400)),
        case("TE empty", chunked(""), Refused(400)),
        case(
            "TE chunked line then empty line",
            post(&[&te("chunked"), "Transfer-Encoding:"], CHUNKED_HELLO),
            Refused(400),
        ),
        case("TE vertical tab", chunked("chunked\x0b"), Refused(400)),
        case("TE form feed", chunked("\x0cchunked"), Refused(400)),
        case(
            "TE non-ASCII line before chunked",
            {
                let mut r = b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\xff\r\n".to_vec();
                r.extend_from_slice(b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n");
                r
            },
            Refused(400),
        ),
        case(
            "TE on GET",
            request("GET /echo HTTP/1.1", &["Host: x", &te("chunked")], CHUNKED_HELLO),
            Pipelined(5),
        ),
        // Not Transfer-Encoding at all: no body, so the chunks are the next request.
        case(
            "TE name with underscore",
            post(&["Transfer_Encoding: chunked"], CHUNKED_HELLO),
            Exactly {
                answers: &[200, 400],
                upstream: &["/echo"],
            },
        ),
        case(
            "TE name space before colon",
            post(&["Transfer-Encoding : chunked"], CHUNKED_HELLO),
            Refused(400),
        ),
        case(
            "TE name tab before colon",
            post(&["Transfer-Encoding\t: chunked"], CHUNKED_HELLO),
            Refused(400),
        ),
        // Content-Length and Transfer-Encoding (RFC 9112 §6.3 item 3): TE alone, then close.
        case(
            "CL+TE",
            post(&[&cl("4"), &te("chunked")], CHUNKED_HELLO),
            ProcessedThenClosed(5),
        ),
        case(
            "TE+CL",
            post(&[&te("chunked"), &cl("4")], CHUNKED_HELLO),
            ProcessedThenClosed(5),
        ),
        case(
            "CL+TE with CL 0",
            post(&[&cl("0"), &te("chunked")], CHUNKED_HELLO),
            ProcessedThenClosed(5),
        ),
        case(
            "CL+TE invalid CL",
            post(&[&cl("abc"), &te("chunked")], CHUNKED_HELLO),
            Refused(400),
        ),
        case(
            "TE+CL invalid CL",
            post(&[&te("chunked"), &cl("abc")], CHUNKED_HELLO),
            ProcessedThenClosed(5),
        ),
        case(
            "CL+TE chunked twice",
            post(&[&cl("4"), &te("chunked"), &te("chunked")], CHUNKED_HELLO),
            Refused(400),
        ),
        case(
            "CL+TE gzip, chunked",
            post(&[&cl("4"), &te("gzip, chunked")], CHUNKED_HELLO),
            Refused(501),
        ),
        // Transfer-Encoding in HTTP/1.0 (RFC 9112 §6.1)
        case(
            "HTTP/1.0 TE",
            request("POST /echo HTTP/1.0", &["Host: x", &te("chunked")], CHUNKED_HELLO),
            Refused(400),
        ),
        case(
            "HTTP/1.0 TE+CL",
            request(
                "POST /echo HTTP/1.0",
                &["Host: x", &cl("5"), &te("chunked")],
                CHUNKED_HELLO,
            ),
            Refused(400),
        ),
        case(
            "HTTP/1.0 CL",
            request("POST /echo HTTP/1.0", &["Host: x", &cl("5")], "hello"),
            ProcessedThenClosed(5),
        ),
        // obs-fold (RFC 9112 §5.2)
        case(
            "obs-fold in TE",
            post(&["Transfer-Encoding: gzip,", " chunked"], CHUNKED_HELLO),
            Refused(400),
        ),
        case(
            "obs-fold before TE",
            post(&["X-A: a", " Transfer-Encoding: chunked"], CHUNKED_HELLO),
            Refused(400),
        ),
        case(
            "obs-fold in CL",
            post(&["Content-Length:", " 5"], "hello"),
            Refused(400),
        ),
        case(
            "obs-fold tab in other field",
            post(&["X-A: a", "\tb", &cl("5")], "hello"),
            Refused(400),
        ),
        // Field syntax (RFC 9112 §5, RFC 9110 §5.5)
        case("NUL in value", post(&["X-A: a\0b", &cl("5")], "hello"), Refused(400)),
        case("CR in value", post(&["X-A: a\rb", &cl("5")], "hello"), Refused(400)),
        case("NUL in name", post(&["X\0A: a", &cl("5")], "hello"), Refused(400)),
        case("CR in name", post(&["X\rA: a", &cl("5")], "hello"), Refused(400)),
        case("space in name", post(&["X A: a", &cl("5")], "hello"), Refused(400)),
        case(
            "space before colon",
            post(&["Host : y", &cl("5")], "hello"),
            Refused(400),
        ),
        case("field without colon", post(&["X-A", &cl("5")], "hello"), Refused(400)),
        case("empty field name", post(&[": a", &cl("5")], "hello"), Refused(400)),
        // A bare LF ends a line (RFC 9112 §2.2 lets a recipient accept it): the TE line is real.
        case(
            "LF in value starts a TE line",
            post(&["X-A: a\nTransfer-Encoding: chunked"], CHUNKED_HELLO),
            Pipelined(5),
        ),
        case(
            "bare LF line endings",
            b"POST /echo HTTP/1.1\nHost: x\nContent-Length: 5\n\nhello".to_vec(),
            Pipelined(5),
        ),
        case(
            "bare CR line endings",
            b"POST /echo HTTP/1.1\rHost: x\rContent-Length: 5\r\rhello".to_vec(),
            Refused(400),
        ),
        // Request line (RFC 9112 §3)
        case(
            "request line double space",
            request("POST  /echo HTTP/1.1", &["Host: x", &cl("5")], "hello"),
            Refused(400),
        ),
        case(
            "request line trailing space",
            request("POST /echo HTTP/1.1 ", &["Host: x", &cl("5")], "hello"),
            Refused(400),
        ),
        case(
            "request line tab",
            request("POST\t/echo HTTP/1.1", &["Host: x", &cl("5")], "hello"),
            Refused(400),
        ),
        case(
            "request line lowercase version",
            request("POST /echo http/1.1", &["Host: x", &cl("5")], "hello"),
            Refused(400),
        ),
        case(
            "request line HTTP/1.2",
            request("POST /echo HTTP/1.2", &["Host: x", &cl("5")], "hello"),
            Refused(400),
        ),
        case(
            "empty line before request line",
            [b"\r\n".as_slice(), &post(&[&cl("5")], "hello")].concat(),
            Pipelined(5),
        ),
        case(
            "absolute-form target",
            request("POST http://x/echo HTTP/1.1", &["Host: x", &cl("5")], "hello"),
            Pipelined(5),
        ),
        // Host (RFC 9112 §3.2)
        case(
            "HTTP/1.1 without Host",
            request("POST /echo HTTP/1.1", &[&cl("5")], "hello"),
            Refused(400),
        ),
        case(
            "HTTP/1.1 absolute-form without Host",
            request("POST http://x/echo HTTP/1.1", &[&cl("5")], "hello"),
            Refused(400),
        ),
        case(
            "HTTP/1.0 without Host",
            request("POST /echo HTTP/1.0", &[&cl("5")], "hello"),
            ProcessedThenClosed(5),
        ),
        case("Host twice, same", post(&["Host: x", &cl("5")], "hello"), Refused(400)),
        case(
            "Host twice, different",
            post(&["Host: y", &cl("5")], "hello"),
            Refused(400),
        ),
        case(
            "Host twice in HTTP/1.0",
            request("POST /echo HTTP/1.0", &["Host: x", "Host: y", &cl("5")], "hello"),
            Refused(400),
        ),
        case(
            "Host list",
            request("POST /echo HTTP/1.1", &["Host: x, y", &cl("5")], "hello"),
            Refused(400),
        ),
        case(
            "Host with userinfo",
            request("POST /echo HTTP/1.1", &["Host: u@x", &cl("5")], "hello"),
            Refused(400),
        ),
        case(
            "Host with path",
            request("POST /echo HTTP/1.1", &["Host: x/y", &cl("5")], "hello"),
            Refused(400),
        ),
        case(
            "Host empty",
            request("POST /echo HTTP/1.1", &["Host:", &cl("5")], "hello"),
            Pipelined(5),
        ),
        case(
            "Host with port",
            request("POST /echo HTTP/1.1", &["Host: x:8080", &cl("5")], "hello"),
            Pipelined(5),
        ),
        case(
            "Host IPv6 literal",
            request("POST /echo HTTP/1.1", &["Host: [::1]:8080", &cl("5")], "hello"),
            Pipelined(5),
        ),
        // Expect (RFC 9110 §10.1.1)
        case(
            "Expect 100-continue, body sent at once",
            post(&["Expect: 100-continue", &cl("5")], "hello"),
            Exactly {
                answers: &[100, 200, 200],
                upstream: &["/echo", "/smuggled"],
            },
        ),
        case(
            "Expect 100-continue without body",
            request("GET /echo HTTP/1.1", &["Host: x", "Expect: 100-continue"], ""),
            Pipelined(0),
        ),
        case(
            "Expect unknown",
            post(&["Expect: something-else", &cl("5")], "hello"),
            Pipelined(5),
        ),
        case(
            "Expect 100-continue in HTTP/1.0",
            request(
                "POST /echo HTTP/1.0",
                &["Host: x", "Expect: 100-continue", &cl("5")],
                "hello",
            ),
            ProcessedThenClosed(5),
        ),
        // Chunked body (RFC 9112 §7.1); read whole before forwarding (buffering.requests).
        case(
            "chunk size overflow",
            post(&[&te("chunked")], "fffffffffffffffffff\r\nhello\r\n0\r\n\r\n"),
            Refused(400),
        ),
        case(
            "chunk size 0x",
            post(&[&te("chunked")], "0x5\r\nhello\r\n0\r\n\r\n"),
            Refused(400),
        ),
        case(
            "chunk size negative",
            post(&[&te("chunked")], "-5\r\nhello\r\n0\r\n\r\n"),
            Refused(400),
        ),
        case(
            "chunk size empty",
            post(&[&te("chunked")], "\r\nhello\r\n0\r\n\r\n"),
            Refused(400),
        ),
        case(
            "chunk size leading space",
            post(&[&te("chunked")], " 5\r\nhello\r\n0\r\n\r\n"),
            Refused(400),
        ),
        case(
            "chunk size trailing space",
            post(&[&te("chunked")], "5 \r\nhello\r\n0\r\n\r\n"),
            Pipelined(5),
        ),
        case(
            "chunk size leading zeros",
            post(&[&te("chunked")], "0005\r\nhello\r\n0\r\n\r\n"),
            Pipelined(5),
        ),
        case(
            "chunk data without CRLF",
            post(&[&te("chunked")], "5\r\nhello0\r\n\r\n"),
            Refused(400),
        ),
        case(
            "chunk data longer than size",
            post(&[&te("chunked")], "3\r\nhello\r\n0\r\n\r\n"),
            Refused(400),
        ),
        case(
            "chunk data shorter than size",
            post(&[&te("chunked")], "7\r\nhello\r\n0\r\n\r\n"),
            Refused(400),
        ),
        case(
            "chunk lines end in bare LF",
            post(&[&te("chunked")], "5\nhello\n0\n\n"),
            Refused(400),
        ),
        case(
            "chunk extension",
            post(&[&te("chunked")], "5;a=b\r\nhello\r\n0\r\n\r\n"),
            Pipelined(5),
        ),
        case(
            "chunk extension with bare LF",
            post(&[&te("chunked")], "5;a\nhello\r\n0\r\n\r\n"),
            Refused(400),
        ),
        case(
            "chunk extension with bare CR",
            post(&[&te("chunked")], "5;a\rb\r\nhello\r\n0\r\n\r\n"),
            Refused(400),
        ),
        case(
            "chunk extension with NUL",
            post(&[&te("chunked")], "5;a\0\r\nhello\r\n0\r\n\r\n"),
            Pipelined(5),
        ),
        case(
            "last chunk missing",
            post(&[&te("chunked")], "5\r\nhello\r\n"),
            Refused(400),
        ),
        case(
            "trailer field",
            post(&[&te("chunked")], "5\r\nhello\r\n0\r\nX-T: 1\r\n\r\n"),
            Pipelined(5),
        ),
        case(
            "trailer Content-Length",
            post(&[&te("chunked")], "5\r\nhello\r\n0\r\nContent-Length: 100\r\n\r\n"),
            Pipelined(5),
        ),
    ]
}

/// Sends `bytes` in one write and reads until EOF (or [`BOUND`]).
async fn exchange(addr: std::net::SocketAddr, bytes: &[u8]) -> (Vec<u8>, bool) {
    let mut s = connect_from(LOCALHOST, addr).await.expect("connect");
    s.write_all(bytes).await.expect("write");
    let mut out = Vec::new();
    let mut buf = [0u8; 16384];
    let deadline = Instant::now() + BOUND;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, s.read(&mut buf)).await {
            Ok(Ok(0)) => return (out, true),
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            // A close with unread input is a reset: still the end.
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionReset => return (out, true),
            Ok(Err(e)) => panic!("read: {e}"),
            Err(_) => return (out, false),
        }
    }
}

/// Every answer in `bytes`, in order, the `/echo` body length of the first 200,
/// and whether the first answer says `Connection: close`.
fn answers(mut bytes: &[u8]) -> (Vec<u16>, Option<u64>, bool) {
    let (mut statuses, mut first_body) = (Vec::new(), None);
    let says_close = parse_response(bytes, false, true)
        .is_some_and(|(r, _)| r.header("connection").is_some_and(|c| c.eq_ignore_ascii_case("close")));
    while let Some((r, used)) = parse_response(bytes, false, true) {
        if r.status == 200 && first_body.is_none() {
            first_body = serde_json::from_slice::<serde_json::Value>(&r.body)
                .ok()
                .and_then(|j| j["body_len"].as_u64());
        }
        statuses.push(r.status);
        bytes = &bytes[used..];
        if bytes.is_empty() {
            break;
        }
    }
    (statuses, first_body, says_close)
}

/// `b` with `/echo` and `/smuggled` numbered `i`, so that each case's upstream hits are its own.
fn numbered(b: &[u8], i: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(b.len() + 8);
    let mut rest = b;
    while !rest.is_empty() {
        let hit = [b"/echo".as_slice(), b"/smuggled"]
            .into_iter()
            .find(|p| rest.starts_with(p));
        match hit {
            Some(p) => {
                out.extend_from_slice(p);
                out.extend_from_slice(format!("/{i}").as_bytes());
                rest = &rest[p.len()..];
            }
            None => {
                out.push(rest[0]);
                rest = &rest[1..];
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ambiguous_framing_is_refused_and_nothing_reaches_the_upstream() {
    let fx = Fixture::new();
    let up = Upstream::start();
    let gk = Gatekeeper::start(&fx, &fx.config(&up.url()));
    let mut failures = String::new();
    let cases = cases();
    for (i, c) in cases.iter().enumerate() {
        let req = numbered(&c.req, i);
        let smuggled = numbered(SMUGGLED.as_bytes(), i);
        let (bytes, closed) = exchange(gk.addr, &[req.as_slice(), &smuggled].concat()).await;
        let (answers, first_body, says_close) = answers(&bytes);
        let tag = format!("/{i}");
        let upstream: Vec<String> = up
            .uris()
            .into_iter()
            .filter_map(|u| u.strip_suffix(&tag).map(str::to_string))
            .collect();
        let want = expected(c.want);
        let seen = Seen {
            answers,
            // Compared only where a body length is expected.
            first_body: want.first_body.and(first_body),
            says_close: want.says_close.and(Some(says_close)),
            upstream,
            closed,
        };
        if seen != want {
            let _ = writeln!(
                failures,
                "{:?}: want {want:?}\n  seen {seen:?}\n  request {:?}\n  got {:?}",
                c.name,
                String::from_utf8_lossy(&req),
                String::from_utf8_lossy(&bytes),
            );
        }
    }
    // Never a smuggled request but behind an unambiguous one.
    for u in up.uris() {
        let Some(i) = u.strip_prefix("/smuggled/").and_then(|i| i.parse::<usize>().ok()) else {
            continue;
        };
        if !matches!(cases[i].want, Want::Pipelined(_) | Want::Exactly { .. }) {
            let _ = writeln!(failures, "{:?}: /smuggled reached the upstream", cases[i].name);
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases:\n{failures}",
        failures.matches("\n  seen").count(),
        cases.len()
    );
}

/// HTTP/2 frames by itself and may carry Host as `:authority` alone: the check
/// must leave it be.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_without_host_is_served() {
    let fx = Fixture::new();
    let up = Upstream::start();
    let gk = Gatekeeper::start(&fx, &fx.config(&up.url()));
    let req = http::Request::builder()
        .method("POST")
        .uri("http://example.test/echo")
        .body(full("hello"))
        .unwrap();
    let r = h2_request(gk.addr, req).await;
    assert_eq!((r.version, r.status), (http::Version::HTTP_2, 200));
    let e = r.echo();
    assert_eq!((e.body_len, e.all("host")), (5, vec!["example.test"]));
}

/// RFC 9112 §3.2.2: an absolute-form target's authority is the request's host,
/// whatever Host says; the upstream gets that one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn absolute_form_target_names_the_host() {
    let fx = Fixture::new();
    let up = Upstream::start();
    let gk = Gatekeeper::start(&fx, &fx.config(&up.url()));
    let r = raw_response(
        gk.addr,
        b"GET http://a.example/echo HTTP/1.1\r\nHost: b.example\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let hosts: Vec<String> = up
        .hits()
        .iter()
        .flat_map(|h| h.headers.iter().filter(|(k, _)| k == "host").map(|(_, v)| v.clone()))
        .collect();
    assert_eq!(hosts, vec!["a.example".to_string()]);
}
