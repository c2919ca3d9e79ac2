use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};

use super::include::{has_wildcard, matches};
use super::parser::{Node, parse};
use super::*;

/// Files that exist only in the test.
struct Memory(BTreeMap<PathBuf, String>);

impl Memory {
    fn new(files: &[(&str, &str)]) -> Self {
        Self(
            files
                .iter()
                .map(|(p, t)| (PathBuf::from(p), (*t).to_owned()))
                .collect(),
        )
    }
}

impl Includes for Memory {
    fn expand(&self, pattern: &Path) -> Vec<PathBuf> {
        let text = pattern.to_string_lossy();
        if !has_wildcard(&text) {
            return self.0.keys().filter(|p| *p == pattern).cloned().collect();
        }
        self.0
            .keys()
            .filter(|p| p.parent() == pattern.parent())
            .filter(|p| {
                let name = p.file_name().map(|n| n.to_string_lossy().into_owned());
                let glob = pattern
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned());
                matches!((glob, name), (Some(g), Some(n)) if matches(&g, &n))
            })
            .cloned()
            .collect()
    }

    fn read(&self, path: &Path) -> io::Result<String> {
        self.0
            .get(path)
            .cloned()
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))
    }

    fn identity(&self, path: &Path) -> PathBuf {
        path.to_path_buf()
    }
}

/// A tree as `keyword args {children}` text, with file:line, to compare
/// shapes in one assertion.
fn shape(nodes: &[Node]) -> String {
    nodes
        .iter()
        .map(|n| {
            let mut s = format!("{}:{} {}", n.file, n.line, n.keyword);
            for a in &n.args {
                s.push(' ');
                s.push_str(a);
            }
            if n.block {
                s.push_str(&format!(" {{{}}}", shape(&n.children)));
            }
            s
        })
        .collect::<Vec<_>>()
        .join("; ")
}

fn tree(text: &str, files: &[(&str, &str)]) -> String {
    match parse(text, "/etc/k/keepalived.conf", &Memory::new(files)) {
        Ok(p) => shape(&p.nodes),
        Err(e) => panic!("{e}"),
    }
}

fn parse_error(text: &str, files: &[(&str, &str)]) -> String {
    match parse(text, "/etc/k/keepalived.conf", &Memory::new(files)) {
        Ok(p) => panic!("expected an error, got {}", shape(&p.nodes)),
        Err(e) => e.to_string(),
    }
}

const K: &str = "/etc/k/keepalived.conf";

#[test]
fn parses_nested_blocks_with_lines() {
    let text = "a 1 2 {\n  b {\n    c \"x y\"\n  }\n  d {}\n}\ne\n";
    assert_eq!(
        tree(text, &[]),
        format!("{K}:1 a 1 2 {{{K}:2 b {{{K}:3 c x y}}; {K}:5 d {{}}}}; {K}:7 e")
    );
}

#[test]
fn parses_one_line_blocks_and_braces_on_the_next_line() {
    let text = "real_server 10.0.0.1 80 { weight 2 } x\nvirtual_ipaddress\n{\n  10.0.0.9\n}\n";
    assert_eq!(
        tree(text, &[]),
        format!(
            "{K}:1 real_server 10.0.0.1 80 {{{K}:1 weight 2}}; {K}:1 x; {K}:2 virtual_ipaddress {{{K}:4 10.0.0.9}}"
        )
    );
}

#[test]
fn include_is_spliced_in_place_relative_to_the_including_file() {
    let files = [
        (
            "/etc/k/conf.d/b.conf",
            "vb {\n  include sub/inner.conf\n}\n",
        ),
        ("/etc/k/conf.d/a.conf", "va\n"),
        ("/etc/k/conf.d/a.txt", "not included\n"),
        ("/etc/k/conf.d/sub/inner.conf", "\n\ninner 1\n"),
    ];
    assert_eq!(
        tree("first\ninclude conf.d/*.conf\nlast\n", &files),
        format!(
            "{K}:1 first; /etc/k/conf.d/a.conf:1 va; /etc/k/conf.d/b.conf:1 vb {{/etc/k/conf.d/sub/inner.conf:3 inner 1}}; {K}:3 last"
        )
    );
}

