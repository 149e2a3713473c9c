//! Webhooks: the store's events pushed to each destination given with `serve --webhook`, as
//! signed JSON over HTTPS, after they are committed, at least once, in id order.
//!
//! Every setting of a destination is one flag value (`URL secret-file=F events=a,b name=N
//! ca=F`), so a configuration file can list them as strings. Each destination has its own
//! task: it claims the destination's lease in the store (so that of several servers on one
//! database one delivers each attempt), reads the events after its cursor, POSTs them one by
//! one, and moves the cursor past each delivered (or filtered out) event. An event that
//! fails is retried with exponential back-off and full jitter, the schedule kept in the
//! store so another server can carry it on; after `--webhook-retry-for-s` it is
//! dead-lettered (kept in the table `webhook_dead`, counted) and the next one goes. While a
//! destination fails, `/healthz` says `degraded` and names it. Verifications never wait for
//! any of this: delivery runs on its own tasks and blocking threads.
//!
//! Signatures follow Standard Webhooks: `webhook-id` (the event id, the idempotency key),
//! `webhook-timestamp` (Unix seconds of the attempt) and `webhook-signature: v1,BASE64`, the
//! HMAC-SHA256 of `ID.TIMESTAMP.BODY` under the destination's secret (a secret file holding
//! `whsec_BASE64` is that key decoded; any other content is the key as it is).

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::net::IpAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, anyhow, bail};
use axum::http::Uri;
use codereader_verifier::{Claim, DeadLetter, Delivery, Event, EventKind};
use hmac::{Hmac, KeyInit, Mac};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use sha2::Sha256;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::{ClientConfig, RootCertStore};
use zeroize::Zeroizing;

use crate::service::library::Library;
use crate::wire;

/// The system's CA bundle on Debian, used when a destination names no `ca=` file.
const SYSTEM_CAS: &str = "/etc/ssl/certs/ca-certificates.crt";

/// Events read from the store per round.
const BATCH: usize = 100;

/// One destination as given on the command line: `URL [secret-file=F] [events=a,b]
/// [name=N] [ca=F]`, words separated by spaces.
#[derive(Clone, PartialEq, Eq)]
pub struct WebhookArg {
    /// Where to POST.
    pub url: String,
    /// The file holding the signing secret (required).
    pub secret_file: PathBuf,
    /// The event kinds sent (all when `None`).
    pub events: Option<Vec<EventKind>>,
    /// The name in metrics, logs, `/healthz` and the store's cursor (default: the URL).
    pub name: String,
    /// CA certificates (PEM) that the destination's certificate must chain to, instead of
    /// the system's.
    pub ca: Option<PathBuf>,
}

impl std::fmt::Debug for WebhookArg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookArg")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl FromStr for WebhookArg {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let mut words = text.split_whitespace();
        let url = words
            .next()
            .ok_or("a webhook needs a URL: `URL secret-file=F [events=a,b] [name=N] [ca=F]`")?;
        let (mut secret_file, mut events, mut name, mut ca) = (None, None, None, None);
        for word in words {
            let (key, value) = word
                .split_once('=')
                .ok_or_else(|| format!("`{word}`: expected KEY=VALUE after the URL"))?;
            match key {
                "secret-file" => secret_file = Some(PathBuf::from(value)),
                "name" => name = Some(value.to_owned()),
                "ca" => ca = Some(PathBuf::from(value)),
                "events" => {
                    let kinds = value
                        .split(',')
                        .map(|k| {
                            EventKind::from_name(k).ok_or_else(|| {
                                let known: Vec<_> =
                                    EventKind::ALL.iter().map(|k| k.as_str()).collect();
                                format!("unknown event `{k}`; known: {}", known.join(", "))
                            })
                        })
                        .collect::<Result<Vec<_>, _>>()?;
                    events = Some(kinds);
                }
                _ => {
                    return Err(format!(
                        "unknown webhook setting `{key}`; known: secret-file, events, name, ca"
                    ));
                }
            }
        }
        let secret_file =
            secret_file.ok_or("a webhook needs `secret-file=FILE` (its signing key)")?;
        let name = name.unwrap_or_else(|| url.to_owned());
        if name.is_empty() || name.len() > 200 || name.chars().any(char::is_control) {
            return Err("a webhook name is 1 to 200 printable characters".to_owned());
        }
        Ok(WebhookArg {
            url: url.to_owned(),
            secret_file,
            events,
            name,
            ca,
        })
    }
}

