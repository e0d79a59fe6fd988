//! Membership: join and sync (with the leader's assignment), heartbeats, rejoin, leave.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use kafka_protocol::messages::join_group_request::JoinGroupRequestProtocol;
use kafka_protocol::messages::join_group_response::JoinGroupResponseMember;
use kafka_protocol::messages::leave_group_request::MemberIdentity;
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::sync_group_request::SyncGroupRequestAssignment;
use kafka_protocol::messages::{
    GroupId, HeartbeatRequest, JoinGroupRequest, JoinGroupResponse, LeaveGroupRequest,
    MetadataRequest, SyncGroupRequest, SyncGroupResponse, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::coordinator::{Backoff, Coordinator};
use super::error::hint;
use super::offsets::{self, CommitFailure, Committer};
use super::protocol::{self, PROTOCOL_TYPE};
use super::{Assignor, GroupConfig, GroupError, MemberSubscription, TopicPartition};
use crate::kafka::KafkaConfig;

/// Where the membership stands, as seen by the heartbeat task and by commits.
#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    /// In the current generation.
    Stable,
    /// The group is rebalancing: rejoin (the member id is still valid).
    Rebalance(String),
    /// The membership is gone (evicted, fenced, or the coordinator unreachable for a session).
    Lost {
        reason: String,
        /// The broker no longer knows the member id: join as a new member.
        reset_member_id: bool,
    },
}

impl State {
    fn severity(&self) -> u8 {
        match self {
            State::Stable => 0,
            State::Rebalance(_) => 1,
            State::Lost { .. } => 2,
        }
    }

    fn reason(&self) -> Option<&str> {
        match self {
            State::Stable => None,
            State::Rebalance(r) | State::Lost { reason: r, .. } => Some(r),
        }
    }
}

/// Records `next` unless the state already says something at least as serious.
fn raise(state: &watch::Sender<State>, next: State) {
    state.send_if_modified(|s| {
        if next.severity() > s.severity() {
            *s = next;
            true
        } else {
            false
        }
    });
}

/// A member of a consumer group, speaking the standard `consumer` protocol (eager rebalancing).
///
/// [`GroupMember::join`] finds the coordinator, joins, receives an assignment and starts a
/// heartbeat task. The owner then reads the assigned partitions from their committed offsets,
/// commits progress with [`GroupMember::commit`], and watches [`GroupMember::rebalance_needed`];
/// when it fires, the owner stops fetching *all* partitions, commits what is safe to commit, and
/// calls [`GroupMember::rejoin`] (within `rebalance_timeout`) for its new assignment. On
/// shutdown, [`GroupMember::leave`] lets the others take over at once.
///
/// Protocol versions: the highest the broker also speaks within FindCoordinator 0–4,
/// JoinGroup 0–9, SyncGroup 0–5, Heartbeat 0–4, LeaveGroup 0–5, OffsetCommit 2–9,
/// OffsetFetch 1–9, Metadata 1–12 (ApiVersions 3, or 0 for brokers without v3).
///
/// Dropping a member without [`GroupMember::leave`] stops its heartbeats; the broker then drops
/// it after `session_timeout`.
pub struct GroupMember {
    coordinator: Arc<Coordinator>,
    config: GroupConfig,
    topics: Vec<String>,
    member_id: String,
    generation: i32,
    leader: bool,
    assignor: Assignor,
    assignment: Vec<TopicPartition>,
    state: Arc<watch::Sender<State>>,
    heartbeat: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for GroupMember {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupMember")
            .field("group_id", &self.config.group_id)
            .field("member_id", &self.member_id)
            .field("generation", &self.generation)
            .field("leader", &self.leader)
            .field("assignment", &self.assignment)
            .finish_non_exhaustive()
    }
}

