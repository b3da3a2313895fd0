//! The `outbox-relay` command line: parse, load config, set up logging, hand
//! off to the library. Exit status: 0 success, 2 bad config or usage, 1 any
//! other failure, 130 for a demo stopped by Ctrl-C (after cleaning up).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use outbox_relay::config::{self, Config, ConfigError, Secret};
use outbox_relay::{db, demo, migrate, receiver, relay, sign};

#[derive(Parser)]
#[command(
    name = "outbox-relay",
    version,
    about = "Turns Postgres outbox rows into signed webhooks"
)]
struct Cli {
    /// Config file (TOML).
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Database URL; overrides DATABASE_URL and the config file.
    #[arg(long, global = true, value_name = "URL")]
    database_url: Option<String>,
    /// Log format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Human)]
    log_format: LogFormat,
    /// Log level or filter (as RUST_LOG); overrides RUST_LOG.
    #[arg(long, global = true, value_name = "FILTER")]
    log_level: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Human,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Apply the webhook schema migrations (idempotent); with a config, also
    /// mirror its endpoints into webhook.endpoints.
    Migrate,
    /// Run the relay daemon until SIGINT or SIGTERM.
    Run,
    /// Print a fresh endpoint secret (whsec_ + base64 of 32 random bytes).
    GenSecret,
    /// Zero set-up tour: a throwaway Postgres, the reference schema and
    /// triggers, a verifying receiver and the relay, driven by a short story
    /// of app writes; cleans up after itself (also on Ctrl-C).
    Demo,
    /// A local receiver for testing a set-up: accepts POST on any path of
    /// 127.0.0.1:PORT, verifies each webhook's signature and prints it.
    Receive {
        /// Port on 127.0.0.1 (0 picks a free one; the URL is printed first).
        #[arg(long, value_name = "PORT")]
        port: u16,
        /// The endpoint's secret (whsec_...), as in the relay's config.
        #[arg(
            long,
            value_name = "SECRET",
            env = "WEBHOOK_SECRET",
            hide_env_values = true
        )]
        secret: String,
        /// Status to answer valid webhooks with, to rehearse failures (e.g. 503).
        #[arg(long, value_name = "CODE", default_value_t = 200,
              value_parser = clap::value_parser!(u16).range(200..=599))]
        status: u16,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The demo talks to its user on stdout; relay logs would drown it.
    let default_level = match cli.command {
        Command::Demo => "warn",
        _ => "info",
    };
    init_tracing(cli.log_format, cli.log_level.as_deref(), default_level);
    match run(cli) {
        Ok(code) => code,
        Err(err) => {
            if let Some(cfg) = err.downcast_ref::<ConfigError>() {
                eprintln!("outbox-relay: config error: {cfg}");
                ExitCode::from(2)
            } else {
                eprintln!("outbox-relay: {err:#}");
                ExitCode::from(1)
            }
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    match cli.command {
        Command::Migrate => {
            // A config is optional for migrate: without one, the schema only.
            let cfg = match &cli.config {
                Some(path) => Some(Config::load(path)?),
                None if config::default_path().exists() => {
                    Some(Config::load(&config::default_path())?)
                }
                None => None,
            };
            let url = database_url(&cli, cfg.as_ref())?;
            runtime.block_on(async {
                let mut client = db::connect_simple(&url).await?;
                let applied = migrate::run_migrations(&mut client).await?;
                if applied.is_empty() {
                    println!(
                        "webhook schema is up to date (version {})",
                        migrate::expected_version()
                    );
                } else {
                    for m in &applied {
                        println!("applied {m}");
                    }
                }
                if let Some(cfg) = &cfg {
                    let ids = migrate::sync_endpoints(&mut client, &cfg.endpoints).await?;
                    println!("synced {} endpoint(s) into webhook.endpoints", ids.len());
                }
                Ok(ExitCode::SUCCESS)
            })
        }
        Command::Run => {
            let path = cli.config.clone().unwrap_or_else(config::default_path);
            let cfg = Config::load(&path)?;
            let url = database_url(&cli, Some(&cfg))?;
            runtime.block_on(relay::run_until_signal(cfg, url))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::GenSecret => {
            println!("{}", sign::generate_secret().encode());
            Ok(ExitCode::SUCCESS)
        }
        Command::Demo => match runtime.block_on(demo::run())? {
            demo::Ending::Finished => Ok(ExitCode::SUCCESS),
            // The shell's convention for "stopped by SIGINT".
            demo::Ending::Interrupted => Ok(ExitCode::from(130)),
        },
        Command::Receive {
            port,
            secret,
            status,
        } => {
            // Parsed here rather than by clap, whose errors quote the value.
            let secret = match Secret::parse(secret.trim()) {
                Ok(s) => s,
                Err(why) => {
                    eprintln!("outbox-relay: invalid --secret: {why}");
                    return Ok(ExitCode::from(2));
                }
            };
            // The range check above keeps this a valid status code.
            let status = axum::http::StatusCode::from_u16(status)
                .context("--status is not an HTTP status code")?;
            runtime.block_on(receiver::run_until_signal(port, secret, status))?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Flag, then DATABASE_URL, then the config file.
fn database_url(cli: &Cli, cfg: Option<&Config>) -> Result<String> {
    let env = std::env::var("DATABASE_URL").ok().filter(|s| !s.is_empty());
    let flag = cli.database_url.as_deref();
    match cfg {
        Some(cfg) => Ok(cfg.resolve_database_url(flag, env.as_deref())?),
        None => flag.map(str::to_owned).or(env).ok_or_else(|| {
            ConfigError("no database: pass --database-url or set DATABASE_URL".into()).into()
        }),
    }
}

/// `--log-level`, else RUST_LOG, else `default`.
fn init_tracing(format: LogFormat, level: Option<&str>, default: &str) {
    use tracing_subscriber::EnvFilter;
    let filter = match level {
        Some(l) => EnvFilter::new(l),
        None => EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default)),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
