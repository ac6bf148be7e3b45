//! The result of a run: JSON file, text summary, SVG plot.

use crate::checker::CheckReport;
use crate::runner::TimelinePoint;
use crate::stats::{LatencySummary, human_us};
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write;

/// What the over-admission check did.
#[derive(Debug, Clone, Serialize)]
pub struct OverAdmission {
    /// Whether the check ran.
    pub checked: bool,
    /// Why not, or what it relied on.
    pub note: String,
    /// Allowed checks not examined because of --check-max-admissions.
    pub admissions_not_examined: u64,
    /// Largest send-to-answer time of an allowed check, µs.
    pub max_allowed_latency_us: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub report: Option<CheckReport>,
}

impl OverAdmission {
    pub fn over_admitted(&self) -> bool {
        self.report.as_ref().is_some_and(|r| r.over_admitted)
    }
}

/// The keys of a run.
#[derive(Debug, Clone, Serialize)]
pub struct KeysInfo {
    pub count: usize,
    /// Created through the admin API (else made up by the harness).
    pub created: bool,
    pub deleted: bool,
    pub algorithm: String,
    pub limit: u64,
    pub window_ms: u64,
    pub burst: Option<u64>,
    pub cost: u32,
}

/// The JSON result file.
#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    pub format: u32,
    pub label: String,
    pub system: String,
    pub scenario: String,
    /// "open" or "closed".
    pub mode: String,
    /// Open loop: base rate, requests per second.
    pub rate: Option<f64>,
    pub connections: usize,
    pub threads: usize,
    pub seed: u64,
    pub targets: Vec<String>,
    pub keys: KeysInfo,
    /// Checks per request (1 unless batch).
    pub checks_per_request: usize,
    pub warmup_s: f64,
    pub duration_s: f64,
    /// Measured span (≥ duration if late answers came in).
    pub elapsed_s: f64,
    pub requests: u64,
    pub responses: u64,
    /// Requests answered per second.
    pub rps: f64,
    /// Checks decided (allowed or denied) per second.
    pub checks_per_s: f64,
    pub allowed: u64,
    pub denied: u64,
    pub error_total: u64,
    pub errors: BTreeMap<String, u64>,
    pub status_counts: BTreeMap<String, u64>,
    /// From the intended send time (open loop) or the actual send (closed loop).
    pub latency_us: LatencySummary,
    /// From the actual send: what a naive client measures.
    pub service_time_us: LatencySummary,
    pub timeline: Vec<TimelinePoint>,
    /// CPU the load generator used, in % of one CPU over the run (Linux only).
    /// Near 100% × threads means the client, not the server, was the limit.
    pub client_cpu_pct: Option<f64>,
    pub over_admission: OverAdmission,
    pub exit_code: u8,
    pub command: Vec<String>,
}

impl RunReport {
    /// A human summary (several lines).
    pub fn text(&self) -> String {
        let mut s = String::new();
        let l = &self.latency_us;
        let _ = writeln!(
            s,
            "== {} · {} · {} loop{} · {} connections · {:.1}s",
            self.label,
            self.scenario,
            self.mode,
            self.rate
                .map(|r| format!(" at {r:.0}/s"))
                .unwrap_or_default(),
            self.connections,
            self.elapsed_s
        );
        let _ = writeln!(
            s,
            "requests {}  responses {}  rps {:.0}  checks/s {:.0}  allowed {}  denied {}",
            self.requests, self.responses, self.rps, self.checks_per_s, self.allowed, self.denied
        );
        let _ = writeln!(
            s,
            "latency{}: p50 {}  p90 {}  p99 {}  p99.9 {}  max {}  (n={})",
            if self.mode == "open" {
                " (from intended send)"
            } else {
                ""
            },
            human_us(l.p50_us),
            human_us(l.p90_us),
            human_us(l.p99_us),
            human_us(l.p999_us),
            human_us(l.max_us),
            l.count
        );
        if self.mode == "open" {
            let v = &self.service_time_us;
            let _ = writeln!(
                s,
                "service time (from actual send): p50 {}  p99 {}  p99.9 {}  max {}",
                human_us(v.p50_us),
                human_us(v.p99_us),
                human_us(v.p999_us),
                human_us(v.max_us)
            );
        }
        if let Some(c) = self.client_cpu_pct {
            let _ = writeln!(
                s,
                "load generator CPU: {c:.0}% of one CPU ({} thread{})",
                self.threads,
                if self.threads == 1 { "" } else { "s" }
            );
        }
        if self.error_total == 0 {
            let _ = writeln!(s, "errors: none");
        } else {
            let list: Vec<String> = self
                .errors
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            let _ = writeln!(s, "errors: {} ({})", self.error_total, list.join(", "));
        }
        let oa = &self.over_admission;
        match &oa.report {
            None => {
                let _ = writeln!(s, "over-admission: not checked ({})", oa.note);
            }
            Some(r) if r.over_admitted => {
                let _ = writeln!(
                    s,
                    "OVER-ADMISSION: {} interval(s) over the limit of {} per {} ms ({}); worst: {} admitted",
                    r.violation_count,
                    r.limit,
                    r.window_ms,
                    serde_json::to_value(r.algorithm)
                        .map(|v| v.as_str().unwrap_or("").to_string())
                        .unwrap_or_default(),
                    r.max_in_window
                );
                for v in r.worst.iter().take(5) {
                    let _ = writeln!(
                        s,
                        "  key #{}: {} admitted in [{} ms, +{} ms) (limit {})",
                        v.key, v.admitted, v.interval_start_ms, v.interval_ms, v.limit
                    );
                }
            }
            Some(r) => {
                let _ = writeln!(
                    s,
                    "over-admission: none ({} allowed checks on {} keys; at most {} of {} in any window{})",
                    r.admissions,
                    r.keys,
                    r.max_in_window,
                    r.limit,
                    if r.ambiguous > 0 {
                        format!("; {} at window boundaries not counted", r.ambiguous)
                    } else {
                        String::new()
                    }
                );
            }
        }
        s
    }

