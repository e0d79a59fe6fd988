//! Real parts for the integration tests: a tansu broker per test and an independent Kafka client.
//!
//! Use from an integration test with `mod common;`. Prerequisites come from
//! `scripts/setup-test-env.sh` (tansu 0.6.0 in `~/.cargo/bin`, and a Python virtualenv at
//! `target/pyenv` with confluent-kafka). [`Broker::start`] launches a private tansu process on a
//! free loopback port with SQLite storage under `target/test-brokers/`; dropping the [`Broker`]
//! kills it. The client side ([`KClient`], also reachable through the `Broker` methods) runs
//! `scripts/kclient.py`, which uses librdkafka, so records are checked by a client we did not
//! write.
#![allow(dead_code)]

use std::fs::{self, OpenOptions};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Once;
use std::thread;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use serde_json::{json, Value};

/// How long a broker gets to answer Kafka requests after it is started.
pub const BROKER_START_TIMEOUT: Duration = Duration::from_secs(30);

const SETUP_HINT: &str = "run `scripts/setup-test-env.sh` from the repository root \
     (installs tansu 0.6.0 and the confluent-kafka virtualenv in target/pyenv), then re-run the tests";

/// The repository root (where Cargo.toml is).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Rows of `data/digits.csv`: (label, CSV of the 64 pixel values).
pub fn digits() -> Vec<(usize, String)> {
    fs::read_to_string(repo_root().join("data/digits.csv"))
        .expect("data/digits.csv")
        .lines()
        .map(|l| {
            let (label, pixels) = l.split_once(',').expect("label,pixels");
            (label.parse().expect("label"), pixels.to_string())
        })
        .collect()
}

/// TensorFlow's predicted class for every dataset row (`models/MODEL.tf_classes.txt`).
pub fn tf_classes(model: &str) -> Vec<usize> {
    fs::read_to_string(repo_root().join(format!("models/{model}.tf_classes.txt")))
        .expect("tf_classes.txt")
        .lines()
        .map(|l| l.trim().parse().expect("class"))
        .collect()
}

/// Index of the largest of a JSON array of numbers (an output's top class).
pub fn argmax(values: &[Value]) -> usize {
    let v: Vec<f64> = values.iter().map(|x| x.as_f64().unwrap()).collect();
    (0..v.len())
        .max_by(|&a, &b| v[a].partial_cmp(&v[b]).unwrap())
        .unwrap()
}

/// `target/pyenv/bin/python`, the interpreter with confluent-kafka.
pub fn python() -> PathBuf {
    repo_root().join("target/pyenv/bin/python")
}

/// `scripts/kclient.py`, the independent Kafka client.
pub fn kclient_script() -> PathBuf {
    repo_root().join("scripts/kclient.py")
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    fs::metadata(path)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// The tansu binary: `$TANSU_BIN`, else `tansu` on PATH, else `~/.cargo/bin/tansu`.
pub fn find_tansu() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("TANSU_BIN") {
        let p = PathBuf::from(p);
        return is_executable(&p).then_some(p);
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let p = dir.join("tansu");
            if is_executable(&p) {
                return Some(p);
            }
        }
    }
    let p = PathBuf::from(std::env::var_os("HOME")?).join(".cargo/bin/tansu");
    is_executable(&p).then_some(p)
}

/// Panics with the setup instructions unless tansu and the Python client are installed.
pub fn require_test_env() -> PathBuf {
    let tansu = find_tansu();
    let py = python();
    let mut missing = vec![];
    if tansu.is_none() {
        missing.push("`tansu` (not on PATH, not in ~/.cargo/bin)".to_string());
    }
    if !is_executable(&py) {
        missing.push(format!("{}", py.display()));
    }
    if !missing.is_empty() {
        panic!(
            "integration test prerequisites missing: {}.\nTo fix: {SETUP_HINT}.",
            missing.join(" and ")
        );
    }
    tansu.unwrap()
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0 to find a free port")
        .port()
}

fn send_signal(pid: u32, signal: &str) {
    let _ = Command::new("kill")
        .args([&format!("-{signal}"), &pid.to_string()])
        .stderr(Stdio::null())
        .status();
}

