//! The real binary's `demo` (the whole story, the retry, the final table, the
//! clean-up) and `receive` (verifies, answers 200/401, stops on SIGTERM,
//! refuses a bad secret without repeating it).

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{ChildStdout, Command};

const BIN: &str = env!("CARGO_BIN_EXE_outbox-relay");
/// The demo must finish well within this, even on a loaded machine.
const DEMO_DEADLINE: Duration = Duration::from_secs(120);
const WAIT: Duration = Duration::from_secs(30);

#[tokio::test]
async fn demo_tells_the_story_and_cleans_up() {
    let child = Command::new(BIN)
        .arg("demo")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // A demo that overruns the deadline is killed with the future.
        .kill_on_drop(true)
        .spawn()
        .expect("starting outbox-relay demo");
    let out = tokio::time::timeout(DEMO_DEADLINE, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("the demo did not finish within {DEMO_DEADLINE:?}"))
        .expect("waiting for the demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(0),
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    let context = format!("stdout:\n{stdout}");

    // Every webhook arrived, signed; each event code at least once.
    let arrivals: Vec<&str> = stdout
        .lines()
        .filter(|l| l.trim_start().starts_with("<- webhook "))
        .collect();
    for code in ["post_code_change", "add_credits", "user_credits_zero"] {
        assert!(
            arrivals
                .iter()
                .any(|l| l.contains(&format!("<- webhook {code} evt_"))),
            "no {code} arrived; {context}"
        );
    }
    assert!(
        arrivals.iter().all(|l| l.contains("signature verified")),
        "{context}"
    );
    // 2 post_code_change, user_credits_zero, and add_credits twice.
    assert_eq!(arrivals.len(), 5, "{context}");

    // The top-up was refused once, then delivered: same webhook-id, attempt 2.
    let add: Vec<&str> = arrivals
        .iter()
        .copied()
        .filter(|l| l.contains("<- webhook add_credits "))
        .collect();
    assert_eq!(add.len(), 2, "{context}");
    assert!(add[0].contains("attempt 1, answered 503"), "{context}");
    assert!(add[1].contains("attempt 2, answered 200"), "{context}");
    let id = |line: &str| line.split_whitespace().nth(3).map(str::to_owned);
    assert_eq!(id(add[0]), id(add[1]), "{context}");
    assert!(add[1].contains(r#""topUpAmount":25"#), "{context}");
    // The spending that followed at once waited, parked behind the held
    // top-up, and arrived after its retry: one event at a time per buyer.
    assert!(
        stdout.contains("held: buyer 0042's key, by its add_credits")
            && stdout.contains("1 event parked behind it"),
        "{context}"
    );
    let at = |code: &str, from: usize| {
        arrivals
            .iter()
            .skip(from)
            .position(|l| l.contains(&format!("<- webhook {code} ")))
            .map(|p| p + from)
    };
    let retried = arrivals
        .iter()
        .position(|l| l.contains("attempt 2, answered 200"))
        .unwrap_or_else(|| panic!("no retry arrived; {context}"));
    assert_eq!(
        at("user_credits_zero", 0),
        Some(retried + 1),
        "user_credits_zero did not follow the retried top-up; {context}"
    );

    // The final table: four rows, all delivered, the top-up after 2 attempts.
    let table: Vec<Vec<&str>> = stdout
        .lines()
        .skip_while(|l| !l.starts_with("webhook.outbox"))
        .skip(3) // the title, the header, the rule
        .take_while(|l| l.starts_with("  "))
        .map(|l| l.split_whitespace().collect())
        .collect();
    let summary: Vec<(&str, &str, &str, &str)> =
        table.iter().map(|r| (r[1], r[2], r[3], r[4])).collect();
    assert_eq!(
        summary,
        [
            ("post_code_change", "delivered", "1", "200"),
            ("add_credits", "delivered", "2", "200"),
            ("user_credits_zero", "delivered", "1", "200"),
            ("post_code_change", "delivered", "1", "200"),
        ],
        "{context}"
    );
    assert!(stdout.contains("webhook.attempts: 5 rows"), "{context}");

    // Its own Postgres directory is gone (other tests' clusters may not be).
    let data_dir = stdout
        .lines()
        .find_map(|l| l.split_once(", data in ").map(|(_, d)| d.trim()))
        .unwrap_or_else(|| panic!("no data directory printed; {context}"));
    assert!(data_dir.contains("outbox-relay-pg-"), "{context}");
    assert!(
        stdout.contains(&format!("cleaned up: Postgres stopped, {data_dir} removed")),
        "{context}"
    );
    assert!(!Path::new(data_dir).exists(), "{data_dir} remains");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// `whsec_` + base64 of 32 random bytes, made here rather than by the crate.
fn fresh_secret() -> (String, Vec<u8>) {
    let key: [u8; 32] = rand::random();
    let text = format!(
        "whsec_{}",
        base64::engine::general_purpose::STANDARD.encode(key)
    );
    (text, key.to_vec())
}

/// Standard Webhooks, from first principles: v1,base64(HMAC-SHA256(key, "id.ts.body")).
fn signature(key: &[u8], id: &str, timestamp: i64, body: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).unwrap();
    mac.update(format!("{id}.{timestamp}.{body}").as_bytes());
    format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
    )
}

/// Reads stdout lines until one contains `needle`, within `WAIT`.
async fn line_containing(lines: &mut Lines<BufReader<ChildStdout>>, needle: &str) -> String {
    let read = async {
        loop {
            match lines
                .next_line()
                .await
                .expect("reading the receiver's stdout")
            {
                Some(line) if line.contains(needle) => return line,
                Some(_) => {}
                None => panic!("the receiver's stdout ended before {needle:?}"),
            }
        }
    };
    tokio::time::timeout(WAIT, read)
        .await
        .unwrap_or_else(|_| panic!("no line with {needle:?} within {WAIT:?}"))
}

#[tokio::test]
async fn receive_answers_200_to_signed_and_401_to_forged_webhooks_and_stops_on_sigterm() {
    let (secret, key) = fresh_secret();
    let mut child = Command::new(BIN)
        .args(["receive", "--port", "0", "--secret", &secret])
        .env_remove("WEBHOOK_SECRET")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("starting outbox-relay receive");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = tokio::time::timeout(WAIT, lines.next_line())
        .await
        .expect("the receiver printed nothing")
        .unwrap()
        .expect("the receiver's stdout ended");
    let url = first
        .strip_prefix("listening on ")
        .and_then(|rest| rest.strip_suffix(" (any path)"))
        .unwrap_or_else(|| panic!("unexpected first line {first:?}"))
        .to_owned();
    assert!(url.starts_with("http://127.0.0.1:"), "{url}");

    let http = reqwest::Client::new();
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let post = |id: &'static str, sig: String, body: &'static str| {
        http.post(format!("{url}hooks/crm"))
            .header("content-type", "application/json")
            .header("webhook-id", id)
            .header("webhook-timestamp", now.to_string())
            .header("webhook-signature", sig)
            .body(body)
            .send()
    };

    let body = r#"{"buyerId":"0042","eventCode":"add_credits","topUpAmount":25}"#;
    let good = post("msg_good_1", signature(&key, "msg_good_1", now, body), body)
        .await
        .unwrap();
    assert_eq!(good.status(), 200);
    let shown = line_containing(&mut lines, "msg_good_1").await;
    assert!(shown.contains("POST /hooks/crm"), "{shown}");
    line_containing(&mut lines, "signature: verified").await;
    line_containing(&mut lines, r#""topUpAmount": 25"#).await;

    let (_, other_key) = fresh_secret();
    let forged = post(
        "msg_bad_1",
        signature(&other_key, "msg_bad_1", now, body),
        body,
    )
    .await
    .unwrap();
    assert_eq!(forged.status(), 401);
    assert!(forged
        .text()
        .await
        .unwrap()
        .contains("no signature matches"));
    line_containing(&mut lines, "msg_bad_1").await;
    line_containing(&mut lines, "NOT verified (no signature matches)").await;

    let pid = nix::unistd::Pid::from_raw(child.id().expect("still running") as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let status = tokio::time::timeout(WAIT, child.wait())
        .await
        .expect("the receiver did not stop on SIGTERM")
        .unwrap();
    assert_eq!(status.code(), Some(0), "{status}");
}

#[tokio::test]
async fn receive_refuses_a_malformed_secret_with_exit_2_without_repeating_it() {
    for bad in [
        "whsec_not*base64*TOPSECRETVALUE",
        "TOPSECRETVALUE-without-prefix",
        // Valid base64, but only 14 bytes.
        "whsec_VE9QU0VDUkVUVkFMVUU=",
    ] {
        let out = Command::new(BIN)
            .args(["receive", "--port", "0", "--secret", bad])
            .env_remove("WEBHOOK_SECRET")
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output();
        let out = tokio::time::timeout(WAIT, out)
            .await
            .expect("receive with a bad secret did not exit")
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(2), "{bad}: {stderr}");
        assert!(stderr.contains("invalid --secret"), "{stderr}");
        for shown in [&stderr, &stdout] {
            assert!(!shown.contains("TOPSECRETVALUE"), "{shown}");
            assert!(!shown.contains("VE9QU0VDUkVUVkFMVUU"), "{shown}");
        }
        assert!(!stdout.contains("listening"), "{stdout}");
    }
}
