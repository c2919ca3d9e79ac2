//! lb's control plane library.
pub mod datapath;
pub mod table;
pub mod vrrp;
