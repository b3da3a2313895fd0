//! The queue's statements on their own: a big tick's ids listed whole and
//! in pages.

use outbox_relay::db::{Conn, QUEUE_SESSION_SETUP};
use outbox_relay::queue::reader::{self, Scope};
use outbox_relay::queue::ticks::Tick;

use crate::support::*;

/// 250 events in one transaction, then 50 in another, read as one tick:
/// listed whole when they fit the limit (in no order from the database,
/// sorted by the relay, nothing said to follow), and in id order a page at
/// a time when they do not, the last page saying that nothing follows.
#[tokio::test]
async fn a_big_ticks_ids_are_listed_whole_or_in_pages_in_id_order() {
    let db = TestDb::new().await;
    let c = db.client().await;
    sql(
        &c,
        "INSERT INTO webhook.endpoints (name, url, events) VALUES ('ids', 'http://127.0.0.1:9/', ARRAY['e'])",
    )
    .await;
    let endpoint = one_i64(&c, "SELECT endpoint_id::bigint FROM webhook.endpoints").await as i32;
    let snapshot = || async {
        let row = c
            .query_one("SELECT pg_current_snapshot()::text", &[])
            .await
            .unwrap();
        Tick::parse(row.get::<_, &str>(0)).unwrap()
    };
    let prev = snapshot().await;
    sql(
        &c,
        "SELECT count(webhook.enqueue('e', jsonb_build_object('n', g), 'k' || (g % 7))) FROM generate_series(1, 250) g",
    )
    .await;
    sql(
        &c,
        "SELECT count(webhook.enqueue('e', jsonb_build_object('n', g), 'k' || (g % 7))) FROM generate_series(251, 300) g",
    )
    .await;
    let cur = snapshot().await;
    let all: Vec<i64> = first_column(&c, "SELECT id FROM webhook.outbox ORDER BY id").await;
    assert_eq!(all.len(), 300);

    let client = connect(&db.url).await;
    client.batch_execute(QUEUE_SESSION_SETUP).await.unwrap();
    let conn = Conn::make(client, false).await.unwrap();
    let parts: Vec<i32> = (0..16).collect();
    let scope = Scope {
        endpoint,
        mask: 15,
        parts: &parts,
        ordered: true,
    };

    for limit in [300, 1000] {
        let (ids, more) = reader::read_ids(&conn, &scope, &prev, &cur, 0, limit)
            .await
            .unwrap();
        assert_eq!(ids, all, "limit {limit}: every id, in order");
        assert!(!more, "limit {limit}: nothing follows a whole list");
    }

    let (mut listed, mut after, mut pages) = (Vec::new(), 0, Vec::new());
    loop {
        let (ids, more) = reader::read_ids(&conn, &scope, &prev, &cur, after, 120)
            .await
            .unwrap();
        pages.push((ids.len(), more));
        after = *ids.last().unwrap_or(&after);
        listed.extend(ids);
        if !more {
            break;
        }
    }
    assert_eq!(pages, [(120, true), (120, true), (60, false)]);
    assert_eq!(listed, all, "the pages together: every id once, in order");
}
