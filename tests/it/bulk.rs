//! Bulk changes: one transaction that changes many buyers emits exactly one
//! event per buyer and rule, with the state as committed, at a cost linear in
//! the rows (the times themselves are measured by `bench bulk`).

use futures_util::SinkExt;
use tokio_postgres::Client;

use crate::support::TestDb;

const BUYERS: i64 = 20_000;

/// A database with BUYERS buyers and no postcodes or credits yet, one endpoint
/// subscribed to every event, and statistics taken while the outbox and the
/// postcodes were empty: the worst start for plans cached by the triggers.
async fn setup() -> (TestDb, Client) {
    let db = TestDb::new().await;
    let c = db.client().await;
    c.batch_execute(&format!(
        "INSERT INTO webhook.endpoints (name, url, events)
             VALUES ('all', 'http://127.0.0.1:1/', '{{user_credits_zero,post_code_change,add_credits}}');
         INSERT INTO buyers SELECT 'b' || g, 'Buyer ' || g, 1 FROM generate_series(1, {BUYERS}) g;"
    ))
    .await
    .unwrap();
    // Each its own statement: VACUUM refuses to run in a multi-statement batch.
    c.batch_execute("VACUUM ANALYZE").await.unwrap();
    c.batch_execute("SET statement_timeout = '120s'")
        .await
        .unwrap();
    (db, c)
}

async fn last_id(c: &Client) -> i64 {
    c.query_one("SELECT coalesce(max(id), 0) FROM webhook.outbox", &[])
        .await
        .unwrap()
        .get(0)
}

/// Runs `sql` (one or several statements, one transaction if it says so) and
/// checks what it wrote to the outbox: exactly `buyers` post_code_change
/// events, one per buyer, each carrying that buyer's list as committed.
async fn postcode_step(c: &Client, what: &str, sql: &str, buyers: i64) {
    let after = last_id(c).await;
    c.batch_execute(sql)
        .await
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    check_postcode_events(c, what, after, buyers).await;
}

async fn check_postcode_events(c: &Client, what: &str, after: i64, buyers: i64) {
    let row = c
        .query_one(
            r#"SELECT count(*),
                      count(DISTINCT o.ordering_key),
                      count(*) FILTER (WHERE o.payload IS DISTINCT FROM jsonb_build_object(
                          'buyerId', b.buyer_id,
                          'businessName', b.business_name,
                          'postCodeList', to_jsonb(ARRAY(SELECT p.postcode FROM buyer_postcodes p
                                                          WHERE p.buyer_id = b.buyer_id
                                                          ORDER BY p.postcode COLLATE "C")),
                          'eventCode', 'post_code_change')),
                      count(*) FILTER (WHERE o.event_code <> 'post_code_change')
                 FROM webhook.outbox o LEFT JOIN buyers b ON b.buyer_id = o.ordering_key
                WHERE o.id > $1"#,
            &[&after],
        )
        .await
        .unwrap();
    let (events, keys, wrong, other): (i64, i64, i64, i64) =
        (row.get(0), row.get(1), row.get(2), row.get(3));
    assert_eq!(events, buyers, "{what}: post_code_change events");
    assert_eq!(keys, buyers, "{what}: buyers with an event");
    assert_eq!(
        wrong, 0,
        "{what}: events whose list is not the committed one"
    );
    assert_eq!(other, 0, "{what}: events of another code");
}

/// Events of `code` written after `after`, and how many distinct keys they carry.
async fn count_since(c: &Client, after: i64, code: &str) -> (i64, i64) {
    let row = c
        .query_one(
            "SELECT count(*), count(DISTINCT ordering_key) FROM webhook.outbox
              WHERE id > $1 AND event_code = $2",
            &[&after, &code],
        )
        .await
        .unwrap();
    (row.get(0), row.get(1))
}

