//! Where a dataset or an output sequence connects: the one connection-options type that
//! [`KafkaDatasetBuilder`](super::KafkaDatasetBuilder),
//! [`KafkaGroupDatasetBuilder`](super::KafkaGroupDatasetBuilder) and
//! [`OutputConfig`](super::OutputConfig) share, and the one mapping of librdkafka's connection
//! keys (the `key=value` entries of tensorflow-io's `configuration` lists) onto it.
//!
//! A `configuration` list is read entry by entry: a connection key (brokers, client id,
//! timeouts, `security.protocol`, `ssl.*`, `sasl.*`) is taken here, a key of the builder's own
//! (a group's `session.timeout.ms`, an output's `batch.num.messages`) by the builder, a key in
//! `IGNORED_KEYS` is accepted without effect, and anything else is refused with an error
//! naming the key and listing the accepted ones. The security keys are checked together, as
//! librdkafka would use them, when the dataset is opened (or at once by
//! [`Connection::configuration`]).

use std::sync::Arc;

use rskafka::client::Client;

use super::librdkafka::*;
use super::DatasetError;
use crate::kafka::{connect, parse_brokers, KafkaConfig, Password};

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
    /// The security keys of `configuration` lists, checked together and applied to `kafka`
    /// when the dataset is opened ([`prepare`](Self::prepare)).
    security_keys: Option<SecurityKeys>,
    /// `configuration` keys accepted without effect, logged by `prepare`.
    ignored: Vec<String>,
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

    /// Applies librdkafka `key=value` entries, tensorflow-io's `configuration` list, and checks
    /// them at once: TLS files are read here, so a missing CA file or a key that does not
    /// belong to its certificate is reported now.
    ///
    /// These are the connection keys every builder's `configuration` accepts
    /// ([`KafkaDatasetBuilder::configuration`](super::KafkaDatasetBuilder::configuration),
    /// [`KafkaGroupDatasetBuilder::configuration`](super::KafkaGroupDatasetBuilder::configuration),
    /// [`OutputConfig::configuration`](super::OutputConfig::configuration)); the builders add
    /// keys of their own. Keys are matched as librdkafka does (case matters); values are
    /// trimmed, except passwords.
    ///
    /// | key | sets |
    /// |---|---|
    /// | `bootstrap.servers`, `metadata.broker.list` | the bootstrap brokers, comma separated |
    /// | `client.id` | [`KafkaConfig::client_id`] |
    /// | `socket.timeout.ms`, `request.timeout.ms` | [`KafkaConfig::request_timeout`] |
    /// | `socket.connection.setup.timeout.ms` | [`KafkaConfig::connect_timeout`] |
    /// | `security.protocol` | `plaintext` (librdkafka's default), `ssl`, `sasl_plaintext` or `sasl_ssl`, any case |
    /// | `ssl.ca.location` | the CA file the brokers' certificates must chain to ([`TlsConfig::from_ca_file`]); without it, or as `probe`, the system's CA bundle ([`TlsConfig::from_system_roots`]) |
    /// | `ssl.certificate.location`, `ssl.key.location` | a client certificate and its key, PEM (mutual TLS, [`TlsConfig::with_client_cert`]); both or neither |
    /// | `ssl.endpoint.identification.algorithm` | `https` only (librdkafka's default): host names are always verified |
    /// | `enable.ssl.certificate.verification` | `true` only: certificates are always verified |
    /// | `sasl.mechanism`, `sasl.mechanisms` | `PLAIN`, `SCRAM-SHA-256` or `SCRAM-SHA-512`, any case ([`SaslMechanism`]) |
    /// | `sasl.username`, `sasl.password` | the [`SaslConfig`] credentials |
    ///
    /// Accepted without effect (logged): `api.version.request`, `api.version.fallback.ms`,
    /// `broker.version.fallback`, `socket.keepalive.enable`, `log_level`, `debug`,
    /// `log.connection.close`, `statistics.interval.ms`. Any other key is an error naming it
    /// and listing the accepted keys.
    ///
    /// When the list holds a security key, TLS and SASL come from the list alone, as in
    /// librdkafka, replacing those of the [`KafkaConfig`] given before. They are checked
    /// together: `ssl.*` keys need `security.protocol=ssl` or `sasl_ssl`, `sasl.*` keys need
    /// `sasl_plaintext` or `sasl_ssl` (librdkafka would silently ignore them under its default,
    /// `plaintext`; here that is an error), and the `sasl_*` protocols need `sasl.mechanism`,
    /// `sasl.username` and `sasl.password`.
    ///
    /// Errors are [`DatasetError::InvalidOption`] with option `configuration`, naming the entry
    /// (a password shows as `<redacted>`) and what to do.
    ///
    /// ```
    /// use streamtract::dataset::{Connection, KafkaDataset};
    /// use streamtract::kafka::SaslMechanism;
    /// # fn main() -> Result<(), streamtract::dataset::DatasetError> {
    /// let connection = Connection::default().configuration([
    ///     "bootstrap.servers=broker-1:9092,broker-2:9092",
    ///     "security.protocol=SASL_PLAINTEXT",
    ///     "sasl.mechanism=SCRAM-SHA-512",
    ///     "sasl.username=alice",
    ///     "sasl.password=correct horse",
    ///     "api.version.request=true",
    /// ])?;
    /// let kafka = connection.kafka();
    /// assert_eq!(kafka.brokers, ["broker-1:9092", "broker-2:9092"]);
    /// let sasl = kafka.security.sasl.as_ref().unwrap();
    /// assert_eq!((sasl.mechanism, sasl.username.as_str()), (SaslMechanism::ScramSha512, "alice"));
    /// assert!(kafka.security.tls.is_none());
    ///
    /// let err = Connection::default()
    ///     .configuration(["sasl.username=alice", "sasl.password=secret"])
    ///     .unwrap_err()
    ///     .to_string();
    /// assert!(err.contains("`security.protocol` is not set"), "{err}");
    /// assert!(!err.contains("secret"));
    /// let dataset = KafkaDataset::builder(["pixels"]).connection(connection);
    /// # let _ = dataset;
    /// # Ok(()) }
    /// ```
    pub fn configuration(
        mut self,
        entries: impl IntoIterator<Item = impl AsRef<str>>,
    ) -> Result<Connection, DatasetError> {
        for text in entries {
            let text = text.as_ref();
            if let Some(entry) = self.offer(text).map_err(configuration_error)? {
                return Err(configuration_error(entry.unknown("a connection", &[])));
            }
        }
        self.apply_security_keys()?;
        Ok(self)
    }

    /// The connection settings (brokers, client id, timeouts, TLS and SASL). Security keys a
    /// builder's `configuration` list gave are applied to them when the dataset is opened.
    pub fn kafka(&self) -> &KafkaConfig {
        &self.kafka
    }

    /// Takes one `configuration` entry if it is a connection key (or one accepted without
    /// effect): `Ok(None)`. Any other key comes back for the builder to try: `Ok(Some(..))`.
    /// The error is the reason, naming the entry.
    pub(crate) fn offer<'e>(&mut self, text: &'e str) -> Result<Option<Entry<'e>>, String> {
        let entry = Entry::parse(text)?;
        Ok((!self.configure(&entry)?).then_some(entry))
    }

    /// Applies a connection key: `Ok(true)` when taken, `Ok(false)` when `entry` is not a
    /// connection key. Security keys are only gathered here; [`prepare`](Self::prepare)
    /// checks them together.
    pub(crate) fn configure(&mut self, entry: &Entry<'_>) -> Result<bool, String> {
        let value = entry.value;
        match entry.key {
            "bootstrap.servers" | "metadata.broker.list" => {
                let brokers = parse_brokers(value);
                if brokers.is_empty() {
                    return Err(entry.invalid("no broker given; e.g. `127.0.0.1:9092`"));
                }
                self.kafka.brokers = brokers;
            }
            "client.id" => {
                if value.is_empty() {
                    return Err(entry.invalid("the client id is empty"));
                }
                self.kafka.client_id = value.to_string();
            }
            "socket.timeout.ms" | "request.timeout.ms" => {
                self.kafka.request_timeout = entry.positive_millis()?;
            }
            "socket.connection.setup.timeout.ms" => {
                self.kafka.connect_timeout = entry.positive_millis()?;
            }
            "security.protocol" => {
                self.security_keys().protocol = Some(value.parse().map_err(|e| entry.invalid(e))?);
            }
            "ssl.ca.location" => {
                self.security_keys().ca = Some(if value.eq_ignore_ascii_case("probe") {
                    CaLocation::System
                } else {
                    CaLocation::File(entry.path()?)
                });
            }
            "ssl.certificate.location" => self.security_keys().cert = Some(entry.path()?),
            "ssl.key.location" => self.security_keys().key = Some(entry.path()?),
            "ssl.endpoint.identification.algorithm" => {
                if !value.eq_ignore_ascii_case("https") {
                    return Err(entry.invalid(
                        "host names are always verified against the broker's certificate \
                         (librdkafka's default, `https`); remove the entry, and connect with a \
                         name or address the certificate lists",
                    ));
                }
            }
            "enable.ssl.certificate.verification" => {
                if !entry.boolean()? {
                    return Err(entry.invalid(
                        "brokers' certificates are always verified; remove the entry, and give \
                         the CA that signed them with `ssl.ca.location`",
                    ));
                }
            }
            "sasl.mechanism" | "sasl.mechanisms" => {
                self.security_keys().mechanism =
                    Some(parse_mechanism(value).map_err(|e| entry.invalid(e))?);
            }
            "sasl.username" => {
                if value.is_empty() {
                    return Err(entry.invalid("the user name is empty"));
                }
                self.security_keys().username = Some(value.to_string());
            }
            "sasl.password" => {
                if value.is_empty() {
                    return Err(entry.invalid("the password is empty"));
                }
                self.security_keys().password = Some(Password::new(value));
            }
            key => {
                if !IGNORED_KEYS.iter().any(|(k, _)| *k == key) {
                    return Ok(false);
                }
                self.ignored.push(key.to_string());
            }
        }
        Ok(true)
    }

    /// The keys accepted without effect so far.
    #[cfg(test)]
    pub(crate) fn ignored_keys(&self) -> &[String] {
        &self.ignored
    }

    fn security_keys(&mut self) -> &mut SecurityKeys {
        self.security_keys.get_or_insert_with(SecurityKeys::default)
    }

    /// Turns the gathered security keys into the TLS and SASL settings (reading the TLS
    /// files), replacing those of the [`KafkaConfig`].
    fn apply_security_keys(&mut self) -> Result<(), DatasetError> {
        if let Some(keys) = self.security_keys.take() {
            self.kafka.security = keys.resolve().map_err(configuration_error)?;
        }
        Ok(())
    }

    /// Refuses a connection with neither a bootstrap server nor a client, or with security
    /// keys that do not go together.
    pub(crate) fn check(&self) -> Result<(), DatasetError> {
        if let Some(keys) = &self.security_keys {
            keys.check().map_err(configuration_error)?;
        }
        if self.kafka.brokers.is_empty() && self.client.is_none() {
            return Err(DatasetError::InvalidOption {
                option: "servers",
                reason: "no bootstrap server given; e.g. `127.0.0.1:9092`".into(),
            });
        }
        Ok(())
    }

    /// Before connecting: checks, applies the security keys of `configuration` lists (reading
    /// the TLS files) and logs the keys accepted without effect.
    pub(crate) fn prepare(&mut self) -> Result<(), DatasetError> {
        self.check()?;
        self.apply_security_keys()?;
        for key in self.ignored.drain(..) {
            let why = IGNORED_KEYS
                .iter()
                .find(|(k, _)| *k == key)
                .map_or("", |(_, why)| why);
            tracing::info!(key = %key, "librdkafka configuration key accepted without effect: {why}");
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
            security_keys: None,
            ignored: Vec::new(),
        }
    }
}

