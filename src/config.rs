//! Settings of `streamtract run`: the same fields from command-line flags and from a TOML file.
//!
//! [`RunArgs`] is both the clap argument group and the TOML schema, so every flag has a file
//! key of the same name (`--batch-size` ↔ `batch_size`). Flags override the file. Unknown keys
//! in the file are errors, so a typo does not silently fall back to a default.
//!
//! ```
//! use streamtract::config::RunArgs;
//! let file: RunArgs = toml::from_str(r#"
//!     brokers = "127.0.0.1:9092"
//!     input = ["pixels"]
//!     output = "predictions"
//!     model = "models/digits_mlp.onnx"
//!     batch_size = 64
//! "#).unwrap();
//! let flags = RunArgs { batch_size: Some(128), ..Default::default() };
//! let config = flags.over(file).into_pipeline_config().unwrap();
//! assert_eq!(config.batch_size, 128);
//! ```

use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use clap::Args;
use serde::Deserialize;

use crate::codec::{InputFormat, OutputFormat};
use crate::error::ConfigError;
use crate::kafka::group::{Assignor, GroupConfig};
use crate::kafka::{StartPosition, TopicSelection};
use crate::pipeline::{ErrorPolicy, PipelineConfig};

/// Flags of `streamtract run`; also the keys of its TOML config file.
#[derive(Debug, Clone, Default, Args, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunArgs {
    /// TOML file with any of the settings below (keys spelled with `_`); flags override it.
    #[arg(long, short = 'c', value_name = "FILE")]
    #[serde(skip)]
    pub config: Option<PathBuf>,

    /// Bootstrap brokers, comma separated.
    #[arg(long, value_name = "HOST:PORT,...")]
    pub brokers: Option<String>,

    /// Input topic, or `TOPIC:P1,P2` for an explicit set of partitions. Repeat for several topics.
    #[arg(long, value_name = "TOPIC[:PARTITIONS]")]
    pub input: Option<Vec<String>>,

    /// Output topic (must exist).
    #[arg(long, value_name = "TOPIC")]
    pub output: Option<String>,

    /// ONNX model file.
    #[arg(long, value_name = "FILE")]
    pub model: Option<PathBuf>,

    /// Input record format: csv, json or raw (little-endian float32). [default: csv]
    #[arg(long, value_name = "FORMAT")]
    pub format: Option<String>,

    /// CSV field delimiter, one ASCII character. [default: ,]
    #[arg(long, value_name = "CHAR")]
    pub delimiter: Option<String>,

    /// Output record format: json, csv or raw. [default: json]
    #[arg(long, value_name = "FORMAT")]
    pub output_format: Option<String>,

    /// Add the K highest-scoring class indices and scores of the first output.
    #[arg(long, value_name = "K")]
    pub top_k: Option<usize>,

    /// Where to start: earliest, latest, an offset, or an RFC 3339 timestamp. [default: earliest]
    #[arg(long, value_name = "POSITION")]
    pub start: Option<String>,

    /// Stop at the end offsets read at start-up and exit 0 (bounded mode); otherwise follow the
    /// topics forever.
    #[arg(long, num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    pub until_end: Option<bool>,

    /// Most rows per inference batch. [default: 256]
    #[arg(long, value_name = "N")]
    pub batch_size: Option<usize>,

    /// Longest a record waits for its batch to fill, in milliseconds. [default: 5]
    #[arg(long, value_name = "MS")]
    pub linger_ms: Option<u64>,

    /// Inference worker threads. [default: number of cores]
    #[arg(long, value_name = "N")]
    pub workers: Option<usize>,

    /// Records with larger values are rejected as bad records. [default: 1048576]
    #[arg(long, value_name = "BYTES")]
    pub max_record_bytes: Option<usize>,

    /// What to do with a record that cannot be decoded: skip (log and count) or stop. [default: skip]
    #[arg(long, value_name = "POLICY")]
    pub on_error: Option<String>,

    /// Dead-letter topic (must exist): records that cannot be decoded or are too large are
    /// written there unchanged, with headers naming their source, the stage and the reason.
    #[arg(long, value_name = "TOPIC")]
    pub dlq: Option<String>,

    /// Consumer group id. Without explicit partitions, Kafka spreads the input partitions over
    /// every process with this id; with `--input TOPIC:P1,P2` the positions are still fetched
    /// from and committed to the group, without joining it. Positions start from the committed
    /// offsets, else from `start`.
    #[arg(long, value_name = "ID")]
    pub group: Option<String>,

    /// Partition assignors, most preferred first: range, roundrobin. [default: range]
    #[arg(long, value_name = "NAMES")]
    pub assignor: Option<String>,

    /// Group session timeout in milliseconds. [default: 45000]
    #[arg(long, value_name = "MS")]
    pub session_timeout_ms: Option<u64>,

    /// Group heartbeat interval in milliseconds. [default: 3000]
    #[arg(long, value_name = "MS")]
    pub heartbeat_interval_ms: Option<u64>,

    /// Longest a rebalance may take before the broker drops this member, in milliseconds
    /// (Kafka's max.poll.interval.ms). [default: 300000]
    #[arg(long, value_name = "MS")]
    pub max_poll_interval_ms: Option<u64>,

    /// How often acknowledged positions are committed, in milliseconds. [default: 1000]
    #[arg(long, value_name = "MS")]
    pub commit_interval_ms: Option<u64>,

    /// In group mode, reading pauses while this many records are read but not yet committed:
    /// the most records a crash can make the next reader process twice. [default: 10000]
    #[arg(long, value_name = "N")]
    pub max_uncommitted: Option<usize>,

    /// Seconds to keep trying to reach the brokers at start-up. [default: 30]
    #[arg(long, value_name = "SECONDS")]
    pub connect_timeout: Option<u64>,

    /// Seconds a Kafka request may keep retrying before the run fails. [default: 60]
    #[arg(long, value_name = "SECONDS")]
    pub request_timeout: Option<u64>,

    /// Client id sent to the brokers. [default: streamtract]
    #[arg(long, value_name = "ID")]
    pub client_id: Option<String>,
}

