//! The `authd` command line: a thin layer over the library.

use std::collections::HashMap;
use std::io::{BufRead, IsTerminal, Write};
use std::path::Path;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use authd::app::{Application, open_store, shutdown_signal};
use authd::clock::Clock;
use authd::config::{Config, Mode};
use authd::dev;
use authd::domain::Password;
use authd::password::{DEFAULT_MAX_WAIT, PasswordHasher};
use authd::store::{CleanupCutoffs, NewUser};
use authd::tokens::{AccessAlgorithm, generate_private_key};

#[derive(Parser)]
#[command(
    name = "authd",
    version,
    about = "Authentication service: login, rotating refresh tokens, sessions"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Zero-configuration development server (SQLite and secrets under ./data/). Not for production.
    Dev,
    /// Production server: configuration from the environment (and .env).
    #[command(after_help = authd::config::env_help())]
    Serve,
    /// Check the configuration.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Apply database migrations and exit.
    Migrate,
    /// Print a new random signing secret (or private key).
    Secret {
        #[command(subcommand)]
        command: SecretCommand,
    },
    /// Run one cleanup pass (expired refresh tokens, long-ended sessions, stale login counters) and exit.
    Cleanup,
    /// Exit 0 when /health/ready answers 200 (for container health checks).
    Healthcheck {
        /// Base URL; default: derived from BIND_ADDR.
        #[arg(long)]
        url: Option<String>,
    },
    /// Manage users.
    User {
        #[command(subcommand)]
        command: UserCommand,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Validate the environment like `serve`, print every effective setting
    /// (secrets redacted), and exit non-zero listing every problem.
    #[command(after_help = authd::config::env_help())]
    Check,
}

#[derive(Subcommand)]
enum SecretCommand {
    /// Print a new random secret (64 characters), or with --ed25519 / --es256 a
    /// new PKCS#8 PEM private key for ACCESS_TOKEN_PRIVATE_KEY.
    Generate {
        /// An Ed25519 private key (ACCESS_TOKEN_ALG=EdDSA).
        #[arg(long, conflicts_with = "es256")]
        ed25519: bool,
        /// A P-256 private key (ACCESS_TOKEN_ALG=ES256).
        #[arg(long)]
        es256: bool,
    },
}

#[derive(Subcommand)]
enum UserCommand {
    /// Create a user; the password is prompted for without echo on a terminal, else read from standard input.
    Create {
        #[arg(long)]
        email: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Named threads: a profile or `top -H` tells authd's from a client's.
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("authd-rt")
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("authd: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("{message}");
            ExitCode::FAILURE
        }
    }
}

/// The variables to configure from, and the problems found reading them:
/// process environment over `.env` (if present and asked for). The process
/// environment is never modified.
struct Environment {
    vars: HashMap<String, String>,
    problems: Vec<String>,
}

fn environment(read_dotenv: bool) -> Environment {
    let (mut vars, problems) = if read_dotenv {
        authd::config::read_dotenv(Path::new(".env"))
    } else {
        (HashMap::new(), Vec::new())
    };
    vars.extend(std::env::vars());
    Environment { vars, problems }
}

/// The configuration, or every problem (`.env` lines first), one line each.
fn load(mode: Mode, env: &Environment) -> Result<Config, String> {
    let config = Config::from_vars(mode, &env.vars);
    let config_problems = config.as_ref().err().map_or(&[][..], |e| &e.0[..]);
    let problems: Vec<String> = env
        .problems
        .iter()
        .chain(config_problems)
        .map(|p| format!("authd: {p}"))
        .collect();
    match config {
        Ok(config) if problems.is_empty() => Ok(config),
        _ => Err(problems.join("\n")),
    }
}