/// The settings shared by every destination.
#[derive(Debug, Clone, Copy)]
pub struct WebhookTiming {
    /// How long an event is retried before it is dead-lettered.
    pub retry_for: Duration,
    /// The first wait after a failure; each further one doubles, up to `backoff_max`.
    pub backoff: Duration,
    /// The longest wait between attempts.
    pub backoff_max: Duration,
    /// How long one POST may take.
    pub timeout: Duration,
    /// How often the store is asked for new events.
    pub poll: Duration,
}

/// Where a destination POSTs, checked once.
#[derive(Clone)]
struct Target {
    host: String,
    port: u16,
    path: String,
    /// The TLS connector; `None` for plain HTTP (loopback only).
    tls: Option<TlsConnector>,
}

/// A destination ready to deliver to.
struct Destination {
    name: String,
    target: Target,
    key: Zeroizing<Vec<u8>>,
    events: Option<HashSet<EventKind>>,
    stats: Arc<Stats>,
}

/// What one destination's delivery has done, for `/metrics` and `/healthz`.
#[derive(Debug, Default)]
pub struct Stats {
    delivered: AtomicU64,
    failed: AtomicU64,
    dead_lettered: AtomicU64,
    /// The last event handled, as the store says.
    handled: AtomicU64,
    /// Since when (ms) its next event has failed, as the store says; 0 when it has not.
    failing_since: AtomicU64,
}

/// Every destination's statistics, by name, in the order given.
#[derive(Debug, Default)]
pub struct Webhooks {
    stats: Vec<(String, Arc<Stats>)>,
    /// The latest event id this server saw in the store.
    latest: AtomicU64,
}

impl Webhooks {
    /// The names of the destinations whose next event is failing.
    pub fn failing(&self) -> Vec<String> {
        self.stats
            .iter()
            .filter(|(_, s)| s.failing_since.load(Ordering::Relaxed) > 0)
            .map(|(name, _)| name.clone())
            .collect()
    }

    /// The `codereader_webhook_*` series (Prometheus text).
    pub fn render(&self, out: &mut String) {
        if self.stats.is_empty() {
            return;
        }
        // `write!` to a String cannot fail; the results are ignored for that reason.
        out.push_str(
            "# HELP codereader_webhook_attempts_total Webhook POSTs, by destination and result.\n\
             # TYPE codereader_webhook_attempts_total counter\n",
        );
        for (name, s) in &self.stats {
            let name = label(name);
            for (result, n) in [("delivered", &s.delivered), ("failed", &s.failed)] {
                let _ = writeln!(
                    out,
                    "codereader_webhook_attempts_total{{webhook=\"{name}\",result=\"{result}\"}} {}",
                    n.load(Ordering::Relaxed)
                );
            }
        }
        out.push_str(
            "# HELP codereader_webhook_dead_letters_total Events given up on after retrying, by destination.\n\
             # TYPE codereader_webhook_dead_letters_total counter\n",
        );
        for (name, s) in &self.stats {
            let _ = writeln!(
                out,
                "codereader_webhook_dead_letters_total{{webhook=\"{}\"}} {}",
                label(name),
                s.dead_lettered.load(Ordering::Relaxed)
            );
        }
        out.push_str(
            "# HELP codereader_webhook_failing Whether a destination's next event is failing (1) or not (0).\n\
             # TYPE codereader_webhook_failing gauge\n",
        );
        for (name, s) in &self.stats {
            let failing = u8::from(s.failing_since.load(Ordering::Relaxed) > 0);
            let _ = writeln!(
                out,
                "codereader_webhook_failing{{webhook=\"{}\"}} {failing}",
                label(name)
            );
        }
        out.push_str(
            "# HELP codereader_webhook_pending_events Events after a destination's cursor.\n\
             # TYPE codereader_webhook_pending_events gauge\n",
        );
        let latest = self.latest.load(Ordering::Relaxed);
        for (name, s) in &self.stats {
            let pending = latest.saturating_sub(s.handled.load(Ordering::Relaxed));
            let _ = writeln!(
                out,
                "codereader_webhook_pending_events{{webhook=\"{}\"}} {pending}",
                label(name)
            );
        }
    }
}