impl GroupMember {
    /// Joins the group (FindCoordinator, JoinGroup, SyncGroup) subscribed to `topics`, and
    /// starts heartbeating.
    ///
    /// Finding the coordinator is retried until `kafka.connect_timeout`; the join itself may
    /// take up to `config.rebalance_timeout` (the broker waits for the other members to rejoin)
    /// plus `kafka.request_timeout`.
    pub async fn join(
        kafka: &KafkaConfig,
        config: GroupConfig,
        topics: Vec<String>,
    ) -> Result<GroupMember, GroupError> {
        config.validate()?;
        let mut topics = topics;
        topics.sort();
        topics.dedup();
        if topics.is_empty() || topics.iter().any(String::is_empty) {
            return Err(GroupError::Config {
                field: "topics",
                message: "needs at least one topic name, and no empty names".into(),
            });
        }
        let coordinator = Arc::new(Coordinator::connect(kafka, &config.group_id).await?);
        let (state, _) = watch::channel(State::Stable);
        let mut member = GroupMember {
            coordinator,
            assignor: config.assignors[0],
            config,
            topics,
            member_id: String::new(),
            generation: -1,
            leader: false,
            assignment: Vec::new(),
            state: Arc::new(state),
            heartbeat: None,
        };
        member.join_round("joining", false).await?;
        member.start_heartbeat();
        Ok(member)
    }

    /// The group id.
    pub fn group_id(&self) -> &str {
        &self.config.group_id
    }

    /// The member id the broker gave this member.
    pub fn member_id(&self) -> &str {
        &self.member_id
    }

    /// The generation of the last successful join.
    pub fn generation(&self) -> i32 {
        self.generation
    }

    /// Whether this member computed the group's assignment in the last join.
    pub fn is_leader(&self) -> bool {
        self.leader
    }

    /// The assignor the group agreed on in the last join.
    pub fn assignor(&self) -> Assignor {
        self.assignor
    }

    /// The subscribed topics (sorted).
    pub fn topics(&self) -> &[String] {
        &self.topics
    }

    /// The partitions assigned to this member in the current generation, sorted.
    pub fn assignment(&self) -> &[TopicPartition] {
        &self.assignment
    }

    /// True once the group needs this member to rejoin (see [`GroupMember::rebalance_needed`]).
    pub fn needs_rejoin(&self) -> bool {
        *self.state.borrow() != State::Stable
    }

    /// Why the member must rejoin, if it must.
    pub fn rejoin_reason(&self) -> Option<String> {
        self.state.borrow().reason().map(str::to_string)
    }

    /// Resolves when the group needs a rebalance: a heartbeat answered `REBALANCE_IN_PROGRESS`
    /// (a member joined or left), or the membership was lost (evicted, fenced, or no heartbeat
    /// answered for a session timeout). Resolves at once if that already happened and
    /// [`GroupMember::rejoin`] was not called since. Cancel-safe.
    pub async fn rebalance_needed(&self) {
        let mut rx = self.state.subscribe();
        // The sender lives in `self`, so the channel cannot close while we wait.
        let _ = rx.wait_for(|s| *s != State::Stable).await;
    }

    /// Rejoins the group, after the owner stopped fetching and committed what it could, and
    /// returns the new assignment. The assignment is empty while this runs (eager protocol).
    ///
    /// On error the member stays out of the group ([`GroupMember::rebalance_needed`] keeps
    /// resolving); calling `rejoin` again retries.
    pub async fn rejoin(&mut self) -> Result<&[TopicPartition], GroupError> {
        self.stop_heartbeat().await;
        let current = self.state.borrow().clone();
        let after_rebalance = matches!(current, State::Rebalance(_));
        let reason = match &current {
            State::Stable => "rejoining on request".to_string(),
            State::Rebalance(r) => r.clone(),
            State::Lost {
                reason,
                reset_member_id,
            } => {
                if *reset_member_id {
                    self.member_id.clear();
                }
                reason.clone()
            }
        };
        self.assignment.clear();
        tracing::info!(group = %self.config.group_id, member = %self.member_id, %reason, "rejoining group");
        match self.join_round(&reason, after_rebalance).await {
            Ok(()) => {
                self.state.send_replace(State::Stable);
                self.start_heartbeat();
                Ok(&self.assignment)
            }
            Err(e) => {
                raise(
                    &self.state,
                    State::Lost {
                        reason: format!("rejoin failed: {e}"),
                        reset_member_id: false,
                    },
                );
                Err(e)
            }
        }
    }