#[test]
fn a_missing_include_is_a_warning() {
    let parsed = parse("a\ninclude nope/*.conf\nb\n", K, &Memory::new(&[])).expect("parses");
    assert_eq!(shape(&parsed.nodes), format!("{K}:1 a; {K}:3 b"));
    let warnings: Vec<String> = parsed.warnings.iter().map(|(_, w)| w.to_string()).collect();
    assert_eq!(
        warnings,
        [format!(
            "{K}:2: warning: include nope/*.conf: no such file; nothing included"
        )]
    );
}

#[test]
fn include_cycles_are_errors() {
    let files = [
        (K, "include a.conf\n"),
        ("/etc/k/a.conf", "x\ninclude b.conf\n"),
        ("/etc/k/b.conf", "include keepalived.conf\n"),
    ];
    assert_eq!(
        parse_error("include a.conf\n", &files),
        "/etc/k/b.conf:1: include cycle: /etc/k/keepalived.conf is already being read"
    );
}

#[test]
fn syntax_errors_name_file_and_line() {
    assert_eq!(
        parse_error("a {\n  b {\n  }\n", &[]),
        format!("{K}:1: '{{' is never closed")
    );
    assert_eq!(
        parse_error("a\n}\n", &[]),
        format!("{K}:2: '}}' without a block")
    );
    assert_eq!(
        parse_error("a {}\n{\n}\n", &[]),
        format!("{K}:2: '{{' without a keyword")
    );
    assert_eq!(
        parse_error("include x.conf\n", &[("/etc/k/x.conf", "b {\n")]),
        "/etc/k/x.conf:1: '{' is never closed"
    );
}

fn import_text(text: &str) -> Import {
    import_str(text, "k.conf", &Memory::new(&[])).unwrap_or_else(|e| panic!("{e}"))
}

fn messages(import: &Import) -> Vec<String> {
    import.warnings.iter().map(ToString::to_string).collect()
}

/// lb_algo keeps its name when lb has the scheduler; none means
/// keepalived's wlc; others become mh with a warning, as does lc/wlc over
/// more real servers than lb's lc/wlc take.
#[test]
fn lb_algo_maps_to_the_same_scheduler() {
    let vs = |algo: &str, servers: usize| {
        let rs: String = (1..=servers)
            .map(|i| {
                format!(
                    "  real_server 10.1.{}.{} 80 {{\n  }}\n",
                    i / 200,
                    i % 200 + 1
                )
            })
            .collect();
        import_text(&format!(
            "virtual_server 10.1.1.1 80 {{\n  lb_kind DR\n{algo}{rs}}}\n"
        ))
    };
    for s in ["rr", "wrr", "lc", "wlc", "sh", "mh"] {
        let out = vs(&format!("  lb_algo {s}\n"), 2);
        assert!(
            out.toml.contains(&format!("scheduler = \"{s}\"\n")),
            "{s}: {}",
            out.toml
        );
        assert!(!messages(&out).iter().any(|m| m.contains("lb_algo")));
    }
    let out = vs("", 2);
    assert!(
        out.toml
            .contains("scheduler = \"wlc\"  # keepalived's default lb_algo\n"),
        "{}",
        out.toml
    );
    let out = vs("  lb_algo dh\n", 2);
    assert!(
        out.toml
            .contains("scheduler = \"mh\"  # keepalived: lb_algo dh\n")
    );
    assert!(
        messages(&out).iter().any(|m| m
            .ends_with("lb_algo dh is not an lb scheduler; using mh (weighted Maglev hashing)")),
        "{:?}",
        messages(&out)
    );
    let out = vs("  lb_algo lc\n", 65);
    assert!(
        out.toml
            .contains("scheduler = \"mh\"  # keepalived: lb_algo lc\n")
    );
    assert!(
        messages(&out)
            .iter()
            .any(|m| m.contains("lb_algo lc with 65 real servers: lb's lc and wlc take at most 64")),
        "{:?}",
        messages(&out)
    );
}

