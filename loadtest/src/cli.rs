//! Flags and scenarios.

use crate::protocol::System;
use clap::{Parser, ValueEnum};
use std::path::PathBuf;
use std::time::Duration;

/// A named load shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scenario {
    /// 10k keys with Zipf popularity (s = --zipf-s), single validates.
    Normal,
    /// Like normal, open loop, with --spike-factor (10x) the rate for --spike-secs (10 s) in the middle.
    Spike,
    /// Like normal, for a long time (default 600 s; set --duration).
    Sustained,
    /// Every check on one key.
    HotKey,
    /// A stream over many keys in order (each comes back only after all the others), to drive
    /// activation, passivation and the actor cap; run the node with a small RINGLIMIT_MAX_ACTIVE_KEYS.
    Churn,
    /// The batch API, --batch-size (100) checks per request, Zipf keys.
    Batch,
}

impl Scenario {
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Normal => "normal",
            Scenario::Spike => "spike",
            Scenario::Sustained => "sustained",
            Scenario::HotKey => "hot-key",
            Scenario::Churn => "churn",
            Scenario::Batch => "batch",
        }
    }

    pub fn default_keys(self) -> usize {
        match self {
            Scenario::HotKey => 1,
            Scenario::Churn => 20_000,
            _ => 10_000,
        }
    }

    pub fn default_duration(self) -> Duration {
        match self {
            Scenario::Sustained => Duration::from_secs(600),
            Scenario::Spike | Scenario::Churn => Duration::from_secs(30),
            _ => Duration::from_secs(10),
        }
    }
}

/// ringlimit's load generator.
///
/// Exit codes: 0 done; 1 could not run, or no request got a decision;
/// 2 bad flags; 3 over-admission observed.
#[derive(Debug, Clone, Parser)]
#[command(name = "loadtest", version, about, long_about = None)]
pub struct Args {
    /// Data-plane URL of a node (http://host:port); repeat for several nodes, used round robin.
    #[arg(long = "target", value_name = "URL", required = true)]
    pub targets: Vec<String>,

    /// Admin-plane URL, to create (and with --cleanup delete) the run's keys.
    /// Without it, the harness makes key strings up (for the ceiling server).
    #[arg(long, value_name = "URL")]
    pub admin: Option<String>,

    /// Admin bearer token (default: $LOADTEST_TOKEN, then $RINGLIMIT_ADMIN_TOKEN).
    #[arg(long)]
    pub token: Option<String>,

    /// The API spoken by the targets.
    #[arg(long, value_enum, default_value = "ringlimit")]
    pub system: System,

    #[arg(long, value_enum, default_value = "normal")]
    pub scenario: Scenario,

    /// Open loop at this many requests per second ("5000" or "5000/s"). Without it: closed loop.
    #[arg(long, value_parser = parse_rate)]
    pub rate: Option<f64>,

    /// Connections (one worker each). Default: 32 closed loop, 64 open loop.
    #[arg(long)]
    pub connections: Option<usize>,

    /// Measured duration ("10s", "500ms", "2m"). Default: 10 s; spike and churn 30 s; sustained 600 s.
    #[arg(long, value_parser = parse_duration)]
    pub duration: Option<Duration>,

    /// Load sent before measuring (not recorded, still checked).
    #[arg(long, value_parser = parse_duration, default_value = "0s")]
    pub warmup: Duration,

    /// Seed of every random choice (key popularity).
    #[arg(long, default_value_t = 42)]
    pub seed: u64,

    /// Number of keys. Default: 10 000; hot-key 1; churn 20 000.
    #[arg(long)]
    pub keys: Option<usize>,

    /// Zipf exponent of key popularity.
    #[arg(long, default_value_t = 1.0)]
    pub zipf_s: f64,

    /// Checks per request in the batch scenario.
    #[arg(long, default_value_t = 100)]
    pub batch_size: usize,

    /// Algorithm of the keys' limit: sliding_window, sliding_log, token_bucket, gcra, fixed_window.
    #[arg(long, default_value = "fixed_window")]
    pub algorithm: String,

    /// Limit of the keys' limit, units per window.
    #[arg(long, default_value_t = 100_000)]
    pub limit: u64,

    /// Window of the keys' limit, ms.
    #[arg(long, default_value_t = 1_000)]
    pub window_ms: u64,

    /// Burst of the keys' limit (token_bucket, gcra).
    #[arg(long)]
    pub burst: Option<u64>,

