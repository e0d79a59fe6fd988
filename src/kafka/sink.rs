//! Writing records to one output topic, in order per partition, with acknowledgements.
//!
//! Each output partition has a task that takes whatever records are queued for it (up to a
//! batch bound), produces them in one request and waits for the broker's acknowledgement
//! before sending the next. One request in flight per partition keeps the order of records
//! within a partition even when a request is retried.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use rskafka::client::partition::{Compression, PartitionClient, UnknownTopicHandling};
use rskafka::client::Client;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use super::client::{topic_partitions, KafkaConfig};
use super::partitioner::partition_for_key;
pub use super::record::{OutputRecord, SourceCoordinates};
use super::spool::writer::{Limits, Writer};
use super::spool::{Spool, SpoolError};
use super::KafkaError;

/// How the sink batches.
#[derive(Debug, Clone)]
pub struct SinkConfig {
    /// Output topic (must exist).
    pub topic: String,
    /// Most records in one produce request.
    pub max_batch_records: usize,
    /// Most bytes of keys, values and headers in one produce request.
    pub max_batch_bytes: usize,
    /// Records queued per partition before [`Sink::send`] waits.
    pub queue_per_partition: usize,
    /// Produce requests acknowledged and the records they carried (shared by clones).
    pub produces: super::RequestStats,
    /// Where records go while the output cluster cannot take them (see [`Spool`]); without
    /// one, a partition's writer waits for the cluster (up to the request timeout).
    pub spool: Option<Spool>,
}

impl SinkConfig {
    /// Defaults: up to 10,000 records or 1 MiB per request (librdkafka's `batch.num.messages`
    /// and `batch.size`), 4096 records queued per partition.
    pub fn new(topic: impl Into<String>) -> SinkConfig {
        SinkConfig {
            topic: topic.into(),
            max_batch_records: 10_000,
            max_batch_bytes: 1 << 20,
            queue_per_partition: 4096,
            produces: super::RequestStats::default(),
            spool: None,
        }
    }

    /// Writes through `spool` while the output cluster cannot take records.
    ///
    /// ```no_run
    /// use streamtract::kafka::{SinkConfig, Spool, SpoolConfig};
    /// # fn demo() -> Result<(), streamtract::kafka::SpoolError> {
    /// let spool = Spool::open(SpoolConfig::new("/var/lib/streamtract/spool", 512 << 20))?;
    /// let config = SinkConfig::new("scores").with_spool(spool);
    /// # let _ = config; Ok(()) }
    /// ```
    pub fn with_spool(mut self, spool: Spool) -> SinkConfig {
        self.spool = Some(spool);
        self
    }
}

/// An ordered, batching writer to one topic.
#[derive(Debug)]
pub struct Sink {
    topic: String,
    queues: Vec<mpsc::Sender<OutputRecord>>,
    tasks: JoinSet<Result<(), KafkaError>>,
    acked: Arc<AtomicU64>,
    acks: Option<mpsc::UnboundedSender<Vec<SourceCoordinates>>>,
    /// Keeps connecting a sink started without its cluster ([`Sink::start_offline`]).
    connector: Option<tokio::task::JoinHandle<()>>,
}

impl Sink {
    /// Connects to every partition of the output topic.
    ///
    /// When `acks` is given, the source coordinates of every acknowledged batch are sent to it,
    /// in order per output partition, which is what offset tracking builds on.
    pub async fn start(
        client: Arc<Client>,
        kafka: &KafkaConfig,
        config: &SinkConfig,
        acks: Option<mpsc::UnboundedSender<Vec<SourceCoordinates>>>,
    ) -> Result<Sink, KafkaError> {
        let partitions = topic_partitions(&client, kafka, &config.topic, "output")
            .await?
            .len() as i32;
        if let Some(spool) = &config.spool {
            check_spooled_partitions(spool, &config.topic, partitions)?;
            spool.remember_partitions(&config.topic, partitions)?;
        }
        let clients = partition_clients(&client, &config.topic, partitions).await?;
        let mut sink = Sink::assemble(config, acks, partitions);
        for (p, pc) in clients.into_iter().enumerate() {
            let (tx, rx) = mpsc::channel(config.queue_per_partition.max(1));
            sink.queues.push(tx);
            match &config.spool {
                Some(spool) => {
                    let writer = sink.writer(config, spool, p as i32, rx, Some(pc), None)?;
                    sink.tasks.spawn(writer.run_to_end());
                }
                None => {
                    sink.tasks.spawn(produce_partition(
                        pc,
                        rx,
                        config.clone(),
                        Arc::clone(&sink.acked),
                        sink.acks.clone(),
                    ));
                }
            }
        }
        Ok(sink)
    }

