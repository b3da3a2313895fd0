//! Upgrading in place to the queue read by snapshot ticks (V9, V10): a
//! database at an older schema with rows in every status is migrated to the
//! latest; the state the migrations leave is checked, and a relay started on
//! it then delivers every row that was pending or in flight, in key order.

use std::collections::HashMap;
use std::time::Duration;

use tokio_postgres::types::ToSql;
use tokio_postgres::Client;

use crate::delivery::{config, count_status, start};
use crate::receiver::Receiver;
use crate::support::{rows, wait_for, TestDb};

type OldRow = (
    &'static str,
    &'static str,
    Option<&'static str>,
    &'static str,
    i32,
    &'static str,
);

/// The rows of the old schema, as (label, endpoint, ordering key, status,
/// attempts, retry due in): each key's rows in id order.
/// - k1: delivered, then a head that failed twice and waits for a retry, a
///   row never attempted, a row in flight under an old relay's claim;
/// - k2: in flight on its first attempt, then a row never attempted;
/// - k3: two rows never attempted (nothing of k3 was attempted: read as new);
/// - k4: dead, then delivered (settled: untouched);
/// - no key: never attempted, failed three times (retry in an hour), in
///   flight, dead, delivered;
/// - billing: a row never attempted of k1 (keys are per endpoint), a dead row.
const ROWS: &[OldRow] = &[
    ("a1", "crm", Some("k1"), "delivered", 1, "0"),
    ("a2", "crm", Some("k1"), "pending", 2, "5 minutes"),
    ("a3", "crm", Some("k1"), "pending", 0, "0"),
    ("a4", "crm", Some("k1"), "in_flight", 1, "0"),
    ("b1", "crm", Some("k2"), "in_flight", 1, "0"),
    ("b2", "crm", Some("k2"), "pending", 0, "0"),
    ("c1", "crm", Some("k3"), "pending", 0, "0"),
    ("c2", "crm", Some("k3"), "pending", 0, "0"),
    ("d1", "crm", Some("k4"), "dead", 8, "0"),
    ("d2", "crm", Some("k4"), "delivered", 1, "0"),
    ("e1", "crm", None, "pending", 0, "0"),
    ("e2", "crm", None, "pending", 3, "1 hour"),
    ("e3", "crm", None, "in_flight", 1, "0"),
    ("e4", "crm", None, "dead", 8, "0"),
    ("e5", "crm", None, "delivered", 1, "0"),
    ("f1", "billing", Some("k1"), "pending", 0, "0"),
    ("f2", "billing", None, "dead", 8, "0"),
];

/// Builds a database at schema `version` with the endpoints crm and billing and ROWS (each attempted row with its attempts in
/// webhook.attempts, each in-flight row under a live lease of an old relay),
/// then migrates it to the latest schema. Returns the database and the outbox
/// id of each label.
async fn upgraded_from(version: u32) -> (TestDb, HashMap<&'static str, i64>) {
    let db = TestDb::empty().await;
    let mut c = db.client().await;
    outbox_relay::migrate::run_migrations_to(&mut c, Some(version))
        .await
        .unwrap();
    c.batch_execute(
        "INSERT INTO webhook.endpoints (name, url, events) VALUES
           ('crm', 'http://127.0.0.1:9/', '{add_credits}'),
           ('billing', 'http://127.0.0.1:9/', '{add_credits}');
         INSERT INTO webhook.wakeup (endpoint_id, armed) SELECT endpoint_id, false FROM webhook.endpoints;",
    )
    .await
    .unwrap();
    let mut ids = HashMap::new();
    for (label, endpoint, key, status, attempts, retry_in) in ROWS {
        let params: [&(dyn ToSql + Sync); 6] = [label, endpoint, key, status, attempts, retry_in];
        let id: i64 = c
            .query_one(
                "INSERT INTO webhook.outbox (event_id, event_code, payload, ordering_key, endpoint_id,
                                             status, attempts, next_attempt_at, delivered_at,
                                             claimed_by, lease_expires_at, last_error)
                 SELECT 'evt_' || $1::text, 'add_credits', jsonb_build_object('label', $1::text), $3::text,
                        e.endpoint_id, $4::text, $5::int, now() + $6::text::interval,
                        CASE WHEN $4::text = 'delivered' THEN now() END,
                        CASE WHEN $4::text = 'in_flight' THEN 'relay-old' END,
                        CASE WHEN $4::text = 'in_flight' THEN now() + interval '1 minute' END,
                        CASE WHEN $5::int > 0 AND $4::text <> 'delivered' THEN 'HTTP 503' END
                   FROM webhook.endpoints e WHERE e.name = $2::text
                 RETURNING id",
                &params,
            )
            .await
            .unwrap()
            .get(0);
        c.execute(
            "INSERT INTO webhook.attempts (outbox_id, attempt, started_at, duration_ms, response_status, error)
             SELECT $1, a, now() - interval '1 minute', 10, 503, 'HTTP 503' FROM generate_series(1, $2::int) a",
            &[&id, attempts],
        )
        .await
        .unwrap();
        ids.insert(*label, id);
    }
    let applied = outbox_relay::migrate::run_migrations(&mut c).await.unwrap();
    assert!(
        applied
            .iter()
            .any(|m| m.contains("queue_by_snapshot_ticks")),
        "{applied:?}"
    );
    (db, ids)
}

