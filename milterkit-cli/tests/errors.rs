//! What `milterkit run` and `milterkit bench` say when the milter cannot be reached, is not a
//! milter, or stays silent: every error names its socket or file, and keeps its causes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::Value;

mod support;

use support::milterkit;

/// A small message in a scratch file.
fn message_file(name: &str) -> PathBuf {
    let dir = testkit::scratch_dir("milterkit-cli-errors", name);
    let path = dir.join("message.eml");
    std::fs::write(
        &path,
        "From: <a@example.org>\r\nTo: <b@example.net>\r\nSubject: s\r\n\r\nhi\r\n",
    )
    .unwrap();
    path
}

/// A port nothing listens on.
fn closed_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// Serves every connection on a thread with `f`; returns the spec.
fn serve(f: fn(std::net::TcpStream)) -> String {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let spec = format!("inet:{}@127.0.0.1", l.local_addr().unwrap().port());
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            std::thread::spawn(move || f(s));
        }
    });
    spec
}

/// A listener that never accepts: connections complete in the backlog and nothing answers.
fn silent() -> (String, TcpListener) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    (
        format!("inet:{}@127.0.0.1", l.local_addr().unwrap().port()),
        l,
    )
}

/// `milterkit run SPEC FILE MORE…` on a small message (in the scratch folder `name`), which
/// must exit 1; its standard error.
fn run_fails(name: &str, spec: &str, more: &[&str]) -> String {
    let file = message_file(name);
    let mut args = vec!["run", spec, file.to_str().unwrap()];
    args.extend(more);
    let (code, out, err) = milterkit(&args);
    assert_eq!(code, 1, "{out}{err}");
    err
}

#[test]
fn a_missing_unix_socket_is_named() {
    let err = run_fails("missing-unix", "unix:/nonexistent/milter.sock", &[]);
    assert_eq!(
        err,
        "milterkit: cannot connect to the milter at unix:/nonexistent/milter.sock\n  \
         caused by: No such file or directory (os error 2)\n"
    );
}

#[test]
fn a_closed_tcp_port_is_named() {
    let spec = format!("inet:{}@127.0.0.1", closed_port());
    let err = run_fails("closed-port", &spec, &[]);
    assert_eq!(
        err,
        format!(
            "milterkit: cannot connect to the milter at {spec}\n  \
             caused by: Connection refused (os error 111)\n"
        )
    );
}

#[test]
fn a_bad_spec_is_named_and_the_client_side_does_not_say_bind() {
    let err = run_fails("bad-spec", "inet:localhost", &[]);
    assert_eq!(
        err,
        "milterkit: invalid socket specification \"inet:localhost\": unknown port \"localhost\" \
         (write inet:PORT@HOST or inet:HOST:PORT)\n"
    );
    let (code, _, err) = milterkit(&["bench", "inet:localhost", "--messages", "1"]);
    assert_eq!(code, 1);
    assert!(
        err.starts_with("milterkit: invalid socket specification \"inet:localhost\""),
        "{err}"
    );
    assert!(!err.contains("bind"), "{err}");
}

#[test]
fn an_unreadable_message_file_is_named() {
    let (code, _, err) = milterkit(&["run", "unix:/nonexistent", "/nonexistent/message.eml"]);
    assert_eq!(code, 1);
    assert_eq!(
        err,
        "milterkit: cannot read the message /nonexistent/message.eml\n  \
         caused by: No such file or directory (os error 2)\n"
    );
}

#[test]
fn an_smtp_server_is_recognised() {
    let spec = serve(|mut s| {
        let _ = s.write_all(b"220 mx.example.net ESMTP Postfix\r\n");
        let _ = s.read_to_end(&mut Vec::new());
    });
    let err = run_fails("smtp", &spec, &[]);
    assert_eq!(
        err,
        format!(
            "milterkit: cannot negotiate with the milter at {spec}\n  \
             caused by: this looks like an SMTP server, not a milter: it said \
             \"220 mx.example.net ESMTP Postfix\"\n"
        )
    );
}

#[test]
fn an_http_server_is_recognised() {
    let spec = serve(|mut s| {
        let _ = s.read(&mut [0; 64]);
        let _ = s.write_all(b"HTTP/1.1 400 Bad Request\r\nConnection: close\r\n\r\n");
    });
    let err = run_fails("http", &spec, &[]);
    assert!(
        err.contains("caused by: this looks like an HTTP server, not a milter"),
        "{err}"
    );
}

#[test]
fn run_gives_up_on_a_silent_milter_after_the_timeout() {
    let (spec, _listener) = silent();
    let start = Instant::now();
    let err = run_fails("silent-run", &spec, &["--timeout", "1"]);
    let took = start.elapsed();
    assert_eq!(
        err,
        format!(
            "milterkit: cannot negotiate with the milter at {spec}\n  \
             caused by: timed out waiting for the milter's OPTNEG reply\n"
        )
    );
    // Postfix's default is 30 s.
    assert!(took < Duration::from_secs(10), "{took:?}");
}

#[test]
fn bench_honours_the_timeout_and_the_duration_against_a_silent_milter() {
    let (spec, _listener) = silent();
    let start = Instant::now();
    let (code, out, err) = milterkit(&[
        "bench",
        &spec,
        "--connections",
        "2",
        "--timeout",
        "0.5",
        "--duration",
        "2",
    ]);
    let took = start.elapsed();
    assert_eq!(code, 1, "{out}{err}");
    assert!(took < Duration::from_secs(10), "{took:?}");
    assert!(out.starts_with("0 messages in "), "{out}");
    assert!(
        out.contains("latency: none (no message completed)"),
        "{out}"
    );
    assert!(!out.contains(" ms"), "no latency figures: {out}");
    assert!(
        out.contains(&format!(
            " × negotiate, e.g. cannot negotiate with the milter at {spec}: timed out waiting \
             for the milter's OPTNEG reply\n"
        )),
        "{out}"
    );
}

#[test]
fn bench_against_a_peer_that_closes_at_once_counts_errors_by_kind_with_their_cause() {
    let spec = serve(drop);
    let (code, out, err) = milterkit(&[
        "bench",
        &spec,
        "--connections",
        "2",
        "--duration",
        "1",
        "--json",
    ]);
    assert_eq!(code, 1, "{out}{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["messages"], 0);
    assert!(v["latency_ms"].is_null(), "{v}");
    let kinds = v["error_kinds"].as_array().unwrap();
    let total: u64 = kinds.iter().map(|k| k["count"].as_u64().unwrap()).sum();
    assert_eq!(v["errors"].as_u64().unwrap(), total);
    assert!(total > 0);
    for k in kinds {
        assert_eq!(k["kind"], "negotiate", "{v}");
        let example = k["example"].as_str().unwrap();
        assert!(
            example.starts_with(&format!("cannot negotiate with the milter at {spec}: ")),
            "{example}"
        );
        assert!(
            example.len() > spec.len() + 40,
            "the cause is kept: {example}"
        );
    }
}
