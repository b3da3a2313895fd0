//! Several relays keep the order (docs/queue.md 6.3, 6.6): relay processes
//! share an endpoint's partitions under a lease. Three relays, 30,000 events
//! over 3,000 keys, one killed with SIGKILL halfway: nothing is lost, no key
//! goes out of order or has two requests in flight at once, and the only
//! duplicates are re-sends of what the killed relay had sent without a
//! recorded outcome, each before its key's next event. And a relay that
//! joins while events flow gets its share within seconds, without a
//! duplicate.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant, SystemTime};

use crate::delivery::{config_text, count_status};
use crate::process::{wait_synced, RelayProcess};
use crate::receiver::Reply;
use crate::support::{
    going_backwards, ms_between, out_of_order_by_first_receipt, wait_for, LogReceiver, Logged,
    TestDb,
};

const KEYS: i32 = 3_000;
const PER_KEY: i32 = 10;
const EVENTS: usize = (KEYS * PER_KEY) as usize;
const RELAYS: [&str; 3] = ["relay-a", "relay-b", "relay-c"];
const KILLED: &str = "relay-a";
const MAX_IN_FLIGHT: usize = 32;
const WAIT: Duration = Duration::from_secs(30);
/// The receiver answers each request after this long: the killed relay has
/// requests in flight.
const ANSWER_AFTER: Duration = Duration::from_millis(3);

/// A body's key and sequence number.
fn key_and_seq(body: &serde_json::Value) -> (String, i64) {
    (
        body["key"].as_str().unwrap_or_default().to_string(),
        body["seq"].as_i64().unwrap_or(-1),
    )
}

/// Partitions per owner (None: free).
async fn owners(c: &tokio_postgres::Client) -> BTreeMap<Option<String>, Vec<i32>> {
    let mut by: BTreeMap<Option<String>, Vec<i32>> = BTreeMap::new();
    for r in c
        .query(
            "SELECT owner, partition FROM webhook.partitions ORDER BY partition",
            &[],
        )
        .await
        .unwrap()
    {
        by.entry(r.get(0)).or_default().push(r.get(1));
    }
    by
}

/// Waits until every partition is owned, each of `relays` owning at least `least`.
async fn wait_shared(c: &tokio_postgres::Client, relays: &[&str], least: usize, timeout: Duration) {
    wait_for(
        "the partitions shared among the relays",
        timeout,
        || async {
            let o = owners(c).await;
            let fair = relays.iter().all(|r| {
                o.get(&Some(r.to_string()))
                    .is_some_and(|p| p.len() >= least)
            });
            (fair && !o.contains_key(&None)).then_some(())
        },
    )
    .await
}

/// A relay process named `name` (it sends an `x-relay` header with its name,
/// so the receiver knows who sent what), lease 6 s.
fn relay(db_url: &str, rx_url: &str, name: &str) -> RelayProcess {
    let text = config_text(
        &format!("relay_name = \"{name}\"\nlease = \"6s\""),
        &[(
            "crm",
            rx_url,
            &format!(
                "timeout = \"1s\"\nmax_in_flight = {MAX_IN_FLIGHT}\nheaders = {{ x-relay = \"{name}\" }}"
            ),
        )],
    );
    RelayProcess::spawn_with_env(db_url, &text, &[("RUST_LOG", "outbox_relay=info")])
}

/// Writes `keys` keys' events: sequence 1 of every key, then 2, ... up to
/// `per_key`, in transactions of 100 events.
fn write_events(c: tokio_postgres::Client, keys: i32, per_key: i32) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let keys: Vec<String> = (0..keys).map(|k| format!("key{k:04}")).collect();
        for seq in 1..=per_key {
            for chunk in keys.chunks(100) {
                c.execute(
                    "SELECT webhook.enqueue('add_credits', jsonb_build_object('key', k, 'seq', $2::int), k)
                       FROM unnest($1::text[]) k",
                    &[&chunk, &seq],
                )
                .await
                .unwrap();
            }
        }
    })
}

