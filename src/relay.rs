//! Wires the relay's tasks together: listener, partition ownership, one
//! dispatcher loop per endpoint, delivery tasks, write-back, sampler,
//! retention and the HTTP server (health, metrics, status API); and takes them
//! down in order on shutdown.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::api::{Api, Tokens};
use crate::config::Config;
use crate::db::{self, Db};
use crate::dispatcher::{self, Endpoint, Shared};
use crate::metrics::Metrics;
use crate::queue::{ownership, writeback};
use crate::{breaker, egress, http, listener, migrate, retention, sampler};

/// Capacity of the channel from the endpoint loops to the write-back.
const OUTCOME_QUEUE: usize = 10_000;
/// How long the write-back keeps retrying at shutdown when the database is
/// down, before leaving the events to be read again after a restart.
pub const FINAL_WRITE_GRACE: Duration = Duration::from_secs(10);
/// Longest wait between attempts to reach the database at start.
const START_MAX_BACKOFF: Duration = Duration::from_secs(10);

/// A running relay.
pub struct Relay {
    shutdown: CancellationToken,
    task: JoinHandle<()>,
    pub metrics: Arc<Metrics>,
    /// Where `/healthz`, `/readyz`, `/metrics` and the status API are served.
    pub http_addr: SocketAddr,
}

impl Relay {
    /// Begins a graceful shutdown and waits for it: stop reading, let
    /// requests in flight finish until `shutdown_timeout`, abandon the rest,
    /// write every outcome and the cursors, give the partitions back.
    pub async fn shutdown(self) {
        self.shutdown.cancel();
        let _ = self.task.await;
    }

    /// The token that starts a graceful shutdown.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Waits until the relay has stopped.
    pub async fn wait(self) {
        let _ = self.task.await;
    }
}

