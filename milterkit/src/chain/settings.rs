//! The chain's configuration: [`Settings`] (a TOML file) and each [`Child`] in it.

use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use crate::daemon::parse_duration;
use crate::listener::SocketSpec;
use crate::mta::{Mta, Profile};

/// Why a chain configuration cannot be used. Each error names the file and, where it can, the
/// line and the child milter.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SettingsError {
    /// The file cannot be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The system's error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML, or does not have the chain's shape (an unknown key, a value
    /// of the wrong type). The message has the line and column.
    #[error("{path}: {message}")]
    Parse {
        /// The file (`<string>` for [`Settings::from_toml`]).
        path: String,
        /// What the TOML parser said, with the line.
        message: String,
    },
    /// The file parses but something in it cannot work.
    #[error("{path}: {what}")]
    Invalid {
        /// The file.
        path: String,
        /// What is wrong, naming the milter.
        what: String,
    },
}

/// Which MTA the chain sits behind: the macro lists it asks for on its children's behalf
/// follow that MTA's defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MtaName {
    /// Postfix (the default).
    #[default]
    Postfix,
    /// Sendmail.
    Sendmail,
}

impl MtaName {
    /// The MTA side's profile of this MTA.
    pub fn profile(self) -> Profile {
        match self {
            MtaName::Postfix => Profile::postfix(),
            MtaName::Sendmail => Profile::sendmail(),
        }
    }

    /// The core's name for it.
    pub fn mta(self) -> Mta {
        match self {
            MtaName::Postfix => Mta::Postfix,
            MtaName::Sendmail => Mta::Sendmail,
        }
    }
}

/// What the chain does for a child that is down (cannot be connected to or negotiated with),
/// slow (past its timeout) or broken (a protocol error, or it closed the connection), at the
/// stage where that happens. Tempfail and reject stand for the rest of the message: every later
/// recipient the child filters, and the message once one of those was accepted. A later message
/// on the same connection tries the child again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FailSafe {
    /// 4xx for the stage (the default): the client retries later, no mail is lost or passes
    /// unfiltered.
    #[default]
    Tempfail,
    /// 5xx for the stage: the client gives up.
    Reject,
    /// Go on without this child: the mail passes unfiltered by it.
    Skip,
}

impl FailSafe {
    /// `tempfail`, `reject` or `skip`, as in the file and the metrics.
    pub fn name(self) -> &'static str {
        match self {
            FailSafe::Tempfail => "tempfail",
            FailSafe::Reject => "reject",
            FailSafe::Skip => "skip",
        }
    }
}

/// Whether a child's decisions count.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Its decisions and modifications are merged into the chain's (the default).
    #[default]
    Enforce,
    /// Its decisions and modifications are logged and counted, never sent to the MTA; its
    /// failures never use its fail-safe. For trying a new filter on live mail.
    Evaluate,
}

impl Mode {
    /// `enforce` or `evaluate`, as in the file and the metrics.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Enforce => "enforce",
            Mode::Evaluate => "evaluate",
        }
    }
}

/// An address block: `192.0.2.0/24`, `2001:db8::/32`, or one address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Net {
    addr: IpAddr,
    prefix: u8,
}

impl std::str::FromStr for Net {
    type Err = String;
    fn from_str(s: &str) -> Result<Net, String> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr
            .trim()
            .parse()
            .map_err(|_| format!("{s:?} is not an address or block such as 192.0.2.0/24"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => match p.trim().parse::<u8>() {
                Ok(p) if p <= max => p,
                _ => return Err(format!("{s:?}: the prefix length must be 0 to {max}")),
            },
        };
        Ok(Net { addr, prefix })
    }
}

impl Net {
    /// True if `ip` is in the block (an IPv4-mapped IPv6 address counts as its IPv4 address).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        let (net, ip, bits) = match (self.addr, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => (u32::from(n) as u128, u32::from(a) as u128, 32),
            (IpAddr::V6(n), IpAddr::V6(a)) => (u128::from(n), u128::from(a), 128),
            _ => return false,
        };
        let host_bits = bits - u32::from(self.prefix);
        host_bits >= bits || (net ^ ip) >> host_bits == 0
    }
}

