//! TLS and SASL against a real broker, checked with an independent client.
//!
//! tansu 0.6.0 has `--cert`/`--key` flags but serves no TLS (its CLI refuses the two together and
//! its listener never uses the acceptor), so, as DESIGN.md section 6 plans, a TLS-terminating
//! proxy sits in front of the broker: [`TlsProxy`], a rustls server written here, which can also
//! require client certificates (mutual TLS), which tansu could not do either. The broker
//! advertises the proxy's port, so every connection (bootstrap, partition leaders, group
//! coordinator) goes through TLS. SASL is tansu's own (`--authentication`, SCRAM users made with
//! `tansu user create`). The test CA and certificates are made here with `rcgen` (pure Rust, on
//! ring). Records are produced and read back by librdkafka (confluent-kafka) through
//! `scripts/ksecure.py`.

mod common;

use std::collections::HashMap;
use std::fs;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use futures::StreamExt;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use serde_json::{json, Value};
use streamtract::dataset::{
    KafkaDataset, KafkaGroupDataset, OutputConfig, OutputItem, OutputSequence, SourceRecord,
};
use streamtract::kafka::group::{OffsetStore, TopicPartition};
use streamtract::kafka::{connect, KafkaConfig, Password, SaslConfig, SaslMechanism, TlsConfig};

const USER: &str = "alice";
const PASSWORD: &str = "correct horse battery staple";
/// Rows of data/digits.csv sent through the pipeline in the end-to-end tests.
const ROWS: usize = 300;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

// ---- certificates ----------------------------------------------------------------------------

/// PEM files of a test PKI: a CA, a broker certificate for 127.0.0.1 signed by it, a client
/// certificate signed by it, and a second CA (with its own client certificate) nobody trusts.
struct Pki {
    ca: PathBuf,
    server_cert: PathBuf,
    server_key: PathBuf,
    client_cert: PathBuf,
    client_key: PathBuf,
    other_ca: PathBuf,
    stranger_cert: PathBuf,
    stranger_key: PathBuf,
}

fn make_ca(name: &str) -> (rcgen::Certificate, Issuer<'static, KeyPair>) {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let key = KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    (cert, Issuer::new(params, key))
}

fn make_leaf(
    issuer: &Issuer<'static, KeyPair>,
    names: &[&str],
    purpose: ExtendedKeyUsagePurpose,
) -> (String, String) {
    let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    let mut params = CertificateParams::new(names).unwrap();
    params
        .distinguished_name
        .push(DnType::CommonName, "streamtract test");
    params.extended_key_usages = vec![purpose];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, issuer).unwrap();
    (cert.pem(), key.serialize_pem())
}

impl Pki {
    fn create(dir: &Path) -> Pki {
        fs::create_dir_all(dir).unwrap();
        let write = |name: &str, pem: &str| {
            let p = dir.join(name);
            fs::write(&p, pem).unwrap();
            p
        };
        let (ca_cert, ca) = make_ca("streamtract test CA");
        let (other_cert, other) = make_ca("some other CA");
        let (server_cert, server_key) =
            make_leaf(&ca, &["127.0.0.1"], ExtendedKeyUsagePurpose::ServerAuth);
        let (client_cert, client_key) =
            make_leaf(&ca, &["client.test"], ExtendedKeyUsagePurpose::ClientAuth);
        let (stranger_cert, stranger_key) = make_leaf(
            &other,
            &["client.test"],
            ExtendedKeyUsagePurpose::ClientAuth,
        );
        Pki {
            ca: write("ca.pem", &ca_cert.pem()),
            server_cert: write("server.pem", &server_cert),
            server_key: write("server.key", &server_key),
            client_cert: write("client.pem", &client_cert),
            client_key: write("client.key", &client_key),
            other_ca: write("other-ca.pem", &other_cert.pem()),
            stranger_cert: write("stranger.pem", &stranger_cert),
            stranger_key: write("stranger.key", &stranger_key),
        }
    }
}

// ---- TLS-terminating proxy -------------------------------------------------------------------

/// Accepts TLS on 127.0.0.1:`port` and forwards the plaintext to the broker. With
/// `client_ca`, a client certificate signed by that CA is required. Stops when dropped.
struct TlsProxy {
    port: u16,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<thread::JoinHandle<()>>,
}

