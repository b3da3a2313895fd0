//! Operating the relay: the replay and purge SQL functions and the DBA views,
//! `outbox-relay status` and `replay` as real processes, retention, claiming
//! over a large delivered history, the schema check of `run`, JSON logs.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use outbox_relay::config::RetentionConfig;
use outbox_relay::db::Db;
use outbox_relay::metrics::Metrics;
use serde_json::Value;
use tokio_postgres::Client;

use crate::delivery::{config, config_text, count_status, start, SECRET};
use crate::receiver::Receiver;
use crate::support::{cli, stderr, stdout, wait_for, TestDb, BIN};

const WAIT: Duration = Duration::from_secs(30);

/// Endpoints `a` and `b` (both take add_credits; `b` also other_event) and
/// `n` events, each routed to both: rows 1..2n alternate a, b.
async fn two_endpoints(c: &Client, n: i32) {
    c.batch_execute(
        "INSERT INTO webhook.endpoints (name, url, events) VALUES
           ('a', 'http://127.0.0.1:9/', '{add_credits}'),
           ('b', 'http://127.0.0.1:9/', '{add_credits,other_event}')",
    )
    .await
    .unwrap();
    c.execute(
        "SELECT webhook.enqueue('add_credits', jsonb_build_object('n', g), 'k' || g) FROM generate_series(1, $1) g",
        &[&n],
    )
    .await
    .unwrap();
}

async fn one_i64(c: &Client, sql: &str) -> i64 {
    c.query_one(sql, &[]).await.unwrap().get(0)
}

async fn db_error(c: &Client, sql: &str) -> String {
    let err = c.batch_execute(sql).await.unwrap_err();
    err.as_db_error()
        .expect("a database error")
        .message()
        .to_string()
}

