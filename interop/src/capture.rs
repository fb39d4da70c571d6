//! The project's own captures: real Postfix and Sendmail talking to the reference milter on
//! libmilter (`c/refmilter.c`), recorded by a proxy between the two. `cargo run -p interop --bin
//! capture -- DIR` (as root) writes into `DIR` (the tests read
//! `milterkit-proto/testdata/captures`), one folder per MTA and negotiation:
//!
//! - `NN-name.mta.bin`, `NN-name.milter.bin`: every byte each side sent, packets back to back;
//! - `NN-name.txt`: the transcript: each read with its time offset and direction, then each packet
//!   decoded with a hex dump (the first 4 KiB of a packet);
//! - `ref-milter.log`: what libmilter handed the reference milter's callbacks, with the macros it
//!   could see, what the milter returned and which actions it took (`c=` is the connection number
//!   of the transcripts' `# conn` line);
//! - `README.md` in `DIR`: the MTA versions and the scenarios.
//!
//! Every scenario is one SMTP session, sent after the previous one's milter connection closed.

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command as Process};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use milterkit::proto::{Command, FrameDecoder, Response};

use crate::util::{Context, Error, Result};
use crate::{Mta, Postfix, RunDir, Sendmail, Session, Sink};

/// One step of an SMTP session.
#[derive(Debug, Clone)]
pub enum Step {
    /// MAIL, RCPT for each recipient, DATA with the message if one was accepted (RSET after a
    /// refused MAIL or when no recipient was accepted).
    Mail {
        /// The sender.
        from: &'static str,
        /// The recipients.
        to: Vec<&'static str>,
        /// The message (CRLF line ends).
        data: Vec<u8>,
    },
    /// Any command line (RSET, an unknown command).
    Line(&'static str),
}

/// One scenario: a name and the steps of its SMTP session.
#[derive(Debug, Clone)]
pub struct Scenario {
    /// `NN-name`.
    pub name: &'static str,
    /// What the session does.
    pub steps: Vec<Step>,
}

/// The body of every plain message.
const BODY: &str = "This is the body of the test message.\r\nLine two.\r\n";

/// A plain message of `case` with extra header lines and the X-Test-Actions header.
fn message(case: &str, subject: &str, extra: &str, actions: &str) -> Vec<u8> {
    let mut m = format!(
        "From: Sender <sender@example.org>\r\nTo: User <user@example.net>\r\n\
         Subject: {subject}\r\nDate: Thu, 01 Jan 2026 00:00:00 +0000\r\n\
         Message-ID: <{case}@rig.test>\r\nMIME-Version: 1.0\r\n\
         Content-Type: text/plain; charset=us-ascii\r\n{extra}"
    );
    if !actions.is_empty() {
        m.push_str(&format!("X-Test-Actions: {actions}\r\n"));
    }
    m.push_str("\r\n");
    m.push_str(BODY);
    m.into_bytes()
}

fn mail(data: Vec<u8>) -> Step {
    Step::Mail {
        from: "<sender@example.org>",
        to: vec!["<user@example.net>"],
        data,
    }
}

/// One message with actions.
fn simple(name: &'static str, subject: &str, extra: &str, actions: &str) -> Scenario {
    Scenario {
        name,
        steps: vec![mail(message(name, subject, extra, actions))],
    }
}

/// Every scenario, in order.
pub fn scenarios() -> Vec<Scenario> {
    let mut large = message(
        "15-replacebody-large",
        "Case 15 replacebody large",
        "",
        "replacebody_lines:1500",
    );
    large.truncate(large.len() - BODY.len());
    for i in 0..2000 {
        large.extend(format!("Original body line {i:05} of the large body, padded.\r\n").bytes());
    }
    let mut big = message(
        "25-big-body-5mb",
        "Case 25 big body",
        "",
        "progress; skip; addheader:X-Big:yes",
    );
    for i in 0..(5 << 20) / 64 {
        big.extend(
            format!("{i:08} 5 MiB body line, padded to sixty-four bytes ...........\r\n").bytes(),
        );
    }
    vec![
        simple("01-accept-plain", "Case 01 plain accept", "", ""),
        simple("02-addheader", "Case 02 addheader", "", "addheader:X-Added:added value"),
        simple("03-insheader", "Case 03 insheader", "", "insheader:0:X-Ins-Top:top; insheader:3:X-Ins-Mid:middle"),
        simple(
            "04-chgheader-delheader",
            "Case 04 original subject",
            "X-Del: to be deleted\r\nX-Keep: kept\r\n",
            "chgheader:Subject:1:Changed subject; delheader:X-Del:1; chgheader:X-Missing:1:added by chgheader",
        ),
        simple("05-dup-header-change", "Case 05 dup change", "X-Dup: first\r\nX-Other: between\r\nX-Dup: second\r\n", "chgheader:X-Dup:2:second changed"),
        simple("06-dup-header-delete-twice", "Case 06 dup delete twice", "X-Dup: first\r\nX-Other: between\r\nX-Dup: second\r\n", "delheader:X-Dup:1; delheader:X-Dup:1"),
        simple(
            "07-multiline-header",
            "Case 07 multi-line",
            "X-Folded: part one\r\n\tpart two\r\n part three\r\n",
            "addheader:X-Multi:line one\\n\\tline two; chgheader:X-Folded:1:replaced\\n\\tcontinued",
        ),
        simple(
            "08-leading-space-header",
            "Case 08 leading space",
            "X-NoSpace:nospace\r\nX-Lead:   three spaces\r\nX-Tab:\ttab value\r\n",
            "addheader:X-Added-Space:\\x20leading space; chgheader:X-NoSpace:1:changed; chgheader:X-Lead:1:   three again",
        ),
        simple("09-addrcpt", "Case 09 addrcpt", "", "addrcpt:<added@example.com>"),
        simple("10-addrcpt-par", "Case 10 addrcpt_par", "", "addrcpt_par:<added-par@example.com>:NOTIFY=NEVER"),
        Scenario {
            name: "11-delrcpt",
            steps: vec![Step::Mail {
                from: "<sender@example.org>",
                to: vec!["<user@example.net>", "<user2@example.net>"],
                data: message("11-delrcpt", "Case 11 delrcpt", "", "delrcpt:<user2@example.net>"),
            }],
        },
        simple("12-chgfrom", "Case 12 chgfrom", "", "chgfrom:<new-sender@example.com>"),
        simple("13-chgfrom-args", "Case 13 chgfrom with arguments", "", "chgfrom:<new-sender@example.com>:RET=HDRS ENVID=rig13"),
        simple("14-replacebody-small", "Case 14 replacebody", "", "replacebody:Replaced body line 1\\nReplaced body line 2\\n"),
        Scenario {
            name: "15-replacebody-large",
            steps: vec![mail(large)],
        },
        simple("16-quarantine", "Case 16 quarantine", "", "quarantine:held by rig"),
        Scenario {
            name: "17-reject-mail",
            steps: vec![
                Step::Mail {
                    from: "<reject-mail@example.org>",
                    to: vec!["<user@example.net>"],
                    data: Vec::new(),
                },
                Step::Line("XRIGTEST hello milter"),
                mail(message("17-reject-mail", "Case 17 after a rejected MAIL", "", "")),
            ],
        },
        Scenario {
            name: "18-rcpt-reject-tempfail",
            steps: vec![
                Step::Mail {
                    from: "<sender@example.org>",
                    to: vec![
                        "<reject-rcpt@example.net>",
                        "<tempfail-rcpt@example.net>",
                        "<custom-rcpt@example.net>",
                        "<user@example.net>",
                    ],
                    data: message("18-rcpt-reject-tempfail", "Case 18 rcpt decisions", "", ""),
                },
                Step::Mail {
                    from: "<sender@example.org>",
                    to: vec!["<reject-rcpt@example.net>"],
                    data: Vec::new(),
                },
                Step::Line("RSET"),
            ],
        },
        Scenario {
            name: "19-reject-tempfail-eom",
            steps: vec![
                mail(message("19-reject-tempfail-eom", "Case 19 reject at EOM", "", "reject")),
                mail(message("19-reject-tempfail-eom-2", "Case 19 tempfail at EOM", "", "tempfail")),
            ],
        },
        Scenario {
            name: "20-custom-reply-mail",
            steps: vec![
                Step::Mail {
                    from: "<custom@example.org>",
                    to: vec!["<user@example.net>"],
                    data: Vec::new(),
                },
                Step::Mail {
                    from: "<custom-ml@example.org>",
                    to: vec!["<user@example.net>"],
                    data: Vec::new(),
                },
            ],
        },
        simple("21-custom-reply-eom-multiline", "Case 21 multi-line reply", "", "replycode:550:5.7.1:first line|second line|third line"),
        simple("22-discard", "Case 22 discard", "", "discard"),
        Scenario {
            name: "23-two-messages-rset",
            steps: vec![
                Step::Line("XFIRST one two"),
                mail(message("23-two-messages-rset", "Case 23 first", "", "addheader:X-First:1")),
                Step::Line("RSET"),
                Step::Line("XRIGTEST hello milter"),
                Step::Mail {
                    from: "<sender@example.org>",
                    to: vec!["<user2@example.net>"],
                    data: message("23-two-messages-rset-2", "Case 23 second", "", "addheader:X-Second:2"),
                },
            ],
        },
        Scenario {
            name: "24-utf8-headers",
            steps: vec![mail(
                "From: J\u{fc}rgen M\u{fc}ller <sender@example.org>\r\nTo: Zo\u{eb} <user@example.net>\r\n\
                 Subject: Gr\u{fc}\u{df}e \u{2014} caf\u{e9} \u{2713}\r\nContent-Transfer-Encoding: 8bit\r\n\
                 X-Test-Actions: addheader:X-Utf8-Added:gr\\xc3\\xbc\\xc3\\x9fe \\xe2\\x9c\\x93; chgheader:Subject:1:\\xc3\\x9cberarbeitet \\xe2\\x80\\x94 ok\r\n\
                 \r\nK\u{f6}rper mit Umlauten: \u{e4}\u{f6}\u{fc}\r\n"
                    .as_bytes()
                    .to_vec(),
            )],
        },
        Scenario {
            name: "25-big-body-5mb",
            steps: vec![mail(big)],
        },
    ]
}

/// The scenarios of the variant runs (HDR_LEADSPC, RCPT_REJ, macro lists).
pub const VARIANT_SCENARIOS: [&str; 3] = [
    "01-accept-plain",
    "08-leading-space-header",
    "18-rcpt-reject-tempfail",
];

/// Which way bytes went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dir {
    ToMilter,
    ToMta,
}

