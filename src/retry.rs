//! What happens after a failed attempt, as pure functions: the backoff delay,
//! `Retry-After`, and when a row is given up (`dead`).

use std::time::{Duration, SystemTime};

use rand::Rng;

/// The shortest delay a `Retry-After` can ask for: a receiver answering
/// `Retry-After: 0` on every attempt must not turn retries into a busy loop.
pub const RETRY_AFTER_MIN: Duration = Duration::from_secs(1);

/// The retry settings of one endpoint.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    pub initial: Duration,
    pub max: Duration,
    pub no_retry_statuses: Vec<u16>,
}

/// What to do with a row after a failed attempt.
#[derive(Debug, Clone, PartialEq)]
pub enum NextStep {
    /// Try again after this delay.
    Retry(Duration),
    /// Give up; the reason is appended to `last_error`.
    Dead(&'static str),
}

/// Decides the next step after failed attempt number `attempt` (1-based).
/// `status` is the HTTP status if a response arrived; `retry_after` is the
/// parsed `Retry-After` header. `unit` is a uniform random number in [0, 1)
/// for the jitter.
pub fn next_step(
    policy: &RetryPolicy,
    attempt: u32,
    status: Option<u16>,
    retry_after: Option<Duration>,
    unit: f64,
) -> NextStep {
    if let Some(code) = status {
        if policy.no_retry_statuses.contains(&code) {
            return NextStep::Dead("status is not retried (no_retry_statuses)");
        }
    }
    if attempt >= policy.max_attempts {
        return NextStep::Dead("max_attempts reached");
    }
    let delay = match retry_after {
        // The receiver knows best when it can take the request again; it is
        // honoured between RETRY_AFTER_MIN and the endpoint's retry_max.
        Some(wait) => wait.clamp(RETRY_AFTER_MIN, policy.max.max(RETRY_AFTER_MIN)),
        None => backoff(policy, attempt, unit),
    };
    NextStep::Retry(delay)
}

/// Exponential backoff with "equal jitter": the n-th retry waits between half
/// and all of min(initial * 2^(n-1), max).
pub fn backoff(policy: &RetryPolicy, attempt: u32, unit: f64) -> Duration {
    let exp = attempt.saturating_sub(1).min(62);
    let base = policy
        .initial
        .checked_mul(1u32 << exp.min(31))
        .unwrap_or(policy.max)
        .min(policy.max);
    let unit = unit.clamp(0.0, 1.0);
    base.mul_f64(0.5 + 0.5 * unit)
}

/// A random number for [`next_step`]'s jitter.
pub fn jitter_unit() -> f64 {
    rand::thread_rng().gen::<f64>()
}

/// Parses a `Retry-After` value: delay seconds or an HTTP date. A date in the
/// past means "now" (zero); anything unparsable is ignored (None).
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if value.is_empty() {
        return None;
    }
    if value.bytes().all(|b| b.is_ascii_digit()) {
        // Absurdly long numbers saturate rather than fail; next_step caps them.
        return Some(Duration::from_secs(
            value.parse::<u64>().unwrap_or(u64::MAX),
        ));
    }
    let when = httpdate::parse_http_date(value).ok()?;
    Some(when.duration_since(now).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 5,
            initial: Duration::from_secs(2),
            max: Duration::from_secs(60),
            no_retry_statuses: vec![410],
        }
    }

    #[test]
    fn backoff_doubles_with_jitter_and_caps() {
        let p = policy();
        assert_eq!(backoff(&p, 1, 1.0), Duration::from_secs(2));
        assert_eq!(backoff(&p, 1, 0.0), Duration::from_secs(1));
        assert_eq!(backoff(&p, 2, 1.0), Duration::from_secs(4));
        assert_eq!(backoff(&p, 4, 1.0), Duration::from_secs(16));
        assert_eq!(backoff(&p, 10, 1.0), Duration::from_secs(60));
        assert_eq!(backoff(&p, 10, 0.0), Duration::from_secs(30));
        assert_eq!(backoff(&p, u32::MAX, 1.0), Duration::from_secs(60));
        for attempt in 1..100 {
            let d = backoff(&p, attempt, 0.37);
            assert!(
                d <= p.max && d >= Duration::from_millis(500),
                "{attempt}: {d:?}"
            );
        }
    }

    #[test]
    fn dead_after_max_attempts_or_on_a_no_retry_status() {
        let p = policy();
        assert!(matches!(
            next_step(&p, 4, Some(500), None, 0.5),
            NextStep::Retry(_)
        ));
        assert_eq!(
            next_step(&p, 5, Some(500), None, 0.5),
            NextStep::Dead("max_attempts reached")
        );
        assert!(matches!(
            next_step(&p, 1, Some(410), None, 0.5),
            NextStep::Dead(_)
        ));
        assert!(matches!(
            next_step(&p, 1, None, None, 0.5),
            NextStep::Retry(_)
        ));
        let once = RetryPolicy {
            max_attempts: 1,
            ..policy()
        };
        assert!(matches!(
            next_step(&once, 1, Some(503), None, 0.5),
            NextStep::Dead(_)
        ));
    }

    #[test]
    fn retry_after_is_honoured_within_bounds() {
        let p = policy();
        let secs = |s| Some(Duration::from_secs(s));
        assert_eq!(
            next_step(&p, 1, Some(429), secs(7), 0.5),
            NextStep::Retry(Duration::from_secs(7))
        );
        assert_eq!(
            next_step(&p, 1, Some(429), secs(0), 0.5),
            NextStep::Retry(RETRY_AFTER_MIN)
        );
        assert_eq!(
            next_step(&p, 1, Some(429), secs(86_400), 0.5),
            NextStep::Retry(p.max)
        );
    }

    #[test]
    fn retry_after_parses_seconds_and_http_dates() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_445_412_480); // Wed, 21 Oct 2015 07:28:00 GMT
        assert_eq!(
            parse_retry_after("120", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(parse_retry_after(" 5 ", now), Some(Duration::from_secs(5)));
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:29:00 GMT", now),
            Some(Duration::from_secs(60))
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("-5", now), None);
        assert_eq!(parse_retry_after("", now), None);
        assert_eq!(
            parse_retry_after("99999999999999999999999", now),
            Some(Duration::from_secs(u64::MAX))
        );
    }
}
