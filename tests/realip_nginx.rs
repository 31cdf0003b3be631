//! Area: client address resolution, differential against nginx realip.
//!
//! Differential test: gatekeeper's client address resolution against nginx's
//! realip module (`set_real_ip_from` + `real_ip_header X-Forwarded-For` +
//! `real_ip_recursive on`) for the same trusted set.
//!
//! Every case of the corpus is sent byte for byte (header names, case,
//! duplicates and whitespace exactly as written) from 127.0.0.2, a trusted
//! proxy, to an nginx started here on loopback and to gatekeeper in front of
//! an echo upstream. nginx answers with `$remote_addr`; the upstream answers
//! with the `X-Real-IP` gatekeeper sent ("unknown" when gatekeeper sent none:
//! a malformed header met during the walk). Both answers are pinned: equal
//! where the two agree, and where they differ the case carries nginx's answer
//! too and the reason gatekeeper's answer is the safer one (those reasons are
//! the README's "gatekeeper vs nginx realip" list).
//!
//! nginx must be installed (Debian package `nginx`, which `.ci/run` installs;
//! it has `--with-http_realip_module` built in). Without it the test fails.
//! `NGINX=/path/to/nginx` selects another binary.

mod common;
use common::Gatekeeper;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpSocket;

/// The trusted proxy every corpus case is sent from.
const TRUSTED_PEER: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
/// An address outside the trusted set.
const UNTRUSTED_PEER: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 3));
/// The same trusted set for both (127.0.0.2 is the peer itself).
const TRUSTED: &[&str] = &["127.0.0.2", "10.0.0.0/8", "2001:db8:ffff::/48"];
/// gatekeeper's answer when it resolved no client (sent no X-Real-IP).
const UNKNOWN: &str = "unknown";
/// Mirrors gatekeeper's `client_ip::MAX_HOPS`.
const MAX_HOPS: usize = 64;

// ---------------------------------------------------------------------------
// The corpus
// ---------------------------------------------------------------------------

struct Case {
    name: &'static str,
    /// Raw header lines ("Name: value"), sent exactly as written.
    lines: Vec<String>,
    /// gatekeeper's answer: the X-Real-IP value, or UNKNOWN.
    gatekeeper: &'static str,
    /// nginx's `$remote_addr` and the reason gatekeeper's answer is the safer
    /// one, when the two differ; None: nginx answers the same.
    nginx: Option<(&'static str, &'static str)>,
}

impl Case {
    fn nginx_answer(&self) -> &'static str {
        self.nginx.map_or(self.gatekeeper, |(a, _)| a)
    }
}

/// A case where both agree.
fn same(name: &'static str, lines: &[&str], answer: &'static str) -> Case {
    Case {
        name,
        lines: lines.iter().map(|l| l.to_string()).collect(),
        gatekeeper: answer,
        nginx: None,
    }
}

/// A case where they differ: both answers pinned, with the reason.
fn differ(
    name: &'static str,
    lines: &[&str],
    gatekeeper: &'static str,
    nginx: &'static str,
    why: &'static str,
) -> Case {
    Case {
        nginx: Some((nginx, why)),
        ..same(name, lines, gatekeeper)
    }
}

fn owned(mut case: Case, lines: Vec<String>) -> Case {
    case.lines = lines;
    case
}

fn xff(value: &str) -> String {
    format!("X-Forwarded-For: {value}")
}

/// `n` distinct trusted addresses 10.0.0.0, 10.0.0.1, …
fn trusted_hops(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("10.0.{}.{}", i / 256, i % 256)).collect()
}

/// `n` distinct untrusted addresses from the documentation ranges.
fn untrusted_hosts(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| {
            if i % 2 == 0 {
                format!("192.0.2.{}", i / 2 % 256)
            } else {
                format!("198.51.100.{}", i / 2 % 256)
            }
        })
        .collect()
}

// Reasons, shared by the cases they explain.
const WHY_MALFORMED_RIGHT: &str = "malformed rightmost entry: nginx gives up and keeps the TCP peer, i.e. reports the \
     trusted proxy itself (often an allowlisted internal address) as the client; gatekeeper answers unknown, which is never \
     let through maintenance";
const WHY_MALFORMED_MIDDLE: &str =
    "malformed entry behind trusted hops: nginx stops there and reports the last trusted proxy \
     (10.0.0.x) as the client - junk that a hop passes on unchanged makes a proxy's (often allowlisted) address the \
     client; gatekeeper answers unknown, which is never let through maintenance";
const WHY_PORT_ZERO: &str = "port 0 is valid syntax (RFC 7239 node-port = 1*5DIGIT) and the address is unambiguous; nginx \
     rejects it and reports the trusted proxy itself as the client, gatekeeper reports the address the trusted hop wrote";
