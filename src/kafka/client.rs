//! Connecting to the cluster and reading topic metadata.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use rskafka::client::{Client, ClientBuilder};
use rskafka::BackoffConfig;

use super::security::{SaslConfig, SaslMechanism, SecurityConfig, TlsConfig};
use super::KafkaError;

/// How to reach the cluster.
#[derive(Debug, Clone)]
pub struct KafkaConfig {
    /// Bootstrap brokers, `host:port`.
    pub brokers: Vec<String>,
    /// Client id sent to the broker (shows up in broker logs and quotas).
    pub client_id: String,
    /// How long to keep trying to reach a broker at start-up before giving up.
    pub connect_timeout: Duration,
    /// Upper bound on the retries of one request (fetch, produce, metadata) before it fails.
    ///
    /// rskafka retries with exponential backoff and, by default, forever; this puts a deadline
    /// on it so a dead broker surfaces as an error instead of a hang.
    pub request_timeout: Duration,
    /// TLS and SASL, used by every connection: sources, sinks and consumer-group coordinators.
    pub security: SecurityConfig,
}

impl KafkaConfig {
    /// A config for the given bootstrap brokers with default timeouts (connect 30 s, request 60 s).
    pub fn new(brokers: impl IntoIterator<Item = impl Into<String>>) -> KafkaConfig {
        KafkaConfig {
            brokers: brokers.into_iter().map(Into::into).collect(),
            client_id: "streamtract".into(),
            connect_timeout: Duration::from_secs(30),
            request_timeout: Duration::from_secs(60),
            security: SecurityConfig::default(),
        }
    }

    /// Connects with TLS.
    pub fn tls(mut self, tls: TlsConfig) -> KafkaConfig {
        self.security.tls = Some(tls);
        self
    }

    /// Authenticates with SASL.
    pub fn sasl(mut self, sasl: SaslConfig) -> KafkaConfig {
        self.security.sasl = Some(sasl);
        self
    }

    pub(crate) fn brokers_display(&self) -> String {
        self.brokers.join(",")
    }
}

/// Splits a comma-separated bootstrap list (`"a:9092, b:9092"`), dropping blanks.
///
/// ```
/// assert_eq!(streamtract::kafka::parse_brokers(" a:1,,b:2 "), ["a:1", "b:2"]);
/// ```
pub fn parse_brokers(list: &str) -> Vec<String> {
    list.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

/// Connects to the cluster, retrying until `connect_timeout`.
///
/// The error names the brokers tried and the last failure. With TLS or SASL on, a rejected
/// certificate or password is reported at once (as [`KafkaError::Security`]), without retrying.
pub async fn connect(config: &KafkaConfig) -> Result<Arc<Client>, KafkaError> {
    connect_client(config, true).await
}

/// Another connection with the same settings, for work that must not wait behind other
/// requests. Brokers answer the requests of one connection one at a time, in order, so a fetch
/// the broker holds open (up to `fetch_max_wait`) delays everything queued behind it on that
/// connection: each partition fetcher has a connection of its own, apart from the producer's.
/// Skips the up-front security check ([`connect`] made it already).
pub(crate) async fn connect_dedicated(config: &KafkaConfig) -> Result<Arc<Client>, KafkaError> {
    connect_client(config, false).await
}

async fn connect_client(
    config: &KafkaConfig,
    check_security: bool,
) -> Result<Arc<Client>, KafkaError> {
    if check_security && config.security.tls.is_none() {
        if let Some(sasl) = &config.security.sasl {
            if sasl.mechanism == SaslMechanism::Plain {
                tracing::warn!(user = %sasl.username, "SASL PLAIN without TLS sends the password in clear text");
            }
        }
    }
    let backoff = BackoffConfig {
        init_backoff: Duration::from_millis(100),
        max_backoff: Duration::from_secs(2),
        base: 2.0,
        deadline: Some(config.request_timeout),
    };
    let deadline = tokio::time::Instant::now() + config.connect_timeout;
    let mut last_error = String::from("no answer");
    loop {
        if check_security && config.security.is_enabled() {
            // rskafka retries a TLS or SASL failure like a network error until its deadline and
            // then reports it in its own words. One connection of our own first tells a refused
            // certificate or password apart and names the problem.
            match tokio::time::timeout_at(deadline, crate::kafka::group::check_security(config))
                .await
            {
                Ok(Err(e)) => return Err(KafkaError::Security(e)),
                Ok(Ok(())) => {}
                Err(_) => break,
            }
        }
        let mut builder = ClientBuilder::new(config.brokers.clone())
            .client_id(config.client_id.clone())
            .backoff_config(backoff.clone());
        if let Some(tls) = config.security.rskafka_tls() {
            builder = builder.tls_config(tls);
        }
        if let Some(sasl) = config.security.rskafka_sasl() {
            builder = builder.sasl_config(sasl);
        }
        let build = builder.build();
        // rskafka checks its deadline only between attempts; the outer timeout bounds a hung one.
        match tokio::time::timeout_at(deadline, build).await {
            Ok(Ok(client)) => return Ok(Arc::new(client)),
            Ok(Err(e)) => last_error = e.to_string(),
            Err(_) => break,
        }
        if tokio::time::Instant::now() + Duration::from_millis(500) >= deadline {
            break;
        }
        tracing::warn!(brokers = %config.brokers_display(), error = %last_error, "broker not reachable yet, retrying");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Err(KafkaError::Unreachable {
        brokers: config.brokers_display(),
        timeout_s: config.connect_timeout.as_secs(),
        message: last_error,
    })
}

/// Partitions of `topic`, or [`KafkaError::UnknownTopic`] naming the topics that do exist.
pub async fn topic_partitions(
    client: &Client,
    config: &KafkaConfig,
    topic: &str,
    role: &'static str,
) -> Result<BTreeSet<i32>, KafkaError> {
    let topics = client
        .list_topics()
        .await
        .map_err(|e| KafkaError::Metadata(e.to_string()))?;
    match topics.iter().find(|t| t.name == topic) {
        Some(t) if !t.partitions.is_empty() => Ok(t.partitions.clone()),
        _ => {
            let mut names: Vec<&str> = topics.iter().map(|t| t.name.as_str()).collect();
            names.sort_unstable();
            let hint = if names.is_empty() {
                " (the broker has no topics)".to_string()
            } else {
                format!(" (existing topics: {})", names.join(", "))
            };
            Err(KafkaError::UnknownTopic {
                topic: topic.to_string(),
                brokers: config.brokers_display(),
                role,
                hint,
            })
        }
    }
}
