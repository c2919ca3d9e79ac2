//! vrrp_instance (and the vrrp_scripts it tracks) to `[[vrrp_instance]]`.

use std::net::IpAddr;

use super::values::{arg, argv, flag, int, string, timer};
use super::{Ctx, Globals, Scripts, VipInterfaces};
use crate::import::emit::{Table, Value};
use crate::import::parser::Node;

/// The schema's key order (configs/reference.toml).
const ORDER: &[&str] = &[
    "name",
    "interface",
    "virtual_router_id",
    "priority",
    "advert_int",
    "version",
    "nopreempt",
    "preempt_delay",
    "virtual_ipaddress",
    "unicast_src_ip",
    "unicast_peer",
    "auth_pass",
    "track_interface",
    "notify_master",
    "notify_backup",
    "notify_fault",
    "notify",
    "garp_master_delay",
    "garp_master_repeat",
];

const SCRIPT_ORDER: &[&str] = &[
    "name", "command", "interval", "timeout", "weight", "fall", "rise",
];

/// VRRPv2 carries at most 8 characters of password; keepalived truncates.
const AUTH_PASS_MAX: usize = 8;

/// keepalived's virtual_ipaddress options that take a value, so the value
/// is not mistaken for another option.
const ADDRESS_OPTIONS_WITH_VALUE: &[&str] = &[
    "dev",
    "brd",
    "broadcast",
    "label",
    "scope",
    "peer",
    "metric",
    "table",
    "preferred_lft",
    "valid_lft",
    "track_group",
];

pub(crate) fn instance<'n>(
    ctx: &mut Ctx,
    node: &'n Node,
    globals: &Globals,
    scripts: &mut Scripts<'n>,
    vips: &mut VipInterfaces,
) -> Vec<Table> {
    let Some(name) = node.args.first() else {
        ctx.warn(node, "vrrp_instance without a name; ignored");
        return Vec::new();
    };
    let cx = format!("vrrp_instance {name}");
    let mut t = Table::new("[[vrrp_instance]]");
    t.comments
        .push(format!("{} ({}:{})", cx, node.file, node.line));
    t.set("name", Value::str(name));
    for (key, value) in [
        ("version", &globals.version),
        ("garp_master_delay", &globals.garp_master_delay),
        ("garp_master_repeat", &globals.garp_master_repeat),
    ] {
        if let Some(v) = value {
            t.set(key, v.clone());
        }
    }
    // Addresses are checked against it wherever `interface` stands.
    let interface = node
        .children
        .iter()
        .rev()
        .find(|c| c.keyword == "interface")
        .and_then(|c| c.args.first())
        .cloned();
    let mut addresses = Vec::new();
    let mut tracked = Vec::new();
    let mut auth = None;
    for c in &node.children {
        let value = match c.keyword.as_str() {
            "state" => {
                t.comments.push(format!(
                    "keepalived: state {}; lb elects the master by priority alone",
                    c.args.join(" ")
                ));
                None
            }
            "interface" => string(ctx, c, &cx).map(|v| ("interface", v)),
            "virtual_router_id" => int(ctx, c, &cx).map(|v| ("virtual_router_id", v)),
            "priority" => int(ctx, c, &cx).map(|v| ("priority", v)),
            "advert_int" => timer(ctx, c, &cx).map(|v| ("advert_int", v)),
            "version" => int(ctx, c, &cx).map(|v| ("version", v)),
            "nopreempt" => flag(ctx, c, &cx).map(|b| ("nopreempt", Value::Bool(b))),
            "preempt_delay" => timer(ctx, c, &cx).map(|v| ("preempt_delay", v)),
            "unicast_src_ip" => string(ctx, c, &cx).map(|v| ("unicast_src_ip", v)),
            "garp_master_delay" => timer(ctx, c, &cx).map(|v| ("garp_master_delay", v)),
            "garp_master_repeat" => int(ctx, c, &cx).map(|v| ("garp_master_repeat", v)),
            "notify_master" => argv(ctx, c, &cx, false).map(|v| ("notify_master", v)),
            "notify_backup" => argv(ctx, c, &cx, false).map(|v| ("notify_backup", v)),
            "notify_fault" => argv(ctx, c, &cx, false).map(|v| ("notify_fault", v)),
            "notify" => argv(ctx, c, &cx, false).map(|v| ("notify", v)),
            "authentication" => {
                auth = authentication(ctx, c, &cx).or(auth);
                None
            }
            "virtual_ipaddress" => {
                for a in &c.children {
                    if let Some((text, ip)) = address(ctx, a, &cx, interface.as_deref()) {
                        addresses.push(Value::Str(text));
                        if let Some(i) = &interface {
                            vips.insert(ip, i.clone());
                        }
                    }
                }
                None
            }
            "unicast_peer" => peers(ctx, c, &cx).map(|v| ("unicast_peer", v)),
            "track_interface" => track_interfaces(ctx, c, &cx).map(|v| ("track_interface", v)),
            "track_script" => {
                for s in &c.children {
                    tracked.extend(track_script(ctx, s, &cx, scripts));
                }
                None
            }
            _ => {
                ctx.unsupported(c, &cx);
                None
            }
        };
        if let Some((key, value)) = value {
            t.set(key, value);
        }
    }
    if !addresses.is_empty() {
        t.set("virtual_ipaddress", Value::List(addresses));
    }
    if let Some((pass, at)) = auth {
        if t.get("version") == Some(&Value::Int(3)) {
            ctx.warn(
                at,
                format!("{cx}: authentication is ignored with VRRP version 3, as keepalived does"),
            );
        } else {
            t.set("auth_pass", Value::Str(pass));
        }
    }
    t.sort(ORDER);
    std::iter::once(t).chain(tracked).collect()
}