    /// The committed offset (next offset to read) of each partition; `None` where nothing was
    /// committed. Every requested partition is in the result.
    pub async fn committed(
        &self,
        partitions: &[TopicPartition],
    ) -> Result<BTreeMap<TopicPartition, Option<i64>>, GroupError> {
        offsets::fetch(&self.coordinator, partitions).await
    }

    /// Commits, for the current generation, the offset of the next record to read per
    /// partition.
    ///
    /// If the broker says this member is no longer in the generation, the error is
    /// [`GroupError::NotInGeneration`] and [`GroupMember::rebalance_needed`] resolves.
    pub async fn commit(&self, offsets: &BTreeMap<TopicPartition, i64>) -> Result<(), GroupError> {
        let committer = Committer::Member {
            member_id: &self.member_id,
            generation: self.generation,
        };
        match offsets::commit(&self.coordinator, committer, offsets).await {
            Ok(()) => Ok(()),
            Err(CommitFailure::Other(e)) => Err(e),
            Err(CommitFailure::Fenced(error)) => {
                let reason = format!("the broker answered {error} to a commit");
                raise(
                    &self.state,
                    match error {
                        ResponseError::RebalanceInProgress => State::Rebalance(reason.clone()),
                        e => State::Lost {
                            reason: reason.clone(),
                            reset_member_id: e == ResponseError::UnknownMemberId,
                        },
                    },
                );
                Err(GroupError::NotInGeneration {
                    group: self.config.group_id.clone(),
                    generation: self.generation,
                    reason: error.to_string(),
                })
            }
        }
    }

    /// Leaves the group (LeaveGroup), so the other members rebalance at once. Commit first.
    pub async fn leave(mut self) -> Result<(), GroupError> {
        self.stop_heartbeat().await;
        if self.member_id.is_empty() {
            return Ok(());
        }
        let group = self.config.group_id.clone();
        let member_id = self.member_id.clone();
        let (response, _) = self
            .coordinator
            .send(self.coordinator.request_deadline(), |v| {
                leave_request(&group, &member_id, v)
            })
            .await?;
        let codes = std::iter::once(response.error_code)
            .chain(response.members.iter().map(|m| m.error_code));
        for code in codes {
            match ResponseError::try_from_code(code) {
                // Already gone (evicted, or the group moved on): the goal is reached.
                None | Some(ResponseError::UnknownMemberId) => {}
                Some(error) => {
                    return Err(GroupError::Broker {
                        operation: "LeaveGroup",
                        group,
                        error,
                        hint: hint(error),
                    })
                }
            }
        }
        tracing::info!(group = %group, member = %member_id, "left group");
        Ok(())
    }

    fn start_heartbeat(&mut self) {
        let task = heartbeat_loop(
            self.coordinator.clone(),
            self.state.clone(),
            self.member_id.clone(),
            self.generation,
            self.config.heartbeat_interval,
            self.config.session_timeout,
        );
        self.heartbeat = Some(tokio::spawn(task));
    }

    async fn stop_heartbeat(&mut self) {
        if let Some(task) = self.heartbeat.take() {
            task.abort();
            let _ = task.await;
        }
    }

    /// JoinGroup then SyncGroup until both succeed in one generation, or the deadline passes.
    ///
    /// `after_rebalance`: the broker announced a rebalance, so the join must end in a newer
    /// generation than the current one. Apache Kafka always starts one. tansu 0.6 does not when
    /// it evicted a member for missing heartbeats: it keeps the group "formed" at the same
    /// generation and answers SyncGroup with the old assignments, which would leave the evicted
    /// member's partitions unassigned. The standard remedy is used once: leave the group and
    /// join as a new member, which makes every member rebalance into a new generation.
    async fn join_round(&mut self, reason: &str, after_rebalance: bool) -> Result<(), GroupError> {
        let mut round = JoinRound::new(self, after_rebalance);
        loop {
            round.check_deadline(self.coordinator.kafka())?;
            let Step::Go((join, version)) = self.join_group(&mut round, reason).await? else {
                continue;
            };
            if self.kept_generation(&mut round, &join).await {
                continue;
            }
            let assignor = self.adopt_join(&round.group, &join, version)?;
            let assignments = if self.leader && !join.skip_assignment {
                self.assign(&join.members, assignor, round.deadline).await?
            } else {
                Vec::new()
            };
            let own_plan = assignments
                .iter()
                .find(|(m, _)| *m == self.member_id)
                .map(|(_, bytes)| bytes.clone());
            let Step::Go(sync) = self.sync_group(&mut round, assignor, &assignments).await? else {
                continue;
            };
            let Step::Go(()) = self
                .take_assignment(&mut round, &sync.assignment, own_plan)
                .await?
            else {
                continue;
            };
            self.report_joined(&round.group);
            return Ok(());
        }
    }