macro_rules! overlay {
    ($hi:expr, $lo:expr, $($field:ident),*) => {
        RunArgs { config: $hi.config.or($lo.config), $($field: $hi.$field.or($lo.$field)),* }
    };
}

impl RunArgs {
    /// Reads a TOML config file.
    pub fn from_file(path: &std::path::Path) -> Result<RunArgs, ConfigError> {
        let file_err = |message: String| ConfigError::File {
            path: path.to_path_buf(),
            message,
        };
        let text = std::fs::read_to_string(path).map_err(|e| file_err(e.to_string()))?;
        toml::from_str(&text).map_err(|e| file_err(e.to_string().trim_end().replace('\n', " ")))
    }

    /// Flags (`self`) laid over file settings (`lower`): a flag wins when both are set.
    pub fn over(self, lower: RunArgs) -> RunArgs {
        overlay!(
            self,
            lower,
            brokers,
            input,
            output,
            model,
            format,
            delimiter,
            output_format,
            top_k,
            start,
            until_end,
            batch_size,
            linger_ms,
            workers,
            max_record_bytes,
            on_error,
            dlq,
            group,
            assignor,
            session_timeout_ms,
            heartbeat_interval_ms,
            max_poll_interval_ms,
            commit_interval_ms,
            max_uncommitted,
            connect_timeout,
            request_timeout,
            client_id
        )
    }

