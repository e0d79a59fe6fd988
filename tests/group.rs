//! Consumer groups against a real broker (tansu) and an independent group member
//! (confluent-kafka through `scripts/kgroup.py`): membership and rebalances between our members,
//! committed offsets (member and standalone), interop with librdkafka as follower and as leader,
//! and surviving a broker restart.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::{Broker, Rec};
use serde_json::Value;
use streamtract::kafka::group::{
    Assignor, GroupConfig, GroupError, GroupMember, OffsetStore, TopicPartition,
};
use streamtract::kafka::KafkaConfig;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::{sleep, timeout, Instant};

const PARTITIONS: i32 = 6;

/// Logs of the group module on stderr with `RUST_LOG=streamtract=debug` (shown by
/// `--nocapture` or for failing tests).
fn init_logs() {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let filter: tracing_subscriber::filter::Targets = std::env::var("RUST_LOG")
        .ok()
        .and_then(|spec| spec.parse().ok())
        // Errors only when RUST_LOG is unset, as `EnvFilter::from_default_env` had it.
        .unwrap_or_else(|| {
            tracing_subscriber::filter::Targets::new().with_default(tracing::Level::ERROR)
        });
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(tracing_subscriber::fmt::layer().with_test_writer())
        .try_init();
}

fn kafka(broker: &Broker) -> KafkaConfig {
    init_logs();
    let mut k = KafkaConfig::new([broker.addr.clone()]);
    k.client_id = "group-test".into();
    k.connect_timeout = Duration::from_secs(20);
    k.request_timeout = Duration::from_secs(20);
    k
}

/// Short timeouts so rebalances in tests take seconds, not minutes.
fn config(group: &str) -> GroupConfig {
    GroupConfig::new(group)
        .session_timeout(Duration::from_secs(10))
        .heartbeat_interval(Duration::from_millis(500))
        .rebalance_timeout(Duration::from_secs(60))
}

fn all(topic: &str) -> BTreeSet<TopicPartition> {
    (0..PARTITIONS)
        .map(|p| TopicPartition::new(topic, p))
        .collect()
}

fn set(parts: &[TopicPartition]) -> BTreeSet<TopicPartition> {
    parts.iter().cloned().collect()
}

fn tps(topic: &str, parts: impl IntoIterator<Item = i32>) -> BTreeSet<TopicPartition> {
    parts
        .into_iter()
        .map(|p| TopicPartition::new(topic, p))
        .collect()
}

/// A topic with `PARTITIONS` partitions and `per_partition` records in each.
fn topic_with_records(broker: &Broker, prefix: &str, per_partition: usize) -> String {
    let topic = common::unique_topic(prefix);
    broker.create_topic(&topic, PARTITIONS);
    let recs: Vec<Rec> = (0..PARTITIONS)
        .flat_map(|p| {
            (0..per_partition).map(move |i| Rec::kv(&format!("k{p}-{i}"), "v").partition(p))
        })
        .collect();
    if !recs.is_empty() {
        broker.produce(&topic, &recs);
    }
    topic
}

/// Plays the pipeline's part for a member: on every rebalance signal, rejoin, and publish the
/// current assignment (empty while rejoining). Returns the member when told to stop.
struct Owner {
    stop: oneshot::Sender<()>,
    assignment: watch::Receiver<Snapshot>,
    task: JoinHandle<GroupMember>,
}

#[derive(Debug, Clone)]
struct Snapshot {
    generation: i32,
    member_id: String,
    parts: Vec<TopicPartition>,
}

fn snapshot(member: &GroupMember) -> Snapshot {
    Snapshot {
        generation: member.generation(),
        member_id: member.member_id().to_string(),
        parts: member.assignment().to_vec(),
    }
}

