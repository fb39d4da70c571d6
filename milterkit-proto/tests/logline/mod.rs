//! The log line format of the logging C milters (interop/c/milterlog.h) that their Rust twins
//! share: milterkit-proto/tests/fixtures.rs here, and interop/tests/differential.rs, which
//! includes this file by path.

/// The macro names the logging milters ask for at every stage callback (their logs list those
/// with a value).
pub(crate) const MACROS: &[&str] = &[
    "i",
    "j",
    "v",
    "_",
    "{auth_type}",
    "{auth_authen}",
    "{auth_author}",
    "{auth_ssf}",
    "{cert_issuer}",
    "{cert_subject}",
    "{cipher}",
    "{cipher_bits}",
    "{client_addr}",
    "{client_name}",
    "{client_port}",
    "{client_ptr}",
    "{client_resolve}",
    "{daemon_addr}",
    "{daemon_name}",
    "{daemon_port}",
    "{if_addr}",
    "{if_name}",
    "{mail_addr}",
    "{mail_host}",
    "{mail_mailer}",
    "{msg_id}",
    "{msg_size}",
    "{nrcpts}",
    "{quarantine}",
    "{rcpt_addr}",
    "{rcpt_host}",
    "{rcpt_mailer}",
    "{tls_version}",
];

/// The logging milters' escaping: `\\`, `\"`, `\n`, `\t`, `\r`, `\xNN` for anything else
/// outside printable ASCII.
pub(crate) fn esc(b: &[u8]) -> String {
    let mut s = String::new();
    for &c in b {
        match c {
            b'\\' => s.push_str("\\\\"),
            b'"' => s.push_str("\\\""),
            b'\n' => s.push_str("\\n"),
            b'\t' => s.push_str("\\t"),
            b'\r' => s.push_str("\\r"),
            0x20..=0x7e => s.push(c as char),
            _ => s.push_str(&format!("\\x{c:02x}")),
        }
    }
    s
}
