//! TLS and SASL settings shared by every broker connection: rskafka's (sources, sinks, metadata)
//! and the consumer-group connections.
//!
//! - **TLS** is rustls with the ring provider. The broker's certificate must chain to a CA of
//!   [`TlsConfig::from_ca_file`] (or of the system's CA bundle, [`TlsConfig::from_system_roots`])
//!   and be valid for the host name or IP address the client connects to: host names are always
//!   verified. [`TlsConfig::with_client_cert`] adds a client certificate for brokers that require
//!   one (mutual TLS).
//! - **SASL** is PLAIN or SCRAM-SHA-256/512 ([`SaslConfig`]). The password comes from a file or an
//!   environment variable ([`Password`]); it is never printed: `Debug` shows `<redacted>`.
//!
//! Files are read and parsed when the settings are made, so a missing CA file, an unreadable key
//! or a malformed PEM file is reported at start-up, naming the setting and the file.
//!
//! Not supported: OAUTHBEARER and GSSAPI (Kerberos); re-authentication on a live connection
//! (KIP-368): a broker that closes connections when their SASL session expires sees them
//! re-established and authenticated again; certificate revocation lists.
//!
//! ```no_run
//! use streamtract::kafka::{KafkaConfig, Password, SaslConfig, SaslMechanism, TlsConfig};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let kafka = KafkaConfig::new(["broker.example.com:9093"])
//!     .tls(TlsConfig::from_ca_file("/etc/kafka/ca.pem")?)
//!     .sasl(SaslConfig::new(
//!         SaslMechanism::ScramSha512,
//!         "alice",
//!         Password::from_env("KAFKA_PASSWORD")?,
//!     ));
//! # Ok(()) }
//! ```

use std::fmt;
use std::io;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

/// Where the system's CA bundle is looked for when no CA file is given (`SSL_CERT_FILE` first).
const SYSTEM_CA_BUNDLES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/ca-bundle.pem",
    "/etc/ssl/cert.pem",
];

/// A TLS or SASL setting that cannot work, or a broker that refused the connection.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SecurityError {
    /// A file named by a setting is missing, unreadable or not what it should be.
    #[error("`{field}` ({}): {problem}", path.display())]
    File {
        /// The setting (TOML key) that names the file.
        field: &'static str,
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        problem: String,
    },
    /// A setting is missing, contradicts another, or has a value of the wrong form.
    #[error("`{field}`: {problem}")]
    Setting {
        /// The setting (TOML key).
        field: &'static str,
        /// What is wrong and what would work.
        problem: String,
    },
    /// The TLS handshake failed: the broker's certificate was rejected, or the broker rejected
    /// ours, or the broker does not speak TLS.
    #[error("TLS handshake with broker {broker} failed: {problem}")]
    Tls {
        /// `host:port` of the broker.
        broker: String,
        /// The certificate problem, in words, with what to check.
        problem: String,
    },
    /// The broker refused the SASL credentials or mechanism.
    #[error(
        "SASL {mechanism} authentication failed for user `{user}` at broker {broker}: {problem}"
    )]
    Authentication {
        /// PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512.
        mechanism: &'static str,
        /// The user name.
        user: String,
        /// `host:port` of the broker.
        broker: String,
        /// The broker's reason, with what to check.
        problem: String,
    },
}

impl SecurityError {
    fn file(field: &'static str, path: &Path, problem: impl Into<String>) -> SecurityError {
        SecurityError::File {
            field,
            path: path.to_path_buf(),
            problem: problem.into(),
        }
    }
}

/// TLS, and optionally SASL, for every connection to the cluster. The default is neither:
/// plaintext without authentication.
#[derive(Clone, Default)]
pub struct SecurityConfig {
    /// Encrypt connections and verify the broker's certificate.
    pub tls: Option<TlsConfig>,
    /// Authenticate with a user name and password.
    pub sasl: Option<SaslConfig>,
}

