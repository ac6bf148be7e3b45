//! The `[retention]`, `[billing]`, `[alerts]`, `[pipelines]` and
//! `[[abuse_rules]]` sections of the config file.
//!
//! ```toml
//! [retention]            # how long usage history and violations are kept
//! usage_minute = "7d"
//! usage_hour = "90d"
//! usage_day = "730d"
//! violations = "90d"
//!
//! [billing]
//! period = "monthly"     # or a length: "15m", "1h", "7d"
//! close_delay_ms = 60000 # close a period this long after it ends
//! currency = "USD"
//! [billing.prices.pro]
//! included_units = 1000000
//! unit_price = "0.0001"  # per unit above the included ones
//!
//! [[abuse_rules]]
//! name = "denial-storm"
//! type = "violations"    # more than `max` violations within `window_ms`
//! max = 100
//! window_ms = 10000
//! suspend_for_ms = 300000
//!
//! [alerts]
//! usage_percent = 80
//! included_percent = 80
//! repeated_violations = { count = 100, window_ms = 60000 }
//! backlog_bound = 100000
//! max_attempts = 5
//! initial_backoff_ms = 500
//! max_backoff_ms = 30000
//! timeout_ms = 5000
//! [[alerts.webhooks]]
//! name = "ops"
//! url = "https://hooks.example.com/ringlimit"
//! format = "slack"       # or "generic"
//! secret = "a shared HMAC secret"
//! ```

