//! `authd dev` as a newcomer meets it: from an empty directory, with no
//! configuration and no database server, the README's curl walk-through works
//! as written; a restart keeps users and sessions; the generated secrets are
//! private.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::{Value, json};

struct DevServer {
    child: Child,
    url: String,
    banner: String,
}

impl DevServer {
    /// Start `authd dev` in `dir` with an empty environment (but PATH) and an
    /// OS-chosen port; wait for the banner, which carries the URL.
    fn start(dir: &Path) -> Self {
        let stderr = std::fs::File::create(dir.join("authd.log")).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_authd"))
            .arg("dev")
            .current_dir(dir)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("BIND_ADDR", "127.0.0.1:0")
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("start authd dev");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut banner = String::new();
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                banner.push_str(&line);
                banner.push('\n');
                // The walk-through ends with the logout line.
                if line.contains("$A/logout") {
                    let _ = tx.send(banner.clone());
                }
            }
        });
        let banner = rx
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|_| {
                let log = std::fs::read_to_string(dir.join("authd.log")).unwrap_or_default();
                panic!("authd dev printed no banner; its log:\n{log}")
            });
        let url = banner
            .lines()
            .find_map(|l| l.split("listening on ").nth(1))
            .expect("banner names the URL")
            .trim()
            .to_owned();
        Self { child, url, banner }
    }

    /// SIGTERM, and expect a clean exit.
    fn stop(mut self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let exit = self.child.wait().unwrap();
        assert!(exit.success(), "graceful shutdown exits 0: {exit:?}");
    }
}

impl Drop for DevServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The shell block between the walk-through markers of README.md.
fn readme_walkthrough() -> String {
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let start = readme
        .find("<!-- walkthrough:start -->")
        .expect("README has a walk-through");
    let end = readme.find("<!-- walkthrough:end -->").unwrap();
    let block = &readme[start..end];
    let code_start = block.find("```sh\n").unwrap() + "```sh\n".len();
    let code_end = block[code_start..].find("```").unwrap() + code_start;
    block[code_start..code_end].to_owned()
}

#[test]
fn the_readme_walkthrough_works_against_a_fresh_dev_server() {
    let dir = tempfile::tempdir().unwrap();
    let server = DevServer::start(dir.path());

    assert!(
        server.banner.contains("not for production"),
        "{}",
        server.banner
    );
    assert!(server.banner.contains("data/authd-dev.db"));
    assert!(server.url.starts_with("http://127.0.0.1:"));

    let script = readme_walkthrough();
    assert!(
        script.contains("A=http://127.0.0.1:8080"),
        "README uses the default address"
    );
    assert_eq!(
        script.lines().filter(|l| l.contains("curl -s")).count(),
        5,
        "five curl lines"
    );
    // The banner prints the same walk-through, for the address it listens on.
    for line in script.lines().filter(|l| l.contains("curl -s")) {
        assert!(server.banner.contains(line.trim()), "banner lacks: {line}");
    }
    let script = script.replace("http://127.0.0.1:8080", &server.url);
    let out = Command::new("bash")
        .args(["-euo", "pipefail", "-c", &script])
        .current_dir(dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // curl prints the bodies back to back: read them as a stream of JSON
    // values — register, /me, refresh, and the logout status code.
    let values: Vec<Value> = serde_json::Deserializer::from_str(&stdout)
        .into_iter::<Value>()
        .collect::<Result<_, _>>()
        .unwrap_or_else(|e| panic!("{e}: {stdout}"));
    assert_eq!(values.len(), 4, "{stdout}");
    let (register, me, refreshed) = (&values[0], &values[1], &values[2]);
    assert_eq!(register["email"], "ada@example.com");
    assert_eq!(me["email"], "ada@example.com");
    assert_eq!(me["id"], register["id"]);
    assert_eq!(refreshed["session_id"], me["session_id"]);
    assert!(refreshed["access_token"].is_string());
    assert_eq!(values[3], 204, "logout");

    // Secrets generated next to the database, private to the owner.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let data = dir.path().join("data");
        let keys: Vec<_> = std::fs::read_dir(&data)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "key"))
            .collect();
        assert_eq!(keys.len(), 2, "two secret files in {data:?}");
        for k in keys {
            let mode = std::fs::metadata(&k).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{k:?}");
        }
        assert!(data.join("authd-dev.db").exists());
    }
    server.stop();
}

#[tokio::test]
async fn a_restart_keeps_users_and_sessions() {
    let dir = tempfile::tempdir().unwrap();
    let http = reqwest::Client::new();
    let creds = json!({"email": "ada@example.com", "password": "correct horse battery"});

    let first = DevServer::start(dir.path());
    let r = http
        .post(format!("{}/register", first.url))
        .json(&creds)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let login: Value = http
        .post(format!("{}/login", first.url))
        .header("x-refresh-transport", "body")
        .json(&creds)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let refresh_token = login["refresh_token"].as_str().unwrap().to_owned();
    first.stop();

    let second = DevServer::start(dir.path());
    let r = http
        .post(format!("{}/refresh", second.url))
        .header("x-refresh-transport", "body")
        .json(&json!({ "refresh_token": refresh_token }))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        200,
        "a token from before the restart still rotates"
    );
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["session_id"], login["session_id"]);
    let me = http
        .get(format!("{}/me", second.url))
        .bearer_auth(body["access_token"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(me.status(), 200);
    second.stop();
}

#[test]
fn dev_data_is_never_committed() {
    let gitignore = std::fs::read_to_string(repo().join(".gitignore")).unwrap();
    assert!(
        gitignore.lines().any(|l| l.trim() == "/data"),
        "{gitignore}"
    );
    assert!(gitignore.lines().any(|l| l.trim() == ".env"));
}
