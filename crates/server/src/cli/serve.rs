//! `serve`: the flags turned into the library's, HTTP and connection settings, the async
//! runtime and listener, and the reloads a SIGHUP runs in order (settings file, keyring, API
//! keys, TLS certificate).

use std::ffi::OsString;
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{CommandFactory, FromArgMatches};
use codereader_verifier::{ClientBudget, FailureDelay, StoreAddress};
use codereader_verifier_server::apikeys::ApiKeys;
use codereader_verifier_server::config_file::{self, Settings};
use codereader_verifier_server::connections::{self, ConnLimits, Plain};
use codereader_verifier_server::hangup::{self, Reload};
use codereader_verifier_server::http::{self, AppState, Limits};
use codereader_verifier_server::service::library::{Library, LibraryConfig};
use codereader_verifier_server::state_dir;
use codereader_verifier_server::tls::{TlsFiles, TlsState};
use codereader_verifier_server::webhooks::{self, WebhookTiming};

use super::api_key::api_keys_path;
use super::args::{Cli, ServeArgs};
use super::store::{db_spec, open_library};

pub(crate) fn serve(args: ServeArgs, settings: Option<SettingsSource>) -> Result<()> {
    let (keys_path, keys) = load_api_keys(&args)?;
    let db = db_spec(args.store.db.as_deref())?;
    let store_concurrency = args.store_concurrency.unwrap_or(match db {
        StoreAddress::Sqlite(_) => args.blocking_threads,
        StoreAddress::Postgres(_) => args.pg_connections.max(1),
    });
    let config = library_config(&args, store_concurrency);
    let library = open_library(&args.store, config)?;
    eprintln!(
        "codereader-verifier: keyring {}",
        library.describe_keyring()
    );
    let (hooks, destinations) = webhooks::prepare(&args.webhook)?;
    let timing = webhook_timing(&args);
    let tls = tls_state(&args)?;
    let limits = http_limits(&args);
    let conn_limits = connection_limits(&args, store_concurrency, config);
    let runtime = async_runtime(&args)?;
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
            reloads.push(reload_tls(tls));
        }
        hangup::on_sighup_in_order(reloads);
        let router = http::router(state, limits);
        announce(if tls.is_some() { "https" } else { "http" }, local)?;
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

/// The API-key file (`--api-keys`, else the state directory's) and its keys; a warning when
/// it holds none, since every /v1 call is then refused.
fn load_api_keys(args: &ServeArgs) -> Result<(PathBuf, ApiKeys)> {
    let keys_path = match &args.api_keys {
        Some(p) => p.clone(),
        None => state_dir::ensure_state_dir()?.join(state_dir::DEFAULT_API_KEYS_FILE),
    };
    let keys = ApiKeys::load(&keys_path)?;
    if keys.entries().is_empty() {
        eprintln!(
            "codereader-verifier: no API keys in {}; every /v1 call will be refused. \
             Create one with `codereader-verifier api-key create --scope verify`.",
            keys_path.display()
        );
    }
    Ok((keys_path, keys))
}

/// The verifier library's settings from the flags; `store_concurrency` is how many store
/// calls may run at once.
fn library_config(args: &ServeArgs, store_concurrency: usize) -> LibraryConfig {
    LibraryConfig {
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
    }
}

/// How webhooks are retried, timed out and polled for.
fn webhook_timing(args: &ServeArgs) -> WebhookTiming {
    WebhookTiming {
        retry_for: Duration::from_secs(args.webhook_retry_for_s),
        backoff: Duration::from_millis(args.webhook_backoff_ms.max(1)),
        backoff_max: Duration::from_millis(args.webhook_backoff_max_ms.max(1)),
        timeout: Duration::from_millis(args.webhook_timeout_ms.max(1)),
        poll: Duration::from_millis(args.webhook_poll_ms.max(1)),
    }
}

/// The TLS certificate and key (loaded now), when both are given; else plain HTTP.
fn tls_state(args: &ServeArgs) -> Result<Option<Arc<TlsState>>> {
    match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Ok(Some(TlsState::new(TlsFiles {
            cert: cert.clone(),
            key: key.clone(),
            client_ca: args.client_ca.clone(),
        })?)),
        _ => Ok(None),
    }
}

/// The request size and time limits.
fn http_limits(args: &ServeArgs) -> Limits {
    Limits {
        max_body: args.max_body,
        max_import_body: args.max_import_body,
        request_timeout: Duration::from_millis(args.request_timeout_ms.max(1)),
        body_timeout: Duration::from_millis(args.body_timeout_ms.max(1)),
    }
}

/// The async runtime, with `--blocking-threads` for the store calls and `--worker-threads`.
fn async_runtime(args: &ServeArgs) -> Result<tokio::runtime::Runtime> {
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    runtime
        .enable_all()
        .max_blocking_threads(args.blocking_threads.max(1));
    if let Some(n) = args.worker_threads {
        runtime.worker_threads(n.max(1));
    }
    runtime.build().context("cannot start the async runtime")
}

/// The line that says the server is ready (tests and scripts wait for it), flushed at once.
fn announce(scheme: &str, local: std::net::SocketAddr) -> Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "codereader-verifier: listening on {scheme}://{local}")?;
    out.flush()?;
    Ok(())
}

/// A doubling wait from `base` seconds up to `max` (0: none).
pub(crate) fn doubling(base: u64, max: u64) -> Option<FailureDelay> {
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
pub(crate) struct SettingsSource {
    pub(crate) argv: Vec<OsString>,
    pub(crate) file: PathBuf,
    pub(crate) running: Settings,
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

/// Reloads the TLS certificate and key on SIGHUP, from the files the settings name now.
fn reload_tls(tls: Arc<TlsState>) -> Reload {
    Reload::new("TLS certificate", move || {
        tls.reload().map(|()| "the TLS certificate".to_owned())
    })
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
