//! The run's reports: `report.json`, `report.md`, and `<scenario>.svg`
//! (throughput, p99 and units admitted per second, with the fault marked).

use crate::scenario::Report;
use anyhow::Result;
use serde::Serialize;
use std::fmt::Write as _;
use std::path::Path;

/// A whole run.
#[derive(Debug, Serialize)]
pub struct Run {
    pub command: String,
    pub started_at: String,
    pub reports: Vec<Report>,
    /// Scenarios that could not run, with why.
    pub errors: Vec<(String, String)>,
}

/// Writes report.json, report.md and one SVG per scenario into `dir`.
pub fn write(dir: &Path, run: &Run) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join("report.json"), serde_json::to_vec_pretty(run)?)?;
    std::fs::write(dir.join("report.md"), markdown(run))?;
    for r in &run.reports {
        std::fs::write(dir.join(format!("{}.svg", r.scenario.name())), svg(r))?;
    }
    Ok(())
}

fn ms(us: f64) -> String {
    format!("{:.1}", us / 1_000.0)
}

fn opt_s(v: Option<f64>) -> String {
    v.map_or_else(|| "never".into(), |s| format!("{s:.1}"))
}

/// The markdown summary: one table row per scenario, then the details.
pub fn markdown(run: &Run) -> String {
    let mut m = String::new();
    let _ = writeln!(m, "# ringlimit chaos report\n");
    let _ = writeln!(m, "`{}`, started {}.\n", run.command, run.started_at);
    let _ = writeln!(
        m,
        "| scenario | held | over-admitted (worst key·window) | failed requests | p99 before / during / after (ms) | ring converged (s) | errors clear (s) | usage vs admitted | billed |"
    );
    let _ = writeln!(m, "|---|---|---|---|---|---|---|---|---|");
    for r in &run.reports {
        let o = &r.over_admission;
        let failed: u64 = r.failures.values().sum();
        let _ = writeln!(
            m,
            "| {} | {} | {} units in {} windows (+{} = {:.0}% of {}) | {} | {} / {} / {} | {} | {} | {} / {} ({} fail-open, +{} unknown) | {} |",
            r.scenario.name(),
            if r.held { "yes" } else { "**no**" },
            o.units_over,
            o.windows_over,
            o.worst_units,
            o.worst_pct,
            r.options.limit,
            failed,
            ms(r.p99_before_us),
            ms(r.p99_during_us),
            ms(r.p99_after_us),
            opt_s(r.ring_converged_after_s),
            opt_s(r.errors_clear_after_s),
            r.usage_units,
            r.allowed_units,
            r.fail_open,
            r.unknown_outcomes,
            r.billed_units
                .map_or_else(|| "not billed".to_string(), |b| b.to_string()),
        );
    }
    for (s, e) in &run.errors {
        let _ = writeln!(m, "| {s} | **did not run** | {e} | | | | | | |");
    }
    for r in &run.reports {
        let _ = writeln!(m, "\n## {}\n", r.scenario.name());
        let _ = writeln!(m, "Guarantee: {}.\n", r.guarantee);
        if !r.why_not.is_empty() {
            let _ = writeln!(m, "**Did not hold:**\n");
            for w in &r.why_not {
                let _ = writeln!(m, "- {w}");
            }
            let _ = writeln!(m);
        }
        let _ = writeln!(
            m,
            "{} nodes, {} keys with a fixed window of {} per {} ms, {} connections; {} requests, {} units admitted, {} denied. Failures: {}.\n",
            r.options.nodes,
            r.options.keys,
            r.options.limit,
            r.options.window_ms,
            r.options.connections,
            r.requests,
            r.allowed_units,
            r.denied,
            if r.failures.is_empty() {
                "none".to_string()
            } else {
                r.failures
                    .iter()
                    .map(|(k, v)| format!("{k} {v}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        );
        for e in &r.events {
            let _ = writeln!(m, "- {:.2} s: {}", e.t_s, e.what);
        }
        for w in &r.admin_writes {
            let _ = writeln!(
                m,
                "- admin write during the fault: {} {}: {}",
                w.what, w.key_id, w.detail
            );
        }
        let _ = writeln!(m, "\n![{0}]({0}.svg)", r.scenario.name());
    }
    m
}

/// One panel of the timeline: a polyline of `ys` over seconds.
fn panel(svg: &mut String, top: f64, title: &str, ys: &[(f64, f64)], x_max: f64, r: &Report) {
    let (left, width, height) = (60.0, 640.0, 110.0);
    let y_max = ys.iter().map(|p| p.1).fold(0.0, f64::max).max(1.0) * 1.1;
    let x = |t: f64| left + width * (t / x_max.max(1e-9));
    let y = |v: f64| top + height - height * (v / y_max);
    let _ = writeln!(
        svg,
        r##"<rect x="{}" y="{top}" width="{}" height="{height}" fill="#f8f8f8" stroke="#ccc"/>"##,
        left, width
    );
    let (fx0, fx1) = (
        x(r.fault.from_s),
        x(r.fault.to_s.max(r.fault.from_s + 0.05)),
    );
    let _ = writeln!(
        svg,
        r##"<rect x="{fx0:.1}" y="{top}" width="{:.1}" height="{height}" fill="#f4b6b6" opacity="0.5"/>"##,
        fx1 - fx0
    );
    let pts: Vec<String> = ys
        .iter()
        .map(|&(t, v)| format!("{:.1},{:.1}", x(t), y(v)))
        .collect();
    let _ = writeln!(
        svg,
        r##"<polyline fill="none" stroke="#1f5fbf" stroke-width="1.5" points="{}"/>"##,
        pts.join(" ")
    );
    let _ = writeln!(
        svg,
        r##"<text x="{}" y="{}" font-size="12">{title}</text><text x="4" y="{}" font-size="10">{:.0}</text><text x="4" y="{}" font-size="10">0</text>"##,
        left,
        top - 4.0,
        top + 10.0,
        y_max,
        top + height
    );
}

/// The SVG timeline of one scenario.
pub fn svg(r: &Report) -> String {
    let x_max = r.duration_s.max(1.0);
    let mut s = String::new();
    let _ = writeln!(
        s,
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="720" height="470" font-family="sans-serif">"##
    );
    let _ = writeln!(
        s,
        r##"<text x="60" y="16" font-size="14">{}: fault from {:.1} s to {:.1} s (shaded)</text>"##,
        r.scenario.name(),
        r.fault.from_s,
        r.fault.to_s
    );
    let rps: Vec<(f64, f64)> = r.timeline.iter().map(|p| (p.t_s, p.rps)).collect();
    let p99: Vec<(f64, f64)> = r
        .timeline
        .iter()
        .map(|p| (p.t_s, p.p99_us / 1_000.0))
        .collect();
    let allowed: Vec<(f64, f64)> = r
        .allowed_per_s
        .iter()
        .enumerate()
        .map(|(i, &u)| (i as f64 + 1.0, u as f64))
        .collect();
    panel(&mut s, 40.0, "requests/s", &rps, x_max, r);
    panel(&mut s, 185.0, "p99 (ms)", &p99, x_max, r);
    let cap = format!(
        "units admitted per second (all keys; the limits allow {} per second)",
        r.options.limit * r.options.keys as u64 * 1_000 / r.options.window_ms.max(1)
    );
    panel(&mut s, 330.0, &cap, &allowed, x_max, r);
    let _ = writeln!(
        s,
        r##"<text x="60" y="462" font-size="10">seconds 0 to {x_max:.0}; {}</text></svg>"##,
        if r.held {
            "the guarantee held"
        } else {
            "the guarantee did NOT hold"
        }
    );
    s
}