fn pid_alive(pid: u32) -> bool {
    // A zombie still has a /proc entry; its state field (after the ")" ending the name) is Z.
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .map(|(_, rest)| !rest.trim_start().starts_with('Z'))
            .unwrap_or(false),
        Err(_) => false,
    }
}

fn cmdline_contains(pid: u32, needle: &str) -> bool {
    fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| String::from_utf8_lossy(&c).contains(needle))
        .unwrap_or(false)
}

fn read_pid(path: &Path) -> Option<u32> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
}

fn brokers_root() -> PathBuf {
    repo_root().join("target/test-brokers")
}

/// Kill brokers left behind by test processes that died without dropping their `Broker`
/// (e.g. killed by a timeout), and remove those processes' data directories.
fn reap_orphans() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let Ok(entries) = fs::read_dir(brokers_root()) else {
            return;
        };
        for entry in entries.flatten() {
            let dir = entry.path();
            let owner = read_pid(&dir.join("owner.pid"));
            if owner.is_some_and(|o| o == std::process::id() || pid_alive(o)) {
                continue;
            }
            if let Some(pid) = read_pid(&dir.join("broker.pid")) {
                if pid_alive(pid) && cmdline_contains(pid, "tansu") {
                    send_signal(pid, "KILL");
                }
            }
            let _ = fs::remove_dir_all(&dir);
        }
    });
}

