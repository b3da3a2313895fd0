//! The wake-up design (docs/wakeup.md): an idle relay is woken by NOTIFY
//! within moments, while writers stop sending NOTIFY as long as the relay is
//! busy. The poll timer is set to an hour here, so only NOTIFY can explain a
//! prompt delivery.

use std::time::{Duration, Instant};

use futures_util::StreamExt as _;
use outbox_relay::relay::{self, Relay};
use tokio_postgres::{AsyncMessage, NoTls};

use crate::delivery::{config, count_status, enqueue, start};
use crate::receiver::{Receiver, Reply};
use crate::support::{connect, own_cluster, wait_for, TestDb};

const WAIT: Duration = Duration::from_secs(30);

/// The wake-up switch of the test's one endpoint (on its row since V9).
async fn armed(c: &tokio_postgres::Client) -> Option<bool> {
    c.query_opt("SELECT armed FROM webhook.endpoints", &[])
        .await
        .unwrap()
        .map(|r| r.get(0))
}

/// A connection that LISTENs on the relay's channel and counts notifications.
async fn notification_counter(
    url: &str,
) -> (tokio_postgres::Client, tokio::sync::watch::Receiver<usize>) {
    let (client, mut conn) = tokio_postgres::connect(url, NoTls).await.unwrap();
    let (tx, rx) = tokio::sync::watch::channel(0usize);
    tokio::spawn(async move {
        let mut stream = futures_util::stream::poll_fn(move |cx| conn.poll_message(cx));
        while let Some(Ok(msg)) = stream.next().await {
            if let AsyncMessage::Notification(_) = msg {
                tx.send_modify(|n| *n += 1);
            }
        }
    });
    client.batch_execute("LISTEN webhook_outbox").await.unwrap();
    (client, rx)
}

#[tokio::test]
async fn an_idle_relay_is_woken_by_notify_not_the_poll_timer() {
    let db = TestDb::new().await;
    let c = db.client().await;
    let rx = Receiver::ok().await;
    let relay = start(
        &db,
        config("poll_interval = \"1h\"", &[("crm", &rx.url, "")]),
    )
    .await;
    for n in 1..=3 {
        wait_for("the switch armed", WAIT, || async {
            (armed(&c).await == Some(true)).then_some(())
        })
        .await;
        enqueue(&c, 1).await;
        wait_for("the lone event delivered", WAIT, || async {
            (rx.count() >= n).then_some(())
        })
        .await;
    }
    relay.shutdown().await;
}

#[tokio::test]
async fn writers_send_no_notify_while_the_relay_is_busy() {
    let db = TestDb::new().await;
    let c = db.client().await;
    let rx = Receiver::start(|_| Reply::After(Duration::from_millis(200), 200)).await;
    let relay = start(
        &db,
        config(
            "poll_interval = \"1h\"",
            &[("crm", &rx.url, "max_in_flight = 2")],
        ),
    )
    .await;
    let (_listen, notifications) = notification_counter(&db.url).await;

    // A backlog keeps the relay busy for a while.
    wait_for("the switch armed", WAIT, || async {
        (armed(&c).await == Some(true)).then_some(())
    })
    .await;
    enqueue(&c, 60).await;
    wait_for("the relay busy", WAIT, || async {
        (rx.count() >= 1).then_some(())
    })
    .await;
    wait_for("the switch disarmed", WAIT, || async {
        (armed(&c).await == Some(false)).then_some(())
    })
    .await;

    let before = *notifications.borrow();
    for _ in 0..100 {
        enqueue(&c, 1).await; // 100 separate writing transactions
    }
    // A marker through our own NOTIFY proves every earlier notification has
    // reached this connection.
    c.batch_execute("NOTIFY webhook_outbox, 'marker'")
        .await
        .unwrap();
    let mut seen = notifications.clone();
    let after = wait_for("the marker", WAIT, || {
        let now = *seen.borrow_and_update();
        async move { (now > before).then_some(now) }
    })
    .await;
    assert_eq!(
        after - before,
        1,
        "writers sent NOTIFY while the relay was busy"
    );

    // Once the backlog is gone the relay arms again, and writers notify.
    wait_for("all delivered", Duration::from_secs(60), || async {
        (count_status(&c, "delivered").await == 160).then_some(())
    })
    .await;
    wait_for("the switch armed again", WAIT, || async {
        (armed(&c).await == Some(true)).then_some(())
    })
    .await;
    let before = *notifications.borrow();
    enqueue(&c, 1).await;
    wait_for("a NOTIFY from the writer", WAIT, || async {
        (*notifications.borrow() > before).then_some(())
    })
    .await;
    wait_for("delivered", WAIT, || async {
        (rx.count() >= 161).then_some(())
    })
    .await;
    relay.shutdown().await;
}