async fn labels(c: &Client, ids: &HashMap<&str, i64>, sql: &str) -> Vec<String> {
    let by_id: HashMap<i64, &str> = ids.iter().map(|(l, id)| (*id, *l)).collect();
    let mut found: Vec<String> = c
        .query(sql, &[])
        .await
        .unwrap()
        .iter()
        .map(|r| by_id[&r.get::<_, i64>(0)].to_string())
        .collect();
    found.sort();
    found
}

async fn check_upgraded_state(version: u32) {
    let (db, ids) = upgraded_from(version).await;
    let c = db.client().await;
    outbox_relay::migrate::check_schema_version(&c)
        .await
        .unwrap();

    // The unsettled rows (pending or in flight) joined the log as written by
    // the migration's transaction; the settled history has no xid.
    let unsettled = [
        "a2", "a3", "a4", "b1", "b2", "c1", "c2", "e1", "e2", "e3", "f1",
    ];
    assert_eq!(
        labels(
            &c,
            &ids,
            "SELECT id FROM webhook.outbox WHERE xid IS NOT NULL"
        )
        .await,
        unsettled,
        "xid stamped on the unsettled rows only"
    );
    let xids: i64 = c
        .query_one(
            "SELECT count(DISTINCT xid) FROM webhook.outbox WHERE xid IS NOT NULL",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(xids, 1, "one transaction stamped them all");
    let statuses: Vec<(String, String, i32, bool, bool)> = c
        .query(
            "SELECT event_id, status, attempts, claimed_by IS NULL AND lease_expires_at IS NULL,
                    next_attempt_at <= now()
               FROM webhook.outbox ORDER BY id",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4)))
        .collect();
    for (
        (label, _, _, status, attempts, retry_in),
        (event_id, now, now_attempts, unclaimed, due),
    ) in ROWS.iter().zip(&statuses)
    {
        assert_eq!(event_id, &format!("evt_{label}"));
        let expected: &str = if *status == "in_flight" {
            "pending"
        } else {
            status
        };
        assert_eq!(now, expected, "{label}");
        assert_eq!(now_attempts, attempts, "{label}: attempts counted stay");
        assert!(unclaimed, "{label}: no claim left");
        if *status == "in_flight" {
            assert!(due, "{label}: an interrupted attempt is due again at once");
        } else if *status == "pending" {
            assert_eq!(*due, *retry_in == "0", "{label}: its retry time stays");
        }
    }

    // A key with an attempted unsettled row is held by its oldest unsettled
    // row, due at that row's retry time; the key's other unsettled rows wait
    // parked behind it. k3 and billing's k1 were never attempted: nothing.
    assert_eq!(
        rows(
            &c,
            "SELECT e.name, h.ordering_key, o.event_id, h.next_attempt_at = o.next_attempt_at
               FROM webhook.holds h
               JOIN webhook.endpoints e USING (endpoint_id)
               JOIN webhook.outbox o ON o.id = h.outbox_id
              ORDER BY h.ordering_key"
        )
        .await,
        ["(crm,k1,evt_a2,t)", "(crm,k2,evt_b1,t)"]
    );
    assert_eq!(
        labels(&c, &ids, "SELECT outbox_id FROM webhook.parked").await,
        ["a3", "a4", "b2"]
    );
    let parked_keys: i64 = c
        .query_one(
            "SELECT count(*) FROM webhook.parked p JOIN webhook.outbox o ON o.id = p.outbox_id
              WHERE p.endpoint_id = o.endpoint_id AND p.ordering_key = o.ordering_key",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(parked_keys, 3, "parked under their own endpoint and key");
    // Attempted rows without a key wait for their retry outside any order.
    assert_eq!(
        labels(
            &c,
            &ids,
            "SELECT r.outbox_id FROM webhook.redeliveries r JOIN webhook.outbox o ON o.id = r.outbox_id
              WHERE r.endpoint_id = o.endpoint_id AND r.next_attempt_at = o.next_attempt_at"
        )
        .await,
        ["e2", "e3"]
    );
    assert_eq!(
        labels(
            &c,
            &ids,
            "SELECT d.outbox_id FROM webhook.dead_rows d JOIN webhook.outbox o ON o.id = d.outbox_id
              WHERE d.endpoint_id = o.endpoint_id"
        )
        .await,
        ["d1", "e4", "f2"]
    );
    // Every endpoint's partitions, free, with a tick that sees no transaction.
    assert_eq!(
        rows(
            &c,
            "SELECT e.name, count(p.partition),
                    count(*) FILTER (WHERE p.owner IS NULL AND p.tick::text = '1:1:')
               FROM webhook.endpoints e JOIN webhook.partitions p USING (endpoint_id)
              GROUP BY e.name ORDER BY e.name"
        )
        .await,
        ["(billing,16,16)", "(crm,16,16)"]
    );

    // The indexes every writer paid for are gone, the log's index is there;
    // attempts have no foreign key; the wake-up switch is on the endpoint.
    assert_eq!(
        rows(
            &c,
            "SELECT indexname FROM pg_indexes WHERE schemaname = 'webhook' AND tablename = 'outbox'
              ORDER BY indexname"
        )
        .await,
        [
            "(outbox_endpoint_xid)",
            "(outbox_event_id)",
            "(outbox_pkey)"
        ]
    );
    let leftovers: (i64, bool, i64) = {
        let r = c
            .query_one(
                "SELECT (SELECT count(*) FROM pg_constraint WHERE conname = 'attempts_outbox_id_fkey'),
                        to_regclass('webhook.wakeup') IS NULL,
                        (SELECT count(*) FROM webhook.attempts)",
                &[],
            )
            .await
            .unwrap();
        (r.get(0), r.get(1), r.get(2))
    };
    let attempts: i64 = ROWS.iter().map(|r| i64::from(r.4)).sum();
    assert_eq!(leftovers, (0, true, attempts), "every attempt kept");

    // The DBA's views read that state.
    assert_eq!(
        rows(
            &c,
            "SELECT endpoint, pending, due, in_flight, dead FROM webhook.backlog ORDER BY endpoint"
        )
        .await,
        [
            "(billing,1,1,0,1)",
            // pending: a2-a4, b1, b2, c1, c2, e1-e3; due: b1 (held, due
            // now), c1, c2, e1, e3 (a2 and e2 wait for their retry, a3, a4
            // and b2 for their key's head).
            "(crm,10,5,0,2)",
        ]
    );
    assert_eq!(
        rows(
            &c,
            "SELECT ordering_key, parked FROM webhook.held_keys ORDER BY ordering_key"
        )
        .await,
        ["(k1,2)", "(k2,1)"]
    );
    // An old relay left running would fail at its first claim.
    let err = c
        .batch_execute("UPDATE webhook.outbox SET status = 'in_flight' WHERE event_id = 'evt_c1'")
        .await
        .unwrap_err();
    let msg = err.as_db_error().expect("a database error").message();
    assert!(msg.contains("check constraint"), "{msg}");
}

#[tokio::test]
async fn an_upgrade_from_v5_leaves_every_row_where_the_new_queue_expects_it() {
    check_upgraded_state(5).await;
}

#[tokio::test]
async fn an_upgrade_from_v8_leaves_every_row_where_the_new_queue_expects_it() {
    check_upgraded_state(8).await;
}

/// After the upgrade a relay delivers every row that was pending or in
/// flight, each key's rows in their order (a held head before what is parked
/// behind it), and sends nothing settled again.
#[tokio::test]
async fn after_an_upgrade_the_relay_delivers_what_was_unsettled_in_key_order() {
    let (db, ids) = upgraded_from(8).await;
    let c = db.client().await;
    // The rows waiting out a backoff are due now: the test need not wait.
    c.batch_execute(
        "UPDATE webhook.holds SET next_attempt_at = now();
         UPDATE webhook.redeliveries SET next_attempt_at = now();",
    )
    .await
    .unwrap();
    let crm = Receiver::ok().await;
    let billing = Receiver::ok().await;
    let relay = start(
        &db,
        config("", &[("crm", &crm.url, ""), ("billing", &billing.url, "")]),
    )
    .await;
    wait_for(
        "every unsettled row delivered",
        Duration::from_secs(30),
        || async { (count_status(&c, "pending").await == 0).then_some(()) },
    )
    .await;
    relay.shutdown().await;

    let sent = |rx: &Receiver| -> Vec<String> {
        rx.requests()
            .iter()
            .map(|r| r.json()["label"].as_str().unwrap_or("?").to_string())
            .collect()
    };
    let (crm_sent, billing_sent) = (sent(&crm), sent(&billing));
    let mut once = crm_sent.clone();
    once.sort();
    assert_eq!(
        once,
        ["a2", "a3", "a4", "b1", "b2", "c1", "c2", "e1", "e2", "e3"],
        "every unsettled row once, nothing settled again: {crm_sent:?}"
    );
    assert_eq!(billing_sent, ["f1"]);
    for key in [&["a2", "a3", "a4"][..], &["b1", "b2"], &["c1", "c2"]] {
        let order: Vec<usize> = key
            .iter()
            .map(|l| crm_sent.iter().position(|s| s == l).unwrap())
            .collect();
        assert!(
            order.windows(2).all(|w| w[0] <= w[1]),
            "{key:?} out of order: {crm_sent:?}"
        );
    }
    for (label, expected) in [
        ("a1", "delivered"),
        ("d1", "dead"),
        ("d2", "delivered"),
        ("e4", "dead"),
        ("e5", "delivered"),
        ("f2", "dead"),
    ] {
        let status: String = c
            .query_one(
                "SELECT status FROM webhook.outbox WHERE id = $1",
                &[&ids[label]],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(status, expected, "{label} untouched");
    }
}
