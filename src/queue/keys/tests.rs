//! The per-key queues' rules, without a database.

use super::*;

#[derive(Debug, PartialEq)]
struct Ev {
    id: i64,
    key: Option<&'static str>,
}

impl Queued for Ev {
    fn id(&self) -> i64 {
        self.id
    }
    fn key(&self) -> Option<&str> {
        self.key
    }
    fn partition(&self) -> i32 {
        0
    }
}

fn ev(id: i64, key: &'static str) -> Ev {
    Ev { id, key: Some(key) }
}

fn queued(k: &mut Keys<Ev>, e: Ev) {
    assert!(matches!(k.push_read(e), Pushed::Queued));
}

fn sends(k: &mut Keys<Ev>) -> Vec<i64> {
    std::iter::from_fn(|| k.next_ready())
        .map(|e| e.id)
        .collect()
}

#[test]
fn one_event_per_key_in_flight_in_read_order() {
    let mut k = Keys::default();
    queued(&mut k, ev(1, "a"));
    queued(&mut k, ev(2, "b"));
    queued(&mut k, ev(3, "a"));
    queued(&mut k, ev(4, "a"));
    assert_eq!(sends(&mut k), vec![1, 2]);
    assert_eq!(k.finished("a", 1, 0, Outcome::Settled), Then::Nothing);
    assert_eq!(sends(&mut k), vec![3]);
    assert_eq!(k.finished("a", 3, 0, Outcome::Settled), Then::Nothing);
    assert_eq!(k.finished("b", 2, 0, Outcome::Settled), Then::Nothing);
    assert_eq!(sends(&mut k), vec![4]);
    assert_eq!(k.finished("a", 4, 0, Outcome::Settled), Then::Nothing);
    assert_eq!(k.in_memory(), 0);
    assert!(k.keys.is_empty(), "settled keys leave memory");
}

#[test]
fn unordered_events_flow_beside_the_keys_oldest_first() {
    let mut k = Keys::default();
    queued(&mut k, ev(1, "a"));
    queued(&mut k, Ev { id: 2, key: None });
    queued(&mut k, ev(3, "a"));
    queued(&mut k, Ev { id: 4, key: None });
    assert_eq!(sends(&mut k), vec![1, 2, 4]);
    k.finished_loose(2, 0);
    k.finished_loose(4, 0);
    assert_eq!(k.in_memory(), 2);
}

#[test]
fn a_failed_head_holds_only_its_key_and_parks_what_waits_behind_it() {
    let mut k = Keys::default();
    queued(&mut k, ev(1, "a"));
    queued(&mut k, ev(2, "a"));
    queued(&mut k, ev(3, "b"));
    assert_eq!(sends(&mut k), vec![1, 3]);
    assert_eq!(
        k.finished("a", 1, 0, Outcome::Retry),
        Then::Park(vec![ev(2, "a")])
    );
    assert!(k.is_held("a"));
    // Read while held: parked too.
    assert!(matches!(k.push_read(ev(4, "a")), Pushed::Park(_)));
    // Other keys go on.
    queued(&mut k, ev(5, "b"));
    assert_eq!(k.finished("b", 3, 0, Outcome::Settled), Then::Nothing);
    assert_eq!(sends(&mut k), vec![5]);
    // The retry is due: the head goes again; the parks must commit before
    // the key's parked events are fetched.
    assert!(k.ready_held(ev(1, "a")));
    assert!(!k.ready_held(ev(1, "a")), "a held head is queued once");
    assert_eq!(sends(&mut k), vec![1]);
    assert!(
        !k.ready_held(ev(1, "a")),
        "a held head is sent once at a time"
    );
    assert_eq!(k.finished("a", 1, 0, Outcome::Settled), Then::Nothing);
    assert_eq!(
        k.parking_done("a", 2),
        Then::FetchParked {
            key: "a".into(),
            after: 0
        }
    );
    assert_eq!(
        k.parked_fetched("a", vec![ev(2, "a"), ev(4, "a")], 100),
        Then::Nothing
    );
    assert_eq!(sends(&mut k), vec![2]);
    assert_eq!(k.finished("a", 2, 0, Outcome::Settled), Then::Nothing);
    assert_eq!(sends(&mut k), vec![4]);
    assert_eq!(k.finished("a", 4, 0, Outcome::Settled), Then::Nothing);
    // All parked events were fetched: the key is plain again.
    queued(&mut k, ev(6, "a"));
    assert_eq!(sends(&mut k), vec![6]);
}