const WHY_BRACKET_NO_PORT: &str =
    "\"[v6]\" is the standard (RFC 3986/7239) spelling of an IPv6 address; nginx accepts brackets \
     only with a port and otherwise reports the trusted proxy itself as the client, gatekeeper reports the address the \
     trusted hop wrote";
const WHY_MAPPED: &str = "same host, canonical spelling: gatekeeper folds IPv4-mapped IPv6 to IPv4 (spec), so an allowlist \
     entry 1.2.3.4 or 10.0.0.0/8 matches however a proxy spelled the address; nginx keeps ::ffff:a.b.c.d in $remote_addr, \
     which IPv4 rules downstream (allow/deny lists, logs, rate limits keyed by address) do not match";
const WHY_LEADING_ZERO: &str =
    "a leading-zero octet is ambiguous (inet_aton reads it as octal: 010.0.0.1 = 8.0.0.1; nginx reads \
     decimal 10.0.0.1, which it then trusts as a proxy hop); gatekeeper refuses to guess and answers unknown";
const WHY_BROADCAST: &str = "255.255.255.255 is a valid address literal, but nginx's parser returns its error value \
     (INADDR_NONE) for it and reports the trusted proxy itself as the client; gatekeeper reports the address the trusted \
     hop wrote";
const WHY_SPACE_LIST: &str =
    "\"1.2.3.4 10.0.0.1\" is one malformed list element, not two (the separator is a comma); nginx \
     splits on the space and walks it as two hops, gatekeeper answers unknown";
const WHY_NON_ASCII: &str =
    "bytes outside visible ASCII make the whole header corrupt for gatekeeper: no entry of it is \
     believed, unknown; nginx reads it byte-wise and reports the trusted proxy itself, or an address taken from the \
     corrupt header";
const WHY_TAB: &str =
    "HTAB is optional whitespace in HTTP (RFC 9110 5.6.3) and gatekeeper trims it like a space; nginx only \
     skips spaces, fails on the tab and reports the trusted proxy itself as the client";
const WHY_EMPTY_LINE: &str = "an empty (or commas-only) last X-Forwarded-For line adds only empty list elements; gatekeeper \
     joins the lines (RFC 9110 5.3) and answers as for \"1.2.3.4,\" - which nginx also resolves to 1.2.3.4 - while nginx \
     gives up on the empty line and reports the trusted proxy itself as the client";
const WHY_LEADING_COMMA: &str =
    "an empty first list element is allowed (RFC 9110 5.6.1) and gatekeeper skips it; nginx never \
     checks the first byte for a separator, fails on \",1.2.3.4\" and reports the trusted proxy itself as the client";
const WHY_V4_COMPATIBLE: &str = "not a different client, only another spelling of the same 128-bit address (deprecated \
     IPv4-compatible ::a.b.c.d, RFC 4291 2.5.5.1): gatekeeper prints it in hex (::102:304), nginx dotted; neither treats it \
     as IPv4 1.2.3.4 (only ::ffff:a.b.c.d is folded), so an IPv4 allowlist entry matches it in neither - equally safe";
const WHY_HOP_CAP: &str =
    "more entries to walk than MAX_HOPS (64) is not a real deployment; gatekeeper bounds the work and \
     answers unknown rather than trust the 65th hop back, nginx walks any number of hops";

