//! The command line: clap's definition of every command and flag. `serve`'s flags are also
//! the keys of its settings file (`serve --config`, [`config_file`]), which is read from
//! this definition, so a flag added here is a settings key too (a test checks it).

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use codereader_verifier_server::apikeys::Scope;
use codereader_verifier_server::hsm::HsmArgs;
use codereader_verifier_server::webhooks::WebhookArg;

/// Verifies one-time codes over HTTP; administers tokens offline.
#[derive(Parser, Debug)]
#[command(name = "codereader-verifier", version, about)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Subcommand, Debug)]
pub(crate) enum Command {
    /// Serve the HTTP API.
    Serve(Box<ServeArgs>),
    /// Administer tokens directly in the store (no server needed).
    #[command(subcommand)]
    Token(TokenCommand),
    /// Manage the keys that may call the HTTP API.
    #[command(subcommand, name = "api-key")]
    ApiKey(ApiKeyCommand),
}

/// Where the tokens and the key that seals their seeds live.
#[derive(Args, Debug, Clone)]
pub(crate) struct StoreArgs {
    /// The store: `sqlite:PATH` (or a plain path) or `postgres://...`.
    /// Default: `sqlite:` the file `verifier.sqlite` in the state directory.
    #[arg(long, value_name = "DB")]
    pub(crate) db: Option<String>,
    /// The key-encryption key (64 hex digits, mode 0600); created if missing.
    /// Default: `kek` in the state directory.
    #[arg(long, value_name = "FILE")]
    pub(crate) kek_file: Option<PathBuf>,
    /// Older key-encryption keys still able to open seeds (during a rotation).
    #[arg(long, value_name = "FILE")]
    pub(crate) old_kek_file: Vec<PathBuf>,
    /// The key-encryption key inside a PKCS#11 module instead of a file, as an RFC 7512 URI
    /// (`pkcs11:token=LABEL;object=LABEL`), created sensitive and non-extractable if the
    /// token has none. To rotate to and from it while servers run, name it in the keyring
    /// file instead (`token rotate-kek --new-kek`).
    #[arg(long, value_name = "URI", conflicts_with = "kek_file")]
    pub(crate) kek: Option<String>,
    #[command(flatten)]
    pub(crate) hsm: HsmArgs,
}

