//! The admin API: JSON over HTTP/1.1 on a unix socket (default
//! `/run/lb/admin.sock`, mode 0600), the `lb` command's only way into the
//! daemon. Routes are listed in [`routes`].

pub mod client;
mod control;
pub(crate) mod http;
pub mod rate;
pub mod routes;
mod server;
pub mod socket;
pub mod view;

#[cfg(test)]
mod tests;
#[cfg(test)]
pub(crate) mod testutil;

pub use client::{Client, ClientError};
pub use control::Control;
pub use routes::{Api, ApiError, Reply};
pub use server::{AdminServer, may_use, response};
pub use socket::SocketError;
pub use view::StatusView;
