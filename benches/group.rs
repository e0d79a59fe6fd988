//! Consumer-group scaling: records/s of 1, 2 and 3 `streamtract run --group --until-end`
//! processes sharing one 6-partition topic on a local tansu broker, in one invocation.
//!
//!     cargo bench --bench group                       # 60,000 records
//!     STREAMTRACT_BENCH_RECORDS=20000 cargo bench --bench group
//!
//! Each member count gets its own group id and output topic. Wall time runs from starting the
//! processes to the last one exiting, so it includes joining the group (tansu makes each
//! follower's first JoinGroup wait about 3 s) and the rebalances while members arrive.

mod support;

use std::process::{Command, Stdio};
use std::time::Instant;

use support::{create_topic, produce_digits, root, LocalBroker};

#[tokio::main]
async fn main() {
    let n = support::records(60_000, 3_000);
    let broker = LocalBroker::start("bench-group-broker");
    let addr = broker.addr.clone();
    let kafka = broker.kafka();
    for topic in ["events", "out-1", "out-2", "out-3"] {
        create_topic(&kafka, topic, 6).await;
    }
    produce_digits(&kafka, "events", n).await;
    println!("{n} records on a 6-partition topic");

    println!("\n{:>8} {:>10} {:>12}", "members", "seconds", "records/s");
    for members in 1..=3 {
        let started = Instant::now();
        let children: Vec<_> = (0..members)
            .map(|_| {
                Command::new(env!("CARGO_BIN_EXE_streamtract"))
                    .args([
                        "run",
                        "--brokers",
                        &addr,
                        "--input",
                        "events",
                        "--output",
                        &format!("out-{members}"),
                    ])
                    .args([
                        "--model",
                        "models/digits_mlp.onnx",
                        "--group",
                        &format!("bench-{members}"),
                        "--until-end",
                    ])
                    .args([
                        "--workers",
                        "1",
                        "--session-timeout-ms",
                        "6000",
                        "--heartbeat-interval-ms",
                        "500",
                    ])
                    .current_dir(root())
                    .stderr(Stdio::null())
                    .spawn()
                    .expect("spawn streamtract")
            })
            .collect();
        for mut c in children {
            assert!(c.wait().expect("wait").success(), "a member failed");
        }
        let secs = started.elapsed().as_secs_f64();
        println!("{members:>8} {secs:>10.2} {:>12.0}", n as f64 / secs);
    }
}
