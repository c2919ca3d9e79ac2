//! Errors that point at the offending place in the file.

use std::fmt;
use std::ops::Range;

/// One problem in a config file.
///
/// `line` and `col` are 1-based; `col` counts characters, not bytes, so it
/// matches what an editor shows for non-ASCII text.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{file}:{line}:{col}: {}{reason}", key_prefix(.key))]
pub struct ConfigError {
    pub file: String,
    pub line: usize,
    pub col: usize,
    /// Key path such as `service[1].backend[0].address`; empty (and left out
    /// of the message) when the error is not about one key, such as a TOML
    /// syntax error.
    pub key: String,
    pub reason: String,
}

fn key_prefix(key: &str) -> String {
    if key.is_empty() {
        String::new()
    } else {
        format!("{key}: ")
    }
}

/// Every problem found in one file, in file order.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
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

/// Turns byte offsets into line:col positions for one file.
pub(crate) struct Locator<'a> {
    file: &'a str,
    text: &'a str,
    line_starts: Vec<usize>,
}

impl<'a> Locator<'a> {
    pub(crate) fn new(file: &'a str, text: &'a str) -> Self {
        let line_starts = std::iter::once(0)
            .chain(text.match_indices('\n').map(|(i, _)| i + 1))
            .collect();
        Self {
            file,
            text,
            line_starts,
        }
    }

    pub(crate) fn position(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.text.len());
        let line = self.line_starts.partition_point(|&s| s <= offset) - 1;
        let start = self.line_starts[line];
        // A span can end inside a multi-byte character only if the parser
        // reported a broken position; clamp instead of panicking on it.
        let col = self
            .text
            .get(start..offset)
            .map_or(offset - start, |s| s.chars().count());
        (line + 1, col + 1)
    }

    pub(crate) fn error(
        &self,
        span: Option<Range<usize>>,
        key: impl Into<String>,
        reason: impl Into<String>,
    ) -> ConfigError {
        let (line, col) = span.map_or((1, 1), |s| self.position(s.start));
        ConfigError {
            file: self.file.to_owned(),
            line,
            col,
            key: key.into(),
            reason: reason.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_are_one_based_and_count_characters() {
        let loc = Locator::new("f.toml", "ab\n\u{e9}x = 1\n");
        assert_eq!(loc.position(0), (1, 1));
        assert_eq!(loc.position(1), (1, 2));
        assert_eq!(loc.position(3), (2, 1));
        assert_eq!(loc.position(5), (2, 2));
        assert_eq!(loc.position(100), (3, 1));
    }

    #[test]
    fn errors_display_one_per_line() {
        let loc = Locator::new("f.toml", "a\nb\n");
        let errs = ConfigErrors(vec![
            loc.error(Some(0..1), "a", "first"),
            loc.error(Some(2..3), "b", "second"),
        ]);
        assert_eq!(
            errs.to_string(),
            "f.toml:1:1: a: first\nf.toml:2:1: b: second"
        );
    }
}
