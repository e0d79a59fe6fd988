//! Finding a group's coordinator and sending it requests, with retries: re-find on
//! `NOT_COORDINATOR` / `COORDINATOR_NOT_AVAILABLE` / a broken connection, back off on
//! `COORDINATOR_LOAD_IN_PROGRESS`, give up at the caller's deadline.

use std::time::Duration;

use kafka_protocol::messages::{
    ApiKey, FindCoordinatorRequest, FindCoordinatorResponse, HeartbeatRequest, HeartbeatResponse,
    JoinGroupRequest, JoinGroupResponse, LeaveGroupRequest, LeaveGroupResponse, MetadataRequest,
    MetadataResponse, OffsetCommitRequest, OffsetCommitResponse, OffsetFetchRequest,
    OffsetFetchResponse, SyncGroupRequest, SyncGroupResponse,
};
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion, StrBytes, VersionRange};
use kafka_protocol::ResponseError;
use tokio::sync::Mutex;
use tokio::time::Instant;

use super::connection::{ConnError, Connection};
use super::error::hint;
use super::GroupError;
use crate::kafka::KafkaConfig;

/// Error codes that mean "ask again elsewhere" or "ask again later".
const NOT_COORDINATOR: i16 = 16;
const COORDINATOR_NOT_AVAILABLE: i16 = 15;
const COORDINATOR_LOAD_IN_PROGRESS: i16 = 14;
const REQUEST_TIMED_OUT: i16 = 7;
const UNSTABLE_OFFSET_COMMIT: i16 = 88;

/// A request this module sends, with the versions it implements.
pub(crate) trait GroupRequest: Encodable + HeaderVersion + Send + Sync {
    /// The API key.
    const API: ApiKey;
    /// The API name, for messages.
    const NAME: &'static str;
    /// Versions this module builds and reads (a subset of what `kafka-protocol` encodes).
    const VERSIONS: VersionRange;
    /// The response type.
    type Response: Decodable + HeaderVersion + Send;
    /// A retriable error code carried by the response (coordinator moved, loading, ...), or 0.
    fn retriable_error(_response: &Self::Response) -> i16 {
        0
    }
}

fn retriable(code: i16) -> bool {
    matches!(
        code,
        NOT_COORDINATOR
            | COORDINATOR_NOT_AVAILABLE
            | COORDINATOR_LOAD_IN_PROGRESS
            | REQUEST_TIMED_OUT
            | UNSTABLE_OFFSET_COMMIT
    )
}

fn first_retriable(codes: impl IntoIterator<Item = i16>) -> i16 {
    codes.into_iter().find(|c| retriable(*c)).unwrap_or(0)
}

macro_rules! group_request {
    ($req:ty => $resp:ty, $api:ident, $min:expr, $max:expr) => {
        impl GroupRequest for $req {
            const API: ApiKey = ApiKey::$api;
            const NAME: &'static str = stringify!($api);
            const VERSIONS: VersionRange = VersionRange {
                min: $min,
                max: $max,
            };
            type Response = $resp;
            fn retriable_error(response: &$resp) -> i16 {
                first_retriable(codes(response))
            }
        }
    };
}

// Version ranges: from the first version with the semantics we need to the newest one that
// `kafka-protocol` 0.18 encodes and that still belongs to the classic group protocol.
group_request!(FindCoordinatorRequest => FindCoordinatorResponse, FindCoordinator, 0, 4);
group_request!(JoinGroupRequest => JoinGroupResponse, JoinGroup, 0, 9);
group_request!(SyncGroupRequest => SyncGroupResponse, SyncGroup, 0, 5);
group_request!(HeartbeatRequest => HeartbeatResponse, Heartbeat, 0, 4);
group_request!(LeaveGroupRequest => LeaveGroupResponse, LeaveGroup, 0, 5);
group_request!(OffsetCommitRequest => OffsetCommitResponse, OffsetCommit, 2, 9);
group_request!(OffsetFetchRequest => OffsetFetchResponse, OffsetFetch, 1, 9);
group_request!(MetadataRequest => MetadataResponse, Metadata, 1, 12);

/// Every error code a response carries (top level, per coordinator, member or partition).
trait Codes {
    fn codes(&self) -> Vec<i16>;
}

fn codes(response: &impl Codes) -> Vec<i16> {
    response.codes()
}

impl Codes for FindCoordinatorResponse {
    fn codes(&self) -> Vec<i16> {
        std::iter::once(self.error_code)
            .chain(self.coordinators.iter().map(|c| c.error_code))
            .collect()
    }
}

impl Codes for JoinGroupResponse {
    fn codes(&self) -> Vec<i16> {
        vec![self.error_code]
    }
}

impl Codes for SyncGroupResponse {
    fn codes(&self) -> Vec<i16> {
        vec![self.error_code]
    }
}

