//! `lb import-keepalived`: a keepalived.conf turned into lb's TOML.
//!
//! ```text
//! lexer     text to words, braces and line ends; comments, quotes, continuations
//! parser    words to a tree of `Node`s (keyword, args, children, file:line),
//!           with `include` spliced in where it stands, as keepalived does
//! include   which files an include pattern names (glob), and reading them
//! convert   the tree to TOML tables, one warning per setting lb cannot carry over
//! emit      the TOML text: stable order, commented
//! ```
//!
//! The output is validated with `config::parse` before it is returned, and
//! anything it rejects becomes a warning too, so a config that needs hand
//! editing never looks finished.

mod command;
mod convert;
mod emit;
mod include;
mod lexer;
mod parser;

#[cfg(test)]
mod tests;

use std::fmt;
use std::io;
use std::path::Path;

pub use include::{FileSystem, Includes};

/// Labels warnings about the generated TOML rather than the keepalived input.
pub const GENERATED: &str = "<generated>";

/// Something in the keepalived config that lb cannot express, or expresses
/// differently.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Warning {
    pub file: String,
    pub line: usize,
    pub message: String,
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: warning: {}", self.file, self.line, self.message)
    }
}

/// The TOML (for stdout) and the warnings (for stderr), in source order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Import {
    pub toml: String,
    pub warnings: Vec<Warning>,
}

/// What stops an import: the input cannot be read or is not keepalived syntax.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("{file}: cannot read: {source}")]
    Read {
        file: String,
        #[source]
        source: io::Error,
    },
    #[error("{file}:{line}: cannot read included file {included}: {source}")]
    Include {
        file: String,
        line: usize,
        included: String,
        #[source]
        source: io::Error,
    },
    #[error("{file}:{line}: include cycle: {included} is already being read")]
    IncludeCycle {
        file: String,
        line: usize,
        included: String,
    },
    #[error("{file}:{line}: {message}")]
    Syntax {
        file: String,
        line: usize,
        message: String,
    },
}

/// Imports the keepalived config at `path`, following its includes on disk.
pub fn import(path: &Path) -> Result<Import, ImportError> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| ImportError::Read {
        file: file.clone(),
        source,
    })?;
    import_str(&text, &file, &FileSystem)
}

/// Imports `text`; `file_name` labels warnings and errors and anchors
/// relative includes, which `includes` resolves and reads.
pub fn import_str(
    text: &str,
    file_name: &str,
    includes: &dyn Includes,
) -> Result<Import, ImportError> {
    let parsed = parser::parse(text, file_name, includes)?;
    let converted = convert::convert(&parsed.nodes);
    let mut warnings = parsed.warnings;
    warnings.extend(converted.warnings);
    // Stable: warnings about one node keep the order they were found in.
    warnings.sort_by_key(|(pos, _)| *pos);
    let mut warnings: Vec<Warning> = warnings.into_iter().map(|(_, w)| w).collect();
    let toml = emit::render(file_name, &converted.tables);
    if let Err(errors) = crate::config::parse(&toml, GENERATED, &TargetHost) {
        warnings.extend(errors.0.into_iter().map(|e| Warning {
            file: e.file,
            line: e.line,
            message: format!(
                "the generated config does not validate, edit it before use: {}{}",
                if e.key.is_empty() {
                    String::new()
                } else {
                    format!("{}: ", e.key)
                },
                e.reason
            ),
        }));
    }
    Ok(Import { toml, warnings })
}

/// The node the generated config is for, which need not be this one: any
/// interface and any user may exist there, and its scripts are checked when
/// `lb check-config` runs on it.
struct TargetHost;

impl crate::config::Environment for TargetHost {
    fn interface_exists(&self, _name: &str) -> bool {
        true
    }

    fn user_ids(&self, _name: &str) -> Option<(u32, u32)> {
        Some((0, 0))
    }
}
