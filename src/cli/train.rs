//! `streamtract train`: flags → [`streamtract::train`] options, a Keras-like progress line per
//! epoch, dead letters for rejected records, the model written atomically.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{ArgAction, Args};
use std::time::Duration;
use streamtract::codec::InputFormat;

use streamtract::dataset::{
    BlockingOutputSequence, DatasetError, KafkaDataset, KafkaGroupDataset, Label, OutputConfig,
    OutputItem, SourceRecord,
};
use streamtract::kafka::{parse_brokers, KafkaConfig};
use streamtract::pipeline::headers;
use streamtract::train::{
    fit, follow, Activation, ConvBlock, DenseModel, EpochStats, Event, Fitted, History,
    KafkaRecords, Loss, OnlineOptions, Optimizer, RowFormat, Task, TrainError, TrainOptions,
    Validation,
};

/// Flags of `streamtract train`. A flag given twice takes its last value, so a recipe in a
/// script can be adjusted by appending flags.
#[derive(Debug, Args)]
#[command(args_override_self = true)]
pub struct TrainArgs {
    /// Bootstrap brokers, `HOST:PORT[,HOST:PORT…]`.
    #[arg(long)]
    brokers: String,
    /// How long to keep trying to reach a broker at start-up before giving up.
    #[arg(long, default_value_t = 30_000)]
    connect_timeout_ms: u64,
    /// Training records: a topic spec `topic[:partition[:offset[:last]]]` (tensorflow-io's);
    /// repeat for several. Each epoch reads every spec to the end it has when the epoch starts.
    #[arg(long, required = true)]
    input: Vec<String>,
    /// Record value layout: `csv` (numbers and the label column), `json` (an object with the
    /// features array under --input-name and the label under --label-field) or `raw`.
    #[arg(long, default_value = "csv")]
    format: InputFormat,
    /// CSV field separator, one ASCII character.
    #[arg(long, default_value = ",")]
    delimiter: char,
    /// The CSV column holding the label: `last`, `first`, a 0-based index, or a name from
    /// --csv-header.
    #[arg(long, conflicts_with_all = ["label_field", "label_key"])]
    label_column: Option<String>,
    /// Names of the CSV columns, comma separated (the records carry no header line), so
    /// --label-column can name one.
    #[arg(long, value_delimiter = ',')]
    csv_header: Vec<String>,
    /// The JSON field holding the label.
    #[arg(long, conflicts_with = "label_key")]
    label_field: Option<String>,
    /// The record key holds the label (UTF-8 text such as `7` or `0.25`).
    #[arg(long)]
    label_key: bool,
    /// Name of the written model's input (and of the features' field in JSON objects).
    #[arg(long, default_value = "features")]
    input_name: String,
    /// `classify` (labels are class indices 0..C) or `regress` (labels are numbers).
    #[arg(long, default_value = "classify")]
    task: Task,
    /// Number of classes; default: the largest label + 1. A label outside 0..C is rejected.
    #[arg(long)]
    classes: Option<usize>,
    /// Units of the hidden dense layers, input side first, e.g. `64,32`.
    #[arg(long, value_delimiter = ',', default_value = "32")]
    layers: Vec<usize>,
    /// Each row as an image `HEIGHT,WIDTH,CHANNELS` (channels last, as Keras), for --conv; the
    /// written model then takes `[N, HEIGHT, WIDTH, CHANNELS]`.
    #[arg(long, value_delimiter = ',')]
    input_shape: Vec<usize>,
    /// Convolution blocks before the dense layers, in order: `FILTERS:KERNEL` is a Conv2D with
    /// "same" padding and the activation, `pool:SIZE` a max pooling; e.g. `16:3,32:3,pool:2`
    /// (the repo's digits CNN). Needs --input-shape.
    #[arg(long, value_delimiter = ',')]
    conv: Vec<ConvBlock>,
    /// Activation of the hidden layers: relu, tanh, sigmoid, linear.
    #[arg(long, default_value = "relu")]
    activation: Activation,
    /// Dropout rate after each hidden layer while training.
    #[arg(long, default_value_t = 0.0)]
    dropout: f64,
    /// Standardise each feature with the training data's mean and standard deviation (Keras'
    /// Normalization layer, adapted), baked into the model. `--normalize false` turns it off.
    #[arg(long, default_value_t = true, action = ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    normalize: bool,
    /// Loss: sparse-categorical-crossentropy (default for classify), binary-crossentropy (2
    /// classes, one sigmoid output), mse (default for regress), mae.
    #[arg(long)]
    loss: Option<Loss>,
    /// Optimizer: adam or sgd.
    #[arg(long, default_value = "adam")]
    optimizer: String,
    /// Momentum of sgd.
    #[arg(long, default_value_t = 0.9)]
    momentum: f64,
    /// Learning rate.
    #[arg(long, default_value_t = 1e-3)]
    learning_rate: f64,
    /// Passes over the training records.
    #[arg(long, default_value_t = 10)]
    epochs: usize,
    /// Records per gradient step.
    #[arg(long, default_value_t = 32)]
    batch_size: usize,
    /// Records held to shuffle from (tf.data's `shuffle`); 0 keeps the stream order.
    #[arg(long, default_value_t = 10_000)]
    shuffle_buffer: usize,
    /// Hold out the last fraction of each partition's range for validation (Keras'
    /// `validation_split`).
    #[arg(long, conflicts_with = "validation_input")]
    validation_split: Option<f64>,
    /// Validation records from other topic specs; repeat for several.
    #[arg(long)]
    validation_input: Vec<String>,
    /// Seed of the weights, dropout and shuffle.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Fine-tune this dense ONNX model (a TensorFlow export or one `train` wrote) instead of a
    /// new network: its layers, activation, input normalisation and head are kept (--layers,
    /// --activation and --normalize are then ignored) and the file written is its graph with
    /// new weights. An operator that cannot be trained is named with its node.
    #[arg(long)]
    init: Option<PathBuf>,
    /// The ONNX model to write; rewritten atomically after every epoch.
    #[arg(long)]
    out: PathBuf,
    /// Write the per-epoch history (Keras' `history.history`, plus records/s) as JSON here.
    #[arg(long)]
    metrics_json: Option<PathBuf>,
    /// Online learning: read --input (topic names) as a member of --group forever (or until
    /// --stream-timeout-ms of silence), write a new model version every --checkpoint-every,
    /// and commit only the offsets of records inside a model already written. A restart
    /// continues from the model at --out. Needs --classes for classification.
    #[arg(long)]
    follow: bool,
    /// Consumer group of --follow.
    #[arg(long)]
    group: Option<String>,
    /// With --follow: write a new version every N records (`1000`) or every N seconds (`30s`).
    #[arg(long, default_value = "1000")]
    checkpoint_every: String,
    /// With --follow: rows whose mean and standard deviation standardise the inputs of a new
    /// model (held, then trained on).
    #[arg(long, default_value_t = 1000)]
    adapt_records: usize,
    /// With --follow: end once no record came for this long (tensorflow-io's `stream_timeout`);
    /// default: never.
    #[arg(long)]
    stream_timeout_ms: Option<u64>,
    /// Dead-letter topic for records training cannot use (written once, with `dlq.*` headers);
    /// without it they are counted, logged and skipped.
    #[arg(long)]
    dlq: Option<String>,
}