fn corpus() -> Vec<Case> {
    let mut c = vec![
        // --- chains -------------------------------------------------------
        same("no_header", &[], "127.0.0.2"),
        same("single_client", &[&xff("1.2.3.4")], "1.2.3.4"),
        same("client_behind_one_trusted_hop", &[&xff("1.2.3.4, 10.0.0.5")], "1.2.3.4"),
        same(
            "client_behind_three_trusted_hops",
            &[&xff("1.2.3.4, 10.1.1.1, 10.2.2.2, 10.3.3.3")],
            "1.2.3.4",
        ),
        same(
            "spoofed_entry_left_of_client",
            &[&xff("6.6.6.6, 1.2.3.4, 10.0.0.5")],
            "1.2.3.4",
        ),
        same("rightmost_untrusted_wins", &[&xff("1.2.3.4, 5.6.7.8")], "5.6.7.8"),
        same("all_trusted_leftmost", &[&xff("10.0.0.1, 10.0.0.2")], "10.0.0.1"),
        same("all_trusted_peer_address", &[&xff("127.0.0.2")], "127.0.0.2"),
        same(
            "all_trusted_v6_and_v4",
            &[&xff("2001:db8:ffff::1, 10.0.0.9")],
            "2001:db8:ffff::1",
        ),
        same(
            "v6_client_behind_trusted_v6",
            &[&xff("2001:db8::1, 2001:db8:ffff::5")],
            "2001:db8::1",
        ),
        same("v6_client_rightmost", &[&xff("10.0.0.1, 2001:db8::7")], "2001:db8::7"),
        same("zero_address", &[&xff("0.0.0.0")], "0.0.0.0"),
        // --- ports --------------------------------------------------------
        same("v4_port", &[&xff("1.2.3.4:5678")], "1.2.3.4"),
        same("v4_ports_chain", &[&xff("1.2.3.4:5678, 10.1.1.1:80")], "1.2.3.4"),
        same("v4_port_leading_zero", &[&xff("1.2.3.4:080")], "1.2.3.4"),
        differ(
            "v4_port_zero",
            &[&xff("1.2.3.4:0")],
            "1.2.3.4",
            "127.0.0.2",
            WHY_PORT_ZERO,
        ),
        differ(
            "v4_port_too_big",
            &[&xff("1.2.3.4:65536")],
            UNKNOWN,
            "127.0.0.2",
            WHY_MALFORMED_RIGHT,
        ),
        differ(
            "v4_empty_port",
            &[&xff("1.2.3.4:")],
            UNKNOWN,
            "127.0.0.2",
            WHY_MALFORMED_RIGHT,
        ),
        differ(
            "v4_two_ports",
            &[&xff("1.2.3.4:5678:9")],
            UNKNOWN,
            "127.0.0.2",
            WHY_MALFORMED_RIGHT,
        ),
        same("bracketed_v6_port", &[&xff("[2001:db8::1]:443")], "2001:db8::1"),
        same(
            "bracketed_v6_port_chain",
            &[&xff("[2001:db8::1]:443, [2001:db8:ffff::5]:8443")],
            "2001:db8::1",
        ),
        differ(
            "bracketed_v6_no_port",
            &[&xff("[2001:db8::1]")],
            "2001:db8::1",
            "127.0.0.2",
            WHY_BRACKET_NO_PORT,
        ),
        // --- IPv6 forms ---------------------------------------------------
        same("bare_v6", &[&xff("2001:db8::1")], "2001:db8::1"),
        same(
            "v6_uppercase_uncompressed",
            &[&xff("2001:DB8:0:0:0:0:0:1")],
            "2001:db8::1",
        ),
        same("v6_loopback", &[&xff("::1")], "::1"),
        differ(
            "v6_zone_id",
            &[&xff("fe80::1%eth0")],
            UNKNOWN,
            "127.0.0.2",
            WHY_MALFORMED_RIGHT,
        ),
        // --- IPv4-mapped IPv6 ---------------------------------------------
        differ(
            "mapped_v4",
            &[&xff("::ffff:1.2.3.4")],
            "1.2.3.4",
            "::ffff:1.2.3.4",
            WHY_MAPPED,
        ),
        differ(
            "mapped_v4_bracketed_port",
            &[&xff("[::ffff:1.2.3.4]:80")],
            "1.2.3.4",
            "::ffff:1.2.3.4",
            WHY_MAPPED,
        ),
        same("mapped_trusted_hop", &[&xff("1.2.3.4, ::ffff:10.1.1.1")], "1.2.3.4"),
        differ(
            "mapped_all_trusted",
            &[&xff("::ffff:10.1.1.1")],
            "10.1.1.1",
            "::ffff:10.1.1.1",
            WHY_MAPPED,
        ),
        differ(
            "v4_compatible_v6",
            &[&xff("::1.2.3.4")],
            "::102:304",
            "::1.2.3.4",
            WHY_V4_COMPATIBLE,
        ),
        // --- garbage ------------------------------------------------------
        differ("word", &[&xff("word")], UNKNOWN, "127.0.0.2", WHY_MALFORMED_RIGHT),
        differ(
            "three_octets",
            &[&xff("1.2.3")],
            UNKNOWN,
            "127.0.0.2",
            WHY_MALFORMED_RIGHT,
        ),
        differ(
            "octet_overflow",
            &[&xff("999.1.1.1")],
            UNKNOWN,
            "127.0.0.2",
            WHY_MALFORMED_RIGHT,
        ),
        differ(
            "unclosed_bracket",
            &[&xff("[::1")],
            UNKNOWN,
            "127.0.0.2",
            WHY_MALFORMED_RIGHT,
        ),
        differ(
            "garbage_behind_trusted_hop",
            &[&xff("1.2.3.4, 10.0.0.1, word, 10.0.0.2")],
            UNKNOWN,
            "10.0.0.2",
            WHY_MALFORMED_MIDDLE,
        ),
        differ(
            "garbage_behind_two_trusted_hops",
            &[&xff("1.2.3.4, 999.1.1.1, 10.0.0.3, 10.0.0.4")],
            UNKNOWN,
            "10.0.0.3",
            WHY_MALFORMED_MIDDLE,
        ),
        same("garbage_left_of_client", &[&xff("word, 1.2.3.4")], "1.2.3.4"),
        same("unknown_token_left_of_client", &[&xff("unknown, 1.2.3.4")], "1.2.3.4"),
        differ(
            "unknown_token_rightmost",
            &[&xff("1.2.3.4, unknown")],
            UNKNOWN,
            "127.0.0.2",
            WHY_MALFORMED_RIGHT,
        ),
        differ(
            "quoted_address",
            &[&xff("\"1.2.3.4\"")],
            UNKNOWN,
            "127.0.0.2",
            WHY_MALFORMED_RIGHT,
        ),
        differ(
            "semicolon_suffix",
            &[&xff("1.2.3.4;")],
            UNKNOWN,
            "127.0.0.2",
            WHY_MALFORMED_RIGHT,
        ),
        differ(
            "leading_zero_octet",
            &[&xff("01.2.3.4")],
            UNKNOWN,
            "1.2.3.4",
            WHY_LEADING_ZERO,
        ),
        differ(
            "octal_looking_trusted_hop",
            &[&xff("1.2.3.4, 010.0.0.1")],
            UNKNOWN,
            "1.2.3.4",
            WHY_LEADING_ZERO,
        ),
        differ(
            "broadcast_address",
            &[&xff("255.255.255.255")],
            "255.255.255.255",
            "127.0.0.2",
            WHY_BROADCAST,
        ),
        differ(
            "space_separated_list",
            &[&xff("1.2.3.4 10.0.0.1")],
            UNKNOWN,
            "1.2.3.4",
            WHY_SPACE_LIST,
        ),
        differ(
            "non_ascii_rightmost",
            &[&xff("1.2.3.4, 10.0.0.5\u{e9}")],
            UNKNOWN,
            "127.0.0.2",
            WHY_NON_ASCII,
        ),
        differ(
            "non_ascii_left_of_client",
            &[&xff("\u{e9}, 1.2.3.4")],
            UNKNOWN,
            "1.2.3.4",
            WHY_NON_ASCII,
        ),
        differ(
            "spoofed_x_real_ip_with_garbage_xff",
            &["X-Real-IP: 6.6.6.6", &xff("word")],
            UNKNOWN,
            "127.0.0.2",
            WHY_MALFORMED_RIGHT,
        ),
        same("spoofed_x_real_ip_alone", &["X-Real-IP: 6.6.6.6"], "127.0.0.2"),
        // --- empty values, commas, whitespace -----------------------------
        same("empty_value", &["X-Forwarded-For: "], "127.0.0.2"),
        same("empty_value_no_space", &["X-Forwarded-For:"], "127.0.0.2"),
        same("only_commas", &[&xff(",,,")], "127.0.0.2"),
        same("commas_and_spaces", &[&xff(", ,  , ")], "127.0.0.2"),
        same("trailing_comma", &[&xff("1.2.3.4,")], "1.2.3.4"),
        same("trailing_comma_after_hop", &[&xff("1.2.3.4, 10.0.0.1,")], "1.2.3.4"),
        same("double_comma", &[&xff("1.2.3.4,,10.0.0.1")], "1.2.3.4"),
        differ(
            "leading_comma",
            &[&xff(",1.2.3.4")],
            "1.2.3.4",
            "127.0.0.2",
            WHY_LEADING_COMMA,
        ),
        same("no_spaces", &[&xff("1.2.3.4,10.0.0.1,10.0.0.2")], "1.2.3.4"),
        same("many_spaces", &[&xff("1.2.3.4   ,    10.0.0.1   ")], "1.2.3.4"),
        differ(
            "tab_separated",
            &[&xff("1.2.3.4,\t10.0.0.1")],
            "1.2.3.4",
            "127.0.0.2",
            WHY_TAB,
        ),
        differ(
            "tabs_around_value",
            &["X-Forwarded-For:\t1.2.3.4\t"],
            "1.2.3.4",
            "127.0.0.2",
            WHY_TAB,
        ),
        // --- duplicated header lines --------------------------------------
        same("dup_client_then_hop", &[&xff("1.2.3.4"), &xff("10.0.0.1")], "1.2.3.4"),
        same("dup_spoof_then_client", &[&xff("5.5.5.5"), &xff("1.2.3.4")], "1.2.3.4"),
        same(
            "dup_three_lines",
            &[&xff("6.6.6.6, 1.2.3.4"), &xff("10.0.0.1"), &xff("10.0.0.2, 10.0.0.3")],
            "1.2.3.4",
        ),
        same("dup_all_trusted", &[&xff("10.0.0.7"), &xff("10.0.0.8")], "10.0.0.7"),
        differ(
            "dup_empty_last",
            &[&xff("1.2.3.4"), "X-Forwarded-For: "],
            "1.2.3.4",
            "127.0.0.2",
            WHY_EMPTY_LINE,
        ),
        differ(
            "dup_comma_last",
            &[&xff("1.2.3.4"), &xff(",")],
            "1.2.3.4",
            "127.0.0.2",
            WHY_EMPTY_LINE,
        ),
        differ(
            "dup_garbage_last",
            &[&xff("1.2.3.4"), &xff("word")],
            UNKNOWN,
            "127.0.0.2",
            WHY_MALFORMED_RIGHT,
        ),
        same(
            "dup_garbage_first_not_reached",
            &[&xff("word"), &xff("1.2.3.4")],
            "1.2.3.4",
        ),
        differ(
            "dup_garbage_first_reached",
            &[&xff("word"), &xff("10.0.0.1")],
            UNKNOWN,
            "10.0.0.1",
            WHY_MALFORMED_MIDDLE,
        ),
        same(
            "dup_mixed_case_names",
            &["X-Forwarded-For: 1.2.3.4", "x-forwarded-for: 10.0.0.9"],
            "1.2.3.4",
        ),
        // --- header name case and near misses ------------------------------
        same("lower_case_name", &["x-forwarded-for: 1.2.3.4"], "1.2.3.4"),
        same("mixed_case_name", &["x-FORWARDED-for: 1.2.3.4"], "1.2.3.4"),
        same("upper_case_name", &["X-FORWARDED-FOR: 1.2.3.4, 10.0.0.1"], "1.2.3.4"),
        same("underscore_name_ignored", &["X_Forwarded_For: 1.2.3.4"], "127.0.0.2"),
        same("near_miss_name_ignored", &["X-Forwarded: 1.2.3.4"], "127.0.0.2"),
        // --- Forwarded (both configured for X-Forwarded-For: ignored) -------
        same("forwarded_only", &["Forwarded: for=1.2.3.4"], "127.0.0.2"),
        same(
            "forwarded_quoted_v6",
            &["Forwarded: for=\"[2001:db8::1]:443\";proto=https"],
            "127.0.0.2",
        ),
        same(
            "forwarded_mixed_case",
            &["fOrWaRdEd: For=1.2.3.4, for=10.0.0.1"],
            "127.0.0.2",
        ),
        same(
            "forwarded_and_xff",
            &["Forwarded: for=5.5.5.5", &xff("1.2.3.4, 10.0.0.1")],
            "1.2.3.4",
        ),
        same(
            "forwarded_garbage_and_xff",
            &["Forwarded: for=\"", &xff("1.2.3.4")],
            "1.2.3.4",
        ),
    ];

    // --- huge --------------------------------------------------------------
    let mut long = untrusted_hosts(150);
    long.push("1.2.3.4".into());
    c.push(owned(
        same("huge_untrusted_list_151", &[], "1.2.3.4"),
        vec![xff(&long.join(", "))],
    ));

    let junk = vec!["junk"; 200].join(", ");
    c.push(owned(
        same("huge_junk_left_of_client", &[], "1.2.3.4"),
        vec![xff(&format!("{junk}, 1.2.3.4, 10.0.0.7"))],
    ));

    c.push(owned(
        same("huge_value_6k", &[], "198.51.100.199"),
        vec![xff(&untrusted_hosts(400).join(", "))],
    ));

    let mut behind = vec!["1.2.3.4".to_string()];
    behind.extend(trusted_hops(MAX_HOPS - 1));
    c.push(owned(
        same("hop_cap_client_at_64", &[], "1.2.3.4"),
        vec![xff(&behind.join(", "))],
    ));
    c.push(owned(
        same("hop_cap_64_all_trusted", &[], "10.0.0.0"),
        vec![xff(&trusted_hops(MAX_HOPS).join(", "))],
    ));
    c.push(owned(
        differ("hop_cap_65_all_trusted", &[], UNKNOWN, "10.0.0.0", WHY_HOP_CAP),
        vec![xff(&trusted_hops(MAX_HOPS + 1).join(", "))],
    ));
    let mut behind = vec!["1.2.3.4".to_string()];
    behind.extend(trusted_hops(70));
    c.push(owned(
        differ("hop_cap_client_behind_70", &[], UNKNOWN, "1.2.3.4", WHY_HOP_CAP),
        vec![xff(&behind.join(", "))],
    ));

    let mut lines = vec![xff("6.6.6.6, 1.2.3.4")];
    lines.extend(trusted_hops(40).iter().map(|h| xff(h)));
    c.push(owned(same("huge_40_duplicate_lines", &[], "1.2.3.4"), lines));

    c
}

