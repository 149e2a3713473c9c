//! HTTPS on the server's own port: a self-signed CA made here, a server certificate it
//! issued, plain HTTP refused on that port, mutual TLS refusing a client without a
//! certificate, a renewed certificate picked up on SIGHUP, and issue 15's slow-client
//! defences (cap, head and idle deadlines) holding on HTTPS too.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, SanType,
};
use serde_json::{Value, json};
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio_rustls::rustls::{ClientConfig, RootCertStore};

use crate::attack::enough_descriptors;
use crate::common::{BIN, Server, base32, create_key, hotp, raw_request};

pub(crate) struct Ca {
    pub(crate) cert: Certificate,
    key: KeyPair,
}

pub(crate) fn new_ca() -> Ca {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(DnType::CommonName, "codereader test CA");
    Ca {
        cert: params.self_signed(&key).unwrap(),
        key,
    }
}

/// A leaf certificate issued by `ca`: for the server (localhost, 127.0.0.1) or a client.
pub(crate) fn leaf(ca: &Ca, server: bool) -> (Certificate, KeyPair) {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
    params
        .subject_alt_names
        .push(SanType::IpAddress("127.0.0.1".parse().unwrap()));
    params.extended_key_usages = vec![if server {
        ExtendedKeyUsagePurpose::ServerAuth
    } else {
        ExtendedKeyUsagePurpose::ClientAuth
    }];
    (params.signed_by(&key, &ca.cert, &ca.key).unwrap(), key)
}

fn write_pair(dir: &Path, name: &str, (cert, key): &(Certificate, KeyPair)) -> (PathBuf, PathBuf) {
    let (c, k) = (
        dir.join(format!("{name}.crt")),
        dir.join(format!("{name}.key")),
    );
    std::fs::write(&c, cert.pem()).unwrap();
    std::fs::write(&k, key.serialize_pem()).unwrap();
    (c, k)
}

/// A running `serve` over HTTPS.
struct TlsServer {
    child: Child,
    addr: SocketAddr,
    stderr: Arc<Mutex<String>>,
}

impl Drop for TlsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(state: &Path, args: &[&str]) -> TlsServer {
    let mut child = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0"])
        .args(args)
        .env("CODEREADER_STATE", state)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = Arc::new(Mutex::new(String::new()));
    let (log, err) = (stderr.clone(), child.stderr.take().unwrap());
    std::thread::spawn(move || {
        for line in BufReader::new(err).lines().map_while(Result::ok) {
            log.lock().unwrap().push_str(&(line + "\n"));
        }
    });
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    let Some(addr) = line
        .trim()
        .strip_prefix("codereader-verifier: listening on https://")
    else {
        let _ = child.kill();
        panic!("{line:?} {}", stderr.lock().unwrap());
    };
    TlsServer {
        addr: addr.parse().unwrap(),
        child,
        stderr,
    }
}

fn client_config(ca: &Ca, client: Option<&(Certificate, KeyPair)>) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    roots.add(ca.cert.der().clone()).unwrap();
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    Arc::new(match client {
        Some((cert, key)) => builder
            .with_client_auth_cert(
                vec![cert.der().clone()],
                PrivateKeyDer::try_from(key.serialize_der()).unwrap(),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    })
}

/// One HTTPS request on a fresh connection; the server's certificate and the reply, or the
/// error that stopped it.
async fn request(
    addr: SocketAddr,
    config: Arc<ClientConfig>,
    method: &str,
    path: &str,
    key: Option<&str>,
    body: Option<Value>,
) -> Result<(CertificateDer<'static>, u16, Value), String> {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let tls = TlsConnector::from(config)
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let peer = tls.get_ref().1.peer_certificates().unwrap()[0].clone();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .map_err(|e| format!("http: {e}"))?;
    tokio::spawn(conn);
    let mut builder = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("host", "localhost")
        .header("content-type", "application/json");
    if let Some(key) = key {
        builder = builder.header("authorization", format!("Bearer {key}"));
    }
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let response = sender
        .send_request(builder.body(Full::new(Bytes::from(body))).unwrap())
        .await
        .map_err(|e| format!("request: {e}"))?;
    let status = response.status().as_u16();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    Ok((
        peer,
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    ))
}

