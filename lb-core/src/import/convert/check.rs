//! keepalived checkers (TCP_CHECK, HTTP_GET, SSL_GET, MISC_CHECK) to a
//! `check` table.
//!
//! keepalived 2.x lets `delay_loop`, `retry`, `delay_before_retry` and
//! `connect_timeout` stand on the virtual_server or real_server as defaults
//! for their checkers; `virtualhost` on the virtual_server is the default
//! Host of its HTTP checks. `Defaults` carries them down.

use super::Ctx;
use super::values::{argv, int, string, timer};
use crate::import::emit::{Table, Value};
use crate::import::parser::Node;

pub(crate) const ORDER: &[&str] = &[
    "type",
    "delay_loop",
    "connect_timeout",
    "connect_port",
    "retry",
    "delay_before_retry",
    "source_address",
    "path",
    "status",
    "host",
    "digest",
    "body_regex",
    "command",
    "timeout",
];

pub(crate) const CHECKERS: &[&str] = &[
    "TCP_CHECK",
    "HTTP_GET",
    "SSL_GET",
    "MISC_CHECK",
    "SMTP_CHECK",
    "DNS_CHECK",
    "UDP_CHECK",
    "PING_CHECK",
    "FILE_CHECK",
    "BFD_CHECK",
];

#[derive(Clone, Default)]
pub(crate) struct Defaults {
    delay_loop: Option<Value>,
    connect_timeout: Option<Value>,
    retry: Option<Value>,
    delay_before_retry: Option<Value>,
    host: Option<Value>,
}

impl Defaults {
    /// Takes `node` if it is one of the inherited keys; false otherwise.
    pub fn absorb(&mut self, ctx: &mut Ctx, node: &Node, cx: &str) -> bool {
        let slot = match node.keyword.as_str() {
            "delay_loop" => (&mut self.delay_loop, timer(ctx, node, cx)),
            "connect_timeout" => (&mut self.connect_timeout, timer(ctx, node, cx)),
            "retry" | "nb_get_retry" => (&mut self.retry, int(ctx, node, cx)),
            "delay_before_retry" => (&mut self.delay_before_retry, timer(ctx, node, cx)),
            "virtualhost" => (&mut self.host, string(ctx, node, cx)),
            _ => return false,
        };
        if let (slot, Some(value)) = slot {
            *slot = Some(value);
        }
        true
    }
}

/// The check table for one checker block, or `None` (with a warning) when
/// lb cannot run it.
pub(crate) fn check(ctx: &mut Ctx, node: &Node, cx: &str, defaults: &Defaults) -> Option<Table> {
    let kind = match node.keyword.as_str() {
        "TCP_CHECK" => "tcp",
        "HTTP_GET" => "http",
        "SSL_GET" => "https",
        "MISC_CHECK" => "script",
        other => {
            ctx.warn(
                node,
                format!("{cx}: {other} is not supported by lb; this check is dropped"),
            );
            return None;
        }
    };
    let http = matches!(kind, "http" | "https");
    let script = kind == "script";
    let mut t = Table::new("[service.check]");
    t.set("type", Value::str(kind));
    let inherited = [
        ("delay_loop", &defaults.delay_loop, true),
        ("connect_timeout", &defaults.connect_timeout, !script),
        ("retry", &defaults.retry, true),
        ("delay_before_retry", &defaults.delay_before_retry, true),
        ("host", &defaults.host, http),
    ];
    for (key, value, applies) in inherited {
        if let (Some(v), true) = (value, applies) {
            t.set(key, v.clone());
        }
    }
    let ccx = format!("{cx}: {}", node.keyword);
    let mut urls = 0;
    for c in &node.children {
        let value = match (c.keyword.as_str(), kind) {
            ("delay_loop", _) => timer(ctx, c, &ccx).map(|v| ("delay_loop", v)),
            ("retry" | "nb_get_retry", _) => int(ctx, c, &ccx).map(|v| ("retry", v)),
            ("delay_before_retry", _) => timer(ctx, c, &ccx).map(|v| ("delay_before_retry", v)),
            ("connect_timeout", k) if k != "script" => {
                timer(ctx, c, &ccx).map(|v| ("connect_timeout", v))
            }
            ("connect_port", k) if k != "script" => int(ctx, c, &ccx).map(|v| ("connect_port", v)),
            ("bindto", k) if k != "script" => string(ctx, c, &ccx).map(|v| ("source_address", v)),
            ("virtualhost", "http" | "https") => string(ctx, c, &ccx).map(|v| ("host", v)),
            ("url", "http" | "https") => {
                urls += 1;
                if urls == 1 {
                    url(ctx, c, &ccx, &mut t);
                } else {
                    ctx.warn(
                        c,
                        format!("{ccx}: lb checks one url per backend; this one is ignored"),
                    );
                }
                None
            }
            ("misc_path", "script") => argv(ctx, c, &ccx, true).map(|v| ("command", v)),
            ("misc_timeout", "script") => timer(ctx, c, &ccx).map(|v| ("timeout", v)),
            ("misc_dynamic", "script") => {
                ctx.warn(
                    c,
                    format!("{ccx}: misc_dynamic is not supported by lb: exit status 0 is healthy, any other is down, and weights do not change"),
                );
                None
            }
            _ => {
                ctx.unsupported(c, &ccx);
                None
            }
        };
        if let Some((key, value)) = value {
            t.set(key, value);
        }
    }
    if script && t.get("command").is_none() {
        ctx.warn(node, format!("{ccx}: no misc_path; this check is dropped"));
        return None;
    }
    t.sort(ORDER);
    Some(t)
}

fn url(ctx: &mut Ctx, node: &Node, cx: &str, t: &mut Table) {
    let ucx = format!("{cx} url");
    for c in &node.children {
        let value = match c.keyword.as_str() {
            "path" => string(ctx, c, &ucx).map(|v| ("path", v)),
            "digest" => string(ctx, c, &ucx).map(|v| ("digest", v)),
            "virtualhost" => string(ctx, c, &ucx).map(|v| ("host", v)),
            "regex" => {
                ctx.warn(
                    c,
                    format!("{ucx}: regex is a PCRE in keepalived and a Rust regex in lb; check that it means the same"),
                );
                string(ctx, c, &ucx).map(|v| ("body_regex", v))
            }
            "status_code" if c.args.is_empty() => {
                ctx.warn(c, format!("{ucx}: status_code without a value; ignored"));
                None
            }
            "status_code" => Some(("status", Value::strings(c.args.iter().cloned()))),
            _ => {
                ctx.unsupported(c, &ucx);
                None
            }
        };
        if let Some((key, value)) = value {
            t.set(key, value);
        }
    }
}