/// Sent from 127.0.0.3 (not trusted): both must ignore every header.
fn untrusted_corpus() -> Vec<Vec<String>> {
    vec![
        vec![],
        vec![xff("1.2.3.4")],
        vec![xff("1.2.3.4, 10.0.0.1")],
        vec![xff("word")],
        vec![xff("10.0.0.1"), xff("127.0.0.2")],
        vec!["Forwarded: for=1.2.3.4".into()],
        vec!["X-Real-IP: 6.6.6.6".into()],
        vec![xff(&trusted_hops(100).join(", "))],
    ]
}

// ---------------------------------------------------------------------------
// Raw HTTP/1.1 client bound to a chosen loopback source address
// ---------------------------------------------------------------------------

struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

fn request_bytes(lines: &[String]) -> Vec<u8> {
    let mut req = b"GET /realip HTTP/1.1\r\nHost: localhost\r\n".to_vec();
    for line in lines {
        req.extend_from_slice(line.as_bytes());
        req.extend_from_slice(b"\r\n");
    }
    req.extend_from_slice(b"Connection: close\r\n\r\n");
    req
}

async fn send(from: IpAddr, to: SocketAddr, lines: &[String]) -> Result<Reply, String> {
    let fut = async {
        let sock = TcpSocket::new_v4().map_err(|e| e.to_string())?;
        sock.bind(SocketAddr::new(from, 0))
            .map_err(|e| format!("bind {from}: {e}"))?;
        let mut s = sock.connect(to).await.map_err(|e| format!("connect {to}: {e}"))?;
        s.write_all(&request_bytes(lines)).await.map_err(|e| e.to_string())?;
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).await.map_err(|e| e.to_string())?;
        parse_reply(&raw)
    };
    tokio::time::timeout(Duration::from_secs(10), fut)
        .await
        .map_err(|_| format!("no answer from {to} within 10 s"))?
}

