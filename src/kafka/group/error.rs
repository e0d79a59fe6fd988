//! What can go wrong in a consumer group, worded for the person running the pipeline.

use std::time::Duration;

use kafka_protocol::ResponseError;

use super::TopicPartition;

/// A consumer-group or offset operation failed.
#[derive(Debug, thiserror::Error)]
pub enum GroupError {
    /// A [`GroupConfig`](super::GroupConfig) field holds a value that cannot work.
    #[error("consumer group setting `{field}` {message}")]
    Config {
        /// The field name.
        field: &'static str,
        /// What is wrong with it.
        message: String,
    },
    /// An assignor name that neither the Java client nor librdkafka knows.
    #[error("unknown partition assignor `{0}`: expected `range` or `roundrobin` (a comma-separated list for several, most preferred first)")]
    UnknownAssignor(String),
    /// An offset to commit is negative.
    #[error("cannot commit offset {offset} for {partition}: offsets are >= 0 (commit the offset of the next record to read)")]
    InvalidOffset {
        /// The partition.
        partition: TopicPartition,
        /// The offending offset.
        offset: i64,
    },
    /// No broker answered, or the operation kept failing with retriable errors until its deadline.
    #[error("{operation} for group `{group}` did not succeed within {:.1} s (brokers {brokers}); last error: {last_error}. Check that the broker is running and reachable, or raise the request timeout if it is only slow", waited.as_secs_f32())]
    Timeout {
        /// What we were doing (FindCoordinator, JoinGroup, OffsetCommit, ...).
        operation: &'static str,
        /// The group id.
        group: String,
        /// The bootstrap brokers.
        brokers: String,
        /// How long we tried.
        waited: Duration,
        /// The last failure seen.
        last_error: String,
    },
    /// The broker does not speak any version of an API that this module speaks.
    #[error("broker {broker} supports {api} versions {theirs}, this client speaks {ours}: consumer groups need a broker compatible with Kafka 0.10 or later")]
    UnsupportedVersion {
        /// The broker's address.
        broker: String,
        /// The API (JoinGroup, OffsetCommit, ...).
        api: &'static str,
        /// Versions the broker offers, or "none".
        theirs: String,
        /// Versions this module implements.
        ours: String,
    },
    /// A message from the broker or from another group member could not be read.
    #[error("malformed {what} from {source_name}: {message} (a broker or group member that does not follow the Kafka protocol)")]
    Protocol {
        /// What was being decoded.
        what: &'static str,
        /// Who sent it (a broker address, or a member id).
        source_name: String,
        /// The decoder's complaint.
        message: String,
    },
    /// The broker refused the request with an error code that retrying will not fix.
    #[error("{operation} for group `{group}` was refused by the broker: {error} (Kafka error {}){hint}", error.code())]
    Broker {
        /// The request.
        operation: &'static str,
        /// The group id.
        group: String,
        /// The Kafka error code.
        error: ResponseError,
        /// What to do about it, with a leading separator; may be empty.
        hint: String,
    },
    /// The group already runs with a protocol type or assignor this member does not offer.
    #[error("group `{group}` is in use by members with another protocol or assignor than ours ({offered}); give every member of the group a common `partition.assignment.strategy` (range or roundrobin), or use another group id")]
    InconsistentProtocol {
        /// The group id.
        group: String,
        /// The assignors this member offered.
        offered: String,
    },
    /// A commit was rejected because this member is no longer in the group's current
    /// generation: its partitions may already belong to another member.
    #[error("commit for group `{group}` rejected: {reason}. This member's generation {generation} is over: stop fetching, call rejoin() and resume from the committed offsets")]
    NotInGeneration {
        /// The group id.
        group: String,
        /// The generation the commit was made for.
        generation: i32,
        /// The broker's reason (REBALANCE_IN_PROGRESS, ILLEGAL_GENERATION, UNKNOWN_MEMBER_ID).
        reason: String,
    },
    /// A standalone commit ([`OffsetStore`](super::OffsetStore)) was rejected because the group
    /// has active members.
    #[error("standalone commit for group `{group}` rejected ({reason}): Kafka accepts commits without membership only while the group has no members. Stop the group's members, or use a group id of its own for explicitly assigned partitions")]
    GroupNotEmpty {
        /// The group id.
        group: String,
        /// The broker's error.
        reason: String,
    },
    /// Some partitions of a commit or fetch failed.
    #[error("{operation} for group `{group}` failed for {}: {}", plural(failures.len()), list(failures))]
    Partitions {
        /// The request.
        operation: &'static str,
        /// The group id.
        group: String,
        /// Each failed partition with the broker's error and a hint.
        failures: Vec<(TopicPartition, String)>,
    },
    /// A TLS handshake or SASL authentication with the coordinator failed.
    #[error(transparent)]
    Security(#[from] crate::kafka::SecurityError),
    /// The background heartbeat task or the connection ended unexpectedly.
    #[error("internal consumer-group error: {0}")]
    Internal(String),
}

impl GroupError {
    /// True if the member must rejoin before it commits again (its generation is over).
    pub fn needs_rejoin(&self) -> bool {
        matches!(self, GroupError::NotInGeneration { .. })
    }
}

fn plural(n: usize) -> String {
    if n == 1 {
        "1 partition".into()
    } else {
        format!("{n} partitions")
    }
}

fn list(failures: &[(TopicPartition, String)]) -> String {
    const SHOWN: usize = 5;
    let mut parts: Vec<String> = failures
        .iter()
        .take(SHOWN)
        .map(|(tp, e)| format!("{tp}: {e}"))
        .collect();
    if failures.len() > SHOWN {
        parts.push(format!("and {} more", failures.len() - SHOWN));
    }
    parts.join("; ")
}

/// What to do about a broker error code, with a leading " (" or empty.
pub(crate) fn hint(error: ResponseError) -> String {
    let text = match error {
        ResponseError::GroupAuthorizationFailed => {
            "the client is not allowed to use this group; grant it READ on the group"
        }
        ResponseError::TopicAuthorizationFailed => {
            "the client is not allowed to read this topic; grant it READ on the topic"
        }
        ResponseError::InvalidSessionTimeout => {
            "session_timeout must lie within the broker's group.min.session.timeout.ms..group.max.session.timeout.ms (6 s..30 min by default)"
        }
        ResponseError::InvalidGroupId => "the group id is not valid",
        ResponseError::GroupMaxSizeReached => {
            "the group already has group.max.size members; raise it on the broker or start fewer members"
        }
        ResponseError::UnknownTopicOrPartition => "the topic or partition does not exist",
        ResponseError::OffsetMetadataTooLarge => "the commit metadata is too large",
        ResponseError::InvalidCommitOffsetSize => "the commit request is too large",
        ResponseError::FencedInstanceId => "another member uses the same group.instance.id",
        _ => "",
    };
    if text.is_empty() {
        String::new()
    } else {
        format!(" ({text})")
    }
}

/// The error name and hint for a per-partition failure.
pub(crate) fn describe(code: i16) -> String {
    match ResponseError::try_from_code(code) {
        Some(e) => format!("{e}{}", hint(e)),
        None => "no error".into(),
    }
}
