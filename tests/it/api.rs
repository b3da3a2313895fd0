//! The event status API on the relay's `listen` address: bearer tokens and
//! what each may see, both routes, paging, and every error answer.

use std::time::Duration;

use outbox_relay::relay::Relay;
use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio_postgres::Client;

use crate::delivery::{config, count_status, start};
use crate::receiver::{Receiver, Reply};
use crate::support::{connect, wait_for, TestDb};

const WAIT: Duration = Duration::from_secs(30);
const ADMIN: &str = "admin-token-0123456789abcdef";
const CRM: &str = "crm-token-0123456789abcdef";
const BILLING: &str = "billing-token-0123456789abcdef";

/// A relay with endpoints `crm` (answers 200) and `billing` (answers 503,
/// one attempt: dead at once), an admin token and one token per endpoint.
struct Setup {
    db: TestDb,
    c: Client,
    relay: Relay,
    base: String,
    http: reqwest::Client,
    _receivers: (Receiver, Receiver),
}

impl Setup {
    async fn new() -> Setup {
        let db = TestDb::new().await;
        let c = db.client().await;
        let crm = Receiver::ok().await;
        let billing = Receiver::start(|_| Reply::Status(503)).await;
        let relay = start(
            &db,
            config(
                &format!("api_admin_token = \"{ADMIN}\""),
                &[
                    ("crm", &crm.url, &format!("api_token = \"{CRM}\"")),
                    (
                        "billing",
                        &billing.url,
                        &format!("api_token = \"{BILLING}\"\nmax_attempts = 1"),
                    ),
                ],
            ),
        )
        .await;
        Setup {
            base: format!("http://{}", relay.http_addr),
            db,
            c,
            relay,
            http: reqwest::Client::new(),
            _receivers: (crm, billing),
        }
    }

    /// GET `path` with `authorization` as the header (None: no header).
    async fn get_with(&self, path: &str, authorization: Option<&str>) -> (StatusCode, Value) {
        let mut req = self.http.get(format!("{}{path}", self.base));
        if let Some(a) = authorization {
            req = req.header("authorization", a);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status();
        if status == StatusCode::UNAUTHORIZED {
            assert_eq!(
                resp.headers()["www-authenticate"],
                "Bearer realm=\"outbox-relay\""
            );
        }
        let body = resp.text().await.unwrap();
        let json = serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("{path}: {status}, not JSON ({e}): {body}"));
        (status, json)
    }

    async fn get(&self, path: &str, token: &str) -> (StatusCode, Value) {
        self.get_with(path, Some(&format!("Bearer {token}"))).await
    }

    /// Waits until every row has settled: crm's delivered, billing's dead.
    async fn settled(&self, per_endpoint: i64) {
        wait_for("every row settled", WAIT, || async {
            let done = count_status(&self.c, "delivered").await == per_endpoint
                && count_status(&self.c, "dead").await == per_endpoint;
            done.then_some(())
        })
        .await;
    }
}

fn error_of(body: &Value) -> &str {
    body["error"]
        .as_str()
        .unwrap_or_else(|| panic!("no error message: {body}"))
}