#[derive(Args, Debug)]
pub(crate) struct ServeArgs {
    /// Read settings from this TOML file: its keys are these flags' long names (`max-body =
    /// 65536`, `unknown-as-rejected = true`, `old-kek-file = ["a", "b"]`); flags on the
    /// command line win. SIGHUP re-reads it: the paths of the API keys and of the TLS files
    /// change at once, other changes are logged as needing a restart.
    #[arg(long, value_name = "FILE")]
    pub(crate) config: Option<PathBuf>,
    /// Address to listen on (port 0: any free port, printed at start).
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub(crate) listen: SocketAddr,
    #[command(flatten)]
    pub(crate) store: StoreArgs,
    /// The API-key file. Default: `api-keys` in the state directory.
    #[arg(long, value_name = "FILE")]
    pub(crate) api_keys: Option<PathBuf>,
    /// Largest request body in bytes (PSKC imports: `--max-import-body`).
    #[arg(long, default_value_t = 64 * 1024)]
    pub(crate) max_body: usize,
    /// Largest PSKC import body in bytes.
    #[arg(long, default_value_t = 16 * 1024 * 1024)]
    pub(crate) max_import_body: usize,
    /// Longest time one request may take, in milliseconds.
    #[arg(long, default_value_t = 10_000)]
    pub(crate) request_timeout_ms: u64,
    /// Longest time a request body may take to arrive after its head, in milliseconds; a
    /// body still incomplete then (shorter than its Content-Length) is a 408.
    #[arg(long, default_value_t = 5_000)]
    pub(crate) body_timeout_ms: u64,
    /// Longest time a request head may take to arrive, from its first byte (from the
    /// connection being accepted, for its first request), in milliseconds.
    #[arg(long, default_value_t = 10_000)]
    pub(crate) head_timeout_ms: u64,
    /// Longest time a kept-alive connection may stay silent after an answer, in milliseconds.
    #[arg(long, default_value_t = 30_000)]
    pub(crate) idle_timeout_ms: u64,
    /// Most client connections held at once. Default: what the descriptor limit leaves
    /// beside the store's connections (the soft limit is first raised to the hard one).
    /// Beyond it, a new connection closes the one that has waited longest for a request.
    #[arg(long)]
    pub(crate) max_connections: Option<usize>,
    /// Threads running store calls (the store is blocking).
    #[arg(long, default_value_t = 64)]
    pub(crate) blocking_threads: usize,
    /// Store calls running at once; more wait in a fair queue without holding a thread.
    /// Default: SQLite, `--blocking-threads` (its single writer thread commits whatever is
    /// queued in one transaction, so more callers mean bigger batches per fsync);
    /// PostgreSQL, `--pg-connections`.
    #[arg(long)]
    pub(crate) store_concurrency: Option<usize>,
    /// Threads running the HTTP machinery (default: one per core).
    #[arg(long)]
    pub(crate) worker_threads: Option<usize>,
    /// Consecutive failures that lock a token.
    #[arg(long, default_value_t = 3)]
    pub(crate) max_failures: u32,
    /// Failed verifications a client (the request's `client`) may make per
    /// `--client-window-s` before it gets 429 (0: no budget).
    #[arg(long, default_value_t = 20)]
    pub(crate) client_failures: u32,
    /// The window of `--client-failures`, in seconds; the budget refills evenly over it.
    #[arg(long, default_value_t = 60)]
    pub(crate) client_window_s: u64,
    /// After a token's first failure, refuse its next attempt (`too_soon`) for this many
    /// seconds, doubling with each further failure (0: no delay).
    #[arg(long, default_value_t = 0)]
    pub(crate) failure_delay_s: u64,
    /// The longest delay of `--failure-delay-s`, in seconds.
    #[arg(long, default_value_t = 300)]
    pub(crate) failure_delay_max_s: u64,
    /// Make locks temporary: the first lasts this many seconds after the last failure, each
    /// later one (one more failure after a lock ends) twice as long. 0 (the default): a
    /// lock lasts until an administrator unlocks the token.
    #[arg(long, default_value_t = 0)]
    pub(crate) lock_period_s: u64,
    /// The longest temporary lock, in seconds.
    #[arg(long, default_value_t = 86_400)]
    pub(crate) lock_period_max_s: u64,
    /// Answer a verification for an unknown serial or user exactly like a wrong code
    /// (`rejected`, then without `attempts_left` for every token), so answers do not tell
    /// which serials exist.
    #[arg(long)]
    pub(crate) unknown_as_rejected: bool,
    /// With `--unknown-as-rejected`: the least time, in milliseconds, any `rejected`
    /// verification takes to answer, so that the time does not tell unknown serials from
    /// known ones either (their store work differs by about a millisecond).
    #[arg(long, default_value_t = 50)]
    pub(crate) rejected_floor_ms: u64,
    /// SQLite: fsync only at checkpoints (`synchronous=NORMAL`). Commits survive a crash of
    /// the process but the last ones may be lost on power failure, so a just-accepted code
    /// could be accepted again after a reboot. Off by default.
    #[arg(long)]
    pub(crate) sqlite_normal_sync: bool,
    /// PostgreSQL: most connections this server opens. The store runs four worker threads
    /// per connection: a verification waiting for the batch that carries its acceptance
    /// holds no connection.
    #[arg(long, default_value_t = codereader_verifier::store::postgres::DEFAULT_MAX_CONNECTIONS)]
    pub(crate) pg_connections: usize,
    /// PostgreSQL: the longest wait, in milliseconds, for any one answer of the database (a
    /// statement, or a connection to one host of the address). Past it the call fails (503
    /// `store_unavailable`) and its connection is abandoned, so that a primary that hangs
    /// holds no verification longer than this; the next connection tries the other hosts.
    #[arg(long, default_value_t = 5000)]
    pub(crate) pg_deadline_ms: u64,
    /// Serve HTTPS only, with this PEM certificate chain (leaf first); needs `--tls-key`.
    /// SIGHUP re-reads the certificate, key and client CAs.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub(crate) tls_cert: Option<PathBuf>,
    /// The PEM private key of `--tls-cert`.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub(crate) tls_key: Option<PathBuf>,
    /// Require client certificates issued by these PEM CAs (mutual TLS), on top of the
    /// bearer keys.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub(crate) client_ca: Option<PathBuf>,
    /// Keep the prepared HMAC keys of up to this many recently verified tokens in memory, so
    /// their seeds need not be decrypted again (0: off). Default: 10000, or off when a key
    /// of the keyring is in a PKCS#11 module (then the cache would hold seeds the module
    /// exists to keep out of memory). Cached keys stay in memory until evicted, their token
    /// is deleted or enrolled again, or the keyring is reloaded.
    #[arg(long)]
    pub(crate) key_cache: Option<usize>,
    /// Push events (token locked, unlocked, ...) to this destination, signed: `URL
    /// secret-file=F [events=token.locked,token.unlocked] [name=N] [ca=F]` (one value, words
    /// separated by spaces; https, or http to loopback only). Repeat for several.
    #[arg(long, value_name = "SPEC")]
    pub(crate) webhook: Vec<WebhookArg>,
    /// Retry a failing event for this long before dead-lettering it.
    #[arg(long, default_value_t = 3600)]
    pub(crate) webhook_retry_for_s: u64,
    /// The first wait before retrying a failed event; each further wait doubles (with
    /// jitter) up to --webhook-backoff-max-ms.
    #[arg(long, default_value_t = 1000)]
    pub(crate) webhook_backoff_ms: u64,
    /// The longest wait between two attempts at one event.
    #[arg(long, default_value_t = 300_000)]
    pub(crate) webhook_backoff_max_ms: u64,
    /// How long one webhook POST may take.
    #[arg(long, default_value_t = 10_000)]
    pub(crate) webhook_timeout_ms: u64,
    /// How often the store is asked for new events to push.
    #[arg(long, default_value_t = 1000)]
    pub(crate) webhook_poll_ms: u64,
}