/// As written in the file: `192.0.2.0/24`, `2001:db8::/32`.
///
/// ```
/// use milterkit::chain::Net;
/// let net: Net = "10.1.2.3/8".parse().unwrap();
/// assert_eq!(net.to_string(), "10.1.2.3/8");
/// ```
impl std::fmt::Display for Net {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl<'de> Deserialize<'de> for Net {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Net, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// When a child takes part: every condition given must hold; none given, always. Kept
/// declarative on purpose: no scripting.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct When {
    /// Only for SMTP clients in these blocks (decided at CONNECT). Local submissions count
    /// with the address the MTA gives them (Postfix's `non_smtpd_milters`: 127.0.0.1); a client
    /// without an IP address is in no block.
    #[serde(default, deserialize_with = "nets")]
    pub client: Vec<Net>,
    /// Never for SMTP clients in these blocks.
    #[serde(default, deserialize_with = "nets")]
    pub not_client: Vec<Net>,
    /// `true`: only for messages whose sender authenticated (the `{auth_authen}` macro at MAIL,
    /// which Postfix and Sendmail send by default); `false`: only for the others.
    #[serde(default)]
    pub authenticated: Option<bool>,
    /// Only for recipients in these domains (exact, case-insensitive; `.example.org` also
    /// matches its subdomains). The child sees only those recipients, and a message with none of
    /// them not at all: its MAIL is sent with the first matching recipient.
    #[serde(default, deserialize_with = "domains")]
    pub rcpt_domain: Vec<String>,
}

impl When {
    /// True if a client at `ip` (`None`: no IP address) passes `client` and `not_client`.
    pub fn admits_client(&self, ip: Option<IpAddr>) -> bool {
        let listed = |nets: &[Net]| ip.is_some_and(|ip| nets.iter().any(|n| n.contains(ip)));
        (self.client.is_empty() || listed(&self.client)) && !listed(&self.not_client)
    }

    /// True if a sender that did (`true`) or did not authenticate passes `authenticated`.
    pub fn admits_sender(&self, authenticated: bool) -> bool {
        self.authenticated.is_none_or(|want| want == authenticated)
    }

    /// True if the recipient `rcpt` (as in RCPT TO: `<bob@example.org>`, maybe with brackets
    /// and parameters stripped already) passes `rcpt_domain`.
    pub fn admits_rcpt(&self, rcpt: &[u8]) -> bool {
        if self.rcpt_domain.is_empty() {
            return true;
        }
        let rcpt = String::from_utf8_lossy(rcpt);
        let rcpt = rcpt.trim().trim_start_matches('<').trim_end_matches('>');
        let Some((_, domain)) = rcpt.rsplit_once('@') else {
            return false;
        };
        let domain = domain.trim_end_matches('.').to_ascii_lowercase();
        self.rcpt_domain.iter().any(|want| {
            let want = want.to_ascii_lowercase();
            match want.strip_prefix('.') {
                Some(parent) => domain == parent || domain.ends_with(&want),
                None => domain == want,
            }
        })
    }

    /// True if the recipient condition is set (MAIL then waits for a matching recipient).
    pub fn by_rcpt(&self) -> bool {
        !self.rcpt_domain.is_empty()
    }
}

/// A timeout: text (`"500ms"`, `"1.5s"`, `"2m"`) or a number of seconds, more than 0.
fn duration<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    struct Timeout;
    impl serde::de::Visitor<'_> for Timeout {
        type Value = Duration;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a timeout such as \"500ms\", \"5s\", \"2m\" or a number of seconds")
        }
        fn visit_u64<E: serde::de::Error>(self, n: u64) -> Result<Duration, E> {
            Ok(Duration::from_secs(n))
        }
        fn visit_i64<E: serde::de::Error>(self, n: i64) -> Result<Duration, E> {
            u64::try_from(n)
                .map(Duration::from_secs)
                .map_err(|_| E::custom("a timeout must be more than 0"))
        }
        fn visit_f64<E: serde::de::Error>(self, n: f64) -> Result<Duration, E> {
            Duration::try_from_secs_f64(n).map_err(|_| {
                E::custom(if n > 0.0 {
                    "the timeout is too long"
                } else {
                    "a timeout must be more than 0"
                })
            })
        }
        fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Duration, E> {
            parse_duration(s).map_err(E::custom)
        }
    }
    let d = d.deserialize_any(Timeout)?;
    if d.is_zero() {
        return Err(serde::de::Error::custom("a timeout must be more than 0"));
    }
    Ok(d)
}