fn tail(path: &Path, lines: usize) -> String {
    let text = fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

enum Launch {
    Ready,
    Exited(ExitStatus),
    TimedOut,
}

/// A private tansu broker on 127.0.0.1, with SQLite storage in its own directory.
pub struct Broker {
    /// "127.0.0.1:PORT", for bootstrap configuration.
    pub addr: String,
    pub port: u16,
    /// Data directory (tansu.db, broker.log, broker.pid).
    pub dir: PathBuf,
    /// tansu's --cluster-id: unique, so the readiness check cannot be answered by another broker
    /// that holds the port; kept across restarts because tansu keys its stored data by it.
    pub cluster_id: String,
    tansu: PathBuf,
    child: Option<Child>,
}

impl Broker {
    /// Starts a fresh broker for `test_name` and waits until it answers Kafka metadata requests.
    /// Panics (with instructions) if tansu or the Python client are not installed.
    pub fn start(test_name: &str) -> Broker {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let tansu = require_test_env();
        reap_orphans();
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let safe: String = test_name
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        let dir = brokers_root().join(format!("{safe}-{}-{n}", std::process::id()));
        if dir.exists() {
            fs::remove_dir_all(&dir).unwrap_or_else(|e| panic!("wipe {}: {e}", dir.display()));
        }
        fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
        fs::write(dir.join("owner.pid"), std::process::id().to_string()).unwrap();

        let cluster_id = format!("streamtract-test-{}-{n}", std::process::id());
        let mut broker = Broker {
            addr: String::new(),
            port: 0,
            dir,
            cluster_id,
            tansu,
            child: None,
        };
        const ATTEMPTS: usize = 5;
        for attempt in 1..=ATTEMPTS {
            // Another process may grab the port between our probe and tansu's bind: retry.
            let port = free_port();
            match broker.launch(port) {
                Launch::Ready => return broker,
                Launch::Exited(status) if attempt < ATTEMPTS => {
                    eprintln!(
                        "tansu exited during start-up on port {port} ({status}); retrying on another port"
                    );
                }
                Launch::Exited(status) => {
                    broker.fail(&format!("tansu exited during start-up ({status})"))
                }
                Launch::TimedOut => broker.fail(&format!(
                    "tansu did not answer Kafka metadata requests within {BROKER_START_TIMEOUT:?}"
                )),
            }
        }
        unreachable!()
    }

    fn fail(&mut self, what: &str) -> ! {
        self.kill_now();
        panic!(
            "{what}\nbroker dir: {}\n---- last lines of broker.log ----\n{}\n---- last kclient ping error ----\n{}",
            self.dir.display(),
            tail(&self.log_path(), 40),
            tail(&self.dir.join("ping.err"), 5),
        );
    }

    /// Adds the index on `header (topition, offset_id)` that tansu 0.6.0's SQLite schema lacks;
    /// without it every fetch scans all headers ever stored (see `index_headers` in
    /// scripts/broker.sh). Changes speed only, not data or behaviour.
    fn index_headers(&self) {
        let script = "import sqlite3, sys\n\
            db = sqlite3.connect(sys.argv[1], timeout=10)\n\
            db.execute('create index if not exists streamtract_header_record on header (topition, offset_id)')\n\
            db.commit()\n";
        let out = Command::new(python())
            .args(["-c", script])
            .arg(self.dir.join("tansu.db"))
            .output()
            .unwrap_or_else(|e| panic!("run {}: {e}", python().display()));
        assert!(
            out.status.success(),
            "adding the header index failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Path of the broker's log (tansu's stdout and stderr).
    pub fn log_path(&self) -> PathBuf {
        self.dir.join("broker.log")
    }

    /// The last `lines` lines of the broker's log.
    pub fn log_tail(&self, lines: usize) -> String {
        tail(&self.log_path(), lines)
    }

    /// The tansu process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// An independent client for this broker.
    pub fn client(&self) -> KClient {
        KClient::new(&self.addr)
    }

    fn spawn(&mut self, port: u16) {
        let addr = format!("127.0.0.1:{port}");
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .unwrap_or_else(|e| panic!("open {}: {e}", self.log_path().display()));
        let _ = writeln!(log, "==== starting tansu on {addr}");
        let log_err = log.try_clone().expect("clone log file handle");
        let listener = format!("tcp://{addr}");
        // tansu resolves sqlite://NAME against its working directory (and reads ./.env there).
        let child = Command::new(&self.tansu)
            .current_dir(&self.dir)
            .args(["broker", "--silent", "--cluster-id", &self.cluster_id])
            .args(["--listener-url", &listener])
            .args(["--advertised-listener-url", &listener])
            .args(["--storage-engine", "sqlite://tansu.db"])
            .env(
                "RUST_LOG",
                std::env::var("TANSU_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .env("NO_COLOR", "1")
            .env_remove("SCHEMA_REGISTRY")
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", self.tansu.display()));
        fs::write(self.dir.join("broker.pid"), child.id().to_string()).unwrap();
        fs::write(self.dir.join("broker.addr"), &addr).unwrap();
        self.addr = addr;
        self.port = port;
        self.child = Some(child);
    }

    fn launch(&mut self, port: u16) -> Launch {
        self.spawn(port);
        let sock: SocketAddr = self.addr.parse().unwrap();
        let deadline = Instant::now() + BROKER_START_TIMEOUT;
        while Instant::now() < deadline {
            let child = self.child.as_mut().unwrap();
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                let _ = fs::remove_file(self.dir.join("broker.pid"));
                return Launch::Exited(status);
            }
            if TcpStream::connect_timeout(&sock, Duration::from_millis(200)).is_ok() {
                // The port is open; is tansu (not some other process) answering Kafka requests?
                let out = Command::new(python())
                    .arg(kclient_script())
                    .args(["ping", "--brokers", &self.addr, "--timeout", "2"])
                    .args(["--cluster-id", &self.cluster_id])
                    .stdin(Stdio::null())
                    .output()
                    .unwrap_or_else(|e| panic!("run {}: {e}", python().display()));
                if out.status.success() {
                    self.index_headers();
                    return Launch::Ready;
                }
                let _ = fs::write(self.dir.join("ping.err"), &out.stderr);
            }
            thread::sleep(Duration::from_millis(50));
        }
        Launch::TimedOut
    }

    fn kill_now(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
            let _ = fs::remove_file(self.dir.join("broker.pid"));
        }
    }

    /// Stops the broker like a crash (SIGKILL) and waits for it to exit. Data stays; see
    /// [`Broker::restart`]. Does nothing if it is not running.
    pub fn stop(&mut self) {
        self.kill_now();
    }

    /// Stops the broker with SIGTERM (tansu's orderly shutdown), SIGKILL after 10 s.
    pub fn stop_gracefully(&mut self) {
        if let Some(child) = self.child.as_mut() {
            send_signal(child.id(), "TERM");
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    self.child = None;
                    let _ = fs::remove_file(self.dir.join("broker.pid"));
                    return;
                }
                thread::sleep(Duration::from_millis(20));
            }
        }
        self.kill_now();
    }

    /// Stops the broker if it runs, then starts it again on the same port with the same data.
    pub fn restart(&mut self) {
        self.stop();
        self.start_again();
    }

    /// Starts a stopped broker again on the same port with the same data (for outage tests that
    /// keep the broker down for a while between [`Broker::stop`] and this call).
    pub fn start_again(&mut self) {
        assert!(
            self.child.is_none(),
            "start_again: broker {} is still running",
            self.addr
        );
        // The port could be briefly taken by someone else (e.g. as an ephemeral port): retry.
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            match self.launch(self.port) {
                Launch::Ready => return,
                Launch::Exited(status) if Instant::now() < deadline => {
                    eprintln!(
                        "tansu exited while restarting on {} ({status}); retrying",
                        self.addr
                    );
                    thread::sleep(Duration::from_millis(500));
                }
                Launch::Exited(status) => self.fail(&format!(
                    "tansu could not restart on {} ({status})",
                    self.addr
                )),
                Launch::TimedOut => self.fail(&format!(
                    "restarted tansu did not answer within {BROKER_START_TIMEOUT:?}"
                )),
            }
        }
    }

    /// The committed offsets of partitions `0..partitions` of `topic` for `group`, read by
    /// confluent-kafka (`scripts/kgroup.py`) without joining the group; `None` where the group
    /// committed nothing.
    pub fn committed(
        &self,
        group: &str,
        topic: &str,
        partitions: i32,
    ) -> std::collections::BTreeMap<i32, Option<i64>> {
        let out = Command::new(python())
            .arg(repo_root().join("scripts/kgroup.py"))
            .args(["committed", "--brokers", &self.addr, "--group", group])
            .args(["--topic", topic, "--partitions", &partitions.to_string()])
            .output()
            .expect("run scripts/kgroup.py committed");
        assert!(
            out.status.success(),
            "kgroup.py committed failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let json: Value = serde_json::from_slice(&out.stdout).expect("kgroup.py committed output");
        (0..partitions)
            .map(|p| (p, json[p.to_string()].as_i64()))
            .collect()
    }

    /// Asserts that `group` has committed every partition `0..partitions` of `topic` up to its
    /// end (the high watermark): nothing accepted is left to read again.
    pub fn assert_committed_to_end(&self, group: &str, topic: &str, partitions: i32) {
        let committed = self.committed(group, topic, partitions);
        let ends = self
            .topic_info(topic)
            .expect("topic exists")
            .high_watermarks;
        for p in 0..partitions {
            assert_eq!(
                committed[&p],
                Some(ends[p as usize]),
                "{group} on {topic} partition {p}: {committed:?}"
            );
        }
    }

    /// Creates `topic` with `partitions` partitions (already existing with that count is fine)
    /// and waits until metadata shows it.
    pub fn create_topic(&self, topic: &str, partitions: i32) {
        self.client().create_topic(topic, partitions)
    }

    /// Produces `recs` in order; returns (partition, offset) per record.
    pub fn produce(&self, topic: &str, recs: &[Rec]) -> Vec<(i32, i64)> {
        self.client().produce(topic, recs)
    }

    /// Reads `topic` from the beginning of every partition until `count` records were read or
    /// `timeout` passed; sorted by (partition, offset). May return fewer than `count`.
    pub fn consume(&self, topic: &str, count: usize, timeout: Duration) -> Vec<Consumed> {
        self.client().consume(topic, count, timeout)
    }

    /// Like [`Broker::consume`], then keeps reading for `extra_wait` to catch surplus records.
    pub fn consume_with_extra_wait(
        &self,
        topic: &str,
        count: usize,
        timeout: Duration,
        extra_wait: Duration,
    ) -> Vec<Consumed> {
        self.client()
            .consume_with_extra_wait(topic, count, timeout, extra_wait)
    }

    /// The partition librdkafka's Java-compatible `murmur2_random` partitioner picks for each key
    /// with `partitions` partitions (found by producing to a scratch topic on this broker).
    pub fn murmur2_partitions(&self, keys: &[&str], partitions: i32) -> Vec<i32> {
        self.client().murmur2_partitions(keys, partitions)
    }

    /// Partition count and watermarks of `topic`, or None if it does not exist.
    pub fn topic_info(&self, topic: &str) -> Option<TopicInfo> {
        self.client().topic_info(topic)
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.kill_now();
    }
}

/// A record to produce.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Rec {
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub headers: Vec<(String, Option<Vec<u8>>)>,
    /// Explicit partition; None lets the `murmur2_random` partitioner choose (by key).
    pub partition: Option<i32>,
}

