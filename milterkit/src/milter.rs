//! The [`Milter`] trait and the arguments each stage hands to it.

use std::fmt;
use std::future::Future;
use std::net::IpAddr;
use std::str::Utf8Error;

use milterkit_proto::command::{Connect as ConnectCmd, Envelope, Family};
use milterkit_proto::{Actions, Decision, Macros, Offer, Request, Stages};

use crate::eom::Eom;
use crate::Result;

/// A mail filter. One value serves one MTA connection (a factory makes it); its fields are the
/// connection's state. [`Milter::Message`] is the state of one message.
///
/// Every stage has a method with a default body that answers [`Decision::Continue`]; implement the
/// ones you need as plain `async fn`. [`#[milterkit::milter]`](crate::milter) on the `impl` block
/// sets [`Milter::STAGES`] from them, so the MTA skips the others (or declare `STAGES` yourself:
/// the attribute then checks it). Connection-level stages (`connect`, `helo`, `unknown`, `close`) do not see the message
/// state; `abort` takes it by value.
///
/// A handler that returns `Err`, panics, or runs past its deadline gives the configured fail-safe
/// decision (tempfail by default) for that stage, and only that connection is closed.
///
/// ```
/// use milterkit::{Decision, Eom, Milter, Rcpt, Reply, Result, Stages, Actions};
///
/// #[derive(Default)]
/// struct Guard { messages: u32 }
///
/// #[milterkit::milter]
/// impl Milter for Guard {
///     type Message = Vec<String>;
///     const ACTIONS: Actions = Actions::ADD_HEADER;
///
///     async fn rcpt(&mut self, refused: &mut Vec<String>, rcpt: Rcpt<'_>) -> Result<Decision> {
///         let addr = rcpt.address().to_str()?;
///         if addr.ends_with("@old.example>") {
///             refused.push(addr.to_owned());
///             return Ok(Decision::Reply(Reply::new(550, "5.1.6", "mailbox has moved")?));
///         }
///         Ok(Decision::Continue)
///     }
///
///     async fn eom(&mut self, refused: &mut Vec<String>, eom: &mut Eom<'_>) -> Result<Decision> {
///         self.messages += 1;
///         eom.add_header("X-Guard", format!("msg={} refused={}", self.messages, refused.len()))?;
///         Ok(Decision::Continue)
///     }
/// }
/// ```
pub trait Milter: Send + 'static {
    /// Per-message state: created (with `Default`) when a message starts, dropped when it ends
    /// (end of message, a decision that ends it) or handed to [`Milter::abort`].
    type Message: Default + Send + 'static;

    /// The stages this milter handles; the MTA is asked not to send the others (it always sends
    /// end of message). Default: every stage; with [`#[milterkit::milter]`](crate::milter), the
    /// stages of the handlers implemented.
    const STAGES: Stages = Stages::all();

    /// The modifications this milter may make at end of message (`SMFIF_*` given to
    /// `smfi_register`). The MTA must offer them all, or the connection is refused.
    #[doc(alias = "smfi_register")]
    const ACTIONS: Actions = Actions::empty();

    /// Adjusts this connection's request after seeing the MTA's offer (`xxfi_negotiate`): macro
    /// lists, no-reply stages, leading-space headers, rejected recipients, SKIP. The request starts
    /// from [`Milter::STAGES`] and [`Milter::ACTIONS`].
    #[doc(alias = "xxfi_negotiate")]
    fn negotiate(
        &mut self,
        offer: &Offer,
        request: &mut Request,
    ) -> impl Future<Output = Result<()>> + Send {
        let _ = (offer, request);
        async { Ok(()) }
    }

    /// A client connected to the MTA (`xxfi_connect`).
    #[doc(alias = "xxfi_connect")]
    fn connect(&mut self, connect: Connect<'_>) -> impl Future<Output = Result<Decision>> + Send {
        let _ = connect;
        async { Ok(Decision::Continue) }
    }

    /// HELO or EHLO, possibly more than once per connection (`xxfi_helo`).
    #[doc(alias = "xxfi_helo")]
    fn helo(&mut self, helo: Helo<'_>) -> impl Future<Output = Result<Decision>> + Send {
        let _ = helo;
        async { Ok(Decision::Continue) }
    }

    /// MAIL FROM: a message starts (`xxfi_envfrom`).
    #[doc(alias = "xxfi_envfrom")]
    fn mail(
        &mut self,
        message: &mut Self::Message,
        mail: Mail<'_>,
    ) -> impl Future<Output = Result<Decision>> + Send {
        let _ = (message, mail);
        async { Ok(Decision::Continue) }
    }

    /// One RCPT TO (`xxfi_envrcpt`). Reject or tempfail here refuses only this recipient.
    #[doc(alias = "xxfi_envrcpt")]
    fn rcpt(
        &mut self,
        message: &mut Self::Message,
        rcpt: Rcpt<'_>,
    ) -> impl Future<Output = Result<Decision>> + Send {
        let _ = (message, rcpt);
        async { Ok(Decision::Continue) }
    }

    /// DATA (`xxfi_data`): every recipient is known.
    #[doc(alias = "xxfi_data")]
    fn data(
        &mut self,
        message: &mut Self::Message,
        data: Data<'_>,
    ) -> impl Future<Output = Result<Decision>> + Send {
        let _ = (message, data);
        async { Ok(Decision::Continue) }
    }

    /// One header field (`xxfi_header`).
    #[doc(alias = "xxfi_header")]
    fn header(
        &mut self,
        message: &mut Self::Message,
        header: Header<'_>,
    ) -> impl Future<Output = Result<Decision>> + Send {
        let _ = (message, header);
        async { Ok(Decision::Continue) }
    }

    /// End of headers (`xxfi_eoh`).
    #[doc(alias = "xxfi_eoh")]
    fn eoh(
        &mut self,
        message: &mut Self::Message,
        eoh: Eoh<'_>,
    ) -> impl Future<Output = Result<Decision>> + Send {
        let _ = (message, eoh);
        async { Ok(Decision::Continue) }
    }

    /// One chunk of the body, at most 65,535 bytes, CRLF line ends (`xxfi_body`). Answer
    /// [`Decision::Skip`] to see no more of it (when the MTA offered SKIP and it was requested,
    /// with [`Request::options`](crate::Request::options) in [`Milter::negotiate`]); where SKIP
    /// was not agreed, it goes out as `Continue`.
    #[doc(alias = "xxfi_body")]
    fn body(
        &mut self,
        message: &mut Self::Message,
        body: Body<'_>,
    ) -> impl Future<Output = Result<Decision>> + Send {
        let _ = (message, body);
        async { Ok(Decision::Continue) }
    }

    /// End of message (`xxfi_eom`): the only place to modify the message, through `eom`.
    #[doc(alias = "xxfi_eom")]
    fn eom(
        &mut self,
        message: &mut Self::Message,
        eom: &mut Eom<'_>,
    ) -> impl Future<Output = Result<Decision>> + Send {
        let _ = (message, eom);
        async { Ok(Decision::Continue) }
    }

    /// The message ended without end of message: the MTA aborted it (RSET, another milter's or
    /// the MTA's rejection), a new message started, or the connection closed (`xxfi_abort`).
    /// Not called for a message this milter decided itself: ACCEPT anywhere, or REJECT, TEMPFAIL,
    /// DISCARD or a custom reply outside RCPT and UNKNOWN (at those two they refuse only the
    /// recipient or the command, as in libmilter). Unlike libmilter, it also runs for a message
    /// interrupted after an UNKNOWN command (see `milterkit_proto::order`).
    #[doc(alias = "xxfi_abort")]
    fn abort(
        &mut self,
        message: Self::Message,
        abort: Abort<'_>,
    ) -> impl Future<Output = Result<()>> + Send {
        let _ = (message, abort);
        async { Ok(()) }
    }

    /// An SMTP command the MTA does not know (`xxfi_unknown`). The MTA rejects it anyway; a
    /// reject or reply here only changes the text.
    #[doc(alias = "xxfi_unknown")]
    fn unknown(&mut self, unknown: Unknown<'_>) -> impl Future<Output = Result<Decision>> + Send {
        let _ = unknown;
        async { Ok(Decision::Continue) }
    }

    /// The SMTP session is over (`xxfi_close`). Runs exactly once per session, whatever happened:
    /// QUIT, end of stream, protocol error, handler failure, shutdown. After QUIT_NC it runs, and
    /// the same value then serves the next session on the connection.
    #[doc(alias = "xxfi_close")]
    fn close(&mut self) -> impl Future<Output = ()> + Send {
        async {}
    }
}

