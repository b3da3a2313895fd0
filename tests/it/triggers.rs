//! The three event rules of SPEC §2, through the real triggers of
//! sql/triggers.sql on the reference schema.

use serde_json::{json, Value};
use tokio_postgres::Client;

use crate::support::{TestDb, TRIGGERS_SQL};

const ALL: &str = "{user_credits_zero,post_code_change,add_credits}";

/// A test database with one endpoint subscribed to every event.
async fn setup() -> (TestDb, Client) {
    let db = TestDb::new().await;
    let c = db.client().await;
    c.execute(
        "INSERT INTO webhook.endpoints (name, url, events) VALUES ('all', 'http://127.0.0.1:1/', $1::text::text[])",
        &[&ALL],
    )
    .await
    .unwrap();
    (db, c)
}

/// Events written so far for endpoint 'all', oldest first: (code, payload).
async fn events(c: &Client) -> Vec<(String, Value)> {
    c.query(
        "SELECT o.event_code, o.payload FROM webhook.outbox o JOIN webhook.endpoints e USING (endpoint_id)
          WHERE e.name = 'all' ORDER BY o.id",
        &[],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1)))
    .collect()
}

/// Only the codes, oldest first; clears the outbox so the next step starts empty.
async fn take_codes(c: &Client) -> Vec<String> {
    let codes = events(c).await.into_iter().map(|(code, _)| code).collect();
    c.batch_execute("DELETE FROM webhook.outbox").await.unwrap();
    codes
}

async fn buyer(c: &Client, id: &str, name: &str, lead_cost: &str, postcodes: &[&str]) {
    c.execute(
        "INSERT INTO buyers (buyer_id, business_name, lead_cost) VALUES ($1, $2, $3::text::numeric)",
        &[&id, &name, &lead_cost],
    )
    .await
    .unwrap();
    for p in postcodes {
        c.execute("INSERT INTO buyer_postcodes VALUES ($1, $2)", &[&id, p])
            .await
            .unwrap();
    }
}

