//! librdkafka's configuration keys as tensorflow-io programs pass them (`key=value` entries
//! of a `configuration` list): parsing an entry, the keys taken and ignored, and the security
//! keys checked together (librdkafka's `security.protocol`, `ssl.*`, `sasl.*`) and turned into
//! a [`SecurityConfig`]. [`Connection`](super::Connection) applies them.

use std::borrow::Cow;
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use crate::kafka::{Password, SaslConfig, SaslMechanism, SecurityConfig, SecurityError, TlsConfig};

/// The librdkafka keys every `configuration` list accepts: where and how to connect (the
/// table on [`Connection::configuration`] says what each sets).
pub(crate) const CONNECTION_KEYS: &[&str] = &[
    "bootstrap.servers",
    "metadata.broker.list",
    "client.id",
    "socket.timeout.ms",
    "request.timeout.ms",
    "socket.connection.setup.timeout.ms",
    "security.protocol",
    "ssl.ca.location",
    "ssl.certificate.location",
    "ssl.key.location",
    "ssl.endpoint.identification.algorithm",
    "enable.ssl.certificate.verification",
    "sasl.mechanism",
    "sasl.mechanisms",
    "sasl.username",
    "sasl.password",
];

/// librdkafka keys every `configuration` list accepts without effect, and why: they tune
/// librdkafka itself, with nothing here to tune, and ported lists often carry them
/// (tensorflow-io's bundled librdkafka needed `api.version.request=false` and
/// `broker.version.fallback` for some brokers). They are logged when the dataset is opened.
pub(crate) const IGNORED_KEYS: &[(&str, &str)] = &[
    (
        "api.version.request",
        "protocol versions are always negotiated with the broker",
    ),
    (
        "api.version.fallback.ms",
        "protocol versions are always negotiated with the broker",
    ),
    (
        "broker.version.fallback",
        "protocol versions are always negotiated with the broker",
    ),
    (
        "socket.keepalive.enable",
        "TCP keepalive is left to the operating system",
    ),
    (
        "log_level",
        "logs go through `tracing` (`RUST_LOG` for the binary)",
    ),
    (
        "debug",
        "logs go through `tracing` (`RUST_LOG` for the binary)",
    ),
    (
        "log.connection.close",
        "logs go through `tracing` (`RUST_LOG` for the binary)",
    ),
    (
        "statistics.interval.ms",
        "there is no statistics callback (the binary serves Prometheus metrics)",
    ),
];

/// Where the docs list every key.
pub(crate) const SEE_DOCS: &str = "see \"librdkafka configuration keys\" in docs/kafka-compat.md";

/// One `key=value` entry of a `configuration` list.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Entry<'a> {
    /// The entry as given, trimmed.
    text: &'a str,
    /// The key, trimmed, without tensorflow-io's `conf.topic.` prefix for topic settings.
    pub(crate) key: &'a str,
    /// The value: trimmed, except a password's.
    pub(crate) value: &'a str,
}

impl<'a> Entry<'a> {
    /// Splits `key=value` at the first `=` (a value may hold more).
    pub(crate) fn parse(text: &'a str) -> Result<Entry<'a>, String> {
        let expected = || {
            format!(
                "`{}`: expected `key=value`, e.g. `security.protocol=ssl`",
                text.trim()
            )
        };
        let (key, value) = text.split_once('=').ok_or_else(expected)?;
        let text = text.trim();
        let key = key.trim();
        let key = key.strip_prefix("conf.topic.").unwrap_or(key);
        if key.is_empty() {
            return Err(expected());
        }
        let value = if is_secret(key) { value } else { value.trim() };
        Ok(Entry { text, key, value })
    }

    /// The entry for messages, a secret value shown as `<redacted>`.
    pub(crate) fn shown(&self) -> Cow<'a, str> {
        if is_secret(self.key) {
            Cow::Owned(format!("{}=<redacted>", self.key))
        } else {
            Cow::Borrowed(self.text)
        }
    }

    /// "`entry`: reason".
    pub(crate) fn invalid(&self, reason: impl fmt::Display) -> String {
        format!("`{}`: {reason}", self.shown())
    }

