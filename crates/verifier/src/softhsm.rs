//! A throw-away SoftHSM2 token store for tests and benchmarks (features `testing` and
//! `pkcs11`).
//!
//! [`SoftHsm::new`] writes a `softhsm2.conf` pointing at a token directory inside a temporary
//! directory; [`SoftHsm::init_token`] runs Debian's `softhsm2-util --init-token` there.
//! SoftHSM reads `SOFTHSM2_CONF` when the module is initialised, once per process, so the
//! code using the token runs in a child process given [`SoftHsm::env`] (the server binary, or
//! the test binary again: see [`SoftHsm::run_test_in_child`]). Dropping the value removes the
//! directory and every token in it.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::testing::HarnessError;

/// Where Debian installs the SoftHSM2 module.
pub const MODULE_PATHS: [&str; 2] = [
    "/usr/lib/softhsm/libsofthsm2.so",
    "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
];

/// Environment variable the child process of [`SoftHsm::run_test_in_child`] sees.
pub const CHILD_ENV: &str = "CODEREADER_SOFTHSM_CHILD";

/// A SoftHSM2 configuration and token directory in a temporary directory.
#[derive(Debug)]
pub struct SoftHsm {
    dir: tempfile::TempDir,
}

impl SoftHsm {
    /// The SoftHSM2 module installed by the Debian package `softhsm2`.
    ///
    /// # Errors
    /// [`HarnessError::NotFound`]-like [`HarnessError::Step`] when it is not installed.
    pub fn module() -> Result<PathBuf, HarnessError> {
        MODULE_PATHS
            .iter()
            .map(PathBuf::from)
            .find(|p| p.exists())
            .ok_or(HarnessError::Step {
                step: "finding libsofthsm2.so",
                detail: "install the Debian package softhsm2".to_owned(),
            })
    }

    /// A fresh, empty token store.
    ///
    /// # Errors
    /// [`HarnessError::Step`] if the directory cannot be written.
    pub fn new() -> Result<Self, HarnessError> {
        let io = |step| {
            move |e: std::io::Error| HarnessError::Step {
                step,
                detail: e.to_string(),
            }
        };
        let dir = tempfile::tempdir().map_err(io("creating the SoftHSM directory"))?;
        let tokens = dir.path().join("tokens");
        std::fs::create_dir(&tokens).map_err(io("creating the token directory"))?;
        std::fs::write(
            dir.path().join("softhsm2.conf"),
            format!(
                "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n",
                tokens.display()
            ),
        )
        .map_err(io("writing softhsm2.conf"))?;
        Ok(SoftHsm { dir })
    }

    /// The configuration file (the value of `SOFTHSM2_CONF`).
    pub fn conf(&self) -> PathBuf {
        self.dir.path().join("softhsm2.conf")
    }

    /// The temporary directory (room for PIN files and the like).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The environment a process using these tokens needs.
    pub fn env(&self) -> Vec<(&'static str, PathBuf)> {
        vec![("SOFTHSM2_CONF", self.conf())]
    }

    /// Creates a token labelled `label` in the first free slot, with this user PIN.
    ///
    /// # Errors
    /// [`HarnessError::Step`] if `softhsm2-util` is missing or fails.
    pub fn init_token(&self, label: &str, user_pin: &str) -> Result<(), HarnessError> {
        let output = Command::new("softhsm2-util")
            .env("SOFTHSM2_CONF", self.conf())
            .args(["--init-token", "--free", "--label", label])
            .args(["--so-pin", "so-secret-1234", "--pin", user_pin])
            .output()
            .map_err(|e| HarnessError::Step {
                step: "running softhsm2-util (install the Debian package softhsm2)",
                detail: e.to_string(),
            })?;
        if !output.status.success() {
            return Err(HarnessError::Step {
                step: "softhsm2-util --init-token",
                detail: format!(
                    "{}: {}",
                    output.status,
                    String::from_utf8_lossy(&output.stderr)
                ),
            });
        }
        Ok(())
    }

    /// Runs the test `name` of the current test binary again in a child process that sees
    /// this token store, and returns whether it passed, with its output. The child finds
    /// [`CHILD_ENV`] set; a test calls this only when it is not.
    ///
    /// # Errors
    /// [`HarnessError::Step`] if the child cannot be started.
    pub fn run_test_in_child(&self, name: &str) -> Result<(bool, String), HarnessError> {
        let exe = std::env::current_exe().map_err(|e| HarnessError::Step {
            step: "finding the test binary",
            detail: e.to_string(),
        })?;
        let output = Command::new(exe)
            .args([name, "--exact", "--nocapture", "--test-threads=1"])
            .env("SOFTHSM2_CONF", self.conf())
            .env(CHILD_ENV, self.dir.path())
            .output()
            .map_err(|e| HarnessError::Step {
                step: "running the test in a child",
                detail: e.to_string(),
            })?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        // A filter that matched nothing also exits 0: make sure the test ran.
        let ran = text.contains("1 passed");
        Ok((output.status.success() && ran, text))
    }
}
