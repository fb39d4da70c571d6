//! Differential test against libmilter: `interop/c/logmilter.c` (Debian's libmilter, built with
//! gcc here) and [`LogMilter`] (milterkit) log every callback with its arguments and the visible
//! macros in the same line format. The same messages go through the same real MTA (Postfix,
//! then Sendmail; one MTA, one sink, one Unix socket path for both milters in turn), and the
//! two logs are compared line by line after [`normalize`] (client ports, queue ids and dates
//! differ between any two runs). Any difference not in [`INTENDED`] fails the test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::future::IntoFuture;
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[path = "../../milterkit-proto/tests/logline/mod.rs"]
mod logline;

use interop::{require, Mta, Postfix, RunDir, Sendmail, Sink, Tool, DELIVERY_TIMEOUT};
use milterkit::{
    Abort, Actions, Body, Connect, Data, Decision, Eoh, Eom, Header, Helo, Mail, Milter, Rcpt,
};

/// Differences between the two logs that are intended, each with its reason. A line pair
/// (libmilter, milterkit) is excused when both contain the first and second pattern.
const INTENDED: &[(&str, &str, &str)] = &[];

type Log = Arc<Mutex<Vec<String>>>;

/// The milterkit twin of `logmilter.c`.
struct LogMilter {
    log: Log,
}

/// Per-message counters.
#[derive(Default)]
struct Counts {
    headers: usize,
    chunks: usize,
    bytes: usize,
    hash: u32,
}

impl LogMilter {
    /// Logs `text` and a line for each macro of [`logline::MACROS`] the stage sees, and goes on,
    /// as `logmilter.c` does at every stage that has macros.
    fn line(
        &self,
        stage: &str,
        text: String,
        macros: &milterkit::Macros,
    ) -> milterkit::Result<Decision> {
        let mut log = self.log.lock().unwrap();
        log.push(text);
        for name in logline::MACROS {
            if let Some(v) = macros.get(name) {
                log.push(format!(
                    "macro stage={stage} name={name} value=\"{}\"",
                    logline::esc(v)
                ));
            }
        }
        Ok(Decision::Continue)
    }
}

impl Milter for LogMilter {
    type Message = Counts;
    const ACTIONS: Actions = Actions::empty();

    async fn connect(&mut self, c: Connect<'_>) -> milterkit::Result<Decision> {
        let (family, addr) = match c.ip() {
            Some(std::net::IpAddr::V4(ip)) => ("inet", ip.to_string()),
            _ => ("unknown", String::new()),
        };
        let port = if family == "inet" { c.port() } else { 0 };
        self.line(
            "connect",
            format!(
                "connect hostname=\"{}\" family={family} addr=\"{addr}\" port={port}",
                logline::esc(&c.hostname())
            ),
            c.macros(),
        )
    }

    async fn helo(&mut self, h: Helo<'_>) -> milterkit::Result<Decision> {
        self.line(
            "helo",
            format!("helo name=\"{}\"", logline::esc(&h.name())),
            h.macros(),
        )
    }

    async fn mail(&mut self, m: &mut Counts, mail: Mail<'_>) -> milterkit::Result<Decision> {
        *m = Counts {
            hash: 2_166_136_261,
            ..Counts::default()
        };
        let text = format!(
            "envfrom sender=\"{}\" nargs={}",
            logline::esc(&mail.address()),
            mail.args().count()
        );
        self.line("envfrom", text, mail.macros())
    }

    async fn rcpt(&mut self, _: &mut Counts, r: Rcpt<'_>) -> milterkit::Result<Decision> {
        self.line(
            "envrcpt",
            format!("envrcpt rcpt=\"{}\"", logline::esc(&r.address())),
            r.macros(),
        )
    }

    async fn data(&mut self, _: &mut Counts, d: Data<'_>) -> milterkit::Result<Decision> {
        self.line("data", "data".into(), d.macros())
    }

    async fn header(&mut self, m: &mut Counts, h: Header<'_>) -> milterkit::Result<Decision> {
        m.headers += 1;
        let text = format!(
            "header index={} name=\"{}\" value=\"{}\"",
            m.headers,
            logline::esc(&h.name()),
            logline::esc(&h.value())
        );
        self.log.lock().unwrap().push(text);
        Ok(Decision::Continue)
    }