/// A Prometheus label value: backslashes and quotes escaped.
fn label(name: &str) -> String {
    name.replace('\\', "\\\\").replace('"', "\\\"")
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Reads a destination's signing key.
fn read_key(path: &std::path::Path) -> Result<Zeroizing<Vec<u8>>> {
    let text = Zeroizing::new(
        std::fs::read(path)
            .with_context(|| format!("cannot read the webhook secret {}", path.display()))?,
    );
    let trimmed = text.trim_ascii();
    if trimmed.is_empty() {
        bail!("the webhook secret {} is empty", path.display());
    }
    if let Some(encoded) = trimmed.strip_prefix(b"whsec_") {
        let key = data_encoding::BASE64
            .decode(encoded)
            .map_err(|_| anyhow!("{}: `whsec_` is not followed by base64", path.display()))?;
        return Ok(Zeroizing::new(key));
    }
    Ok(Zeroizing::new(trimmed.to_vec()))
}

fn tls_connector(ca: Option<&std::path::Path>) -> Result<TlsConnector> {
    let path = ca.unwrap_or(std::path::Path::new(SYSTEM_CAS));
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(path)
        .with_context(|| format!("cannot read CA certificates from {}", path.display()))?
    {
        let cert = cert.with_context(|| format!("bad certificate in {}", path.display()))?;
        roots
            .add(cert)
            .with_context(|| format!("unusable CA certificate in {}", path.display()))?;
    }
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(TlsConnector::from(Arc::new(config)))
}

fn is_loopback(host: &str) -> bool {
    host == "localhost"
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

impl WebhookArg {
    fn open(&self) -> Result<Destination> {
        let uri: Uri = self
            .url
            .parse()
            .with_context(|| format!("webhook {}: not a URL", self.name))?;
        let host = uri
            .host()
            .ok_or_else(|| anyhow!("webhook {}: the URL has no host", self.name))?
            .to_owned();
        let (tls, default_port) = match uri.scheme_str() {
            Some("https") => (Some(tls_connector(self.ca.as_deref())?), 443),
            Some("http") if is_loopback(&host) => (None, 80),
            Some("http") => bail!(
                "webhook {}: plain http only to loopback (events must not cross a network in \
                 clear); use https",
                self.name
            ),
            _ => bail!("webhook {}: the URL must start with https://", self.name),
        };
        let path = uri
            .path_and_query()
            .map_or_else(|| "/".to_owned(), |p| p.as_str().to_owned());
        Ok(Destination {
            name: self.name.clone(),
            target: Target {
                host,
                port: uri.port_u16().unwrap_or(default_port),
                path,
                tls,
            },
            key: read_key(&self.secret_file)?,
            events: self.events.as_ref().map(|e| e.iter().copied().collect()),
            stats: Arc::new(Stats::default()),
        })
    }
}

/// Checks every destination (URL, secret, CA file) and makes the statistics `/metrics` and
/// `/healthz` read; [`start`] then delivers.
///
/// # Errors
/// A destination that cannot be used, or two with one name.
pub fn prepare(args: &[WebhookArg]) -> Result<(Arc<Webhooks>, Vec<Prepared>)> {
    let mut names = HashSet::new();
    let mut prepared = Vec::new();
    let mut stats = Vec::new();
    for arg in args {
        if !names.insert(arg.name.clone()) {
            bail!(
                "two webhooks are named {}; give each its own name=",
                arg.name
            );
        }
        let destination = arg.open()?;
        stats.push((destination.name.clone(), destination.stats.clone()));
        prepared.push(Prepared(destination));
    }
    Ok((
        Arc::new(Webhooks {
            stats,
            latest: AtomicU64::new(0),
        }),
        prepared,
    ))
}

/// A destination checked by [`prepare`].
pub struct Prepared(Destination);

/// Registers every destination's cursor (a new one starts after the latest event, so it is
/// sent what happens from now on), then starts one delivery task per destination on the
/// current runtime.
///
/// # Errors
/// The store did not answer.
pub fn start(
    library: Arc<Library>,
    webhooks: Arc<Webhooks>,
    destinations: Vec<Prepared>,
    timing: WebhookTiming,
) -> Result<()> {
    let holder = holder_id()?;
    let lease = lease_for(timing);
    for Prepared(d) in &destinations {
        // Claimed or not, the cursor exists once this returns.
        library
            .claim_delivery(&d.name, &holder, now_ms(), lease)
            .with_context(|| format!("webhook {}: cannot register it in the store", d.name))?;
    }
    for Prepared(destination) in destinations {
        let deliverer = Deliverer {
            library: library.clone(),
            webhooks: webhooks.clone(),
            destination: Arc::new(destination),
            holder: holder.clone(),
            timing,
            lease,
        };
        tokio::spawn(deliverer.run());
    }
    Ok(())
}

/// The lease a holder takes: longer than a POST, so that it outlives every attempt it
/// renewed it for.
fn lease_for(timing: WebhookTiming) -> u64 {
    let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    ms(timing.timeout)
        .saturating_mul(2)
        .saturating_add(ms(timing.poll))
        .max(5_000)
}

/// This process's name as a lease holder: random, so a restarted server is a new holder
/// and waits for its predecessor's lease to run out.
fn holder_id() -> Result<String> {
    let mut random = [0u8; 8];
    getrandom::fill(&mut random).map_err(|e| anyhow!("no randomness: {e}"))?;
    Ok(format!(
        "{}-{}",
        std::process::id(),
        data_encoding::HEXLOWER.encode(&random)
    ))
}

struct Deliverer {
    library: Arc<Library>,
    webhooks: Arc<Webhooks>,
    destination: Arc<Destination>,
    holder: String,
    timing: WebhookTiming,
    lease: u64,
}

/// What one round asks of the store, run on a blocking thread.
async fn off_thread<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, crate::service::ServiceError> + Send + 'static,
) -> Result<T, String> {
    match tokio::task::spawn_blocking(f).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err(e.to_string()),
        Err(e) => Err(e.to_string()),
    }
}

