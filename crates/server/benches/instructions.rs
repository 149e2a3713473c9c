//! Instructions the server spends per HTTP request, counted by callgrind: the HTTP floor (a
//! verify request with a malformed code, answered 400 before any store work) and an accepted
//! verify on SQLite (`synchronous=FULL`), beside one HMAC-SHA-1 window. The library's own
//! rows are `cargo bench -p codereader-verifier --bench instructions`.
//!
//! `cargo bench -p codereader-verifier-server --bench instructions` (needs `valgrind`) starts
//! the real server under `valgrind --tool=callgrind` twice per row: both runs enrol a HOTP
//! token over HTTP, one then sends `n` requests on one keep-alive connection, the other none;
//! the difference of the two totals (every thread of the server), divided by `n`, is one
//! request with startup, enrolment and shutdown taken out. The client runs natively and is not
//! counted. Under `cargo test` each row runs once with a few requests, natively.
//! `CODEREADER_CALLGRIND_DIR=DIR` keeps callgrind's output files in DIR for
//! `callgrind_annotate`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    missing_docs
)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{BIN, base32, create_key, hotp};

const SECRET: &[u8] = b"12345678901234567890";

/// One request on a keep-alive connection; returns the status.
fn round_trip(stream: &mut BufReader<TcpStream>, key: &str, body: &str) -> u16 {
    let request = format!(
        "POST /v1/verify HTTP/1.1\r\nhost: 127.0.0.1\r\nauthorization: Bearer {key}\r\n\
         content-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.get_mut().write_all(request.as_bytes()).unwrap();
    let mut line = String::new();
    stream.read_line(&mut line).unwrap();
    let status = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    let mut length = 0;
    loop {
        line.clear();
        stream.read_line(&mut line).unwrap();
        if line == "\r\n" {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            if name.eq_ignore_ascii_case("content-length") {
                length = value.trim().parse().unwrap();
            }
        }
    }
    let mut body = vec![0; length];
    stream.read_exact(&mut body).unwrap();
    status
}

/// Runs the server (under callgrind when `out` is given) on a fresh state directory, enrols
/// token "B", sends `ops` requests of `kind`, stops the server with SIGTERM; returns the
/// instructions counted (0 without callgrind).
fn run(kind: &str, ops: u64, out: Option<&Path>) -> u64 {
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path().join("state");
    let verify_key = create_key(&dir, "verify");
    let admin_key = create_key(&dir, "admin");
    let mut command = match out {
        Some(out) => {
            let mut c = Command::new("valgrind");
            c.arg("--tool=callgrind")
                .arg("--quiet")
                .arg(format!("--callgrind-out-file={}", out.display()))
                .arg(BIN);
            c
        }
        None => Command::new(BIN),
    };
    let mut child = command
        .args(["serve", "--listen", "127.0.0.1:0"])
        .env("CODEREADER_STATE", &dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start the server (apt-get install valgrind): {e}"));
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    let addr: SocketAddr = loop {
        line.clear();
        assert!(stdout.read_line(&mut line).unwrap() > 0, "server exited");
        let said = line.trim();
        if let Some(a) = said.strip_prefix("codereader-verifier: listening on http://") {
            break a.parse().unwrap();
        }
    };
    let stream = TcpStream::connect(addr).unwrap();
    stream.set_nodelay(true).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(120)))
        .unwrap();
    let mut stream = BufReader::new(stream);
    // Enrolment, in both runs of a row.
    let body = format!(
        r#"{{"serial": "B", "kind": "hotp", "secret": "{}"}}"#,
        base32(SECRET)
    );
    let request = format!(
        "POST /v1/tokens HTTP/1.1\r\nhost: 127.0.0.1\r\nauthorization: Bearer {admin_key}\r\n\
         content-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.get_mut().write_all(request.as_bytes()).unwrap();
    let mut reply = String::new();
    stream.read_line(&mut reply).unwrap();
    assert!(reply.contains(" 201 "), "{reply}");
    let mut length = 0;
    loop {
        line.clear();
        stream.read_line(&mut line).unwrap();
        if line == "\r\n" {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            if name.eq_ignore_ascii_case("content-length") {
                length = value.trim().parse().unwrap();
            }
        }
    }
    stream.read_exact(&mut vec![0; length]).unwrap();
    // Bodies are built before any request is sent, in both runs.
    let bodies: Vec<String> = (0..ops.max(1))
        .map(|c| match kind {
            "floor" => r#"{"token": "B", "code": "12345x"}"#.to_owned(),
            _ => format!(r#"{{"token": "B", "code": "{}"}}"#, hotp(SECRET, c, 6)),
        })
        .collect();
    let want = if kind == "floor" { 400 } else { 200 };
    for body in bodies.iter().take(ops as usize) {
        assert_eq!(round_trip(&mut stream, &verify_key, body), want);
    }
    drop(stream);
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let status = child.wait().unwrap();
    assert!(status.success(), "server exit: {status}");
    let Some(out) = out else { return 0 };
    let text = std::fs::read_to_string(out).unwrap();
    let total = text
        .lines()
        .find_map(|l| {
            l.strip_prefix("summary:")
                .or_else(|| l.strip_prefix("totals:"))
        })
        .expect("callgrind output without a total");
    total.trim().parse().unwrap()
}

fn main() {
    let rows = [
        ("floor", "HTTP floor (400, no store)", 2_000u64),
        ("verify", "verify over HTTP, SQLite FULL", 1_000),
    ];
    if !std::env::args().any(|a| a == "--bench") {
        // `cargo test`: each row with a few requests, natively.
        for (kind, _, _) in rows {
            run(kind, 3, None);
        }
        return;
    }
    // `CODEREADER_CALLGRIND_DIR=DIR` keeps callgrind's files there, for callgrind_annotate.
    let temp = tempfile::tempdir().unwrap();
    let dir = std::env::var_os("CODEREADER_CALLGRIND_DIR")
        .map_or_else(|| temp.path().to_path_buf(), std::path::PathBuf::from);
    println!();
    println!("| request | server instructions/request |");
    println!("|---|---:|");
    for (kind, label, n) in rows {
        let with = run(kind, n, Some(&dir.join(format!("{kind}.{n}.out"))));
        let without = run(kind, 0, Some(&dir.join(format!("{kind}.0.out"))));
        let per = with.saturating_sub(without) as f64 / n as f64;
        println!("| {label} | {per:.0} |");
    }
}
