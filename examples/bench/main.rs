//! The benchmark suite: `authd serve` as its own process on a fresh
//! database, driven over real HTTP, every result next to a ceiling measured in
//! the same run on the same machine:
//!
//! - refresh and `GET /me`: Postgres running the store's own SQL text (read
//!   from src/store at build time) under pgbench, `-M prepared`, at the same
//!   concurrency: the database's speed without sqlx, HTTP or JWTs;
//! - login: argon2id hashes/s on all cores with the configured parameters.
//!
//! Scenarios: refresh chains (a broken chain is a refresh that did not return
//! a successor), /me, login, a login flood at 2× and 4× hashing capacity,
//! growth (the same refresh and /me after seeding a million refresh tokens),
//! and the service's peak RSS in each. Prints a table and writes JSON.
//!
//! ```sh
//! bash scripts/bench.sh            # release build, full run (~10 min)
//! bash scripts/bench.sh --smoke    # every scenario for a moment, no verdicts
//! ```

mod load;
mod pg;
mod service;
mod wire;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use authd::domain::Password;
use authd::password::PasswordHasher;
use clap::Parser;
use serde_json::{Value, json};

use crate::load::Tally;
use crate::pg::Script;
use crate::service::{Perf, Service};

#[derive(Parser)]
#[command(about = "authd benchmark suite (see BENCHMARKS.md)")]
struct Opts {
    /// Every scenario for a moment with tiny counts: proves the bench works; judges no timing.
    #[arg(long)]
    smoke: bool,
    /// The authd binary to run.
    #[arg(long, default_value = "target/release/authd")]
    authd: PathBuf,
    /// Where to write the results.
    #[arg(long, default_value = "bench.json")]
    json: PathBuf,
    /// Scratch directory: the service's log, pgbench scripts, perf data.
    #[arg(long, default_value = "target/bench")]
    work_dir: PathBuf,
    /// Refresh and /me users (default 64; smoke 4).
    #[arg(long)]
    users: Option<usize>,
    /// Login users (default 16; smoke 2).
    #[arg(long)]
    login_users: Option<usize>,
    /// Refreshes in the refresh scenario, over all users (default 100 000).
    #[arg(long)]
    refreshes: Option<u64>,
    /// Seconds per timed scenario and ceiling (default 15).
    #[arg(long)]
    seconds: Option<u64>,
    /// Seconds per flood phase (default 20).
    #[arg(long)]
    flood_seconds: Option<u64>,
    /// Sessions seeded for the growth run (default 100 000).
    #[arg(long)]
    growth_sessions: Option<u64>,
    /// Refresh tokens seeded for the growth run (default 1 000 000).
    #[arg(long)]
    growth_tokens: Option<u64>,
    /// A setting for the service, over the bench's (repeatable): `--service-env DATABASE_MAX_CONNECTIONS=64`.
    #[arg(long, value_name = "VAR=VALUE")]
    service_env: Vec<String>,
    /// Record `perf` profiles into this directory: the service and the whole
    /// machine in the refresh and /me scenarios, the whole machine with the
    /// scheduler's events in the login scenario and each flood phase.
    #[arg(long)]
    perf: Option<PathBuf>,
    /// Only these scenarios (comma-separated: refresh, me, login, flood,
    /// growth), for working on one; the ceilings they need always run, and
    /// growth also runs refresh and me (its baselines). Default: all.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
}

const SCENARIOS: [&str; 5] = ["refresh", "me", "login", "flood", "growth"];

impl Opts {
    fn wants(&self, scenario: &str) -> bool {
        self.only.is_empty()
            || self.only.iter().any(|o| o == scenario)
            || (matches!(scenario, "refresh" | "me") && self.only.iter().any(|o| o == "growth"))
    }
}

struct Plan {
    users: usize,
    login_users: usize,
    refreshes: u64,
    run_for: Duration,
    flood_for: Duration,
    growth_sessions: u64,
    growth_tokens: u64,
    settle: Duration,
}

