//! [`OpenDkim`]: a private OpenDKIM 2.11 (Debian's `opendkim`) signing mail from [`DOMAIN`]
//! with selector [`SELECTOR`] and a key pair made for the test, and [`verify`], which checks a
//! delivered message's `DKIM-Signature` against that key without DNS.
//!
//! # The signer
//!
//! `opendkim -f -x DIR/opendkim.conf` runs in the foreground as a child process of the test,
//! on `inet:PORT@127.0.0.1`, as root (OpenDKIM does not insist on dropping privileges). The
//! key pair comes from `opendkim-genkey -b 2048 -D DIR -d example.org -s test`: `test.private`
//! (mode 0600) and `test.txt`, the zone-file line whose quoted strings make the TXT record
//! [`OpenDkim::record`]. The configuration:
//!
//! - `Mode s`: sign only, never verify (no DNS is ever asked).
//! - `Domain example.org`, `Selector test`, `KeyFile DIR/test.private`: a message is signed
//!   when the domain of its `From:` header is `example.org`; others pass untouched.
//! - `InternalHosts 127.0.0.1`: OpenDKIM signs only mail whose SMTP client (the address the
//!   MTA gives at the milter's connect) is "internal" (or authenticated, or arriving on an MTA
//!   name listed in `MTA`). Its default list is exactly `127.0.0.1`; it is spelled out so that
//!   the tests, whose clients all connect from 127.0.0.1, keep being signed whatever the
//!   packaging's defaults.
//! - `Canonicalization relaxed/simple` (the common deployment choice): relaxed headers leave a
//!   margin for an MTA that refolds or respaces a field on the way; simple body is the
//!   strictest check that the body reached the sink byte for byte. Tried once with
//!   `simple/simple`: the test message verified on both MTAs too (neither rewrote a signed
//!   field or the body), so the relaxed headers are a margin, not a need.
//! - `SignHeaders *,+NAME…` ([`OpenDkim::start_signing`]): the default list of fields plus the
//!   names given, so that the signature's `h=` tag shows which of those fields OpenDKIM saw
//!   (a field absent when signing is not listed).
//! - `RequireSafeKeys no`: OpenDKIM refuses a key below a world-writable directory (such as
//!   `/tmp`, where [`base_dir`](crate::util::base_dir) falls back to without root); the key is
//!   a throwaway.
//! - `PidFile DIR/opendkim.pid`, the process working in `DIR`: should the test process die
//!   without dropping it, the next test process's clean-up of stale run directories stops it.
//! - `Syslog yes`, `LogWhy yes`: OpenDKIM logs only through syslog(3); the `LD_PRELOAD` shim
//!   Sendmail's log goes through ([`syslog_shim`](crate::sendmail::syslog_shim)) puts the lines
//!   in `DIR/opendkim.log` ([`OpenDkim::log`]), including why a message was not signed.
//!
//! # The verifier
//!
//! [`verify`] runs Debian's `python3-dkim` (dkimpy, an implementation independent of OpenDKIM)
//! under `/usr/bin/python3` ([`PYTHON`]; a `python3` found first on `PATH`, such as a pyenv
//! shim, lacks the Debian module), with a `dnsfunc` that answers the one name
//! `test._domainkey.example.org.` with the generated record and every other name with nothing.
//! It verifies the first (topmost) `DKIM-Signature`.
//!
//! # What was seen with several milters
//!
//! `tests/chain.rs`, on Postfix 3.7.11 and Sendmail 8.17.1.9 alike: OpenDKIM inserts its
//! `DKIM-Signature` at index 0, so it is delivered on top, above the MTA's `Received:`. The
//! signature verifies at the sink whether OpenDKIM is first or last of three milters in
//! `smtpd_milters` or `InputMailFilters`: each milter is sent the message as the milters before
//! it left it, so OpenDKIM last signs what the others added, and OpenDKIM first signs none of
//! it, which the others may then add to freely. A milter after it that changes a field it
//! signed (the Subject) breaks the signature.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use crate::cmilter::wait_listening;
use crate::util::{free_port, run, set_mode, tail, write_file, Context, Error, Result, RunDir};

/// The signing domain (`d=`): mail whose `From:` is in this domain is signed.
pub const DOMAIN: &str = "example.org";

/// The selector (`s=`).
pub const SELECTOR: &str = "test";

/// The canonicalization (`c=`), header/body.
pub const CANONICALIZATION: &str = "relaxed/simple";

/// The Python that has Debian's `python3-dkim`.
pub const PYTHON: &str = "/usr/bin/python3";

/// The name the verifier's `dnsfunc` answers: `SELECTOR._domainkey.DOMAIN.`.
pub fn key_name() -> String {
    format!("{SELECTOR}._domainkey.{DOMAIN}.")
}