    async fn eoh(&mut self, m: &mut Counts, c: Eoh<'_>) -> milterkit::Result<Decision> {
        self.line("eoh", format!("eoh headers={}", m.headers), c.macros())
    }

    async fn body(&mut self, m: &mut Counts, b: Body<'_>) -> milterkit::Result<Decision> {
        let chunk = b.chunk();
        m.chunks += 1;
        m.bytes += chunk.len();
        m.hash = chunk
            .iter()
            .fold(m.hash, |h, &c| (h ^ u32::from(c)).wrapping_mul(16_777_619));
        let text = format!(
            "body chunk={} len={} head=\"{}\"",
            m.chunks,
            chunk.len(),
            logline::esc(&chunk[..chunk.len().min(32)])
        );
        self.log.lock().unwrap().push(text);
        Ok(Decision::Continue)
    }

    async fn eom(&mut self, m: &mut Counts, eom: &mut Eom<'_>) -> milterkit::Result<Decision> {
        let text = format!(
            "eom body_chunks={} body_bytes={} body_fnv={:08x}",
            m.chunks, m.bytes, m.hash
        );
        self.line("eom", text, eom.macros())
    }

    async fn abort(&mut self, _: Counts, _: Abort<'_>) -> milterkit::Result<()> {
        self.log.lock().unwrap().push("abort".into());
        Ok(())
    }

    async fn close(&mut self) {
        self.log.lock().unwrap().push("close".into());
    }
}

/// The messages both milters see: plain; two recipients with odd header values (8-bit, folded,
/// leading spaces); a body of more than one chunk.
fn messages() -> Vec<(Vec<&'static str>, Vec<u8>)> {
    let head = "From: Alice <alice@example.org>\r\nTo: Bob <bob@example.net>\r\n\
                Date: Mon, 30 Nov 2026 10:00:00 +0000\r\n";
    let mut large = format!("{head}Subject: large\r\nMessage-ID: <large@example.org>\r\n\r\n");
    for i in 0..2000 {
        large.push_str(&format!("{i:06} {:=<70}\r\n", ""));
    }
    vec![
        (
            vec!["bob@example.net"],
            format!("{head}Subject: plain\r\nMessage-ID: <plain@example.org>\r\n\r\nHello.\r\n")
                .into_bytes(),
        ),
        (
            vec!["bob@example.net", "carol@example.net"],
            format!(
                "{head}Subject: odd values\r\nMessage-ID: <odd@example.org>\r\n\
                 X-Utf8: Grüße, 東京\r\nX-Folded: first\r\n\tsecond\r\nX-Spaced:   three\r\n\
                 \r\nHello.\r\n"
            )
            .into_bytes(),
        ),
        (vec!["bob@example.net"], large.into_bytes()),
    ]
}

/// Sends every message on its own connection and waits for all deliveries (plus a moment for
/// the MTA to close its milter connections).
fn drive(port: u16, sink: &Sink, before: usize) {
    for (rcpts, data) in messages() {
        let r = interop::send(port, "alice@example.org", &rcpts, &data).unwrap();
        assert!(r.accepted(), "{r}");
    }
    let want = before + messages().len();
    sink.wait_for(want, DELIVERY_TIMEOUT).unwrap();
    std::thread::sleep(Duration::from_millis(1500));
}

fn wait_for_socket(path: &Path) {
    let ok = interop::util::poll(Duration::from_secs(15), || path.exists().then_some(()));
    assert!(ok.is_some(), "{} never appeared", path.display());
}