/// Deserializes a string and checks it with `check`, so that the error has the value's line.
fn checked<'de, D: serde::Deserializer<'de>>(
    d: D,
    check: fn(&str) -> Result<(), String>,
) -> Result<String, D::Error> {
    let s = String::deserialize(d)?;
    check(&s).map_err(serde::de::Error::custom)?;
    Ok(s)
}

fn name<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    checked(d, check_name)
}

fn socket<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    checked(d, check_socket)
}

fn domains<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    let list = Vec::<String>::deserialize(d)?;
    if list.is_empty() {
        return Err(serde::de::Error::custom(EMPTY_LIST));
    }
    for domain in &list {
        check_domain(domain).map_err(serde::de::Error::custom)?;
    }
    Ok(list)
}

fn message_size<'de, D: serde::Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
    let n = usize::deserialize(d)?;
    if n < Settings::MIN_MESSAGE_SIZE {
        return Err(serde::de::Error::custom(format!(
            "max_message_size must be at least {} bytes",
            Settings::MIN_MESSAGE_SIZE
        )));
    }
    Ok(n)
}

/// An empty list in `when` would read as "never" but mean "always": not allowed.
const EMPTY_LIST: &str = "an empty list: leave the key out for no condition";

fn nets<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<Net>, D::Error> {
    let list = Vec::<Net>::deserialize(d)?;
    if list.is_empty() {
        return Err(serde::de::Error::custom(EMPTY_LIST));
    }
    Ok(list)
}

/// A child's name: letters, digits, `-`, `_`, `.`.
fn check_name(name: &str) -> Result<(), String> {
    let good = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
    if name.is_empty() || !name.chars().all(good) {
        return Err(format!(
            "name {name:?} must be letters, digits, '-', '_' or '.'"
        ));
    }
    Ok(())
}

/// A child's socket: a spec the MTA side can connect to whatever the daemon's working folder.
fn check_socket(spec: &str) -> Result<(), String> {
    match spec.parse::<SocketSpec>().map_err(|e| e.to_string())? {
        SocketSpec::Unix(path) if path.is_relative() => Err(format!(
            "{spec:?}: the path of a unix socket must be absolute (unix:/run/…)"
        )),
        SocketSpec::Inet { port: 0, .. } => Err(format!("{spec:?}: port 0 cannot be connected to")),
        _ => Ok(()),
    }
}

/// An `rcpt_domain` entry: a domain, or `.domain` for it and its subdomains. Labels of letters
/// (any script), digits and inner hyphens, as in an address's domain.
fn check_domain(domain: &str) -> Result<(), String> {
    let bare = domain.strip_prefix('.').unwrap_or(domain);
    let label = |l: &str| {
        !l.is_empty()
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.chars().all(|c| c.is_alphanumeric() || c == '-')
    };
    if bare.ends_with('.') && bare.len() > 1 && bare[..bare.len() - 1].split('.').all(label) {
        return Err(format!(
            "rcpt_domain {domain:?}: write it without the trailing dot"
        ));
    }
    if !bare.split('.').all(label) {
        return Err(format!(
            "rcpt_domain {domain:?} is not a domain such as \"example.org\" or \".example.org\""
        ));
    }
    Ok(())
}

