//! The benchmark program: starts a throwaway Postgres (or uses DATABASE_URL),
//! a receiver process, the relay as its own process, drives a scenario and
//! prints figures. `cargo run --release --bin bench -- help` lists the
//! scenarios; BENCHMARKS.md has the results and how to read them.
//!
//! Every scenario checks its own correctness: no event lost, no duplicate,
//! every signature valid, every row written back.

mod bulk;
mod receiver;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use outbox_relay::throwaway::{Cluster, ClusterOptions};
use tokio_postgres::{Client, NoTls};

// The relay allocates per event (request, headers, payload copies); glibc's
// allocator was a quarter of its CPU in the drain profile (BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "bench",
    about = "outbox-relay benchmarks: programs that print figures"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// a. N pending events to one endpoint: relay start until all delivered.
    Drain {
        #[arg(long, default_value_t = 100_000)]
        events: i32,
        /// How many ordering keys the events share (the default: one each).
        #[arg(long)]
        keys: Option<i32>,
        #[arg(long, default_value_t = 3)]
        runs: usize,
    },
    /// b. App writes through the triggers at a steady rate: commit to receipt.
    Latency {
        #[arg(long, default_value_t = 1000)]
        rate: u32,
        #[arg(long, default_value_t = 30)]
        seconds: u64,
        #[arg(long, default_value_t = 3)]
        runs: usize,
    },
    /// c. Top-up throughput with triggers off, on (relay delivering), and with a pg_notify per commit.
    Overhead {
        #[arg(long, default_value_t = 8)]
        clients: u32,
        #[arg(long, default_value_t = 20)]
        seconds: u64,
        #[arg(long, default_value_t = 3)]
        runs: usize,
    },
    /// d. Drain rate with a large backlog and history against a small backlog.
    Backlog {
        #[arg(long, default_value_t = 1_000_000)]
        pending: i32,
        #[arg(long, default_value_t = 1_000_000)]
        history: i32,
        #[arg(long, default_value_t = 10_000)]
        small: i32,
        /// Rows of the large backlog to time.
        #[arg(long, default_value_t = 100_000)]
        sample: usize,
        #[arg(long, default_value_t = 3)]
        runs: usize,
    },
    /// e. A fast endpoint's throughput alone and beside one that answers after 2 s.
    Isolation {
        // 100,000: each phase about 4 s. At 30,000 a phase took 1.2 s, shorter
        // than the swings of this VM's speed, and the ratio of two such
        // phases ranged from 0.65 to 1.22 for one build.
        #[arg(long, default_value_t = 100_000)]
        events: i32,
        #[arg(long, default_value_t = 2000)]
        slow_ms: u64,
        #[arg(long, default_value_t = 3)]
        runs: usize,
    },
    /// g. Writers as fast as they can, relay delivering, everything sharing both cores.
    Sustained {
        #[arg(long, default_value_t = 8)]
        clients: u32,
        #[arg(long, default_value_t = 30)]
        seconds: u64,
        #[arg(long, default_value_t = 3)]
        runs: usize,
        /// Also run the writers with no relay at all (their rows pile up
        /// undelivered): the most the writers reach on this machine.
        #[arg(long)]
        ceiling: bool,
    },
    /// Bulk changes: one statement changing many buyers, with and without the triggers.
    Bulk {
        /// Numbers of buyers, comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "25000,100000")]
        sizes: Vec<i64>,
        #[arg(long, default_value_t = 3)]
        runs: usize,
    },
    #[command(hide = true)]
    Receiver {
        #[arg(long)]
        port: u16,
        #[arg(long)]
        secret: String,
        #[arg(long, default_value_t = 0)]
        slow_ms: u64,
        #[arg(long)]
        record: bool,
    },
    #[command(hide = true)]
    Relay {
        #[arg(long)]
        config: PathBuf,
        #[arg(long)]
        database_url: String,
    },
    #[command(hide = true)]
    Load {
        #[arg(long)]
        url: String,
        #[arg(long)]
        clients: u32,
        #[arg(long)]
        seconds: u64,
        #[arg(long)]
        buyers: u32,
    },
}

/// Buyers seeded in every benchmark database.
const BUYERS: u32 = 10_000;
const SECRET: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";

fn main() -> Result<()> {
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match cli.cmd {
        Cmd::Receiver {
            port,
            secret,
            slow_ms,
            record,
        } => rt.block_on(receiver::run(port, &secret, slow_ms, record)),
        Cmd::Relay {
            config,
            database_url,
        } => {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::new(
                    std::env::var("BENCH_RELAY_LOG").unwrap_or_else(|_| "warn".into())
                        + ",tokio_postgres=info",
                ))
                .with_writer(std::io::stderr)
                .try_init();
            let cfg = outbox_relay::config::Config::load(&config)?;
            rt.block_on(outbox_relay::relay::run_until_signal(cfg, database_url))
        }
        Cmd::Load {
            url,
            clients,
            seconds,
            buyers,
        } => {
            let commits = rt.block_on(load(&url, clients, Duration::from_secs(seconds), buyers))?;
            println!("{commits}");
            // Its own CPU, for the sustained scenario's account of the cores.
            eprintln!("cpu_secs={}", cpu_secs("/proc/self/stat"));
            Ok(())
        }
        scenario => {
            let bench = Bench::start()?;
            println!("# machine: {}", machine());
            let r = rt.block_on(async {
                match scenario {
                    Cmd::Drain { events, keys, runs } => {
                        drain(&bench, events, keys.unwrap_or(events), runs).await
                    }
                    Cmd::Latency {
                        rate,
                        seconds,
                        runs,
                    } => latency(&bench, rate, seconds, runs).await,
                    Cmd::Overhead {
                        clients,
                        seconds,
                        runs,
                    } => overhead(&bench, clients, seconds, runs).await,
                    Cmd::Backlog {
                        pending,
                        history,
                        small,
                        sample,
                        runs,
                    } => backlog(&bench, pending, history, small, sample, runs).await,
                    Cmd::Isolation {
                        events,
                        slow_ms,
                        runs,
                    } => isolation(&bench, events, slow_ms, runs).await,
                    Cmd::Sustained {
                        clients,
                        seconds,
                        runs,
                        ceiling,
                    } => sustained(&bench, clients, seconds, runs, ceiling).await,
                    Cmd::Bulk { sizes, runs } => bulk::bulk(&bench, &sizes, runs).await,
                    _ => unreachable!("helper commands are handled above"),
                }
            });
            drop(bench);
            r
        }
    }
}

// --- harness ---------------------------------------------------------------

struct Bench {
    _cluster: Option<Cluster>,
    admin_url: url::Url,
    postmaster_pid: Option<u32>,
    exe: PathBuf,
    dir: tempfile::TempDir,
}

/// Settings a production user of this relay would also set; nothing here
/// trades durability for speed (fsync and synchronous_commit stay on).
const PG_SETTINGS: &[(&str, &str)] = &[
    ("shared_buffers", "1GB"),
    ("max_wal_size", "8GB"),
    ("checkpoint_timeout", "30min"),
    ("wal_compression", "on"),
];

