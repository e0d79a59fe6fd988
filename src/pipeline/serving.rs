//! The model being served, with everything that depends on its signature: the decoder that
//! turns records into its input rows, the encoder of its outputs and the threads that run it.
//! A reload builds a new one and the run loop swaps it in between batches.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::PipelineConfig;
use super::{Error, Result};
use crate::codec::{Decoder, Encoder, OutputFormat};
use crate::model::{InferencePool, Model};

/// A loaded, checked and warmed-up model ready to take batches.
pub(crate) struct Serving {
    pub model: Model,
    pub decoder: Decoder,
    pub encoder: Encoder,
    /// Per input, the shape of one row (the input shape without the batch dimension).
    pub row_shapes: Vec<Vec<usize>>,
    pub pool: InferencePool,
    /// Hex SHA-256 of the model file, as written in the `model.sha256` header.
    pub sha: Arc<[u8]>,
    /// The model's `streamtract.version`, as written in the `model.version` header.
    pub version: Option<Arc<[u8]>>,
    /// How long loading, checking and compiling took (logged: it is the start-up cost).
    pub load_time: Duration,
}

impl Serving {
    /// Loads the model at `path`, checks it against the configured input and output formats,
    /// compiles the plans its batches will run on and starts its inference threads.
    pub async fn load(config: &PipelineConfig, path: &Path) -> Result<Serving> {
        let started = Instant::now();
        let owned = path.to_path_buf();
        let options = config.model_options.clone();
        let model = tokio::task::spawn_blocking(move || Model::load_with(owned, &options))
            .await
            .map_err(|e| Error::Internal(format!("model loading task: {e}")))??;
        let name = model.file_name();
        let decoder = Decoder::new(config.input_format.clone(), model.signature(), &name)?;
        let encoder = Encoder::new(config.output_format, model.signature(), config.top_k, &name)?;
        let encoder = register_output_schema(config, encoder).await?;
        let row_shapes = model
            .signature()
            .inputs
            .iter()
            .map(|i| i.row_shape().unwrap_or_default())
            .collect();
        // Compile the plans now (one per batch size, for some models), so that the first
        // batches do not pay for them.
        let warm = model.clone();
        let batch_size = config.batch_size;
        tokio::task::spawn_blocking(move || warm.warm_up(batch_size))
            .await
            .map_err(|e| Error::Internal(format!("model warm-up task: {e}")))??;
        let pool = InferencePool::new(&model, config.workers)?;
        let sha = Arc::from(model.sha256().as_bytes());
        let version = model.version().map(|v| Arc::from(v.as_bytes()));
        Ok(Serving {
            model,
            decoder,
            encoder,
            row_shapes,
            pool,
            sha,
            version,
            load_time: started.elapsed(),
        })
    }

    /// The SHA-256 as text.
    pub fn sha256(&self) -> &str {
        self.model.sha256()
    }
}

/// The Avro output formats: logs the generated schema; for Confluent Avro, registers it under
/// `<output topic>-value` (TopicNameStrategy) and frames the records with the id it gets.
async fn register_output_schema(config: &PipelineConfig, encoder: Encoder) -> Result<Encoder> {
    let Some(schema) = encoder.avro_schema() else {
        return Ok(encoder);
    };
    if config.output_format != OutputFormat::ConfluentAvro {
        tracing::info!(%schema, "output records are Avro datums of this schema");
        return Ok(encoder);
    }
    let Some(registry) = &config.schema_registry else {
        return Err(super::ConfigError::Missing {
            field: "schema_registry",
            flag: "schema-registry (output_format = \"confluent-avro\" registers its schema there)",
        }
        .into());
    };
    let subject = format!("{}-value", config.sink.topic);
    let id = registry.register(&subject, schema).await?;
    tracing::info!(%subject, id, registry = registry.url(), "output schema registered");
    Ok(encoder.with_schema_id(id))
}
