//! HTTP's token grammar (RFC 9110 §5.6.2), shared by every parser that needs it.

/// `tchar = "!" / "#" / "$" / "%" / "&" / "'" / "*" / "+" / "-" / "." / "^" / "_" / "`" / "|" / "~" / DIGIT / ALPHA`
pub fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// `token = 1*tchar`
pub fn is_token(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(is_tchar)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens() {
        for ok in ["gzip", "x-y_z", "a.b", "!#$%&'*+-.^_`|~09AZaz"] {
            assert!(is_token(ok), "{ok}");
        }
        for bad in ["", "a b", "a,b", "a;b", "a=b", "a\"b", "é", "a/b", "(a)"] {
            assert!(!is_token(bad), "{bad}");
        }
    }
}
