//! Kafka consumer groups: membership over the standard `consumer` group protocol, and committed
//! offsets. rskafka has none of this; the messages come from the `kafka-protocol` crate and the
//! wire work (framing, version negotiation, coordinator discovery) is done here.
//!
//! # Protocol flow
//!
//! 1. **Coordinator.** `FindCoordinator` (key type "group") is sent to a bootstrap broker; the
//!    answer names the broker that owns the group. One TCP connection to it carries every group
//!    request. `ApiVersions` on each connection picks, per API, the highest version both the broker
//!    and this module speak. `NOT_COORDINATOR`, `COORDINATOR_NOT_AVAILABLE`, a dropped connection
//!    or a timed-out attempt make the module find the coordinator again and retry with a bounded
//!    backoff (100 ms doubling to 2 s), until the operation's deadline
//!    ([`KafkaConfig::request_timeout`](crate::kafka::KafkaConfig), or the rebalance timeout for a
//!    join).
//! 2. **Join.** `JoinGroup` with protocol type `consumer` and one protocol per configured
//!    [`Assignor`] (`range`, `roundrobin`: the Java client's and librdkafka's names), each
//!    carrying the standard subscription (version 1: topics, no user data, no owned partitions,
//!    because an eager member owns nothing while it rejoins). A first join gets
//!    `MEMBER_ID_REQUIRED` and repeats with the member id the broker handed out.
//! 3. **Sync.** The broker names a leader and the protocol (assignor) the group agreed on. The
//!    leader decodes every member's subscription, reads the partition counts of the subscribed
//!    topics (`Metadata`), runs the assignor ([`Assignor::assign`]) and sends every member's
//!    assignment in `SyncGroup` (standard `ConsumerProtocolAssignment` encoding); followers send an
//!    empty `SyncGroup` and get their part. `REBALANCE_IN_PROGRESS`, `ILLEGAL_GENERATION` or
//!    `UNKNOWN_MEMBER_ID` on join or sync start the round again (the last one with a fresh member
//!    id).
//! 4. **Heartbeats.** A background task sends `Heartbeat` every `heartbeat_interval`. When the
//!    answer is `REBALANCE_IN_PROGRESS` (another member joined or left), or the membership is gone
//!    (`UNKNOWN_MEMBER_ID`, `ILLEGAL_GENERATION`, or no answer for a whole session timeout),
//!    [`GroupMember::rebalance_needed`] resolves. The protocol is *eager*: the owner stops fetching
//!    every partition, commits what it may, and calls [`GroupMember::rejoin`]; heartbeats go on
//!    until then so the session survives a slow drain (within `rebalance_timeout`).
//! 5. **Offsets.** `OffsetFetch` reads the committed position of a set of partitions (`None`
//!    when nothing was committed); `OffsetCommit` stores "next offset to read" per partition,
//!    tagged with the member id and generation so that a member that lost its partitions cannot
//!    overwrite the new owner's progress. [`OffsetStore`] commits without membership (generation
//!    -1, empty member id), the way Kafka lets simple consumers store positions in a group.
//! 6. **Leave.** `LeaveGroup` on shutdown makes the others rebalance at once instead of after a
//!    session timeout.
//!
//! This module is only the mechanism. *When* to commit is the caller's business: for
//! at-least-once delivery the pipeline commits, per partition, only offsets whose outputs the
//! broker acknowledged, and does so before it rejoins or leaves.
//!
//! # Broker compatibility
//!
//! Versions are negotiated per connection (see [`GroupMember`] for the ranges this module speaks).
//! Tested against tansu 0.6.0 (with the newest versions both sides speak, and with every API
//! capped at its oldest version), whose group coordinator differs from Apache Kafka's:
//!
//! - **No waiting in JoinGroup.** tansu answers at once instead of waiting for every member to
//!   rejoin, and answers a follower's SyncGroup that arrives before the leader's with
//!   `REBALANCE_IN_PROGRESS`; the follower joins again (tansu delays followers' joins by 3 s). A
//!   rebalance takes a few seconds longer than on Kafka but ends in the same assignment. It
//!   also weakens the hand-over: the leader's assignment can reach a partition's new owner
//!   while the old owner, which has not yet seen the rebalance, is still finishing records of
//!   it that it has not committed. The new owner reads them again from the last commit, so they
//!   are written twice (at least once still holds; on Kafka the old owner drains and commits
//!   before anyone is assigned).
//! - **Eviction keeps the generation.** When a heartbeat finds that another member's session
//!   expired, tansu answers `REBALANCE_IN_PROGRESS` but keeps the group "formed" at the same
//!   generation with the old assignments, so the evicted member's partitions would stay
//!   unassigned. Worked around: a rejoin that follows a rebalance announcement and lands in the
//!   same generation (impossible on Kafka, where every rebalance starts a new one), or a
//!   SyncGroup that hands the leader something other than what it sent, makes the member leave
//!   and join again as a new member; that forces a new generation and a fresh assignment for
//!   all. (Not covered: an expiry that tansu first notices at a JoinGroup or SyncGroup rather
//!   than at a heartbeat moves the group back to forming without a new generation, and members
//!   that are not rejoining are not told. Membership changes otherwise always bump it.)
//! - **Commits are not fenced.** tansu does not check the generation or member id of
//!   `OffsetCommit`: commits from a member that lost its partitions, and standalone commits while
//!   the group has members, are accepted (Kafka rejects them with `ILLEGAL_GENERATION` /
//!   `UNKNOWN_MEMBER_ID`; this module reports those as [`GroupError::NotInGeneration`] /
//!   [`GroupError::GroupNotEmpty`]).
//! - **Only heartbeats keep a session alive** (not JoinGroup/SyncGroup): a member that spends a
//!   whole session timeout in a join round is dropped and joins again with a new id.
//! - **The first member picks the assignor.** The group uses the first member's most preferred
//!   assignor and refuses members that do not offer it (`INCONSISTENT_GROUP_PROTOCOL`), where
//!   Kafka picks one every member supports. Give all members the same preference order.