fn own(mut member: GroupMember) -> Owner {
    let (stop_tx, mut stop_rx) = oneshot::channel::<()>();
    let (tx, rx) = watch::channel(snapshot(&member));
    let task = tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = &mut stop_rx => return member,
                _ = member.rebalance_needed() => {
                    tx.send_modify(|s| s.parts.clear());
                    match member.rejoin().await {
                        Ok(_) => {
                            tx.send_replace(snapshot(&member));
                        }
                        Err(e) => {
                            eprintln!("rejoin failed (will retry): {e}");
                            sleep(Duration::from_millis(500)).await;
                        }
                    }
                }
            }
        }
    });
    Owner {
        stop: stop_tx,
        assignment: rx,
        task,
    }
}

impl Owner {
    fn current(&self) -> Vec<TopicPartition> {
        self.assignment.borrow().parts.clone()
    }

    fn member_id(&self) -> String {
        self.assignment.borrow().member_id.clone()
    }

    async fn wait_for(
        &mut self,
        what: &str,
        limit: Duration,
        pred: impl Fn(&[TopicPartition]) -> bool,
    ) -> Vec<TopicPartition> {
        let deadline = Instant::now() + limit;
        loop {
            let current = self.current();
            if pred(&current) {
                return current;
            }
            if timeout(
                deadline - Instant::now().min(deadline),
                self.assignment.changed(),
            )
            .await
            .is_err()
            {
                panic!("{what}: not reached within {limit:?}; assignment is {current:?}");
            }
        }
    }