fn default_connect_timeout() -> Duration {
    Child::CONNECT_TIMEOUT
}
fn default_command_timeout() -> Duration {
    Child::COMMAND_TIMEOUT
}
fn default_eom_timeout() -> Duration {
    Child::EOM_TIMEOUT
}

/// One child milter: where it listens, how long to wait for it, what to do when it fails,
/// whether its decisions count, and when it takes part.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct Child {
    /// Its name in logs and metrics: letters, digits, `-`, `_`, `.`; unique in the chain.
    #[serde(deserialize_with = "name")]
    pub name: String,
    /// Its socket: `inet:PORT@HOST`, `inet:HOST:PORT`, `inet6:PORT@HOST`, `unix:/path` (an
    /// absolute path).
    #[serde(deserialize_with = "socket")]
    pub socket: String,
    /// Longest wait to connect and for its answer to OPTNEG, each. Default 5 s.
    #[serde(default = "default_connect_timeout", deserialize_with = "duration")]
    pub connect_timeout: Duration,
    /// Longest wait for its reply to any command but end of message. Default 5 s.
    #[serde(default = "default_command_timeout", deserialize_with = "duration")]
    pub command_timeout: Duration,
    /// Longest wait for a reply to end of message (its progress packets restart the wait).
    /// Default 60 s.
    #[serde(default = "default_eom_timeout", deserialize_with = "duration")]
    pub eom_timeout: Duration,
    /// What the chain does when this child is down, slow or broken. Default tempfail.
    #[serde(default)]
    pub fail_safe: FailSafe,
    /// Enforce (the default) or only evaluate its decisions.
    #[serde(default)]
    pub mode: Mode,
    /// When it takes part (default: always).
    #[serde(default)]
    pub when: When,
}

impl Child {
    /// Default [`Child::connect_timeout`].
    pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
    /// Default [`Child::command_timeout`].
    pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(5);
    /// Default [`Child::eom_timeout`].
    pub const EOM_TIMEOUT: Duration = Duration::from_secs(60);

    /// A child with the default timeouts, fail-safe (tempfail) and mode (enforce), always taking
    /// part; change the public fields for the rest.
    ///
    /// ```
    /// use milterkit::chain::{Child, FailSafe, Mode};
    /// let mut spam = Child::new("spam", "inet:7357@127.0.0.1");
    /// spam.fail_safe = FailSafe::Skip;
    /// spam.mode = Mode::Evaluate;
    /// ```
    pub fn new(name: impl Into<String>, socket: impl Into<String>) -> Child {
        Child {
            name: name.into(),
            socket: socket.into(),
            connect_timeout: Child::CONNECT_TIMEOUT,
            command_timeout: Child::COMMAND_TIMEOUT,
            eom_timeout: Child::EOM_TIMEOUT,
            fail_safe: FailSafe::default(),
            mode: Mode::default(),
            when: When::default(),
        }
    }
}

/// A chain: which MTA it sits behind and its child milters, in the order every command goes to
/// them. Read from TOML ([`Settings::load`]) or built in code.
///
/// ```
/// use milterkit::chain::{FailSafe, Mode, Settings};
/// let settings = Settings::from_toml(r#"
///     mta = "postfix"
///
///     [[milter]]
///     name = "dkim"
///     socket = "inet:8891@127.0.0.1"
///     fail_safe = "skip"
///
///     [[milter]]
///     name = "spam"
///     socket = "unix:/run/spamd/milter.sock"
///     command_timeout = "2s"
///     mode = "evaluate"
///     when = { not_client = ["10.0.0.0/8"], rcpt_domain = ["example.org"] }
/// "#).unwrap();
/// assert_eq!(settings.milters.len(), 2);
/// assert_eq!(settings.milters[0].fail_safe, FailSafe::Skip);
/// assert_eq!(settings.milters[1].mode, Mode::Evaluate);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct Settings {
    /// The MTA in front of the chain. Default postfix.
    #[serde(default)]
    pub mta: MtaName,
    /// The children, in order (`[[milter]]` tables in the file).
    #[serde(rename = "milter", default)]
    pub milters: Vec<Child>,
    /// The largest message (header fields and body, in bytes) the chain keeps to hand its
    /// children one after the other; a larger one is tempfailed (452 4.3.4). Default 64 MiB:
    /// above the default size limits of Postfix (10 MB) and Sendmail (none).
    #[serde(
        default = "default_max_message_size",
        deserialize_with = "message_size"
    )]
    pub max_message_size: usize,
}

