//! keepalived-compatible VRRP (v2 and v3 over IPv4): who owns the VIPs.
//!
//! `packet` is the wire codec, `state` the sans-IO election logic, `config`
//! the typed instance settings the daemon fills from its own config, and
//! `io` the tokio edge (with `netlink`, `garp` and `notify`) that runs it.
pub mod config;
pub mod garp;
pub mod io;
pub mod netlink;
pub mod notify;
pub mod packet;
pub mod state;

pub use config::{InstanceConfig, Track, Vip};
pub use io::{Status, TrackUpdate, run_instance};
pub use packet::{Advert, Auth, PacketError, Version};
pub use state::{Action, Event, Instance, NotifyState, State};