/// A private OpenDKIM signer on `inet:PORT@127.0.0.1` with its own key pair, in its own
/// [`RunDir`]. Killed (and reaped) when dropped; a failing test (panicking thread) gets the
/// tail of its log printed and the directory kept.
///
/// Needs [`Tool::OpenDkim`](crate::Tool::OpenDkim) and [`Tool::Gcc`](crate::Tool::Gcc) (the
/// syslog shim); [`OpenDkim::verify`] needs [`Tool::Dkimpy`](crate::Tool::Dkimpy).
#[derive(Debug)]
pub struct OpenDkim {
    port: u16,
    record: String,
    child: Child,
    dir: RunDir,
}

impl OpenDkim {
    /// Makes a key pair, writes the configuration and starts OpenDKIM signing with its default
    /// list of header fields; returns once its socket accepts a TCP connection.
    pub fn start() -> Result<OpenDkim> {
        OpenDkim::start_signing(&[])
    }

    /// Like [`OpenDkim::start`], signing the header fields `extra` too (when present), so that
    /// `h=` tells whether OpenDKIM saw them.
    pub fn start_signing(extra: &[&str]) -> Result<OpenDkim> {
        let dir = RunDir::new("opendkim")?;
        run(Command::new("opendkim-genkey")
            .args(["-b", "2048", "-D"])
            .arg(dir.path())
            .args(["-d", DOMAIN, "-s", SELECTOR]))
        .map_err(|e| e.context("making the DKIM key pair"))?;
        let txt = dir.join(format!("{SELECTOR}.txt"));
        let record = record_of(
            &std::fs::read_to_string(&txt).context(format!("reading {}", txt.display()))?,
        )?;
        let key = dir.join(format!("{SELECTOR}.private"));
        set_mode(&key, 0o600)?;
        let port = free_port()?;
        let mut sign_headers = String::new();
        if !extra.is_empty() {
            sign_headers = format!("SignHeaders *,+{}\n", extra.join(",+"));
        }
        let conf = dir.join("opendkim.conf");
        write_file(
            &conf,
            format!(
                "\
Mode s
Domain {DOMAIN}
Selector {SELECTOR}
KeyFile {key}
Socket inet:{port}@127.0.0.1
InternalHosts 127.0.0.1
Canonicalization {CANONICALIZATION}
{sign_headers}RequireSafeKeys no
PidFile {pid}
Syslog yes
LogWhy yes
",
                key = key.display(),
                pid = dir.join("opendkim.pid").display()
            ),
        )?;
        let shim = crate::sendmail::syslog_shim()?;
        let output = dir.join("stderr.log");
        let out = std::fs::File::create(&output).context("creating stderr.log")?;
        let err = out.try_clone().context("cloning a file handle")?;
        let child = Command::new("/usr/sbin/opendkim")
            .current_dir(dir.path())
            .arg("-f")
            .arg("-x")
            .arg(&conf)
            .env("LD_PRELOAD", &shim)
            .env(crate::sendmail::SYSLOG_FILE_ENV, dir.join("opendkim.log"))
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .context("starting /usr/sbin/opendkim")?;
        let mut dkim = OpenDkim {
            port,
            record,
            child,
            dir,
        };
        wait_listening(&mut dkim.child, port, "opendkim", &output)
            .map_err(|e| e.context(format!("log:\n{}", tail(&dkim.log_path(), 20))))?;
        Ok(dkim)
    }

    /// The TCP port it listens on, on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Its run directory: `opendkim.conf`, the key pair, `opendkim.log`, `stderr.log`.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The public key's TXT record, as DNS would serve it at [`key_name`]:
    /// `v=DKIM1; h=sha256; k=rsa; p=…`.
    pub fn record(&self) -> &str {
        &self.record
    }

    /// Its log file (syslog lines, through the shim).
    pub fn log_path(&self) -> PathBuf {
        self.dir.join("opendkim.log")
    }

    /// Its whole log so far.
    pub fn log(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(self.log_path()).unwrap_or_default()).into_owned()
    }

    /// Verifies the first `DKIM-Signature` of `message` (headers, empty line, body) against
    /// this signer's public key; see [`verify`].
    pub fn verify(&self, message: &[u8]) -> Result<Verification> {
        verify(message, &self.record)
    }
}

impl crate::OnLoopback for OpenDkim {
    fn port(&self) -> u16 {
        self.port
    }
}

impl Drop for OpenDkim {
    fn drop(&mut self) {
        crate::cmilter::stop(&mut self.child);
        if std::thread::panicking() {
            eprintln!(
                "---- OpenDKIM log ({}), last 40 lines ----\n{}\n{}\n---- end of OpenDKIM log ----",
                self.log_path().display(),
                tail(&self.log_path(), 40),
                tail(&self.dir.join("stderr.log"), 10)
            );
        }
    }
}

/// The TXT record in `opendkim-genkey`'s zone-file line: its quoted strings, joined.
fn record_of(zone_line: &str) -> Result<String> {
    let record: String = zone_line
        .split('"')
        .skip(1)
        .step_by(2)
        .collect::<Vec<_>>()
        .concat();
    if record.starts_with("v=DKIM1") && record.contains("p=") {
        Ok(record)
    } else {
        Err(Error::new(format!(
            "no DKIM record in opendkim-genkey's output: {zone_line:?}"
        )))
    }
}