#[tokio::test]
async fn replay_functions_requeue_with_a_fresh_budget_and_keep_history() {
    let db = TestDb::new().await;
    let c = db.client().await;
    two_endpoints(&c, 3).await;
    // Rows 1, 3, 5 are a's; 2, 4, 6 b's. Kill a's and b's first event, with
    // one attempt on record each; row 6 is delivered.
    c.batch_execute(
        "UPDATE webhook.outbox SET status = 'dead', attempts = 8, last_error = 'HTTP 503',
                response_status = 503 WHERE id IN (1, 2, 3);
         UPDATE webhook.outbox SET status = 'delivered', attempts = 1, delivered_at = now() WHERE id = 6;
         UPDATE webhook.outbox SET created_at = now() - interval '3 days' WHERE id = 3;
         INSERT INTO webhook.attempts (outbox_id, attempt, started_at, duration_ms, response_status, error)
         SELECT id, 8, now(), 10, 503, 'HTTP 503' FROM webhook.outbox WHERE id IN (1, 2, 3);",
    )
    .await
    .unwrap();
    let before: Vec<String> = c
        .query("SELECT event_id FROM webhook.outbox ORDER BY id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();

    // One row by id.
    assert_eq!(
        one_i64(&c, "SELECT webhook.replay(1, dry_run => true)").await,
        1
    );
    assert_eq!(
        count_status(&c, "dead").await,
        3,
        "a dry run changes nothing"
    );
    assert_eq!(one_i64(&c, "SELECT webhook.replay(1)").await, 1);
    let r = c
        .query_one(
            "SELECT status, attempts, next_attempt_at <= now(), delivered_at IS NULL, last_error,
                    (SELECT count(*) FROM webhook.attempts a WHERE a.outbox_id = o.id)
               FROM webhook.outbox o WHERE id = 1",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(r.get::<_, String>(0), "pending");
    assert_eq!(r.get::<_, i32>(1), 0, "a fresh attempt budget");
    assert!(r.get::<_, bool>(2) && r.get::<_, bool>(3));
    assert_eq!(
        r.get::<_, Option<String>>(4).as_deref(),
        Some("HTTP 503"),
        "the latest outcome stays until the next attempt"
    );
    assert_eq!(r.get::<_, i64>(5), 1, "the history stays");

    // By endpoint, status and time range (created_at in [since, until)).
    assert_eq!(
        one_i64(&c, "SELECT webhook.replay('a', dry_run => true)").await,
        1
    );
    assert_eq!(
        one_i64(
            &c,
            "SELECT webhook.replay('a', since => now() - interval '1 day')"
        )
        .await,
        0,
        "row 3 is older than the range"
    );
    assert_eq!(
        one_i64(
            &c,
            "SELECT webhook.replay('a', until => now() - interval '1 day')"
        )
        .await,
        1
    );
    assert_eq!(
        one_i64(&c, "SELECT webhook.replay('b', 'delivered')").await,
        1
    );
    // Every endpoint, dead by default: row 2 is the last dead one.
    assert_eq!(one_i64(&c, "SELECT webhook.replay()").await, 1);
    assert_eq!(count_status(&c, "dead").await, 0);
    assert_eq!(count_status(&c, "pending").await, 6);
    let after: Vec<String> = c
        .query("SELECT event_id FROM webhook.outbox ORDER BY id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(before, after, "event ids never change");
    assert_eq!(
        one_i64(&c, "SELECT count(*) FROM webhook.attempts").await,
        3
    );

    // What they refuse, and why.
    let msg = db_error(&c, "SELECT webhook.replay(999)").await;
    assert!(msg.contains("no outbox row with id 999"), "{msg}");
    let msg = db_error(&c, "SELECT webhook.replay('nope')").await;
    assert!(msg.contains("no endpoint named 'nope'"), "{msg}");
    let msg = db_error(&c, "SELECT webhook.replay('a', 'in_flight')").await;
    assert!(msg.contains("must be dead, delivered or pending"), "{msg}");
    c.batch_execute(
        "UPDATE webhook.outbox SET status = 'in_flight', claimed_by = 'relay-x',
                lease_expires_at = now() + interval '1 minute' WHERE id = 4",
    )
    .await
    .unwrap();
    let msg = db_error(&c, "SELECT webhook.replay(4)").await;
    assert!(
        msg.contains("row 4 is in flight") && msg.contains("relay-x"),
        "{msg}"
    );
}

#[tokio::test]
async fn purge_dead_removes_only_dead_rows_with_their_attempts() {
    let db = TestDb::new().await;
    let c = db.client().await;
    two_endpoints(&c, 3).await;
    c.batch_execute(
        "UPDATE webhook.outbox SET status = 'dead' WHERE id IN (1, 2, 3, 4);
         UPDATE webhook.outbox SET status = 'delivered', delivered_at = now() WHERE id = 5;
         INSERT INTO webhook.attempts (outbox_id, attempt, started_at, duration_ms, error)
         SELECT id, 1, now(), 10, 'boom' FROM webhook.outbox;",
    )
    .await
    .unwrap();
    let msg = db_error(&c, "SELECT webhook.purge_dead(5)").await;
    assert!(msg.contains("row 5 is delivered, not dead"), "{msg}");
    assert_eq!(
        one_i64(&c, "SELECT webhook.purge_dead(1, dry_run => true)").await,
        1
    );
    assert_eq!(one_i64(&c, "SELECT webhook.purge_dead(1)").await, 1);
    assert_eq!(
        one_i64(&c, "SELECT webhook.purge_dead('b', dry_run => true)").await,
        2
    );
    assert_eq!(one_i64(&c, "SELECT webhook.purge_dead('b')").await, 2);
    assert_eq!(one_i64(&c, "SELECT webhook.purge_dead()").await, 1);
    assert_eq!(count_status(&c, "dead").await, 0);
    let left: Vec<i64> = c
        .query("SELECT o.id FROM webhook.outbox o ORDER BY id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(left, [5, 6]);
    assert_eq!(
        one_i64(&c, "SELECT count(*) FROM webhook.attempts").await,
        2,
        "the purged rows' attempts went with them"
    );
    let msg = db_error(&c, "SELECT webhook.purge_dead('nope')").await;
    assert!(msg.contains("no endpoint named 'nope'"), "{msg}");
}

#[tokio::test]
async fn views_show_backlog_health_and_recent_failures() {
    let db = TestDb::new().await;
    let c = db.client().await;
    two_endpoints(&c, 6).await;
    // a: rows 1,3,5,7,9,11. Two dead, one in flight, one waiting for a retry
    // in the future, two due (one of them written an hour ago).
    c.batch_execute(
        "UPDATE webhook.outbox SET status = 'dead' WHERE id IN (1, 3);
         UPDATE webhook.outbox SET status = 'in_flight', lease_expires_at = now() + interval '1 minute' WHERE id = 5;
         UPDATE webhook.outbox SET next_attempt_at = now() + interval '10 minutes' WHERE id = 7;
         UPDATE webhook.outbox SET created_at = now() - interval '1 hour' WHERE id = 9;
         -- b: everything delivered.
         UPDATE webhook.outbox SET status = 'delivered', delivered_at = now() WHERE endpoint_id = 2;
         -- a's attempts in the last hour: 10..100 ms, the 30 and 70 ms ones failed;
         -- one slow failure two hours ago and one two days ago stay out of the hour.
         INSERT INTO webhook.attempts (outbox_id, attempt, started_at, duration_ms, response_status, error)
         SELECT 1, g, now() - (11 - g) * interval '1 minute', g * 10,
                CASE WHEN g IN (3, 7) THEN 503 ELSE 200 END,
                CASE WHEN g IN (3, 7) THEN 'HTTP 503 attempt ' || g END
           FROM generate_series(1, 10) g;
         INSERT INTO webhook.attempts (outbox_id, attempt, started_at, duration_ms, error) VALUES
           (3, 1, now() - interval '2 hours', 10000, 'timed out after 10s'),
           (3, 2, now() - interval '2 days', 10000, 'timed out after 10s');",
    )
    .await
    .unwrap();

    let b = c
        .query_one(
            "SELECT pending, due, in_flight, dead, oldest_pending_age >= interval '59 minutes',
                    next_attempt_at <= now()
               FROM webhook.backlog WHERE endpoint = 'a'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(
        (
            b.get::<_, i64>(0),
            b.get::<_, i64>(1),
            b.get::<_, i64>(2),
            b.get::<_, i64>(3)
        ),
        (3, 2, 1, 2)
    );
    assert!(b.get::<_, bool>(4), "the oldest pending row is an hour old");
    assert!(b.get::<_, bool>(5));
    let b = c
        .query_one(
            "SELECT pending, dead, oldest_pending_at IS NULL FROM webhook.backlog WHERE endpoint = 'b'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!((b.get::<_, i64>(0), b.get::<_, i64>(1)), (0, 0));
    assert!(b.get::<_, bool>(2));

    let h = c
        .query_one(
            "SELECT attempts, succeeded, failed, success_pct::float8, p50_ms, p95_ms,
                    last_success_at > last_failure_at, last_error
               FROM webhook.endpoint_health WHERE endpoint = 'a'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(
        (h.get::<_, i64>(0), h.get::<_, i64>(1), h.get::<_, i64>(2)),
        (10, 8, 2)
    );
    assert_eq!(h.get::<_, f64>(3), 80.0);
    assert_eq!(h.get::<_, f64>(4), 55.0, "median of 10..100");
    assert!(
        (h.get::<_, f64>(5) - 95.5).abs() < 1e-9,
        "95th percentile of 10..100"
    );
    assert!(
        h.get::<_, bool>(6),
        "attempt 10 succeeded after attempt 7 failed"
    );
    assert_eq!(h.get::<_, String>(7), "HTTP 503 attempt 7");
    let h = c
        .query_one(
            "SELECT attempts, success_pct IS NULL, p50_ms IS NULL FROM webhook.endpoint_health WHERE endpoint = 'b'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(h.get::<_, i64>(0), 0);
    assert!(h.get::<_, bool>(1) && h.get::<_, bool>(2));

    let failures: Vec<(String, i64, i32, String, String)> = c
        .query(
            "SELECT endpoint, outbox_id, attempt, error, row_status FROM webhook.recent_failures",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4)))
        .collect();
    assert_eq!(
        failures,
        [
            ("a".into(), 1, 7, "HTTP 503 attempt 7".into(), "dead".into()),
            ("a".into(), 1, 3, "HTTP 503 attempt 3".into(), "dead".into()),
            (
                "a".into(),
                3,
                1,
                "timed out after 10s".into(),
                "dead".into()
            ),
        ],
        "newest first, last 24 hours, failures only"
    );
}

#[tokio::test]
async fn status_prints_a_table_and_stable_json() {
    let db = TestDb::new().await;
    let c = db.client().await;
    two_endpoints(&c, 2).await;
    c.batch_execute(
        "UPDATE webhook.outbox SET status = 'dead' WHERE id = 1;
         UPDATE webhook.outbox SET status = 'delivered', delivered_at = now() WHERE id IN (2, 4);
         UPDATE webhook.outbox SET created_at = now() - interval '10 minutes' WHERE id = 3;
         UPDATE webhook.endpoints SET enabled = false WHERE name = 'b';
         INSERT INTO webhook.attempts (outbox_id, attempt, started_at, duration_ms, response_status, error) VALUES
           (1, 1, now() - interval '1 minute', 20, 503, 'HTTP 503 Service Unavailable'),
           (2, 1, now() - interval '1 minute', 20, 200, NULL),
           (4, 1, now() - interval '10 minutes', 20, 200, NULL);",
    )
    .await
    .unwrap();

    let out = cli(&["status", "--json", "--database-url", &db.url], &[]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let json: Value = serde_json::from_str(&stdout(&out)).expect("status --json prints JSON");
    let eps = json["endpoints"].as_array().unwrap();
    assert_eq!(eps.len(), 2);
    let a = &eps[0];
    assert_eq!(a["name"], "a");
    assert_eq!(a["enabled"], true);
    assert_eq!(
        a["rows"],
        serde_json::json!({"pending": 1, "in_flight": 0, "delivered": 0, "dead": 1})
    );
    assert!(a["oldest_pending_seconds"].as_f64().unwrap() >= 599.0);
    assert_eq!(
        a["last_5m"],
        serde_json::json!({"delivered": 0, "failed": 1, "probes": 0})
    );
    assert_eq!(a["state"], "running");
    assert_eq!(a["latest_error"]["outbox_id"], 1);
    assert_eq!(a["latest_error"]["response_status"], 503);
    assert_eq!(a["latest_error"]["error"], "HTTP 503 Service Unavailable");
    let b = &eps[1];
    assert_eq!(b["enabled"], false);
    assert_eq!(b["rows"]["delivered"], 2);
    assert_eq!(
        b["last_5m"],
        serde_json::json!({"delivered": 1, "failed": 0, "probes": 0}),
        "the attempt ten minutes ago is outside the window"
    );
    assert!(b["latest_error"].is_null() && b["oldest_pending_seconds"].is_null());
    assert_eq!(b["state"], "disabled");

    // The table, with the URL taken from a config file's database_url whose
    // secret variables are not set (status needs nothing else).
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("relay.toml");
    std::fs::write(
        &path,
        format!(
            "database_url = \"{}\"\n[[endpoint]]\nname = \"a\"\nurl = \"http://127.0.0.1:9/\"\n\
             events = [\"add_credits\"]\nsecret_env = \"NOT_SET_FOR_STATUS\"\n",
            db.url
        ),
    )
    .unwrap();
    let out = cli(&["status", "--config", path.to_str().unwrap()], &[]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        lines[0].starts_with("ENDPOINT  STATE     PENDING"),
        "{text}"
    );
    let cells = |line: &str| {
        line.split_whitespace()
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    assert_eq!(
        cells(lines[1])[..6],
        ["a", "running", "1", "0", "0", "1"],
        "{text}"
    );
    assert_eq!(
        cells(lines[2])[..6],
        ["b", "disabled", "0", "0", "2", "0"],
        "{text}"
    );
    assert!(
        text.contains("Latest errors:\n  a: ") && text.contains("HTTP 503 Service Unavailable"),
        "{text}"
    );

    // No database anywhere: a usage error.
    let out = cli(&["status"], &[]).await;
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("no database"), "{}", stderr(&out));
}

#[tokio::test]
async fn replay_command_requeues_and_an_idle_relay_delivers_at_once() {
    let db = TestDb::new().await;
    let c = db.client().await;
    // The first request of every event is refused with 410 (not retried:
    // dead at once); later ones succeed.
    let rx = Receiver::failing_first(1, 410).await;
    // A poll interval of an hour: only the NOTIFY of webhook.replay can
    // bring the rows back within the test's time.
    let relay = start(
        &db,
        config("poll_interval = \"1h\"", &[("crm", &rx.url, "")]),
    )
    .await;
    c.execute(
        "SELECT webhook.enqueue('add_credits', jsonb_build_object('n', g)) FROM generate_series(1, 3) g",
        &[],
    )
    .await
    .unwrap();
    wait_for("three dead rows", WAIT, || async {
        (count_status(&c, "dead").await == 3).then_some(())
    })
    .await;
    let ids: Vec<i64> = c
        .query("SELECT id FROM webhook.outbox ORDER BY id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();

    // --dry-run counts and changes nothing.
    let out = cli(
        &["replay", "--endpoint", "crm", "--dry-run", "--since", "1h"],
        &[("DATABASE_URL", &db.url)],
    )
    .await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out)
            .starts_with("would replay 3 row(s): dead rows of endpoint \"crm\" created from "),
        "{}",
        stdout(&out)
    );
    assert_eq!(count_status(&c, "dead").await, 3);

    // One row by id: delivered promptly, same webhook-id, history kept.
    let first = ids[0].to_string();
    let started = Instant::now();
    let out = cli(&["replay", "--id", &first], &[("DATABASE_URL", &db.url)]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains(&format!("replayed 1 row(s): outbox row {first}")),
        "{}",
        stdout(&out)
    );
    wait_for("the replayed row delivered", WAIT, || async {
        (count_status(&c, "delivered").await == 1).then_some(())
    })
    .await;
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "picked up after {:?}, not at once",
        started.elapsed()
    );
    let r = c
        .query_one(
            "SELECT attempts, response_status, last_error,
                    (SELECT array_agg(response_status ORDER BY a.id) FROM webhook.attempts a WHERE a.outbox_id = o.id)
               FROM webhook.outbox o WHERE id = $1",
            &[&ids[0]],
        )
        .await
        .unwrap();
    assert_eq!(r.get::<_, i32>(0), 1, "counted from a fresh budget");
    assert_eq!(r.get::<_, Option<i32>>(1), Some(200));
    assert_eq!(r.get::<_, Option<String>>(2), None);
    assert_eq!(
        r.get::<_, Vec<i32>>(3),
        [410, 200],
        "both attempts on record"
    );

    // The rest by endpoint; nothing left to replay afterwards.
    let out = cli(
        &["replay", "--endpoint", "crm", "--database-url", &db.url],
        &[],
    )
    .await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).starts_with("replayed 2 row(s)"),
        "{}",
        stdout(&out)
    );
    wait_for("all delivered", WAIT, || async {
        (count_status(&c, "delivered").await == 3).then_some(())
    })
    .await;
    let out = cli(
        &["replay", "--all-endpoints", "--database-url", &db.url],
        &[],
    )
    .await;
    assert!(
        stdout(&out).starts_with("no rows matched"),
        "{}",
        stdout(&out)
    );
    relay.shutdown().await;

    let reqs = rx.requests();
    assert_eq!(reqs.len(), 6);
    assert_eq!(rx.unique_ids(), 3, "replays re-send the same webhook-id");

    // Refusals are reported with the function's reason, exit 1; bad usage 2.
    let out = cli(
        &["replay", "--id", "999999", "--database-url", &db.url],
        &[],
    )
    .await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("no outbox row with id 999999"),
        "{}",
        stderr(&out)
    );
    let out = cli(
        &["replay", "--endpoint", "nope", "--database-url", &db.url],
        &[],
    )
    .await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("no endpoint named 'nope'"),
        "{}",
        stderr(&out)
    );
    for bad in [
        &["replay", "--database-url", "postgres://x/y"][..],
        &["replay", "--id", "1", "--endpoint", "crm"],
        &["replay", "--endpoint", "crm", "--status", "lost"],
        &["replay", "--endpoint", "crm", "--since", "last tuesday"],
    ] {
        let out = cli(bad, &[]).await;
        assert_eq!(out.status.code(), Some(2), "{bad:?}: {}", stderr(&out));
    }
}

/// Inserts `n` delivered rows for endpoint 1, delivered `age` ago, each with
/// one attempt as old.
async fn delivered_history(c: &Client, n: i32, age: &str) {
    c.execute(
        "WITH rows AS (
             INSERT INTO webhook.outbox (event_id, event_code, payload, endpoint_id, status, attempts,
                                         delivered_at, created_at, next_attempt_at, response_status)
             SELECT 'evt_h' || g || '_' || $2::text, 'add_credits', '{\"buyerId\": \"0000\"}', 1, 'delivered', 1,
                    now() - $2::text::interval, now() - $2::text::interval, now() - $2::text::interval, 200
               FROM generate_series(1, $1) g
             RETURNING id, delivered_at)
         INSERT INTO webhook.attempts (outbox_id, attempt, started_at, duration_ms, response_status)
         SELECT id, 1, delivered_at, 5, 200 FROM rows",
        &[&n, &age],
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn retention_removes_old_history_and_keeps_dead_and_recent_rows() {
    let db = TestDb::new().await;
    let c = db.client().await;
    c.batch_execute(
        "INSERT INTO webhook.endpoints (name, url, events) VALUES ('crm', 'http://127.0.0.1:9/', '{add_credits}')",
    )
    .await
    .unwrap();
    delivered_history(&c, 25, "3 hours").await; // removed (with their attempts)
    delivered_history(&c, 4, "10 minutes").await; // kept
                                                  // Old dead and pending rows stay whatever their age; the dead row's
                                                  // attempt older than the attempts age goes, its recent one stays.
    c.batch_execute(
        "INSERT INTO webhook.outbox (event_id, event_code, payload, endpoint_id, status, attempts,
                                     created_at, next_attempt_at)
         VALUES ('evt_dead', 'add_credits', '{}', 1, 'dead', 2, now() - interval '3 days', now()),
                -- Waiting for a retry tomorrow: the relay leaves it alone.
                ('evt_pending', 'add_credits', '{}', 1, 'pending', 1, now() - interval '3 days',
                 now() + interval '1 day');
         INSERT INTO webhook.attempts (outbox_id, attempt, started_at, duration_ms, error)
         SELECT id, a, now() - CASE a WHEN 1 THEN interval '3 days' ELSE interval '1 minute' END, 5, 'boom'
           FROM webhook.outbox, generate_series(1, 2) a WHERE event_id = 'evt_dead';",
    )
    .await
    .unwrap();

    // One statement deletes at most one batch.
    let dbh = Db::new(db.url.clone(), std::sync::Arc::new(Metrics::new()));
    let conn = dbh.conn().await.unwrap();
    let n = conn
        .client
        .execute(
            include_str!("../../sql/retention_delivered.sql"),
            &[&3600.0f64, &7i64],
        )
        .await
        .unwrap();
    assert_eq!(n, 7, "a batch is bounded");

    // The relay's own task does the rest, batch after batch.
    let rx = Receiver::ok().await;
    let relay = start(
        &db,
        config(
            // poll_interval first: after [retention] it would belong to that table.
            "poll_interval = \"200ms\"\n[retention]\ndelivered = \"1h\"\nattempts = \"2h\"\n\
             batch = 5\ninterval = \"100ms\"\n",
            &[("crm", &rx.url, "")],
        ),
    )
    .await;
    wait_for("old delivered rows removed", WAIT, || async {
        (count_status(&c, "delivered").await == 4).then_some(())
    })
    .await;
    wait_for("old attempts removed", WAIT, || async {
        let n = one_i64(
            &c,
            "SELECT count(*) FROM webhook.attempts WHERE started_at < now() - interval '2 hours'",
        )
        .await;
        (n == 0).then_some(())
    })
    .await;
    relay.shutdown().await;

    assert_eq!(
        count_status(&c, "dead").await,
        1,
        "dead rows are never removed"
    );
    assert_eq!(
        one_i64(
            &c,
            "SELECT count(*) FROM webhook.outbox WHERE event_id = 'evt_pending'"
        )
        .await,
        1
    );
    assert_eq!(
        one_i64(&c, "SELECT count(*) FROM webhook.attempts").await,
        4 + 1,
        "the recent rows' attempts and the dead row's recent attempt stay"
    );
    assert_eq!(
        one_i64(
            &c,
            "SELECT count(*) FROM webhook.outbox WHERE event_id LIKE 'evt_h%_3 hours'"
        )
        .await,
        0
    );

    // "forever" turns it off.
    let policy = RetentionConfig {
        delivered: None,
        attempts: None,
        ..RetentionConfig::default()
    };
    let swept = outbox_relay::retention::sweep(&dbh, &policy, &Default::default())
        .await
        .unwrap();
    assert_eq!(swept, Default::default());
}

/// Buffers (shared hit + read) one claim touches, measured with
/// EXPLAIN (ANALYZE, BUFFERS) inside a transaction that is rolled back: for
/// the whole statement, and for the scan that finds the due rows.
struct ClaimCost {
    total: i64,
    scan: i64,
    plan: String,
}

async fn claim_cost(c: &Client) -> ClaimCost {
    c.batch_execute("BEGIN").await.unwrap();
    let plan: Value = c
        .query_one(
            "EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) EXECUTE claim(1, 100, 30, 'test')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    c.batch_execute("ROLLBACK").await.unwrap();
    fn buffers(node: &Value) -> i64 {
        node["Shared Hit Blocks"].as_i64().unwrap() + node["Shared Read Blocks"].as_i64().unwrap()
    }
    // The first scan of the outbox, depth first: the one in the `due` CTE.
    fn scan(node: &Value) -> Option<&Value> {
        match node["Plans"].as_array() {
            Some(children) => children.iter().find_map(scan),
            None => (node["Relation Name"] == "outbox").then_some(node),
        }
    }
    let top = &plan[0]["Plan"];
    let text = serde_json::to_string_pretty(&plan).unwrap();
    let scan = scan(top).unwrap_or_else(|| panic!("no scan of the outbox:\n{text}"));
    ClaimCost {
        total: buffers(top),
        scan: buffers(scan),
        plan: text,
    }
}

#[tokio::test]
async fn a_large_delivered_history_does_not_slow_claiming_and_retention_clears_it() {
    let db = TestDb::new().await;
    let c = db.client().await;
    c.batch_execute(
        "INSERT INTO webhook.endpoints (name, url, events) VALUES ('crm', 'http://127.0.0.1:9/', '{add_credits}');
         INSERT INTO webhook.outbox (event_id, event_code, payload, endpoint_id)
         SELECT 'evt_p' || g, 'add_credits', '{}', 1 FROM generate_series(1, 50) g;
         ANALYZE webhook.outbox;",
    )
    .await
    .unwrap();
    let sql = include_str!("../../sql/claim.sql");
    c.batch_execute(&format!("PREPARE claim(int, int, float8, text) AS {sql}"))
        .await
        .unwrap();
    let small = claim_cost(&c).await;

    delivered_history(&c, 300_000, "10 days").await;
    c.batch_execute("ANALYZE webhook.outbox; ANALYZE webhook.attempts;")
        .await
        .unwrap();
    let large = claim_cost(&c).await;
    let pages = one_i64(
        &c,
        "SELECT pg_relation_size('webhook.outbox') / current_setting('block_size')::bigint",
    )
    .await;
    eprintln!(
        "claiming 50 rows: scan {} / total {} buffers without history, scan {} / total {} \
         with 300000 delivered rows ({pages} heap pages)",
        small.scan, small.total, large.scan, large.total
    );
    assert!(
        large.plan.contains("outbox_queue") && !large.plan.contains("Seq Scan"),
        "claim does not use the partial index of pending rows:\n{}",
        large.plan
    );
    // Finding the due rows reads that index and the 50 rows' pages: a
    // handful of buffers, whatever the history.
    assert!(
        large.scan <= 10,
        "the scan for due rows touched {} buffers:\n{}",
        large.scan,
        large.plan
    );
    // The whole statement grows only by the extra depth of the indexes that
    // the claimed rows' new versions go into (log n), never with a scan of
    // the history: far below the table's size.
    assert!(
        large.total <= small.total * 3 && large.total * 4 < pages,
        "claiming touched {} buffers without history and {} with it:\n{}",
        small.total,
        large.total,
        large.plan
    );

    // Retention removes the whole history in bounded batches.
    let dbh = Db::new(db.url.clone(), std::sync::Arc::new(Metrics::new()));
    let policy = RetentionConfig {
        delivered: Some(Duration::from_secs(7 * 24 * 3600)),
        attempts: Some(Duration::from_secs(7 * 24 * 3600)),
        batch: 5000,
        interval: Duration::from_secs(60),
    };
    let swept = outbox_relay::retention::sweep(&dbh, &policy, &Default::default())
        .await
        .unwrap();
    assert_eq!(swept.delivered, 300_000);
    assert_eq!(
        one_i64(&c, "SELECT count(*) FROM webhook.attempts").await,
        0
    );
    assert_eq!(count_status(&c, "pending").await, 50);
}

#[tokio::test]
async fn run_refuses_a_schema_older_than_the_binary_with_advice() {
    let db = TestDb::new().await;
    let c = db.client().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("relay.toml");
    std::fs::write(
        &path,
        config_text("", &[("crm", "http://127.0.0.1:9/", "")]),
    )
    .unwrap();
    let path = path.to_str().unwrap().to_string();

    // Only V1 applied (as a database migrated by an older binary).
    c.batch_execute("DELETE FROM webhook.schema_history WHERE version > 1")
        .await
        .unwrap();
    let out = cli(&["run", "--config", &path, "--database-url", &db.url], &[]).await;
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains(&format!(
            "webhook schema is at version 1, this relay needs {}",
            outbox_relay::migrate::expected_version()
        )) && err.contains("run `outbox-relay migrate`"),
        "{err}"
    );

    // No webhook schema at all.
    c.batch_execute("DROP SCHEMA webhook CASCADE")
        .await
        .unwrap();
    let out = cli(&["run", "--config", &path, "--database-url", &db.url], &[]).await;
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("run `outbox-relay migrate`"),
        "{}",
        stderr(&out)
    );
    // status and replay give the same advice.
    let out = cli(&["status", "--database-url", &db.url], &[]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("run `outbox-relay migrate`"),
        "{}",
        stderr(&out)
    );
}

