//! The codereader verifier as an HTTP service, and the offline commands operators run.
//!
//! The binary (`src/main.rs`, and one module a command in `src/cli/`) is thin glue over these
//! modules:
//! - [`service`]: the boundary to the verifier library: [`service::Library`] (the verifier
//!   with its store and keys, called in the library's own types), the mapping of its errors
//!   ([`service::ServiceError`]) and what answers add to its outcomes;
//! - [`config_file`]: `serve --config FILE`, a TOML file of `serve`'s flags, and what a
//!   SIGHUP finds changed in it;
//! - [`error_code`]: the stable error codes of the API, each with its HTTP status;
//! - [`connections`]: accepting connections, head and idle deadlines, the connection cap;
//! - [`http`]: the axum application (routes, auth, limits, JSON errors, graceful shutdown);
//! - [`apikeys`]: the API-key file (hashed keys with scopes, constant-time checks);
//! - [`hangup`]: reloads run in order on SIGHUP (settings file, keyring, API keys, TLS
//!   certificate);
//! - [`key_source`]: where the keyring comes from: the key-encryption key files (and
//!   PKCS#11 keys) read at start, on SIGHUP and after another process rotated;
//! - [`tls`]: HTTPS on the server's own port, mutual TLS, certificate reload;
//! - [`timefmt`]: UTC times in RFC 3339 for the audit commands;
//! - [`hsm`]: the PKCS#11 settings and the hardware-module keys opened;
//! - [`state_dir`]: the state directory, its default paths, and atomic private file writes;
//! - [`metrics`]: Prometheus counters and the latency histogram;
//! - [`sealwatch`]: seeds that did not open, for the log and `/healthz`;
//! - [`webhooks`]: the store's events POSTed, signed, to `--webhook` destinations;
//! - [`wire`]: the JSON request and response bodies, and the conversions from the library's
//!   types to them (only this crate knows JSON).

pub mod apikeys;
pub mod config_file;
pub mod connections;
pub mod error_code;
pub mod hangup;
pub mod hsm;
pub mod http;
pub mod key_source;
pub mod metrics;
pub mod sealwatch;
pub mod service;
pub mod state_dir;
pub mod timefmt;
pub mod tls;
pub mod webhooks;
pub mod wire;
