//! Settings of `streamtract run`: the same fields from command-line flags and from a TOML file.
//!
//! [`RunArgs`] is both the clap argument group and the TOML schema, so every flag has a file
//! key of the same name (`--batch-size` ↔ `batch_size`). Flags override the file. Unknown keys
//! in the file are errors, so a typo does not silently fall back to a default.
//!
//! A file with `batch_size = 64` and the flag `--batch-size 128` run with batches of 128
//! (`flags_override_file` below). This module is the binary's: the library takes the
//! [`PipelineConfig`] it builds.

use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use clap::Args;
use serde::Deserialize;

use streamtract::codec::{AvroInput, InputFormat, OutputFormat, RegistryConfig, SchemaRegistry};
use streamtract::kafka::group::{Assignor, GroupConfig};
use streamtract::kafka::spool::MIN_SPOOL_BYTES;
use streamtract::kafka::{Password, SaslConfig, SaslMechanism, SecurityConfig, TlsConfig};
use streamtract::kafka::{SpoolConfig, StartPosition, TopicSelection};
use streamtract::model::GraphRewrites;
use streamtract::pipeline::ConfigError;
use streamtract::pipeline::{ErrorPolicy, OutputHeaders, PipelineConfig};

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

    /// Input record format: csv, json, raw (little-endian float32), avro (bare datums, needs
    /// `schema`) or confluent-avro (Confluent wire format, needs `schema_registry`). [default: csv]
    #[arg(long, value_name = "FORMAT")]
    pub format: Option<String>,

    /// Avro schema file (.avsc): the writer schema of `avro` values; with `confluent-avro`, an
    /// optional reader schema every record is resolved to (fields added with a default in
    /// newer versions then read as that default in older records).
    #[arg(long, value_name = "FILE")]
    pub schema: Option<PathBuf>,

    /// Avro: for a single-input model, the scalar fields that make up its feature vector, in
    /// order, comma separated. Without it, record fields feed the model inputs of the same name.
    #[arg(long, value_name = "NAME,...")]
    pub fields: Option<String>,

    /// Confluent Schema Registry URL (http:// or https://; `user:password@` in it gives basic
    /// auth): writer schemas of `confluent-avro` input by id, and where `confluent-avro` output
    /// registers its schema. https uses the `tls_ca_file` (and client certificate) settings,
    /// else the system CA bundle.
    #[arg(long, value_name = "URL")]
    pub schema_registry: Option<String>,

    /// Schema registry basic-auth user; needs one of `schema_registry_password_file` /
    /// `schema_registry_password_env`.
    #[arg(long, value_name = "USER")]
    pub schema_registry_user: Option<String>,

    /// File holding the schema registry password (one trailing newline is ignored).
    #[arg(long, value_name = "FILE")]
    pub schema_registry_password_file: Option<PathBuf>,

    /// Name of the environment variable holding the schema registry password.
    #[arg(long, value_name = "VAR")]
    pub schema_registry_password_env: Option<String>,

    /// Seconds a schema fetch keeps retrying a registry that is down or failing (5xx, 401)
    /// before the records that need the schema go to the dead-letter topic; reading waits
    /// meanwhile. An unknown schema id (404) is rejected at once. [default: 60]
    #[arg(long, value_name = "SECONDS")]
    pub schema_registry_timeout: Option<u64>,

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

    /// Run a partial batch at once when every input partition is read up to its end, instead
    /// of waiting out the linger (more records can only come with the next fetch); false
    /// always waits out the linger. [default: true]
    #[arg(long, num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    pub flush_when_caught_up: Option<bool>,

    /// Longest the broker may hold a fetch open waiting for new records, in milliseconds.
    /// [default: 100]
    #[arg(long, value_name = "MS")]
    pub fetch_max_wait_ms: Option<u64>,

    /// Most bytes one fetch asks for per partition; a larger record is still read (the fetch
    /// grows for it). Fetch buffers are most of the memory a run holds. [default: 524288]
    #[arg(long, value_name = "BYTES")]
    pub fetch_max_bytes: Option<u32>,

    /// Inference worker threads. [default: number of cores]
    #[arg(long, value_name = "N")]
    pub workers: Option<usize>,

    /// Records with larger values are rejected as bad records. [default: 1048576]
    #[arg(long, value_name = "BYTES")]
    pub max_record_bytes: Option<usize>,

    /// Reading pauses while records read but not yet done (output not yet acknowledged) hold
    /// this many bytes; bounds memory when the output side is slow. [default: 4194304]
    #[arg(long, value_name = "BYTES")]
    pub max_in_flight_bytes: Option<usize>,

    /// What to do with a record that cannot be decoded or that the model fails on, when no
    /// dead-letter topic is set: skip (log and count) or stop. [default: skip]
    #[arg(long, value_name = "POLICY")]
    pub on_error: Option<String>,

    /// Dead-letter topic (must exist): records that are too large, cannot be decoded or make
    /// the model fail are written there unchanged, with headers naming their source, the stage and the reason.
    #[arg(long, value_name = "TOPIC")]
    pub dlq: Option<String>,

    /// Provenance headers on every output: `compact` (one `streamtract.source` header,
    /// `TOPIC:PARTITION:OFFSET:TIMESTAMP_MS:MODEL`), `full` (`source.topic`, `source.partition`,
    /// `source.offset`, `source.timestamp`, `model.sha256`) or `none`; `true`/`false` (and the
    /// bare flag) mean full/none. [default: compact]
    #[arg(long, num_args = 0..=1, default_missing_value = "full", value_name = "full|compact|none")]
    #[serde(default, deserialize_with = "text_or_bool")]
    pub output_headers: Option<String>,

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

    /// Serve Prometheus metrics (`/metrics`) and probes (`/healthz`, `/readyz`) over HTTP on
    /// this address, e.g. 127.0.0.1:9464 or 0.0.0.0:9464. [default: off]
    #[arg(long, value_name = "HOST:PORT")]
    pub metrics_addr: Option<String>,

    /// A second model fed the same batches (a candidate next to the model in service); its
    /// outputs go to `shadow_output` and disagreements on the top class are counted. Its
    /// inputs must have the same shapes as the model's. [default: none]
    #[arg(long, value_name = "FILE", requires = "shadow_output")]
    pub shadow_model: Option<PathBuf>,

    /// Topic for the shadow model's outputs (must exist); needs `shadow_model`.
    #[arg(long, value_name = "TOPIC", requires = "shadow_model")]
    pub shadow_output: Option<String>,

    /// How often to check the model file for a new version, in milliseconds; a new version is
    /// loaded, checked and swapped in between batches (SIGHUP reloads at once). 0 turns the
    /// check off. [default: 2000]
    #[arg(long, value_name = "MS")]
    pub model_check_interval_ms: Option<u64>,

    /// streamtract's graph rewrites of convolution models (`on` or `off`): on, a CNN whose
    /// pattern they prove to match compiles to a faster plan (docs/running.md "Graph
    /// rewrites"); off, every model runs as tract compiles it, to measure the difference or
    /// as a way out should a rewrite misbehave. [default: on]
    #[arg(long, value_name = "on|off")]
    pub graph_rewrites: Option<String>,

    /// Seconds to keep trying to reach the brokers at start-up. [default: 30]
    #[arg(long, value_name = "SECONDS")]
    pub connect_timeout: Option<u64>,

    /// Seconds a Kafka request may keep retrying before the run fails. [default: 60]
    #[arg(long, value_name = "SECONDS")]
    pub request_timeout: Option<u64>,

    /// Client id sent to the brokers. [default: streamtract]
    #[arg(long, value_name = "ID")]
    pub client_id: Option<String>,

    /// Connect to the brokers with TLS. On by itself when any other `tls_*` setting is given;
    /// without `tls_ca_file`, the broker certificates must chain to the system's CA bundle.
    /// Broker host names (or IP addresses) are always checked against their certificates.
    #[arg(long, num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    pub tls: Option<bool>,

    /// PEM file with the CA certificates that signed the brokers' certificates (turns TLS on).
    #[arg(long, value_name = "FILE")]
    pub tls_ca_file: Option<PathBuf>,

    /// PEM client certificate (chain, ours first) for brokers that require mutual TLS; needs
    /// `tls_key_file`.
    #[arg(long, value_name = "FILE")]
    pub tls_cert_file: Option<PathBuf>,

    /// PEM private key of `tls_cert_file` (PKCS#8, RSA or EC).
    #[arg(long, value_name = "FILE")]
    pub tls_key_file: Option<PathBuf>,

    /// SASL mechanism: plain, scram-sha-256 or scram-sha-512. Needs `sasl_username` and one of
    /// `sasl_password_file` / `sasl_password_env`. PLAIN sends the password as it is: use it
    /// with TLS.
    #[arg(long, value_name = "MECHANISM")]
    pub sasl_mechanism: Option<String>,

    /// SASL user name.
    #[arg(long, value_name = "USER")]
    pub sasl_username: Option<String>,

    /// File holding the SASL password (one trailing newline is ignored). There is no flag for
    /// the password itself: command lines are visible to every user of the machine.
    #[arg(long, value_name = "FILE")]
    pub sasl_password_file: Option<PathBuf>,

    /// Name of the environment variable holding the SASL password.
    #[arg(long, value_name = "VAR")]
    pub sasl_password_env: Option<String>,

    /// Bootstrap brokers of the cluster outputs go to (also dead letters and shadow outputs),
    /// when it is not the input cluster, e.g. a central cluster over an uplink. It takes the
    /// `output_tls*` and `output_sasl*` settings below, not the input ones. [default: brokers]
    #[arg(long, value_name = "HOST:PORT,...")]
    pub output_brokers: Option<String>,

    /// Connect to the output brokers with TLS (as `tls`, for `output_brokers`).
    #[arg(long, num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    pub output_tls: Option<bool>,

    /// CA certificates of the output brokers (as `tls_ca_file`, for `output_brokers`).
    #[arg(long, value_name = "FILE")]
    pub output_tls_ca_file: Option<PathBuf>,

    /// Client certificate for the output brokers (as `tls_cert_file`).
    #[arg(long, value_name = "FILE")]
    pub output_tls_cert_file: Option<PathBuf>,

    /// Private key of `output_tls_cert_file` (as `tls_key_file`).
    #[arg(long, value_name = "FILE")]
    pub output_tls_key_file: Option<PathBuf>,

    /// SASL mechanism for the output brokers (as `sasl_mechanism`).
    #[arg(long, value_name = "MECHANISM")]
    pub output_sasl_mechanism: Option<String>,

    /// SASL user name for the output brokers.
    #[arg(long, value_name = "USER")]
    pub output_sasl_username: Option<String>,

    /// File holding the output brokers' SASL password.
    #[arg(long, value_name = "FILE")]
    pub output_sasl_password_file: Option<PathBuf>,

    /// Name of the environment variable holding the output brokers' SASL password.
    #[arg(long, value_name = "VAR")]
    pub output_sasl_password_env: Option<String>,

    /// Directory of a disk spool for outputs the output cluster cannot take: records are
    /// written there (synced) when a produce request fails or takes longer than
    /// `uplink_timeout_ms`, their inputs are committed, and they are sent first, in order per
    /// output partition, when the cluster answers again. One directory per process.
    #[arg(long, value_name = "DIR")]
    pub spool_dir: Option<PathBuf>,

    /// Bound on the spool's files (bytes); when full, reading slows down until it drains. At
    /// least 1,052,672 (one 1 MiB produce request and its framing). [default: 1073741824]
    #[arg(long, value_name = "BYTES")]
    pub spool_max_bytes: Option<u64>,

    /// How long a produce request to the output cluster may take before its records go to the
    /// spool (needs `spool_dir`). [default: 10000]
    #[arg(long, value_name = "MS")]
    pub uplink_timeout_ms: Option<u64>,
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
            schema,
            fields,
            schema_registry,
            schema_registry_user,
            schema_registry_password_file,
            schema_registry_password_env,
            schema_registry_timeout,
            delimiter,
            output_format,
            top_k,
            start,
            until_end,
            batch_size,
            linger_ms,
            flush_when_caught_up,
            fetch_max_wait_ms,
            fetch_max_bytes,
            workers,
            max_record_bytes,
            max_in_flight_bytes,
            on_error,
            dlq,
            output_headers,
            group,
            assignor,
            session_timeout_ms,
            heartbeat_interval_ms,
            max_poll_interval_ms,
            commit_interval_ms,
            max_uncommitted,
            metrics_addr,
            shadow_model,
            shadow_output,
            model_check_interval_ms,
            graph_rewrites,
            connect_timeout,
            request_timeout,
            client_id,
            tls,
            tls_ca_file,
            tls_cert_file,
            tls_key_file,
            sasl_mechanism,
            sasl_username,
            sasl_password_file,
            sasl_password_env,
            output_brokers,
            output_tls,
            output_tls_ca_file,
            output_tls_cert_file,
            output_tls_key_file,
            output_sasl_mechanism,
            output_sasl_username,
            output_sasl_password_file,
            output_sasl_password_env,
            spool_dir,
            spool_max_bytes,
            uplink_timeout_ms
        )
    }

    /// Applies defaults and checks every field. The error names the field, what it expects and
    /// what it got.
    pub fn into_pipeline_config(self) -> Result<PipelineConfig, ConfigError> {
        let mut config = self.endpoints()?;
        self.formats(&mut config)?;
        self.batching(&mut config)?;
        self.fetching(&mut config)?;
        self.limits(&mut config)?;
        self.errors(&mut config)?;
        self.group(&mut config)?;
        self.commits(&mut config)?;
        self.extras(&mut config)?;
        self.connection(&mut config)?;
        config.kafka.security = self.security_settings().into_security_config()?;
        self.output_cluster(&mut config)?;
        self.spool(&mut config)?;
        self.avro(&mut config)?;
        Ok(config)
    }

    /// The required fields (brokers, inputs, output, model), checked: the config every other
    /// step fills in.
    fn endpoints(&self) -> Result<PipelineConfig, ConfigError> {
        let brokers = broker_list(
            "brokers",
            required(self.brokers.as_deref(), "brokers", "brokers")?,
        )?;
        let inputs = required(self.input.as_ref(), "input", "input")?;
        if inputs.is_empty() {
            return Err(ConfigError::Missing {
                field: "input",
                flag: "input",
            });
        }
        let topics = inputs
            .iter()
            .map(|s| parse::<TopicSelection>("input", s))
            .collect::<Result<Vec<_>, _>>()?;
        let output = required(self.output.as_deref(), "output", "output")?;
        if output.is_empty() {
            return Err(invalid("output", "a topic name", ""));
        }
        let model = required(self.model.clone(), "model", "model")?;

        let mut config = PipelineConfig::new(brokers, &topics[0].topic, output, model);
        config.source.topics = topics;
        Ok(config)
    }

    /// Input and output record formats, and where reading starts.
    fn formats(&self, config: &mut PipelineConfig) -> Result<(), ConfigError> {
        match self.format.as_deref() {
            // Built by `avro` once the TLS settings are known.
            Some("avro" | "confluent-avro") => {}
            Some(f) => config.input_format = parse("format", f)?,
            None => {}
        }
        if let Some(d) = &self.delimiter {
            let InputFormat::Csv { delimiter } = &mut config.input_format else {
                return Err(invalid(
                    "delimiter",
                    "to be used only with format = \"csv\"",
                    d,
                ));
            };
            match d.as_bytes() {
                [b] if b.is_ascii() && *b != b'"' && *b != b'\n' => *delimiter = *b,
                _ => {
                    return Err(invalid(
                        "delimiter",
                        "one ASCII character such as `,` or `;`",
                        d,
                    ))
                }
            }
        }
        if let Some(f) = &self.output_format {
            config.output_format = parse::<OutputFormat>("output_format", f)?;
        }
        if let Some(k) = self.top_k {
            if k == 0 {
                return Err(invalid("top_k", "a number >= 1", "0"));
            }
            config.top_k = Some(k);
        }
        if let Some(s) = &self.start {
            config.source.start = parse::<StartPosition>("start", s)?;
        }
        config.source.until_end = self.until_end.unwrap_or(false);
        Ok(())
    }

    /// How records become batches: size, linger, flushing when caught up.
    fn batching(&self, config: &mut PipelineConfig) -> Result<(), ConfigError> {
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
        if let Some(yes) = self.flush_when_caught_up {
            config.flush_when_caught_up = yes;
        }
        Ok(())
    }

    /// Fetch requests: how long the broker may wait and how many bytes it may return.
    fn fetching(&self, config: &mut PipelineConfig) -> Result<(), ConfigError> {
        if let Some(ms) = self.fetch_max_wait_ms {
            if ms == 0 || ms > 30_000 {
                return Err(invalid(
                    "fetch_max_wait_ms",
                    "a number of milliseconds from 1 to 30000",
                    &ms.to_string(),
                ));
            }
            config.source.fetch_max_wait = Duration::from_millis(ms);
        }
        if let Some(n) = self.fetch_max_bytes {
            let largest = streamtract::kafka::LARGEST_FETCH;
            match i32::try_from(n) {
                Ok(bytes) if (1024..=largest).contains(&bytes) => {
                    config.source.fetch_max_bytes = bytes
                }
                _ => {
                    return Err(invalid(
                        "fetch_max_bytes",
                        &format!("a number of bytes from 1024 to {largest}"),
                        &n.to_string(),
                    ))
                }
            }
        }
        Ok(())
    }

    /// Inference workers and the byte bounds on one record and on everything in flight.
    fn limits(&self, config: &mut PipelineConfig) -> Result<(), ConfigError> {
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
        if let Some(n) = self.max_in_flight_bytes {
            if n == 0 {
                return Err(invalid("max_in_flight_bytes", "a number >= 1", "0"));
            }
            config.max_in_flight_bytes = n;
        }
        Ok(())
    }

    /// What happens to a bad record: the error policy, the dead-letter topic, output headers.
    fn errors(&self, config: &mut PipelineConfig) -> Result<(), ConfigError> {
        if let Some(p) = &self.on_error {
            config.on_error = parse::<ErrorPolicy>("on_error", p)?;
        }
        if let Some(topic) = &self.dlq {
            if topic.is_empty() {
                return Err(invalid("dlq", "a topic name", ""));
            }
            config.dlq = Some(topic.clone());
        }
        if let Some(mode) = &self.output_headers {
            config.output_headers = parse::<OutputHeaders>("output_headers", mode)?;
        }
        Ok(())
    }

    /// Consumer-group membership and its timeouts (or none, and then none of its settings).
    fn group(&self, config: &mut PipelineConfig) -> Result<(), ConfigError> {
        if let Some(id) = &self.group {
            let mut group = GroupConfig::new(id.clone());
            if let Some(names) = &self.assignor {
                let list = Assignor::parse_list(names).map_err(|_| {
                    invalid(
                        "assignor",
                        "range, roundrobin, or both comma separated",
                        names,
                    )
                })?;
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
            group
                .validate()
                .map_err(|e| invalid("group", "valid consumer group settings", &e.to_string()))?;
            let explicit = config
                .source
                .topics
                .iter()
                .filter(|t| t.partitions.is_some())
                .count();
            if explicit != 0 && explicit != config.source.topics.len() {
                return Err(invalid(
                    "input",
                    "with `group`, either every input with explicit partitions (standalone) or none (group member)",
                    &self.input.as_ref().map(|i| i.join(" ")).unwrap_or_default(),
                ));
            }
            config.group = Some(group);
        } else if self.assignor.is_some()
            || self.session_timeout_ms.is_some()
            || self.max_uncommitted.is_some()
        {
            return Err(invalid(
                "group",
                "a group id when assignor, session_timeout_ms or max_uncommitted are set",
                "",
            ));
        }
        Ok(())
    }

    /// How often and how far ahead of the commits the pipeline may run.
    fn commits(&self, config: &mut PipelineConfig) -> Result<(), ConfigError> {
        if let Some(ms) = self.commit_interval_ms {
            if ms == 0 {
                return Err(invalid(
                    "commit_interval_ms",
                    "a number of milliseconds >= 1",
                    "0",
                ));
            }
            config.commit_interval = Duration::from_millis(ms);
        }
        if let Some(n) = self.max_uncommitted {
            if n == 0 {
                return Err(invalid("max_uncommitted", "a number >= 1", "0"));
            }
            config.max_uncommitted = n;
        }
        Ok(())
    }

    /// The shadow model, graph rewrites, model-file checks and the metrics listener.
    fn extras(&self, config: &mut PipelineConfig) -> Result<(), ConfigError> {
        match (self.shadow_model.clone(), self.shadow_output.clone()) {
            (Some(model), Some(output)) if !output.is_empty() => {
                config.shadow = Some(streamtract::pipeline::ShadowConfig { model, output });
            }
            (None, None) => {}
            (model, output) => {
                return Err(invalid(
                    "shadow_model",
                    "shadow_model and shadow_output set together",
                    &format!(
                        "shadow_model = {:?}, shadow_output = {:?}",
                        model.map(|m| m.display().to_string()),
                        output
                    ),
                ))
            }
        }
        if let Some(value) = &self.graph_rewrites {
            let rewrites = value
                .parse::<GraphRewrites>()
                .map_err(|_| invalid("graph_rewrites", "`on` or `off`", value))?;
            config.model_options.graph_rewrites = rewrites;
        }
        if let Some(ms) = self.model_check_interval_ms {
            config.model_check_interval = (ms > 0).then(|| Duration::from_millis(ms));
        }
        if let Some(addr) = &self.metrics_addr {
            use std::net::ToSocketAddrs;
            let resolved = addr.to_socket_addrs().ok().and_then(|mut a| a.next());
            match resolved {
                Some(a) => config.metrics_addr = Some(a),
                None => {
                    return Err(invalid(
                        "metrics_addr",
                        "HOST:PORT to listen on, e.g. 127.0.0.1:9464",
                        addr,
                    ))
                }
            }
        }
        Ok(())
    }

    /// Broker connection timeouts and the client id.
    fn connection(&self, config: &mut PipelineConfig) -> Result<(), ConfigError> {
        if let Some(s) = self.connect_timeout {
            config.kafka.connect_timeout = Duration::from_secs(s);
        }
        if let Some(s) = self.request_timeout {
            config.kafka.request_timeout = Duration::from_secs(s.max(1));
        }
        if let Some(id) = &self.client_id {
            config.kafka.client_id = id.clone();
        }
        Ok(())
    }

    /// The output cluster, when it is not the input one, with its own TLS and SASL.
    fn output_cluster(&self, config: &mut PipelineConfig) -> Result<(), ConfigError> {
        let security = self.output_security_settings();
        let Some(list) = &self.output_brokers else {
            if security.any() {
                return Err(ConfigError::Missing {
                    field: "output_brokers",
                    flag: "output-brokers (the output_tls*/output_sasl* settings are for it; without it outputs go to the input cluster with its settings)",
                });
            }
            return Ok(());
        };
        let mut kafka = config.kafka.clone();
        kafka.brokers = broker_list("output_brokers", list)?;
        kafka.security = security.into_security_config()?;
        config.output_kafka = Some(kafka);
        Ok(())
    }

    /// The output spool: directory, bound and uplink timeout.
    fn spool(&self, config: &mut PipelineConfig) -> Result<(), ConfigError> {
        let Some(dir) = &self.spool_dir else {
            if self.spool_max_bytes.is_some() || self.uplink_timeout_ms.is_some() {
                return Err(ConfigError::Missing {
                    field: "spool_dir",
                    flag: "spool-dir (spool_max_bytes and uplink_timeout_ms configure the spool)",
                });
            }
            return Ok(());
        };
        let max_bytes = self.spool_max_bytes.unwrap_or(1 << 30);
        if max_bytes < MIN_SPOOL_BYTES {
            return Err(invalid(
                "spool_max_bytes",
                "at least 1052672 bytes (one 1 MiB produce request and its framing)",
                &max_bytes.to_string(),
            ));
        }
        let mut spool = SpoolConfig::new(dir, max_bytes);
        if let Some(ms) = self.uplink_timeout_ms {
            spool.uplink_timeout = Duration::from_millis(ms.max(1));
        }
        config.spool = Some(spool);
        Ok(())
    }

    /// The Avro formats: the schema file, the fields, the schema registry and its
    /// credentials; each setting only where a format uses it.
    fn avro(&self, config: &mut PipelineConfig) -> Result<(), ConfigError> {
        let registry = self.registry(config)?;
        let input = match self.format.as_deref() {
            Some("avro") => {
                let path = required(
                    self.schema.as_ref(),
                    "schema",
                    "schema FILE.avsc (format = \"avro\" reads bare datums of that schema)",
                )?;
                Some(AvroInput::bare(schema_file(path)?))
            }
            Some("confluent-avro") => {
                let registry = required(registry.clone(), "schema_registry", "schema-registry URL (format = \"confluent-avro\" fetches writer schemas there)")?;
                let mut input = AvroInput::confluent(registry);
                if let Some(path) = &self.schema {
                    input = input.reader_schema(schema_file(path)?);
                }
                Some(input)
            }
            _ => None,
        };
        match input {
            Some(mut input) => {
                if let Some(list) = &self.fields {
                    let names: Vec<String> =
                        list.split(',').map(|f| f.trim().to_string()).collect();
                    if names.iter().any(String::is_empty) {
                        return Err(invalid("fields", "field names separated by commas", list));
                    }
                    input = input.fields(names);
                }
                config.input_format = InputFormat::Avro(input);
            }
            None if self.schema.is_some() || self.fields.is_some() => {
                return Err(invalid(
                    "format",
                    "avro or confluent-avro when schema or fields is set",
                    self.format.as_deref().unwrap_or("csv"),
                ));
            }
            None => {}
        }
        if config.output_format == OutputFormat::ConfluentAvro && registry.is_none() {
            return Err(ConfigError::Missing { field: "schema_registry", flag: "schema-registry URL (output_format = \"confluent-avro\" registers its schema there)" });
        }
        config.schema_registry = registry;
        Ok(())
    }

    /// The schema registry client, if `schema_registry` is set (and its other settings only
    /// then).
    fn registry(&self, config: &PipelineConfig) -> Result<Option<SchemaRegistry>, ConfigError> {
        let Some(url) = &self.schema_registry else {
            if self.schema_registry_user.is_some()
                || self.schema_registry_password_file.is_some()
                || self.schema_registry_password_env.is_some()
                || self.schema_registry_timeout.is_some()
            {
                return Err(ConfigError::Missing {
                    field: "schema_registry",
                    flag: "schema-registry URL (the other schema_registry_* settings need it)",
                });
            }
            return Ok(None);
        };
        let mut settings = RegistryConfig::new(url.clone());
        settings.username = self.schema_registry_user.clone();
        settings.password = match (
            &self.schema_registry_password_file,
            &self.schema_registry_password_env,
        ) {
            (Some(path), None) => Some(read_password_file("schema_registry_password_file", path)?),
            (None, Some(var)) => Some(std::env::var(var).map_err(|_| {
                invalid(
                    "schema_registry_password_env",
                    "the name of a set environment variable",
                    var,
                )
            })?),
            (Some(_), Some(_)) => return Err(invalid(
                "schema_registry_password_file",
                "either schema_registry_password_file or schema_registry_password_env, not both",
                "both",
            )),
            (None, None) => None,
        };
        if settings.password.is_some() && settings.username.is_none() {
            return Err(ConfigError::Missing {
                field: "schema_registry_user",
                flag: "schema-registry-user (a password needs a user)",
            });
        }
        if let Some(s) = self.schema_registry_timeout {
            settings.retry_for = Duration::from_secs(s);
        }
        if url.trim_start().starts_with("https://") {
            // The brokers' TLS settings (CA file, client certificate), else the system CAs.
            let tls = match &config.kafka.security.tls {
                Some(tls) => tls.clone(),
                None => TlsConfig::from_system_roots()?,
            };
            settings.tls = Some(tls.client_config());
        }
        SchemaRegistry::new(&settings).map(Some).map_err(|e| {
            invalid(
                "schema_registry",
                "http://HOST:PORT or https://HOST:PORT",
                &e.to_string(),
            )
        })
    }

    /// The TLS and SASL fields, to be checked together.
    fn security_settings(&self) -> SecuritySettings {
        SecuritySettings {
            names: &INPUT_SECURITY,
            tls: self.tls,
            tls_ca_file: self.tls_ca_file.clone(),
            tls_cert_file: self.tls_cert_file.clone(),
            tls_key_file: self.tls_key_file.clone(),
            sasl_mechanism: self.sasl_mechanism.clone(),
            sasl_username: self.sasl_username.clone(),
            sasl_password_file: self.sasl_password_file.clone(),
            sasl_password_env: self.sasl_password_env.clone(),
        }
    }

    fn output_security_settings(&self) -> SecuritySettings {
        SecuritySettings {
            names: &OUTPUT_SECURITY,
            tls: self.output_tls,
            tls_ca_file: self.output_tls_ca_file.clone(),
            tls_cert_file: self.output_tls_cert_file.clone(),
            tls_key_file: self.output_tls_key_file.clone(),
            sasl_mechanism: self.output_sasl_mechanism.clone(),
            sasl_username: self.output_sasl_username.clone(),
            sasl_password_file: self.output_sasl_password_file.clone(),
            sasl_password_env: self.output_sasl_password_env.clone(),
        }
    }
}

