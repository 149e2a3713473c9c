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

use codereader_verifier::testing::TempPostgres;

/// A store's pgbench runs and the verify rates measured between them.
struct Row {
    store: String,
    before: Result<f64, String>,
    after: Result<f64, String>,
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
pub(crate) fn before(pg: &TempPostgres) -> Result<f64, String> {
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
    before: Result<f64, String>,
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

fn report(tps: &Result<f64, String>) {
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

fn measure(pg: &TempPostgres) -> Result<f64, String> {
    let (seconds, clients) = (
        option("--pgbench-seconds", 10, 60),
        option("--pgbench-clients", 32, 1000),
    );
    let script =
        std::env::temp_dir().join(format!("codereader-pgbench-{}.sql", std::process::id()));
    std::fs::write(&script, SCRIPT).map_err(|e| format!("writing {}: {e}", script.display()))?;
    eprintln!("bench-verifier: postgres: pgbench -c {clients} -j 2 -T {seconds}, one UPDATE");
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
    let out = out?;
    // "tps = 19834.123456 (without initial connection time)"
    out.lines()
        .find_map(|l| l.strip_prefix("tps = "))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| format!("no tps in pgbench's output:\n{out}"))
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
    let show = |tps: &Result<f64, String>| match tps {
        Ok(tps) => format!("{tps:.0}"),
        Err(_) => "failed".to_owned(),
    };
    for row in rows.iter() {
        let mean = match (&row.before, &row.after) {
            (Ok(b), Ok(a)) => Some((b + a) / 2.0),
            (Ok(one), Err(_)) | (Err(_), Ok(one)) => Some(*one),
            (Err(_), Err(_)) => None,
        };
        println!(
            "\n{}: pgbench one-row UPDATE, tps before / after the verify phases: {} / {}",
            row.store,
            show(&row.before),
            show(&row.after)
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
    }
    println!(
        "pgbench: -c {} -j 2 -T {} (--pgbench-clients, --pgbench-seconds), synchronous_commit=on, \
         127.0.0.1; goal (issue 27): verify over HTTP >= 0.9x\n\
         (pgbench holds one connection per client; each verify phase names the server's \
         --pg-connections and the load generator's connections)",
        option("--pgbench-clients", 32, 1000),
        option("--pgbench-seconds", 10, 60)
    );
}