#[tokio::test]
async fn json_logs_are_one_object_per_line_with_span_fields() {
    let db = TestDb::new().await;
    let c = db.client().await;
    let rx = Receiver::failing_first(1, 500).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("relay.toml");
    std::fs::write(
        &path,
        config_text("", &[("crm", &rx.url, "retry_initial = \"50ms\"")]),
    )
    .unwrap();
    let log = dir.path().join("relay.log");
    let mut child = Command::new(BIN)
        .args([
            "run",
            "--log-format",
            "json",
            "--log-level",
            "info",
            "--config",
        ])
        .arg(&path)
        .env("DATABASE_URL", &db.url)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    wait_for("the relay to sync its endpoints", WAIT, || async {
        let n = one_i64(&c, "SELECT count(*) FROM webhook.endpoints").await;
        (n > 0).then_some(())
    })
    .await;
    let event_id: String = c
        .query_one(
            "SELECT webhook.enqueue('add_credits', '{\"secretish\": \"payload-marker-77\"}')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    wait_for("delivered after one retry", WAIT, || async {
        (count_status(&c, "delivered").await == 1).then_some(())
    })
    .await;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    let text = std::fs::read_to_string(&log).unwrap();
    assert_eq!(status.code(), Some(0), "{text}");

    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert!(lines.len() >= 3, "{text}");
    for l in &lines {
        assert!(l["timestamp"].is_string() && l["level"].is_string(), "{l}");
        assert_ne!(l["level"], "DEBUG", "--log-level info: {l}");
    }
    let retry = lines
        .iter()
        .find(|l| l["fields"]["message"] == "attempt failed; will retry")
        .unwrap_or_else(|| panic!("no retry line in:\n{text}"));
    assert_eq!(retry["span"]["event_id"], event_id.as_str(), "{retry}");
    assert_eq!(retry["span"]["endpoint"], "crm", "{retry}");
    assert_eq!(retry["span"]["attempt"], 1, "{retry}");
    assert!(
        !text.contains("payload-marker-77"),
        "a payload reached the log"
    );
    assert!(
        !text.contains(SECRET.strip_prefix("whsec_").unwrap()),
        "a secret reached the log"
    );
}