    /// The refusal of a key that neither the connection nor the builder (`what`, accepting
    /// `own_keys`) takes: why, if librdkafka has it and it cannot work here, else which keys
    /// are accepted.
    pub(crate) fn unknown(&self, what: &str, own_keys: &[&str]) -> String {
        if let Some(reason) = unsupported(self.key) {
            return self.invalid(format!("{reason} ({SEE_DOCS})"));
        }
        let accepted: Vec<&str> = own_keys.iter().chain(CONNECTION_KEYS).copied().collect();
        let ignored: Vec<&str> = IGNORED_KEYS.iter().map(|(k, _)| *k).collect();
        let normal = |k: &str| k.to_ascii_lowercase().replace(['_', '-'], ".");
        let hint = accepted
            .iter()
            .chain(&ignored)
            .find(|k| normal(k) == normal(self.key))
            .map(|k| format!(" (did you mean `{k}`?)"))
            .unwrap_or_default();
        self.invalid(format!(
            "unknown key `{}`{hint}: {what} has no equivalent for it. Accepted keys: {}; accepted \
             without effect: {} ({SEE_DOCS})",
            self.key,
            accepted.join(", "),
            ignored.join(", "),
        ))
    }

    /// A number of milliseconds (0 included).
    pub(crate) fn millis(&self) -> Result<Duration, String> {
        self.value
            .parse::<u64>()
            .map(Duration::from_millis)
            .map_err(|_| self.invalid("expected a number of milliseconds"))
    }

    /// A number of milliseconds above zero.
    pub(crate) fn positive_millis(&self) -> Result<Duration, String> {
        match self.value.parse::<u64>() {
            Ok(ms) if ms > 0 => Ok(Duration::from_millis(ms)),
            _ => Err(self.invalid("expected a number of milliseconds above 0")),
        }
    }

    /// A count above zero.
    pub(crate) fn count(&self) -> Result<usize, String> {
        match self.value.parse::<usize>() {
            Ok(n) if n > 0 => Ok(n),
            _ => Err(self.invalid("expected a whole number above 0")),
        }
    }

    /// librdkafka's booleans: `true`/`false` (also `1`/`0`, `yes`/`no`, `on`/`off`), any case.
    pub(crate) fn boolean(&self) -> Result<bool, String> {
        match self.value.to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" | "on" => Ok(true),
            "false" | "0" | "no" | "off" => Ok(false),
            _ => Err(self.invalid("expected `true` or `false`")),
        }
    }

    /// A file path.
    pub(crate) fn path(&self) -> Result<PathBuf, String> {
        if self.value.is_empty() {
            return Err(self.invalid("expected the path of a PEM file"));
        }
        Ok(PathBuf::from(self.value))
    }
}

/// Keys whose values are never shown nor trimmed.
pub(crate) fn is_secret(key: &str) -> bool {
    key.contains("password") || key.contains("secret")
}

/// Why a librdkafka key that has no equivalent here cannot be given, when there is more to say
/// than "unknown key".
pub(crate) fn unsupported(key: &str) -> Option<&'static str> {
    Some(match key {
        "ssl.key.password" => {
            "encrypted private keys are not supported: decrypt the key (e.g. `openssl pkey -in \
             client.key -out client-plain.key`), point `ssl.key.location` at it and remove this \
             entry"
        }
        "ssl.keystore.location" | "ssl.keystore.password" => {
            "PKCS#12 keystores are not supported: give PEM files with `ssl.certificate.location` \
             and `ssl.key.location`"
        }
        "ssl.ca.pem" | "ssl.certificate.pem" | "ssl.key.pem" => {
            "PEM text in the configuration is not supported: write it to a file and give \
             `ssl.ca.location`, `ssl.certificate.location` or `ssl.key.location`"
        }
        "ssl.crl.location" => "certificate revocation lists are not supported",
        "ssl.cipher.suites" | "ssl.curves.list" | "ssl.sigalgs.list" | "ssl.protocol" => {
            "TLS uses rustls's safe defaults (TLS 1.2 and 1.3) and they cannot be changed; \
             remove the entry"
        }
        "group.instance.id" => "static group membership is not supported",
        _ if key.starts_with("sasl.kerberos.") => {
            "SASL GSSAPI (Kerberos) is not supported: use SCRAM-SHA-256, SCRAM-SHA-512 or PLAIN"
        }
        _ if key.starts_with("sasl.oauthbearer.") => {
            "SASL OAUTHBEARER is not supported: use SCRAM-SHA-256, SCRAM-SHA-512 or PLAIN"
        }
        _ => return None,
    })
}