#[tokio::test]
async fn an_event_shows_each_endpoint_delivery_to_the_tokens_that_may_see_it() {
    let s = Setup::new().await;
    s.c.batch_execute(
        "INSERT INTO buyers VALUES ('b1', 'Acme', 5);
         INSERT INTO buyer_postcodes VALUES ('b1', 'AB');
         INSERT INTO buyer_credits VALUES ('b1', 50);",
    )
    .await
    .unwrap();
    // post_code_change and add_credits, each to both endpoints.
    s.settled(2).await;
    let event_id: String =
        s.c.query_one(
            "SELECT event_id FROM webhook.outbox WHERE event_code = 'add_credits' LIMIT 1",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let path = format!("/v1/events/{event_id}");

    let (status, body) = s.get(&path, ADMIN).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["event_id"], event_id.as_str());
    assert_eq!(body["event_code"], "add_credits");
    assert_eq!(
        body["payload"],
        json!({"buyerId": "b1", "buyerName": "Acme", "postCodeList": ["AB"], "topUpAmount": 50, "eventCode": "add_credits"})
    );
    assert!(
        body["created_at"].as_str().unwrap().ends_with('Z'),
        "{body}"
    );
    let deliveries = body["deliveries"].as_array().unwrap();
    assert_eq!(deliveries.len(), 2, "{body}");
    let (billing, crm) = (&deliveries[0], &deliveries[1]);
    assert_eq!(billing["endpoint"], "billing");
    assert_eq!(billing["status"], "dead");
    assert_eq!(billing["attempts"], 1);
    assert_eq!(billing["response_status"], 503);
    assert_eq!(billing["response_body"], "answer 503");
    assert!(
        billing["last_error"].as_str().unwrap().contains("503"),
        "{billing}"
    );
    assert!(billing["next_attempt_at"].is_null() && billing["delivered_at"].is_null());
    assert_eq!(crm["endpoint"], "crm");
    assert_eq!(crm["status"], "delivered");
    assert_eq!(crm["response_status"], 200);
    assert_eq!(crm["response_body"], "answer 200");
    assert!(crm["response_ms"].as_i64().unwrap() >= 0);
    assert!(crm["last_error"].is_null());
    assert!(
        crm["delivered_at"].as_str().unwrap().ends_with('Z'),
        "{crm}"
    );

    // An endpoint's token sees its own delivery only.
    let (status, body) = s.get(&path, CRM).await;
    assert_eq!(status, StatusCode::OK);
    let endpoints: Vec<&str> = body["deliveries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["endpoint"].as_str().unwrap())
        .collect();
    assert_eq!(endpoints, ["crm"]);
    let (_, body) = s.get(&path, BILLING).await;
    assert_eq!(body["deliveries"][0]["endpoint"], "billing");
    assert_eq!(body["deliveries"].as_array().unwrap().len(), 1);

    // An event that never went to billing does not exist for its token.
    s.c.batch_execute(
        "INSERT INTO webhook.outbox (event_id, event_code, payload, endpoint_id)
         SELECT 'evt_crm_only', 'add_credits', '{}', endpoint_id FROM webhook.endpoints WHERE name = 'crm'",
    )
    .await
    .unwrap();
    let (status, body) = s.get("/v1/events/evt_crm_only", BILLING).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(error_of(&body), "no such event");
    let (status, _) = s.get("/v1/events/evt_crm_only", CRM).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = s.get("/v1/events/evt_nothing_here", ADMIN).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, body) = s
        .get(&format!("/v1/events/{}", "x".repeat(201)), ADMIN)
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(error_of(&body).contains("1 to 200 characters"));

    // Without a token, or with a wrong one: 401 (checked before anything else).
    for auth in [
        None,
        Some("Bearer".to_string()),
        Some(format!("Basic {ADMIN}")),
        Some(format!("Bearer {}", ADMIN.to_uppercase())),
        Some(format!("Bearer {}x", &ADMIN)),
        Some("Bearer not-a-token-at-all-but-long".to_string()),
    ] {
        let (status, body) = s.get_with(&path, auth.as_deref()).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{auth:?}");
        assert!(!error_of(&body).is_empty());
    }
    let (status, _) = s.get_with(&path, Some(&format!("bearer  {CRM} "))).await;
    assert_eq!(status, StatusCode::OK, "the scheme is case-insensitive");

    s.relay.shutdown().await;
    drop(s.db);
}

