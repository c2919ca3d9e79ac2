//! Finding and reading the files an `include` names.
//!
//! keepalived expands include patterns with glob(3); `*`, `?` and `[...]`
//! are supported here, in any path component. csh braces are not: the
//! lexer would take them for a block.

use std::io;
use std::path::{Component, Path, PathBuf};

/// Where included files come from: the disk for `import`, a map in tests.
pub trait Includes {
    /// The files `pattern` names, sorted; empty when none exists.
    fn expand(&self, pattern: &Path) -> Vec<PathBuf>;
    fn read(&self, path: &Path) -> io::Result<String>;
    /// Equal for two paths to the same file, so include cycles are found
    /// however the paths are spelled.
    fn identity(&self, path: &Path) -> PathBuf;
}

/// Included files read from disk.
#[derive(Clone, Copy, Debug, Default)]
pub struct FileSystem;

impl Includes for FileSystem {
    fn expand(&self, pattern: &Path) -> Vec<PathBuf> {
        let mut found = vec![PathBuf::new()];
        for component in pattern.components() {
            let glob = match component {
                Component::Normal(name) => name.to_str().filter(|n| has_wildcard(n)),
                _ => None,
            };
            found = match glob {
                Some(glob) => found.iter().flat_map(|dir| matching(dir, glob)).collect(),
                None => found.into_iter().map(|p| p.join(component)).collect(),
            };
        }
        found.retain(|p| p.exists());
        found.sort();
        found
    }

    fn read(&self, path: &Path) -> io::Result<String> {
        std::fs::read_to_string(path)
    }

    fn identity(&self, path: &Path) -> PathBuf {
        std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf())
    }
}

/// Entries of `dir` whose names match `glob`; an unreadable directory
/// matches nothing, as with glob(3).
fn matching(dir: &Path, glob: &str) -> Vec<PathBuf> {
    let listed = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    let Ok(entries) = std::fs::read_dir(listed) else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|name| matches(glob, name))
        .map(|name| dir.join(name))
        .collect()
}

pub(crate) fn has_wildcard(s: &str) -> bool {
    s.contains(['*', '?', '['])
}

/// glob(3) matching of one path component. As in the shell, a leading dot
/// must be matched literally, so `*.conf` skips editors' `.x.conf.swp`-like
/// hidden files.
pub(crate) fn matches(glob: &str, name: &str) -> bool {
    if name.starts_with('.') && !glob.starts_with('.') {
        return false;
    }
    let glob: Vec<char> = glob.chars().collect();
    let name: Vec<char> = name.chars().collect();
    match_from(&glob, &name)
}

fn match_from(glob: &[char], name: &[char]) -> bool {
    match glob.split_first() {
        None => name.is_empty(),
        Some(('*', rest)) => (0..=name.len()).any(|i| match_from(rest, &name[i..])),
        Some(('?', rest)) => !name.is_empty() && match_from(rest, &name[1..]),
        Some(('[', rest)) => match (bracket(rest, name.first().copied()), name.split_first()) {
            (Some((hit, after)), Some((_, name_rest))) => hit && match_from(after, name_rest),
            (Some(_), None) => false,
            // No closing bracket: a literal '['.
            (None, _) => name.first() == Some(&'[') && match_from(rest, &name[1..]),
        },
        Some((c, rest)) => name.first() == Some(c) && match_from(rest, &name[1..]),
    }
}

/// A `[...]` class (after the `[`): whether `c` is in it, and the rest of the
/// glob; `None` when the class is never closed.
fn bracket(class: &[char], c: Option<char>) -> Option<(bool, &[char])> {
    let (negated, mut i) = match class.first() {
        Some('!' | '^') => (true, 1),
        _ => (false, 0),
    };
    let mut hit = false;
    let start = i;
    loop {
        let &first = class.get(i)?;
        // A ']' right after the opening is a member, not the end.
        if first == ']' && i > start {
            return Some((hit != negated, &class[i + 1..]));
        }
        match (class.get(i + 1), class.get(i + 2)) {
            (Some('-'), Some(&last)) if last != ']' => {
                hit |= c.is_some_and(|c| (first..=last).contains(&c));
                i += 3;
            }
            _ => {
                hit |= c == Some(first);
                i += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob_matching() {
        assert!(matches("*.conf", "web.conf"));
        assert!(!matches("*.conf", "web.conf.bak"));
        assert!(!matches("*.conf", ".hidden.conf"));
        assert!(matches(".*.conf", ".hidden.conf"));
        assert!(matches("vs?.conf", "vs1.conf"));
        assert!(matches("vs[0-9].conf", "vs7.conf"));
        assert!(!matches("vs[!0-9].conf", "vs7.conf"));
        assert!(matches("vs[]x].conf", "vs].conf"));
        assert!(matches("a[b", "a[b"));
    }

    #[test]
    fn expands_on_disk_sorted_and_skips_missing() {
        let dir = std::env::temp_dir().join(format!("lb-import-glob-{}", std::process::id()));
        let sub = dir.join("conf.d");
        std::fs::create_dir_all(&sub).expect("temp dir");
        for name in ["b.conf", "a.conf", "c.txt"] {
            std::fs::write(sub.join(name), "").expect("temp file");
        }
        let found = FileSystem.expand(&dir.join("conf.d/*.conf"));
        let missing = FileSystem.expand(&dir.join("nope/*.conf"));
        let plain = FileSystem.expand(&dir.join("conf.d/c.txt"));
        std::fs::remove_dir_all(&dir).expect("cleanup");
        assert_eq!(found, vec![sub.join("a.conf"), sub.join("b.conf")]);
        assert!(missing.is_empty());
        assert_eq!(plain, vec![sub.join("c.txt")]);
    }
}