/// Checks `HOST:PORT[,HOST:PORT...]`.
fn broker_list(field: &'static str, list: &str) -> Result<Vec<String>, ConfigError> {
    let brokers = streamtract::kafka::parse_brokers(list);
    for b in &brokers {
        let valid = b
            .rsplit_once(':')
            .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
        if !valid {
            return Err(invalid(field, "HOST:PORT[,HOST:PORT...]", b));
        }
    }
    if brokers.is_empty() {
        return Err(invalid(field, "HOST:PORT[,HOST:PORT...]", ""));
    }
    Ok(brokers)
}

/// The setting names an error about [`SecuritySettings`] uses: the input cluster's or the
/// output cluster's (`output_` in front). Field names are the file keys, flags the flags.
struct SecurityNames {
    tls: &'static str,
    tls_cert_file: (&'static str, &'static str),
    tls_key_file: (&'static str, &'static str),
    sasl_mechanism: (&'static str, &'static str),
    sasl_username: (&'static str, &'static str),
    sasl_password_file: (&'static str, &'static str),
    tls_rule: &'static str,
    password_rule: &'static str,
}

const INPUT_SECURITY: SecurityNames = SecurityNames {
    tls: "tls",
    tls_cert_file: ("tls_cert_file", "tls-cert-file"),
    tls_key_file: ("tls_key_file", "tls-key-file"),
    sasl_mechanism: ("sasl_mechanism", "sasl-mechanism"),
    sasl_username: ("sasl_username", "sasl-username"),
    sasl_password_file: (
        "sasl_password_file",
        "sasl-password-file (or --sasl-password-env VAR)",
    ),
    tls_rule: "true (or unset) when tls_ca_file, tls_cert_file or tls_key_file is set",
    password_rule: "either sasl_password_file or sasl_password_env, not both",
};

