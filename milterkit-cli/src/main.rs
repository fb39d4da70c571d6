//! `milterkit`: run a message through any milter and see what it does; load-test a milter; watch
//! the bundled example milter at work (`milterkit demo`).

mod bench;
mod cases;
mod chain;
mod demo_milter;
mod diff;
mod envelope;
mod error;
mod report;

use std::io::IsTerminal;
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use bytes::Bytes;
use clap::{Parser, Subcommand, ValueEnum};
use milterkit::mta::{Connection, Profile, Transaction, Verdict};
use milterkit::Stage;

use crate::error::{print, CliError};

/// Drive milters from the command line: see a milter's decisions and modifications, and the
/// message it would leave behind, without an MTA.
#[derive(Debug, Parser)]
#[command(name = "milterkit", version, about, long_about = None, after_help = EXAMPLES)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

const EXAMPLES: &str = "\
Examples:
  milterkit demo
  milterkit run inet:127.0.0.1:8891 message.eml --from '<alice@example.org>' --rcpt '<bob@example.net>'
  milterkit run unix:/run/opendkim/opendkim.sock message.eml --profile sendmail --json
  milterkit bench inet:8891@127.0.0.1 --connections 20 --messages 10000
  milterkit chain --config chain.toml --socket inet:7357@127.0.0.1

Socket specifications: inet:PORT@HOST, inet6:PORT@HOST, inet:HOST:PORT (Postfix), unix:/path, local:/path.";

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Starts the bundled example policy milter on a free local port and runs two sample messages
    /// through it, showing each stage's decision, the modifications and a diff of the result.
    Demo,
    /// Runs one message through a milter and shows what it decided and changed.
    ///
    /// Exit status: 0 accepted (delivered), 3 rejected, 4 tempfailed, 5 discarded, 1 error (cannot
    /// connect, protocol error), 2 usage error.
    #[command(after_help = "Examples:
  milterkit run inet:127.0.0.1:8891 message.eml --from '<alice@example.org>' --rcpt '<bob@example.net>'
  milterkit run unix:/var/run/milter.sock --rcpt '<bob@example.net>' --macro 'M:{auth_authen}=alice' < message.eml
  milterkit run inet:8891@localhost message.eml --json --output result.eml")]
    Run(RunArgs),
    /// Load-tests a milter with Postfix-like traffic and reports throughput and latency.
    #[command(after_help = "Examples:
  milterkit bench inet:127.0.0.1:8891 --connections 20 --messages 10000
  milterkit bench unix:/run/milter.sock --connections 50 --duration 30 --size 1048576
  milterkit bench inet:127.0.0.1:8891 --per-connection 1 --messages 2000   # connection churn")]
    Bench(bench::BenchArgs),
    /// Runs scripted test cases (TOML files) against a milter and reports PASS or FAIL for each
    /// message, with a diff of what was expected and what happened.
    #[command(after_help = cases::FORMAT)]
    Test(cases::TestArgs),
    /// Serves one milter in front of several: each command goes to every child milter in order,
    /// decisions and modifications merge as Postfix merges its milters, and each child has its
    /// own timeouts, fail-safe, evaluation mode and conditions. Takes the flags of any milterkit
    /// milter (socket, timeouts, metrics, user, logs); SIGHUP reloads the configuration.
    #[command(after_help = chain::EXAMPLES)]
    Chain(chain::ChainArgs),
}

/// Which MTA to imitate.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub(crate) enum ProfileName {
    /// Postfix 3.7: macros before every event, ABORT after every message.
    Postfix,
    /// Sendmail 8.17: fewer macro packets, ABORT only inside a transaction.
    Sendmail,
}