impl Rec {
    /// A record with a UTF-8 key.
    pub fn kv(key: &str, value: impl Into<Vec<u8>>) -> Rec {
        Rec {
            key: Some(key.as_bytes().to_vec()),
            value: Some(value.into()),
            ..Rec::default()
        }
    }

    /// A record with a binary key.
    pub fn kv_bytes(key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) -> Rec {
        Rec {
            key: Some(key.into()),
            value: Some(value.into()),
            ..Rec::default()
        }
    }

    /// A record without a key.
    pub fn unkeyed(value: impl Into<Vec<u8>>) -> Rec {
        Rec {
            value: Some(value.into()),
            ..Rec::default()
        }
    }

    /// A record without a key or value (a null-value record).
    pub fn null() -> Rec {
        Rec::default()
    }

    pub fn header(mut self, name: &str, value: impl Into<Vec<u8>>) -> Rec {
        self.headers.push((name.to_string(), Some(value.into())));
        self
    }

    pub fn null_header(mut self, name: &str) -> Rec {
        self.headers.push((name.to_string(), None));
        self
    }

    pub fn partition(mut self, partition: i32) -> Rec {
        self.partition = Some(partition);
        self
    }
}

/// The fields of an output's `streamtract.source` header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Source {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub timestamp_ms: i64,
    /// The first 16 hex digits of the model's SHA-256.
    pub model: String,
}

