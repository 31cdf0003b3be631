//! Config errors that name the file, the line and column, and the key, e.g.
//! `gatekeeper.toml:7:11: clients.allow[1]: "10.0.0.0/33" is not an IP address or CIDR range`.

use std::fmt;
use std::ops::Range;

/// One problem found in a config (or a file it points to).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The file the problem is in, as the operator named it.
    pub file: String,
    /// 1-based line and column, when the problem has a place in the file.
    pub pos: Option<(usize, usize)>,
    /// Dotted key path, e.g. `clients.allow[1]`.
    pub key: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.pos {
            Some((line, col)) => write!(f, "{}:{line}:{col}: ", self.file)?,
            None => write!(f, "{}: ", self.file)?,
        }
        if self.key.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{}: {}", self.key, self.message)
        }
    }
}

/// Every problem found in one load; a config is used only when this is empty.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// Collects errors for one source text, turning byte spans into line:column.
pub(crate) struct Collector<'a> {
    file: String,
    src: &'a str,
    pub errors: Vec<ConfigError>,
}

impl<'a> Collector<'a> {
    pub fn new(file: impl Into<String>, src: &'a str) -> Self {
        Collector {
            file: file.into(),
            src,
            errors: Vec::new(),
        }
    }

    pub fn at(&mut self, span: Option<Range<usize>>, key: impl Into<String>, message: impl Into<String>) {
        let pos = span.map(|s| line_col(self.src, s.start));
        self.errors.push(ConfigError {
            file: self.file.clone(),
            pos,
            key: key.into(),
            message: message.into(),
        });
    }
}

/// 1-based line and column (in characters) of a byte offset.
pub fn line_col(src: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(src.len());
    let before = src.get(..offset).unwrap_or(src);
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let col = before.get(line_start..).map_or(0, |s| s.chars().count()) + 1;
    (line, col)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions() {
        let src = "a = 1\nbb = [\"x\", \"yé\", \"z\"]\n";
        assert_eq!(line_col(src, 0), (1, 1));
        assert_eq!(line_col(src, 6), (2, 1));
        assert_eq!(line_col(src, src.find('z').unwrap_or(0)), (2, 19));
        assert_eq!(line_col(src, 10_000), (3, 1));
    }

    #[test]
    fn display() {
        let e = ConfigError {
            file: "gatekeeper.toml".into(),
            pos: Some((7, 11)),
            key: "clients.allow[1]".into(),
            message: "\"10.0.0.0/33\" is not an IP address or CIDR range".into(),
        };
        assert_eq!(
            e.to_string(),
            "gatekeeper.toml:7:11: clients.allow[1]: \"10.0.0.0/33\" is not an IP address or CIDR range"
        );
    }
}