/// Bytes as the MTA sent them; text only by explicit, fallible choice.
///
/// ```
/// # use milterkit::Text;
/// let t = Text::new(b"<alice@example.org>");
/// assert_eq!(t.to_str().unwrap(), "<alice@example.org>");
/// assert_eq!(t, "<alice@example.org>");
/// assert!(Text::new(b"\xff").to_str().is_err());
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Text<'a>(&'a [u8]);

impl<'a> Text<'a> {
    /// Wraps bytes.
    pub fn new(bytes: &'a [u8]) -> Self {
        Text(bytes)
    }

    /// The bytes.
    pub fn as_bytes(&self) -> &'a [u8] {
        self.0
    }

    /// The bytes as UTF-8 text; fails on invalid UTF-8 (SMTPUTF8 and 8-bit headers are valid
    /// UTF-8 only when the sender made them so).
    pub fn to_str(&self) -> Result<&'a str, Utf8Error> {
        std::str::from_utf8(self.0)
    }

    /// The bytes as text for people, invalid UTF-8 shown as U+FFFD.
    pub fn to_string_lossy(&self) -> std::borrow::Cow<'a, str> {
        String::from_utf8_lossy(self.0)
    }
}

impl std::ops::Deref for Text<'_> {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.0
    }
}

impl fmt::Debug for Text<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.to_string_lossy(), f)
    }
}