impl Bench {
    fn start() -> Result<Bench> {
        let exe = std::env::current_exe()?;
        let dir = tempfile::tempdir()?;
        if let Ok(url) = std::env::var("DATABASE_URL") {
            println!("# Postgres: DATABASE_URL (settings as the server has them)");
            return Ok(Bench {
                _cluster: None,
                admin_url: url::Url::parse(&url)?,
                postmaster_pid: None,
                exe,
                dir,
            });
        }
        let mut settings: Vec<(String, String)> = PG_SETTINGS
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        if pgss_enabled() {
            // Profiling aid, off by default: it costs a little per statement.
            settings.push((
                "shared_preload_libraries".into(),
                "pg_stat_statements".into(),
            ));
            settings.push(("pg_stat_statements.track".into(), "all".into()));
            settings.push(("pg_stat_statements.track_planning".into(), "on".into()));
            println!("# BENCH_PGSS: pg_stat_statements on (profiling run, figures not comparable)");
        }
        let cluster = Cluster::start(ClusterOptions {
            settings,
            unsafe_fast: false,
            ..ClusterOptions::default()
        })?;
        let pid = std::fs::read_to_string(cluster.data_dir().join("data/postmaster.pid"))?
            .lines()
            .next()
            .and_then(|l| l.trim().parse().ok());
        println!(
            "# Postgres: throwaway cluster, defaults plus {}",
            PG_SETTINGS
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(" ")
        );
        Ok(Bench {
            admin_url: url::Url::parse(&cluster.url("postgres"))?,
            _cluster: Some(cluster),
            postmaster_pid: pid,
            exe,
            dir,
        })
    }

    fn url_for(&self, db: &str) -> String {
        let mut u = self.admin_url.clone();
        u.set_path(&format!("/{db}"));
        u.to_string()
    }

    /// A fresh database with the relay schema, the reference app, its
    /// triggers and BUYERS buyers with credits.
    async fn fresh_db(&self, name: &str) -> Result<String> {
        let admin = connect(self.admin_url.as_str()).await?;
        admin
            .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            .await?;
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await?;
        let url = self.url_for(name);
        let mut c = connect(&url).await?;
        outbox_relay::migrate::run_migrations(&mut c).await?;
        c.batch_execute(include_str!("../sql/example_app.sql"))
            .await?;
        c.batch_execute(include_str!("../sql/triggers.sql")).await?;
        c.batch_execute(&format!(
            "ALTER TABLE buyer_credits DISABLE TRIGGER webhook_events;
             ALTER TABLE buyer_postcodes DISABLE TRIGGER webhook_events;
             INSERT INTO buyers SELECT 'b' || g, 'Bench Buyer ' || g, 1 FROM generate_series(1, {BUYERS}) g;
             INSERT INTO buyer_postcodes SELECT 'b' || g, p FROM generate_series(1, {BUYERS}) g, unnest(ARRAY['AB1','BN2','GN3']) p;
             INSERT INTO buyer_credits SELECT 'b' || g, 1000000 FROM generate_series(1, {BUYERS}) g;
             ALTER TABLE buyer_credits ENABLE TRIGGER webhook_events;
             ALTER TABLE buyer_postcodes ENABLE TRIGGER webhook_events;"
        ))
        .await?;
        c.batch_execute("VACUUM ANALYZE").await?;
        if pgss_enabled() {
            c.batch_execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
                .await?;
        }
        Ok(url)
    }

    fn spawn_receiver(&self, cpu: Option<&str>, slow_ms: u64, record: bool) -> Result<(Proc, u16)> {
        let port = free_port()?;
        let mut args = vec![
            "receiver".to_string(),
            "--port".into(),
            port.to_string(),
            "--secret".into(),
            SECRET.into(),
        ];
        args.extend(["--slow-ms".to_string(), slow_ms.to_string()]);
        if record {
            args.push("--record".into());
        }
        let p = Proc::spawn(&self.exe, &args, cpu, None)?;
        wait_port(port)?;
        Ok((p, port))
    }

    /// The relay as its own process; endpoints are (name, path on the receiver).
    fn spawn_relay(
        &self,
        db_url: &str,
        port: u16,
        endpoints: &[(&str, &str)],
        cpu: Option<&str>,
    ) -> Result<Proc> {
        let listen = free_port()?;
        let mut text = format!("listen = \"127.0.0.1:{listen}\"\n");
        for (name, path) in endpoints {
            text.push_str(&format!(
                "[[endpoint]]\nname = \"{name}\"\nurl = \"http://127.0.0.1:{port}/{path}\"\n\
                 events = [\"add_credits\", \"user_credits_zero\", \"post_code_change\"]\nsecret = \"{SECRET}\"\n"
            ));
        }
        let cfg = self
            .dir
            .path()
            .join(format!("relay-{}.toml", rand_suffix()));
        std::fs::write(&cfg, text)?;
        let args = vec![
            "relay".to_string(),
            "--config".into(),
            cfg.display().to_string(),
            "--database-url".into(),
            db_url.to_string(),
        ];
        let mut p = Proc::spawn(
            &self.exe,
            &args,
            cpu,
            // BENCH_LOG keeps the relay's log after the run (the temp dir goes).
            Some(
                &std::env::var("BENCH_LOG")
                    .map_or_else(|_| self.dir.path().join("relay.log"), PathBuf::from),
            ),
        )?;
        p.1 = Some(listen);
        Ok(p)
    }

    /// Pins Postgres (postmaster and every backend it forks) to `cpus`.
    fn pin_postgres(&self, cpus: &str) -> Result<()> {
        let Some(pid) = self.postmaster_pid else {
            return Ok(());
        };
        let status = Command::new("taskset")
            .args(["-a", "-p", "-c", cpus, &pid.to_string()])
            .stdout(Stdio::null())
            .status()
            .context("taskset")?;
        if !status.success() {
            bail!("taskset failed");
        }
        Ok(())
    }

