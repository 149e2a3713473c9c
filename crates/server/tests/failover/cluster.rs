//! A PostgreSQL 15 high-availability cluster for tests, from nothing: one etcd and three
//! Patroni nodes on 127.0.0.1 (distinct ports, data directories in a temp dir), stopped and
//! removed on drop. The Patroni configuration is the one the server README recommends
//! (section "PostgreSQL high availability"); keep them in step.

#![allow(dead_code, unreachable_pub)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// Patroni's timing: the leader key lives `TTL` seconds; the loop runs every `LOOP_WAIT`;
/// DCS and PostgreSQL calls are retried for `RETRY_TIMEOUT` (Patroni wants
/// `loop_wait + 2 * retry_timeout <= ttl`).
pub const TTL: u64 = 10;
pub const LOOP_WAIT: u64 = 1;
pub const RETRY_TIMEOUT: u64 = 4;

const PASSWORD: &str = "codereader-test";

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// A command run as `postgres` when we are root (PostgreSQL refuses root), with `exec`
/// semantics (`setpriv` does not fork), so the child's pid is the program's own.
fn command_as(run_as_postgres: bool, program: &str) -> Command {
    if run_as_postgres {
        let mut c = Command::new("setpriv");
        c.args([
            "--reuid=postgres",
            "--regid=postgres",
            "--init-groups",
            "--",
            program,
        ]);
        c
    } else {
        Command::new(program)
    }
}

fn kill(signal: &str, pids: &[u32]) {
    if pids.is_empty() {
        return;
    }
    let _ = Command::new("kill")
        .arg(signal)
        .args(pids.iter().map(u32::to_string))
        .stderr(Stdio::null())
        .status();
}

pub struct Node {
    pub name: String,
    pub pg_port: u16,
    pub config: PathBuf,
    pub data: PathBuf,
    patroni: Option<Child>,
}

impl Node {
    /// The postmaster's pid, if it runs.
    pub fn postmaster(&self) -> Option<u32> {
        let pid = std::fs::read_to_string(self.data.join("postmaster.pid")).ok()?;
        pid.lines().next()?.trim().parse().ok()
    }

    /// Every process of the node: Patroni, the postmaster and the postmaster's children.
    pub fn processes(&self) -> Vec<u32> {
        let mut pids: Vec<u32> = self.patroni.iter().map(Child::id).collect();
        if let Some(pm) = self.postmaster() {
            pids.push(pm);
            let out = Command::new("pgrep")
                .args(["-P", &pm.to_string()])
                .output()
                .unwrap();
            pids.extend(
                String::from_utf8_lossy(&out.stdout)
                    .split_whitespace()
                    .filter_map(|p| p.parse::<u32>().ok()),
            );
        }
        pids
    }
}

pub struct Cluster {
    dir: tempfile::TempDir,
    pub nodes: Vec<Node>,
    etcd: Option<Child>,
    etcd_port: u16,
    etcd_peer: u16,
    run_as_postgres: bool,
}