fn parse_reply(raw: &[u8]) -> Result<Reply, String> {
    let text = String::from_utf8_lossy(raw);
    let (head, rest) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("incomplete response: {text:?}"))?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line {status_line:?}"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
        .collect();
    let chunked = headers
        .iter()
        .any(|(n, v)| n.eq_ignore_ascii_case("transfer-encoding") && v.eq_ignore_ascii_case("chunked"));
    let body = if chunked { dechunk(rest)? } else { rest.to_string() };
    Ok(Reply { status, headers, body })
}

fn dechunk(mut s: &str) -> Result<String, String> {
    let mut out = String::new();
    loop {
        let (size, rest) = s.split_once("\r\n").ok_or("bad chunk")?;
        let size = usize::from_str_radix(size.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|_| format!("bad chunk size {size:?}"))?;
        if size == 0 {
            return Ok(out);
        }
        out.push_str(rest.get(..size).ok_or("short chunk")?);
        s = rest.get(size + 2..).ok_or("short chunk")?;
    }
}

// ---------------------------------------------------------------------------
// Processes
// ---------------------------------------------------------------------------

/// Collects a child's output in a thread.
#[derive(Clone, Default)]
struct Log(Arc<Mutex<String>>);

impl Log {
    fn drain(&self, r: impl Read + Send + 'static) {
        let log = self.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(r).lines() {
                let Ok(line) = line else { break };
                let mut text = log.0.lock().unwrap();
                text.push_str(&line);
                text.push('\n');
            }
        });
    }

    fn text(&self) -> String {
        self.0.lock().unwrap().clone()
    }
}

