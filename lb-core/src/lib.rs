//! lb's control plane library.
pub mod config;
pub mod daemon;
pub mod datapath;
pub mod health;
pub mod import;
pub mod table;
pub mod vrrp;