impl SecurityConfig {
    /// True when TLS or SASL is set.
    pub fn is_enabled(&self) -> bool {
        self.tls.is_some() || self.sasl.is_some()
    }

    /// The rustls client configuration for rskafka, if TLS is on.
    pub(crate) fn rskafka_tls(&self) -> Option<Arc<ClientConfig>> {
        self.tls.as_ref().map(|t| Arc::clone(&t.config))
    }

    /// rskafka's SASL settings, if SASL is on. Made for each connect and handed straight to
    /// rskafka (its `Credentials` print the password in `Debug`: never log them).
    pub(crate) fn rskafka_sasl(&self) -> Option<rskafka::client::SaslConfig> {
        use rskafka::client::{Credentials, SaslConfig as Rs};
        let sasl = self.sasl.as_ref()?;
        let credentials = Credentials::new(sasl.username.clone(), sasl.password.expose().into());
        Some(match sasl.mechanism {
            SaslMechanism::Plain => Rs::Plain(credentials),
            SaslMechanism::ScramSha256 => Rs::ScramSha256(credentials),
            SaslMechanism::ScramSha512 => Rs::ScramSha512(credentials),
        })
    }
}

impl fmt::Debug for SecurityConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecurityConfig")
            .field("tls", &self.tls)
            .field("sasl", &self.sasl)
            .finish()
    }
}

/// Checked TLS settings: the trusted CAs, an optional client certificate, and the rustls client
/// configuration made from them (ring provider, TLS 1.2 and 1.3, host name verification on).
#[derive(Clone)]
pub struct TlsConfig {
    roots: Arc<RootCertStore>,
    /// Where the trusted CAs came from, for messages.
    ca_source: String,
    client_cert: Option<PathBuf>,
    config: Arc<ClientConfig>,
}

impl fmt::Debug for TlsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsConfig")
            .field("ca", &self.ca_source)
            .field("client_cert", &self.client_cert)
            .finish_non_exhaustive()
    }
}

impl TlsConfig {
    /// Trusts the CA certificates in the PEM file `path` (setting `tls_ca_file`).
    pub fn from_ca_file(path: impl AsRef<Path>) -> Result<TlsConfig, SecurityError> {
        let path = path.as_ref();
        let roots = load_roots("tls_ca_file", path)?;
        TlsConfig::build(roots, format!("tls_ca_file {}", path.display()), None)
    }

    /// Trusts the system's CA bundle: the PEM file named by `SSL_CERT_FILE`, else the first of
    /// the usual Linux locations (`/etc/ssl/certs/ca-certificates.crt`, ...).
    pub fn from_system_roots() -> Result<TlsConfig, SecurityError> {
        let candidates: Vec<PathBuf> = std::env::var_os("SSL_CERT_FILE")
            .map(PathBuf::from)
            .into_iter()
            .chain(SYSTEM_CA_BUNDLES.iter().map(PathBuf::from))
            .collect();
        let Some(path) = candidates.iter().find(|p| p.is_file()) else {
            return Err(SecurityError::Setting {
                field: "tls_ca_file",
                problem: format!(
                    "TLS is on without a CA file and no system CA bundle was found (looked at \
                     SSL_CERT_FILE and {}): give the CA that signed the brokers' certificates",
                    SYSTEM_CA_BUNDLES.join(", ")
                ),
            });
        };
        let roots = load_roots("tls_ca_file", path)?;
        TlsConfig::build(
            roots,
            format!("the system CA bundle {}", path.display()),
            None,
        )
    }

