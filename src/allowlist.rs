//! IP allowlists: parsing allowlist entries and allow files, and [`IpSet`], a
//! set of IP ranges with O(log n) membership used both for the maintenance
//! allowlist and for `trusted_proxies`.

use std::net::IpAddr;

use ipnet::{IpNet, Ipv4Net};

/// A set of IPv4 and IPv6 ranges, stored as sorted, merged, non-overlapping
/// inclusive ranges so that [`IpSet::contains`] is a binary search.
#[derive(Clone, Debug, Default)]
pub struct IpSet {
    v4: Vec<(u32, u32)>,
    v6: Vec<(u128, u128)>,
    /// Entries given to [`IpSet::new`], before merging (for metrics).
    entries: usize,
}

impl IpSet {
    /// Builds a set from networks; overlapping and adjacent ranges are merged.
    /// IPv6 networks inside `::ffff:0:0/96` are stored as the IPv4 networks
    /// they map, matching how [`IpSet::contains`] looks addresses up.
    pub fn new(nets: impl IntoIterator<Item = IpNet>) -> IpSet {
        let (mut v4, mut v6, mut entries) = (Vec::new(), Vec::new(), 0);
        for net in nets {
            entries += 1;
            match fold_mapped(net).trunc() {
                IpNet::V4(n) => v4.push((n.network().into(), n.broadcast().into())),
                IpNet::V6(n) => v6.push((n.network().into(), n.broadcast().into())),
            }
        }
        IpSet {
            v4: merge(v4, |x| x.saturating_add(1)),
            v6: merge(v6, |x| x.saturating_add(1)),
            entries,
        }
    }

    /// An empty set: contains nothing.
    pub fn empty() -> IpSet {
        IpSet::default()
    }

    /// Whether `ip` is in the set. An IPv4-mapped IPv6 address
    /// (`::ffff:a.b.c.d`) is looked up as the IPv4 address `a.b.c.d`.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match ip.to_canonical() {
            IpAddr::V4(a) => lookup(&self.v4, a.into()),
            IpAddr::V6(a) => lookup(&self.v6, a.into()),
        }
    }

    /// Whether the set was built from no entries at all.
    pub fn is_empty(&self) -> bool {
        self.entries == 0
    }

    /// Number of entries given to [`IpSet::new`] (before merging).
    pub fn len(&self) -> usize {
        self.entries
    }

    /// Whether the set holds every IPv4 address, and every IPv6 address
    /// (whatever entries it was built from: `0.0.0.0/1` and `128.0.0.0/1` too).
    pub fn covers_everything(&self) -> (bool, bool) {
        (self.v4 == [(0, u32::MAX)], self.v6 == [(0, u128::MAX)])
    }
}

/// Sorts inclusive ranges and merges those that overlap or touch.
/// `succ` is `x + 1`, saturating at the type's maximum.
fn merge<T: Ord + Copy>(mut ranges: Vec<(T, T)>, succ: fn(T) -> T) -> Vec<(T, T)> {
    ranges.sort_unstable();
    let mut out: Vec<(T, T)> = Vec::with_capacity(ranges.len());
    for (start, end) in ranges {
        match out.last_mut() {
            Some(last) if start <= succ(last.1) => last.1 = last.1.max(end),
            _ => out.push((start, end)),
        }
    }
    out.shrink_to_fit();
    out
}

/// Binary search in sorted, non-overlapping inclusive ranges.
fn lookup<T: Ord + Copy>(ranges: &[(T, T)], x: T) -> bool {
    // Index of the first range starting after `x`; only the one before it can hold `x`.
    let i = ranges.partition_point(|&(start, _)| start <= x);
    i > 0 && x <= ranges[i - 1].1
}

/// Turns an IPv6 network inside `::ffff:0:0/96` into the IPv4 network it maps.
fn fold_mapped(net: IpNet) -> IpNet {
    match net {
        IpNet::V6(n) if n.prefix_len() >= 96 => match n.network().to_ipv4_mapped() {
            Some(v4) => Ipv4Net::new(v4, n.prefix_len() - 96).map_or(net, IpNet::V4),
            None => net,
        },
        _ => net,
    }
}

/// An allowlist entry that is neither an IP address nor a CIDR range.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{input:?} is not an IP address or CIDR range")]
pub struct EntryError {
    /// The rejected entry, with surrounding whitespace trimmed.
    pub input: String,
}

/// Parses one allowlist entry: an address (`203.0.113.7`, `2001:db8::1`,
/// taken as a /32 or /128) or a CIDR range (`10.0.0.0/8`, `2001:db8::/32`).
///
/// Surrounding whitespace is trimmed; host bits are dropped (`10.1.2.3/8` is
/// `10.0.0.0/8`); IPv4-mapped IPv6 ranges become IPv4 ranges.
pub fn parse_entry(s: &str) -> Result<IpNet, EntryError> {
    let s = s.trim();
    let net = if s.contains('/') {
        s.parse::<IpNet>().ok()
    } else {
        s.parse::<IpAddr>().ok().map(IpNet::from)
    };
    match net {
        Some(net) => Ok(fold_mapped(net.trunc())),
        None => Err(EntryError { input: s.to_owned() }),
    }
}

