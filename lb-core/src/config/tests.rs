use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use super::*;

/// The interfaces the tests pretend exist.
fn env(name: &str) -> bool {
    matches!(name, "lb0" | "lb1" | "eth0")
}

fn ok(text: &str) -> Config {
    match parse(text, "t.toml", &env) {
        Ok(c) => c,
        Err(e) => panic!("unexpected errors:\n{e}"),
    }
}

fn errors(text: &str) -> Vec<String> {
    match parse(text, "t.toml", &env) {
        Ok(c) => panic!("expected errors, got {c:?}"),
        Err(e) => e.0.iter().map(ToString::to_string).collect(),
    }
}

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("test address")
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("test address")
}

const MINIMAL: &str = r#"
[[service]]
vip = "198.18.0.100:80"
interface = "lb0"
forwarding = "nat"

[[service.backend]]
address = "198.18.1.1:8080"
"#;

fn configs_dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs")
}

/// A host for validation: `env`'s interfaces, these users (name, uid,
/// gid), every script under `/unsafe/` refused, as the real check would
/// refuse one in a world-writable directory, and every script under
/// `/root-only/` refused to a script user other than root.
struct TestHost(&'static [(&'static str, u32, u32)]);

impl Environment for TestHost {
    fn interface_exists(&self, name: &str) -> bool {
        env(name)
    }

    fn script_problem(&self, program: &str, run_as: Option<&ScriptUser>) -> Option<String> {
        if program.starts_with("/unsafe/") {
            return Some(format!("{program}: writable by others"));
        }
        let user = run_as.filter(|u| u.uid != 0)?;
        program
            .starts_with("/root-only/")
            .then(|| format!("{program}: script_user {:?} cannot execute it", user.name))
    }

    fn user_ids(&self, name: &str) -> Option<(u32, u32)> {
        self.0
            .iter()
            .find(|(n, _, _)| *n == name)
            .map(|&(_, uid, gid)| (uid, gid))
    }
}

/// The example configs' host: it has root.
const EXAMPLE_HOST: TestHost = TestHost(&[("root", 0, 0)]);

fn example(name: &str) -> Config {
    let path = configs_dir().join(name);
    let text = std::fs::read_to_string(&path).expect("example config");
    match parse(&text, name, &EXAMPLE_HOST) {
        Ok(c) => c,
        Err(e) => panic!("{name} does not load:\n{e}"),
    }
}

#[test]
fn reference_toml_loads_and_sets_every_key() {
    let c = example("reference.toml");
    assert_eq!(c.services.len(), 1);
    let s = &c.services[0];
    assert_eq!(s.name.as_deref(), Some("web"));
    assert_eq!(s.sorry_server, Some(addr("198.18.2.1:8080")));
    assert_eq!(s.backends.len(), 4);
    let Some(Check {
        kind: CheckKind::Http(http),
        ..
    }) = &s.check
    else {
        panic!("service check is not http: {:?}", s.check);
    };
    assert_eq!(
        http.status,
        vec![
            StatusRange {
                first: 200,
                last: 299
            },
            StatusRange {
                first: 301,
                last: 301
            },
        ]
    );
    assert_eq!(
        s.backends[1].check, s.check,
        "backends inherit the service check"
    );
    assert!(matches!(
        s.backends[2].check.as_ref().map(|c| &c.kind),
        Some(CheckKind::Script(_))
    ));
    assert_eq!(
        s.backends[3].check.as_ref().map(|c| c.fall),
        Some(3),
        "retry = 2 means fall = 3"
    );
    let v = &c.vrrp_instances[0];
    assert_eq!(
        v.track_interface,
        vec![
            TrackInterface {
                name: "lb0".into(),
                weight: 0
            },
            TrackInterface {
                name: "lb1".into(),
                weight: -20
            },
        ]
    );
    assert_eq!(v.track_script[0].interval, Duration::from_secs(2));
    assert_eq!(
        c.daemon.pin_dir.as_deref(),
        Some(Path::new("/sys/fs/bpf/lb"))
    );
    assert_eq!(
        c.daemon
            .script_user
            .as_ref()
            .map(|u| (u.name.as_str(), u.uid)),
        Some(("root", 0))
    );
}

#[test]
fn chime_portal_toml_is_the_production_plan() {
    let c = example("chime-portal.toml");
    let s = &c.services[0];
    assert_eq!(s.vip.port(), 80);
    assert_eq!(s.forwarding, Forwarding::Nat);
    assert_eq!(s.interface, "eth0");
    let ports: Vec<u16> = s.backends.iter().map(|b| b.address.port()).collect();
    assert_eq!(ports, [8033, 8033]);
    let check = s.check.as_ref().expect("check");
    assert_eq!(check.delay_loop, Duration::from_secs(2));
    assert_eq!((check.fall, check.rise), (3, 2));
    let CheckKind::Http(http) = &check.kind else {
        panic!("not http: {:?}", check.kind);
    };
    assert_eq!(http.path, "/");
    assert_eq!(
        http.status,
        vec![StatusRange {
            first: 200,
            last: 399
        }]
    );
    let v = &c.vrrp_instances[0];
    assert_eq!(
        (
            v.name.as_str(),
            v.interface.as_str(),
            v.virtual_router_id,
            v.priority
        ),
        ("VI_PORTAL", "eth0", 51, 150)
    );
    assert_eq!(v.advert_int, Duration::from_secs(1));
    assert_eq!(v.virtual_ipaddress[0].addr, s.vip.ip());
}

#[test]
fn lab_toml_loads() {
    let c = example("lab.toml");
    let s = &c.services[0];
    assert_eq!(s.vip, addr("198.18.0.100:80"));
    assert_eq!(s.interface, "lb0");
    assert_eq!(s.forwarding, Forwarding::Nat);
    let backends: Vec<SocketAddr> = s.backends.iter().map(|b| b.address).collect();
    assert_eq!(
        backends,
        [
            addr("198.18.1.1:8080"),
            addr("198.18.1.2:8080"),
            addr("198.18.1.3:8080")
        ]
    );
    assert_eq!(
        s.check.as_ref().map(|c| c.delay_loop),
        Some(Duration::from_secs(1))
    );
}