/// `auth_pass` for PASS authentication; AH has no lb equivalent.
fn authentication<'n>(ctx: &mut Ctx, node: &'n Node, cx: &str) -> Option<(String, &'n Node)> {
    let mut kind = None;
    let mut pass = None;
    for c in &node.children {
        match c.keyword.as_str() {
            "auth_type" => kind = arg(ctx, c, cx).map(|k| (k.to_ascii_uppercase(), c)),
            "auth_pass" => pass = arg(ctx, c, cx).map(|p| (p.to_owned(), c)),
            _ => ctx.unsupported(c, cx),
        }
    }
    match kind {
        Some((k, at)) if k != "PASS" => {
            ctx.warn(
                at,
                format!("{cx}: auth_type {k} is not supported by lb (only PASS); authentication ignored, so peers must drop it too"),
            );
            return None;
        }
        None => {
            ctx.warn(
                node,
                format!("{cx}: authentication without auth_type PASS; ignored"),
            );
            return None;
        }
        Some(_) => {}
    }
    let Some((pass, at)) = pass else {
        ctx.warn(
            node,
            format!("{cx}: auth_type PASS without auth_pass; ignored"),
        );
        return None;
    };
    if pass.chars().count() > AUTH_PASS_MAX {
        ctx.warn(
            at,
            format!(
                "{cx}: auth_pass is longer than {AUTH_PASS_MAX} characters; only the first {AUTH_PASS_MAX} go on the wire (keepalived truncates too), so they are kept"
            ),
        );
        return Some((pass.chars().take(AUTH_PASS_MAX).collect(), node));
    }
    Some((pass, node))
}

/// One virtual_ipaddress line, `ip[/prefix] [dev X] [label L] ...`, as
/// lb's "ip" or "ip/prefix".
fn address(
    ctx: &mut Ctx,
    node: &Node,
    cx: &str,
    interface: Option<&str>,
) -> Option<(String, IpAddr)> {
    let text = &node.keyword;
    let (ip_text, prefix) = match text.split_once('/') {
        Some((ip, prefix)) => (ip, Some(prefix)),
        None => (text.as_str(), None),
    };
    let Ok(ip) = ip_text.parse::<IpAddr>() else {
        ctx.warn(
            node,
            format!("{cx}: virtual_ipaddress {text:?} is not an IP address; ignored"),
        );
        return None;
    };
    let max = if ip.is_ipv4() { 32 } else { 128 };
    if let Some(p) = prefix
        && p.parse::<u8>().map_or(true, |p| p > max)
    {
        ctx.warn(
            node,
            format!("{cx}: virtual_ipaddress {text}: bad prefix length; ignored"),
        );
        return None;
    }
    let mut args = node.args.iter();
    while let Some(option) = args.next() {
        let value = if ADDRESS_OPTIONS_WITH_VALUE.contains(&option.as_str()) {
            args.next()
        } else {
            None
        };
        match (option.as_str(), value) {
            ("dev", Some(dev)) if Some(dev.as_str()) == interface => {}
            ("dev", Some(dev)) => ctx.warn(
                node,
                format!(
                    "{cx}: virtual_ipaddress {text} dev {dev}: lb puts every address on the instance's interface ({})",
                    interface.unwrap_or("unknown")
                ),
            ),
            (option, Some(value)) => ctx.warn(
                node,
                format!("{cx}: virtual_ipaddress {text}: {option} {value} is not supported by lb; ignored"),
            ),
            (option, None) => ctx.warn(
                node,
                format!("{cx}: virtual_ipaddress {text}: {option} is not supported by lb; ignored"),
            ),
        }
    }
    Some((text.clone(), ip))
}