#[test]
fn a_vip_without_vrrp_instance_gets_a_placeholder_interface() {
    let out = import_text(
        "virtual_server 10.1.1.1 80 {\n  lb_algo mh\n  lb_kind NAT\n  real_server 10.1.2.1 80 {\n  }\n}\n",
    );
    assert!(
        out.toml
            .contains("interface = \"eth0\"  # FIXME: the interface the VIP's packets arrive on\n"),
        "{}",
        out.toml
    );
    assert_eq!(
        messages(&out),
        [
            "k.conf:1: warning: virtual_server 10.1.1.1 80: no vrrp_instance has 10.1.1.1 in its virtual_ipaddress, so the interface is unknown; set `interface` (written as \"eth0\")"
        ]
    );
}

#[test]
fn what_the_schema_rejects_is_reported_against_the_generated_toml() {
    let out = import_text(
        "virtual_server 10.1.1.1 80 {\n  lb_algo mh\n  lb_kind TUN\n  quorum 5\n  real_server 10.1.2.1 80 {\n  }\n}\n",
    );
    let m = messages(&out);
    assert!(out.toml.contains("forwarding = \"tun\""), "{}", out.toml);
    assert!(
        m.iter().any(|w| w.contains(
            "warning: the generated config does not validate, edit it before use: service[0].quorum: quorum 5 is larger than the total backend weight 1"
        )),
        "{m:#?}"
    );
}

#[test]
fn differing_checks_stay_on_their_backends() {
    let out = import_text(
        "virtual_server 10.1.1.1 80 {\n  lb_algo mh\n  delay_loop 2\n  real_server 10.1.2.1 80 {\n    TCP_CHECK {\n    }\n  }\n  real_server 10.1.2.2 80 {\n    TCP_CHECK {\n      connect_port 81\n    }\n  }\n  real_server 10.1.2.3 80 {\n  }\n}\n",
    );
    let body = out
        .toml
        .split_once("[[service.backend]]")
        .map(|(_, b)| b)
        .unwrap_or_default();
    assert_eq!(
        body,
        "\naddress = \"10.1.2.1:80\"\n\n[service.backend.check]\ntype = \"tcp\"\ndelay_loop = \"2s\"\n\n\
         [[service.backend]]\naddress = \"10.1.2.2:80\"\n\n[service.backend.check]\ntype = \"tcp\"\ndelay_loop = \"2s\"\nconnect_port = 81\n\n\
         [[service.backend]]\naddress = \"10.1.2.3:80\"\n"
    );
}

#[test]
fn vrrp_details_keepalived_handles_its_own_way() {
    let out = import_text(
        "global_defs {\n  vrrp_version 3\n}\nvrrp_instance V {\n  interface eth0\n  virtual_router_id 1\n  advert_int 0.5\n  authentication {\n    auth_type PASS\n    auth_pass 123456789\n  }\n  virtual_ipaddress {\n    10.0.0.1\n    fe80::1/64\n  }\n}\n",
    );
    assert!(
        out.toml.contains("advert_int = \"500ms\"\nversion = 3\n"),
        "{}",
        out.toml
    );
    assert!(
        out.toml
            .contains("virtual_ipaddress = [\"10.0.0.1\", \"fe80::1/64\"]\n"),
        "{}",
        out.toml
    );
    assert!(!out.toml.contains("auth_pass"), "{}", out.toml);
    assert_eq!(
        messages(&out),
        [
            "k.conf:8: warning: vrrp_instance V: authentication is ignored with VRRP version 3, as keepalived does",
            "k.conf:10: warning: vrrp_instance V: auth_pass is longer than 8 characters; only the first 8 go on the wire (keepalived truncates too), so they are kept",
        ]
    );
}

