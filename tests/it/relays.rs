//! Several relays keep the order (docs/queue.md 6.3, 6.6): three relay
//! processes share an endpoint's partitions under a lease; one is killed
//! with SIGKILL halfway through 30,000 events over 3,000 keys. Nothing is
//! lost, no key goes out of order, and the only duplicates are re-sends of
//! what the killed relay had in flight, each before its key's next event.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant, SystemTime};

use crate::delivery::{config_text, count_status};
use crate::process::{wait_synced, RelayProcess};
use crate::receiver::Reply;
use crate::support::{
    going_backwards, out_of_order_by_first_receipt, wait_for, LogReceiver, TestDb,
};

const KEYS: i32 = 3_000;
const PER_KEY: i32 = 10;
const EVENTS: usize = (KEYS * PER_KEY) as usize;
const RELAYS: [&str; 3] = ["relay-a", "relay-b", "relay-c"];
const KILLED: &str = "relay-a";
const MAX_IN_FLIGHT: usize = 32;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_relays_one_killed_lose_nothing_and_keep_every_keys_order() {
    let began = Instant::now();
    let db = TestDb::new().await;
    let c = db.client().await;
    let rx = LogReceiver::start(key_and_seq, |_| Reply::After(Duration::from_millis(3), 200)).await;
    // Each relay names itself in a header, so the receiver knows who sent what.
    let mut relays: Vec<RelayProcess> = RELAYS
        .iter()
        .map(|name| {
            let text = config_text(
                &format!("relay_name = \"{name}\"\nlease = \"6s\""),
                &[(
                    "crm",
                    &rx.url,
                    &format!(
                        "timeout = \"1s\"\nmax_in_flight = {MAX_IN_FLIGHT}\nheaders = {{ x-relay = \"{name}\" }}"
                    ),
                )],
            );
            RelayProcess::spawn_with_env(&db.url, &text, &[("RUST_LOG", "outbox_relay=info")])
        })
        .collect();
    wait_synced(&c).await;
    wait_for(
        "the 16 partitions shared among the three relays",
        Duration::from_secs(30),
        || async {
            let o = owners(&c).await;
            // Shares are ceil(16 / 3) = 6 at most: 6, 6 and 4 at the least.
            let fair = RELAYS
                .iter()
                .all(|r| o.get(&Some(r.to_string())).is_some_and(|p| p.len() >= 4));
            (fair && !o.contains_key(&None)).then_some(())
        },
    )
    .await;

    // Sequence 1 of every key, then 2, ...: transactions of 100 events.
    let writer = {
        let c = db.client().await;
        tokio::spawn(async move {
            let keys: Vec<String> = (0..KEYS).map(|k| format!("key{k:04}")).collect();
            for seq in 1..=PER_KEY {
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
    };

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
    let kill_sent = SystemTime::now();
    tokio::task::block_in_place(|| relays[0].kill9());
    let killed_at = SystemTime::now();
    let at_kill = rx.events();
    writer.await.unwrap();

    let left = Duration::from_secs(88).saturating_sub(began.elapsed());
    rx.wait_events(EVENTS, "every event received", left).await;
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
    let recorded: Vec<String> = c
        .query(
            "SELECT o.event_id FROM webhook.outbox o
              WHERE o.event_id = ANY ($1) AND EXISTS (
                    SELECT 1 FROM webhook.attempts a WHERE a.outbox_id = o.id AND a.relay = $2)",
            &[&dup_ids, &KILLED],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut not_killed_first = Vec::new();
    // A re-sent event was either still waiting for its answer at the kill
    // (in flight: at most max_in_flight), or answered with its outcome not
    // yet written back.
    let mut answered_unwritten = 0;
    let mut resent_late = Vec::new();
    for id in &dup_ids {
        let first = &log[firsts[id]];
        if first.relay != KILLED || first.at > killed_at {
            not_killed_first.push(id.to_string());
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
    let out_of_order = out_of_order_by_first_receipt(&log);
    let backwards = going_backwards(&log);
    let by_relay = |r: &str| log.iter().filter(|l| l.relay == r).count();
    println!(
        "FIGURES three_relays: events={EVENTS} keys={KEYS} received={} requests={} lost={} duplicates={} \
         duplicates_answered_before_kill={answered_unwritten} duplicates_not_from_killed_in_flight={} duplicates_after_next_event={} out_of_order_keys={} backwards_keys={} \
         killed_at_received={at_kill} killed_owned={killed_owned:?} sent_a={} sent_b={} sent_c={} owners_after={after_kill:?} took_s={:.1}",
        rx.events(),
        log.len(),
        EVENTS - rx.events(),
        dup_ids.len(),
        not_killed_first.len() + recorded.len(),
        resent_late.len(),
        out_of_order.len(),
        backwards.len(),
        by_relay("relay-a"),
        by_relay("relay-b"),
        by_relay("relay-c"),
        began.elapsed().as_secs_f64()
    );
    drop(relays);

    assert!(log.iter().all(|l| l.signed), "every request is signed");
    assert_eq!(rx.events(), EVENTS, "0 lost");
    assert!(
        out_of_order.is_empty(),
        "keys out of order by first receipt: {out_of_order:?}"
    );
    assert!(
        not_killed_first.is_empty(),
        "duplicates whose first send was not the killed relay's: {not_killed_first:?}"
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
        !killed_owned.is_empty(),
        "the killed relay owned partitions"
    );
    assert!(
        !after_kill.contains_key(&Some(KILLED.to_string())) && !after_kill.contains_key(&None),
        "the killed relay's partitions are owned by the survivors: {after_kill:?}"
    );
}