impl TrainArgs {
    /// Connection settings of every Kafka client `train` opens.
    fn kafka(&self) -> KafkaConfig {
        let mut kafka = KafkaConfig::new(parse_brokers(&self.brokers));
        kafka.connect_timeout = Duration::from_millis(self.connect_timeout_ms.max(1));
        kafka
    }

    fn online(&self) -> Result<OnlineOptions, String> {
        let every = self.checkpoint_every.trim();
        let bad = || {
            format!("--checkpoint-every: expected a number of records (`1000`) or of seconds (`30s`), found `{every}`")
        };
        let mut online = OnlineOptions {
            adapt_records: self.adapt_records.max(1),
            ..OnlineOptions::default()
        };
        match every.strip_suffix('s') {
            Some(seconds) => {
                let seconds: f64 = seconds.parse().map_err(|_| bad())?;
                if !(seconds > 0.0 && seconds.is_finite()) {
                    return Err(bad());
                }
                online.checkpoint_interval = Some(Duration::from_secs_f64(seconds));
                online.checkpoint_records = None;
            }
            None => {
                let records: u64 = every.parse().map_err(|_| bad())?;
                if records == 0 {
                    return Err(bad());
                }
                online.checkpoint_records = Some(records);
                online.checkpoint_interval = None;
            }
        }
        Ok(online)
    }

