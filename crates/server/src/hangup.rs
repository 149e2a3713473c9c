//! Work done on SIGHUP: each reloadable thing (keyring, TLS certificate) registers a reload
//! that runs off the async threads, and its outcome is logged. A reload that fails keeps the
//! old state, so a bad file never takes a running server down.

use anyhow::Result;

/// On every SIGHUP, runs `reload` on a blocking thread and logs "reloaded " followed by
/// what it returns (e.g. "the keyring: current kek-..."), or "keeping the old WHAT: ..."
/// with its error. Call inside the runtime.
pub fn on_sighup(what: &'static str, reload: impl Fn() -> Result<String> + Send + Sync + 'static) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut hangups = match signal(SignalKind::hangup()) {
            Ok(s) => s,
            Err(e) => {
                eprintln!(
                    "codereader-verifier: cannot watch SIGHUP ({e}); {what} loads at start only"
                );
                return;
            }
        };
        let reload = std::sync::Arc::new(reload);
        tokio::spawn(async move {
            while hangups.recv().await.is_some() {
                let reload = reload.clone();
                match tokio::task::spawn_blocking(move || reload()).await {
                    Ok(Ok(described)) => {
                        eprintln!("codereader-verifier: reloaded {described}")
                    }
                    Ok(Err(e)) => {
                        eprintln!("codereader-verifier: SIGHUP: keeping the old {what}: {e:#}")
                    }
                    Err(e) => eprintln!("codereader-verifier: SIGHUP: reloading {what}: {e}"),
                }
            }
        });
    }
    #[cfg(not(unix))]
    {
        let _ = (what, reload);
    }
}
