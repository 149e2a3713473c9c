//! `codereader-verifier`: the verifier HTTP service and the operators' offline commands.
//!
//! Thin glue: parse the command line (with the settings file of `serve --config` merged
//! in), find the state directory, open the store through
//! [`codereader_verifier_server::service::Library`], then serve or run one admin operation.

use std::ffi::OsString;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};
use codereader_otp::UnixTime;
use codereader_verifier::{
    AuditEntry, Caller, ClientBudget, FailureDelay, KeyId, KeyringFile, SealingKey, StoreAddress,
};
use codereader_verifier_server::apikeys::{self, ApiKeys, Scope};
use codereader_verifier_server::config_file::{self, Settings};
use codereader_verifier_server::connections::{self, ConnLimits, Plain};
use codereader_verifier_server::hangup::{self, Reload};
use codereader_verifier_server::hsm::{HsmArgs, HsmKeys, without_query};
use codereader_verifier_server::http::{self, AppState, Limits};
use codereader_verifier_server::keyring::KeyFiles;
use codereader_verifier_server::service::library::{Library, LibraryConfig};
use codereader_verifier_server::service::{self, Enrollment, MAX_AUDIT_PAGE};
use codereader_verifier_server::tls::{TlsFiles, TlsState};
use codereader_verifier_server::webhooks::{self, WebhookArg, WebhookTiming};
use codereader_verifier_server::{state, timefmt, wire};
use zeroize::Zeroizing;

/// Verifies one-time codes over HTTP; administers tokens offline.
#[derive(Parser, Debug)]
#[command(name = "codereader-verifier", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
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
struct StoreArgs {
    /// The store: `sqlite:PATH` (or a plain path) or `postgres://...`.
    /// Default: `sqlite:` the file `verifier.sqlite` in the state directory.
    #[arg(long, value_name = "DB")]
    db: Option<String>,
    /// The key-encryption key (64 hex digits, mode 0600); created if missing.
    /// Default: `kek` in the state directory.
    #[arg(long, value_name = "FILE")]
    kek_file: Option<PathBuf>,
    /// Older key-encryption keys still able to open seeds (during a rotation).
    #[arg(long, value_name = "FILE")]
    old_kek_file: Vec<PathBuf>,
    /// The key-encryption key inside a PKCS#11 module instead of a file, as an RFC 7512 URI
    /// (`pkcs11:token=LABEL;object=LABEL`), created sensitive and non-extractable if the
    /// token has none. To rotate to and from it while servers run, name it in the keyring
    /// file instead (`token rotate-kek --new-kek`).
    #[arg(long, value_name = "URI", conflicts_with = "kek_file")]
    kek: Option<String>,
    #[command(flatten)]
    hsm: HsmArgs,
}

