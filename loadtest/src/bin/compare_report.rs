//! `loadtest-compare-report`: turns the JSON results of a `loadtest/compare`
//! run into BENCHMARKS.md — a headline, one table per scenario (rps and
//! p50/p99/p99.9 per system, ratios against the axum ceiling and Gubernator),
//! and the exact commands. ringlimit appears once per storage variant:
//! `ringlimit` (embedded store) and `ringlimit-redis-cql` (Redis + CQL).
//!
//! ```text
//! loadtest-compare-report --results DIR --header FILE --commands FILE --out FILE
//!     [--unavailable SYSTEM=REASON]... [--criterion ESTIMATES.json]
//! ```
//!
//! Result files are named `<scenario>-<label>-<kind>.json`, kind being
//! `closed` (the peak), `open-half` (open loop at half of the system's own
//! peak) or `open-same` (open loop at the embedded ringlimit's half-peak
//! rate); the system is the result's `label`.

use serde_json::Value;
use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::PathBuf;

const SYSTEMS: [&str; 4] = ["ringlimit", "ringlimit-redis-cql", "ceiling", "gubernator"];
/// ringlimit's storage variants; the first is the reference whose half-peak
/// rate the other systems are also run at (`open-same`).
const RINGLIMITS: [&str; 2] = ["ringlimit", "ringlimit-redis-cql"];
const REFERENCE: &str = RINGLIMITS[0];
const KINDS: [&str; 3] = ["closed", "open-half", "open-same"];
const SCENARIO_ORDER: [&str; 6] = ["normal", "hot-key", "batch", "churn", "spike", "sustained"];

#[derive(Debug, Default)]
struct Opts {
    results: Option<PathBuf>,
    header: Option<PathBuf>,
    commands: Option<PathBuf>,
    out: Option<PathBuf>,
    criterion: Option<PathBuf>,
    unavailable: BTreeMap<String, String>,
}

fn parse() -> Result<Opts, String> {
    let mut o = Opts::default();
    let mut a = std::env::args().skip(1);
    while let Some(k) = a.next() {
        let mut v = || a.next().ok_or_else(|| format!("{k} needs a value"));
        match k.as_str() {
            "--results" => o.results = Some(v()?.into()),
            "--header" => o.header = Some(v()?.into()),
            "--commands" => o.commands = Some(v()?.into()),
            "--out" => o.out = Some(v()?.into()),
            "--criterion" => o.criterion = Some(v()?.into()),
            "--unavailable" => {
                let s = v()?;
                let (name, why) = s.split_once('=').ok_or("--unavailable SYSTEM=REASON")?;
                o.unavailable.insert(name.to_string(), why.to_string());
            }
            _ => return Err(format!("unknown argument {k}")),
        }
    }
    Ok(o)
}

fn f(v: &Value, path: &[&str]) -> f64 {
    let mut x = v;
    for p in path {
        x = &x[*p];
    }
    x.as_f64().unwrap_or(0.0)
}

fn s<'a>(v: &'a Value, k: &str) -> &'a str {
    v[k].as_str().unwrap_or("")
}

fn lat(us: f64) -> String {
    if us <= 0.0 {
        "—".into()
    } else if us < 1_000.0 {
        format!("{us:.0} µs")
    } else if us < 1_000_000.0 {
        format!("{:.2} ms", us / 1_000.0)
    } else {
        format!("{:.2} s", us / 1_000_000.0)
    }
}