#[test]
fn the_packaging_examples_fit_the_binary() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let read = |path: &str| std::fs::read_to_string(root.join(path)).unwrap();

    // The example config is valid with the credentials the unit loads: each
    // LoadCredential= id becomes a file in a stand-in $CREDENTIALS_DIRECTORY.
    let unit = read("examples/outbox-relay.service");
    let credentials = tempfile::tempdir().unwrap();
    let tokens = ["admin-token-0123456789abcdef", "crm-token-0123456789abcdef"];
    let mut ids = Vec::new();
    for line in unit.lines() {
        if let Some(spec) = line.strip_prefix("LoadCredential=") {
            let (id, source) = spec.split_once(':').expect("LoadCredential=ID:PATH");
            assert!(source.starts_with("/etc/outbox-relay/"), "{line}");
            let value = match id {
                "database-url" => "postgres://relay@db.internal/app?sslmode=verify-full",
                "crm-webhook-secret" => SECRET,
                "api-admin-token" => tokens[0],
                _ => tokens[1],
            };
            std::fs::write(credentials.path().join(id), format!("{value}\n")).unwrap();
            ids.push(id.to_string());
        }
    }
    let config = read("examples/relay.toml");
    for line in config.lines().filter(|l| l.contains("_file = ")) {
        assert!(
            ids.iter().any(|id| line.ends_with(&format!("= \"{id}\""))),
            "{line} names no credential the unit loads"
        );
    }
    let cfg = outbox_relay::config::Config::parse_in(
        &config,
        "examples/relay.toml",
        &|name| panic!("examples/relay.toml reads the environment variable {name}"),
        credentials.path(),
    )
    .unwrap();
    assert!(cfg
        .database_url
        .is_some_and(|u| u.contains("sslmode=verify-full")));
    assert!(cfg.api_admin_token.is_some() && cfg.endpoints[0].api_token.is_some());

    // The unit stops with SIGTERM and waits long enough for a graceful stop.
    let value = |key: &str| {
        unit.lines()
            .find_map(|l| l.strip_prefix(&format!("{key}=")))
            .unwrap_or_else(|| panic!("the unit has no {key}="))
            .to_string()
    };
    assert_eq!(value("KillSignal"), "SIGTERM");
    assert_eq!(value("Restart"), "on-failure");
    assert!(value("EnvironmentFile").starts_with("/etc/outbox-relay/"));
    assert!(value("ExecStart").contains(" run --config /etc/outbox-relay/relay.toml"));
    let stop = humantime::parse_duration(&value("TimeoutStopSec")).unwrap();
    assert!(
        stop > cfg.shutdown_timeout + outbox_relay::relay::FINAL_WRITE_GRACE,
        "TimeoutStopSec {stop:?} does not cover a graceful stop"
    );
    // systemd's own check, where systemd is installed.
    if let Ok(analyze) = which("systemd-analyze") {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("outbox-relay.service");
        std::fs::write(&path, unit.replace("/usr/local/bin/outbox-relay", BIN)).unwrap();
        let out = Command::new(analyze)
            .arg("verify")
            .arg(&path)
            .output()
            .unwrap();
        let text = format!("{}{}", stdout(&out), stderr(&out));
        assert!(
            out.status.success() && text.trim().is_empty(),
            "systemd-analyze verify: {text}"
        );
    }

    // The Dockerfile builds in one stage and runs unprivileged in another, and
    // copies every directory the build needs: the binaries' sources, and what
    // the relay embeds (sql/, migrations/).
    let docker = read("Dockerfile");
    assert_eq!(docker.lines().filter(|l| l.starts_with("FROM ")).count(), 2);
    assert!(docker.contains("COPY --from=build "));
    assert!(docker.contains("USER 10001"));
    assert!(docker.contains("ENTRYPOINT [\"outbox-relay\"]"));
    let manifest: toml::Table = toml::from_str(&read("Cargo.toml")).unwrap();
    let mut dirs = vec!["src".to_string(), "sql".into(), "migrations".into()];
    for bin in manifest["bin"].as_array().unwrap() {
        let path = bin["path"].as_str().unwrap();
        dirs.push(path.split('/').next().unwrap().to_string());
    }
    for dir in dirs {
        assert!(
            docker.contains(&format!("COPY {dir} ./{dir}")),
            "the Dockerfile does not copy {dir}/"
        );
    }
}

/// The path of a program on PATH.
fn which(program: &str) -> Result<std::path::PathBuf, ()> {
    std::env::var_os("PATH")
        .and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|dir| dir.join(program))
                .find(|p| p.is_file())
        })
        .ok_or(())
}