impl Cluster {
    /// Starts etcd and three Patroni nodes, and waits until a leader and its synchronous
    /// standby (with `synchronous`; else a replica) stream and the third node runs.
    pub fn start(synchronous: bool) -> Cluster {
        let dir = tempfile::Builder::new()
            .prefix("codereader-ha-")
            .tempdir()
            .unwrap();
        let run_as_postgres = is_root();
        if run_as_postgres {
            let status = Command::new("chown")
                .args(["postgres:postgres", &dir.path().display().to_string()])
                .status()
                .unwrap();
            assert!(status.success());
        }
        let mut cluster = Cluster {
            etcd_port: free_port(),
            etcd_peer: free_port(),
            dir,
            nodes: Vec::new(),
            etcd: None,
            run_as_postgres,
        };
        cluster.start_etcd();
        for i in 1..=3 {
            let node = cluster.write_node(i, synchronous);
            cluster.nodes.push(node);
        }
        for i in 0..3 {
            cluster.start_node(i);
        }
        cluster.wait_healthy(synchronous, Duration::from_secs(120));
        cluster
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The verifier's address: every node, the primary chosen by `target_session_attrs`.
    pub fn url(&self) -> String {
        let hosts: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.pg_port))
            .collect();
        format!(
            "postgres://postgres:{PASSWORD}@{}/postgres?target_session_attrs=read-write",
            hosts.join(",")
        )
    }

    pub fn start_etcd(&mut self) {
        assert!(self.etcd.is_none());
        let (client, peer) = (self.etcd_port, self.etcd_peer);
        let data = self.dir.path().join("etcd");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("etcd.log"))
            .unwrap();
        let child = command_as(self.run_as_postgres, "etcd")
            .args([
                "--name",
                "e1",
                "--data-dir",
                &data.display().to_string(),
                "--listen-client-urls",
                &format!("http://127.0.0.1:{client}"),
                "--advertise-client-urls",
                &format!("http://127.0.0.1:{client}"),
                "--listen-peer-urls",
                &format!("http://127.0.0.1:{peer}"),
                "--initial-advertise-peer-urls",
                &format!("http://127.0.0.1:{peer}"),
                "--initial-cluster",
                &format!("e1=http://127.0.0.1:{peer}"),
                // Patroni 3.0.2 speaks etcd's v2 API here (see the server README).
                "--enable-v2",
            ])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start etcd (Debian package etcd-server)");
        self.etcd = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", client)).is_err() {
            assert!(Instant::now() < deadline, "etcd did not listen");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Stops etcd (SIGTERM) and waits for it to go.
    pub fn stop_etcd(&mut self) {
        if let Some(mut etcd) = self.etcd.take() {
            kill("-TERM", &[etcd.id()]);
            let _ = etcd.wait();
        }
    }

    fn write_node(&self, i: usize, synchronous: bool) -> Node {
        let name = format!("node{i}");
        let (pg_port, rest_port) = (free_port(), free_port());
        let base = self.dir.path().join(&name);
        let data = base.join("data");
        let yaml = format!(
            r#"scope: codereader
name: {name}
restapi:
  listen: 127.0.0.1:{rest_port}
  connect_address: 127.0.0.1:{rest_port}
etcd:
  host: 127.0.0.1:{etcd}
bootstrap:
  dcs:
    ttl: {TTL}
    loop_wait: {LOOP_WAIT}
    retry_timeout: {RETRY_TIMEOUT}
    maximum_lag_on_failover: 1048576
    synchronous_mode: {synchronous}
    synchronous_mode_strict: {synchronous}
    failsafe_mode: true
    postgresql:
      use_pg_rewind: true
      use_slots: true
      remove_data_directory_on_rewind_failure: true
      remove_data_directory_on_diverged_timelines: true
      parameters:
        wal_log_hints: "on"
        max_connections: 120
        synchronous_commit: "on"
        wal_retrieve_retry_interval: 1000
  initdb:
    - encoding: UTF8
    - locale: C.UTF-8
  pg_hba:
    - local all all trust
    - host replication replicator 127.0.0.1/32 md5
    - host all all 127.0.0.1/32 md5
postgresql:
  listen: 127.0.0.1:{pg_port}
  connect_address: 127.0.0.1:{pg_port}
  data_dir: {data}
  bin_dir: /usr/lib/postgresql/15/bin
  pgpass: {base}/pgpass
  authentication:
    superuser:
      username: postgres
      password: {PASSWORD}
    replication:
      username: replicator
      password: {PASSWORD}
    rewind:
      username: postgres
      password: {PASSWORD}
  parameters:
    unix_socket_directories: {base}
    shared_buffers: 16MB
    fsync: "on"
"#,
            etcd = self.etcd_port,
            data = data.display(),
            base = base.display(),
        );
        std::fs::create_dir_all(&base).unwrap();
        let config = base.join("patroni.yml");
        std::fs::write(&config, yaml).unwrap();
        if self.run_as_postgres {
            let status = Command::new("chown")
                .args(["-R", "postgres:postgres", &base.display().to_string()])
                .status()
                .unwrap();
            assert!(status.success());
        }
        Node {
            name,
            pg_port,
            config,
            data,
            patroni: None,
        }
    }

    fn start_node(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        let log =
            std::fs::File::create(self.dir.path().join(format!("{}.log", node.name))).unwrap();
        let child = command_as(self.run_as_postgres, "patroni")
            .arg(&node.config)
            .env("HOME", node.config.parent().unwrap())
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start patroni (Debian package patroni)");
        node.patroni = Some(child);
    }

    /// `patronictl list` as JSON: one object per member (`Member`, `Role`, `State`, ...).
    pub fn members(&self) -> Vec<Value> {
        let out = command_as(self.run_as_postgres, "patronictl")
            .args(["-c", &self.nodes[0].config.display().to_string()])
            .args(["list", "-f", "json"])
            .env("HOME", self.dir.path())
            .stderr(Stdio::null())
            .output()
            .unwrap();
        serde_json::from_slice(&out.stdout).unwrap_or_default()
    }

    /// The index of the node that holds the leader key, if one does.
    pub fn leader(&self) -> Option<usize> {
        let members = self.members();
        let name = members
            .iter()
            .find(|m| m["Role"] == "Leader" && m["State"] == "running")?["Member"]
            .as_str()?
            .to_owned();
        self.nodes.iter().position(|n| n.name == name)
    }

    /// Whether a leader runs, and the two others stream from it (one as its synchronous
    /// standby, with `synchronous`).
    pub fn is_healthy(&self, synchronous: bool) -> bool {
        let members = self.members();
        let role = |r: &str| members.iter().filter(|m| m["Role"] == r).count();
        let leaders = members
            .iter()
            .filter(|m| m["Role"] == "Leader" && m["State"] == "running")
            .count();
        let streaming = members
            .iter()
            // Patroni 3.0.2 says "running" for a replica; later versions "streaming".
            .filter(|m| {
                m["Role"] != "Leader" && (m["State"] == "streaming" || m["State"] == "running")
            })
            .count();
        members.len() == 3
            && leaders == 1
            && streaming == 2
            && (!synchronous || role("Sync Standby") == 1)
    }

    /// Waits until [`Cluster::is_healthy`]; returns how many members had to be rebuilt.
    ///
    /// A replica that received WAL from the old primary which the promoted standby never
    /// had (in flight when the primary froze or died) has diverged and cannot follow the new
    /// primary; Debian's Patroni 3.0.2 leaves it "starting up", waiting for WAL forever,
    /// instead of rewinding it. Such a member, still not replicating 20 s after the leader
    /// and its synchronous standby are up, is rebuilt from the leader (`patronictl reinit`),
    /// as an operator would.
    pub fn wait_healthy(&self, synchronous: bool, within: Duration) -> usize {
        let deadline = Instant::now() + within;
        let mut reinits = 0;
        let mut stuck_since: Option<Instant> = None;
        while !self.is_healthy(synchronous) {
            if Instant::now() > deadline {
                panic!(
                    "the cluster did not become healthy: {:?}\n{}",
                    self.members(),
                    self.logs()
                );
            }
            let members = self.members();
            let leader_up = members
                .iter()
                .any(|m| m["Role"] == "Leader" && m["State"] == "running");
            let sync_up = !synchronous || members.iter().any(|m| m["Role"] == "Sync Standby");
            let stuck: Vec<String> = self
                .nodes
                .iter()
                .filter(|n| {
                    !members.iter().any(|m| {
                        m["Member"] == n.name.as_str()
                            && (m["Role"] == "Leader" || m["Role"] == "Sync Standby")
                            || m["Member"] == n.name.as_str()
                                && (m["State"] == "running" || m["State"] == "streaming")
                    })
                })
                .map(|n| n.name.clone())
                .collect();
            if leader_up && sync_up && !stuck.is_empty() {
                let since = *stuck_since.get_or_insert_with(Instant::now);
                if since.elapsed() > Duration::from_secs(20) {
                    for name in &stuck {
                        eprintln!("failover: {name} does not replicate; rebuilding it (reinit)");
                        let _ = command_as(self.run_as_postgres, "patronictl")
                            .args(["-c", &self.nodes[0].config.display().to_string()])
                            .args(["reinit", "codereader", name, "--force"])
                            .env("HOME", self.dir.path())
                            .output();
                        reinits += 1;
                    }
                    stuck_since = None;
                }
            } else {
                stuck_since = None;
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        reinits
    }

    /// A planned switchover from the leader to another node.
    pub fn switchover(&self) {
        let leader = self.leader().expect("a leader");
        let candidate = (leader + 1) % 3;
        let out = command_as(self.run_as_postgres, "patronictl")
            .args(["-c", &self.nodes[0].config.display().to_string()])
            .args([
                "switchover",
                "--leader",
                &self.nodes[leader].name,
                "--candidate",
                &self.nodes[candidate].name,
                "--force",
            ])
            .env("HOME", self.dir.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "switchover: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The tail of every log, for a failure message.
    pub fn logs(&self) -> String {
        let mut all = String::new();
        for name in ["etcd", "node1", "node2", "node3"] {
            let text = std::fs::read_to_string(self.dir.path().join(format!("{name}.log")))
                .unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            let tail = lines[lines.len().saturating_sub(15)..].join("\n");
            all.push_str(&format!("--- {name}.log\n{tail}\n"));
        }
        all
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::env::var_os("CODEREADER_FAILOVER_KEEP").is_some() {
            self.dir.disable_cleanup(true);
            eprintln!(
                "failover: the cluster's logs are in {}",
                self.dir.path().display()
            );
        }
        // Thaw anything frozen, then kill: nothing here is worth a clean shutdown.
        let mut pids: Vec<u32> = Vec::new();
        for node in &self.nodes {
            pids.extend(node.processes());
        }
        kill("-CONT", &pids);
        kill("-KILL", &pids);
        for node in &mut self.nodes {
            if let Some(mut p) = node.patroni.take() {
                let _ = p.wait();
            }
        }
        if let Some(mut etcd) = self.etcd.take() {
            let _ = etcd.kill();
            let _ = etcd.wait();
        }
        // The postmasters' children end once they see the postmaster gone.
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.nodes.iter().any(|n| {
            n.postmaster()
                .is_some_and(|pm| Path::new(&format!("/proc/{pm}")).exists())
        }) && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}