    /// Starts a spooled sink while the output cluster cannot be reached: every record goes to
    /// the spool, and a background task keeps connecting (`connect`) and, once it can, hands
    /// each partition's writer its connection, which then drains the spool.
    ///
    /// The partition count is the one the spool remembered from the last start with the
    /// cluster up; without one (a spool that never saw the topic) this fails.
    pub fn start_offline<F>(
        config: &SinkConfig,
        acks: Option<mpsc::UnboundedSender<Vec<SourceCoordinates>>>,
        connect: F,
    ) -> Result<Sink, KafkaError>
    where
        F: Fn() -> futures::future::BoxFuture<'static, Result<Arc<Client>, KafkaError>>
            + Send
            + 'static,
    {
        let Some(spool) = &config.spool else {
            return Err(KafkaError::Request {
                operation: "produce",
                topic: config.topic.clone(),
                partition: -1,
                message: "the output cluster is unreachable and there is no spool to write to"
                    .into(),
            });
        };
        let partitions = spool.remembered_partitions(&config.topic)?;
        check_spooled_partitions(spool, &config.topic, partitions)?;
        let mut sink = Sink::assemble(config, acks, partitions);
        let mut handoffs = Vec::new();
        for p in 0..partitions {
            let (tx, rx) = mpsc::channel(config.queue_per_partition.max(1));
            sink.queues.push(tx);
            let (give, take) = tokio::sync::oneshot::channel();
            handoffs.push(give);
            let writer = sink.writer(config, spool, p, rx, None, Some(take))?;
            sink.tasks.spawn(writer.run_to_end());
        }
        let topic = config.topic.clone();
        let retry = spool.config().retry_interval;
        sink.connector = Some(tokio::spawn(async move {
            loop {
                let clients = match connect().await {
                    Ok(client) => partition_clients(&client, &topic, partitions).await,
                    Err(e) => Err(e),
                };
                match clients {
                    Ok(clients) => {
                        tracing::info!(topic = %topic, "output cluster reached; sending the spool");
                        for (give, pc) in handoffs.into_iter().zip(clients) {
                            let _ = give.send(pc);
                        }
                        return;
                    }
                    Err(e) => tracing::debug!(error = %e, "output cluster still unreachable"),
                }
                tokio::time::sleep(retry).await;
            }
        }));
        Ok(sink)
    }

    fn assemble(
        config: &SinkConfig,
        acks: Option<mpsc::UnboundedSender<Vec<SourceCoordinates>>>,
        partitions: i32,
    ) -> Sink {
        Sink {
            topic: config.topic.clone(),
            queues: Vec::with_capacity(partitions.max(0) as usize),
            tasks: JoinSet::new(),
            acked: Arc::new(AtomicU64::new(0)),
            acks,
            connector: None,
        }
    }

    fn writer(
        &self,
        config: &SinkConfig,
        spool: &Spool,
        partition: i32,
        queue: mpsc::Receiver<OutputRecord>,
        pc: Option<PartitionClient>,
        later: Option<tokio::sync::oneshot::Receiver<PartitionClient>>,
    ) -> Result<Writer, KafkaError> {
        Ok(Writer {
            pc: pc.map(Arc::new),
            later,
            queue,
            limits: Limits {
                topic: config.topic.clone(),
                max_batch_records: config.max_batch_records,
                max_batch_bytes: config.max_batch_bytes,
                produces: config.produces.clone(),
            },
            spool: spool.clone(),
            partition: spool.partition(&config.topic, partition)?,
            stored: Arc::clone(&self.acked),
            acks: self.acks.clone(),
        })
    }

    /// The output topic.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Number of partitions of the output topic.
    pub fn partitions(&self) -> i32 {
        self.queues.len() as i32
    }

    /// The partition a record goes to: by key (murmur2, as the Java client's default
    /// partitioner) or, without a key, `fallback % partitions`.
    pub fn partition_for(&self, key: Option<&[u8]>, fallback: i32) -> i32 {
        match key {
            Some(k) => partition_for_key(k, self.partitions()),
            None => fallback.rem_euclid(self.partitions()),
        }
    }

