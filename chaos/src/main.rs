//! `chaos`: runs fault scenarios against a ringlimit cluster in network
//! namespaces and writes a report. Needs root (network namespaces).

use anyhow::{Context, Result, bail};
use chaos::backends::{self, Started};
use chaos::report::{self, Run};
use chaos::scenario::{self, Env, Options, Scenario};
use clap::Parser;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Parser)]
#[command(name = "chaos", about = "Fault-injection harness for ringlimit")]
struct Args {
    /// A scenario, or `all`.
    #[arg(long, default_value = "all")]
    scenario: String,
    /// A few seconds of load per scenario instead of the full run.
    #[arg(long)]
    short: bool,
    /// The `ringlimit` binary (default: next to this one).
    #[arg(long)]
    bin: Option<PathBuf>,
    /// Redis to use (`redis://127.0.0.1:PORT`); default: start one.
    #[arg(long)]
    redis: Option<String>,
    /// CQL server to use (`127.0.0.1:PORT`); default: start Cassandra.
    #[arg(long)]
    cql: Option<String>,
    /// Where the reports go (default chaos-report/<timestamp>).
    #[arg(long)]
    out: Option<PathBuf>,
}

fn main() -> std::process::ExitCode {
    let argv: Vec<String> = std::env::args().collect();
    if argv.get(1).map(String::as_str) == Some("--relay") && argv.len() == 4 {
        return relay_main(&argv[2], &argv[3]);
    }
    let args = Args::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("chaos: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(args)) {
        Ok(true) => std::process::ExitCode::SUCCESS,
        Ok(false) => std::process::ExitCode::from(3),
        Err(e) => {
            eprintln!("chaos: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// `chaos --relay LISTEN TO`: the relay the harness runs inside each node
/// namespace; forwards until killed.
fn relay_main(listen: &str, to: &str) -> std::process::ExitCode {
    let run = async {
        let listen: std::net::SocketAddr = listen.parse()?;
        let to: std::net::SocketAddr = to.parse()?;
        let _relay = chaos::relay::Relay::start(listen, to).await?;
        std::future::pending::<()>().await;
        anyhow::Ok(())
    };
    match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(anyhow::Error::from)
        .and_then(|rt| rt.block_on(run))
    {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("chaos --relay: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn scenarios(name: &str) -> Result<Vec<Scenario>> {
    if name == "all" {
        return Ok(Scenario::ALL.to_vec());
    }
    match Scenario::ALL.iter().find(|s| s.name() == name) {
        Some(s) => Ok(vec![*s]),
        None => bail!(
            "unknown scenario {name:?}: all, {}",
            Scenario::ALL.map(|s| s.name()).join(", ")
        ),
    }
}

async fn run(args: Args) -> Result<bool> {
    let list = scenarios(&args.scenario)?;
    let swept = chaos::net::sweep_stale();
    if !swept.is_empty() {
        eprintln!("chaos: removed what an earlier run left: {swept:?}");
    }
    let bin = match args.bin {
        Some(b) => b,
        None => std::env::current_exe()?
            .parent()
            .context("binary dir")?
            .join("ringlimit"),
    };
    if !bin.exists() {
        bail!(
            "{} not found: build it (cargo build -p ringlimit-node) or pass --bin",
            bin.display()
        );
    }
    let stamp = chrono_free_stamp();
    let out = args
        .out
        .unwrap_or_else(|| PathBuf::from("chaos-report").join(&stamp));
    let work = out.join("work");
    std::fs::create_dir_all(&work)?;
    let mut started = Vec::new();
    let redis = match &args.redis {
        Some(r) => backends::addr(r)?,
        None => {
            eprintln!("chaos: starting Redis");
            let s = Started::start("redis", &work.join("redis"))?;
            let a = s.addr;
            started.push(s);
            a
        }
    };
    let cql = match &args.cql {
        Some(c) => backends::addr(c)?,
        None => {
            eprintln!("chaos: starting the CQL server (Cassandra; about 30 s)");
            let s = Started::start("cassandra", &work.join("cassandra"))?;
            let a = s.addr;
            started.push(s);
            a
        }
    };
    let env = Env {
        bin,
        chaos_exe: std::env::current_exe()?,
        work: work.clone(),
        redis,
        cql,
    };
    let mut run = Run {
        command: std::env::args().collect::<Vec<_>>().join(" "),
        started_at: stamp,
        reports: Vec::new(),
        errors: Vec::new(),
    };
    // Ctrl-C: stop at once; the drops below tear the namespaces and nodes down.
    let interrupted = tokio::signal::ctrl_c();
    tokio::pin!(interrupted);
    for s in list {
        let o = if args.short {
            Options::short(s)
        } else {
            Options::full(s)
        };
        eprintln!("chaos: {} ...", s.name());
        tokio::select! {
            r = scenario::run(s, &o, &env) => match r {
                Ok(r) => {
                    eprintln!(
                        "chaos: {}: {} (over-admitted {} units, worst +{}; usage {} vs admitted {})",
                        s.name(),
                        if r.held { "held" } else { "DID NOT HOLD" },
                        r.over_admission.units_over,
                        r.over_admission.worst_units,
                        r.usage_units,
                        r.allowed_units
                    );
                    run.reports.push(r);
                }
                Err(e) => {
                    eprintln!("chaos: {}: could not run: {e:#}", s.name());
                    run.errors.push((s.name().to_string(), format!("{e:#}")));
                }
            },
            _ = &mut interrupted => {
                eprintln!("chaos: interrupted; cleaning up");
                run.errors.push((s.name().to_string(), "interrupted".into()));
                break;
            }
        }
        // Let the dropped scenario's nodes and namespaces go before the next one.
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    report::write(&out, &run)?;
    eprintln!("chaos: wrote {}/report.md", out.display());
    drop(started);
    Ok(run.errors.is_empty() && run.reports.iter().all(|r| r.held))
}

/// `YYYYmmddTHHMMSSZ` from the system clock, without a date crate.
fn chrono_free_stamp() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = i64::try_from(days).unwrap_or(0) + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}{m:02}{d:02}T{:02}{:02}{:02}Z",
        rem / 3_600,
        rem % 3_600 / 60,
        rem % 60
    )
}
