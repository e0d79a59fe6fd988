//! One connection to one broker: TLS if configured, Kafka framing, request headers, correlation
//! ids, the `ApiVersions` handshake that picks a version per API, and SASL authentication
//! (`SaslHandshake` v1 + `SaslAuthenticate`) if configured.

use std::collections::BTreeMap;

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{
    ApiKey, ApiVersionsRequest, ApiVersionsResponse, RequestHeader, ResponseHeader,
    SaslAuthenticateRequest, SaslAuthenticateResponse, SaslHandshakeRequest, SaslHandshakeResponse,
};
use kafka_protocol::protocol::{
    Decodable, Encodable, HeaderVersion, Message, StrBytes, VersionRange,
};
use kafka_protocol::ResponseError;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use super::GroupError;
use crate::kafka::security::{SaslConfig, SecurityError, TlsConfig};
use crate::kafka::KafkaConfig;

/// Largest response accepted (group answers are small; this only guards against garbage).
const MAX_RESPONSE_BYTES: usize = 64 * 1024 * 1024;

/// `UNSUPPORTED_VERSION`: the broker does not speak the ApiVersions version we sent.
const UNSUPPORTED_VERSION: i16 = 35;

/// Why a request on a connection failed.
#[derive(Debug)]
pub(crate) enum ConnError {
    /// The connection broke or could not be made: reconnecting may help.
    Io(String),
    /// A definite failure that retrying will not fix.
    Fatal(GroupError),
}

impl ConnError {
    fn io(addr: &str, what: &str, e: impl std::fmt::Display) -> ConnError {
        ConnError::Io(format!("{what} {addr}: {e}"))
    }
}

