//! The relay's schema: migrations, the claim index, enqueue.

use crate::support::TestDb;

#[tokio::test]
async fn migrations_are_idempotent_and_versioned() {
    let db = TestDb::new().await;
    let mut c = db.client().await;
    // The template is already migrated: a second run applies nothing.
    let applied = outbox_relay::migrate::run_migrations(&mut c).await.unwrap();
    assert!(applied.is_empty(), "{applied:?}");
    outbox_relay::migrate::check_schema_version(&c)
        .await
        .unwrap();
    for table in [
        "webhook.endpoints",
        "webhook.outbox",
        "webhook.attempts",
        "webhook.partitions",
        "webhook.holds",
        "webhook.parked",
        "webhook.redeliveries",
        "webhook.dead_rows",
        "webhook.held_keys",
        "webhook.backlog",
    ] {
        let exists: bool = c
            .query_one("SELECT to_regclass($1) IS NOT NULL", &[&table])
            .await
            .unwrap()
            .get(0);
        assert!(exists, "{table}");
    }
}

#[tokio::test]
async fn an_unmigrated_database_is_refused_with_advice() {
    let db = TestDb::new().await;
    let c = db.client().await;
    c.batch_execute("DROP SCHEMA webhook CASCADE")
        .await
        .unwrap();
    let err = outbox_relay::migrate::check_schema_version(&c)
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("run `outbox-relay migrate`"),
        "{err}"
    );
}

#[tokio::test]
async fn status_is_checked() {
    let db = TestDb::new().await;
    let c = db.client().await;
    c.batch_execute("INSERT INTO webhook.endpoints (name, url, events) VALUES ('e', 'http://127.0.0.1:1/', '{add_credits}')")
        .await
        .unwrap();
    // 'in_flight' is no status any more (V10): an attempt in progress lives
    // in the relay's memory only.
    for status in ["lost", "in_flight"] {
        let err = c
            .execute(
                "INSERT INTO webhook.outbox (event_id, event_code, payload, endpoint_id, status)
                 SELECT 'evt_x', 'add_credits', '{}', endpoint_id, $1::text FROM webhook.endpoints",
                &[&status],
            )
            .await
            .unwrap_err();
        assert!(
            err.as_db_error()
                .unwrap()
                .message()
                .contains("check constraint"),
            "{status}: {err}"
        );
    }
}

#[tokio::test]
async fn enqueue_routes_and_returns_the_event_id() {
    let db = TestDb::new().await;
    let c = db.client().await;
    c.batch_execute(
        "INSERT INTO webhook.endpoints (name, url, events) VALUES
           ('one', 'http://127.0.0.1:1/', '{order_shipped}'),
           ('two', 'http://127.0.0.1:1/', '{order_shipped,other}')",
    )
    .await
    .unwrap();
    let id: Option<String> = c
        .query_one(
            "SELECT webhook.enqueue('order_shipped', '{\"order\": 7}', 'o-7')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let id = id.expect("an event id");
    let rows = c
        .query(
            "SELECT event_id, payload::text, ordering_key FROM webhook.outbox ORDER BY id",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), 2);
    for r in &rows {
        assert_eq!(r.get::<_, String>(0), id);
        assert_eq!(r.get::<_, String>(1), "{\"order\": 7}");
        assert_eq!(r.get::<_, String>(2), "o-7");
    }
    let none: Option<String> = c
        .query_one("SELECT webhook.enqueue('nobody_listens', '{}')", &[])
        .await
        .unwrap()
        .get(0);
    assert!(none.is_none());
    let n: i64 = c
        .query_one("SELECT count(*) FROM webhook.outbox", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 2);
}

