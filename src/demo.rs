//! `outbox-relay demo`: the whole pipeline on this machine with zero set-up —
//! a throwaway Postgres, the reference schema and triggers, a verifying
//! receiver, the relay — driven by a short scripted story of app writes.
//!
//! The story: buyer 0042, "Acme Leads Ltd" (a lead costs it 10 credits),
//! signs up with postcodes BN1, AB1 and GN2 in one transaction
//! (`post_code_change`); tops up 25 credits (`add_credits`; the receiver
//! answers the first attempt 503, so the relay retries it) and at once spends
//! down to 15, which still buys a lead, then to 5, which does not
//! (`user_credits_zero`, once): that event waits, parked, until the top-up's
//! retry is delivered, since both are buyer 0042's (its key is held); and
//! swaps GN2 for ZZ9 in one transaction (one `post_code_change`).
//! Each webhook is printed as it arrives, then the outbox rows as a DBA sees
//! them. Everything started is stopped and removed again, also on Ctrl-C.
//!
//! The story's SQL lives here rather than in `sql/`: it is the application's
//! writes, shown to the user step by step, not SQL the relay runs.

use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use axum::http::StatusCode;
use tokio::task::JoinHandle;
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, Secret};
use crate::receiver::{self, Webhook};
use crate::relay::{self, Relay};
use crate::throwaway::{Cluster, ClusterOptions};
use crate::{db, migrate, sign};

const EXAMPLE_APP_SQL: &str = include_str!("../sql/example_app.sql");
const TRIGGERS_SQL: &str = include_str!("../sql/triggers.sql");

/// The endpoint's name in the demo config and in `webhook.endpoints`.
const ENDPOINT_NAME: &str = "demo-receiver";
/// How long one step may take to settle (every outbox row delivered or dead).
const SETTLE_DEADLINE: Duration = Duration::from_secs(30);
/// How often the outbox is checked while waiting for it to settle.
const SETTLE_POLL: Duration = Duration::from_millis(50);
/// How long the receiver may take to close its connections at the end.
const RECEIVER_GRACE: Duration = Duration::from_secs(5);

/// One step of the story: what the user reads, the app's writes (each string
/// one transaction), and how many outbox rows exist once it has run.
struct Step {
    title: &'static str,
    writes: &'static [&'static str],
    rows_after: i64,
    /// Show the held key while its head waits for the retry.
    shows_hold: bool,
}

const STORY: &[Step] = &[
    Step {
        title: "1. sign-up: buyer 0042 \"Acme Leads Ltd\", lead cost 10, postcodes BN1, AB1, GN2 \
                in one transaction -> expect one post_code_change",
        writes: &["BEGIN;\n\
                   INSERT INTO buyers VALUES ('0042', 'Acme Leads Ltd', 10);\n\
                   INSERT INTO buyer_postcodes VALUES ('0042', 'BN1'), ('0042', 'AB1'), ('0042', 'GN2');\n\
                   COMMIT;"],
        rows_after: 1,
        shows_hold: false,
    },
    Step {
        title: "2. top-up: 25 credits -> expect add_credits; the receiver fails the first \
                attempt with 503, so the relay retries",
        writes: &["INSERT INTO buyer_credits VALUES ('0042', 25);"],
        rows_after: 2,
        shows_hold: false,
    },
    Step {
        title: "3. spending, at once: balance 25 -> 15 (still buys a lead: no event), then \
                15 -> 5 (below the lead cost) -> expect user_credits_zero, held back until the \
                top-up is delivered (one event at a time per buyer, in commit order)",
        writes: &[
            "UPDATE buyer_credits SET balance = 15 WHERE buyer_id = '0042';",
            "UPDATE buyer_credits SET balance = 5 WHERE buyer_id = '0042';",
        ],
        rows_after: 3,
        shows_hold: true,
    },
    Step {
        title: "4. postcode change: GN2 replaced by ZZ9 in one transaction -> expect one \
                post_code_change",
        writes: &["BEGIN;\n\
                   DELETE FROM buyer_postcodes WHERE buyer_id = '0042' AND postcode = 'GN2';\n\
                   INSERT INTO buyer_postcodes VALUES ('0042', 'ZZ9');\n\
                   COMMIT;"],
        rows_after: 4,
        shows_hold: false,
    },
];