    /// Applies defaults and checks every field. The error names the field, what it expects and
    /// what it got.
    pub fn into_pipeline_config(self) -> Result<PipelineConfig, ConfigError> {
        let brokers = required(self.brokers, "brokers", "brokers")?;
        let brokers: Vec<String> = brokers
            .split(',')
            .map(|b| b.trim().to_string())
            .filter(|b| !b.is_empty())
            .collect();
        for b in &brokers {
            let valid = b
                .rsplit_once(':')
                .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
            if !valid {
                return Err(invalid("brokers", "HOST:PORT[,HOST:PORT...]", b));
            }
        }
        if brokers.is_empty() {
            return Err(invalid("brokers", "HOST:PORT[,HOST:PORT...]", ""));
        }
        let inputs = required(self.input, "input", "input")?;
        if inputs.is_empty() {
            return Err(ConfigError::Missing {
                field: "input",
                flag: "input",
            });
        }
        let topics = inputs
            .iter()
            .map(|s| TopicSelection::from_str(s))
            .collect::<Result<Vec<_>, _>>()?;
        let output = required(self.output, "output", "output")?;
        if output.is_empty() {
            return Err(invalid("output", "a topic name", ""));
        }
        let model = required(self.model, "model", "model")?;

        let mut config = PipelineConfig::new(brokers, &topics[0].topic, &output, model);
        config.source.topics = topics;
        if let Some(f) = self.format {
            config.input_format = parse("format", &f)?;
        }
        if let Some(d) = self.delimiter {
            let InputFormat::Csv { delimiter } = &mut config.input_format else {
                return Err(invalid(
                    "delimiter",
                    "to be used only with format = \"csv\"",
                    &d,
                ));
            };
            match d.as_bytes() {
                [b] if b.is_ascii() && *b != b'"' && *b != b'\n' => *delimiter = *b,
                _ => {
                    return Err(invalid(
                        "delimiter",
                        "one ASCII character such as `,` or `;`",
                        &d,
                    ))
                }
            }
        }
        if let Some(f) = self.output_format {
            config.output_format = parse::<OutputFormat>("output_format", &f)?;
        }
        if let Some(k) = self.top_k {
            if k == 0 {
                return Err(invalid("top_k", "a number >= 1", "0"));
            }
            config.top_k = Some(k);
        }
        if let Some(s) = self.start {
            config.source.start = parse::<StartPosition>("start", &s)?;
        }
        config.source.until_end = self.until_end.unwrap_or(false);
        if let Some(n) = self.batch_size {
            if n == 0 || n > 65_536 {
                return Err(invalid(
                    "batch_size",
                    "a number from 1 to 65536",
                    &n.to_string(),
                ));
            }
            config.batch_size = n;
        }
        if let Some(ms) = self.linger_ms {
            config.linger = Duration::from_millis(ms);
        }
        if let Some(n) = self.workers {
            if n == 0 || n > 256 {
                return Err(invalid("workers", "a number from 1 to 256", &n.to_string()));
            }
            config.workers = n;
        }
        if let Some(n) = self.max_record_bytes {
            if n == 0 {
                return Err(invalid("max_record_bytes", "a number >= 1", "0"));
            }
            config.max_record_bytes = n;
        }
        if let Some(p) = self.on_error {
            config.on_error = parse::<ErrorPolicy>("on_error", &p)?;
        }
        if let Some(topic) = self.dlq {
            if topic.is_empty() {
                return Err(invalid("dlq", "a topic name", ""));
            }
            config.dlq = Some(topic);
        }
        if let Some(id) = self.group {
            let mut group = GroupConfig::new(id);
            if let Some(names) = &self.assignor {
                let list = Assignor::parse_list(names)
                    .map_err(|_| invalid("assignor", "range, roundrobin, or both comma separated", names))?;
                group = group.assignors(list);
            }
            if let Some(ms) = self.session_timeout_ms {
                group = group.session_timeout(Duration::from_millis(ms));
            }
            if let Some(ms) = self.heartbeat_interval_ms {
                group = group.heartbeat_interval(Duration::from_millis(ms));
            }
            if let Some(ms) = self.max_poll_interval_ms {
                group = group.rebalance_timeout(Duration::from_millis(ms));
            }
            group.validate().map_err(|e| invalid("group", "valid consumer group settings", &e.to_string()))?;
            let explicit = config.source.topics.iter().filter(|t| t.partitions.is_some()).count();
            if explicit != 0 && explicit != config.source.topics.len() {
                return Err(invalid(
                    "input",
                    "with `group`, either every input with explicit partitions (standalone) or none (group member)",
                    &inputs.join(" "),
                ));
            }
            config.group = Some(group);
        } else if self.assignor.is_some() || self.session_timeout_ms.is_some() || self.max_uncommitted.is_some() {
            return Err(invalid("group", "a group id when assignor, session_timeout_ms or max_uncommitted are set", ""));
        }
        if let Some(ms) = self.commit_interval_ms {
            if ms == 0 {
                return Err(invalid("commit_interval_ms", "a number of milliseconds >= 1", "0"));
            }
            config.commit_interval = Duration::from_millis(ms);
        }
        if let Some(n) = self.max_uncommitted {
            if n == 0 {
                return Err(invalid("max_uncommitted", "a number >= 1", "0"));
            }
            config.max_uncommitted = n;
        }
        if let Some(s) = self.connect_timeout {
            config.kafka.connect_timeout = Duration::from_secs(s);
        }
        if let Some(s) = self.request_timeout {
            config.kafka.request_timeout = Duration::from_secs(s.max(1));
        }
        if let Some(id) = self.client_id {
            config.kafka.client_id = id;
        }
        Ok(config)
    }
}