/// Connects (retrying while the database is unreachable), checks the schema,
/// mirrors the endpoints and starts every task.
pub async fn start(cfg: Config, database_url: String) -> Result<Relay> {
    let metrics = Arc::new(Metrics::new());
    let shutdown = CancellationToken::new();

    // The HTTP server comes first, so /healthz answers and /readyz says 503
    // while the database is still being reached.
    let http_listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .with_context(|| format!("binding the metrics and health server to {}", cfg.listen))?;
    let http_addr = http_listener
        .local_addr()
        .context("reading the bound address")?;
    // The status API has a connection of its own, made on first use, so its
    // readers never queue behind claims or write-backs.
    let api = Arc::new(Api::new(
        Db::new(database_url.clone(), metrics.clone()).pooled(cfg.pooled),
        Tokens::from_config(&cfg),
    ));
    let http_task = tokio::spawn(http::serve(
        http_listener,
        metrics.clone(),
        api,
        shutdown.clone(),
    ));

    let mut client = connect_until_up(&database_url, &metrics).await?;
    migrate::check_schema_version(&client).await?;
    let ids = migrate::sync_endpoints(&mut client, &cfg.endpoints).await?;
    drop(client);

    let relay_name = cfg.relay_name.clone().unwrap_or_else(default_relay_name);
    tracing::info!(relay = %relay_name, endpoints = cfg.endpoints.len(), listen = %http_addr, "relay starting");

    let queue_db = Arc::new(
        Db::new(database_url.clone(), metrics.clone())
            .pooled(cfg.pooled)
            .for_queue(),
    );
    let outcomes_db = Arc::new(
        Db::new(database_url.clone(), metrics.clone())
            .pooled(cfg.pooled)
            .for_queue(),
    );
    let housekeeping_db =
        Arc::new(Db::new(database_url.clone(), metrics.clone()).pooled(cfg.pooled));

    let ssrf = cfg.ssrf_guard.clone().map(Arc::new);
    if let Some(g) = &ssrf {
        tracing::info!(
            allow = g.allow.len(),
            "SSRF guard on: non-public addresses are refused"
        );
    }
    let total_slots: u32 = cfg.endpoints.iter().map(|e| e.max_in_flight).sum();
    let (done_tx, done_rx) = mpsc::channel(OUTCOME_QUEUE);
    let stop_claiming = CancellationToken::new();
    let abort_deliveries = CancellationToken::new();
    let abandon_writes = CancellationToken::new();
    let shared = Arc::new(Shared {
        db: queue_db,
        http: egress::Clients::build(&cfg, total_slots.max(1) as usize, ssrf.clone(), &|name| {
            std::env::var(name).ok()
        })?,
        ssrf,
        done: done_tx,
        metrics: metrics.clone(),
        relay_name: relay_name.clone(),
        lease: cfg.lease,
        claim_batch: cfg.claim_batch,
        poll_interval: cfg.poll_interval,
        tracker: TaskTracker::new(),
        stop_claiming: stop_claiming.clone(),
        abort_deliveries: abort_deliveries.clone(),
    });

    let writeback_task = tokio::spawn(writeback::run(
        outcomes_db,
        done_rx,
        relay_name.clone(),
        metrics.clone(),
        abandon_writes.clone(),
    ));
    let background = CancellationToken::new();
    let (wake_tx, wake_rx) = watch::channel(0u64);
    // LISTEN needs a session of its own: through a pooler in transaction
    // mode it would land on a borrowed server connection and hear nothing.
    let listen_url = match (&cfg.listen_database_url, cfg.pooled) {
        (Some(url), _) => Some(url.clone()),
        (None, false) => Some(database_url.clone()),
        (None, true) => None,
    };
    let listener_task = match listen_url {
        Some(url) => tokio::spawn(listener::run(
            url,
            wake_tx,
            metrics.clone(),
            background.clone(),
        )),
        None => {
            tracing::warn!(
                poll_interval = ?cfg.poll_interval,
                "pooler = \"transaction\" and no listen_database_url: no LISTEN connection, \
                 new rows are found by the poll timer"
            );
            metrics.set_no_listener();
            // The loops wait on the wake-up channel beside their poll timer:
            // it stays open, silent, until shutdown.
            let background = background.clone();
            tokio::spawn(async move {
                let _wake = wake_tx;
                background.cancelled().await;
            })
        }
    };
    // Retention's runs of deletes get a connection of their own, so they
    // never delay the rescuer.
    let retention_task = tokio::spawn(retention::run(
        Arc::new(Db::new(database_url.clone(), metrics.clone()).pooled(cfg.pooled)),
        cfg.retention.clone(),
        background.clone(),
    ));
    let names: Vec<String> = cfg.endpoints.iter().map(|e| e.name.clone()).collect();
    // The sampler's counts too: on a backlog of a million rows one takes
    // the database 0.6 s, which the ownership task's first take of the
    // partitions waited behind on a shared connection, and with it every
    // delivery of a relay starting on that backlog.
    let sampler_task = tokio::spawn(sampler::run_sampler(
        Arc::new(Db::new(database_url.clone(), metrics.clone()).pooled(cfg.pooled)),
        metrics.clone(),
        names,
        background.clone(),
    ));

    let mut loops = Vec::new();
    let mut owners = Vec::new();
    let by_name: HashMap<String, i32> = ids;
    for ep_cfg in cfg.endpoints.iter().filter(|e| e.enabled) {
        let id = by_name[&ep_cfg.name];
        let ep = Arc::new(Endpoint::new(id, ep_cfg.clone()));
        let (owned_tx, owned_rx) = watch::channel(ownership::Owned::default());
        owners.push((id, owned_tx));
        loops.push(tokio::spawn(breaker::run(shared.clone(), ep.clone())));
        loops.push(tokio::spawn(dispatcher::run_endpoint(
            shared.clone(),
            ep,
            wake_rx.clone(),
            owned_rx,
        )));
    }
    // The partitions are renewed until the loops have given theirs back.
    let ownership_stop = CancellationToken::new();
    let ownership_task = tokio::spawn(ownership::run(
        housekeeping_db.clone(),
        metrics.clone(),
        relay_name.clone(),
        cfg.lease,
        owners,
        stop_claiming.clone(),
        ownership_stop.clone(),
    ));

    let shutdown_timeout = cfg.shutdown_timeout;
    let token = shutdown.clone();
    let task = tokio::spawn(async move {
        token.cancelled().await;
        tracing::info!("shutting down: nothing new is read");
        stop_claiming.cancel();
        shared.tracker.close();
        let in_flight = shared.tracker.len();
        if in_flight > 0 {
            tracing::info!(in_flight, deadline = ?shutdown_timeout, "waiting for requests in flight");
        }
        if tokio::time::timeout(shutdown_timeout, shared.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!("shutdown deadline passed; abandoning the requests still in flight");
            abort_deliveries.cancel();
            shared.tracker.wait().await;
        }
        // The loops write their outcomes and cursors and give their
        // partitions back; then the last sender goes with `shared` and the
        // write-back drains.
        for l in loops {
            let _ = l.await;
        }
        ownership_stop.cancel();
        let _ = ownership_task.await;
        drop(shared);
        let abandon = abandon_writes.clone();
        let timer = tokio::spawn(async move {
            tokio::time::sleep(FINAL_WRITE_GRACE).await;
            abandon.cancel();
        });
        let _ = writeback_task.await;
        timer.abort();
        background.cancel();
        let _ = tokio::join!(listener_task, sampler_task, retention_task, http_task);
        tracing::info!("relay stopped");
    });

    Ok(Relay {
        shutdown,
        task,
        metrics,
        http_addr,
    })
}

/// Runs until SIGINT or SIGTERM, then shuts down gracefully.
pub async fn run_until_signal(cfg: Config, database_url: String) -> Result<()> {
    let relay = tokio::select! {
        r = start(cfg, database_url) => r?,
        _ = stop_signal() => return Ok(()),
    };
    stop_signal().await;
    relay.shutdown().await;
    Ok(())
}

async fn stop_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        // Without signal handlers there is nothing to wait for but Ctrl-C.
        let _ = tokio::signal::ctrl_c().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
    }
}

async fn connect_until_up(url: &str, metrics: &Metrics) -> Result<tokio_postgres::Client> {
    let mut backoff = Duration::from_millis(200);
    loop {
        match db::connect(url).await {
            Ok((client, _)) => {
                metrics.set_db_ok(true);
                return Ok(client);
            }
            Err(e) => {
                metrics.set_db_ok(false);
                tracing::warn!(error = %format!("{e:#}"), retry_in = ?backoff, "database unreachable at start; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(START_MAX_BACKOFF);
            }
        }
    }
}

fn default_relay_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "relay".into());
    format!("{host}:{}", std::process::id())
}