    async fn stop(self) -> GroupMember {
        let _ = self.stop.send(());
        self.task.await.expect("owner task")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_members_split_then_one_takes_all_after_the_other_leaves() {
    let broker = Broker::start("group-split");
    let topic = topic_with_records(&broker, "split", 0);
    let k = kafka(&broker);
    let group = common::unique_topic("g-split");

    let a = GroupMember::join(&k, config(&group), vec![topic.clone()])
        .await
        .unwrap();
    assert_eq!(
        set(a.assignment()),
        all(&topic),
        "a lone member gets every partition"
    );
    assert!(a.is_leader());
    assert_eq!(a.assignor(), Assignor::Range);
    // Stable group: nothing to do, and waiting is cancel-safe.
    assert!(timeout(Duration::from_secs(2), a.rebalance_needed())
        .await
        .is_err());
    assert!(!a.needs_rejoin());

    let mut a = own(a);
    let b = GroupMember::join(&k, config(&group), vec![topic.clone()])
        .await
        .unwrap();
    let a_parts = a
        .wait_for("a's share after b joined", Duration::from_secs(60), |p| {
            p.len() == 3
        })
        .await;
    let b_parts = b.assignment().to_vec();
    assert_eq!(b_parts.len(), 3, "b: {b_parts:?}");
    assert!(
        set(&a_parts).is_disjoint(&set(&b_parts)),
        "a {a_parts:?} b {b_parts:?}"
    );
    let union: BTreeSet<_> = set(&a_parts).union(&set(&b_parts)).cloned().collect();
    assert_eq!(union, all(&topic));
    assert_eq!(
        a.assignment.borrow().generation,
        b.generation(),
        "one generation"
    );

    // Range: the member with the smaller id gets partitions 0..3.
    let a = a.stop().await;
    let (first, second) = if a.member_id() < b.member_id() {
        (a.assignment(), b.assignment())
    } else {
        (b.assignment(), a.assignment())
    };
    assert_eq!(set(first), tps(&topic, 0..3));
    assert_eq!(set(second), tps(&topic, 3..6));

    a.leave().await.unwrap();
    timeout(Duration::from_secs(30), b.rebalance_needed())
        .await
        .expect("b told to rebalance after a left");
    assert!(b.needs_rejoin());
    let mut b = b;
    let parts = b.rejoin().await.unwrap().to_vec();
    assert_eq!(set(&parts), all(&topic), "b takes over every partition");
    assert!(b.is_leader());
    assert!(!b.needs_rejoin());
    b.leave().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn roundrobin_when_every_member_prefers_it() {
    let broker = Broker::start("group-roundrobin");
    let topic = topic_with_records(&broker, "rr", 0);
    let k = kafka(&broker);
    let group = common::unique_topic("g-rr");
    let cfg = config(&group).assignors([Assignor::RoundRobin, Assignor::Range]);

    let a = GroupMember::join(&k, cfg.clone(), vec![topic.clone()])
        .await
        .unwrap();
    let mut a = own(a);
    let b = GroupMember::join(&k, cfg, vec![topic.clone()])
        .await
        .unwrap();
    let a_parts = a
        .wait_for("a's share", Duration::from_secs(60), |p| p.len() == 3)
        .await;
    assert_eq!(b.assignor(), Assignor::RoundRobin);
    let a = a.stop().await;
    let (first, second) = if a.member_id() < b.member_id() {
        (set(&a_parts), set(b.assignment()))
    } else {
        (set(b.assignment()), set(&a_parts))
    };
    assert_eq!(first, tps(&topic, [0, 2, 4]));
    assert_eq!(second, tps(&topic, [1, 3, 5]));
    a.leave().await.unwrap();
    b.leave().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn commits_round_trip_for_members_and_standalone() {
    let broker = Broker::start("group-offsets");
    let topic = topic_with_records(&broker, "offsets", 10);
    let k = kafka(&broker);
    let group = common::unique_topic("g-offsets");
    let every: Vec<TopicPartition> = all(&topic).into_iter().collect();
    let tp = |p| TopicPartition::new(&topic, p);

    // Standalone, while the group is empty (the only time Kafka accepts it).
    let store = OffsetStore::connect(&k, &group).await.unwrap();
    assert_eq!(store.group_id(), group);
    let fresh = store.committed(&every).await.unwrap();
    assert_eq!(fresh.len(), every.len());
    assert!(fresh.values().all(Option::is_none), "{fresh:?}");
    store
        .commit(&BTreeMap::from([(tp(0), 3), (tp(1), 4)]))
        .await
        .unwrap();
    assert!(store.committed(&[]).await.unwrap().is_empty());
    let err = store
        .commit(&BTreeMap::from([(tp(2), -5)]))
        .await
        .unwrap_err();
    assert!(matches!(err, GroupError::InvalidOffset { .. }), "{err}");
    let err = store
        .commit(&BTreeMap::from([(
            TopicPartition::new("no-such-topic", 0),
            1,
        )]))
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, GroupError::Partitions { .. }), "{msg}");
    assert!(msg.contains("no-such-topic/0"), "{msg}");

    // A member sees the standalone commits...
    let member = GroupMember::join(&k, config(&group), vec![topic.clone()])
        .await
        .unwrap();
    let seen = member.committed(&every).await.unwrap();
    assert_eq!(seen[&tp(0)], Some(3));
    assert_eq!(seen[&tp(1)], Some(4));
    assert!((2..PARTITIONS).all(|p| seen[&tp(p)].is_none()), "{seen:?}");

    // ...commits for its generation and reads its own commits back...
    member
        .commit(&BTreeMap::from([(tp(0), 7), (tp(5), 9), (tp(3), 0)]))
        .await
        .unwrap();
    member.commit(&BTreeMap::new()).await.unwrap();
    let seen = member.committed(&[tp(0), tp(5), tp(3)]).await.unwrap();
    assert_eq!(
        seen,
        BTreeMap::from([(tp(0), Some(7)), (tp(5), Some(9)), (tp(3), Some(0))])
    );

    // ...which the standalone store reads too.
    let seen = store.committed(&every).await.unwrap();
    assert_eq!(seen[&tp(0)], Some(7));
    assert_eq!(seen[&tp(1)], Some(4));
    assert_eq!(seen[&tp(3)], Some(0));
    assert_eq!(seen[&tp(5)], Some(9));
    member.leave().await.unwrap();

    // The group is empty again: standalone commits are accepted again, also by a reconnecting
    // store.
    let store = OffsetStore::connect(&k, &group).await.unwrap();
    store.commit(&BTreeMap::from([(tp(4), 10)])).await.unwrap();
    assert_eq!(store.committed(&[tp(4)]).await.unwrap()[&tp(4)], Some(10));

    // An independent client reads the same offsets.
    let seen = broker.committed(&group, &topic, PARTITIONS);
    assert_eq!(
        seen,
        BTreeMap::from([
            (0, Some(7)),
            (1, Some(4)),
            (2, None),
            (3, Some(0)),
            (4, Some(10)),
            (5, Some(9))
        ])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn shares_a_group_with_librdkafka_as_leader_and_as_follower() {
    let broker = Broker::start("group-interop");
    let topic = topic_with_records(&broker, "interop", 5);
    let k = kafka(&broker);
    let group = common::unique_topic("g-interop");
    let everything = all(&topic);

    // 1. Our member leads; librdkafka follows.
    let ours = GroupMember::join(&k, config(&group), vec![topic.clone()])
        .await
        .unwrap();
    assert_eq!(set(ours.assignment()), everything);
    let mut ours = own(ours);
    let mut theirs = PyMember::start(&broker, &group, &topic, "range");
    let (our_parts, their_parts) = converge(&mut ours, &mut theirs, &everything).await;
    assert_eq!(our_parts.len(), 3);
    check_range(
        &topic,
        &our_parts,
        &their_parts,
        &ours.member_id(),
        &theirs.member_id,
    );

    // Offsets committed by our member are readable by librdkafka, and the other way round.
    let ours_member = ours.stop().await;
    let ours_offsets: BTreeMap<TopicPartition, i64> = our_parts
        .iter()
        .map(|tp| (tp.clone(), 1 + tp.partition as i64 % 5))
        .collect();
    ours_member.commit(&ours_offsets).await.unwrap();
    let their_offsets: BTreeMap<TopicPartition, i64> = their_parts
        .iter()
        .map(|tp| (tp.clone(), 2 + tp.partition as i64 % 3))
        .collect();
    theirs.send(&format!(
        "commit {}",
        their_offsets
            .iter()
            .map(|(tp, o)| format!("{} {} {o}", tp.topic, tp.partition))
            .collect::<Vec<_>>()
            .join(" ")
    ));
    theirs
        .wait_event("librdkafka commit", Duration::from_secs(30), |e| {
            e["event"] == "committed"
        })
        .await;
    theirs.send(&format!(
        "committed {}",
        everything
            .iter()
            .map(|tp| format!("{} {}", tp.topic, tp.partition))
            .collect::<Vec<_>>()
            .join(" ")
    ));
    let read = theirs
        .wait_event("librdkafka committed()", Duration::from_secs(30), |e| {
            e["event"] == "committed"
        })
        .await;
    let expected: BTreeMap<TopicPartition, i64> = ours_offsets
        .iter()
        .chain(their_offsets.iter())
        .map(|(tp, o)| (tp.clone(), *o))
        .collect();
    let read: BTreeMap<TopicPartition, i64> = read["offsets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                TopicPartition::new(t[0].as_str().unwrap(), t[1].as_i64().unwrap() as i32),
                t[2].as_i64().expect("an offset for every partition"),
            )
        })
        .collect();
    assert_eq!(
        read, expected,
        "librdkafka reads what both members committed"
    );
    let every: Vec<TopicPartition> = everything.iter().cloned().collect();
    let ours_read: BTreeMap<TopicPartition, i64> = ours_member
        .committed(&every)
        .await
        .unwrap()
        .into_iter()
        .map(|(tp, o)| (tp, o.expect("committed")))
        .collect();
    assert_eq!(ours_read, expected, "we read what both members committed");

    // 2. Our member leaves: librdkafka takes everything, then leads when we join again.
    ours_member.leave().await.unwrap();
    theirs
        .wait_assignment("librdkafka alone", Duration::from_secs(60), |p| {
            *p == everything
        })
        .await;
    let ours = GroupMember::join(&k, config(&group), vec![topic.clone()])
        .await
        .unwrap();
    assert!(!ours.is_leader(), "librdkafka led this round");
    let mut ours = own(ours);
    let (our_parts, their_parts) = converge(&mut ours, &mut theirs, &everything).await;
    check_range(
        &topic,
        &our_parts,
        &their_parts,
        &ours.member_id(),
        &theirs.member_id,
    );

    // 3. librdkafka leaves; we take everything.
    theirs.send("stop");
    theirs
        .wait_event("librdkafka closed", Duration::from_secs(30), |e| {
            e["event"] == "closed"
        })
        .await;
    ours.wait_for("ours alone", Duration::from_secs(60), |p| {
        set(p) == everything
    })
    .await;
    let member = ours.stop().await;
    member.leave().await.unwrap();

    let seen = broker.committed(&group, &topic, PARTITIONS);
    assert_eq!(
        seen,
        expected
            .iter()
            .map(|(tp, o)| (tp.partition, Some(*o)))
            .collect::<BTreeMap<_, _>>()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn member_survives_a_broker_restart_and_rejoins_after_a_long_outage() {
    let mut broker = Broker::start("group-restart");
    let topic = topic_with_records(&broker, "restart", 0);
    let k = kafka(&broker);
    let group = common::unique_topic("g-restart");
    let tp0 = TopicPartition::new(&topic, 0);
    let session = Duration::from_secs(6);
    let cfg = config(&group).session_timeout(session);

    let mut member = GroupMember::join(&k, cfg, vec![topic.clone()])
        .await
        .unwrap();
    member
        .commit(&BTreeMap::from([(tp0.clone(), 1)]))
        .await
        .unwrap();

    // A short outage: heartbeats fail for a while, then reconnect; the membership holds.
    tokio::task::block_in_place(|| broker.stop());
    sleep(Duration::from_secs(2)).await;
    tokio::task::block_in_place(|| broker.start_again());
    member
        .commit(&BTreeMap::from([(tp0.clone(), 2)]))
        .await
        .unwrap();
    assert_eq!(
        member.committed(std::slice::from_ref(&tp0)).await.unwrap()[&tp0],
        Some(2)
    );
    sleep(Duration::from_secs(2)).await;
    assert!(!member.needs_rejoin(), "{:?}", member.rejoin_reason());
    assert_eq!(set(member.assignment()), all(&topic));

    // An outage longer than the session: the membership is lost, and rejoining works once the
    // broker is back.
    tokio::task::block_in_place(|| broker.stop());
    timeout(session + Duration::from_secs(10), member.rebalance_needed())
        .await
        .expect("membership reported lost while the broker is down");
    let reason = member.rejoin_reason().unwrap();
    assert!(reason.contains("no heartbeat answered"), "{reason}");
    tokio::task::block_in_place(|| broker.start_again());
    let parts = member.rejoin().await.unwrap();
    assert_eq!(set(parts), all(&topic));
    assert_eq!(
        member.committed(std::slice::from_ref(&tp0)).await.unwrap()[&tp0],
        Some(2)
    );
    member.leave().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_crashed_follower_is_replaced_after_the_session_timeout() {
    crashed_member_is_replaced("group-crash-follower", false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_crashed_leader_is_replaced_after_the_session_timeout() {
    crashed_member_is_replaced("group-crash-leader", true).await;
}

/// Two members; one stops heartbeating without leaving (a crash); the other must own every
/// partition after the session timeout.
async fn crashed_member_is_replaced(name: &str, crash_leader: bool) {
    let broker = Broker::start(name);
    let topic = topic_with_records(&broker, "crash", 0);
    let k = kafka(&broker);
    let group = common::unique_topic("g-crash");
    let session = Duration::from_secs(6);
    let cfg = config(&group).session_timeout(session);

    let leader = GroupMember::join(&k, cfg.clone(), vec![topic.clone()])
        .await
        .unwrap();
    assert!(leader.is_leader());
    let mut leader = own(leader);
    let follower = GroupMember::join(&k, cfg, vec![topic.clone()])
        .await
        .unwrap();
    assert!(!follower.is_leader());
    let follower = own(follower);
    leader
        .wait_for("split", Duration::from_secs(60), |p| p.len() == 3)
        .await;

    // Both run (and heartbeat) for a while, then one "crashes": no LeaveGroup, no heartbeats.
    sleep(Duration::from_secs(2)).await;
    let (crashed, mut survivor) = if crash_leader {
        (leader, follower)
    } else {
        (follower, leader)
    };
    assert_eq!(survivor.current().len(), 3);
    let crashed_at = Instant::now();
    drop(crashed.stop().await);
    survivor
        .wait_for("the survivor takes over", Duration::from_secs(60), |p| {
            set(p) == all(&topic)
        })
        .await;
    let took = crashed_at.elapsed();
    // The crashed member's last heartbeat was at most one interval (0.5 s) before the crash.
    assert!(
        took + Duration::from_secs(1) >= session,
        "taken over after {took:?}, before the session timeout"
    );
    eprintln!("partitions of the crashed member reassigned after {took:?} (session {session:?})");
    survivor.stop().await.leave().await.unwrap();
}

#[tokio::test]
async fn unreachable_broker_is_a_timeout_that_names_the_brokers() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut k = KafkaConfig::new([format!("127.0.0.1:{port}")]);
    k.connect_timeout = Duration::from_secs(1);
    let started = Instant::now();
    let err = OffsetStore::connect(&k, "g").await.unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(5));
    let msg = err.to_string();
    assert!(matches!(err, GroupError::Timeout { .. }), "{msg}");
    assert!(msg.contains(&format!("127.0.0.1:{port}")), "{msg}");
    assert!(msg.contains("Check that the broker is running"), "{msg}");

    let err = GroupMember::join(&k, GroupConfig::new("g"), vec![])
        .await
        .unwrap_err();
    assert!(err.to_string().contains("topics"), "{err}");
}

// --- helpers: our side --------------------------------------------------------------------------

/// Waits until our member and librdkafka's hold disjoint assignments covering `everything`,
/// stable for two seconds.
async fn converge(
    ours: &mut Owner,
    theirs: &mut PyMember,
    everything: &BTreeSet<TopicPartition>,
) -> (BTreeSet<TopicPartition>, BTreeSet<TopicPartition>) {
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut stable_since: Option<Instant> = None;
    loop {
        theirs.drain();
        let our_parts = set(&ours.current());
        let their_parts = theirs.current.clone();
        let union: BTreeSet<_> = our_parts.union(&their_parts).cloned().collect();
        let ok = !our_parts.is_empty()
            && !their_parts.is_empty()
            && our_parts.is_disjoint(&their_parts)
            && union == *everything;
        match (ok, stable_since) {
            (true, Some(t)) if t.elapsed() >= Duration::from_secs(2) => {
                return (our_parts, their_parts)
            }
            (true, None) => stable_since = Some(Instant::now()),
            (false, _) => stable_since = None,
            _ => {}
        }
        if Instant::now() >= deadline {
            panic!(
                "no stable split within 90 s: ours {our_parts:?}, librdkafka {their_parts:?}; librdkafka events:\n{}",
                theirs.log.join("\n")
            );
        }
        sleep(Duration::from_millis(100)).await;
    }
}

/// Range over one topic: the smaller member id gets partitions 0..3.
fn check_range(
    topic: &str,
    ours: &BTreeSet<TopicPartition>,
    theirs: &BTreeSet<TopicPartition>,
    our_id: &str,
    their_id: &str,
) {
    let (first, second) = if our_id < their_id {
        (ours, theirs)
    } else {
        (theirs, ours)
    };
    assert_eq!(*first, tps(topic, 0..3), "ids {our_id} / {their_id}");
    assert_eq!(*second, tps(topic, 3..6), "ids {our_id} / {their_id}");
}

// --- helpers: the independent client -------------------------------------------------------------

fn kgroup_script() -> std::path::PathBuf {
    common::repo_root().join("scripts/kgroup.py")
}

/// A confluent-kafka group member (`kgroup.py member`), driven over stdin/stdout.
struct PyMember {
    child: Child,
    stdin: Option<ChildStdin>,
    events: mpsc::Receiver<Value>,
    /// The current assignment (after the last assign/revoke event).
    current: BTreeSet<TopicPartition>,
    member_id: String,
    log: Vec<String>,
}

impl PyMember {
    fn start(broker: &Broker, group: &str, topic: &str, strategy: &str) -> PyMember {
        let mut child = Command::new(common::python())
            .arg(kgroup_script())
            .args(["member", "--brokers", &broker.addr, "--group", group])
            .args(["--topic", topic, "--strategy", strategy])
            .args([
                "--session-timeout-ms",
                "10000",
                "--heartbeat-interval-ms",
                "500",
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start kgroup.py member");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                match serde_json::from_str::<Value>(&line) {
                    Ok(v) => {
                        if tx.send(v).is_err() {
                            break;
                        }
                    }
                    Err(e) => eprintln!("kgroup.py: bad line ({e}): {line}"),
                }
            }
        });
        PyMember {
            stdin: child.stdin.take(),
            child,
            events: rx,
            current: BTreeSet::new(),
            member_id: String::new(),
            log: Vec::new(),
        }
    }

    fn send(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("kgroup.py stdin");
        writeln!(stdin, "{line}").expect("write to kgroup.py");
        stdin.flush().unwrap();
    }

    fn apply(&mut self, e: &Value) {
        self.log.push(e.to_string());
        let parts = || -> BTreeSet<TopicPartition> {
            e["partitions"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .map(|t| {
                            TopicPartition::new(
                                t[0].as_str().unwrap(),
                                t[1].as_i64().unwrap() as i32,
                            )
                        })
                        .collect()
                })
                .unwrap_or_default()
        };
        match e["event"].as_str() {
            Some("assign") => {
                self.current = parts();
                if let Some(id) = e["member_id"].as_str() {
                    self.member_id = id.to_string();
                }
            }
            Some("revoke") => self.current.clear(),
            Some("error") => eprintln!("kgroup.py reported: {e}"),
            _ => {}
        }
    }

    /// Applies every event received so far.
    fn drain(&mut self) {
        while let Ok(e) = self.events.try_recv() {
            self.apply(&e);
        }
    }

    /// Applies events until one matches `pred`, which is returned.
    async fn wait_event(
        &mut self,
        what: &str,
        limit: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + limit;
        loop {
            while let Ok(e) = self.events.try_recv() {
                self.apply(&e);
                if pred(&e) {
                    return e;
                }
            }
            if Instant::now() >= deadline {
                panic!(
                    "{what}: no such event from kgroup.py within {limit:?}; events:\n{}",
                    self.log.join("\n")
                );
            }
            sleep(Duration::from_millis(50)).await;
        }
    }

    async fn wait_assignment(
        &mut self,
        what: &str,
        limit: Duration,
        pred: impl Fn(&BTreeSet<TopicPartition>) -> bool,
    ) {
        let deadline = Instant::now() + limit;
        loop {
            self.drain();
            if pred(&self.current) {
                return;
            }
            if Instant::now() >= deadline {
                panic!(
                    "{what}: librdkafka's assignment is {:?}; events:\n{}",
                    self.current,
                    self.log.join("\n")
                );
            }
            sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for PyMember {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