#[derive(Args, Debug)]
struct ServeArgs {
    /// Read settings from this TOML file: its keys are these flags' long names (`max-body =
    /// 65536`, `unknown-as-rejected = true`, `old-kek-file = ["a", "b"]`); flags on the
    /// command line win. SIGHUP re-reads it: the paths of the API keys and of the TLS files
    /// change at once, other changes are logged as needing a restart.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Address to listen on (port 0: any free port, printed at start).
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    #[command(flatten)]
    store: StoreArgs,
    /// The API-key file. Default: `api-keys` in the state directory.
    #[arg(long, value_name = "FILE")]
    api_keys: Option<PathBuf>,
    /// Largest request body in bytes (PSKC imports: `--max-import-body`).
    #[arg(long, default_value_t = 64 * 1024)]
    max_body: usize,
    /// Largest PSKC import body in bytes.
    #[arg(long, default_value_t = 16 * 1024 * 1024)]
    max_import_body: usize,
    /// Longest time one request may take, in milliseconds.
    #[arg(long, default_value_t = 10_000)]
    request_timeout_ms: u64,
    /// Longest time a request body may take to arrive after its head, in milliseconds; a
    /// body still incomplete then (shorter than its Content-Length) is a 408.
    #[arg(long, default_value_t = 5_000)]
    body_timeout_ms: u64,
    /// Longest time a request head may take to arrive, from its first byte (from the
    /// connection being accepted, for its first request), in milliseconds.
    #[arg(long, default_value_t = 10_000)]
    head_timeout_ms: u64,
    /// Longest time a kept-alive connection may stay silent after an answer, in milliseconds.
    #[arg(long, default_value_t = 30_000)]
    idle_timeout_ms: u64,
    /// Most client connections held at once. Default: what the descriptor limit leaves
    /// beside the store's connections (the soft limit is first raised to the hard one).
    /// Beyond it, a new connection closes the one that has waited longest for a request.
    #[arg(long)]
    max_connections: Option<usize>,
    /// Threads running store calls (the store is blocking).
    #[arg(long, default_value_t = 64)]
    blocking_threads: usize,
    /// Store calls running at once; more wait in a fair queue without holding a thread.
    /// Default: SQLite, `--blocking-threads` (its single writer thread commits whatever is
    /// queued in one transaction, so more callers mean bigger batches per fsync);
    /// PostgreSQL, `--pg-connections`.
    #[arg(long)]
    store_concurrency: Option<usize>,
    /// Threads running the HTTP machinery (default: one per core).
    #[arg(long)]
    worker_threads: Option<usize>,
    /// Consecutive failures that lock a token.
    #[arg(long, default_value_t = 3)]
    max_failures: u32,
    /// Failed verifications a client (the request's `client`) may make per
    /// `--client-window-s` before it gets 429 (0: no budget).
    #[arg(long, default_value_t = 20)]
    client_failures: u32,
    /// The window of `--client-failures`, in seconds; the budget refills evenly over it.
    #[arg(long, default_value_t = 60)]
    client_window_s: u64,
    /// After a token's first failure, refuse its next attempt (`too_soon`) for this many
    /// seconds, doubling with each further failure (0: no delay).
    #[arg(long, default_value_t = 0)]
    failure_delay_s: u64,
    /// The longest delay of `--failure-delay-s`, in seconds.
    #[arg(long, default_value_t = 300)]
    failure_delay_max_s: u64,
    /// Make locks temporary: the first lasts this many seconds after the last failure, each
    /// later one (one more failure after a lock ends) twice as long. 0 (the default): a
    /// lock lasts until an administrator unlocks the token.
    #[arg(long, default_value_t = 0)]
    lock_period_s: u64,
    /// The longest temporary lock, in seconds.
    #[arg(long, default_value_t = 86_400)]
    lock_period_max_s: u64,
    /// Answer a verification for an unknown serial or user exactly like a wrong code
    /// (`rejected`, then without `attempts_left` for every token), so answers do not tell
    /// which serials exist.
    #[arg(long)]
    unknown_as_rejected: bool,
    /// With `--unknown-as-rejected`: the least time, in milliseconds, any `rejected`
    /// verification takes to answer, so that the time does not tell unknown serials from
    /// known ones either (their store work differs by about a millisecond).
    #[arg(long, default_value_t = 50)]
    rejected_floor_ms: u64,
    /// SQLite: fsync only at checkpoints (`synchronous=NORMAL`). Commits survive a crash of
    /// the process but the last ones may be lost on power failure, so a just-accepted code
    /// could be accepted again after a reboot. Off by default.
    #[arg(long)]
    sqlite_normal_sync: bool,
    /// PostgreSQL: most connections this server opens.
    #[arg(long, default_value_t = codereader_verifier::store::postgres::DEFAULT_MAX_CONNECTIONS)]
    pg_connections: usize,
    /// PostgreSQL: the longest wait, in milliseconds, for any one answer of the database (a
    /// statement, or a connection to one host of the address). Past it the call fails (503
    /// `store_unavailable`) and its connection is abandoned, so that a primary that hangs
    /// holds no verification longer than this; the next connection tries the other hosts.
    #[arg(long, default_value_t = 5000)]
    pg_deadline_ms: u64,
    /// Serve HTTPS only, with this PEM certificate chain (leaf first); needs `--tls-key`.
    /// SIGHUP re-reads the certificate, key and client CAs.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The PEM private key of `--tls-cert`.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Require client certificates issued by these PEM CAs (mutual TLS), on top of the
    /// bearer keys.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    client_ca: Option<PathBuf>,
    /// Keep the prepared HMAC keys of up to this many recently verified tokens in memory, so
    /// their seeds need not be decrypted again (0: off). Default: 10000, or off when a key
    /// of the keyring is in a PKCS#11 module (then the cache would hold seeds the module
    /// exists to keep out of memory). Cached keys stay in memory until evicted, their token
    /// is deleted or enrolled again, or the keyring is reloaded.
    #[arg(long)]
    key_cache: Option<usize>,
    /// Push events (token locked, unlocked, ...) to this destination, signed: `URL
    /// secret-file=F [events=token.locked,token.unlocked] [name=N] [ca=F]` (one value, words
    /// separated by spaces; https, or http to loopback only). Repeat for several.
    #[arg(long, value_name = "SPEC")]
    webhook: Vec<WebhookArg>,
    /// Retry a failing event for this long before dead-lettering it.
    #[arg(long, default_value_t = 3600)]
    webhook_retry_for_s: u64,
    /// The first wait before retrying a failed event; each further wait doubles (with
    /// jitter) up to --webhook-backoff-max-ms.
    #[arg(long, default_value_t = 1000)]
    webhook_backoff_ms: u64,
    /// The longest wait between two attempts at one event.
    #[arg(long, default_value_t = 300_000)]
    webhook_backoff_max_ms: u64,
    /// How long one webhook POST may take.
    #[arg(long, default_value_t = 10_000)]
    webhook_timeout_ms: u64,
    /// How often the store is asked for new events to push.
    #[arg(long, default_value_t = 1000)]
    webhook_poll_ms: u64,
}

