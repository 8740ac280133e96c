//! The service under test: `authd serve` as a child process on a fresh
//! database, its memory from /proc, and optional perf recordings.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::process::{Child, Command};

pub struct Service {
    child: Child,
    pub pid: u32,
    pub base: String,
}

impl Service {
    /// Start `authd serve` with its defaults, except: a free port, the
    /// bench database, two random secrets, no per-IP request rate limit (the
    /// load comes from a handful of addresses) and `RUST_LOG=warn` (no access
    /// log line per request).
    pub async fn start(
        authd: &Path,
        database_url: &str,
        extra: &[(String, String)],
        log: &Path,
    ) -> Result<Self, String> {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| format!("no free port: {e}"))?
            .port();
        let secret = || {
            let mut b = [0u8; 32];
            getrandom::fill(&mut b).expect("OS randomness");
            b.iter().map(|x| format!("{x:02x}")).collect::<String>()
        };
        let authd = std::fs::canonicalize(authd)
            .map_err(|e| format!("{}: {e} (build it first)", authd.display()))?;
        let log_file = std::fs::File::create(log).map_err(|e| format!("{}: {e}", log.display()))?;
        let dir = log.parent().unwrap_or(Path::new("."));
        let mut child = Command::new(&authd)
            .arg("serve")
            .current_dir(dir) // no .env from the repository
            .env_clear()
            .env("DATABASE_URL", database_url)
            .env("ACCESS_TOKEN_SECRET", secret())
            .env("REFRESH_TOKEN_SECRET", secret())
            .env("BIND_ADDR", format!("127.0.0.1:{port}"))
            .env("RATE_LIMIT_PER_IP", "0")
            .env("RUST_LOG", "warn")
            .envs(extra.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().map_err(|e| e.to_string())?)
            .stderr(log_file)
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", authd.display()))?;
        let pid = child.id().ok_or("authd exited at once")?;
        let base = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(r) = http.get(format!("{base}/health/ready")).send().await
                && r.status() == 200
            {
                break;
            }
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!("authd exited ({status}); see {}", log.display()));
            }
            if Instant::now() > deadline {
                return Err(format!("authd not ready after 60 s; see {}", log.display()));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(Self { child, pid, base })
    }

    fn status_kib(&self, field: &str) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid)).ok()?;
        status.lines().find_map(|l| {
            let rest = l.strip_prefix(field)?.strip_prefix(':')?;
            rest.split_whitespace().next()?.parse().ok()
        })
    }

    /// Peak resident set size since the last [`Service::reset_peak`], MiB.
    pub fn peak_mib(&self) -> f64 {
        self.status_kib("VmHWM").unwrap_or(0) as f64 / 1024.0
    }

    /// Resident set size now, MiB.
    pub fn rss_mib(&self) -> f64 {
        self.status_kib("VmRSS").unwrap_or(0) as f64 / 1024.0
    }

    /// Start a new peak: writing 5 to clear_refs resets VmHWM to VmRSS.
    pub fn reset_peak(&self) {
        let _ = std::fs::write(format!("/proc/{}/clear_refs", self.pid), "5");
    }

    pub async fn stop(mut self) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe {
            libc::kill(self.pid as libc::pid_t, libc::SIGTERM);
        }
        if tokio::time::timeout(Duration::from_secs(10), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }
}

/// `perf record` of the service (call graphs) and of the whole machine (no
/// call graphs: where the CPU goes between authd, Postgres and the load
/// generator) while a scenario runs.
pub struct Perf {
    children: Vec<Child>,
}

impl Perf {
    pub fn start(dir: Option<&PathBuf>, name: &str, pid: u32) -> Option<Self> {
        let dir = dir?;
        let service = dir.join(format!("{name}.data"));
        let pid = pid.to_string();
        let children = [
            spawn_perf(&[
                "record",
                "-F",
                "99",
                "--call-graph",
                "dwarf,16384",
                "-p",
                &pid,
                "-o",
                &service.to_string_lossy(),
            ]),
            machine_samples(dir, name),
        ]
        .into_iter()
        .flatten()
        .collect();
        Some(Self { children })
    }

    /// `perf` of the whole machine only, for login and the flood: CPU samples
    /// (which thread has the cores) and the scheduler's switch and wake-up
    /// events (`perf sched latency`: how long a woken task waits for a core).
    pub fn machine(dir: Option<&PathBuf>, name: &str) -> Option<Self> {
        let dir = dir?;
        let sched = dir.join(format!("{name}-sched.data"));
        let children = [
            machine_samples(dir, name),
            spawn_perf(&["sched", "record", "-a", "-o", &sched.to_string_lossy()]),
        ]
        .into_iter()
        .flatten()
        .collect();
        Some(Self { children })
    }

    pub async fn stop(self) {
        for mut c in self.children {
            if let Some(pid) = c.id() {
                // SAFETY: kill(2) on our own child's pid; perf writes its file on SIGINT.
                unsafe {
                    libc::kill(pid as libc::pid_t, libc::SIGINT);
                }
            }
            let _ = c.wait().await;
        }
    }
}

/// CPU samples of the whole machine (no call graphs) into `DIR/NAME-all.data`.
fn machine_samples(dir: &Path, name: &str) -> Option<Child> {
    let file = dir.join(format!("{name}-all.data"));
    spawn_perf(&["record", "-a", "-F", "499", "-o", &file.to_string_lossy()])
}

/// `perf ARGS`, quiet; `None` where perf cannot start (the scenario runs anyway).
fn spawn_perf(args: &[&str]) -> Option<Child> {
    Command::new("perf")
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()
}