impl Dir {
    fn name(self) -> &'static str {
        match self {
            Dir::ToMilter => "mta>milter",
            Dir::ToMta => "milter>mta",
        }
    }
}

/// One proxied milter connection.
#[derive(Debug, Default)]
struct Conn {
    opened: Option<SystemTime>,
    reads: Vec<(Duration, Dir, Vec<u8>)>,
    closed: bool,
}

type Conns = Arc<Mutex<Vec<Conn>>>;

/// A TCP proxy from the MTA to the reference milter's Unix socket that keeps every read.
struct Proxy {
    port: u16,
    conns: Conns,
}

impl Proxy {
    fn start(milter: PathBuf) -> Result<Proxy> {
        let listener = TcpListener::bind("127.0.0.1:0").context("binding the proxy")?;
        let port = listener.local_addr().context("proxy address")?.port();
        let conns = Conns::default();
        let shared = conns.clone();
        std::thread::spawn(move || {
            for mta in listener.incoming().flatten() {
                let Ok(ref_side) = UnixStream::connect(&milter) else {
                    continue;
                };
                let started = Instant::now();
                let index = {
                    let mut all = shared.lock().unwrap_or_else(|e| e.into_inner());
                    all.push(Conn {
                        opened: Some(SystemTime::now()),
                        ..Conn::default()
                    });
                    all.len() - 1
                };
                let relay = |mut from: Box<dyn Read + Send>,
                             mut to: Box<dyn Write + Send>,
                             dir: Dir,
                             conns: Conns| {
                    std::thread::spawn(move || {
                        let mut buf = vec![0u8; 1 << 16];
                        loop {
                            let n = match from.read(&mut buf) {
                                Ok(0) | Err(_) => break,
                                Ok(n) => n,
                            };
                            conns.lock().unwrap_or_else(|e| e.into_inner())[index]
                                .reads
                                .push((started.elapsed(), dir, buf[..n].to_vec()));
                            if to.write_all(&buf[..n]).is_err() {
                                break;
                            }
                        }
                    })
                };
                let (Ok(mta_read), Ok(mta_close), Ok(ref_read)) =
                    (mta.try_clone(), mta.try_clone(), ref_side.try_clone())
                else {
                    continue;
                };
                let a = relay(
                    Box::new(mta_read),
                    Box::new(ref_side),
                    Dir::ToMilter,
                    shared.clone(),
                );
                let b = relay(
                    Box::new(ref_read),
                    Box::new(mta),
                    Dir::ToMta,
                    shared.clone(),
                );
                let conns = shared.clone();
                std::thread::spawn(move || {
                    let _ = a.join();
                    // The MTA closed: let the milter finish, then close towards the MTA.
                    let _ = b.join();
                    let _ = mta_close.shutdown(Shutdown::Both);
                    conns.lock().unwrap_or_else(|e| e.into_inner())[index].closed = true;
                });
            }
        });
        Ok(Proxy { port, conns })
    }

