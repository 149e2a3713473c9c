//! The codereader verifier as an HTTP service, and the offline commands operators run.
//!
//! The binary (`src/main.rs`) is thin glue over these modules:
//! - [`service`]: the boundary to the verifier library (a sync trait plus wire-neutral types)
//!   and [`service::Library`], its implementation over `codereader-verifier`;
//! - [`connections`]: accepting connections, head and idle deadlines, the connection cap;
//! - [`http`]: the axum application (routes, auth, limits, JSON errors, graceful shutdown);
//! - [`apikeys`]: the API-key file (hashed keys with scopes, constant-time checks);
//! - [`state`]: the state directory, its default paths, and atomic private file writes;
//! - [`metrics`]: Prometheus counters and the latency histogram;
//! - [`wire`]: the JSON request and response bodies (only this crate knows JSON).

pub mod apikeys;
pub mod connections;
pub mod http;
pub mod metrics;
pub mod service;
pub mod state;
pub mod wire;