#[derive(Subcommand, Debug)]
enum TokenCommand {
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
enum ApiKeyCommand {
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

fn main() -> ExitCode {
    let (cli, settings) = match parse_command_line() {
        Ok(parsed) => parsed,
        Err(code) => return code,
    };
    match run(cli, settings) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("codereader-verifier: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// The command line, with the settings file of `serve --config` merged in
/// ([`config_file::merge`]), and where the settings came from, for SIGHUP. Errors are
/// printed; the exit code is clap's for a usage error (2), also for a refused file.
fn parse_command_line() -> Result<(Cli, Option<SettingsSource>), ExitCode> {
    let argv: Vec<OsString> = std::env::args_os().collect();
    let (merged, file) = config_file::merge(&Cli::command(), "serve", &argv).map_err(|error| {
        eprintln!("codereader-verifier: {error}");
        ExitCode::from(2)
    })?;
    let matches = Cli::command()
        .try_get_matches_from(&merged)
        .map_err(|error| {
            let _ = error.print();
            if let (Some(file), true) = (&file, error.use_stderr()) {
                // The flags clap names may have come from the file.
                eprintln!(
                    "codereader-verifier: (the command line together with the settings in {})",
                    file.path().display()
                );
            }
            ExitCode::from(u8::try_from(error.exit_code()).unwrap_or(2))
        })?;
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    let settings = file.and_then(|file| {
        let root = Cli::command();
        Some(SettingsSource {
            running: Settings::of(
                root.find_subcommand("serve")?,
                matches.subcommand_matches("serve")?,
            ),
            argv,
            file: file.path().to_owned(),
        })
    });
    Ok((cli, settings))
}

fn run(cli: Cli, settings: Option<SettingsSource>) -> Result<()> {
    match cli.command {
        Command::Serve(args) => serve(*args, settings),
        Command::Token(command) => token(command),
        Command::ApiKey(ApiKeyCommand::List { api_keys }) => list_api_keys(api_keys),
        Command::ApiKey(ApiKeyCommand::AddCert {
            scope,
            name,
            cert,
            expires,
            api_keys,
        }) => add_certificate(scope, name.as_deref(), &cert, expires.as_deref(), api_keys),
        Command::ApiKey(ApiKeyCommand::Revoke { name, api_keys, db }) => {
            revoke_api_key(&name, api_keys, db.as_deref())
        }
        Command::ApiKey(ApiKeyCommand::Create {
            scope,
            name,
            api_keys,
            expires,
        }) => {
            let path = match api_keys {
                Some(p) => p,
                None => state::ensure_state_dir()?.join(state::DEFAULT_API_KEYS_FILE),
            };
            let expires = expires
                .map(|t| timefmt::parse_time(&t).context("--expires"))
                .transpose()?;
            let created = apikeys::create_key_at(
                &path,
                scope,
                name.as_deref(),
                apikeys::unix_now(),
                expires,
            )?;
            let mut out = std::io::stdout().lock();
            writeln!(
                out,
                "Created API key '{}' with scope {} in {}\n\
                 (a running server picks it up on SIGHUP).\n\
                 It is shown only now; store it safely. Key: {}",
                created.entry.name,
                created.entry.scope,
                path.display(),
                created.key.as_str()
            )?;
            Ok(())
        }
    }
}

fn kek_path(arg: Option<&Path>) -> Result<PathBuf> {
    match arg {
        Some(p) => Ok(p.to_path_buf()),
        None => Ok(state::ensure_state_dir()?.join(state::DEFAULT_KEK_FILE)),
    }
}

/// Reads the keyring file at `path` (created with a new key if missing, saying so); returns
/// the id of its current key.
fn load_kek(path: &Path) -> Result<KeyId> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        state::create_private_dir(parent)?;
    }
    let (file, created) = KeyringFile::load_or_create(path)
        .with_context(|| format!("key-encryption key {}", path.display()))?;
    if created {
        eprintln!(
            "codereader-verifier: created a new key-encryption key ({}) in {} (mode 0600). \
             Back it up: the stored seeds cannot be opened without it.",
            file.current_id(),
            path.display()
        );
    }
    Ok(file.current_id().clone())
}

fn db_spec(arg: Option<&str>) -> Result<StoreAddress> {
    match arg {
        Some(text) => text
            .parse()
            .with_context(|| format!("unknown database '{text}'")),
        None => Ok(StoreAddress::Sqlite(
            state::ensure_state_dir()?.join(state::DEFAULT_DB_FILE),
        )),
    }
}

fn open_library(store: &StoreArgs, config: LibraryConfig) -> Result<Library> {
    Library::open_with_key_files(&db_spec(store.db.as_deref())?, &key_files(store)?, config)
}

/// The keyring's files (the `--kek-file` one created if missing, saying so), or the
/// `--kek pkcs11:` key.
fn key_files(store: &StoreArgs) -> Result<KeyFiles> {
    let hsm = Arc::new(HsmKeys::new(store.hsm.config()));
    if let Some(uri) = &store.kek {
        if !uri.starts_with("pkcs11:") {
            bail!("--kek takes a pkcs11: URI; a key file is --kek-file");
        }
        return Ok(KeyFiles {
            kek_file: PathBuf::new(),
            old: store.old_kek_file.clone(),
            kek_uri: Some(uri.clone()),
            hsm,
        });
    }
    let kek_file = kek_path(store.kek_file.as_deref())?;
    load_kek(&kek_file)?;
    Ok(KeyFiles {
        kek_file,
        old: store.old_kek_file.clone(),
        kek_uri: None,
        hsm,
    })
}

/// Commands that change the keyring file refuse `--kek pkcs11:` (there is no file to change).
fn keyring_file_needed(store: &StoreArgs, command: &str) -> Result<()> {
    if store.kek.is_some() {
        bail!(
            "`token {command}` changes the keyring file, and --kek names no file: use \
             --kek-file with a keyring whose current line names the module key (`token \
             rotate-kek --new-kek pkcs11:...` writes it)"
        );
    }
    Ok(())
}

fn serve(args: ServeArgs, settings: Option<SettingsSource>) -> Result<()> {
    let keys_path = match &args.api_keys {
        Some(p) => p.clone(),
        None => state::ensure_state_dir()?.join(state::DEFAULT_API_KEYS_FILE),
    };
    let keys = ApiKeys::load(&keys_path)?;
    if keys.entries().is_empty() {
        eprintln!(
            "codereader-verifier: no API keys in {}; every /v1 call will be refused. \
             Create one with `codereader-verifier api-key create --scope verify`.",
            keys_path.display()
        );
    }
    let db = db_spec(args.store.db.as_deref())?;
    let store_concurrency = args.store_concurrency.unwrap_or(match db {
        StoreAddress::Sqlite(_) => args.blocking_threads,
        StoreAddress::Postgres(_) => args.pg_connections.max(1),
    });
    let config = LibraryConfig {
        max_failures: args.max_failures,
        sqlite_full_sync: !args.sqlite_normal_sync,
        pg_connections: args.pg_connections.max(1),
        pg_deadline: std::time::Duration::from_millis(args.pg_deadline_ms.max(1)),
        // Every store call that may run at once keeps its read connection open.
        sqlite_connections: store_concurrency.max(1),
        key_cache: args.key_cache,
        client_budget: (args.client_failures > 0).then_some(ClientBudget {
            failures: args.client_failures,
            window_seconds: args.client_window_s.max(1),
        }),
        failure_delay: doubling(args.failure_delay_s, args.failure_delay_max_s),
        temporary_lock: doubling(args.lock_period_s, args.lock_period_max_s),
        unknown_as_rejected: args.unknown_as_rejected,
    };
    let library = open_library(&args.store, config)?;
    eprintln!(
        "codereader-verifier: keyring {}",
        library.describe_keyring()
    );
    let (hooks, destinations) = webhooks::prepare(&args.webhook)?;
    let timing = WebhookTiming {
        retry_for: Duration::from_secs(args.webhook_retry_for_s),
        backoff: Duration::from_millis(args.webhook_backoff_ms.max(1)),
        backoff_max: Duration::from_millis(args.webhook_backoff_max_ms.max(1)),
        timeout: Duration::from_millis(args.webhook_timeout_ms.max(1)),
        poll: Duration::from_millis(args.webhook_poll_ms.max(1)),
    };
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(TlsState::new(TlsFiles {
            cert: cert.clone(),
            key: key.clone(),
            client_ca: args.client_ca.clone(),
        })?),
        _ => None,
    };
    let limits = Limits {
        max_body: args.max_body,
        max_import_body: args.max_import_body,
        request_timeout: Duration::from_millis(args.request_timeout_ms.max(1)),
        body_timeout: Duration::from_millis(args.body_timeout_ms.max(1)),
    };
    let conn_limits = connection_limits(&args, store_concurrency, config);
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    runtime
        .enable_all()
        .max_blocking_threads(args.blocking_threads.max(1));
    if let Some(n) = args.worker_threads {
        runtime.worker_threads(n.max(1));
    }
    let runtime = runtime.build().context("cannot start the async runtime")?;
    let served = runtime.block_on(async move {
        let shutdown = http::shutdown_signal();
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("cannot listen on {}", args.listen))?;
        let local = listener.local_addr()?;
        let rejected_floor = if args.unknown_as_rejected {
            Duration::from_millis(args.rejected_floor_ms)
        } else {
            Duration::ZERO
        };
        let library = Arc::new(library);
        let keyring_reload = reload_keyring(library.clone());
        if !destinations.is_empty() {
            webhooks::start(library.clone(), hooks.clone(), destinations, timing)?;
        }
        let state = Arc::new(
            AppState::new(library, keys, store_concurrency)
                .with_rejected_floor(rejected_floor)
                .with_webhooks(hooks),
        );
        // In this order on each SIGHUP: the settings may name new files for the others.
        let keys_path = Arc::new(RwLock::new(keys_path));
        let mut reloads = Vec::new();
        if let Some(settings) = settings {
            reloads.push(reload_settings(settings, keys_path.clone(), tls.clone()));
        }
        reloads.push(keyring_reload);
        reloads.push(reload_keys(state.clone(), keys_path));
        if let Some(tls) = tls.clone() {
            reloads.push(Reload::new("TLS certificate", move || {
                tls.reload().map(|()| "the TLS certificate".to_owned())
            }));
        }
        hangup::on_sighup_in_order(reloads);
        let router = http::router(state, limits);
        {
            let scheme = if tls.is_some() { "https" } else { "http" };
            let mut out = std::io::stdout().lock();
            writeln!(out, "codereader-verifier: listening on {scheme}://{local}")?;
            out.flush()?;
        }
        let grace = limits.request_timeout + Duration::from_secs(5);
        match tls {
            Some(tls) => {
                connections::serve(listener, tls, router, shutdown, grace, conn_limits).await
            }
            None => {
                let plain = Arc::new(Plain);
                connections::serve(listener, plain, router, shutdown, grace, conn_limits).await
            }
        }
        .context("server failed")?;
        eprintln!("codereader-verifier: stopped");
        Ok(())
    });
    // A store call still running past the grace period (a query stuck on a lock, say) must
    // not keep the process from exiting: dropping the runtime would wait for it forever.
    runtime.shutdown_timeout(Duration::from_secs(1));
    served
}