#[tokio::test]
async fn postcode_changes_of_20000_buyers_in_one_transaction() {
    let (_db, c) = setup().await;

    postcode_step(
        &c,
        "INSERT ... SELECT",
        "INSERT INTO buyer_postcodes SELECT 'b' || g, 'A' || g FROM generate_series(1, 20000) g",
        BUYERS,
    )
    .await;

    // COPY, two more rows per buyer: still one event each.
    let after = last_id(&c).await;
    let mut rows = String::new();
    for g in 1..=BUYERS {
        rows.push_str(&format!("b{g}\tB{g}\nb{g}\tC{g}\n"));
    }
    let sink = c
        .copy_in::<_, bytes::Bytes>("COPY buyer_postcodes (buyer_id, postcode) FROM STDIN")
        .await
        .unwrap();
    futures_util::pin_mut!(sink);
    sink.send(bytes::Bytes::from(rows)).await.unwrap();
    let copied = sink.finish().await.unwrap();
    assert_eq!(copied, 2 * BUYERS as u64);
    check_postcode_events(&c, "COPY", after, BUYERS).await;

    postcode_step(
        &c,
        "UPDATE of one postcode each",
        "UPDATE buyer_postcodes SET postcode = 'X' || postcode WHERE postcode LIKE 'C%'",
        BUYERS,
    )
    .await;

    postcode_step(
        &c,
        "DELETE + INSERT in one transaction",
        "BEGIN;
         DELETE FROM buyer_postcodes;
         INSERT INTO buyer_postcodes SELECT 'b' || g, p FROM generate_series(1, 20000) g, unnest(ARRAY['N1', 'N2']) p;
         UPDATE buyer_postcodes SET postcode = 'N0' WHERE postcode = 'N2';
         COMMIT;",
        BUYERS,
    )
    .await;

    // Every even buyer's postcodes move to the odd buyer below it: both change.
    postcode_step(
        &c,
        "UPDATE moving postcodes to other buyers",
        "UPDATE buyer_postcodes
            SET buyer_id = 'b' || (substr(buyer_id, 2)::int - 1), postcode = postcode || 'moved'
          WHERE substr(buyer_id, 2)::int % 2 = 0",
        BUYERS,
    )
    .await;

    // Only the odd buyers have postcodes left to delete.
    postcode_step(&c, "DELETE", "DELETE FROM buyer_postcodes", BUYERS / 2).await;

    // A rolled-back bulk change writes nothing.
    let after = last_id(&c).await;
    c.batch_execute(
        "BEGIN;
         INSERT INTO buyer_postcodes SELECT 'b' || g, 'R' FROM generate_series(1, 20000) g;
         ROLLBACK;",
    )
    .await
    .unwrap();
    assert_eq!(count_since(&c, after, "post_code_change").await, (0, 0));

    // docs/dba.md's bulk change without events: the triggers off for one
    // transaction, and on again for the next.
    let after = last_id(&c).await;
    c.batch_execute(
        "BEGIN;
         ALTER TABLE buyer_postcodes DISABLE TRIGGER webhook_events;
         INSERT INTO buyer_postcodes SELECT 'b' || g, 'Q' FROM generate_series(1, 20000) g;
         ALTER TABLE buyer_postcodes ENABLE TRIGGER webhook_events;
         COMMIT;",
    )
    .await
    .unwrap();
    assert_eq!(count_since(&c, after, "post_code_change").await, (0, 0));
    postcode_step(
        &c,
        "DELETE after the silent load",
        "DELETE FROM buyer_postcodes",
        BUYERS,
    )
    .await;
}

#[tokio::test]
async fn credits_and_enqueue_for_20000_buyers_in_one_transaction() {
    let (_db, c) = setup().await;

    let after = last_id(&c).await;
    c.batch_execute(
        "INSERT INTO buyer_credits SELECT 'b' || g, 10 FROM generate_series(1, 20000) g",
    )
    .await
    .unwrap();
    assert_eq!(
        count_since(&c, after, "add_credits").await,
        (BUYERS, BUYERS)
    );

    // One UPDATE: every buyer tops up by 5, and every fourth one spends down
    // to zero in the same transaction.
    let after = last_id(&c).await;
    c.batch_execute(
        "BEGIN;
         UPDATE buyer_credits SET balance = balance + 5;
         UPDATE buyer_credits SET balance = 0 WHERE substr(buyer_id, 2)::int % 4 = 0;
         COMMIT;",
    )
    .await
    .unwrap();
    assert_eq!(
        count_since(&c, after, "add_credits").await,
        (BUYERS, BUYERS)
    );
    assert_eq!(
        count_since(&c, after, "user_credits_zero").await,
        (BUYERS / 4, BUYERS / 4)
    );
    let wrong: i64 = c
        .query_one(
            "SELECT count(*) FROM webhook.outbox o
              WHERE o.id > $1 AND o.event_code = 'add_credits' AND o.payload->>'topUpAmount' <> '5'",
            &[&after],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(wrong, 0, "top-ups that do not carry their amount");

    // webhook.enqueue called 20,000 times in one statement and transaction.
    let after = last_id(&c).await;
    c.batch_execute(
        "BEGIN;
         SELECT webhook.enqueue('add_credits', jsonb_build_object('n', g), 'k' || g) FROM generate_series(1, 20000) g;
         COMMIT;",
    )
    .await
    .unwrap();
    assert_eq!(
        count_since(&c, after, "add_credits").await,
        (BUYERS, BUYERS)
    );
    let distinct_ids: i64 = c
        .query_one(
            "SELECT count(DISTINCT event_id) FROM webhook.outbox WHERE id > $1",
            &[&after],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(distinct_ids, BUYERS, "each enqueue call is its own event");
}