/// `/healthz` over HTTPS answers ok; returns the certificate the server presented.
async fn healthy(addr: SocketAddr, config: Arc<ClientConfig>) -> CertificateDer<'static> {
    let (cert, status, body) = request(addr, config, "GET", "/healthz", None, None)
        .await
        .unwrap();
    assert_eq!((status, &body["status"]), (200, &json!("ok")));
    cert
}

/// A verification over HTTPS with the bearer key: the token does not exist, so "unknown".
async fn verify_unknown(addr: SocketAddr, config: Arc<ClientConfig>, key: &str) {
    let body = json!({"token": "NOBODY", "code": "123456"});
    let (_, status, body) = request(addr, config, "POST", "/v1/verify", Some(key), Some(body))
        .await
        .unwrap();
    assert_eq!((status, &body["result"]), (200, &json!("unknown")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_with_reload_and_mutual_tls() {
    let temp = tempfile::tempdir().unwrap();
    let state = temp.path().join("state");
    let verify_key = create_key(&state, "verify");
    let ca = new_ca();
    let (cert, key) = write_pair(temp.path(), "server", &leaf(&ca, true));
    let (cert_s, key_s) = (cert.display().to_string(), key.display().to_string());
    let server = start(&state, &["--tls-cert", &cert_s, "--tls-key", &key_s]);
    let plain_client = client_config(&ca, None);

    let first_cert = healthy(server.addr, plain_client.clone()).await;
    verify_unknown(server.addr, plain_client.clone(), &verify_key).await;

    // Plain HTTP on the HTTPS port gets no HTTP answer at all.
    let (status, text) = raw_request(
        server.addr,
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status, 0, "{text}");
    assert!(!text.contains("HTTP/1.1"), "{text}");

    // A renewed certificate: new connections get it after SIGHUP.
    write_pair(temp.path(), "server", &leaf(&ca, true));
    let hup = Command::new("kill")
        .args(["-HUP", &server.child.id().to_string()])
        .status()
        .unwrap();
    assert!(hup.success());
    wait_log(&server.stderr, "reloaded the TLS certificate", 1).await;
    let renewed = healthy(server.addr, plain_client.clone()).await;
    assert_ne!(renewed, first_cert);
    drop(server);

    // Mutual TLS: no client certificate, no service; one issued by the CA, served.
    let ca_file = temp.path().join("clients-ca.crt");
    std::fs::write(&ca_file, ca.cert.pem()).unwrap();
    let ca_s = ca_file.display().to_string();
    let mutual = [
        "--tls-cert",
        &cert_s,
        "--tls-key",
        &key_s,
        "--client-ca",
        &ca_s,
    ];
    let server = start(&state, &mutual);
    let refused = request(server.addr, plain_client, "GET", "/healthz", None, None).await;
    assert!(refused.is_err(), "{refused:?}");
    let stranger = new_ca();
    let foreign = request(
        server.addr,
        client_config(&ca, Some(&leaf(&stranger, false))),
        "GET",
        "/healthz",
        None,
        None,
    )
    .await;
    assert!(foreign.is_err(), "{foreign:?}");
    let with_cert = client_config(&ca, Some(&leaf(&ca, false)));
    verify_unknown(server.addr, with_cert.clone(), &verify_key).await;
    // Without a bearer key, a certificate the CA issued but nobody registered: 401.
    let r = request(
        server.addr,
        with_cert,
        "POST",
        "/v1/verify",
        None,
        Some(json!({})),
    )
    .await
    .unwrap();
    assert_eq!((r.1, &r.2["error"]), (401, &json!("unauthorized")));
    drop(server);

    // A client certificate registered as a key stands in for the bearer key, with its scope.
    let backend = leaf(&ca, false);
    let (backend_crt, _) = write_pair(temp.path(), "backend", &backend);
    let out = crate::common::run_cli(
        &state,
        &[
            "api-key",
            "add-cert",
            "--scope",
            "verify",
            "--name",
            "backend",
            "--cert",
            &backend_crt.display().to_string(),
        ],
    );
    assert!(out.contains("'backend' with scope verify"), "{out}");
    let list = crate::common::run_cli(&state, &["api-key", "list"]);
    assert!(
        list.contains("backend\tverify\t") && list.contains("\tclient certificate"),
        "{list}"
    );
    let server = start(&state, &mutual);
    let config = client_config(&ca, Some(&backend));
    let body = json!({"token": "NOBODY", "code": "123456"});
    let r = request(
        server.addr,
        config.clone(),
        "POST",
        "/v1/verify",
        None,
        Some(body),
    )
    .await
    .unwrap();
    assert_eq!((r.1, &r.2["result"]), (200, &json!("unknown")), "{:?}", r.2);
    let r = request(server.addr, config, "GET", "/v1/tokens", None, None)
        .await
        .unwrap();
    assert_eq!((r.1, &r.2["error"]), (403, &json!("forbidden")));
    // The audit trail names the certificate's key as the caller.
    let out = crate::common::run_cli(
        &state,
        &["token", "audit", "--all", "--since", "2020-01-01", "--json"],
    );
    assert!(out.contains("\"caller\":\"api:backend\""), "{out}");
}

/// A CA and a server certificate it issued, written to `dir`; the `serve` arguments for
/// them.
fn tls_args(dir: &Path) -> (Ca, Vec<String>) {
    let ca = new_ca();
    let (cert, key) = write_pair(dir, "server", &leaf(&ca, true));
    let args = ["--tls-cert", &cert.display().to_string(), "--tls-key"]
        .iter()
        .map(|s| (*s).to_owned())
        .chain([key.display().to_string()])
        .collect();
    (ca, args)
}

fn as_strs(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

/// Opens `n` connections to `addr` that never get a request through: every other one stops
/// inside its TLS handshake (a ClientHello record header, then a byte a second), the others
/// finish the handshake and send a request head a header line a second. After 4 s, returns
/// how many were opened and how many of those the server had closed by then.
async fn slow_https_barrage(
    addr: SocketAddr,
    config: Arc<ClientConfig>,
    n: usize,
) -> (usize, usize) {
    use tokio::io::AsyncWriteExt;
    let connector = TlsConnector::from(config);
    let patience = Duration::from_secs(2);
    let (mut handshaking, mut heading) = (Vec::new(), Vec::new());
    for i in 0..n {
        let Ok(Ok(mut tcp)) =
            tokio::time::timeout(patience, tokio::net::TcpStream::connect(addr)).await
        else {
            continue;
        };
        if i % 2 == 0 {
            let _ = tcp.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00]).await;
            handshaking.push(tcp);
        } else {
            let name = ServerName::try_from("localhost").unwrap();
            if let Ok(Ok(mut tls)) =
                tokio::time::timeout(patience, connector.connect(name, tcp)).await
            {
                let _ = tls
                    .write_all(b"POST /v1/verify HTTP/1.1\r\nHost: x\r\n")
                    .await;
                let _ = tls.flush().await;
                heading.push(tls);
            }
        }
    }
    let opened = handshaking.len() + heading.len();
    let mut closed = 0;
    let slice = Duration::from_millis(200);
    for _ in 0..4 {
        // The attacker's pace, not a wait for the server.
        tokio::time::sleep(Duration::from_secs(1)).await;
        closed = 0;
        for s in &mut handshaking {
            let wrote = tokio::time::timeout(slice, s.write_all(&[0x01])).await;
            closed += usize::from(!matches!(wrote, Ok(Ok(()))));
        }
        for s in &mut heading {
            let wrote = tokio::time::timeout(slice, async {
                s.write_all(b"X-Slow: 1\r\n").await?;
                s.flush().await
            })
            .await;
            closed += usize::from(!matches!(wrote, Ok(Ok(()))));
        }
    }
    (opened, closed)
}

/// Issue 15's slow-client defences on the HTTPS port: 1,100 connections, half stuck in their
/// TLS handshake and half trickling a request head, against a server limited to 1024
/// descriptors, leave `/healthz` and verifications from a well-behaved HTTPS client
/// answering within 2 s all along; the server closes connections to stay within its limit.
#[test]
fn slow_handshakes_and_heads_over_https_under_1024_descriptors_leave_it_answering() {
    const BARRAGE: usize = 1100;
    const SEED: &[u8] = b"https barrage seed 001";
    enough_descriptors(BARRAGE as u64 + 500);
    let temp = tempfile::tempdir().unwrap();
    let (ca, args) = tls_args(temp.path());
    let server = Server::start_with_nofile(1024, None, &as_strs(&args));
    let addr = server.addr;
    let config = client_config(&ca, None);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let enrol = json!({"serial": "TB-1", "kind": "hotp", "secret": base32(SEED)});
    let (_, status, body) = runtime
        .block_on(request(
            addr,
            config.clone(),
            "POST",
            "/v1/tokens",
            Some(&server.admin_key),
            Some(enrol),
        ))
        .unwrap();
    assert_eq!(status, 201, "{body}");

    let attack = {
        let config = config.clone();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Runtime::new().unwrap();
            runtime.block_on(slow_https_barrage(addr, config, BARRAGE))
        })
    };
    let limit = Duration::from_secs(2);
    let (mut probes, mut counter, mut slowest) = (0, 0, Duration::ZERO);
    while !attack.is_finished() {
        let started = Instant::now();
        let health = runtime.block_on(async {
            tokio::time::timeout(
                limit,
                request(addr, config.clone(), "GET", "/healthz", None, None),
            )
            .await
        });
        let took = started.elapsed();
        assert!(
            matches!(health, Ok(Ok((_, 200, _)))),
            "/healthz after {took:?}, probe {probes}: {health:?}"
        );
        slowest = slowest.max(took);
        let started = Instant::now();
        let code = json!({"token": "TB-1", "code": hotp(SEED, counter, 6)});
        let verified = runtime.block_on(async {
            tokio::time::timeout(
                limit,
                request(
                    addr,
                    config.clone(),
                    "POST",
                    "/v1/verify",
                    Some(&server.verify_key),
                    Some(code),
                ),
            )
            .await
        });
        let took = started.elapsed();
        let Ok(Ok((_, 200, body))) = verified else {
            panic!("verify after {took:?}, probe {probes}: {verified:?}");
        };
        assert_eq!(body["result"], json!("accepted"), "{body}");
        slowest = slowest.max(took);
        counter += 1;
        probes += 1;
        // Probe interval while the attack lasts (it ends when its thread does).
        std::thread::sleep(Duration::from_millis(200));
    }
    let (opened, closed) = attack.join().unwrap();
    assert!(probes >= 10, "{probes} probes");
    assert!(slowest < limit, "{slowest:?}");
    assert!(opened >= BARRAGE - 10, "only {opened} connections opened");
    assert!(closed >= BARRAGE - 1024, "{closed} of {opened} closed");
    assert!(!server.stderr.lock().unwrap().contains("panicked"));
}