const OUTPUT_SECURITY: SecurityNames = SecurityNames {
    tls: "output_tls",
    tls_cert_file: ("output_tls_cert_file", "output-tls-cert-file"),
    tls_key_file: ("output_tls_key_file", "output-tls-key-file"),
    sasl_mechanism: ("output_sasl_mechanism", "output-sasl-mechanism"),
    sasl_username: ("output_sasl_username", "output-sasl-username"),
    sasl_password_file: (
        "output_sasl_password_file",
        "output-sasl-password-file (or --output-sasl-password-env VAR)",
    ),
    tls_rule: "true (or unset) when output_tls_ca_file, output_tls_cert_file or output_tls_key_file is set",
    password_rule: "either output_sasl_password_file or output_sasl_password_env, not both",
};

/// The TLS and SASL fields of [`RunArgs`] for one cluster, checked together.
struct SecuritySettings {
    names: &'static SecurityNames,
    tls: Option<bool>,
    tls_ca_file: Option<PathBuf>,
    tls_cert_file: Option<PathBuf>,
    tls_key_file: Option<PathBuf>,
    sasl_mechanism: Option<String>,
    sasl_username: Option<String>,
    sasl_password_file: Option<PathBuf>,
    sasl_password_env: Option<String>,
}

impl SecuritySettings {
    /// Any setting given.
    fn any(&self) -> bool {
        self.tls.is_some()
            || self.tls_ca_file.is_some()
            || self.tls_cert_file.is_some()
            || self.tls_key_file.is_some()
            || self.sasl_mechanism.is_some()
            || self.sasl_username.is_some()
            || self.sasl_password_file.is_some()
            || self.sasl_password_env.is_some()
    }