/// The race the settle step closes, set up: a transaction enqueues while the
/// relay is busy (switch off, so it will not NOTIFY), and the relay drains
/// its backlog and arms while that transaction is still open. Returns the
/// relay, its receiver, and the open transaction's session.
async fn a_late_writer(url: &str) -> (Relay, Receiver, tokio_postgres::Client) {
    let c = connect(url).await;
    let rx = Receiver::start(|_| Reply::After(Duration::from_millis(300), 200)).await;
    let relay = relay::start(
        config(
            "poll_interval = \"1h\"",
            &[("crm", &rx.url, "max_in_flight = 1")],
        ),
        url.to_string(),
    )
    .await
    .expect("relay starts");
    wait_for("the switch armed", WAIT, || async {
        (armed(&c).await == Some(true)).then_some(())
    })
    .await;
    enqueue(&c, 3).await;
    wait_for("the switch disarmed", WAIT, || async {
        (armed(&c).await == Some(false)).then_some(())
    })
    .await;

    let writer = connect(url).await;
    writer
        .batch_execute("BEGIN; SELECT webhook.enqueue('add_credits', '{\"late\": true}')")
        .await
        .unwrap();
    wait_for("the relay idle and armed", WAIT, || async {
        (armed(&c).await == Some(true)).then_some(())
    })
    .await;
    (relay, rx, writer)
}

/// Waits for the late writer's event.
async fn late_event_delivered(rx: &Receiver) {
    wait_for("the late event delivered", WAIT, || async {
        rx.requests()
            .iter()
            .any(|r| r.json()["late"] == true)
            .then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_writer_that_saw_the_switch_off_is_waited_for_when_the_relay_arms() {
    // Its row was invisible to the relay's last read and no NOTIFY comes;
    // with the poll timer at an hour, only the relay waiting for that
    // transaction to end delivers it.
    let db = TestDb::new().await;
    let (relay, rx, writer) = a_late_writer(&db.url).await;
    // Stay open past the relay's first read after arming, then commit.
    writer
        .batch_execute("SELECT pg_sleep(0.2); COMMIT")
        .await
        .unwrap();
    late_event_delivered(&rx).await;
    relay.shutdown().await;
}

/// The settle step's checks so far (sql/settled.sql), from pg_stat_statements.
async fn settle_checks(c: &tokio_postgres::Client) -> i64 {
    c.query_one(
        "SELECT coalesce(sum(calls), 0)::bigint FROM pg_stat_statements
          WHERE query LIKE '%pg_snapshot_xip%'",
        &[],
    )
    .await
    .unwrap()
    .get(0)
}

#[tokio::test]
async fn a_writer_open_for_seconds_after_arming_is_checked_ever_more_rarely() {
    // The settle step waits as long as the writer stays open, its checks
    // spaced by a twentieth of the time waited: ten seconds cost about 70
    // checks (at 50 ms apart, as before, they cost 200), and the rows come
    // a moment after the commit, not at the poll timer (an hour here).
    let (_cluster, url) = own_cluster(&[("shared_preload_libraries", "pg_stat_statements")]).await;
    let c = connect(&url).await;
    c.batch_execute("CREATE EXTENSION pg_stat_statements")
        .await
        .unwrap();
    let (relay, rx, writer) = a_late_writer(&url).await;
    let before = settle_checks(&c).await;
    writer
        .batch_execute("SELECT pg_sleep(10); COMMIT")
        .await
        .unwrap();
    let committed = Instant::now();
    late_event_delivered(&rx).await;
    let after_commit = committed.elapsed();
    let checks = settle_checks(&c).await - before;
    println!(
        "settle checks during 10 s: {checks}; the late event {after_commit:?} after its commit"
    );
    assert!(
        checks < 100,
        "{checks} settle checks while one writer stayed open for 10 s"
    );
    assert!(
        checks >= 10,
        "only {checks} settle checks: was the writer waited for at all?"
    );
    // At 10 s the checks are 0.5 s apart; the poll timer is an hour.
    assert!(
        after_commit < Duration::from_secs(5),
        "the late event came {after_commit:?} after its commit"
    );
    relay.shutdown().await;
}

#[tokio::test]
async fn steady_concurrent_writers_are_all_delivered_without_the_poll_timer() {
    let db = TestDb::new().await;
    let rx = Receiver::ok().await;
    let relay = start(
        &db,
        config("poll_interval = \"1h\"", &[("crm", &rx.url, "")]),
    )
    .await;
    let mut writers = Vec::new();
    for w in 0..4u64 {
        let url = db.url.clone();
        writers.push(tokio::spawn(async move {
            let c = crate::support::connect(&url).await;
            for i in 0..75u64 {
                // The transaction stays open a moment after enqueueing: the
                // window in which the relay may arm without this writer seeing it.
                c.batch_execute(
                    "BEGIN; SELECT webhook.enqueue('add_credits', '{}'); SELECT pg_sleep(0.01); COMMIT;",
                )
                .await
                .unwrap();
                // Uneven gaps so commits land on every phase of the relay's cycle.
                let pause = (i * 7 + w * 3) % 5;
                if pause > 0 {
                    tokio::time::sleep(Duration::from_millis(pause)).await;
                }
            }
        }));
    }
    for w in writers {
        w.await.unwrap();
    }
    let c = db.client().await;
    wait_for("all 300 delivered without the poll timer", WAIT, || async {
        (count_status(&c, "delivered").await == 300).then_some(())
    })
    .await;
    assert_eq!(rx.unique_ids(), 300);
    relay.shutdown().await;
}
