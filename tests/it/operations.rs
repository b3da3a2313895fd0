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
use crate::support::{
    cli, first_column, hold, one_i64, park, redeliver, rows, set_dead, sql, stderr, stdout,
    wait_for, TestDb, BIN,
};

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
    set_dead(&c, &[1, 2, 3]).await;
    c.batch_execute(
        "UPDATE webhook.outbox SET attempts = 8, last_error = 'HTTP 503',
                response_status = 503 WHERE id IN (1, 2, 3);
         UPDATE webhook.outbox SET status = 'delivered', attempts = 1, delivered_at = now() WHERE id = 6;
         UPDATE webhook.outbox SET created_at = now() - interval '3 days' WHERE id = 3;
         INSERT INTO webhook.attempts (outbox_id, attempt, started_at, duration_ms, response_status, error)
         SELECT id, 8, now(), 10, 503, 'HTTP 503' FROM webhook.outbox WHERE id IN (1, 2, 3);",
    )
    .await
    .unwrap();
    let before: Vec<String> =
        first_column(&c, "SELECT event_id FROM webhook.outbox ORDER BY id").await;

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
    // Sent again outside its key's order: a redelivery due now, no longer
    // among the dead rows, marked as replayed.
    assert_eq!(
        one_i64(
            &c,
            "SELECT count(*) FROM webhook.redeliveries r JOIN webhook.outbox o ON o.id = r.outbox_id
              WHERE r.outbox_id = 1 AND r.endpoint_id = 1 AND r.next_attempt_at <= now()
                AND o.replayed_at IS NOT NULL"
        )
        .await,
        1
    );
    assert_eq!(
        one_i64(&c, "SELECT count(*) FROM webhook.dead_rows").await,
        2
    );

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
    assert_eq!(
        one_i64(&c, "SELECT count(*) FROM webhook.dead_rows").await,
        0
    );
    assert_eq!(
        one_i64(
            &c,
            "SELECT count(*) FROM webhook.redeliveries WHERE outbox_id IN (1, 2, 3, 6)"
        )
        .await,
        4,
        "every replayed row waits outside its key's order"
    );

    // What they refuse, and why.
    let msg = db_error(&c, "SELECT webhook.replay(999)").await;
    assert!(msg.contains("no outbox row with id 999"), "{msg}");
    let msg = db_error(&c, "SELECT webhook.replay('nope')").await;
    assert!(msg.contains("no endpoint named 'nope'"), "{msg}");
    let msg = db_error(&c, "SELECT webhook.replay('a', 'in_flight')").await;
    assert!(msg.contains("must be dead, delivered or pending"), "{msg}");
}

