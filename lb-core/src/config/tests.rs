use super::*;

fn env(name: &str) -> bool {
    matches!(name, "lb0" | "lb1" | "eth0")
}

fn errors(text: &str) -> Vec<String> {
    match parse(text, "t.toml", &env) {
        Ok(c) => panic!("expected errors, got {c:?}"),
        Err(e) => e.0.iter().map(ToString::to_string).collect(),
    }
}

#[test]
fn scratch() {
    let text = r#"
[daemon]
bogus = 1
table_size = 65536

[[service]]
vip = "198.18.0.100:80"
interface = "lb9"
forwarding = "natt"
whatever = true

[service.check]
type = "http"
path = 5

[[service.backend]]
address = "198.18.1.1:0"
weight = 70000

[[service.backend]]
weight = 2

[[vrrp_instance]]
interface = "lb0"
track_interface = ["lb0", { name = "lb1", weight = 1, x = 2 }]
"#;
    for e in errors(text) {
        println!("{e}");
    }
    panic!();
}
