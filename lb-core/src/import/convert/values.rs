//! Reading keepalived values: one-argument keywords, integers, booleans,
//! TIMERs and script strings. Each reader warns about what it cannot use
//! and gives `None`, so the key is left out rather than guessed.

use super::Ctx;
use crate::import::command;
use crate::import::emit::Value;
use crate::import::parser::Node;

/// The single argument of `node`, after warning about any extra ones.
pub(crate) fn arg<'n>(ctx: &mut Ctx, node: &'n Node, cx: &str) -> Option<&'n str> {
    let Some(first) = node.args.first() else {
        ctx.warn(
            node,
            format!("{cx}: {} without a value; ignored", node.keyword),
        );
        return None;
    };
    if node.args.len() > 1 {
        ctx.warn(
            node,
            format!(
                "{cx}: {} takes one value; ignored the rest: {}",
                node.keyword,
                node.args[1..].join(" ")
            ),
        );
    }
    Some(first)
}

pub(crate) fn string(ctx: &mut Ctx, node: &Node, cx: &str) -> Option<Value> {
    arg(ctx, node, cx).map(Value::str)
}

pub(crate) fn int(ctx: &mut Ctx, node: &Node, cx: &str) -> Option<Value> {
    let text = arg(ctx, node, cx)?;
    match text.parse::<i64>() {
        Ok(n) => Some(Value::Int(n)),
        Err(_) => {
            ctx.warn(
                node,
                format!("{cx}: {} {text:?} is not an integer; ignored", node.keyword),
            );
            None
        }
    }
}

/// keepalived flags are set by their bare keyword; newer versions also take
/// an explicit on/off.
pub(crate) fn flag(ctx: &mut Ctx, node: &Node, cx: &str) -> Option<bool> {
    let Some(text) = node.args.first() else {
        return Some(true);
    };
    match text.to_ascii_lowercase().as_str() {
        "on" | "true" | "yes" => Some(true),
        "off" | "false" | "no" => Some(false),
        _ => {
            ctx.warn(
                node,
                format!("{cx}: {} {text:?} is not on/off; ignored", node.keyword),
            );
            None
        }
    }
}

/// A keepalived TIMER (seconds, fractions allowed, microsecond resolution)
/// as one of lb's duration strings.
pub(crate) fn timer(ctx: &mut Ctx, node: &Node, cx: &str) -> Option<Value> {
    let text = arg(ctx, node, cx)?;
    match micros(text) {
        Some(us) => Some(Value::Str(duration(us))),
        None => {
            ctx.warn(
                node,
                format!(
                    "{cx}: {} {text:?} is not a time in seconds; ignored",
                    node.keyword
                ),
            );
            None
        }
    }
}

fn micros(text: &str) -> Option<u64> {
    let (whole, frac) = text.split_once('.').unwrap_or((text, ""));
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if (whole.is_empty() && frac.is_empty()) || !digits(whole) || !digits(frac) {
        return None;
    }
    let whole: u64 = if whole.is_empty() {
        0
    } else {
        whole.parse().ok()?
    };
    // Digits past the sixth are below keepalived's resolution.
    let frac: String = frac.chars().chain(std::iter::repeat('0')).take(6).collect();
    whole
        .checked_mul(1_000_000)?
        .checked_add(frac.parse().ok()?)
}

fn duration(us: u64) -> String {
    if us.is_multiple_of(1_000_000) {
        format!("{}s", us / 1_000_000)
    } else if us.is_multiple_of(1000) {
        format!("{}ms", us / 1000)
    } else {
        format!("{us}us")
    }
}

/// A script string as argv. `whole_line`: keepalived takes the rest of the
/// line as the command (`script`, `misc_path`); otherwise only the first
/// word is the command and the others name a user and group (`notify_*`),
/// which lb cannot switch to.
pub(crate) fn argv(ctx: &mut Ctx, node: &Node, cx: &str, whole_line: bool) -> Option<Value> {
    let Some(first) = node.args.first() else {
        ctx.warn(
            node,
            format!("{cx}: {} without a command; ignored", node.keyword),
        );
        return None;
    };
    let script = if whole_line {
        node.args.join(" ")
    } else {
        if node.args.len() > 1 {
            ctx.warn(
                node,
                format!(
                    "{cx}: {} runs as user/group {}: lb runs it as its own user",
                    node.keyword,
                    node.args[1..].join(" ")
                ),
            );
        }
        first.clone()
    };
    match command::split(&script) {
        Ok(argv) => {
            if argv.through_shell {
                ctx.warn(
                    node,
                    format!(
                        "{cx}: {} uses shell syntax; lb runs commands without a shell, so it runs through /bin/sh -c",
                        node.keyword
                    ),
                );
            }
            Some(Value::strings(argv.args))
        }
        Err(e) => {
            ctx.warn(
                node,
                format!("{cx}: {} {script:?}: {e}; ignored", node.keyword),
            );
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timers_become_duration_strings() {
        let cases = [
            ("3", "3s"),
            ("0.5", "500ms"),
            ("1.25", "1250ms"),
            (".0001", "100us"),
            ("2.0000009", "2s"),
            ("0", "0s"),
        ];
        for (text, want) in cases {
            assert_eq!(micros(text).map(duration).as_deref(), Some(want), "{text}");
        }
        for bad in ["", ".", "-1", "1s", "1.2.3", "99999999999999999999"] {
            assert_eq!(micros(bad), None, "{bad}");
        }
    }
}
