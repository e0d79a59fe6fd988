//! A Confluent Schema Registry client: writer schemas fetched by id (`GET /schemas/ids/{id}`)
//! and cached for the life of the process, output schemas registered under a subject
//! (`POST /subjects/{subject}/versions`).
//!
//! HTTP/1.1 on hyper's client connection, plain TCP or TLS through tokio-rustls on ring (the
//! same TLS stack as the Kafka connections); one connection per request, since a schema is
//! fetched once per id. Basic auth comes from the settings or from the URL's `user:password@`.
//!
//! Registry ids are global and immutable in Confluent's design, so a schema once fetched is
//! kept; only a `404` for an id is a verdict about the record (the id is unknown), every other
//! failure (connection refused, `5xx`, `401`) is the registry's, retried with backoff for
//! [`RegistryConfig::retry_for`] before the records that need the schema are rejected.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use apache_avro::Schema;
use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

/// Largest registry response read (a schema is a few kilobytes; this bounds a misbehaving
/// server).
const MAX_RESPONSE_BYTES: usize = 4 << 20;
/// Longest one request (connect, TLS, request, response) may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Content type the Confluent registry speaks.
const CONTENT_TYPE: &str = "application/vnd.schemaregistry.v1+json";

/// Why the registry did not give what was asked. Messages fit on one line: they travel in
/// dead-letter headers.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistryError {
    /// The URL setting cannot be used.
    #[error("schema_registry `{url}`: {problem}")]
    Url {
        /// The URL as given (without a password).
        url: String,
        /// What is wrong with it.
        problem: String,
    },
    /// No answer: connection refused, TLS failure, timeout.
    #[error("schema registry {url} unreachable: {message}")]
    Unreachable {
        /// Registry base URL.
        url: String,
        /// The I/O or TLS error.
        message: String,
    },
    /// The registry answered with an error status other than 404.
    #[error("schema registry answered {status} to {what}: {message}{hint}")]
    Status {
        /// HTTP status code.
        status: u16,
        /// The request, e.g. `GET /schemas/ids/7`.
        what: String,
        /// The registry's message (shortened).
        message: String,
        /// What the user can do about it.
        hint: &'static str,
    },
    /// `404`: the schema id (or subject) does not exist in this registry.
    #[error("{what}: not found in the schema registry (404): {message}")]
    NotFound {
        /// The request, e.g. `GET /schemas/ids/7`.
        what: String,
        /// The registry's message (shortened).
        message: String,
    },
    /// The answer is not what the Confluent API documents, or the schema is not valid Avro.
    #[error("schema registry answer to {what} unusable: {message}")]
    Invalid {
        /// The request.
        what: String,
        /// What is wrong.
        message: String,
    },
}

impl RegistryError {
    /// Whether asking again later may succeed (the registry is down, overloaded or refusing
    /// our credentials for now), as opposed to a verdict on the request (404, bad schema).
    pub fn is_transient(&self) -> bool {
        match self {
            RegistryError::Unreachable { .. } => true,
            RegistryError::Status { status, .. } => {
                *status >= 500 || matches!(*status, 401 | 403 | 408 | 429)
            }
            _ => false,
        }
    }
}

/// Where the registry is and how to talk to it.
#[derive(Clone)]
pub struct RegistryConfig {
    /// `http://host:port[/prefix]` or `https://...`; `user:password@` in it gives basic auth.
    pub url: String,
    /// Basic-auth user (overrides the URL's).
    pub username: Option<String>,
    /// Basic-auth password (overrides the URL's).
    pub password: Option<String>,
    /// TLS client settings for an `https` URL (trusted CAs, client certificate); `None` with an
    /// `https` URL is an error, so that the caller decides which CAs to trust.
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// How long a fetch keeps retrying a registry that is unreachable or fails (5xx, 401)
    /// before giving up: 60 s by default.
    pub retry_for: Duration,
}

impl RegistryConfig {
    /// A registry at `url`, no credentials beyond the URL's, no TLS settings.
    pub fn new(url: impl Into<String>) -> RegistryConfig {
        RegistryConfig {
            url: url.into(),
            username: None,
            password: None,
            tls: None,
            retry_for: Duration::from_secs(60),
        }
    }
}

impl fmt::Debug for RegistryConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RegistryConfig")
            .field("url", &redact(&self.url))
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("tls", &self.tls.is_some())
            .field("retry_for", &self.retry_for)
            .finish()
    }
}

/// The URL without the password of its userinfo, for messages and logs.
fn redact(url: &str) -> String {
    match Endpoint::split(url) {
        Some((scheme, Some((user, _)), rest)) => format!("{scheme}://{user}:***@{rest}"),
        _ => url.to_string(),
    }
}