async fn run(command: Command) -> Result<(), String> {
    match command {
        Command::Dev => {
            let data = Path::new(dev::DATA_DIR);
            let env = environment(false);
            let env = Environment {
                vars: dev::prepare(data, env.vars).map_err(|e| format!("authd: {e}"))?,
                problems: env.problems,
            };
            let config = load(Mode::Dev, &env)?;
            serve(config, Some(data)).await
        }
        Command::Serve => {
            let config = load(Mode::Serve, &environment(true))?;
            serve(config, None).await
        }
        Command::Config {
            command: ConfigCommand::Check,
        } => config_check(),
        Command::Migrate => {
            let config = load(Mode::Serve, &environment(true))?;
            authd::telemetry::init(config.log_format, Some(&config.log_filter), std::io::stderr);
            open_store(&config, true)
                .await
                .map_err(|e| format!("authd: {}", e.report()))?;
            println!("migrations applied");
            Ok(())
        }
        Command::Cleanup => {
            let vars = environment(true);
            let config = load(Mode::Serve, &vars)?;
            let store = open_store(&config, config.migrate_on_start)
                .await
                .map_err(|e| format!("authd: {e}"))?;
            let cutoffs = CleanupCutoffs::at(
                Clock::system().now(),
                config.cleanup_retention,
                config.login_limits.failure_window,
                config.access_ttl + std::time::Duration::from_secs(60),
            );
            match store
                .cleanup(&cutoffs, authd::auth::CLEANUP_BATCH)
                .await
                .map_err(|e| format!("authd: cleanup failed: {e}"))?
            {
                Some(r) => println!(
                    "deleted {} refresh tokens, {} sessions, {} login counters, {} feed entries",
                    r.tokens, r.sessions, r.throttle, r.revocations
                ),
                None => println!("another replica is running cleanup; nothing done"),
            }
            Ok(())
        }
        Command::Secret {
            command: SecretCommand::Generate { ed25519, es256 },
        } => {
            let alg = match (ed25519, es256) {
                (true, _) => AccessAlgorithm::EdDsa,
                (_, true) => AccessAlgorithm::Es256,
                _ => {
                    let secret = dev::generate_secret().map_err(|e| format!("authd: {e}"))?;
                    println!("{secret}");
                    return Ok(());
                }
            };
            let pem = generate_private_key(alg).map_err(|e| format!("authd: {e}"))?;
            print!("{}", pem.as_str());
            Ok(())
        }
        Command::Healthcheck { url } => healthcheck(url).await,
        Command::User {
            command: UserCommand::Create { email },
        } => create_user(&email).await,
    }
}

/// `authd config check`: every effective setting on stdout, problems on stderr.
fn config_check() -> Result<(), String> {
    let config = load(Mode::Serve, &environment(true))?;
    let mut out = std::io::stdout().lock();
    for (name, value) in config.settings() {
        let _ = writeln!(out, "{name}={value}");
    }
    for warning in &config.warnings {
        eprintln!("authd: warning: {warning}");
    }
    Ok(())
}

async fn serve(config: Config, dev_data: Option<&Path>) -> Result<(), String> {
    authd::telemetry::init(config.log_format, Some(&config.log_filter), std::io::stderr);
    for warning in &config.warnings {
        tracing::warn!("{warning}");
    }
    let app = Application::build(&config, Clock::system())
        .await
        .map_err(|e| format!("authd: {}", e.report()))?;
    let prefix = if config.base_path == "/" {
        ""
    } else {
        config.base_path.as_str()
    };
    let url = format!("http://{}{prefix}", app.local_addr());
    if let Some(data) = dev_data {
        let mut out = std::io::stdout().lock();
        let _ = write!(
            out,
            "{}",
            dev::banner(
                &url,
                &data.join(dev::DATABASE_FILE),
                config.access_keys.alg()
            )
        );
        let _ = out.flush();
        tracing::warn!("development mode: not for production");
    }
    let shutdown = shutdown_signal();
    tracing::info!(url = %url, "authd listening");
    app.run_until(shutdown)
        .await
        .map_err(|e| format!("authd: server error: {e}"))?;
    tracing::info!("authd stopped");
    Ok(())
}