    fn label(&self) -> Result<Label, String> {
        if self.label_key {
            return Ok(Label::Key);
        }
        if let Some(field) = &self.label_field {
            return Ok(Label::JsonField(field.clone()));
        }
        match self.label_column.as_deref() {
            None if self.format == InputFormat::Json => {
                Err("--label-field NAME is required with --format json (or --label-key)".into())
            }
            None | Some("last") => Ok(Label::CsvLastColumn),
            Some("first") => Ok(Label::CsvColumn(0)),
            Some(column) => match column.parse() {
                Ok(index) => Ok(Label::CsvColumn(index)),
                Err(_) => match self.csv_header.iter().position(|h| h.trim() == column) {
                    Some(index) => Ok(Label::CsvColumn(index)),
                    None if self.csv_header.is_empty() => Err(format!(
                        "--label-column: `{column}` is not last, first or a column index; to name a column, give the names with --csv-header"
                    )),
                    None => Err(format!(
                        "--label-column: no column `{column}` in --csv-header ({})",
                        self.csv_header.join(", ")
                    )),
                },
            },
        }
    }

    fn format(&self) -> Result<InputFormat, String> {
        match &self.format {
            InputFormat::Csv { .. } if self.delimiter.is_ascii() => Ok(InputFormat::Csv {
                delimiter: self.delimiter as u8,
            }),
            InputFormat::Csv { .. } => Err(format!(
                "--delimiter: expected one ASCII character, found `{}`",
                self.delimiter
            )),
            other => Ok(other.clone()),
        }
    }

    fn options(&self) -> Result<TrainOptions, String> {
        let task = match self.task {
            Task::Classify { .. } => Task::Classify {
                classes: self.classes,
            },
            Task::Regress if self.classes.is_some() => {
                return Err("--classes applies to --task classify only".into())
            }
            Task::Regress => Task::Regress,
        };
        let optimizer = match self.optimizer.as_str() {
            "adam" => Optimizer::Adam,
            "sgd" => Optimizer::Sgd {
                momentum: self.momentum,
            },
            other => {
                return Err(format!(
                    "--optimizer: expected adam or sgd, found `{other}`"
                ))
            }
        };
        let validation = match (self.validation_split, self.validation_input.is_empty()) {
            (Some(f), _) => Validation::Split(f),
            (None, false) => Validation::Separate,
            (None, true) => Validation::None,
        };
        let mut options = TrainOptions::new(task)
            .hidden_layers(self.layers.iter().copied())
            .epochs(self.epochs)
            .seed(self.seed);
        options.input_shape = match self.input_shape.as_slice() {
            [] => None,
            [h, w, c] => Some([*h, *w, *c]),
            other => {
                return Err(format!(
                    "--input-shape: expected HEIGHT,WIDTH,CHANNELS, found {} values",
                    other.len()
                ))
            }
        };
        options.conv = self.conv.clone();
        options.activation = self.activation;
        options.dropout = self.dropout;
        options.normalize = self.normalize;
        options.loss = self.loss;
        options.optimizer = optimizer;
        options.learning_rate = self.learning_rate;
        options.batch_size = self.batch_size;
        options.shuffle_buffer = self.shuffle_buffer;
        options.validation = validation;
        options.checkpoint = Some(self.out.clone());
        Ok(options)
    }
}

/// Runs `streamtract train`; exit 0 trained and written, 2 bad flags, 1 anything else.
pub fn train(args: TrainArgs) -> ExitCode {
    let (rows, options) = match prepare(&args) {
        Ok(prepared) => prepared,
        Err(code) => return code,
    };
    let mut dead_letters = match open_dead_letters(&args) {
        Ok(letters) => letters,
        Err(e) => return failed(&TrainError::Dataset(e)),
    };
    let epochs = if args.follow { 0 } else { options.epochs };
    let mut on_event = |event: Event<'_>| -> Result<(), TrainError> {
        report(event, dead_letters.as_mut(), args.follow, epochs)
    };
    if args.follow {
        return follow_group(&args, &rows, &options, &mut on_event);
    }
    let result = fit_topics(&args, &rows, &options, &mut on_event);
    let dlq_written = dead_letters.as_ref().map_or(0, |d| d.written);
    if let Some(letters) = dead_letters.take() {
        if let Err(e) = letters.sequence.close() {
            return failed(&TrainError::Dataset(e));
        }
    }
    let fitted = match result {
        Ok(f) => f,
        Err(e) => return failed(&e),
    };
    if let Some(path) = &args.metrics_json {
        if let Err(e) = write_history(path, &fitted.history) {
            return failed(&e);
        }
    }
    eprintln!("{}", written_line(&args, &fitted, dlq_written));
    ExitCode::SUCCESS
}

