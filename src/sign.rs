//! Standard Webhooks signing and verification, pure functions.
//!
//! The signed content is `{webhook-id}.{webhook-timestamp}.{body}`; the
//! signature is `v1,` + base64(HMAC-SHA256(secret bytes, content)). During a
//! secret rotation the header carries one `v1,...` entry per secret,
//! separated by spaces.

use base64::Engine as _;
use hmac::{Hmac, Mac};
use rand::RngCore as _;
use sha2::Sha256;

use crate::config::Secret;

type HmacSha256 = Hmac<Sha256>;

/// Bytes of key material in a secret made by `gen-secret`.
pub const GENERATED_SECRET_BYTES: usize = 32;
/// How far a receiver accepts a `webhook-timestamp` from its own clock.
pub const TIMESTAMP_TOLERANCE_SECS: i64 = 5 * 60;

fn mac(secret: &Secret, msg_id: &str, timestamp: i64, body: &[u8]) -> HmacSha256 {
    // HMAC takes keys of any length; new_from_slice cannot fail for it.
    let mut mac = HmacSha256::new_from_slice(secret.bytes()).expect("HMAC accepts any key length");
    mac.update(msg_id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

/// One signature: `v1,<base64>`.
pub fn sign(secret: &Secret, msg_id: &str, timestamp: i64, body: &[u8]) -> String {
    let tag = mac(secret, msg_id, timestamp, body).finalize().into_bytes();
    format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(tag)
    )
}

/// The `webhook-signature` header: one signature per secret, space separated.
pub fn signature_header(secrets: &[Secret], msg_id: &str, timestamp: i64, body: &[u8]) -> String {
    secrets
        .iter()
        .map(|s| sign(s, msg_id, timestamp, body))
        .collect::<Vec<_>>()
        .join(" ")
}

/// A fresh random secret.
pub fn generate_secret() -> Secret {
    let mut bytes = vec![0u8; GENERATED_SECRET_BYTES];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    Secret::from_bytes(bytes)
}

/// Why a received webhook was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("missing header {0}")]
    MissingHeader(&'static str),
    #[error("webhook-timestamp is not a number")]
    BadTimestamp,
    #[error("webhook-timestamp is more than {TIMESTAMP_TOLERANCE_SECS}s away from now")]
    StaleTimestamp,
    #[error("no signature matches")]
    NoMatch,
}

/// Checks a received webhook as a receiver would: the timestamp is recent and
/// at least one `v1` signature matches (compared in constant time).
pub fn verify(
    secret: &Secret,
    msg_id: Option<&str>,
    timestamp: Option<&str>,
    signatures: Option<&str>,
    body: &[u8],
    now_unix: i64,
) -> Result<(), VerifyError> {
    let msg_id = msg_id.ok_or(VerifyError::MissingHeader("webhook-id"))?;
    let ts_text = timestamp.ok_or(VerifyError::MissingHeader("webhook-timestamp"))?;
    let signatures = signatures.ok_or(VerifyError::MissingHeader("webhook-signature"))?;
    let ts: i64 = ts_text
        .trim()
        .parse()
        .map_err(|_| VerifyError::BadTimestamp)?;
    if (now_unix - ts).abs() > TIMESTAMP_TOLERANCE_SECS {
        return Err(VerifyError::StaleTimestamp);
    }
    for entry in signatures.split(' ') {
        let Some(encoded) = entry.strip_prefix("v1,") else {
            continue;
        };
        let Ok(tag) = base64::engine::general_purpose::STANDARD.decode(encoded) else {
            continue;
        };
        if mac(secret, msg_id, ts, body).verify_slice(&tag).is_ok() {
            return Ok(());
        }
    }
    Err(VerifyError::NoMatch)
}

#[cfg(test)]
mod tests {
    use super::*;

    // The Standard Webhooks specification's own test vector.
    const SECRET: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";
    const MSG_ID: &str = "msg_27UH4WbU6Z5A5EzD8u03UvzRbpk";
    const TIMESTAMP: i64 = 1649367553;
    const BODY: &str = r#"{"email":"test@example.com","username":"test_user"}"#;
    const EXPECTED: &str = "v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw=";

    #[test]
    fn matches_the_standard_webhooks_test_vector() {
        let secret = Secret::parse(SECRET).unwrap();
        assert_eq!(sign(&secret, MSG_ID, TIMESTAMP, BODY.as_bytes()), EXPECTED);
    }

    #[test]
    fn previous_secrets_add_one_signature_each() {
        let current = generate_secret();
        let old = Secret::parse(SECRET).unwrap();
        let header = signature_header(
            &[current.clone(), old.clone()],
            MSG_ID,
            TIMESTAMP,
            BODY.as_bytes(),
        );
        let parts: Vec<&str> = header.split(' ').collect();
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[1], EXPECTED);
        assert_eq!(parts[0], sign(&current, MSG_ID, TIMESTAMP, BODY.as_bytes()));
        // A receiver that only knows either secret accepts the request.
        for s in [&current, &old] {
            verify(
                s,
                Some(MSG_ID),
                Some("1649367553"),
                Some(&header),
                BODY.as_bytes(),
                TIMESTAMP,
            )
            .unwrap();
        }
    }

    #[test]
    fn verify_refuses_tampering_and_stale_timestamps() {
        let secret = Secret::parse(SECRET).unwrap();
        let ok = |body: &str, ts: &str, now: i64| {
            verify(
                &secret,
                Some(MSG_ID),
                Some(ts),
                Some(EXPECTED),
                body.as_bytes(),
                now,
            )
        };
        assert_eq!(ok(BODY, "1649367553", TIMESTAMP), Ok(()));
        assert_eq!(ok("{}", "1649367553", TIMESTAMP), Err(VerifyError::NoMatch));
        assert_eq!(ok(BODY, "1649367554", TIMESTAMP), Err(VerifyError::NoMatch));
        assert_eq!(
            ok(BODY, "1649367553", TIMESTAMP + 3600),
            Err(VerifyError::StaleTimestamp)
        );
        assert_eq!(ok(BODY, "soon", TIMESTAMP), Err(VerifyError::BadTimestamp));
        assert_eq!(
            verify(&secret, None, Some("1"), Some(EXPECTED), b"", 1),
            Err(VerifyError::MissingHeader("webhook-id"))
        );
    }

    #[test]
    fn generated_secrets_parse_back() {
        let s = generate_secret();
        let text = s.encode();
        assert!(text.starts_with("whsec_"));
        assert_eq!(Secret::parse(&text).unwrap(), s);
        assert_ne!(generate_secret(), s);
    }
}