impl Deliverer {
    async fn run(self) {
        let mut store_down_logged = false;
        loop {
            match self.round().await {
                Ok(()) => store_down_logged = false,
                Err(e) => {
                    if !store_down_logged {
                        eprintln!(
                            "codereader-verifier: webhook {}: store: {e}",
                            self.destination.name
                        );
                        store_down_logged = true;
                    }
                }
            }
            tokio::time::sleep(self.timing.poll).await;
        }
    }

    async fn claim(&self) -> Result<Claim, String> {
        let (library, name, holder, lease) = (
            self.library.clone(),
            self.destination.name.clone(),
            self.holder.clone(),
            self.lease,
        );
        let claim =
            off_thread(move || library.claim_delivery(&name, &holder, now_ms(), lease)).await?;
        let stats = &self.destination.stats;
        stats.handled.store(claim.delivery.after, Ordering::Relaxed);
        stats.failing_since.store(
            claim.delivery.failing_since.map_or(0, |t| t.max(1)),
            Ordering::Relaxed,
        );
        Ok(claim)
    }

    async fn settle(&self, delivery: &Delivery, dead: Option<DeadLetter>) -> Result<bool, String> {
        let (library, name, holder, delivery) = (
            self.library.clone(),
            self.destination.name.clone(),
            self.holder.clone(),
            delivery.clone(),
        );
        off_thread(move || library.settle_delivery(&name, &holder, delivery, dead)).await
    }