/// The first 16 hex digits of a SHA-256, as the compact header carries it.
pub fn sha_prefix(sha256: &str) -> &str {
    &sha256[..16]
}

/// A record read back by the independent client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Consumed {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub timestamp_ms: i64,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub headers: Vec<(String, Option<Vec<u8>>)>,
}

impl Consumed {
    /// The first header called `name`, as (lossy) UTF-8; None if absent or null.
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .and_then(|(_, v)| v.as_ref())
            .map(|v| String::from_utf8_lossy(v).into_owned())
    }

    /// The default provenance header, `streamtract.source` =
    /// `TOPIC:PARTITION:OFFSET:TIMESTAMP_MS:MODEL_SHA256_PREFIX` (docs/running.md), read here
    /// independently of the library's own parser. Panics if it is absent or malformed.
    pub fn source(&self) -> Source {
        let text = self
            .header("streamtract.source")
            .unwrap_or_else(|| panic!("no streamtract.source header on {self:?}"));
        let fields: Vec<&str> = text.split(':').collect();
        assert_eq!(fields.len(), 5, "streamtract.source = {text:?}");
        Source {
            topic: fields[0].to_string(),
            partition: fields[1].parse().expect("partition"),
            offset: fields[2].parse().expect("offset"),
            timestamp_ms: fields[3].parse().expect("timestamp"),
            model: fields[4].to_string(),
        }
    }

    /// The key as (lossy) UTF-8.
    pub fn key_str(&self) -> Option<String> {
        self.key
            .as_ref()
            .map(|k| String::from_utf8_lossy(k).into_owned())
    }

    /// The value as (lossy) UTF-8.
    pub fn value_str(&self) -> Option<String> {
        self.value
            .as_ref()
            .map(|v| String::from_utf8_lossy(v).into_owned())
    }

    /// The value parsed as JSON; panics if it is null or not JSON.
    pub fn value_json(&self) -> Value {
        let v = self
            .value
            .as_ref()
            .unwrap_or_else(|| panic!("record {self:?} has a null value"));
        serde_json::from_slice(v).unwrap_or_else(|e| {
            panic!(
                "value at {}/{} is not JSON ({e}): {}",
                self.partition,
                self.offset,
                String::from_utf8_lossy(v)
            )
        })
    }
}

/// What `kclient.py topic-info` reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopicInfo {
    pub partitions: i32,
    pub high_watermarks: Vec<i64>,
    pub low_watermarks: Vec<i64>,
}