    /// Adds a client certificate (chain, leaf first) and its private key, both PEM, for brokers
    /// that require mutual TLS (settings `tls_cert_file`, `tls_key_file`).
    pub fn with_client_cert(
        self,
        cert_file: impl AsRef<Path>,
        key_file: impl AsRef<Path>,
    ) -> Result<TlsConfig, SecurityError> {
        let (cert_file, key_file) = (cert_file.as_ref(), key_file.as_ref());
        let certs = read_pem(cert_file, "tls_cert_file", |bytes| {
            CertificateDer::pem_slice_iter(bytes).collect::<Result<Vec<_>, _>>()
        })?;
        if certs.is_empty() {
            return Err(SecurityError::file(
                "tls_cert_file",
                cert_file,
                "no CERTIFICATE block found: expected a PEM certificate chain, the client's certificate first",
            ));
        }
        let key = read_pem(key_file, "tls_key_file", PrivateKeyDer::from_pem_slice)?;
        let identity = (certs, key, cert_file.to_path_buf(), key_file.to_path_buf());
        TlsConfig::build(self.roots, self.ca_source, Some(identity))
    }

    fn build(
        roots: Arc<RootCertStore>,
        ca_source: String,
        identity: Option<(
            Vec<CertificateDer<'static>>,
            PrivateKeyDer<'static>,
            PathBuf,
            PathBuf,
        )>,
    ) -> Result<TlsConfig, SecurityError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| SecurityError::Setting {
                field: "tls",
                problem: format!("cannot set up TLS: {e}"),
            })?
            .with_root_certificates(Arc::clone(&roots));
        let (config, client_cert) = match identity {
            None => (builder.with_no_client_auth(), None),
            Some((certs, key, cert_file, key_file)) => {
                let config = builder.with_client_auth_cert(certs, key).map_err(|e| {
                    let problem = match e {
                        rustls::Error::InconsistentKeys(_) => format!(
                            "this key does not belong to the certificate in tls_cert_file {}",
                            cert_file.display()
                        ),
                        other => format!("unusable private key: {other}"),
                    };
                    SecurityError::file("tls_key_file", &key_file, problem)
                })?;
                (config, Some(cert_file))
            }
        };
        Ok(TlsConfig {
            roots,
            ca_source,
            client_cert,
            config: Arc::new(config),
        })
    }

    /// The rustls client configuration.
    pub fn client_config(&self) -> Arc<ClientConfig> {
        Arc::clone(&self.config)
    }

    /// Runs the TLS handshake on `tcp`, verifying the certificate against the host of `addr`.
    pub(crate) async fn connect(
        &self,
        addr: &str,
        tcp: TcpStream,
    ) -> Result<TlsStream<TcpStream>, io::Error> {
        let host = host_of(addr);
        let name = ServerName::try_from(host.to_string())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("{host}: {e}")))?;
        TlsConnector::from(Arc::clone(&self.config))
            .connect(name, tcp)
            .await
    }

    /// If `e` comes from rustls (a TLS failure rather than a broken connection), the error that
    /// names the certificate problem.
    pub(crate) fn failure(&self, broker: &str, e: &io::Error) -> Option<SecurityError> {
        let tls = e.get_ref()?.downcast_ref::<rustls::Error>()?;
        Some(SecurityError::Tls {
            broker: broker.to_string(),
            problem: self.describe(broker, tls),
        })
    }

    fn describe(&self, broker: &str, e: &rustls::Error) -> String {
        use rustls::{AlertDescription as A, CertificateError as C};
        let host = host_of(broker);
        match e {
            rustls::Error::InvalidCertificate(c) => match c {
                C::UnknownIssuer => format!(
                    "the broker's certificate is signed by an unknown issuer: it does not chain to \
                     a CA in {}. Give the CA that signed the broker's certificate",
                    self.ca_source
                ),
                C::NotValidForName | C::NotValidForNameContext { .. } => format!(
                    "{c} (the broker was reached as `{host}`; host names are always verified: \
                     connect with a name or address the certificate lists)"
                ),
                C::Expired | C::ExpiredContext { .. } => {
                    format!("the broker's certificate has expired: {c}")
                }
                C::NotValidYet | C::NotValidYetContext { .. } => {
                    format!("the broker's certificate is not valid yet (check the clock): {c}")
                }
                C::BadSignature | C::BadEncoding => {
                    format!("the broker sent a malformed or badly signed certificate: {c}")
                }
                other => format!("the broker's certificate was rejected: {other}"),
            },
            rustls::Error::AlertReceived(alert) => match alert {
                A::CertificateRequired | A::HandshakeFailure if self.client_cert.is_none() => {
                    format!(
                        "the broker ended the handshake ({alert:?}): it probably requires a client \
                         certificate; set tls_cert_file and tls_key_file"
                    )
                }
                A::BadCertificate
                | A::UnknownCA
                | A::CertificateUnknown
                | A::UnsupportedCertificate
                | A::CertificateExpired
                | A::CertificateRevoked
                | A::AccessDenied
                | A::CertificateRequired => format!(
                    "the broker rejected our client certificate ({alert:?}): check that \
                     tls_cert_file ({}) is signed by a CA the broker trusts and is valid for client \
                     authentication",
                    self.client_cert
                        .as_ref()
                        .map_or("none".into(), |p| p.display().to_string())
                ),
                other => format!("the broker ended the handshake with the alert {other:?}"),
            },
            rustls::Error::InvalidMessage(_) | rustls::Error::InappropriateMessage { .. } => {
                format!(
                    "the broker did not answer with TLS ({e}): is {broker} a plaintext listener? \
                     Then turn TLS off, or use the broker's TLS port"
                )
            }
            other => other.to_string(),
        }
    }
}