    /// Sends JoinGroup and reads its error code: the response and the version used, or
    /// [`Step::JoinAgain`] when the broker asks for another JoinGroup (new member id, or a
    /// rebalance under way).
    async fn join_group(
        &mut self,
        round: &mut JoinRound,
        reason: &str,
    ) -> Result<Step<(JoinGroupResponse, i16)>, GroupError> {
        let (join, version) = self
            .coordinator
            .send(round.deadline, |v| {
                join_request(&self.config, &self.member_id, &round.metadata, reason, v)
            })
            .await?;
        match ResponseError::try_from_code(join.error_code) {
            None => {}
            Some(ResponseError::MemberIdRequired) => {
                self.member_id = join.member_id.to_string();
                tracing::debug!(group = %round.group, member = %self.member_id, "broker assigned a member id");
                return Ok(Step::JoinAgain);
            }
            Some(ResponseError::UnknownMemberId) => {
                self.member_id.clear();
                return Ok(Step::JoinAgain);
            }
            Some(ResponseError::RebalanceInProgress | ResponseError::IllegalGeneration) => {
                round.backoff.wait(round.deadline).await;
                return Ok(Step::JoinAgain);
            }
            Some(ResponseError::InconsistentGroupProtocol) => {
                return Err(self.inconsistent());
            }
            Some(error) => {
                return Err(GroupError::Broker {
                    operation: "JoinGroup",
                    group: round.group.clone(),
                    error,
                    hint: hint(error),
                })
            }
        }
        self.member_id = join.member_id.to_string();
        Ok(Step::Go((join, version)))
    }

    /// True (after leaving the group, once per round) when the join had to start a new
    /// generation but the coordinator kept the old one (see [`GroupMember::join_round`]).
    async fn kept_generation(&mut self, round: &mut JoinRound, join: &JoinGroupResponse) -> bool {
        if !(round.must_advance && join.generation_id <= round.previous_generation) {
            return false;
        }
        tracing::warn!(group = %round.group, member = %self.member_id, generation = join.generation_id,
            "the coordinator announced a rebalance but kept the generation (tansu after \
             evicting a member); leaving and joining as a new member to force a new one");
        round.must_advance = false;
        self.leave_quietly().await;
        true
    }

    /// Takes the generation, the assignor the group chose and the leadership from a
    /// successful JoinGroup; fails if the chosen assignor is not one this member offered.
    fn adopt_join(
        &mut self,
        group: &str,
        join: &JoinGroupResponse,
        version: i16,
    ) -> Result<Assignor, GroupError> {
        self.generation = join.generation_id;
        let name = join
            .protocol_name
            .as_ref()
            .map(|n| n.as_str().to_string())
            .unwrap_or_default();
        let Some(&assignor) = self.config.assignors.iter().find(|a| a.name() == name) else {
            return Err(GroupError::Protocol {
                what: "JoinGroup response",
                source_name: "the group coordinator".into(),
                message: format!(
                    "the group chose assignor `{name}`, which this member did not offer (JoinGroup v{version})"
                ),
            });
        };
        self.assignor = assignor;
        self.leader = join.leader.as_str() == self.member_id;
        tracing::debug!(%group, member = %self.member_id, generation = self.generation,
            leader = self.leader, assignor = %assignor, members = join.members.len(), "joined");
        Ok(assignor)
    }