impl TlsProxy {
    fn start(upstream: u16, pki: &Pki, client_ca: Option<&Path>) -> TlsProxy {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};

        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .unwrap();
        let builder = match client_ca {
            Some(ca) => {
                let mut roots = rustls::RootCertStore::empty();
                for cert in CertificateDer::pem_file_iter(ca).unwrap() {
                    roots.add(cert.unwrap()).unwrap();
                }
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots),
                    Arc::clone(&provider),
                )
                .build()
                .unwrap();
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&pki.server_cert)
            .unwrap()
            .map(Result::unwrap)
            .collect();
        let key = PrivateKeyDer::from_pem_file(&pki.server_key).unwrap();
        let config = Arc::new(builder.with_single_cert(chain, key).unwrap());

        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                let acceptor = tokio_rustls::TlsAcceptor::from(config);
                loop {
                    let (tcp, _) = tokio::select! {
                        _ = &mut stopped => return,
                        accepted = listener.accept() => match accepted {
                            Ok(a) => a,
                            Err(_) => continue,
                        },
                    };
                    let acceptor = acceptor.clone();
                    tokio::spawn(async move {
                        let Ok(mut tls) = acceptor.accept(tcp).await else {
                            return;
                        };
                        let Ok(mut broker) =
                            tokio::net::TcpStream::connect(("127.0.0.1", upstream)).await
                        else {
                            return;
                        };
                        let _ = tokio::io::copy_bidirectional(&mut tls, &mut broker).await;
                    });
                }
            });
        });
        TlsProxy {
            port,
            stop: Some(stop),
            thread: Some(thread),
        }
    }
}

impl Drop for TlsProxy {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

// ---- broker ----------------------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq)]
enum Auth {
    /// No SASL.
    None,
    /// `--authentication`, with `alice` created for SCRAM-SHA-256 and SCRAM-SHA-512.
    Scram,
}

/// tansu on a plaintext loopback port behind a [`TlsProxy`]; `addr` is the proxy's.
struct SecureBroker {
    /// "127.0.0.1:PORT" of the TLS proxy: the bootstrap address for clients.
    addr: String,
    /// tansu's own (plaintext) port.
    plain_port: u16,
    dir: PathBuf,
    pki: Pki,
    mtls: bool,
    auth: Auth,
    cluster_id: String,
    tansu: PathBuf,
    child: Option<Child>,
    _proxy: TlsProxy,
}

impl SecureBroker {
    fn start(name: &str, mtls: bool, auth: Auth) -> SecureBroker {
        static N: AtomicUsize = AtomicUsize::new(0);
        let tansu = common::require_test_env();
        let n = N.fetch_add(1, Ordering::SeqCst);
        let dir = root().join(format!(
            "target/test-brokers/security-{name}-{}-{n}",
            std::process::id()
        ));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        // Same layout as tests/common: a later test run reaps this broker if we die.
        fs::write(dir.join("owner.pid"), std::process::id().to_string()).unwrap();
        let pki = Pki::create(&dir.join("pki"));
        let plain_port = free_port();
        let client_ca = mtls.then_some(pki.ca.as_path());
        let proxy = TlsProxy::start(plain_port, &pki, client_ca);
        let mut broker = SecureBroker {
            addr: format!("127.0.0.1:{}", proxy.port),
            plain_port,
            dir,
            pki,
            mtls,
            auth,
            cluster_id: format!("streamtract-security-{}-{n}", std::process::id()),
            tansu,
            child: None,
            _proxy: proxy,
        };
        if auth == Auth::Scram {
            // Users are stored by the broker; `tansu user create` needs it running without
            // `--authentication` (it does not authenticate itself).
            broker.spawn(false);
            broker.create_users();
            broker.stop();
        }
        broker.spawn(auth == Auth::Scram);
        broker.wait_ready();
        broker
    }