/// The byte stream under a connection: TCP, or TLS over TCP.
trait Stream: AsyncRead + AsyncWrite + Unpin + Send + Sync {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + Sync> Stream for T {}

/// Connects to each bootstrap broker in turn, with the TLS and SASL settings of `kafka`, until
/// one connection is made. A TLS or SASL failure is the error; a broker that cannot be reached
/// is skipped (whoever connects next reports it).
pub(crate) async fn check_security(kafka: &KafkaConfig) -> Result<(), SecurityError> {
    for broker in &kafka.brokers {
        let mut conn = match Connection::open_unauthenticated(broker, kafka).await {
            Ok(c) => c,
            Err(ConnError::Fatal(GroupError::Security(e))) => return Err(e),
            Err(e) => {
                tracing::debug!(broker = %broker, error = ?e, "security check: broker not usable");
                continue;
            }
        };
        let Some(sasl) = &kafka.security.sasl else {
            return Ok(());
        };
        return match conn.authenticate(sasl).await {
            Ok(()) => Ok(()),
            Err(ConnError::Fatal(GroupError::Security(e))) => Err(e),
            // The broker answered ApiVersions, then dropped the connection during SASL: brokers
            // that do not enable a mechanism may do that instead of naming the ones they do.
            Err(ConnError::Io(message)) => Err(SecurityError::Authentication {
                mechanism: sasl.mechanism.name(),
                user: sasl.username.clone(),
                broker: broker.clone(),
                problem: format!(
                    "the broker closed the connection during authentication ({message}): it may \
                     not enable {} (check sasl_mechanism and the broker's SASL settings)",
                    sasl.mechanism.name()
                ),
            }),
            Err(ConnError::Fatal(e)) => {
                tracing::debug!(broker = %broker, error = %e, "security check: SASL not finished");
                Ok(())
            }
        };
    }
    Ok(())
}

/// A connection with the broker's supported versions.
pub(crate) struct Connection {
    addr: String,
    stream: Box<dyn Stream>,
    /// The TLS settings, to put a failure into words.
    tls: Option<TlsConfig>,
    client_id: StrBytes,
    correlation_id: i32,
    /// The broker's version range per API key.
    broker_versions: BTreeMap<i16, VersionRange>,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl Connection {
    /// Connects to `addr` (`host:port`) with the TLS settings of `kafka`, asks which versions
    /// it speaks and authenticates with its SASL settings. Not bounded in time: the caller wraps
    /// it in its deadline.
    pub(crate) async fn open(addr: &str, kafka: &KafkaConfig) -> Result<Connection, ConnError> {
        let mut conn = Connection::open_unauthenticated(addr, kafka).await?;
        if let Some(sasl) = &kafka.security.sasl {
            conn.authenticate(sasl).await?;
        }
        Ok(conn)
    }

    /// [`Connection::open`] without the SASL step.
    async fn open_unauthenticated(
        addr: &str,
        kafka: &KafkaConfig,
    ) -> Result<Connection, ConnError> {
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(|e| ConnError::io(addr, "connect to", e))?;
        let _ = tcp.set_nodelay(true);
        let tls = kafka.security.tls.clone();
        let stream: Box<dyn Stream> = match &tls {
            Some(t) => match t.connect(addr, tcp).await {
                Ok(s) => Box::new(s),
                Err(e) => {
                    return Err(match t.failure(addr, &e) {
                        Some(fatal) => ConnError::Fatal(GroupError::Security(fatal)),
                        None => ConnError::io(addr, "TLS handshake with", e),
                    })
                }
            },
            None => Box::new(tcp),
        };
        let mut conn = Connection {
            addr: addr.to_string(),
            stream,
            tls,
            client_id: StrBytes::from_string(kafka.client_id.clone()),
            correlation_id: 0,
            broker_versions: BTreeMap::new(),
        };
        conn.handshake().await?;
        Ok(conn)
    }

    /// An I/O failure: a TLS alert from the broker (say, our client certificate was refused) is
    /// final and named; anything else may pass on reconnecting.
    fn io_failure(&self, what: &str, e: std::io::Error) -> ConnError {
        match self.tls.as_ref().and_then(|t| t.failure(&self.addr, &e)) {
            Some(fatal) => ConnError::Fatal(GroupError::Security(fatal)),
            None => ConnError::io(&self.addr, what, e),
        }
    }

    /// SASL: `SaslHandshake` v1 names the mechanism, then `SaslAuthenticate` carries the
    /// mechanism's messages until it completes (one round for PLAIN, two for SCRAM).
    async fn authenticate(&mut self, sasl: &SaslConfig) -> Result<(), ConnError> {
        let mechanism = sasl.mechanism.name();
        let broker = self.addr.clone();
        let refused = |problem: String| {
            ConnError::Fatal(GroupError::Security(SecurityError::Authentication {
                mechanism,
                user: sasl.username.clone(),
                broker: broker.clone(),
                problem,
            }))
        };
        let handshake_version = self
            .version(
                ApiKey::SaslHandshake,
                "SaslHandshake",
                VersionRange { min: 1, max: 1 },
            )
            .map_err(|_| {
                refused("the broker does not offer SASL (no SaslHandshake v1): is SASL enabled on this listener?".into())
            })?;
        let mut request = SaslHandshakeRequest::default();
        request.mechanism = StrBytes::from_static_str(mechanism);
        let response: SaslHandshakeResponse = self
            .request(ApiKey::SaslHandshake, handshake_version, &request)
            .await?;
        if response.error_code != 0 {
            let offered: Vec<&str> = response.mechanisms.iter().map(|m| m.as_str()).collect();
            return Err(refused(format!(
                "the broker does not enable {mechanism} ({}; it offers: {})",
                describe_code(response.error_code),
                if offered.is_empty() {
                    "none".into()
                } else {
                    offered.join(", ")
                }
            )));
        }
        let auth_version = self
            .version(
                ApiKey::SaslAuthenticate,
                "SaslAuthenticate",
                SaslAuthenticateRequest::VERSIONS,
            )
            .map_err(ConnError::Fatal)?;
        let (mut message, mut state) = sasl.start().map_err(refused)?;
        loop {
            let mut request = SaslAuthenticateRequest::default();
            request.auth_bytes = Bytes::from(message);
            let response: SaslAuthenticateResponse = self
                .request(ApiKey::SaslAuthenticate, auth_version, &request)
                .await?;
            if response.error_code != 0 {
                let detail = response
                    .error_message
                    .as_ref()
                    .map(|m| m.as_str())
                    .filter(|m| !m.is_empty())
                    .map(|m| format!(": {m}"))
                    .unwrap_or_default();
                return Err(refused(format!(
                    "the broker refused the credentials ({}{detail}); check sasl_username, the \
                     password (sasl_password_file or sasl_password_env) and that the user exists \
                     for {mechanism}",
                    describe_code(response.error_code)
                )));
            }
            let (next, after) = state.step(&response.auth_bytes).map_err(refused)?;
            match next {
                Some(m) => (message, state) = (m, after),
                None => break,
            }
        }
        tracing::debug!(broker = %self.addr, user = %sasl.username, mechanism, "SASL authenticated");
        Ok(())
    }

    /// The broker's address, as connected to.
    pub(crate) fn addr(&self) -> &str {
        &self.addr
    }

    /// ApiVersions v3 (flexible), falling back to v0 for brokers that do not speak v3.
    async fn handshake(&mut self) -> Result<(), ConnError> {
        let mut request = ApiVersionsRequest::default();
        request.client_software_name = StrBytes::from_static_str("streamtract");
        request.client_software_version = StrBytes::from_static_str(env!("CARGO_PKG_VERSION"));
        let response = match self
            .request::<_, ApiVersionsResponse>(ApiKey::ApiVersions, 3, &request)
            .await
        {
            Ok(r) if r.error_code != UNSUPPORTED_VERSION => r,
            // An old broker answers an unknown version with a v0 body saying so, which may not
            // decode as v3: ask again with v0 on the same connection (the frame was consumed).
            Ok(_) | Err(ConnError::Fatal(GroupError::Protocol { .. })) => {
                self.request::<_, ApiVersionsResponse>(
                    ApiKey::ApiVersions,
                    0,
                    &ApiVersionsRequest::default(),
                )
                .await?
            }
            Err(e) => return Err(e),
        };
        if response.error_code != 0 {
            return Err(ConnError::Io(format!(
                "broker {} answered ApiVersions with error {}",
                self.addr,
                super::error::describe(response.error_code)
            )));
        }
        self.broker_versions = response
            .api_keys
            .iter()
            .map(|k| {
                (
                    k.api_key,
                    VersionRange {
                        min: k.min_version,
                        max: k.max_version,
                    },
                )
            })
            .collect();
        Ok(())
    }

    /// The highest version of `api` within `ours` that the broker also speaks.
    pub(crate) fn version(
        &self,
        api: ApiKey,
        name: &'static str,
        ours: VersionRange,
    ) -> Result<i16, GroupError> {
        let theirs = self.broker_versions.get(&(api as i16));
        match theirs.map(|t| t.intersect(&ours)) {
            Some(common) if !common.is_empty() => Ok(common.max),
            _ => Err(GroupError::UnsupportedVersion {
                broker: self.addr.clone(),
                api: name,
                theirs: theirs.map_or("none".into(), |t| t.to_string()),
                ours: ours.to_string(),
            }),
        }
    }

    /// Sends one request and reads its response (one request in flight per connection).
    ///
    /// Not cancel-safe: if the future is dropped halfway the connection must be discarded,
    /// which the group coordinator does by holding it only while a
    /// request runs.
    pub(crate) async fn request<Req, Resp>(
        &mut self,
        api: ApiKey,
        version: i16,
        request: &Req,
    ) -> Result<Resp, ConnError>
    where
        Req: Encodable + HeaderVersion,
        Resp: Decodable + HeaderVersion,
    {
        self.correlation_id = self.correlation_id.wrapping_add(1);
        let correlation_id = self.correlation_id;
        let mut header = RequestHeader::default();
        header.request_api_key = api as i16;
        header.request_api_version = version;
        header.correlation_id = correlation_id;
        header.client_id = Some(self.client_id.clone());

        let encode_error = |e: anyhow::Error| {
            ConnError::Fatal(GroupError::Internal(format!(
                "cannot encode {api:?} v{version}: {e}"
            )))
        };
        let mut buf = BytesMut::with_capacity(256);
        buf.put_i32(0);
        header
            .encode(&mut buf, Req::header_version(version))
            .map_err(encode_error)?;
        request.encode(&mut buf, version).map_err(encode_error)?;
        let size = i32::try_from(buf.len() - 4).map_err(|_| {
            ConnError::Fatal(GroupError::Internal(format!(
                "{api:?} request of {} bytes is too large",
                buf.len()
            )))
        })?;
        buf[..4].copy_from_slice(&size.to_be_bytes());
        if let Err(e) = self.stream.write_all(&buf).await {
            return Err(self.io_failure("send to", e));
        }
        if let Err(e) = self.stream.flush().await {
            return Err(self.io_failure("send to", e));
        }

        let size = match self.stream.read_i32().await {
            Ok(size) => size,
            Err(e) => return Err(self.io_failure("read from", e)),
        };
        let size = usize::try_from(size)
            .ok()
            .filter(|s| (4..=MAX_RESPONSE_BYTES).contains(s))
            .ok_or_else(|| self.malformed(api, format!("response size {size}")))?;
        let mut body = vec![0u8; size];
        if let Err(e) = self.stream.read_exact(&mut body).await {
            return Err(self.io_failure("read from", e));
        }
        let mut body = Bytes::from(body);
        let header = ResponseHeader::decode(&mut body, Resp::header_version(version))
            .map_err(|e| self.malformed(api, format!("response header: {e}")))?;
        if header.correlation_id != correlation_id {
            // Responses come in request order; anything else means the stream is out of step.
            return Err(ConnError::Io(format!(
                "broker {} answered correlation id {} to request {correlation_id}; reconnecting",
                self.addr, header.correlation_id
            )));
        }
        Resp::decode(&mut body, version)
            .map_err(|e| self.malformed(api, format!("v{version}: {e}")))
    }

    fn malformed(&self, api: ApiKey, message: String) -> ConnError {
        ConnError::Fatal(GroupError::Protocol {
            what: api_name(api),
            source_name: format!("broker {}", self.addr),
            message,
        })
    }
}

/// A readable API name for messages.
pub(crate) fn api_name(api: ApiKey) -> &'static str {
    match api {
        ApiKey::ApiVersions => "ApiVersions response",
        ApiKey::FindCoordinator => "FindCoordinator response",
        ApiKey::JoinGroup => "JoinGroup response",
        ApiKey::SyncGroup => "SyncGroup response",
        ApiKey::Heartbeat => "Heartbeat response",
        ApiKey::LeaveGroup => "LeaveGroup response",
        ApiKey::OffsetCommit => "OffsetCommit response",
        ApiKey::OffsetFetch => "OffsetFetch response",
        ApiKey::Metadata => "Metadata response",
        ApiKey::SaslHandshake => "SaslHandshake response",
        ApiKey::SaslAuthenticate => "SaslAuthenticate response",
        _ => "response",
    }
}

/// A Kafka error code as its name.
fn describe_code(code: i16) -> String {
    ResponseError::try_from_code(code).map_or_else(|| format!("error {code}"), |e| e.to_string())
}
