//! lb's control plane library.
pub mod admin;
pub mod config;
pub mod daemon;
pub mod datapath;
pub mod health;
pub mod import;
pub mod metrics;
pub mod sync;
pub mod table;
pub mod vrrp;
