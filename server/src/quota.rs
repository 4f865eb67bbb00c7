//! Per-token byte-rate quotas, Kafka's client quotas: one client cannot
//! starve the others.
//!
//! A token may carry a produce and a consume rate in bytes per second
//! (`TokenRecord::quota`). Each node keeps, per token and direction, a
//! bucket that refills at the rate and holds at most one second's worth.
//! A request may take the bucket into debt (so one request larger than a
//! second's worth still passes); while a bucket is in debt, requests of that
//! token and direction answer `429 quota_exceeded` with `Retry-After` (the
//! seconds until the debt is paid) and do nothing. Produce is charged its
//! body before it is written; consume, range reads, snapshots, SQL and view
//! reads are charged the bytes of their responses as they are sent. The
//! rates are per node, as Kafka's are per broker.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::api_error::ApiError;
use crate::auth::Principal;
use strata_cluster::tokens::MAX_TOKENS;

/// Longest a streamed chunk is held back for its quota.
pub const MAX_PAUSE: Duration = Duration::from_secs(30);

/// Which way the bytes go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    Produce,
    Consume,
}

#[derive(Debug)]
struct Bucket {
    rate: f64,
    balance: f64,
    at: Instant,
}

impl Bucket {
    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.balance = (self.balance + elapsed * self.rate).min(self.rate);
        self.at = now;
    }
}

/// Every token's buckets on this node.
#[derive(Debug, Default)]
pub struct Quotas {
    buckets: Mutex<HashMap<(String, Direction), Bucket>>,
}

/// Whose bytes to charge: a token with a rate in one direction.
#[derive(Debug, Clone)]
pub struct Meter {
    key: (String, Direction),
    rate: u64,
}

impl Quotas {
    /// The meter of `principal`'s bytes in `direction`; `None` when it has
    /// no quota there.
    pub fn meter(principal: &Principal, direction: Direction) -> Option<Meter> {
        let Principal::Token { name, quota, .. } = principal else {
            return None;
        };
        let rate = match direction {
            Direction::Produce => quota.produce_bytes_per_sec,
            Direction::Consume => quota.consume_bytes_per_sec,
        }?;
        Some(Meter {
            key: (name.clone(), direction),
            rate: rate.max(1),
        })
    }

    /// `429 quota_exceeded` (with `Retry-After`) while the meter's bucket
    /// is in debt; otherwise charges `bytes` to it.
    pub fn take(&self, meter: Option<&Meter>, bytes: u64) -> Result<(), ApiError> {
        let Some(meter) = meter else { return Ok(()) };
        let now = Instant::now();
        let mut buckets = self.buckets.lock();
        let bucket = Self::bucket(&mut buckets, meter, now);
        if bucket.balance < 0.0 {
            let wait = (-bucket.balance / bucket.rate).ceil().max(1.0) as u64;
            let (direction, per_sec) = match meter.key.1 {
                Direction::Produce => ("produce", meter.rate),
                Direction::Consume => ("consume", meter.rate),
            };
            let mut error = ApiError::new(
                axum::http::StatusCode::TOO_MANY_REQUESTS,
                "quota_exceeded",
                format!(
                    "this token's {direction} quota of {per_sec} bytes per second is used up; retry in {wait} s"
                ),
            );
            error.retry_after_secs = Some(wait);
            metrics::counter!("strata_quota_throttled_total", "direction" => direction)
                .increment(1);
            return Err(error);
        }
        bucket.balance -= bytes as f64;
        Ok(())
    }

    /// Charges `bytes` about to be sent (a chunk of a response), even into
    /// debt, and returns how long to hold them back so that the stream
    /// keeps to the rate (at most [`MAX_PAUSE`] per chunk, so that a slow
    /// stream is not taken for a stalled client).
    pub fn charge(&self, meter: &Meter, bytes: u64) -> Duration {
        let now = Instant::now();
        let mut buckets = self.buckets.lock();
        let bucket = Self::bucket(&mut buckets, meter, now);
        bucket.balance -= bytes as f64;
        if bucket.balance >= 0.0 {
            return Duration::ZERO;
        }
        Duration::from_secs_f64((-bucket.balance / bucket.rate).min(MAX_PAUSE.as_secs_f64()))
    }

    /// The meter's bucket, refilled up to `now` (a new one is full).
    fn bucket<'a>(
        buckets: &'a mut HashMap<(String, Direction), Bucket>,
        meter: &Meter,
        now: Instant,
    ) -> &'a mut Bucket {
        Self::forget_idle(buckets, now);
        let bucket = buckets.entry(meter.key.clone()).or_insert_with(|| Bucket {
            rate: meter.rate as f64,
            balance: meter.rate as f64,
            at: now,
        });
        bucket.refill(now);
        bucket.rate = meter.rate as f64;
        bucket
    }

    /// Drops full buckets once there are many (tokens come and go): a
    /// bucket that is full again is the same as none.
    fn forget_idle(buckets: &mut HashMap<(String, Direction), Bucket>, now: Instant) {
        if buckets.len() < 2 * MAX_TOKENS {
            return;
        }
        buckets.retain(|_, bucket| {
            bucket.refill(now);
            bucket.balance < bucket.rate
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use strata_cluster::tokens::Quota;

    fn principal(produce: Option<u64>) -> Principal {
        Principal::Token {
            name: "t".into(),
            permissions: Vec::new(),
            quota: Quota {
                produce_bytes_per_sec: produce,
                consume_bytes_per_sec: None,
            },
        }
    }

    #[test]
    fn a_bucket_in_debt_refuses_until_the_debt_is_paid() {
        let quotas = Quotas::default();
        let meter = Quotas::meter(&principal(Some(1000)), Direction::Produce);
        assert!(meter.is_some());
        quotas
            .take(meter.as_ref(), 3000)
            .expect("a full bucket may go into debt");
        let refused = quotas.take(meter.as_ref(), 1).expect_err("in debt");
        assert_eq!(refused.status.as_u16(), 429);
        assert_eq!(refused.code, "quota_exceeded");
        let wait = refused.retry_after_secs.expect("Retry-After");
        assert!((2..=3).contains(&wait), "about 2 s of debt: {wait}");
        assert!(Quotas::meter(&principal(None), Direction::Produce).is_none());
        assert!(Quotas::meter(&principal(Some(1)), Direction::Consume).is_none());
        assert!(Quotas::meter(&Principal::Open, Direction::Produce).is_none());
        quotas.take(None, u64::MAX).expect("no quota, no limit");
    }
}