/// `GET {base path}/health/ready` on `url`, or on `BIND_ADDR`; the base path
/// is the URL's path, or else `BASE_PATH`.
async fn healthcheck(url: Option<String>) -> Result<(), String> {
    let vars = environment(true).vars;
    let base = match url {
        Some(u) => u,
        None => {
            let bind = vars
                .get("BIND_ADDR")
                .cloned()
                .unwrap_or_else(|| "0.0.0.0:8080".into());
            format!("http://{}", bind.replace("0.0.0.0", "127.0.0.1"))
        }
    };
    let (authority, path) = base
        .strip_prefix("http://")
        .ok_or("authd: healthcheck supports http:// URLs only")?
        .split_once('/')
        .map_or((base.trim_start_matches("http://"), ""), |(a, p)| (a, p));
    let base_path = match (path.trim_matches('/'), vars.get("BASE_PATH")) {
        ("", Some(configured)) if !configured.trim().is_empty() => {
            authd::config::normalise_base_path(configured.trim())
                .map_err(|e| format!("authd: BASE_PATH: {e}"))?
        }
        (path, _) => format!("/{path}"),
    };
    let ready = format!("{}/health/ready", base_path.trim_end_matches('/'));
    let request = async {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::net::TcpStream::connect(authority).await?;
        stream
            .write_all(
                format!("GET {ready} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n")
                    .as_bytes(),
            )
            .await?;
        let mut head = [0u8; 12];
        stream.read_exact(&mut head).await?;
        Ok::<_, std::io::Error>(head)
    };
    match tokio::time::timeout(std::time::Duration::from_secs(5), request).await {
        Ok(Ok(head)) if head.starts_with(b"HTTP/1.1 200") => Ok(()),
        Ok(Ok(head)) => Err(format!(
            "authd: not ready: {}",
            String::from_utf8_lossy(&head)
        )),
        Ok(Err(e)) => Err(format!("authd: not reachable at {base}: {e}")),
        Err(_) => Err(format!("authd: no answer from {base} within 5 s")),
    }
}

async fn create_user(email: &str) -> Result<(), String> {
    let config = load(Mode::Serve, &environment(true))?;
    let email = authd::domain::Email::parse(email).map_err(|e| format!("authd: {e}"))?;
    let password =
        Password::parse_new(read_password(&email)?).map_err(|e| format!("authd: {e}"))?;
    let store = open_store(&config, config.migrate_on_start)
        .await
        .map_err(|e| format!("authd: {}", e.report()))?;
    let hash = PasswordHasher::new(1, 0, DEFAULT_MAX_WAIT)
        .admit(None)
        .map_err(|e| format!("authd: {e}"))?
        .hash(&password)
        .await
        .map_err(|e| format!("authd: {e}"))?;
    let user = store
        .create_user(NewUser {
            id: authd::domain::UserId::new(),
            email,
            password_hash: hash,
            now: Clock::system().now(),
        })
        .await
        .map_err(|e| format!("authd: {e}"))?;
    println!("{}", user.id);
    Ok(())
}

/// On a terminal: prompted twice, without echo. Otherwise: the first line of
/// standard input (for scripts).
fn read_password(email: &authd::domain::Email) -> Result<String, String> {
    let cannot = |e: std::io::Error| format!("authd: cannot read the password: {e}");
    if std::io::stdin().is_terminal() {
        let first =
            rpassword::prompt_password(format!("Password for {email}: ")).map_err(cannot)?;
        let again = rpassword::prompt_password("Repeat it: ").map_err(cannot)?;
        if first != again {
            return Err("authd: the passwords differ".to_owned());
        }
        return Ok(first);
    }
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .map_err(cannot)?;
    Ok(line.trim_end_matches(['\r', '\n']).to_owned())
}