    /// Runs `clients` top-up writers for `seconds` as a process (pinned to
    /// `cpu` if given); returns committed transactions.
    fn load(&self, db_url: &str, clients: u32, seconds: u64, cpu: Option<&str>) -> Result<u64> {
        let mut cmd = match cpu {
            Some(c) => {
                let mut cmd = Command::new("taskset");
                cmd.args(["-c", c]).arg(&self.exe);
                cmd
            }
            None => Command::new(&self.exe),
        };
        let out = cmd
            .args([
                "load",
                "--url",
                db_url,
                "--clients",
                &clients.to_string(),
                "--seconds",
                &seconds.to_string(),
            ])
            .args(["--buyers", &BUYERS.to_string()])
            .output()?;
        if !out.status.success() {
            bail!("load failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().parse()?)
    }
}

/// A child process, stopped with SIGTERM (then SIGKILL) when dropped; a
/// relay's with the port of its `listen` address.
struct Proc(Child, Option<u16>);

impl Proc {
    fn spawn(exe: &Path, args: &[String], cpu: Option<&str>, log: Option<&Path>) -> Result<Proc> {
        let mut cmd = match cpu {
            Some(c) => {
                let mut cmd = Command::new("taskset");
                cmd.args(["-c", c]).arg(exe);
                cmd
            }
            None => Command::new(exe),
        };
        cmd.args(args).stdin(Stdio::null()).stdout(Stdio::null());
        // BENCH_RELAY_ENV="NAME=VALUE ...": settings for the relay's process
        // only (for example TOKIO_WORKER_THREADS), to compare alternatives.
        if args.first().is_some_and(|a| a == "relay") {
            if let Ok(vars) = std::env::var("BENCH_RELAY_ENV") {
                for (name, value) in vars.split_whitespace().filter_map(|v| v.split_once('=')) {
                    cmd.env(name, value);
                }
            }
        }
        match log {
            Some(path) => cmd.stderr(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)?,
            ),
            None => cmd.stderr(Stdio::inherit()),
        };
        Ok(Proc(cmd.spawn()?, None))
    }

    /// Waits until the relay answers 200 on `/readyz`: its endpoints are
    /// synced and it has taken its partitions, so it delivers from now on.
    async fn ready(&self) -> Result<()> {
        let port = self.1.context("not a relay")?;
        let url = format!("http://127.0.0.1:{port}/readyz");
        wait_until("the relay ready", Duration::from_secs(30), || async {
            Ok(http()
                .get(&url)
                .send()
                .await
                .is_ok_and(|r| r.status().is_success()))
        })
        .await
    }

    fn pid(&self) -> u32 {
        self.0.id()
    }

    /// CPU time the process has used so far (user and system), seconds.
    fn cpu_secs(&self) -> f64 {
        cpu_secs(&format!("/proc/{}/stat", self.pid()))
    }

    /// Peak resident memory so far, MB.
    fn peak_rss_mb(&self) -> f64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("VmHWM:"))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            })
            .map_or(f64::NAN, |kb| kb / 1024.0)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.0.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// utime + stime of a /proc/PID/stat file, seconds (USER_HZ is 100 on Linux).
fn cpu_secs(path: &str) -> f64 {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|s| {
            // Fields after the command name, which is in parentheses.
            let rest = &s[s.rfind(')')? + 2..];
            let f: Vec<&str> = rest.split_whitespace().collect();
            Some(f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?)
        })
        .map_or(f64::NAN, |ticks| ticks / 100.0)
}

/// The relay's database sessions (its application_name).
async fn relay_backend_pids(c: &Client) -> Result<Vec<i32>> {
    Ok(c.query(
        "SELECT pid FROM pg_stat_activity WHERE application_name = 'outbox-relay'",
        &[],
    )
    .await?
    .iter()
    .map(|r| r.get(0))
    .collect())
}

/// CPU time of these Postgres backends so far, seconds.
fn backends_cpu_secs(pids: &[i32]) -> f64 {
    pids.iter()
        .map(|p| cpu_secs(&format!("/proc/{p}/stat")))
        .filter(|s| s.is_finite())
        .sum()
}

/// Busy CPU time of the whole machine so far (all but idle and iowait), seconds.
fn machine_busy_secs() -> f64 {
    std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|s| {
            let f: Vec<f64> = s
                .lines()
                .next()?
                .split_whitespace()
                .skip(1)
                .filter_map(|v| v.parse().ok())
                .collect();
            Some(f.iter().sum::<f64>() - f.get(3)? - f.get(4)?)
        })
        .map_or(f64::NAN, |ticks| ticks / 100.0)
}

/// BENCH_PGSS=1: load pg_stat_statements and print where Postgres spent its
/// time after each run (see BENCHMARKS.md, "Profiling").
fn pgss_enabled() -> bool {
    std::env::var_os("BENCH_PGSS").is_some_and(|v| v != "0")
}

async fn pgss_reset(c: &Client) -> Result<()> {
    if pgss_enabled() {
        c.batch_execute("SELECT pg_stat_statements_reset()").await?;
    }
    Ok(())
}

/// Prints the statements that took most of Postgres's time since the reset.
async fn pgss_report(c: &Client) -> Result<()> {
    if !pgss_enabled() {
        return Ok(());
    }
    let rows = c
        .query(
            "SELECT round(total_exec_time)::bigint, calls, plans, round(total_plan_time)::bigint, rows,
                    round((total_exec_time / greatest(calls, 1) * 1000)::numeric)::bigint,
                    shared_blks_hit + shared_blks_read,
                    left(regexp_replace(query, '\\s+', ' ', 'g'), 110)
               FROM pg_stat_statements
              ORDER BY total_exec_time DESC
              LIMIT 14",
            &[],
        )
        .await?;
    println!("  pg_stat_statements: total_ms calls plans plan_ms rows mean_us blocks query");
    for r in rows {
        println!(
            "  {:>8} {:>8} {:>8} {:>7} {:>8} {:>7} {:>9} {}",
            r.get::<_, i64>(0),
            r.get::<_, i64>(1),
            r.get::<_, i64>(2),
            r.get::<_, i64>(3),
            r.get::<_, i64>(4),
            r.get::<_, i64>(5),
            r.get::<_, i64>(6),
            r.get::<_, String>(7)
        );
    }
    Ok(())
}

/// One HTTP client for the program's own polling: a new one per request
/// would load the trust store each time, CPU taken from what is measured.
fn http() -> &'static reqwest::Client {
    static CLIENT: std::sync::OnceLock<reqwest::Client> = std::sync::OnceLock::new();
    CLIENT.get_or_init(reqwest::Client::new)
}

async fn get_json<T: serde::de::DeserializeOwned>(url: &str) -> Result<T> {
    let body = http().get(url).send().await?.bytes().await?;
    Ok(serde_json::from_slice(&body)?)
}

async fn connect(url: &str) -> Result<Client> {
    let (c, conn) = tokio_postgres::connect(url, NoTls)
        .await
        .context("connecting")?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(c)
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn wait_port(port: u16) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            bail!("the receiver did not start");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(())
}

fn rand_suffix() -> u64 {
    rand::random()
}

#[derive(Debug, Clone, Copy)]
struct Stats {
    requests: u64,
    unique: u64,
    bad_signatures: u64,
    fast: u64,
}

async fn stats(port: u16) -> Result<Stats> {
    let v: serde_json::Value = get_json(&format!("http://127.0.0.1:{port}/stats")).await?;
    let n = |k: &str| v[k].as_u64().unwrap_or(0);
    Ok(Stats {
        requests: n("requests"),
        unique: n("unique"),
        bad_signatures: n("bad_signatures"),
        fast: v["per_kind"]["fast"].as_u64().unwrap_or(0),
    })
}