fn num(v: f64) -> String {
    let n = v.round() as u64;
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn ratio(a: f64, b: f64) -> String {
    if a > 0.0 && b > 0.0 {
        format!("{:.2}×", a / b)
    } else {
        "—".into()
    }
}

/// (scenario, system, kind) → result.
type Results = BTreeMap<(String, String, String), Value>;

fn load(dir: &PathBuf) -> Result<Results, String> {
    let mut r = Results::new();
    let entries = std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut paths: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    paths.sort();
    for p in paths {
        let stem = p
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or_default()
            .to_string();
        let Some(kind) = KINDS.iter().find(|k| stem.ends_with(&format!("-{k}"))) else {
            continue;
        };
        let text = std::fs::read_to_string(&p).map_err(|e| format!("{}: {e}", p.display()))?;
        let v: Value = serde_json::from_str(&text).map_err(|e| format!("{}: {e}", p.display()))?;
        r.insert(
            (
                s(&v, "scenario").to_string(),
                s(&v, "label").to_string(),
                kind.to_string(),
            ),
            v,
        );
    }
    Ok(r)
}

fn scenario_blurb(v: &Value) -> String {
    let k = &v["keys"];
    let per = v["checks_per_request"].as_u64().unwrap_or(1);
    format!(
        "{} key{}, {} {} per {} ms{}",
        k["count"].as_u64().unwrap_or(0),
        if k["count"].as_u64() == Some(1) {
            ""
        } else {
            "s"
        },
        k["algorithm"].as_str().unwrap_or("?"),
        num(k["limit"].as_f64().unwrap_or(0.0)),
        k["window_ms"].as_u64().unwrap_or(0),
        if per > 1 {
            format!(", {per} checks per request")
        } else {
            String::new()
        }
    )
}

fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("loadtest-compare-report: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), String> {
    let o = parse()?;
    let dir = o.results.clone().ok_or("--results DIR is required")?;
    let out = o.out.clone().ok_or("--out FILE is required")?;
    let res = load(&dir)?;
    let md = render(&o, &res)?;
    std::fs::write(&out, md).map_err(|e| format!("{}: {e}", out.display()))?;
    Ok(())
}

fn render(o: &Opts, res: &Results) -> Result<String, String> {
    let mut scenarios: Vec<String> = res.keys().map(|(sc, _, _)| sc.clone()).collect();
    scenarios.sort_by_key(|sc| SCENARIO_ORDER.iter().position(|x| x == sc).unwrap_or(99));
    scenarios.dedup();
    let get = |sc: &str, sys: &str, kind: &str| {
        res.get(&(sc.to_string(), sys.to_string(), kind.to_string()))
    };
    let peak = |sc: &str, sys: &str| {
        get(sc, sys, "closed")
            .map(|v| f(v, &["checks_per_s"]))
            .unwrap_or(0.0)
    };
    let peak_rps = |sc: &str, sys: &str| {
        get(sc, sys, "closed")
            .map(|v| f(v, &["rps"]))
            .unwrap_or(0.0)
    };
    let p99 = |v: &Value| lat(f(v, &["latency_us", "p99_us"]));
    let rate = |v: &Value| num(v["rate"].as_f64().unwrap_or(0.0));

    let mut md = String::new();
    if let Some(h) = &o.header {
        md.push_str(&std::fs::read_to_string(h).map_err(|e| format!("{}: {e}", h.display()))?);
        md.push('\n');
    }

    // Headline.
    let _ = writeln!(md, "## Headline\n");
    for sc in &scenarios {
        let (ce, gu) = (peak(sc, "ceiling"), peak(sc, "gubernator"));
        let batch = SYSTEMS
            .iter()
            .filter_map(|sys| get(sc, sys, "closed"))
            .any(|v| v["checks_per_request"].as_u64().unwrap_or(1) > 1);
        let unit = if batch { "checks/s" } else { "req/s" };
        // The baselines' own figures are given once, with the first variant.
        let mut parts = Vec::new();
        let mut first = true;
        for sys in RINGLIMITS {
            if get(sc, sys, "closed").is_none() {
                if let Some(why) = o.unavailable.get(sys) {
                    parts.push(format!("{sys} not available ({why})"));
                }
                continue;
            }
            let rl = peak(sc, sys);
            let mut part = format!("{sys} {} {unit}", num(rl));
            if ce > 0.0 {
                let _ = write!(
                    part,
                    " = **{:.0}%** of the axum ceiling{}",
                    100.0 * rl / ce,
                    if first {
                        format!(" ({})", num(ce))
                    } else {
                        String::new()
                    }
                );
            }
            if gu > 0.0 {
                let _ = write!(
                    part,
                    " and **{}** Gubernator{}",
                    ratio(rl, gu),
                    if first {
                        format!(" ({})", num(gu))
                    } else {
                        String::new()
                    }
                );
            }
            parts.push(part);
            first = false;
        }
        if parts.is_empty() {
            parts.push("no ringlimit result".into());
        }
        let mut line = format!("- **{sc}** — peak: {}", parts.join("; "));
        if gu <= 0.0
            && let Some(why) = o.unavailable.get("gubernator")
        {
            let _ = write!(line, "; Gubernator not available ({why})");
        }
        let halves: Vec<String> = SYSTEMS
            .iter()
            .filter_map(|sys| {
                get(sc, sys, "open-half").map(|v| format!("{sys} **{}** at {}/s", p99(v), rate(v)))
            })
            .collect();
        if !halves.is_empty() {
            let _ = write!(
                line,
                ". p99 at half of its own peak (open loop): {}",
                halves.join(", ")
            );
        }
        if let Some(rl_half) = get(sc, REFERENCE, "open-half") {
            let same: Vec<String> = SYSTEMS
                .iter()
                .filter(|sys| **sys != REFERENCE && get(sc, sys, "closed").is_some())
                .map(|sys| match get(sc, sys, "open-same") {
                    Some(v) => format!("{sys} {}", p99(v)),
                    None => format!("{sys} — above its peak"),
                })
                .collect();
            if !same.is_empty() {
                let _ = write!(
                    line,
                    ". At {REFERENCE}'s half-peak load ({}/s): {REFERENCE} {}, {}",
                    rate(rl_half),
                    p99(rl_half),
                    same.join(", ")
                );
            }
        }
        let _ = writeln!(md, "{line}.");
    }
    if let Some(c) = &o.criterion {
        match std::fs::read_to_string(c)
            .ok()
            .and_then(|t| serde_json::from_str::<Value>(&t).ok())
        {
            Some(v) => {
                let med = f(&v, &["median", "point_estimate"]);
                let mean = f(&v, &["mean", "point_estimate"]);
                let _ = writeln!(
                    md,
                    "- **in-process** — one check through the KeyLimiter actor (criterion, `actor/key_limiter_check`, one caller at a time): median **{:.2} µs**, mean {:.2} µs (about {} checks/s).",
                    med / 1_000.0,
                    mean / 1_000.0,
                    num(if med > 0.0 { 1e9 / med } else { 0.0 })
                );
            }
            None => {
                let _ = writeln!(
                    md,
                    "- **in-process** — criterion figure not available (its estimates file is unreadable)."
                );
            }
        }
    } else if let Some(why) = o.unavailable.get("criterion") {
        let _ = writeln!(
            md,
            "- **in-process** — criterion figure not available ({why})."
        );
    }
    md.push('\n');

    // Tables.
    for sc in &scenarios {
        let any = SYSTEMS
            .iter()
            .find_map(|sys| KINDS.iter().find_map(|k| get(sc, sys, k)));
        let _ = writeln!(md, "## {sc}\n");
        if let Some(v) = any {
            let _ = writeln!(md, "{}.\n", scenario_blurb(v));
        }
        let _ = writeln!(
            md,
            "| system | load | req/s | checks/s | p50 | p99 | p99.9 | max | errors | client CPU | checks/s vs ceiling | checks/s vs Gubernator |"
        );
        let _ = writeln!(
            md,
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
        );
        let (ce, gu) = (peak(sc, "ceiling"), peak(sc, "gubernator"));
        let mut notes = Vec::new();
        for kind in KINDS {
            for sys in SYSTEMS {
                let Some(v) = get(sc, sys, kind) else {
                    if let (true, Some(why)) = (kind == "closed", o.unavailable.get(sys)) {
                        let _ =
                            writeln!(md, "| {sys} | — | not available: {why} | | | | | | | | | |");
                    }
                    let same_load_skipped =
                        kind == "open-same" && sys != REFERENCE && get(sc, sys, "closed").is_some();
                    if let (true, Some(rl_half)) =
                        (same_load_skipped, get(sc, REFERENCE, "open-half"))
                    {
                        let _ = writeln!(
                            md,
                            "| {sys} | open loop {}/s ({REFERENCE}'s half peak) | not run: above 90% of its own peak ({} req/s), it would only measure a growing queue | | | | | | | | | |",
                            rate(rl_half),
                            num(peak_rps(sc, sys))
                        );
                    }
                    continue;
                };
                let load = match kind {
                    "closed" => format!(
                        "closed loop, {} conns (peak)",
                        v["connections"].as_u64().unwrap_or(0)
                    ),
                    "open-half" => format!("open loop {}/s (half its peak)", rate(v)),
                    _ => format!("open loop {}/s ({REFERENCE}'s half peak)", rate(v)),
                };
                let cps = f(v, &["checks_per_s"]);
                let errors = f(v, &["error_total"]);
                let err_s = if errors > 0.0 {
                    let kinds: Vec<String> = v["errors"]
                        .as_object()
                        .map(|m| {
                            m.iter()
                                .map(|(k, n)| format!("{k} {}", n.as_u64().unwrap_or(0)))
                                .collect()
                        })
                        .unwrap_or_default();
                    format!("{} ({})", num(errors), kinds.join(", "))
                } else {
                    "0".into()
                };
                let cpu = v["client_cpu_pct"]
                    .as_f64()
                    .map(|c| format!("{c:.0}%"))
                    .unwrap_or_else(|| "—".into());
                let (vs_ce, vs_gu) = if kind == "closed" {
                    (ratio(cps, ce), ratio(cps, gu))
                } else {
                    ("—".into(), "—".into())
                };
                let _ = writeln!(
                    md,
                    "| {sys} | {load} | {} | {} | {} | {} | {} | {} | {err_s} | {cpu} | {vs_ce} | {vs_gu} |",
                    num(f(v, &["rps"])),
                    num(cps),
                    lat(f(v, &["latency_us", "p50_us"])),
                    lat(f(v, &["latency_us", "p99_us"])),
                    lat(f(v, &["latency_us", "p999_us"])),
                    lat(f(v, &["latency_us", "max_us"])),
                );
                if v["over_admission"]["report"]["over_admitted"].as_bool() == Some(true) {
                    notes.push(format!(
                        "- {sys} ({kind}): **over-admission observed** (see its JSON result)."
                    ));
                }
                if kind == "closed" && v["client_cpu_pct"].as_f64().unwrap_or(0.0) >= 90.0 {
                    notes.push(format!(
                        "- {sys} (closed loop): the load generator used {:.0}% of its CPU, so this peak is a lower bound set by the client, and ratios against it flatter the others.",
                        f(v, &["client_cpu_pct"])
                    ));
                }
                if v["exit_code"].as_u64().unwrap_or(0) == 1 {
                    notes.push(format!("- {sys} ({kind}): no check got a decision."));
                }
            }
        }
        md.push('\n');
        if !notes.is_empty() {
            for n in notes {
                let _ = writeln!(md, "{n}");
            }
            md.push('\n');
        }
    }

    if let Some(c) = &o.commands {
        let text = std::fs::read_to_string(c).map_err(|e| format!("{}: {e}", c.display()))?;
        let _ = writeln!(md, "## The exact commands\n\n```sh\n{}```", text);
    }
    Ok(md)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn result(sc: &str, label: &str, kind: &str, cps: f64, per_request: u64) -> Value {
        json!({
            "scenario": sc,
            "label": label,
            "rps": cps / per_request as f64,
            "checks_per_s": cps,
            "checks_per_request": per_request,
            "connections": if kind == "closed" { 32 } else { 64 },
            "rate": if kind == "closed" { Value::Null } else { json!(cps / per_request as f64) },
            "latency_us": { "p50_us": 300.0, "p99_us": 2_000.0, "p999_us": 5_000.0, "max_us": 9_000.0 },
            "error_total": 0,
            "client_cpu_pct": 50.0,
            "keys": { "count": 10_000, "algorithm": "token_bucket", "limit": 100_000_000.0, "window_ms": 60_000 },
        })
    }

    fn add(r: &mut Results, sc: &str, label: &str, kind: &str, cps: f64, per_request: u64) {
        r.insert(
            (sc.into(), label.into(), kind.into()),
            result(sc, label, kind, cps, per_request),
        );
    }

    fn rows<'a>(md: &'a str, prefix: &str) -> Vec<&'a str> {
        md.lines().filter(|l| l.starts_with(prefix)).collect()
    }

    #[test]
    fn both_ringlimit_variants_get_rows_ratios_and_a_headline() {
        let mut r = Results::new();
        add(&mut r, "normal", "ringlimit", "closed", 80_000.0, 1);
        add(
            &mut r,
            "normal",
            "ringlimit-redis-cql",
            "closed",
            8_000.0,
            1,
        );
        add(&mut r, "normal", "ceiling", "closed", 100_000.0, 1);
        add(&mut r, "normal", "gubernator", "closed", 10_000.0, 1);
        add(&mut r, "normal", "ringlimit", "open-half", 40_000.0, 1);
        add(
            &mut r,
            "normal",
            "ringlimit-redis-cql",
            "open-half",
            4_000.0,
            1,
        );
        add(&mut r, "normal", "ceiling", "open-same", 40_000.0, 1);
        let md = render(&Opts::default(), &r).expect("render");

        let headline = rows(&md, "- **normal**");
        assert_eq!(headline.len(), 1, "{md}");
        let h = headline[0];
        assert!(h.contains("ringlimit 80,000 req/s = **80%** of the axum ceiling (100,000) and **8.00×** Gubernator (10,000)"), "{h}");
        assert!(h.contains("ringlimit-redis-cql 8,000 req/s = **8%** of the axum ceiling and **0.80×** Gubernator"), "{h}");
        assert!(
            h.contains("ringlimit-redis-cql **2.00 ms** at 4,000/s"),
            "{h}"
        );
        assert!(h.contains("ringlimit-redis-cql — above its peak"), "{h}");

        let rl = rows(&md, "| ringlimit | closed loop");
        assert_eq!(rl.len(), 1);
        assert!(rl[0].ends_with("| 0.80× | 8.00× |"), "{}", rl[0]);
        let rc = rows(&md, "| ringlimit-redis-cql | closed loop");
        assert_eq!(rc.len(), 1);
        assert!(rc[0].ends_with("| 0.08× | 0.80× |"), "{}", rc[0]);
        assert_eq!(
            rows(
                &md,
                "| ringlimit-redis-cql | open loop 4,000/s (half its peak)"
            )
            .len(),
            1
        );
        // The embedded variant's half peak is above 90% of redis-cql's peak: not run, and said so.
        let skipped = rows(
            &md,
            "| ringlimit-redis-cql | open loop 40,000/s (ringlimit's half peak) | not run",
        );
        assert_eq!(skipped.len(), 1, "{md}");
    }

    #[test]
    fn an_unavailable_variant_is_named_with_its_reason() {
        let mut r = Results::new();
        add(&mut r, "batch", "ringlimit", "closed", 500_000.0, 100);
        add(&mut r, "batch", "ceiling", "closed", 1_000_000.0, 100);
        let mut o = Opts::default();
        o.unavailable.insert(
            "ringlimit-redis-cql".into(),
            "scripts/cassandra.sh start failed".into(),
        );
        o.unavailable
            .insert("gubernator".into(), "skipped (--no-gubernator)".into());
        let md = render(&o, &r).expect("render");
        let h = rows(&md, "- **batch**");
        assert_eq!(h.len(), 1, "{md}");
        assert!(
            h[0].contains("ringlimit 500,000 checks/s = **50%** of the axum ceiling (1,000,000)"),
            "{}",
            h[0]
        );
        assert!(
            h[0].contains("ringlimit-redis-cql not available (scripts/cassandra.sh start failed)"),
            "{}",
            h[0]
        );
        assert!(
            h[0].contains("Gubernator not available (skipped (--no-gubernator))"),
            "{}",
            h[0]
        );
        assert_eq!(
            rows(
                &md,
                "| ringlimit-redis-cql | — | not available: scripts/cassandra.sh start failed |"
            )
            .len(),
            1,
            "{md}"
        );
    }
}