    /// Sends SyncGroup (with the leader's `assignments`, empty for the others) and reads its
    /// error code: the response, or [`Step::JoinAgain`] when the generation moved on.
    async fn sync_group(
        &mut self,
        round: &mut JoinRound,
        assignor: Assignor,
        assignments: &[(String, Bytes)],
    ) -> Result<Step<SyncGroupResponse>, GroupError> {
        let (sync, _) = self
            .coordinator
            .send(round.deadline, |v| {
                sync_request(
                    &round.group,
                    &self.member_id,
                    self.generation,
                    assignor,
                    assignments,
                    v,
                )
            })
            .await?;
        match ResponseError::try_from_code(sync.error_code) {
            None => Ok(Step::Go(sync)),
            Some(ResponseError::RebalanceInProgress | ResponseError::IllegalGeneration) => {
                // Another member joined meanwhile, or (tansu) the leader has not synced
                // yet: join again.
                round.backoff.wait(round.deadline).await;
                Ok(Step::JoinAgain)
            }
            Some(ResponseError::UnknownMemberId) => {
                self.member_id.clear();
                Ok(Step::JoinAgain)
            }
            Some(ResponseError::InconsistentGroupProtocol) => Err(self.inconsistent()),
            Some(error) => Err(GroupError::Broker {
                operation: "SyncGroup",
                group: round.group.clone(),
                error,
                hint: hint(error),
            }),
        }
    }

    /// Decodes this member's assignment from SyncGroup. A leader checks it got back what it
    /// sent (`own_plan`); if not, it leaves and joins again as a new member, once per round.
    async fn take_assignment(
        &mut self,
        round: &mut JoinRound,
        assignment: &Bytes,
        own_plan: Option<Bytes>,
    ) -> Result<Step<()>, GroupError> {
        self.assignment =
            protocol::decode_assignment(assignment).map_err(|message| GroupError::Protocol {
                what: "assignment",
                source_name: "the group leader".into(),
                message,
            })?;
        if let Some(sent) = own_plan {
            // A coordinator hands the leader back what the leader sent; a different answer
            // means it kept an older generation's assignments (tansu, see `join_round`).
            if protocol::decode_assignment(&sent).ok().as_ref() != Some(&self.assignment) {
                if round.forced_for_stale_sync {
                    return Err(GroupError::Protocol {
                        what: "SyncGroup response",
                        source_name: "the group coordinator".into(),
                        message: "it keeps answering the leader with an assignment other than the one the leader sent".into(),
                    });
                }
                tracing::warn!(group = %round.group, member = %self.member_id, generation = self.generation,
                    "the coordinator ignored this leader's assignment; leaving and joining as a new member");
                round.forced_for_stale_sync = true;
                self.assignment.clear();
                self.leave_quietly().await;
                return Ok(Step::JoinAgain);
            }
        }
        Ok(Step::Go(()))
    }

    /// Logs the finished join, warning about partitions of topics this member did not
    /// subscribe to.
    fn report_joined(&self, group: &str) {
        if let Some(foreign) = self
            .assignment
            .iter()
            .find(|tp| !self.topics.contains(&tp.topic))
        {
            tracing::warn!(%group, partition = %foreign, "assigned a partition of a topic this member did not subscribe to");
        }
        tracing::info!(%group, member = %self.member_id, generation = self.generation,
            leader = self.leader, partitions = self.assignment.len(), "group joined");
    }

    /// LeaveGroup ignoring the outcome, then forget the member id: the next JoinGroup makes
    /// this a new member.
    async fn leave_quietly(&mut self) {
        if !self.member_id.is_empty() {
            let group = self.config.group_id.clone();
            let member_id = self.member_id.clone();
            if let Err(e) = self
                .coordinator
                .send(self.coordinator.request_deadline(), |v| {
                    leave_request(&group, &member_id, v)
                })
                .await
            {
                tracing::warn!(%group, member = %member_id, error = %e, "LeaveGroup failed");
            }
        }
        self.member_id.clear();
        self.generation = -1;
    }

    fn inconsistent(&self) -> GroupError {
        GroupError::InconsistentProtocol {
            group: self.config.group_id.clone(),
            offered: format!(
                "protocol type `{PROTOCOL_TYPE}`, assignors {}",
                self.config
                    .assignors
                    .iter()
                    .map(|a| a.name())
                    .collect::<Vec<_>>()
                    .join(",")
            ),
        }
    }