impl fmt::Display for Text<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_string_lossy())
    }
}

impl PartialEq<str> for Text<'_> {
    fn eq(&self, other: &str) -> bool {
        self.0 == other.as_bytes()
    }
}

impl PartialEq<&str> for Text<'_> {
    fn eq(&self, other: &&str) -> bool {
        self.0 == other.as_bytes()
    }
}

impl PartialEq<[u8]> for Text<'_> {
    fn eq(&self, other: &[u8]) -> bool {
        self.0 == other
    }
}

/// The macros in effect at a stage, with text access (`smfi_getsymval`).
pub(crate) fn macro_value<'a>(macros: &'a Macros, name: &str) -> Option<Text<'a>> {
    macros.get(name).map(Text)
}

macro_rules! with_macros {
    ($t:ident) => {
        impl<'a> $t<'a> {
            /// Every macro in effect at this stage, with libmilter's lifetimes.
            pub fn macros(&self) -> &'a Macros {
                self.macros
            }

            /// The value of macro `name` in effect (`smfi_getsymval`); braces are optional
            /// (`"i"`, `"{mail_addr}"` and `"mail_addr"` all work).
            #[doc(alias = "smfi_getsymval")]
            pub fn macro_value(&self, name: &str) -> Option<Text<'a>> {
                macro_value(self.macros, name)
            }
        }
    };
}

/// Arguments of [`Milter::connect`].
#[derive(Debug, Clone, Copy)]
pub struct Connect<'a> {
    pub(crate) connect: &'a ConnectCmd,
    pub(crate) macros: &'a Macros,
}
with_macros!(Connect);

impl<'a> Connect<'a> {
    /// The client's host name, or its address in brackets when it did not resolve.
    pub fn hostname(&self) -> Text<'a> {
        Text(&self.connect.hostname)
    }

    /// The address family.
    pub fn family(&self) -> Family {
        self.connect.family
    }

    /// The client's port (0 for Unix sockets and unknown families).
    pub fn port(&self) -> u16 {
        self.connect.port
    }

    /// The address text as sent (Sendmail writes `IPv6:` before IPv6 addresses).
    pub fn address(&self) -> Text<'a> {
        Text(&self.connect.address)
    }

    /// The client's IP address, if the family is IPv4 or IPv6 and the text parses.
    pub fn ip(&self) -> Option<IpAddr> {
        self.connect.ip()
    }
}

/// Arguments of [`Milter::helo`].
#[derive(Debug, Clone, Copy)]
pub struct Helo<'a> {
    pub(crate) name: &'a [u8],
    pub(crate) macros: &'a Macros,
}
with_macros!(Helo);