impl ProfileName {
    pub(crate) fn profile(self) -> Profile {
        match self {
            ProfileName::Postfix => Profile::postfix(),
            ProfileName::Sendmail => Profile::sendmail(),
        }
    }
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    /// The milter's socket.
    socket: String,
    /// The message (RFC 5322, LF or CRLF line ends); standard input when absent.
    message: Option<PathBuf>,
    /// Envelope sender (MAIL FROM); `<>` for a bounce. Default: the address in From:, else
    /// <sender@example.org>.
    #[arg(long)]
    from: Option<String>,
    /// Envelope recipient (RCPT TO); repeat for several. Default: the addresses in To: and Cc:.
    /// An address without angle brackets is sent in them.
    #[arg(long = "rcpt")]
    rcpt: Vec<String>,
    /// The HELO/EHLO name.
    #[arg(long, default_value = "client.example.com")]
    helo: String,
    /// The SMTP client, as Postfix logs it: `NAME[IP]`, `IP`, or `NAME`.
    #[arg(long, default_value = "client.example.com[192.0.2.1]")]
    client: String,
    /// The client's TCP port.
    #[arg(long, default_value_t = 50_000)]
    client_port: u16,
    /// Which MTA to imitate.
    #[arg(long, value_enum, default_value = "postfix")]
    profile: ProfileName,
    /// An extra macro: `NAME=VALUE` (sent with CONNECT) or `STAGE:NAME=VALUE` with STAGE one of
    /// C H M R T N E (CONNECT, HELO, MAIL, RCPT, DATA, EOH, EOM). Repeatable.
    #[arg(long = "macro")]
    macros: Vec<String>,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
    /// Write the resulting message to this file.
    #[arg(long)]
    output: Option<PathBuf>,
    /// Longest wait, in seconds, to connect, to negotiate, and for each reply (progress restarts
    /// it). Default: Postfix's, 30 s to connect and negotiate, 300 s per reply.
    #[arg(long, value_parser = seconds)]
    timeout: Option<Duration>,
}

/// Seconds as a [`Duration`]: a positive number, fractions allowed (`0.5`).
pub(crate) fn seconds(s: &str) -> Result<Duration, String> {
    let n: f64 = s
        .parse()
        .map_err(|_| format!("{s:?} is not a number of seconds"))?;
    if n <= 0.0 {
        return Err(format!("{s:?}: must be more than 0 seconds"));
    }
    Duration::try_from_secs_f64(n).map_err(|e| format!("{s:?}: {e}"))
}

/// Connects to the milter at `spec` and negotiates, within `timeout` if given (else Postfix's
/// 30 s), and sets the reply timeout to it (else Postfix's 300 s).
pub(crate) async fn open(
    spec: &str,
    profile: Profile,
    timeout: Option<Duration>,
) -> Result<Connection, milterkit::Error> {
    let connect = timeout.unwrap_or(milterkit::mta::CONNECT_TIMEOUT);
    let conn = Connection::open_with_timeout(spec, profile, connect).await?;
    Ok(conn.with_reply_timeout(timeout.unwrap_or(milterkit::mta::REPLY_TIMEOUT)))
}

/// clap's default help layout, with the text after the arguments (examples) left out: it goes
/// in verbatim instead (see [`examples_verbatim`]).
const HELP_TEMPLATE: &str = "\
{before-help}{about-with-newline}
{usage-heading} {usage}

{all-args}";

/// The command with each (sub)command's `after_help` (its examples) put in the help template as
/// literal text, which clap does not wrap: an example line stays whole at any terminal width,
/// so it can be copied and pasted.
fn examples_verbatim(cmd: clap::Command) -> clap::Command {
    let after = cmd.get_after_help().map(ToString::to_string);
    let cmd = cmd.mut_subcommands(examples_verbatim);
    match after {
        Some(text) => cmd.help_template(format!("{HELP_TEMPLATE}\n\n{text}")),
        None => cmd,
    }
}

/// The parsed command line (exits with clap's usage error or help).
fn parse() -> Cli {
    use clap::{CommandFactory, FromArgMatches};
    let matches = examples_verbatim(Cli::command()).get_matches();
    Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit())
}