    /// The leader's job: every member's assignment, encoded.
    async fn assign(
        &self,
        members: &[JoinGroupResponseMember],
        assignor: Assignor,
        deadline: Instant,
    ) -> Result<Vec<(String, Bytes)>, GroupError> {
        let mut subscriptions = Vec::with_capacity(members.len());
        let mut version = 3;
        for m in members {
            let s = protocol::decode_subscription(&m.metadata).map_err(|message| {
                GroupError::Protocol {
                    what: "subscription",
                    source_name: format!("group member {}", m.member_id.as_str()),
                    message,
                }
            })?;
            version = version.min(s.version);
            subscriptions.push(MemberSubscription {
                member_id: m.member_id.to_string(),
                group_instance_id: m.group_instance_id.as_ref().map(|i| i.to_string()),
                topics: s.topics,
            });
        }
        let topics: BTreeSet<&str> = subscriptions
            .iter()
            .flat_map(|s| s.topics.iter().map(String::as_str))
            .collect();
        let counts = self.partition_counts(&topics, deadline).await?;
        let plan = assignor.assign(&subscriptions, &counts);
        tracing::debug!(group = %self.config.group_id, ?plan, "assignment computed");
        Ok(plan
            .into_iter()
            .map(|(member, parts)| (member, protocol::encode_assignment(version, &parts)))
            .collect())
    }

    /// Partition counts of `topics`; topics the broker does not know are left out.
    async fn partition_counts(
        &self,
        topics: &BTreeSet<&str>,
        deadline: Instant,
    ) -> Result<BTreeMap<String, i32>, GroupError> {
        let (response, _) = self
            .coordinator
            .send(deadline, |v| metadata_request(topics, v))
            .await?;
        let mut counts = BTreeMap::new();
        for t in &response.topics {
            let Some(name) = t.name.as_ref().map(|n| n.as_str().to_string()) else {
                continue;
            };
            if t.error_code != 0 && t.partitions.is_empty() {
                tracing::warn!(group = %self.config.group_id, topic = %name,
                    error = %super::error::describe(t.error_code), "subscribed topic has no metadata; not assigned");
                continue;
            }
            counts.insert(name, t.partitions.len() as i32);
        }
        Ok(counts)
    }
}

/// What one [`GroupMember::join_round`] carries from attempt to attempt.
struct JoinRound {
    group: String,
    started: Instant,
    /// `rebalance_timeout` (the broker waits for the other members) plus `request_timeout`.
    deadline: Instant,
    /// This member's subscription, sent with every JoinGroup.
    metadata: Bytes,
    backoff: Backoff,
    /// The generation before the round (-1 when not in the group).
    previous_generation: i32,
    /// The join must end in a newer generation than `previous_generation`.
    must_advance: bool,
    /// This leader already left and joined again because the coordinator ignored its
    /// assignment.
    forced_for_stale_sync: bool,
}

impl JoinRound {
    /// A round for `member`; `after_rebalance` as in [`GroupMember::join_round`].
    fn new(member: &GroupMember, after_rebalance: bool) -> JoinRound {
        let previous_generation = member.generation;
        let started = Instant::now();
        let budget = member.config.rebalance_timeout + member.coordinator.kafka().request_timeout;
        JoinRound {
            group: member.config.group_id.clone(),
            started,
            deadline: started + budget,
            metadata: protocol::encode_subscription(&member.topics),
            backoff: Backoff::new(),
            previous_generation,
            must_advance: after_rebalance && previous_generation >= 0,
            forced_for_stale_sync: false,
        }
    }

    /// Fails with the round's timeout once its deadline has passed.
    fn check_deadline(&self, kafka: &KafkaConfig) -> Result<(), GroupError> {
        if Instant::now() < self.deadline {
            return Ok(());
        }
        Err(GroupError::Timeout {
            operation: "JoinGroup/SyncGroup",
            group: self.group.clone(),
            brokers: kafka.brokers.join(","),
            waited: self.started.elapsed(),
            last_error: "the group did not settle (members kept joining or leaving)".into(),
        })
    }
}

/// What a step of a join round decided.
enum Step<T> {
    /// Go on to the next step with this.
    Go(T),
    /// Start the round over with a new JoinGroup.
    JoinAgain,
}

impl Drop for GroupMember {
    fn drop(&mut self) {
        if let Some(task) = self.heartbeat.take() {
            task.abort();
        }
    }
}