    fn spawn(&mut self, authentication: bool) {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("broker.log"))
            .unwrap();
        let mut cmd = Command::new(&self.tansu);
        cmd.current_dir(&self.dir)
            .args(["broker", "--silent", "--cluster-id", &self.cluster_id])
            .args([
                "--listener-url",
                &format!("tcp://127.0.0.1:{}", self.plain_port),
            ])
            .args(["--advertised-listener-url", &format!("tcp://{}", self.addr)])
            .args(["--storage-engine", "sqlite://tansu.db"])
            .env("RUST_LOG", "warn")
            .env("NO_COLOR", "1")
            .env_remove("SCHEMA_REGISTRY")
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        if authentication {
            cmd.arg("--authentication");
        }
        let child = cmd.spawn().unwrap();
        fs::write(self.dir.join("broker.pid"), child.id().to_string()).unwrap();
        self.child = Some(child);
        let sock: SocketAddr = format!("127.0.0.1:{}", self.plain_port).parse().unwrap();
        let deadline = Instant::now() + common::BROKER_START_TIMEOUT;
        while TcpStream::connect_timeout(&sock, Duration::from_millis(200)).is_err() {
            if let Ok(Some(status)) = self.child.as_mut().unwrap().try_wait() {
                self.fail(&format!("tansu exited during start-up ({status})"));
            }
            if Instant::now() > deadline {
                self.fail("tansu did not open its port");
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    fn create_users(&mut self) {
        for mechanism in ["scram256", "scram512"] {
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                let out = Command::new(&self.tansu)
                    .args(["user", "create", "--mechanism", mechanism, "--broker"])
                    .arg(format!("tcp://127.0.0.1:{}", self.plain_port))
                    .args([USER, PASSWORD])
                    .output()
                    .unwrap();
                if out.status.success() {
                    break;
                }
                if Instant::now() > deadline {
                    self.fail(&format!(
                        "tansu user create {mechanism} failed: {}",
                        String::from_utf8_lossy(&out.stderr)
                    ));
                }
                thread::sleep(Duration::from_millis(200));
            }
        }
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + common::BROKER_START_TIMEOUT;
        loop {
            let out = self.client().run(
                "ping",
                &["--timeout", "2", "--cluster-id", &self.cluster_id],
                "",
            );
            if out.status.success() {
                return;
            }
            if Instant::now() > deadline {
                let err = String::from_utf8_lossy(&out.stderr).into_owned();
                self.fail(&format!("no answer through the TLS proxy: {err}"));
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
            let _ = fs::remove_file(self.dir.join("broker.pid"));
        }
    }

    fn fail(&mut self, what: &str) -> ! {
        self.stop();
        let log = fs::read_to_string(self.dir.join("broker.log")).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(30).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        panic!(
            "{what}\nbroker dir: {}\n---- broker.log ----\n{}",
            self.dir.display(),
            tail.join("\n")
        );
    }

    /// The independent client with this broker's TLS (and SASL) settings.
    fn client(&self) -> SecureClient {
        let mut settings = vec![("ssl.ca.location".to_string(), path_str(&self.pki.ca))];
        if self.mtls {
            settings.push((
                "ssl.certificate.location".into(),
                path_str(&self.pki.client_cert),
            ));
            settings.push(("ssl.key.location".into(), path_str(&self.pki.client_key)));
        }
        let protocol = match self.auth {
            Auth::None => "SSL",
            Auth::Scram => {
                settings.push(("sasl.mechanisms".into(), "SCRAM-SHA-512".into()));
                settings.push(("sasl.username".into(), USER.into()));
                "SASL_SSL"
            }
        };
        settings.push(("security.protocol".into(), protocol.into()));
        SecureClient {
            brokers: self.addr.clone(),
            settings,
            password: (self.auth == Auth::Scram).then(|| PASSWORD.to_string()),
        }
    }

    /// Library settings for this broker (TLS with the right CA, client certificate if mTLS).
    fn kafka_config(&self) -> KafkaConfig {
        let mut tls = TlsConfig::from_ca_file(&self.pki.ca).unwrap();
        if self.mtls {
            tls = tls
                .with_client_cert(&self.pki.client_cert, &self.pki.client_key)
                .unwrap();
        }
        let mut kafka = KafkaConfig::new([self.addr.clone()]).tls(tls);
        kafka.connect_timeout = Duration::from_secs(20);
        kafka.request_timeout = Duration::from_secs(20);
        kafka
    }
}

impl Drop for SecureBroker {
    fn drop(&mut self) {
        self.stop();
        if !thread::panicking() {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

fn path_str(p: &Path) -> String {
    p.to_str().unwrap().to_string()
}

// ---- independent client ----------------------------------------------------------------------

/// `scripts/ksecure.py` (kclient.py plus librdkafka security settings).
struct SecureClient {
    brokers: String,
    settings: Vec<(String, String)>,
    /// Passed to the script through an environment variable, not its command line.
    password: Option<String>,
}

impl SecureClient {
    fn run(&self, sub: &str, args: &[&str], stdin: &str) -> Output {
        use std::io::Write;
        let mut cmd = Command::new(common::python());
        cmd.arg(root().join("scripts/ksecure.py"));
        for (k, v) in &self.settings {
            cmd.args(["--set", &format!("{k}={v}")]);
        }
        if let Some(pw) = &self.password {
            cmd.args(["--set-env", "sasl.password=KSECURE_PASSWORD"])
                .env("KSECURE_PASSWORD", pw);
        }
        let mut child = cmd
            .arg(sub)
            .args(["--brokers", &self.brokers])
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(stdin.as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    }

    fn run_ok(&self, sub: &str, args: &[&str], stdin: &str) -> String {
        let out = self.run(sub, args, stdin);
        assert!(
            out.status.success(),
            "ksecure.py {sub} {args:?} failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    fn create_topic(&self, topic: &str, partitions: i32) {
        self.run_ok(
            "create-topic",
            &["--topic", topic, "--partitions", &partitions.to_string()],
            "",
        );
    }

    /// Produces (key, value) records.
    fn produce(&self, topic: &str, records: &[(String, String)]) {
        let input: String = records
            .iter()
            .map(|(k, v)| json!({"key": B64.encode(k), "value": B64.encode(v)}).to_string() + "\n")
            .collect();
        let out = self.run_ok("produce", &["--topic", topic], &input);
        assert_eq!(out.lines().count(), records.len(), "{out}");
    }

    /// Reads `count` records of `topic` (or what came within 60 s): key → JSON value.
    fn consume(&self, topic: &str, count: usize) -> HashMap<String, Value> {
        let out = self.run_ok(
            "consume",
            &[
                "--topic",
                topic,
                "--count",
                &count.to_string(),
                "--timeout",
                "60",
            ],
            "",
        );
        out.lines()
            .map(|l| {
                let v: Value = serde_json::from_str(l).unwrap();
                let key = B64.decode(v["key"].as_str().unwrap()).unwrap();
                let value = B64.decode(v["value"].as_str().unwrap()).unwrap();
                (
                    String::from_utf8(key).unwrap(),
                    serde_json::from_slice(&value).unwrap(),
                )
            })
            .collect()
    }
}

// ---- the pipeline ----------------------------------------------------------------------------

/// (key, CSV features) of the first `n` digits and TensorFlow's class for each.
fn digits(n: usize) -> (Vec<(String, String)>, Vec<usize>) {
    let text = fs::read_to_string(root().join("data/digits.csv")).unwrap();
    let records = text
        .lines()
        .take(n)
        .enumerate()
        .map(|(i, l)| (format!("d{i}"), l.split_once(',').unwrap().1.to_string()))
        .collect();
    let classes = fs::read_to_string(root().join("models/digits_mlp.tf_classes.txt"))
        .unwrap()
        .lines()
        .take(n)
        .map(|l| l.trim().parse().unwrap())
        .collect();
    (records, classes)
}

/// Runs `streamtract run` against `broker` with `extra` flags, killed after `limit`.
fn run_pipeline(
    broker: &str,
    input: &str,
    output: &str,
    extra: &[&str],
    env: &[(&str, &str)],
    limit: Duration,
) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_streamtract"));
    cmd.args([
        "run",
        "--brokers",
        broker,
        "--input",
        input,
        "--output",
        output,
    ])
    .args(["--model", "models/digits_mlp.onnx", "--until-end"])
    .args(extra)
    .current_dir(root())
    .env("RUST_LOG", "info,rskafka=warn")
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let deadline = Instant::now() + limit;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "streamtract run did not finish within {limit:?}; stderr:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The stderr of a run expected to fail, with its `error:` line shown in the test output.
fn failure_log(out: &Output) -> String {
    let log = stderr(out);
    for line in log.lines().filter(|l| l.starts_with("error:")) {
        eprintln!("streamtract said: {line}");
    }
    log
}

fn argmax(values: &[Value]) -> usize {
    let v: Vec<f64> = values.iter().map(|x| x.as_f64().unwrap()).collect();
    (0..v.len()).max_by(|&a, &b| v[a].total_cmp(&v[b])).unwrap()
}

/// Produces ROWS digits, runs the pipeline with `flags`, and checks every prediction against
/// TensorFlow's, read back over TLS by the independent client.
fn run_end_to_end(broker: &SecureBroker, flags: &[&str], env: &[(&str, &str)]) -> String {
    let client = broker.client();
    let (input, output) = ("pixels", "predictions");
    client.create_topic(input, 3);
    client.create_topic(output, 3);
    let (records, classes) = digits(ROWS);
    client.produce(input, &records);
    let out = run_pipeline(
        &broker.addr,
        input,
        output,
        flags,
        env,
        Duration::from_secs(180),
    );
    let log = stderr(&out);
    assert!(out.status.success(), "streamtract run failed:\n{log}");
    let predictions = client.consume(output, ROWS);
    assert_eq!(
        predictions.len(),
        ROWS,
        "outputs read back: {}\n{log}",
        predictions.len()
    );
    for (i, class) in classes.iter().enumerate() {
        let v = &predictions[&format!("d{i}")];
        assert_eq!(
            argmax(v["probabilities"].as_array().unwrap()),
            *class,
            "d{i}: {v}"
        );
    }
    log
}

// ---- tests -----------------------------------------------------------------------------------

#[test]
fn tls_with_the_right_ca_runs_end_to_end() {
    let broker = SecureBroker::start("tls", false, Auth::None);
    let ca = path_str(&broker.pki.ca);
    let log = run_end_to_end(&broker, &["--tls-ca-file", &ca], &[]);
    assert!(
        log.contains(&format!("done: {ROWS} records in, {ROWS} outputs written")),
        "{log}"
    );
}

#[test]
fn tls_with_a_wrong_ca_or_name_fails_naming_the_certificate_problem() {
    let broker = SecureBroker::start("tls-wrong", false, Auth::None);
    broker.client().create_topic("pixels", 1);
    broker.client().create_topic("predictions", 1);

    let started = Instant::now();
    let other = path_str(&broker.pki.other_ca);
    let out = run_pipeline(
        &broker.addr,
        "pixels",
        "predictions",
        &["--tls-ca-file", &other],
        &[],
        Duration::from_secs(60),
    );
    let log = failure_log(&out);
    assert_eq!(out.status.code(), Some(2), "{log}");
    assert!(
        log.contains(&format!("TLS handshake with broker {} failed", broker.addr)),
        "{log}"
    );
    assert!(
        log.contains("unknown issuer") && log.contains("other-ca.pem"),
        "{log}"
    );
    // A certificate problem is final: no waiting out the 30 s connect timeout.
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "took {:?}",
        started.elapsed()
    );

    // The broker's certificate names 127.0.0.1 only; reached as `localhost` it is refused.
    let ca = path_str(&broker.pki.ca);
    let port = broker.addr.rsplit_once(':').unwrap().1;
    let out = run_pipeline(
        &format!("localhost:{port}"),
        "pixels",
        "predictions",
        &["--tls-ca-file", &ca],
        &[],
        Duration::from_secs(60),
    );
    let log = failure_log(&out);
    assert_eq!(out.status.code(), Some(2), "{log}");
    assert!(
        log.contains("certificate not valid for name \"localhost\""),
        "{log}"
    );
}

#[test]
fn mutual_tls_needs_a_client_certificate_from_the_trusted_ca() {
    let broker = SecureBroker::start("mtls", true, Auth::None);
    let (ca, cert, key) = (
        path_str(&broker.pki.ca),
        path_str(&broker.pki.client_cert),
        path_str(&broker.pki.client_key),
    );
    run_end_to_end(
        &broker,
        &[
            "--tls-ca-file",
            &ca,
            "--tls-cert-file",
            &cert,
            "--tls-key-file",
            &key,
        ],
        &[],
    );

    // Without a client certificate, and with one from a CA the broker does not trust.
    let without = run_pipeline(
        &broker.addr,
        "pixels",
        "predictions",
        &["--tls-ca-file", &ca],
        &[],
        Duration::from_secs(60),
    );
    let log = failure_log(&without);
    assert_eq!(without.status.code(), Some(2), "{log}");
    assert!(log.contains("requires a client certificate"), "{log}");
    let (scert, skey) = (
        path_str(&broker.pki.stranger_cert),
        path_str(&broker.pki.stranger_key),
    );
    let stranger = run_pipeline(
        &broker.addr,
        "pixels",
        "predictions",
        &[
            "--tls-ca-file",
            &ca,
            "--tls-cert-file",
            &scert,
            "--tls-key-file",
            &skey,
        ],
        &[],
        Duration::from_secs(60),
    );
    let log = failure_log(&stranger);
    assert_eq!(stranger.status.code(), Some(2), "{log}");
    assert!(log.contains("rejected our client certificate"), "{log}");

    // A key that does not belong to the certificate is caught before connecting.
    let mismatched = run_pipeline(
        &broker.addr,
        "pixels",
        "predictions",
        &[
            "--tls-ca-file",
            &ca,
            "--tls-cert-file",
            &cert,
            "--tls-key-file",
            &skey,
        ],
        &[],
        Duration::from_secs(60),
    );
    let log = failure_log(&mismatched);
    assert_eq!(mismatched.status.code(), Some(2), "{log}");
    assert!(
        log.contains("`tls_key_file`") && log.contains("does not belong to the certificate"),
        "{log}"
    );
}

#[test]
fn sasl_scram_over_tls_with_a_consumer_group() {
    let broker = SecureBroker::start("scram", false, Auth::Scram);
    let ca = path_str(&broker.pki.ca);
    let password_file = broker.dir.join("password");
    fs::write(&password_file, format!("{PASSWORD}\n")).unwrap();
    let pw = path_str(&password_file);
    let log = run_end_to_end(
        &broker,
        &[
            "--tls-ca-file",
            &ca,
            "--sasl-mechanism",
            "scram-sha-512",
            "--sasl-username",
            USER,
            "--sasl-password-file",
            &pw,
            "--group",
            "secure-readers",
            "--session-timeout-ms",
            "6000",
            "--heartbeat-interval-ms",
            "500",
        ],
        &[],
    );
    assert!(
        log.contains(&format!("done: {ROWS} records in, {ROWS} outputs written")),
        "{log}"
    );
    assert!(
        !log.contains(PASSWORD),
        "the password is in the log:\n{log}"
    );

    // The group's committed offsets, read over TLS + SCRAM-SHA-256 by the library: every input
    // record was committed.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let kafka = broker.kafka_config().sasl(SaslConfig::new(
            SaslMechanism::ScramSha256,
            USER,
            Password::new(PASSWORD),
        ));
        let store = OffsetStore::connect(&kafka, "secure-readers")
            .await
            .unwrap();
        let partitions: Vec<TopicPartition> =
            (0..3).map(|p| TopicPartition::new("pixels", p)).collect();
        let committed = store.committed(&partitions).await.unwrap();
        let total: i64 = committed.values().map(|o| o.unwrap_or(0)).sum();
        assert_eq!(total, ROWS as i64, "{committed:?}");
    });
}

#[test]
fn sasl_wrong_password_fails_with_a_clear_message() {
    let broker = SecureBroker::start("scram-wrong", false, Auth::Scram);
    broker.client().create_topic("pixels", 1);
    broker.client().create_topic("predictions", 1);
    let ca = path_str(&broker.pki.ca);
    let started = Instant::now();
    let out = run_pipeline(
        &broker.addr,
        "pixels",
        "predictions",
        &[
            "--tls-ca-file",
            &ca,
            "--sasl-mechanism",
            "scram-sha-512",
            "--sasl-username",
            USER,
            "--sasl-password-env",
            "STREAMTRACT_TEST_PASSWORD",
        ],
        &[("STREAMTRACT_TEST_PASSWORD", "not the password")],
        Duration::from_secs(60),
    );
    let log = failure_log(&out);
    assert_eq!(out.status.code(), Some(2), "{log}");
    assert!(
        log.contains(&format!(
            "SASL SCRAM-SHA-512 authentication failed for user `{USER}` at broker {}",
            broker.addr
        )),
        "{log}"
    );
    assert!(
        !log.contains("not the password"),
        "the password is in the log:\n{log}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "took {:?}",
        started.elapsed()
    );

    // The consumer-group connection says the same, and an unknown user fails too.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        for (mechanism, user, password) in [
            (SaslMechanism::ScramSha256, USER, "wrong"),
            (SaslMechanism::ScramSha512, "mallory", PASSWORD),
        ] {
            let kafka = broker.kafka_config().sasl(SaslConfig::new(
                mechanism,
                user,
                Password::new(password),
            ));
            let err = OffsetStore::connect(&kafka, "g")
                .await
                .unwrap_err()
                .to_string();
            assert!(
                err.contains(&format!(
                    "SASL {mechanism} authentication failed for user `{user}`"
                )),
                "{err}"
            );
            eprintln!("group connection said: {err}");
            let err = connect(&kafka).await.unwrap_err().to_string();
            eprintln!("connect said: {err}");
            assert!(err.contains("authentication failed"), "{err}");
        }
        // Right password, both ways in.
        let kafka = broker.kafka_config().sasl(SaslConfig::new(
            SaslMechanism::ScramSha256,
            USER,
            Password::new(PASSWORD),
        ));
        connect(&kafka).await.unwrap();
        OffsetStore::connect(&kafka, "g").await.unwrap();
        // tansu 0.6.0 does not enable PLAIN (it drops the connection when asked for it): the
        // error says which mechanism the broker may lack.
        let kafka = broker.kafka_config().sasl(SaslConfig::new(
            SaslMechanism::Plain,
            USER,
            Password::new(PASSWORD),
        ));
        let err = connect(&kafka).await.unwrap_err().to_string();
        eprintln!("connect said: {err}");
        assert!(
            err.contains("SASL PLAIN authentication failed for user `alice`")
                && err.contains("may not enable PLAIN"),
            "{err}"
        );
    });
}