    /// A latency-over-time plot: p50, p99 and max per second (log scale), and throughput below;
    /// each second is plotted at its middle.
    pub fn svg(&self) -> String {
        svg(self)
    }
}

/// `10^d` µs as a short label: 10µs, 100µs, 1ms, 10ms, 100ms, 1s, 10s.
fn decade_label(d: f64) -> String {
    let v = 10f64.powf(d);
    if v < 1_000.0 {
        format!("{v:.0}µs")
    } else if v < 1_000_000.0 {
        format!("{:.0}ms", v / 1_000.0)
    } else {
        format!("{:.0}s", v / 1_000_000.0)
    }
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn svg(r: &RunReport) -> String {
    const W: f64 = 860.0;
    const H: f64 = 440.0;
    const L: f64 = 70.0;
    const R: f64 = 20.0;
    let (top0, top1) = (40.0, 280.0);
    let (bot0, bot1) = (320.0, 400.0);
    let pw = W - L - R;
    let pts = &r.timeline;
    let t_max = pts
        .iter()
        .map(|p| p.t_s)
        .fold(r.duration_s, f64::max)
        .max(1.0);
    let x = |t: f64| L + pw * (t / t_max);
    // Latency axis: decades around the data.
    let lo_v = pts
        .iter()
        .map(|p| p.p50_us)
        .filter(|v| *v > 0.0)
        .fold(f64::INFINITY, f64::min);
    let hi_v = pts.iter().map(|p| p.max_us).fold(0.0, f64::max);
    let (lo_d, hi_d) = if lo_v.is_finite() && hi_v > 0.0 {
        (
            lo_v.log10().floor(),
            hi_v.log10().ceil().max(lo_v.log10().floor() + 1.0),
        )
    } else {
        (1.0, 4.0)
    };
    let y_lat = |v: f64| {
        let lv = v.max(10f64.powf(lo_d)).log10();
        top1 - (top1 - top0) * (lv - lo_d) / (hi_d - lo_d)
    };
    let rps_max = pts.iter().map(|p| p.rps).fold(0.0, f64::max).max(1.0) * 1.1;
    let y_rps = |v: f64| bot1 - (bot1 - bot0) * (v / rps_max);

    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="11">"#
    );
    let _ = writeln!(s, r#"<rect width="{W}" height="{H}" fill="white"/>"#);
    let title = format!(
        "{} · {} · {} loop{} · p50 {} · p99 {} · p99.9 {} · {:.0} req/s",
        r.label,
        r.scenario,
        r.mode,
        r.rate.map(|v| format!(" at {v:.0}/s")).unwrap_or_default(),
        human_us(r.latency_us.p50_us),
        human_us(r.latency_us.p99_us),
        human_us(r.latency_us.p999_us),
        r.rps
    );
    let _ = writeln!(
        s,
        r#"<text x="{L}" y="20" font-size="13" font-weight="bold">{}</text>"#,
        esc(&title)
    );
    // Latency grid.
    let mut d = lo_d;
    while d <= hi_d + 1e-9 {
        let y = y_lat(10f64.powf(d));
        let _ = writeln!(
            s,
            r##"<line x1="{L}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#ddd"/>"##,
            W - R
        );
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"#,
            L - 6.0,
            y + 4.0,
            decade_label(d)
        );
        d += 1.0;
    }
    let _ = writeln!(
        s,
        r#"<text x="14" y="{:.1}" transform="rotate(-90 14 {:.1})" text-anchor="middle">latency (log)</text>"#,
        (top0 + top1) / 2.0,
        (top0 + top1) / 2.0
    );
    // Time axis ticks.
    let step = [
        1.0, 2.0, 5.0, 10.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0,
    ]
    .into_iter()
    .find(|s| t_max / s <= 12.0)
    .unwrap_or(7200.0);
    let mut t = 0.0;
    while t <= t_max + 1e-9 {
        let xx = x(t);
        let _ = writeln!(
            s,
            r##"<line x1="{xx:.1}" y1="{top0}" x2="{xx:.1}" y2="{bot1}" stroke="#f0f0f0"/>"##
        );
        let _ = writeln!(
            s,
            r#"<text x="{xx:.1}" y="{:.1}" text-anchor="middle">{t:.0}s</text>"#,
            bot1 + 15.0
        );
        t += step;
    }
    let _ = writeln!(
        s,
        r##"<rect x="{L}" y="{top0}" width="{pw}" height="{}" fill="none" stroke="#888"/>"##,
        top1 - top0
    );
    let _ = writeln!(
        s,
        r##"<rect x="{L}" y="{bot0}" width="{pw}" height="{}" fill="none" stroke="#888"/>"##,
        bot1 - bot0
    );
    // Series.
    type Series = (
        &'static str,
        &'static str,
        &'static str,
        fn(&TimelinePoint) -> f64,
    );
    let series: [Series; 3] = [
        ("max", "#999999", "4 3", |p| p.max_us),
        ("p99", "#e6550d", "", |p| p.p99_us),
        ("p50", "#3182bd", "", |p| p.p50_us),
    ];
    // Each point covers the interval since the previous one: plot it in the middle.
    let mids: Vec<f64> = pts
        .iter()
        .scan(0.0, |prev, p| {
            let m = (*prev + p.t_s) / 2.0;
            *prev = p.t_s;
            Some(m)
        })
        .collect();
    for (i, (name, color, dash, f)) in series.iter().enumerate() {
        let line: Vec<String> = pts
            .iter()
            .zip(&mids)
            .filter(|(p, _)| p.responses > 0)
            .map(|(p, m)| format!("{:.1},{:.1}", x(*m), y_lat(f(p))))
            .collect();
        if !line.is_empty() {
            let _ = writeln!(
                s,
                r#"<polyline fill="none" stroke="{color}" stroke-width="1.8" stroke-dasharray="{dash}" points="{}"/>"#,
                line.join(" ")
            );
        }
        let lx = W - R - 60.0 * (i as f64 + 1.0);
        let _ = writeln!(
            s,
            r#"<line x1="{lx}" y1="32" x2="{:.0}" y2="32" stroke="{color}" stroke-width="2" stroke-dasharray="{dash}"/>"#,
            lx + 18.0
        );
        let _ = writeln!(s, r#"<text x="{:.0}" y="35">{name}</text>"#, lx + 22.0);
    }
    // Throughput.
    let line: Vec<String> = pts
        .iter()
        .zip(&mids)
        .map(|(p, m)| format!("{:.1},{:.1}", x(*m), y_rps(p.rps)))
        .collect();
    if !line.is_empty() {
        let _ = writeln!(
            s,
            r##"<polyline fill="none" stroke="#31a354" stroke-width="1.8" points="{}"/>"##,
            line.join(" ")
        );
    }
    let _ = writeln!(
        s,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{:.0}</text>"#,
        L - 6.0,
        bot0 + 4.0,
        rps_max
    );
    let _ = writeln!(
        s,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="end">0</text>"#,
        L - 6.0,
        bot1 + 4.0
    );
    let _ = writeln!(
        s,
        r#"<text x="14" y="{:.1}" transform="rotate(-90 14 {:.1})" text-anchor="middle">req/s</text>"#,
        (bot0 + bot1) / 2.0,
        (bot0 + bot1) / 2.0
    );
    let _ = writeln!(s, "</svg>");
    s
}
