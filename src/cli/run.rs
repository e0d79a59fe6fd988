//! `streamtract run`: the pipeline built from flags and the config file, with a progress line
//! on a terminal, SIGHUP to reload the model and SIGINT/SIGTERM to stop cleanly.

use std::process::ExitCode;

use streamtract::pipeline::Pipeline;
use streamtract::Error;

use super::config::RunArgs;
use crate::{fail, LogFormat};

/// Runs the pipeline to its end (or a signal) and prints the summary; the exit code is 0, or
/// what [`fail`] chooses for the error.
pub fn run(flags: RunArgs, format: LogFormat) -> ExitCode {
    let file = match &flags.config {
        Some(path) => match RunArgs::from_file(path) {
            Ok(f) => f,
            Err(e) => return fail(&e.into(), format),
        },
        None => RunArgs::default(),
    };
    let config = match flags.over(file).into_pipeline_config() {
        Ok(c) => c,
        Err(e) => return fail(&e.into(), format),
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            return fail(
                &Error::Internal(format!("cannot start the async runtime: {e}")),
                format,
            )
        }
    };
    let metrics = config.metrics.clone();
    let result = runtime.block_on(async {
        let pipeline = Pipeline::connect(config).await?;
        reload_on_sighup(pipeline.reload_handle());
        let progress = pipeline
            .bounded_total()
            .filter(|_| on_a_terminal())
            .map(|total| tokio::spawn(show_progress(metrics, total)));
        let result = pipeline.run_until(shutdown_signal()).await;
        if let Some(task) = progress {
            task.abort();
            // Clear the progress line so the summary starts on a clean line.
            eprint!("\r\x1b[2K");
        }
        result
    });
    match result {
        Ok(summary) => {
            // In JSON the pipeline's own `run finished` line carries the same figures.
            if format == LogFormat::Text {
                eprintln!(
                    "done: {} records in, {} outputs written, {} rejected ({} dead letters written), {:.2} s",
                    summary.records_in,
                    summary.records_out,
                    summary.rejected,
                    summary.dead_letters,
                    summary.elapsed.as_secs_f64()
                );
                if summary.latency.count > 0 {
                    let ms = |d: std::time::Duration| d.as_secs_f64() * 1000.0;
                    eprintln!(
                        "end-to-end latency (record timestamp to acknowledged output): p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
                        ms(summary.latency.p50),
                        ms(summary.latency.p99),
                        ms(summary.latency.max)
                    );
                }
                if summary.shadow_rows > 0 {
                    eprintln!(
                        "shadow model: {} rows scored, top class differs from the model's on {}",
                        summary.shadow_rows, summary.shadow_disagreements
                    );
                }
            }
            ExitCode::SUCCESS
        }
        Err(e) => fail(&e, format),
    }
}

/// The progress display is for people watching: only when both stdout and stderr are
/// terminals, never in logs collected from a pipe or a file.
fn on_a_terminal() -> bool {
    use std::io::IsTerminal;
    std::io::stdout().is_terminal() && std::io::stderr().is_terminal()
}

/// Rewrites one stderr line twice a second: records finished of the bounded total, the rate
/// over the run so far and the time left at that rate.
async fn show_progress(metrics: streamtract::metrics::Metrics, total: u64) {
    let started = std::time::Instant::now();
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(500));
    loop {
        tick.tick().await;
        let done = metrics.records_finished().min(total);
        let secs = started.elapsed().as_secs_f64();
        let rate = if secs > 0.0 { done as f64 / secs } else { 0.0 };
        let eta = if rate > 0.0 {
            format!("{:.0} s left", (total - done) as f64 / rate)
        } else {
            "time left unknown".to_string()
        };
        let percent = (100 * done).checked_div(total).unwrap_or(100);
        eprint!("\r\x1b[2K{done} / {total} records ({percent}%), {rate:.0} records/s, {eta}");
    }
}

/// SIGHUP asks the pipeline to reload its model file.
fn reload_on_sighup(handle: streamtract::pipeline::ReloadHandle) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::hangup()) {
            Ok(mut hup) => {
                tokio::spawn(async move {
                    while hup.recv().await.is_some() {
                        tracing::info!("SIGHUP: reloading the model");
                        handle.request();
                    }
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGHUP; reload by changing the model file")
            }
        }
    }
    #[cfg(not(unix))]
    drop(handle);
}

/// Completes on SIGINT or SIGTERM.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