/// How long `stream` stays open from `started`, reading what it sends (within 5 s).
async fn closed_after<S: tokio::io::AsyncRead + Unpin>(
    stream: &mut S,
    started: Instant,
) -> Duration {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 1024];
    let read_all = async {
        // End of stream, or an error (no close_notify): either way, closed.
        while matches!(stream.read(&mut buf).await, Ok(n) if n > 0) {}
    };
    tokio::time::timeout(Duration::from_secs(5), read_all)
        .await
        .expect("still open after 5 s");
    started.elapsed()
}

/// The head and idle deadlines hold on HTTPS as on HTTP: a connection that never starts its
/// handshake, one that stops halfway through it, and one that completes it but sends no
/// request are closed after the head timeout (counted from the accept); a kept-alive
/// connection silent after an answer is closed after the idle timeout.
#[test]
fn https_connections_have_the_head_and_idle_deadlines() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let temp = tempfile::tempdir().unwrap();
    let (ca, mut args) = tls_args(temp.path());
    args.extend(["--head-timeout-ms", "800", "--idle-timeout-ms", "600"].map(String::from));
    let server = Server::start_with(None, &as_strs(&args));
    let connector = TlsConnector::from(client_config(&ca, None));
    let name = || ServerName::try_from("localhost").unwrap();
    let within = |took: Duration, from: u64| {
        took >= Duration::from_millis(from) && took < Duration::from_millis(2500)
    };
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let started = Instant::now();
        let mut silent = tokio::net::TcpStream::connect(server.addr).await.unwrap();
        let took = closed_after(&mut silent, started).await;
        assert!(within(took, 700), "silent connection closed after {took:?}");

        let started = Instant::now();
        let mut halfway = tokio::net::TcpStream::connect(server.addr).await.unwrap();
        halfway
            .write_all(&[0x16, 0x03, 0x01, 0x02, 0x00])
            .await
            .unwrap();
        let took = closed_after(&mut halfway, started).await;
        assert!(within(took, 700), "half a handshake closed after {took:?}");

        let started = Instant::now();
        let tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
        let mut mute = connector.connect(name(), tcp).await.unwrap();
        let took = closed_after(&mut mute, started).await;
        assert!(
            within(took, 700),
            "handshake without a request closed after {took:?}"
        );

        let tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
        let mut kept = connector.connect(name(), tcp).await.unwrap();
        kept.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        kept.flush().await.unwrap();
        let mut answer = Vec::new();
        while !String::from_utf8_lossy(&answer).contains("\"ok\"") {
            let mut buf = [0u8; 1024];
            let n = kept.read(&mut buf).await.unwrap();
            assert!(n > 0, "closed before answering");
            answer.extend_from_slice(&buf[..n]);
        }
        let took = closed_after(&mut kept, Instant::now()).await;
        assert!(
            within(took, 500),
            "idle HTTPS connection closed after {took:?}"
        );
    });
    // The server itself is fine, and drains on SIGTERM as on HTTP.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(healthy(server.addr, client_config(&ca, None)));
    let mut server = server;
    let status = server.terminate();
    let stderr = server.stderr.lock().unwrap().clone();
    assert!(status.success(), "{status:?}: {stderr}");
    assert!(stderr.contains("codereader-verifier: stopped"), "{stderr}");
}