/// A bad entry in an allow file, with its position.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {source}")]
pub struct AllowFileError {
    /// 1-based line number.
    pub line: usize,
    /// 1-based column (in characters) where the entry starts.
    pub column: usize,
    /// What was wrong with the entry.
    pub source: EntryError,
}

/// Parses an allow file: one entry per line, `#` starts a comment (whole
/// line or trailing), blank lines are ignored, CRLF line ends are accepted.
pub fn parse_allow_file(text: &str) -> Result<Vec<IpNet>, AllowFileError> {
    // Editors on Windows may prepend a byte-order mark.
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut nets = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let entry = line.split('#').next().unwrap_or_default();
        if entry.trim().is_empty() {
            continue;
        }
        let indent = entry.len() - entry.trim_start().len();
        let net = parse_entry(entry).map_err(|source| AllowFileError {
            line: i + 1,
            column: entry[..indent].chars().count() + 1,
            source,
        })?;
        nets.push(net);
    }
    Ok(nets)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn set(entries: &[&str]) -> IpSet {
        IpSet::new(entries.iter().map(|e| parse_entry(e).unwrap()))
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn v4_range_edges() {
        let s = set(&["10.0.0.0/8", "192.0.2.7"]);
        for yes in ["10.0.0.0", "10.255.255.255", "10.1.2.3", "192.0.2.7"] {
            assert!(s.contains(ip(yes)), "{yes}");
        }
        for no in ["9.255.255.255", "11.0.0.0", "192.0.2.6", "192.0.2.8", "::1"] {
            assert!(!s.contains(ip(no)), "{no}");
        }
    }

    #[test]
    fn v6_range_edges() {
        let s = set(&["2001:db8::/32", "::1"]);
        for yes in ["2001:db8::", "2001:db8:ffff:ffff:ffff:ffff:ffff:ffff", "::1"] {
            assert!(s.contains(ip(yes)), "{yes}");
        }
        for no in ["2001:db7:ffff:ffff:ffff:ffff:ffff:ffff", "2001:db9::", "::2", "::"] {
            assert!(!s.contains(ip(no)), "{no}");
        }
    }

    #[test]
    fn merges_overlapping_and_adjacent() {
        let s = set(&["10.0.0.0/24", "10.0.1.0/24", "10.0.0.128/25", "10.0.3.0/24"]);
        assert_eq!(s.v4, vec![(0x0a00_0000, 0x0a00_01ff), (0x0a00_0300, 0x0a00_03ff)]);
        assert_eq!(s.len(), 4);
        let s = set(&["::/1", "8000::/1"]);
        assert_eq!(s.v6, vec![(0, u128::MAX)]);
        assert!(!s.contains(ip("1.2.3.4")));
    }

    #[test]
    fn zero_prefix_and_top_of_range() {
        let s = set(&["0.0.0.0/0", "255.255.255.255"]);
        assert_eq!(s.v4, vec![(0, u32::MAX)]);
        assert!(s.contains(ip("0.0.0.0")) && s.contains(ip("255.255.255.255")));
        assert!(!s.contains(ip("::")));
        let s = set(&["::/0"]);
        assert!(s.contains(ip("ffff::1")) && s.contains(ip("::")));
        // SECURITY: IPv4 clients (mapped or not) match IPv4 entries only.
        assert!(!s.contains(ip("1.2.3.4")) && !s.contains(ip("::ffff:1.2.3.4")));
    }

    #[test]
    fn mapped_v4() {
        let s = set(&["192.0.2.0/24", "::ffff:10.0.0.0/104"]);
        assert!(s.contains(ip("::ffff:192.0.2.1")));
        assert!(s.contains(ip("10.9.9.9")));
        assert!(s.contains(ip("::ffff:10.9.9.9")));
        assert!(!s.contains(ip("::ffff:11.0.0.0")));
        assert!(s.v6.is_empty());
        // Mapped networks passed to new() directly are folded too.
        let net: IpNet = "::ffff:203.0.113.0/120".parse().unwrap();
        assert!(IpSet::new([net]).contains(ip("203.0.113.5")));
    }

    #[test]
    fn empty_and_len() {
        let e = IpSet::empty();
        assert_eq!(e.len(), 0);
        assert!(e.is_empty() && !e.contains(ip("1.2.3.4")));
        let s = set(&["1.2.3.4", "1.2.3.4"]);
        assert!(!s.is_empty());
        assert_eq!(s.len(), 2);
        assert_eq!(s.v4.len(), 1);
    }

    #[test]
    fn parse_entry_forms() {
        let cases = [
            ("203.0.113.7", "203.0.113.7/32"),
            ("2001:db8::1", "2001:db8::1/128"),
            ("10.0.0.0/8", "10.0.0.0/8"),
            ("2001:db8::/32", "2001:db8::/32"),
            ("10.1.2.3/8", "10.0.0.0/8"),
            ("2001:db8::1/32", "2001:db8::/32"),
            ("::ffff:10.0.0.0/104", "10.0.0.0/8"),
            ("::ffff:192.0.2.1", "192.0.2.1/32"),
            ("  \t192.0.2.1/24 ", "192.0.2.0/24"),
            ("0.0.0.0/0", "0.0.0.0/0"),
            ("::/0", "::/0"),
        ];
        for (input, want) in cases {
            assert_eq!(parse_entry(input).unwrap().to_string(), want, "{input}");
        }
    }

    #[test]
    fn parse_entry_errors() {
        for bad in [
            "10.0.0.0/33",
            "bogus",
            "",
            "1.2.3",
            "10.0.0.0/",
            "/8",
            "::/129",
            "1.2.3.4 5",
        ] {
            assert!(parse_entry(bad).is_err(), "{bad}");
        }
        assert_eq!(
            parse_entry(" 10.0.0.0/33 ").unwrap_err().to_string(),
            r#""10.0.0.0/33" is not an IP address or CIDR range"#
        );
    }

    #[test]
    fn allow_file() {
        let text = "# office\r\n\r\n10.0.0.1  # desk\r\n  2001:db8::/32\n\t# indented comment\n192.0.2.0/24#tight\n";
        let nets = parse_allow_file(text).unwrap();
        let got: Vec<String> = nets.iter().map(|n| n.to_string()).collect();
        assert_eq!(got, ["10.0.0.1/32", "2001:db8::/32", "192.0.2.0/24"]);
        assert_eq!(parse_allow_file("").unwrap(), vec![]);
        assert_eq!(parse_allow_file("\u{feff}1.2.3.4\n").unwrap().len(), 1);
    }

    #[test]
    fn allow_file_errors() {
        let err = parse_allow_file("1.2.3.4\r\n# c\r\n  bogus # why\r\n").unwrap_err();
        assert_eq!((err.line, err.column), (3, 3));
        assert_eq!(err.to_string(), r#"line 3: "bogus" is not an IP address or CIDR range"#);
        let err = parse_allow_file("\n\n\n10.0.0.0/33").unwrap_err();
        assert_eq!((err.line, err.column), (4, 1));
        let err = parse_allow_file("1.2.3.4 5.6.7.8").unwrap_err();
        assert_eq!(err.line, 1);
    }

    /// Deterministic xorshift so the big test needs no extra crates.
    fn xorshift(state: &mut u64) -> u64 {
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        *state
    }

    #[test]
    fn hundred_thousand_entries_match_linear_scan() {
        let mut rng = 0x9e37_79b9_7f4a_7c15_u64;
        let mut nets = Vec::new();
        let mut naive = Vec::new();
        for i in 0..100_000 {
            let r = xorshift(&mut rng);
            // Half the entries crowd into 10.0.0.0/12 so ranges overlap and merge.
            let addr = if i % 2 == 0 {
                0x0a00_0000 | (r as u32 & 0x000f_ffff)
            } else {
                r as u32
            };
            let prefix = if r >> 40 & 1 == 0 { 32 } else { 24 };
            let net = Ipv4Net::new(addr.into(), prefix).unwrap().trunc();
            naive.push((u32::from(net.network()), u32::from(net.broadcast())));
            nets.push(IpNet::V4(net));
        }
        let s = IpSet::new(nets);
        assert_eq!(s.len(), 100_000);
        let mut queries: Vec<u32> = (0..1_000).map(|_| xorshift(&mut rng) as u32).collect();
        queries.extend((0..1_000).map(|_| 0x0a00_0000 | (xorshift(&mut rng) as u32 & 0x000f_ffff)));
        for &(lo, hi) in naive.iter().step_by(97) {
            queries.extend([lo.wrapping_sub(1), lo, hi, hi.wrapping_add(1)]);
        }
        for q in queries {
            let want = naive.iter().any(|&(lo, hi)| lo <= q && q <= hi);
            assert_eq!(s.contains(IpAddr::from(q.to_be_bytes())), want, "{q:#x}");
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1000))]

        #[test]
        fn matches_naive(
            v4 in prop::collection::vec((any::<u32>(), 0u8..=32), 0..20),
            v6 in prop::collection::vec((any::<u128>(), 0u8..=128), 0..20),
            q4 in any::<u32>(),
            q6 in any::<u128>(),
        ) {
            let mut nets: Vec<IpNet> = v4.iter()
                .map(|&(a, p)| Ipv4Net::new(a.into(), p).unwrap().into()).collect();
            nets.extend(v6.iter().map(|&(a, p)| IpNet::from(ipnet::Ipv6Net::new(a.into(), p).unwrap())));
            let s = IpSet::new(nets.clone());
            // Query near each range edge as well as at random.
            let mut queries = vec![IpAddr::from(q4.to_be_bytes()), IpAddr::from(q6.to_be_bytes())];
            for n in &nets {
                queries.push(n.network());
                queries.push(n.broadcast());
            }
            for q in queries {
                let q = q.to_canonical();
                let want = nets.iter().any(|n| fold_mapped(*n).contains(&q));
                prop_assert_eq!(s.contains(q), want, "{}", q);
            }
        }
    }
}