impl Plan {
    fn of(o: &Opts) -> Self {
        let (users, login, refreshes, secs, flood, gs, gt, settle) = if o.smoke {
            (4, 2, 200, 2, 2, 1_000, 10_000, 1)
        } else {
            (64, 16, 100_000, 15, 20, 100_000, 1_000_000, 10)
        };
        Self {
            users: o.users.unwrap_or(users).max(1),
            login_users: o.login_users.unwrap_or(login).max(1),
            refreshes: o.refreshes.unwrap_or(refreshes),
            run_for: Duration::from_secs(o.seconds.unwrap_or(secs)),
            flood_for: Duration::from_secs(o.flood_seconds.unwrap_or(flood)),
            growth_sessions: o.growth_sessions.unwrap_or(gs).max(1),
            growth_tokens: o.growth_tokens.unwrap_or(gt),
            settle: Duration::from_secs(settle),
        }
    }
}

/// One line of the table.
struct Row {
    scenario: String,
    ops: u64,
    rate: f64,
    p50: Option<f64>,
    p99: Option<f64>,
    errors: u64,
    broken: u64,
    ceiling: Option<f64>,
    peak_mib: Option<f64>,
    note: String,
}

impl Row {
    fn ceiling(scenario: &str, ops: u64, rate: f64, note: String) -> Self {
        Self {
            scenario: scenario.to_owned(),
            ops,
            rate,
            p50: None,
            p99: None,
            errors: 0,
            broken: 0,
            ceiling: None,
            peak_mib: None,
            note,
        }
    }

    fn measured(scenario: &str, t: &mut Tally, secs: f64, ceiling: Option<f64>) -> Self {
        Self {
            scenario: scenario.to_owned(),
            ops: t.ok,
            rate: t.ok as f64 / secs.max(1e-9),
            p50: Some(t.pct(0.50)),
            p99: Some(t.pct(0.99)),
            errors: t.errors,
            broken: t.broken,
            ceiling,
            peak_mib: None,
            note: String::new(),
        }
    }

    /// Judge this row against a ceiling measured just before its scenario and
    /// again just after: this machine's speed moves by a third within
    /// minutes, so the ratio is to the mean of the two, and the note gives
    /// the ratio to each.
    fn bracket(&mut self, before: f64, after: f64) {
        self.ceiling = Some((before + after) / 2.0);
        let [lo, hi] = [before.max(after), before.min(after)].map(|c| self.rate / c.max(1e-9));
        let spread =
            format!("ceiling {before:.0}/s before, {after:.0}/s after: ratio {lo:.2}–{hi:.2}");
        self.note = if self.note.is_empty() {
            spread
        } else {
            format!("{}; {spread}", self.note)
        };
    }

    fn ratio(&self) -> Option<f64> {
        self.ceiling.map(|c| self.rate / c)
    }

    fn json(&self) -> Value {
        json!({
            "scenario": self.scenario, "ops": self.ops, "ops_per_s": self.rate,
            "p50_ms": self.p50, "p99_ms": self.p99, "errors": self.errors,
            "broken_chains": self.broken, "ceiling_per_s": self.ceiling,
            "ratio": self.ratio(), "peak_rss_mib": self.peak_mib, "note": self.note,
        })
    }
}

/// A target from the issue, and whether this run met it.
struct Check {
    what: String,
    value: String,
    target: String,
    met: bool,
}

struct Report {
    rows: Vec<Row>,
    checks: Vec<Check>,
    extra: serde_json::Map<String, Value>,
}

impl Report {
    fn check(&mut self, what: &str, value: String, target: &str, met: bool) {
        self.checks.push(Check {
            what: what.to_owned(),
            value,
            target: target.to_owned(),
            met,
        });
    }
}

fn opt(v: Option<f64>, digits: usize) -> String {
    v.map_or("—".to_owned(), |v| format!("{v:.digits$}"))
}