    /// Queues a record for `partition`, waiting while that partition's queue is full.
    ///
    /// Fails if the partition's writer has stopped on an error; [`close`](Self::close) returns
    /// that error.
    pub async fn send(&self, partition: i32, record: OutputRecord) -> Result<(), KafkaError> {
        let queue = self
            .queues
            .get(partition as usize)
            .ok_or_else(|| KafkaError::Request {
                operation: "produce",
                topic: self.topic.clone(),
                partition,
                message: format!("no such partition (the topic has {})", self.queues.len()),
            })?;
        queue.send(record).await.map_err(|_| KafkaError::Request {
            operation: "produce",
            topic: self.topic.clone(),
            partition,
            message: "the partition writer stopped after an earlier error".into(),
        })
    }

    /// Records stored so far: acknowledged by the broker, or synced into the spool.
    pub fn acked(&self) -> u64 {
        self.acked.load(Ordering::Relaxed)
    }

    /// Waits until every queued record is acknowledged, then stops. Returns the first error.
    pub async fn close(mut self) -> Result<u64, KafkaError> {
        self.queues.clear();
        if let Some(connector) = self.connector.take() {
            connector.abort();
        }
        self.acks = None;
        let mut first_error = None;
        while let Some(done) = self.tasks.join_next().await {
            let result = done.unwrap_or_else(|e| {
                Err(KafkaError::Request {
                    operation: "produce",
                    topic: self.topic.clone(),
                    partition: -1,
                    message: format!("writer task failed: {e}"),
                })
            });
            if let Err(e) = result {
                first_error.get_or_insert(e);
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(self.acked()),
        }
    }
}

/// A connection to the leader of each partition of `topic`, in partition order (partition
/// numbers of a Kafka topic are 0..n; the partitioner relies on that).
async fn partition_clients(
    client: &Client,
    topic: &str,
    partitions: i32,
) -> Result<Vec<PartitionClient>, KafkaError> {
    let mut clients = Vec::with_capacity(partitions.max(0) as usize);
    for p in 0..partitions {
        let pc = client
            .partition_client(topic.to_string(), p, UnknownTopicHandling::Retry)
            .await
            .map_err(|e| KafkaError::request("connect to leader", topic, p, e))?;
        clients.push(pc);
    }
    Ok(clients)
}

/// Refuses a spool holding records for partitions the topic no longer has: they could not be
/// sent in order anywhere.
fn check_spooled_partitions(spool: &Spool, topic: &str, partitions: i32) -> Result<(), KafkaError> {
    match spool
        .partitions_on_disk(topic)
        .into_iter()
        .find(|&p| p >= partitions)
    {
        Some(partition) => Err(KafkaError::from(SpoolError::PartitionGone {
            topic: topic.to_string(),
            partition,
            partitions,
            dir: spool.partition_dir(topic, partition),
        })),
        None => Ok(()),
    }
}

async fn produce_partition(
    pc: PartitionClient,
    mut queue: mpsc::Receiver<OutputRecord>,
    config: SinkConfig,
    acked: Arc<AtomicU64>,
    acks: Option<mpsc::UnboundedSender<Vec<SourceCoordinates>>>,
) -> Result<(), KafkaError> {
    let mut batch = Vec::new();
    let mut sources = Vec::new();
    while let Some(first) = queue.recv().await {
        let mut bytes = 0;
        let mut next = Some(first);
        // Take what is already queued: while a request is in flight the queue fills, so the
        // batch size follows the load without a linger timer.
        while let Some(r) = next.take() {
            let (record, source) = r.into_parts();
            sources.extend(source);
            bytes += record.approximate_size();
            batch.push(record);
            if batch.len() < config.max_batch_records && bytes < config.max_batch_bytes {
                next = queue.try_recv().ok();
            }
        }
        let n = batch.len() as u64;
        pc.produce(std::mem::take(&mut batch), Compression::NoCompression)
            .await
            .map_err(|e| KafkaError::Request {
                operation: "produce",
                topic: config.topic.clone(),
                partition: pc.partition(),
                message: e.to_string(),
            })?;
        acked.fetch_add(n, Ordering::Relaxed);
        config.produces.add(n as usize, bytes);
        let done = std::mem::take(&mut sources);
        if let Some(acks) = &acks {
            let _ = acks.send(done);
        }
    }
    Ok(())
}