/// Event ids are `evt_` + 12 hex digits of Unix milliseconds + 20 random hex
/// digits: unique, and in creation order across transactions.
#[tokio::test]
async fn event_ids_carry_their_time_and_sort_by_it() {
    let db = TestDb::new().await;
    let c = db.client().await;
    c.batch_execute(
        "INSERT INTO webhook.endpoints (name, url, events) VALUES ('one', 'http://127.0.0.1:1/', '{e}')",
    )
    .await
    .unwrap();
    let mut ids = Vec::new();
    for _ in 0..3 {
        // Separate transactions, a few milliseconds apart.
        let id: String = c
            .query_one(
                "SELECT webhook.enqueue('e', '{}') FROM pg_sleep(0.003)",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        ids.push(id);
    }
    let now_ms: i64 = c
        .query_one(
            "SELECT (date_part('epoch', clock_timestamp()) * 1000)::bigint",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    for id in &ids {
        let hex = id.strip_prefix("evt_").expect("evt_ prefix");
        assert_eq!(hex.len(), 32, "{id}");
        assert!(
            hex.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
            "{id}"
        );
        let ms = i64::from_str_radix(&hex[..12], 16).unwrap();
        assert!(
            (0..60_000).contains(&(now_ms - ms)),
            "{id} says {ms}, now is {now_ms}"
        );
    }
    assert!(ids[0] < ids[1] && ids[1] < ids[2], "{ids:?}");
    // A thousand in one statement: all distinct.
    let distinct: i64 = c
        .query_one(
            "SELECT count(DISTINCT webhook.new_event_id()) FROM generate_series(1, 1000)",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(distinct, 1000);
}
#[tokio::test]
async fn claiming_is_an_index_scan_whatever_the_delivered_history() {
    let db = TestDb::new().await;
    let c = db.client().await;
    c.batch_execute(
        "INSERT INTO webhook.endpoints (name, url, events) VALUES ('e', 'http://127.0.0.1:1/', '{add_credits}');
         INSERT INTO webhook.outbox (event_id, event_code, payload, endpoint_id, status, attempts, delivered_at, created_at, next_attempt_at)
         SELECT 'evt_' || g, 'add_credits', '{}', 1, 'delivered', 1, now(), now() - interval '1 day', now() - interval '1 day'
           FROM generate_series(1, 200000) g;
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
    let plan: Vec<String> = c
        .query("EXPLAIN EXECUTE claim(1, 100, 30, 'test')", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let plan = plan.join("\n");
    assert!(
        plan.contains("outbox_queue"),
        "claim does not use the partial index:\n{plan}"
    );
    assert!(
        !plan.contains("Seq Scan on outbox"),
        "claim scans the table:\n{plan}"
    );
    // And it claims the pending rows only.
    let rows = c
        .query("EXECUTE claim(1, 100, 30, 'test')", &[])
        .await
        .unwrap();
    assert_eq!(rows.len(), 50);
}

#[tokio::test]
async fn write_backs_are_fenced_by_the_claim() {
    let db = TestDb::new().await;
    let c = db.client().await;
    c.batch_execute(
        "INSERT INTO webhook.endpoints (name, url, events) VALUES ('e', 'http://127.0.0.1:1/', '{add_credits}');
         SELECT webhook.enqueue('add_credits', '{}');",
    )
    .await
    .unwrap();
    let claim = c
        .prepare(include_str!("../../sql/claim.sql"))
        .await
        .unwrap();
    let complete = c
        .prepare(include_str!("../../sql/complete.sql"))
        .await
        .unwrap();
    let row = c
        .query_one(&claim, &[&1i32, &10i64, &30.0f64, &"relay-a"])
        .await
        .unwrap();
    let (id, attempt, lease, version): (i64, i32, std::time::SystemTime, String) =
        (row.get(0), row.get(2), row.get(4), row.get(5));
    let write = |attempt: i32, lease: std::time::SystemTime, version: String| {
        let (c, complete) = (&c, &complete);
        async move {
            c.execute(
                complete,
                &[
                    &vec![id],
                    &vec![attempt],
                    &vec!["delivered"],
                    &vec![std::time::SystemTime::now()],
                    &vec![5i32],
                    &vec![Some(200i32)],
                    &vec![Some("ok")],
                    &vec![None::<&str>],
                    &vec![None::<std::time::SystemTime>],
                    &"relay-a",
                    &vec![lease],
                    &vec![version],
                ],
            )
            .await
            .unwrap()
        }
    };
    // A newer claim of the same attempt number (as after a replay reset the
    // count) has another lease: the stale outcome must not land.
    c.batch_execute(
        "UPDATE webhook.outbox SET lease_expires_at = lease_expires_at + interval '1 second'",
    )
    .await
    .unwrap();
    assert_eq!(
        write(attempt, lease, version.clone()).await,
        0,
        "a stale claim's outcome was written"
    );
    assert_eq!(write(attempt + 1, lease, version.clone()).await, 0);
    let (newer, newer_version): (std::time::SystemTime, String) = {
        let r = c
            .query_one(
                "SELECT lease_expires_at, ctid::text FROM webhook.outbox",
                &[],
            )
            .await
            .unwrap();
        (r.get(0), r.get(1))
    };
    assert_eq!(
        write(attempt, newer, version).await,
        0,
        "an outcome was written over a row version its claim did not make"
    );
    assert_eq!(
        write(attempt, newer, newer_version).await,
        1,
        "the current claim's outcome is written"
    );
    let (status, attempts): (String, i64) = {
        let r = c
            .query_one(
                "SELECT status, (SELECT count(*) FROM webhook.attempts) FROM webhook.outbox",
                &[],
            )
            .await
            .unwrap();
        (r.get(0), r.get(1))
    };
    assert_eq!((status.as_str(), attempts), ("delivered", 1));
}

#[tokio::test]
async fn endpoints_are_never_deleted_or_renumbered() {
    let db = TestDb::new().await;
    let c = db.client().await;
    c.batch_execute(
        "INSERT INTO webhook.endpoints (name, url, events) VALUES ('e', 'http://127.0.0.1:1/', '{add_credits}');
         SELECT webhook.enqueue('add_credits', '{}');",
    )
    .await
    .unwrap();
    let err = c
        .batch_execute("DELETE FROM webhook.endpoints")
        .await
        .unwrap_err();
    assert!(
        err.as_db_error()
            .unwrap()
            .message()
            .contains("never deleted"),
        "{err}"
    );
    let err = c
        .batch_execute("UPDATE webhook.endpoints SET endpoint_id = 99")
        .await
        .unwrap_err();
    assert!(
        err.as_db_error()
            .unwrap()
            .message()
            .contains("cannot change"),
        "{err}"
    );
    // Disabling (what the relay does for an endpoint dropped from the config) works.
    c.batch_execute("UPDATE webhook.endpoints SET enabled = false")
        .await
        .unwrap();
}

/// The relay prepares its statements once per connection, often while the
/// outbox is empty (a fresh install, a quiet night), and Postgres may keep a
/// plan made from those statistics. A claim or write-back must stay a few
/// index look-ups when the table then fills up, not a walk over all of it.
#[tokio::test]
async fn claims_and_write_backs_stay_cheap_when_planned_on_an_empty_outbox() {
    let db = TestDb::new().await;
    let c = db.client().await;
    c.batch_execute(
        "INSERT INTO webhook.endpoints (name, url, events) VALUES ('e', 'http://127.0.0.1:1/', '{add_credits}');
         ANALYZE webhook.outbox;",
    )
    .await
    .unwrap();
    c.batch_execute(outbox_relay::db::SESSION_SETUP)
        .await
        .unwrap();
    let claim = include_str!("../../sql/claim.sql");
    let complete = include_str!("../../sql/complete.sql");
    c.batch_execute(&format!(
        "PREPARE claim(int, int, float8, text) AS {claim};
         PREPARE complete(bigint[], int[], text[], timestamptz[], int[], int[], text[], text[],
                          timestamptz[], text, timestamptz[], text[]) AS {complete};"
    ))
    .await
    .unwrap();
    // Plans cached while the table is empty: Postgres settles on a generic
    // plan after five executions.
    for _ in 0..6 {
        c.batch_execute(
            "EXECUTE claim(1, 32, 30, 'test');
             EXECUTE complete('{}', '{}', '{}', '{}', '{}', '{}', '{}', '{}', '{}', 'test', '{}', '{}');",
        )
        .await
        .unwrap();
    }
    c.batch_execute(
        "INSERT INTO webhook.outbox (event_id, event_code, payload, endpoint_id)
         SELECT 'evt_' || g, 'add_credits', '{}', 1 FROM generate_series(1, 30000) g;",
    )
    .await
    .unwrap();

    // Buffers the statement touched, from EXPLAIN (ANALYZE, BUFFERS).
    let buffers = |plan: &[String]| -> u64 {
        plan.iter()
            .find_map(|l| l.trim().strip_prefix("Buffers: shared hit="))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no buffer counts in:\n{}", plan.join("\n")))
    };
    let explain = |sql: String| {
        let c = &c;
        async move {
            c.query(&sql, &[])
                .await
                .unwrap()
                .iter()
                .map(|r| r.get::<_, String>(0))
                .collect::<Vec<_>>()
        }
    };
    let plan =
        explain("EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) EXECUTE claim(1, 32, 30, 'test')".into())
            .await;
    let claim_buffers = buffers(&plan);
    assert!(
        claim_buffers < 1_000,
        "claiming 32 of 30,000 rows touched {claim_buffers} buffers:\n{}",
        plan.join("\n")
    );

    let claimed = c
        .query(
            "SELECT id, lease_expires_at::text, ctid::text FROM webhook.outbox WHERE status = 'in_flight' ORDER BY id",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(claimed.len(), 32);
    let ids: Vec<String> = claimed
        .iter()
        .map(|r| r.get::<_, i64>(0).to_string())
        .collect();
    let versions: Vec<String> = claimed
        .iter()
        .map(|r| format!("\"{}\"", r.get::<_, String>(2)))
        .collect();
    let n = ids.len();
    let plan = explain(format!(
        "EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) EXECUTE complete('{{{}}}', array_fill(1, ARRAY[{n}]),
             array_fill('delivered'::text, ARRAY[{n}]), array_fill(now(), ARRAY[{n}]), array_fill(1, ARRAY[{n}]),
             array_fill(200, ARRAY[{n}]), array_fill(''::text, ARRAY[{n}]), array_fill(NULL::text, ARRAY[{n}]),
             array_fill(NULL::timestamptz, ARRAY[{n}]), 'test', array_fill('{}'::timestamptz, ARRAY[{n}]),
             '{{{}}}')",
        ids.join(","),
        claimed[0].get::<_, String>(1),
        versions.join(",")
    ))
    .await;
    let complete_buffers = buffers(&plan);
    assert!(
        complete_buffers < 2_000,
        "writing back 32 outcomes touched {complete_buffers} buffers:\n{}",
        plan.join("\n")
    );
    let delivered: i64 = c
        .query_one(
            "SELECT count(*) FROM webhook.outbox WHERE status = 'delivered'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(delivered, 32, "the write-back landed");
}
