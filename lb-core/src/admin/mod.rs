//! The admin API: JSON over HTTP/1.1 on a unix socket (default
//! `/run/lb/admin.sock`, mode 0600), the `lb` command's only way into the
//! daemon. Routes are listed in [`routes`]. By hand:
//!
//! ```text
//! curl --unix-socket /run/lb/admin.sock http://lb/v1/status
//! curl --unix-socket /run/lb/admin.sock -X PUT -d '{"weight": 0}' \
//!     http://lb/v1/services/198.18.0.100:80/tcp/backends/198.18.1.1:8080/weight
//! ```

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
