//! The engine's own baseline for the PostgreSQL rows of `bench-verifier`: pgbench, on the
//! same throw-away cluster and in the same run, with a script of one single-row `UPDATE`
//! per transaction (durable: `synchronous_commit=on`, fsync on, over TCP to 127.0.0.1).
//!
//! A verification that is accepted changes one token row and appends one audit line in one
//! durable commit, so pgbench's rate for one durable row change is the ceiling the
//! PostgreSQL store can approach on this machine (issue 27's goal: verify over HTTP >= 0.9x
//! of it). Kept apart from the load generator's phases so that both evolve on their own.
//!
//! pgbench runs twice, once before the store's verify phases and once after them, and each
//! verify rate is set against the mean of the two: on a machine whose load drifts (other
//! jobs on the same cores), a single pgbench run minutes away from the verify phase measured
//! the drift as much as the store. The two runs are printed, so the drift shows.
//!
//! `--pgbench-seconds S` (default 10), `--pgbench-clients C` (default 32; `-j 2` threads).

use std::process::Command;
use std::sync::Mutex;
use std::time::Duration;

use codereader_verifier::testing::TempPostgres;

/// One pgbench run: transactions per second, and the CPU per transaction (microseconds) of
/// the database cluster and of pgbench itself.
pub(crate) struct Run {
    tps: f64,
    database_us: f64,
    client_us: f64,
}

/// A store's pgbench runs and the verify rates measured between them.
struct Row {
    store: String,
    before: Result<Run, String>,
    after: Result<Run, String>,
    /// Phase name and verifies/s.
    verifies: Vec<(String, f64)>,
}

/// The runs of this process, printed after the main table.
static ROWS: Mutex<Vec<Row>> = Mutex::new(Vec::new());

/// The script: one durable single-row update of a random row of pgbench's accounts table.
const SCRIPT: &str = "\\set aid random(1, 100000 * :scale)\n\
     UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid = :aid;\n";

fn option(name: &str, default: u64, max: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
        .clamp(1, max)
}

/// Creates pgbench's database on `pg` and runs pgbench once; the rate, kept as the `before`
/// of [`after`].
pub(crate) fn before(pg: &TempPostgres) -> Result<Run, String> {
    // On a thread of its own: creating the database uses the sync `postgres` client, whose
    // runtime may not start inside the load generator's.
    let tps = std::thread::scope(|scope| {
        scope
            .spawn(|| {
                pg.create_database("pgbench").map_err(|e| e.to_string())?;
                run(Command::new(pg.bin().join("pgbench"))
                    .args(connect(pg))
                    .args(["-i", "-q", "-s", "1", "pgbench"]))?;
                measure(pg)
            })
            .join()
    })
    .unwrap_or_else(|_| Err("pgbench's thread panicked".to_owned()));
    report(&tps);
    tps
}

/// Runs pgbench again on `pg` and keeps both rates beside `verifies` (phase name, verifies/s),
/// the store's rates measured in between on the same cluster.
pub(crate) fn after(
    store: &str,
    pg: &TempPostgres,
    before: Result<Run, String>,
    verifies: Vec<(String, f64)>,
) {
    let tps = measure(pg);
    report(&tps);
    ROWS.lock().unwrap().push(Row {
        store: store.to_owned(),
        before,
        after: tps,
        verifies,
    });
}

fn report(tps: &Result<Run, String>) {
    if let Err(e) = tps {
        eprintln!("bench-verifier: pgbench: {e}");
    }
}

fn connect(pg: &TempPostgres) -> Vec<String> {
    [
        "-h",
        "127.0.0.1",
        "-p",
        &pg.port().to_string(),
        "-U",
        "postgres",
    ]
    .map(str::to_owned)
    .to_vec()
}

/// The postmaster's process id, from its data directory's `postmaster.pid`.
pub(crate) fn postmaster(pg: &TempPostgres) -> Option<u32> {
    std::fs::read_to_string(pg.dir().join("data").join("postmaster.pid"))
        .ok()?
        .lines()
        .next()?
        .trim()
        .parse()
        .ok()
}

/// Fields after the command name of `/proc/PID/stat`, if the process is there (counted
/// from 0 after the name: 11 and 12 are user and system time, 13 and 14 those of children
/// waited for, in ticks of 1/100 s, Linux's `USER_HZ` on every architecture).
pub(crate) fn stat(pid: &str) -> Option<Vec<u64>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name, in parentheses, may hold spaces; fields count from after it.
    Some(
        stat[stat.rfind(')')? + 2..]
            .split(' ')
            .map(|f| f.parse().unwrap_or(0))
            .collect(),
    )
}

/// CPU time (user + system, in ticks of 1/100 s) the whole database cluster has used so
/// far: the postmaster, its live children (backends, WAL writer, checkpointer...), and the
/// children that ended (counted in the postmaster's `cutime`/`cstime` once reaped).
pub(crate) fn cluster_cpu(postmaster: u32) -> Duration {
    let pm = postmaster.to_string();
    let Some(own) = stat(&pm) else {
        return Duration::ZERO;
    };
    let mut ticks = own[11] + own[12] + own[13] + own[14];
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
        else {
            continue;
        };
        if let Some(f) = stat(pid).filter(|f| f[1] == u64::from(postmaster)) {
            ticks += f[11] + f[12];
        }
    }
    Duration::from_millis(ticks * 10)
}

