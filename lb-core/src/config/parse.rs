//! TOML text to `RawConfig`, collecting every serde error instead of the
//! first one.
//!
//! serde stops at the first error (unknown key, wrong type, unknown enum
//! value). To report them all, each error's key-value pair is blanked out
//! with spaces and the text is read again. Blanking keeps every byte offset
//! and line, so spans stay valid across rounds; the key paths that were
//! blanked are returned so the validator does not also call them "missing".

use std::collections::HashSet;
use std::ops::Range;

use toml_edit::{ImDocument, Item, Table, Value};

use super::error::{ConfigError, Locator};
use super::schema::RawConfig;

/// Bounds the re-reads on a pathological file; nobody reads 100 errors.
const MAX_ROUNDS: usize = 100;

pub(crate) struct Parsed {
    pub raw: RawConfig,
    pub blanked: HashSet<String>,
}

/// `None` when the file cannot be read at all (a syntax error, or a serde
/// error that could not be isolated); `errors` then says why.
pub(crate) fn read(text: &str, loc: &Locator, errors: &mut Vec<ConfigError>) -> Option<Parsed> {
    let mut text = text.to_owned();
    let mut blanked = HashSet::new();
    for _ in 0..MAX_ROUNDS {
        let doc = match ImDocument::parse(text.clone()) {
            Ok(doc) => doc,
            Err(e) => {
                errors.push(loc.error(
                    e.span(),
                    "",
                    format!("invalid TOML: {}", e.message().trim()),
                ));
                return None;
            }
        };
        let err = match toml_edit::de::from_document::<RawConfig>(doc.clone()) {
            Ok(raw) => return Some(Parsed { raw, blanked }),
            Err(e) => e,
        };
        let reason = rephrase(err.message());
        let Some(span) = err.span() else {
            errors.push(loc.error(None, "", reason));
            return None;
        };
        let Some(found) = locate(doc.as_table(), "", &span) else {
            errors.push(loc.error(Some(span), "", reason));
            return None;
        };
        errors.push(loc.error(Some(span), found.path.as_str(), reason));
        // From the line start, so a dotted key (`check.bogus = 1`) goes whole,
        // not just its last segment: a key-value pair in a standard table
        // always begins its line.
        let start = found.blank.start;
        let line_start = text
            .get(..start)
            .map_or(start, |t| t.rfind('\n').map_or(0, |i| i + 1));
        let range = line_start..found.blank.end;
        if !blanked.insert(found.blank_path) || !blank(&mut text, range) {
            return None;
        }
    }
    // At the end of the file, so it sorts after the errors it cut short.
    let end = Some(text.len()..text.len());
    errors.push(loc.error(end, "", format!("stopped after {MAX_ROUNDS} errors")));
    None
}

/// serde's wording names Rust concepts; the user wrote TOML keys and values.
fn rephrase(message: &str) -> String {
    let message = message.trim();
    let message = &toml_words(message);
    if let Some(rest) = message.strip_prefix("unknown field ") {
        return match rest.split_once(", ") {
            Some((_, expected)) => format!("unknown key; {expected}"),
            None => "unknown key".to_owned(),
        };
    }
    if let Some(rest) = message.strip_prefix("unknown variant ") {
        return format!("unknown value {rest}");
    }
    if message.starts_with("data did not match any variant of untagged enum RawTrackInterface") {
        return r#"expected an interface name or { name = "...", weight = N }"#.to_owned();
    }
    message.to_owned()
}

fn toml_words(message: &str) -> String {
    let mut out = message
        .replace("invalid type: map", "invalid type: table")
        .replace("invalid type: sequence", "invalid type: array")
        .replace("expected a sequence", "expected an array")
        .replace("expected i64", "expected an integer");
    if let Some(i) = out.find("expected struct Raw") {
        out.replace_range(i.., "expected a table");
    }
    out
}

struct Found {
    /// Deepest key path at the error, for the message.
    path: String,
    /// The whole key-value pair in a standard table that holds the error:
    /// blanking part of an inline table or array would break the syntax.
    blank: Range<usize>,
    blank_path: String,
}

fn join(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_owned()
    } else {
        format!("{prefix}.{key}")
    }
}

fn hits(extent: &Range<usize>, span: &Range<usize>) -> bool {
    extent.start <= span.start && span.start < extent.end.max(extent.start + 1)
}

fn union(a: Option<Range<usize>>, b: Option<Range<usize>>) -> Option<Range<usize>> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.start.min(b.start)..a.end.max(b.end)),
        (a, b) => a.or(b),
    }
}

fn table_extent(table: &Table) -> Option<Range<usize>> {
    table.iter().fold(table.span(), |acc, (key, item)| {
        let key_span = table.key(key).and_then(|k| k.span());
        union(union(acc, key_span), item_extent(item))
    })
}

fn item_extent(item: &Item) -> Option<Range<usize>> {
    match item {
        Item::None => None,
        Item::Value(v) => v.span(),
        Item::Table(t) => table_extent(t),
        Item::ArrayOfTables(a) => a
            .iter()
            .fold(a.span(), |acc, t| union(acc, table_extent(t))),
    }
}

fn locate(table: &Table, prefix: &str, span: &Range<usize>) -> Option<Found> {
    for (key, item) in table.iter() {
        let path = join(prefix, key);
        let key_span = table.key(key).and_then(|k| k.span());
        let Some(extent) = union(key_span, item_extent(item)) else {
            continue;
        };
        if !hits(&extent, span) {
            continue;
        }
        let whole = |path: String| Found {
            blank_path: path.clone(),
            path,
            blank: extent.clone(),
        };
        return match item {
            Item::Table(t) => locate(t, &path, span).or_else(|| Some(whole(path))),
            Item::ArrayOfTables(a) => a
                .iter()
                .enumerate()
                .find_map(|(i, t)| {
                    let elem = format!("{path}[{i}]");
                    let ext = table_extent(t)?;
                    hits(&ext, span).then(|| {
                        locate(t, &elem, span).unwrap_or(Found {
                            blank_path: elem.clone(),
                            path: elem,
                            blank: ext,
                        })
                    })
                })
                .or_else(|| Some(whole(path))),
            Item::Value(v) => Some(Found {
                path: value_path(v, path.clone(), span),
                blank_path: path,
                blank: extent,
            }),
            Item::None => None,
        };
    }
    None
}

fn value_path(value: &Value, path: String, span: &Range<usize>) -> String {
    match value {
        Value::Array(a) => a
            .iter()
            .enumerate()
            .find(|(_, v)| v.span().is_some_and(|s| hits(&s, span)))
            .map_or(path.clone(), |(i, v)| {
                value_path(v, format!("{path}[{i}]"), span)
            }),
        Value::InlineTable(t) => t
            .iter()
            .find(|(k, v)| {
                let key_span = t.key(k).and_then(|k| k.span());
                union(key_span, v.span()).is_some_and(|s| hits(&s, span))
            })
            .map_or(path.clone(), |(k, v)| value_path(v, join(&path, k), span)),
        _ => path,
    }
}

/// Replaces the range with spaces, keeping line breaks and byte offsets.
fn blank(text: &mut String, range: Range<usize>) -> bool {
    let Some(middle) = text.get(range.clone()) else {
        return false;
    };
    let spaces: String = middle
        .chars()
        .map(|c| match c {
            '\n' | '\r' => c.to_string(),
            _ => " ".repeat(c.len_utf8()),
        })
        .collect();
    text.replace_range(range, &spaces);
    true
}
