//! `authd dev`: zero configuration. An embedded SQLite database and signing
//! secrets under `./data/` (created on first start, secrets mode 0600, so
//! tokens survive a restart; an Ed25519 key too, used when
//! `ACCESS_TOKEN_ALG=EdDSA`), open sign-up, readable logs, and a banner that
//! says how to use it and that it is not for production.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use crate::tokens::AccessAlgorithm;

pub const DATA_DIR: &str = "data";
pub const DATABASE_FILE: &str = "authd-dev.db";
const ACCESS_KEY_FILE: &str = "access-token.key";
const REFRESH_KEY_FILE: &str = "refresh-token.key";
pub const ACCESS_ED25519_FILE: &str = "access-token.ed25519.pem";

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
    #[error("{0}")]
    Key(#[from] crate::tokens::KeyError),
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
    let access = read_or_create_secret(&dir.join(ACCESS_KEY_FILE), generate_secret)?;
    let refresh = read_or_create_secret(&dir.join(REFRESH_KEY_FILE), generate_secret)?;
    // Made even while HS256 is in use, so switching to EdDSA (and back) keeps
    // one key, and tokens, across restarts.
    let ed25519 = dir.join(ACCESS_ED25519_FILE);
    read_or_create_secret(&ed25519, || {
        let pem = crate::tokens::generate_private_key(AccessAlgorithm::EdDsa)?;
        Ok(pem.trim().to_owned())
    })?;
    let mut vars: HashMap<String, String> = [
        (
            "DATABASE_URL".to_owned(),
            format!("sqlite://{}", dir.join(DATABASE_FILE).display()),
        ),
        ("REFRESH_TOKEN_SECRET".to_owned(), refresh),
        // SQLite has one writer; a few connections are plenty.
        ("DATABASE_MAX_CONNECTIONS".to_owned(), "4".to_owned()),
    ]
    .into_iter()
    .collect();
    let eddsa = env
        .get("ACCESS_TOKEN_ALG")
        .and_then(|a| AccessAlgorithm::parse(a.trim()))
        == Some(AccessAlgorithm::EdDsa);
    if eddsa {
        vars.insert(
            "ACCESS_TOKEN_PRIVATE_KEY".to_owned(),
            ed25519.display().to_string(),
        );
    } else {
        vars.insert("ACCESS_TOKEN_SECRET".to_owned(), access);
    }
    vars.extend(env);
    Ok(vars)
}

/// The trimmed content of `path`, or a new one from `generate` written there
/// (mode 0600).
fn read_or_create_secret(
    path: &Path,
    generate: impl FnOnce() -> Result<String, DevError>,
) -> Result<String, DevError> {
    match std::fs::read_to_string(path) {
        Ok(s) if !s.trim().is_empty() => {
            restrict(path)?;
            return Ok(s.trim().to_owned());
        }
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err(path)(e)),
    }
    let secret = generate()?;
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
pub fn banner(url: &str, database: &Path, alg: AccessAlgorithm) -> String {
    let tokens = match alg {
        AccessAlgorithm::Hs256 => {
            "HS256 (ACCESS_TOKEN_ALG=EdDSA signs with the Ed25519 key in the same directory)"
                .to_owned()
        }
        alg => format!("{alg}, public keys at {url}/.well-known/jwks.json"),
    };
    format!(
        r#"
  authd dev — listening on {url}
  database:  {db} (SQLite; secrets next to it, mode 0600)
  tokens:    {tokens}
  demo:      {url}/demo

  ⚠  Development mode: not for production. Use `authd serve` with Postgres.

  Try it:
    A={url}; JAR=$(mktemp)
    curl -s $A/register -H 'content-type: application/json' -d '{{"email":"ada@example.com","password":"correct horse battery"}}'
    TOKEN=$(curl -s -c "$JAR" $A/login -H 'content-type: application/json' -d '{{"email":"ada@example.com","password":"correct horse battery"}}' | sed -E 's/.*"access_token":"([^"]+)".*/\1/')
    curl -s $A/me -H "authorization: Bearer $TOKEN"
    curl -s -b "$JAR" -c "$JAR" -X POST $A/refresh -H 'x-requested-with: curl'
    curl -s -b "$JAR" -c "$JAR" -X POST $A/logout -H 'x-requested-with: curl' -o /dev/null -w '%{{http_code}}\n'
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
        let key = std::fs::read_to_string(data.join(ACCESS_ED25519_FILE)).unwrap();
        let second = prepare(&data, HashMap::new()).unwrap();
        assert_eq!(first["ACCESS_TOKEN_SECRET"], second["ACCESS_TOKEN_SECRET"]);
        assert_ne!(first["ACCESS_TOKEN_SECRET"], first["REFRESH_TOKEN_SECRET"]);
        assert!(first["ACCESS_TOKEN_SECRET"].len() >= 32);
        assert_eq!(
            std::fs::read_to_string(data.join(ACCESS_ED25519_FILE)).unwrap(),
            key,
            "the key is made once"
        );
        crate::tokens::PrivateKey::from_pem(AccessAlgorithm::EdDsa, &key).unwrap();
        // HS256 stays the default: the key is not configured.
        assert!(!first.contains_key("ACCESS_TOKEN_PRIVATE_KEY"));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            for f in [ACCESS_KEY_FILE, REFRESH_KEY_FILE, ACCESS_ED25519_FILE] {
                let mode = std::fs::metadata(data.join(f))
                    .unwrap()
                    .permissions()
                    .mode();
                assert_eq!(mode & 0o777, 0o600, "{f}");
            }
        }
    }

    #[test]
    fn eddsa_uses_the_generated_key_with_no_other_setting() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let env = HashMap::from([("ACCESS_TOKEN_ALG".to_owned(), "EdDSA".to_owned())]);
        let vars = prepare(&data, env).unwrap();
        assert_eq!(
            vars["ACCESS_TOKEN_PRIVATE_KEY"],
            data.join(ACCESS_ED25519_FILE).display().to_string()
        );
        assert!(
            !vars.contains_key("ACCESS_TOKEN_SECRET"),
            "nothing to ignore"
        );
        let c = crate::config::Config::from_vars(crate::config::Mode::Dev, &vars).unwrap();
        assert_eq!(c.access_keys.alg(), AccessAlgorithm::EdDsa);
        assert!(c.warnings.is_empty(), "{:?}", c.warnings);
        // A key of one's own still wins.
        let env = HashMap::from([
            ("ACCESS_TOKEN_ALG".to_owned(), "EdDSA".to_owned()),
            (
                "ACCESS_TOKEN_PRIVATE_KEY".to_owned(),
                "/etc/mine.pem".to_owned(),
            ),
        ]);
        let vars = prepare(&data, env).unwrap();
        assert_eq!(vars["ACCESS_TOKEN_PRIVATE_KEY"], "/etc/mine.pem");
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
