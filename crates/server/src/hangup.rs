//! Work done on SIGHUP: each reloadable thing (settings file, keyring, API keys, TLS
//! certificate) registers a reload that runs off the async threads, and its outcome is
//! logged. A reload that fails keeps the old state, so a bad file never takes a running
//! server down.

use std::sync::Arc;

use anyhow::Result;

/// One reload: what it reloads (for the log) and how.
pub struct Reload {
    what: &'static str,
    run: Arc<dyn Fn() -> Result<String> + Send + Sync>,
}

impl Reload {
    /// A reload of `what` by `run`, which returns what it loaded, for the log.
    pub fn new(
        what: &'static str,
        run: impl Fn() -> Result<String> + Send + Sync + 'static,
    ) -> Self {
        Reload {
            what,
            run: Arc::new(run),
        }
    }
}

/// On every SIGHUP, runs `reload` on a blocking thread and logs "reloaded " followed by
/// what it returns (e.g. "the keyring: current kek-..."), or "keeping the old WHAT: ..."
/// with its error. Call inside the runtime.
pub fn on_sighup(what: &'static str, reload: impl Fn() -> Result<String> + Send + Sync + 'static) {
    on_sighup_in_order(vec![Reload::new(what, reload)]);
}

/// Like [`on_sighup`] for several reloads that run one after the other, in this order, on
/// each SIGHUP: the settings file first, so that a path it changes is the one the next
/// reloads read.
pub fn on_sighup_in_order(reloads: Vec<Reload>) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut hangups = match signal(SignalKind::hangup()) {
            Ok(s) => s,
            Err(e) => {
                let what: Vec<&str> = reloads.iter().map(|r| r.what).collect();
                eprintln!(
                    "codereader-verifier: cannot watch SIGHUP ({e}); {} load at start only",
                    what.join(", ")
                );
                return;
            }
        };
        tokio::spawn(async move {
            while hangups.recv().await.is_some() {
                for reload in &reloads {
                    let (what, run) = (reload.what, reload.run.clone());
                    match tokio::task::spawn_blocking(move || run()).await {
                        Ok(Ok(described)) => {
                            eprintln!("codereader-verifier: reloaded {described}")
                        }
                        Ok(Err(e)) => {
                            eprintln!("codereader-verifier: SIGHUP: keeping the old {what}: {e:#}")
                        }
                        Err(e) => eprintln!("codereader-verifier: SIGHUP: reloading {what}: {e}"),
                    }
                }
            }
        });
    }
    #[cfg(not(unix))]
    {
        let _ = reloads;
    }
}