#[test]
fn config_defaults_are_applied() {
    let c = ok(&format!(
        "{MINIMAL}\n[service.check]\ntype = \"http\"\n\n[[vrrp_instance]]\nname = \"VI_1\"\n\
         interface = \"lb0\"\nvirtual_router_id = 7\nvirtual_ipaddress = [\"198.18.0.100\"]\n"
    ));
    assert_eq!(
        c.daemon,
        Daemon {
            admin_socket: "/run/lb/admin.sock".into(),
            metrics_listen: addr("127.0.0.1:9658"),
            xdp_mode: XdpMode::Auto,
            flow_capacity: 262_144,
            max_new_flows_per_cpu: 125_000,
            max_vips: 64,
            max_backends: 4096,
            table_size: 65_537,
            log_level: "info".into(),
            pin_dir: None,
            script_security: true,
            script_user: None,
        }
    );
    let s = &c.services[0];
    assert_eq!(s.protocol, Protocol::Tcp);
    assert_eq!(s.scheduler, Scheduler::Mh);
    assert_eq!(s.table_size, 65_537);
    assert_eq!(s.snat_address, None);
    assert_eq!(
        s.snat_ports,
        PortRange {
            first: 1024,
            last: 32767
        }
    );
    assert_eq!(s.tcp_timeout, Duration::from_secs(900));
    assert_eq!(s.udp_timeout, Duration::from_secs(300));
    assert_eq!((s.quorum, s.hysteresis), (1, 0));
    assert_eq!(s.sorry_server, None);
    assert!(!s.inhibit_on_failure && !s.alpha);
    let check = Check {
        kind: CheckKind::Http(HttpCheck {
            path: "/".into(),
            status: vec![StatusRange {
                first: 200,
                last: 299,
            }],
            host: None,
            digest: None,
            body_regex: None,
        }),
        delay_loop: Duration::from_secs(5),
        connect_timeout: Duration::from_secs(5),
        connect_port: None,
        fall: 2,
        rise: 1,
        delay_before_retry: Duration::from_secs(1),
        source_address: None,
    };
    assert_eq!(s.check.as_ref(), Some(&check));
    assert_eq!(
        s.backends,
        vec![Backend {
            address: addr("198.18.1.1:8080"),
            weight: 1,
            check: Some(check),
        }]
    );
    assert_eq!(
        c.vrrp_instances,
        vec![VrrpInstance {
            name: "VI_1".into(),
            interface: "lb0".into(),
            virtual_router_id: 7,
            priority: 100,
            advert_int: Duration::from_secs(1),
            version: VrrpVersion::V2,
            nopreempt: false,
            preempt_delay: Duration::ZERO,
            virtual_ipaddress: vec![VirtualAddress {
                addr: ip("198.18.0.100"),
                prefix_len: 32
            }],
            unicast_src_ip: None,
            unicast_peer: vec![],
            auth_pass: None,
            track_interface: vec![],
            track_script: vec![],
            notify_master: None,
            notify_backup: None,
            notify_fault: None,
            notify: None,
            garp_master_delay: Duration::from_secs(5),
            garp_master_repeat: 5,
        }]
    );
}

#[test]
fn config_empty_file_is_valid() {
    let c = ok("");
    assert!(c.services.is_empty() && c.vrrp_instances.is_empty());
}

#[test]
fn config_error_duplicate_vip() {
    let text = format!("{MINIMAL}{MINIMAL}");
    assert_eq!(
        errors(&text),
        [
            "t.toml:11:7: service[1].vip: duplicate VIP 198.18.0.100:80/tcp (already defined by service[0])"
        ]
    );
    let udp = MINIMAL.replace("forwarding", "protocol = \"udp\"\nforwarding");
    ok(&format!("{MINIMAL}{udp}"));
}

#[test]
fn config_error_backend_port_zero_and_bad_addresses() {
    let text = r#"
[[service]]
vip = "198.18.0.100"
interface = "lb0"
forwarding = "nat"

[[service.backend]]
address = "198.18.1.1:0"

[[service.backend]]
address = "[2001:db8::1]:80"

[[service.backend]]
address = "198.18.1.300:80"
"#;
    assert_eq!(
        errors(text),
        [
            "t.toml:3:7: service[0].vip: invalid address \"198.18.0.100\": expected \"ip:port\"",
            "t.toml:8:11: service[0].backend[0].address: port 0 is not allowed",
            "t.toml:14:11: service[0].backend[2].address: invalid address \"198.18.1.300:80\": expected \"ip:port\"",
        ]
    );
}

#[test]
fn config_error_weight_out_of_range() {
    let text = format!(
        "{MINIMAL}weight = 65536\n\n[[service.backend]]\naddress = \"198.18.1.2:8080\"\nweight = -1\n"
    );
    assert_eq!(
        errors(&text),
        [
            "t.toml:9:10: service[0].backend[0].weight: 65536 is out of range 0..=65535",
            "t.toml:13:10: service[0].backend[1].weight: -1 is out of range 0..=65535",
        ]
    );
    let drained = ok(&format!("{MINIMAL}weight = 0\n"));
    assert_eq!(drained.services[0].backends[0].weight, 0);
}

#[test]
fn config_error_unknown_keys_are_all_reported() {
    let text =
        format!("[daemon]\nmax_vip = 3\n{MINIMAL}wieght = 2\n\n[service.chek]\ntype = \"tcp\"\n");
    assert_eq!(
        errors(&text),
        [
            "t.toml:2:1: daemon.max_vip: unknown key; expected one of `admin_socket`, `metrics_listen`, `xdp_mode`, `flow_capacity`, `max_new_flows_per_cpu`, `max_vips`, `max_backends`, `table_size`, `log_level`, `pin_dir`, `script_security`, `script_user`",
            "t.toml:11:1: service[0].backend[0].wieght: unknown key; expected one of `address`, `weight`, `check`",
            "t.toml:13:10: service[0].chek: unknown key; expected one of `name`, `vip`, `protocol`, `interface`, `forwarding`, `scheduler`, `table_size`, `snat_address`, `snat_ports`, `persistence_timeout`, `persistence_granularity`, `tun_source`, `tcp_timeout`, `udp_timeout`, `quorum`, `hysteresis`, `sorry_server`, `inhibit_on_failure`, `alpha`, `observe`, `error_limit`, `syn_timeout`, `check`, `backend`",
        ]
    );
}

#[test]
fn config_error_unknown_table_is_skipped_whole() {
    let text = r#"
[[service]]
vip = "198.18.0.100:80"
interface = "lb0"
forwarding = "nat"

[service.chek]
type = "tcp"
delay_loop = 5

[[service.backend]]
address = "198.18.1.1:8080"
weight = 70000
"#;
    assert_eq!(
        errors(text),
        [
            "t.toml:7:10: service[0].chek: unknown key; expected one of `name`, `vip`, `protocol`, `interface`, `forwarding`, `scheduler`, `table_size`, `snat_address`, `snat_ports`, `persistence_timeout`, `persistence_granularity`, `tun_source`, `tcp_timeout`, `udp_timeout`, `quorum`, `hysteresis`, `sorry_server`, `inhibit_on_failure`, `alpha`, `observe`, `error_limit`, `syn_timeout`, `check`, `backend`",
            "t.toml:13:10: service[0].backend[0].weight: 70000 is out of range 0..=65535",
        ]
    );
}

#[test]
fn config_error_wrong_types_and_values_do_not_hide_later_errors() {
    let text = r#"
[daemon]
xdp_mode = "fast"
max_vips = "64"

[[service]]
vip = 80
interface = "lb0"
forwarding = "nat"
protocol = "sctp"
"#;
    assert_eq!(
        errors(text),
        [
            "t.toml:3:12: daemon.xdp_mode: unknown value `fast`, expected one of `auto`, `native`, `generic`",
            "t.toml:4:12: daemon.max_vips: invalid type: string \"64\", expected an integer",
            "t.toml:7:7: service[0].vip: invalid type: integer `80`, expected a string",
            "t.toml:10:12: service[0].protocol: unknown value `sctp`, expected `tcp` or `udp`",
        ]
    );
}