/// The row format and training options from the flags, with the initial model of --init
/// read; the exit code when they are not usable.
fn prepare(args: &TrainArgs) -> Result<(RowFormat, TrainOptions), ExitCode> {
    let prepared = args
        .label()
        .and_then(|label| Ok((label, args.format()?, args.options()?)));
    let (label, format, options) = match prepared {
        Ok(p) => p,
        Err(message) => {
            eprintln!("error: invalid configuration: {message}");
            return Err(ExitCode::from(2));
        }
    };
    let mut options = options;
    if let Some(path) = &args.init {
        match DenseModel::read(path) {
            Ok(model) => options.init = Some(model),
            Err(e) => return Err(failed(&e)),
        }
    }
    let mut rows = RowFormat::new(format, label);
    rows.input_name = args.input_name.clone();
    Ok((rows, options))
}

/// The writer of --dlq, if given.
fn open_dead_letters(args: &TrainArgs) -> Result<Option<DeadLetters>, DatasetError> {
    let Some(topic) = &args.dlq else {
        return Ok(None);
    };
    let sequence = OutputConfig::new(topic)
        .map(|c| c.kafka_config(args.kafka()))
        .and_then(|c| BlockingOutputSequence::open(&c))?;
    Ok(Some(DeadLetters {
        sequence,
        written: 0,
    }))
}

/// Handles one training event: rejected records to the dead-letter topic, the progress line
/// per epoch (of `epochs`, 0 when following), and the checkpoints.
fn report(
    event: Event<'_>,
    dead_letters: Option<&mut DeadLetters>,
    follow: bool,
    epochs: usize,
) -> Result<(), TrainError> {
    match event {
        Event::Rejected { record, reason } => {
            if let Some(letters) = dead_letters {
                letters.write(record, reason)?;
            }
        }
        Event::Epoch(stats) => eprintln!("{}", progress_line(stats, epochs)),
        // Dead letters are acknowledged before the records they stand for are committed.
        Event::Checkpoint { path, version } => {
            if let Some(letters) = dead_letters {
                letters.sequence.flush()?;
            }
            if follow {
                eprintln!("wrote {} (version {version})", path.display());
            }
        }
        Event::Batch { .. } => {}
    }
    Ok(())
}

