//! One PostgreSQL connection whose every call has a deadline, and the hosts of a multi-host
//! address tried one by one, each under the same deadline.
//!
//! A primary that hangs (a frozen process, a stalled VM, a network black hole) answers
//! nothing and closes nothing: a blocking call on its connection waits for as long as it
//! hangs, and so does a new connection to it (the kernel accepts the TCP connection; the
//! startup message is never answered, and the driver's `connect_timeout` covers only the
//! TCP part). Here every call, and every connection attempt, runs on the connection's own
//! single-thread runtime under [`tokio::time::timeout`]: when the deadline passes, the call
//! is dropped, and the caller hears [`PgError::Deadline`] and drops the connection (its
//! socket is closed, its runtime gone). Whatever the abandoned call might still do on the
//! server is never observed here, so it can never be reported as done.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio_postgres::config::Host;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Config, NoTls, Row, Statement};

/// Why a call on a [`PgClient`] failed.
#[derive(Debug)]
pub(crate) enum PgError {
    /// The server or driver said why.
    Db(tokio_postgres::Error),
    /// No answer within the deadline: the connection is abandoned.
    Deadline(Duration),
    /// No thread or runtime for a connection.
    Runtime(std::io::Error),
}

impl PgError {
    /// The SQLSTATE the server answered with, if it answered.
    pub(crate) fn code(&self) -> Option<&tokio_postgres::error::SqlState> {
        match self {
            PgError::Db(e) => e.code(),
            _ => None,
        }
    }
}

impl fmt::Display for PgError {
    /// The SQLSTATE and the server's message (so that an operator tells a read-only
    /// standby, `25006`, from anything else), or the driver's error with its cause.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PgError::Db(e) => match e.as_db_error() {
                Some(db) => {
                    write!(f, "SQLSTATE {}: {}", db.code().code(), db.message())?;
                    if let Some(detail) = db.detail() {
                        write!(f, " ({detail})")?;
                    }
                    Ok(())
                }
                None => {
                    write!(f, "{e}")?;
                    let mut source = std::error::Error::source(e);
                    while let Some(cause) = source {
                        write!(f, ": {cause}")?;
                        source = cause.source();
                    }
                    Ok(())
                }
            },
            PgError::Deadline(d) => write!(
                f,
                "no answer within {} ms; connection abandoned",
                d.as_millis()
            ),
            PgError::Runtime(e) => write!(f, "cannot start a connection runtime: {e}"),
        }
    }
}

impl From<tokio_postgres::Error> for PgError {
    fn from(e: tokio_postgres::Error) -> Self {
        PgError::Db(e)
    }
}

/// A connection with a deadline on each call.
pub(crate) struct PgClient {
    runtime: tokio::runtime::Runtime,
    client: tokio_postgres::Client,
    deadline: Duration,
    /// Which of the [`Hosts`] it is connected to.
    host: usize,
    /// The [`Hosts`]' first choice, moved on from this host if a call here stops answering.
    first: Arc<AtomicUsize>,
    hosts: usize,
}

impl PgClient {
    fn call<T, F>(&self, f: F) -> Result<T, PgError>
    where
        F: std::future::Future<Output = Result<T, tokio_postgres::Error>>,
    {
        // Boxed once: the driver's futures are large, and unboxed they were copied whole by
        // every layer that moves them (the timeout, the async block, `block_on`), a couple
        // of thousand instructions of `memcpy` per call.
        let f = Box::pin(f);
        match self
            .runtime
            .block_on(async { tokio::time::timeout(self.deadline, f).await })
        {
            Ok(result) => Ok(result?),
            Err(_) => {
                shun(&self.first, self.host, self.hosts);
                Err(PgError::Deadline(self.deadline))
            }
        }
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.client.is_closed()
    }

    pub(crate) fn prepare(&mut self, sql: &str) -> Result<Statement, PgError> {
        self.call(self.client.prepare(sql))
    }

