//! TLS to Postgres against a throwaway TLS-only cluster: `initdb` + `postgres`
//! on a free port in a temporary directory, a CA and a server certificate made
//! here with rcgen, `pg_hba.conf` accepting only `hostssl` + `scram-sha-256`.
//! The real binary connects with `sslmode=require` and `verify-full`, and
//! says what is wrong when the certificate or the password is.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use sqlx::ConnectOptions;
use sqlx::postgres::PgConnectOptions;

const ACCESS: &str = "Zq3v7R9tY2wX5pL8nM1kJ4hG6fD0sA2qW3eR5tY7uI9oP1aS";
const REFRESH: &str = "Lk8jH6gF4dS2aQ1wE3rT5yU7iO9pZ0xC2vB4nM6qW8eR0tY2";
const ROLE_PASSWORD: &str = "role-password-never-printed-41c9";
const WRONG_PASSWORD: &str = "wrong-password-never-printed-8d2e";

/// The newest installed PostgreSQL server binaries (Debian layout), or
/// `PG_BINDIR`.
fn pg_bindir() -> PathBuf {
    if let Ok(dir) = std::env::var("PG_BINDIR") {
        return PathBuf::from(dir);
    }
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, bin)| bin).unwrap_or_else(|| {
        panic!(
            "tests/tls.rs needs the PostgreSQL server binaries (initdb, postgres): none under \
             /usr/lib/postgresql/*/bin. Install them (apt-get install postgresql) or set \
             PG_BINDIR=/path/to/bin."
        )
    })
}

fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// `initdb` and `postgres` refuse to run as root: when the tests do (CI),
/// they run as the `postgres` OS user, owning the cluster's directory.
fn cluster_user() -> Option<(u32, u32)> {
    let uid: u32 = run(Command::new("id").arg("-u")).parse().unwrap();
    if uid != 0 {
        return None;
    }
    let id = |flag: &str| -> u32 {
        let out = Command::new("id")
            .args([flag, "postgres"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "running as root, tests/tls.rs needs the `postgres` OS user to run initdb \
             (apt-get install postgresql creates it)"
        );
        String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
    };
    Some((id("-u"), id("-g")))
}

fn as_cluster_user(cmd: &mut Command, user: Option<(u32, u32)>) -> &mut Command {
    use std::os::unix::process::CommandExt;
    if let Some((uid, gid)) = user {
        cmd.uid(uid).gid(gid);
    }
    cmd
}

/// A certificate authority made for one test.
struct Ca {
    pem: String,
    issuer: Issuer<'static, KeyPair>,
}

fn new_ca(name: &str) -> Ca {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let key = KeyPair::generate().unwrap();
    let pem = params.self_signed(&key).unwrap().pem();
    Ca {
        pem,
        issuer: Issuer::new(params, key),
    }
}

/// A running TLS-only cluster; stopped (by its PID) when dropped, also when a
/// test panics.
struct Cluster {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
    log: Arc<Mutex<Vec<String>>>,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SIGINT = "fast" shutdown: disconnect clients, stop cleanly.
            let _ = Command::new("kill")
                .args(["-INT", &child.id().to_string()])
                .status();
            let _ = child.wait();
        }
    }
}

impl Cluster {
    fn start() -> Self {
        let bin = pg_bindir();
        let user = cluster_user();
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        if let Some((uid, gid)) = user {
            std::os::unix::fs::chown(root, Some(uid), Some(gid)).unwrap();
        }

        // Certificates: the server's, signed by our CA, for localhost and 127.0.0.1.
        let ca = new_ca("authd test CA");
        let other = new_ca("some other CA");
        let mut params =
            CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, "localhost");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let server_key = KeyPair::generate().unwrap();
        let server_cert = params.signed_by(&server_key, &ca.issuer).unwrap();
        std::fs::write(root.join("ca.pem"), &ca.pem).unwrap();
        std::fs::write(root.join("other-ca.pem"), &other.pem).unwrap();
        std::fs::write(root.join("server.crt"), server_cert.pem()).unwrap();
        // Postgres refuses a key others can read.
        let key_path = root.join("server.key");
        std::fs::write(&key_path, server_key.serialize_pem()).unwrap();
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        if let Some((uid, gid)) = user {
            std::os::unix::fs::chown(&key_path, Some(uid), Some(gid)).unwrap();
        }

        let data = root.join("data");
        run(as_cluster_user(
            Command::new(bin.join("initdb"))
                .arg("-D")
                .arg(&data)
                .args(["-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-locale"])
                .arg("--no-sync")
                .current_dir(root),
            user,
        ));

        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        // Only TLS over TCP, only with a password; the Unix socket is for setup.
        std::fs::write(
            data.join("pg_hba.conf"),
            "local   all all                trust\n\
             hostssl all all 127.0.0.1/32   scram-sha-256\n",
        )
        .unwrap();
        let mut conf = std::fs::OpenOptions::new()
            .append(true)
            .open(data.join("postgresql.conf"))
            .unwrap();
        use std::io::Write;
        write!(
            conf,
            "\nlisten_addresses = '127.0.0.1'\nport = {port}\nunix_socket_directories = '{root}'\n\
             ssl = on\nssl_cert_file = '{root}/server.crt'\nssl_key_file = '{root}/server.key'\n\
             password_encryption = 'scram-sha-256'\nfsync = off\nlogging_collector = off\n",
            root = root.display()
        )
        .unwrap();