fn main() -> ExitCode {
    let cli = parse();
    let command = match cli.command {
        // A daemon: its own runtime and log setup.
        Cmd::Chain(args) => return chain::chain(args),
        other => other,
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("milterkit: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let result = runtime.block_on(async {
        match command {
            Cmd::Chain(_) => unreachable!("served above"),
            Cmd::Demo => demo().await,
            Cmd::Run(args) => run(args).await,
            Cmd::Bench(args) => bench::bench(args).await,
            Cmd::Test(args) => cases::test(args).await,
        }
    });
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("milterkit: {e}");
            let mut source = std::error::Error::source(e.as_ref());
            while let Some(s) = source {
                eprintln!("  caused by: {s}");
                source = s.source();
            }
            ExitCode::from(1)
        }
    }
}

/// The exit status for a verdict (see `milterkit run --help`).
fn exit_code(v: Option<&Verdict>) -> u8 {
    match v {
        Some(Verdict::Reject(_)) => 3,
        Some(Verdict::Tempfail(_)) => 4,
        Some(Verdict::Discard) => 5,
        _ => 0,
    }
}

/// `NAME[IP]`, `IP` or `NAME`.
fn parse_client(s: &str) -> (Option<String>, Option<IpAddr>) {
    if let Some((name, rest)) = s.split_once('[') {
        let ip = rest
            .trim_end_matches(']')
            .trim_start_matches("IPv6:")
            .parse()
            .ok();
        let name = (!name.is_empty()).then(|| name.to_owned());
        return (name, ip);
    }
    match s.parse::<IpAddr>() {
        Ok(ip) => (None, Some(ip)),
        Err(_) => (Some(s.to_owned()), None),
    }
}

/// An envelope address from the command line, put in angle brackets if it was not, with a note
/// on standard error.
fn envelope_address(flag: &str, given: &str) -> String {
    match envelope::bracketed(given) {
        Some(b) => {
            eprintln!("milterkit: note: {flag} {given} is sent as {b}");
            b
        }
        None => given.to_owned(),
    }
}

fn build_transaction(args: &RunArgs, message: Bytes) -> Result<Transaction, String> {
    let (name, ip) = parse_client(&args.client);
    let from = match &args.from {
        Some(f) => envelope_address("--from", f),
        None => envelope::header_sender(&message).unwrap_or_else(|| "<sender@example.org>".into()),
    };
    // `<address> ARG …`: the ESMTP arguments go apart, as an MTA sends them.
    let (from, from_args) = envelope::split_envelope(&from);
    let mut tx = Transaction::new()
        .from_with_args(from, from_args)
        .helo(&args.helo)
        .client(name.as_deref(), ip, args.client_port)
        .message(message.clone());
    let rcpts = if args.rcpt.is_empty() {
        envelope::header_recipients(&message)
    } else {
        if args.rcpt.iter().any(|r| r.trim().is_empty()) {
            return Err("--rcpt: an empty recipient".into());
        }
        args.rcpt
            .iter()
            .map(|r| envelope_address("--rcpt", r))
            .collect()
    };
    if rcpts.is_empty() {
        return Err("no recipient: give --rcpt or a message with To: or Cc:".into());
    }
    for r in rcpts {
        let (address, args) = envelope::split_envelope(&r);
        tx = tx.to_with_args(address, args);
    }
    for m in &args.macros {
        let (stage, pair) = match m.split_once(':') {
            Some((s, p)) if s.len() == 1 && !p.is_empty() && !s.starts_with('{') => {
                (s.as_bytes()[0], p)
            }
            _ => (b'C', m.as_str()),
        };
        let Some((name, value)) = pair.split_once('=').filter(|(n, _)| !n.is_empty()) else {
            return Err(format!("--macro {m:?}: expected NAME=VALUE"));
        };
        let stage = match Stage::from_code(stage) {
            Some(s) if b"CHMRTNE".contains(&stage) => s,
            _ => return Err(format!("--macro {m:?}: stage must be one of C H M R T N E")),
        };
        tx = tx.with_macro(stage, name, value);
    }
    Ok(tx)
}