fn default_max_message_size() -> usize {
    Settings::MAX_MESSAGE_SIZE
}

impl Settings {
    /// Default [`Settings::max_message_size`]: 64 MiB.
    pub const MAX_MESSAGE_SIZE: usize = 64 << 20;
    /// The smallest [`Settings::max_message_size`] a file may set: 1 KiB.
    pub const MIN_MESSAGE_SIZE: usize = 1024;

    /// Settings with these children behind Postfix, checked as a file is.
    ///
    /// ```
    /// use milterkit::chain::{Child, Settings};
    /// let s = Settings::new(vec![Child::new("a", "inet:7357@127.0.0.1")]).unwrap();
    /// assert!(Settings::new(vec![]).is_err());
    /// ```
    pub fn new(milters: Vec<Child>) -> Result<Settings, SettingsError> {
        let s = Settings {
            mta: MtaName::default(),
            milters,
            max_message_size: Settings::MAX_MESSAGE_SIZE,
        };
        s.check("<settings>")?;
        Ok(s)
    }

    /// Reads and checks the TOML file at `path`.
    pub fn load(path: impl AsRef<Path>) -> Result<Settings, SettingsError> {
        let path = path.as_ref();
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| SettingsError::Read {
            path: name.clone(),
            source,
        })?;
        Settings::parse(&text, &name)
    }

    /// Reads and checks settings from TOML text.
    pub fn from_toml(text: &str) -> Result<Settings, SettingsError> {
        Settings::parse(text, "<string>")
    }

    fn parse(text: &str, path: &str) -> Result<Settings, SettingsError> {
        let s: Settings = toml::from_str(text).map_err(|e| SettingsError::Parse {
            path: path.to_owned(),
            message: e.to_string().trim_end().to_owned(),
        })?;
        s.check(path).map_err(|e| match e {
            // A name given twice: the line of the second.
            SettingsError::Invalid { path, what } => match twice(text, &s) {
                Some(line) => SettingsError::Invalid {
                    path,
                    what: format!("line {line}: {what}"),
                },
                None => SettingsError::Invalid { path, what },
            },
            other => other,
        })?;
        Ok(s)
    }

    /// What cannot work: no child, a name given twice or with odd characters, a socket that
    /// does not parse.
    fn check(&self, path: &str) -> Result<(), SettingsError> {
        let invalid = |what: String| SettingsError::Invalid {
            path: path.to_owned(),
            what,
        };
        if self.milters.is_empty() {
            return Err(invalid(
                "no child milter: add at least one [[milter]] table with a name and a socket"
                    .into(),
            ));
        }
        for (i, child) in self.milters.iter().enumerate() {
            check_name(&child.name).map_err(|e| invalid(format!("milter {}: {e}", i + 1)))?;
            check_socket(&child.socket)
                .map_err(|e| invalid(format!("milter {:?}: {e}", child.name)))?;
            for domain in &child.when.rcpt_domain {
                check_domain(domain)
                    .map_err(|e| invalid(format!("milter {:?}: {e}", child.name)))?;
            }
            if self.milters[..i].iter().any(|c| c.name == child.name) {
                return Err(invalid(format!("milter {:?} is named twice", child.name)));
            }
        }
        Ok(())
    }
}

