//! The `outbox-relay` command line: parse, load config, set up logging, hand
//! off to the library. Exit status (docs/configuration.md): 0 success or a
//! clean stop, 2 bad config or usage, 1 any other failure (database
//! unreachable, schema too old, a replay refused), 130 for a demo stopped by
//! Ctrl-C (after cleaning up).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::SystemTime;

use anyhow::{Context, Result};
use clap::{ArgGroup, Parser, Subcommand, ValueEnum};
use outbox_relay::config::{self, Config, ConfigError, Secret};
use outbox_relay::replay::Selection;
use outbox_relay::{db, demo, migrate, pause, receiver, relay, replay, sign, status};

// The relay allocates per event (request, headers, payload copies); glibc's
// allocator was a quarter of its CPU in the drain profile (BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
    /// Per endpoint: rows by status, age of the oldest pending row, the last
    /// five minutes' deliveries and failures, and the latest error.
    Status {
        /// Print stable JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Requeue rows with a fresh attempt budget (webhook.replay): one row by
    /// id, or every row of an endpoint (or all endpoints) in a status
    /// (dead by default) created in a time range.
    Replay(ReplayArgs),
    /// Pause an endpoint by hand: its rows stay pending, no probes are sent,
    /// every relay stops claiming for it until `resume`.
    Pause {
        /// The endpoint's name (webhook.endpoints.name).
        #[arg(long, value_name = "NAME")]
        endpoint: String,
    },
    /// Resume a paused endpoint (paused by hand or by the circuit breaker).
    Resume {
        /// The endpoint's name (webhook.endpoints.name).
        #[arg(long, value_name = "NAME")]
        endpoint: String,
    },
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

#[derive(clap::Args)]
#[command(group(ArgGroup::new("rows").required(true).args(["id", "endpoint", "all_endpoints"])))]
struct ReplayArgs {
    /// The outbox row (webhook.outbox.id) to replay.
    #[arg(long, value_name = "ID", conflicts_with_all = ["status", "since", "until"])]
    id: Option<i64>,
    /// Replay this endpoint's rows.
    #[arg(long, value_name = "NAME")]
    endpoint: Option<String>,
    /// Replay matching rows of every endpoint.
    #[arg(long)]
    all_endpoints: bool,
    /// Rows in this status.
    #[arg(long, value_enum, default_value_t = ReplayStatus::Dead)]
    status: ReplayStatus,
    /// Rows created at or after TIME (2024-05-01T12:00:00Z, 2024-05-01, or an
    /// age such as 2h).
    #[arg(long, value_name = "TIME", value_parser = time_arg)]
    since: Option<SystemTime>,
    /// Rows created before TIME (same forms as --since).
    #[arg(long, value_name = "TIME", value_parser = time_arg)]
    until: Option<SystemTime>,
    /// Only print how many rows would be replayed.
    #[arg(long)]
    dry_run: bool,
}

#[derive(Clone, Copy, ValueEnum)]
enum ReplayStatus {
    /// Rows that gave up (the usual case).
    Dead,
    /// Delivered rows: send them again.
    Delivered,
    /// Rows waiting for a retry: retry now, with a fresh budget.
    Pending,
}

fn time_arg(text: &str) -> Result<SystemTime, String> {
    replay::parse_time(text, SystemTime::now())
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
            if let Some(listen_url) = &cfg.listen_database_url {
                db::check_url(listen_url)
                    .map_err(|e| ConfigError(format!("listen_database_url: {e}")))?;
            }
            runtime.block_on(relay::run_until_signal(cfg, url))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Status { json } => {
            let url = database_url_only(&cli)?;
            runtime.block_on(async {
                let client = db::connect_simple(&url).await?;
                migrate::check_schema_version(&client).await?;
                let report = status::collect(&client).await?;
                if json {
                    let text = serde_json::to_string_pretty(&report)
                        .context("writing the report as JSON")?;
                    println!("{text}");
                } else {
                    print!("{}", status::render_table(&report));
                }
                Ok(ExitCode::SUCCESS)
            })
        }
        Command::Replay(ref args) => {
            let url = database_url_only(&cli)?;
            let selection = match args.id {
                Some(id) => Selection::One(id),
                None => Selection::Matching {
                    endpoint: args.endpoint.clone(),
                    status: match args.status {
                        ReplayStatus::Dead => "dead",
                        ReplayStatus::Delivered => "delivered",
                        ReplayStatus::Pending => "pending",
                    }
                    .into(),
                    since: args.since,
                    until: args.until,
                },
            };
            runtime.block_on(async {
                let client = db::connect_simple(&url).await?;
                migrate::check_schema_version(&client).await?;
                let n = replay::replay(&client, &selection, args.dry_run).await?;
                let what = describe_selection(&selection);
                if args.dry_run {
                    println!("would replay {n} row(s): {what}");
                } else if n == 0 {
                    println!("no rows matched, nothing replayed: {what}");
                } else {
                    println!("replayed {n} row(s): {what}; a running relay picks them up at once");
                }
                Ok(ExitCode::SUCCESS)
            })
        }
        Command::Pause { ref endpoint } | Command::Resume { ref endpoint } => {
            let action = match cli.command {
                Command::Pause { .. } => pause::Action::Pause,
                _ => pause::Action::Resume,
            };
            let url = database_url_only(&cli)?;
            runtime.block_on(async {
                let client = db::connect_simple(&url).await?;
                migrate::check_schema_version(&client).await?;
                let changed = pause::apply(&client, action, endpoint).await?;
                println!("{}", pause::describe(action, endpoint, changed));
                Ok(ExitCode::SUCCESS)
            })
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
    let url = match cfg {
        Some(cfg) => cfg.resolve_database_url(flag, env.as_deref())?,
        None => flag.map(str::to_owned).or(env).ok_or_else(|| {
            ConfigError("no database: pass --database-url or set DATABASE_URL".into())
        })?,
    };
    checked(url)
}

/// A URL whose TLS parameters (sslmode, ...) make sense, or a usage error
/// (exit 2): retrying could never mend it.
fn checked(url: String) -> Result<String> {
    db::check_url(&url).map_err(ConfigError)?;
    Ok(url)
}

/// For commands that only need the database (status, replay, pause, resume): flag, then
/// DATABASE_URL, then `database_url` of the config file (`--config`, or
/// relay.toml if it exists), which is not otherwise validated.
fn database_url_only(cli: &Cli) -> Result<String> {
    let env = std::env::var("DATABASE_URL").ok().filter(|s| !s.is_empty());
    if let Some(url) = cli.database_url.clone().or(env) {
        return checked(url);
    }
    let path = match &cli.config {
        Some(path) => Some(path.clone()),
        None => Some(config::default_path()).filter(|p| p.exists()),
    };
    let from_file = match &path {
        Some(path) => config::database_url_from_file(path)?,
        None => None,
    };
    let url = from_file.ok_or_else(|| {
        ConfigError(
            "no database: pass --database-url, set DATABASE_URL, or give a config file with database_url"
                .into(),
        )
    })?;
    checked(url)
}

/// The rows a replay selects, in words.
fn describe_selection(selection: &Selection) -> String {
    match selection {
        Selection::One(id) => format!("outbox row {id}"),
        Selection::Matching {
            endpoint,
            status,
            since,
            until,
        } => {
            let mut text = format!("{status} rows of ");
            match endpoint {
                Some(name) => text.push_str(&format!("endpoint {name:?}")),
                None => text.push_str("every endpoint"),
            }
            if let Some(t) = since {
                text.push_str(&format!(" created from {}", replay::describe(*t)));
            }
            if let Some(t) = until {
                text.push_str(&format!(" created before {}", replay::describe(*t)));
            }
            text
        }
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
