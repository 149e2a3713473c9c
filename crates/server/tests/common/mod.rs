//! Test harness shared by the end-to-end tests and the load benchmark: starts the real
//! `codereader-verifier` binary on 127.0.0.1 (port 0, the address read from its output),
//! creates its API keys with the binary's own `api-key create`, talks HTTP/1.1 to it with
//! hyper. PostgreSQL comes from the verifier library's harness
//! (`codereader_verifier::testing::TempPostgres`, feature `testing`).

#![allow(dead_code, unreachable_pub, clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_codereader-verifier");

/// The server binary to start: [`BIN`], or `CODEREADER_VERIFIER_BIN` when set, so that the
/// load benchmark can compare two builds (A/B) with the same load generator.
fn bin() -> String {
    std::env::var("CODEREADER_VERIFIER_BIN").unwrap_or_else(|_| BIN.to_owned())
}

/// A running server and everything needed to restart it.
pub struct Server {
    child: Option<Child>,
    pub addr: SocketAddr,
    pub dir: PathBuf,
    pub verify_key: String,
    pub admin_key: String,
    args: Vec<String>,
    pub stderr: Arc<Mutex<String>>,
    /// The descriptor limit (soft and hard) the server starts under, if not the test's own.
    pub nofile: Option<u64>,
    _temp: Option<tempfile::TempDir>,
}

