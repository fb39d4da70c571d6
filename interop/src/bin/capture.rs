//! Records the project's captures: `cargo run -p interop --bin capture [-- DIR]` (as root, after
//! `bash scripts/test.sh` installed the MTAs) writes real Postfix and Sendmail sessions with the
//! reference milter on libmilter into DIR (default `milterkit-proto/testdata/captures`). See
//! `interop::capture` for what each file holds.

use std::path::PathBuf;
use std::process::ExitCode;

use interop::{capture, require, Mta, Tool};

fn main() -> ExitCode {
    let out = std::env::args_os().nth(1).map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../milterkit-proto/testdata/captures"),
        PathBuf::from,
    );
    let mut tools = interop::tools_of(Mta::Postfix).to_vec();
    tools.extend(interop::tools_of(Mta::Sendmail));
    tools.push(Tool::Gcc);
    if !require(&tools) {
        return ExitCode::FAILURE;
    }
    for (mta, variant) in [
        (Mta::Postfix, false),
        (Mta::Sendmail, false),
        (Mta::Postfix, true),
        (Mta::Sendmail, true),
    ] {
        eprintln!(
            "capture: {mta:?}{}",
            if variant { " (variant)" } else { "" }
        );
        if let Err(e) = capture::record(mta, variant, &out) {
            eprintln!("capture: {mta:?}: {e}");
            return ExitCode::FAILURE;
        }
    }
    if let Err(e) = std::fs::write(out.join("VERSIONS"), capture::versions()) {
        eprintln!("capture: writing VERSIONS: {e}");
        return ExitCode::FAILURE;
    }
    eprintln!("capture: written to {}", out.display());
    ExitCode::SUCCESS
}