/// Seconds from `start` until the receiver has its first event, polled
/// every millisecond (a relay's start-up and its first read).
async fn first_receipt(port: u16, start: Instant) -> Result<f64> {
    let deadline = start + Duration::from_secs(300);
    while stats(port).await?.unique == 0 {
        if Instant::now() > deadline {
            bail!("timed out waiting for the first receipt");
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    Ok(start.elapsed().as_secs_f64())
}

/// Inserts `n` pending rows for endpoint 1 directly (a backlog, as if the
/// relay had been stopped while the app wrote), with event ids made as
/// webhook.enqueue makes them, each its own buyer (ordering key).
async fn insert_pending(c: &Client, n: i32, status: &str) -> Result<()> {
    insert_keyed(c, n, n, status).await
}

/// As [`insert_pending`], the events spread over `keys` buyers in turn.
async fn insert_keyed(c: &Client, n: i32, keys: i32, status: &str) -> Result<()> {
    let mut done = 0;
    while done < n {
        let batch = (n - done).min(200_000);
        c.execute(
            "INSERT INTO webhook.outbox (event_id, event_code, payload, ordering_key, endpoint_id, status, attempts, delivered_at)
             SELECT webhook.new_event_id(), 'add_credits',
                    jsonb_build_object('buyerId', 'b' || g, 'buyerName', 'Bench Buyer ' || g,
                                       'postCodeList', '[\"AB1\",\"BN2\",\"GN3\"]'::jsonb,
                                       'topUpAmount', 10, 'eventCode', 'add_credits'),
                    'b' || (g % $4::int), 1, $3::text, CASE WHEN $3 = 'delivered' THEN 1 ELSE 0 END,
                    CASE WHEN $3 = 'delivered' THEN now() END
               FROM generate_series($1::int + 1, $1::int + $2::int) g",
            &[&done, &batch, &status, &keys.max(1)],
        )
        .await?;
        done += batch;
    }
    c.batch_execute("VACUUM ANALYZE webhook.outbox").await?;
    Ok(())
}

/// True once no row is pending or in flight.
async fn drained(c: &Client) -> Result<bool> {
    Ok(c.query_one(
        "SELECT NOT EXISTS (SELECT 1 FROM webhook.outbox WHERE status = 'pending')
                AND NOT EXISTS (SELECT 1 FROM webhook.outbox WHERE status = 'in_flight')",
        &[],
    )
    .await?
    .get(0))
}

/// Correctness after a drain: every row delivered with a 200 and one attempt
/// row, the receiver saw each event exactly once, every signature valid.
async fn check(c: &Client, port: u16, expected: u64) -> Result<String> {
    let s = stats(port).await?;
    let row = c
        .query_one(
            "SELECT count(*) FILTER (WHERE status = 'delivered' AND response_status = 200),
                    count(*),
                    (SELECT count(*) FROM webhook.attempts)
               FROM webhook.outbox",
            &[],
        )
        .await?;
    let (delivered, rows, attempts): (i64, i64, i64) = (row.get(0), row.get(1), row.get(2));
    let ok = s.unique == expected
        && s.requests == expected
        && s.bad_signatures == 0
        && delivered == rows;
    let line = format!(
        "check: received_unique={} requests={} lost={} duplicates={} bad_signatures={} rows_delivered={delivered}/{rows} attempt_rows={attempts} -> {}",
        s.unique,
        s.requests,
        expected as i64 - s.unique as i64,
        s.requests - s.unique,
        s.bad_signatures,
        if ok { "OK" } else { "FAILED" }
    );
    if !ok {
        bail!(line);
    }
    Ok(line)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default();
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines().next().map(|l| {
                l.split_whitespace()
                    .nth(1)
                    .unwrap_or("0")
                    .parse::<u64>()
                    .unwrap_or(0)
            })
        })
        .unwrap_or(0);
    format!(
        "{} cores ({cpu}), {:.0} GiB RAM",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        mem as f64 / 1024.0 / 1024.0
    )
}