/// The held key, its holding event and what waits behind it.
const HOLD_SQL: &str = "SELECT h.ordering_key, o.event_code, o.attempts, \
     (SELECT count(*) FROM webhook.parked p WHERE p.ordering_key = h.ordering_key) \
     FROM webhook.holds h JOIN webhook.outbox o ON o.id = h.outbox_id";
/// Rows in the outbox, and how many of them are finished (delivered or dead).
const OUTBOX_PROGRESS_SQL: &str =
    "SELECT count(*), count(*) FILTER (WHERE status IN ('delivered', 'dead')) FROM webhook.outbox";
/// The outbox as a DBA reads it.
const OUTBOX_ROWS_SQL: &str = "SELECT id, event_code, status, attempts, response_status, \
     response_ms, last_error FROM webhook.outbox ORDER BY id";
const ATTEMPT_COUNT_SQL: &str = "SELECT count(*) FROM webhook.attempts";

/// How the demo ended, when it did not fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    Finished,
    /// SIGINT or SIGTERM; everything was cleaned up.
    Interrupted,
}

/// What the story has started so far, so that clean-up stops exactly that,
/// however the story ended.
#[derive(Default)]
struct Parts {
    /// Postgres while `Cluster::start` runs (it blocks, so it cannot be
    /// cancelled: clean-up waits for it and then drops the cluster).
    starting: Option<JoinHandle<Result<Cluster>>>,
    cluster: Option<Cluster>,
    receiver: Option<(CancellationToken, JoinHandle<Result<()>>)>,
    relay: Option<Relay>,
}

/// Runs the demo; cleans up on success, failure, SIGINT and SIGTERM alike.
pub async fn run() -> Result<Ending> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;

    let mut parts = Parts::default();
    let result = tokio::select! {
        r = story(&mut parts) => r.map(|()| Ending::Finished),
        _ = int.recv() => Ok(Ending::Interrupted),
        _ = term.recv() => Ok(Ending::Interrupted),
    };
    if result.as_ref().is_ok_and(|e| *e == Ending::Interrupted) {
        println!("\ninterrupted; cleaning up");
    }
    clean_up(parts).await;
    result
}

async fn story(parts: &mut Parts) -> Result<()> {
    println!("starting a throwaway Postgres (initdb in a temp dir, a few seconds)");
    let starting = parts.starting.insert(tokio::task::spawn_blocking(|| {
        Cluster::start(ClusterOptions::default())
    }));
    let started = starting.await;
    parts.starting = None;
    let cluster = started
        .context("the Postgres start-up task failed")?
        .context("starting a throwaway Postgres")?;
    println!(
        "Postgres is up on 127.0.0.1:{}, data in {}",
        cluster.port(),
        cluster.data_dir().display()
    );
    let admin_url = cluster.url("postgres");
    let url = cluster.url("demo");
    parts.cluster = Some(cluster);

    db::connect_simple(&admin_url)
        .await?
        .batch_execute("CREATE DATABASE demo")
        .await
        .context("creating database demo")?;
    let mut app = db::connect_simple(&url).await?;
    migrate::run_migrations(&mut app).await?;
    app.batch_execute(EXAMPLE_APP_SQL)
        .await
        .context("creating the reference schema (sql/example_app.sql)")?;
    app.batch_execute(TRIGGERS_SQL)
        .await
        .context("installing the triggers (sql/triggers.sql)")?;
    println!("database demo: webhook schema migrated, reference tables and triggers installed");

    let secret = sign::generate_secret();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .context("binding the demo receiver to 127.0.0.1")?;
    let hook_url = format!(
        "http://{}/webhooks",
        listener
            .local_addr()
            .context("reading the receiver's address")?
    );
    let stop_receiver = CancellationToken::new();
    let task = tokio::spawn(receiver::serve(
        listener,
        secret.clone(),
        answer,
        show,
        stop_receiver.clone(),
    ));
    parts.receiver = Some((stop_receiver, task));
    println!("receiver listening on {hook_url}, verifying signatures with a fresh secret");

    let cfg = Config::parse(&config_text(&hook_url, &secret), "demo config", &|_| None)
        // Not a ConfigError for main: the user wrote no config here.
        .map_err(|e| anyhow!("the demo's own config is invalid (a bug): {e}"))?;
    let relay = relay::start(cfg, url).await.context("starting the relay")?;
    println!(
        "relay running: endpoint {ENDPOINT_NAME:?} subscribed to all three events \
         (metrics on http://{}/metrics)",
        relay.http_addr
    );
    parts.relay = Some(relay);

    for (i, step) in STORY.iter().enumerate() {
        println!("\n{}", step.title);
        // The top-up's retry is a second away: the next step's writes run
        // while its key is held.
        let settle_rows = match STORY.get(i + 1) {
            Some(next) if next.shows_hold => None,
            _ => Some(step.rows_after),
        };
        for sql in step.writes {
            for line in sql.lines() {
                println!("  sql> {}", line.trim());
            }
            app.batch_execute(sql)
                .await
                .with_context(|| format!("running the app write {sql:?}"))?;
        }
        if step.shows_hold {
            show_hold(&app).await?;
        }
        match settle_rows {
            Some(rows) => wait_settled(&app, rows).await?,
            None => wait_held(&app).await?,
        }
    }

    println!("\nwebhook.outbox, the delivery log a DBA reads:");
    print!("{}", outbox_table(&app).await?);
    let attempts: i64 = app
        .query_one(ATTEMPT_COUNT_SQL, &[])
        .await
        .context("counting webhook.attempts")?
        .get(0);
    println!("webhook.attempts: {attempts} rows (one per attempt, the failed one included)");
    Ok(())
}

