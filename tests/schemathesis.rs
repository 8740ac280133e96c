//! Schemathesis (PyPI) against the served `/openapi.json` of a live instance:
//! every documented operation with generated valid and invalid requests,
//! every check (no 5xx, statuses, content types, headers and bodies as
//! documented, invalid data refused, valid data accepted, auth enforced),
//! signed in with a bearer token and a refresh cookie so the protected
//! routes are exercised past authentication. The few checks that are wrong
//! for a deliberate behaviour are turned off one by one, each with its
//! reason, in tests/schemathesis/schemathesis.toml.
//!
//! schemathesis comes from the venv `scripts/test.sh` prepares
//! (`scripts/schemathesis-venv.sh`, pinned version), or `$SCHEMATHESIS`.

mod common;

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use common::*;

/// Test cases per operation and phase, bounded: the three runs below send
/// about 500 requests and take about 30 s on 2 cores, 2.5 min when the
/// cores are busy with other builds.
const MAX_EXAMPLES: &str = "25";
/// A run that takes longer than this is killed and fails.
const RUN_LIMIT: Duration = Duration::from_secs(240);

fn schemathesis() -> PathBuf {
    let path = std::env::var_os("SCHEMATHESIS").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".venv-test/bin/schemathesis"),
        PathBuf::from,
    );
    assert!(
        path.is_file(),
        "schemathesis is not at {}: run `bash scripts/schemathesis-venv.sh` (scripts/test.sh does), \
         or set SCHEMATHESIS to its path",
        path.display()
    );
    path
}

/// Run schemathesis on `base`'s document with `args`; panics with its whole
/// output unless it reports no failure.
async fn run(base: &str, bearer: &str, refresh: &str, args: &[&str]) -> String {
    let config =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/schemathesis/schemathesis.toml");
    let scratch = tempfile::tempdir().expect("tempdir");
    let mut command = tokio::process::Command::new(schemathesis());
    command
        .arg("--config-file")
        .arg(&config)
        .arg("--no-color")
        .arg("run")
        .arg(format!("{base}/openapi.json"))
        .args(["--max-examples", MAX_EXAMPLES])
        .args(["--generation-database", "none"])
        .args(["--request-timeout", "30"])
        .args(["--workers", "2"])
        .args(args)
        .env("AUTHD_BEARER", bearer)
        .env("AUTHD_REFRESH", refresh)
        // Whatever it writes (reports, caches) goes to a directory of its own.
        .current_dir(scratch.path())
        .stdin(Stdio::null())
        .kill_on_drop(true);
    // Its report goes to a file, so that a run killed for taking too long
    // still shows how far it got.
    let report = scratch.path().join("output.txt");
    let file = std::fs::File::create(&report).expect("output file");
    command.stdout(file.try_clone().expect("output file"));
    command.stderr(file);
    let mut child = command.spawn().expect("schemathesis runs");
    let finished = tokio::time::timeout(RUN_LIMIT, child.wait()).await;
    if finished.is_err() {
        let _ = child.kill().await;
    }
    let text = std::fs::read_to_string(&report).unwrap_or_default();
    let status = finished
        .unwrap_or_else(|_| panic!("schemathesis ran longer than {RUN_LIMIT:?}:\n{text}"))
        .expect("schemathesis runs");
    assert!(
        status.success(),
        "schemathesis found failures ({status}):\n{text}"
    );
    eprintln!("{text}");
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_keeps_its_documented_contract_under_generated_requests() {
    let app = spawn_app_with(&[
        // Only real failures: no lock, no queue refusal, no hashing or pool
        // timeout under a flood of generated logins and registrations on a
        // loaded machine.
        ("LOGIN_MAX_FAILURES", "1000000"),
        ("LOGIN_MAX_FAILURES_ACCOUNT", "1000000"),
        ("LOGIN_MAX_FAILURES_IP", "1000000"),
        ("PASSWORD_HASH_QUEUE", "10000"),
        ("PASSWORD_HASH_MAX_WAIT", "30s"),
        ("REQUEST_TIMEOUT", "60s"),
        ("DATABASE_ACQUIRE_TIMEOUT", "30s"),
    ])
    .await;
    // Fresh credentials for each stage, the bearer token and the refresh
    // cookie of different users: the operations that end sessions run in
    // stages of their own, after the ones that need a live session, or the
    // first generated `/logout` or `DELETE /sessions/{id}` would leave every
    // later request of the run unauthenticated.
    let mut round = 0;
    let mut credentials = async || {
        round += 1;
        let bearer = app.signed_in(&format!("bearer{round}@example.com")).await;
        let cookie = app.signed_in(&format!("cookie{round}@example.com")).await;
        (bearer.access, cookie.refresh)
    };

    // 1. Everything that needs a live session.
    let (bearer, refresh) = credentials().await;
    let output = run(
        &app.base,
        &bearer,
        &refresh,
        &[
            "--exclude-path",
            "/logout",
            "--exclude-path",
            "/logout-all",
            "--exclude-path",
            "/sessions/{id}",
        ],
    )
    .await;
    let (selected, tested) = counts(&output);
    assert!(selected >= 10 && tested == selected, "{output}");
    // The credentials got past authentication: schemathesis warns of each
    // operation whose valid requests got nothing but 401, and that may only
    // be /password and /login, which take no credential of ours but a
    // password that generated data never guesses (whether a run's /login
    // also drew a 422 or 429 varies with the seed).
    let unauthorized = only_unauthorized(&output);
    assert!(
        unauthorized
            .iter()
            .all(|op| op == "POST /password" || op == "POST /login"),
        "{output}"
    );

    // 2. Ending one session: by its refresh token, by its id.
    let (bearer, refresh) = credentials().await;
    let output = run(
        &app.base,
        &bearer,
        &refresh,
        &[
            "--include-path",
            "/logout",
            "--include-path",
            "/sessions/{id}",
        ],
    )
    .await;
    assert_eq!(counts(&output), (2, 2), "{output}");

    // 3. Ending all of them.
    let (bearer, refresh) = credentials().await;
    let output = run(
        &app.base,
        &bearer,
        &refresh,
        &["--include-path", "/logout-all"],
    )
    .await;
    assert_eq!(counts(&output), (1, 1), "{output}");
    assert!(only_unauthorized(&output).is_empty(), "{output}");
}

/// The operations schemathesis warns answered nothing but 401/403.
fn only_unauthorized(output: &str) -> Vec<String> {
    output
        .lines()
        .skip_while(|l| !l.starts_with("401 Unauthorized ("))
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .filter_map(|l| l.trim().strip_prefix("- ").map(str::to_owned))
        .collect()
}

/// The summary's selected and tested operation counts.
fn counts(output: &str) -> (usize, usize) {
    let after = |label: &str| -> usize {
        output
            .lines()
            .find_map(|l| l.trim().strip_prefix(label))
            .and_then(|rest| rest.trim_start().split(['/', ' ']).next())
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or_else(|| panic!("no `{label}` in the summary:\n{output}"))
    };
    (after("Selected:"), after("Tested:"))
}