fn peers(ctx: &mut Ctx, node: &Node, cx: &str) -> Option<Value> {
    let mut list = Vec::new();
    for p in &node.children {
        if !p.args.is_empty() {
            ctx.warn(
                p,
                format!(
                    "{cx}: unicast_peer {}: {} is not supported by lb; ignored",
                    p.keyword,
                    p.args.join(" ")
                ),
            );
        }
        list.push(Value::str(&p.keyword));
    }
    (!list.is_empty()).then_some(Value::List(list))
}

/// `name` or `name weight N` lines, to `"name"` or `{ name, weight }`.
fn track_interfaces(ctx: &mut Ctx, node: &Node, cx: &str) -> Option<Value> {
    let mut list = Vec::new();
    for i in &node.children {
        let name = Value::str(&i.keyword);
        match i.args.as_slice() {
            [] => list.push(name),
            [w, n] if w == "weight" => match n.parse::<i64>() {
                Ok(n) => list.push(Value::Inline(vec![("name", name), ("weight", Value::Int(n))])),
                Err(_) => ctx.warn(
                    i,
                    format!("{cx}: track_interface {}: weight {n:?} is not an integer; ignored", i.keyword),
                ),
            },
            other => ctx.warn(
                i,
                format!(
                    "{cx}: track_interface {}: {} is not supported by lb; the interface is not tracked",
                    i.keyword,
                    other.join(" ")
                ),
            ),
        }
    }
    (!list.is_empty()).then_some(Value::List(list))
}

/// A `track_script` line, `name [weight N]`, with its vrrp_script inlined.
fn track_script<'n>(
    ctx: &mut Ctx,
    node: &Node,
    cx: &str,
    scripts: &mut Scripts<'n>,
) -> Option<Table> {
    let name = node.keyword.as_str();
    let Some((&key, &script)) = scripts.by_name.get_key_value(name) else {
        ctx.warn(
            node,
            format!("{cx}: track_script {name}: no vrrp_script {name} is defined; ignored"),
        );
        return None;
    };
    scripts.used.insert(key);
    let scx = format!("vrrp_script {name}");
    let mut t = Table::new("[[vrrp_instance.track_script]]");
    t.set("name", Value::str(name));
    for c in &script.children {
        let value = match c.keyword.as_str() {
            "script" => argv(ctx, c, &scx, true).map(|v| ("command", v)),
            "interval" => timer(ctx, c, &scx).map(|v| ("interval", v)),
            "timeout" => timer(ctx, c, &scx).map(|v| ("timeout", v)),
            "fall" => int(ctx, c, &scx).map(|v| ("fall", v)),
            "rise" => int(ctx, c, &scx).map(|v| ("rise", v)),
            "weight" => {
                if c.args.len() > 1 {
                    ctx.warn(
                        c,
                        format!("{scx}: weight {}: only the number is supported by lb; the rest is ignored", c.args.join(" ")),
                    );
                }
                c.args.first().and_then(|w| match w.parse::<i64>() {
                    Ok(n) => Some(("weight", Value::Int(n))),
                    Err(_) => {
                        ctx.warn(c, format!("{scx}: weight {w:?} is not an integer; ignored"));
                        None
                    }
                })
            }
            _ => {
                ctx.unsupported(c, &scx);
                None
            }
        };
        if let Some((key, value)) = value {
            t.set(key, value);
        }
    }
    match node.args.as_slice() {
        [] => {}
        [w, n] if w == "weight" => match n.parse::<i64>() {
            Ok(n) => t.set("weight", Value::Int(n)),
            Err(_) => ctx.warn(
                node,
                format!("{cx}: track_script {name}: weight {n:?} is not an integer; ignored"),
            ),
        },
        other => ctx.warn(
            node,
            format!(
                "{cx}: track_script {name}: {} is not supported by lb; ignored",
                other.join(" ")
            ),
        ),
    }
    if t.get("command").is_none() {
        ctx.warn(
            script,
            format!("{scx}: no script to run; not tracked by {cx}"),
        );
        return None;
    }
    t.sort(SCRIPT_ORDER);
    Some(t)
}