mod assignor;
mod connection;
mod coordinator;
mod error;
mod member;
mod offsets;
mod protocol;

use std::fmt;
use std::time::Duration;

pub use assignor::{Assignor, MemberSubscription};
pub(crate) use connection::check_security;
pub use error::GroupError;
pub use member::GroupMember;
pub use offsets::OffsetStore;

/// One partition of one topic.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TopicPartition {
    /// Topic name.
    pub topic: String,
    /// Partition index.
    pub partition: i32,
}

impl TopicPartition {
    /// `topic`/`partition`.
    pub fn new(topic: impl Into<String>, partition: i32) -> TopicPartition {
        TopicPartition {
            topic: topic.into(),
            partition,
        }
    }
}

impl fmt::Display for TopicPartition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.topic, self.partition)
    }
}

impl<T: Into<String>> From<(T, i32)> for TopicPartition {
    fn from((topic, partition): (T, i32)) -> TopicPartition {
        TopicPartition::new(topic, partition)
    }
}

/// How a [`GroupMember`] takes part in its group. The defaults are the Java client's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupConfig {
    /// The group id (`group.id`): every process with the same id shares the partitions.
    pub group_id: String,
    /// The broker drops a member it has not heard a heartbeat from for this long
    /// (`session.timeout.ms`, default 45 s). Must lie within the broker's
    /// `group.min.session.timeout.ms`..`group.max.session.timeout.ms` (6 s..30 min on Kafka).
    pub session_timeout: Duration,
    /// How long the broker waits for every member to rejoin during a rebalance
    /// (`max.poll.interval.ms`, default 300 s): the owner must drain, commit and call
    /// [`GroupMember::rejoin`] within this time after [`GroupMember::rebalance_needed`] fired.
    pub rebalance_timeout: Duration,
    /// Time between heartbeats (`heartbeat.interval.ms`, default 3 s); well below the session
    /// timeout (a third or less).
    pub heartbeat_interval: Duration,
    /// The assignors this member supports, most preferred first
    /// (`partition.assignment.strategy`, default `[range]`). Every member of a group must share at
    /// least one; the broker picks one that all support.
    pub assignors: Vec<Assignor>,
}

impl GroupConfig {
    /// A config for `group_id` with the Java client's defaults (session 45 s, rebalance 300 s,
    /// heartbeat 3 s, `range`).
    pub fn new(group_id: impl Into<String>) -> GroupConfig {
        GroupConfig {
            group_id: group_id.into(),
            session_timeout: Duration::from_secs(45),
            rebalance_timeout: Duration::from_secs(300),
            heartbeat_interval: Duration::from_secs(3),
            assignors: vec![Assignor::Range],
        }
    }

    /// Sets the assignor preference list.
    pub fn assignors(mut self, assignors: impl IntoIterator<Item = Assignor>) -> GroupConfig {
        self.assignors = assignors.into_iter().collect();
        self
    }

    /// Sets the session timeout.
    pub fn session_timeout(mut self, timeout: Duration) -> GroupConfig {
        self.session_timeout = timeout;
        self
    }

    /// Sets the rebalance timeout (max poll interval).
    pub fn rebalance_timeout(mut self, timeout: Duration) -> GroupConfig {
        self.rebalance_timeout = timeout;
        self
    }

    /// Sets the heartbeat interval.
    pub fn heartbeat_interval(mut self, interval: Duration) -> GroupConfig {
        self.heartbeat_interval = interval;
        self
    }

    /// Checks the settings against each other; the error names the field.
    pub fn validate(&self) -> Result<(), GroupError> {
        let invalid =
            |field: &'static str, message: String| Err(GroupError::Config { field, message });
        if self.group_id.is_empty() {
            return invalid("group_id", "must not be empty".into());
        }
        if self.assignors.is_empty() {
            return invalid(
                "assignors",
                "needs at least one of `range`, `roundrobin`".into(),
            );
        }
        let ms = |d: Duration| d.as_millis();
        if ms(self.session_timeout) == 0 || ms(self.session_timeout) > i32::MAX as u128 {
            return invalid(
                "session_timeout",
                format!(
                    "must be between 1 ms and {} ms, found {:?}",
                    i32::MAX,
                    self.session_timeout
                ),
            );
        }
        if ms(self.rebalance_timeout) == 0 || ms(self.rebalance_timeout) > i32::MAX as u128 {
            return invalid(
                "rebalance_timeout",
                format!(
                    "must be between 1 ms and {} ms, found {:?}",
                    i32::MAX,
                    self.rebalance_timeout
                ),
            );
        }
        if self.heartbeat_interval.is_zero() || self.heartbeat_interval >= self.session_timeout {
            return invalid(
                "heartbeat_interval",
                format!(
                    "must be above zero and below session_timeout ({:?}), ideally a third of it or less; found {:?}",
                    self.session_timeout, self.heartbeat_interval
                ),
            );
        }
        Ok(())
    }
}