/// `user:password` of a URL.
type UserInfo<'a> = (&'a str, &'a str);

/// Parsed URL pieces.
#[derive(Debug, Clone)]
struct Endpoint {
    https: bool,
    host: String,
    port: u16,
    /// Path prefix without a trailing `/` (empty for the root).
    prefix: String,
    /// `Basic ...` header value.
    auth: Option<String>,
    /// The URL without a password, for messages.
    shown: String,
}

impl Endpoint {
    /// `(scheme, Some((user, password)), host-and-path)`.
    fn split(url: &str) -> Option<(&str, Option<UserInfo<'_>>, &str)> {
        let (scheme, rest) = url.split_once("://")?;
        let authority_end = rest.find('/').unwrap_or(rest.len());
        match rest[..authority_end].rsplit_once('@') {
            Some((userinfo, _)) => {
                let (user, password) = userinfo.split_once(':').unwrap_or((userinfo, ""));
                Some((scheme, Some((user, password)), &rest[userinfo.len() + 1..]))
            }
            None => Some((scheme, None, rest)),
        }
    }

    fn parse(config: &RegistryConfig) -> Result<Endpoint, RegistryError> {
        let shown = redact(&config.url);
        let err = |problem: &str| RegistryError::Url {
            url: shown.clone(),
            problem: problem.to_string(),
        };
        let (scheme, userinfo, rest) = Endpoint::split(config.url.trim())
            .ok_or_else(|| err("expected http://HOST:PORT or https://HOST:PORT"))?;
        let https = match scheme {
            "http" => false,
            "https" => true,
            _ => return Err(err("the scheme must be http or https")),
        };
        let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || authority.starts_with('[') => (
                h,
                p.parse::<u16>()
                    .map_err(|_| err("the port must be a number from 1 to 65535"))?,
            ),
            _ => (authority, if https { 443 } else { 80 }),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return Err(err("no host"));
        }
        let user = config
            .username
            .as_deref()
            .or(userinfo.map(|(u, _)| u))
            .filter(|u| !u.is_empty());
        let password = config
            .password
            .as_deref()
            .or(userinfo.map(|(_, p)| p))
            .unwrap_or("");
        let auth = user.map(|u| {
            let token = base64::engine::general_purpose::STANDARD.encode(format!("{u}:{password}"));
            format!("Basic {token}")
        });
        if https && config.tls.is_none() {
            return Err(err("an https URL needs TLS settings (trusted CAs)"));
        }
        Ok(Endpoint {
            https,
            host: host.to_string(),
            port,
            prefix: path.trim_end_matches('/').to_string(),
            auth,
            shown,
        })
    }
}

/// A schema registry client with its cache of schemas by id. Cheap to clone; clones share the
/// cache.
#[derive(Clone)]
pub struct SchemaRegistry {
    inner: Arc<Inner>,
}

struct Inner {
    endpoint: Endpoint,
    tls: Option<Arc<rustls::ClientConfig>>,
    retry_for: Duration,
    schemas: Mutex<HashMap<u32, Arc<Schema>>>,
}

impl fmt::Debug for SchemaRegistry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SchemaRegistry")
            .field("url", &self.inner.endpoint.shown)
            .field("retry_for", &self.inner.retry_for)
            .finish_non_exhaustive()
    }
}

impl SchemaRegistry {
    /// A client for `config`; checks the URL, does not connect yet (see [`check`](Self::check)).
    pub fn new(config: &RegistryConfig) -> Result<SchemaRegistry, RegistryError> {
        Ok(SchemaRegistry {
            inner: Arc::new(Inner {
                endpoint: Endpoint::parse(config)?,
                tls: config.tls.clone(),
                retry_for: config.retry_for,
                schemas: Mutex::new(HashMap::new()),
            }),
        })
    }

    /// The base URL, without a password.
    pub fn url(&self) -> &str {
        &self.inner.endpoint.shown
    }

    /// How long fetches retry a failing registry.
    pub fn retry_for(&self) -> Duration {
        self.inner.retry_for
    }

