//! The relay's schema: migrations, the claim index, enqueue.

use crate::support::{first_column, TestDb};

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
const READ: &str = include_str!("../../sql/queue/read.sql");
const WRITE_BACK: &str = include_str!("../../sql/queue/write_back.sql");
const READ_TYPES: &str = "int, text, text[], text, int[], bigint, bigint, int";
const WRITE_BACK_TYPES: &str =
    "bigint[], int[], text[], timestamptz[], int[], int[], text[], text[], \
     timestamptz[], text, text[], text[], text[], boolean[], boolean[]";

/// The snapshot now, as the read's previous tick: its xmax and its list.
async fn tick(c: &tokio_postgres::Client) -> (String, String) {
    let r = c
        .query_one(
            "SELECT pg_snapshot_xmax(s)::text,
                    coalesce((SELECT array_agg(x)::text FROM pg_snapshot_xip(s) x), '{}')
               FROM pg_current_snapshot() s",
            &[],
        )
        .await
        .unwrap();
    (r.get(0), r.get(1))
}

const ALL_PARTS: &str = "'{0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15}'";

#[tokio::test]
async fn reading_is_a_range_of_the_xid_index_whatever_the_delivered_history() {
    let db = TestDb::new().await;
    let c = db.client().await;
    c.batch_execute(
        "INSERT INTO webhook.endpoints (name, url, events) VALUES ('e', 'http://127.0.0.1:1/', '{add_credits}');
         INSERT INTO webhook.outbox (event_id, event_code, payload, endpoint_id, status, attempts, delivered_at, created_at, next_attempt_at)
         SELECT 'evt_' || g, 'add_credits', '{}', 1, 'delivered', 1, now(), now() - interval '1 day', now() - interval '1 day'
           FROM generate_series(1, 200000) g;",
    )
    .await
    .unwrap();
    let (xmax, xip) = tick(&c).await;
    c.batch_execute(
        "INSERT INTO webhook.outbox (event_id, event_code, payload, endpoint_id)
         SELECT 'evt_p' || g, 'add_credits', '{}', 1 FROM generate_series(1, 50) g;
         ANALYZE webhook.outbox;",
    )
    .await
    .unwrap();
    c.batch_execute(&format!("PREPARE read({READ_TYPES}) AS {READ}"))
        .await
        .unwrap();
    let call = format!("EXECUTE read(1, '{xmax}', '{xip}', NULL, {ALL_PARTS}, 500, 0, 15)");
    let plan = first_column::<String>(&c, &format!("EXPLAIN {call}"))
        .await
        .join("\n");
    assert!(
        plan.contains("outbox_endpoint_xid"),
        "the read does not use the transaction id index:\n{plan}"
    );
    assert!(
        !plan.contains("Seq Scan on outbox"),
        "the read scans the table:\n{plan}"
    );
    // It returns the rows committed after the tick only.
    let rows = c.query(&call, &[]).await.unwrap();
    assert_eq!(rows.len(), 50);
}