/// The independent client (`scripts/kclient.py`, confluent-kafka) for any bootstrap address.
#[derive(Clone, Debug)]
pub struct KClient {
    pub brokers: String,
}

struct ClientOutput {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

fn b64_opt(data: &Option<Vec<u8>>) -> Value {
    match data {
        Some(d) => Value::String(B64.encode(d)),
        None => Value::Null,
    }
}

fn unb64_opt(v: &Value, what: &str) -> Option<Vec<u8>> {
    match v {
        Value::Null => None,
        Value::String(s) => Some(
            B64.decode(s)
                .unwrap_or_else(|e| panic!("kclient: {what} is not base64 ({e}): {s}")),
        ),
        other => panic!("kclient: {what} is neither base64 nor null: {other}"),
    }
}

impl KClient {
    pub fn new(brokers: &str) -> KClient {
        KClient {
            brokers: brokers.to_string(),
        }
    }

    /// Runs `kclient.py SUBCOMMAND --brokers ... ARGS`, feeding `stdin`, killing it after `limit`.
    fn run(&self, sub: &str, args: &[&str], stdin: &str, limit: Duration) -> ClientOutput {
        let py = python();
        if !is_executable(&py) {
            panic!("{} is missing.\nTo fix: {SETUP_HINT}.", py.display());
        }
        let mut child = Command::new(&py)
            .arg(kclient_script())
            .arg(sub)
            .args(["--brokers", &self.brokers])
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("run {}: {e}", py.display()));
        let mut input = child.stdin.take().unwrap();
        let stdin = stdin.to_string();
        let writer = thread::spawn(move || {
            let _ = input.write_all(stdin.as_bytes());
        });
        let mut out = child.stdout.take().unwrap();
        let mut err = child.stderr.take().unwrap();
        let reader = thread::spawn(move || {
            let mut s = String::new();
            let _ = out.read_to_string(&mut s);
            s
        });
        let err_reader = thread::spawn(move || {
            let mut s = String::new();
            let _ = err.read_to_string(&mut s);
            s
        });
        let deadline = Instant::now() + limit;
        let status = loop {
            if let Some(status) = child.try_wait().expect("wait for kclient.py") {
                break status;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                let stderr = err_reader.join().unwrap_or_default();
                panic!(
                    "kclient.py {sub} {args:?} against {} did not finish within {limit:?}; stderr:\n{stderr}",
                    self.brokers
                );
            }
            thread::sleep(Duration::from_millis(20));
        };
        let _ = writer.join();
        ClientOutput {
            status,
            stdout: reader.join().unwrap_or_default(),
            stderr: err_reader.join().unwrap_or_default(),
        }
    }

    fn run_ok(&self, sub: &str, args: &[&str], stdin: &str, limit: Duration) -> String {
        let out = self.run(sub, args, stdin, limit);
        if !out.status.success() {
            panic!(
                "kclient.py {sub} {args:?} against {} failed ({}); stderr:\n{}",
                self.brokers, out.status, out.stderr
            );
        }
        out.stdout
    }

    /// Runs `kclient.py SUBCOMMAND` with `args`, feeding `stdin`; its JSON output lines.
    pub fn run_json(&self, sub: &str, args: &[&str], stdin: &str) -> Vec<Value> {
        let out = self.run_ok(sub, args, stdin, Duration::from_secs(120));
        Self::json_lines(sub, &out)
    }

