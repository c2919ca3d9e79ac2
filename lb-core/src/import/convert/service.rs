//! virtual_server (and its real_servers) to `[[service]]`.

use std::net::{IpAddr, SocketAddr};

use super::check::{self, CHECKERS, Defaults};
use super::values::{arg, flag, int, timer};
use super::{Ctx, VipInterfaces};
use crate::import::emit::{Table, Value};
use crate::import::parser::Node;

const ORDER: &[&str] = &[
    "vip",
    "protocol",
    "interface",
    "forwarding",
    "scheduler",
    "quorum",
    "hysteresis",
    "sorry_server",
    "inhibit_on_failure",
    "alpha",
];

/// Written where the interface is unknown, so the file still parses; the
/// warning and the FIXME comment say it must be replaced.
const PLACEHOLDER_INTERFACE: &str = "eth0";

/// IPVS schedulers lb implements, under the same names.
const SCHEDULERS: &[&str] = &["mh", "sh", "rr", "wrr", "lc", "wlc"];

struct Backend<'n> {
    node: &'n Node,
    table: Table,
    check: Option<Table>,
    inhibit_on_failure: bool,
}

pub(crate) fn service(ctx: &mut Ctx, node: &Node, vips: &VipInterfaces) -> Vec<Table> {
    let Some(vip) = endpoint(ctx, node, None, None) else {
        return Vec::new();
    };
    let cx = format!("virtual_server {} {}", vip.ip(), vip.port());
    let mut t = Table::new("[[service]]");
    t.comments
        .push(format!("{cx} ({}:{})", node.file, node.line));
    t.set("vip", Value::Str(vip.to_string()));
    let mut defaults = Defaults::default();
    let mut inhibit_on_failure = false;
    let mut scheduler = None;
    let mut forwarding = None;
    let mut real_servers = Vec::new();
    for c in &node.children {
        if defaults.absorb(ctx, c, &cx) {
            continue;
        }
        let value = match c.keyword.as_str() {
            "lb_algo" | "lvs_sched" => {
                scheduler = arg(ctx, c, &cx).map(|s| (s.to_ascii_lowercase(), c));
                None
            }
            "lb_kind" | "lvs_method" => {
                forwarding = arg(ctx, c, &cx).and_then(|k| forwarding_mode(ctx, c, &cx, k));
                None
            }
            "protocol" => match arg(ctx, c, &cx).map(str::to_ascii_uppercase).as_deref() {
                Some("TCP") => Some(("protocol", Value::str("tcp"))),
                Some("UDP") => Some(("protocol", Value::str("udp"))),
                Some(other) => {
                    ctx.warn(
                        c,
                        format!("{cx}: protocol {other} is not supported by lb (tcp, udp); virtual_server ignored"),
                    );
                    return Vec::new();
                }
                None => None,
            },
            "persistence_timeout" => timer(ctx, c, &cx).map(|v| ("persistence_timeout", v)),
            "persistence_granularity" => {
                arg(ctx, c, &cx).map(|g| ("persistence_granularity", Value::Str(g.to_string())))
            }
            "quorum" => int(ctx, c, &cx).map(|v| ("quorum", v)),
            "hysteresis" => int(ctx, c, &cx).map(|v| ("hysteresis", v)),
            "sorry_server" => endpoint(ctx, c, Some(&cx), None)
                .filter(|a| same_family(ctx, c, &cx, *a, vip))
                .map(|a| ("sorry_server", Value::Str(a.to_string()))),
            "alpha" => flag(ctx, c, &cx).map(|b| ("alpha", Value::Bool(b))),
            "inhibit_on_failure" => {
                inhibit_on_failure = flag(ctx, c, &cx).unwrap_or(inhibit_on_failure);
                None
            }
            "real_server" => {
                real_servers.push(c);
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
    // After the children: a virtual_server skipped for its protocol needs no
    // interface warning.
    match vips.get(&vip.ip()) {
        Some(interface) => t.set("interface", Value::str(interface)),
        None => {
            ctx.warn(
                node,
                format!(
                    "{cx}: no vrrp_instance has {} in its virtual_ipaddress, so the interface is unknown; set `interface` (written as {PLACEHOLDER_INTERFACE:?})",
                    vip.ip()
                ),
            );
            t.set_commented(
                "interface",
                Value::str(PLACEHOLDER_INTERFACE),
                Some("FIXME: the interface the VIP's packets arrive on".to_owned()),
            );
        }
    }
    let forwarding = match forwarding {
        Some(f) => {
            t.set("forwarding", Value::str(f));
            f
        }
        None => {
            t.set_commented(
                "forwarding",
                Value::str("nat"),
                Some("keepalived's default lb_kind".to_owned()),
            );
            "nat"
        }
    };
    set_scheduler(ctx, node, &cx, scheduler, real_servers.len(), &mut t);
    let mut backends: Vec<Backend> = real_servers
        .into_iter()
        .filter_map(|r| backend(ctx, r, &cx, vip, forwarding, &defaults))
        .collect();
    let default_delay = backends.iter().any(|b| {
        b.check
            .as_ref()
            .is_some_and(|c| c.get("delay_loop").is_none())
    });
    if default_delay {
        ctx.warn(
            node,
            format!(
                "{cx}: no delay_loop, so keepalived checks every 60s; lb's default is every 5s"
            ),
        );
    }
    let all_inhibit = !backends.is_empty() && backends.iter().all(|b| b.inhibit_on_failure);
    if inhibit_on_failure || all_inhibit {
        t.set("inhibit_on_failure", Value::Bool(true));
    } else {
        for b in backends.iter().filter(|b| b.inhibit_on_failure) {
            ctx.warn(
                b.node,
                format!("{cx}: inhibit_on_failure on some real_servers only: lb sets it for the whole service; ignored"),
            );
        }
    }
    t.sort(ORDER);
    let mut tables = vec![t];
    let first_check = backends.first().and_then(|b| b.check.clone());
    let shared =
        first_check.filter(|first| backends.iter().all(|b| b.check.as_ref() == Some(first)));
    if let Some(mut shared) = shared {
        shared.header = "[service.check]";
        tables.push(shared);
        for b in &mut backends {
            b.check = None;
        }
    }
    for b in backends {
        tables.push(b.table);
        tables.extend(b.check.map(|mut c| {
            c.header = "[service.backend.check]";
            c
        }));
    }
    tables
}

fn forwarding_mode(ctx: &mut Ctx, node: &Node, cx: &str, kind: &str) -> Option<&'static str> {
    match kind.to_ascii_uppercase().as_str() {
        "NAT" => Some("nat"),
        "DR" => Some("dr"),
        // Backends keep their IPIP devices; `lb decap` is only for hosts
        // without one.
        "TUN" => Some("tun"),
        other => {
            ctx.warn(
                node,
                format!(
                    "{cx}: lb_kind {other} is not NAT, DR or TUN; keepalived's default NAT is used"
                ),
            );
            None
        }
    }
}

/// keepalived's scheduler under the same name; no `lb_algo` means
/// keepalived's default, wlc. A scheduler lb lacks (dh, sed, nq, ...)
/// becomes `mh`, with a warning and the keepalived one in a comment, and so
/// does lc/wlc over more real servers than lb's lc/wlc scan.
fn set_scheduler(
    ctx: &mut Ctx,
    node: &Node,
    cx: &str,
    scheduler: Option<(String, &Node)>,
    real_servers: usize,
    t: &mut Table,
) {
    let (name, at, mut comment) = match scheduler {
        None => (
            "wlc".to_owned(),
            node,
            Some("keepalived's default lb_algo".to_owned()),
        ),
        Some((s, at)) if SCHEDULERS.contains(&s.as_str()) => (s, at, None),
        Some((s, at)) => {
            ctx.warn(
                at,
                format!(
                    "{cx}: lb_algo {s} is not an lb scheduler; using mh (weighted Maglev hashing)"
                ),
            );
            (
                "mh".to_owned(),
                at,
                Some(format!("keepalived: lb_algo {s}")),
            )
        }
    };
    let max = lb_ebpf::abi::LEAST_MAX_BACKENDS as usize;
    let name = if (name == "lc" || name == "wlc") && real_servers > max {
        ctx.warn(
            at,
            format!("{cx}: lb_algo {name} with {real_servers} real servers: lb's lc and wlc take at most {max}; using mh (weighted Maglev hashing)"),
        );
        comment = Some(format!("keepalived: lb_algo {name}"));
        "mh".to_owned()
    } else {
        name
    };
    t.set_commented("scheduler", Value::Str(name), comment);
}

/// `IP PORT` arguments as a socket address (IPv4 or IPv6). `cx` is the
/// enclosing virtual_server, if any; `default_port` stands in for a missing
/// port.
fn endpoint(
    ctx: &mut Ctx,
    node: &Node,
    cx: Option<&str>,
    default_port: Option<u16>,
) -> Option<SocketAddr> {
    let this = format!("{} {}", node.keyword, node.args.join(" "));
    let what = match cx {
        Some(cx) => format!("{cx}: {this}"),
        None => this,
    };
    let (ip, port) = match (node.args.as_slice(), default_port) {
        ([kind, ..], _) if cx.is_none() && (kind == "fwmark" || kind == "group") => {
            ctx.warn(
                node,
                format!("{what}: {kind} virtual servers are not supported by lb; ignored"),
            );
            return None;
        }
        ([ip, port], _) => (ip.parse::<IpAddr>().ok(), port.parse::<u16>().ok()),
        ([ip], Some(port)) => (ip.parse::<IpAddr>().ok(), Some(port)),
        _ => (None, None),
    };
    match (ip, port) {
        (Some(ip), Some(port)) => Some(SocketAddr::new(ip, port)),
        _ => {
            ctx.warn(
                node,
                format!("{what}: expected an IP address and a port; ignored"),
            );
            None
        }
    }
}

/// lb's services are of one address family (IPVS allows mixing): an
/// address of the other is warned about and left out.
fn same_family(ctx: &mut Ctx, node: &Node, cx: &str, addr: SocketAddr, vip: SocketAddr) -> bool {
    if addr.is_ipv4() == vip.is_ipv4() {
        return true;
    }
    ctx.warn(
        node,
        format!(
            "{cx}: {} {}: not of the virtual_server's address family (lb does not mix IPv4 and IPv6 in a service); ignored",
            node.keyword,
            node.args.join(" ")
        ),
    );
    false
}

fn backend<'n>(
    ctx: &mut Ctx,
    node: &'n Node,
    cx: &str,
    vip: SocketAddr,
    forwarding: &str,
    defaults: &Defaults,
) -> Option<Backend<'n>> {
    // A real_server may leave out its port; IPVS then keeps the VIP's.
    let mut address = endpoint(ctx, node, Some(cx), Some(vip.port()))?;
    if !same_family(ctx, node, cx, address, vip) {
        return None;
    }
    let rcx = format!("{cx}: real_server {} {}", address.ip(), address.port());
    let mut t = Table::new("[[service.backend]]");
    let mut defaults = defaults.clone();
    let mut inhibit_on_failure = false;
    let mut checkers = Vec::new();
    for c in &node.children {
        if defaults.absorb(ctx, c, &rcx) {
            continue;
        }
        match c.keyword.as_str() {
            "weight" => {
                if let Some(v) = int(ctx, c, &rcx) {
                    t.set("weight", v);
                }
            }
            "inhibit_on_failure" => {
                inhibit_on_failure = flag(ctx, c, &rcx).unwrap_or(inhibit_on_failure);
            }
            k if CHECKERS.contains(&k) => checkers.push(c),
            _ => ctx.unsupported(c, &rcx),
        }
    }
    let mut check = None;
    for c in checkers {
        if check.is_some() {
            ctx.warn(
                c,
                format!("{rcx}: lb runs one check per backend (keepalived requires all to pass); {} is ignored", c.keyword),
            );
        } else {
            check = check::check(ctx, c, &rcx, &defaults);
        }
    }
    // IPVS ignores the real server's port outside NAT; keepalived still
    // health-checks it, so the check keeps probing it.
    if forwarding != "nat" && address.port() != vip.port() {
        ctx.warn(
            node,
            format!(
                "{rcx}: {forwarding} cannot change ports, so traffic goes to port {} as with IPVS; checks still probe {}",
                vip.port(),
                address.port()
            ),
        );
        if let Some(c) = &mut check
            && c.get("type") != Some(&Value::str("script"))
            && c.get("connect_port").is_none()
        {
            c.set("connect_port", Value::Int(i64::from(address.port())));
        }
        address.set_port(vip.port());
    }
    t.set("address", Value::Str(address.to_string()));
    t.sort(&["address", "weight"]);
    if let Some(c) = &mut check {
        c.sort(check::ORDER);
    }
    Some(Backend {
        node,
        table: t,
        check,
        inhibit_on_failure,
    })
}
