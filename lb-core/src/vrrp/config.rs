//! Typed settings of one VRRP instance, named after keepalived's keywords so
//! that the daemon's `[[vrrp_instance]]` table maps onto it field by field.

use std::net::Ipv4Addr;
use std::time::Duration;

use super::packet::{self, Version};

/// keepalived's default `garp_master_delay`.
pub const DEFAULT_GARP_MASTER_DELAY: Duration = Duration::from_secs(5);
/// keepalived's default `garp_master_repeat`.
pub const DEFAULT_GARP_MASTER_REPEAT: u32 = 5;
/// The address owner's priority: it goes master at once and never yields.
pub const PRIORITY_OWNER: u8 = 255;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Vip {
    pub addr: Ipv4Addr,
    /// keepalived adds a VIP written without a prefix as /32.
    pub prefix_len: u8,
}

/// A tracked interface or script. Weight 0 means "down puts the instance in
/// FAULT"; otherwise, as in keepalived, a positive weight is added while the
/// object is up and a negative one while it is down.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Track {
    pub name: String,
    pub weight: i32,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InstanceConfig {
    pub name: String,
    pub interface: String,
    pub virtual_router_id: u8,
    pub priority: u8,
    pub advert_int: Duration,
    pub version: Version,
    pub nopreempt: bool,
    pub preempt_delay: Duration,
    pub virtual_ipaddress: Vec<Vip>,
    pub unicast_src_ip: Option<Ipv4Addr>,
    /// Non-empty means unicast mode, as in keepalived.
    pub unicast_peer: Vec<Ipv4Addr>,
    pub auth_pass: Option<String>,
    pub track_interface: Vec<Track>,
    pub track_script: Vec<Track>,
    pub notify: Option<Vec<String>>,
    pub notify_master: Option<Vec<String>>,
    pub notify_backup: Option<Vec<String>>,
    pub notify_fault: Option<Vec<String>>,
    pub notify_stop: Option<Vec<String>>,
    /// uid and gid the notify scripts run as. Default: none, the daemon's own.
    pub notify_run_as: Option<(u32, u32)>,
    pub garp_master_delay: Duration,
    pub garp_master_repeat: u32,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("virtual_router_id must be 1..=255")]
    ZeroVrid,
    #[error("priority must be 1..=255")]
    ZeroPriority,
    #[error("advert_int: {0}")]
    AdvertInt(#[from] packet::EncodeError),
    #[error("auth_pass needs version 2: VRRPv3 has no authentication")]
    AuthOnV3,
    #[error("at most 255 virtual_ipaddress entries fit in an advertisement, got {0}")]
    TooManyVips(usize),
    #[error("virtual_ipaddress {0}: prefix length {1} is over 32")]
    BadPrefix(Ipv4Addr, u8),
    #[error("garp_master_repeat must be at least 1")]
    ZeroGarpRepeat,
}

impl InstanceConfig {
    /// An instance with keepalived's defaults: v2, 1 s adverts, preempt on,
    /// no authentication, multicast, GARPs 5 now and 5 after 5 s.
    pub fn new(
        name: impl Into<String>,
        interface: impl Into<String>,
        virtual_router_id: u8,
        priority: u8,
        virtual_ipaddress: Vec<Vip>,
    ) -> Self {
        InstanceConfig {
            name: name.into(),
            interface: interface.into(),
            virtual_router_id,
            priority,
            advert_int: Duration::from_secs(1),
            version: Version::V2,
            nopreempt: false,
            preempt_delay: Duration::ZERO,
            virtual_ipaddress,
            unicast_src_ip: None,
            unicast_peer: Vec::new(),
            auth_pass: None,
            track_interface: Vec::new(),
            track_script: Vec::new(),
            notify: None,
            notify_master: None,
            notify_backup: None,
            notify_fault: None,
            notify_stop: None,
            notify_run_as: None,
            garp_master_delay: DEFAULT_GARP_MASTER_DELAY,
            garp_master_repeat: DEFAULT_GARP_MASTER_REPEAT,
        }
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.virtual_router_id == 0 {
            return Err(ConfigError::ZeroVrid);
        }
        if self.priority == 0 {
            return Err(ConfigError::ZeroPriority);
        }
        packet::validate_interval(self.version, self.advert_int)?;
        if self.version == Version::V3 && self.auth_pass.is_some() {
            return Err(ConfigError::AuthOnV3);
        }
        if self.virtual_ipaddress.len() > usize::from(u8::MAX) {
            return Err(ConfigError::TooManyVips(self.virtual_ipaddress.len()));
        }
        if let Some(v) = self.virtual_ipaddress.iter().find(|v| v.prefix_len > 32) {
            return Err(ConfigError::BadPrefix(v.addr, v.prefix_len));
        }
        if self.garp_master_repeat == 0 {
            return Err(ConfigError::ZeroGarpRepeat);
        }
        Ok(())
    }

    pub fn is_unicast(&self) -> bool {
        !self.unicast_peer.is_empty()
    }

    pub fn auth(&self) -> packet::Auth {
        match &self.auth_pass {
            Some(p) => packet::Auth::pass(p),
            None => packet::Auth::None,
        }
    }

    pub fn vip_addresses(&self) -> Vec<Ipv4Addr> {
        self.virtual_ipaddress.iter().map(|v| v.addr).collect()
    }

    /// What a valid advertisement for this instance looks like.
    pub fn expected(&self) -> packet::Expected {
        packet::Expected {
            version: self.version,
            vrid: self.virtual_router_id,
            auth: self.auth(),
            advert_int: self.advert_int,
            addresses: self.vip_addresses(),
            unicast: self.is_unicast(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> InstanceConfig {
        InstanceConfig::new(
            "VI_1",
            "eth0",
            51,
            100,
            vec![Vip {
                addr: Ipv4Addr::new(198, 18, 0, 100),
                prefix_len: 32,
            }],
        )
    }

    #[test]
    fn defaults_are_valid() {
        assert_eq!(base().validate(), Ok(()));
    }

    #[test]
    fn rejects_what_keepalived_rejects() {
        let c = InstanceConfig {
            virtual_router_id: 0,
            ..base()
        };
        assert_eq!(c.validate(), Err(ConfigError::ZeroVrid));
        let c = InstanceConfig {
            version: Version::V3,
            auth_pass: Some("x".into()),
            ..base()
        };
        assert_eq!(c.validate(), Err(ConfigError::AuthOnV3));
        let c = InstanceConfig {
            advert_int: Duration::from_millis(500),
            ..base()
        };
        assert!(matches!(c.validate(), Err(ConfigError::AdvertInt(_))));
        let c = InstanceConfig {
            version: Version::V3,
            advert_int: Duration::from_millis(500),
            ..base()
        };
        assert_eq!(c.validate(), Ok(()));
    }
}
