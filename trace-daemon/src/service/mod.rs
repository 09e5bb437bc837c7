//! The always-on service: its configuration file, its Prometheus metrics and
//! the daemon session that ties them to the live loop.
pub mod config;
pub mod daemon;
pub mod domains;
pub mod metrics;
pub mod web;
pub mod web_config;