impl Codes for HeartbeatResponse {
    fn codes(&self) -> Vec<i16> {
        vec![self.error_code]
    }
}

impl Codes for LeaveGroupResponse {
    fn codes(&self) -> Vec<i16> {
        std::iter::once(self.error_code)
            .chain(self.members.iter().map(|m| m.error_code))
            .collect()
    }
}

impl Codes for OffsetCommitResponse {
    fn codes(&self) -> Vec<i16> {
        self.topics
            .iter()
            .flat_map(|t| t.partitions.iter().map(|p| p.error_code))
            .collect()
    }
}

impl Codes for OffsetFetchResponse {
    fn codes(&self) -> Vec<i16> {
        let v7 = self
            .topics
            .iter()
            .flat_map(|t| t.partitions.iter().map(|p| p.error_code));
        let v8 = self.groups.iter().flat_map(|g| {
            std::iter::once(g.error_code).chain(
                g.topics
                    .iter()
                    .flat_map(|t| t.partitions.iter().map(|p| p.error_code)),
            )
        });
        std::iter::once(self.error_code)
            .chain(v7)
            .chain(v8)
            .collect()
    }
}

impl Codes for MetadataResponse {
    fn codes(&self) -> Vec<i16> {
        // Per-topic errors are the leader's business (unknown topics are left unassigned).
        Vec::new()
    }
}

/// Retry pacing: 100 ms doubling to 2 s, never past the deadline.
pub(crate) struct Backoff {
    next: Duration,
}

impl Backoff {
    pub(crate) fn new() -> Backoff {
        Backoff {
            next: Duration::from_millis(100),
        }
    }

    /// Sleeps for the next step (cut at `deadline`).
    pub(crate) async fn wait(&mut self, deadline: Instant) {
        let until = (Instant::now() + self.next).min(deadline);
        tokio::time::sleep_until(until).await;
        self.next = (self.next * 2).min(Duration::from_secs(2));
    }
}

enum Failure {
    Retry(String),
    Fatal(GroupError),
}

impl From<ConnError> for Failure {
    fn from(e: ConnError) -> Failure {
        match e {
            ConnError::Io(m) => Failure::Retry(m),
            ConnError::Fatal(e) => Failure::Fatal(e),
        }
    }
}

/// The coordinator of one group, reached through the bootstrap brokers.
pub(crate) struct Coordinator {
    kafka: KafkaConfig,
    group: String,
    /// The connection, present between requests. A request takes it out and puts it back when
    /// it completed; a request abandoned halfway (cancelled, timed out) drops it, so the next
    /// one starts on a fresh connection instead of a stream that is out of step.
    slot: Mutex<Option<Connection>>,
}

impl Coordinator {
    /// Finds the coordinator of `group`, retrying until `kafka.connect_timeout`.
    pub(crate) async fn connect(
        kafka: &KafkaConfig,
        group: &str,
    ) -> Result<Coordinator, GroupError> {
        if kafka.brokers.is_empty() {
            return Err(GroupError::Config {
                field: "brokers",
                message: "is empty: give at least one bootstrap broker host:port".into(),
            });
        }
        let coordinator = Coordinator {
            kafka: kafka.clone(),
            group: group.to_string(),
            slot: Mutex::new(None),
        };
        let deadline = Instant::now() + kafka.connect_timeout;
        let started = Instant::now();
        let mut backoff = Backoff::new();
        loop {
            let last = match tokio::time::timeout_at(deadline, coordinator.find()).await {
                Ok(Ok(conn)) => {
                    *coordinator.slot.lock().await = Some(conn);
                    return Ok(coordinator);
                }
                Ok(Err(Failure::Fatal(e))) => return Err(e),
                Ok(Err(Failure::Retry(m))) => m,
                Err(_) => "no answer in time".to_string(),
            };
            if Instant::now() >= deadline {
                return Err(coordinator.timeout("FindCoordinator", started, last));
            }
            tracing::warn!(group, error = %last, "group coordinator not reachable yet, retrying");
            backoff.wait(deadline).await;
        }
    }

    /// The group id.
    pub(crate) fn group(&self) -> &str {
        &self.group
    }

    /// The client settings.
    pub(crate) fn kafka(&self) -> &KafkaConfig {
        &self.kafka
    }

    /// A deadline `request_timeout` from now.
    pub(crate) fn request_deadline(&self) -> Instant {
        Instant::now() + self.kafka.request_timeout
    }

    fn timeout(&self, operation: &'static str, started: Instant, last: String) -> GroupError {
        GroupError::Timeout {
            operation,
            group: self.group.clone(),
            brokers: self.kafka.brokers.join(","),
            waited: started.elapsed(),
            last_error: last,
        }
    }