#[test]
fn config_error_non_prime_table_size() {
    let text = format!("[daemon]\ntable_size = 65536\n{MINIMAL}");
    assert_eq!(
        errors(&text),
        ["t.toml:2:14: daemon.table_size: table size 65536 is not a prime"]
    );
    let text = MINIMAL.replace("forwarding", "table_size = 1\nforwarding");
    assert_eq!(
        errors(&text),
        ["t.toml:5:14: service[0].table_size: table size 1 is not a prime"]
    );
    let c = ok(&MINIMAL.replace("forwarding", "table_size = 251\nforwarding"));
    assert_eq!(c.services[0].table_size, 251);
}

#[test]
fn config_error_table_smaller_than_backends() {
    let text = MINIMAL.replace("forwarding", "table_size = 2\nforwarding")
        + "\n[[service.backend]]\naddress = \"198.18.1.2:8080\"\n\n[[service.backend]]\naddress = \"198.18.1.3:8080\"\n";
    assert_eq!(
        errors(&text),
        [
            "t.toml:5:14: service[0].table_size: table size 2 is smaller than the number of backends (3)"
        ]
    );
}

#[test]
fn config_error_duplicate_backend() {
    let text = format!("{MINIMAL}\n[[service.backend]]\naddress = \"198.18.1.1:8080\"\n");
    assert_eq!(
        errors(&text),
        [
            "t.toml:11:11: service[0].backend[1].address: duplicate backend 198.18.1.1:8080 (already listed as service[0].backend[0])"
        ]
    );
}

#[test]
fn config_error_backend_is_the_vip() {
    let text = MINIMAL.replace("198.18.1.1:8080", "198.18.0.100:80");
    assert_eq!(
        errors(&text),
        ["t.toml:8:11: service[0].backend[0].address: is the service's own VIP"]
    );
}

#[test]
fn config_error_missing_interface() {
    let text = MINIMAL.replace("lb0", "lb7");
    assert_eq!(
        errors(&text),
        ["t.toml:4:13: service[0].interface: interface \"lb7\" does not exist"]
    );
}

#[test]
fn config_error_missing_required_keys() {
    let text =
        "[[service]]\nname = \"x\"\n\n[[service.backend]]\nweight = 1\n\n[[vrrp_instance]]\n";
    assert_eq!(
        errors(text),
        [
            "t.toml:1:1: service[0].vip: missing required key",
            "t.toml:1:1: service[0].interface: missing required key",
            "t.toml:1:1: service[0].forwarding: missing required key",
            "t.toml:4:1: service[0].backend[0].address: missing required key",
            "t.toml:7:1: vrrp_instance[0].name: missing required key",
            "t.toml:7:1: vrrp_instance[0].interface: missing required key",
            "t.toml:7:1: vrrp_instance[0].virtual_router_id: missing required key",
            "t.toml:7:1: vrrp_instance[0].virtual_ipaddress: missing required key",
        ]
    );
}

#[test]
fn config_error_bad_value_is_not_also_reported_missing() {
    let text = MINIMAL.replace("\"198.18.1.1:8080\"", "[\"198.18.1.1\", 8080]");
    assert_eq!(
        errors(&text),
        ["t.toml:8:11: service[0].backend[0].address: invalid type: array, expected a string"]
    );
}

#[test]
fn every_lvs_scheduler_is_accepted_and_lc_is_capped() {
    for (name, s) in [
        ("mh", Scheduler::Mh),
        ("sh", Scheduler::Sh),
        ("rr", Scheduler::Rr),
        ("wrr", Scheduler::Wrr),
        ("lc", Scheduler::Lc),
        ("wlc", Scheduler::Wlc),
    ] {
        let c = ok(&MINIMAL.replace("\"nat\"", &format!("\"nat\"\nscheduler = \"{name}\"")));
        assert_eq!(c.services[0].scheduler, s);
    }
    let mut text = MINIMAL.replace("\"nat\"", "\"nat\"\nscheduler = \"wlc\"");
    for i in 2..=65 {
        text.push_str(&format!(
            "[[service.backend]]\naddress = \"198.18.1.{i}:8080\"\n"
        ));
    }
    assert_eq!(
        errors(&text),
        [
            "t.toml:6:13: service[0].scheduler: scheduler \"wlc\" scans every backend for each new flow: at most 64 backends, not 65"
        ]
    );
}

#[test]
fn config_error_tun_settings() {
    let text = MINIMAL.replace(
        "\"nat\"",
        "\"tun\"\nscheduler = \"wlc\"\ntun_source = \"198.19.0.0/8\"",
    );
    assert_eq!(
        errors(&text),
        [
            "t.toml:7:14: service[0].tun_source: invalid \"198.19.0.0/8\": expected an address or prefix from /16 to /32 (IPv6: /112 to /128), like \"198.19.0.0/24\"",
            "t.toml:10:11: service[0].backend[0].address: tun forwarding cannot change ports: backend port 8080 differs from the VIP port 80 (use forwarding = \"nat\")",
        ]
    );
    let c = ok(&MINIMAL
        .replace("\"nat\"", "\"tun\"\ntun_source = \"198.19.0.0/24\"")
        .replace(":8080", ":80"));
    assert_eq!(
        c.services[0].tun_source,
        Some(("198.19.0.0".parse().unwrap(), 24))
    );
    let errs = errors(&MINIMAL.replace("forwarding", "tun_source = \"198.19.0.1\"\nforwarding"));
    assert_eq!(
        errs,
        ["t.toml:5:14: service[0].tun_source: only valid with forwarding = \"tun\""]
    );
}

#[test]
fn config_error_dr_cannot_translate_ports() {
    let text = MINIMAL.replace("\"nat\"", "\"dr\"");
    assert_eq!(
        errors(&text),
        [
            "t.toml:8:11: service[0].backend[0].address: dr forwarding cannot change ports: backend port 8080 differs from the VIP port 80 (use forwarding = \"nat\")"
        ]
    );
    ok(&text.replace(":8080", ":80"));
}

#[test]
fn config_error_snat_settings() {
    let text = MINIMAL.replace("forwarding", "snat_ports = \"32767-1024\"\nforwarding");
    assert_eq!(
        errors(&text),
        ["t.toml:5:14: service[0].snat_ports: range \"32767-1024\" is inverted: 32767 > 1024"]
    );
    let text = MINIMAL.replace(
        "forwarding",
        "snat_ports = \"1024\"\nsnat_address = \"198.18.0.1\"\nforwarding",
    );
    assert_eq!(
        errors(&text),
        [
            "t.toml:5:14: service[0].snat_ports: invalid port range \"1024\": expected \"first-last\", like \"1024-32767\""
        ]
    );
    let text = text
        .replace("\"1024\"", "\"0-10\"")
        .replace("\"nat\"", "\"dr\"")
        .replace(":8080", ":80");
    assert_eq!(
        errors(&text),
        [
            "t.toml:5:14: service[0].snat_ports: only valid with forwarding = \"nat\"",
            "t.toml:5:14: service[0].snat_ports: port 0 is not allowed",
            "t.toml:6:16: service[0].snat_address: only valid with forwarding = \"nat\"",
        ]
    );
}