async fn exec(c: &Client, sql: &str) {
    c.batch_execute(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

#[tokio::test]
async fn add_credits_on_insert_above_zero_with_exact_body() {
    let (_db, c) = setup().await;
    buyer(&c, "0000", "test", "10", &["GN", "AB", "BN"]).await;
    take_codes(&c).await;
    exec(&c, "INSERT INTO buyer_credits VALUES ('0000', 100)").await;
    let ev = events(&c).await;
    assert_eq!(ev.len(), 1, "{ev:?}");
    assert_eq!(
        ev[0].1,
        json!({"buyerId": "0000", "buyerName": "test", "postCodeList": ["AB", "BN", "GN"],
               "topUpAmount": 100, "eventCode": "add_credits"})
    );
    take_codes(&c).await;
    // A new row at zero (or below) is no top-up.
    buyer(&c, "0001", "zero", "0", &[]).await;
    exec(&c, "INSERT INTO buyer_credits VALUES ('0001', 0)").await;
    assert!(take_codes(&c).await.is_empty());
}

#[tokio::test]
async fn add_credits_on_any_increase_carries_the_difference() {
    let (_db, c) = setup().await;
    buyer(&c, "b1", "Acme", "1", &["ZZ"]).await;
    exec(&c, "INSERT INTO buyer_credits VALUES ('b1', 10.50)").await;
    take_codes(&c).await;
    exec(
        &c,
        "UPDATE buyer_credits SET balance = 25 WHERE buyer_id = 'b1'",
    )
    .await;
    let ev = events(&c).await;
    assert_eq!(
        ev[0].1,
        json!({"buyerId": "b1", "buyerName": "Acme", "postCodeList": ["ZZ"], "topUpAmount": 14.5,
               "eventCode": "add_credits"})
    );
    take_codes(&c).await;
    // Same balance, or a decrease that stays affordable: nothing.
    exec(
        &c,
        "UPDATE buyer_credits SET balance = 25 WHERE buyer_id = 'b1'",
    )
    .await;
    exec(
        &c,
        "UPDATE buyer_credits SET balance = 20 WHERE buyer_id = 'b1'",
    )
    .await;
    assert!(take_codes(&c).await.is_empty());
}

#[tokio::test]
async fn credits_zero_fires_once_on_crossing_and_rearms_after_top_up() {
    let (_db, c) = setup().await;
    buyer(&c, "0000", "test", "5", &["GN", "AB", "BN"]).await;
    exec(&c, "INSERT INTO buyer_credits VALUES ('0000', 12)").await;
    take_codes(&c).await;

    exec(
        &c,
        "UPDATE buyer_credits SET balance = 7 WHERE buyer_id = '0000'",
    )
    .await;
    assert!(
        take_codes(&c).await.is_empty(),
        "still affords a lead at 7 >= 5"
    );

    exec(
        &c,
        "UPDATE buyer_credits SET balance = 0 WHERE buyer_id = '0000'",
    )
    .await;
    let ev = events(&c).await;
    assert_eq!(
        ev[0].1,
        json!({"buyerId": "0000", "businessName": "test", "postCodeList": ["AB", "BN", "GN"],
               "remainingCredits": 0, "eventCode": "user_credits_zero"})
    );
    take_codes(&c).await;

    exec(
        &c,
        "UPDATE buyer_credits SET balance = -3 WHERE buyer_id = '0000'",
    )
    .await;
    assert!(
        take_codes(&c).await.is_empty(),
        "further deductions while unable do not fire"
    );

    // Topping up to below the lead cost does not re-arm; to above it does.
    exec(
        &c,
        "UPDATE buyer_credits SET balance = 4 WHERE buyer_id = '0000'",
    )
    .await;
    assert_eq!(take_codes(&c).await, ["add_credits"]);
    exec(
        &c,
        "UPDATE buyer_credits SET balance = 2 WHERE buyer_id = '0000'",
    )
    .await;
    assert!(
        take_codes(&c).await.is_empty(),
        "4 -> 2 stays below the lead cost"
    );
    exec(
        &c,
        "UPDATE buyer_credits SET balance = 50 WHERE buyer_id = '0000'",
    )
    .await;
    assert_eq!(take_codes(&c).await, ["add_credits"]);
    exec(
        &c,
        "UPDATE buyer_credits SET balance = 1 WHERE buyer_id = '0000'",
    )
    .await;
    let ev = events(&c).await;
    assert_eq!(ev.len(), 1);
    assert_eq!(ev[0].1["remainingCredits"], json!(1));
    assert_eq!(ev[0].1["eventCode"], json!("user_credits_zero"));
}

#[tokio::test]
async fn balance_equal_to_lead_cost_can_still_afford() {
    let (_db, c) = setup().await;
    buyer(&c, "b", "Edge", "10", &[]).await;
    exec(&c, "INSERT INTO buyer_credits VALUES ('b', 30)").await;
    take_codes(&c).await;
    exec(
        &c,
        "UPDATE buyer_credits SET balance = 10 WHERE buyer_id = 'b'",
    )
    .await;
    assert!(
        take_codes(&c).await.is_empty(),
        "10 >= lead cost 10 still affords one lead"
    );
    exec(
        &c,
        "UPDATE buyer_credits SET balance = 9.99 WHERE buyer_id = 'b'",
    )
    .await;
    let ev = events(&c).await;
    assert_eq!(ev.len(), 1);
    assert_eq!(ev[0].1["remainingCredits"], json!(9.99));
}

#[tokio::test]
async fn lead_cost_zero_means_balance_above_zero() {
    let (_db, c) = setup().await;
    buyer(&c, "free", "Free Leads", "0", &["A1"]).await;
    exec(&c, "INSERT INTO buyer_credits VALUES ('free', 3)").await;
    take_codes(&c).await;
    exec(
        &c,
        "UPDATE buyer_credits SET balance = 0.01 WHERE buyer_id = 'free'",
    )
    .await;
    assert!(take_codes(&c).await.is_empty());
    exec(
        &c,
        "UPDATE buyer_credits SET balance = 0 WHERE buyer_id = 'free'",
    )
    .await;
    assert_eq!(take_codes(&c).await, ["user_credits_zero"]);
    exec(
        &c,
        "UPDATE buyer_credits SET balance = -1 WHERE buyer_id = 'free'",
    )
    .await;
    assert!(take_codes(&c).await.is_empty());
}

#[tokio::test]
async fn one_statement_touching_several_buyers() {
    let (_db, c) = setup().await;
    buyer(&c, "a", "A", "5", &[]).await;
    buyer(&c, "b", "B", "5", &[]).await;
    buyer(&c, "c", "C", "5", &[]).await;
    exec(
        &c,
        "INSERT INTO buyer_credits VALUES ('a', 12), ('b', 6), ('c', 0)",
    )
    .await;
    assert_eq!(
        take_codes(&c).await,
        ["add_credits", "add_credits"],
        "a and b start above zero"
    );
    exec(&c, "UPDATE buyer_credits SET balance = balance - 5").await;
    // a: 12 -> 7 still affords; b: 6 -> 1 crosses; c: 0 -> -5 already unable.
    let ev = events(&c).await;
    assert_eq!(ev.len(), 1, "{ev:?}");
    assert_eq!(ev[0].1["buyerId"], json!("b"));
    take_codes(&c).await;
    exec(&c, "UPDATE buyer_credits SET balance = balance + 100").await;
    let ev = events(&c).await;
    let mut ids: Vec<&str> = ev
        .iter()
        .map(|(_, p)| p["buyerId"].as_str().unwrap())
        .collect();
    ids.sort();
    assert_eq!(ids, ["a", "b", "c"]);
    assert!(ev
        .iter()
        .all(|(code, p)| code == "add_credits" && p["topUpAmount"] == json!(100)));
}

#[tokio::test]
async fn several_updates_in_one_transaction() {
    let (_db, c) = setup().await;
    buyer(&c, "t", "Tx Ltd", "10", &[]).await;
    exec(&c, "INSERT INTO buyer_credits VALUES ('t', 100)").await;
    take_codes(&c).await;
    exec(
        &c,
        "BEGIN;
         UPDATE buyer_credits SET balance = 50 WHERE buyer_id = 't';
         UPDATE buyer_credits SET balance = 5 WHERE buyer_id = 't';
         UPDATE buyer_credits SET balance = 0 WHERE buyer_id = 't';
         UPDATE buyer_credits SET balance = -10 WHERE buyer_id = 't';
         COMMIT;",
    )
    .await;
    let ev = events(&c).await;
    assert_eq!(ev.len(), 1, "one crossing in the transaction: {ev:?}");
    assert_eq!(ev[0].1["remainingCredits"], json!(5));
    take_codes(&c).await;
    exec(
        &c,
        "BEGIN;
         UPDATE buyer_credits SET balance = 20 WHERE buyer_id = 't';
         UPDATE buyer_credits SET balance = 0 WHERE buyer_id = 't';
         COMMIT;",
    )
    .await;
    assert_eq!(take_codes(&c).await, ["add_credits", "user_credits_zero"]);
}

#[tokio::test]
async fn rolled_back_transactions_write_nothing() {
    let (_db, c) = setup().await;
    buyer(&c, "r", "Rollback", "1", &["AA"]).await;
    exec(&c, "INSERT INTO buyer_credits VALUES ('r', 10)").await;
    take_codes(&c).await;
    exec(
        &c,
        "BEGIN;
         UPDATE buyer_credits SET balance = 0 WHERE buyer_id = 'r';
         UPDATE buyer_credits SET balance = 99 WHERE buyer_id = 'r';
         INSERT INTO buyer_postcodes VALUES ('r', 'BB');
         ROLLBACK;",
    )
    .await;
    assert!(take_codes(&c).await.is_empty());
    // A failed statement rolls back its own events too.
    let err = c
        .batch_execute("INSERT INTO buyer_postcodes VALUES ('r', 'CC'), ('nobody', 'DD')")
        .await;
    assert!(err.is_err());
    assert!(take_codes(&c).await.is_empty());
}

#[tokio::test]
async fn one_postcode_event_per_buyer_per_transaction_with_committed_list() {
    let (_db, c) = setup().await;
    buyer(&c, "p", "Postal", "0", &[]).await;
    buyer(&c, "q", "Other", "0", &[]).await;
    take_codes(&c).await;

    exec(
        &c,
        "INSERT INTO buyer_postcodes VALUES ('p', 'SW1'), ('p', 'AB1'), ('p', 'M1'), ('q', 'E1')",
    )
    .await;
    let ev = events(&c).await;
    assert_eq!(ev.len(), 2, "one event per buyer: {ev:?}");
    let p = ev.iter().find(|(_, b)| b["buyerId"] == json!("p")).unwrap();
    assert_eq!(
        p.1,
        json!({"buyerId": "p", "businessName": "Postal", "postCodeList": ["AB1", "M1", "SW1"],
               "eventCode": "post_code_change"})
    );
    take_codes(&c).await;

    // A replace done as DELETE + INSERT in one transaction: one event, final list.
    exec(
        &c,
        "BEGIN;
         DELETE FROM buyer_postcodes WHERE buyer_id = 'p';
         INSERT INTO buyer_postcodes VALUES ('p', 'ZZ9'), ('p', 'BB2');
         UPDATE buyer_postcodes SET postcode = 'CC3' WHERE buyer_id = 'p' AND postcode = 'ZZ9';
         COMMIT;",
    )
    .await;
    let ev = events(&c).await;
    assert_eq!(ev.len(), 1, "{ev:?}");
    assert_eq!(ev[0].1["postCodeList"], json!(["BB2", "CC3"]));
    take_codes(&c).await;

    // Two transactions: two events.
    exec(&c, "INSERT INTO buyer_postcodes VALUES ('q', 'E2')").await;
    exec(&c, "DELETE FROM buyer_postcodes WHERE buyer_id = 'q'").await;
    let ev = events(&c).await;
    assert_eq!(ev.len(), 2);
    assert_eq!(ev[0].1["postCodeList"], json!(["E1", "E2"]));
    assert_eq!(ev[1].1["postCodeList"], json!([]), "all postcodes removed");
    take_codes(&c).await;

    // Moving a postcode from one buyer to another changes both.
    exec(&c, "INSERT INTO buyer_postcodes VALUES ('q', 'N1')").await;
    take_codes(&c).await;
    exec(
        &c,
        "UPDATE buyer_postcodes SET buyer_id = 'p' WHERE postcode = 'N1'",
    )
    .await;
    let ev = events(&c).await;
    let lists: Vec<(String, Value)> = ev
        .iter()
        .map(|(_, b)| {
            (
                b["buyerId"].as_str().unwrap().to_string(),
                b["postCodeList"].clone(),
            )
        })
        .collect();
    assert_eq!(lists.len(), 2, "{lists:?}");
    assert!(lists.contains(&("p".into(), json!(["BB2", "CC3", "N1"]))));
    assert!(lists.contains(&("q".into(), json!([]))));
}

#[tokio::test]
async fn deleting_a_buyer_sends_nothing() {
    let (_db, c) = setup().await;
    buyer(&c, "gone", "Gone Ltd", "1", &["X1", "X2"]).await;
    exec(&c, "INSERT INTO buyer_credits VALUES ('gone', 10)").await;
    take_codes(&c).await;
    // The cascade deletes the credits row (no credit event fires on DELETE) and
    // the postcodes (the buyer no longer exists at commit: no postcode event).
    exec(&c, "DELETE FROM buyers WHERE buyer_id = 'gone'").await;
    assert!(take_codes(&c).await.is_empty());
}

#[tokio::test]
async fn quotes_and_non_ascii_names_survive_intact() {
    let (_db, c) = setup().await;
    let name = "O'Brien \"Leads\" Ltd — Zürich ☕ \\ back\tslash";
    buyer(&c, "ünï", name, "0", &["Ø1", "A\"2"]).await;
    c.execute("INSERT INTO buyer_credits VALUES ('ünï', 7)", &[])
        .await
        .unwrap();
    let ev = events(&c).await;
    assert_eq!(
        ev.len(),
        3,
        "a postcode event per insert, then credits: {ev:?}"
    );
    let credits = ev.iter().find(|(code, _)| code == "add_credits").unwrap();
    assert_eq!(credits.1["buyerName"], json!(name));
    assert_eq!(credits.1["buyerId"], json!("ünï"));
    assert_eq!(credits.1["postCodeList"], json!(["A\"2", "Ø1"]));
    let postcodes = ev
        .iter()
        .rfind(|(code, _)| code == "post_code_change")
        .unwrap();
    assert_eq!(postcodes.1["businessName"], json!(name));
    assert_eq!(postcodes.1["postCodeList"], json!(["A\"2", "Ø1"]));
}

#[tokio::test]
async fn routing_follows_subscriptions() {
    let db = TestDb::new().await;
    let c = db.client().await;
    exec(
        &c,
        "INSERT INTO webhook.endpoints (name, url, events) VALUES
           ('credits', 'http://127.0.0.1:1/a', '{add_credits,user_credits_zero}'),
           ('billing', 'http://127.0.0.1:1/b', '{add_credits}'),
           ('off',     'http://127.0.0.1:1/c', '{add_credits,post_code_change}');
         UPDATE webhook.endpoints SET enabled = false WHERE name = 'off';",
    )
    .await;
    buyer(&c, "r", "Router", "0", &["A"]).await;
    let n: i64 = c
        .query_one("SELECT count(*) FROM webhook.outbox", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0, "post_code_change has no enabled subscriber: no row");

    exec(&c, "INSERT INTO buyer_credits VALUES ('r', 5)").await;
    let rows = c
        .query(
            "SELECT e.name, o.event_id, o.status, o.attempts, o.ordering_key
               FROM webhook.outbox o JOIN webhook.endpoints e USING (endpoint_id) ORDER BY e.name",
            &[],
        )
        .await
        .unwrap();
    let names: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
    assert_eq!(
        names,
        ["billing", "credits"],
        "one row per enabled subscribed endpoint"
    );
    let ids: Vec<String> = rows.iter().map(|r| r.get(1)).collect();
    assert_eq!(ids[0], ids[1], "both copies share one event_id");
    assert!(ids[0].starts_with("evt_"));
    for r in &rows {
        assert_eq!(r.get::<_, String>(2), "pending");
        assert_eq!(r.get::<_, i32>(3), 0);
        assert_eq!(
            r.get::<_, Option<String>>(4).as_deref(),
            Some("r"),
            "ordering key is the buyer id"
        );
    }
}

#[tokio::test]
async fn reapplying_triggers_keeps_one_event_per_change() {
    let (_db, c) = setup().await;
    c.batch_execute(TRIGGERS_SQL).await.unwrap();
    c.batch_execute(TRIGGERS_SQL).await.unwrap();
    buyer(&c, "x", "X", "0", &["P1"]).await;
    exec(&c, "INSERT INTO buyer_credits VALUES ('x', 1)").await;
    assert_eq!(take_codes(&c).await, ["post_code_change", "add_credits"]);
}

#[tokio::test]
async fn triggers_apply_to_an_existing_populated_database() {
    let db = TestDb::new().await;
    let c = db.client().await;
    // Start from an application that has data and no triggers yet.
    exec(&c, "DROP TRIGGER webhook_events ON buyer_credits; DROP TRIGGER webhook_events ON buyer_postcodes;").await;
    exec(&c, "INSERT INTO webhook.endpoints (name, url, events) VALUES ('all', 'http://127.0.0.1:1/', '{user_credits_zero,post_code_change,add_credits}')").await;
    buyer(&c, "old", "Old Co", "2", &["K1"]).await;
    exec(&c, "INSERT INTO buyer_credits VALUES ('old', 3)").await;
    assert!(take_codes(&c).await.is_empty(), "no triggers yet");
    c.batch_execute(TRIGGERS_SQL).await.unwrap();
    exec(
        &c,
        "UPDATE buyer_credits SET balance = 1 WHERE buyer_id = 'old'",
    )
    .await;
    assert_eq!(take_codes(&c).await, ["user_credits_zero"]);
}