    /// Asks the bootstrap brokers, in order, for the coordinator and connects to it.
    async fn find(&self) -> Result<Connection, Failure> {
        let mut last = String::from("no bootstrap broker");
        for broker in &self.kafka.brokers {
            let (conn, addr) = match self.ask_for_coordinator(broker).await {
                Ok(found) => found,
                Err(Failure::Retry(m)) => {
                    last = m;
                    continue;
                }
                Err(fatal) => return Err(fatal),
            };
            tracing::debug!(group = %self.group, coordinator = %addr, via = %broker, "found group coordinator");
            if addr == conn.addr() {
                return Ok(conn);
            }
            drop(conn);
            return Connection::open(&addr, &self.kafka)
                .await
                .map_err(Failure::from);
        }
        Err(Failure::Retry(last))
    }

    /// Asks one bootstrap broker where the coordinator is: the connection to that broker and
    /// the coordinator's `host:port`. [`Failure::Retry`]: ask the next broker.
    async fn ask_for_coordinator(&self, broker: &str) -> Result<(Connection, String), Failure> {
        let mut conn = Connection::open(broker, &self.kafka).await?;
        let version = conn
            .version(
                FindCoordinatorRequest::API,
                FindCoordinatorRequest::NAME,
                FindCoordinatorRequest::VERSIONS,
            )
            .map_err(Failure::Fatal)?;
        let mut request = FindCoordinatorRequest::default();
        if version >= 4 {
            request.coordinator_keys = vec![StrBytes::from_string(self.group.clone())];
        } else {
            request.key = StrBytes::from_string(self.group.clone());
        }
        // key_type 0 is "group" (the default).
        let response: FindCoordinatorResponse = conn
            .request(FindCoordinatorRequest::API, version, &request)
            .await?;
        let addr = self.coordinator_address(broker, version, &response)?;
        Ok((conn, addr))
    }

    /// The coordinator's `host:port` in a FindCoordinator response (one coordinator from v4
    /// on), or why there is none: retriable (ask the next broker) or fatal.
    fn coordinator_address(
        &self,
        broker: &str,
        version: i16,
        response: &FindCoordinatorResponse,
    ) -> Result<String, Failure> {
        let (code, message, host, port) = if version >= 4 {
            match response.coordinators.first() {
                Some(c) => (c.error_code, &c.error_message, &c.host, c.port),
                None => {
                    return Err(Failure::Retry(format!(
                        "broker {broker} answered FindCoordinator without a coordinator"
                    )))
                }
            }
        } else {
            (
                response.error_code,
                &response.error_message,
                &response.host,
                response.port,
            )
        };
        if code != 0 {
            let error = ResponseError::try_from_code(code).unwrap_or(ResponseError::Unknown(code));
            let detail = message
                .as_ref()
                .map(|m| format!(": {m}"))
                .unwrap_or_default();
            if retriable(code) {
                return Err(Failure::Retry(format!("broker {broker}: {error}{detail}")));
            }
            return Err(Failure::Fatal(GroupError::Broker {
                operation: "FindCoordinator",
                group: self.group.clone(),
                error,
                hint: hint(error),
            }));
        }
        Ok(format!("{}:{port}", host.as_str()))
    }

    /// Sends the request `build(version)` to the coordinator, retrying retriable failures until
    /// `deadline`. Returns the response and the version used.
    pub(crate) async fn send<R: GroupRequest>(
        &self,
        deadline: Instant,
        build: impl Fn(i16) -> R + Send + Sync,
    ) -> Result<(R::Response, i16), GroupError> {
        let started = Instant::now();
        let mut backoff = Backoff::new();
        loop {
            let attempt = async {
                let mut slot = self.slot.lock().await;
                let mut conn = match slot.take() {
                    Some(c) => c,
                    None => self.find().await?,
                };
                let version = conn
                    .version(R::API, R::NAME, R::VERSIONS)
                    .map_err(Failure::Fatal)?;
                let response = conn
                    .request::<R, R::Response>(R::API, version, &build(version))
                    .await?;
                let code = R::retriable_error(&response);
                if code == NOT_COORDINATOR || code == COORDINATOR_NOT_AVAILABLE {
                    // The group moved (or its coordinator is down): find it again next time.
                    drop(conn);
                } else {
                    *slot = Some(conn);
                }
                Ok::<_, Failure>((response, version, code))
            };
            let last = match tokio::time::timeout_at(deadline, attempt).await {
                Ok(Ok((response, version, 0))) => return Ok((response, version)),
                Ok(Ok((_, _, code))) => super::error::describe(code),
                Ok(Err(Failure::Fatal(e))) => return Err(e),
                Ok(Err(Failure::Retry(m))) => m,
                Err(_) => format!("no answer to {} in time", R::NAME),
            };
            if Instant::now() >= deadline {
                return Err(self.timeout(R::NAME, started, last));
            }
            tracing::debug!(group = %self.group, request = R::NAME, error = %last, "retrying");
            backoff.wait(deadline).await;
        }
    }
}