pub(crate) fn parse_mechanism(value: &str) -> Result<SaslMechanism, String> {
    value.parse().map_err(|_| {
        let unsupported = ["GSSAPI", "OAUTHBEARER"]
            .iter()
            .any(|m| m.eq_ignore_ascii_case(value));
        format!(
            "expected PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512{}",
            if unsupported {
                " (GSSAPI and OAUTHBEARER are not supported)"
            } else {
                ""
            }
        )
    })
}

/// librdkafka's `security.protocol`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Protocol {
    Plaintext,
    Ssl,
    SaslPlaintext,
    SaslSsl,
}

impl Protocol {
    pub(crate) fn tls(self) -> bool {
        matches!(self, Protocol::Ssl | Protocol::SaslSsl)
    }

    pub(crate) fn sasl(self) -> bool {
        matches!(self, Protocol::SaslPlaintext | Protocol::SaslSsl)
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Plaintext => "plaintext",
            Protocol::Ssl => "ssl",
            Protocol::SaslPlaintext => "sasl_plaintext",
            Protocol::SaslSsl => "sasl_ssl",
        })
    }
}

impl FromStr for Protocol {
    type Err = &'static str;

    fn from_str(s: &str) -> Result<Protocol, &'static str> {
        match s.to_ascii_lowercase().as_str() {
            "plaintext" => Ok(Protocol::Plaintext),
            "ssl" => Ok(Protocol::Ssl),
            "sasl_plaintext" => Ok(Protocol::SaslPlaintext),
            "sasl_ssl" => Ok(Protocol::SaslSsl),
            _ => Err("expected `plaintext`, `ssl`, `sasl_plaintext` or `sasl_ssl` (any case)"),
        }
    }
}

/// `ssl.ca.location`: a PEM file, or the system's CA bundle (`probe`).
#[derive(Debug, Clone)]
pub(crate) enum CaLocation {
    System,
    File(PathBuf),
}

/// The security keys of `configuration` lists, gathered and then checked together.
#[derive(Debug, Clone, Default)]
pub(crate) struct SecurityKeys {
    pub(crate) protocol: Option<Protocol>,
    pub(crate) ca: Option<CaLocation>,
    pub(crate) cert: Option<PathBuf>,
    pub(crate) key: Option<PathBuf>,
    pub(crate) mechanism: Option<SaslMechanism>,
    pub(crate) username: Option<String>,
    /// Never printed (`Password`'s `Debug` redacts it).
    pub(crate) password: Option<Password>,
}