/// Imports `tests/fixtures/keepalived/CASE/keepalived.conf` and compares the
/// TOML and the warnings with `expected.toml` and `expected.warnings` next
/// to it; `LB_BLESS=1` rewrites them after a deliberate change. The TOML
/// must validate on a host that has `interfaces`.
fn golden(case: &str, interfaces: &[&str]) {
    let dir = Path::new("tests/fixtures/keepalived").join(case);
    let out = import(&dir.join("keepalived.conf")).unwrap_or_else(|e| panic!("{e}"));
    let warnings: String = out.warnings.iter().map(|w| format!("{w}\n")).collect();
    let (toml_path, warnings_path) = (dir.join("expected.toml"), dir.join("expected.warnings"));
    if std::env::var_os("LB_BLESS").is_some() {
        std::fs::write(&toml_path, &out.toml).expect("write expected.toml");
        std::fs::write(&warnings_path, &warnings).expect("write expected.warnings");
    }
    let read =
        |p: &Path| std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    assert_eq!(out.toml, read(&toml_path), "{case}: TOML");
    assert_eq!(warnings, read(&warnings_path), "{case}: warnings");
    if let Err(e) = crate::config::parse(&out.toml, "expected.toml", &Host(interfaces)) {
        panic!("{case}: the TOML does not validate:\n{e}");
    }
}

#[test]
fn golden_nat_http_digest_unicast() {
    golden("nat_http", &["eth1"]);
}

#[test]
fn golden_dr_tcp_persistence() {
    golden("dr_tcp", &["bond0", "eth2"]);
}

#[test]
fn golden_multiple_instances_and_include() {
    golden("multi_include", &["eth0", "eth1"]);
}

#[test]
fn golden_misc_ssl_sorry_quorum() {
    golden("misc_ssl_sorry", &["eth0"]);
}

#[test]
fn golden_chime_portal() {
    golden("chime_portal", &["eth0"]);
}

#[test]
fn real_server_port_defaults_to_the_vip_port_and_families_do_not_mix() {
    let out = import_text(
        "virtual_server 10.1.1.1 80 {\n  lb_algo mh\n  real_server 10.1.2.1 {\n  }\n  real_server 2001:db8::1 80 {\n  }\n}\nvirtual_server 2001:db8::2 80 {\n}\n",
    );
    assert!(
        out.toml
            .contains("[[service.backend]]\naddress = \"10.1.2.1:80\"\n\n"),
        "{}",
        out.toml
    );
    assert_eq!(out.toml.matches("[[service.backend]]").count(), 1);
    assert_eq!(
        messages(&out)[1..2],
        [
            "k.conf:5: warning: virtual_server 10.1.1.1 80: real_server 2001:db8::1 80: not of the virtual_server's address family (lb does not mix IPv4 and IPv6 in a service); ignored",
        ]
    );
    assert!(
        out.toml.contains("vip = \"[2001:db8::2]:80\"\n"),
        "{}",
        out.toml
    );
}

#[test]
fn inhibit_on_failure_maps_only_when_it_holds_for_the_whole_service() {
    let vs = |a: &str, b: &str| {
        import_text(&format!(
            "virtual_server 10.1.1.1 80 {{\n  lb_algo mh\n  real_server 10.1.2.1 80 {{\n{a}  }}\n  real_server 10.1.2.2 80 {{\n{b}  }}\n}}\n"
        ))
    };
    let all = vs("    inhibit_on_failure\n", "    inhibit_on_failure\n");
    assert!(
        all.toml.contains("inhibit_on_failure = true\n"),
        "{}",
        all.toml
    );
    let some = vs("", "    inhibit_on_failure\n");
    assert!(!some.toml.contains("inhibit_on_failure"), "{}", some.toml);
    assert_eq!(
        messages(&some)[1..],
        [
            "k.conf:5: warning: virtual_server 10.1.1.1 80: inhibit_on_failure on some real_servers only: lb sets it for the whole service; ignored"
        ]
    );
}