    fn connections(&self) -> usize {
        self.conns.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Waits until connection `n` (0-based) was opened and closed.
    fn wait_closed(&self, n: usize, budget: Duration) -> Result<()> {
        crate::util::poll(budget, || {
            let all = self.conns.lock().unwrap_or_else(|e| e.into_inner());
            all.get(n).is_some_and(|c| c.closed).then_some(())
        })
        .ok_or_else(|| Error::new(format!("milter connection {} did not close", n + 1)))
    }
}

/// Runs one SMTP session of `scenario` against the MTA on `port`.
fn run_session(port: u16, scenario: &Scenario) -> Result<()> {
    let mut s = Session::connect(port).context("connecting to the MTA")?;
    s.ehlo("client.rig.test").context("EHLO")?;
    for step in &scenario.steps {
        match step {
            Step::Line(line) => {
                s.command(line).context(*line)?;
            }
            Step::Mail { from, to, data } => {
                s.send(from, to, data).context("a transaction")?;
            }
        }
    }
    s.quit().context("QUIT")?;
    Ok(())
}

/// The transcript of one connection, in the format the README describes.
fn transcript(number: usize, conn: &Conn) -> (String, Vec<u8>, Vec<u8>) {
    let mut t = String::new();
    let opened = conn
        .opened
        .and_then(|o| o.duration_since(SystemTime::UNIX_EPOCH).ok())
        .map_or(0.0, |d| d.as_secs_f64());
    let _ = writeln!(t, "# conn {number} opened at unix time {opened:.6}");
    let (mut mta, mut milter) = (Vec::new(), Vec::new());
    let dec = FrameDecoder::new(usize::MAX >> 8);
    let mut pending = [bytes::BytesMut::new(), bytes::BytesMut::new()];
    let mut counts = [0usize; 2];
    for (at, dir, data) in &conn.reads {
        let side = usize::from(*dir == Dir::ToMta);
        let _ = writeln!(
            t,
            "+{:.6} conn={number} {} read {} bytes",
            at.as_secs_f64(),
            dir.name(),
            data.len()
        );
        if side == 0 { &mut mta } else { &mut milter }.extend_from_slice(data);
        pending[side].extend_from_slice(data);
        while let Ok(Some(frame)) = dec.decode(&mut pending[side]) {
            counts[side] += 1;
            let mut wire = bytes::BytesMut::new();
            frame.encode(&mut wire);
            let what = if side == 0 {
                Command::decode(frame)
                    .map_or_else(|e| format!("undecodable: {e}"), |c| format!("{c:?}"))
            } else {
                Response::decode(frame)
                    .map_or_else(|e| format!("undecodable: {e}"), |r| format!("{r:?}"))
            };
            let what: String = what.chars().take(600).collect();
            let _ = writeln!(
                t,
                "  packet {} #{} len={} cmd=\"{}\" {what}",
                dir.name(),
                counts[side],
                wire.len() - 4,
                wire[4] as char
            );
            hexdump(&mut t, &wire);
        }
    }
    (t, mta, milter)
}

fn hexdump(t: &mut String, wire: &[u8]) {
    const SHOWN: usize = 4096;
    for (i, row) in wire[..wire.len().min(SHOWN)].chunks(16).enumerate() {
        let hex: Vec<String> = row.iter().map(|b| format!("{b:02x}")).collect();
        let text: String = row
            .iter()
            .map(|&b| {
                if (0x20..0x7f).contains(&b) {
                    b as char
                } else {
                    '.'
                }
            })
            .collect();
        let _ = writeln!(t, "      {:06x}  {:<47}  |{text}|", i * 16, hex.join(" "));
    }
    if wire.len() > SHOWN {
        let _ = writeln!(t, "      ... {} more bytes not shown", wire.len() - SHOWN);
    }
}

/// Records every scenario of one MTA and negotiation into `out`.
pub fn record(mta: Mta, variant: bool, out: &Path) -> Result<()> {
    let dir = RunDir::new("capture")?;
    let binary = crate::build_c_milter("refmilter", dir.path())?;
    let socket = dir.join("ref.sock");
    let log = dir.join("ref-milter.log");
    let mut args = vec![
        format!("unix:{}", socket.display()),
        log.display().to_string(),
    ];
    if variant {
        args.extend(["-L".into(), "-R".into(), "-M".into()]);
    }
    let mut child: Child = Process::new(&binary)
        .args(&args)
        .spawn()
        .context("starting refmilter")?;
    crate::util::poll(Duration::from_secs(15), || socket.exists().then_some(()))
        .ok_or_else(|| Error::new("refmilter's socket never appeared"))?;
    let proxy = Proxy::start(socket)?;
    let sink = Sink::start()?;
    let (port, _running): (u16, Box<dyn std::any::Any>) = match mta {
        Mta::Postfix => {
            let p = Postfix::start(&format!("inet:127.0.0.1:{}", proxy.port), sink.port())?;
            (p.port(), Box::new(p))
        }
        Mta::Sendmail => {
            let s = Sendmail::start(&format!("inet:{}@127.0.0.1", proxy.port), sink.port())?;
            (s.port(), Box::new(s))
        }
    };
    let folder = out.join(format!(
        "{}{}",
        match mta {
            Mta::Postfix => "postfix",
            Mta::Sendmail => "sendmail",
        },
        if variant { "-variant" } else { "" }
    ));
    std::fs::create_dir_all(&folder).context(format!("creating {}", folder.display()))?;
    let mut names = Vec::new();
    for scenario in scenarios() {
        if variant && !VARIANT_SCENARIOS.contains(&scenario.name) {
            continue;
        }
        let n = proxy.connections();
        run_session(port, &scenario).map_err(|e| e.context(scenario.name))?;
        proxy
            .wait_closed(n, Duration::from_secs(60))
            .map_err(|e| e.context(scenario.name))?;
        names.push((n, scenario.name));
    }
    // Let the milter write its last lines.
    std::thread::sleep(Duration::from_millis(500));
    let _ = child.kill();
    let _ = child.wait();
    let conns = proxy.conns.lock().unwrap_or_else(|e| e.into_inner());
    for (n, name) in names {
        let (text, mta_bytes, milter_bytes) = transcript(n + 1, &conns[n]);
        let write = |suffix: &str, bytes: &[u8]| {
            let path = folder.join(format!("{name}.{suffix}"));
            std::fs::write(&path, bytes).context(format!("writing {}", path.display()))
        };
        write("txt", text.as_bytes())?;
        write("mta.bin", &mta_bytes)?;
        write("milter.bin", &milter_bytes)?;
    }
    let log_text = std::fs::read_to_string(&log).context("reading the milter's log")?;
    std::fs::write(folder.join("ref-milter.log"), log_text).context("writing ref-milter.log")?;
    Ok(())
}

/// The versions of the MTAs and of libmilter, for the README.
pub fn versions() -> String {
    let run = |cmd: &str, args: &[&str]| {
        Process::new(cmd)
            .args(args)
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_default()
    };
    let postfix = run("postconf", &["-d", "-h", "mail_version"]);
    let dpkg = |p: &str| run("dpkg-query", &["-W", "-f=${Version}", p]);
    let sendmail = dpkg("sendmail-bin");
    let sendmail = if sendmail.is_empty() {
        std::fs::read_dir(
            crate::sendmail_root()
                .parent()
                .map(|p| p.join("debs"))
                .unwrap_or_default(),
        )
        .ok()
        .and_then(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .find(|n| n.starts_with("sendmail-bin_"))
        })
        .unwrap_or_default()
    } else {
        sendmail
    };
    format!(
        "- Postfix {postfix} (Debian package {})\n- Sendmail: {sendmail}\n- libmilter: Debian package libmilter1.0.1 {}\n",
        dpkg("postfix"),
        dpkg("libmilter1.0.1")
    )
}