    /// Units per check.
    #[arg(long, default_value_t = 1)]
    pub cost: u32,

    /// Tier of the created keys.
    #[arg(long, default_value = "free")]
    pub tier: String,

    /// Per-request timeout.
    #[arg(long, value_parser = parse_duration, default_value = "5s")]
    pub timeout: Duration,

    /// Tokio worker threads (default: the CPUs this process may run on).
    #[arg(long)]
    pub threads: Option<usize>,

    /// Write the JSON result here (and the SVG plot beside it, same name, .svg).
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,

    /// Write the latency-over-time SVG here (default: beside --out).
    #[arg(long, value_name = "FILE")]
    pub svg: Option<PathBuf>,

    /// Name of the system in reports (default: the system).
    #[arg(long)]
    pub label: Option<String>,

    /// Delete the run's keys at the end.
    #[arg(long)]
    pub cleanup: bool,

    /// No progress line.
    #[arg(long)]
    pub quiet: bool,

    /// Skip the over-admission check.
    #[arg(long)]
    pub no_check: bool,

    /// Widening of every send/receive bracket in the over-admission check, ms.
    #[arg(long, default_value_t = 1.0)]
    pub clock_tolerance_ms: f64,

    /// At most this many allowed checks are kept for the over-admission check.
    #[arg(long, default_value_t = 10_000_000)]
    pub check_max_admissions: usize,

    /// Rate multiplier of the spike scenario.
    #[arg(long, default_value_t = 10.0)]
    pub spike_factor: f64,

    /// Length of the spike, seconds (at most a third of the run).
    #[arg(long, default_value_t = 10.0)]
    pub spike_secs: f64,

    /// Keys created (and deleted) concurrently through the admin API.
    #[arg(long, default_value_t = 16)]
    pub create_concurrency: usize,
}

/// `"5000"`, `"5000/s"`, `"5k"`, `"5k/s"`.
pub fn parse_rate(s: &str) -> Result<f64, String> {
    let t = s.trim();
    let t = t.strip_suffix("/s").unwrap_or(t);
    let (num, mult) = match t.strip_suffix(['k', 'K']) {
        Some(n) => (n, 1_000.0),
        None => (t, 1.0),
    };
    let v: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("'{s}' is not a rate (e.g. 5000 or 5000/s)"))?;
    let v = v * mult;
    if !(v.is_finite() && v > 0.0) {
        return Err(format!("rate '{s}' must be positive"));
    }
    Ok(v)
}

/// `"10"` (seconds), `"10s"`, `"500ms"`, `"2m"`, `"1h"`, `"1.5s"`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let (num, unit) = match t.find(|c: char| c.is_ascii_alphabetic()) {
        Some(i) => (&t[..i], &t[i..]),
        None => (t, "s"),
    };
    let v: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("'{s}' is not a duration (e.g. 10s, 500ms, 2m)"))?;
    let secs = match unit {
        "ms" => v / 1_000.0,
        "s" => v,
        "m" => v * 60.0,
        "h" => v * 3_600.0,
        _ => return Err(format!("'{s}': unit must be ms, s, m or h")),
    };
    if !(secs.is_finite() && secs >= 0.0) {
        return Err(format!("duration '{s}' must not be negative"));
    }
    Ok(Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_rates_and_durations() {
        assert_eq!(parse_rate("5000"), Ok(5000.0));
        assert_eq!(parse_rate("5000/s"), Ok(5000.0));
        assert_eq!(parse_rate("2.5k/s"), Ok(2500.0));
        assert!(parse_rate("0").is_err());
        assert!(parse_rate("fast").is_err());
        assert_eq!(parse_duration("10"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert!(parse_duration("3 days").is_err());
    }

    #[test]
    fn flags_parse() {
        let a = Args::try_parse_from([
            "loadtest",
            "--target",
            "http://127.0.0.1:1",
            "--target",
            "http://127.0.0.1:2",
            "--scenario",
            "hot-key",
            "--rate",
            "1k",
            "--system",
            "gubernator",
        ])
        .expect("parse");
        assert_eq!(a.targets.len(), 2);
        assert_eq!(a.scenario, Scenario::HotKey);
        assert_eq!(a.rate, Some(1000.0));
        assert_eq!(a.system, System::Gubernator);
        assert!(Args::try_parse_from(["loadtest"]).is_err());
    }
}
