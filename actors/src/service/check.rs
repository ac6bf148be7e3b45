//! The validate (check) path: IP blocks, key look-up (with bounded store
//! reads after key-cache misses), secret verification and the KeyLimiter.

use super::{Service, metric};
use crate::keys::{self, AuthResult, KeyRecord, SecretHash};
use crate::limitset::{CheckError, CheckResult};
use ringlimit_protocol::apikey;
use ringlimit_protocol::validate::Checked;
pub use ringlimit_protocol::validate::ValidateOutcome;
use std::net::IpAddr;
use std::sync::Arc;

/// The state of a key's limits after a check that ran.
fn checked(key: &KeyRecord, r: CheckResult) -> Checked {
    Checked {
        key_id: key.key_id.as_str().into(),
        tier: key.tier.as_str().into(),
        limits: r.limits,
        retry_after_ms: r.retry_after_ms,
        denied_by: r.denied_by,
    }
}

/// Whether `o` is the answer for a key whose stored counter state could not
/// be read ([`CheckError::StateUnavailable`]): the router applies the
/// tier's fail-open or fail-closed choice to it.
pub fn state_unavailable(o: &ValidateOutcome) -> bool {
    matches!(o, ValidateOutcome::Unavailable { key_id: Some(_), message, .. }
        if *message == CheckError::StateUnavailable.to_string())
}

/// The answer for a suspended key.
fn suspended(key: &KeyRecord) -> ValidateOutcome {
    ValidateOutcome::Suspended {
        key_id: key.key_id.clone(),
        tier: key.tier.clone(),
        reason: key.suspended_reason.clone(),
        until_ms: key.suspended_until_ms,
    }
}

/// Most store look-ups a node makes per second for key ids missing from its
/// cache; more misses are answered 401 without one.
pub const MISS_LOOKUPS_PER_SECOND: u32 = 200;
/// How long a key id the store did not have is not looked up again.
pub const MISS_NEGATIVE_MS: u64 = 1_000;
/// Longest a look-up after a miss may take before the check answers 401.
pub const MISS_LOOKUP_TIMEOUT: std::time::Duration = std::time::Duration::from_millis(250);
/// Most key ids remembered as absent.
const MISS_NEGATIVE_MAX: usize = 10_000;

/// Bounds the store reads that key-cache misses cause: a budget per second
/// and a short memory of ids the store did not have, so a flood of unknown
/// key ids costs the store at most `MISS_LOOKUPS_PER_SECOND` reads a second.
#[derive(Debug, Default)]
pub(super) struct MissGuard {
    second: u64,
    used: u32,
    absent: std::collections::HashMap<String, u64>,
}

impl MissGuard {
    /// Whether `key_id` may be looked up in the store now.
    fn admit(&mut self, key_id: &str, now_ms: u64) -> bool {
        if self.absent.get(key_id).is_some_and(|until| *until > now_ms) {
            return false;
        }
        let second = now_ms / 1_000;
        if second != self.second {
            self.second = second;
            self.used = 0;
        }
        if self.used >= MISS_LOOKUPS_PER_SECOND {
            return false;
        }
        self.used += 1;
        true
    }

    fn absent(&mut self, key_id: &str, now_ms: u64) {
        if self.absent.len() >= MISS_NEGATIVE_MAX {
            self.absent.retain(|_, until| *until > now_ms);
            if self.absent.len() >= MISS_NEGATIVE_MAX {
                self.absent.clear();
            }
        }
        self.absent
            .insert(key_id.to_string(), now_ms + MISS_NEGATIVE_MS);
    }
}

impl Service {
    /// The unexpired block holding `ip`, if any.
    pub fn ip_blocked(&self, ip: IpAddr) -> Option<ringlimit_protocol::pipeline::IpBlock> {
        if self.blocks.is_empty() {
            return None;
        }
        self.blocks.find(ip, self.now_ms())
    }