#[tokio::test]
async fn an_endpoint_pages_through_its_events_by_id() {
    let s = Setup::new().await;
    s.c.execute(
        "SELECT webhook.enqueue('add_credits', jsonb_build_object('n', g), 'k' || g) FROM generate_series(1, 5) g",
        &[],
    )
    .await
    .unwrap();
    s.settled(5).await;

    // Pages of two, following next_after to the end.
    let mut seen = Vec::new();
    let mut after = 0i64;
    let mut pages = 0;
    loop {
        let (status, body) = s
            .get(
                &format!("/v1/endpoints/crm/events?limit=2&after={after}"),
                ADMIN,
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["endpoint"], "crm");
        pages += 1;
        for e in body["events"].as_array().unwrap() {
            assert_eq!(e["status"], "delivered");
            assert_eq!(e["endpoint"], "crm");
            assert_eq!(e["event_code"], "add_credits");
            assert_eq!(e["response_status"], 200);
            seen.push((
                e["id"].as_i64().unwrap(),
                e["payload"]["n"].as_i64().unwrap(),
            ));
        }
        match body["next_after"].as_i64() {
            Some(next) => after = next,
            None => break,
        }
    }
    assert_eq!(pages, 3);
    assert!(
        seen.windows(2).all(|w| w[0].0 < w[1].0),
        "in id order: {seen:?}"
    );
    let mut ns: Vec<i64> = seen.iter().map(|(_, n)| *n).collect();
    ns.sort();
    assert_eq!(ns, [1, 2, 3, 4, 5]);

    // The endpoint's own token; filters.
    let (status, body) = s.get("/v1/endpoints/billing/events", BILLING).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["events"].as_array().unwrap().len(), 5);
    assert!(body["next_after"].is_null());
    assert_eq!(body["events"][0]["status"], "dead");
    let (_, body) = s
        .get("/v1/endpoints/billing/events?status=delivered", BILLING)
        .await;
    assert_eq!(body["events"], json!([]));
    let (_, body) = s
        .get("/v1/endpoints/billing/events?status=dead&limit=5", BILLING)
        .await;
    assert_eq!(body["events"].as_array().unwrap().len(), 5);
    assert!(body["next_after"].is_number(), "a full page may have more");
    let (_, body) = s
        .get("/v1/endpoints/crm/events?since=2000-01-01T00:00:00Z", CRM)
        .await;
    assert_eq!(body["events"].as_array().unwrap().len(), 5);
    let (_, body) = s
        .get(
            "/v1/endpoints/crm/events?since=2999-01-01T00:00:00%2B01:00",
            CRM,
        )
        .await;
    assert_eq!(body["events"], json!([]));

    // Another endpoint's events look like an endpoint that does not exist.
    let (status, body) = s.get("/v1/endpoints/billing/events", CRM).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(error_of(&body), "no such endpoint");
    let (status, body) = s.get("/v1/endpoints/nope/events", ADMIN).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(error_of(&body), "no such endpoint");

    // Bad parameters: 400 naming the parameter; no token is still 401.
    for (query, why) in [
        ("limit=0", "limit"),
        ("limit=1001", "limit"),
        ("limit=ten", "limit"),
        ("status=lost", "status"),
        ("since=yesterday", "since"),
        ("after=-3", "after"),
        ("colour=blue", "unknown query parameter"),
    ] {
        let path = format!("/v1/endpoints/crm/events?{query}");
        let (status, body) = s.get(&path, ADMIN).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{query}");
        assert!(error_of(&body).contains(why), "{query}: {body}");
        let (status, _) = s.get_with(&path, None).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{query}");
    }

    // Read-only; unknown paths answer JSON too.
    let resp = s
        .http
        .post(format!("{}/v1/endpoints/crm/events", s.base))
        .header("authorization", format!("Bearer {ADMIN}"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::METHOD_NOT_ALLOWED);
    let (status, body) = s.get("/v1/nothing", ADMIN).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(error_of(&body), "not found");

    s.relay.shutdown().await;
}

#[tokio::test]
async fn the_api_answers_503_while_the_database_is_unreachable() {
    let s = Setup::new().await;
    s.c.execute("SELECT webhook.enqueue('add_credits', '{}')", &[])
        .await
        .unwrap();
    s.settled(1).await;
    let (status, _) = s.get("/v1/endpoints/crm/events", ADMIN).await;
    assert_eq!(status, StatusCode::OK);

    // From another database of the server: refuse new connections to this
    // one and end the existing ones (the relay's).
    let mut other = url::Url::parse(&s.db.url).unwrap();
    other.set_path("/postgres");
    let admin = connect(other.as_str()).await;
    let name = s.db.name.clone();
    admin
        .batch_execute(&format!(
            "ALTER DATABASE {name} ALLOW_CONNECTIONS false;
             SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}';"
        ))
        .await
        .unwrap();
    let (status, body) = s.get("/v1/endpoints/crm/events", ADMIN).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(
        error_of(&body).contains("database is unavailable"),
        "{body}"
    );
    // Tokens are still checked first.
    let (status, _) = s.get_with("/v1/endpoints/crm/events", None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    admin
        .batch_execute(&format!("ALTER DATABASE {name} ALLOW_CONNECTIONS true"))
        .await
        .unwrap();
    wait_for("the API back", WAIT, || async {
        let (status, _) = s.get("/v1/endpoints/crm/events", ADMIN).await;
        (status == StatusCode::OK).then_some(())
    })
    .await;
    s.relay.shutdown().await;
}
