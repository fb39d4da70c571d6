//! What the command's tests share.

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