/// The line of the second `name` of a child named twice in `text`, if there is one.
fn twice(text: &str, settings: &Settings) -> Option<usize> {
    #[derive(Deserialize)]
    struct Names {
        milter: Vec<Named>,
    }
    #[derive(Deserialize)]
    struct Named {
        name: toml::Spanned<String>,
    }
    let names: Names = toml::from_str(text).ok()?;
    let second = names.milter.iter().enumerate().find(|(i, n)| {
        settings.milters[..*i]
            .iter()
            .any(|c| c.name == *n.name.get_ref())
    })?;
    let start = second.1.name.span().start;
    Some(text.get(..start)?.matches('\n').count() + 1)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn blocks_match_their_addresses_only() {
        let net: Net = "192.0.2.0/24".parse().unwrap();
        assert!(net.contains("192.0.2.77".parse().unwrap()));
        assert!(net.contains("::ffff:192.0.2.1".parse().unwrap()));
        assert!(!net.contains("192.0.3.1".parse().unwrap()));
        assert!(!net.contains("2001:db8::1".parse().unwrap()));
        let v6: Net = "2001:db8::/32".parse().unwrap();
        assert!(v6.contains("2001:db8:1::5".parse().unwrap()));
        assert!(!v6.contains("2001:db9::5".parse().unwrap()));
        let all: Net = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains("203.0.113.9".parse().unwrap()));
        let one: Net = "127.0.0.1".parse().unwrap();
        assert!(one.contains("127.0.0.1".parse().unwrap()));
        assert!(!one.contains("127.0.0.2".parse().unwrap()));
        assert!("10.0.0.0/33".parse::<Net>().is_err());
        assert!("example.org".parse::<Net>().is_err());
    }

    #[test]
    fn conditions_hold_as_documented() {
        let when = When {
            client: vec!["192.0.2.0/24".parse().unwrap()],
            not_client: vec!["192.0.2.9".parse().unwrap()],
            authenticated: Some(false),
            rcpt_domain: vec!["Example.org".into(), ".lists.example.net".into()],
        };
        assert!(when.admits_client(Some("192.0.2.1".parse().unwrap())));
        assert!(!when.admits_client(Some("192.0.2.9".parse().unwrap())));
        assert!(!when.admits_client(None));
        assert!(when.admits_sender(false) && !when.admits_sender(true));
        assert!(when.admits_rcpt(b"<bob@example.ORG>"));
        assert!(when.admits_rcpt(b"<a@lists.example.net>"));
        assert!(when.admits_rcpt(b"<a@x.lists.example.net>"));
        assert!(!when.admits_rcpt(b"<a@notexample.org>"));
        assert!(!when.admits_rcpt(b"<postmaster>"));
        let always = When::default();
        assert!(always.admits_client(None) && always.admits_sender(true));
        assert!(always.admits_rcpt(b"<postmaster>"));
    }

    #[test]
    fn a_file_gets_its_defaults_and_bad_ones_say_why() {
        let s = Settings::from_toml(
            "[[milter]]\nname = \"a\"\nsocket = \"inet:1@127.0.0.1\"\neom_timeout = 90\n",
        )
        .unwrap();
        let a = &s.milters[0];
        assert_eq!(s.mta, MtaName::Postfix);
        assert_eq!(a.connect_timeout, Child::CONNECT_TIMEOUT);
        assert_eq!(a.eom_timeout, Duration::from_secs(90));
        assert_eq!((a.fail_safe, a.mode), (FailSafe::Tempfail, Mode::Enforce));

        let err = |text: &str| Settings::from_toml(text).unwrap_err().to_string();
        assert!(err("").contains("no child milter"), "{}", err(""));
        let typo = err("[[milter]]\nname = \"a\"\nsocket = \"inet:1@h\"\nfailsafe = \"skip\"\n");
        assert!(
            typo.contains("failsafe") && typo.contains("line 4"),
            "{typo}"
        );
        let twice = err("[[milter]]\nname = \"a\"\nsocket = \"inet:1@h\"\n[[milter]]\nname = \"a\"\nsocket = \"inet:2@h\"\n");
        assert_eq!(twice, "<string>: line 5: milter \"a\" is named twice");
        // What one value gets wrong is said with its line.
        let at_line_3 = |key_value: &str, says: &str| {
            let e = err(&format!("[[milter]]\nname = \"a\"\n{key_value}\n"));
            assert!(e.contains("line 3") && e.contains(says), "{key_value}: {e}");
        };
        at_line_3("socket = \"tcp:1\"", "unknown protocol");
        at_line_3("socket = \"unix:milter.sock\"", "must be absolute");
        at_line_3("socket = \"inet:0@127.0.0.1\"", "port 0");
        let e = err("[[milter]]\nname = \"a b\"\nsocket = \"inet:1@h\"\n");
        assert!(e.contains("line 2") && e.contains("must be letters"), "{e}");
        for bad in [
            "\"\"",
            "\"@example.org\"",
            "\"exa mple.org\"",
            "\"..org\"",
            "\"example..org\"",
            "\"[192.0.2.1]\"",
            "\"-bad.org\"",
            "\"ex_ample.org\"",
        ] {
            let e = err(&format!(
                "[[milter]]\nname = \"a\"\nsocket = \"inet:1@h\"\nwhen = {{ rcpt_domain = [{bad}] }}\n"
            ));
            assert!(e.contains("line 4") && e.contains("is not a domain"), "{e}");
        }
        let e = err("[[milter]]\nname = \"a\"\nsocket = \"inet:1@h\"\nwhen = { rcpt_domain = [\"example.org.\"] }\n");
        assert!(e.contains("line 4") && e.contains("trailing dot"), "{e}");
        for key in ["rcpt_domain", "client", "not_client"] {
            let e = err(&format!(
                "[[milter]]\nname = \"a\"\nsocket = \"inet:1@h\"\nwhen = {{ {key} = [] }}\n"
            ));
            assert!(
                e.contains("line 4") && e.contains("an empty list"),
                "{key}: {e}"
            );
        }
        assert!(
            Settings::from_toml("[[milter]]\nname = \"a\"\nsocket = \"inet:1@h\"\nwhen = { rcpt_domain = [\".Bücher.example\", \"xn--bcher-kva.example\", \"a-b.example\"] }\n").is_ok()
        );
        let e = err("max_message_size = 0\n[[milter]]\nname = \"a\"\nsocket = \"inet:1@h\"\n");
        assert!(e.contains("line 1") && e.contains("at least 1024"), "{e}");
        // Timeouts: text with a fraction, seconds as a number, never 0 or less.
        let timeout = |value: &str| {
            Settings::from_toml(&format!(
                "[[milter]]\nname = \"a\"\nsocket = \"inet:1@h\"\ncommand_timeout = {value}\n"
            ))
            .map(|s| s.milters[0].command_timeout)
            .map_err(|e| e.to_string())
        };
        assert_eq!(timeout("\"0.5s\""), Ok(Duration::from_millis(500)));
        assert_eq!(timeout("1.5"), Ok(Duration::from_millis(1500)));
        assert_eq!(timeout("7"), Ok(Duration::from_secs(7)));
        for bad in ["-5", "0", "-1.5", "\"0s\""] {
            let e = timeout(bad).unwrap_err();
            assert!(
                e.contains("line 4") && e.contains("more than 0"),
                "{bad}: {e}"
            );
        }
        for huge in ["1e300", "inf"] {
            let e = timeout(huge).unwrap_err();
            assert!(e.contains("too long"), "{huge}: {e}");
        }
        let e = timeout("true").unwrap_err();
        assert!(e.contains("a timeout such as"), "{e}");
        let time = err(
            "[[milter]]\nname = \"a\"\nsocket = \"inet:1@h\"\ncommand_timeout = \"5 parsecs\"\n",
        );
        assert!(time.contains("unknown unit"), "{time}");
        let net = err(
            "[[milter]]\nname = \"a\"\nsocket = \"inet:1@h\"\nwhen = { client = [\"10/8\"] }\n",
        );
        assert!(net.contains("10/8"), "{net}");
        let fs = err("[[milter]]\nname = \"a\"\nsocket = \"inet:1@h\"\nfail_safe = \"accept\"\n");
        assert!(fs.contains("accept"), "{fs}");
    }
}