/// CPU time the children of this process that ended have used (pgbench, once waited for).
fn children_cpu() -> Duration {
    stat("self").map_or(Duration::ZERO, |f| {
        Duration::from_millis((f[13] + f[14]) * 10)
    })
}

fn measure(pg: &TempPostgres) -> Result<Run, String> {
    let (seconds, clients) = (
        option("--pgbench-seconds", 10, 60),
        option("--pgbench-clients", 32, 1000),
    );
    let script =
        std::env::temp_dir().join(format!("codereader-pgbench-{}.sql", std::process::id()));
    std::fs::write(&script, SCRIPT).map_err(|e| format!("writing {}: {e}", script.display()))?;
    eprintln!("bench-verifier: postgres: pgbench -c {clients} -j 2 -T {seconds}, one UPDATE");
    let postmaster = postmaster(pg);
    let cpu = |pm: Option<u32>| pm.map_or(Duration::ZERO, cluster_cpu);
    let (database_before, client_before) = (cpu(postmaster), children_cpu());
    let out = run(Command::new(pg.bin().join("pgbench"))
        .env("PGOPTIONS", "-c synchronous_commit=on")
        .args(connect(pg))
        .args([
            "-n",
            "-c",
            &clients.to_string(),
            "-j",
            "2",
            "-T",
            &seconds.to_string(),
        ])
        .arg("-f")
        .arg(&script)
        .arg("pgbench"));
    let _ = std::fs::remove_file(&script);
    let (database, client) = (
        cpu(postmaster) - database_before,
        children_cpu() - client_before,
    );
    let out = out?;
    // "tps = 19834.123456 (without initial connection time)"
    let tps: f64 = out
        .lines()
        .find_map(|l| l.strip_prefix("tps = "))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| format!("no tps in pgbench's output:\n{out}"))?;
    // "number of transactions actually processed: 198341"
    let transactions: f64 = out
        .lines()
        .find_map(|l| l.strip_prefix("number of transactions actually processed: "))
        .and_then(|n| n.split(['/', ' ']).next()?.parse().ok())
        .unwrap_or(f64::NAN);
    let per = |d: Duration| d.as_secs_f64() * 1e6 / transactions;
    Ok(Run {
        tps,
        database_us: per(database),
        client_us: per(client),
    })
}

fn run(command: &mut Command) -> Result<String, String> {
    let out = command
        .output()
        .map_err(|e| format!("cannot run {command:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{command:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Prints the pgbench rows kept so far (none unless a PostgreSQL store ran).
pub(crate) fn print() {
    let rows = ROWS.lock().unwrap();
    if rows.is_empty() {
        return;
    }
    let show = |run: &Result<Run, String>| match run {
        Ok(r) => format!(
            "{:.0} tps ({:.1} us database, {:.1} us pgbench CPU per transaction)",
            r.tps, r.database_us, r.client_us
        ),
        Err(_) => "failed".to_owned(),
    };
    for row in rows.iter() {
        let mean = match (&row.before, &row.after) {
            (Ok(b), Ok(a)) => Some((b.tps + a.tps) / 2.0),
            (Ok(one), Err(_)) | (Err(_), Ok(one)) => Some(one.tps),
            (Err(_), Err(_)) => None,
        };
        println!(
            "\n{}: pgbench one-row UPDATE, before the verify phases: {}\n\
             {:>w$}  after them: {}",
            row.store,
            show(&row.before),
            "",
            show(&row.after),
            w = row.store.len()
        );
        println!(
            "{:<44} {:>11} {:>22}",
            "same cluster, between the two pgbench runs", "per second", "vs pgbench (mean)"
        );
        for (name, rate) in &row.verifies {
            match mean {
                Some(mean) => println!("{name:<44} {rate:>11.0} {:>21.2}x", rate / mean),
                None => println!("{name:<44} {rate:>11.0} {:>22}", "pgbench failed"),
            }
        }
        // The server as it starts by default: the first verify phase over HTTP.
        let first = row
            .verifies
            .iter()
            .find(|(name, _)| name.contains(": verify,"));
        if let (Some((name, rate)), Some(mean)) = (first, mean) {
            let ratio = rate / mean;
            println!(
                "goal (issue 27): PostgreSQL verify over HTTP >= 0.90x pgbench ({name}): \
                 {ratio:.2}x: {}",
                if ratio >= 0.9 { "met" } else { "not met" }
            );
        }
    }
    println!(
        "pgbench: -c {} -j 2 -T {} (--pgbench-clients, --pgbench-seconds), synchronous_commit=on, \
         127.0.0.1\n\
         (pgbench holds one connection per client; each verify phase names the server's \
         --pg-connections and the load generator's connections)",
        option("--pgbench-clients", 32, 1000),
        option("--pgbench-seconds", 10, 60)
    );
}