/// The receiver's behaviour: the first delivery of the add_credits event
/// fails with 503, to show a retry; everything else is accepted.
fn answer(w: &Webhook) -> StatusCode {
    if w.delivery == 1 && w.event_code().as_deref() == Some("add_credits") {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    }
}

/// Prints a webhook on arrival, on one line.
fn show(w: &Webhook, status: StatusCode) {
    let verdict = match &w.verified {
        Ok(()) => "signature verified".to_owned(),
        Err(why) => format!("signature NOT verified ({why})"),
    };
    let body = match w.json() {
        Some(v) => v.to_string(),
        None => String::from_utf8_lossy(&w.body).into_owned(),
    };
    println!(
        "  <- webhook {} {}  {verdict}, attempt {}, answered {}  {body}",
        w.event_code().as_deref().unwrap_or("(no eventCode)"),
        w.id.as_deref().unwrap_or("(no webhook-id)"),
        w.delivery,
        status.as_u16(),
    );
}

fn config_text(hook_url: &str, secret: &Secret) -> String {
    format!(
        r#"listen = "127.0.0.1:0"
poll_interval = "200ms"
shutdown_timeout = "2s"

[[endpoint]]
name = "{ENDPOINT_NAME}"
url = "{hook_url}"
events = ["user_credits_zero", "post_code_change", "add_credits"]
secret = "{}"
retry_initial = "1s"
retry_max = "2s"
"#,
        secret.encode()
    )
}

/// Waits until the outbox holds `rows` rows (or more) and every one of them is
/// delivered or dead.
async fn wait_settled(app: &Client, rows: i64) -> Result<()> {
    let deadline = Instant::now() + SETTLE_DEADLINE;
    loop {
        let row = app
            .query_one(OUTBOX_PROGRESS_SQL, &[])
            .await
            .context("reading the outbox")?;
        let (total, finished): (i64, i64) = (row.get(0), row.get(1));
        if total >= rows && finished == total {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!(
                "after {}s, {} of {total} outbox rows are still pending or in flight (expected {rows} rows)",
                SETTLE_DEADLINE.as_secs(),
                total - finished
            );
        }
        tokio::time::sleep(SETTLE_POLL).await;
    }
}

/// The outbox rows as an aligned text table.
/// Waits until a key is held (the top-up's first attempt failed).
async fn wait_held(app: &Client) -> Result<()> {
    let deadline = Instant::now() + SETTLE_DEADLINE;
    loop {
        let held = app
            .query(HOLD_SQL, &[])
            .await
            .context("reading webhook.holds")?;
        if !held.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("after {SETTLE_DEADLINE:?}, no key is held: the top-up's failed attempt was not written back");
        }
        tokio::time::sleep(SETTLE_POLL).await;
    }
}