/// The error of a `configuration` entry (or of its security keys taken together).
pub(crate) fn configuration_error(reason: String) -> DatasetError {
    DatasetError::InvalidOption {
        option: "configuration",
        reason,
    }
}

/// Feeds tensorflow-io `configuration` entries to a builder: connection keys to its
/// [`Connection`] (`connection` finds it), every other key to its own `apply`. Returns the
/// first refusal, which the builder keeps for `open` to report.
pub(crate) fn take_configuration<B>(
    builder: &mut B,
    entries: impl IntoIterator<Item = impl AsRef<str>>,
    connection: fn(&mut B) -> &mut Connection,
    apply: fn(&mut B, &Entry<'_>) -> Result<(), String>,
) -> Option<String> {
    let mut first = None;
    for text in entries {
        let result = match connection(builder).offer(text.as_ref()) {
            Ok(Some(entry)) => apply(builder, &entry),
            Ok(None) => Ok(()),
            Err(reason) => Err(reason),
        };
        if let Err(reason) = result {
            first.get_or_insert(reason);
        }
    }
    first
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
        /// [`servers`](Self::servers), [`client`](Self::client) and the connection keys of
        /// [`configuration`](Self::configuration) set.
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
        /// [`OutputConfig`]($crate::dataset::OutputConfig)); replaces what the other
        /// connection setters and the connection keys of [`configuration`](Self::configuration)
        /// set.
        pub fn connection(mut self, connection: $crate::dataset::Connection) -> Self {
            self.connection = connection;
            self
        }
    };
}
pub(crate) use connection_setters;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataset::{KafkaDataset, KafkaGroupDataset, OutputConfig};
    use std::fmt;
    use std::time::Duration;

    use crate::kafka::{SaslConfig, SaslMechanism};

    /// The connection of `entries`, applied and checked, or the error text.
    fn configured(entries: &[&str]) -> Result<Connection, String> {
        Connection::default()
            .configuration(entries)
            .map_err(|e| e.to_string())
    }

    fn refused(entries: &[&str]) -> String {
        match configured(entries) {
            Ok(c) => panic!("{entries:?} accepted: {c:?}"),
            Err(e) => e,
        }
    }

    /// A CA, and a client certificate and key it signed, as PEM files in `dir`.
    fn pki(dir: &std::path::Path) -> (String, String, String, String) {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_key = KeyPair::generate().unwrap();
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca, ca_key);
        let leaf = CertificateParams::new(vec!["client.test".to_string()]).unwrap();
        let key = KeyPair::generate().unwrap();
        let cert = leaf.signed_by(&key, &issuer).unwrap();
        let other_key = KeyPair::generate().unwrap();
        let write = |name: &str, pem: String| {
            let path = dir.join(name);
            std::fs::write(&path, pem).unwrap();
            path.to_str().unwrap().to_string()
        };
        (
            write("ca.pem", ca_cert.pem()),
            write("client.pem", cert.pem()),
            write("client.key", key.serialize_pem()),
            write("other.key", other_key.serialize_pem()),
        )
    }

    #[test]
    fn plain_connection_keys_map_to_the_kafka_config() {
        let c = configured(&[
            "bootstrap.servers= a:1, b:2 ",
            "client.id=edge-7",
            "socket.timeout.ms=2500",
            "socket.connection.setup.timeout.ms=1500",
        ])
        .unwrap();
        let k = c.kafka();
        assert_eq!(k.brokers, ["a:1", "b:2"]);
        assert_eq!(k.client_id, "edge-7");
        assert_eq!(k.request_timeout, Duration::from_millis(2500));
        assert_eq!(k.connect_timeout, Duration::from_millis(1500));
        assert!(!k.security.is_enabled());

        let c = configured(&["metadata.broker.list=c:3", "request.timeout.ms=900"]).unwrap();
        assert_eq!(c.kafka().brokers, ["c:3"]);
        assert_eq!(c.kafka().request_timeout, Duration::from_millis(900));
        // tensorflow-io's topic prefix is dropped.
        let c = configured(&["conf.topic.request.timeout.ms=700"]).unwrap();
        assert_eq!(c.kafka().request_timeout, Duration::from_millis(700));
    }

    #[test]
    fn bad_values_name_the_entry() {
        for (entry, expected) in [
            ("bootstrap.servers= ,", "no broker given"),
            ("client.id=", "client id is empty"),
            ("socket.timeout.ms=soon", "milliseconds above 0"),
            ("request.timeout.ms=0", "milliseconds above 0"),
            (
                "socket.connection.setup.timeout.ms=-1",
                "milliseconds above 0",
            ),
            (
                "security.protocol=tls",
                "`plaintext`, `ssl`, `sasl_plaintext` or `sasl_ssl`",
            ),
            (
                "sasl.mechanism=SCRAM-SHA-1",
                "PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512",
            ),
            (
                "sasl.mechanism=GSSAPI",
                "GSSAPI and OAUTHBEARER are not supported",
            ),
            ("sasl.username=", "user name is empty"),
            ("ssl.ca.location=", "path of a PEM file"),
            (
                "ssl.endpoint.identification.algorithm=none",
                "always verified",
            ),
            (
                "enable.ssl.certificate.verification=false",
                "always verified",
            ),
            (
                "enable.ssl.certificate.verification=maybe",
                "`true` or `false`",
            ),
            ("security.protocol", "expected `key=value`"),
            ("=ssl", "expected `key=value`"),
        ] {
            let e = refused(&[entry]);
            assert!(
                e.starts_with(&format!("`configuration`: `{entry}`: ")) && e.contains(expected),
                "{entry}: {e}"
            );
        }
        // Harmless values of the verification keys are accepted.
        configured(&[
            "ssl.endpoint.identification.algorithm=HTTPS",
            "enable.ssl.certificate.verification=true",
        ])
        .unwrap();
    }

    #[test]
    fn sasl_keys_map_to_sasl_settings_in_any_case() {
        for (protocol, mechanism, expected) in [
            ("SASL_PLAINTEXT", "PLAIN", SaslMechanism::Plain),
            (
                "sasl_plaintext",
                "scram-sha-256",
                SaslMechanism::ScramSha256,
            ),
            (
                "Sasl_Plaintext",
                "SCRAM-SHA-512",
                SaslMechanism::ScramSha512,
            ),
        ] {
            let c = configured(&[
                &format!("security.protocol={protocol}"),
                &format!("sasl.mechanisms={mechanism}"),
                "sasl.username=alice",
                "sasl.password= pass=word ",
            ])
            .unwrap();
            let sasl = c.kafka().security.sasl.as_ref().unwrap();
            assert_eq!(sasl.mechanism, expected);
            assert_eq!(sasl.username, "alice");
            // A password is taken as written: spaces and `=` included.
            assert_eq!(sasl.password.expose(), " pass=word ");
            assert!(c.kafka().security.tls.is_none());
        }
    }

    #[test]
    fn tls_keys_map_to_tls_settings() {
        let dir = tempfile::tempdir().unwrap();
        let (ca, cert, key, other_key) = pki(dir.path());
        let c = configured(&["security.protocol=SSL", &format!("ssl.ca.location={ca}")]).unwrap();
        let tls = c.kafka().security.tls.as_ref().unwrap();
        assert!(format!("{tls:?}").contains("ca.pem"), "{tls:?}");
        assert!(c.kafka().security.sasl.is_none());

        // Mutual TLS, with SASL on top.
        let c = configured(&[
            "security.protocol=sasl_ssl",
            &format!("ssl.ca.location={ca}"),
            &format!("ssl.certificate.location={cert}"),
            &format!("ssl.key.location={key}"),
            "sasl.mechanism=SCRAM-SHA-512",
            "sasl.username=alice",
            "sasl.password=pw",
        ])
        .unwrap();
        let tls = c.kafka().security.tls.as_ref().unwrap();
        assert!(format!("{tls:?}").contains("client.pem"), "{tls:?}");
        assert!(c.kafka().security.sasl.is_some());

        // File problems name the librdkafka key and the file.
        let e = refused(&[
            "security.protocol=ssl",
            "ssl.ca.location=/nonexistent/ca.pem",
        ]);
        assert!(
            e.contains("`ssl.ca.location` (/nonexistent/ca.pem): cannot read it"),
            "{e}"
        );
        let e = refused(&[
            "security.protocol=ssl",
            &format!("ssl.ca.location={}", dir.path().display()),
        ]);
        assert!(e.contains("is a directory"), "{e}");
        let e = refused(&[
            "security.protocol=ssl",
            &format!("ssl.ca.location={ca}"),
            &format!("ssl.certificate.location={cert}"),
            &format!("ssl.key.location={other_key}"),
        ]);
        assert!(
            e.contains("`ssl.key.location`")
                && e.contains("does not belong to the certificate in ssl.certificate.location"),
            "{e}"
        );
        let e = refused(&["security.protocol=ssl", &format!("ssl.ca.location={key}")]);
        assert!(
            e.contains("`ssl.ca.location`") && e.contains("CERTIFICATE"),
            "{e}"
        );
    }

    #[test]
    fn tls_without_a_ca_uses_the_system_bundle() {
        // Whether or not this machine has a CA bundle, TLS without `ssl.ca.location` (or with
        // `probe`) means the system's, and an error says so.
        for entries in [
            &["security.protocol=ssl"][..],
            &["security.protocol=ssl", "ssl.ca.location=probe"],
        ] {
            match configured(entries) {
                Ok(c) => {
                    let tls = c.kafka().security.tls.as_ref().unwrap();
                    assert!(format!("{tls:?}").contains("system CA bundle"), "{tls:?}");
                }
                Err(e) => assert!(e.contains("no system CA bundle was found"), "{e}"),
            }
        }
    }

    #[test]
    fn security_keys_that_do_not_go_together_are_refused() {
        for (entries, expected) in [
            (
                &["sasl.username=alice", "sasl.password=pw"][..],
                "`sasl.username` is given but `security.protocol` is not set",
            ),
            (
                &["ssl.ca.location=/x/ca.pem"],
                "add `security.protocol=ssl`",
            ),
            (
                &["ssl.ca.location=/x/ca.pem", "sasl.username=alice"],
                "add `security.protocol=sasl_ssl`",
            ),
            (
                &["security.protocol=plaintext", "sasl.username=alice"],
                "`sasl.username` is given but `security.protocol=plaintext` does not authenticate",
            ),
            (
                &["security.protocol=plaintext", "ssl.ca.location=/x/ca.pem"],
                "`security.protocol=plaintext` uses no TLS: set `security.protocol=ssl`",
            ),
            (
                &["security.protocol=ssl", "sasl.mechanism=PLAIN"],
                "`sasl.mechanism` is given but `security.protocol=ssl` does not authenticate: set `security.protocol` to `sasl_ssl`",
            ),
            (
                &["security.protocol=sasl_plaintext", "ssl.ca.location=/x/ca.pem", "sasl.mechanism=PLAIN", "sasl.username=a", "sasl.password=p"],
                "uses no TLS: set `security.protocol=sasl_ssl`",
            ),
            (
                &["security.protocol=sasl_ssl", "sasl.mechanism=PLAIN", "sasl.password=p"],
                "`security.protocol=sasl_ssl` needs `sasl.username`",
            ),
            (
                &["security.protocol=SASL_SSL", "sasl.username=a", "sasl.password=p"],
                "needs `sasl.mechanism` (PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512; librdkafka's default, GSSAPI, is not supported)",
            ),
            (
                &["security.protocol=sasl_plaintext", "sasl.mechanism=PLAIN", "sasl.username=a"],
                "needs `sasl.password`",
            ),
            (
                &["security.protocol=ssl", "ssl.certificate.location=/x/c.pem"],
                "`ssl.certificate.location` is given without `ssl.key.location`",
            ),
            (
                &["security.protocol=ssl", "ssl.key.location=/x/c.key"],
                "`ssl.key.location` is given without `ssl.certificate.location`",
            ),
        ] {
            let e = refused(entries);
            assert!(
                e.starts_with("`configuration`: ") && e.contains(expected),
                "{entries:?}: {e}"
            );
        }
    }

    #[test]
    fn a_security_list_replaces_the_kafka_configs_security() {
        let kafka = KafkaConfig::new(["a:1"]).sasl(SaslConfig::new(
            SaslMechanism::Plain,
            "bob",
            Password::new("pw"),
        ));
        // Without security keys, the config's TLS and SASL stay.
        let c = Connection::from(kafka.clone())
            .configuration(["client.id=x"])
            .unwrap();
        assert!(c.kafka().security.sasl.is_some());
        // With one, they come from the list alone (here: plaintext).
        let c = Connection::from(kafka)
            .configuration(["security.protocol=plaintext"])
            .unwrap();
        assert!(!c.kafka().security.is_enabled());
    }

    #[test]
    fn passwords_never_show_in_errors_or_debug() {
        let e = refused(&["sasl.password=hunter2"]);
        assert!(!e.contains("hunter2"), "{e}");
        let e = refused(&["sasl.password="]);
        assert!(
            e.contains("`sasl.password=<redacted>`: the password is empty"),
            "{e}"
        );
        let e = refused(&["ssl.key.password=hunter2"]);
        assert!(
            e.contains("`ssl.key.password=<redacted>`: encrypted private keys are not supported")
                && !e.contains("hunter2"),
            "{e}"
        );
        let b = KafkaDataset::builder(["t"])
            .configuration(["security.protocol=sasl_ssl", "sasl.password=hunter2"]);
        assert!(!format!("{b:?}").contains("hunter2"));
    }

    #[test]
    fn unknown_keys_are_refused_with_the_accepted_keys() {
        let e = refused(&["fetch.min.bytes=1"]);
        assert!(
            e.starts_with(
                "`configuration`: `fetch.min.bytes=1`: unknown key `fetch.min.bytes`: a connection \
                 has no equivalent for it. Accepted keys: bootstrap.servers, metadata.broker.list, \
                 client.id,"
            ) && e.contains("accepted without effect: api.version.request,")
                && e.contains("docs/kafka-compat.md"),
            "{e}"
        );
        // Keys are matched as librdkafka matches them; a near miss gets a hint.
        let e = refused(&["Security.Protocol=ssl"]);
        assert!(e.contains("(did you mean `security.protocol`?)"), "{e}");
        let e = refused(&["sasl_username=alice"]);
        assert!(e.contains("(did you mean `sasl.username`?)"), "{e}");
        // librdkafka keys that cannot work here say why.
        for (entry, expected) in [
            ("ssl.keystore.location=k.p12", "PKCS#12"),
            ("ssl.ca.pem=-----BEGIN", "write it to a file"),
            ("sasl.kerberos.service.name=kafka", "GSSAPI"),
            ("sasl.oauthbearer.config=x", "OAUTHBEARER"),
            ("ssl.cipher.suites=ECDHE", "rustls"),
            ("group.instance.id=a", "static group membership"),
        ] {
            let e = refused(&[entry]);
            assert!(e.contains(expected), "{entry}: {e}");
        }
        // Harmless keys are accepted and remembered for the log.
        let c =
            configured(&["api.version.request=false", "broker.version.fallback=0.9.0"]).unwrap();
        assert_eq!(
            c.ignored_keys(),
            ["api.version.request", "broker.version.fallback"]
        );
    }

    #[test]
    fn each_builder_adds_its_own_keys_and_refuses_the_rest() {
        fn open_error(result: Result<impl fmt::Debug, DatasetError>) -> String {
            result.unwrap_err().to_string()
        }
        // KafkaDataset: group.id and enable.auto.commit=false.
        let e = open_error(
            KafkaDataset::builder(["t"])
                .configuration(["group.id=g", "enable.auto.commit=false", "linger.ms=5"])
                .open_blocking(),
        );
        assert!(
            e.contains("unknown key `linger.ms`: KafkaDataset has no equivalent")
                && e.contains("Accepted keys: group.id, enable.auto.commit, bootstrap.servers"),
            "{e}"
        );
        let e = open_error(
            KafkaDataset::builder(["t"])
                .configuration(["enable.auto.commit=true"])
                .open_blocking(),
        );
        assert!(e.contains("use KafkaGroupDataset"), "{e}");
        let e = open_error(
            KafkaDataset::builder(["t"])
                .configuration(["conf.topic.auto.offset.reset=earliest"])
                .open_blocking(),
        );
        assert!(e.contains("topic specs"), "{e}");
        // The first refusal is the one reported; security keys are checked at open.
        let e = open_error(
            KafkaDataset::builder(["t"])
                .configuration(["sasl.username=alice"])
                .open_blocking(),
        );
        assert!(e.contains("`security.protocol` is not set"), "{e}");

        // KafkaGroupDataset: its group keys, and the output's producer keys are unknown.
        let e = open_error(
            KafkaGroupDataset::builder(["t"], "g")
                .configuration(["session.timeout.ms=7000", "batch.num.messages=5"])
                .open_blocking(),
        );
        assert!(
            e.contains("unknown key `batch.num.messages`: KafkaGroupDataset has no equivalent")
                && e.contains("Accepted keys: group.id, auto.offset.reset, session.timeout.ms"),
            "{e}"
        );

        // Output: producer keys that say what the writer does (accepted ones: output.rs).
        for (entry, expected) in [
            ("acks=1", "every in-sync replica"),
            ("enable.idempotence=true", "not an idempotent producer"),
            ("compression.type=lz4", "uncompressed"),
            ("linger.ms=5", "no linger timer"),
            ("batch.num.messages=0", "above 0"),
            (
                "session.timeout.ms=7000",
                "unknown key `session.timeout.ms`: an output sequence",
            ),
        ] {
            let config = OutputConfig::new("out").unwrap().configuration([entry]);
            let e = open_error(crate::dataset::BlockingOutputSequence::open(&config));
            assert!(
                e.starts_with(&format!("`configuration`: `{entry}`: ")) && e.contains(expected),
                "{entry}: {e}"
            );
        }
    }
}
