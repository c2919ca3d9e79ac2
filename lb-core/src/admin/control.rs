//! What the admin API and the metrics exporter need from the daemon.
//!
//! A trait rather than [`DaemonHandle`] itself so the servers can be tested
//! with a fake daemon: the real one needs root and an XDP-capable kernel.

use std::{future::Future, sync::Arc};

use crate::{
    daemon::{AdminError, AdminRequest, DaemonHandle, Status, UsageSnapshot},
    datapath::DatapathError,
};

/// The daemon as its servers see it; implemented by [`DaemonHandle`].
pub trait Control: Clone + Send + Sync + 'static {
    /// The latest published state (never blocks the controller).
    fn status(&self) -> Arc<Status>;
    /// Applies a change; nothing changes when it returns an error.
    fn request(&self, r: AdminRequest) -> impl Future<Output = Result<String, AdminError>> + Send;
    /// Datapath counters and active flows of every service and backend.
    fn usage(&self) -> impl Future<Output = Result<UsageSnapshot, DatapathError>> + Send;
}

impl Control for DaemonHandle {
    fn status(&self) -> Arc<Status> {
        DaemonHandle::status(self)
    }

    fn request(&self, r: AdminRequest) -> impl Future<Output = Result<String, AdminError>> + Send {
        DaemonHandle::request(self, r)
    }

    fn usage(&self) -> impl Future<Output = Result<UsageSnapshot, DatapathError>> + Send {
        DaemonHandle::usage(self)
    }
}
