//! The `ringlimit` binary: config, tracing, run until a signal, drain.

use clap::Parser;
use ringlimit_node::{app, cli};

/// mimalloc instead of the system allocator: the check path allocates and
/// frees small blocks at a high rate (see node/Cargo.toml).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    let cli = cli::Cli::parse();
    if let Some(cli::Command::ClusterProbe(args)) = &cli.command {
        return ringlimit_node::cluster::probe::main(&cli.flags, args);
    }
    let file = cli.flags.config.clone();
    let config = match app::load_config(
        file.as_deref(),
        &|k| std::env::var(k).ok(),
        cli.flags.into_raw(),
    ) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("ringlimit: {e}");
            return std::process::ExitCode::from(64);
        }
    };
    if matches!(cli.command, Some(cli::Command::CheckConfig)) {
        eprintln!("ringlimit: config is valid: {config:#?}");
        return std::process::ExitCode::SUCCESS;
    }
    app::init_tracing(&config);
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .max_blocking_threads(ringlimit_node::app::MAX_BLOCKING_THREADS)
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("ringlimit: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = if matches!(cli.command, Some(cli::Command::Migrate)) {
        rt.block_on(app::migrate(&config))
    } else {
        rt.block_on(app::run(config, app::shutdown_signal()))
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("fatal: {e:#}");
            eprintln!("ringlimit: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