    /// The schema with this id if it was fetched already.
    pub fn cached(&self, id: u32) -> Option<Arc<Schema>> {
        self.lock().get(&id).cloned()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u32, Arc<Schema>>> {
        // A panic while holding the lock cannot leave the map half-updated (one insert).
        self.inner
            .schemas
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The writer schema with this id: from the cache, else fetched (one attempt; see
    /// [`fetch_retrying`](Self::fetch_retrying)).
    pub async fn schema(&self, id: u32) -> Result<Arc<Schema>, RegistryError> {
        if let Some(schema) = self.cached(id) {
            return Ok(schema);
        }
        let what = format!("GET /schemas/ids/{id}");
        let body = self
            .call(Method::GET, &format!("/schemas/ids/{id}"), None)
            .await?;
        let schema = Arc::new(parse_schema_answer(&what, &body)?);
        self.lock().insert(id, Arc::clone(&schema));
        Ok(schema)
    }

    /// [`schema`](Self::schema), retried with backoff (100 ms doubling to 5 s) while the
    /// failure is transient, for at most [`RegistryConfig::retry_for`].
    pub async fn fetch_retrying(&self, id: u32) -> Result<Arc<Schema>, RegistryError> {
        retrying(self.inner.retry_for, || self.schema(id)).await
    }

    /// Checks that the registry answers, at start-up: reads the latest schema of `subject`.
    /// `Ok(None)` when the subject has no versions (the registry answered 404); an unreachable
    /// registry or a refusal (401, 5xx) is an error, retried for `within`.
    pub async fn check(
        &self,
        subject: &str,
        within: Duration,
    ) -> Result<Option<Schema>, RegistryError> {
        let path = format!("/subjects/{}/versions/latest", encode_path(subject));
        let what = format!("GET {path}");
        match retrying(within, || self.call(Method::GET, &path, None)).await {
            Ok(body) => parse_schema_answer(&what, &body).map(Some),
            Err(RegistryError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Registers `schema` (Avro JSON) under `subject` and returns its id; registering the same
    /// schema again returns the same id. Retried like fetches.
    pub async fn register(&self, subject: &str, schema: &str) -> Result<u32, RegistryError> {
        let path = format!("/subjects/{}/versions", encode_path(subject));
        let body = serde_json::json!({ "schema": schema }).to_string();
        let answer = retrying(self.inner.retry_for, || {
            self.call(Method::POST, &path, Some(body.clone()))
        })
        .await?;
        let invalid = |message: String| RegistryError::Invalid {
            what: format!("POST {path}"),
            message,
        };
        let parsed: serde_json::Value =
            serde_json::from_slice(&answer).map_err(|e| invalid(e.to_string()))?;
        let id = parsed
            .get("id")
            .and_then(|v| v.as_u64())
            .and_then(|v| u32::try_from(v).ok())
            .ok_or_else(|| invalid(format!("no numeric `id` in {}", shorten(&answer))))?;
        Ok(id)
    }

    /// One request; the body of a 2xx answer, else the error it means.
    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<String>,
    ) -> Result<Bytes, RegistryError> {
        let what = format!("{method} {path}");
        let unreachable = |message: String| RegistryError::Unreachable {
            url: self.inner.endpoint.shown.clone(),
            message,
        };
        let exchange = self.exchange(method, path, body);
        let (status, bytes) = tokio::time::timeout(REQUEST_TIMEOUT, exchange)
            .await
            .map_err(|_| unreachable(format!("no answer within {REQUEST_TIMEOUT:?}")))?
            .map_err(unreachable)?;
        if status.is_success() {
            return Ok(bytes);
        }
        let message = registry_message(&bytes);
        if status == StatusCode::NOT_FOUND {
            return Err(RegistryError::NotFound { what, message });
        }
        let hint = match status.as_u16() {
            401 | 403 => " (check schema_registry_user and schema_registry_password)",
            _ => "",
        };
        Err(RegistryError::Status {
            status: status.as_u16(),
            what,
            message,
            hint,
        })
    }

    /// Connects (TCP, then TLS for https), sends one request, reads the answer.
    async fn exchange(
        &self,
        method: Method,
        path: &str,
        body: Option<String>,
    ) -> Result<(StatusCode, Bytes), String> {
        let ep = &self.inner.endpoint;
        let tcp = TcpStream::connect((ep.host.as_str(), ep.port))
            .await
            .map_err(|e| e.to_string())?;
        let _ = tcp.set_nodelay(true);
        let mut request = Request::builder()
            .method(method)
            .uri(format!("{}{path}", ep.prefix))
            .header(hyper::header::HOST, format!("{}:{}", ep.host, ep.port))
            .header(hyper::header::ACCEPT, CONTENT_TYPE);
        if let Some(auth) = &ep.auth {
            request = request.header(hyper::header::AUTHORIZATION, auth.as_str());
        }
        if body.is_some() {
            request = request.header(hyper::header::CONTENT_TYPE, CONTENT_TYPE);
        }
        let request = request
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| format!("cannot build the request: {e}"))?;
        match (&self.inner.tls, ep.https) {
            (Some(tls), true) => {
                let name = rustls::pki_types::ServerName::try_from(ep.host.clone())
                    .map_err(|e| format!("{}: {e}", ep.host))?;
                let stream = tokio_rustls::TlsConnector::from(Arc::clone(tls))
                    .connect(name, tcp)
                    .await
                    .map_err(|e| format!("TLS: {e}"))?;
                send(stream, request).await
            }
            _ => send(tcp, request).await,
        }
    }
}

/// HTTP/1.1 over `stream`: one request, the whole answer (bounded).
async fn send<S>(stream: S, request: Request<Full<Bytes>>) -> Result<(StatusCode, Bytes), String>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    // The connection task ends when the answer is read and `sender` dropped.
    tokio::spawn(connection);
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| e.to_string())?;
    let status = response.status();
    let body = Limited::new(response.into_body(), MAX_RESPONSE_BYTES)
        .collect()
        .await
        .map_err(|e| format!("reading the answer: {e}"))?
        .to_bytes();
    Ok((status, body))
}

/// Runs `attempt` until it succeeds, fails for good, or `within` has passed (then the last
/// transient error is returned).
async fn retrying<T, F, Fut>(within: Duration, mut attempt: F) -> Result<T, RegistryError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, RegistryError>>,
{
    let deadline = tokio::time::Instant::now() + within;
    let mut pause = Duration::from_millis(100);
    loop {
        match attempt().await {
            Err(e) if e.is_transient() && tokio::time::Instant::now() + pause < deadline => {
                tracing::warn!(error = %e, retry_in_ms = pause.as_millis() as u64, "schema registry request failed; retrying");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(5));
            }
            other => return other,
        }
    }
}

/// The `schema` of a `GET /schemas/ids/{id}` or `GET /subjects/.../versions/latest` answer,
/// parsed as Avro.
fn parse_schema_answer(what: &str, body: &[u8]) -> Result<Schema, RegistryError> {
    let invalid = |message: String| RegistryError::Invalid {
        what: what.to_string(),
        message,
    };
    let parsed: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| invalid(format!("not JSON: {e}")))?;
    if let Some(kind) = parsed.get("schemaType").and_then(|t| t.as_str()) {
        if kind != "AVRO" {
            return Err(invalid(format!("the schema is {kind}, not AVRO")));
        }
    }
    let text = parsed
        .get("schema")
        .and_then(|s| s.as_str())
        .ok_or_else(|| invalid(format!("no `schema` string in {}", shorten(body))))?;
    Schema::parse_str(text).map_err(|e| invalid(format!("not a valid Avro schema: {e}")))
}