/// Waits until `n` events have arrived; if they do not within `timeout`,
/// fails with what the database says of the rest: their status and
/// partition, and who owns the partitions with their cursors.
async fn wait_received(rx: &LogReceiver, c: &tokio_postgres::Client, n: usize, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while rx.events() < n && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if rx.events() >= n {
        return;
    }
    let rows = c
        .query(
            "SELECT o.status, hashtext(o.ordering_key) & 15 AS part, count(*),
                    count(*) FILTER (WHERE EXISTS (SELECT 1 FROM webhook.parked k WHERE k.outbox_id = o.id)) AS parked,
                    min(o.id), max(o.id)
               FROM webhook.outbox o WHERE o.status <> 'delivered' GROUP BY 1, 2 ORDER BY 2",
            &[],
        )
        .await
        .unwrap();
    let undelivered: Vec<String> = rows
        .iter()
        .map(|r| {
            format!(
                "{} p{} n={} parked={} ids={}..{}",
                r.get::<_, String>(0),
                r.get::<_, i32>(1),
                r.get::<_, i64>(2),
                r.get::<_, i64>(3),
                r.get::<_, i64>(4),
                r.get::<_, i64>(5)
            )
        })
        .collect();
    let parts: Vec<String> = c
        .query(
            "SELECT partition, owner, lease_expires_at > now(), tick::text, in_flight FROM webhook.partitions ORDER BY 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| {
            format!(
                "p{} {:?} live={:?} tick={} in_flight={}",
                r.get::<_, i32>(0),
                r.get::<_, Option<String>>(1),
                r.get::<_, Option<bool>>(2),
                r.get::<_, String>(3),
                r.get::<_, i32>(4)
            )
        })
        .collect();
    panic!(
        "{} of {n} events received after {timeout:?}; undelivered rows: {undelivered:?}; partitions: {parts:?}",
        rx.events()
    );
}