    /// Delivers what is due, if this server holds the destination.
    async fn round(&self) -> Result<(), String> {
        let claim = self.claim().await?;
        if !claim.held {
            return Ok(());
        }
        let mut delivery = claim.delivery;
        if now_ms() < delivery.retry_at {
            return Ok(());
        }
        let (library, after) = (self.library.clone(), delivery.after);
        let events = off_thread(move || library.events_after(after, BATCH)).await?;
        if let Some(last) = events.last() {
            self.webhooks.latest.fetch_max(last.id, Ordering::Relaxed);
        }
        let d = &self.destination;
        let mut moved = false;
        for event in events {
            if d.events.as_ref().is_some_and(|e| !e.contains(&event.kind)) {
                delivery.after = event.id;
                moved = true;
                continue;
            }
            if moved {
                // Filtered-out events first, so the renewal below carries them.
                if !self.settle(&delivery, None).await? {
                    return Ok(());
                }
                moved = false;
            }
            // The lease, renewed before each attempt, outlives it: no other server sends
            // this event while this attempt runs.
            let claim = self.claim().await?;
            if !claim.held || claim.delivery != delivery {
                return Ok(());
            }
            let attempt = post(d, &event, self.timing.timeout).await;
            let now = now_ms();
            match attempt {
                Ok(()) => {
                    d.stats.delivered.fetch_add(1, Ordering::Relaxed);
                    delivery.after = event.id;
                    delivery.attempts = 0;
                    delivery.failing_since = None;
                    delivery.retry_at = 0;
                    self.settle(&delivery, None).await?;
                    d.stats.handled.store(event.id, Ordering::Relaxed);
                    d.stats.failing_since.store(0, Ordering::Relaxed);
                }
                Err(why) => {
                    d.stats.failed.fetch_add(1, Ordering::Relaxed);
                    let since = *delivery.failing_since.get_or_insert(now);
                    delivery.attempts = delivery.attempts.saturating_add(1);
                    let retry_for =
                        u64::try_from(self.timing.retry_for.as_millis()).unwrap_or(u64::MAX);
                    if now.saturating_sub(since) >= retry_for {
                        eprintln!(
                            "codereader-verifier: webhook {}: gave up on event {} after {} \
                             attempts: {why}",
                            d.name, event.id, delivery.attempts
                        );
                        let dead = DeadLetter {
                            event: event.id,
                            at: now,
                            reason: why,
                        };
                        delivery.after = event.id;
                        delivery.attempts = 0;
                        delivery.failing_since = None;
                        delivery.retry_at = 0;
                        delivery.dead = delivery.dead.saturating_add(1);
                        if self.settle(&delivery, Some(dead)).await? {
                            d.stats.dead_lettered.fetch_add(1, Ordering::Relaxed);
                        }
                        d.stats.failing_since.store(0, Ordering::Relaxed);
                        continue;
                    }
                    if delivery.attempts == 1 {
                        eprintln!(
                            "codereader-verifier: webhook {}: event {} failed, retrying: {why}",
                            d.name, event.id
                        );
                    }
                    delivery.retry_at = now.saturating_add(self.backoff(delivery.attempts));
                    d.stats.failing_since.store(since.max(1), Ordering::Relaxed);
                    self.settle(&delivery, None).await?;
                    return Ok(());
                }
            }
        }
        if moved {
            self.settle(&delivery, None).await?;
        }
        Ok(())
    }

    /// The wait before attempt `attempts + 1`: a random time up to the doubled back-off
    /// (full jitter, so destinations and servers that failed together do not retry
    /// together).
    fn backoff(&self, attempts: u32) -> u64 {
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        let ceiling = ms(self.timing.backoff)
            .saturating_mul(1u64 << attempts.saturating_sub(1).min(30))
            .min(ms(self.timing.backoff_max))
            .max(1);
        let mut random = [0u8; 8];
        let r = match getrandom::fill(&mut random) {
            Ok(()) => u64::from_le_bytes(random),
            Err(_) => now_ms(),
        };
        ceiling / 2 + r % (ceiling / 2 + 1)
    }
}

/// The JSON body of an event, as POSTed and as `GET /v1/events` lists it.
pub fn body(event: &Event) -> Vec<u8> {
    serde_json::to_vec(&wire::EventBody::of(event)).unwrap_or_default()
}

/// The `webhook-signature` value for `body` sent as event `id` at `timestamp`.
pub fn signature(key: &[u8], id: &str, timestamp: u64, body: &[u8]) -> String {
    // HMAC takes keys of any length.
    let mut mac = match <Hmac<Sha256> as KeyInit>::new_from_slice(key) {
        Ok(mac) => mac,
        Err(_) => return String::new(),
    };
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!(
        "v1,{}",
        data_encoding::BASE64.encode(&mac.finalize().into_bytes())
    )
}

/// One POST of `event` to `d`; `Err` says why it did not count as delivered (any status but
/// 2xx, a connection or TLS failure, the timeout).
async fn post(d: &Destination, event: &Event, timeout: Duration) -> Result<(), String> {
    match tokio::time::timeout(timeout, attempt(d, event)).await {
        Ok(result) => result,
        Err(_) => Err(format!("no answer within {} ms", timeout.as_millis())),
    }
}

