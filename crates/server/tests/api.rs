//! End-to-end tests of the real `codereader-verifier` binary over HTTP on 127.0.0.1: token
//! life cycle, auth, malformed input, concurrency on SQLite and PostgreSQL, crash safety.

// Tests may unwrap: a panic there is a failed test with a clear location.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

#[path = "api/attack.rs"]
mod attack;
#[path = "api/audit.rs"]
mod audit;
#[path = "api/bodies.rs"]
mod bodies;
#[path = "api/cli.rs"]
mod cli;
#[path = "api/cluster.rs"]
mod cluster;
#[path = "api/concurrency.rs"]
mod concurrency;
#[path = "api/config.rs"]
mod config;
#[path = "api/fault.rs"]
mod fault;
#[path = "api/flows.rs"]
mod flows;
#[path = "api/fuzz.rs"]
mod fuzz;
#[path = "api/keys.rs"]
mod keys;
#[path = "api/listing.rs"]
mod listing;
#[path = "api/malformed.rs"]
mod malformed;
#[path = "api/rotation.rs"]
mod rotation;
#[path = "api/tls.rs"]
mod tls;
