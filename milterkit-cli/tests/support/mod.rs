//! What the command's tests share.
// Each test binary uses part of it.
#![allow(dead_code)]

pub(crate) mod c_milter;
#[path = "../../src/demo_milter.rs"]
pub(crate) mod demo_milter;

use std::ffi::OsStr;
use std::process::Command;

/// Runs the built `milterkit` with `args`: its exit code (-1 when a signal ended it), standard
/// output and standard error.
pub(crate) fn milterkit<S: AsRef<OsStr>>(args: &[S]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_milterkit"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// [`milterkit`] on a blocking thread, for tests that serve a milter on the Tokio runtime's.
pub(crate) async fn milterkit_off_runtime(args: &[&str]) -> (i32, String, String) {
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    tokio::task::spawn_blocking(move || milterkit(&args))
        .await
        .unwrap()
}

/// The example policy milter of `milterkit demo`, served on a free port of 127.0.0.1 by the
/// current Tokio runtime.
pub(crate) async fn serve_policy() -> demo_milter::Served {
    demo_milter::Served::start(milterkit::bind("inet:0@127.0.0.1").await.unwrap()).unwrap()
}