fn machine() -> Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_owned())
        })
        .unwrap_or_default();
    json!({
        "nproc": std::thread::available_parallelism().map_or(1, |n| n.get()),
        "cpu": cpu,
        "loadavg": loadavg(),
    })
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// The rotation's own rate from pgbench's (rotation + id SELECT) rate: per
/// transaction time adds up when the machine is saturated, so
/// 1/ceiling = 1/(ids + rotate) - 1/ids.
fn without_id_select(with_ids_tps: f64, ids_tps: f64) -> f64 {
    if ids_tps > with_ids_tps {
        1.0 / (1.0 / with_ids_tps - 1.0 / ids_tps)
    } else {
        with_ids_tps
    }
}

/// argon2id hashes/s on every core, in this process, with the service's
/// parameters and hashing threads (OWASP: m = 19 MiB, t = 2, p = 1).
/// Where the second set of pgbench rotation chains starts (the first at 0, the
/// pool-size run's at 100 000).
const AFTER_BASE: u32 = 200_000;

/// The rotation ceiling: pgbench running the store's rotation statement on
/// `clients` chains from `base`, less the id `SELECT` each transaction needs
/// (see the module docs). Returns its row, both pgbench runs and how many
/// rotations were stored.
async fn measure_rotate_ceiling(
    db: &pg::Database,
    work: &Path,
    name: &str,
    clients: u32,
    base: u32,
    secs: u64,
) -> Result<(Row, pg::Pgbench, pg::Pgbench, u64), String> {
    let tag = format!("rotate-{base}");
    let rotate = pg::pgbench(db, work, Script::Rotate, &tag, clients, base, secs).await?;
    let stored = pg::rotations(db, base, clients).await?;
    let tag = format!("next-ids-{base}");
    let ids = pg::pgbench(db, work, Script::NextIds, &tag, clients, base, secs.min(5)).await?;
    let mut row = Row::ceiling(
        name,
        rotate.transactions,
        without_id_select(rotate.tps, ids.tps),
        format!(
            "pgbench -M prepared -c {clients}: {:.0} tx/s with the id SELECT ({:.2} ms avg), that SELECT alone {:.0}/s",
            rotate.tps, rotate.latency_ms, ids.tps
        ),
    );
    // Every pgbench transaction must have rotated: else it measured less work.
    row.errors = rotate.failed + rotate.transactions.abs_diff(stored);
    Ok((row, rotate, ids, stored))
}

/// The `/me` ceiling: pgbench running the store's session check.
async fn me_ceiling_row(
    db: &pg::Database,
    work: &Path,
    name: &str,
    clients: u32,
    secs: u64,
) -> Result<Row, String> {
    let me = pg::pgbench(db, work, Script::Me, "me", clients, 0, secs).await?;
    let mut row = Row::ceiling(
        name,
        me.transactions,
        me.tps,
        format!(
            "pgbench -M prepared -c {clients}: {:.2} ms avg",
            me.latency_ms
        ),
    );
    row.errors = me.failed;
    Ok(row)
}

/// The argon2 ceiling as a row (at most 5 s of hashing).
async fn argon2_row(cores: usize, run_for: Duration, name: &str) -> Row {
    let (hashes, rate) = argon2_ceiling(cores, run_for.min(Duration::from_secs(5))).await;
    Row::ceiling(
        &format!("{name} × {cores} cores (in-process)"),
        hashes,
        rate,
        "OWASP params m=19456 KiB t=2 p=1".into(),
    )
}

async fn argon2_ceiling(cores: usize, run_for: Duration) -> (u64, f64) {
    let hasher = PasswordHasher::new(cores, 4 * cores, Duration::from_secs(60));
    let pw = Password::new(load::PASSWORD.to_owned());
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..2 * cores {
        let (hasher, pw) = (hasher.clone(), pw.clone());
        tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            while started.elapsed() < run_for {
                let ticket = hasher.admit(None).expect("a free place");
                ticket.hash(&pw).await.expect("argon2 hashes");
                n += 1;
            }
            n
        }));
    }
    let mut n = 0;
    for t in tasks {
        n += t.await.expect("hash task");
    }
    (n, n as f64 / started.elapsed().as_secs_f64())
}

