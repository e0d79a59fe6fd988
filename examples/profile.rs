//! Where a model's inference time goes: runs one ONNX model at one batch size with tract, the
//! way the pipeline compiles it for that size, and prints the time per graph node, slowest
//! first.
//!
//!     cargo run --profile bench --example profile -- models/digits_cnn.onnx 256 [RUNS] [--plain]
//!
//! Inputs are zeros of the model's input shapes (the time of these ops does not depend on the
//! values). The plan is compiled as `streamtract::model` compiles it for one batch size, with
//! streamtract's graph rewrites (`--plain` leaves the graph to tract alone), but keeps
//! the final Softmax that the pipeline computes outside the plan. Run one model per process,
//! since a second plan built in the same process ran up to 40% slower in our measurements.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use tract_onnx::prelude::*;
use tract_onnx::tract_core::plan::SimpleState;
use tract_onnx::tract_hir::infer::Factoid;

fn main() -> TractResult<()> {
    // `--plain`: tract's own compilation, without streamtract's side-by-side convolutions.
    let plain = std::env::args().any(|a| a == "--plain");
    let mut args = std::env::args().skip(1).filter(|a| a != "--plain");
    let path = args
        .next()
        .unwrap_or_else(|| "models/digits_cnn.onnx".into());
    let batch: usize = args.next().map_or(Ok(256), |b| b.parse())?;
    let runs: usize = args.next().map_or(Ok(200), |r| r.parse())?;

    let mut graph = tract_onnx::onnx().model_for_path(&path)?;
    let mut inputs = TVec::new();
    for ix in 0..graph.input_outlets()?.len() {
        let fact = graph.input_fact(ix)?.clone();
        let mut dims = vec![batch];
        for d in fact.shape.dims().skip(1) {
            dims.push(
                d.concretize()
                    .and_then(|d| d.to_i64().ok())
                    .map_or(1, |d| d as usize),
            );
        }
        graph.set_input_fact(ix, InferenceFact::dt_shape(f32::datum_type(), &dims))?;
        inputs.push(Tensor::zero::<f32>(&dims)?.into_tvalue());
    }
    let mut typed = graph.into_typed()?.into_decluttered()?;
    if !plain {
        let rewritten = streamtract::model::rewrite_for_batch(&mut typed)?;
        println!("nodes rewritten by streamtract: {rewritten}");
    }
    let plan = typed.into_optimized()?.into_runnable()?;
    let mut state: SimpleState<_, _> = plan.spawn()?;
    state.run(inputs.clone())?;

    let plain_started = Instant::now();
    for _ in 0..runs {
        std::hint::black_box(state.run(inputs.clone())?);
    }
    println!(
        "plain runs: {:.1} µs per batch",
        plain_started.elapsed().as_secs_f64() * 1e6 / runs as f64
    );
    let mut per_node: HashMap<usize, Duration> = HashMap::new();
    let started = Instant::now();
    for _ in 0..runs {
        state.run_plan_with_eval(inputs.clone(), |ctx, op_state, node, input| {
            let t = Instant::now();
            let out = tract_onnx::tract_core::plan::eval(ctx, op_state, node, input);
            *per_node.entry(node.id).or_default() += t.elapsed();
            out
        })?;
    }
    let total = started.elapsed();
    let model = plan.model();
    let mut rows: Vec<(usize, Duration)> = per_node.into_iter().collect();
    rows.sort_by_key(|r| std::cmp::Reverse(r.1));
    println!(
        "{path}, batch {batch}: {:.1} µs per batch over {runs} runs ({:.0} rows/s)",
        total.as_secs_f64() * 1e6 / runs as f64,
        (batch * runs) as f64 / total.as_secs_f64()
    );
    println!("{:>10} {:>6}  node", "µs/batch", "share");
    let measured: Duration = rows.iter().map(|r| r.1).sum();
    for (id, time) in rows.iter().take(15) {
        let node = model.node(*id);
        println!(
            "{:>10.1} {:>5.1}%  {} ({})",
            time.as_secs_f64() * 1e6 / runs as f64,
            100.0 * time.as_secs_f64() / measured.as_secs_f64(),
            node.name,
            node.op().name()
        );
    }
    Ok(())
}