/// A doubling wait from `base` seconds up to `max` (0: none).
fn doubling(base: u64, max: u64) -> Option<FailureDelay> {
    (base > 0).then_some(FailureDelay {
        base_seconds: base,
        max_seconds: max.max(base),
    })
}

/// The connection deadlines, and the cap: what the descriptor limit (raised to its hard
/// value) leaves beside the store's own descriptors, or `--max-connections` within that.
fn connection_limits(
    args: &ServeArgs,
    store_concurrency: usize,
    config: LibraryConfig,
) -> ConnLimits {
    let store_connections = match args.store.db.as_deref().map(str::parse) {
        Some(Ok(StoreAddress::Postgres(_))) => config.pg_connections,
        _ => store_concurrency,
    };
    let reserved = connections::reserved_descriptors(store_connections);
    let (budget, limit) = connections::descriptor_budget(reserved);
    let max_connections = match args.max_connections {
        Some(n) if n > budget => {
            eprintln!(
                "codereader-verifier: --max-connections {n} does not fit the descriptor limit \
                 ({}); holding at most {budget}",
                limit.map_or_else(|| "none".to_owned(), |l| l.to_string())
            );
            budget
        }
        Some(n) => n.max(1),
        None => budget,
    };
    ConnLimits {
        head_timeout: Duration::from_millis(args.head_timeout_ms.max(1)),
        idle_timeout: Duration::from_millis(args.idle_timeout_ms.max(1)),
        max_connections,
    }
}