#[tokio::main]
async fn main() -> ExitCode {
    let opts = Opts::parse();
    match run(&opts).await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("bench: {e}");
            ExitCode::from(2)
        }
    }
}

async fn run(opts: &Opts) -> Result<bool, String> {
    if let Some(bad) = opts.only.iter().find(|o| !SCENARIOS.contains(&o.as_str())) {
        return Err(format!("--only {bad}: one of {}", SCENARIOS.join(", ")));
    }
    let plan = Plan::of(opts);
    let admin = std::env::var("DATABASE_URL")
        .map_err(|_| "set DATABASE_URL (a role that may CREATE DATABASE)")?;
    std::fs::create_dir_all(&opts.work_dir).map_err(|e| e.to_string())?;
    if let Some(dir) = &opts.perf {
        std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    }
    let db = pg::Database::create(&admin).await?;
    let result = scenarios(opts, &plan, &db).await;
    db.drop_it().await;
    let report = result?;

    print_report(opts, &plan, &report);
    let errors: u64 = report.rows.iter().map(|r| r.errors).sum();
    let broken: u64 = report.rows.iter().map(|r| r.broken).sum();
    let failures = errors + broken;
    println!("\nerrors: {errors}, broken chains: {broken} (both must be 0)");
    let mut extra = report.extra.clone();
    extra.insert("date".into(), json!(chrono::Utc::now().to_rfc3339()));
    extra.insert("machine".into(), machine());
    extra.insert("smoke".into(), json!(opts.smoke));
    extra.insert(
        "command".into(),
        json!(std::env::args().collect::<Vec<_>>().join(" ")),
    );
    extra.insert(
        "plan".into(),
        json!({
            "users": plan.users, "login_users": plan.login_users,
            "refreshes": plan.refreshes, "seconds": plan.run_for.as_secs(),
            "flood_seconds": plan.flood_for.as_secs(),
            "growth_sessions": plan.growth_sessions, "growth_tokens": plan.growth_tokens,
        }),
    );
    extra.insert(
        "rows".into(),
        Value::Array(report.rows.iter().map(Row::json).collect()),
    );
    extra.insert(
        "targets".into(),
        Value::Array(
            report
                .checks
                .iter()
                .map(|c| json!({"target": c.what, "value": c.value, "goal": c.target, "met": (!opts.smoke).then_some(c.met)}))
                .collect(),
        ),
    );
    extra.insert("errors".into(), json!(errors));
    extra.insert("broken_chains".into(), json!(broken));
    let text = serde_json::to_string_pretty(&Value::Object(extra)).map_err(|e| e.to_string())?;
    std::fs::write(&opts.json, text + "\n").map_err(|e| format!("{}: {e}", opts.json.display()))?;
    println!("\nwrote {}", opts.json.display());
    if failures > 0 {
        println!("FAILED: {failures} errors or broken chains");
    }
    Ok(failures == 0)
}