#[test]
fn config_error_sorry_server_is_a_backend() {
    let text = MINIMAL.replace(
        "forwarding",
        "sorry_server = \"198.18.1.1:8080\"\nforwarding",
    );
    assert_eq!(
        errors(&text),
        [
            "t.toml:5:16: service[0].sorry_server: sorry_server 198.18.1.1:8080 is also service[0].backend[0]"
        ]
    );
}

#[test]
fn config_error_quorum_and_hysteresis() {
    let text =
        MINIMAL.replace("forwarding", "quorum = 3\nhysteresis = 3\nforwarding") + "weight = 2\n";
    assert_eq!(
        errors(&text),
        [
            "t.toml:5:10: service[0].quorum: quorum 3 is larger than the total backend weight 2, so the service can never be up",
            "t.toml:6:14: service[0].hysteresis: hysteresis 3 must be smaller than quorum (3)",
        ]
    );
    let c = ok(&MINIMAL
        .replace("forwarding", "quorum = 2\nhysteresis = 1\nforwarding")
        .replace("8080\"", "8080\"\nweight = 2"));
    assert_eq!((c.services[0].quorum, c.services[0].hysteresis), (2, 1));
}

#[test]
fn config_error_capacity_limits() {
    let text = format!(
        "[daemon]\nmax_vips = 1\nmax_backends = 1\n{MINIMAL}\n[[service.backend]]\naddress = \"198.18.1.2:8080\"\n"
    ) + &MINIMAL.replace(":80\"", ":81\"");
    assert_eq!(
        errors(&text),
        [
            "t.toml:13:1: service[0].backend[1]: more backends in all services than daemon.max_backends (1)",
            "t.toml:16:1: service[1]: more services than daemon.max_vips (1)",
        ]
    );
}

#[test]
fn config_error_check_rules() {
    let text = format!(
        "{MINIMAL}\n[service.check]\ntype = \"tcp\"\npath = \"/\"\ncommand = [\"true\"]\nfall = 2\nretry = 1\n\
         delay_loop = \"5\"\nconnect_timeout = \"0s\"\n"
    );
    assert_eq!(
        errors(&text),
        [
            "t.toml:12:8: service[0].check.path: only valid for http and https checks",
            "t.toml:13:11: service[0].check.command: only valid for script checks",
            "t.toml:15:9: service[0].check.retry: set either `fall` or `retry`, not both",
            "t.toml:16:14: service[0].check.delay_loop: invalid duration \"5\": time unit needed, for example 5sec or 5ms (write a number and a unit, like \"5s\" or \"250ms\")",
            "t.toml:17:19: service[0].check.connect_timeout: must be longer than 0s",
        ]
    );
}

#[test]
fn config_error_http_check_values() {
    let text = format!(
        "{MINIMAL}\n[service.check]\ntype = \"https\"\npath = \"healthz\"\nstatus = [\"200-199\", \"700\", \"204\"]\n\
         digest = \"xyz\"\nbody_regex = \"(ok\"\n"
    );
    assert_eq!(
        errors(&text),
        [
            "t.toml:12:8: service[0].check.path: must start with '/'",
            "t.toml:13:11: service[0].check.status[0]: invalid status \"200-199\": expected a code or an ascending range within 100-599, like \"200\" or \"200-299\"",
            "t.toml:13:22: service[0].check.status[1]: invalid status \"700\": expected a code or an ascending range within 100-599, like \"200\" or \"200-299\"",
            "t.toml:14:10: service[0].check.digest: must be 32 hexadecimal digits (an MD5 digest)",
            "t.toml:15:14: service[0].check.body_regex: invalid regex: unclosed group",
        ]
    );
}

#[test]
fn config_error_script_check_needs_command() {
    let text =
        format!("{MINIMAL}\n[service.backend.check]\ntype = \"script\"\nconnect_port = 80\n");
    assert_eq!(
        errors(&text),
        [
            "t.toml:7:1: service[0].backend[0].check.command: missing required key",
            "t.toml:12:16: service[0].backend[0].check.connect_port: not used by script checks",
        ]
    );
    let text = format!("{MINIMAL}\n[service.backend.check]\ntype = \"script\"\ncommand = []\n");
    assert_eq!(
        errors(&text),
        [
            "t.toml:12:11: service[0].backend[0].check.command: must name a program to run: [\"/path/to/program\", \"arg\", ...]"
        ]
    );
}

#[test]
fn config_backend_check_replaces_service_check() {
    let text = format!(
        "{MINIMAL}\n[service.backend.check]\ntype = \"tcp\"\nretry = 0\n\n[[service.backend]]\naddress = \"198.18.1.2:8080\"\n\n\
         [service.check]\ntype = \"script\"\ncommand = [\"/bin/check\", \"--fast\"]\n"
    );
    let c = ok(&text);
    let s = &c.services[0];
    let own = s.backends[0].check.as_ref().expect("own check");
    assert_eq!((&own.kind, own.fall), (&CheckKind::Tcp, 1));
    let inherited = s.backends[1].check.as_ref().expect("inherited check");
    assert_eq!(
        inherited.kind,
        CheckKind::Script(ScriptCheck {
            command: vec!["/bin/check".into(), "--fast".into()],
            timeout: Duration::from_secs(5),
        })
    );
}

const VRRP: &str = r#"
[[vrrp_instance]]
name = "VI_1"
interface = "lb0"
virtual_router_id = 51
virtual_ipaddress = ["198.18.0.100/24"]
"#;

#[test]
fn config_error_vrid_out_of_range_and_duplicate() {
    let text = format!(
        "{VRRP}{}{}",
        VRRP.replace("VI_1", "VI_2"),
        VRRP.replace("VI_1", "VI_3").replace("= 51", "= 256")
    );
    assert_eq!(
        errors(&text),
        [
            "t.toml:11:21: vrrp_instance[1].virtual_router_id: virtual_router_id 51 is already used on lb0 by vrrp_instance[0]",
            "t.toml:17:21: vrrp_instance[2].virtual_router_id: 256 is out of range 1..=255",
        ]
    );
    ok(&format!(
        "{VRRP}{}",
        VRRP.replace("VI_1", "VI_2").replace("lb0", "lb1")
    ));
}

#[test]
fn config_error_duplicate_names() {
    let text = format!("{VRRP}{}", VRRP.replace("= 51", "= 52"));
    assert_eq!(
        errors(&text),
        [
            "t.toml:9:8: vrrp_instance[1].name: duplicate vrrp_instance name \"VI_1\" (already used by vrrp_instance[0])"
        ]
    );
    let named = MINIMAL.replace("forwarding", "name = \"web\"\nforwarding");
    let text = format!("{named}{}", named.replace(":80\"", ":81\""));
    assert_eq!(
        errors(&text),
        [
            "t.toml:14:8: service[1].name: duplicate service name \"web\" (already used by service[0])"
        ]
    );
}