/// Where `serve`'s settings came from, for SIGHUP to read them again: the command line as
/// given (it still wins over the file), the file, and the settings running now.
struct SettingsSource {
    argv: Vec<OsString>,
    file: PathBuf,
    running: Settings,
}

/// The flags a SIGHUP applies from a changed settings file: file paths the later reloads read
/// (TLS only while it is on). Any other change is logged as needing a restart.
const RELOADABLE: &[&str] = &["api_keys", "tls_cert", "tls_key", "client_ca"];

/// Re-reads the settings file on SIGHUP: applies what can change while the server runs (the
/// API-key file's path, before the API-key reload reads it; the TLS files, loaded at once)
/// and logs the keys that changed but need a restart. A file that does not load, or TLS
/// files that do not, change nothing.
fn reload_settings(
    source: SettingsSource,
    keys_path: Arc<RwLock<PathBuf>>,
    tls: Option<Arc<TlsState>>,
) -> Reload {
    let SettingsSource {
        argv,
        file,
        running,
    } = source;
    let running = Mutex::new(running);
    Reload::new("settings", move || {
        let root = Cli::command();
        let (merged, _) = config_file::merge(&root, "serve", &argv)?;
        let matches = root.clone().try_get_matches_from(&merged)?;
        let (Some(command), Some(matches)) = (
            root.find_subcommand("serve"),
            matches.subcommand_matches("serve"),
        ) else {
            bail!("no `serve` in the command line");
        };
        let new = Settings::of(command, matches);
        let args = ServeArgs::from_arg_matches(matches)?;
        let mut running = running.lock().unwrap_or_else(PoisonError::into_inner);
        let changed = running.changed(&new);
        let changes = |id: &str| changed.iter().any(|(c, _)| c == id);
        let tls_changed = ["tls_cert", "tls_key", "client_ca"]
            .iter()
            .any(|id| changes(id));
        let (mut applied, mut restart) = (Vec::new(), Vec::new());
        // TLS first: files that do not load stop the reload before anything else changes.
        let tls_applies = match (&tls, &args.tls_cert, &args.tls_key) {
            (Some(tls), Some(cert), Some(key)) if tls_changed => {
                tls.replace_files(TlsFiles {
                    cert: cert.clone(),
                    key: key.clone(),
                    client_ca: args.client_ca.clone(),
                })?;
                true
            }
            _ => false,
        };
        for (id, key) in &changed {
            let applies = match id.as_str() {
                "api_keys" => {
                    *keys_path.write().unwrap_or_else(PoisonError::into_inner) =
                        api_keys_path(args.api_keys.clone())?;
                    true
                }
                "tls_cert" | "tls_key" | "client_ca" => tls_applies,
                _ => false,
            };
            debug_assert!(!applies || RELOADABLE.contains(&id.as_str()));
            if applies {
                running.adopt(&new, id);
                applied.push(format!("`{key}`"));
            } else {
                restart.push(format!("`{key}`"));
            }
        }
        if !restart.is_empty() {
            // Names only: a value may hold a secret (a password in --db).
            eprintln!(
                "codereader-verifier: SIGHUP: {} changed in {} and need(s) a restart; \
                 running on with the values from the start",
                restart.join(", "),
                file.display()
            );
        }
        Ok(format!(
            "settings from {}: {}",
            file.display(),
            if applied.is_empty() {
                "nothing applied".to_owned()
            } else {
                format!("applied {}", applied.join(", "))
            }
        ))
    })
}

/// Re-reads the API-key file on SIGHUP, so keys created or removed while the server runs
/// take effect without a restart. A file that does not parse keeps the old keys.
fn reload_keys(state: Arc<AppState>, path: Arc<RwLock<PathBuf>>) -> Reload {
    Reload::new("API keys", move || {
        let path = path.read().unwrap_or_else(PoisonError::into_inner).clone();
        let keys = ApiKeys::load(&path)?;
        let count = keys.entries().len();
        state.replace_keys(keys);
        Ok(format!("{count} API key(s) from {}", path.display()))
    })
}

