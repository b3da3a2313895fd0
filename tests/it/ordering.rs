//! The ordering contract (docs/delivery.md): per endpoint and ordering key,
//! events go one at a time in commit order; a failing event holds back only
//! its own key; a dead event moves its key on; with `ordering = "none"` a
//! key's events may go at once. Real triggers, a real relay, a verifying
//! receiver that logs every request.

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime};

use tokio_postgres::Client;

use crate::delivery::start_one;
use crate::receiver::Reply;
use crate::support::{
    add_buyers, buyer, buyer_and_amount, count, going_backwards, ms_between,
    out_of_order_by_first_receipt, percentile, top_up, wait_for, LogReceiver, Logged, TestDb,
};

const WAIT: Duration = Duration::from_secs(60);

/// Tops up each of `buyers` buyers (`prefix`) `rounds` times, by 1, 2, 3, ...,
/// each top-up its own transaction, from `writers` sessions; a buyer's
/// top-ups always come from the same session, one after the other.
async fn top_ups(db: &TestDb, prefix: &str, buyers: i32, rounds: i64, writers: i32) {
    let mut tasks = Vec::new();
    for w in 0..writers {
        let c = db.client().await;
        let prefix = prefix.to_string();
        tasks.push(tokio::spawn(async move {
            for amount in 1..=rounds {
                for i in (w..buyers).step_by(writers as usize) {
                    top_up(&c, &buyer(&prefix, i), amount).await;
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

/// Per key, the outbox ids in sequence order: commit order as the log has it
/// (a buyer's top-ups are serialised on its row, so id order is commit order).
async fn ids_follow_the_sequence(c: &Client) -> usize {
    let rows = c
        .query(
            "SELECT ordering_key, (payload->>'topUpAmount')::bigint FROM webhook.outbox ORDER BY id",
            &[],
        )
        .await
        .unwrap();
    let mut last: HashMap<String, i64> = HashMap::new();
    let mut bad = 0;
    for r in rows {
        let (key, seq): (String, i64) = (r.get(0), r.get(1));
        if last.insert(key, seq).is_some_and(|prev| prev >= seq) {
            bad += 1;
        }
    }
    bad
}

/// Every request was signed; every event was received and delivered.
async fn all_signed_and_delivered(c: &Client, log: &[Logged], events: i64) {
    assert!(log.iter().all(|l| l.signed), "every request is signed");
    wait_for("every row delivered", WAIT, || async {
        let n = count(
            c,
            "SELECT count(*) FROM webhook.outbox WHERE status = 'delivered'",
            &[],
        )
        .await;
        (n == events).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_buyers_top_ups_arrive_in_commit_order() {
    let db = TestDb::new().await;
    let c = db.client().await;
    add_buyers(&c, "b", 300).await;
    let rx = LogReceiver::start(buyer_and_amount, |_| Reply::Status(200)).await;
    let relay = start_one(&db, "crm", &rx.url, "").await;

    top_ups(&db, "b", 300, 5, 8).await;
    rx.wait_events(1500, "1,500 top-ups received", WAIT).await;
    let log = rx.log();
    all_signed_and_delivered(&c, &log, 1500).await;
    relay.shutdown().await;

    assert_eq!(
        ids_follow_the_sequence(&c).await,
        0,
        "the log's order is commit order"
    );
    let out_of_order = out_of_order_by_first_receipt(&log);
    let backwards = going_backwards(&log);
    println!(
        "FIGURES ordering_no_failures: buyers=300 events=1500 received={} requests={} out_of_order_keys={} backwards_keys={}",
        rx.events(),
        log.len(),
        out_of_order.len(),
        backwards.len()
    );
    assert_eq!(rx.events(), 1500, "0 lost");
    assert!(
        out_of_order.is_empty(),
        "keys out of order: {out_of_order:?}"
    );
    assert!(backwards.is_empty(), "keys going backwards: {backwards:?}");
    assert_eq!(log.len(), 1500, "each top-up sent once");
}

/// 503 when `fail`, else 200.
fn fail_if(fail: bool) -> Reply {
    Reply::Status(if fail { 503 } else { 200 })
}

/// 503 to the first attempt of a quarter of the top-ups, chosen by buyer and
/// amount; 200 otherwise.
fn quarter_failing(l: &Logged) -> Reply {
    let n: i64 = l
        .key
        .trim_start_matches(char::is_alphabetic)
        .parse()
        .unwrap_or(0);
    fail_if(l.nth == 1 && (n + l.seq) % 4 == 0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_quarter_of_first_attempts_failing_no_key_goes_out_of_order() {
    let db = TestDb::new().await;
    let c = db.client().await;
    add_buyers(&c, "b", 300).await;
    let rx = LogReceiver::start(buyer_and_amount, quarter_failing).await;
    // Retries 1 to 2 s after the failure: long enough that the key's next
    // top-up is written and parked behind its held head, on a loaded machine
    // too.
    let relay = start_one(
        &db,
        "crm",
        &rx.url,
        "retry_initial = \"2s\"\nretry_max = \"4s\"",
    )
    .await;

    let writers = top_ups(&db, "b", 300, 5, 8);
    // While a head waits for its retry, the DBA sees its key held by it,
    // with the key's later events parked behind it.
    let watch = async {
        wait_for("a held key in webhook.held_keys", WAIT, || async {
            c.query(
                "SELECT ordering_key, event_id, attempts, next_attempt_at > now(), parked
                   FROM webhook.held_keys WHERE endpoint = 'crm'",
                &[],
            )
            .await
            .unwrap()
            .into_iter()
            .map(|r| {
                (
                    r.get::<_, String>(0),
                    r.get::<_, String>(1),
                    r.get::<_, i32>(2),
                    r.get::<_, bool>(3),
                    r.get::<_, i64>(4),
                )
            })
            .find(|(_, _, attempts, later, parked)| *attempts == 1 && *later && *parked > 0)
        })
        .await
    };
    let ((), (held_key, held_event, _, _, parked)) = tokio::join!(writers, watch);
    rx.wait_events(1500, "1,500 top-ups received", WAIT).await;
    all_signed_and_delivered(&c, &rx.log(), 1500).await;
    let log = rx.log();
    relay.shutdown().await;

    // The held head is one the receiver failed, and its key's next event
    // came only after its retry was delivered.
    let first = log
        .iter()
        .find(|l| l.id == held_event && l.nth == 1)
        .expect("the held head was sent");
    assert_eq!(first.key, held_key);
    assert_eq!(first.status, 503, "the head holding its key failed");
    let failed = log.iter().filter(|l| l.status == 503).count();
    let out_of_order = out_of_order_by_first_receipt(&log);
    let backwards = going_backwards(&log);
    let mut last_status: HashMap<(&str, i64), u16> = HashMap::new();
    for l in &log {
        last_status.insert((&l.key, l.seq), l.status);
    }
    let undelivered = last_status.values().filter(|s| **s != 200).count();
    println!(
        "FIGURES ordering_quarter_failing: events=1500 received={} requests={} failed_first_attempts={failed} out_of_order_keys={} backwards_keys={} held_seen={held_key} parked_behind_it={parked}",
        rx.events(),
        log.len(),
        out_of_order.len(),
        backwards.len()
    );
    assert!(
        (300..=450).contains(&failed),
        "about a quarter of first attempts failed: {failed}"
    );
    assert_eq!(rx.events(), 1500, "0 lost");
    assert_eq!(
        undelivered, 0,
        "every event's last request was answered 200"
    );
    let mut statuses: HashMap<&str, Vec<u16>> = HashMap::new();
    for l in &log {
        statuses.entry(&l.id).or_default().push(l.status);
    }
    let mut extra: Vec<String> = statuses
        .iter()
        .filter(|(_, s)| s.len() > 2 || (s.len() == 2 && s[0] == 200))
        .map(|(id, s)| {
            let l = log.iter().find(|l| l.id == *id).unwrap();
            format!("{}#{} {id} {s:?}", l.key, l.seq)
        })
        .collect();
    extra.sort();
    assert!(
        extra.is_empty(),
        "{} events sent more often than their failures ask: {extra:?}",
        extra.len()
    );
    assert_eq!(
        log.len(),
        1500 + failed,
        "each failure retried once, nothing else twice"
    );
    assert!(
        out_of_order.is_empty(),
        "keys out of order: {out_of_order:?}"
    );
    assert!(
        backwards.is_empty(),
        "a key's next event went before its head was delivered: {backwards:?}"
    );
    assert_eq!(ids_follow_the_sequence(&c).await, 0);
    let held = count(&c, "SELECT count(*) FROM webhook.holds", &[]).await;
    assert_eq!(held, 0, "no key stays held once delivered");
}

/// The requests for one key, as (sequence number, status), in arrival order.
fn key_requests(log: &[Logged], key: &str) -> Vec<(i64, u16)> {
    log.iter()
        .filter(|l| l.key == key)
        .map(|l| (l.seq, l.status))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_head_moves_its_key_on() {
    let db = TestDb::new().await;
    let c = db.client().await;
    add_buyers(&c, "spent", 1).await;
    add_buyers(&c, "gone", 1).await;
    let (spent, gone) = (buyer("spent", 0), buyer("gone", 0));
    // The first top-up is answered slowly, so that the next two are written
    // and read while it is in flight; the second fails: 503 until its
    // attempts run out for one buyer, 410 (no retry) for the other.
    let rx = LogReceiver::start(buyer_and_amount, |l| match (l.key.as_str(), l.seq) {
        (_, 1) => Reply::After(Duration::from_millis(400), 200),
        (k, 2) if k.starts_with("spent") => Reply::Status(503),
        (_, 2) => Reply::Status(410),
        _ => Reply::Status(200),
    })
    .await;
    let relay = start_one(
        &db,
        "crm",
        &rx.url,
        "max_attempts = 2\nretry_initial = \"200ms\"\nretry_max = \"200ms\"",
    )
    .await;
    for amount in 1..=3 {
        top_up(&c, &spent, amount).await;
        top_up(&c, &gone, amount).await;
    }
    rx.wait_events(6, "both buyers' three top-ups received", WAIT)
        .await;
    wait_for("the third top-ups delivered", WAIT, || async {
        let n = count(
            &c,
            "SELECT count(*) FROM webhook.outbox
                  WHERE status = 'delivered' AND (payload->>'topUpAmount')::int = 3",
            &[],
        )
        .await;
        (n == 2).then_some(())
    })
    .await;
    let log = rx.log();
    relay.shutdown().await;

    assert!(log.iter().all(|l| l.signed));
    assert_eq!(
        key_requests(&log, &spent),
        [(1, 200), (2, 503), (2, 503), (3, 200)],
        "the second top-up is retried until dead, then the third goes"
    );
    assert_eq!(
        key_requests(&log, &gone),
        [(1, 200), (2, 410), (3, 200)],
        "410 is dead at once, then the third goes"
    );
    let rows = c
        .query(
            "SELECT o.ordering_key, o.status, o.attempts, d.outbox_id IS NOT NULL
               FROM webhook.outbox o LEFT JOIN webhook.dead_rows d ON d.outbox_id = o.id
              WHERE (o.payload->>'topUpAmount')::int = 2 ORDER BY 1",
            &[],
        )
        .await
        .unwrap();
    let dead: Vec<(String, String, i32, bool)> = rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect();
    assert_eq!(
        dead,
        [
            (gone.clone(), "dead".into(), 1, true),
            (spent.clone(), "dead".into(), 2, true)
        ]
    );
    let held = count(&c, "SELECT count(*) FROM webhook.holds", &[]).await;
    assert_eq!(held, 0, "a dead head holds its key no more");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_head_holds_back_only_its_own_key() {
    let db = TestDb::new().await;
    let c = db.client().await;
    add_buyers(&c, "held", 1).await;
    add_buyers(&c, "free", 200).await;
    let held = buyer("held", 0);
    let rx = LogReceiver::start(buyer_and_amount, |l| {
        fail_if(l.key.starts_with("held") && l.seq == 1 && l.nth == 1)
    })
    .await;
    // The first retry waits 5 to 10 s (equal jitter on 10 s).
    let relay = start_one(
        &db,
        "crm",
        &rx.url,
        "retry_initial = \"10s\"\nretry_max = \"10s\"",
    )
    .await;
    top_up(&c, &held, 1).await;
    wait_for("the key held by its failed head", WAIT, || async {
        let n = count(
            &c,
            "SELECT count(*) FROM webhook.holds WHERE ordering_key = $1",
            &[&held],
        )
        .await;
        (n == 1).then_some(())
    })
    .await;
    top_up(&c, &held, 2).await;

    // 200 events of other keys, each its own transaction, from 4 sessions.
    let started = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..4 {
        let c = db.client().await;
        tasks.push(tokio::spawn(async move {
            let mut commits = Vec::new();
            for i in (w..200).step_by(4) {
                let key = buyer("free", i);
                top_up(&c, &key, 1).await;
                commits.push((key, SystemTime::now()));
            }
            commits
        }));
    }
    let mut commits: HashMap<String, SystemTime> = HashMap::new();
    for t in tasks {
        commits.extend(t.await.unwrap());
    }
    let bound = Duration::from_secs(3);
    rx.wait_events(201, "the 200 other keys' events received", bound)
        .await;
    let took = started.elapsed();
    let log = rx.log();
    let latencies: Vec<f64> = log
        .iter()
        .filter(|l| l.key.starts_with("free"))
        .map(|l| ms_between(commits[&l.key], l.at))
        .collect();
    let worst = latencies.iter().copied().fold(0.0, f64::max);
    // Still held by its first event, its second parked behind it.
    let still_held: Vec<(i32, i64)> = c
        .query(
            "SELECT attempts, parked FROM webhook.held_keys WHERE ordering_key = $1",
            &[&held],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(still_held, [(1, 1)], "the failing key is still held");
    assert_eq!(
        key_requests(&rx.log(), &held),
        [(1, 503)],
        "nothing more of the held key went meanwhile"
    );

    // Its retry is delivered, and then its next event.
    wait_for(
        "the held key's two events",
        Duration::from_secs(20),
        || async { (key_requests(&rx.log(), &held).len() == 3).then_some(()) },
    )
    .await;
    relay.shutdown().await;
    println!(
        "FIGURES ordering_holds_one_key: other_events=200 all_received_ms={} worst_commit_to_receipt_ms={worst:.1}",
        took.as_millis()
    );
    assert!(log.iter().all(|l| l.signed));
    assert_eq!(latencies.len(), 200, "each other event sent once");
    assert!(
        worst < 1000.0,
        "other keys flow at full speed: worst {worst:.1} ms"
    );
    assert_eq!(
        key_requests(&rx.log(), &held),
        [(1, 503), (1, 200), (2, 200)]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_ordering_none_a_keys_events_go_at_once() {
    let db = TestDb::new().await;
    let c = db.client().await;
    add_buyers(&c, "one", 1).await;
    add_buyers(&c, "b", 50).await;
    let one = buyer("one", 0);
    let rx = LogReceiver::start(buyer_and_amount, |l| {
        if l.key.starts_with("one") {
            Reply::After(Duration::from_millis(500), 200)
        } else {
            quarter_failing(l)
        }
    })
    .await;
    let relay = start_one(
        &db,
        "crm",
        &rx.url,
        "ordering = \"none\"\nretry_initial = \"100ms\"\nretry_max = \"300ms\"",
    )
    .await;
    // One buyer's five top-ups in one transaction: each answered after 500 ms.
    c.batch_execute(&format!(
        "BEGIN; {} COMMIT;",
        (1..=5)
            .map(|a| format!(
                "UPDATE buyer_credits SET balance = balance + {a} WHERE buyer_id = '{one}';"
            ))
            .collect::<String>()
    ))
    .await
    .unwrap();
    top_ups(&db, "b", 50, 5, 4).await;
    rx.wait_events(255, "every event received", WAIT).await;
    all_signed_and_delivered(&c, &rx.log(), 255).await;
    let log = rx.log();
    relay.shutdown().await;

    // The five of one key overlapped: the last arrived before the first was answered.
    let times: Vec<SystemTime> = log.iter().filter(|l| l.key == one).map(|l| l.at).collect();
    assert_eq!(times.len(), 5);
    let spread = ms_between(times[0], times[4]);
    let failed = log.iter().filter(|l| l.status == 503).count();
    println!(
        "FIGURES ordering_none: events=255 received={} requests={} failed_first_attempts={failed} one_key_spread_ms={spread:.1}",
        rx.events(),
        log.len()
    );
    assert!(
        spread < 500.0,
        "one key's events were in flight at once ({spread:.1} ms from first to last arrival)"
    );
    assert!(failed > 0);
    assert_eq!(rx.events(), 255, "0 lost");
    let held = count(
        &c,
        "SELECT (SELECT count(*) FROM webhook.holds) + (SELECT count(*) FROM webhook.parked)",
        &[],
    )
    .await;
    assert_eq!(held, 0, "nothing is held or parked without order");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_head_is_delivered_once() {
    let db = TestDb::new().await;
    let c = db.client().await;
    add_buyers(&c, "r", 200).await;
    add_buyers(&c, "busy", 50).await;
    // Every retried buyer's only event fails once; other buyers' top-ups go
    // on meanwhile, so the relay is woken and looks for due retries often.
    let rx = LogReceiver::start(buyer_and_amount, |l| {
        fail_if(l.key.starts_with('r') && l.nth == 1)
    })
    .await;
    let relay = start_one(
        &db,
        "crm",
        &rx.url,
        "retry_initial = \"100ms\"\nretry_max = \"300ms\"",
    )
    .await;
    let busy = tokio::spawn({
        let url = db.url.clone();
        async move {
            let c = crate::support::connect(&url).await;
            let until = Instant::now() + Duration::from_secs(3);
            let mut amount = 0;
            while Instant::now() < until {
                amount += 1;
                for i in 0..50 {
                    top_up(&c, &buyer("busy", i), amount).await;
                }
            }
            amount * 50
        }
    });
    for i in 0..200 {
        top_up(&c, &buyer("r", i), 1).await;
    }
    let busy_events = busy.await.unwrap() as usize;
    rx.wait_events(200 + busy_events, "every event received", WAIT)
        .await;
    all_signed_and_delivered(&c, &rx.log(), 200 + busy_events as i64).await;
    let log = rx.log();
    relay.shutdown().await;

    let mut sends: HashMap<&str, Vec<u16>> = HashMap::new();
    for l in log.iter().filter(|l| l.key.starts_with('r')) {
        sends.entry(&l.key).or_default().push(l.status);
    }
    let mut twice: Vec<String> = sends
        .iter()
        .filter(|(_, s)| s.as_slice() != [503, 200])
        .map(|(k, s)| format!("{k} {s:?}"))
        .collect();
    twice.sort();
    println!(
        "FIGURES retried_once: retried=200 busy_events={busy_events} requests_of_retried={} sent_again_after_delivery={}",
        sends.values().map(Vec::len).sum::<usize>(),
        twice.len()
    );
    assert_eq!(sends.len(), 200);
    // Each retry went when it was due (the poll interval is 200 ms).
    let late: Vec<f64> = c
        .query(
            "SELECT extract(epoch FROM a.started_at - o.next_attempt_at)::float8 * 1000
               FROM webhook.outbox o JOIN webhook.attempts a ON a.outbox_id = o.id AND a.attempt = 2
              WHERE o.ordering_key LIKE 'r%'",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    println!(
        "FIGURES retried_on_time: retries={} late_p50_ms={:.0} late_max_ms={:.0}",
        late.len(),
        percentile(&late, 50.0),
        percentile(&late, 100.0)
    );
    assert!(
        twice.is_empty(),
        "{} retried heads were sent again after their retry was delivered: {twice:?}",
        twice.len()
    );
}