/// The host part of `host:port` (brackets of an IPv6 literal removed).
fn host_of(addr: &str) -> &str {
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
    host.trim_start_matches('[').trim_end_matches(']')
}

fn read_pem<T>(
    path: &Path,
    field: &'static str,
    parse: impl FnOnce(&[u8]) -> Result<T, pem::Error>,
) -> Result<T, SecurityError> {
    let bytes = std::fs::read(path)
        .map_err(|e| SecurityError::file(field, path, format!("cannot read it: {e}")))?;
    parse(&bytes).map_err(|e| {
        let problem = match e {
            pem::Error::NoItemsFound => {
                "no PEM block of the expected kind found (a key file needs a PRIVATE KEY, \
                 RSA PRIVATE KEY or EC PRIVATE KEY block)"
                    .to_string()
            }
            other => format!("not a valid PEM file: {other}"),
        };
        SecurityError::file(field, path, problem)
    })
}

fn load_roots(field: &'static str, path: &Path) -> Result<Arc<RootCertStore>, SecurityError> {
    let certs = read_pem(path, field, |bytes| {
        CertificateDer::pem_slice_iter(bytes).collect::<Result<Vec<_>, _>>()
    })?;
    if certs.is_empty() {
        return Err(SecurityError::file(
            field,
            path,
            "no CERTIFICATE block found: expected PEM CA certificates",
        ));
    }
    let mut roots = RootCertStore::empty();
    for (i, cert) in certs.into_iter().enumerate() {
        roots.add(cert).map_err(|e| {
            SecurityError::file(
                field,
                path,
                format!("certificate {} is not a usable CA certificate: {e}", i + 1),
            )
        })?;
    }
    Ok(Arc::new(roots))
}

/// The SASL mechanisms this client speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SaslMechanism {
    /// PLAIN (RFC 4616): the password travels as it is; use it only with TLS.
    Plain,
    /// SCRAM-SHA-256 (RFC 7677).
    ScramSha256,
    /// SCRAM-SHA-512.
    ScramSha512,
}

impl SaslMechanism {
    /// The name the broker knows it by.
    pub fn name(self) -> &'static str {
        match self {
            SaslMechanism::Plain => "PLAIN",
            SaslMechanism::ScramSha256 => "SCRAM-SHA-256",
            SaslMechanism::ScramSha512 => "SCRAM-SHA-512",
        }
    }
}

impl fmt::Display for SaslMechanism {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for SaslMechanism {
    type Err = String;