/// The `message` of a registry error answer, or the start of the body.
fn registry_message(body: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| {
            v.get("message")
                .and_then(|m| m.as_str())
                .map(str::to_string)
        })
        .unwrap_or_else(|| shorten(body))
        .replace(['\n', '\r'], " ")
}

fn shorten(body: &[u8]) -> String {
    String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned()
}

/// Percent-encodes what a subject name may hold that a path segment may not.
fn encode_path(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    for b in segment.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_give_host_port_prefix_and_basic_auth() {
        let ep =
            Endpoint::parse(&RegistryConfig::new("http://bob:s3cret@reg.local:8081/sr/")).unwrap();
        assert_eq!((ep.host.as_str(), ep.port), ("reg.local", 8081));
        assert_eq!(ep.prefix, "/sr");
        assert_eq!(ep.auth.as_deref(), Some("Basic Ym9iOnMzY3JldA=="));
        assert_eq!(ep.shown, "http://bob:***@reg.local:8081/sr/");
        let mut config = RegistryConfig::new("http://127.0.0.1:8081");
        config.username = Some("alice".into());
        config.password = Some("pw".into());
        let ep = Endpoint::parse(&config).unwrap();
        assert_eq!(ep.auth.as_deref(), Some("Basic YWxpY2U6cHc="));
        assert_eq!(ep.prefix, "");
        assert!(Endpoint::parse(&RegistryConfig::new("ftp://x:1")).is_err());
        assert!(Endpoint::parse(&RegistryConfig::new("https://x:1")).is_err());
        assert!(Endpoint::parse(&RegistryConfig::new("http://x:notaport")).is_err());
    }

    #[test]
    fn only_registry_side_failures_are_transient() {
        let status = |status| RegistryError::Status {
            status,
            what: String::new(),
            message: String::new(),
            hint: "",
        };
        assert!(status(500).is_transient());
        assert!(status(401).is_transient());
        assert!(!status(422).is_transient());
        let not_found = RegistryError::NotFound {
            what: String::new(),
            message: String::new(),
        };
        assert!(!not_found.is_transient());
        assert_eq!(encode_path("my topic-value"), "my%20topic-value");
    }
}