fn token(command: TokenCommand) -> Result<()> {
    let caller = service::caller(&format!(
        "cli:{}",
        std::env::var("USER").unwrap_or_else(|_| "operator".to_owned())
    ))?;
    let config = LibraryConfig::default();
    let mut out = std::io::stdout().lock();
    match command {
        TokenCommand::Add { serial, uri, store } => {
            let uri = if uri == "-" {
                let mut text = Zeroizing::new(String::new());
                std::io::stdin()
                    .read_to_string(&mut text)
                    .context("cannot read the URI from stdin")?;
                Zeroizing::new(text.trim().to_owned())
            } else {
                Zeroizing::new(uri)
            };
            let library = open_library(&store, config)?;
            let label = uri_label(&uri);
            let info =
                library.enroll(&service::token_id(&serial)?, &Enrollment::Uri(uri), &caller)?;
            writeln!(out, "enrolled:")?;
            print_token(&mut out, &wire::Token::from(&info))?;
            if let Some(label) = label {
                writeln!(out, "{label}")?;
            }
        }
        TokenCommand::Import {
            pskc,
            preshared_key_file,
            allow_short_secret,
            store,
        } => {
            let text = std::fs::read_to_string(&pskc)
                .with_context(|| format!("cannot read {}", pskc.display()))?;
            let psk = match preshared_key_file {
                Some(path) => {
                    let hex = Zeroizing::new(
                        std::fs::read_to_string(&path)
                            .with_context(|| format!("cannot read {}", path.display()))?,
                    );
                    Some(Zeroizing::new(
                        data_encoding::HEXLOWER_PERMISSIVE
                            .decode(hex.trim().as_bytes())
                            .map_err(|_| anyhow::anyhow!("{} must hold hex", path.display()))?,
                    ))
                }
                None => None,
            };
            let library = open_library(&store, config)?;
            let report = wire::Imported::from(&library.import_pskc(
                &text,
                psk.as_ref().map(|k| k.as_slice()),
                allow_short_secret,
                &caller,
            )?);
            for refused in &report.rejected {
                writeln!(out, "refused {}: {}", refused.id, refused.reason)?;
            }
            print_imported(&mut out, &report.imported)?;
            if !report.rejected.is_empty() {
                // The library's reason says short keys need explicit permission; name it.
                let short = !allow_short_secret
                    && report
                        .rejected
                        .iter()
                        .any(|r| r.reason.contains("(128 bits)"));
                bail!(
                    "{} key(s) were refused{}",
                    report.rejected.len(),
                    if short {
                        "; --allow-short-secret accepts secrets shorter than 128 bits"
                    } else {
                        ""
                    }
                );
            }
        }
        TokenCommand::List { store } => {
            let library = open_library(&store, config)?;
            for info in library.list()? {
                let token = wire::Token::from(&info);
                writeln!(
                    out,
                    "{}\t{}\t{}\t{}",
                    token.serial,
                    token.kind,
                    token.user.as_deref().unwrap_or("-"),
                    token.status()
                )?;
            }
        }
        TokenCommand::Show { serial, store } => {
            let library = open_library(&store, config)?;
            let info = library.show(&service::token_id(&serial)?)?;
            print_token(&mut out, &wire::Token::from(&info))?;
        }
        TokenCommand::Unlock { serial, store } => {
            let library = open_library(&store, config)?;
            let info = library.unlock(&service::token_id(&serial)?, &caller)?;
            writeln!(out, "unlocked {}", info.id)?;
        }
        TokenCommand::Disable { serial, store } => {
            let library = open_library(&store, config)?;
            let info = library.disable(&service::token_id(&serial)?, &caller)?;
            writeln!(out, "disabled {}", info.id)?;
        }
        TokenCommand::RotateKek {
            new_kek_file,
            new_kek,
            stage,
            use_key,
            store,
        } => {
            let new = match (new_kek_file, new_kek) {
                (Some(file), _) => Some(NewKey::File(file)),
                (None, Some(uri)) => Some(NewKey::Hsm(uri)),
                (None, None) => None,
            };
            rotate_kek(
                &mut out,
                &store,
                new.as_ref(),
                stage,
                use_key.as_deref(),
                &caller,
            )?
        }
        TokenCommand::PruneKek { store } => prune_kek(&mut out, &store)?,
        TokenCommand::Events {
            after,
            follow,
            interval_ms,
            store,
        } => {
            let library = open_library(&store, config)?;
            let mut after = after;
            loop {
                let page = library.events_after(after, wire::MAX_EVENT_PAGE)?;
                for event in &page {
                    serde_json::to_writer(&mut out, &wire::EventBody::of(event))?;
                    writeln!(out)?;
                }
                out.flush()?;
                match page.last() {
                    Some(last) => after = last.id,
                    None if follow => {
                        std::thread::sleep(Duration::from_millis(interval_ms.max(1)));
                    }
                    None => break,
                }
            }
        }
        TokenCommand::Audit {
            serial,
            all: _,
            since,
            limit,
            json,
            store,
        } => {
            let library = open_library(&store, config)?;
            let show = |out: &mut dyn Write, entry: &AuditEntry| print_audit(out, entry, json);
            match serial {
                Some(serial) => {
                    let serial = service::token_id(&serial)?;
                    let mut left = limit.unwrap_or(wire::DEFAULT_AUDIT_LIMIT);
                    let mut before = None;
                    while left > 0 {
                        let page = library.audit(&serial, before, left.min(MAX_AUDIT_PAGE))?;
                        let Some(last) = page.last() else { break };
                        before = Some(last.seq);
                        left -= page.len();
                        for entry in &page {
                            show(&mut out, entry)?;
                        }
                    }
                }
                None => {
                    let since = timefmt::parse_time(since.as_deref().unwrap_or_default())
                        .context("--since")?;
                    let mut left = limit.unwrap_or(usize::MAX);
                    let mut after = None;
                    while left > 0 {
                        let page = library.audit_since(
                            UnixTime(since),
                            after,
                            left.min(MAX_AUDIT_PAGE),
                        )?;
                        let Some(last) = page.last() else { break };
                        after = Some(last.seq);
                        left -= page.len();
                        for entry in &page {
                            show(&mut out, entry)?;
                        }
                    }
                }
            }
        }
    }
    Ok(())
}

fn print_token(out: &mut impl Write, view: &wire::Token) -> Result<()> {
    writeln!(out, "serial     {}", view.serial)?;
    writeln!(out, "user       {}", view.user.as_deref().unwrap_or("-"))?;
    writeln!(
        out,
        "kind       {} {} {} digits{}",
        view.kind,
        view.algorithm,
        view.digits,
        view.period.map(|p| format!(", {p} s")).unwrap_or_default()
    )?;
    writeln!(out, "status     {}", view.status())?;
    writeln!(out, "next       {}", view.next)?;
    writeln!(out, "drift      {}", view.drift)?;
    writeln!(out, "failures   {}", view.failures)?;
    writeln!(out, "key        {}", view.key_id)?;
    Ok(())
}