fn print_report(opts: &Opts, plan: &Plan, r: &Report) {
    println!(
        "\n{} users, {} login users, {} refreshes, {} s per timed scenario, {} s per flood phase; load average {}\n",
        plan.users,
        plan.login_users,
        plan.refreshes,
        plan.run_for.as_secs(),
        plan.flood_for.as_secs(),
        loadavg()
    );
    println!(
        "| scenario | ops | ops/s | p50 ms | p99 ms | errors | broken chains | ceiling/s | ratio | peak RSS MiB | note |"
    );
    println!("|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|");
    for row in &r.rows {
        println!(
            "| {} | {} | {:.0} | {} | {} | {} | {} | {} | {} | {} | {} |",
            row.scenario,
            row.ops,
            row.rate,
            opt(row.p50, 2),
            opt(row.p99, 2),
            row.errors,
            row.broken,
            opt(row.ceiling, 0),
            opt(row.ratio(), 2),
            opt(row.peak_mib, 1),
            row.note
        );
    }
    println!("\n| target | this run | goal | met |");
    println!("|---|--:|---|---|");
    for c in &r.checks {
        let met = if opts.smoke {
            "n/a (smoke)"
        } else if c.met {
            "yes"
        } else {
            "NO"
        };
        println!("| {} | {} | {} | {met} |", c.what, c.value, c.target);
    }
}