/// Replaying pending rows retries them now with a fresh budget, each where
/// it waits: a held head keeps its key (and its place in the key's order),
/// a redelivery is due now, and a row the relay has not attempted is left
/// exactly as it is (a relay may hold it in memory, fenced by its version).
#[tokio::test]
async fn replaying_pending_rows_retries_them_where_they_wait() {
    let db = TestDb::new().await;
    let c = db.client().await;
    two_endpoints(&c, 3).await;
    // a: row 1 holds key k1 (a later event of k1, row 7, parked behind it),
    // row 3 waits as a redelivery, row 5 has not been attempted.
    c.execute("SELECT webhook.enqueue('add_credits', '{}', 'k1')", &[])
        .await
        .unwrap();
    hold(&c, 1, 3, "1 hour").await;
    park(&c, 7).await;
    redeliver(&c, 3, 2, "1 hour").await;
    let version = |id: i64| {
        let c = &c;
        async move {
            c.query_one(
                "SELECT ctid::text FROM webhook.outbox WHERE id = $1",
                &[&id],
            )
            .await
            .unwrap()
            .get::<_, String>(0)
        }
    };
    let (v5, v7) = (version(5).await, version(7).await);

    assert_eq!(
        one_i64(&c, "SELECT webhook.replay('a', 'pending', dry_run => true)").await,
        4
    );
    assert_eq!(
        one_i64(&c, "SELECT webhook.replay('a', 'pending')").await,
        4
    );
    assert_eq!(
        rows(
            &c,
            "SELECT id, attempts, next_attempt_at <= now() FROM webhook.outbox WHERE endpoint_id = 1 ORDER BY id"
        )
        .await,
        ["(1,0,t)", "(3,0,t)", "(5,0,t)", "(7,0,t)"],
        "a fresh budget, due now"
    );
    assert_eq!(
        rows(
            &c,
            "SELECT ordering_key, outbox_id, next_attempt_at <= now() FROM webhook.holds"
        )
        .await,
        ["(k1,1,t)"],
        "the head keeps its key, due now"
    );
    assert_eq!(
        one_i64(
            &c,
            "SELECT count(*) FROM webhook.parked WHERE outbox_id = 7"
        )
        .await,
        1,
        "what waits behind it still waits"
    );
    assert_eq!(
        one_i64(
            &c,
            "SELECT count(*) FROM webhook.redeliveries WHERE outbox_id = 3 AND next_attempt_at <= now()"
        )
        .await,
        1
    );
    assert_eq!(
        (version(5).await, version(7).await),
        (v5, v7),
        "rows with their whole budget are not rewritten"
    );
    assert_eq!(
        one_i64(
            &c,
            "SELECT count(*) FROM webhook.outbox WHERE replayed_at IS NOT NULL"
        )
        .await,
        0,
        "pending rows keep their order: none is marked replayed"
    );

    // One row by id: the same rules; nothing is in flight on a row any
    // more, so nothing is refused.
    hold(&c, 2, 1, "1 hour").await;
    assert_eq!(one_i64(&c, "SELECT webhook.replay(2)").await, 1);
    assert_eq!(
        one_i64(
            &c,
            "SELECT count(*) FROM webhook.holds h JOIN webhook.outbox o ON o.id = h.outbox_id
              WHERE h.outbox_id = 2 AND h.next_attempt_at <= now() AND o.attempts = 0"
        )
        .await,
        1
    );
}

