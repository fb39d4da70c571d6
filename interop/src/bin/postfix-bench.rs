//! The cost of a milter to real Postfix (issue #18): messages per second a private Postfix relays
//! from SMTP clients to a sink with no milter, with the C libmilter benchmark milter
//! (bench/c/libmilter_bench.c) and with the same milter on milterkit (continue at every stage,
//! `X-Bench: 1` at end of message), each over a Unix socket and over TCP. Every round runs every
//! setup, in rotating order; the table gives medians and each milter's share of Postfix's
//! throughput (1 − with / without, paired by round).
//!
//! With `--chain` (issue #20) it measures `milterkit chain` instead: 1, 2 and 4 do-nothing
//! children (the same milterkit milter, over TCP) listed directly in Postfix against the same
//! children behind one chain.
//!
//! Run (as root, after scripts/test.sh installed Postfix and libmilter-dev):
//! `cargo run --release -p interop --bin postfix-bench -- [--chain] [--messages N] [--clients N]
//! [--rounds N] [--write]`; `--write` puts the table into BENCHMARKS.md.

use std::process::{Child, Command};
use std::time::{Duration, Instant};

use interop::milter::MilterServer;
use interop::{ChainServer, MilterSocket, Postfix, RunDir, Sink, Transport};
use milterkit_bench::Bench;

const CHAIN_SETUPS: [&str; 7] = [
    "no milter",
    "1 child, direct",
    "1 child, chain",
    "2 children, direct",
    "2 children, chain",
    "4 children, direct",
    "4 children, chain",
];

const SETUPS: [&str; 5] = [
    "no milter",
    "libmilter, Unix",
    "milterkit, Unix",
    "libmilter, TCP",
    "milterkit, TCP",
];

/// A milter for one setup, stopped when dropped.
enum Served {
    None,
    /// The C milter's process, and the folder of its socket.
    C {
        child: Child,
        _dir: RunDir,
    },
    /// The milterkit milter, served on a thread of this process.
    Kit {
        _server: MilterServer,
    },
    /// Children (milterkit milters), and the chain in front of them if the setup has one.
    Children {
        _children: Vec<MilterServer>,
        _chain: Option<ChainServer>,
    },
}

