//! `streamtract`: the command-line face of the library. Everything here is parsing flags,
//! setting up logs and signals, and calling library types.

use std::process::ExitCode;

mod cli;

use clap::{Parser, Subcommand};
use streamtract::config::RunArgs;
use streamtract::model::Model;
use streamtract::pipeline::Pipeline;
use streamtract::Error;
use tracing::Level;
use tracing_subscriber::filter::Targets;

// dlmalloc in the static (musl) binary, the C library's malloc elsewhere, mimalloc on request:
// see `streamtract::allocator`.
#[global_allocator]
static ALLOCATOR: streamtract::allocator::Chosen = streamtract::allocator::CHOSEN;

// In the static (musl) binary, memcpy and memmove that copy small blocks without musl's
// `rep movsq`: see `streamtract::memcopy`.
streamtract::export_memcopy!();

/// Real-time inference on Kafka streams with TensorFlow models exported to ONNX.
#[derive(Debug, Parser)]
#[command(name = "streamtract", version = version_line(), about)]
struct Cli {
    #[command(subcommand)]
    command: Command,

    /// Log format on stderr: `text` (for people) or `json` (one JSON object per line, for log
    /// collectors; fields in README.md). The level comes from RUST_LOG (default info).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "STREAMTRACT_LOG_FORMAT")]
    log_format: LogFormat,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Read input topics, run the model on every record, write one output record per input.
    ///
    /// Every flag can also be set in a TOML file given with --config (same names, with `_`
    /// instead of `-`); flags override the file. Logs go to stderr (level from RUST_LOG, default
    /// info). SIGINT/SIGTERM stop reading, finish the batches in flight and exit 0.
    Run(Box<RunArgs>),
    /// Print a model's inputs and outputs (names, element types, shapes with the symbolic batch
    /// dimension) and its SHA-256.
    Inspect {
        /// ONNX model file.
        model: std::path::PathBuf,
    },
    /// Train a dense network on a topic range (Keras' `model.fit` on a KafkaDataset) and write
    /// it as an ONNX model that `run` serves.
    ///
    /// Each epoch reads the --input topic specs to the end they have when it starts, shuffles
    /// through a bounded buffer and takes a gradient step per batch; a progress line per epoch
    /// shows records/s, loss and accuracy (or MAE) and the same on validation records. The
    /// model is rewritten atomically after every epoch. Records training cannot use are
    /// counted and skipped, or written to --dlq. Exit codes: 0 trained, 2 invalid flags, 1
    /// anything else (a NaN loss keeps the last good model).
    #[cfg(feature = "train")]
    Train(Box<cli::train::TrainArgs>),
}

/// `--version`: the crate version, the allocator and the memory copies this binary was built
/// with, since both change inference speed (docs/performance.md "Allocator" and "Static binary").
fn version_line() -> &'static str {
    static LINE: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    LINE.get_or_init(|| {
        format!(
            "{} (allocator: {}, memcpy: {})",
            env!("CARGO_PKG_VERSION"),
            streamtract::allocator::NAME,
            streamtract::memcopy::NAME
        )
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    streamtract::model::quiet_caught_panics();
    match cli.command {
        Command::Inspect { model } => match Model::load(&model) {
            Ok(m) => {
                println!("model:  {}", m.path().display());
                println!("sha256: {}", m.sha256());
                if let Some(version) = m.version() {
                    println!("version: {version}");
                }
                println!(
                    "batch:  {}",
                    if m.has_dynamic_batch() {
                        "dynamic"
                    } else {
                        "compiled per batch size"
                    }
                );
                print!("{}", m.signature());
                ExitCode::SUCCESS
            }
            Err(e) => fail(&e.into(), cli.log_format),
        },
        Command::Run(args) => run(*args, cli.log_format),
        #[cfg(feature = "train")]
        Command::Train(args) => cli::train::train(*args),
    }
}

fn run(flags: RunArgs, format: LogFormat) -> ExitCode {
    let file = match &flags.config {
        Some(path) => match RunArgs::from_file(path) {
            Ok(f) => f,
            Err(e) => return fail(&e.into(), format),
        },
        None => RunArgs::default(),
    };
    let config = match flags.over(file).into_pipeline_config() {
        Ok(c) => c,
        Err(e) => return fail(&e.into(), format),
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            return fail(
                &Error::Internal(format!("cannot start the async runtime: {e}")),
                format,
            )
        }
    };
    let metrics = config.metrics.clone();
    let result = runtime.block_on(async {
        let pipeline = Pipeline::connect(config).await?;
        reload_on_sighup(pipeline.reload_handle());
        let progress = pipeline
            .bounded_total()
            .filter(|_| on_a_terminal())
            .map(|total| tokio::spawn(show_progress(metrics, total)));
        let result = pipeline.run_until(shutdown_signal()).await;
        if let Some(task) = progress {
            task.abort();
            // Clear the progress line so the summary starts on a clean line.
            eprint!("\r\x1b[2K");
        }
        result
    });
    match result {
        Ok(summary) => {
            // In JSON the pipeline's own `run finished` line carries the same figures.
            if format == LogFormat::Text {
                eprintln!(
                    "done: {} records in, {} outputs written, {} rejected ({} dead letters written), {:.2} s",
                    summary.records_in,
                    summary.records_out,
                    summary.rejected,
                    summary.dead_letters,
                    summary.elapsed.as_secs_f64()
                );
                if summary.latency.count > 0 {
                    let ms = |d: std::time::Duration| d.as_secs_f64() * 1000.0;
                    eprintln!(
                        "end-to-end latency (record timestamp to acknowledged output): p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
                        ms(summary.latency.p50),
                        ms(summary.latency.p99),
                        ms(summary.latency.max)
                    );
                }
                if summary.shadow_rows > 0 {
                    eprintln!(
                        "shadow model: {} rows scored, top class differs from the model's on {}",
                        summary.shadow_rows, summary.shadow_disagreements
                    );
                }
            }
            ExitCode::SUCCESS
        }
        Err(e) => fail(&e, format),
    }
}