    pub(crate) fn execute<T>(
        &mut self,
        query: &T,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<u64, PgError>
    where
        T: ?Sized + tokio_postgres::ToStatement,
    {
        self.call(self.client.execute(query, params))
    }

    pub(crate) fn query<T>(
        &mut self,
        query: &T,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, PgError>
    where
        T: ?Sized + tokio_postgres::ToStatement,
    {
        self.call(self.client.query(query, params))
    }

    pub(crate) fn query_opt<T>(
        &mut self,
        query: &T,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Option<Row>, PgError>
    where
        T: ?Sized + tokio_postgres::ToStatement,
    {
        self.call(self.client.query_opt(query, params))
    }

    pub(crate) fn batch_execute(&mut self, sql: &str) -> Result<(), PgError> {
        self.call(self.client.batch_execute(sql))
    }
}

/// The hosts of an address, each as an address of its own, and which to try first.
pub(crate) struct Hosts {
    configs: Vec<Config>,
    /// The host to try first: the last one that took a connection, moved on from one that
    /// stopped answering.
    first: Arc<AtomicUsize>,
    deadline: Duration,
}

impl Hosts {
    /// `config`'s hosts, each tried with `deadline` for the whole connection (TCP, startup,
    /// authentication and the `target_session_attrs` check).
    pub(crate) fn new(config: &Config, deadline: Duration) -> Self {
        let hosts = config.get_hosts().len();
        let configs = if hosts <= 1 {
            vec![config.clone()]
        } else {
            (0..hosts).map(|i| single_host(config, i)).collect()
        };
        Hosts {
            configs,
            first: Arc::new(AtomicUsize::new(0)),
            deadline,
        }
    }

    /// The first of the hosts, in turn from the preferred one, that takes a connection (and,
    /// with `target_session_attrs=read-write`, accepts writes); else the last error.
    pub(crate) fn connect(&self) -> Result<PgClient, PgError> {
        let first = self.first.load(Ordering::Relaxed);
        let n = self.configs.len();
        let mut last = None;
        for k in 0..n {
            let host = (first + k) % n;
            match self.connect_to(host) {
                Ok(client) => {
                    self.first.store(host, Ordering::Relaxed);
                    return Ok(client);
                }
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or(PgError::Deadline(self.deadline)))
    }

    fn connect_to(&self, host: usize) -> Result<PgClient, PgError> {
        let config = &self.configs[host];
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(PgError::Runtime)?;
        let deadline = self.deadline;
        let connected =
            runtime.block_on(async { tokio::time::timeout(deadline, config.connect(NoTls)).await });
        let (client, connection) = match connected {
            Ok(result) => result?,
            Err(_) => {
                shun(&self.first, host, self.configs.len());
                return Err(PgError::Deadline(deadline));
            }
        };
        // Driven whenever a call runs on this runtime; dropped with it.
        runtime.spawn(async move {
            let _ = connection.await;
        });
        Ok(PgClient {
            runtime,
            client,
            deadline,
            host,
            first: Arc::clone(&self.first),
            hosts: self.configs.len(),
        })
    }
}

/// Tries another host first from now on, if `host` was the first: it stopped answering.
fn shun(first: &AtomicUsize, host: usize, hosts: usize) {
    let next = (host + 1) % hosts.max(1);
    let _ = first.compare_exchange(host, next, Ordering::Relaxed, Ordering::Relaxed);
}

/// `config` with only its `i`th host (and that host's port and address).
fn single_host(config: &Config, i: usize) -> Config {
    let mut one = Config::new();
    if let Some(user) = config.get_user() {
        one.user(user);
    }
    if let Some(password) = config.get_password() {
        one.password(password);
    }
    if let Some(dbname) = config.get_dbname() {
        one.dbname(dbname);
    }
    if let Some(options) = config.get_options() {
        one.options(options);
    }
    if let Some(name) = config.get_application_name() {
        one.application_name(name);
    }
    one.ssl_mode(config.get_ssl_mode())
        .ssl_negotiation(config.get_ssl_negotiation())
        .keepalives(config.get_keepalives())
        .keepalives_idle(config.get_keepalives_idle())
        .target_session_attrs(config.get_target_session_attrs())
        .channel_binding(config.get_channel_binding());
    if let Some(t) = config.get_connect_timeout() {
        one.connect_timeout(*t);
    }
    if let Some(t) = config.get_tcp_user_timeout() {
        one.tcp_user_timeout(*t);
    }
    if let Some(t) = config.get_keepalives_interval() {
        one.keepalives_interval(t);
    }
    if let Some(n) = config.get_keepalives_retries() {
        one.keepalives_retries(n);
    }
    match &config.get_hosts()[i] {
        Host::Tcp(name) => one.host(name),
        #[cfg(unix)]
        Host::Unix(path) => one.host_path(path),
    };
    if let Some(addr) = config.get_hostaddrs().get(i) {
        one.hostaddr(*addr);
    }
    // One port for every host, or one per host (the driver checks the counts).
    let ports = config.get_ports();
    if let Some(port) = ports.get(i).or_else(|| ports.first()) {
        one.port(*port);
    }
    one
}