    fn json_lines(sub: &str, stdout: &str) -> Vec<Value> {
        stdout
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                serde_json::from_str(l)
                    .unwrap_or_else(|e| panic!("kclient.py {sub}: bad output line ({e}): {l}"))
            })
            .collect()
    }

    /// Creates `topic` (exists with the same count is fine) and waits until metadata shows it.
    pub fn create_topic(&self, topic: &str, partitions: i32) {
        self.run_ok(
            "create-topic",
            &["--topic", topic, "--partitions", &partitions.to_string()],
            "",
            Duration::from_secs(60),
        );
    }

    /// Produces `recs` in order (acks=all; one request in flight). Returns (partition, offset) per
    /// record, in input order. Panics on any delivery error.
    pub fn produce(&self, topic: &str, recs: &[Rec]) -> Vec<(i32, i64)> {
        self.produce_with(topic, recs, &[])
    }

    /// Produces `recs` one at a time: each is sent alone and its delivery awaited, then
    /// `interval` slept. Returns (partition, offset) per record, in input order.
    pub fn produce_paced(&self, topic: &str, recs: &[Rec], interval: Duration) -> Vec<(i32, i64)> {
        let ms = format!("{}", interval.as_secs_f64() * 1000.0);
        self.produce_with(topic, recs, &["--interval-ms", &ms])
    }

    fn produce_with(&self, topic: &str, recs: &[Rec], extra: &[&str]) -> Vec<(i32, i64)> {
        let mut input = String::new();
        for r in recs {
            let mut obj = json!({
                "key": b64_opt(&r.key),
                "value": b64_opt(&r.value),
                "headers": r.headers.iter().map(|(n, v)| json!([n, b64_opt(v)])).collect::<Vec<_>>(),
            });
            if let Some(p) = r.partition {
                obj["partition"] = json!(p);
            }
            input.push_str(&obj.to_string());
            input.push('\n');
        }
        let out = self.run_ok(
            "produce",
            &[&["--topic", topic], extra].concat(),
            &input,
            Duration::from_secs(120),
        );
        let lines = Self::json_lines("produce", &out);
        assert_eq!(
            lines.len(),
            recs.len(),
            "kclient.py produce: one report per record expected:\n{out}"
        );
        lines
            .iter()
            .map(|v| {
                (
                    v["partition"].as_i64().expect("partition") as i32,
                    v["offset"].as_i64().expect("offset"),
                )
            })
            .collect()
    }

    /// Reads `topic` from the beginning of every partition (no group commit) until `count`
    /// records were read or `timeout` passed. Sorted by (partition, offset).
    pub fn consume(&self, topic: &str, count: usize, timeout: Duration) -> Vec<Consumed> {
        self.consume_with_extra_wait(topic, count, timeout, Duration::ZERO)
    }

    /// Like [`KClient::consume`], then keeps reading for `extra_wait` to catch surplus records.
    pub fn consume_with_extra_wait(
        &self,
        topic: &str,
        count: usize,
        timeout: Duration,
        extra_wait: Duration,
    ) -> Vec<Consumed> {
        let args = [
            "--topic".to_string(),
            topic.to_string(),
            "--count".to_string(),
            count.to_string(),
            "--timeout".to_string(),
            format!("{:.3}", timeout.as_secs_f64()),
            "--extra-wait".to_string(),
            format!("{:.3}", extra_wait.as_secs_f64()),
        ];
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let limit = timeout + extra_wait + Duration::from_secs(60);
        let out = self.run_ok("consume", &args, "", limit);
        Self::json_lines("consume", &out)
            .iter()
            .map(|v| Consumed {
                topic: v["topic"].as_str().expect("topic").to_string(),
                partition: v["partition"].as_i64().expect("partition") as i32,
                offset: v["offset"].as_i64().expect("offset"),
                timestamp_ms: v["timestamp_ms"].as_i64().expect("timestamp_ms"),
                key: unb64_opt(&v["key"], "key"),
                value: unb64_opt(&v["value"], "value"),
                headers: v["headers"]
                    .as_array()
                    .expect("headers")
                    .iter()
                    .map(|h| {
                        (
                            h[0].as_str().expect("header name").to_string(),
                            unb64_opt(&h[1], "header value"),
                        )
                    })
                    .collect(),
            })
            .collect()
    }

    /// The partition librdkafka's `murmur2_random` (Java-compatible) partitioner picks for each
    /// key with `partitions` partitions: produced for real to the scratch topic
    /// `kclient-murmur2-p<partitions>` on the broker.
    pub fn murmur2_partitions(&self, keys: &[&str], partitions: i32) -> Vec<i32> {
        assert!(
            keys.iter().all(|k| !k.contains('\n') && !k.contains('\r')),
            "murmur2_partitions: keys must be single lines"
        );
        let mut input = keys.join("\n");
        input.push('\n');
        let out = self.run_ok(
            "partitions-for-keys",
            &["--partitions", &partitions.to_string()],
            &input,
            Duration::from_secs(120),
        );
        let parts: Vec<i32> = out
            .lines()
            .map(|l| {
                l.trim()
                    .parse()
                    .unwrap_or_else(|e| panic!("partitions-for-keys: bad line {l:?}: {e}"))
            })
            .collect();
        assert_eq!(
            parts.len(),
            keys.len(),
            "partitions-for-keys: one line per key expected:\n{out}"
        );
        parts
    }

    /// Partition count and watermarks of `topic`, or None if it does not exist.
    pub fn topic_info(&self, topic: &str) -> Option<TopicInfo> {
        let out = self.run(
            "topic-info",
            &["--topic", topic],
            "",
            Duration::from_secs(60),
        );
        match out.status.code() {
            Some(0) => {}
            Some(2) => return None,
            _ => panic!(
                "kclient.py topic-info {topic} against {} failed ({}); stderr:\n{}",
                self.brokers, out.status, out.stderr
            ),
        }
        let v: Value = serde_json::from_str(out.stdout.trim())
            .unwrap_or_else(|e| panic!("topic-info: bad output ({e}): {}", out.stdout));
        let nums = |key: &str| -> Vec<i64> {
            v[key]
                .as_array()
                .map(|a| a.iter().map(|x| x.as_i64().expect(key)).collect())
                .unwrap_or_default()
        };
        Some(TopicInfo {
            partitions: v["partitions"].as_i64().expect("partitions") as i32,
            high_watermarks: nums("high_watermarks"),
            low_watermarks: nums("low_watermarks"),
        })
    }
}