/// Runs the libmilter milter, then the milterkit milter, behind `mta`; returns both logs.
fn both_logs(mta: Mta) -> Option<(Vec<String>, Vec<String>)> {
    let mut tools = interop::tools_of(mta).to_vec();
    tools.push(Tool::Gcc);
    if !require(&tools) {
        return None;
    }
    let dir = RunDir::new("differential").unwrap();
    let binary = interop::build_c_milter("logmilter", dir.path()).unwrap();
    let socket = dir.join("milter.sock");
    let sink = Sink::start().unwrap();
    let spec = socket.display().to_string();
    enum Running {
        P(Postfix),
        S(Sendmail),
    }
    let running = match mta {
        Mta::Postfix => Running::P(Postfix::start(&format!("unix:{spec}"), sink.port()).unwrap()),
        Mta::Sendmail => {
            Running::S(Sendmail::start(&format!("local:{spec}"), sink.port()).unwrap())
        }
    };
    let port = match &running {
        Running::P(p) => p.port(),
        Running::S(s) => s.port(),
    };

    // libmilter.
    let c_log = dir.join("libmilter.log");
    let mut child = Command::new(&binary)
        .arg(format!("unix:{spec}"))
        .arg(&c_log)
        .spawn()
        .unwrap();
    wait_for_socket(&socket);
    drive(port, &sink, 0);
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_file(&socket);
    let reference: Vec<String> = std::fs::read_to_string(&c_log)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();

    // milterkit, on the same socket path.
    let log: Log = Log::default();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let listener = rt
        .block_on(milterkit::bind(&format!("unix:{spec}")))
        .unwrap();
    std::fs::set_permissions(&socket, std::os::unix::fs::PermissionsExt::from_mode(0o666)).unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = {
        let log = log.clone();
        std::thread::spawn(move || {
            let serve = milterkit::serve(listener, move || LogMilter { log: log.clone() })
                .with_graceful_shutdown(async {
                    let _ = stopped.await;
                });
            rt.block_on(serve.into_future())
        })
    };
    drive(port, &sink, 3);
    drop(running);
    let _ = stop.send(());
    server.join().unwrap().unwrap();
    let ours = log.lock().unwrap().clone();
    Some((reference, ours))
}

/// Replaces what differs between any two runs: the client port, queue ids (the values of macro
/// `i`) and the date in `Received:` headers.
fn normalize(lines: &[String]) -> Vec<String> {
    let ids: Vec<String> = lines
        .iter()
        .filter_map(|l| l.strip_prefix("macro stage="))
        .filter_map(|l| {
            l.split_once(" name=i value=\"")
                .map(|(_, v)| v.trim_end_matches('"').to_owned())
        })
        .filter(|v| !v.is_empty())
        .collect();
    lines
        .iter()
        .map(|l| {
            let mut l = l.clone();
            for id in &ids {
                l = l.replace(id.as_str(), "QUEUEID");
            }
            if let Some(i) = l.find(" port=") {
                if l.starts_with("connect ") {
                    l.truncate(i);
                    l.push_str(" port=PORT");
                }
            }
            if l.starts_with("header ") && l.contains("name=\"Received\"") {
                if let Some(i) = l.find(";") {
                    l.truncate(i);
                    l.push_str("; DATE\"");
                }
            }
            l
        })
        .collect()
}

fn compare(mta: Mta) {
    let Some((reference, ours)) = both_logs(mta) else {
        return;
    };
    let (reference, ours) = (normalize(&reference), normalize(&ours));
    // The MTA closes a milter connection after its SMTP session ended, so a `close` may land in
    // the log after the next session's first callbacks, in either milter: count the closes, then
    // compare the rest line by line.
    let closes = |v: &[String]| v.iter().filter(|l| *l == "close").count();
    assert_eq!(
        closes(&reference),
        closes(&ours),
        "close ran once per connection in both"
    );
    let without_close =
        |v: Vec<String>| -> Vec<String> { v.into_iter().filter(|l| l != "close").collect() };
    let (reference, ours) = (without_close(reference), without_close(ours));
    assert!(
        reference
            .iter()
            .filter(|l| !l.starts_with("macro "))
            .count()
            >= 20,
        "{reference:#?}"
    );
    let mut differences = Vec::new();
    for i in 0..reference.len().max(ours.len()) {
        let (a, b) = (reference.get(i), ours.get(i));
        if a == b {
            continue;
        }
        let (a, b) = (
            a.map(String::as_str).unwrap_or("<none>"),
            b.map(String::as_str).unwrap_or("<none>"),
        );
        if INTENDED
            .iter()
            .any(|(x, y, _)| a.contains(x) && b.contains(y))
        {
            continue;
        }
        differences.push(format!(
            "line {}:\n  libmilter: {a}\n  milterkit: {b}",
            i + 1
        ));
    }
    let callbacks = reference
        .iter()
        .filter(|l| !l.starts_with("macro "))
        .count();
    println!(
        "{mta:?}: compared {} lines ({callbacks} callback lines, {} macro lines) of libmilter and milterkit",
        reference.len(),
        reference.len() - callbacks
    );
    assert!(
        differences.is_empty(),
        "{} differences:\n{}",
        differences.len(),
        differences.join("\n")
    );
}

interop::tests_on_each_mta! { compare: milterkit_hands_its_callbacks_what_libmilter_hands_them }