/// Trains on --input (validating on --validation-input, if given) for the set epochs.
fn fit_topics(
    args: &TrainArgs,
    rows: &RowFormat,
    options: &TrainOptions,
    on_event: &mut dyn FnMut(Event<'_>) -> Result<(), TrainError>,
) -> Result<Fitted, TrainError> {
    let mut records =
        KafkaRecords::new(KafkaDataset::builder(args.input.clone()).kafka_config(args.kafka()));
    if !args.validation_input.is_empty() {
        records = records.validation(
            KafkaDataset::builder(args.validation_input.clone()).kafka_config(args.kafka()),
        );
    }
    fit(&mut records, rows, options, on_event)
}

/// Writes the per-epoch history as JSON to `path` (--metrics-json).
fn write_history(path: &Path, history: &History) -> Result<(), TrainError> {
    let json =
        serde_json::to_vec_pretty(history).map_err(|e| TrainError::Framework(e.to_string()))?;
    std::fs::write(path, json).map_err(|source| TrainError::Write {
        path: path.to_path_buf(),
        source,
    })
}

/// The last line of a training run: where the model went, its signature and the rejected
/// records.
fn written_line(args: &TrainArgs, fitted: &Fitted, dlq_written: u64) -> String {
    let model = &fitted.model;
    let outputs = model.layers.last().map_or(model.features, |l| l.units);
    format!(
        "wrote {} (version {}): {}: float32[N, {}] -> {}: float32[N, {}]; {} records rejected{}",
        args.out.display(),
        model.version,
        model.input_name,
        model.features,
        model.head.output_name(),
        outputs,
        fitted.history.rejected,
        match &args.dlq {
            Some(topic) => format!(" ({dlq_written} written to {topic})"),
            None => String::new(),
        }
    )
}

/// The dead-letter topic's writer and how many it took.
struct DeadLetters {
    sequence: BlockingOutputSequence,
    written: u64,
}

impl DeadLetters {
    /// The rejected record, unchanged, with `dlq.*` headers saying where it came from and why.
    fn write(&mut self, record: &SourceRecord, reason: &str) -> Result<(), TrainError> {
        let item = OutputItem {
            value: record.value.clone().unwrap_or_default(),
            key: record.key.clone(),
            headers: headers::dead_letter(record, "train", reason),
            timestamp: Some(record.timestamp),
        };
        self.sequence.set(self.written, item)?;
        self.written += 1;
        Ok(())
    }
}

/// `--follow`: online training in a consumer group until the stream stays idle past
/// --stream-timeout-ms (or forever).
fn follow_group(
    args: &TrainArgs,
    rows: &RowFormat,
    options: &TrainOptions,
    on_event: &mut dyn FnMut(Event<'_>) -> Result<(), TrainError>,
) -> ExitCode {
    let Some(group) = &args.group else {
        eprintln!("error: invalid configuration: --follow needs --group ID (the consumer group whose offsets record what is trained)");
        return ExitCode::from(2);
    };
    let online = match args.online() {
        Ok(o) => o,
        Err(message) => {
            eprintln!("error: invalid configuration: {message}");
            return ExitCode::from(2);
        }
    };
    let dataset = KafkaGroupDataset::builder(args.input.clone(), group)
        .kafka_config(args.kafka())
        .stream_timeout(args.stream_timeout_ms.map(Duration::from_millis))
        .open_blocking();
    let dataset = match dataset {
        Ok(d) => d,
        Err(e) => return failed(&TrainError::Dataset(e)),
    };
    match follow(dataset, rows, options, &online, on_event) {
        Ok(summary) => {
            eprintln!(
                "online training ended: {} records trained, {} rejected, {} versions written (last: version {} at {}){}",
                summary.trained,
                summary.rejected,
                summary.checkpoints,
                summary.version,
                args.out.display(),
                if summary.resumed { "; resumed from the model already there" } else { "" }
            );
            ExitCode::SUCCESS
        }
        Err(e) => failed(&e),
    }
}

/// Keras' per-epoch line: `Epoch 3/20 - 0.21s - 6420 records/s - loss: … - accuracy: …`.
fn progress_line(stats: &EpochStats, epochs: usize) -> String {
    let mut line = if epochs == 0 {
        format!(
            "Window {} - {:.2}s - {:.0} records/s - loss: {:.4}",
            stats.epoch, stats.seconds, stats.records_per_second, stats.loss
        )
    } else if stats.epoch == 0 {
        format!("Epoch 0/{epochs} (initial model)")
    } else {
        format!(
            "Epoch {}/{} - {:.2}s - {:.0} records/s - loss: {:.4}",
            stats.epoch, epochs, stats.seconds, stats.records_per_second, stats.loss
        )
    };
    let figures = [
        ("accuracy", stats.accuracy),
        ("mae", stats.mae),
        ("val_loss", stats.val_loss),
        ("val_accuracy", stats.val_accuracy),
        ("val_mae", stats.val_mae),
    ];
    for (name, value) in figures {
        if let Some(v) = value {
            line.push_str(&format!(" - {name}: {v:.4}"));
        }
    }
    line
}

/// Exit 2 for what is wrong before anything is read (flags, the initial model, a broker or
/// topic that is not there), as `run` does; 1 for anything else.
fn failed(e: &TrainError) -> ExitCode {
    eprintln!("error: {e}");
    match e {
        TrainError::Option { .. } | TrainError::Init { .. } => ExitCode::from(2),
        TrainError::Dataset(DatasetError::Kafka(k)) if k.is_startup() => ExitCode::from(2),
        _ => ExitCode::from(1),
    }
}