#[derive(Subcommand, Debug)]
pub(crate) enum TokenCommand {
    /// Enrol a token from an otpauth:// URI (`--uri -` reads it from stdin, keeping the
    /// secret out of the process list and shell history).
    Add {
        /// The token's serial.
        #[arg(long)]
        serial: String,
        /// The otpauth:// URI, or `-` for stdin.
        #[arg(long)]
        uri: String,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Import the keys of a PSKC file (RFC 6030).
    Import {
        /// The PSKC file.
        #[arg(long)]
        pskc: PathBuf,
        /// A file holding the pre-shared key (hex) for encrypted keys.
        #[arg(long, value_name = "FILE")]
        preshared_key_file: Option<PathBuf>,
        /// Accept secrets shorter than 128 bits (RFC 4226 asks for at least that; some
        /// legacy tokens, and RFC 6030's own first example, have shorter ones).
        #[arg(long)]
        allow_short_secret: bool,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// List all tokens.
    List {
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Show one token's state (never its secret).
    Show {
        /// The token's serial.
        serial: String,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Clear a token's lock and failure count.
    Unlock {
        /// The token's serial.
        serial: String,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Disable a token: it accepts no code any more.
    Disable {
        /// The token's serial.
        serial: String,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Rotate the key-encryption key: a new key becomes current in the keyring file named by
    /// `--kek-file` (the old ones stay, to open), then every seed is re-encrypted under it.
    /// Running servers follow on SIGHUP, or by themselves when they first meet a seed sealed
    /// under the new key; a restart with the same command line keeps working.
    RotateKek {
        /// Take the new key from this file (created if missing) instead of generating one.
        #[arg(long, value_name = "FILE", conflicts_with_all = ["stage", "use_key"])]
        new_kek_file: Option<PathBuf>,
        /// Make a key inside a PKCS#11 module current (RFC 7512 URI `pkcs11:token=...;
        /// object=...`; created sensitive and non-extractable if missing): seeds move into
        /// the module's keeping. The keyring file then names it; the module path and PIN come
        /// from --pkcs11-module and --pkcs11-pin-file (or the environment) on every server.
        /// With --stage, the key is only added as one that opens.
        #[arg(long, value_name = "URI", conflicts_with_all = ["use_key", "new_kek_file"])]
        new_kek: Option<String>,
        /// Only add a new key that opens but does not seal yet (the first step with several
        /// servers: copy the file to each and SIGHUP them before `--use`).
        #[arg(long, conflicts_with = "use_key")]
        stage: bool,
        /// Make this key of the keyring file current (a staged key; or the current one, to
        /// re-encrypt seeds enrolled under the old key meanwhile), then re-encrypt.
        #[arg(long = "use", value_name = "KEY_ID")]
        use_key: Option<String>,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Show the audit trail: one token's latest lines (newest first), or with `--all --since T`
    /// every line since T (oldest first), e.g. `--json` for a SIEM. Never a code or secret.
    Audit {
        /// The token's serial.
        #[arg(long, required_unless_present = "all", conflicts_with = "all")]
        serial: Option<String>,
        /// Every token's lines (needs `--since`).
        #[arg(long, requires = "since")]
        all: bool,
        /// With `--all`: from this time on (Unix seconds, YYYY-MM-DD or
        /// YYYY-MM-DDTHH:MM:SSZ, UTC).
        #[arg(long, value_name = "TIME")]
        since: Option<String>,
        /// Most lines to show (default: 50 for one token, all with `--all`).
        #[arg(long)]
        limit: Option<usize>,
        /// One JSON object a line instead of columns.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Print the events (token locked, unlocked, ...) after the event `--after`, one JSON
    /// object a line, as webhooks send them; with `--follow`, keep printing new ones as they
    /// are committed.
    Events {
        /// Start after this event id (0: from the first).
        #[arg(long, default_value_t = 0)]
        after: u64,
        /// Keep waiting for new events (until interrupted).
        #[arg(long)]
        follow: bool,
        /// With `--follow`: how often to look for new events.
        #[arg(long, default_value_t = 1000)]
        interval_ms: u64,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Remove the keys that only open from the keyring file, once no seed needs them.
    PruneKek {
        #[command(flatten)]
        store: StoreArgs,
    },
}

#[derive(Subcommand, Debug)]
pub(crate) enum ApiKeyCommand {
    /// Create a key; it is printed once, as the last word of the output.
    Create {
        /// What it may do: `verify` (POST /v1/verify) or `admin` (/v1/tokens...).
        #[arg(long)]
        scope: Scope,
        /// A name for the audit trail (default: derived from the key's hash).
        #[arg(long)]
        name: Option<String>,
        /// The API-key file. Default: `api-keys` in the state directory.
        #[arg(long, value_name = "FILE")]
        api_keys: Option<PathBuf>,
        /// When the key stops being accepted (Unix seconds, YYYY-MM-DD or
        /// YYYY-MM-DDTHH:MM:SSZ, UTC). Default: never.
        #[arg(long, value_name = "TIME")]
        expires: Option<String>,
    },
    /// Register a client certificate as a key: over mutual TLS (`serve --client-ca`) a
    /// client presenting it may call the API without a bearer key.
    AddCert {
        /// What it may do: `verify` or `admin`.
        #[arg(long)]
        scope: Scope,
        /// A name for the audit trail (default: derived from the certificate's hash).
        #[arg(long)]
        name: Option<String>,
        /// The client's certificate (PEM; the first certificate of the file).
        #[arg(long, value_name = "FILE")]
        cert: PathBuf,
        /// When it stops being accepted (as for `api-key create`). Default: never.
        #[arg(long, value_name = "TIME")]
        expires: Option<String>,
        /// The API-key file. Default: `api-keys` in the state directory.
        #[arg(long, value_name = "FILE")]
        api_keys: Option<PathBuf>,
    },
    /// List the keys: name, scope, created, expiry (never the key or its hash).
    List {
        /// The API-key file. Default: `api-keys` in the state directory.
        #[arg(long, value_name = "FILE")]
        api_keys: Option<PathBuf>,
    },
    /// Remove a key; a running server stops accepting it on SIGHUP. The revocation is an
    /// `apikey.revoked` event in the database `--db` names (by default the state
    /// directory's, if it exists).
    Revoke {
        /// The key's name (see `api-key list`).
        #[arg(long)]
        name: String,
        /// The API-key file. Default: `api-keys` in the state directory.
        #[arg(long, value_name = "FILE")]
        api_keys: Option<PathBuf>,
        /// The database to record the event in (`sqlite:PATH`, `postgres://...`).
        #[arg(long, value_name = "DB")]
        db: Option<String>,
    },
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use clap::{ArgAction, CommandFactory};
    use codereader_verifier_server::config_file::{self, ConfigError, ConfigFile};

    use super::*;

    /// Every flag of `serve`, today's and any added later, is a key of the settings file:
    /// it has a long name, its default written as a value loads, and no flag is unknown.
    #[test]
    fn every_serve_flag_is_a_settings_key() {
        let root = Cli::command();
        let serve = root.find_subcommand("serve").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("verifier.toml");
        let mut keys = 0;
        for arg in serve.get_arguments() {
            let Some(long) = arg.get_long() else {
                panic!("`serve` argument {} has no long name: no key", arg.get_id());
            };
            if long == config_file::CONFIG_FLAG {
                continue;
            }
            let value = match (arg.get_action(), arg.get_default_values().first()) {
                (ArgAction::SetTrue | ArgAction::SetFalse, _) => "true".to_owned(),
                (ArgAction::Append, _) => "[\"x\"]".to_owned(),
                (_, Some(default)) => format!("{:?}", default.to_string_lossy()),
                (_, None) => "\"x\"".to_owned(),
            };
            std::fs::write(&file, format!("{long} = {value}\n")).unwrap();
            match ConfigFile::load(&file, serve) {
                Ok(_) => keys += 1,
                // "x" need not be a valid value; it is a known key.
                Err(ConfigError::BadValue { .. }) if !arg.get_default_values().is_empty() => {
                    panic!("{long}: its own default {value} is refused")
                }
                Err(ConfigError::BadValue { .. }) => keys += 1,
                Err(e) => panic!("{long}: {e}"),
            }
        }
        assert!(keys > 30, "only {keys} keys");
    }
}