#[test]
fn config_error_auth_pass() {
    let text = format!("{VRRP}auth_pass = \"123456789\"\n");
    assert_eq!(
        errors(&text),
        [
            "t.toml:7:13: vrrp_instance[0].auth_pass: is 9 characters; VRRPv2 PASS authentication carries 1 to 8"
        ]
    );
    let text = format!("{VRRP}auth_pass = \"12345678\"\nversion = 3\n");
    assert_eq!(
        errors(&text),
        [
            "t.toml:7:13: vrrp_instance[0].auth_pass: only valid with version 2 (VRRPv3 has no authentication)"
        ]
    );
}

#[test]
fn config_error_vrrp_values() {
    let text = format!(
        "{VRRP}priority = 0\nadvert_int = \"1500ms\"\npreempt_delay = \"20m\"\nversion = 4\n\
         unicast_src_ip = \"198.18.0.2\"\ntrack_interface = [\"lb9\", {{ name = \"lb1\", weight = 300 }}]\n\
         notify = []\n"
    )
    .replace("/24", "/33");
    assert_eq!(
        errors(&text),
        [
            "t.toml:6:22: vrrp_instance[0].virtual_ipaddress[0]: invalid prefix length in \"198.18.0.100/33\": expected 0..=32",
            "t.toml:7:12: vrrp_instance[0].priority: 0 is out of range 1..=255",
            "t.toml:8:14: vrrp_instance[0].advert_int: must be whole seconds from 1s to 255s for version 2",
            "t.toml:9:17: vrrp_instance[0].preempt_delay: must be at most 1000s (keepalived's limit)",
            "t.toml:10:11: vrrp_instance[0].version: version 4 is not 2 or 3",
            "t.toml:11:18: vrrp_instance[0].unicast_src_ip: needs at least one unicast_peer",
            "t.toml:12:20: vrrp_instance[0].track_interface[0]: interface \"lb9\" does not exist",
            "t.toml:12:27: vrrp_instance[0].track_interface[1].weight: 300 is out of range -253..=253",
            "t.toml:13:10: vrrp_instance[0].notify: must name a program to run: [\"/path/to/program\", \"arg\", ...]",
        ]
    );
    let c = ok(&format!("{VRRP}version = 3\nadvert_int = \"1500ms\"\n"));
    assert_eq!(c.vrrp_instances[0].advert_int, Duration::from_millis(1500));
}

#[test]
fn config_error_track_script() {
    let text = format!(
        "{VRRP}\n[[vrrp_instance.track_script]]\nname = \"a\"\ncommand = [\"/bin/true\"]\nweight = -254\n\n\
         [[vrrp_instance.track_script]]\nname = \"a\"\n"
    );
    assert_eq!(
        errors(&text),
        [
            "t.toml:11:10: vrrp_instance[0].track_script[0].weight: -254 is out of range -253..=253",
            "t.toml:13:1: vrrp_instance[0].track_script[1].command: missing required key",
            "t.toml:14:8: vrrp_instance[0].track_script[1].name: duplicate track_script name \"a\" (already used by vrrp_instance[0].track_script[0])",
        ]
    );
}

#[test]
fn config_error_toml_syntax_has_a_position() {
    assert_eq!(
        errors("[daemon]\nlog_level = \"info\nmax_vips = 3\n"),
        ["t.toml:2:18: invalid TOML: invalid basic string"]
    );
    assert_eq!(
        errors("[daemon]\nmax_vips = 1\nmax_vips = 2\n"),
        ["t.toml:3:1: invalid TOML: duplicate key `max_vips` in table `daemon`"]
    );
}

#[test]
fn config_many_errors_reported_at_once_in_file_order() {
    let text = r#"
[daemon]
metrics_listen = "localhost"
[[service]]
vip = "198.18.0.100:80"
interface = "lb7"
forwarding = "nat"
colour = "blue"
tcp_timeout = "1.5s"
[[service.backend]]
address = "198.18.1.1:8080"
weight = 100000
[[service.backend]]
address = "198.18.1.1:8080"
[[vrrp_instance]]
name = "VI_1"
interface = "lb0"
virtual_router_id = 0
virtual_ipaddress = ["198.18.0.100"]
auth_pass = "much-too-long"
"#;
    let errs = match parse(text, "t.toml", &env) {
        Ok(c) => panic!("expected errors, got {c:?}"),
        Err(e) => e,
    };
    assert_eq!(errs.to_string(), [
        "t.toml:3:18: daemon.metrics_listen: invalid address \"localhost\": expected \"ip:port\"",
        "t.toml:6:13: service[0].interface: interface \"lb7\" does not exist",
        "t.toml:8:1: service[0].colour: unknown key; expected one of `name`, `vip`, `protocol`, `interface`, `forwarding`, `scheduler`, `table_size`, `snat_address`, `snat_ports`, `persistence_timeout`, `persistence_granularity`, `tun_source`, `tcp_timeout`, `udp_timeout`, `quorum`, `hysteresis`, `sorry_server`, `inhibit_on_failure`, `alpha`, `observe`, `error_limit`, `syn_timeout`, `check`, `backend`",
        "t.toml:9:15: service[0].tcp_timeout: must be a whole number of seconds from 1s to 4294967295s",
        "t.toml:12:10: service[0].backend[0].weight: 100000 is out of range 0..=65535",
        "t.toml:14:11: service[0].backend[1].address: duplicate backend 198.18.1.1:8080 (already listed as service[0].backend[0])",
        "t.toml:18:21: vrrp_instance[0].virtual_router_id: 0 is out of range 1..=255",
        "t.toml:20:13: vrrp_instance[0].auth_pass: is 13 characters; VRRPv2 PASS authentication carries 1 to 8",
    ]
    .join("\n"));
}

#[test]
fn config_load_reads_files_and_reports_unreadable_ones() {
    let missing = configs_dir().join("does-not-exist.toml");
    let err = load(&missing).expect_err("missing file");
    assert_eq!(err.0.len(), 1);
    assert!(
        err.to_string().starts_with(&format!(
            "{}:1:1: cannot read the file: ",
            missing.display()
        )),
        "{err}"
    );
}

#[test]
fn config_system_environment_asks_the_kernel() {
    assert!(System.interface_exists("lo"));
    assert!(!System.interface_exists("lb-no-such-if"));
    assert!(!System.interface_exists("bad\0name"));
}

fn two_services() -> Config {
    ok(&format!(
        "{MINIMAL}\n[[service.backend]]\naddress = \"198.18.1.2:8080\"\nweight = 2\n{}{VRRP}",
        MINIMAL.replace(":80\"", ":443\"")
    ))
}

fn key(vip: &str) -> ServiceKey {
    ServiceKey {
        vip: addr(vip),
        protocol: Protocol::Tcp,
    }
}

#[test]
fn config_diff_identical_is_empty() {
    assert!(diff(&two_services(), &two_services()).is_empty());
}