async fn run(args: RunArgs) -> Result<u8, milterkit::BoxError> {
    let message = match &args.message {
        Some(p) => std::fs::read(p).map_err(|source| CliError::ReadMessage {
            path: p.clone(),
            source,
        })?,
        None => {
            let mut buf = Vec::new();
            std::io::Read::read_to_end(&mut std::io::stdin(), &mut buf)
                .map_err(CliError::ReadStdin)?;
            buf
        }
    };
    // An mbox file's separator line ("From sender date"), as mail clients save messages: not
    // part of the message (Postfix's sendmail command drops it too).
    let message = match envelope::without_mbox_separator(&message) {
        Some(rest) => {
            eprintln!("milterkit: note: the first line is an mbox \"From \" line; it is not sent");
            rest.to_vec()
        }
        None => message,
    };
    envelope::check_message(&message).map_err(|reason| CliError::NotAMessage {
        what: match &args.message {
            Some(p) => p.display().to_string(),
            None => "standard input".into(),
        },
        reason,
    })?;
    let message = Bytes::from(message);
    let tx = build_transaction(&args, message.clone()).map_err(CliError::Input)?;
    let mut conn = open(&args.socket, args.profile.profile(), args.timeout)
        .await
        .map_err(CliError::Open)?;
    let spec = || args.socket.clone();
    let out = conn.run(&tx).await.map_err(|source| CliError::Run {
        spec: spec(),
        source,
    })?;
    conn.quit().await.map_err(|source| CliError::Quit {
        spec: spec(),
        source,
    })?;
    if let (Some(path), Some(d)) = (&args.output, &out.delivery) {
        std::fs::write(path, &d.message).map_err(|source| CliError::WriteOutput {
            path: path.clone(),
            source,
        })?;
    }
    if args.json {
        print(&(serde_json::to_string_pretty(&report::to_json(&out))? + "\n"))?;
    } else {
        let style = report::Style {
            colour: std::io::stdout().is_terminal(),
        };
        print(&report::human(&out, &message, style))?;
    }
    Ok(exit_code(out.verdict.as_ref()))
}

/// The two bundled sample messages.
const SAMPLES: [(&str, &str); 2] = [
    ("newsletter.eml", include_str!("../samples/newsletter.eml")),
    ("lottery.eml", include_str!("../samples/lottery.eml")),
];

async fn demo() -> Result<u8, milterkit::BoxError> {
    let served = demo_milter::Served::start(milterkit::bind("inet:0@127.0.0.1").await?)?;
    let spec = &served.spec;
    let style = report::Style {
        colour: std::io::stdout().is_terminal(),
    };
    print(&format!(
        "The example policy milter (as in milterkit/examples/policy.rs) listens on {spec}.\n\
         It refuses recipients at old.example, quarantines subjects that mention \"lottery\",\n\
         and stamps every message with X-Policy. Two messages go through it as Postfix would send them.\n\n"
    ))?;
    for (name, text) in SAMPLES {
        let message = Bytes::from(text.replace('\n', "\r\n"));
        let mut tx = Transaction::new()
            .from("<sender@example.org>")
            .message(message.clone());
        for r in envelope::header_recipients(&message) {
            tx = tx.to(r);
        }
        print(&format!("=== {name} ===\n"))?;
        let mut conn = Connection::open(spec, Profile::postfix()).await?;
        let out = conn.run(&tx).await?;
        conn.quit().await?;
        print(&(report::human(&out, &message, style) + "\n"))?;
    }
    served.stop().await?;
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_clients_as_postfix_logs_them() {
        assert_eq!(
            parse_client("mx.example.com[192.0.2.7]"),
            (
                Some("mx.example.com".into()),
                Some("192.0.2.7".parse().unwrap())
            )
        );
        assert_eq!(
            parse_client("[IPv6:2001:db8::1]"),
            (None, Some("2001:db8::1".parse().unwrap()))
        );
        assert_eq!(
            parse_client("192.0.2.9"),
            (None, Some("192.0.2.9".parse().unwrap()))
        );
        assert_eq!(parse_client("unknown"), (Some("unknown".into()), None));
    }

    #[test]
    fn the_command_line_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
        examples_verbatim(Cli::command()).debug_assert();
    }
}
