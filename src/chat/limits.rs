//! The rate limits, each written once and called by every path it covers: messages per user,
//! other socket frames per user, and credential checks per client address and per account
//! (each one an argon2 verification: tens of milliseconds of CPU and 19 MiB).
//!
//! Per replica (governor's keyed GCRA); the caller turns a refusal into a 429 or an error
//! frame.

use std::{hash::Hash, net::IpAddr};

use governor::{DefaultKeyedRateLimiter, clock::Clock};

use super::Chat;
use crate::error::ApiError;

fn check<K: Hash + Eq + Clone>(
    limiter: &DefaultKeyedRateLimiter<K>,
    key: &K,
) -> Result<(), ApiError> {
    limiter.check_key(key).map_err(|not_until| {
        let wait = not_until.wait_time_from(governor::clock::DefaultClock::default().now());
        ApiError::RateLimited(wait.as_secs().max(1))
    })
}

impl Chat {
    /// The per-user message rate limit, for every path that sends.
    ///
    /// # Errors
    /// 429 with the seconds to wait.
    pub(crate) fn admit(&self, user_id: i64) -> Result<(), ApiError> {
        check(&self.msg_limiter, &user_id)
    }

    /// The per-user limit on the other client frames that fan out or cost a query (typing,
    /// subscribe, unsubscribe, auth).
    ///
    /// # Errors
    /// 429 with the seconds to wait.
    pub(crate) fn admit_frame(&self, user_id: i64) -> Result<(), ApiError> {
        check(&self.frame_limiter, &user_id)
    }

    /// The limits on credential checks and account probes (register, login, refresh,
    /// password change, account deletion, email change): per client address, and per
    /// account when it is known.
    ///
    /// # Errors
    /// 429 with the seconds to wait.
    pub(crate) fn admit_credentials(
        &self,
        ip: IpAddr,
        account: Option<i64>,
    ) -> Result<(), ApiError> {
        check(&self.auth_limiter, &ip)?;
        match account {
            Some(id) => check(&self.account_limiter, &id),
            None => Ok(()),
        }
    }
}