#[tokio::test]
async fn purge_dead_removes_only_dead_rows_with_their_attempts() {
    let db = TestDb::new().await;
    let c = db.client().await;
    two_endpoints(&c, 3).await;
    set_dead(&c, &[1, 2, 3, 4]).await;
    c.batch_execute(
        "UPDATE webhook.outbox SET status = 'delivered', delivered_at = now() WHERE id = 5;
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
    assert_eq!(
        one_i64(&c, "SELECT count(*) FROM webhook.dead_rows").await,
        0
    );
    let msg = db_error(&c, "SELECT webhook.purge_dead('nope')").await;
    assert!(msg.contains("no endpoint named 'nope'"), "{msg}");
}

#[tokio::test]
async fn views_show_backlog_health_and_recent_failures() {
    let db = TestDb::new().await;
    let c = db.client().await;
    two_endpoints(&c, 6).await;
    // A later event of key k4 (rows 13 for a, 14 for b).
    c.execute("SELECT webhook.enqueue('add_credits', '{}', 'k4')", &[])
        .await
        .unwrap();
    // a: rows 1,3,5,7,9,11,13. Two dead; row 5 being sent (only the relay
    // knows which: its partition reports one in flight; another partition's
    // report under an expired lease no longer counts); row 7 holds key k4
    // until a retry in ten minutes, row 13 parked behind it; row 11 a
    // redelivery due in a minute; row 9 due, written an hour ago.
    set_dead(&c, &[1, 3]).await;
    hold(&c, 7, 2, "10 minutes").await;
    park(&c, 13).await;
    redeliver(&c, 11, 1, "1 minute").await;
    c.batch_execute(
        "INSERT INTO webhook.partitions (endpoint_id, partition, owner, lease_expires_at, in_flight) VALUES
           (1, 0, 'relay-x', now() + interval '1 minute', 1),
           (1, 1, 'relay-y', now() - interval '1 minute', 5);
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
        (5, 2, 1, 2),
        "pending 5, 7, 9, 11, 13; due 5 and 9; one in flight; dead 1 and 3"
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

    assert_eq!(
        rows(
            &c,
            "SELECT endpoint, ordering_key, outbox_id, attempts, next_attempt_at > now() + interval '9 minutes',
                    last_error, parked
               FROM webhook.held_keys"
        )
        .await,
        [r#"(a,k4,7,2,t,"HTTP 503",1)"#],
        "key k4 held by row 7 (two attempts, due in ten minutes), one event parked behind it"
    );

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
    // a: row 1 dead, row 3 (key k2) failed once and holds its key.
    set_dead(&c, &[1]).await;
    hold(&c, 3, 1, "5 minutes").await;
    c.batch_execute(
        "UPDATE webhook.outbox SET status = 'delivered', delivered_at = now() WHERE id IN (2, 4);
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
    assert_eq!(a["held_keys"]["count"], 1);
    assert_eq!(a["held_keys"]["oldest"]["ordering_key"], "k2");
    assert_eq!(a["held_keys"]["oldest"]["outbox_id"], 3);
    assert!(a["held_keys"]["oldest"]["since"].is_string());
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
    assert_eq!(
        b["held_keys"],
        serde_json::json!({"count": 0, "oldest": null})
    );

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
    assert_eq!(
        cells(lines[1]).last().unwrap(),
        "1",
        "a's held keys: {text}"
    );
    assert!(
        text.contains("Held keys: a has 1; held longest: key \"k2\" by row 3 since "),
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
    let ids: Vec<i64> = first_column(&c, "SELECT id FROM webhook.outbox ORDER BY id").await;

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
    // Rows 1..25: delivered three hours ago, removed with their attempts.
    delivered_history(&c, 25, "3 hours").await;
    // Rows 26 and 27: old dead and pending rows stay whatever their age; the
    // dead row's attempt older than the attempts age goes, its recent one
    // stays.
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
    // Rows 28..31 delivered ten minutes ago (kept), then row 32, old: the
    // age counts from created_at, and a sweep stops at the first young row.
    delivered_history(&c, 4, "10 minutes").await;
    delivered_history(&c, 1, "4 hours").await;

    // One statement looks at one window of rows and removes the old
    // delivered ones in it, with their attempts.
    let dbh = Db::new(db.url.clone(), std::sync::Arc::new(Metrics::new()));
    let conn = dbh.conn().await.unwrap();
    let r = conn
        .client
        .query_one(
            include_str!("../../sql/retention_delivered.sql"),
            &[&3600.0f64, &7i64, &0i64],
        )
        .await
        .unwrap();
    assert_eq!(
        (r.get::<_, i64>(0), r.get::<_, Option<i64>>(1)),
        (7, Some(7)),
        "a batch is bounded, and says where the next one starts"
    );
    assert_eq!(
        one_i64(
            &c,
            "SELECT count(*) FROM webhook.attempts WHERE outbox_id <= 7"
        )
        .await,
        0,
        "their attempts went in the same statement"
    );

    // A sweep does the rest, window after window.
    let policy = RetentionConfig {
        delivered: Some(Duration::from_secs(3600)),
        attempts: Some(Duration::from_secs(2 * 3600)),
        batch: 5,
        interval: Duration::from_secs(60),
    };
    let swept = outbox_relay::retention::sweep(&dbh, &policy, &Default::default())
        .await
        .unwrap();
    assert_eq!(
        (swept.delivered, swept.attempts),
        (18, 2),
        "rows 8..25; the dead row's and row 32's attempts older than two hours"
    );
    let left: Vec<(i64, String)> = c
        .query("SELECT id, status FROM webhook.outbox ORDER BY id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let expected: Vec<(i64, String)> = [(26, "dead"), (27, "pending")]
        .into_iter()
        .chain((28..=32).map(|id| (id, "delivered")))
        .map(|(id, s)| (id, s.to_string()))
        .collect();
    assert_eq!(
        left, expected,
        "dead, pending and young rows stay; the old row behind the young ones waits for them"
    );
    assert_eq!(
        one_i64(&c, "SELECT count(*) FROM webhook.attempts").await,
        4 + 1,
        "the young rows' attempts and the dead row's recent attempt stay"
    );

    // A row that was pending when a sweep passed it is looked at again by
    // the next sweep, once delivered.
    c.batch_execute(
        "UPDATE webhook.outbox SET status = 'delivered', delivered_at = now() WHERE id = 27",
    )
    .await
    .unwrap();
    let swept = outbox_relay::retention::sweep(&dbh, &policy, &Default::default())
        .await
        .unwrap();
    assert_eq!(swept.delivered, 1);

    // The relay's own task sweeps by itself: once the young rows are old too,
    // every delivered row goes.
    c.batch_execute(
        "UPDATE webhook.outbox SET created_at = now() - interval '3 hours' WHERE id BETWEEN 28 AND 31",
    )
    .await
    .unwrap();
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
        (count_status(&c, "delivered").await == 0).then_some(())
    })
    .await;
    relay.shutdown().await;
    assert_eq!(
        count_status(&c, "dead").await,
        1,
        "dead rows are never removed"
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

/// Buffers (shared hit + read) a statement touches and its plan, from
/// EXPLAIN (ANALYZE, BUFFERS) inside a transaction that is rolled back (the
/// buffers of what a function runs count in its caller's node).
async fn cost(c: &Client, sql: &str) -> (i64, String) {
    c.batch_execute("BEGIN").await.unwrap();
    let plan: Value = c
        .query_one(
            &format!("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {sql}"),
            &[],
        )
        .await
        .unwrap()
        .get(0);
    c.batch_execute("ROLLBACK").await.unwrap();
    let top = &plan[0]["Plan"];
    let buffers =
        top["Shared Hit Blocks"].as_i64().unwrap() + top["Shared Read Blocks"].as_i64().unwrap();
    (buffers, serde_json::to_string_pretty(&plan).unwrap())
}

/// The DBA's statements over what is still to deliver, each as the relay or
/// a DBA runs it. The first three read the outbox through outbox_endpoint_xid.
const UNSETTLED_READS: &[(&str, bool)] = &[
    ("SELECT * FROM webhook.backlog", true),
    ("EXECUTE row_counts('{crm}')", true),
    ("EXECUTE page_endpoints(15)", true),
    ("EXECUTE events(1, 0, 'pending', NULL, 100)", true),
    ("EXECUTE events(1, 0, 'dead', NULL, 100)", false),
    (
        "SELECT webhook.replay('crm', 'pending', dry_run => true)",
        false,
    ),
    ("SELECT webhook.replay('crm', dry_run => true)", false),
    ("SELECT webhook.purge_dead('crm', dry_run => true)", false),
];

/// The tables a plan reads by a sequential scan.
fn seq_scans(node: &Value) -> Vec<String> {
    let mut found = Vec::new();
    match node {
        Value::Object(map) => {
            if map.get("Node Type").and_then(Value::as_str) == Some("Seq Scan") {
                if let Some(t) = map.get("Relation Name").and_then(Value::as_str) {
                    found.push(t.to_string());
                }
            }
            map.values().for_each(|v| found.extend(seq_scans(v)));
        }
        Value::Array(items) => items.iter().for_each(|v| found.extend(seq_scans(v))),
        _ => {}
    }
    found
}

async fn unsettled_costs(c: &Client) -> Vec<(i64, String)> {
    let mut costs = Vec::new();
    for (sql, _) in UNSETTLED_READS {
        costs.push(cost(c, sql).await);
    }
    costs
}

/// A relay that has delivered a long history leaves it behind its
/// partitions' ticks: what the DBA's views, /metrics, the status page, the
/// API's pages of pending and dead rows, replay and purge read stays the
/// same few pages (no index on status any more: they read the queue's
/// tables and the rows after the ticks). Retention then clears the history
/// in bounded batches.
#[tokio::test]
async fn a_large_delivered_history_does_not_slow_the_dba_reads_and_retention_clears_it() {
    let db = TestDb::new().await;
    let c = db.client().await;
    // 300,000 rows delivered ten days ago, then crm's partitions' ticks (the
    // relay read all of that), then 50 rows still to deliver: one of them
    // dead, one holding its key, one parked behind it.
    c.batch_execute(
        "INSERT INTO webhook.endpoints (name, url, events) VALUES ('crm', 'http://127.0.0.1:9/', '{add_credits}')",
    )
    .await
    .unwrap();
    delivered_history(&c, 300_000, "10 days").await;
    c.batch_execute(
        "INSERT INTO webhook.partitions (endpoint_id, partition, tick)
         SELECT 1, p, pg_current_snapshot() FROM generate_series(0, 15) p;
         INSERT INTO webhook.outbox (event_id, event_code, payload, endpoint_id, ordering_key)
         SELECT 'evt_p' || g, 'add_credits', '{}', 1, 'k' || (g % 40) FROM generate_series(1, 50) g;",
    )
    .await
    .unwrap();
    let row = |g: i64| 300_000 + g;
    set_dead(&c, &[row(1)]).await;
    hold(&c, row(2), 1, "1 minute").await;
    park(&c, row(42)).await;
    for (name, types, file) in [
        (
            "row_counts",
            "text[]",
            include_str!("../../sql/row_counts.sql"),
        ),
        (
            "page_endpoints",
            "int",
            include_str!("../../sql/page_endpoints.sql"),
        ),
        (
            "events",
            "int, bigint, text, timestamptz, bigint",
            include_str!("../../sql/api_endpoint_events.sql"),
        ),
    ] {
        c.batch_execute(&format!("PREPARE {name}({types}) AS {file}"))
            .await
            .unwrap();
    }
    // As autovacuum and the relay's endpoint sync leave the statistics.
    for sql in [
        "VACUUM ANALYZE webhook.outbox",
        "ANALYZE webhook.attempts",
        "ANALYZE webhook.endpoints",
    ] {
        c.batch_execute(sql).await.unwrap();
    }
    let large = unsettled_costs(&c).await;
    let pages = one_i64(
        &c,
        "SELECT pg_relation_size('webhook.outbox') / current_setting('block_size')::bigint",
    )
    .await;
    for ((sql, by_xid), (large, plan)) in UNSETTLED_READS.iter().zip(&large) {
        eprintln!("{sql}: {large} buffers with 300000 delivered rows ({pages} heap pages)");
        if *by_xid {
            assert!(
                plan.contains("outbox_endpoint_xid"),
                "{sql} does not read the rows after the ticks by outbox_endpoint_xid:\n{plan}"
            );
        }
        let plan_json: Value = serde_json::from_str(plan).unwrap();
        let scans = seq_scans(&plan_json);
        assert!(
            !scans.iter().any(|t| t == "outbox" || t == "attempts"),
            "{sql} scans {scans:?}:\n{plan}"
        );
        // Index look-ups for each of the 50 rows still to deliver (a few
        // buffers each: the outbox row, its hold, parked or redelivery
        // entry), never a scan of the history: far below the table's size.
        assert!(
            *large <= 50 * 10 + 100 && large * 20 < pages,
            "{sql} touched {large} buffers:\n{plan}"
        );
    }

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
    assert_eq!(count_status(&c, "pending").await, 49);
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
    sql(&c, "DELETE FROM webhook.schema_history WHERE version > 1").await;
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
    sql(&c, "DROP SCHEMA webhook CASCADE").await;
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