/// Where `token rotate-kek` takes the new key from.
enum NewKey {
    /// A key file (created if missing).
    File(PathBuf),
    /// A key in a PKCS#11 module (created if missing).
    Hsm(String),
}

/// `token rotate-kek`: changes the keyring file first (so that whatever happens next, the
/// file names a key for every seal), then re-encrypts.
fn rotate_kek(
    out: &mut impl Write,
    store: &StoreArgs,
    new_key: Option<&NewKey>,
    stage: bool,
    use_key: Option<&str>,
    caller: &Caller,
) -> Result<()> {
    keyring_file_needed(store, "rotate-kek")?;
    let files = key_files(store)?;
    let path = &files.kek_file;
    let mut keyring = KeyringFile::read(path)
        .with_context(|| format!("key-encryption key {}", path.display()))?;
    if stage {
        let id = match new_key {
            // A module key is staged like a file key: named as `open` in the file, so every
            // server can open its seals before any server seals with it.
            Some(NewKey::Hsm(uri)) => {
                let key = files
                    .hsm
                    .open(uri, true)
                    .with_context(|| format!("key-encryption key {}", without_query(uri)))?;
                keyring.add_hsm(SealingKey::id(&key).clone(), uri)
            }
            _ => keyring.stage_new()?,
        };
        keyring.write(path)?;
        writeln!(
            out,
            "staged key {id} in {} (opens, does not seal yet). Copy the file to every server \
             and send them SIGHUP; then run `token rotate-kek --use {id}`.",
            path.display()
        )?;
        return Ok(());
    }
    let new_id = match (use_key, new_key) {
        (Some(id), _) => {
            let id = KeyId::new(id).context("--use needs a key id")?;
            keyring.promote(&id)?;
            id
        }
        (None, Some(NewKey::File(file))) => {
            let new = load_kek(file)?;
            let other = KeyringFile::read(file)
                .with_context(|| format!("key-encryption key {}", file.display()))?;
            let id = keyring.add_open(&other);
            debug_assert_eq!(id, new);
            keyring.promote(&id)?;
            id
        }
        (None, Some(NewKey::Hsm(uri))) => {
            // Opened (or created) now, so that a wrong PIN or a missing token stops the
            // rotation before the keyring file changes.
            let key = files
                .hsm
                .open(uri, true)
                .with_context(|| format!("key-encryption key {}", without_query(uri)))?;
            let id = keyring.add_hsm(SealingKey::id(&key).clone(), uri);
            keyring.promote(&id)?;
            id
        }
        (None, None) => {
            let id = keyring.stage_new()?;
            keyring.promote(&id)?;
            id
        }
    };
    keyring.write(path)?;
    let library = Library::open_with_key_files(
        &db_spec(store.db.as_deref())?,
        &files,
        LibraryConfig::default(),
    )?;
    let report = library.rotate(caller)?;
    for (serial, reason) in &report.failed {
        writeln!(out, "cannot open the seed of {serial}: {reason}")?;
    }
    writeln!(
        out,
        "re-encrypted {} seed(s) under {new_id}, now the current key of {} (the older keys \
         stay in it, to open). Running servers pick it up on SIGHUP or when they meet a seed \
         sealed under it; restarts need no new options.",
        report.resealed,
        path.display(),
    )?;
    if !report.failed.is_empty() {
        bail!("{} seed(s) could not be re-encrypted", report.failed.len());
    }
    Ok(())
}

/// `token prune-kek`: drops the keys that only open, refusing while a seed is sealed under
/// one of them.
fn prune_kek(out: &mut impl Write, store: &StoreArgs) -> Result<()> {
    keyring_file_needed(store, "prune-kek")?;
    let files = key_files(store)?;
    let path = &files.kek_file;
    let mut keyring = KeyringFile::read(path)
        .with_context(|| format!("key-encryption key {}", path.display()))?;
    let library = Library::open_with_key_files(
        &db_spec(store.db.as_deref())?,
        &files,
        LibraryConfig::default(),
    )?;
    let left = library.seeds_not_under_current()?;
    if left > 0 {
        bail!(
            "{left} seed(s) are still sealed under older keys; run \
             `token rotate-kek --use {}` first",
            keyring.current_id()
        );
    }
    let removed = keyring.retire_open();
    keyring.write(path)?;
    let removed: Vec<String> = removed.iter().map(ToString::to_string).collect();
    writeln!(
        out,
        "removed {} key(s) from {}{}{}; {} is the only key. Copy the file to every server and \
         send them SIGHUP.",
        removed.len(),
        path.display(),
        if removed.is_empty() { "" } else { ": " },
        removed.join(" "),
        keyring.current_id()
    )?;
    Ok(())
}

/// Reloads the keyring files on SIGHUP (beside the API keys, which their own handler
/// reloads): after `token rotate-kek` or a copied keyring file, without a restart.
fn reload_keyring(library: Arc<Library>) -> Reload {
    Reload::new("keyring", move || {
        library
            .reload_keyring()
            .map(|d| format!("the keyring: {d}"))
    })
}