async fn heartbeat_loop(
    coordinator: Arc<Coordinator>,
    state: Arc<watch::Sender<State>>,
    member_id: String,
    generation: i32,
    interval: Duration,
    session: Duration,
) {
    let group = coordinator.group().to_string();
    let mut last_answer = Instant::now();
    let mut ticker = tokio::time::interval_at(Instant::now() + interval, interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let deadline = Instant::now() + coordinator.kafka().request_timeout.min(session);
        let result = coordinator
            .send(deadline, |v| {
                heartbeat_request(&group, &member_id, generation, v)
            })
            .await;
        let response = match result {
            Ok((r, _)) => r,
            Err(e) => {
                tracing::warn!(%group, member = %member_id, error = %e, "heartbeat failed");
                if last_answer.elapsed() >= session {
                    raise(
                        &state,
                        State::Lost {
                            reason: format!("no heartbeat answered for {session:?} ({e})"),
                            reset_member_id: false,
                        },
                    );
                    return;
                }
                continue;
            }
        };
        match ResponseError::try_from_code(response.error_code) {
            None => last_answer = Instant::now(),
            Some(ResponseError::RebalanceInProgress) => {
                // Keep heartbeating: the session must survive while the owner drains.
                last_answer = Instant::now();
                if *state.borrow() == State::Stable {
                    tracing::info!(%group, member = %member_id, generation, "group is rebalancing");
                }
                raise(
                    &state,
                    State::Rebalance("the group is rebalancing (a member joined or left)".into()),
                );
            }
            Some(error) => {
                tracing::warn!(%group, member = %member_id, generation, %error, "membership lost");
                raise(
                    &state,
                    State::Lost {
                        reason: format!("the broker answered {error} to a heartbeat"),
                        reset_member_id: error == ResponseError::UnknownMemberId,
                    },
                );
                return;
            }
        }
    }
}

fn str_bytes(s: &str) -> StrBytes {
    StrBytes::from_string(s.to_string())
}

fn join_request(
    config: &GroupConfig,
    member_id: &str,
    metadata: &Bytes,
    reason: &str,
    version: i16,
) -> JoinGroupRequest {
    let mut r = JoinGroupRequest::default();
    r.group_id = GroupId(str_bytes(&config.group_id));
    r.session_timeout_ms = config.session_timeout.as_millis().min(i32::MAX as u128) as i32;
    r.rebalance_timeout_ms = config.rebalance_timeout.as_millis().min(i32::MAX as u128) as i32;
    r.member_id = str_bytes(member_id);
    r.group_instance_id = None;
    r.protocol_type = StrBytes::from_static_str(PROTOCOL_TYPE);
    r.protocols = config
        .assignors
        .iter()
        .map(|a| {
            let mut p = JoinGroupRequestProtocol::default();
            p.name = StrBytes::from_static_str(a.name());
            p.metadata = metadata.clone();
            p
        })
        .collect();
    if version >= 8 {
        r.reason = Some(str_bytes(reason));
    }
    r
}

fn sync_request(
    group: &str,
    member_id: &str,
    generation: i32,
    assignor: Assignor,
    assignments: &[(String, Bytes)],
    version: i16,
) -> SyncGroupRequest {
    let mut r = SyncGroupRequest::default();
    r.group_id = GroupId(str_bytes(group));
    r.generation_id = generation;
    r.member_id = str_bytes(member_id);
    r.group_instance_id = None;
    if version >= 5 {
        r.protocol_type = Some(StrBytes::from_static_str(PROTOCOL_TYPE));
        r.protocol_name = Some(StrBytes::from_static_str(assignor.name()));
    }
    r.assignments = assignments
        .iter()
        .map(|(member, bytes)| {
            let mut a = SyncGroupRequestAssignment::default();
            a.member_id = str_bytes(member);
            a.assignment = bytes.clone();
            a
        })
        .collect();
    r
}

fn heartbeat_request(
    group: &str,
    member_id: &str,
    generation: i32,
    _version: i16,
) -> HeartbeatRequest {
    let mut r = HeartbeatRequest::default();
    r.group_id = GroupId(str_bytes(group));
    r.generation_id = generation;
    r.member_id = str_bytes(member_id);
    r.group_instance_id = None;
    r
}

