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
use authd::store::NewUser;

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
    Serve,
    /// Apply database migrations and exit.
    Migrate,
    /// Print a new random signing secret.
    Secret {
        #[command(subcommand)]
        command: SecretCommand,
    },
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
enum SecretCommand {
    /// Print a new random secret (64 characters).
    Generate,
}

#[derive(Subcommand)]
enum UserCommand {
    /// Create a user; the password is read from standard input.
    Create {
        #[arg(long)]
        email: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
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

/// Process environment over `.env` (if present). The process environment is
/// never modified.
fn environment(read_dotenv: bool) -> HashMap<String, String> {
    let mut vars = HashMap::new();
    if read_dotenv && let Ok(iter) = dotenvy::from_path_iter(".env") {
        vars.extend(iter.flatten());
    }
    vars.extend(std::env::vars());
    vars
}

fn load(mode: Mode, vars: &HashMap<String, String>) -> Result<Config, String> {
    Config::from_vars(mode, vars).map_err(|e| {
        e.0.iter()
            .map(|p| format!("authd: {p}"))
            .collect::<Vec<_>>()
            .join("\n")
    })
}

async fn run(command: Command) -> Result<(), String> {
    match command {
        Command::Dev => {
            let data = Path::new(dev::DATA_DIR);
            let vars = dev::prepare(data, environment(false)).map_err(|e| format!("authd: {e}"))?;
            let config = load(Mode::Dev, &vars)?;
            serve(config, vars.get("RUST_LOG").cloned(), Some(data)).await
        }
        Command::Serve => {
            let vars = environment(true);
            let config = load(Mode::Serve, &vars)?;
            serve(config, vars.get("RUST_LOG").cloned(), None).await
        }
        Command::Migrate => {
            let vars = environment(true);
            let config = load(Mode::Serve, &vars)?;
            open_store(&config, true)
                .await
                .map_err(|e| format!("authd: {e}"))?;
            println!("migrations applied");
            Ok(())
        }
        Command::Secret {
            command: SecretCommand::Generate,
        } => {
            let secret = dev::generate_secret().map_err(|e| format!("authd: {e}"))?;
            println!("{secret}");
            Ok(())
        }
        Command::Healthcheck { url } => healthcheck(url).await,
        Command::User {
            command: UserCommand::Create { email },
        } => create_user(&email).await,
    }
}

async fn serve(
    config: Config,
    filter: Option<String>,
    dev_data: Option<&Path>,
) -> Result<(), String> {
    authd::telemetry::init(config.log_format, filter.as_deref(), std::io::stderr);
    for warning in &config.warnings {
        tracing::warn!("{warning}");
    }
    let app = Application::build(&config, Clock::system())
        .await
        .map_err(|e| format!("authd: {e}"))?;
    let url = format!("http://{}", app.local_addr());
    if let Some(data) = dev_data {
        let mut out = std::io::stdout().lock();
        let _ = write!(out, "{}", dev::banner(&url, &data.join(dev::DATABASE_FILE)));
        let _ = out.flush();
        tracing::warn!("development mode: not for production");
    }
    tracing::info!(url = %url, "authd listening");
    app.run_until(shutdown_signal())
        .await
        .map_err(|e| format!("authd: server error: {e}"))?;
    tracing::info!("authd stopped");
    Ok(())
}

async fn healthcheck(url: Option<String>) -> Result<(), String> {
    let base = match url {
        Some(u) => u,
        None => {
            let bind = environment(true)
                .get("BIND_ADDR")
                .cloned()
                .unwrap_or_else(|| "0.0.0.0:8080".into());
            format!("http://{}", bind.replace("0.0.0.0", "127.0.0.1"))
        }
    };
    let authority = base
        .strip_prefix("http://")
        .ok_or("authd: healthcheck supports http:// URLs only")?
        .trim_end_matches('/');
    let request = async {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::net::TcpStream::connect(authority).await?;
        stream
            .write_all(
                format!(
                    "GET /health/ready HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n"
                )
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
    let vars = environment(true);
    let config = load(Mode::Serve, &vars)?;
    let email = authd::domain::Email::parse(email).map_err(|e| format!("authd: {e}"))?;
    if std::io::stdin().is_terminal() {
        eprint!("Password for {email}: ");
    }
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .map_err(|e| format!("authd: cannot read the password: {e}"))?;
    let password = Password::parse_new(line.trim_end_matches(['\r', '\n']).to_owned())
        .map_err(|e| format!("authd: {e}"))?;
    let store = open_store(&config, config.migrate_on_start)
        .await
        .map_err(|e| format!("authd: {e}"))?;
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
