//! Backoff for retried calls: backon's exponential schedule, with ±30 % jitter applied here.
//!
//! backon's own jitter adds 0–100 % of the delay; docs/contract.md §5 asks for 30 %, so the
//! schedule is built without it and [`next_delay`] spreads each delay over `[0.7 d, 1.3 d]`.
//! A peer's `Retry-After` (429, 503) lengthens the wait, and one longer than the policy's
//! largest delay ends the retries rather than hold the caller.

use std::time::Duration;

use backon::ExponentialBuilder;
use rand::Rng;

use super::error::ClientError;
use super::options::RetryPolicy;

/// The share of a delay that jitter may add or remove.
pub const JITTER: f64 = 0.3;

/// backon's schedule for `policy`, without jitter (see [`next_delay`]).
pub fn backoff(policy: &RetryPolicy) -> ExponentialBuilder {
    ExponentialBuilder::default()
        .with_factor(2.0)
        .with_min_delay(policy.min_delay)
        .with_max_delay(policy.max_delay)
        .with_max_times(policy.max_times)
}

/// `delay` moved by a uniformly random ±30 %.
pub fn jitter(delay: Duration) -> Duration {
    delay.mul_f64(rand::thread_rng().gen_range((1.0 - JITTER)..=(1.0 + JITTER)))
}

/// The wait before the next attempt after `error`, or `None` to stop: `proposed` is backon's
/// next delay (`None` once retries are used up).
pub fn next_delay(
    error: &ClientError,
    proposed: Option<Duration>,
    max: Duration,
) -> Option<Duration> {
    let delay = jitter(proposed?);
    match error.retry_after() {
        Some(asked) if asked > max => None,
        Some(asked) => Some(delay.max(asked)),
        None => Some(delay),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clients::PeerBody;

    #[test]
    fn jitter_stays_within_thirty_percent_and_varies() {
        let base = Duration::from_millis(1000);
        let samples: Vec<Duration> = (0..2000).map(|_| jitter(base)).collect();
        assert!(samples
            .iter()
            .all(|d| *d >= Duration::from_millis(700) && *d <= Duration::from_millis(1300)));
        let low = samples
            .iter()
            .filter(|d| **d < Duration::from_millis(900))
            .count();
        let high = samples
            .iter()
            .filter(|d| **d > Duration::from_millis(1100))
            .count();
        assert!(
            low > 200 && high > 200,
            "jitter is not spread: {low} low, {high} high"
        );
    }

    #[test]
    fn the_schedule_doubles_up_to_the_cap() {
        use backon::BackoffBuilder;
        let policy = RetryPolicy {
            max_times: 4,
            min_delay: Duration::from_millis(100),
            max_delay: Duration::from_millis(300),
        };
        // backon multiplies in f32, so compare whole milliseconds.
        let delays: Vec<u128> = backoff(&policy).build().map(|d| d.as_millis()).collect();
        assert_eq!(delays, [100, 200, 300, 300]);
    }

    #[test]
    fn a_long_retry_after_stops_retrying() {
        let err = |secs| ClientError::Status {
            service: "payment-service",
            operation: "getPaymentStatus",
            status: 429,
            retry_after: Some(Duration::from_secs(secs)),
            body: PeerBody::default(),
        };
        let max = Duration::from_secs(5);
        let proposed = Some(Duration::from_millis(100));
        assert_eq!(next_delay(&err(60), proposed, max), None);
        assert!(next_delay(&err(2), proposed, max) >= Some(Duration::from_secs(2)));
        assert_eq!(next_delay(&err(2), None, max), None);
    }
}
