//! Prometheus metrics, served over HTTP on `daemon.metrics_listen` (default
//! `127.0.0.1:9658`). Every value is read from the daemon when scraped; the
//! exporter is read-only.

mod render;
mod server;

pub use render::{render, scrape};
pub use server::{MetricsError, MetricsServer};

#[cfg(test)]
mod tests;