/// Waits (up to 20 s) until `count` lines of the log hold `part`.
async fn wait_log(stderr: &Mutex<String>, part: &str, count: usize) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while stderr
        .lock()
        .unwrap()
        .lines()
        .filter(|l| l.contains(part))
        .count()
        < count
    {
        assert!(Instant::now() < deadline, "{}", stderr.lock().unwrap());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_settings_file_moves_the_tls_files_on_sighup() {
    let temp = tempfile::tempdir().unwrap();
    let state = temp.path().join("state");
    let ca = new_ca();
    let (first, second) = (leaf(&ca, true), leaf(&ca, true));
    let (cert_a, key_a) = write_pair(temp.path(), "a", &first);
    let (cert_b, key_b) = write_pair(temp.path(), "b", &second);
    let file = temp.path().join("verifier.toml");
    let settings = |cert: &Path, key: &Path| {
        let text = format!(
            "tls-cert = \"{}\"\ntls-key = \"{}\"\n",
            cert.display(),
            key.display()
        );
        std::fs::write(&file, text).unwrap();
    };
    settings(&cert_a, &key_a);
    let server = start(&state, &["--config", file.to_str().unwrap()]);
    let hup = || {
        let status = Command::new("kill")
            .args(["-HUP", &server.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    };
    let client = client_config(&ca, None);
    assert_eq!(healthy(server.addr, client.clone()).await, *first.0.der());

    // A key that does not fit the certificate: refused, the first pair stays.
    settings(&cert_b, &key_a);
    hup();
    wait_log(&server.stderr, "keeping the old settings", 1).await;
    assert_eq!(healthy(server.addr, client.clone()).await, *first.0.der());

    settings(&cert_b, &key_b);
    hup();
    wait_log(&server.stderr, "applied `tls-cert`, `tls-key`", 1).await;
    wait_log(&server.stderr, "reloaded the TLS certificate", 2).await;
    assert_eq!(healthy(server.addr, client).await, *second.0.der());
}