/// The progress display is for people watching: only when both stdout and stderr are
/// terminals, never in logs collected from a pipe or a file.
fn on_a_terminal() -> bool {
    use std::io::IsTerminal;
    std::io::stdout().is_terminal() && std::io::stderr().is_terminal()
}

/// Rewrites one stderr line twice a second: records finished of the bounded total, the rate
/// over the run so far and the time left at that rate.
async fn show_progress(metrics: streamtract::metrics::Metrics, total: u64) {
    let started = std::time::Instant::now();
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(500));
    loop {
        tick.tick().await;
        let done = metrics.records_finished().min(total);
        let secs = started.elapsed().as_secs_f64();
        let rate = if secs > 0.0 { done as f64 / secs } else { 0.0 };
        let eta = if rate > 0.0 {
            format!("{:.0} s left", (total - done) as f64 / rate)
        } else {
            "time left unknown".to_string()
        };
        let percent = (100 * done).checked_div(total).unwrap_or(100);
        eprint!("\r\x1b[2K{done} / {total} records ({percent}%), {rate:.0} records/s, {eta}");
    }
}

/// SIGHUP asks the pipeline to reload its model file.
fn reload_on_sighup(handle: streamtract::pipeline::ReloadHandle) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::hangup()) {
            Ok(mut hup) => {
                tokio::spawn(async move {
                    while hup.recv().await.is_some() {
                        tracing::info!("SIGHUP: reloading the model");
                        handle.request();
                    }
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGHUP; reload by changing the model file")
            }
        }
    }
    #[cfg(not(unix))]
    drop(handle);
}

/// Completes on SIGINT or SIGTERM.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

fn init_logging(format: LogFormat) {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let (filter, ignored) = log_filter(std::env::var("RUST_LOG").ok().as_deref());
    let logs = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let registry = tracing_subscriber::registry().with(filter);
    match format {
        // Event fields at the top level next to `timestamp`, `level`, `target` and `message`,
        // so collectors filter on `topic` or `group` directly.
        LogFormat::Json => registry.with(logs.json().flatten_event(true)).init(),
        // Colours only on a terminal: logs redirected to a file or a journal stay plain text.
        LogFormat::Text => registry
            .with(logs.with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())))
            .init(),
    }
    if let Some(why) = ignored {
        tracing::warn!("RUST_LOG ignored: {why}");
    }
}

/// The log filter from `RUST_LOG`: comma-separated `target=level` directives and a bare level
/// for every other target (`warn,streamtract=debug`). Unset, empty or invalid: `info`, with
/// rskafka's per-request chatter at `warn`; an invalid value also returns why.
///
/// `Targets` rather than tracing-subscriber's `EnvFilter`: span and field filters are not
/// supported, but `EnvFilter` brings a regex engine (about 350 KB of the static binary) into a
/// binary with a 15 MB bound (docs/binary-size.md).
fn log_filter(spec: Option<&str>) -> (Targets, Option<String>) {
    let default = || {
        Targets::new()
            .with_default(Level::INFO)
            .with_target("rskafka", Level::WARN)
    };
    match spec.map(str::trim).filter(|s| !s.is_empty()) {
        None => (default(), None),
        Some(spec) => match spec.parse::<Targets>() {
            Ok(targets) => (targets, None),
            Err(e) => (
                default(),
                Some(format!("{spec:?}: {e}; logging at info, rskafka at warn")),
            ),
        },
    }
}

/// Prints the error the way a user reads it and picks the exit code: 2 for configuration
/// problems found before anything was consumed, 1 for the rest.
fn fail(e: &Error, format: LogFormat) -> ExitCode {
    if format == LogFormat::Json {
        tracing::error!(error = %e, "stopped");
    } else {
        eprintln!("error: {e}");
    }
    match e {
        Error::Config(_) | Error::Model(_) => ExitCode::from(2),
        Error::Kafka(k) if k.is_startup() => ExitCode::from(2),
        _ => ExitCode::from(1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rust_log_takes_a_default_level_and_levels_per_target() {
        let (filter, ignored) = log_filter(Some("warn,streamtract::kafka=debug"));
        assert_eq!(ignored, None);
        assert!(filter.would_enable("streamtract::kafka::source", &Level::DEBUG));
        assert!(!filter.would_enable("streamtract::pipeline", &Level::INFO));
        assert!(filter.would_enable("streamtract::pipeline", &Level::WARN));
    }

    #[test]
    fn without_rust_log_it_is_info_and_rskafka_at_warn() {
        for spec in [None, Some(""), Some("  ")] {
            let (filter, ignored) = log_filter(spec);
            assert_eq!(ignored, None);
            assert!(filter.would_enable("streamtract::pipeline", &Level::INFO));
            assert!(!filter.would_enable("streamtract::pipeline", &Level::DEBUG));
            assert!(!filter.would_enable("rskafka::client", &Level::INFO));
        }
    }

    #[test]
    fn an_invalid_rust_log_falls_back_to_the_default_and_says_why() {
        let (filter, ignored) = log_filter(Some("streamtract=loud"));
        let why = ignored.expect("a reason");
        assert!(why.contains("streamtract=loud"), "{why}");
        assert!(filter.would_enable("streamtract::pipeline", &Level::INFO));
        assert!(!filter.would_enable("streamtract::pipeline", &Level::DEBUG));
    }
}