/// One audit line: tab-separated columns (time, token, action, outcome, caller, user), or a
/// JSON object (one a line, for a SIEM) with the time in RFC 3339 beside the Unix seconds.
fn print_audit(out: &mut dyn Write, entry: &AuditEntry, json: bool) -> Result<()> {
    let line = wire::AuditLine::from(entry);
    if json {
        let line = wire::AuditLine {
            time: Some(timefmt::rfc3339(line.at)),
            ..line
        };
        writeln!(out, "{}", serde_json::to_string(&line)?)?;
    } else {
        writeln!(
            out,
            "{}\t{}\t{}\t{}\t{}\t{}",
            timefmt::rfc3339(line.at),
            line.token.as_deref().unwrap_or("-"),
            line.action,
            line.outcome,
            line.caller,
            line.user.as_deref().unwrap_or("-"),
        )?;
    }
    Ok(())
}

fn api_keys_path(arg: Option<PathBuf>) -> Result<PathBuf> {
    match arg {
        Some(p) => Ok(p),
        None => Ok(state::state_dir()?.join(state::DEFAULT_API_KEYS_FILE)),
    }
}

/// `api-key list`: names, scopes and dates; never a key or a hash.
fn list_api_keys(api_keys: Option<PathBuf>) -> Result<()> {
    let keys = ApiKeys::load(&api_keys_path(api_keys)?)?;
    let now = apikeys::unix_now();
    let mut out = std::io::stdout().lock();
    for entry in keys.entries() {
        let when = |t: Option<u64>, none: &str| t.map_or_else(|| none.to_owned(), timefmt::rfc3339);
        writeln!(
            out,
            "{}\t{}\tcreated {}\texpires {}{}{}",
            entry.name,
            entry.scope,
            when(entry.created, "unknown"),
            when(entry.expires, "never"),
            if entry.expired(now) { "\texpired" } else { "" },
            if entry.certificate {
                "\tclient certificate"
            } else {
                ""
            },
        )?;
    }
    Ok(())
}

/// `api-key revoke --name N`.
fn revoke_api_key(name: &str, api_keys: Option<PathBuf>, db: Option<&str>) -> Result<()> {
    let path = api_keys_path(api_keys)?;
    let entry = apikeys::revoke_key(&path, name)?;
    // The file first: a revocation must not wait on the database. The event follows; if
    // the database is unreachable the command says so and fails, the key stays revoked.
    let address = match db {
        Some(text) => Some(db_spec(Some(text))?),
        None => {
            // Only a database that exists: revoking a key never creates one.
            let default = state::state_dir()?.join(state::DEFAULT_DB_FILE);
            default.exists().then_some(StoreAddress::Sqlite(default))
        }
    };
    if let Some(address) = address {
        let caller = service::caller(&format!(
            "cli:{}",
            std::env::var("USER").unwrap_or_else(|_| "operator".to_owned())
        ))?;
        let line = codereader_verifier::Verifier::notice(
            codereader_verifier::NoticeAction::ApiKeyRevoked,
            &entry.name,
            UnixTime(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs()),
            ),
            &caller,
        );
        let store = address
            .open()
            .context("the key is revoked, but its event could not be recorded")?;
        store
            .write(move |tx| tx.append_audit(&line))
            .and_then(|written| written)
            .context("the key is revoked, but its event could not be recorded")?;
    }
    writeln!(
        std::io::stdout().lock(),
        "revoked API key '{}' ({}) in {}; a running server stops accepting it on SIGHUP.",
        entry.name,
        entry.scope,
        path.display()
    )?;
    Ok(())
}

/// "imported 2 token(s): A B", or "imported 0 token(s)" without a dangling colon.
fn print_imported(out: &mut impl Write, imported: &[String]) -> Result<()> {
    if imported.is_empty() {
        writeln!(out, "imported 0 token(s)")?;
    } else {
        writeln!(
            out,
            "imported {} token(s): {}",
            imported.len(),
            imported.join(" ")
        )?;
    }
    Ok(())
}

/// The account (and issuer) an otpauth URI names, for `token add` to show beside the
/// unbound `user` line: enrolment does not bind a user (activation does, with a code).
fn uri_label(uri: &str) -> Option<String> {
    let parsed =
        codereader_otp::KeyUri::parse(uri, codereader_otp::KeyPolicy::AllowLegacyShort).ok()?;
    let account = parsed.account();
    if account.is_empty() {
        return None;
    }
    let issuer = parsed
        .issuer()
        .map(|i| format!(" at {i}"))
        .unwrap_or_default();
    Some(format!(
        "account    {account}{issuer} (from the URI; `activate` binds the token to a user \
         with a code)"
    ))
}

/// `api-key add-cert`: registers the first certificate of a PEM file.
fn add_certificate(
    scope: Scope,
    name: Option<&str>,
    cert: &Path,
    expires: Option<&str>,
    api_keys: Option<PathBuf>,
) -> Result<()> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let der = CertificateDer::from_pem_file(cert)
        .with_context(|| format!("cannot read a certificate from {}", cert.display()))?;
    let expires = expires
        .map(|t| timefmt::parse_time(t).context("--expires"))
        .transpose()?;
    let path = match api_keys {
        Some(p) => p,
        None => state::ensure_state_dir()?.join(state::DEFAULT_API_KEYS_FILE),
    };
    let entry = apikeys::add_certificate(&path, scope, name, &der, apikeys::unix_now(), expires)?;
    writeln!(
        std::io::stdout().lock(),
        "Registered the client certificate of {} as '{}' with scope {} in {}\n\
         (a running server picks it up on SIGHUP; it needs --client-ca).",
        cert.display(),
        entry.name,
        entry.scope,
        path.display()
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use clap::ArgAction;
    use codereader_verifier_server::config_file::{ConfigError, ConfigFile};

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
