//! The keepalived tree to lb's TOML tables.
//!
//! Every keyword is either mapped, or named in a warning: an SRE must be
//! able to trust that nothing vanished silently. vrrp_instances come first
//! because a virtual_server's interface is found through the instance
//! holding its VIP.

mod check;
mod service;
mod values;
mod vrrp;

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;

use super::Warning;
use super::emit::{Table, Value};
use super::parser::Node;

pub(crate) struct Converted {
    pub tables: Vec<Table>,
    pub warnings: Vec<(usize, Warning)>,
}

/// Collects the warnings, each tagged with its node's position.
#[derive(Default)]
pub(crate) struct Ctx {
    warnings: Vec<(usize, Warning)>,
    /// Nodes read once per use (a vrrp_script tracked by two instances)
    /// would warn twice.
    seen: HashSet<(usize, String)>,
}

impl Ctx {
    pub fn warn(&mut self, node: &Node, message: impl Into<String>) {
        let (pos, warning) = node.warning(message);
        if self.seen.insert((pos, warning.message.clone())) {
            self.warnings.push((pos, warning));
        }
    }

    /// The warning for a keyword lb has no equivalent for.
    pub fn unsupported(&mut self, node: &Node, cx: &str) {
        self.warn(
            node,
            format!("{cx}: {} is not supported by lb; ignored", node.keyword),
        );
    }
}

/// keepalived's global_defs keys that are defaults for every vrrp_instance.
#[derive(Default)]
pub(crate) struct Globals {
    pub version: Option<Value>,
    pub garp_master_delay: Option<Value>,
    pub garp_master_repeat: Option<Value>,
    /// `script_user`: lb's `daemon.script_user`.
    pub script_user: Option<Value>,
}

/// The top-level vrrp_script blocks, by name, and which ones an instance
/// tracks.
#[derive(Default)]
pub(crate) struct Scripts<'n> {
    pub by_name: HashMap<&'n str, &'n Node>,
    pub used: HashSet<&'n str>,
}

/// Where each VRRP-managed address lives: the instance's interface.
pub(crate) type VipInterfaces = HashMap<IpAddr, String>;

pub(crate) fn convert(nodes: &[Node]) -> Converted {
    let mut ctx = Ctx::default();
    let mut globals = Globals::default();
    let mut scripts = Scripts::default();
    let mut instances = Vec::new();
    let mut servers = Vec::new();
    for node in nodes {
        match node.keyword.as_str() {
            "global_defs" => global_defs(&mut ctx, node, &mut globals),
            "vrrp_script" => match node.args.first() {
                Some(name) => {
                    if scripts.by_name.insert(name, node).is_some() {
                        ctx.warn(
                            node,
                            format!("vrrp_script {name} is defined again; this definition wins"),
                        );
                    }
                }
                None => ctx.warn(node, "vrrp_script without a name; ignored"),
            },
            "vrrp_instance" => instances.push(node),
            "virtual_server" => servers.push(node),
            "vrrp_sync_group" => ctx.warn(
                node,
                format!(
                    "vrrp_sync_group {}: lb has no sync groups, its instances fail over independently; ignored",
                    node.args.join(" ")
                ),
            ),
            "virtual_server_group" => ctx.warn(
                node,
                format!(
                    "virtual_server_group {}: not supported by lb; ignored, with the virtual_servers using it",
                    node.args.join(" ")
                ),
            ),
            _ => ctx.warn(
                node,
                format!("{} is not supported by lb; ignored", node.keyword),
            ),
        }
    }
    let mut tables = Vec::new();
    if let Some(user) = globals.script_user.clone() {
        let mut daemon = Table::new("[daemon]");
        daemon.set("script_user", user);
        tables.push(daemon);
    }
    let mut vips = VipInterfaces::new();
    for node in instances {
        tables.extend(vrrp::instance(
            &mut ctx,
            node,
            &globals,
            &mut scripts,
            &mut vips,
        ));
    }
    for node in servers {
        tables.extend(service::service(&mut ctx, node, &vips));
    }
    let mut unused: Vec<(&str, &Node)> = scripts
        .by_name
        .iter()
        .filter(|(name, _)| !scripts.used.contains(*name))
        .map(|(name, node)| (*name, *node))
        .collect();
    unused.sort_by_key(|(_, node)| node.pos);
    for (name, node) in unused {
        ctx.warn(
            node,
            format!("vrrp_script {name} is not tracked by any vrrp_instance; ignored"),
        );
    }
    Converted {
        tables,
        warnings: ctx.warnings,
    }
}

fn global_defs(ctx: &mut Ctx, node: &Node, globals: &mut Globals) {
    let cx = "global_defs";
    for c in &node.children {
        match c.keyword.as_str() {
            "vrrp_version" => globals.version = values::int(ctx, c, cx),
            "vrrp_garp_master_delay" => globals.garp_master_delay = values::timer(ctx, c, cx),
            "vrrp_garp_master_repeat" => globals.garp_master_repeat = values::int(ctx, c, cx),
            // lb checks scripts this way unless told not to (daemon.script_security).
            "enable_script_security" => {}
            "script_user" => {
                if let Some(group) = c.args.get(1) {
                    ctx.warn(
                        c,
                        format!(
                            "{cx}: script_user's group {group}: lb runs scripts with the user's primary group; ignored"
                        ),
                    );
                }
                globals.script_user = c.args.first().map(Value::str);
                if globals.script_user.is_none() {
                    ctx.warn(c, format!("{cx}: script_user without a value; ignored"));
                }
            }
            _ => ctx.unsupported(c, cx),
        }
    }
}