/// A child process stopped (by its own PID) when dropped.
struct Proc {
    child: Child,
    /// The graceful-stop signal (nginx: SIGQUIT, gatekeeper: SIGTERM).
    stop_signal: libc::c_int,
}

impl Proc {
    fn stop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            // SAFETY: kill(2) on our own child's PID, which we have not reaped yet.
            unsafe { libc::kill(self.child.id() as libc::pid_t, self.stop_signal) };
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = self.child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
    }
}

fn find_nginx() -> PathBuf {
    if let Some(p) = std::env::var_os("NGINX") {
        return PathBuf::from(p);
    }
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    dirs.extend(["/usr/sbin", "/usr/local/sbin", "/sbin"].map(PathBuf::from));
    dirs.into_iter()
        .map(|d| d.join("nginx"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "nginx is not installed: this differential test needs it (CI installs the Debian package `nginx` \
             in .ci/run: `apt-get install -y nginx`); set NGINX=/path/to/nginx to use another binary"
            )
        })
}

fn nginx_conf(dir: &Path, port: u16) -> String {
    let d = dir.display();
    let from: String = TRUSTED
        .iter()
        .map(|t| format!("        set_real_ip_from {t};\n"))
        .collect();
    format!(
        "daemon off;\n\
         master_process off;\n\
         worker_processes 1;\n\
         pid {d}/nginx.pid;\n\
         lock_file {d}/nginx.lock;\n\
         error_log {d}/error.log info;\n\
         events {{ worker_connections 256; }}\n\
         http {{\n\
         \x20   access_log off;\n\
         \x20   client_body_temp_path {d}/body;\n\
         \x20   proxy_temp_path {d}/proxy;\n\
         \x20   fastcgi_temp_path {d}/fastcgi;\n\
         \x20   uwsgi_temp_path {d}/uwsgi;\n\
         \x20   scgi_temp_path {d}/scgi;\n\
         \x20   server {{\n\
         \x20       listen 127.0.0.1:{port};\n\
         {from}\
         \x20       real_ip_header X-Forwarded-For;\n\
         \x20       real_ip_recursive on;\n\
         \x20       location / {{\n\
         \x20           default_type text/plain;\n\
         \x20           add_header X-Client $remote_addr always;\n\
         \x20           return 200 \"$remote_addr\";\n\
         \x20       }}\n\
         \x20   }}\n\
         }}\n"
    )
}

