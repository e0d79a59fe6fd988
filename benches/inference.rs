//! Batch inference speed per model and batch size, on one thread, with tract states reused.
//!
//!     cargo bench --bench inference [-- --graph-rewrites off]
//!
//! Prints rows/s and time per batch, each model measured in a fresh process. Inputs are real rows from `data/` so the numbers reflect
//! the data the models were trained on.

use std::time::{Duration, Instant};

// Measures with the allocator and the memory copies the binary links for the same target and
// features: the binary's own modules, included by path (they are not part of the library).
#[path = "../src/cli/allocator.rs"]
#[allow(dead_code)]
mod allocator;
#[path = "../src/cli/memcopy.rs"]
#[allow(dead_code)]
mod memcopy;

#[global_allocator]
static ALLOCATOR: allocator::Chosen = allocator::CHOSEN;

use streamtract::model::{GraphRewrites, Model, ModelOptions};
use tract_onnx::prelude::Tensor;

fn rows(file: &str) -> Vec<Vec<f32>> {
    std::fs::read_to_string(format!("{}/data/{file}", env!("CARGO_MANIFEST_DIR")))
        .expect("data file")
        .lines()
        .map(|l| {
            l.split(',')
                .skip(1)
                .map(|v| v.parse().expect("number"))
                .collect()
        })
        .collect()
}

/// One tensor per model input for `n` rows, splitting each data row across the inputs.
fn batch(model: &Model, data: &[Vec<f32>], n: usize) -> Vec<Tensor> {
    let mut start = 0;
    let mut tensors = Vec::new();
    for spec in &model.signature().inputs {
        let shape = spec.row_shape().expect("fixed row shape");
        let len: usize = shape.iter().product();
        let values: Vec<f32> = (0..n)
            .flat_map(|i| data[i % data.len()][start..start + len].to_vec())
            .collect();
        let mut full = vec![n];
        full.extend(shape);
        tensors.push(Tensor::from_shape(&full, &values).expect("tensor"));
        start += len;
    }
    tensors
}

fn main() {
    // `cargo test --all-targets` runs benches once in test mode; keep that quick.
    let quick = std::env::args().any(|a| a == "--test")
        || std::env::var_os("STREAMTRACT_BENCH_QUICK").is_some();
    let budget = if quick {
        Duration::from_millis(50)
    } else {
        Duration::from_secs(2)
    };
    let models = [
        ("digits_mlp", "digits.csv"),
        ("digits_cnn", "digits.csv"),
        // The same CNN with a constant-shape Flatten, which tract types with a symbolic batch.
        ("digits_cnn_dynamic", "digits.csv"),
        ("breast_cancer", "breast_cancer.csv"),
        ("wine_two_inputs", "wine.csv"),
    ];
    // Each model runs in a process of its own: a second tract plan built in the same process
    // ran up to 40% slower than the first (same model, same inputs), which would make the
    // order of the models part of the result.
    let args: Vec<String> = std::env::args().skip(1).collect();
    // `--graph-rewrites off`: tract's own plans, to measure what streamtract's rewrites add.
    let rewrites = args
        .windows(2)
        .find(|w| w[0] == "--graph-rewrites")
        .map(|w| {
            w[1].parse::<GraphRewrites>()
                .expect("--graph-rewrites on|off")
        })
        .unwrap_or_default();
    let only = args
        .windows(2)
        .find(|w| w[0] == "--only")
        .map(|w| w[1].clone());
    let Some(only) = only else {
        println!(
            "allocator: {}, memcpy: {}, graph rewrites: {}",
            allocator::NAME,
            memcopy::NAME,
            rewrites
        );
        println!(
            "{:<16} {:>6} {:>14} {:>14}",
            "model", "batch", "µs/batch", "rows/s"
        );
        let me = std::env::current_exe().expect("bench executable");
        for (name, _) in models {
            let status = std::process::Command::new(&me)
                .args(&args)
                .args(["--only", name])
                .status()
                .expect("run the bench for one model");
            assert!(status.success(), "{name}: {status}");
        }
        return;
    };
    let options = ModelOptions::default().graph_rewrites(rewrites);
    for (name, data_file) in models.into_iter().filter(|(n, _)| *n == only) {
        let path = format!("{}/models/{name}.onnx", env!("CARGO_MANIFEST_DIR"));
        let model = Model::load_with(path, &options).expect("model");
        let data = rows(data_file);
        for n in [1usize, 32, 256] {
            let mut runner = model.runner();
            let inputs = batch(&model, &data, n);
            runner.run(inputs.clone()).expect("warm-up run");
            let started = Instant::now();
            let mut iterations = 0u64;
            while started.elapsed() < budget {
                std::hint::black_box(runner.run(inputs.clone()).expect("run"));
                iterations += 1;
            }
            let per_batch = started.elapsed().as_secs_f64() / iterations as f64;
            println!(
                "{name:<16} {n:>6} {:>14.1} {:>14.0}",
                per_batch * 1e6,
                n as f64 / per_batch
            );
        }
    }
}