async fn wait_until<F, Fut>(what: &str, timeout: Duration, mut f: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<bool>>,
{
    let deadline = Instant::now() + timeout;
    while !f().await? {
        if Instant::now() > deadline {
            bail!("timed out waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

// --- scenarios -------------------------------------------------------------

/// Waits until the receiver has `n` unique ids, then until every row is
/// written back. The receiver is asked first: querying the outbox every few
/// milliseconds while it drains would take database time from the relay.
async fn wait_delivered(c: &Client, port: u16, n: u64, what: &str) -> Result<()> {
    wait_until(what, Duration::from_secs(600), || async {
        Ok(stats(port).await?.unique >= n)
    })
    .await?;
    wait_until(what, Duration::from_secs(60), || async { drained(c).await }).await
}

async fn drain(b: &Bench, events: i32, keys: i32, runs: usize) -> Result<()> {
    println!(
        "## a. drain: {events} pending events over {keys} keys to one endpoint, relay start until all delivered"
    );
    let mut rates = Vec::new();
    let mut rss = Vec::new();
    for run in 1..=runs {
        let url = b.fresh_db("bench_drain").await?;
        let c = connect(&url).await?;
        let (rx, port) = b.spawn_receiver(None, 0, false)?;
        // Endpoint 1 must exist before the rows: let a relay sync it, then stop it.
        sync_endpoint(b, &url, port).await?;
        insert_keyed(&c, events, keys, "pending").await?;
        pgss_reset(&c).await?;
        let (rx_cpu, busy) = (rx.cpu_secs(), machine_busy_secs());
        let start = Instant::now();
        let relay = b.spawn_relay(&url, port, &[("bench", "fast")], None)?;
        // BENCH_PERF=FILE: a whole-machine profile of the drain alone, in
        // FILE.RUN; with BENCH_PERF_RELAY=1 the relay's, with its call stacks.
        let perf = match std::env::var("BENCH_PERF") {
            Ok(path) => {
                let (out, pid) = (format!("{path}.{run}"), relay.pid().to_string());
                let args: Vec<&str> = if std::env::var_os("BENCH_PERF_RELAY").is_some() {
                    vec![
                        "record",
                        "-F",
                        "499",
                        "--call-graph",
                        "dwarf,16384",
                        "-p",
                        &pid,
                    ]
                } else {
                    vec!["record", "-F", "999", "-a", "-g"]
                };
                let mut args: Vec<String> = args.into_iter().map(String::from).collect();
                args.extend(["-o".to_string(), out]);
                Some(Proc::spawn(Path::new("perf"), &args, None, None)?)
            }
            Err(_) => None,
        };
        wait_delivered(&c, port, events as u64, "the drain").await?;
        let secs = start.elapsed().as_secs_f64();
        drop(perf);
        let rate = events as f64 / secs;
        let peak = relay.peak_rss_mb();
        // What the two cores did meanwhile: the relay, the receiver, and the
        // rest (Postgres, and this program's polling).
        let relay_cpu = relay.cpu_secs();
        let rx_cpu = rx.cpu_secs() - rx_cpu;
        let busy = machine_busy_secs() - busy;
        let cpu = format!(
            "CPU s: relay {relay_cpu:.2}, receiver {rx_cpu:.2}, rest {:.2}, idle {:.2}",
            busy - relay_cpu - rx_cpu,
            std::thread::available_parallelism().map_or(1, |n| n.get()) as f64 * secs - busy
        );
        drop(relay);
        pgss_report(&c).await?;
        let line = check(&c, port, events as u64).await?;
        // Each key's events delivered in id order (their commit order).
        let out_of_order: i64 = c
            .query_one(
                "SELECT count(*) FROM (
                    SELECT delivered_at < lag(delivered_at) OVER (PARTITION BY ordering_key ORDER BY id) AS back
                      FROM webhook.outbox) t WHERE back",
                &[],
            )
            .await?
            .get(0);
        if out_of_order > 0 {
            bail!("{out_of_order} events delivered before an earlier event of their key");
        }
        println!("run {run}: {events} in {secs:.2}s = {rate:.0} deliveries/s, relay peak RSS {peak:.1} MB; {cpu}; {line}; in key order");
        rates.push(rate);
        rss.push(peak);
    }
    println!(
        "RESULT drain over {keys} keys: median {:.0} deliveries/s; relay peak RSS max {:.1} MB (target <= 100)",
        median(rates),
        rss.iter().cloned().fold(0.0, f64::max)
    );
    Ok(())
}

/// Starts and stops a relay so that the endpoint exists as endpoint_id 1.
async fn sync_endpoint(b: &Bench, url: &str, port: u16) -> Result<()> {
    b.spawn_relay(url, port, &[("bench", "fast")], None)?
        .ready()
        .await
}

async fn latency(b: &Bench, rate: u32, seconds: u64, runs: usize) -> Result<()> {
    println!(
        "## b. latency: top-ups through the triggers at {rate}/s for {seconds}s, commit to receipt"
    );
    let mut p50s = Vec::new();
    let mut p99s = Vec::new();
    let mut lone = Vec::new();
    let mut outbox = Vec::new();
    for run in 1..=runs {
        let url = b.fresh_db("bench_latency").await?;
        let (_rx, port) = b.spawn_receiver(None, 0, true)?;
        let relay = b.spawn_relay(&url, port, &[("bench", "fast")], None)?;
        let c = connect(&url).await?;
        // Timed from a relay that delivers: its start is not the latency.
        relay.ready().await?;
        let n = (rate as u64 * seconds) as usize;
        let stmt = c
            .prepare("UPDATE buyer_credits SET balance = balance + 1 WHERE buyer_id = $1")
            .await?;
        // Each event a distinct buyer, so the receiver can match it.
        let mut sent: Vec<(String, u64)> = Vec::with_capacity(n);
        let mut commit_us: Vec<f64> = Vec::with_capacity(n);
        let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate as f64));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        let start = Instant::now();
        for i in 0..n {
            tick.tick().await;
            let buyer = format!("b{}", (i % BUYERS as usize) + 1);
            // Buyers repeat after BUYERS events; the receiver keeps the first
            // receipt per buyer, so only the first round is matched.
            // "Commit" is the moment the commit returns to the application
            // (after its WAL flush): from then on the event exists.
            let before = receiver::now_micros();
            c.execute(&stmt, &[&buyer]).await?;
            let t0 = receiver::now_micros();
            commit_us.push((t0 - before) as f64 / 1000.0);
            if i < BUYERS as usize {
                sent.push((buyer, t0));
            }
        }
        let achieved = n as f64 / start.elapsed().as_secs_f64();
        wait_until("all received", Duration::from_secs(120), || async {
            Ok(stats(port).await?.unique >= n as u64)
        })
        .await?;
        let receipts: std::collections::HashMap<String, u64> =
            get_json(&format!("http://127.0.0.1:{port}/receipts")).await?;
        let mut lat: Vec<f64> = sent
            .iter()
            .filter_map(|(buyer, t0)| {
                receipts
                    .get(buyer)
                    .map(|t1| (*t1 as f64 - *t0 as f64) / 1000.0)
            })
            .collect();
        if let Ok(path) = std::env::var("BENCH_LATENCY_DUMP") {
            // One line per matched event: microseconds since the first commit, latency in ms.
            let first = sent.first().map_or(0, |(_, t0)| *t0);
            let lines: String = sent
                .iter()
                .filter_map(|(buyer, t0)| {
                    receipts.get(buyer).map(|t1| {
                        format!("{} {:.3}\n", t0 - first, (*t1 as f64 - *t0 as f64) / 1000.0)
                    })
                })
                .collect();
            std::fs::write(format!("{path}.{run}"), lines)?;
        }
        lat.sort_by(|a, b| a.total_cmp(b));
        let (p50, p99) = (percentile(&lat, 0.5), percentile(&lat, 0.99));
        let commit_p50 = median(commit_us);
        // Where the time goes: commit to the start of the request (finding
        // and sending), and the rest (the request itself).
        let started: std::collections::HashMap<String, i64> = c
            .query(
                "SELECT DISTINCT ON (o.ordering_key) o.ordering_key,
                        (extract(epoch FROM a.started_at) * 1e6)::int8
                   FROM webhook.outbox o JOIN webhook.attempts a ON a.outbox_id = o.id
                  WHERE a.attempt = 1 ORDER BY o.ordering_key, o.id",
                &[],
            )
            .await?
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        let to_start = median(
            sent.iter()
                .filter_map(|(buyer, t0)| {
                    started
                        .get(buyer)
                        .map(|s| (*s - *t0 as i64) as f64 / 1000.0)
                })
                .collect(),
        );
        // The outbox's own view of the same events, as a DBA would ask it.
        let outbox_p50: f64 = c
            .query_one(
                "SELECT (percentile_cont(0.5) WITHIN GROUP (ORDER BY
                        extract(epoch FROM delivered_at - created_at)) * 1000)::float8
                   FROM webhook.outbox WHERE status = 'delivered'",
                &[],
            )
            .await?
            .get(0);

        // A lone event on an idle relay, 20 times.
        let mut lone_ms = Vec::new();
        let lone_stmt = c
            .prepare(
                "SELECT webhook.enqueue('add_credits', jsonb_build_object('buyerId', $1::text))",
            )
            .await?;
        for i in 0..20 {
            tokio::time::sleep(Duration::from_millis(300)).await; // let the relay go idle
            let key = format!("lone-{run}-{i}");
            c.execute(&lone_stmt, &[&key]).await?;
            let t0 = receiver::now_micros();
            let receipt_url = format!("http://127.0.0.1:{port}/receipt/{key}");
            let mut t1 = None;
            let deadline = Instant::now() + Duration::from_secs(10);
            while t1.is_none() {
                if Instant::now() > deadline {
                    bail!("the lone event {key} did not arrive");
                }
                t1 = get_json::<Option<u64>>(&receipt_url).await?;
                if t1.is_none() {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
            let t1 = t1.expect("loop ends with a receipt");
            lone_ms.push((t1 as f64 - t0 as f64) / 1000.0);
        }
        let lone_p50 = median(lone_ms.clone());
        let s = stats(port).await?;
        let ok = s.bad_signatures == 0 && s.requests == s.unique && s.unique == n as u64 + 20;
        println!(
            "run {run}: {n} events at {achieved:.0}/s (the write statement itself took {commit_p50:.2} ms p50), matched {}: p50 {p50:.2} ms, p99 {p99:.2} ms, max {:.2} ms (p50 {to_start:.2} ms of it from commit to the request's start), outbox delivered_at - created_at p50 {outbox_p50:.2} ms; lone event on an idle relay: median {lone_p50:.2} ms, max {:.2} ms; check: unique={} requests={} bad_signatures={} -> {}",
            lat.len(),
            lat.last().copied().unwrap_or(f64::NAN),
            lone_ms.iter().cloned().fold(0.0, f64::max),
            s.unique,
            s.requests,
            s.bad_signatures,
            if ok { "OK" } else { "FAILED" }
        );
        if !ok {
            bail!("latency run {run} failed its check");
        }
        p50s.push(p50);
        p99s.push(p99);
        outbox.push(outbox_p50);
        lone.push(lone_p50);
    }
    println!(
        "RESULT latency: median p50 {:.2} ms (target <= 2), median p99 {:.2} ms (target <= 10), outbox view p50 {:.2} ms (target <= 3), lone event median {:.2} ms (target <= 3)",
        median(p50s),
        median(p99s),
        median(outbox),
        median(lone)
    );
    Ok(())
}

/// Pairs of short phases (relay delivering, triggers alone) per overhead run.
const TURNS: usize = 4;
const TURN_SECS: u64 = 5;

async fn overhead(b: &Bench, clients: u32, seconds: u64, runs: usize) -> Result<()> {
    println!(
        "## c. write overhead: {clients} clients doing top-ups for {seconds}s; Postgres and clients on CPU 0, relay and receiver on CPU 1"
    );
    b.pin_postgres("0")?;
    let url = b.fresh_db("bench_overhead").await?;
    let c = connect(&url).await?;
    // Two triggers for comparison phases: a pg_notify per writing
    // transaction, and the least an outbox can cost (one constant row
    // inserted: an id unique per transaction, no payload built, no routing,
    // no wake-up check).
    c.batch_execute(
        "CREATE OR REPLACE FUNCTION bench_notify() RETURNS trigger LANGUAGE plpgsql AS
         $$ BEGIN PERFORM pg_notify('bench_tax', ''); RETURN NULL; END $$;
         CREATE OR REPLACE FUNCTION bench_bare_insert() RETURNS trigger LANGUAGE plpgsql AS
         $$ BEGIN
              INSERT INTO webhook.outbox (event_id, event_code, payload, ordering_key, endpoint_id)
              VALUES ('evt_bare_' || pg_current_xact_id(), 'add_credits', '{}', NEW.buyer_id, 1);
              RETURN NULL;
            END $$;",
    )
    .await?;
    let (_rx, port) = b.spawn_receiver(Some("1"), 0, false)?;
    let spawn_relay = || b.spawn_relay(&url, port, &[("bench", "fast")], Some("1"));
    let mut relay = Some(spawn_relay()?);
    relay.as_ref().expect("just spawned").ready().await?;
    let (mut off, mut on, mut notify, mut alone, mut bare) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut against_alone, mut in_turns) = (Vec::new(), Vec::new());
    const RESET: &str = "DROP TRIGGER IF EXISTS bench_notify ON buyer_credits;
         DROP TRIGGER IF EXISTS bench_bare_insert ON buyer_credits;
         ALTER TABLE buyer_credits DISABLE TRIGGER webhook_events;";
    for run in 1..=runs {
        // One phase: `setup`, then the load, with or without the relay
        // running; then (relay running) every event of the phase delivered.
        let mut phase = async |setup: &str, with_relay: bool, seconds: u64| -> Result<(f64, u64)> {
            c.batch_execute(RESET).await?;
            c.batch_execute(setup).await?;
            if !with_relay {
                relay = None;
                // As a busy relay leaves it: writers send no NOTIFY.
                c.batch_execute("UPDATE webhook.endpoints SET armed = false")
                    .await?;
            } else if relay.is_none() {
                relay = Some(spawn_relay()?);
            }
            pgss_reset(&c).await?;
            let before = stats(port).await?.unique;
            let commits = b.load(&url, clients, seconds, Some("0"))?;
            if relay.is_none() {
                relay = Some(spawn_relay()?);
            }
            let produced: i64 = c
                .query_one("SELECT count(*) FROM webhook.outbox", &[])
                .await?
                .get(0);
            wait_until(
                "the phase's deliveries",
                Duration::from_secs(300),
                || async { drained(&c).await },
            )
            .await?;
            pgss_report(&c).await?;
            let delivered = stats(port).await?.unique - before;
            c.batch_execute("TRUNCATE webhook.outbox CASCADE").await?;
            c.batch_execute("VACUUM ANALYZE buyer_credits").await?;
            if delivered != produced as u64 {
                bail!("{produced} events written, {delivered} delivered");
            }
            Ok((commits as f64 / seconds as f64, delivered))
        };
        const TRIGGERS: &str = "ALTER TABLE buyer_credits ENABLE TRIGGER webhook_events;";
        let (tps_off, d0) = phase("", true, seconds).await?;
        let (tps_on, d1) = phase(TRIGGERS, true, seconds).await?;
        let (tps_notify, d2) = phase(
            "ALTER TABLE buyer_credits ENABLE TRIGGER webhook_events;
             CREATE TRIGGER bench_notify AFTER UPDATE ON buyer_credits FOR EACH STATEMENT EXECUTE FUNCTION bench_notify();",
            true,
            seconds,
        )
        .await?;
        let (tps_alone, _) = phase(TRIGGERS, false, seconds).await?;
        let (tps_bare, _) = phase(
            "CREATE TRIGGER bench_bare_insert AFTER UPDATE ON buyer_credits FOR EACH ROW EXECUTE FUNCTION bench_bare_insert();",
            false,
            seconds,
        )
        .await?;
        // The relay delivering against the triggers alone once more, in
        // short phases of each taken in turn (on, alone, alone, on, ...):
        // the machine's drift over a run then falls on both sides alike,
        // where the long phases above are minutes apart.
        let (mut on_sum, mut alone_sum, mut turns) = (0.0, 0.0, Vec::new());
        for i in 0..TURNS {
            let order = if i % 2 == 0 {
                [true, false]
            } else {
                [false, true]
            };
            for with_relay in order {
                let (tps, _) = phase(TRIGGERS, with_relay, TURN_SECS).await?;
                turns.push(format!(
                    "{}{tps:.0}",
                    if with_relay { "on " } else { "alone " }
                ));
                if with_relay {
                    on_sum += tps;
                } else {
                    alone_sum += tps;
                }
            }
        }
        let turned = on_sum / alone_sum;
        c.batch_execute(RESET).await?;
        let s = stats(port).await?;
        println!(
            "run {run}: triggers off {tps_off:.0} tps (delivered {d0}); triggers on + relay {tps_on:.0} tps = {:.2}x (delivered {d1}); plus pg_notify per commit {tps_notify:.0} tps = {:.2}x (delivered {d2}); for comparison, relay stopped: triggers alone {:.2}x, a bare outbox insert alone {:.2}x; the relay delivering against the triggers alone {:.2}x, in turns of {TURN_SECS}s {turned:.2}x ({}); check: bad_signatures={} duplicates={}",
            tps_on / tps_off,
            tps_notify / tps_off,
            tps_alone / tps_off,
            tps_bare / tps_off,
            tps_on / tps_alone,
            turns.join(", "),
            s.bad_signatures,
            s.requests - s.unique
        );
        if s.bad_signatures > 0 || s.requests != s.unique || d0 != 0 {
            bail!("overhead run {run} failed its check");
        }
        off.push(tps_off);
        on.push(tps_on / tps_off);
        notify.push(tps_notify / tps_off);
        alone.push(tps_alone / tps_off);
        bare.push(tps_bare / tps_off);
        against_alone.push(tps_on / tps_alone);
        in_turns.push(turned);
    }
    b.pin_postgres("0-1")?;
    println!(
        "RESULT overhead: triggers off median {:.0} tps; with triggers and the relay delivering median {:.2}x; with a pg_notify per commit median {:.2}x; relay stopped: triggers alone {:.2}x, a bare outbox insert alone {:.2}x; the relay delivering against the triggers alone median {:.2}x, in turns median {:.2}x (target >= 0.8)",
        median(off),
        median(on),
        median(notify),
        median(alone),
        median(bare),
        median(against_alone),
        median(in_turns)
    );
    Ok(())
}

async fn backlog(
    b: &Bench,
    pending: i32,
    history: i32,
    small: i32,
    sample: usize,
    runs: usize,
) -> Result<()> {
    println!("## d. backlog: drain rate with {small} pending against {pending} pending plus {history} delivered rows of history");
    let mut small_rates = Vec::new();
    let mut large_rates = Vec::new();
    let mut ratios = Vec::new();
    let mut rss: f64 = 0.0;
    for run in 1..=runs {
        // Small backlog.
        let url = b.fresh_db("bench_backlog_small").await?;
        let c = connect(&url).await?;
        let (_rx, port) = b.spawn_receiver(None, 0, false)?;
        sync_endpoint(b, &url, port).await?;
        insert_pending(&c, small, "pending").await?;
        let start = Instant::now();
        let relay = b.spawn_relay(&url, port, &[("bench", "fast")], None)?;
        // Timed to receipt, as the large backlog's sample is.
        let small_first = first_receipt(port, start).await?;
        wait_until("the small drain", Duration::from_secs(300), || async {
            Ok(stats(port).await?.unique >= small as u64)
        })
        .await?;
        let small_rate = small as f64 / start.elapsed().as_secs_f64();
        wait_until(
            "the small drain's write-backs",
            Duration::from_secs(60),
            || async { drained(&c).await },
        )
        .await?;
        drop(relay);
        check(&c, port, small as u64).await?;

        // Large backlog and history; the first `sample` deliveries are timed.
        let url = b.fresh_db("bench_backlog_large").await?;
        let c = connect(&url).await?;
        let (_rx2, port) = b.spawn_receiver(None, 0, false)?;
        sync_endpoint(b, &url, port).await?;
        insert_pending(&c, history, "delivered").await?;
        // History is what a relay delivered before: below its cursor. A relay
        // reads past it (finding nothing to send) and stops.
        let relay = b.spawn_relay(&url, port, &[("bench", "fast")], None)?;
        relay.ready().await?;
        wait_until(
            "the cursor past the history",
            Duration::from_secs(300),
            || async {
                Ok(c.query_one(
                "SELECT bool_and(pg_snapshot_xmin(p.tick) > (SELECT max(xid) FROM webhook.outbox))
                   FROM webhook.partitions p",
                &[],
            )
            .await?
            .get::<_, Option<bool>>(0)
            .unwrap_or(false))
            },
        )
        .await?;
        drop(relay);
        insert_pending(&c, pending, "pending").await?;
        pgss_reset(&c).await?;
        let start = Instant::now();
        let relay = b.spawn_relay(&url, port, &[("bench", "fast")], None)?;
        let large_first = first_receipt(port, start).await?;
        wait_until("the sample", Duration::from_secs(600), || async {
            Ok(stats(port).await?.unique >= sample as u64)
        })
        .await?;
        let large_rate = sample as f64 / start.elapsed().as_secs_f64();
        rss = rss.max(relay.peak_rss_mb());
        drop(relay);
        pgss_report(&c).await?;
        let s = stats(port).await?;
        println!(
            "run {run}: {small} pending: {small_rate:.0}/s (first receipt after {small_first:.2} s); {pending} pending + {history} history: {large_rate:.0}/s over the first {sample} (first receipt after {large_first:.2} s) = {:.2}x; check: bad_signatures={} duplicates={}",
            large_rate / small_rate,
            s.bad_signatures,
            s.requests - s.unique
        );
        if s.bad_signatures > 0 || s.requests != s.unique {
            bail!("backlog run {run} failed its check");
        }
        ratios.push(large_rate / small_rate);
        small_rates.push(small_rate);
        large_rates.push(large_rate);
    }
    // The ratio is judged run by run, as isolation's and overhead's are: a
    // run's two phases are a minute apart, its runs several minutes, and
    // this VM's speed drifts between them. The ratio of the two medians
    // pairs phases of different runs; it is printed too.
    let (sm, lg) = (median(small_rates), median(large_rates));
    println!(
        "RESULT backlog: median {:.2}x of the small backlog's rate run by run (target >= 0.8); medians {sm:.0}/s small, {lg:.0}/s large = {:.2}x; relay peak RSS {rss:.1} MB (target <= 100)",
        median(ratios),
        lg / sm
    );
    Ok(())
}

async fn isolation(b: &Bench, events: i32, slow_ms: u64, runs: usize) -> Result<()> {
    println!(
        "## e. isolation: a fast endpoint alone, then beside one that answers after {slow_ms} ms"
    );
    let mut ratios = Vec::new();
    for run in 1..=runs {
        // Alone first in odd runs, beside first in even ones: the machine's
        // drift within a run then falls on either side in turn.
        let order = if run % 2 == 1 {
            [false, true]
        } else {
            [true, false]
        };
        let mut rates = [0.0; 2];
        for with_slow in order {
            let url = b.fresh_db("bench_isolation").await?;
            let c = connect(&url).await?;
            let (_rx, port) = b.spawn_receiver(None, slow_ms, false)?;
            let endpoints: &[(&str, &str)] = if with_slow {
                &[("fast", "fast"), ("slow", "slow")]
            } else {
                &[("fast", "fast")]
            };
            let relay = b.spawn_relay(&url, port, endpoints, None)?;
            relay.ready().await?;
            c.execute(
                "SELECT webhook.enqueue('add_credits', jsonb_build_object('buyerId', 'b' || g, 'topUpAmount', 1)) FROM generate_series(1, $1) g",
                &[&events],
            )
            .await?;
            // Timed from the commit: writing the events is not the relay's work.
            let start = Instant::now();
            wait_until(
                "the fast endpoint's events",
                Duration::from_secs(300),
                || async { Ok(stats(port).await?.fast >= events as u64) },
            )
            .await?;
            let rate = events as f64 / start.elapsed().as_secs_f64();
            drop(relay);
            let s = stats(port).await?;
            if s.bad_signatures > 0 || s.fast != events as u64 {
                bail!("isolation run {run} failed its check: {s:?}");
            }
            rates[usize::from(with_slow)] = rate;
        }
        println!(
            "run {run}: fast alone {:.0}/s, beside the slow endpoint {:.0}/s = {:.2}x",
            rates[0],
            rates[1],
            rates[1] / rates[0]
        );
        ratios.push(rates[1] / rates[0]);
    }
    println!(
        "RESULT isolation: median {:.2}x of the fast endpoint's throughput alone (target >= 0.9)",
        median(ratios)
    );
    Ok(())
}

async fn sustained(
    b: &Bench,
    clients: u32,
    seconds: u64,
    runs: usize,
    ceiling: bool,
) -> Result<()> {
    println!("## g. sustained: {clients} clients writing top-ups through the triggers as fast as they can for {seconds}s, relay delivering, all sharing both cores");
    let (mut rates, mut alone) = (Vec::new(), Vec::new());
    for run in 1..=runs {
        if ceiling {
            // The same writers with no relay running: their events are
            // written (the endpoint exists, its switch off as a busy relay
            // leaves it) and nothing is delivered.
            let url = b.fresh_db("bench_sustained").await?;
            let c = connect(&url).await?;
            let (_rx, port) = b.spawn_receiver(None, 0, false)?;
            sync_endpoint(b, &url, port).await?;
            c.batch_execute("UPDATE webhook.endpoints SET armed = false")
                .await?;
            let wal0 = wal_lsn(&c).await?;
            let commits = b.load(&url, clients, seconds, None)?;
            let wal = wal_lsn(&c).await? - wal0;
            let written: i64 = c
                .query_one("SELECT count(*) FROM webhook.outbox", &[])
                .await?
                .get(0);
            if written as u64 != commits {
                bail!("{commits} top-ups committed, {written} events written");
            }
            let rate = commits as f64 / seconds as f64;
            println!(
                "run {run}: the writers alone, no relay: committed {commits} ({rate:.0}/s), WAL {:.0} bytes per event",
                wal / commits.max(1) as f64
            );
            alone.push(rate);
        }
        let url = b.fresh_db("bench_sustained").await?;
        let c = connect(&url).await?;
        let (rx, port) = b.spawn_receiver(None, 0, false)?;
        let relay = b.spawn_relay(&url, port, &[("bench", "fast")], None)?;
        relay.ready().await?;
        pgss_reset(&c).await?;
        let relay_backends = relay_backend_pids(&c).await?;
        let cpu0 = (
            relay.cpu_secs(),
            rx.cpu_secs(),
            backends_cpu_secs(&relay_backends),
            machine_busy_secs(),
        );
        let wal0 = wal_lsn(&c).await?;
        let load_url = url.clone();
        let exe = b.exe.clone();
        let load = tokio::task::spawn_blocking(move || {
            Command::new(exe)
                .args([
                    "load",
                    "--url",
                    &load_url,
                    "--clients",
                    &clients.to_string(),
                    "--seconds",
                    &seconds.to_string(),
                ])
                .args(["--buyers", &BUYERS.to_string()])
                .output()
        });
        let start = Instant::now();
        let mut samples = Vec::new();
        while start.elapsed() < Duration::from_secs(seconds) {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let produced: i64 = c
                .query_one("SELECT coalesce(max(id), 0) FROM webhook.outbox", &[])
                .await?
                .get(0);
            let delivered = stats(port).await?.unique as i64;
            samples.push((start.elapsed().as_secs_f64(), produced, delivered));
        }
        let out = load.await??;
        let commits: u64 = String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .unwrap_or(0);
        let load_secs = start.elapsed().as_secs_f64();
        let at_end = stats(port).await?.unique;
        let wal = wal_lsn(&c).await? - wal0;
        // Where the two cores went during the load, per event delivered.
        let load_cpu: f64 = String::from_utf8_lossy(&out.stderr)
            .lines()
            .find_map(|l| l.strip_prefix("cpu_secs="))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(f64::NAN);
        let relay_cpu = relay.cpu_secs() - cpu0.0;
        let rx_cpu = rx.cpu_secs() - cpu0.1;
        let relay_pg = backends_cpu_secs(&relay_backends) - cpu0.2;
        let busy = machine_busy_secs() - cpu0.3;
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        let per = |s: f64| s / at_end.max(1) as f64 * 1e6;
        let cpu = format!(
            "CPU µs per event: writers' Postgres and the rest {:.0}, load generator {:.0}, relay {:.0}, relay's Postgres {:.0}, receiver {:.0}, idle {:.0}; WAL {:.0} bytes per event",
            per(busy - load_cpu - relay_cpu - relay_pg - rx_cpu),
            per(load_cpu),
            per(relay_cpu),
            per(relay_pg),
            per(rx_cpu),
            per(cores * load_secs - busy),
            wal / at_end.max(1) as f64
        );
        wait_until("the rest delivered", Duration::from_secs(300), || async {
            drained(&c).await
        })
        .await?;
        pgss_report(&c).await?;
        let line = check(&c, port, commits).await?;
        let backlog: Vec<i64> = samples.iter().map(|(_, p, d)| p - d).collect();
        let (_, p_end, d_end) = *samples.last().expect("at least one sample");
        let (_, p_mid, d_mid) = samples[samples.len() / 2];
        let rate = at_end as f64 / load_secs;
        println!(
            "run {run}: committed {commits} ({:.0}/s), delivered during the load {at_end} ({rate:.0}/s); backlog at half time {} and at the end {} (max {}); {line}",
            commits as f64 / seconds as f64,
            p_mid - d_mid,
            p_end - d_end,
            backlog.iter().max().unwrap_or(&0)
        );
        println!("  {cpu}");
        rates.push(rate);
    }
    println!(
        "RESULT sustained: median {:.0} events/s from commit to receipt (target >= 5500)",
        median(rates)
    );
    if ceiling {
        println!(
            "RESULT sustained, the writers alone with no relay: median {:.0} commits/s",
            median(alone)
        );
    }
    Ok(())
}

/// The load generator: `clients` connections doing top-ups of random buyers.
/// Where the server's WAL stands, in bytes.
async fn wal_lsn(c: &Client) -> Result<f64> {
    Ok(c.query_one(
        "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::float8",
        &[],
    )
    .await?
    .get(0))
}

async fn load(url: &str, clients: u32, dur: Duration, buyers: u32) -> Result<u64> {
    let mut tasks = Vec::new();
    let deadline = Instant::now() + dur;
    for k in 0..clients {
        let c = connect(url).await?;
        tasks.push(tokio::spawn(async move {
            let stmt = c
                .prepare("UPDATE buyer_credits SET balance = balance + 1 WHERE buyer_id = $1")
                .await?;
            let mut n = 0u64;
            let mut x: u64 = 0x9E37_79B9_7F4A_7C15 ^ u64::from(k);
            while Instant::now() < deadline {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let buyer = format!("b{}", x % u64::from(buyers) + 1);
                c.execute(&stmt, &[&buyer]).await?;
                n += 1;
            }
            Ok::<u64, anyhow::Error>(n)
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await??;
    }
    Ok(total)
}