        let mut child = as_cluster_user(
            Command::new(bin.join("postgres"))
                .arg("-D")
                .arg(&data)
                .current_dir(root)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped()),
            user,
        )
        .spawn()
        .expect("start postgres");
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        {
            let log = log.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    if line.contains("database system is ready to accept connections") {
                        let _ = ready_tx.send(());
                    }
                    log.lock().unwrap().push(line);
                }
            });
        }
        let cluster = Self {
            child: Some(child),
            port,
            dir,
            log,
        };
        // Its own log says when it accepts connections.
        if ready_rx.recv_timeout(Duration::from_secs(60)).is_err() {
            panic!(
                "postgres did not become ready; its log:\n{}",
                cluster.log.lock().unwrap().join("\n")
            );
        }
        cluster
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// As the superuser over the Unix socket: a role with a password and its database.
    async fn create_role(&self) {
        let mut conn = PgConnectOptions::new()
            .socket(self.dir.path())
            .port(self.port)
            .username("postgres")
            .database("postgres")
            .connect()
            .await
            .expect("connect over the Unix socket");
        for sql in [
            format!("CREATE ROLE authd LOGIN PASSWORD '{ROLE_PASSWORD}'"),
            "CREATE DATABASE authd OWNER authd".to_owned(),
        ] {
            sqlx::query(sqlx::AssertSqlSafe(sql))
                .execute(&mut conn)
                .await
                .unwrap();
        }
    }

    fn url(&self, host: &str, password: &str, query: &str) -> String {
        format!(
            "postgres://authd:{password}@{host}:{}/authd?{query}",
            self.port
        )
    }
}

fn migrate(url: &str) -> Output {
    let dir = tempfile::tempdir().unwrap();
    Command::new(env!("CARGO_BIN_EXE_authd"))
        .arg("migrate")
        .current_dir(dir.path())
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("DATABASE_URL", url)
        .env("ACCESS_TOKEN_SECRET", ACCESS)
        .env("REFRESH_TOKEN_SECRET", REFRESH)
        .env("DATABASE_ACQUIRE_TIMEOUT", "10s")
        .output()
        .unwrap()
}

fn connects(what: &str, url: &str) {
    let out = migrate(url);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{what}: must connect:\n{stderr}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "migrations applied\n");
    for secret in [ROLE_PASSWORD, WRONG_PASSWORD] {
        assert!(!stderr.contains(secret), "{what}: a password was printed");
    }
}

/// Refused with one `authd: cannot open the database …` line containing every
/// one of `expected`; no password anywhere in the output.
fn refused(what: &str, url: &str, expected: &[&str]) {
    let out = migrate(url);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "{what}: must be refused");
    for secret in [ROLE_PASSWORD, WRONG_PASSWORD] {
        assert!(
            !stderr.contains(secret) && !String::from_utf8_lossy(&out.stdout).contains(secret),
            "{what}: a password was printed:\n{stderr}"
        );
    }
    let errors: Vec<&str> = stderr.lines().filter(|l| !l.starts_with('{')).collect();
    assert_eq!(errors.len(), 1, "{what}: one error line:\n{stderr}");
    let line = errors[0];
    assert!(
        line.starts_with("authd: cannot open the database authd on "),
        "{what}: {line}"
    );
    for e in expected {
        assert!(line.contains(e), "{what}: {line:?} should say {e:?}");
    }
}

#[tokio::test]
async fn tls_to_a_tls_only_postgres() {
    let cluster = Cluster::start();
    cluster.create_role().await;
    let ca = cluster.path("ca.pem");
    let other_ca = cluster.path("other-ca.pem");
    let root = |p: &Path| format!("sslrootcert={}", p.display());

    // The control: this server takes no plaintext connection at all.
    refused(
        "sslmode=disable",
        &cluster.url("127.0.0.1", ROLE_PASSWORD, "sslmode=disable"),
        &["no encryption", "SQLSTATE 28000", "sslmode"],
    );

    connects(
        "sslmode=require",
        &cluster.url("127.0.0.1", ROLE_PASSWORD, "sslmode=require"),
    );
    connects(
        "verify-full, right root, by name",
        &cluster.url(
            "localhost",
            ROLE_PASSWORD,
            &format!("sslmode=verify-full&{}", root(&ca)),
        ),
    );
    connects(
        "verify-full, right root, by IP",
        &cluster.url(
            "127.0.0.1",
            ROLE_PASSWORD,
            &format!("sslmode=verify-full&{}", root(&ca)),
        ),
    );

    refused(
        "verify-full, another CA",
        &cluster.url(
            "localhost",
            ROLE_PASSWORD,
            &format!("sslmode=verify-full&{}", root(&other_ca)),
        ),
        &[
            "invalid peer certificate",
            "TLS: the server's certificate is not signed by a trusted CA",
            "sslrootcert",
        ],
    );
    // The system's roots alone do not vouch for a private CA.
    refused(
        "verify-full, system roots only",
        &cluster.url("localhost", ROLE_PASSWORD, "sslmode=verify-full"),
        &["not signed by a trusted CA"],
    );
    refused(
        "wrong password",
        &cluster.url("127.0.0.1", WRONG_PASSWORD, "sslmode=require"),
        &[
            "password authentication failed for user \"authd\"",
            "wrong password: check the user and password in DATABASE_URL",
        ],
    );
}