#[test]
fn config_diff_reordered_file_is_empty() {
    let old = two_services();
    let mut new = old.clone();
    new.services.reverse();
    new.services[1].backends.reverse();
    assert!(diff(&old, &new).is_empty());
}

#[test]
fn config_diff_services_added_removed_changed() {
    let old = two_services();
    let mut new = old.clone();
    new.services.remove(1);
    let mut added = new.services[0].clone();
    added.vip = addr("198.18.0.101:80");
    new.services.push(added);
    let s = &mut new.services[0];
    s.name = Some("web".into());
    s.tcp_timeout = Duration::from_secs(60);
    s.backends[0].weight = 5;
    s.backends.remove(1);
    s.backends.push(Backend {
        address: addr("198.18.1.3:8080"),
        weight: 1,
        check: None,
    });
    let d = diff(&old, &new);
    assert_eq!(
        d,
        ConfigDiff {
            services_added: vec![key("198.18.0.101:80")],
            services_removed: vec![key("198.18.0.100:443")],
            services_changed: vec![ServiceChange {
                key: key("198.18.0.100:80"),
                settings: vec!["name", "tcp_timeout"],
                backends: vec![
                    BackendChange::Reweighted {
                        address: addr("198.18.1.1:8080"),
                        old: 1,
                        new: 5
                    },
                    BackendChange::Added(addr("198.18.1.3:8080")),
                    BackendChange::Removed(addr("198.18.1.2:8080")),
                ],
            }],
            ..ConfigDiff::default()
        }
    );
}

#[test]
fn config_diff_protocol_change_is_a_different_service() {
    let old = two_services();
    let mut new = old.clone();
    new.services[0].protocol = Protocol::Udp;
    let d = diff(&old, &new);
    assert_eq!(
        d.services_added,
        [ServiceKey {
            vip: addr("198.18.0.100:80"),
            protocol: Protocol::Udp
        }]
    );
    assert_eq!(d.services_removed, [key("198.18.0.100:80")]);
}

#[test]
fn config_diff_backend_check_change() {
    let old = ok(&format!("{MINIMAL}\n[service.check]\ntype = \"tcp\"\n"));
    let new = ok(&format!(
        "{MINIMAL}\n[service.check]\ntype = \"tcp\"\nrise = 3\n"
    ));
    let d = diff(&old, &new);
    assert_eq!(
        d.services_changed,
        [ServiceChange {
            key: key("198.18.0.100:80"),
            settings: vec!["check"],
            backends: vec![BackendChange::CheckChanged(addr("198.18.1.1:8080"))],
        }]
    );
}

#[test]
fn config_diff_vrrp_and_daemon() {
    let old = two_services();
    let mut new = old.clone();
    new.daemon.log_level = "debug".into();
    new.vrrp_instances[0].priority = 200;
    let mut second = new.vrrp_instances[0].clone();
    second.name = "VI_2".into();
    new.vrrp_instances.push(second);
    let d = diff(&old, &new);
    assert_eq!(
        d,
        ConfigDiff {
            daemon: vec!["log_level"],
            vrrp_added: vec!["VI_2".into()],
            vrrp_changed: vec!["VI_1".into()],
            ..ConfigDiff::default()
        }
    );
    let d = diff(&new, &old);
    assert_eq!(d.vrrp_removed, ["VI_2"]);
}

#[test]
fn config_dotted_and_inline_tables_work() {
    let dotted = MINIMAL.replace(
        "forwarding",
        "check.type = \"tcp\"\ncheck.rise = 2\nforwarding",
    );
    assert_eq!(
        ok(&dotted).services[0].check.as_ref().map(|c| c.rise),
        Some(2)
    );
    let inline = MINIMAL.replace(
        "forwarding",
        "check = { type = \"tcp\", rise = 3 }\nforwarding",
    );
    assert_eq!(
        ok(&inline).services[0].check.as_ref().map(|c| c.rise),
        Some(3)
    );
    let text = MINIMAL.replace(
        "forwarding",
        "check.type = \"tcp\"\ncheck.bogus = 2\nforwarding",
    ) + "weight = -5\n";
    assert_eq!(
        errors(&text),
        [
            "t.toml:6:7: service[0].check.bogus: unknown key; expected one of `type`, `delay_loop`, `connect_timeout`, `connect_port`, `fall`, `retry`, `rise`, `delay_before_retry`, `source_address`, `path`, `status`, `host`, `digest`, `body_regex`, `command`, `timeout`",
            "t.toml:11:10: service[0].backend[0].weight: -5 is out of range 0..=65535",
        ]
    );
}

#[test]
fn config_error_structure_mismatches_use_toml_words() {
    assert_eq!(
        errors("[service]\nvip = \"198.18.0.100:80\"\n"),
        ["t.toml:1:1: service: invalid type: table, expected an array"]
    );
    assert_eq!(
        errors("daemon = 5\n"),
        ["t.toml:1:10: daemon: invalid type: integer `5`, expected a table"]
    );
}

#[test]
fn config_error_collection_stops_after_100() {
    let text: String = (0..150).map(|i| format!("k{i} = 1\n")).collect();
    let errs = errors(&text);
    assert_eq!(errs.len(), 101);
    assert_eq!(
        errs[0],
        "t.toml:1:1: k0: unknown key; expected one of `daemon`, `service`, `vrrp_instance`, `sync`"
    );
    assert_eq!(errs[100], "t.toml:151:1: stopped after 100 errors");
}

#[test]
fn observe_defaults_to_layer4_for_nat_only_and_is_refused_with_dr() {
    let c = ok(MINIMAL);
    let s = &c.services[0];
    assert_eq!(
        (s.observe, s.error_limit, s.syn_timeout),
        (Observe::Layer4, 10, Duration::from_secs(2))
    );
    let dr = ok(&MINIMAL.replace("\"nat\"", "\"dr\"").replace(":8080", ":80"));
    assert_eq!(dr.services[0].observe, Observe::None);
    let errs = errors(
        &MINIMAL
            .replace("\"nat\"", "\"dr\"\nobserve = \"layer4\"\nerror_limit = 0")
            .replace(":8080", ":80"),
    );
    assert_eq!(
        errs,
        vec![
            "t.toml:6:11: service[0].observe: observe = \"layer4\" needs forwarding = \"nat\": other modes' replies bypass the LB",
            "t.toml:7:15: service[0].error_limit: 0 is out of range 1..=1000000",
        ]
    );
}

/// Passive health takes a backend down and only an active check brings it
/// back, so without a check it would be down for good.
#[test]
fn observe_layer4_is_refused_without_a_health_check() {
    let errs = errors(&MINIMAL.replace(
        "forwarding = \"nat\"",
        "forwarding = \"nat\"\nobserve = \"layer4\"",
    ));
    assert_eq!(
        errs,
        vec![
            "t.toml:6:11: service[0].observe: observe = \"layer4\" needs a health check ([service.check] or a backend's own): nothing else would bring a backend it took down back",
        ]
    );
    let checked = ok(&format!(
        "{}\n[service.check]\ntype = \"tcp\"\n",
        MINIMAL.replace(
            "forwarding = \"nat\"",
            "forwarding = \"nat\"\nobserve = \"layer4\""
        )
    ));
    assert_eq!(checked.services[0].observe, Observe::Layer4);
}

