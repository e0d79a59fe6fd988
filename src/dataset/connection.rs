//! Where a dataset or an output sequence connects: the one connection-options type that
//! [`KafkaDatasetBuilder`](super::KafkaDatasetBuilder),
//! [`KafkaGroupDatasetBuilder`](super::KafkaGroupDatasetBuilder) and
//! [`OutputConfig`](super::OutputConfig) share.

use std::sync::Arc;

use rskafka::client::Client;

use super::DatasetError;
use crate::kafka::{connect, parse_brokers, KafkaConfig};

/// Brokers and client settings, or an already connected client to reuse.
///
/// ```
/// use streamtract::dataset::{Connection, KafkaDataset};
/// let connection = Connection::servers("127.0.0.1:9092");
/// let dataset = KafkaDataset::builder(["pixels"]).connection(connection.clone());
/// assert_eq!(connection.kafka().brokers, ["127.0.0.1:9092"]);
/// # let _ = dataset;
/// ```
#[derive(Debug, Clone)]
pub struct Connection {
    kafka: KafkaConfig,
    client: Option<Arc<Client>>,
}

impl Default for Connection {
    /// `localhost:9092`, tensorflow-io's default `servers`.
    fn default() -> Connection {
        Connection::servers("localhost:9092")
    }
}

impl Connection {
    /// Bootstrap servers, comma separated (tensorflow-io's `servers`), with default settings.
    pub fn servers(servers: &str) -> Connection {
        Connection::from(KafkaConfig::new(parse_brokers(servers)))
    }

    /// Replaces the bootstrap servers, keeping the other settings.
    pub fn with_servers(mut self, servers: &str) -> Connection {
        self.kafka.brokers = parse_brokers(servers);
        self
    }

    /// Reuses a connected client instead of connecting again; the brokers are then used for
    /// error messages (and by a group's coordinator connection, which is its own).
    pub fn with_client(mut self, client: Arc<Client>) -> Connection {
        self.client = Some(client);
        self
    }

    /// The connection settings (brokers, client id, timeouts, TLS and SASL).
    pub fn kafka(&self) -> &KafkaConfig {
        &self.kafka
    }

    pub(crate) fn kafka_mut(&mut self) -> &mut KafkaConfig {
        &mut self.kafka
    }

    /// Refuses a connection with neither a bootstrap server nor a client.
    pub(crate) fn check(&self) -> Result<(), DatasetError> {
        if self.kafka.brokers.is_empty() && self.client.is_none() {
            return Err(DatasetError::InvalidOption {
                option: "servers",
                reason: "no bootstrap server given; e.g. `127.0.0.1:9092`".into(),
            });
        }
        Ok(())
    }

    /// The client to use: the one given, or a new connection.
    pub(crate) async fn connect(&self) -> Result<Arc<Client>, DatasetError> {
        match &self.client {
            Some(client) => Ok(Arc::clone(client)),
            None => Ok(connect(&self.kafka).await?),
        }
    }
}

impl From<KafkaConfig> for Connection {
    fn from(kafka: KafkaConfig) -> Connection {
        Connection {
            kafka,
            client: None,
        }
    }
}

/// The connection setters every dataset builder has, on a builder with a `connection:
/// Connection` field: tensorflow-io's `servers`, the whole [`KafkaConfig`], a client to reuse,
/// and the [`Connection`] itself. One definition, so the three builders cannot drift apart.
macro_rules! connection_setters {
    () => {
        /// Bootstrap servers, comma separated (tensorflow-io's `servers`). Default
        /// `localhost:9092`.
        pub fn servers(mut self, servers: &str) -> Self {
            self.connection = self.connection.with_servers(servers);
            self
        }

        /// Connection settings (brokers, client id, timeouts, TLS and SASL); replaces what
        /// [`servers`](Self::servers) and [`client`](Self::client) set.
        pub fn kafka_config(mut self, kafka: $crate::kafka::KafkaConfig) -> Self {
            self.connection = $crate::dataset::Connection::from(kafka);
            self
        }

        /// Reuses a connected client (e.g. the one an
        /// [`OutputSequence`]($crate::dataset::OutputSequence) writes with) instead of
        /// connecting again; see [`Connection::with_client`]($crate::dataset::Connection::with_client).
        pub fn client(mut self, client: ::std::sync::Arc<::rskafka::client::Client>) -> Self {
            self.connection = self.connection.with_client(client);
            self
        }

        /// Every connection setting at once (a
        /// [`Connection`]($crate::dataset::Connection), shared by the dataset builders and
        /// [`OutputConfig`]($crate::dataset::OutputConfig)).
        pub fn connection(mut self, connection: $crate::dataset::Connection) -> Self {
            self.connection = connection;
            self
        }
    };
}
pub(crate) use connection_setters;