/// Keys that had two requests in flight at once: a key's next request must
/// come only after the answer to the one before (answers take ANSWER_AFTER).
fn in_flight_twice(log: &[Logged]) -> BTreeSet<String> {
    let mut last_at: HashMap<&str, SystemTime> = HashMap::new();
    let mut overlapping = BTreeSet::new();
    for l in log {
        if let Some(prev) = last_at.insert(&l.key, l.at) {
            if l.at < prev + ANSWER_AFTER {
                overlapping.insert(l.key.clone());
            }
        }
    }
    overlapping
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_relays_one_killed_lose_nothing_and_keep_every_keys_order() {
    let began = Instant::now();
    let db = TestDb::new().await;
    let c = db.client().await;
    let rx = LogReceiver::start(key_and_seq, |_| Reply::After(ANSWER_AFTER, 200)).await;
    let mut relays: Vec<RelayProcess> = RELAYS.iter().map(|n| relay(&db.url, &rx.url, n)).collect();
    wait_synced(&c).await;
    // Shares are ceil(16 / 3) = 6 at most: 6, 6 and 4 at the least.
    wait_shared(&c, &RELAYS, 4, WAIT).await;
    let writer = write_events(db.client().await, KEYS, PER_KEY);
    rx.wait_events(
        EVENTS / 2,
        "half the events received",
        Duration::from_secs(60),
    )
    .await;
    let killed_owned = owners(&c)
        .await
        .remove(&Some(KILLED.to_string()))
        .unwrap_or_default();
    let to_kill = began.elapsed();
    let kill_sent = SystemTime::now();
    tokio::task::block_in_place(|| relays[0].kill9());
    let at_kill = rx.events();
    writer.await.unwrap();

    let left = Duration::from_secs(88).saturating_sub(began.elapsed());
    wait_received(&rx, &c, EVENTS, left).await;
    wait_for("every row delivered", Duration::from_secs(10), || async {
        (count_status(&c, "delivered").await == EVENTS as i64).then_some(())
    })
    .await;
    let after_kill = owners(&c).await;
    let log = rx.log();

    // Duplicates: every request of an event after its first.
    let mut firsts: HashMap<&str, usize> = HashMap::new();
    for (i, l) in log.iter().enumerate() {
        firsts.entry(&l.id).or_insert(i);
    }
    let dup_ids: Vec<&str> = {
        let mut d: Vec<&str> = log
            .iter()
            .filter(|l| l.nth == 2)
            .map(|l| l.id.as_str())
            .collect();
        d.sort();
        d
    };
    // Each request of an event, for the messages: relay, ms from the kill, answer.
    let story = |id: &str| -> String {
        log.iter()
            .filter(|l| l.id == id)
            .map(|l| {
                format!(
                    "{}#{} {} {:+.0}ms",
                    l.key,
                    l.seq,
                    l.relay,
                    ms_between(kill_sent, l.at)
                )
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    // Duplicates whose attempt by the killed relay was recorded, with every
    // recorded attempt of theirs (relay, attempt, status, ms from the kill).
    let recorded: Vec<String> = c
        .query(
            "SELECT o.event_id, string_agg(format('%s #%s %s %sms', a.relay, a.attempt, a.response_status,
                        round(extract(epoch FROM a.started_at - $3::timestamptz) * 1000)), '; ' ORDER BY a.started_at)
               FROM webhook.outbox o JOIN webhook.attempts a ON a.outbox_id = o.id
              WHERE o.event_id = ANY ($1) AND EXISTS (
                    SELECT 1 FROM webhook.attempts k WHERE k.outbox_id = o.id AND k.relay = $2)
              GROUP BY o.event_id",
            &[&dup_ids, &KILLED, &kill_sent],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| {
            let id: String = r.get(0);
            format!("{} | recorded: {}", story(&id), r.get::<_, String>(1))
        })
        .collect();
    let mut not_killed_first = Vec::new();
    // A re-sent event was either still waiting for its answer at the kill
    // (in flight: at most max_in_flight), or answered with its outcome not
    // yet written back.
    let mut answered_unwritten = 0;
    let mut resent_late = Vec::new();
    for id in &dup_ids {
        let first = &log[firsts[id]];
        // Whatever carries the killed relay's name was sent before it died
        // (a receipt may land a few milliseconds after the kill was sent).
        if first.relay != KILLED {
            not_killed_first.push(story(id));
        }
        if first.at + ANSWER_AFTER < kill_sent {
            answered_unwritten += 1;
        }
        // Re-received before the next event of its key.
        let again = log.iter().position(|l| l.id == *id && l.nth == 2).unwrap();
        let next = log
            .iter()
            .position(|l| l.key == first.key && l.seq == first.seq + 1 && l.nth == 1);
        if next.is_some_and(|n| n < again) {
            resent_late.push(format!("{}#{}", first.key, first.seq));
        }
    }
    let overlapping = in_flight_twice(&log);
    let out_of_order = out_of_order_by_first_receipt(&log);
    let backwards = going_backwards(&log);
    let by_relay = |r: &str| log.iter().filter(|l| l.relay == r).count();
    println!(
        "FIGURES three_relays: events={EVENTS} keys={KEYS} received={} requests={} lost={} duplicates={} \
         duplicates_answered_before_kill={answered_unwritten} duplicates_not_from_killed_in_flight={} duplicates_after_next_event={} out_of_order_keys={} backwards_keys={} keys_in_flight_twice={} \
         killed_at_received={at_kill} killed_owned={killed_owned:?} kill_after_s={:.1} sent_a={} sent_b={} sent_c={} owners_after={after_kill:?} took_s={:.1}",
        rx.events(),
        log.len(),
        EVENTS - rx.events(),
        dup_ids.len(),
        not_killed_first.len() + recorded.len(),
        resent_late.len(),
        out_of_order.len(),
        backwards.len(),
        overlapping.len(),
        to_kill.as_secs_f64(),
        by_relay("relay-a"),
        by_relay("relay-b"),
        by_relay("relay-c"),
        began.elapsed().as_secs_f64()
    );

    assert!(log.iter().all(|l| l.signed), "every request is signed");
    assert_eq!(rx.events(), EVENTS, "0 lost");
    assert!(
        out_of_order.is_empty(),
        "keys out of order by first receipt: {out_of_order:?}"
    );
    // A survivor may send an event twice only when it recorded the first
    // send as failed: the receiver saw the request, the relay saw no answer
    // in time (a timeout on a loaded machine), and at-least-once retries it.
    let survivor_dups: Vec<&str> = dup_ids
        .iter()
        .filter(|id| {
            let first = &log[firsts[**id]];
            first.relay != KILLED
        })
        .copied()
        .collect();
    let retried: Vec<String> = c
        .query(
            "SELECT DISTINCT o.event_id FROM webhook.outbox o JOIN webhook.attempts a ON a.outbox_id = o.id
              WHERE o.event_id = ANY ($1) AND a.error IS NOT NULL",
            &[&survivor_dups],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let unexplained: Vec<&String> = not_killed_first
        .iter()
        .zip(&survivor_dups)
        .filter(|(_, id)| !retried.iter().any(|r| r == *id))
        .map(|(story, _)| story)
        .collect();
    println!(
        "FIGURES three_relays_retries: survivor_duplicates={} after_a_recorded_failure={}",
        survivor_dups.len(),
        retried.len()
    );
    assert!(
        unexplained.is_empty(),
        "duplicates whose first send was not the killed relay's, with no failed attempt recorded: {unexplained:?}"
    );
    assert!(
        recorded.is_empty(),
        "duplicates whose outcome the killed relay had recorded: {recorded:?}"
    );
    assert!(
        dup_ids.len() - answered_unwritten <= MAX_IN_FLIGHT,
        "at most max_in_flight re-sends of requests unanswered at the kill: {} of {}",
        dup_ids.len() - answered_unwritten,
        dup_ids.len()
    );
    assert!(
        resent_late.is_empty(),
        "re-sends that came after their key's next event: {resent_late:?}"
    );
    assert!(backwards.is_empty(), "keys going backwards: {backwards:?}");
    assert!(
        overlapping.is_empty(),
        "keys with two requests in flight at once: {overlapping:?}"
    );
    assert!(
        !killed_owned.is_empty(),
        "the killed relay owned partitions"
    );
    assert!(
        !after_kill.contains_key(&Some(KILLED.to_string())) && !after_kill.contains_key(&None),
        "the killed relay's partitions are owned by the survivors: {after_kill:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_joining_while_events_flow_gets_its_share_within_seconds() {
    const JOIN_KEYS: i32 = 2_000;
    const JOIN_EVENTS: usize = (JOIN_KEYS * PER_KEY) as usize;
    let db = TestDb::new().await;
    let c = db.client().await;
    let rx = LogReceiver::start(key_and_seq, |_| Reply::After(ANSWER_AFTER, 200)).await;
    let mut relays: Vec<RelayProcess> = RELAYS[..2]
        .iter()
        .map(|n| relay(&db.url, &rx.url, n))
        .collect();
    wait_synced(&c).await;
    wait_shared(&c, &RELAYS[..2], 8, WAIT).await;
    let writer = write_events(db.client().await, JOIN_KEYS, PER_KEY);
    rx.wait_events(
        JOIN_EVENTS / 10,
        "a tenth of the events received",
        Duration::from_secs(30),
    )
    .await;
    let joined = Instant::now();
    relays.push(relay(&db.url, &rx.url, RELAYS[2]));
    // Shares are ceil(16 / 3) = 6 at most: 6, 6 and 4 at the least.
    wait_shared(&c, &RELAYS, 4, Duration::from_secs(60)).await;
    let share_after = joined.elapsed();
    let at_share = rx.events();
    writer.await.unwrap();
    wait_received(&rx, &c, JOIN_EVENTS, Duration::from_secs(60)).await;
    let log = rx.log();

    let out_of_order = out_of_order_by_first_receipt(&log);
    let overlapping = in_flight_twice(&log);
    let by_relay = |r: &str| log.iter().filter(|l| l.relay == r).count();
    println!(
        "FIGURES relay_joins: events={JOIN_EVENTS} received={} requests={} share_after_s={:.1} received_when_shared={at_share} \
         out_of_order_keys={} keys_in_flight_twice={} sent_a={} sent_b={} sent_c={}",
        rx.events(),
        log.len(),
        share_after.as_secs_f64(),
        out_of_order.len(),
        overlapping.len(),
        by_relay("relay-a"),
        by_relay("relay-b"),
        by_relay("relay-c"),
    );
    assert!(log.iter().all(|l| l.signed), "every request is signed");
    assert_eq!(rx.events(), JOIN_EVENTS, "0 lost");
    assert_eq!(log.len(), JOIN_EVENTS, "0 duplicates: nobody was killed");
    assert!(
        out_of_order.is_empty(),
        "keys out of order: {out_of_order:?}"
    );
    assert!(
        overlapping.is_empty(),
        "keys with two requests in flight at once: {overlapping:?}"
    );
    // Leases are renewed every 1.5 s (a quarter of 6 s): a few renewals.
    assert!(
        share_after <= Duration::from_secs(10),
        "the new relay got its share {:.1} s after it started, with {at_share} of {JOIN_EVENTS} events received",
        share_after.as_secs_f64()
    );
}