/// Starts nginx on a free loopback port (retrying on a port conflict) and
/// waits until it answers.
fn start_nginx(rt: &tokio::runtime::Runtime, dir: &Path) -> (Proc, SocketAddr) {
    let bin = find_nginx();
    let version = Command::new(&bin).arg("-V").output().unwrap_or_else(|e| {
        panic!(
            "cannot run {}: {e} - this differential test needs nginx (Debian package `nginx`, installed by .ci/run)",
            bin.display()
        )
    });
    let v = String::from_utf8_lossy(&version.stderr);
    assert!(
        v.contains("--with-http_realip_module"),
        "{} is built without the realip module (install Debian's `nginx` package):\n{v}",
        bin.display()
    );
    let mut last_log = String::new();
    for _attempt in 0..5 {
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let conf = dir.join("nginx.conf");
        std::fs::write(&conf, nginx_conf(dir, port)).unwrap();
        let _ = std::fs::remove_file(dir.join("error.log"));
        let mut child = Command::new(&bin)
            .arg("-e")
            .arg(dir.join("error.log"))
            .arg("-p")
            .arg(dir)
            .arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        let stderr = Log::default();
        stderr.drain(child.stderr.take().unwrap());
        let mut proc = Proc {
            child,
            stop_signal: libc::SIGQUIT,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = proc.child.try_wait() {
                last_log = format!(
                    "nginx exited ({status}):\n{}{}",
                    stderr.text(),
                    std::fs::read_to_string(dir.join("error.log")).unwrap_or_default()
                );
                break;
            }
            // Ready when it answers as this nginx: $remote_addr in X-Client.
            if let Ok(r) = rt.block_on(send(UNTRUSTED_PEER, addr, &[])) {
                if r.status == 200 && r.header("x-client") == Some("127.0.0.3") {
                    return (proc, addr);
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        if !last_log.contains("Address already in use") {
            proc.stop();
            panic!(
                "nginx did not start on {addr}\n--- config ---\n{}\n--- log ---\n{last_log}{}",
                nginx_conf(dir, port),
                std::fs::read_to_string(dir.join("error.log")).unwrap_or_default()
            );
        }
    }
    panic!("nginx: no free port after 5 attempts:\n{last_log}");
}

/// The upstream: answers every request with the X-Real-IP values it got
/// ("xrip=a" / "xrip=a|b" / "xrip=-" when absent).
fn start_echo_upstream() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for conn in l.incoming() {
            let Ok(mut conn) = conn else { continue };
            std::thread::spawn(move || {
                let _ = conn.set_read_timeout(Some(Duration::from_secs(10)));
                let mut reader = BufReader::new(conn.try_clone().unwrap());
                let mut values = Vec::new();
                loop {
                    let mut line = String::new();
                    match reader.read_line(&mut line) {
                        Ok(0) | Err(_) => return,
                        Ok(_) => {}
                    }
                    let line = line.trim_end_matches(['\r', '\n']);
                    if line.is_empty() {
                        break;
                    }
                    if let Some((n, v)) = line.split_once(':') {
                        if n.trim().eq_ignore_ascii_case("x-real-ip") {
                            values.push(v.trim().to_string());
                        }
                    }
                }
                let body = if values.is_empty() {
                    "xrip=-".to_string()
                } else {
                    format!("xrip={}", values.join("|"))
                };
                let _ = write!(
                    conn,
                    "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            });
        }
    });
    addr
}

fn start_gatekeeper(dir: &Path, upstream: SocketAddr) -> Gatekeeper {
    let trusted: Vec<String> = TRUSTED.iter().map(|t| format!("{t:?}")).collect();
    let config = format!(
        "listen = [\"127.0.0.1:0\"]\n\n\
         [upstream]\nurl = \"http://{upstream}\"\n\n\
         [maintenance]\ntoggle = {:?}\n\n\
         [clients]\ntrusted_proxies = [{}]\nheader = \"X-Forwarded-For\"\n\n\
         [log]\naccess = false\n",
        dir.join("maintenance-mode-on").display().to_string(),
        trusted.join(", ")
    );
    let path = dir.join("gatekeeper.toml");
    std::fs::write(&path, &config).unwrap();
    Gatekeeper::start_with_path(&path)
}

// ---------------------------------------------------------------------------
// The test
// ---------------------------------------------------------------------------

/// nginx's answer: `$remote_addr`, or the status when it refused the request.
async fn ask_nginx(from: IpAddr, nginx: SocketAddr, lines: &[String]) -> String {
    match send(from, nginx, lines).await {
        Ok(r) if r.status == 200 => r.body,
        Ok(r) => format!("HTTP {}", r.status),
        Err(e) => format!("error: {e}"),
    }
}

/// gatekeeper's answer: the X-Real-IP the upstream got, UNKNOWN when none.
async fn ask_gatekeeper(from: IpAddr, gk: SocketAddr, lines: &[String]) -> String {
    match send(from, gk, lines).await {
        Ok(r) if r.status == 200 => match r.body.strip_prefix("xrip=") {
            Some("-") => UNKNOWN.to_string(),
            Some(v) => v.to_string(),
            None => format!("not from the upstream: {:?}", r.body),
        },
        Ok(r) => format!("HTTP {}", r.status),
        Err(e) => format!("error: {e}"),
    }
}

fn show(lines: &[String]) -> String {
    let s = format!("{lines:?}");
    if s.len() > 120 {
        format!("{}… ({} bytes)", &s[..100], s.len())
    } else {
        s
    }
}

#[test]
fn realip_matches_nginx_or_is_pinned_safer() {
    let cases = corpus();
    assert!(cases.len() >= 60, "corpus has only {} cases", cases.len());
    let mut names = std::collections::HashSet::new();
    for c in &cases {
        assert!(names.insert(c.name), "duplicate case name {}", c.name);
        if let Some((n, why)) = c.nginx {
            assert_ne!(
                n, c.gatekeeper,
                "{}: pinned as differing but both answers are equal",
                c.name
            );
            assert!(!why.is_empty(), "{}: a difference needs a reason", c.name);
        }
    }

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let nginx_dir = dir.path().join("nginx");
    std::fs::create_dir(&nginx_dir).unwrap();
    let (mut nginx_proc, nginx) = start_nginx(&rt, &nginx_dir);
    let upstream = start_echo_upstream();
    let mut gk_proc = start_gatekeeper(dir.path(), upstream);
    let gk = gk_proc.addr;

    let mut failures = Vec::new();
    let (mut identical, mut differ) = (0, 0);
    for c in &cases {
        let got_gk = rt.block_on(ask_gatekeeper(TRUSTED_PEER, gk, &c.lines));
        let got_ngx = rt.block_on(ask_nginx(TRUSTED_PEER, nginx, &c.lines));
        if got_gk == got_ngx {
            identical += 1;
        } else {
            differ += 1;
        }
        if got_gk != c.gatekeeper || got_ngx != c.nginx_answer() {
            failures.push(format!(
                "{}: {}\n    gatekeeper: got {got_gk:?}, pinned {:?}\n    nginx:      got {got_ngx:?}, pinned {:?}",
                c.name,
                show(&c.lines),
                c.gatekeeper,
                c.nginx_answer()
            ));
        }
    }

    let untrusted = untrusted_corpus();
    for lines in &untrusted {
        let got_gk = rt.block_on(ask_gatekeeper(UNTRUSTED_PEER, gk, lines));
        let got_ngx = rt.block_on(ask_nginx(UNTRUSTED_PEER, nginx, lines));
        if got_gk != "127.0.0.3" || got_ngx != "127.0.0.3" {
            failures.push(format!(
                "untrusted peer 127.0.0.3: {}\n    gatekeeper: got {got_gk:?}, nginx: got {got_ngx:?}, both must be \"127.0.0.3\"",
                show(lines)
            ));
        }
    }

    gk_proc.sigterm();
    gk_proc.wait_exit(Duration::from_secs(5));
    nginx_proc.stop();

    eprintln!(
        "realip differential: {} cases, {identical} identical, {differ} differ (pinned)",
        cases.len()
    );
    eprintln!(
        "  (+ {} cases from an untrusted peer, all answered by the peer address)",
        untrusted.len()
    );
    assert!(
        failures.is_empty(),
        "{} of {} cases do not match their pinned answers:\n{}",
        failures.len(),
        cases.len() + untrusted.len(),
        failures.join("\n")
    );
}
