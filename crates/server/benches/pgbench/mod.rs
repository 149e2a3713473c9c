//! The engine's own baseline for the PostgreSQL rows of `bench-verifier`: pgbench, on the
//! same throw-away cluster and in the same run, with a script of one single-row `UPDATE`
//! per transaction (durable: `synchronous_commit=on`, fsync on, over TCP to 127.0.0.1).
//!
//! A verification that is accepted changes one token row and appends one audit line in one
//! durable commit, so pgbench's rate for one durable row change is the ceiling the
//! PostgreSQL store can approach on this machine (issue 27's goal: verify over HTTP >= 0.9x
//! of it). Kept apart from the load generator's phases so that both evolve on their own.
//!
//! `--pgbench-seconds S` (default 10), `--pgbench-clients C` (default 32; `-j 2` threads).

use std::process::Command;
use std::sync::Mutex;

use codereader_verifier::testing::TempPostgres;

/// One pgbench run beside a store's verify rates.
struct Row {
    store: String,
    tps: Result<f64, String>,
    verify: f64,
    library: f64,
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

/// Runs pgbench on `pg` (in a database of its own) and keeps its rate beside `verify` (over
/// HTTP) and `library` (in process), the store's rates measured just before on the same
/// cluster.
pub(crate) fn run_beside(store: &str, pg: &TempPostgres, verify: f64, library: f64) {
    // On a thread of its own: creating the database uses the sync `postgres` client, whose
    // runtime may not start inside the load generator's.
    let tps = std::thread::scope(|scope| scope.spawn(|| measure(pg)).join())
        .unwrap_or_else(|_| Err("pgbench's thread panicked".to_owned()));
    if let Err(e) = &tps {
        eprintln!("bench-verifier: pgbench: {e}");
    }
    ROWS.lock().unwrap().push(Row {
        store: store.to_owned(),
        tps,
        verify,
        library,
    });
}

fn measure(pg: &TempPostgres) -> Result<f64, String> {
    let (seconds, clients) = (
        option("--pgbench-seconds", 10, 60),
        option("--pgbench-clients", 32, 1000),
    );
    pg.create_database("pgbench").map_err(|e| e.to_string())?;
    let pgbench = pg.bin().join("pgbench");
    let port = pg.port().to_string();
    let connect = ["-h", "127.0.0.1", "-p", port.as_str(), "-U", "postgres"];
    eprintln!("bench-verifier: postgres: pgbench -i -s 1");
    run(Command::new(&pgbench)
        .args(connect)
        .args(["-i", "-q", "-s", "1", "pgbench"]))?;
    let script =
        std::env::temp_dir().join(format!("codereader-pgbench-{}.sql", std::process::id()));
    std::fs::write(&script, SCRIPT).map_err(|e| format!("writing {}: {e}", script.display()))?;
    eprintln!("bench-verifier: postgres: pgbench -c {clients} -j 2 -T {seconds}, one UPDATE");
    let out = run(Command::new(&pgbench)
        .env("PGOPTIONS", "-c synchronous_commit=on")
        .args(connect)
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
    println!(
        "\n{:<34} {:>11} {:>16} {:>16}",
        "pgbench, same cluster", "tps", "verify HTTP vs", "in process vs"
    );
    for row in rows.iter() {
        match &row.tps {
            Ok(tps) => println!(
                "{:<34} {:>11.0} {:>15.2}x {:>15.2}x",
                format!("{}: one-row UPDATE", row.store),
                tps,
                row.verify / tps,
                row.library / tps
            ),
            Err(_) => println!(
                "{:<34} {:>11}",
                format!("{}: one-row UPDATE", row.store),
                "failed"
            ),
        }
    }
    println!(
        "pgbench: -c {} -j 2 -T {} (--pgbench-clients, --pgbench-seconds), synchronous_commit=on, \
         127.0.0.1, right after the store's phases; goal (issue 27): verify over HTTP >= 0.9x\n\
         (the server holds at most --pg-connections database connections, 16 unless given with\n\
         --server-arg; pgbench holds one per client)",
        option("--pgbench-clients", 32, 1000),
        option("--pgbench-seconds", 10, 60)
    );
}