    /// The front of every check: the caller's IP against the block list,
    /// then the api_key's form. `Ok` gives the key id and the hash of the
    /// presented secret for [`Service::validate_hashed`] (here or on the
    /// key's owner); `Err` is the check's answer already.
    pub fn admit_request<'a>(
        &self,
        api_key: &'a str,
        client_ip: Option<IpAddr>,
    ) -> Result<(&'a str, SecretHash), ValidateOutcome> {
        if let Some(answer) = self.ip_block_answer(client_ip) {
            return Err(answer);
        }
        self.admit_key(api_key)
    }

    /// The answer for a caller whose IP is on the block list, if it is.
    pub fn ip_block_answer(&self, client_ip: Option<IpAddr>) -> Option<ValidateOutcome> {
        let block = self.ip_blocked(client_ip?)?;
        Some(ValidateOutcome::IpBlocked {
            cidr: block.cidr,
            expires_at_ms: block.expires_at_ms,
        })
    }

    /// The api_key's form: its key id and the hash of its secret, or the
    /// answer for a malformed key (hashed like an unknown one). The part of
    /// [`Service::admit_request`] after the caller's IP.
    pub fn admit_key<'a>(
        &self,
        api_key: &'a str,
    ) -> Result<(&'a str, SecretHash), ValidateOutcome> {
        let Some((key_id, secret)) = apikey::parse(api_key) else {
            // Malformed keys take the same hashing path as unknown ones.
            let _ = keys::verify_unknown(&SecretHash::of(api_key));
            return Err(ValidateOutcome::Unauthorized);
        };
        Ok((key_id, SecretHash::of(secret)))
    }

    /// May the holder of `api_key` spend `cost` now? The whole check on this
    /// node (a single node, or tests and benchmarks of the service alone).
    pub async fn validate(
        &self,
        api_key: &str,
        cost: u64,
        client_ip: Option<IpAddr>,
    ) -> ValidateOutcome {
        match self.admit_request(api_key, client_ip) {
            Ok((key_id, hash)) => self.validate_hashed(key_id, &hash, cost, client_ip).await,
            Err(answer) => answer,
        }
    }

    /// Validate for a key_id and the SHA-256 of the presented secret (what a
    /// forwarded check carries: the secret never leaves the receiving node).
    pub async fn validate_hashed(
        &self,
        key_id: &str,
        presented: &SecretHash,
        cost: u64,
        client_ip: Option<IpAddr>,
    ) -> ValidateOutcome {
        let now_us = self.clock.now_us();
        let now_ms = now_us / 1_000;
        let key = match self.authenticate(key_id, presented, now_ms).await {
            Ok(key) => key,
            Err(answer) => return answer,
        };
        let r = self.limiters.check(key_id, cost, now_us).await;
        self.decided(&key, r, cost, client_ip, now_ms)
    }

    /// The check decided without waiting, when it can be: the key is in
    /// the cache and its limiter is active with its state loaded (the
    /// common case under load). `None`: take [`Service::validate_hashed`].
    /// Answers exactly as that would.
    pub fn validate_now(
        &self,
        key_id: &str,
        presented: &SecretHash,
        cost: u64,
        client_ip: Option<IpAddr>,
    ) -> Option<ValidateOutcome> {
        let now_us = self.clock.now_us();
        let now_ms = now_us / 1_000;
        let key = self.source.keys.get(key_id)?;
        if key.verify(presented, now_ms) != AuthResult::Valid {
            return Some(ValidateOutcome::Unauthorized);
        }
        if key.suspended_at(now_ms) {
            return Some(suspended(&key));
        }
        let r = self.limiters.check_direct(key_id, cost, now_us)?;
        Some(self.decided(&key, Ok(r), cost, client_ip, now_ms))
    }

    /// Several checks of one key (`(cost, client_ip)` each, in order)
    /// decided without waiting, as [`Service::validate_now`] decides one:
    /// the key authenticated once, its limiter's cell locked once. Pushes
    /// one outcome per check onto `out`, in order. `false` (nothing pushed,
    /// nothing spent): take [`Service::validate_hashed`] for each.
    pub fn validate_now_many(
        &self,
        key_id: &str,
        presented: &SecretHash,
        checks: &[(u64, Option<IpAddr>)],
        out: &mut Vec<ValidateOutcome>,
    ) -> bool {
        let now_us = self.clock.now_us();
        let now_ms = now_us / 1_000;
        let Some(key) = self.source.keys.get(key_id) else {
            return false;
        };
        if key.verify(presented, now_ms) != AuthResult::Valid {
            out.extend(checks.iter().map(|_| ValidateOutcome::Unauthorized));
            return true;
        }
        if key.suspended_at(now_ms) {
            out.extend(checks.iter().map(|_| suspended(&key)));
            return true;
        }
        let mut results = Vec::with_capacity(checks.len());
        if !self.limiters.check_direct_many(
            key_id,
            checks.iter().map(|c| c.0),
            now_us,
            &mut results,
        ) {
            return false;
        }
        out.extend(
            results
                .into_iter()
                .zip(checks)
                .map(|(r, &(cost, ip))| self.decided(&key, Ok(r), cost, ip, now_ms)),
        );
        true
    }

    /// The outcome of a check the limiter answered (or could not).
    fn decided(
        &self,
        key: &Arc<KeyRecord>,
        r: Result<Result<CheckResult, CheckError>, crate::limiter::LimiterError>,
        cost: u64,
        client_ip: Option<IpAddr>,
        now_ms: u64,
    ) -> ValidateOutcome {
        match r {
            Ok(Ok(result)) if result.allowed => {
                if let Some(p) = self.pipelines.as_ref() {
                    p.on_allowed(key, &result, cost, now_ms);
                }
                ValidateOutcome::Allowed(checked(key, result))
            }
            Ok(Ok(result)) => {
                if let Some(p) = self.pipelines.as_ref() {
                    p.on_denied(key, &result, cost, client_ip, now_ms);
                }
                ValidateOutcome::Denied(checked(key, result))
            }
            Ok(Err(e @ CheckError::CostExceedsCapacity { .. })) => {
                ValidateOutcome::CostExceedsCapacity {
                    key_id: key.key_id.clone(),
                    tier: key.tier.clone(),
                    message: e.to_string(),
                }
            }
            Ok(Err(e @ (CheckError::NoLimits | CheckError::StateUnavailable))) => {
                ValidateOutcome::Unavailable {
                    key_id: Some(key.key_id.clone()),
                    tier: Some(key.tier.clone()),
                    message: e.to_string(),
                }
            }
            Err(_) => ValidateOutcome::unavailable("the key limiter is unavailable; retry"),
        }
    }

    /// The key a check may spend from: known (in the cache, or read from the
    /// store after a miss), the presented secret's hash matching, not
    /// revoked and not suspended at `now_ms`. `Err` is the check's answer
    /// (401 or 403). Every path that answers for a key without its limiter
    /// (failing open when its owner is unreachable) goes through here too.
    pub async fn authenticate(
        &self,
        key_id: &str,
        presented: &SecretHash,
        now_ms: u64,
    ) -> Result<Arc<KeyRecord>, ValidateOutcome> {
        let cached = self.source.keys.get(key_id);
        let found = match cached {
            Some(k) => Some(k),
            None => self.key_after_miss(key_id, now_ms).await,
        };
        let Some(key) = found else {
            let _ = keys::verify_unknown(presented);
            return Err(ValidateOutcome::Unauthorized);
        };
        if key.verify(presented, now_ms) != AuthResult::Valid {
            return Err(ValidateOutcome::Unauthorized);
        }
        if key.suspended_at(now_ms) {
            return Err(suspended(&key));
        }
        Ok(key)
    }

    /// A key missing from the cache, read from the store (within the miss
    /// budget). In a cluster a key created on another node reaches this
    /// node's cache by broadcast a few milliseconds later; a check that
    /// arrives first finds it here instead of a wrong 401.
    async fn key_after_miss(&self, key_id: &str, now_ms: u64) -> Option<Arc<KeyRecord>> {
        if !apikey::is_key_id(key_id) || !self.misses.lock().admit(key_id, now_ms) {
            return None;
        }
        match tokio::time::timeout(MISS_LOOKUP_TIMEOUT, self.store.get_key(key_id)).await {
            Ok(Ok(Some(rec))) => {
                metrics::counter!(metric::MISS_LOADED).increment(1);
                Some(self.source.keys.insert_if_absent(rec))
            }
            Ok(Ok(None)) => {
                self.misses.lock().absent(key_id, now_ms);
                None
            }
            Ok(Err(e)) => {
                tracing::debug!(key_id, error = %e, "key look-up after a cache miss failed");
                None
            }
            Err(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn miss_lookups_are_budgeted_per_second_and_absent_ids_remembered() {
        let mut g = MissGuard::default();
        let t = 5_000_000;
        for i in 0..MISS_LOOKUPS_PER_SECOND {
            assert!(
                g.admit(&format!("k{i}"), t),
                "look-up {i} within the budget"
            );
        }
        assert!(
            !g.admit("one-more", t + 999),
            "over the budget in the same second"
        );
        assert!(g.admit("one-more", t + 1_000), "a new second, a new budget");
        g.absent("gone", t + 1_000);
        assert!(!g.admit("gone", t + 1_500), "remembered as absent");
        assert!(
            g.admit("gone", t + 1_000 + MISS_NEGATIVE_MS),
            "forgotten after a while"
        );
    }

    #[test]
    fn the_memory_of_absent_ids_is_bounded() {
        let mut g = MissGuard::default();
        for i in 0..MISS_NEGATIVE_MAX + 10 {
            g.absent(&format!("k{i}"), 0);
        }
        assert!(g.absent.len() <= MISS_NEGATIVE_MAX);
    }
}
