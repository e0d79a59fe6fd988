//! The whole pipeline from Rust, the same thing `streamtract run` does.
//!
//!     cargo run --example pipeline -- 127.0.0.1:9092 pixels predictions
//!
//! Reads every partition of the input topic up to its current end, runs the digits CNN on CSV
//! rows and writes JSON predictions with the top class.

use std::time::Duration;

use streamtract::codec::{InputFormat, OutputFormat};
use streamtract::pipeline::{Pipeline, PipelineConfig};

#[tokio::main]
async fn main() -> Result<(), streamtract::Error> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [brokers, input, output] = args.as_slice() else {
        eprintln!("usage: pipeline BROKER INPUT_TOPIC OUTPUT_TOPIC");
        std::process::exit(64);
    };
    let mut config =
        PipelineConfig::new([brokers.as_str()], input, output, "models/digits_cnn.onnx")
            .input_format(InputFormat::Csv { delimiter: b',' })
            .output_format(OutputFormat::Json)
            .batch_size(128)
            .linger(Duration::from_millis(5))
            .until_end(true);
    config.top_k = Some(1);
    let summary = Pipeline::connect(config).await?.run().await?;
    println!("{summary:?}");
    Ok(())
}