    /// `plain`, `scram-sha-256` or `scram-sha-512`, in any case.
    fn from_str(s: &str) -> Result<SaslMechanism, String> {
        match s.to_ascii_lowercase().replace('_', "-").as_str() {
            "plain" => Ok(SaslMechanism::Plain),
            "scram-sha-256" => Ok(SaslMechanism::ScramSha256),
            "scram-sha-512" => Ok(SaslMechanism::ScramSha512),
            _ => Err("one of plain, scram-sha-256, scram-sha-512".into()),
        }
    }
}

/// A password. `Debug` and `Display` never show it.
#[derive(Clone)]
pub struct Password(Arc<str>);

impl Password {
    /// A password given as a value (from a secret store, say).
    pub fn new(password: impl Into<String>) -> Password {
        Password(Arc::from(password.into()))
    }

    /// Reads the password from `path` (setting `sasl_password_file`). One trailing line end is
    /// removed; anything else, spaces included, is part of the password.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Password, SecurityError> {
        let path = path.as_ref();
        let field = "sasl_password_file";
        let bytes = std::fs::read(path)
            .map_err(|e| SecurityError::file(field, path, format!("cannot read it: {e}")))?;
        let text = String::from_utf8(bytes)
            .map_err(|_| SecurityError::file(field, path, "the password is not UTF-8"))?;
        let text = text
            .strip_suffix('\n')
            .map(|t| t.strip_suffix('\r').unwrap_or(t))
            .unwrap_or(&text);
        if text.is_empty() {
            return Err(SecurityError::file(field, path, "the file is empty"));
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            if let Ok(meta) = std::fs::metadata(path) {
                if meta.permissions().mode() & 0o004 != 0 {
                    tracing::warn!(file = %path.display(), "the SASL password file is readable by every user of this machine; `chmod o-r` it");
                }
            }
        }
        Ok(Password::new(text))
    }

    /// Takes the password from the environment variable `name` (setting `sasl_password_env`).
    pub fn from_env(name: &str) -> Result<Password, SecurityError> {
        let field = "sasl_password_env";
        match std::env::var(name) {
            Ok(v) if !v.is_empty() => Ok(Password::new(v)),
            Ok(_) => Err(SecurityError::Setting {
                field,
                problem: format!("the environment variable {name} is empty"),
            }),
            Err(std::env::VarError::NotPresent) => Err(SecurityError::Setting {
                field,
                problem: format!("the environment variable {name} is not set"),
            }),
            Err(std::env::VarError::NotUnicode(_)) => Err(SecurityError::Setting {
                field,
                problem: format!("the environment variable {name} is not valid UTF-8"),
            }),
        }
    }

    pub(crate) fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Password(<redacted>)")
    }
}

/// SASL credentials and mechanism.
#[derive(Clone, Debug)]
pub struct SaslConfig {
    /// The mechanism.
    pub mechanism: SaslMechanism,
    /// The user name.
    pub username: String,
    /// The password (never printed).
    pub password: Password,
}

impl SaslConfig {
    /// Credentials for `mechanism`.
    pub fn new(mechanism: SaslMechanism, username: impl Into<String>, password: Password) -> Self {
        SaslConfig {
            mechanism,
            username: username.into(),
            password,
        }
    }

    /// The first message of the exchange and the state to answer the broker's challenge with.
    pub(crate) fn start(&self) -> Result<(Vec<u8>, SaslState), String> {
        match self.mechanism {
            SaslMechanism::Plain => {
                // authzid NUL authcid NUL password; an empty authzid means "act as authcid".
                let mut msg = Vec::new();
                msg.push(0);
                msg.extend_from_slice(self.username.as_bytes());
                msg.push(0);
                msg.extend_from_slice(self.password.expose().as_bytes());
                Ok((msg, SaslState::Plain))
            }
            SaslMechanism::ScramSha256 | SaslMechanism::ScramSha512 => {
                let hash = if self.mechanism == SaslMechanism::ScramSha256 {
                    ScramHash::Sha256
                } else {
                    ScramHash::Sha512
                };
                let mut raw = [0u8; 24];
                ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut raw)
                    .map_err(|_| "no random numbers for the SCRAM nonce".to_string())?;
                let scram =
                    Scram::new(hash, &self.username, self.password.clone(), B64.encode(raw));
                Ok((scram.client_first(), SaslState::ScramFirst(scram)))
            }
        }
    }
}