#[tokio::test]
async fn write_backs_are_fenced_by_the_row_version_read_and_its_attempts() {
    let db = TestDb::new().await;
    let c = db.client().await;
    c.batch_execute(
        "INSERT INTO webhook.endpoints (name, url, events) VALUES ('e', 'http://127.0.0.1:1/', '{add_credits}');
         SELECT webhook.enqueue('add_credits', '{}');",
    )
    .await
    .unwrap();
    let write_back = c.prepare(WRITE_BACK).await.unwrap();
    let read = |sql: &'static str| {
        let c = &c;
        async move {
            let r = c.query_one(sql, &[]).await.unwrap();
            (r.get::<_, i64>(0), r.get::<_, String>(1))
        }
    };
    let (id, version) = read("SELECT id, ctid::text FROM webhook.outbox").await;
    let write = |attempt: i32, version: String| {
        let (c, write_back) = (&c, &write_back);
        async move {
            c.execute(
                write_back,
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
                    &vec![version],
                    &vec![None::<&str>],
                    &vec!["log"],
                    &vec![true],
                    &vec![false],
                ],
            )
            .await
            .unwrap()
        }
    };
    // A DBA (or a replay) changed the row since it was read: a new version.
    c.batch_execute("UPDATE webhook.outbox SET last_error = 'looked at by hand'")
        .await
        .unwrap();
    assert_eq!(
        write(1, version.clone()).await,
        0,
        "an outcome was written over a row version it was not read from"
    );
    let (_, newer) = read("SELECT id, ctid::text FROM webhook.outbox").await;
    assert_eq!(
        write(2, newer.clone()).await,
        0,
        "an outcome that skips an attempt was written"
    );
    assert_eq!(write(1, newer.clone()).await, 1, "the outcome is written");
    assert_eq!(
        write(1, newer).await,
        0,
        "the same attempt was written twice"
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

/// The buffers a statement touched, and its plan, from EXPLAIN (ANALYZE, BUFFERS).
async fn buffers_of(c: &tokio_postgres::Client, statement: &str) -> (u64, String) {
    let plan = first_column::<String>(
        c,
        &format!("EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) {statement}"),
    )
    .await
    .join("\n");
    let buffers = plan
        .lines()
        .find_map(|l| l.trim().strip_prefix("Buffers: shared hit="))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no buffer counts in:\n{plan}"));
    (buffers, plan)
}

/// The relay prepares its statements once per connection, often while the
/// outbox is empty (a fresh install, a quiet night), and Postgres may keep a
/// plan made from those statistics. A read or write-back must stay a few
/// index look-ups when the table then fills up, not a walk over all of it.
#[tokio::test]
async fn reads_and_write_backs_stay_cheap_when_planned_on_an_empty_outbox() {
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
    c.batch_execute(outbox_relay::db::QUEUE_SESSION_SETUP)
        .await
        .unwrap();
    c.batch_execute(&format!(
        "PREPARE read({READ_TYPES}) AS {READ};
         PREPARE write_back({WRITE_BACK_TYPES}) AS {WRITE_BACK};"
    ))
    .await
    .unwrap();
    // Plans cached while the table is empty: Postgres settles on a generic
    // plan after five executions.
    let (xmax, xip) = tick(&c).await;
    for _ in 0..6 {
        c.batch_execute(&format!(
            "EXECUTE read(1, '{xmax}', '{xip}', NULL, {ALL_PARTS}, 500, 0, 15);
             EXECUTE write_back('{{}}', '{{}}', '{{}}', '{{}}', '{{}}', '{{}}', '{{}}', '{{}}', '{{}}', 'test',
                                '{{}}', '{{}}', '{{}}', '{{}}', '{{}}');"
        ))
        .await
        .unwrap();
    }
    c.batch_execute(
        "INSERT INTO webhook.outbox (event_id, event_code, payload, endpoint_id)
         SELECT 'evt_' || g, 'add_credits', '{}', 1 FROM generate_series(1, 30000) g;",
    )
    .await
    .unwrap();
    let (xmax, xip) = tick(&c).await;
    c.batch_execute(
        "INSERT INTO webhook.outbox (event_id, event_code, payload, endpoint_id)
         SELECT 'evt_n' || g, 'add_credits', '{}', 1 FROM generate_series(1, 32) g;",
    )
    .await
    .unwrap();

    let call = format!("EXECUTE read(1, '{xmax}', '{xip}', NULL, {ALL_PARTS}, 500, 0, 15)");
    let (read_buffers, plan) = buffers_of(&c, &call).await;
    assert!(
        read_buffers < 1_000,
        "reading 32 new of 30,032 rows touched {read_buffers} buffers:\n{plan}"
    );
    let read = c.query(&call, &[]).await.unwrap();
    assert_eq!(read.len(), 32);
    let ids: Vec<String> = read
        .iter()
        .map(|r| r.get::<_, i64>(1).to_string())
        .collect();
    let versions: Vec<String> = read
        .iter()
        .map(|r| format!("\"{}\"", r.get::<_, String>(5)))
        .collect();
    let n = ids.len();
    let (write_buffers, plan) = buffers_of(&c, &format!(
        "EXECUTE write_back('{{{}}}', array_fill(1, ARRAY[{n}]),
             array_fill('delivered'::text, ARRAY[{n}]), array_fill(now(), ARRAY[{n}]), array_fill(1, ARRAY[{n}]),
             array_fill(200, ARRAY[{n}]), array_fill(''::text, ARRAY[{n}]), array_fill(NULL::text, ARRAY[{n}]),
             array_fill(NULL::timestamptz, ARRAY[{n}]), 'test', '{{{}}}', array_fill(NULL::text, ARRAY[{n}]),
             array_fill('log'::text, ARRAY[{n}]), array_fill(true, ARRAY[{n}]), array_fill(false, ARRAY[{n}]))",
        ids.join(","),
        versions.join(",")
    ))
    .await;
    assert!(
        write_buffers < 2_000,
        "writing back 32 outcomes touched {write_buffers} buffers:\n{plan}"
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

const PARKED_FETCH: &str = include_str!("../../sql/queue/parked_fetch.sql");

/// A session set up as the relay's queue connections are, on a database with
/// one endpoint (its id returned) and fresh statistics of the empty `tables`.
async fn queue_session(db: &TestDb, tables: &str) -> (tokio_postgres::Client, i32) {
    let c = db.client().await;
    let endpoint: i32 = c
        .query_one(
            "INSERT INTO webhook.endpoints (name, url, events)
             VALUES ('e', 'http://127.0.0.1:1/', '{add_credits}') RETURNING endpoint_id",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    c.batch_execute(&format!("ANALYZE {tables}")).await.unwrap();
    for setup in [
        outbox_relay::db::SESSION_SETUP,
        outbox_relay::db::QUEUE_SESSION_SETUP,
    ] {
        c.batch_execute(setup).await.unwrap();
    }
    (c, endpoint)
}

/// A held key's parked events come back a hundred at a time once it moves on
/// (sql/queue/parked_fetch.sql). Each fetch must walk the key's parked rows
/// from where the last one stopped, not all of them: planned on the queue
/// sessions' settings, before V12, it read every parked row of the key and
/// its outbox row for each hundred, so taking back n events cost n squared.
#[tokio::test]
async fn a_parked_fetch_stays_cheap_however_many_events_a_key_has_parked() {
    let db = TestDb::new().await;
    let (c, endpoint) = queue_session(&db, "webhook.parked, webhook.outbox").await;
    c.batch_execute(&format!(
        "PREPARE parked_fetch(int, text[], bigint[], bigint, int) AS {PARKED_FETCH}"
    ))
    .await
    .unwrap();
    // Planned while nothing is parked, as on a relay whose receiver was up.
    let call =
        |after: i64| format!("EXECUTE parked_fetch({endpoint}, '{{k}}', '{{{after}}}', 100, 15)");
    for _ in 0..6 {
        c.batch_execute(&call(0)).await.unwrap();
    }
    // Then 10,000 events of one key parked behind its held head; ten of
    // those after the point asked for are settled already and are skipped.
    c.batch_execute(&format!(
        "INSERT INTO webhook.outbox (event_id, event_code, payload, ordering_key, endpoint_id)
         SELECT 'evt_' || g, 'add_credits', '{{}}', 'k', {endpoint} FROM generate_series(1, 10000) g;
         INSERT INTO webhook.parked (endpoint_id, ordering_key, outbox_id)
         SELECT {endpoint}, 'k', id FROM webhook.outbox;
         UPDATE webhook.outbox SET status = 'delivered', delivered_at = now()
          WHERE id BETWEEN 5001 AND 5010;"
    ))
    .await
    .unwrap();

    let (buffers, plan) = buffers_of(&c, &call(5000)).await;
    println!("taking 100 of 5,000 parked events: {buffers} buffers");
    assert!(
        buffers < 1_000,
        "taking 100 of 5,000 parked events touched {buffers} buffers:\n{plan}"
    );
    let ids: Vec<i64> = c
        .query(&call(5000), &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(1))
        .collect();
    assert_eq!(ids, (5011..5111).collect::<Vec<i64>>());
    // The last hundred and the end of the key.
    let rows = c.query(&call(9900), &[]).await.unwrap();
    assert_eq!(rows.len(), 100);
    let row = &rows[0];
    assert_eq!(row.get::<_, String>(0), "k");
    assert_eq!(row.get::<_, i64>(1), 9901);
    assert_eq!(row.get::<_, String>(2), "evt_9901");
    assert_eq!(row.get::<_, i32>(3), 0);
    assert_eq!(row.get::<_, String>(4), "{}");
    assert!(row.get::<_, String>(5).starts_with('('), "a ctid");
    assert!((0..16).contains(&row.get::<_, i32>(6)), "a partition");
    assert!(c.query(&call(10000), &[]).await.unwrap().is_empty());
}

const HOLDS_DUE: &str = include_str!("../../sql/queue/holds_due.sql");
const REDELIVERIES_DUE: &str = include_str!("../../sql/queue/redeliveries_due.sql");

/// After a receiver outage every key of an endpoint may be held, and their
/// retries come due together; replayed rows may wait by the thousand. The
/// relay takes a hundred of them a look (sql/queue/holds_due.sql,
/// redeliveries_due.sql): a look must walk them soonest first and stop, not
/// read and sort them all, or taking back n costs n squared.
#[tokio::test]
async fn due_holds_and_redeliveries_stay_cheap_however_many_are_due() {
    let db = TestDb::new().await;
    let (c, endpoint) =
        queue_session(&db, "webhook.holds, webhook.redeliveries, webhook.outbox").await;
    c.batch_execute(&format!(
        "PREPARE holds_due(int, int[], int, text[], bigint, boolean) AS {HOLDS_DUE};
         PREPARE redeliveries_due(int, int[], int, bigint[], bigint) AS {REDELIVERIES_DUE};"
    ))
    .await
    .unwrap();
    let holds = format!("EXECUTE holds_due({endpoint}, {ALL_PARTS}, 15, '{{}}', 100, false)");
    let redeliveries =
        format!("EXECUTE redeliveries_due({endpoint}, {ALL_PARTS}, 15, '{{}}', 100)");
    // Planned while nothing waits.
    for _ in 0..6 {
        c.batch_execute(&format!("{holds}; {redeliveries};"))
            .await
            .unwrap();
    }
    // 5,000 held keys whose retries are due, and 5,000 due redeliveries.
    c.batch_execute(&format!(
        "INSERT INTO webhook.outbox (event_id, event_code, payload, ordering_key, endpoint_id)
         SELECT 'evt_' || g, 'add_credits', '{{}}', 'k' || g, {endpoint} FROM generate_series(1, 10000) g;
         INSERT INTO webhook.holds (endpoint_id, ordering_key, outbox_id, next_attempt_at)
         SELECT {endpoint}, ordering_key, id, now() - interval '1 hour' + id * interval '1 ms'
           FROM webhook.outbox WHERE id <= 5000;
         INSERT INTO webhook.redeliveries (outbox_id, endpoint_id, next_attempt_at)
         SELECT id, {endpoint}, now() - interval '1 hour' + id * interval '1 ms'
           FROM webhook.outbox WHERE id > 5000;"
    ))
    .await
    .unwrap();

    for (what, call, first) in [
        ("held heads", &holds, 1),
        ("redeliveries", &redeliveries, 5001),
    ] {
        let (buffers, plan) = buffers_of(&c, call).await;
        println!("taking 100 of 5,000 due {what}: {buffers} buffers");
        assert!(
            buffers < 1_000,
            "taking 100 of 5,000 due {what} touched {buffers} buffers:\n{plan}"
        );
        let rows = c.query(call.as_str(), &[]).await.unwrap();
        assert_eq!(rows.len(), 100, "{what}");
        let id_column = if what == "held heads" { 1 } else { 0 };
        let ids: Vec<i64> = rows.iter().map(|r| r.get(id_column)).collect();
        assert_eq!(
            ids,
            (first..first + 100).collect::<Vec<i64>>(),
            "{what}, soonest first"
        );
    }
}