#[test]
fn checker_defaults_come_from_virtual_and_real_server() {
    let out = import_text(
        "virtual_server 10.1.1.1 80 {\n  lb_algo mh\n  delay_loop 7\n  retry 4\n  real_server 10.1.2.1 80 {\n    delay_loop 3\n    TCP_CHECK {\n      delay_before_retry 0.25\n    }\n  }\n  real_server 10.1.2.2 80 {\n    SMTP_CHECK {\n    }\n  }\n}\n",
    );
    assert!(
        out.toml.contains(
            "[service.backend.check]\ntype = \"tcp\"\ndelay_loop = \"3s\"\nretry = 4\ndelay_before_retry = \"250ms\"\n"
        ),
        "{}",
        out.toml
    );
    assert_eq!(
        messages(&out)[1..],
        [
            "k.conf:12: warning: virtual_server 10.1.1.1 80: real_server 10.1.2.2 80: SMTP_CHECK is not supported by lb; this check is dropped"
        ]
    );
}

#[test]
fn track_script_without_vrrp_script_is_a_warning() {
    let out = import_text(
        "vrrp_instance V {\n  interface eth0\n  virtual_router_id 1\n  virtual_ipaddress {\n    10.0.0.1\n  }\n  track_script {\n    chk_gone\n  }\n}\n",
    );
    assert!(!out.toml.contains("track_script"), "{}", out.toml);
    assert_eq!(
        messages(&out),
        [
            "k.conf:8: warning: vrrp_instance V: track_script chk_gone: no vrrp_script chk_gone is defined; ignored"
        ]
    );
}

#[test]
fn an_unreadable_file_is_an_error() {
    let e = import(Path::new("tests/fixtures/keepalived/no-such.conf")).expect_err("must fail");
    assert!(
        e.to_string()
            .starts_with("tests/fixtures/keepalived/no-such.conf: cannot read: "),
        "{e}"
    );
}

#[test]
fn an_sctp_virtual_server_is_skipped_with_one_warning() {
    let out = import_text("virtual_server 10.1.1.1 80 {\n  protocol SCTP\n}\n");
    assert!(!out.toml.contains("[[service]]"), "{}", out.toml);
    assert_eq!(
        messages(&out),
        [
            "k.conf:2: warning: virtual_server 10.1.1.1 80: protocol SCTP is not supported by lb (tcp, udp); virtual_server ignored"
        ]
    );
}

/// A host with these interfaces and the root user.
struct Host<'a>(&'a [&'a str]);

impl crate::config::Environment for Host<'_> {
    fn interface_exists(&self, name: &str) -> bool {
        self.0.contains(&name)
    }

    fn user_ids(&self, name: &str) -> Option<(u32, u32)> {
        (name == "root").then_some((0, 0))
    }
}

/// `script_user` becomes `daemon.script_user`; keepalived's optional group
/// has no lb equivalent and says so; `enable_script_security` is lb's
/// default and needs no word.
#[test]
fn script_user_and_script_security() {
    let i = import_text("global_defs {\n  enable_script_security\n  script_user portal\n}\n");
    assert!(
        i.toml.contains("\n[daemon]\nscript_user = \"portal\"\n"),
        "{}",
        i.toml
    );
    assert_eq!(messages(&i), Vec::<String>::new());
    let i = import_text("global_defs {\n  script_user portal staff\n}\n");
    assert!(i.toml.contains("script_user = \"portal\""), "{}", i.toml);
    assert_eq!(
        messages(&i),
        [
            "k.conf:2: warning: global_defs: script_user's group staff: lb runs scripts with the user's primary group; ignored"
        ]
    );
}