impl SecurityKeys {
    /// The `ssl.*` keys given that only TLS uses.
    pub(crate) fn tls_keys(&self) -> Vec<&'static str> {
        [
            (self.ca.is_some(), "ssl.ca.location"),
            (self.cert.is_some(), "ssl.certificate.location"),
            (self.key.is_some(), "ssl.key.location"),
        ]
        .into_iter()
        .filter_map(|(given, key)| given.then_some(key))
        .collect()
    }

    /// The `sasl.*` keys given.
    pub(crate) fn sasl_keys(&self) -> Vec<&'static str> {
        [
            (self.mechanism.is_some(), "sasl.mechanism"),
            (self.username.is_some(), "sasl.username"),
            (self.password.is_some(), "sasl.password"),
        ]
        .into_iter()
        .filter_map(|(given, key)| given.then_some(key))
        .collect()
    }

    /// The protocol, if the keys go together.
    pub(crate) fn check(&self) -> Result<Protocol, String> {
        let (tls, sasl) = (self.tls_keys(), self.sasl_keys());
        let Some(protocol) = self.protocol else {
            let (given, wanted) = match (tls.first(), sasl.first()) {
                (None, None) => return Ok(Protocol::Plaintext),
                (None, Some(key)) => (key, "`security.protocol=sasl_ssl` (or `sasl_plaintext`)"),
                (Some(key), None) => (key, "`security.protocol=ssl`"),
                (Some(key), Some(_)) => (key, "`security.protocol=sasl_ssl`"),
            };
            return Err(format!(
                "`{given}` is given but `security.protocol` is not set, and librdkafka's \
                 default, `plaintext`, would ignore it: add {wanted}"
            ));
        };
        if let (false, Some(key)) = (protocol.tls(), tls.first()) {
            let wanted = if protocol.sasl() { "sasl_ssl" } else { "ssl" };
            return Err(format!(
                "`{key}` is given but `security.protocol={protocol}` uses no TLS: set \
                 `security.protocol={wanted}`, or remove the `ssl.*` entries"
            ));
        }
        if let (false, Some(key)) = (protocol.sasl(), sasl.first()) {
            let wanted = if protocol.tls() {
                "`sasl_ssl`"
            } else {
                "`sasl_ssl` (or `sasl_plaintext`)"
            };
            return Err(format!(
                "`{key}` is given but `security.protocol={protocol}` does not authenticate: set \
                 `security.protocol` to {wanted}, or remove the `sasl.*` entries"
            ));
        }
        if protocol.sasl() {
            let missing = [
                (
                    self.mechanism.is_none(),
                    "`sasl.mechanism` (PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512; librdkafka's \
                     default, GSSAPI, is not supported)",
                ),
                (self.username.is_none(), "`sasl.username`"),
                (self.password.is_none(), "`sasl.password`"),
            ];
            if let Some((_, what)) = missing.iter().find(|(missing, _)| *missing) {
                return Err(format!("`security.protocol={protocol}` needs {what}"));
            }
        }
        match (&self.cert, &self.key) {
            (Some(_), None) => Err(
                "`ssl.certificate.location` is given without `ssl.key.location`: a client \
                 certificate needs its private key (PEM)"
                    .into(),
            ),
            (None, Some(_)) => Err(
                "`ssl.key.location` is given without `ssl.certificate.location`: a client key \
                 needs its certificate (PEM)"
                    .into(),
            ),
            _ => Ok(protocol),
        }
    }

    /// The TLS and SASL settings: checks, then reads the TLS files.
    pub(crate) fn resolve(&self) -> Result<SecurityConfig, String> {
        let protocol = self.check()?;
        let mut security = SecurityConfig::default();
        if protocol.tls() {
            let mut tls = match &self.ca {
                Some(CaLocation::File(path)) if path.is_dir() => {
                    return Err(format!(
                        "`ssl.ca.location` ({}) is a directory; give one PEM file holding the \
                         CA certificates",
                        path.display()
                    ))
                }
                Some(CaLocation::File(path)) => TlsConfig::from_ca_file(path),
                Some(CaLocation::System) | None => TlsConfig::from_system_roots(),
            }
            .map_err(describe)?;
            if let (Some(cert), Some(key)) = (&self.cert, &self.key) {
                tls = tls.with_client_cert(cert, key).map_err(describe)?;
            }
            security.tls = Some(tls);
        }
        if let (true, Some(mechanism), Some(username), Some(password)) = (
            protocol.sasl(),
            self.mechanism,
            &self.username,
            &self.password,
        ) {
            if protocol == Protocol::SaslPlaintext && mechanism == SaslMechanism::Plain {
                tracing::warn!(
                    "security.protocol=sasl_plaintext with sasl.mechanism=PLAIN sends the \
                     password unencrypted; use sasl_ssl"
                );
            }
            security.sasl = Some(SaslConfig::new(
                mechanism,
                username.clone(),
                password.clone(),
            ));
        }
        Ok(security)
    }
}

/// A TLS file problem in librdkafka's words: the setting named by its librdkafka key.
pub(crate) fn describe(e: SecurityError) -> String {
    let rename = |text: &str| {
        text.replace("tls_ca_file", "ssl.ca.location")
            .replace("tls_cert_file", "ssl.certificate.location")
            .replace("tls_key_file", "ssl.key.location")
    };
    match e {
        SecurityError::File {
            field,
            path,
            problem,
        } => format!(
            "`{}` ({}): {}",
            rename(field),
            path.display(),
            rename(&problem)
        ),
        SecurityError::Setting { field, problem } => {
            format!("`{}`: {}", rename(field), rename(&problem))
        }
        other => rename(&other.to_string()),
    }
}