use super::{ConfigError, bad};
use ringlimit_actors::pipeline::{
    AbuseRule, AlertConfig, BillingConfig, DeliveryPolicy, Period, PipelineConfig, Price,
    WebhookEndpoint, WebhookFormat,
};
use ringlimit_actors::storage::Retention;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::time::Duration;

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RetentionRaw {
    pub usage_minute: Option<String>,
    pub usage_hour: Option<String>,
    pub usage_day: Option<String>,
    pub violations: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PriceRaw {
    pub included_units: u64,
    pub unit_price: String,
    pub currency: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BillingRaw {
    pub period: Option<String>,
    pub close_delay_ms: Option<u64>,
    pub currency: Option<String>,
    pub prices: Option<BTreeMap<String, PriceRaw>>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RepeatedRaw {
    pub count: u64,
    pub window_ms: u64,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct WebhookRaw {
    pub name: String,
    pub url: String,
    pub format: Option<WebhookFormat>,
    pub secret: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AlertsRaw {
    pub usage_percent: Option<u8>,
    pub included_percent: Option<u8>,
    pub repeated_violations: Option<RepeatedRaw>,
    pub backlog_bound: Option<usize>,
    pub owner_secret: Option<String>,
    pub max_attempts: Option<u32>,
    pub initial_backoff_ms: Option<u64>,
    pub max_backoff_ms: Option<u64>,
    pub timeout_ms: Option<u64>,
    pub webhooks: Option<Vec<WebhookRaw>>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PipelinesRaw {
    pub queue_capacity: Option<usize>,
    pub batch_max: Option<usize>,
    pub tick_ms: Option<u64>,
    pub drain_timeout_ms: Option<u64>,
}

/// A duration with a unit: `90s`, `15m`, `36h`, `7d`.
pub fn parse_duration(field: &str, s: &str) -> Result<Duration, ConfigError> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (n, unit) = s.split_at(split);
    let n: u64 = n.parse().map_err(|_| {
        bad(
            field,
            format!("'{s}' is not a duration like 90s, 15m, 36h, 7d"),
        )
    })?;
    let secs = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3_600,
        "d" => 86_400,
        _ => return Err(bad(field, format!("'{s}': the unit must be s, m, h or d"))),
    };
    let total = n
        .checked_mul(secs)
        .filter(|t| (60..=20 * 365 * 86_400).contains(t))
        .ok_or_else(|| bad(field, format!("'{s}' must be between 1m and 20 years")))?;
    Ok(Duration::from_secs(total))
}

pub fn retention(r: Option<&RetentionRaw>) -> Result<Retention, ConfigError> {
    let mut out = Retention::default();
    let Some(r) = r else { return Ok(out) };
    if let Some(v) = &r.usage_minute {
        out.minute = parse_duration("retention.usage_minute", v)?;
    }
    if let Some(v) = &r.usage_hour {
        out.hour = parse_duration("retention.usage_hour", v)?;
    }
    if let Some(v) = &r.usage_day {
        out.day = parse_duration("retention.usage_day", v)?;
    }
    if let Some(v) = &r.violations {
        out.violations = parse_duration("retention.violations", v)?;
    }
    Ok(out)
}

fn currency(field: &str, c: &str) -> Result<String, ConfigError> {
    if c.len() == 3 && c.bytes().all(|b| b.is_ascii_uppercase()) {
        Ok(c.to_string())
    } else {
        Err(bad(
            field,
            format!("'{c}' is not a three-letter ISO 4217 code like USD"),
        ))
    }
}

fn url(field: &str, u: &str) -> Result<(), ConfigError> {
    let ok =
        (u.starts_with("http://") || u.starts_with("https://")) && u.len() <= 2048 && u.len() > 8;
    if ok {
        Ok(())
    } else {
        Err(bad(
            field,
            // The origin only: a webhook URL's path often holds its token.
            format!(
                "'{}' is not an http:// or https:// URL",
                ringlimit_actors::redact::origin(u)
            ),
        ))
    }
}

/// Builds the pipelines' config from the file's sections.
pub fn pipelines(
    node: &str,
    p: Option<&PipelinesRaw>,
    billing: Option<&BillingRaw>,
    alerts: Option<&AlertsRaw>,
    rules: Option<&Vec<AbuseRule>>,
    period_override: Option<&str>,
) -> Result<PipelineConfig, ConfigError> {
    let mut cfg = PipelineConfig {
        node: node.to_string(),
        ..PipelineConfig::default()
    };
    if let Some(p) = p {
        if let Some(c) = p.queue_capacity {
            if !(1..=10_000_000).contains(&c) {
                return Err(bad(
                    "pipelines.queue_capacity",
                    "must be between 1 and 10000000",
                ));
            }
            cfg.queue_capacity = c;
        }
        if let Some(b) = p.batch_max {
            if !(1..=100_000).contains(&b) {
                return Err(bad("pipelines.batch_max", "must be between 1 and 100000"));
            }
            cfg.batch_max = b;
        }
        if let Some(t) = p.tick_ms {
            if !(1..=60_000).contains(&t) {
                return Err(bad("pipelines.tick_ms", "must be between 1 and 60000"));
            }
            cfg.tick = Duration::from_millis(t);
        }
        if let Some(t) = p.drain_timeout_ms {
            if !(1..=600_000).contains(&t) {
                return Err(bad(
                    "pipelines.drain_timeout_ms",
                    "must be between 1 and 600000",
                ));
            }
            cfg.drain_timeout = Duration::from_millis(t);
        }
    }
    let b = billing.cloned().unwrap_or_default();
    let period = period_override.or(b.period.as_deref()).unwrap_or("monthly");
    cfg.billing = BillingConfig {
        period: Period::parse(period).map_err(|m| bad("billing.period", m))?,
        close_delay: Duration::from_millis(b.close_delay_ms.unwrap_or(60_000)),
        prices: Default::default(),
        default_currency: currency("billing.currency", b.currency.as_deref().unwrap_or("USD"))?,
    };
    if cfg.billing.close_delay > Duration::from_secs(86_400) {
        return Err(bad(
            "billing.close_delay_ms",
            "must be at most 86400000 (one day)",
        ));
    }
    for (tier, pr) in b.prices.unwrap_or_default() {
        let f = format!("billing.prices.{tier}");
        let nanos =
            ringlimit_protocol::pipeline::decimal_to_nanos(&pr.unit_price).ok_or_else(|| {
                bad(
                    &format!("{f}.unit_price"),
                    format!(
                        "'{}' is not a non-negative decimal with at most 9 decimals",
                        pr.unit_price
                    ),
                )
            })?;
        let cur = match &pr.currency {
            Some(c) => currency(&format!("{f}.currency"), c)?,
            None => cfg.billing.default_currency.clone(),
        };
        cfg.billing.prices.insert(
            tier,
            Price {
                included_units: pr.included_units,
                unit_price_nanos: nanos,
                currency: cur,
            },
        );
    }
    let a = alerts.cloned().unwrap_or_default();
    let d = DeliveryPolicy::default();
    let mut ac = AlertConfig {
        usage_percent: a.usage_percent.unwrap_or(80),
        included_percent: a.included_percent.unwrap_or(80),
        repeated_violations: match &a.repeated_violations {
            Some(r) if r.count == 0 || r.window_ms == 0 => {
                return Err(bad(
                    "alerts.repeated_violations",
                    "count and window_ms must be at least 1",
                ));
            }
            Some(r) => Some((r.count, r.window_ms)),
            None => AlertConfig::default().repeated_violations,
        },
        backlog_bound: a.backlog_bound.or(AlertConfig::default().backlog_bound),
        endpoints: Vec::new(),
        owner_secret: a.owner_secret.clone(),
        delivery: DeliveryPolicy {
            max_attempts: a.max_attempts.unwrap_or(d.max_attempts),
            initial_backoff: a
                .initial_backoff_ms
                .map(Duration::from_millis)
                .unwrap_or(d.initial_backoff),
            max_backoff: a
                .max_backoff_ms
                .map(Duration::from_millis)
                .unwrap_or(d.max_backoff),
            timeout: a.timeout_ms.map(Duration::from_millis).unwrap_or(d.timeout),
        },
    };
    for (f, v) in [
        ("alerts.usage_percent", ac.usage_percent),
        ("alerts.included_percent", ac.included_percent),
    ] {
        if v > 100 {
            return Err(bad(f, "must be between 0 (off) and 100"));
        }
    }
    if !(1..=20).contains(&ac.delivery.max_attempts) {
        return Err(bad("alerts.max_attempts", "must be between 1 and 20"));
    }
    if ac.delivery.timeout.is_zero() || ac.delivery.timeout > Duration::from_secs(60) {
        return Err(bad("alerts.timeout_ms", "must be between 1 and 60000"));
    }
    if ac.delivery.initial_backoff.is_zero()
        || ac.delivery.initial_backoff > Duration::from_secs(600)
    {
        return Err(bad(
            "alerts.initial_backoff_ms",
            "must be between 1 and 600000",
        ));
    }
    if ac.delivery.max_backoff < ac.delivery.initial_backoff
        || ac.delivery.max_backoff > Duration::from_secs(3_600)
    {
        return Err(bad(
            "alerts.max_backoff_ms",
            "must be between initial_backoff_ms and 3600000",
        ));
    }
    for (i, w) in a.webhooks.unwrap_or_default().into_iter().enumerate() {
        let f = format!("alerts.webhooks[{i}]");
        if w.name.is_empty() || w.name.len() > 64 || w.name.starts_with("key:") {
            return Err(bad(
                &format!("{f}.name"),
                "must be 1 to 64 characters and not start with 'key:'",
            ));
        }
        if ac.endpoints.iter().any(|e| e.name == w.name) {
            return Err(bad(
                &format!("{f}.name"),
                format!("'{}' is used twice", w.name),
            ));
        }
        url(&format!("{f}.url"), &w.url)?;
        ac.endpoints.push(WebhookEndpoint {
            name: w.name,
            url: w.url,
            format: w.format.unwrap_or(WebhookFormat::Generic),
            secret: w.secret,
        });
    }
    cfg.alerts = ac;
    if let Some(rules) = rules {
        for (i, r) in rules.iter().enumerate() {
            r.validate()
                .map_err(|(field, m)| bad(&format!("abuse_rules[{i}].{field}"), m))?;
        }
        cfg.abuse = rules.clone();
    }
    Ok(cfg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(
            parse_duration("f", "7d").unwrap(),
            Duration::from_secs(7 * 86_400)
        );
        assert_eq!(parse_duration("f", "90s").unwrap(), Duration::from_secs(90));
        for bad in ["", "7", "7w", "10s", "d"] {
            assert!(parse_duration("f", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn bad_sections_name_their_field() {
        let b = BillingRaw {
            period: Some("weekly".into()),
            ..Default::default()
        };
        assert_eq!(
            pipelines("n", None, Some(&b), None, None, None)
                .unwrap_err()
                .field,
            "billing.period"
        );
        let mut prices = BTreeMap::new();
        prices.insert(
            "pro".to_string(),
            PriceRaw {
                included_units: 1,
                unit_price: "1.2.3".into(),
                currency: None,
            },
        );
        let b = BillingRaw {
            prices: Some(prices),
            ..Default::default()
        };
        assert_eq!(
            pipelines("n", None, Some(&b), None, None, None)
                .unwrap_err()
                .field,
            "billing.prices.pro.unit_price"
        );
        let a = AlertsRaw {
            webhooks: Some(vec![WebhookRaw {
                name: "x".into(),
                url: "ftp://x".into(),
                ..Default::default()
            }]),
            ..Default::default()
        };
        assert_eq!(
            pipelines("n", None, None, Some(&a), None, None)
                .unwrap_err()
                .field,
            "alerts.webhooks[0].url"
        );
    }
}