impl<'a> Helo<'a> {
    /// The name the client gave in HELO or EHLO.
    pub fn name(&self) -> Text<'a> {
        Text(self.name)
    }
}

/// Arguments of [`Milter::mail`].
#[derive(Debug, Clone, Copy)]
pub struct Mail<'a> {
    pub(crate) envelope: &'a Envelope,
    pub(crate) macros: &'a Macros,
}
with_macros!(Mail);

impl<'a> Mail<'a> {
    /// The sender as the client wrote it, normally in angle brackets (`<>` for bounces; empty for
    /// Postfix's non-SMTP null sender).
    pub fn address(&self) -> Text<'a> {
        Text(&self.envelope.address)
    }

    /// ESMTP parameters such as `SIZE=1024`.
    pub fn args(&self) -> impl Iterator<Item = Text<'a>> {
        self.envelope.args.iter().map(|a| Text(a))
    }
}

/// Arguments of [`Milter::rcpt`].
#[derive(Debug, Clone, Copy)]
pub struct Rcpt<'a> {
    pub(crate) envelope: &'a Envelope,
    pub(crate) macros: &'a Macros,
}
with_macros!(Rcpt);

impl<'a> Rcpt<'a> {
    /// The recipient as the client wrote it, normally in angle brackets.
    pub fn address(&self) -> Text<'a> {
        Text(&self.envelope.address)
    }

    /// ESMTP parameters such as `NOTIFY=NEVER`.
    pub fn args(&self) -> impl Iterator<Item = Text<'a>> {
        self.envelope.args.iter().map(|a| Text(a))
    }

    /// True for a recipient the MTA already rejected itself, reported because
    /// `SMFIP_RCPT_REJ` was agreed (`{rcpt_mailer}` is `error`).
    pub fn rejected(&self) -> bool {
        self.macros.get("rcpt_mailer") == Some(b"error")
    }
}

/// Arguments of [`Milter::header`].
#[derive(Debug, Clone, Copy)]
pub struct Header<'a> {
    pub(crate) name: &'a [u8],
    pub(crate) value: &'a [u8],
    pub(crate) macros: &'a Macros,
}
with_macros!(Header);

impl<'a> Header<'a> {
    /// The field name, without the colon.
    pub fn name(&self) -> Text<'a> {
        Text(self.name)
    }

    /// The value: folded lines joined with LF; one leading space removed unless leading-space
    /// headers were agreed.
    pub fn value(&self) -> Text<'a> {
        Text(self.value)
    }
}

/// Arguments of [`Milter::body`].
#[derive(Debug, Clone, Copy)]
pub struct Body<'a> {
    pub(crate) chunk: &'a [u8],
    pub(crate) macros: &'a Macros,
}
with_macros!(Body);

impl<'a> Body<'a> {
    /// This chunk: at most 65,535 bytes, CRLF line ends, cut anywhere.
    pub fn chunk(&self) -> &'a [u8] {
        self.chunk
    }
}

/// Arguments of [`Milter::unknown`].
#[derive(Debug, Clone, Copy)]
pub struct Unknown<'a> {
    pub(crate) line: &'a [u8],
    pub(crate) macros: &'a Macros,
}
with_macros!(Unknown);

impl<'a> Unknown<'a> {
    /// The command line (Postfix sends the verb only, Sendmail the whole line).
    pub fn line(&self) -> Text<'a> {
        Text(self.line)
    }
}

/// Arguments of [`Milter::data`]: the DATA stage carries nothing but macros.
#[derive(Debug, Clone, Copy)]
pub struct Data<'a> {
    pub(crate) macros: &'a Macros,
}
with_macros!(Data);

/// Arguments of [`Milter::eoh`]: end of headers carries nothing but macros.
#[derive(Debug, Clone, Copy)]
pub struct Eoh<'a> {
    pub(crate) macros: &'a Macros,
}
with_macros!(Eoh);

/// Arguments of [`Milter::abort`]: the macros in effect when the message was given up.
#[derive(Debug, Clone, Copy)]
pub struct Abort<'a> {
    pub(crate) macros: &'a Macros,
}
with_macros!(Abort);
