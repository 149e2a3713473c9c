//! A throw-away PostgreSQL server for tests and benchmarks (feature `testing`).
//!
//! [`TempPostgres::start`] runs Debian's `initdb` into a temporary directory and starts the
//! server on 127.0.0.1 on a free port, with its unix socket inside that directory, so nothing
//! touches the machine's own clusters. PostgreSQL refuses to run as root: as root the server
//! runs as the `postgres` system user (created by the Debian package) through `runuser`, with
//! the directory handed over to it. Dropping the value stops the server (`pg_ctl stop -m
//! immediate`) and removes the directory.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Why the test server could not be started.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HarnessError {
    /// No `initdb` under /usr/lib/postgresql/*/bin (install the `postgresql` package) and no
    /// `CODEREADER_PG_BIN` pointing at one.
    #[error("no PostgreSQL binaries found (install the Debian package postgresql)")]
    NotFound,
    /// A step failed.
    #[error("{step} failed: {detail}")]
    Step {
        /// What was being done.
        step: &'static str,
        /// Its exit status and output, or the I/O error.
        detail: String,
    },
}

/// Settings for [`TempPostgres::start_with`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct PgOptions {
    /// Whether the server fsyncs commits. Off makes tests faster and does not change
    /// concurrency semantics; benchmarks turn it on to measure durable commits.
    pub fsync: bool,
    /// `max_connections`.
    pub max_connections: u32,
}

impl Default for PgOptions {
    fn default() -> Self {
        PgOptions {
            fsync: false,
            max_connections: 300,
        }
    }
}

impl PgOptions {
    /// Sets [`PgOptions::fsync`].
    #[must_use]
    pub fn with_fsync(mut self, fsync: bool) -> Self {
        self.fsync = fsync;
        self
    }
}

/// A running PostgreSQL server in a temporary directory, stopped on drop.
#[derive(Debug)]
pub struct TempPostgres {
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
    run_as: Option<String>,
}

