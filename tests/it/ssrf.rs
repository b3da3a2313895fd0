//! The optional SSRF guard (docs/security.md): with it on, the relay refuses
//! loopback and other non-public addresses, by IP literal or by name, unless
//! the allowlist lets them through.

use std::time::Duration;

use crate::delivery::{config, enqueue, start, wait_status};
use crate::receiver::Receiver;
use crate::support::TestDb;

#[tokio::test]
async fn the_guard_refuses_non_public_addresses_by_literal_and_by_name() {
    let db = TestDb::new().await;
    let c = db.client().await;
    let rx = Receiver::ok().await;
    let by_name = rx.url.replace("127.0.0.1", "localhost");
    let relay = start(
        &db,
        config(
            "[ssrf_guard]\nenabled = true",
            &[
                ("literal", &rx.url, "max_attempts = 1"),
                ("by_name", &by_name, "max_attempts = 1"),
            ],
        ),
    )
    .await;
    enqueue(&c, 1).await;
    wait_status(&c, "dead", 2, "both refused", Duration::from_secs(30)).await;
    relay.shutdown().await;
    assert_eq!(rx.count(), 0, "no request reached the loopback receiver");
    let errors: Vec<(String, String)> = c
        .query(
            "SELECT e.name, o.last_error FROM webhook.outbox o JOIN webhook.endpoints e USING (endpoint_id) ORDER BY e.name",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    for (name, error) in &errors {
        assert!(
            error.contains("refused by the SSRF guard") && error.contains("loopback"),
            "{name}: {error}"
        );
    }
}

#[tokio::test]
async fn the_allowlist_lets_chosen_networks_through() {
    let db = TestDb::new().await;
    let c = db.client().await;
    let rx = Receiver::ok().await;
    let by_name = rx.url.replace("127.0.0.1", "localhost");
    let relay = start(
        &db,
        config(
            "[ssrf_guard]\nallow = [\"127.0.0.0/8\", \"::1\"]",
            &[("literal", &rx.url, ""), ("by_name", &by_name, "")],
        ),
    )
    .await;
    enqueue(&c, 1).await;
    wait_status(
        &c,
        "delivered",
        2,
        "both delivered",
        Duration::from_secs(30),
    )
    .await;
    relay.shutdown().await;
}
