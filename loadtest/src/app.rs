//! One run, from flags to exit code.

use crate::checker::{self, CheckSpec, ExactAlgorithm};
use crate::cli::{Args, Scenario};
use crate::http::Target;
use crate::keys::{self, Admin, RunKey};
use crate::protocol::{self, System, Wire};
use crate::report::{KeysInfo, OverAdmission, RunReport};
use crate::runner::{self, Mode, Picker, RunConfig};
use crate::schedule::Schedule;
use crate::stats::LatencySummary;
use crate::zipf::Zipf;
use crate::{EXIT_FAILURE, EXIT_OVER_ADMISSION};
use bytes::Bytes;
use ringlimit_protocol::{AlgorithmKind, LimitSpec};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The tokio worker threads a run uses.
pub fn threads(args: &Args) -> usize {
    args.threads
        .unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        })
        .max(1)
}

/// Parses flags, runs, prints, writes files; returns the exit code.
pub fn main_with(args: Args) -> u8 {
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads(&args))
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("loadtest: cannot start the runtime: {e}");
            return EXIT_FAILURE;
        }
    };
    match rt.block_on(run(args)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("loadtest: {e}");
            EXIT_FAILURE
        }
    }
}

fn token(args: &Args) -> Option<String> {
    args.token
        .clone()
        .or_else(|| std::env::var("LOADTEST_TOKEN").ok())
        .or_else(|| std::env::var("RINGLIMIT_ADMIN_TOKEN").ok())
        .filter(|t| !t.is_empty())
}