#[test]
fn a_full_fetch_asks_for_the_next_page_after_the_last_id() {
    let mut k = Keys::default();
    k.load_held("a", 1, 0);
    assert!(k.ready_held(ev(1, "a")));
    assert_eq!(sends(&mut k), vec![1]);
    assert_eq!(
        k.finished("a", 1, 0, Outcome::Settled),
        Then::FetchParked {
            key: "a".into(),
            after: 0
        }
    );
    assert_eq!(
        k.parked_fetched("a", vec![ev(5, "a"), ev(7, "a")], 2),
        Then::Nothing
    );
    assert_eq!(sends(&mut k), vec![5]);
    assert_eq!(k.finished("a", 5, 0, Outcome::Settled), Then::Nothing);
    assert_eq!(sends(&mut k), vec![7]);
    assert_eq!(
        k.finished("a", 7, 0, Outcome::Settled),
        Then::FetchParked {
            key: "a".into(),
            after: 7
        }
    );
    assert_eq!(k.parked_fetched("a", vec![], 2), Then::Nothing);
    assert!(k.keys.is_empty());
}

#[test]
fn a_park_during_a_fetch_means_the_fetch_was_not_the_last() {
    let mut k = Keys::default();
    k.load_held("a", 1, 0);
    assert!(k.ready_held(ev(1, "a")));
    assert_eq!(sends(&mut k), vec![1]);
    assert!(matches!(
        k.finished("a", 1, 0, Outcome::Settled),
        Then::FetchParked { .. }
    ));
    // Read while the fetch runs: parked behind what the fetch returns.
    assert!(matches!(k.push_read(ev(9, "a")), Pushed::Park(_)));
    assert_eq!(k.parked_fetched("a", vec![ev(3, "a")], 100), Then::Nothing);
    assert_eq!(sends(&mut k), vec![3]);
    assert_eq!(k.finished("a", 3, 0, Outcome::Settled), Then::Nothing);
    assert_eq!(
        k.parking_done("a", 1),
        Then::FetchParked {
            key: "a".into(),
            after: 3
        }
    );
}

#[test]
fn a_dead_head_moves_its_key_on_and_a_reread_head_is_skipped() {
    let mut k = Keys::default();
    k.load_held("a", 1, 0);
    assert!(matches!(k.push_read(ev(1, "a")), Pushed::Skip(_)));
    assert!(matches!(k.push_read(ev(2, "a")), Pushed::Park(_)));
    assert!(k.ready_held(ev(1, "a")));
    assert_eq!(sends(&mut k), vec![1]);
    assert_eq!(k.finished("a", 1, 0, Outcome::Settled), Then::Nothing);
    assert!(matches!(k.parking_done("a", 1), Then::FetchParked { .. }));
}

#[test]
fn a_busy_key_keeps_at_most_its_cap_in_memory() {
    let mut k = Keys::default();
    for id in 0..KEY_CAP as i64 {
        queued(&mut k, ev(id, "a"));
    }
    assert!(matches!(k.push_read(ev(1000, "a")), Pushed::Park(_)));
    assert_eq!(k.in_memory(), KEY_CAP);
}

#[test]
fn a_failed_probe_puts_the_head_back() {
    let mut k = Keys::default();
    queued(&mut k, ev(1, "a"));
    queued(&mut k, ev(2, "a"));
    let e = k.next_ready().unwrap();
    k.probe_failed(e);
    assert_eq!(sends(&mut k), vec![1]);
}

#[test]
fn a_lost_partition_leaves_memory_but_its_flights_finish() {
    let mut k = Keys::default();
    queued(&mut k, ev(1, "a"));
    queued(&mut k, ev(2, "a"));
    queued(&mut k, Ev { id: 3, key: None });
    assert_eq!(k.next_ready().map(|e| e.id), Some(1));
    let gone: Vec<i64> = k.drop_partition(0).into_iter().map(|e| e.id).collect();
    assert_eq!(gone, vec![2, 3]);
    assert_eq!(k.finished("a", 1, 0, Outcome::Retry), Then::Nothing);
    assert!(k.keys.is_empty());
    assert_eq!(k.in_memory(), 0);
}
