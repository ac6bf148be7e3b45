//! ringlimit's load generator, as a library so its parts can be tested.
//!
//! # Layout
//! - [`schedule`]: the open-loop arrival schedule (intended send times), a pure function.
//! - [`zipf`]: seeded Zipf sampling of key popularity.
//! - [`stats`]: HDR histograms, counters and their merge; latency summaries.
//! - [`checker`]: over-admission checks for exact algorithms (sliding log, fixed window).
//! - [`http`]: a lean HTTP/1.1 keep-alive client on hyper, and target URLs.
//! - [`protocol`]: request bodies and response decoding for ringlimit and Gubernator.
//! - [`keys`]: creating and deleting the keys of a run through the admin API.
//! - [`runner`]: workers (open- and closed-loop), progress line, timeline.
//! - [`report`]: the JSON result file, the text summary and the SVG plot.
//! - [`cli`] and [`app`]: flags, scenarios, and one run from flags to exit code.

pub mod app;
pub mod checker;
pub mod cli;
pub mod http;
pub mod keys;
pub mod protocol;
pub mod report;
pub mod runner;
pub mod schedule;
pub mod stats;
pub mod zipf;

/// Exit code of a run that observed over-admission.
pub const EXIT_OVER_ADMISSION: u8 = 3;
/// Exit code of a run that could not run (bad target, admin failure, nothing answered).
pub const EXIT_FAILURE: u8 = 1;