/// A unique topic name for a test (tansu keeps data per broker, but names still help logs).
pub fn unique_topic(prefix: &str) -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    )
}

/// Sends SIGTERM to a `streamtract run` started with piped stderr, checks that it exits 0 and
/// returns its stderr.
pub fn stop_with_sigterm(child: std::process::Child) -> String {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "SIGTERM should exit 0: {stderr}");
    stderr
}

/// Runs `streamtract ARGS` from the repository root, killing it after `limit`; returns its
/// output.
pub fn streamtract_within(args: &[&str], limit: Duration) -> std::process::Output {
    let child = Command::new(env!("CARGO_BIN_EXE_streamtract"))
        .args(args)
        .current_dir(repo_root())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    output_within(child, limit)
}

/// A command that starts the program `bin`, through the emulator named by
/// `STREAMTRACT_TEST_RUNNER` when it is set: under emulation (scripts/test-emulated.sh) the
/// binary under test is an ARM file, which this machine's kernel cannot exec by itself.
pub fn command_for(bin: &Path) -> Command {
    match std::env::var("STREAMTRACT_TEST_RUNNER") {
        Ok(runner) if !runner.is_empty() => {
            let mut command = Command::new(runner);
            command.arg(bin);
            command
        }
        _ => Command::new(bin),
    }
}

/// Waits for `child`, killing it once `limit` has passed; returns its output.
pub fn output_within(mut child: std::process::Child, limit: Duration) -> std::process::Output {
    let deadline = Instant::now() + limit;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().unwrap()
}

/// GET `url` with Python's urllib: (status, body). Status 0 when nothing answers.
pub fn http_get(url: &str) -> (u16, String) {
    let script = r#"
import sys, urllib.request, urllib.error
try:
    r = urllib.request.urlopen(sys.argv[1], timeout=5)
    print(r.status); sys.stdout.write(r.read().decode())
except urllib.error.HTTPError as e:
    print(e.code); sys.stdout.write(e.read().decode())
except OSError:
    print(0)
"#;
    let out = Command::new(python())
        .args(["-c", script, url])
        .output()
        .expect("run python");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (status, body) = text.split_once('\n').unwrap_or((text.trim(), ""));
    (status.trim().parse().unwrap_or(0), body.to_string())
}

/// Metric samples `name{labels} value` → value, for the lines starting with `name`.
pub fn samples(text: &str, name: &str) -> std::collections::BTreeMap<String, f64> {
    text.lines()
        .filter(|l| l.starts_with(name) && !l.starts_with('#'))
        .filter_map(|l| {
            let (key, value) = l.rsplit_once(' ')?;
            Some((key.to_string(), value.parse().ok()?))
        })
        .collect()
}

pub fn total(text: &str, name: &str) -> f64 {
    samples(text, name).values().sum()
}

pub fn wait_for(what: &str, timeout: Duration, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}