fn required<T>(v: Option<T>, field: &'static str, flag: &'static str) -> Result<T, ConfigError> {
    v.ok_or(ConfigError::Missing { field, flag })
}

fn invalid(field: &'static str, expected: &str, found: &str) -> ConfigError {
    ConfigError::Invalid {
        field,
        expected: expected.to_string(),
        found: found.to_string(),
    }
}

fn parse<T: FromStr<Err = String>>(field: &'static str, value: &str) -> Result<T, ConfigError> {
    value
        .parse()
        .map_err(|expected: String| invalid(field, &expected, value))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> RunArgs {
        RunArgs {
            brokers: Some("127.0.0.1:9092".into()),
            input: Some(vec!["in".into()]),
            output: Some("out".into()),
            model: Some("m.onnx".into()),
            ..Default::default()
        }
    }

    #[test]
    fn flags_override_file() {
        let file: RunArgs = toml::from_str("batch_size = 8\nlinger_ms = 50\n").unwrap();
        let config = RunArgs {
            batch_size: Some(16),
            ..base()
        }
        .over(file)
        .into_pipeline_config()
        .unwrap();
        assert_eq!(config.batch_size, 16);
        assert_eq!(config.linger, Duration::from_millis(50));
    }

    #[test]
    fn errors_name_the_field() {
        let err = RunArgs {
            format: Some("xml".into()),
            ..base()
        }
        .into_pipeline_config()
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "`format`: expected one of csv, json, raw, found `xml`"
        );
        let err = RunArgs {
            brokers: Some("localhost".into()),
            ..base()
        }
        .into_pipeline_config()
        .unwrap_err();
        assert!(
            err.to_string().starts_with("`brokers`: expected HOST:PORT"),
            "{err}"
        );
        let err = RunArgs {
            start: Some("yesterday".into()),
            ..base()
        }
        .into_pipeline_config()
        .unwrap_err();
        assert!(err.to_string().contains("RFC 3339"), "{err}");
        let err = RunArgs {
            output: None,
            ..base()
        }
        .into_pipeline_config()
        .unwrap_err();
        assert!(err.to_string().contains("--output"), "{err}");
    }

    #[test]
    fn unknown_file_keys_are_rejected() {
        let err = toml::from_str::<RunArgs>("batchsize = 8\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown field `batchsize`"), "{err}");
    }

    #[test]
    fn start_positions_parse() {
        assert_eq!("earliest".parse(), Ok(StartPosition::Earliest));
        assert_eq!("42".parse(), Ok(StartPosition::Offset(42)));
        assert!(matches!(
            "2026-11-27T13:00:00Z".parse(),
            Ok(StartPosition::Timestamp(_))
        ));
        assert!("-1".parse::<StartPosition>().is_err());
    }
}
