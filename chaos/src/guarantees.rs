//! What each fault may cost, as docs/guarantees.md states it, checked
//! against a scenario's accounts.

use crate::scenario::{Report, Scenario};

/// The guarantee of a scenario, in words.
pub fn statement(s: Scenario) -> &'static str {
    match s {
        Scenario::KillOwner => {
            "a SIGKILL of a key's owner over-admits at most one limit per key and window \
             (the admits since the owner's last flush, re-admitted by the next owner), \
             and loses from usage at most what was admitted in the second of the kill"
        }
        Scenario::Stop => {
            "a node frozen past the heartbeat timeout over-admits at most one limit per key and window, \
             and usage loses nothing"
        }
        Scenario::Partition => {
            "a partition into 2 parts over-admits at most (parts - 1) x limit = one limit per key and window \
             until it heals, and usage loses nothing"
        }
        Scenario::Asymmetric => {
            "an asymmetric partition over-admits at most one limit per key and window, and usage loses nothing"
        }
        Scenario::RollingRestart | Scenario::Join | Scenario::Drain => {
            "a graceful membership change (SIGTERM, join, drain) over-admits nothing and loses nothing"
        }
        Scenario::RedisRestart => {
            "Redis killed and restarted empty: checks are answered from the owners' memory throughout, \
             nothing is over-admitted, and usage loses nothing"
        }
        Scenario::CqlRestart => {
            "the CQL server killed and restarted: checks on active keys are answered from memory throughout, \
             nothing is over-admitted, usage written late loses nothing, and an admin write refused \
             during the outage changes nothing"
        }
    }
}

/// Fills in `guarantee`, `held` and `why_not`.
pub fn judge(mut r: Report) -> Report {
    let s = r.scenario;
    let limit = r.options.limit;
    let mut why = Vec::new();
    let o = &r.over_admission;
    if s.exact() {
        if o.windows_over > 0 {
            why.push(format!(
                "{} (key, window) pairs over the limit, worst +{} units",
                o.windows_over, o.worst_units
            ));
        }
    } else if o.worst_units > limit {
        why.push(format!(
            "a (key, window) pair got {} units over the limit of {limit}",
            o.worst_units
        ));
    }
    // Usage (billing's source) against what the client saw admitted. The
    // client cannot know the outcome of a timed-out request: the server may
    // have admitted it, so usage may exceed the client's count by that much.
    // A fail-open answer is counted by the node that gave it; the owner may
    // have counted the same check if it got it and only its answer was lost.
    let lo = r.allowed_units;
    let hi = r.allowed_units + r.unknown_outcomes + r.fail_open;
    let lost_allowance = if s == Scenario::KillOwner {
        let second = r.fault.from_s.max(0.0) as usize;
        r.allowed_per_s.get(second).copied().unwrap_or(0)
            + r.allowed_per_s.get(second + 1).copied().unwrap_or(0)
    } else {
        0
    };
    if r.usage_units + lost_allowance < lo || r.usage_units > hi {
        why.push(format!(
            "usage holds {} units; the client saw {} admitted ({} of them fail-open, {} outcomes unknown{})",
            r.usage_units,
            r.allowed_units,
            r.fail_open,
            r.unknown_outcomes,
            if lost_allowance > 0 {
                format!(", {lost_allowance} may be lost to the kill")
            } else {
                String::new()
            }
        ));
    }
    // Billing is computed from the usage history: what is billed must be
    // what usage holds, unit for unit.
    if let Some(b) = r.billed_units
        && b != r.usage_units
    {
        why.push(format!(
            "billed {b} units for the loaded keys; usage holds {}",
            r.usage_units
        ));
    }
    if s.backend() {
        let failed: u64 = r.failures.values().sum();
        if failed > 0 {
            why.push(format!(
                "{failed} checks failed while only a backend was down: {:?}",
                r.failures
            ));
        }
    }
    for w in &r.admin_writes {
        if !w.in_force_everywhere {
            why.push(format!(
                "admin write {} of {}: {}",
                w.what, w.key_id, w.detail
            ));
        }
    }
    if r.ring_converged_after_s.is_none() {
        why.push("the ring did not converge after the fault".into());
    }
    r.guarantee = statement(s).to_string();
    r.held = why.is_empty();
    r.why_not = why;
    r
}