async fn scenarios(opts: &Opts, plan: &Plan, db: &pg::Database) -> Result<Report, String> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let extra = opts
        .service_env
        .iter()
        .map(|kv| {
            kv.split_once('=')
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .ok_or_else(|| format!("--service-env {kv}: expected VAR=VALUE"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let svc = Service::start(
        &opts.authd,
        &db.url,
        &extra,
        &opts.work_dir.join("authd.log"),
    )
    .await?;
    let out = drive(opts, plan, db, &svc, cores).await;
    svc.stop().await;
    out
}

async fn drive(
    opts: &Opts,
    plan: &Plan,
    db: &pg::Database,
    svc: &Service,
    cores: usize,
) -> Result<Report, String> {
    let mut r = Report {
        rows: Vec::new(),
        checks: Vec::new(),
        extra: serde_json::Map::new(),
    };
    let base = svc.base.as_str();
    let work = opts.work_dir.as_path();
    let users = plan.users;
    let clients = u32::try_from(users).map_err(|e| e.to_string())?;
    let secs = plan.run_for.as_secs().max(1);
    let http = load::client(users.max(plan.login_users), None);
    eprintln!("bench: registering {} users", users.max(plan.login_users));
    load::register(&http, base, users.max(plan.login_users)).await?;
    let (access, cookies): (Vec<_>, Vec<_>) = load::sessions(&http, base, users)
        .await?
        .into_iter()
        .unzip();
    r.extra.insert("idle_rss_mib".into(), json!(svc.rss_mib()));

    // Ceilings.
    let argon = if opts.wants("login") || opts.wants("flood") {
        eprintln!("bench: argon2 ceiling");
        let row = argon2_row(cores, plan.run_for, "ceiling: argon2id").await;
        let argon = row.rate;
        r.rows.push(row);
        argon
    } else {
        0.0
    };
    let mut pgbench = serde_json::Map::new();
    if opts.wants("refresh") || opts.wants("me") {
        pg::seed_clients(db, 0, clients).await?;
    }
    let rotate_ceiling = if opts.wants("refresh") {
        eprintln!("bench: pgbench ceilings (rotate)");
        let (row, rotate, ids, stored) =
            measure_rotate_ceiling(db, work, "ceiling: rotate SQL (pgbench)", clients, 0, secs)
                .await?;
        let rotate_ceiling = row.rate;
        r.rows.push(row);
        // The same at the service's pool size (DATABASE_MAX_CONNECTIONS, default 10):
        // what the database gives the service's connections (fewer commits share
        // each WAL flush), for the bound, not the ratio.
        let pool = opts
            .service_env
            .iter()
            .find_map(|kv| kv.strip_prefix("DATABASE_MAX_CONNECTIONS="))
            .and_then(|v| v.parse().ok())
            .unwrap_or(10u32)
            .min(clients);
        pg::seed_clients(db, 100_000, pool).await?;
        let (mut row, rotate_pool, ids_pool, _) = measure_rotate_ceiling(
            db,
            work,
            &format!("rotate SQL at the pool's {pool} connections (pgbench)"),
            pool,
            100_000,
            secs,
        )
        .await?;
        row.note = format!(
            "{:.0} tx/s with the id SELECT, that SELECT alone {:.0}/s; not a ceiling: what the database gives the service's pool",
            rotate_pool.tps, ids_pool.tps
        );
        let rotate_pool_ceiling = row.rate;
        r.rows.push(row);
        for (k, v) in [
            ("rotate_with_id_select_tps", json!(rotate.tps)),
            ("id_select_tps", json!(ids.tps)),
            ("rotate_ceiling_tps", json!(rotate_ceiling)),
            ("rotations_stored", json!(stored)),
            ("rotate_transactions", json!(rotate.transactions)),
            ("rotate_at_pool_ceiling_tps", json!(rotate_pool_ceiling)),
            ("rotate_script", json!(pg::script(&Script::Rotate))),
        ] {
            pgbench.insert(k.into(), v);
        }
        rotate_ceiling
    } else {
        0.0
    };
    let me_ceiling = if opts.wants("me") {
        eprintln!("bench: pgbench ceilings (/me)");
        let row = me_ceiling_row(db, work, "ceiling: /me SQL (pgbench)", clients, secs).await?;
        let me_tps = row.rate;
        r.rows.push(row);
        pgbench.insert("me_tps".into(), json!(me_tps));
        pgbench.insert("me_script".into(), json!(pg::script(&Script::Me)));
        me_tps
    } else {
        0.0
    };
    r.extra.insert("pgbench".into(), Value::Object(pgbench));

    // Refresh: every user's chain, one refresh after the other.
    let mut cookies = cookies;
    let (mut refresh_rate, mut refresh_peak) = (0.0, 0.0);
    if opts.wants("refresh") {
        eprintln!("bench: refresh");
        let per_user = plan.refreshes.div_ceil(users as u64).max(1);
        svc.reset_peak();
        let perf = Perf::start(opts.perf.as_ref(), "refresh", svc.pid);
        let (mut t, wall, next) = load::refresh_chains(base, cookies, per_user).await;
        cookies = next;
        if let Some(p) = perf {
            p.stop().await;
        }
        eprintln!("bench: pgbench ceiling again (rotate)");
        pg::seed_clients(db, AFTER_BASE, clients).await?;
        let (after, ..) = measure_rotate_ceiling(
            db,
            work,
            "ceiling again, after refresh: rotate SQL (pgbench)",
            clients,
            AFTER_BASE,
            secs,
        )
        .await?;
        let mut row = Row::measured(
            &format!("POST /refresh ({users} chains)"),
            &mut t,
            wall,
            None,
        );
        row.bracket(rotate_ceiling, after.rate);
        r.rows.push(after);
        row.peak_mib = Some(svc.peak_mib());
        let refresh_ratio = row.ratio().unwrap_or(0.0);
        (refresh_rate, refresh_peak) = (row.rate, row.peak_mib.unwrap_or(0.0));
        r.rows.push(row);
        r.check(
            "refresh ≥ 0.9× ceiling over ≥ 100 000",
            format!("{refresh_ratio:.2}× over {}", t.ok),
            "≥ 0.90×, ≥ 100 000",
            refresh_ratio >= 0.9 && t.ok >= 100_000,
        );
    }

    // /me with the access tokens of the same sessions.
    let (mut me_rate, mut me_peak) = (0.0, 0.0);
    if opts.wants("me") {
        eprintln!("bench: /me");
        svc.reset_peak();
        let perf = Perf::start(opts.perf.as_ref(), "me", svc.pid);
        let (mut t, wall) = load::me(base, access.clone(), plan.run_for).await;
        if let Some(p) = perf {
            p.stop().await;
        }
        eprintln!("bench: pgbench ceiling again (/me)");
        let after = me_ceiling_row(
            db,
            work,
            "ceiling again, after /me: /me SQL (pgbench)",
            clients,
            secs,
        )
        .await?;
        let mut row = Row::measured(&format!("GET /me ({users} users)"), &mut t, wall, None);
        row.bracket(me_ceiling, after.rate);
        r.rows.push(after);
        row.peak_mib = Some(svc.peak_mib());
        let me_ratio = row.ratio().unwrap_or(0.0);
        (me_rate, me_peak) = (row.rate, row.peak_mib.unwrap_or(0.0));
        r.rows.push(row);
        r.check(
            "/me ≥ 0.7× ceiling",
            format!("{me_ratio:.2}×"),
            "≥ 0.70×",
            me_ratio >= 0.7,
        );
    }

    // Login.
    let mut login_peak = 0.0;
    if opts.wants("login") {
        eprintln!("bench: login");
        svc.reset_peak();
        let perf = Perf::machine(opts.perf.as_ref(), "login");
        let (mut t, wall) = load::login(base, plan.login_users, plan.run_for).await;
        if let Some(p) = perf {
            p.stop().await;
        }
        t.errors += t.timed_out;
        eprintln!("bench: argon2 ceiling again");
        let after = argon2_row(cores, plan.run_for, "ceiling again, after login: argon2id").await;
        let mut row = Row::measured(
            &format!("POST /login ({} users)", plan.login_users),
            &mut t,
            wall,
            None,
        );
        row.note = format!(
            "refused (503, then 1 s wait) {}, over 1 s {}",
            t.refused, t.over_1s
        );
        row.bracket(argon, after.rate);
        r.rows.push(after);
        row.peak_mib = Some(svc.peak_mib());
        let login_ratio = row.ratio().unwrap_or(0.0);
        login_peak = row.peak_mib.unwrap_or(0.0);
        r.rows.push(row);
        r.check(
            "login ≥ 0.9× ceiling",
            format!("{login_ratio:.2}×"),
            "≥ 0.90×",
            login_ratio >= 0.9,
        );
    }
    if opts.wants("refresh") && opts.wants("me") && opts.wants("login") {
        let steady_peak = refresh_peak.max(me_peak).max(login_peak);
        r.check(
            "peak RSS in refresh, /me, login",
            format!("{steady_peak:.1} MiB"),
            "≤ 64 MiB",
            steady_peak <= 64.0,
        );
    }

    // Flood: paced refreshes (each user every 100 ms) alone, then with an
    // open-loop login flood at 2× and 4× the hashing capacity from 8 addresses.
    if opts.wants("flood") {
        eprintln!("bench: flood");
        let period = Duration::from_millis(100);
        let perf = Perf::machine(opts.perf.as_ref(), "flood-none");
        let (mut base_t, next) = load::refresh_paced(base, cookies, period, plan.flood_for).await;
        cookies = next;
        if let Some(p) = perf {
            p.stop().await;
        }
        let base_p99 = base_t.pct(0.99);
        let mut row = Row::measured(
            &format!("refresh, {users} users × 10/s, no flood"),
            &mut base_t,
            plan.flood_for.as_secs_f64(),
            None,
        );
        row.note = "the flood's baseline".into();
        r.rows.push(row);
        let sources: Vec<_> = (1..=8u8)
            .map(|i| load::client(64, Some(std::net::Ipv4Addr::new(127, 0, 1, i).into())))
            .collect();
        let mut flood_peak: f64 = 0.0;
        for k in [2.0, 4.0] {
            svc.reset_peak();
            let rate = k * argon;
            let perf = Perf::machine(opts.perf.as_ref(), &format!("flood-{k}x"));
            let (refresh, logins) = tokio::join!(
                load::refresh_paced(base, cookies, period, plan.flood_for),
                load::flood(&sources, base, plan.login_users, rate, plan.flood_for),
            );
            if let Some(p) = perf {
                p.stop().await;
            }
            let (mut rt, next) = refresh;
            cookies = next;
            let mut logins = logins;
            let peak = svc.peak_mib();
            flood_peak = flood_peak.max(peak);
            let p99 = rt.pct(0.99);
            let mut row = Row::measured(
                &format!("refresh during a {k}× login flood"),
                &mut rt,
                plan.flood_for.as_secs_f64(),
                None,
            );
            row.peak_mib = Some(peak);
            r.rows.push(row);
            let login_p99 = logins.pct(0.99);
            let login_max = logins.pct(1.0);
            let mut row = Row::measured(
                &format!("login flood {k}× ({rate:.0}/s offered)"),
                &mut logins,
                plan.flood_for.as_secs_f64(),
                Some(argon),
            );
            row.note = format!(
                "ok {}, refused (503) {}, timed out {}, over 1 s {}, max {login_max:.0} ms",
                logins.ok, logins.refused, logins.timed_out, logins.over_1s
            );
            row.peak_mib = Some(peak);
            r.rows.push(row);
            r.check(
                &format!("{k}× flood: refresh p99"),
                format!("{p99:.1} ms (no flood {base_p99:.1} ms)"),
                "≤ 50 ms and ≤ 1.5× no-flood",
                p99 <= 50.0 && p99 <= 1.5 * base_p99,
            );
            r.check(
                &format!("{k}× flood: no login waits > 1 s"),
                format!(
                    "{} over 1 s, {} timed out, p99 {login_p99:.0} ms",
                    logins.over_1s, logins.timed_out
                ),
                "0",
                logins.over_1s == 0 && logins.timed_out == 0,
            );
        }
        r.check(
            "peak RSS in the flood",
            format!("{flood_peak:.1} MiB"),
            "≤ 96 MiB",
            flood_peak <= 96.0,
        );
        tokio::time::sleep(plan.settle).await;
        let after = svc.rss_mib();
        r.extra.insert("rss_after_flood_mib".into(), json!(after));
        r.check(
            &format!("RSS {} s after the flood", plan.settle.as_secs()),
            format!("{after:.1} MiB"),
            "< 48 MiB",
            after < 48.0,
        );
    }

    // Growth: the same refresh and /me on a populated database.
    if opts.wants("growth") {
        eprintln!(
            "bench: growth (seeding {} sessions, {} refresh tokens)",
            plan.growth_sessions, plan.growth_tokens
        );
        let seeded_in = pg::seed_growth(db, plan.growth_sessions, plan.growth_tokens).await?;
        let tokens = db.count("SELECT count(*) FROM refresh_tokens").await?;
        let sessions = db.count("SELECT count(*) FROM sessions").await?;
        r.extra.insert(
            "growth".into(),
            json!({"seeded_in_s": seeded_in, "refresh_tokens": tokens, "sessions": sessions}),
        );
        let per_user = (plan.refreshes / 4).div_ceil(users as u64).max(1);
        svc.reset_peak();
        let (mut t, wall, _) = load::refresh_chains(base, cookies, per_user).await;
        let mut row = Row::measured(
            &format!("POST /refresh, {tokens} tokens stored"),
            &mut t,
            wall,
            Some(refresh_rate),
        );
        row.note = "ceiling = the empty-database refresh rate".into();
        row.peak_mib = Some(svc.peak_mib());
        let g_refresh = row.ratio().unwrap_or(0.0);
        r.rows.push(row);
        let (mut t, wall) = load::me(base, access, plan.run_for).await;
        let mut row = Row::measured(
            &format!("GET /me, {sessions} sessions stored"),
            &mut t,
            wall,
            Some(me_rate),
        );
        row.note = "ceiling = the empty-database /me rate".into();
        row.peak_mib = Some(svc.peak_mib());
        let g_me = row.ratio().unwrap_or(0.0);
        r.rows.push(row);
        r.check(
            "growth: refresh and /me vs empty",
            format!("{g_refresh:.2}×, {g_me:.2}×"),
            "≥ 0.90× (within 10%)",
            g_refresh >= 0.9 && g_me >= 0.9,
        );
    }
    Ok(r)
}