/// The verifier, run by [`PYTHON`]: argv 1 the record, argv 2 the one name it answers, the
/// message on standard input. Exit status 0: the signature verifies; 1: it does not; anything
/// else: the verifier itself failed.
const VERIFY_SCRIPT: &str = r#"
import logging, sys
import dkim
record, name = sys.argv[1].encode(), sys.argv[2].encode()
asked = []
def txt(qname, timeout=5):
    asked.append(qname.decode(errors="replace"))
    return record if qname.lower() == name.lower() else None
logging.basicConfig(stream=sys.stdout, level=logging.DEBUG, format="%(levelname)s %(message)s")
ok = dkim.verify(sys.stdin.buffer.read(), logger=logging.getLogger("dkim"), dnsfunc=txt)
print("key asked for:", ", ".join(asked) or "none")
print("PASS" if ok else "FAIL")
sys.exit(0 if ok else 1)
"#;

/// What [`verify`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verification {
    /// Whether the first signature verifies.
    pub pass: bool,
    /// dkimpy's log of the check (why it failed, when it did).
    pub details: String,
}

/// Verifies the first (topmost) `DKIM-Signature` of `message` (headers, empty line, body; CRLF
/// line ends, as the sink keeps it) with dkimpy, the public key being `record` (the TXT record
/// at [`key_name`]): no DNS. `Ok` with `pass: false` when the signature is missing or does not
/// verify; `Err` when the verifier cannot run.
pub fn verify(message: &[u8], record: &str) -> Result<Verification> {
    let mut child = Command::new(PYTHON)
        .arg("-c")
        .arg(VERIFY_SCRIPT)
        .arg(record)
        .arg(key_name())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context(format!("running {PYTHON}"))?;
    let mut stdin = child
        .stdin
        .take()
        .ok_or_else(|| Error::new("no stdin for the verifier"))?;
    // The message is small; the script reads all of it before writing anything.
    stdin
        .write_all(message)
        .context("writing the message to the verifier")?;
    drop(stdin);
    let out = child
        .wait_with_output()
        .context("waiting for the verifier")?;
    let details = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    match out.status.code() {
        Some(0) => Ok(Verification {
            pass: true,
            details,
        }),
        Some(1) => Ok(Verification {
            pass: false,
            details,
        }),
        _ => Err(Error::new(format!(
            "the DKIM verifier failed ({}):\n{details}",
            out.status
        ))),
    }
}

/// The tags of a `DKIM-Signature` field's value, in order, whitespace (folding included)
/// removed from names and values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signature {
    tags: Vec<(String, String)>,
}

impl Signature {
    /// Parses a `DKIM-Signature` value (`v=1; a=rsa-sha256; …`).
    pub fn parse(value: &str) -> Signature {
        let squeeze = |s: &str| s.chars().filter(|c| !c.is_whitespace()).collect::<String>();
        let tags = value
            .split(';')
            .filter_map(|tag| tag.split_once('='))
            .map(|(name, value)| (squeeze(name), squeeze(value)))
            .collect();
        Signature { tags }
    }

    /// The value of tag `name` (`d`, `s`, `c`, `h`, `bh`, …).
    pub fn tag(&self, name: &str) -> Option<&str> {
        self.tags
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The signed header fields (`h=`), in lower case, in order.
    pub fn signed_headers(&self) -> Vec<String> {
        self.tag("h")
            .map(|h| h.split(':').map(str::to_ascii_lowercase).collect())
            .unwrap_or_default()
    }

    /// Whether `h=` lists `name` (any case).
    pub fn signs(&self, name: &str) -> bool {
        self.signed_headers()
            .iter()
            .any(|h| h.eq_ignore_ascii_case(name))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_record_is_the_quoted_strings_joined() {
        let line = "test._domainkey\tIN\tTXT\t( \"v=DKIM1; h=sha256; k=rsa; \"\n\t  \"p=AB\"\n\t  \"CD\" )  ; ----- DKIM key test for example.org\n";
        assert_eq!(record_of(line).unwrap(), "v=DKIM1; h=sha256; k=rsa; p=ABCD");
        assert!(record_of("nothing here").is_err());
    }

    #[test]
    fn signature_tags_lose_their_folding() {
        let s = Signature::parse(
            "v=1; a=rsa-sha256; c=relaxed/simple; d=example.org;\r\n\ts=test; h=From:To:\r\n\t Subject; bh=abc=; b=x\r\n\t y",
        );
        assert_eq!(s.tag("d"), Some("example.org"));
        assert_eq!(s.tag("bh"), Some("abc="));
        assert_eq!(s.tag("b"), Some("xy"));
        assert_eq!(s.signed_headers(), ["from", "to", "subject"]);
        assert!(s.signs("SUBJECT"));
        assert!(!s.signs("X-Other"));
    }
}