fn step(step: &'static str) -> impl Fn(std::io::Error) -> HarnessError {
    move |e| HarnessError::Step {
        step,
        detail: e.to_string(),
    }
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

fn id_of(user: &str, flag: &str) -> Result<u32, HarnessError> {
    let out = Command::new("id")
        .args([flag, user])
        .output()
        .map_err(step("id"))?;
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .map_err(|_| HarnessError::Step {
            step: "looking up the postgres user",
            detail: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
}

/// The newest `/usr/lib/postgresql/N/bin` holding `initdb`, or `CODEREADER_PG_BIN`.
fn find_bin() -> Result<PathBuf, HarnessError> {
    if let Some(dir) = std::env::var_os("CODEREADER_PG_BIN") {
        return Ok(PathBuf::from(dir));
    }
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .map_err(|_| HarnessError::NotFound)?
        .filter_map(Result::ok)
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    found.sort();
    found
        .pop()
        .map(|(_, bin)| bin)
        .ok_or(HarnessError::NotFound)
}

fn free_port() -> Result<u16, HarnessError> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(step("finding a free port"))?;
    Ok(listener
        .local_addr()
        .map_err(step("finding a free port"))?
        .port())
}

impl TempPostgres {
    /// Starts a server with [`PgOptions::default`] (fsync off).
    ///
    /// # Errors
    /// [`HarnessError`] naming the step that failed, with its output.
    pub fn start() -> Result<Self, HarnessError> {
        Self::start_with(PgOptions::default())
    }

    /// Starts a server with `options`.
    ///
    /// # Errors
    /// [`HarnessError`] naming the step that failed, with its output.
    pub fn start_with(options: PgOptions) -> Result<Self, HarnessError> {
        let bin = find_bin()?;
        sweep_orphans(&bin);
        let dir = tempfile::Builder::new()
            .prefix("codereader-pg-")
            .tempdir()
            .map_err(step("creating the directory"))?;
        let run_as = if is_root() {
            let user = "postgres".to_owned();
            let (uid, gid) = (id_of(&user, "-u")?, id_of(&user, "-g")?);
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid))
                .map_err(step("handing the directory to postgres"))?;
            Some(user)
        } else {
            None
        };
        // Who owns this server: a later start stops it if this process died without dropping
        // it (killed test run), so killed runs do not leave servers behind.
        std::fs::write(dir.path().join("owner.pid"), std::process::id().to_string())
            .map_err(step("writing the owner file"))?;
        let mut server = TempPostgres {
            dir,
            bin,
            port: 0,
            run_as,
        };
        let data = server.dir.path().join("data");
        let socket = server.dir.path().join("socket");
        server.run(
            "creating the socket directory",
            Path::new("mkdir"),
            &[socket.as_os_str()],
        )?;
        server.run(
            "initdb",
            &server.bin.join("initdb"),
            &[
                "-D".as_ref(),
                data.as_os_str(),
                "-U".as_ref(),
                "postgres".as_ref(),
                "-A".as_ref(),
                "trust".as_ref(),
                "-E".as_ref(),
                "UTF8".as_ref(),
                "--no-sync".as_ref(),
            ],
        )?;
        // A port found free may be taken by someone else before the server binds it: retry.
        let mut last = None;
        for _ in 0..5 {
            let port = free_port()?;
            let settings = format!(
                "-p {port} -h 127.0.0.1 -k {} -c fsync={} -c max_connections={}",
                socket.display(),
                if options.fsync { "on" } else { "off" },
                options.max_connections,
            );
            let log = server.dir.path().join("server.log");
            match server.run(
                "pg_ctl start",
                &server.bin.join("pg_ctl"),
                &[
                    "start".as_ref(),
                    "-w".as_ref(),
                    "-t".as_ref(),
                    "60".as_ref(),
                    "-D".as_ref(),
                    data.as_os_str(),
                    "-l".as_ref(),
                    log.as_os_str(),
                    "-o".as_ref(),
                    settings.as_ref(),
                ],
            ) {
                Ok(()) => {
                    server.port = port;
                    return Ok(server);
                }
                Err(e) => {
                    let detail = std::fs::read_to_string(&log).unwrap_or_default();
                    last = Some(HarnessError::Step {
                        step: "pg_ctl start",
                        detail: format!("{e}\n{detail}"),
                    });
                }
            }
        }
        Err(last.unwrap_or(HarnessError::NotFound))
    }

    fn run(
        &self,
        what: &'static str,
        program: &Path,
        args: &[&std::ffi::OsStr],
    ) -> Result<(), HarnessError> {
        let mut command = match &self.run_as {
            Some(user) => {
                let mut c = Command::new("runuser");
                c.args(["-u", user, "--"]).arg(program);
                c
            }
            None => Command::new(program),
        };
        command.args(args).current_dir(self.dir.path());
        let out = command.output().map_err(step(what))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(HarnessError::Step {
                step: what,
                detail: format!(
                    "{}\n{}{}",
                    out.status,
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                ),
            })
        }
    }

    /// The directory of the server's programs (`initdb`, `pg_ctl`, `pgbench`, `psql`), so
    /// that a benchmark runs the client tools of the same version.
    pub fn bin(&self) -> &Path {
        &self.bin
    }

    /// The TCP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The address of the `postgres` database, for [`crate::open_store`].
    pub fn url(&self) -> String {
        self.url_of("postgres")
    }

    /// The address of database `name` on this server.
    pub fn url_of(&self, name: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{name}", self.port)
    }

    /// Creates an empty database `name` (letters, digits, `_`) and returns its address, so
    /// that tests sharing one server do not see each other's tokens.
    ///
    /// # Errors
    /// [`HarnessError::Step`] if the name is not plain or the server refuses.
    pub fn create_database(&self, name: &str) -> Result<String, HarnessError> {
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            return Err(HarnessError::Step {
                step: "create database",
                detail: "database names here are letters, digits and _".to_owned(),
            });
        }
        let fail = |e: postgres::Error| HarnessError::Step {
            step: "create database",
            detail: e.to_string(),
        };
        let mut client = postgres::Client::connect(&self.url(), postgres::NoTls).map_err(fail)?;
        client
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .map_err(fail)?;
        Ok(self.url_of(name))
    }

    /// The server's directory (data, socket, log).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Stops the server at once, as a crash or the loss of a primary would (clients see
    /// their connections fail); [`TempPostgres::restart`] brings it back.
    ///
    /// # Errors
    /// [`HarnessError::Step`] if `pg_ctl stop` fails.
    pub fn stop(&self) -> Result<(), HarnessError> {
        self.pg_ctl("pg_ctl stop", "stop", &[])
    }

    /// Starts the server again (stopped or not) on the same port, data and settings (`pg_ctl
    /// restart` reuses the options it was started with), after crash recovery.
    ///
    /// # Errors
    /// [`HarnessError::Step`] if `pg_ctl restart` fails.
    pub fn restart(&self) -> Result<(), HarnessError> {
        let log = self.dir.path().join("server.log");
        let args: [&std::ffi::OsStr; 4] =
            ["-t".as_ref(), "60".as_ref(), "-l".as_ref(), log.as_os_str()];
        self.pg_ctl("pg_ctl restart", "restart", &args)
    }

    /// `pg_ctl ACTION -m immediate -w EXTRA... -D DATA`.
    fn pg_ctl(
        &self,
        what: &'static str,
        action: &str,
        extra: &[&std::ffi::OsStr],
    ) -> Result<(), HarnessError> {
        let data = self.dir.path().join("data");
        let mut args: Vec<&std::ffi::OsStr> = vec![
            action.as_ref(),
            "-m".as_ref(),
            "immediate".as_ref(),
            "-w".as_ref(),
        ];
        args.extend_from_slice(extra);
        args.extend(["-D".as_ref(), data.as_os_str()]);
        self.run(what, &self.bin.join("pg_ctl"), &args)
    }
}

/// Stops and removes servers of earlier runs whose owning process is gone.
fn sweep_orphans(bin: &Path) {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.filter_map(Result::ok) {
        let dir = entry.path();
        let is_ours = entry
            .file_name()
            .to_str()
            .is_some_and(|n| n.starts_with("codereader-pg-"));
        let owner = std::fs::read_to_string(dir.join("owner.pid")).ok();
        let Some(pid) = owner.and_then(|p| p.trim().parse::<u32>().ok()) else {
            continue;
        };
        if !is_ours || Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        let data = dir.join("data");
        if data.join("postmaster.pid").exists() {
            let mut command = if is_root() {
                let mut c = Command::new("runuser");
                c.args(["-u", "postgres", "--"]).arg(bin.join("pg_ctl"));
                c
            } else {
                Command::new(bin.join("pg_ctl"))
            };
            let _ = command
                .args(["stop", "-m", "immediate", "-w", "-D"])
                .arg(&data)
                .output();
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}

impl Drop for TempPostgres {
    fn drop(&mut self) {
        if self.port == 0 {
            return;
        }
        // Immediate: nothing here needs a clean shutdown, and it is quick. Errors cannot be
        // reported from drop; the directory is removed either way.
        let _ = self.stop();
    }
}