/// One run. Errors are "could not run" (exit 1).
pub async fn run(args: Args) -> Result<u8, String> {
    let algorithm = AlgorithmKind::parse(&args.algorithm)
        .ok_or_else(|| format!("--algorithm '{}': expected sliding_window, sliding_log, token_bucket, gcra or fixed_window", args.algorithm))?;
    let limit = LimitSpec {
        name: "loadtest".into(),
        algorithm,
        limit: args.limit,
        window_ms: args.window_ms,
        burst: args.burst,
    };
    limit
        .validate()
        .map_err(|e| format!("the keys' limit: {e}"))?;
    let scenario = args.scenario;
    let duration = args.duration.unwrap_or_else(|| scenario.default_duration());
    if duration.is_zero() {
        return Err("--duration must be positive".into());
    }
    let n_keys = args.keys.unwrap_or_else(|| scenario.default_keys()).max(1);
    if n_keys > u32::MAX as usize {
        return Err("--keys is too large".into());
    }
    let batch = (scenario == Scenario::Batch).then_some(args.batch_size.max(1));
    let mode = match (args.rate, scenario) {
        (None, Scenario::Spike) => {
            return Err("the spike scenario is open loop: give --rate (the base rate)".into());
        }
        (None, _) => Mode::Closed,
        (Some(rate), Scenario::Spike) => {
            let mut s = Schedule::with_centred_spike(
                rate,
                duration,
                Duration::from_secs_f64(args.spike_secs.max(0.0)),
                args.spike_factor,
            );
            if let Some(sp) = s.spike.as_mut() {
                sp.start += args.warmup;
            }
            Mode::Open(s)
        }
        (Some(rate), _) => Mode::Open(Schedule::constant(rate)),
    };
    let connections = args.connections.unwrap_or(match mode {
        Mode::Open(_) => 64,
        Mode::Closed => 32,
    });

    let mut targets = Vec::new();
    for t in &args.targets {
        let mut t = Target::parse(t)?;
        t.resolve().await?;
        targets.push(t);
    }
    let progress = !args.quiet;
    let run_tag = format!(
        "{:x}-{:x}",
        args.seed,
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0)
    );

    // Keys.
    let mut admin = None;
    let keys: Vec<RunKey> = match (args.system, &args.admin) {
        (System::Ringlimit, Some(url)) => {
            let mut t = Target::parse(url)?;
            t.resolve().await?;
            let token = token(&args)
                .ok_or("--admin needs --token (or LOADTEST_TOKEN / RINGLIMIT_ADMIN_TOKEN)")?;
            let a = Admin {
                target: t,
                token,
                timeout: args.timeout.max(Duration::from_secs(10)),
                concurrency: args.create_concurrency,
            };
            let started = std::time::Instant::now();
            if progress {
                eprintln!(
                    "loadtest: creating {n_keys} keys ({} {} per {} ms) through {url}",
                    limit.algorithm.as_str(),
                    limit.limit,
                    limit.window_ms
                );
            }
            let k = keys::create_keys(&a, n_keys, &args.tier, &limit, &run_tag, progress).await?;
            if progress {
                eprintln!(
                    "loadtest: {n_keys} keys created in {:.1}s",
                    started.elapsed().as_secs_f64()
                );
            }
            admin = Some(a);
            k
        }
        (System::Ringlimit, None) => {
            if progress {
                eprintln!(
                    "loadtest: no --admin: using made-up keys (a real node answers 401 to them)"
                );
            }
            (0..n_keys)
                .map(|i| RunKey {
                    key_id: String::new(),
                    secret: format!("rl_loadtest{run_tag}x{i}_made_up"),
                })
                .collect()
        }
        (System::Gubernator, _) => (0..n_keys)
            .map(|i| RunKey {
                key_id: String::new(),
                secret: format!("lt-{run_tag}-{i}"),
            })
            .collect(),
    };
    let created = admin.is_some();

    // Items.
    let (guber_alg, guber_same) = protocol::gubernator_algorithm(algorithm);
    if args.system == System::Gubernator && !guber_same && progress {
        eprintln!(
            "loadtest: Gubernator has no {}: its keys use a token bucket of the same limit and window",
            algorithm.as_str()
        );
    }
    let items: Vec<Bytes> = keys
        .iter()
        .map(|k| match args.system {
            System::Ringlimit => protocol::ringlimit_item(&k.secret, u64::from(args.cost)),
            System::Gubernator => protocol::gubernator_item(
                &k.secret,
                u64::from(args.cost),
                args.limit,
                args.window_ms,
                guber_alg,
                args.burst,
            ),
        })
        .collect();

    // What the checker can check.
    let exact = match algorithm {
        AlgorithmKind::SlidingLog => Some(ExactAlgorithm::SlidingLog),
        AlgorithmKind::FixedWindow => Some(ExactAlgorithm::FixedWindow),
        _ => None,
    };
    let check_note = if args.no_check {
        Some("--no-check".to_string())
    } else if args.system == System::Gubernator {
        Some("Gubernator runs token or leaky buckets, which have no exact window count".to_string())
    } else if exact.is_none() {
        Some(format!(
            "{} is not exact; only sliding_log and fixed_window are checked",
            algorithm.as_str()
        ))
    } else {
        None
    };
    let record = check_note.is_none().then_some(args.check_max_admissions);

    let picker = match scenario {
        Scenario::HotKey => Picker::Hot,
        Scenario::Churn => Picker::Cycle,
        _ => Picker::Zipf(Arc::new(Zipf::new(n_keys, args.zipf_s))),
    };
    let cfg = RunConfig {
        wire: Wire::new(args.system),
        targets: targets.clone(),
        mode: mode.clone(),
        connections,
        warmup: args.warmup,
        duration,
        timeout: args.timeout,
        batch,
        picker,
        seed: args.seed,
        items: Arc::new(items),
        cost: args.cost,
        record_admissions: record,
        progress,
    };
    if progress {
        eprintln!(
            "loadtest: {} · {} · {} · {} connections · {:.0}s{}",
            args.system_label(),
            scenario.name(),
            match &mode {
                Mode::Open(s) => format!("open loop at {:.0}/s", s.rate),
                Mode::Closed => "closed loop".into(),
            },
            connections,
            duration.as_secs_f64(),
            if args.warmup.is_zero() {
                String::new()
            } else {
                format!(" after {:.0}s warm-up", args.warmup.as_secs_f64())
            }
        );
    }
    let out = runner::run(cfg).await;

    // Clean up even if the run failed.
    let mut deleted = false;
    if let (true, Some(a)) = (args.cleanup, &admin) {
        let ids: Vec<String> = keys.iter().map(|k| k.key_id.clone()).collect();
        let failed = keys::delete_keys(a, &ids).await;
        deleted = failed == 0;
        if failed > 0 {
            eprintln!(
                "loadtest: {failed} of {} keys could not be deleted",
                ids.len()
            );
        } else if progress {
            eprintln!("loadtest: {} keys deleted", ids.len());
        }
    }
    let mut out = out?;

    let over = match (&check_note, exact) {
        (None, Some(alg)) => {
            let spec = CheckSpec {
                algorithm: alg,
                limit: args.limit,
                window_ms: args.window_ms,
                anchor_epoch_us: out.anchor_epoch_us,
                tolerance_us: (args.clock_tolerance_ms.max(0.0) * 1000.0) as u64,
            };
            let r = checker::check(&spec, &mut out.admissions);
            OverAdmission {
                checked: true,
                note: "counts only allowed checks whose server decision certainly falls in a window (send/receive brackets)".into(),
                admissions_not_examined: out.admissions_dropped,
                max_allowed_latency_us: out.max_allowed_latency_us,
                report: Some(r),
            }
        }
        (note, _) => OverAdmission {
            checked: false,
            note: note.clone().unwrap_or_default(),
            admissions_not_examined: 0,
            max_allowed_latency_us: out.max_allowed_latency_us,
            report: None,
        },
    };

    let c = &out.totals.counts;
    let elapsed = out.elapsed.as_secs_f64().max(1e-9);
    let decisions = c.decisions();
    let exit_code = if over.over_admitted() {
        EXIT_OVER_ADMISSION
    } else if decisions == 0 {
        EXIT_FAILURE
    } else {
        0
    };
    let report = RunReport {
        format: 1,
        label: args
            .label
            .clone()
            .unwrap_or_else(|| args.system_label().to_string()),
        system: args.system_label().to_string(),
        scenario: scenario.name().to_string(),
        mode: match mode {
            Mode::Open(_) => "open".into(),
            Mode::Closed => "closed".into(),
        },
        rate: args.rate,
        connections,
        threads: threads(&args),
        seed: args.seed,
        targets: args.targets.clone(),
        keys: KeysInfo {
            count: n_keys,
            created,
            deleted,
            algorithm: algorithm.as_str().to_string(),
            limit: args.limit,
            window_ms: args.window_ms,
            burst: args.burst,
            cost: args.cost,
        },
        checks_per_request: batch.unwrap_or(1),
        warmup_s: args.warmup.as_secs_f64(),
        duration_s: duration.as_secs_f64(),
        elapsed_s: (elapsed * 1000.0).round() / 1000.0,
        requests: c.requests,
        responses: c.responses,
        rps: (c.responses as f64 / elapsed).round(),
        checks_per_s: (decisions as f64 / elapsed).round(),
        allowed: c.allowed,
        denied: c.denied,
        error_total: c.error_total(),
        errors: c.errors.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
        status_counts: c
            .by_status
            .iter()
            .map(|(k, v)| (k.to_string(), *v))
            .collect(),
        latency_us: LatencySummary::of(&out.totals.latency),
        service_time_us: LatencySummary::of(&out.totals.service),
        timeline: out.timeline,
        client_cpu_pct: out.client_cpu.map(|c| {
            // Over the whole run: warm-up, measurement and the tail.
            let wall = (args.warmup + out.elapsed).as_secs_f64().max(1e-9);
            (c.as_secs_f64() / wall * 1000.0).round() / 10.0
        }),
        over_admission: over,
        exit_code,
        command: redacted_command(),
    };
    print_summary(&report);
    if out.unsent > 0 {
        eprintln!(
            "loadtest: the targets did not keep up: {} due requests were never sent (counted as errors 'unsent')",
            out.unsent
        );
    }
    if decisions == 0 {
        eprintln!("loadtest: no check got a decision (allowed or denied): see the errors above");
    }
    if let Some(path) = &args.out {
        let json = serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?;
        std::fs::write(path, json + "\n")
            .map_err(|e| format!("writing {}: {e}", path.display()))?;
    }
    let svg_path = args
        .svg
        .clone()
        .or_else(|| args.out.as_ref().map(|p| p.with_extension("svg")));
    if let Some(path) = svg_path {
        std::fs::write(&path, report.svg())
            .map_err(|e| format!("writing {}: {e}", path.display()))?;
    }
    Ok(exit_code)
}

/// The command line, with the admin token replaced by `***`.
fn redacted_command() -> Vec<String> {
    let mut out = Vec::new();
    let mut hide_next = false;
    for a in std::env::args() {
        if hide_next {
            out.push("***".to_string());
            hide_next = false;
        } else if a == "--token" {
            out.push(a);
            hide_next = true;
        } else if a.starts_with("--token=") {
            out.push("--token=***".to_string());
        } else {
            out.push(a);
        }
    }
    out
}

#[allow(clippy::print_stdout)]
fn print_summary(r: &RunReport) {
    print!("{}", r.text());
}

impl Args {
    fn system_label(&self) -> &'static str {
        match self.system {
            System::Ringlimit => "ringlimit",
            System::Gubernator => "gubernator",
        }
    }
}
