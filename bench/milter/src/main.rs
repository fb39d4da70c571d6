//! The benchmark milter (`bench/run.sh`): continues at every stage, asks for `ADD_HEADER`, and adds
//! `X-Bench: 1` at end of message. The libmilter and no-library contestants in `bench/` do exactly
//! the same, so the suite compares the libraries and not the filters.
//!
//! Run: `cargo run --release -p milterkit-bench -- [--current-thread] unix:/tmp/bench.sock`; it stops
//! on SIGINT or SIGTERM.

use milterkit::Result;
use milterkit_bench::Bench;

/// `bench_milter [--current-thread | --per-core] SPEC`: a multi-thread runtime (what
/// `#[tokio::main]` gives); with `--current-thread` one thread, as the ceiling has; with
/// `--per-core` one `current_thread` runtime per core (`Serve::with_threads`, what
/// `milterkit::run!` does).
fn main() -> Result<()> {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let mode = match args.first().map(String::as_str) {
        Some(m @ ("--current-thread" | "--per-core")) => {
            let m = m.to_owned();
            args.remove(0);
            m
        }
        _ => String::new(),
    };
    let spec = args.pop().unwrap_or_else(|| "inet:7357@127.0.0.1".into());
    let (runtime, threads) = match mode.as_str() {
        "--current-thread" => (tokio::runtime::Builder::new_current_thread(), 1),
        "--per-core" => (
            tokio::runtime::Builder::new_current_thread(),
            std::thread::available_parallelism().map_or(1, |n| n.get()),
        ),
        _ => (tokio::runtime::Builder::new_multi_thread(), 1),
    };
    let runtime = { runtime }.enable_all().build()?;
    runtime.block_on(serve(&spec, threads))
}

async fn serve(spec: &str, threads: usize) -> Result<()> {
    let listener = milterkit::bind(spec).await?;
    milterkit::serve(listener, Bench::default)
        .with_threads(threads)
        .with_graceful_shutdown(milterkit_bench::stopped())
        .await?;
    Ok(())
}
