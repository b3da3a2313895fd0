//! The config file's value types: each checks itself while it is parsed, so
//! the TOML parser reports a bad value with its line. Their errors never
//! contain the value (it may be a secret or a token).

use std::fmt;
use std::time::Duration;

use base64::Engine as _;
use serde::{Deserialize, Deserializer};

use super::{API_TOKEN_MIN_CHARS, BREAKER_OFF, KEEP_FOREVER, SECRET_PREFIX};

/// An API token has at most this many characters.
const API_TOKEN_MAX_CHARS: usize = 256;

/// Secret key material: at least this many bytes after base64 decoding.
const SECRET_MIN_BYTES: usize = 24;
/// Secret key material: at most this many bytes after base64 decoding.
const SECRET_MAX_BYTES: usize = 64;

/// Decoded secret bytes. Debug never prints them.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Vec<u8>);

impl Secret {
    /// Parses `whsec_<base64>`; the error never contains the input.
    pub fn parse(text: &str) -> Result<Secret, String> {
        let Some(encoded) = text.strip_prefix(SECRET_PREFIX) else {
            return Err(format!("a secret must start with {SECRET_PREFIX:?}"));
        };
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .map_err(|_| format!("the part after {SECRET_PREFIX:?} is not valid base64"))?;
        if !(SECRET_MIN_BYTES..=SECRET_MAX_BYTES).contains(&bytes.len()) {
            return Err(format!(
                "a secret must decode to {SECRET_MIN_BYTES} to {SECRET_MAX_BYTES} bytes, this one has {}",
                bytes.len()
            ));
        }
        Ok(Secret(bytes))
    }

    pub fn from_bytes(bytes: Vec<u8>) -> Secret {
        Secret(bytes)
    }

    pub fn bytes(&self) -> &[u8] {
        &self.0
    }

    /// The `whsec_...` form, for `gen-secret` and test set-ups only.
    pub fn encode(&self) -> String {
        format!(
            "{SECRET_PREFIX}{}",
            base64::engine::general_purpose::STANDARD.encode(&self.0)
        )
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// A bearer token of the status API. Debug never prints it.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiToken(String);

impl ApiToken {
    /// Checks length and characters; the error never contains the input.
    pub fn parse(text: &str) -> Result<ApiToken, String> {
        let n = text.chars().count();
        if !(API_TOKEN_MIN_CHARS..=API_TOKEN_MAX_CHARS).contains(&n) {
            return Err(format!(
                "an API token must be {API_TOKEN_MIN_CHARS} to {API_TOKEN_MAX_CHARS} characters, this one has {n}"
            ));
        }
        if !text.bytes().all(|b| b.is_ascii_graphic()) {
            return Err("an API token may only hold visible ASCII characters (no spaces)".into());
        }
        Ok(ApiToken(text.to_string()))
    }

    pub fn as_bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

impl fmt::Debug for ApiToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiToken(<redacted>)")
    }
}

/// A retention age: a duration above zero, or `"forever"`.
pub(super) struct Keep(pub(super) Option<Duration>);

impl<'de> Deserialize<'de> for Keep {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        if text.trim() == KEEP_FOREVER {
            return Ok(Keep(None));
        }
        match humantime::parse_duration(text.trim()) {
            Ok(age) if !age.is_zero() => Ok(Keep(Some(age))),
            _ => Err(serde::de::Error::custom(format!(
                "invalid age {text:?}: write a duration above 0 such as \"7d\" or \"12h\", or \"{KEEP_FOREVER}\""
            ))),
        }
    }
}

/// A circuit breaker threshold: a duration above zero, or `"off"`.
pub(super) struct PauseAfter(pub(super) Option<Duration>);

impl<'de> Deserialize<'de> for PauseAfter {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        if text.trim() == BREAKER_OFF {
            return Ok(PauseAfter(None));
        }
        match humantime::parse_duration(text.trim()) {
            Ok(after) if !after.is_zero() => Ok(PauseAfter(Some(after))),
            _ => Err(serde::de::Error::custom(format!(
                "invalid pause_after {text:?}: write a duration above 0 such as \"5m\", or \"{BREAKER_OFF}\""
            ))),
        }
    }
}

/// An API token as written; its error message never contains the value.
pub(super) struct TokenText(pub(super) ApiToken);

impl<'de> Deserialize<'de> for TokenText {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        ApiToken::parse(&text)
            .map(TokenText)
            .map_err(|e| serde::de::Error::custom(format!("invalid API token: {e}")))
    }
}

/// A duration written as `"500ms"`, `"10s"`, `"1h"`.
#[derive(Clone, Copy)]
pub(super) struct Dur(pub(super) Duration);

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(text.trim()).map(Dur).map_err(|_| {
            serde::de::Error::custom(format!(
                "invalid duration {text:?}: write a number and a unit, such as \"500ms\", \"10s\" or \"1h\""
            ))
        })
    }
}

/// An event code: lower-case letters, digits and `_`.
pub(super) struct EventCodeName(pub(super) String);

impl<'de> Deserialize<'de> for EventCodeName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        let ok = !text.is_empty()
            && text.len() <= 100
            && text
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        if ok {
            Ok(EventCodeName(text))
        } else {
            Err(serde::de::Error::custom(format!(
                "invalid event code {text:?}: use lower-case letters, digits and '_'"
            )))
        }
    }
}

/// An absolute http(s) URL with a host.
pub(super) struct HttpUrl(pub(super) url::Url);

impl<'de> Deserialize<'de> for HttpUrl {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        let url = url::Url::parse(text.trim())
            .map_err(|e| serde::de::Error::custom(format!("invalid URL: {e}")))?;
        if url.scheme() != "http" && url.scheme() != "https" {
            return Err(serde::de::Error::custom(format!(
                "invalid URL: scheme must be http or https, not {:?}",
                url.scheme()
            )));
        }
        if url.host_str().is_none_or(str::is_empty) {
            return Err(serde::de::Error::custom("invalid URL: it has no host"));
        }
        Ok(HttpUrl(url))
    }
}

/// A `whsec_...` string; its error message never contains the value.
pub(super) struct SecretText(pub(super) Secret);

impl<'de> Deserialize<'de> for SecretText {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Secret::parse(&text)
            .map(SecretText)
            .map_err(|e| serde::de::Error::custom(format!("invalid secret: {e}")))
    }
}
