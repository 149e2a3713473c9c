//! `codereader-verifier`: the verifier HTTP service and the operators' offline commands.
//!
//! Thin glue: parse the command line, find the state directory, open the store through
//! [`codereader_verifier_server::service::Library`], then serve or run one admin operation.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};
use codereader_verifier::{KeyId, KeyringFile, SealingKey};
use codereader_verifier_server::apikeys::{self, ApiKeys, Scope};
use codereader_verifier_server::hsm::{HsmArgs, HsmKeys, without_query};
use codereader_verifier_server::http::{self, AppState, Limits};
use codereader_verifier_server::keyring::KeyFiles;
use codereader_verifier_server::service::library::{DbSpec, Library, LibraryConfig};
use codereader_verifier_server::service::{Enrollment, TokenService, TokenView};
use codereader_verifier_server::state;
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
    Serve(ServeArgs),
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
    /// SQLite: fsync only at checkpoints (`synchronous=NORMAL`). Commits survive a crash of
    /// the process but the last ones may be lost on power failure, so a just-accepted code
    /// could be accepted again after a reboot. Off by default.
    #[arg(long)]
    sqlite_normal_sync: bool,
    /// PostgreSQL: most connections this server opens.
    #[arg(long, default_value_t = codereader_verifier::store::postgres::DEFAULT_MAX_CONNECTIONS)]
    pg_connections: usize,
    /// Keep the prepared HMAC keys of up to this many recently verified tokens in memory, so
    /// their seeds need not be decrypted again (0: off, the default). Saves about half a
    /// microsecond per verification; cached keys stay in memory until evicted.
    #[arg(long, default_value_t = 0)]
    key_cache: usize,
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
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("codereader-verifier: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Serve(args) => serve(args),
        Command::Token(command) => token(command),
        Command::ApiKey(ApiKeyCommand::Create {
            scope,
            name,
            api_keys,
        }) => {
            let path = match api_keys {
                Some(p) => p,
                None => state::ensure_state_dir()?.join(state::DEFAULT_API_KEYS_FILE),
            };
            let created = apikeys::create_key(&path, scope, name.as_deref())?;
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

fn db_spec(arg: Option<&str>) -> Result<DbSpec> {
    match arg {
        Some(text) => DbSpec::parse(text),
        None => Ok(DbSpec::Sqlite(
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

fn serve(args: ServeArgs) -> Result<()> {
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
        DbSpec::Sqlite(_) => args.blocking_threads,
        DbSpec::Postgres(_) => args.pg_connections.max(1),
    });
    let config = LibraryConfig {
        max_failures: args.max_failures,
        sqlite_full_sync: !args.sqlite_normal_sync,
        pg_connections: args.pg_connections.max(1),
        // Every store call that may run at once keeps its read connection open.
        sqlite_connections: store_concurrency.max(1),
        key_cache: args.key_cache,
    };
    let library = open_library(&args.store, config)?;
    eprintln!(
        "codereader-verifier: keyring {}",
        library.describe_keyring()
    );
    let limits = Limits {
        max_body: args.max_body,
        max_import_body: args.max_import_body,
        request_timeout: Duration::from_millis(args.request_timeout_ms.max(1)),
    };
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    runtime
        .enable_all()
        .max_blocking_threads(args.blocking_threads.max(1));
    if let Some(n) = args.worker_threads {
        runtime.worker_threads(n.max(1));
    }
    let runtime = runtime.build().context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let shutdown = http::shutdown_signal();
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("cannot listen on {}", args.listen))?;
        let local = listener.local_addr()?;
        let library = Arc::new(library);
        reload_keyring_on_sighup(library.clone());
        let state = Arc::new(AppState::new(library, keys, store_concurrency));
        reload_keys_on_sighup(state.clone(), keys_path.clone());
        let router = http::router(state, limits);
        {
            let mut out = std::io::stdout().lock();
            writeln!(out, "codereader-verifier: listening on http://{local}")?;
            out.flush()?;
        }
        http::serve(
            listener,
            router,
            shutdown,
            limits.request_timeout + Duration::from_secs(5),
        )
        .await
        .context("server failed")?;
        eprintln!("codereader-verifier: stopped");
        Ok(())
    })
}

/// Re-reads the API-key file on SIGHUP, so keys created or removed while the server runs
/// take effect without a restart. A file that does not parse keeps the old keys.
fn reload_keys_on_sighup(state: Arc<AppState>, path: PathBuf) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut hangups = match signal(SignalKind::hangup()) {
            Ok(s) => s,
            Err(e) => {
                eprintln!(
                    "codereader-verifier: cannot watch SIGHUP ({e}); keys load at start only"
                );
                return;
            }
        };
        tokio::spawn(async move {
            while hangups.recv().await.is_some() {
                match ApiKeys::load(&path) {
                    Ok(keys) => {
                        let count = keys.entries().len();
                        state.replace_keys(keys);
                        eprintln!(
                            "codereader-verifier: reloaded {count} API key(s) from {}",
                            path.display()
                        );
                    }
                    Err(e) => {
                        eprintln!("codereader-verifier: SIGHUP: keeping the old API keys: {e:#}")
                    }
                }
            }
        });
    }
    #[cfg(not(unix))]
    {
        let _ = (state, path);
    }
}