impl Drop for Served {
    fn drop(&mut self) {
        if let Served::C { child, .. } = self {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Starts the milter of `setup`; gives it and the spec Postfix should use.
fn milter(setup: &str, c_binary: &std::path::Path) -> interop::Result<(Served, String)> {
    let transport = if setup.ends_with("TCP") {
        Transport::Tcp
    } else {
        Transport::Unix
    };
    if let Some((n, how)) = setup.split_once(" child") {
        let n: usize = n.parse().unwrap_or(1);
        let children = (0..n)
            .map(|_| MilterServer::serving(Transport::Tcp, Bench::default))
            .collect::<interop::Result<Vec<_>>>()?;
        if how.ends_with("direct") {
            let specs: Vec<String> = children.iter().map(|c| c.postfix_spec()).collect();
            let spec = specs.join(", ");
            return Ok((
                Served::Children {
                    _children: children,
                    _chain: None,
                },
                spec,
            ));
        }
        let settings: String = children
            .iter()
            .enumerate()
            .map(|(i, c)| {
                format!(
                    "[[milter]]\nname = \"c{i}\"\nsocket = \"{}\"\n",
                    c.sendmail_spec()
                )
            })
            .collect();
        let chain = ChainServer::start(&settings)?;
        let spec = chain.postfix_spec();
        return Ok((
            Served::Children {
                _children: children,
                _chain: Some(chain),
            },
            spec,
        ));
    }
    if setup.starts_with("milterkit") {
        let server = MilterServer::serving(transport, Bench::default)?;
        let spec = server.postfix_spec();
        return Ok((Served::Kit { _server: server }, spec));
    }
    if setup.starts_with("libmilter") {
        let dir = RunDir::new("postfix-bench")?;
        let path = dir.join("milter.sock");
        let port = interop::free_port()?;
        let (own, postfix) = match transport {
            Transport::Tcp => (
                format!("inet:{port}@127.0.0.1"),
                format!("inet:127.0.0.1:{port}"),
            ),
            Transport::Unix => (
                format!("unix:{}", path.display()),
                format!("unix:{}", path.display()),
            ),
        };
        let child = Command::new(c_binary)
            .arg(&own)
            .spawn()
            .map_err(|e| interop::Error::new(format!("starting the C milter: {e}")))?;
        // Wait for its socket.
        let deadline = Instant::now() + Duration::from_secs(10);
        while !match transport {
            Transport::Unix => path.exists(),
            Transport::Tcp => std::net::TcpStream::connect(("127.0.0.1", port)).is_ok(),
        } {
            if Instant::now() > deadline {
                return Err(interop::Error::new("the C milter did not start listening"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        if transport == Transport::Unix {
            // Postfix's smtpd runs as postfix: it needs to write to the socket.
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666))
                .map_err(|e| interop::Error::new(format!("socket mode: {e}")))?;
        }
        return Ok((Served::C { child, _dir: dir }, postfix));
    }
    Ok((Served::None, String::new()))
}

const MESSAGE: &[u8] = b"From: Bench <bench@example.org>\r\n\
To: <rcpt@example.net>\r\n\
Subject: load test\r\n\
Date: Mon, 30 Nov 2026 10:00:00 +0000\r\n\
Message-ID: <bench@example.org>\r\n\
\r\n\
A short message of the kind a milter sees most.\r\n";

/// Relays `messages` through a fresh Postfix in front of `spec` from `clients` SMTP sessions at
/// once; gives messages per second, from the first MAIL to the last delivery at the sink.
fn relay(spec: &str, messages: usize, clients: usize) -> interop::Result<f64> {
    let sink = Sink::start()?;
    let postfix = Postfix::start(spec, sink.port())?;
    let port = postfix.port();
    // Warm up: one message through, so that Postfix's processes are running.
    interop::send(port, "bench@example.org", &["rcpt@example.net"], MESSAGE)
        .map_err(|e| interop::Error::new(format!("warm-up: {e}")))?;
    sink.wait_for(1, Duration::from_secs(60))?;
    let started = Instant::now();
    let per_client = messages.div_ceil(clients);
    let workers: Vec<_> = (0..clients)
        .map(|_| {
            std::thread::spawn(move || -> std::io::Result<()> {
                let mut s = interop::Session::connect(port)?;
                s.ehlo("client.test.invalid")?;
                for _ in 0..per_client {
                    let r = s.send("bench@example.org", &["rcpt@example.net"], MESSAGE)?;
                    if !r.accepted() {
                        return Err(std::io::Error::other(format!("refused: {r}")));
                    }
                }
                s.quit()?;
                Ok(())
            })
        })
        .collect();
    for w in workers {
        w.join()
            .map_err(|_| interop::Error::new("an SMTP client panicked"))?
            .map_err(|e| interop::Error::new(format!("SMTP client: {e}")))?;
    }
    let total = 1 + per_client * clients;
    let delivered = sink.wait_for(total, Duration::from_secs(600))?;
    let elapsed = started.elapsed().as_secs_f64();
    if delivered
        .iter()
        .skip(1)
        .any(|m| spec.is_empty() == m.header("X-Bench").is_some())
    {
        return Err(interop::Error::new(format!(
            "{spec:?}: a message without the milter's header, or with it and no milter"
        )));
    }
    Ok((per_client * clients) as f64 / elapsed)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

fn main() -> interop::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let value = |flag: &str, default: usize| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let (messages, clients, rounds) = (
        value("--messages", 1000),
        value("--clients", 10),
        value("--rounds", 3),
    );
    if !interop::require(interop::tools_of(interop::Mta::Postfix)) {
        return Err(interop::Error::new(
            "Postfix or libmilter is missing (run scripts/test.sh)",
        ));
    }
    let build = RunDir::new("postfix-bench-build")?;
    let source =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../bench/c/libmilter_bench.c");
    let c_binary = build.join("libmilter_bench");
    let gcc = Command::new("gcc")
        .args(["-O2", "-o"])
        .arg(&c_binary)
        .arg(&source)
        .args(["-lmilter", "-lpthread"])
        .status()
        .map_err(|e| interop::Error::new(format!("running gcc: {e}")))?;
    if !gcc.success() {
        return Err(interop::Error::new(
            "gcc could not build bench/c/libmilter_bench.c",
        ));
    }
    let chain = args.iter().any(|a| a == "--chain");
    let setups: &[&str] = if chain { &CHAIN_SETUPS } else { &SETUPS };
    let mut rates: Vec<Vec<f64>> = vec![Vec::new(); setups.len()];
    for round in 0..rounds {
        for k in 0..setups.len() {
            let i = (k + round) % setups.len();
            let (served, spec) = milter(setups[i], &c_binary)?;
            let rate = relay(&spec, messages, clients)?;
            drop(served);
            eprintln!("round {} {:<20} {rate:>8.0} msg/s", round + 1, setups[i]);
            rates[i].push(rate);
        }
    }
    let base = &rates[0];
    let flag = if chain { " --chain" } else { "" };
    let mut table = format!(
        "Run with `cargo run --release -p interop --bin postfix-bench --{flag} --messages {messages} \
         --clients {clients} --rounds {rounds}`: a private Postfix 3.7 relaying from {clients} \
         SMTP sessions at once to a sink on 127.0.0.1, {messages} small messages a run, every \
         setup in every round (rotating order). The milter's share: 1 − (with it / without), paired \
         by round, median.\n\n\
         | setup | messages per second (median; runs) | milter's share of Postfix's throughput |{}\n\
         |---|---:|---:|{}\n",
        if chain { " chain / direct (paired by round, median) |" } else { "" },
        if chain { "---:|" } else { "" },
    );
    for (i, setup) in setups.iter().enumerate() {
        let runs: Vec<String> = rates[i].iter().map(|r| format!("{r:.0}")).collect();
        let share = if i == 0 {
            "–".to_owned()
        } else {
            let s = median(
                rates[i]
                    .iter()
                    .zip(base)
                    .map(|(r, b)| 1.0 - r / b)
                    .collect(),
            );
            // Rounded, without a "-0".
            format!("{:.0} %", (s * 100.0).round() + 0.0)
        };
        // Chain rows: against the row above, the same children listed directly.
        let versus = match (chain, setup.ends_with("chain")) {
            (false, _) => String::new(),
            (true, false) => " – |".to_owned(),
            (true, true) => {
                let r = median(
                    rates[i]
                        .iter()
                        .zip(&rates[i - 1])
                        .map(|(c, d)| c / d)
                        .collect(),
                );
                format!(" {r:.2}× |")
            }
        };
        table.push_str(&format!(
            "| {setup} | {:.0} ({}) | {share} |{versus}\n",
            median(rates[i].clone()),
            runs.join(", ")
        ));
    }
    println!("{table}");
    if args.iter().any(|a| a == "--write") {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../BENCHMARKS.md");
        let doc = std::fs::read_to_string(&path)
            .map_err(|e| interop::Error::new(format!("reading BENCHMARKS.md: {e}")))?;
        let (begin, end) = if chain {
            ("<!-- chain:begin -->", "<!-- chain:end -->")
        } else {
            ("<!-- postfix:begin -->", "<!-- postfix:end -->")
        };
        let doc = match (doc.find(begin), doc.find(end)) {
            (Some(a), Some(b)) if a < b => {
                format!("{}{begin}\n{table}{}", &doc[..a], &doc[b..])
            }
            _ => format!("{doc}\n## Postfix\n\n{begin}\n{table}{end}\n"),
        };
        std::fs::write(&path, doc)
            .map_err(|e| interop::Error::new(format!("writing BENCHMARKS.md: {e}")))?;
    }
    Ok(())
}