#[test]
fn persistence_keys_follow_keepalived() {
    let c = ok(&MINIMAL.replace(
        "forwarding",
        "persistence_timeout = \"300s\"\npersistence_granularity = \"255.255.255.0\"\nforwarding",
    ));
    assert_eq!(
        c.services[0].persistence,
        Some((Duration::from_secs(300), "255.255.255.0".parse().unwrap()))
    );
    assert_eq!(ok(MINIMAL).services[0].persistence, None);
    assert_eq!(
        ok(&MINIMAL.replace("forwarding", "persistence_timeout = \"0s\"\nforwarding")).services[0]
            .persistence,
        None,
        "keepalived reads 0 as off"
    );
    assert_eq!(
        errors(&MINIMAL.replace(
            "forwarding",
            "persistence_timeout = \"60s\"\npersistence_granularity = \"255.0.255.0\"\nforwarding"
        )),
        [
            "t.toml:6:27: service[0].persistence_granularity: invalid netmask \"255.0.255.0\": expected a contiguous netmask like \"255.255.255.0\""
        ]
    );
    assert_eq!(
        errors(&MINIMAL.replace(
            "forwarding",
            "persistence_granularity = \"255.255.0.0\"\nforwarding"
        )),
        ["t.toml:5:27: service[0].persistence_granularity: needs persistence_timeout"]
    );
}

const MINIMAL6: &str = r#"
[[service]]
vip = "[2001:2::100]:80"
interface = "lb0"
forwarding = "nat"
snat_address = "2001:2::2"
persistence_timeout = "5m"
persistence_granularity = "64"

[[service.backend]]
address = "[2001:2:0:1::1]:8080"
"#;

#[test]
fn config_ipv6_services_are_accepted() {
    let c = ok(MINIMAL6);
    let s = &c.services[0];
    assert_eq!(s.vip, addr("[2001:2::100]:80"));
    assert_eq!(s.snat_address, Some(ip("2001:2::2")));
    assert_eq!(
        s.persistence.map(|p| p.1),
        Some(ip("ffff:ffff:ffff:ffff::"))
    );
    assert_eq!(s.backends[0].address, addr("[2001:2:0:1::1]:8080"));
    let tun = MINIMAL6
        .replace("\"nat\"", "\"tun\"\ntun_source = \"2001:2:0:9::/120\"")
        .replace("snat_address = \"2001:2::2\"\n", "")
        .replace(":8080", ":80");
    assert_eq!(
        ok(&tun).services[0].tun_source,
        Some((ip("2001:2:0:9::"), 120))
    );
    let mask = MINIMAL6.replace("\"64\"", "\"ffff:ffff:ffff:ff00::\"");
    assert_eq!(
        ok(&mask).services[0].persistence.map(|p| p.1),
        Some(ip("ffff:ffff:ffff:ff00::"))
    );
}

#[test]
fn config_error_a_service_mixing_families() {
    let text = MINIMAL6
        .replace("2001:2::2\"", "198.18.0.2\"")
        .replace("\"64\"", "\"255.255.255.0\"")
        .replace("[2001:2:0:1::1]:8080", "198.18.1.1:8080");
    assert_eq!(
        errors(&text),
        [
            "t.toml:6:16: service[0].snat_address: 198.18.0.2 is IPv4 but the VIP [2001:2::100]:80 is IPv6: a service's addresses must all be of one family",
            "t.toml:8:27: service[0].persistence_granularity: invalid IPv6 granularity \"255.255.255.0\": expected a prefix length like \"64\" or a contiguous netmask like \"ffff:ffff:ffff:ffff::\"",
            "t.toml:11:11: service[0].backend[0].address: 198.18.1.1 is IPv4 but the VIP [2001:2::100]:80 is IPv6: a service's addresses must all be of one family",
        ]
    );
    let tun = MINIMAL
        .replace("\"nat\"", "\"tun\"\ntun_source = \"2001:2::/120\"")
        .replace(":8080", ":80");
    assert_eq!(
        errors(&tun),
        [
            "t.toml:6:14: service[0].tun_source: 2001:2:: is IPv6 but the VIP 198.18.0.100:80 is IPv4: a service's addresses must all be of one family"
        ]
    );
}

const SYNCED: &str = r#"
[[service]]
vip = "198.18.0.100:80"
interface = "eth0"
forwarding = "nat"
snat_address = "198.18.0.100"

[[service.backend]]
address = "198.18.1.1:8080"

[[vrrp_instance]]
name = "VI_1"
interface = "eth0"
virtual_router_id = 51
virtual_ipaddress = ["198.18.0.100/32"]
"#;

#[test]
fn sync_defaults_and_the_only_instance() {
    let c = ok(&format!(
        "{SYNCED}\n[sync]\nsource_address = \"198.18.0.2\"\npeers = [\"198.18.0.3\"]\nkey_file = \"/etc/lb/k\"\n"
    ));
    let s = c.sync.expect("sync");
    assert_eq!(s.port, DEFAULT_SYNC_PORT);
    assert_eq!(s.interval, DEFAULT_SYNC_INTERVAL);
    assert_eq!(s.vrrp_instance, "VI_1");
    assert_eq!(
        s.peers,
        ["198.18.0.3".parse::<std::net::Ipv4Addr>().expect("ip")]
    );
    assert!(ok(MINIMAL).sync.is_none());
}

#[test]
fn example_configs_sync_with_the_snat_address_on_the_vip() {
    for name in ["reference.toml", "chime-portal.toml"] {
        let c = example(name);
        let s = c.sync.as_ref().expect("sync");
        let inst = c
            .vrrp_instances
            .iter()
            .find(|v| v.name == s.vrrp_instance)
            .expect("instance");
        let snat = c.services[0].snat_address.expect("snat");
        assert!(
            inst.virtual_ipaddress.iter().any(|v| v.addr == snat),
            "{name}"
        );
    }
    let c = example("chime-portal.toml");
    assert_eq!(
        c.sync
            .map(|s| (s.source_address.to_string(), s.peers[0].to_string())),
        Some(("192.168.231.11".into(), "192.168.231.12".into()))
    );
}

#[test]
fn sync_errors_are_precise() {
    let e = errors(&format!(
        "{SYNCED}\n[sync]\nport = 70000\ninterval = \"1h\"\n"
    ));
    let joined = e.join("\n");
    for want in [
        "sync.source_address: missing required key",
        "sync.peers: missing required key",
        "sync.key_file: missing required key",
        "sync.port: 70000 is out of range",
        "sync.interval: must be from 10ms to 60s",
    ] {
        assert!(joined.contains(want), "{want:?} not in\n{joined}");
    }
    let e = errors(&format!(
        "{SYNCED}\n[sync]\nsource_address = \"198.18.0.2\"\npeers = [\"198.18.0.2\", \"::1\"]\n\
         key_file = \"k\"\nvrrp_instance = \"VI_9\"\n"
    ));
    let joined = e.join("\n");
    for want in [
        "sync.peers[0]: is this node's own source_address",
        "sync.peers[1]: IPv6 is not supported",
        "sync.key_file: must be an absolute path",
        "sync.vrrp_instance: no [[vrrp_instance]] is named \"VI_9\"",
    ] {
        assert!(joined.contains(want), "{want:?} not in\n{joined}");
    }
}

