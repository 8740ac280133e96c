//! authd: login, rotating refresh tokens with reuse detection, logout and
//! sessions, over Postgres (or an embedded SQLite for development).
//!
//! Data flows one way: [`http`] (routes, extractors, errors) → [`auth`] (the
//! service) → [`store`] (persistence behind a trait). [`tokens`] signs and
//! verifies JWTs; [`password`] hashes; [`config`] and [`clock`] are injected.

pub mod app;
pub mod auth;
pub mod clock;
pub mod config;
pub mod dev;
pub mod domain;
pub mod http;
pub mod lockout;
pub mod metrics;
pub mod password;
pub mod revocations;
pub mod serve;
pub mod startup;
pub mod store;
pub mod telemetry;
pub mod tokens;