fn leave_request(group: &str, member_id: &str, version: i16) -> LeaveGroupRequest {
    let mut r = LeaveGroupRequest::default();
    r.group_id = GroupId(str_bytes(group));
    if version >= 3 {
        let mut m = MemberIdentity::default();
        m.member_id = str_bytes(member_id);
        m.group_instance_id = None;
        if version >= 5 {
            m.reason = Some(StrBytes::from_static_str("the consumer is shutting down"));
        }
        r.members = vec![m];
    } else {
        r.member_id = str_bytes(member_id);
    }
    r
}

fn metadata_request(topics: &BTreeSet<&str>, version: i16) -> MetadataRequest {
    let mut r = MetadataRequest::default();
    r.topics = Some(
        topics
            .iter()
            .map(|t| {
                let mut topic = MetadataRequestTopic::default();
                topic.name = Some(TopicName(str_bytes(t)));
                topic
            })
            .collect(),
    );
    // Versions before 4 always allow auto-creation (and must say so).
    r.allow_auto_topic_creation = version < 4;
    r
}

#[cfg(test)]
mod tests {
    use super::super::coordinator::GroupRequest;
    use super::*;
    use bytes::BytesMut;

    #[test]
    fn requests_encode_at_every_version_we_claim() {
        let config = GroupConfig::new("g").assignors([Assignor::Range, Assignor::RoundRobin]);
        let meta = protocol::encode_subscription(&["t".into()]);
        let assignments = vec![("m".to_string(), protocol::encode_assignment(0, &[]))];
        let topics: BTreeSet<&str> = ["t"].into_iter().collect();
        fn check<R: GroupRequest>(build: impl Fn(i16) -> R) {
            for v in R::VERSIONS.min..=R::VERSIONS.max {
                build(v)
                    .encode(&mut BytesMut::new(), v)
                    .unwrap_or_else(|e| panic!("{} v{v}: {e}", R::NAME));
            }
        }
        check(|v| join_request(&config, "m", &meta, "why", v));
        check(|v| sync_request("g", "m", 1, Assignor::Range, &assignments, v));
        check(|v| heartbeat_request("g", "m", 1, v));
        check(|v| leave_request("g", "m", v));
        check(|v| metadata_request(&topics, v));
    }

    #[test]
    fn our_version_ranges_are_within_the_crate_s() {
        use kafka_protocol::protocol::Message;
        fn within<R: GroupRequest + Message>() {
            let crate_range = <R as Message>::VERSIONS;
            let ours = <R as GroupRequest>::VERSIONS;
            assert!(
                ours.min >= crate_range.min && ours.max <= crate_range.max,
                "{}: ours {ours}, kafka-protocol {crate_range}",
                R::NAME
            );
        }
        within::<JoinGroupRequest>();
        within::<SyncGroupRequest>();
        within::<HeartbeatRequest>();
        within::<LeaveGroupRequest>();
        within::<MetadataRequest>();
        within::<kafka_protocol::messages::OffsetCommitRequest>();
        within::<kafka_protocol::messages::OffsetFetchRequest>();
        within::<kafka_protocol::messages::FindCoordinatorRequest>();
    }

    #[test]
    fn state_only_escalates() {
        let (tx, _) = watch::channel(State::Stable);
        raise(&tx, State::Rebalance("r".into()));
        raise(
            &tx,
            State::Lost {
                reason: "l".into(),
                reset_member_id: true,
            },
        );
        raise(&tx, State::Rebalance("later".into()));
        assert!(matches!(&*tx.borrow(), State::Lost { reason, .. } if reason == "l"));
    }

    #[test]
    fn config_validation_names_the_field() {
        let bad = GroupConfig::new("g").heartbeat_interval(Duration::from_secs(60));
        let e = bad.validate().unwrap_err().to_string();
        assert!(e.contains("heartbeat_interval"), "{e}");
        let e = GroupConfig::new("").validate().unwrap_err().to_string();
        assert!(e.contains("group_id"), "{e}");
        let e = GroupConfig::new("g")
            .assignors([])
            .validate()
            .unwrap_err()
            .to_string();
        assert!(e.contains("assignors"), "{e}");
        assert!(GroupConfig::new("g").validate().is_ok());
    }
}