/// Shows the held key once the event behind it is parked.
async fn show_hold(app: &Client) -> Result<()> {
    let deadline = Instant::now() + SETTLE_DEADLINE;
    loop {
        let held = app
            .query(HOLD_SQL, &[])
            .await
            .context("reading webhook.holds")?;
        if let Some(row) = held.first() {
            let parked: i64 = row.get(3);
            if parked > 0 {
                let (key, code, attempts): (String, String, i32) =
                    (row.get(0), row.get(1), row.get(2));
                println!(
                    "  held: buyer {key}'s key, by its {code} ({attempts} attempt so far, retry due); \
                     {parked} event parked behind it (webhook.held_keys)"
                );
                return Ok(());
            }
        } else {
            // Already delivered: the hold was shorter than a poll.
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("after {SETTLE_DEADLINE:?}, no event is parked behind the held key");
        }
        tokio::time::sleep(SETTLE_POLL).await;
    }
}

async fn outbox_table(app: &Client) -> Result<String> {
    let rows = app
        .query(OUTBOX_ROWS_SQL, &[])
        .await
        .context("reading the outbox")?;
    let or_dash = |v: Option<String>| v.unwrap_or_else(|| "-".into());
    let mut table = vec![[
        "id",
        "event_code",
        "status",
        "attempts",
        "response_status",
        "response_ms",
        "last_error",
    ]
    .map(String::from)];
    for r in &rows {
        table.push([
            r.get::<_, i64>(0).to_string(),
            r.get(1),
            r.get(2),
            r.get::<_, i32>(3).to_string(),
            or_dash(r.get::<_, Option<i32>>(4).map(|v| v.to_string())),
            or_dash(r.get::<_, Option<i32>>(5).map(|v| v.to_string())),
            or_dash(r.get(6)),
        ]);
    }
    Ok(format_table(&table))
}

/// Left-aligned columns separated by two spaces, a rule under the header.
fn format_table<const N: usize>(rows: &[[String; N]]) -> String {
    let mut widths = [0usize; N];
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let mut s = String::from("  ");
        for (i, (cell, w)) in cells.iter().zip(widths).enumerate() {
            if i + 1 == N {
                s.push_str(cell);
            } else {
                s.push_str(&format!("{cell:<w$}  "));
            }
        }
        s.trim_end().to_owned() + "\n"
    };
    let mut out = String::new();
    for (i, row) in rows.iter().enumerate() {
        out.push_str(&line(row.to_vec()));
        if i == 0 {
            out.push_str(&line(widths.iter().map(|w| "-".repeat(*w)).collect()));
        }
    }
    out
}

/// Stops what was started, newest first: relay, receiver, Postgres (whose
/// drop stops the server and removes its directory).
async fn clean_up(parts: Parts) {
    let Parts {
        starting,
        mut cluster,
        receiver,
        relay,
    } = parts;
    if let Some(relay) = relay {
        relay.shutdown().await;
        println!("relay stopped");
    }
    if let Some((stop, mut task)) = receiver {
        stop.cancel();
        if tokio::time::timeout(RECEIVER_GRACE, &mut task)
            .await
            .is_err()
        {
            task.abort();
        }
    }
    if let Some(start) = starting {
        // Interrupted while Postgres was starting: let it finish, then stop it.
        if let Ok(Ok(c)) = start.await {
            cluster = Some(c);
        }
    }
    if let Some(cluster) = cluster {
        let dir = cluster.data_dir().to_path_buf();
        // Dropping blocks while the server stops and the directory goes.
        let _ = tokio::task::spawn_blocking(move || drop(cluster)).await;
        if dir.exists() {
            println!(
                "warning: Postgres stopped, but {} is still there; remove it by hand",
                dir.display()
            );
        } else {
            println!("cleaned up: Postgres stopped, {} removed", dir.display());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_demo_config_is_valid_and_as_described() {
        let secret = sign::generate_secret();
        let cfg = Config::parse(
            &config_text("http://127.0.0.1:1/webhooks", &secret),
            "demo",
            &|_| None,
        )
        .unwrap();
        assert_eq!(cfg.endpoints.len(), 1);
        let ep = &cfg.endpoints[0];
        assert_eq!(ep.name, ENDPOINT_NAME);
        assert_eq!(ep.events.len(), 3);
        assert_eq!(ep.secrets, [secret]);
        assert_eq!(ep.retry_initial, Duration::from_secs(1));
        assert_eq!(ep.retry_max, Duration::from_secs(2));
        assert_eq!(cfg.listen.port(), 0);
    }

    #[test]
    fn tables_are_aligned() {
        let rows = [
            ["id".to_string(), "status".into()],
            ["10".into(), "ok".into()],
        ];
        assert_eq!(
            format_table(&rows),
            "  id  status\n  --  ------\n  10  ok\n"
        );
    }
}