#[test]
fn sync_needs_a_vrrp_instance_and_a_moving_snat_address() {
    let sync =
        "\n[sync]\nsource_address = \"198.18.0.2\"\npeers = [\"198.18.0.3\"]\nkey_file = \"/k\"\n";
    let e = errors(&format!("{MINIMAL}{sync}"));
    assert!(
        e.iter()
            .any(|l| l.contains("sync: needs a [[vrrp_instance]]")),
        "{e:?}"
    );
    // The default SNAT address (the interface's own) stays on the old node.
    let unset = SYNCED.replace("snat_address = \"198.18.0.100\"\n", "");
    let e = errors(&format!("{unset}{sync}"));
    assert!(
        e.iter()
            .any(|l| l.contains("service[0].snat_address: with [sync]")
                && l.contains("must move to the new master")),
        "{e:?}"
    );
    let fixed = SYNCED.replace(
        "snat_address = \"198.18.0.100\"",
        "snat_address = \"198.18.0.2\"",
    );
    let e = errors(&format!("{fixed}{sync}"));
    assert_eq!(e.len(), 1, "{e:?}");
    assert!(
        e[0].starts_with("t.toml:6:16: service[0].snat_address"),
        "{e:?}"
    );
    let two = format!(
        "{SYNCED}\n[[vrrp_instance]]\nname = \"VI_2\"\ninterface = \"eth0\"\nvirtual_router_id = 52\n\
         virtual_ipaddress = [\"198.18.0.101/32\"]\n{sync}"
    );
    let e = errors(&two);
    assert!(
        e.iter()
            .any(|l| l.contains("sync.vrrp_instance: there are several")),
        "{e:?}"
    );
}

#[test]
fn snat_ports_must_avoid_the_ports_of_vips_on_the_snat_address() {
    let two = format!(
        "{SYNCED}\n[[service]]\nvip = \"198.18.0.100:9000\"\ninterface = \"eth0\"\nforwarding = \"dr\"\n\n\
         [[service.backend]]\naddress = \"198.18.1.1:9000\"\n"
    );
    let e = errors(&two);
    assert_eq!(e.len(), 1, "{e:?}");
    assert!(
        e[0].contains(
            "service[0].snat_ports: 1024-32767 includes port 9000 of the VIP 198.18.0.100:9000/tcp"
        ),
        "{e:?}"
    );
    let fixed = two.replace(
        "snat_address = \"198.18.0.100\"",
        "snat_address = \"198.18.0.100\"\nsnat_ports = \"10000-32767\"",
    );
    ok(&fixed);
}

#[test]
fn pin_dir_must_be_absolute() {
    let e = errors(&format!("[daemon]\npin_dir = \"bpf/lb\"\n{MINIMAL}"));
    assert_eq!(e, ["t.toml:2:11: daemon.pin_dir: must be an absolute path"]);
    assert_eq!(ok(MINIMAL).daemon.pin_dir, None);
}

const UNSAFE_SCRIPTS: &str = r#"
[[service]]
vip = "198.18.0.100:80"
interface = "lb0"
forwarding = "nat"

[service.check]
type = "script"
command = ["/unsafe/check.sh", "--port", "8080"]

[[service.backend]]
address = "198.18.1.1:8080"

[[vrrp_instance]]
name = "VI_1"
interface = "lb0"
virtual_router_id = 7
virtual_ipaddress = ["198.18.0.100"]
notify_master = ["/unsafe/master.sh"]
notify = ["/etc/lb/notify.sh"]

[[vrrp_instance.track_script]]
name = "chk"
command = ["/unsafe/track.sh"]
"#;

#[test]
fn config_error_scripts_other_users_could_change_are_refused() {
    let errors: Vec<String> = match parse(UNSAFE_SCRIPTS, "t.toml", &TestHost(&[])) {
        Ok(c) => panic!("expected errors, got {c:?}"),
        Err(e) => e.0.iter().map(ToString::to_string).collect(),
    };
    assert_eq!(
        errors,
        [
            "t.toml:9:11: service[0].check.command: /unsafe/check.sh: writable by others",
            "t.toml:19:17: vrrp_instance[0].notify_master: /unsafe/master.sh: writable by others",
            "t.toml:24:11: vrrp_instance[0].track_script[0].command: /unsafe/track.sh: writable by others",
        ]
    );
    let off = format!("[daemon]\nscript_security = false\n{UNSAFE_SCRIPTS}");
    let c = parse(&off, "t.toml", &TestHost(&[])).expect("script_security = false accepts them");
    assert!(!c.daemon.script_security);
}

/// A host with a `portal` user (uid 1001, gid 1002).
const PORTAL_HOST: TestHost = TestHost(&[("portal", 1001, 1002)]);

#[test]
fn script_user_is_resolved_when_the_config_is_read() {
    let c = parse(
        &format!("[daemon]\nscript_user = \"portal\"\n{MINIMAL}"),
        "t.toml",
        &PORTAL_HOST,
    )
    .expect("portal exists");
    assert_eq!(
        c.daemon.script_user,
        Some(ScriptUser {
            name: "portal".into(),
            uid: 1001,
            gid: 1002
        })
    );
    let errors: Vec<String> = parse(
        &format!("[daemon]\nscript_user = \"nobody-here\"\n{MINIMAL}"),
        "t.toml",
        &PORTAL_HOST,
    )
    .expect_err("no such user")
    .0
    .iter()
    .map(ToString::to_string)
    .collect();
    assert_eq!(
        errors,
        ["t.toml:2:15: daemon.script_user: no user \"nobody-here\" on this host"]
    );
}

/// Scripts are checked for the user they will run as.
#[test]
fn config_error_the_script_user_cannot_run_a_script() {
    let text = format!(
        "[daemon]\nscript_user = \"portal\"\n{MINIMAL}\n[service.check]\ntype = \"script\"\ncommand = [\"/root-only/check.sh\"]\n"
    );
    let errors: Vec<String> = parse(&text, "t.toml", &PORTAL_HOST)
        .expect_err("portal cannot run it")
        .0
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(
        errors,
        [
            "t.toml:14:11: service[0].check.command: /root-only/check.sh: script_user \"portal\" cannot execute it"
        ]
    );
    let as_root = text.replace("script_user = \"portal\"", "script_user = \"root\"");
    let host = TestHost(&[("root", 0, 0)]);
    parse(&as_root, "t.toml", &host).expect("root can run it");
}

#[test]
fn script_user_of_this_host_comes_from_its_user_database() {
    assert_eq!(System.user_ids("root"), Some((0, 0)));
    assert_eq!(System.user_ids("lb-no-such-user"), None);
}