// ---- tensorflow-io's `configuration` lists -----------------------------------------------------

/// A tensorflow-io `configuration` list for `broker`: TLS with the test CA (`ca`) and SCRAM,
/// nothing set through the typed API.
fn rdkafka_configuration(
    broker: &SecureBroker,
    ca: &Path,
    mechanism: &str,
    password: &str,
) -> Vec<String> {
    vec![
        format!("bootstrap.servers={}", broker.addr),
        "security.protocol=SASL_SSL".into(),
        format!("ssl.ca.location={}", path_str(ca)),
        format!("sasl.mechanism={mechanism}"),
        format!("sasl.username={USER}"),
        format!("sasl.password={password}"),
        "socket.connection.setup.timeout.ms=20000".into(),
        "socket.timeout.ms=20000".into(),
        // What ported lists carry for old brokers: accepted without effect.
        "api.version.request=true".into(),
    ]
}

fn key_of(r: &SourceRecord) -> String {
    String::from_utf8_lossy(r.key.as_deref().unwrap_or_default()).into_owned()
}

fn value_of(r: &SourceRecord) -> String {
    String::from_utf8_lossy(r.value.as_deref().unwrap_or_default()).into_owned()
}

#[test]
fn datasets_and_output_sequences_configured_by_librdkafka_keys() {
    const N: usize = 40;
    let broker = SecureBroker::start("rdkafka-keys", false, Auth::Scram);
    let client = broker.client();
    client.create_topic("events", 2);
    client.create_topic("results", 2);
    let records: Vec<(String, String)> = (0..N)
        .map(|i| (format!("k{i}"), json!({ "i": i }).to_string()))
        .collect();
    client.produce("events", &records);
    let expected: HashMap<String, String> = records.iter().cloned().collect();

    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        // tensorflow-io's KafkaDataset(configuration=[...]): SCRAM-SHA-256 over TLS.
        let config = rdkafka_configuration(&broker, &broker.pki.ca, "SCRAM-SHA-256", PASSWORD);
        let dataset = KafkaDataset::builder(["events"])
            .configuration(&config)
            .eof(true)
            .open()
            .await
            .unwrap();
        let read: Vec<SourceRecord> = tokio::time::timeout(
            Duration::from_secs(60),
            dataset.map(|r| r.unwrap()).collect(),
        )
        .await
        .expect("the dataset did not end within 60 s");
        let read: HashMap<String, String> = read.iter().map(|r| (key_of(r), value_of(r))).collect();
        assert_eq!(read, expected);

        // KafkaOutputSequence(topic, configuration=[...]) plus producer keys; set out of order.
        let output = OutputConfig::new("results")
            .unwrap()
            .configuration(&config)
            .configuration([
                "acks=all",
                "batch.num.messages=16",
                "enable.idempotence=false",
            ]);
        let mut sequence = OutputSequence::open(&output).await.unwrap();
        for (i, (key, value)) in records.iter().enumerate().rev() {
            sequence
                .set(i as u64, OutputItem::new(value.as_str()).key(key.as_str()))
                .await
                .unwrap();
        }
        assert_eq!(sequence.close().await.unwrap(), N as u64);

        // KafkaGroupIODataset(configuration=[...]): SCRAM-SHA-512 (as `sasl.mechanisms`) with
        // group keys; the group coordinator connection is secured too.
        let mut group_config =
            rdkafka_configuration(&broker, &broker.pki.ca, "SCRAM-SHA-512", PASSWORD);
        group_config[3] = "sasl.mechanisms=SCRAM-SHA-512".into();
        group_config.extend(
            [
                "session.timeout.ms=6000",
                "heartbeat.interval.ms=500",
                "conf.topic.auto.offset.reset=earliest",
                "enable.auto.commit=false",
            ]
            .map(String::from),
        );
        let mut group = KafkaGroupDataset::builder(["events"], "configured-readers")
            .configuration(&group_config)
            .message_poll_timeout(Duration::from_millis(500))
            .open()
            .await
            .unwrap();
        let mut seen = HashMap::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        while seen.len() < N {
            let left = deadline.saturating_duration_since(Instant::now());
            let record = tokio::time::timeout(left, group.next())
                .await
                .expect("the group dataset did not deliver every record within 60 s")
                .expect("the group dataset ended early")
                .unwrap();
            group.ack(&record);
            seen.insert(key_of(&record), value_of(&record));
        }
        assert_eq!(seen, expected);
        group.close().await.unwrap();
        let kafka = broker.kafka_config().sasl(SaslConfig::new(
            SaslMechanism::ScramSha256,
            USER,
            Password::new(PASSWORD),
        ));
        let store = OffsetStore::connect(&kafka, "configured-readers")
            .await
            .unwrap();
        let partitions: Vec<TopicPartition> =
            (0..2).map(|p| TopicPartition::new("events", p)).collect();
        let committed = store.committed(&partitions).await.unwrap();
        let total: i64 = committed.values().map(|o| o.unwrap_or(0)).sum();
        assert_eq!(total, N as i64, "{committed:?}");
    });

    // The independent client reads back what the output sequence wrote.
    let written = client.consume("results", N);
    assert_eq!(written.len(), N, "{written:?}");
    for (key, value) in &expected {
        let value: Value = serde_json::from_str(value).unwrap();
        assert_eq!(written.get(key), Some(&value), "{key}");
    }
}