    /// Reads and checks the files now, so a missing CA file or a malformed key stops the run
    /// before it connects.
    fn into_security_config(self) -> Result<SecurityConfig, ConfigError> {
        let names = self.names;
        let mut security = SecurityConfig::default();
        let any_tls_file = self.tls_ca_file.is_some()
            || self.tls_cert_file.is_some()
            || self.tls_key_file.is_some();
        if self.tls == Some(false) && any_tls_file {
            return Err(invalid(names.tls, names.tls_rule, "false"));
        }
        if self.tls == Some(true) || any_tls_file {
            let mut tls = match &self.tls_ca_file {
                Some(path) => TlsConfig::from_ca_file(path)?,
                None => TlsConfig::from_system_roots()?,
            };
            match (&self.tls_cert_file, &self.tls_key_file) {
                (Some(cert), Some(key)) => tls = tls.with_client_cert(cert, key)?,
                (Some(_), None) => {
                    return Err(ConfigError::Missing {
                        field: names.tls_key_file.0,
                        flag: names.tls_key_file.1,
                    })
                }
                (None, Some(_)) => {
                    return Err(ConfigError::Missing {
                        field: names.tls_cert_file.0,
                        flag: names.tls_cert_file.1,
                    })
                }
                (None, None) => {}
            }
            security.tls = Some(tls);
        }

        let Some(mechanism) = self.sasl_mechanism else {
            if self.sasl_username.is_some()
                || self.sasl_password_file.is_some()
                || self.sasl_password_env.is_some()
            {
                return Err(ConfigError::Missing {
                    field: names.sasl_mechanism.0,
                    flag: names.sasl_mechanism.1,
                });
            }
            return Ok(security);
        };
        let mechanism: SaslMechanism = parse(names.sasl_mechanism.0, &mechanism)?;
        let username = required(
            self.sasl_username,
            names.sasl_username.0,
            names.sasl_username.1,
        )?;
        if username.is_empty() {
            return Err(invalid(names.sasl_username.0, "a user name", ""));
        }
        let password = match (self.sasl_password_file, self.sasl_password_env) {
            (Some(path), None) => Password::from_file(path)?,
            (None, Some(var)) => Password::from_env(&var)?,
            (Some(_), Some(_)) => {
                return Err(invalid(
                    names.sasl_password_file.0,
                    names.password_rule,
                    "both",
                ))
            }
            (None, None) => {
                return Err(ConfigError::Missing {
                    field: names.sasl_password_file.0,
                    flag: names.sasl_password_file.1,
                })
            }
        };
        security.sasl = Some(SaslConfig::new(mechanism, username, password));
        Ok(security)
    }
}