/// Runs the binary with `args` and `CODEREADER_STATE=dir`; returns stdout, panics on failure.
pub fn run_cli(dir: &Path, args: &[&str]) -> String {
    let out = Command::new(bin())
        .args(args)
        .env("CODEREADER_STATE", dir)
        .output()
        .expect("run codereader-verifier");
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Creates an API key with `scope` through the CLI; returns the key (the last word printed).
pub fn create_key(dir: &Path, scope: &str) -> String {
    let out = run_cli(dir, &["api-key", "create", "--scope", scope]);
    out.split_whitespace().last().unwrap().to_owned()
}

impl Server {
    /// A fresh state directory, a verify and an admin key, and a server on the default SQLite
    /// store (no `--db`) or on `db`.
    pub fn start(db: Option<&str>) -> Server {
        Self::start_with(db, &[])
    }

    /// Like [`Server::start`] with extra `serve` arguments.
    pub fn start_with(db: Option<&str>, extra: &[&str]) -> Server {
        let temp = tempfile::tempdir().unwrap();
        let dir = temp.path().join("state");
        let mut server = Self::start_in(dir, db, extra);
        server._temp = Some(temp);
        server
    }

    /// Three servers on the one store `db`, each with its own state directory and API keys
    /// and `extra` arguments, all with the first one's key-encryption key file (as a copy
    /// of the file on each host would be).
    pub fn start_three(db: &str, extra: &[&str]) -> [Server; 3] {
        let first = Self::start_with(Some(db), extra);
        let kek = first.dir.join("kek").display().to_string();
        let mut more = extra.to_vec();
        more.extend(["--kek-file", &kek]);
        [
            first,
            Self::start_with(Some(db), &more),
            Self::start_with(Some(db), &more),
        ]
    }

    /// A server on the state directory `dir` (which the caller keeps), with new API keys.
    pub fn start_in(dir: PathBuf, db: Option<&str>, extra: &[&str]) -> Server {
        Self::start_under(dir, db, extra, None)
    }

    fn start_under(dir: PathBuf, db: Option<&str>, extra: &[&str], nofile: Option<u64>) -> Server {
        let verify_key = create_key(&dir, "verify");
        let admin_key = create_key(&dir, "admin");
        let mut args: Vec<String> = vec!["serve".into(), "--listen".into(), "127.0.0.1:0".into()];
        if let Some(db) = db {
            args.push("--db".into());
            args.push(db.into());
        }
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        let mut server = Server {
            child: None,
            addr: "127.0.0.1:1".parse().unwrap(),
            dir,
            verify_key,
            admin_key,
            args,
            stderr: Arc::new(Mutex::new(String::new())),
            nofile,
            _temp: None,
        };
        server.spawn();
        server
    }

    /// Like [`Server::start_with`], the server running under a descriptor limit of `nofile`
    /// (soft and hard, as `ulimit -n` sets them), the way systemd starts services with 1024.
    pub fn start_with_nofile(nofile: u64, db: Option<&str>, extra: &[&str]) -> Server {
        let temp = tempfile::tempdir().unwrap();
        let dir = temp.path().join("state");
        let mut server = Self::start_under(dir, db, extra, Some(nofile));
        server._temp = Some(temp);
        server
    }

    /// Starts the binary (again) with the same state and arguments.
    pub fn spawn(&mut self) {
        assert!(self.child.is_none(), "already running");
        let mut command = match self.nofile {
            // `exec` keeps the process id: signals reach the server itself.
            Some(n) => {
                let mut c = Command::new("sh");
                c.arg("-c")
                    .arg(format!("ulimit -n {n} && exec \"$0\" \"$@\""))
                    .arg(bin());
                c
            }
            None => Command::new(bin()),
        };
        let mut child = command
            .args(&self.args)
            .env("CODEREADER_STATE", &self.dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start codereader-verifier");
        let stderr = child.stderr.take().unwrap();
        let log = self.stderr.clone();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stderr);
            let mut line = String::new();
            while reader.read_line(&mut line).unwrap_or(0) > 0 {
                log.lock().unwrap().push_str(&line);
                line.clear();
            }
        });
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stdout);
            let mut line = String::new();
            while reader.read_line(&mut line).unwrap_or(0) > 0 {
                // `serve --tls-cert ...` says https; the address is all the tests need.
                let said = line.trim().replacen("https://", "http://", 1);
                if let Some(url) = said.strip_prefix("codereader-verifier: listening on http://") {
                    let _ = tx.send(url.parse::<SocketAddr>().unwrap());
                }
                line.clear();
            }
        });
        match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(addr) => self.addr = addr,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("server did not start: {}", self.stderr.lock().unwrap());
            }
        }
        self.child = Some(child);
    }

    /// SIGKILL: no chance to clean up.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }

    /// SIGTERM, then waits for the exit.
    pub fn terminate(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("running");
        let status = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "server ignored SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends a signal (`HUP`, `TERM`...) without waiting.
    pub fn signal(&self, name: &str) {
        let child = self.child.as_ref().expect("running");
        let status = Command::new("kill")
            .args([&format!("-{name}"), &child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// What the server has written to stderr so far.
    pub fn log(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Waits until the server has written `text` to stderr; fails the test, showing the
    /// log, if it has not within `within`.
    pub async fn wait_for_log(&self, text: &str, within: Duration) {
        let deadline = Instant::now() + within;
        while !self.stderr.lock().unwrap().contains(text) {
            assert!(
                Instant::now() < deadline,
                "no `{text}` within {within:?}:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The server process's id, while it runs.
    #[allow(dead_code)] // used by the load benchmark only
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// A client for this server.
    pub fn client(&self) -> Client {
        Client { addr: self.addr }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A response: status and body (JSON if it parses, else `Value::String` of the text).
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub body: Value,
    pub content_type: String,
    /// The Retry-After header, if any.
    pub retry_after: Option<String>,
}

impl Reply {
    /// `body[field]` as a string, or "".
    pub fn str(&self, field: &str) -> &str {
        self.body[field].as_str().unwrap_or("")
    }
}

/// One HTTP/1.1 connection (keep-alive).
pub struct Conn {
    sender: SendRequest<Full<Bytes>>,
}

impl Conn {
    pub async fn open(addr: SocketAddr) -> std::io::Result<Conn> {
        let stream = tokio::net::TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(std::io::Error::other)?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(Conn { sender })
    }

    /// Sends one request and reads the whole reply.
    pub async fn send(
        &mut self,
        method: &str,
        path: &str,
        key: Option<&str>,
        content_type: Option<&str>,
        body: Vec<u8>,
    ) -> Result<Reply, hyper::Error> {
        let mut request = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header("host", "127.0.0.1");
        if let Some(key) = key {
            request = request.header("authorization", format!("Bearer {key}"));
        }
        if let Some(ct) = content_type {
            request = request.header("content-type", ct);
        }
        let request = request.body(Full::new(Bytes::from(body))).unwrap();
        self.sender.ready().await?;
        let response = self.sender.send_request(request).await?;
        let status = response.status().as_u16();
        let content_type = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        let retry_after = response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let bytes = response.into_body().collect().await?.to_bytes();
        let body = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
        Ok(Reply {
            status,
            body,
            content_type,
            retry_after,
        })
    }

    /// POSTs JSON.
    pub async fn post(
        &mut self,
        path: &str,
        key: &str,
        body: &Value,
    ) -> Result<Reply, hyper::Error> {
        self.send(
            "POST",
            path,
            Some(key),
            Some("application/json"),
            serde_json::to_vec(body).unwrap(),
        )
        .await
    }

    /// GETs `path`.
    pub async fn get(&mut self, path: &str, key: Option<&str>) -> Result<Reply, hyper::Error> {
        self.send("GET", path, key, None, Vec::new()).await
    }

    /// Verifies `code` for the token `serial` (verify `key`).
    pub async fn verify(
        &mut self,
        key: &str,
        serial: &str,
        code: &str,
    ) -> Result<Reply, hyper::Error> {
        self.post("/v1/verify", key, &json!({"token": serial, "code": code}))
            .await
    }
}

/// Opens a fresh connection per call: simple, and what a test of one request wants.
#[derive(Debug, Clone, Copy)]
pub struct Client {
    pub addr: SocketAddr,
}

impl Client {
    pub async fn send(
        &self,
        method: &str,
        path: &str,
        key: Option<&str>,
        content_type: Option<&str>,
        body: Vec<u8>,
    ) -> Reply {
        let mut conn = Conn::open(self.addr).await.unwrap();
        conn.send(method, path, key, content_type, body)
            .await
            .unwrap()
    }

    pub async fn post(&self, path: &str, key: &str, body: Value) -> Reply {
        self.send(
            "POST",
            path,
            Some(key),
            Some("application/json"),
            serde_json::to_vec(&body).unwrap(),
        )
        .await
    }

    pub async fn get(&self, path: &str, key: Option<&str>) -> Reply {
        self.send("GET", path, key, None, Vec::new()).await
    }

    /// Enrols an HOTP token `serial` with the raw `secret` (admin `key`); 201 on success.
    pub async fn add_hotp(&self, key: &str, serial: &str, secret: &[u8]) -> Reply {
        self.post(
            "/v1/tokens",
            key,
            json!({"serial": serial, "kind": "hotp", "secret": base32(secret)}),
        )
        .await
    }

    /// Verifies `code` for the token `serial` (verify `key`).
    pub async fn verify(&self, key: &str, serial: &str, code: &str) -> Reply {
        self.post("/v1/verify", key, json!({"token": serial, "code": code}))
            .await
    }

    /// Verifies `code` for the token `serial` on behalf of `client` (verify `key`).
    pub async fn verify_from(&self, key: &str, serial: &str, code: &str, client: &str) -> Reply {
        self.post(
            "/v1/verify",
            key,
            json!({"token": serial, "code": code, "client": client}),
        )
        .await
    }

    /// Verifies `code` for the token bound to `user` (verify `key`).
    pub async fn verify_user(&self, key: &str, user: &str, code: &str) -> Reply {
        self.post("/v1/verify", key, json!({"user": user, "code": code}))
            .await
    }

    /// Binds the token `serial` to `user`, proven with its current `code` (admin `key`).
    pub async fn activate(&self, key: &str, serial: &str, user: &str, code: &str) -> Reply {
        self.post(
            &format!("/v1/tokens/{serial}/activate"),
            key,
            json!({"user": user, "code": code}),
        )
        .await
    }

    /// Resynchronises the token `serial` with two consecutive codes (admin `key`).
    pub async fn resync(&self, key: &str, serial: &str, code: &str, next_code: &str) -> Reply {
        self.post(
            &format!("/v1/tokens/{serial}/resync"),
            key,
            json!({"code": code, "next_code": next_code}),
        )
        .await
    }

    /// Imports the PSKC document `pskc` sent as JSON with the hex `preshared_key`.
    pub async fn import_json(&self, key: &str, pskc: &str, preshared_key: &str) -> Reply {
        self.post(
            "/v1/tokens/import",
            key,
            json!({"pskc": pskc, "preshared_key": preshared_key}),
        )
        .await
    }

    /// Imports the PSKC document `xml` sent as a raw `application/pskc+xml` body.
    pub async fn import_xml(&self, key: &str, xml: Vec<u8>) -> Reply {
        self.send(
            "POST",
            "/v1/tokens/import",
            Some(key),
            Some("application/pskc+xml"),
            xml,
        )
        .await
    }

    /// The text of `/metrics`.
    pub async fn metrics(&self) -> String {
        let metrics = self.get("/metrics", None).await;
        metrics.body.as_str().unwrap_or_default().to_owned()
    }
}

/// Sends raw bytes on a fresh TCP connection and returns the status line's code and the rest,
/// for requests hyper would refuse to build (or a body larger than the server reads).
pub fn raw_request(addr: SocketAddr, request: &[u8]) -> (u16, String) {
    use std::io::Write;
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    // The server may answer (413) and close before reading everything; a failed write is fine.
    // No half-close after writing: hyper treats it as the client going away. Requests sent
    // here carry `Connection: close`, so the server closes after its answer.
    let _ = stream.write_all(request);
    let mut text = Vec::new();
    let _ = stream.read_to_end(&mut text);
    let text = String::from_utf8_lossy(&text).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, text)
}

/// The HOTP code of `secret` (raw bytes) at `counter`, with `digits` digits, SHA-1.
pub fn hotp(secret: &[u8], counter: u64, digits: u32) -> String {
    use codereader_otp::{Algorithm, Counter, Digits, Hotp, KeyPolicy, Secret};
    let secret = Secret::new(secret.to_vec(), KeyPolicy::Rfc4226).unwrap();
    let hotp = Hotp::new(&secret, Algorithm::Sha1, Digits::new(digits).unwrap());
    hotp.code(Counter(counter)).as_str().to_owned()
}

/// A 6-digit code that none of the first 200 HOTP counters of `secret` gives: wrong
/// however far a test moves the token's counter.
pub fn wrong_hotp(secret: &[u8]) -> String {
    let valid: Vec<String> = (0..200).map(|c| hotp(secret, c, 6)).collect();
    (0..)
        .map(|n| format!("{:06}", 222_222 + n))
        .find(|c| !valid.contains(c))
        .unwrap()
}

/// Base32 (no padding) of raw bytes, for otpauth URIs.
pub fn base32(bytes: &[u8]) -> String {
    data_encoding::BASE32_NOPAD.encode(bytes)
}

/// Another PostgreSQL session holding `LOCK TABLE tokens` (so that every store call on the
/// tokens waits) until [`TokensLocked::release`].
pub struct TokensLocked {
    release: std::sync::mpsc::Sender<()>,
    holder: std::thread::JoinHandle<()>,
}

impl TokensLocked {
    /// Takes the lock on the database at `url`; returns once it is held.
    pub fn take(url: &str) -> TokensLocked {
        let url = url.to_owned();
        let (locked_tx, locked_rx) = std::sync::mpsc::channel();
        let (release, release_rx) = std::sync::mpsc::channel::<()>();
        let holder = std::thread::spawn(move || {
            let mut client = postgres::Client::connect(&url, postgres::NoTls).unwrap();
            let mut tx = client.transaction().unwrap();
            tx.batch_execute("LOCK TABLE tokens IN ACCESS EXCLUSIVE MODE")
                .unwrap();
            locked_tx.send(()).unwrap();
            let _ = release_rx.recv();
            tx.commit().unwrap();
        });
        locked_rx.recv().unwrap();
        TokensLocked { release, holder }
    }

    /// Ends the other session's transaction, and with it the lock.
    pub fn release(self) {
        let _ = self.release.send(());
        self.holder.join().unwrap();
    }
}

/// Waits (up to 10 s) until the server has read everything sent so far on `stream`: its end
/// of the connection, as the kernel lists it in `/proc/net/tcp`, has nothing left to
/// receive. Until then the connection may still wait unaccepted in the listener's backlog,
/// or its bytes unread; after it, the server is handling what was sent.
pub fn wait_until_server_read(stream: &std::net::TcpStream) {
    // `/proc/net/tcp` writes an IPv4 address as its 32-bit value in host byte order and the
    // port as a number, both in hex ("0100007F:1F90" for 127.0.0.1:8080 on x86).
    let hex = |addr: SocketAddr| match addr {
        SocketAddr::V4(v4) => format!(
            "{:08X}:{:04X}",
            u32::from_ne_bytes(v4.ip().octets()),
            v4.port()
        ),
        SocketAddr::V6(_) => panic!("the test server listens on IPv4: {addr}"),
    };
    let server = hex(stream.peer_addr().unwrap());
    let client = hex(stream.local_addr().unwrap());
    let unread = || -> Option<u64> {
        let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
        // Columns: sl, local_address, rem_address, st, tx_queue:rx_queue, ...
        table.lines().skip(1).find_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            (fields.get(1) == Some(&server.as_str()) && fields.get(2) == Some(&client.as_str()))
                .then(|| fields.get(4)?.split_once(':'))
                .flatten()
                .and_then(|(_, rx)| u64::from_str_radix(rx, 16).ok())
        })
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while unread() != Some(0) {
        assert!(
            Instant::now() < deadline,
            "the server did not read what was sent on {client} (unread: {:?})",
            unread()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Waits (up to 30 s) until the server at `addr` no longer accepts connections: it has
/// taken a SIGTERM and closed its listener (it may still be finishing requests).
pub fn wait_until_not_listening(addr: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(30);
    // Each probe that still connects is closed at once, so the server is not kept waiting.
    while std::net::TcpStream::connect(addr).is_ok() {
        assert!(
            Instant::now() < deadline,
            "{addr} still accepts connections"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}