/// Where a SASL exchange stands, after each message sent.
pub(crate) enum SaslState {
    /// PLAIN sent: the broker's answer ends the exchange.
    Plain,
    /// SCRAM client-first sent: the broker's server-first is next.
    ScramFirst(Scram),
    /// SCRAM client-final sent: the broker's server-final proves it knows the password too.
    ScramFinal(Scram),
}

impl SaslState {
    /// Takes the broker's answer; returns the next message to send, or `None` when the exchange
    /// succeeded. The error is the reason it failed, in words.
    pub(crate) fn step(self, from_broker: &[u8]) -> Result<(Option<Vec<u8>>, SaslState), String> {
        match self {
            SaslState::Plain => Ok((None, SaslState::Plain)),
            SaslState::ScramFirst(mut scram) => {
                let msg = scram.client_final(from_broker)?;
                Ok((Some(msg), SaslState::ScramFinal(scram)))
            }
            SaslState::ScramFinal(scram) => {
                scram.verify_server_final(from_broker)?;
                Ok((None, SaslState::ScramFinal(scram)))
            }
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub(crate) enum ScramHash {
    Sha256,
    Sha512,
}

impl ScramHash {
    fn hmac(self, key: &[u8], data: &[u8]) -> Vec<u8> {
        let alg = match self {
            ScramHash::Sha256 => ring::hmac::HMAC_SHA256,
            ScramHash::Sha512 => ring::hmac::HMAC_SHA512,
        };
        ring::hmac::sign(&ring::hmac::Key::new(alg, key), data)
            .as_ref()
            .to_vec()
    }

    fn hash(self, data: &[u8]) -> Vec<u8> {
        let alg = match self {
            ScramHash::Sha256 => &ring::digest::SHA256,
            ScramHash::Sha512 => &ring::digest::SHA512,
        };
        ring::digest::digest(alg, data).as_ref().to_vec()
    }

    fn salted_password(self, password: &[u8], salt: &[u8], iterations: NonZeroU32) -> Vec<u8> {
        let (alg, len) = match self {
            ScramHash::Sha256 => (ring::pbkdf2::PBKDF2_HMAC_SHA256, 32),
            ScramHash::Sha512 => (ring::pbkdf2::PBKDF2_HMAC_SHA512, 64),
        };
        let mut out = vec![0u8; len];
        ring::pbkdf2::derive(alg, iterations, salt, password, &mut out);
        out
    }
}

/// Most PBKDF2 iterations accepted from a broker (Kafka's own limit), so a rogue broker cannot
/// make the client spin.
const MAX_SCRAM_ITERATIONS: u32 = 16_384;

/// The client side of SCRAM (RFC 5802), without channel binding, as Kafka uses it.
pub(crate) struct Scram {
    hash: ScramHash,
    password: Password,
    client_nonce: String,
    client_first_bare: String,
    /// The signature the broker must send back, known once client-final is made.
    server_signature: Option<Vec<u8>>,
}

/// `c=` of client-final: base64 of the GS2 header "n,," (no channel binding, no authzid).
const GS2_HEADER: &str = "n,,";

impl Scram {
    pub(crate) fn new(hash: ScramHash, username: &str, password: Password, nonce: String) -> Scram {
        // saslname: "=" and "," are escaped as "=3D" and "=2C".
        let name = username.replace('=', "=3D").replace(',', "=2C");
        Scram {
            hash,
            password,
            client_first_bare: format!("n={name},r={nonce}"),
            client_nonce: nonce,
            server_signature: None,
        }
    }

    pub(crate) fn client_first(&self) -> Vec<u8> {
        format!("{GS2_HEADER}{}", self.client_first_bare).into_bytes()
    }

    /// Answers server-first (`r=NONCE,s=SALT,i=ITERATIONS`) with client-final.
    pub(crate) fn client_final(&mut self, server_first: &[u8]) -> Result<Vec<u8>, String> {
        let server_first = std::str::from_utf8(server_first)
            .map_err(|_| "the broker's SCRAM challenge is not UTF-8".to_string())?;
        let attr = |name: char| {
            server_first
                .split(',')
                .find_map(|a| a.strip_prefix(name).and_then(|v| v.strip_prefix('=')))
        };
        if let Some(e) = attr('e') {
            return Err(if e == "unknown-user" {
                "no such user for this mechanism on the broker (it answered `unknown-user`); \
                 SCRAM users exist per mechanism: check sasl_username and sasl_mechanism"
                    .into()
            } else {
                format!("the broker answered with the SCRAM error `{e}`")
            });
        }
        let malformed = || format!("malformed SCRAM challenge from the broker: `{server_first}`");
        let nonce = attr('r').ok_or_else(malformed)?;
        if !nonce.starts_with(&self.client_nonce) || nonce.len() == self.client_nonce.len() {
            return Err("the broker's SCRAM nonce does not extend ours".into());
        }
        let salt = B64
            .decode(attr('s').ok_or_else(malformed)?)
            .map_err(|_| malformed())?;
        let iterations: u32 = attr('i')
            .and_then(|i| i.parse().ok())
            .ok_or_else(malformed)?;
        let iterations = NonZeroU32::new(iterations)
            .filter(|i| i.get() <= MAX_SCRAM_ITERATIONS)
            .ok_or_else(|| {
                format!("the broker asked for {iterations} SCRAM iterations (1..={MAX_SCRAM_ITERATIONS} accepted)")
            })?;

        let h = self.hash;
        let salted = h.salted_password(self.password.expose().as_bytes(), &salt, iterations);
        let client_key = h.hmac(&salted, b"Client Key");
        let stored_key = h.hash(&client_key);
        let without_proof = format!("c={},r={nonce}", B64.encode(GS2_HEADER));
        let auth_message = format!("{},{server_first},{without_proof}", self.client_first_bare);
        let signature = h.hmac(&stored_key, auth_message.as_bytes());
        let proof: Vec<u8> = client_key
            .iter()
            .zip(&signature)
            .map(|(k, s)| k ^ s)
            .collect();
        let server_key = h.hmac(&salted, b"Server Key");
        self.server_signature = Some(h.hmac(&server_key, auth_message.as_bytes()));
        Ok(format!("{without_proof},p={}", B64.encode(proof)).into_bytes())
    }

    /// Checks server-final (`v=SIGNATURE`, or `e=ERROR`).
    pub(crate) fn verify_server_final(&self, server_final: &[u8]) -> Result<(), String> {
        let text = String::from_utf8_lossy(server_final);
        if let Some(e) = text.strip_prefix("e=") {
            return Err(if e == "invalid-proof" {
                "wrong password, or no such SCRAM user (the broker answered `invalid-proof`)".into()
            } else {
                format!("the broker answered with the SCRAM error `{e}`")
            });
        }
        let given = text
            .split(',')
            .find_map(|a| a.strip_prefix("v="))
            .and_then(|v| B64.decode(v).ok())
            .ok_or_else(|| format!("malformed SCRAM server-final from the broker: `{text}`"))?;
        match &self.server_signature {
            // The signature proves what the broker knows, not us: a plain comparison will do.
            Some(expected) if *expected == given => Ok(()),
            _ => Err(
                "the broker's SCRAM signature is wrong: it does not know this user's \
                      password (a broker impersonated, or a broken one)"
                    .into(),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scram_sha256_matches_rfc7677() {
        // The example exchange of RFC 7677 section 3.
        let mut scram = Scram::new(
            ScramHash::Sha256,
            "user",
            Password::new("pencil"),
            "rOprNGfwEbeRWgbNEkqO".into(),
        );
        assert_eq!(scram.client_first(), b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO");
        let server_first = b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,\
            s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
        let client_final = scram.client_final(server_first).unwrap();
        assert_eq!(
            String::from_utf8(client_final).unwrap(),
            "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,\
             p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
        );
        scram
            .verify_server_final(b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=")
            .unwrap();
        let err = scram
            .verify_server_final(b"v=AAAATRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=")
            .unwrap_err();
        assert!(err.contains("signature is wrong"), "{err}");
        let err = scram.verify_server_final(b"e=invalid-proof").unwrap_err();
        assert!(err.contains("wrong password"), "{err}");
    }

    #[test]
    fn scram_rejects_bad_challenges() {
        let mut scram = Scram::new(
            ScramHash::Sha512,
            "a,b=c",
            Password::new("pw"),
            "abc".into(),
        );
        assert_eq!(scram.client_first(), b"n,,n=a=2Cb=3Dc,r=abc");
        for bad in [
            &b"r=xyz123,s=AAAA,i=4096"[..],
            b"r=abc,s=AAAA,i=4096",
            b"r=abcdef,s=AAAA,i=0",
            b"r=abcdef,s=AAAA,i=100000000",
            b"r=abcdef,i=4096",
            b"e=unknown-user",
        ] {
            assert!(
                scram.client_final(bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn passwords_are_redacted() {
        let sasl = SaslConfig::new(
            SaslMechanism::ScramSha512,
            "alice",
            Password::new("hunter2"),
        );
        let security = SecurityConfig {
            tls: None,
            sasl: Some(sasl),
        };
        let shown = format!("{security:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(
            shown.contains("alice") && shown.contains("<redacted>"),
            "{shown}"
        );
    }

    #[test]
    fn password_file_drops_one_line_end() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pw");
        std::fs::write(&path, "s3cret \r\n").unwrap();
        assert_eq!(Password::from_file(&path).unwrap().expose(), "s3cret ");
        std::fs::write(&path, "\n").unwrap();
        let err = Password::from_file(&path).unwrap_err().to_string();
        assert!(
            err.contains("sasl_password_file") && err.contains("empty"),
            "{err}"
        );
    }

    #[test]
    fn mechanisms_parse() {
        assert_eq!("SCRAM-SHA-512".parse(), Ok(SaslMechanism::ScramSha512));
        assert_eq!("scram_sha_256".parse(), Ok(SaslMechanism::ScramSha256));
        assert_eq!("plain".parse(), Ok(SaslMechanism::Plain));
        assert!("gssapi".parse::<SaslMechanism>().is_err());
    }

    #[test]
    fn file_errors_name_the_setting() {
        let err = TlsConfig::from_ca_file("/nonexistent/ca.pem")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("`tls_ca_file` (/nonexistent/ca.pem): cannot read it"),
            "{err}"
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ca.pem");
        std::fs::write(&path, "-----BEGIN CERTIFICATE-----\nnot base64!\n").unwrap();
        let err = TlsConfig::from_ca_file(&path).unwrap_err().to_string();
        assert!(err.contains("not a valid PEM file"), "{err}");
        std::fs::write(&path, "hello\n").unwrap();
        let err = TlsConfig::from_ca_file(&path).unwrap_err().to_string();
        assert!(err.contains("no CERTIFICATE block"), "{err}");
    }

    #[test]
    fn hosts() {
        assert_eq!(host_of("127.0.0.1:9093"), "127.0.0.1");
        assert_eq!(host_of("[::1]:9093"), "::1");
        assert_eq!(host_of("kafka.example.com:9093"), "kafka.example.com");
    }
}