async fn attempt(d: &Destination, event: &Event) -> Result<(), String> {
    let t = &d.target;
    let body = body(event);
    let id = event.id.to_string();
    let timestamp = now_ms() / 1000;
    let host_header = if (t.tls.is_some() && t.port == 443) || (t.tls.is_none() && t.port == 80) {
        t.host.clone()
    } else {
        format!("{}:{}", t.host, t.port)
    };
    let request = hyper::Request::post(t.path.as_str())
        .header("host", host_header)
        .header("content-type", "application/json")
        .header("user-agent", "codereader-verifier")
        .header("webhook-id", id.as_str())
        .header("webhook-timestamp", timestamp.to_string())
        .header(
            "webhook-signature",
            signature(&d.key, &id, timestamp, &body),
        )
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| e.to_string())?;
    let host = t.host.trim_start_matches('[').trim_end_matches(']');
    let tcp = TcpStream::connect((host, t.port))
        .await
        .map_err(|e| format!("cannot connect: {e}"))?;
    let status = match &t.tls {
        Some(tls) => {
            let name = ServerName::try_from(host.to_owned())
                .map_err(|_| format!("`{host}` is not a valid TLS server name"))?;
            let stream = tls
                .connect(name, tcp)
                .await
                .map_err(|e| format!("TLS: {e}"))?;
            send(TokioIo::new(stream), request).await?
        }
        None => send(TokioIo::new(tcp), request).await?,
    };
    if status.is_success() {
        Ok(())
    } else {
        Err(format!("HTTP {}", status.as_u16()))
    }
}

async fn send<I>(io: I, request: hyper::Request<Full<Bytes>>) -> Result<hyper::StatusCode, String>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| format!("HTTP: {e}"))?;
    let driver = tokio::spawn(connection);
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| format!("HTTP: {e}"));
    let result = match response {
        Ok(response) => {
            let status = response.status();
            // Read (and drop) the answer, so the connection ends cleanly.
            let _ = response.into_body().collect().await;
            Ok(status)
        }
        Err(e) => Err(e),
    };
    driver.abort();
    result
}

/// The clients that went past their failure budget lately, so that a client hammering away
/// makes one `verify.rejected_burst` event per window, not one per refused attempt.
#[derive(Debug, Default)]
pub struct Bursts {
    /// Per client, until when (Unix seconds) it is not announced again.
    quiet_until: Mutex<HashMap<String, u64>>,
}

/// Most clients remembered; past it the oldest entries are dropped first.
const MAX_BURSTS: usize = 10_000;

impl Bursts {
    /// Whether a refusal of `client` at `now` starts a new burst (and should be recorded);
    /// the next refusal counts again after `quiet` seconds without one.
    pub fn starts(&self, client: &str, now: u64, quiet: u64) -> bool {
        let mut map = self
            .quiet_until
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if map.len() >= MAX_BURSTS {
            map.retain(|_, until| *until > now);
            if map.len() >= MAX_BURSTS {
                map.clear();
            }
        }
        let until = now.saturating_add(quiet);
        match map.insert(client.to_owned(), until) {
            Some(previous) => previous <= now,
            None => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_webhook_is_one_flag_value() {
        let w: WebhookArg =
            "https://h.example/hook secret-file=/s events=token.locked,kek.rotated name=sec"
                .parse()
                .unwrap();
        assert_eq!(w.url, "https://h.example/hook");
        assert_eq!(w.secret_file, PathBuf::from("/s"));
        assert_eq!(
            w.events,
            Some(vec![EventKind::TokenLocked, EventKind::KekRotated])
        );
        assert_eq!(w.name, "sec");
        let plain: WebhookArg = "https://h/x secret-file=/s".parse().unwrap();
        assert_eq!((plain.events, plain.name.as_str()), (None, "https://h/x"));
        for bad in [
            "",
            "https://h/x",
            "https://h/x secret-file=/s events=token.eaten",
            "https://h/x secret-file=/s colour=blue",
            "https://h/x secret-file",
        ] {
            assert!(bad.parse::<WebhookArg>().is_err(), "{bad}");
        }
    }

    /// The Standard Webhooks example: secret, id, timestamp, body and signature from its
    /// specification's test vector.
    #[test]
    fn signatures_follow_standard_webhooks() {
        let key = data_encoding::BASE64
            .decode(b"MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
            .unwrap();
        let body = br#"{"test": 2432232314}"#;
        assert_eq!(
            signature(&key, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    #[test]
    fn bursts_are_announced_once_per_quiet_period() {
        let b = Bursts::default();
        assert!(b.starts("a", 100, 60));
        assert!(!b.starts("a", 130, 60));
        assert!(!b.starts("a", 189, 60));
        assert!(b.starts("a", 250, 60));
        assert!(b.starts("b", 250, 60));
    }
}