fn token(command: TokenCommand) -> Result<()> {
    let caller = format!(
        "cli:{}",
        std::env::var("USER").unwrap_or_else(|_| "operator".to_owned())
    );
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
            let view = library.enroll(&serial, &Enrollment::Uri(uri), &caller)?;
            writeln!(out, "enrolled:")?;
            print_token(&mut out, &view)?;
        }
        TokenCommand::Import {
            pskc,
            preshared_key_file,
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
            let report = library.import_pskc(&text, psk.as_ref().map(|k| k.as_slice()), &caller)?;
            for (id, reason) in &report.rejected {
                writeln!(out, "refused {id}: {reason}")?;
            }
            writeln!(
                out,
                "imported {} token(s): {}",
                report.imported.len(),
                report.imported.join(" ")
            )?;
            if !report.rejected.is_empty() {
                bail!("{} key(s) were refused", report.rejected.len());
            }
        }
        TokenCommand::List { store } => {
            let library = open_library(&store, config)?;
            for view in library.list()? {
                writeln!(
                    out,
                    "{}\t{}\t{}\t{}",
                    view.serial,
                    view.kind,
                    view.user.as_deref().unwrap_or("-"),
                    status(&view)
                )?;
            }
        }
        TokenCommand::Show { serial, store } => {
            let library = open_library(&store, config)?;
            print_token(&mut out, &library.show(&serial)?)?;
        }
        TokenCommand::Unlock { serial, store } => {
            let library = open_library(&store, config)?;
            let view = library.unlock(&serial, &caller)?;
            writeln!(out, "unlocked {}", view.serial)?;
        }
        TokenCommand::Disable { serial, store } => {
            let library = open_library(&store, config)?;
            let view = library.disable(&serial, &caller)?;
            writeln!(out, "disabled {}", view.serial)?;
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
    }
    Ok(())
}

fn status(view: &TokenView) -> &'static str {
    if !view.enabled {
        "disabled"
    } else if view.locked_at.is_some() {
        "locked"
    } else if view.user.is_none() {
        "unassigned"
    } else {
        "active"
    }
}

fn print_token(out: &mut impl Write, view: &TokenView) -> Result<()> {
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
    writeln!(out, "status     {}", status(view))?;
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
    caller: &str,
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
fn reload_keyring_on_sighup(library: Arc<Library>) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let Ok(mut hangups) = signal(SignalKind::hangup()) else {
            return;
        };
        tokio::spawn(async move {
            while hangups.recv().await.is_some() {
                let library = library.clone();
                let result = tokio::task::spawn_blocking(move || library.reload_keyring()).await;
                match result {
                    Ok(Ok(described)) => {
                        eprintln!("codereader-verifier: reloaded the keyring: {described}")
                    }
                    Ok(Err(e)) => {
                        eprintln!("codereader-verifier: SIGHUP: keeping the old keyring: {e:#}")
                    }
                    Err(e) => eprintln!("codereader-verifier: SIGHUP: keyring reload: {e}"),
                }
            }
        });
    }
    #[cfg(not(unix))]
    {
        let _ = library;
    }
}
