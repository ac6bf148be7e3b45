//! `loadtest`: drives ringlimit (or Gubernator, or the ceiling server) with a
//! named scenario, open or closed loop, and checks for over-admission.
//! See `loadtest --help` and loadtest/README.md.

use clap::Parser;

fn main() -> std::process::ExitCode {
    let args = ringlimit_loadtest::cli::Args::parse();
    std::process::ExitCode::from(ringlimit_loadtest::app::main_with(args))
}