/// A setting that was a boolean and grew more values (`output_headers = false` in older
/// config files): a string, or `true`/`false` as their string.
fn text_or_bool<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum TextOrBool {
        Text(String),
        Bool(bool),
    }
    Ok(Some(match TextOrBool::deserialize(d)? {
        TextOrBool::Text(text) => text,
        TextOrBool::Bool(yes) => yes.to_string(),
    }))
}

/// An Avro schema file, parsed.
fn schema_file(path: &std::path::Path) -> Result<apache_avro::Schema, ConfigError> {
    AvroInput::parse_schema_file(path).map_err(|message| ConfigError::File {
        path: path.to_path_buf(),
        message,
    })
}

/// A password file's text without one trailing newline.
fn read_password_file(field: &'static str, path: &std::path::Path) -> Result<String, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        invalid(
            field,
            "a readable file",
            &format!("{} ({e})", path.display()),
        )
    })?;
    let text = text.strip_suffix('\n').unwrap_or(&text);
    Ok(text.strip_suffix('\r').unwrap_or(text).to_string())
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
        let file: RunArgs =
            toml::from_str("batch_size = 8\nlinger_ms = 50\nflush_when_caught_up = false\n")
                .unwrap();
        let config = RunArgs {
            batch_size: Some(16),
            ..base()
        }
        .over(file)
        .into_pipeline_config()
        .unwrap();
        assert_eq!(config.batch_size, 16);
        assert_eq!(config.linger, Duration::from_millis(50));
        assert!(!config.flush_when_caught_up);
        assert!(base().into_pipeline_config().unwrap().flush_when_caught_up);
    }

    #[test]
    fn output_headers_are_compact_unless_asked_and_old_booleans_still_parse() {
        let mode = |toml_line: &str| {
            let file: RunArgs = toml::from_str(toml_line).unwrap();
            base()
                .over(file)
                .into_pipeline_config()
                .map(|c| c.output_headers)
        };
        assert_eq!(mode("").unwrap(), OutputHeaders::Compact);
        assert_eq!(
            mode("output_headers = \"full\"").unwrap(),
            OutputHeaders::Full
        );
        assert_eq!(
            mode("output_headers = \"none\"").unwrap(),
            OutputHeaders::None
        );
        // Config files written when the setting was a boolean.
        assert_eq!(mode("output_headers = true").unwrap(), OutputHeaders::Full);
        assert_eq!(mode("output_headers = false").unwrap(), OutputHeaders::None);
        let err = mode("output_headers = \"some\"").unwrap_err();
        assert_eq!(
            err.to_string(),
            "`output_headers`: expected `full`, `compact` or `none` (`true` means full, `false` none), found `some`"
        );
    }

    #[test]
    fn graph_rewrites_are_on_unless_turned_off() {
        let default = base().into_pipeline_config().unwrap();
        assert_eq!(default.model_options.graph_rewrites, GraphRewrites::On);
        let file: RunArgs = toml::from_str("graph_rewrites = \"off\"\n").unwrap();
        let off = base().over(file).into_pipeline_config().unwrap();
        assert_eq!(off.model_options.graph_rewrites, GraphRewrites::Off);
        let err = RunArgs {
            graph_rewrites: Some("sometimes".into()),
            ..base()
        }
        .into_pipeline_config()
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "`graph_rewrites`: expected `on` or `off`, found `sometimes`"
        );
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
            "`format`: expected one of csv, json, raw, avro, confluent-avro, found `xml`"
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
    fn security_settings_are_checked() {
        let err = |args: RunArgs| args.into_pipeline_config().unwrap_err().to_string();
        let e = err(RunArgs {
            tls_ca_file: Some("/nonexistent/ca.pem".into()),
            ..base()
        });
        assert!(
            e.starts_with("`tls_ca_file` (/nonexistent/ca.pem): cannot read it"),
            "{e}"
        );
        let dir = tempfile::tempdir().unwrap();
        let bad = dir.path().join("bad.pem");
        std::fs::write(
            &bad,
            "-----BEGIN CERTIFICATE-----\n@@@\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let e = err(RunArgs {
            tls_ca_file: Some(bad.clone()),
            ..base()
        });
        assert!(
            e.contains("`tls_ca_file`") && e.contains("not a valid PEM file"),
            "{e}"
        );
        let e = err(RunArgs {
            tls_cert_file: Some(bad.clone()),
            tls_ca_file: None,
            tls: Some(false),
            ..base()
        });
        assert!(e.starts_with("`tls`: expected true"), "{e}");
        let e = err(RunArgs {
            sasl_username: Some("alice".into()),
            ..base()
        });
        assert!(e.contains("`sasl_mechanism` is required"), "{e}");
        let e = err(RunArgs {
            sasl_mechanism: Some("gssapi".into()),
            ..base()
        });
        assert!(e.contains("plain, scram-sha-256, scram-sha-512"), "{e}");
        let e = err(RunArgs {
            sasl_mechanism: Some("scram-sha-512".into()),
            sasl_username: Some("alice".into()),
            ..base()
        });
        assert!(e.contains("`sasl_password_file` is required"), "{e}");
        let e = err(RunArgs {
            sasl_mechanism: Some("scram-sha-512".into()),
            sasl_username: Some("alice".into()),
            sasl_password_env: Some("STREAMTRACT_TEST_SURELY_UNSET".into()),
            ..base()
        });
        assert!(
            e.contains("`sasl_password_env`")
                && e.contains("STREAMTRACT_TEST_SURELY_UNSET is not set"),
            "{e}"
        );

        let pw = dir.path().join("pw");
        std::fs::write(&pw, "hunter2\n").unwrap();
        let file: RunArgs = toml::from_str(&format!(
            "sasl_mechanism = \"scram-sha-256\"\nsasl_username = \"alice\"\nsasl_password_file = {:?}\n",
            pw.display().to_string()
        ))
        .unwrap();
        let config = base().over(file).into_pipeline_config().unwrap();
        let sasl = config.kafka.security.sasl.as_ref().unwrap();
        assert_eq!(sasl.mechanism, SaslMechanism::ScramSha256);
        assert_eq!(sasl.username, "alice");
        let shown = format!("{:?}", config.kafka);
        assert!(!shown.contains("hunter2"), "{shown}");
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

    /// Parses `text` as a config file and, when it parses, builds the pipeline config: either
    /// step may refuse it, neither may panic.
    fn parse_config(text: &str) {
        if let Ok(args) = toml::from_str::<RunArgs>(text) {
            let _ = args.into_pipeline_config();
        }
    }

    /// The committed corpus of hostile inputs (tests/corpus/, shared with tests/fuzz.rs).
    #[test]
    fn the_fuzz_corpus_parses_without_panics() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus");
        let mut n = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let bytes = std::fs::read(entry.unwrap().path()).unwrap();
            parse_config(&String::from_utf8_lossy(&bytes));
            n += 1;
        }
        assert!(n >= 10, "corpus at {} has only {n} files", dir.display());
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 2000, failure_persistence: None, ..Default::default() })]

        #[test]
        fn any_text_as_a_config_file_never_panics(text in "\\PC{0,120}") {
            parse_config(&text);
        }

        #[test]
        fn config_shaped_toml_never_panics(key in proptest::sample::select(vec!["batch_size", "input", "start", "brokers", "format", "top_k", "workers", "group", "linger_ms"]), value in r#"("[^"\\]{0,20}"|-?[0-9]{1,25}|\[\]|true|\{\})"#) {
            parse_config(&format!("{key} = {value}\n"));
        }
    }
}
