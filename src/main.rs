//! `streamtract`: the command-line face of the library. Everything here is parsing flags,
//! setting up logs and signals, and calling library types.

use std::process::ExitCode;

mod cli;

use clap::{Parser, Subcommand};
use cli::config::RunArgs;
use streamtract::model::{GraphRewrites, Model, ModelOptions};
use streamtract::Error;
use tracing::Level;
use tracing_subscriber::filter::Targets;

// dlmalloc in the static (musl) binary, the C library's malloc elsewhere, mimalloc on request:
// see `cli::allocator`. (In the static binary, `cli::memcopy` also supplies memcpy/memmove.)
#[global_allocator]
static ALLOCATOR: cli::allocator::Chosen = cli::allocator::CHOSEN;

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
pub(crate) enum LogFormat {
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
    /// dimension), its SHA-256 and the matrix-multiply kernel family this machine runs.
    Inspect {
        /// ONNX model file.
        model: std::path::PathBuf,
        /// Compile with or without streamtract's graph rewrites, as `run --graph-rewrites`
        /// would (it changes how a convolution model is compiled: the `batch:` line).
        #[arg(long, value_name = "on|off", default_value = "on")]
        graph_rewrites: GraphRewrites,
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
            cli::allocator::NAME,
            cli::memcopy::NAME
        )
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    streamtract::model::quiet_caught_panics();
    match cli.command {
        Command::Inspect {
            model,
            graph_rewrites,
        } => match Model::load_with(
            &model,
            &ModelOptions::default().graph_rewrites(graph_rewrites),
        ) {
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
                println!("kernels: {}", streamtract::model::Kernels::native());
                ExitCode::SUCCESS
            }
            Err(e) => fail(&e.into(), cli.log_format),
        },
        Command::Run(args) => cli::run::run(*args, cli.log_format),
        #[cfg(feature = "train")]
        Command::Train(args) => cli::train::train(*args),
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
pub(crate) fn fail(e: &Error, format: LogFormat) -> ExitCode {
    if format == LogFormat::Json {
        tracing::error!(error = %e, "stopped");
    } else {
        eprintln!("error: {e}");
    }
    match e {
        Error::Config(_) | Error::Model(_) => ExitCode::from(2),
        Error::Kafka(k) if k.is_startup() => ExitCode::from(2),
        // Only raised at start-up (mid-stream registry failures become dead letters).
        Error::Registry(_) => ExitCode::from(2),
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
