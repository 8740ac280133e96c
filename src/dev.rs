//! `authd dev`: zero configuration. An embedded SQLite database and signing
//! secrets under `./data/` (created on first start, secrets mode 0600, so
//! tokens survive a restart), open sign-up, readable logs, and a banner that
//! says how to use it and that it is not for production.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

pub const DATA_DIR: &str = "data";
pub const DATABASE_FILE: &str = "authd-dev.db";
const ACCESS_KEY_FILE: &str = "access-token.key";
const REFRESH_KEY_FILE: &str = "refresh-token.key";

#[derive(Debug, thiserror::Error)]
pub enum DevError {
    #[error("cannot prepare {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot generate a secret: {0}")]
    Random(String),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> DevError + '_ {
    move |source| DevError::Io {
        path: path.to_owned(),
        source,
    }
}

/// A new random signing secret: 48 bytes from the OS, base64url (64 chars).
pub fn generate_secret() -> Result<String, DevError> {
    let mut bytes = [0u8; 48];
    getrandom::fill(&mut bytes).map_err(|e| DevError::Random(e.to_string()))?;
    Ok(URL_SAFE_NO_PAD.encode(bytes))
}

/// Create `dir` and its secrets if missing; return the configuration variables
/// of dev mode, with the process environment taking precedence.
pub fn prepare(
    dir: &Path,
    env: HashMap<String, String>,
) -> Result<HashMap<String, String>, DevError> {
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    // The database holds password hashes: owner only.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .map_err(io_err(dir))?;
    }
    let access = read_or_create_secret(&dir.join(ACCESS_KEY_FILE))?;
    let refresh = read_or_create_secret(&dir.join(REFRESH_KEY_FILE))?;
    let mut vars: HashMap<String, String> = [
        (
            "DATABASE_URL".to_owned(),
            format!("sqlite://{}", dir.join(DATABASE_FILE).display()),
        ),
        ("ACCESS_TOKEN_SECRET".to_owned(), access),
        ("REFRESH_TOKEN_SECRET".to_owned(), refresh),
        // SQLite has one writer; a few connections are plenty.
        ("DATABASE_MAX_CONNECTIONS".to_owned(), "4".to_owned()),
    ]
    .into_iter()
    .collect();
    vars.extend(env);
    Ok(vars)
}

fn read_or_create_secret(path: &Path) -> Result<String, DevError> {
    match std::fs::read_to_string(path) {
        Ok(s) if !s.trim().is_empty() => {
            restrict(path)?;
            return Ok(s.trim().to_owned());
        }
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err(path)(e)),
    }
    let secret = generate_secret()?;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path).map_err(io_err(path))?;
    writeln!(file, "{secret}").map_err(io_err(path))?;
    restrict(path)?;
    Ok(secret)
}

/// Owner read/write only, also for a file that existed with a wider mode.
fn restrict(path: &Path) -> Result<(), DevError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .map_err(io_err(path))?;
    }
    Ok(())
}

/// The start banner: where it listens, where the data is, a warning, and a
/// walk-through that works as printed.
pub fn banner(url: &str, database: &Path) -> String {
    format!(
        r#"
  authd dev — listening on {url}
  database:  {db} (SQLite; secrets next to it, mode 0600)
  demo:      {url}/demo

  ⚠  Development mode: not for production. Use `authd serve` with Postgres.

  Try it:
    A={url}
    curl -s $A/register -H 'content-type: application/json' -d '{{"email":"ada@example.com","password":"correct horse battery"}}'
    TOKEN=$(curl -s -c jar.txt $A/login -H 'content-type: application/json' -d '{{"email":"ada@example.com","password":"correct horse battery"}}' | sed -E 's/.*"access_token":"([^"]+)".*/\1/')
    curl -s $A/me -H "authorization: Bearer $TOKEN"
    curl -s -b jar.txt -c jar.txt -X POST $A/refresh -H 'x-requested-with: curl'
    curl -s -b jar.txt -c jar.txt -X POST $A/logout -H 'x-requested-with: curl' -o /dev/null -w '%{{http_code}}\n'
"#,
        db = database.display()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_created_once_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let first = prepare(&data, HashMap::new()).unwrap();
        let second = prepare(&data, HashMap::new()).unwrap();
        assert_eq!(first["ACCESS_TOKEN_SECRET"], second["ACCESS_TOKEN_SECRET"]);
        assert_ne!(first["ACCESS_TOKEN_SECRET"], first["REFRESH_TOKEN_SECRET"]);
        assert!(first["ACCESS_TOKEN_SECRET"].len() >= 32);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            for f in [ACCESS_KEY_FILE, REFRESH_KEY_FILE] {
                let mode = std::fs::metadata(data.join(f))
                    .unwrap()
                    .permissions()
                    .mode();
                assert_eq!(mode & 0o777, 0o600, "{f}");
            }
        }
    }

    #[test]
    fn environment_wins() {
        let dir = tempfile::tempdir().unwrap();
        let env = HashMap::from([("BIND_ADDR".to_owned(), "127.0.0.1:0".to_owned())]);
        let vars = prepare(&dir.path().join("data"), env).unwrap();
        assert_eq!(vars["BIND_ADDR"], "127.0.0.1:0");
        assert!(vars["DATABASE_URL"].starts_with("sqlite://"));
    }
}