#[test]
fn a_wrong_password_or_ca_in_a_configuration_list_fails_clearly() {
    let broker = SecureBroker::start("rdkafka-wrong", false, Auth::Scram);
    broker.client().create_topic("events", 1);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let wrong = "not the password";
        let config = rdkafka_configuration(&broker, &broker.pki.ca, "SCRAM-SHA-256", wrong);
        let started = Instant::now();
        let dataset_err = KafkaDataset::builder(["events"])
            .configuration(&config)
            .eof(true)
            .open()
            .await
            .unwrap_err()
            .to_string();
        let output = OutputConfig::new("events").unwrap().configuration(&config);
        let output_err = OutputSequence::open(&output).await.unwrap_err().to_string();
        let group_err = KafkaGroupDataset::builder(["events"], "g")
            .configuration(&config)
            .open()
            .await
            .unwrap_err()
            .to_string();
        for err in [&dataset_err, &output_err, &group_err] {
            eprintln!("said: {err}");
            assert!(
                err.contains(&format!(
                    "SASL SCRAM-SHA-256 authentication failed for user `{USER}` at broker {}",
                    broker.addr
                )),
                "{err}"
            );
            assert!(!err.contains(wrong), "the password is in the error: {err}");
        }
        // A refused password is final: no waiting out the connect timeout, three times.
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "took {:?}",
            started.elapsed()
        );

        // The right password with a CA that did not sign the broker's certificate.
        let config =
            rdkafka_configuration(&broker, &broker.pki.other_ca, "SCRAM-SHA-256", PASSWORD);
        let err = KafkaDataset::builder(["events"])
            .configuration(&config)
            .open()
            .await
            .unwrap_err()
            .to_string();
        eprintln!("said: {err}");
        assert!(
            err.contains(&format!("TLS handshake with broker {} failed", broker.addr))
                && err.contains("unknown issuer")
                && err.contains("other-ca.pem"),
            "{err}"
        );
    });
}
