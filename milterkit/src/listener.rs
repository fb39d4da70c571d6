//! Socket specifications as libmilter, Sendmail and Postfix write them, and [`bind`].

use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpSocket, TcpStream, UnixListener, UnixSocket, UnixStream};

use crate::Error;

/// Where a milter listens or an MTA connects, parsed from any of the spellings in use:
///
/// | spelling | meaning |
/// |---|---|
/// | `inet:PORT@HOST`, `inet:PORT` | IPv4 (libmilter, Sendmail `S=`); HOST a name or `[1.2.3.4]`; no HOST = all addresses |
/// | `inet6:PORT@HOST`, `inet6:PORT` | IPv6; HOST a name or `[2001:db8::1]` |
/// | `inet:HOST:PORT`, `inet:[HOST]:PORT` | Postfix's spelling (`smtpd_milters`) |
/// | `unix:/path`, `local:/path`, `/path` | a Unix-domain socket |
///
/// Protocol names are case-insensitive; PORT is a number or a service name from
/// `/etc/services`.
///
/// ```
/// # use milterkit::SocketSpec;
/// let a: SocketSpec = "inet:7357@127.0.0.1".parse().unwrap();
/// let b: SocketSpec = "inet:127.0.0.1:7357".parse().unwrap();
/// assert_eq!(a, b);
/// assert_eq!("inet6:7357@[::1]".parse::<SocketSpec>().unwrap().to_string(), "inet6:7357@[::1]");
/// assert!(matches!("local:/run/milter.sock".parse().unwrap(), SocketSpec::Unix(_)));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SocketSpec {
    /// A TCP socket: an IPv4 or IPv6 host (name or literal) and a port.
    Inet {
        /// True for `inet6:`.
        v6: bool,
        /// The host; `None` for all addresses.
        host: Option<String>,
        /// The port.
        port: u16,
    },
    /// A Unix-domain socket at this path.
    Unix(PathBuf),
}

impl std::str::FromStr for SocketSpec {
    type Err = Error;

    /// A spec that does not parse is [`Error::Spec`], naming it and what is wrong.
    fn from_str(spec: &str) -> Result<Self, Error> {
        let bad = |reason: String| Error::Spec {
            spec: spec.to_owned(),
            reason,
        };
        let (proto, rest) = match spec.split_once(':') {
            Some((p, r)) if !p.contains('/') => (p.to_ascii_lowercase(), r),
            _ => (String::new(), spec),
        };
        match proto.as_str() {
            "" | "unix" | "local" => {
                if rest.is_empty() {
                    return Err(bad("empty socket path".into()));
                }
                Ok(SocketSpec::Unix(PathBuf::from(rest)))
            }
            "inet" | "inet6" => {
                let v6 = proto == "inet6";
                let (port, host) = if let Some((port, host)) = rest.split_once('@') {
                    (port, Some(host))
                } else if let Some((host, port)) = rest.rsplit_once(':') {
                    // Postfix: inet:HOST:PORT (an IPv6 host is bracketed).
                    (port, Some(host))
                } else {
                    (rest, None)
                };
                let port = parse_port(port).ok_or_else(|| {
                    bad(format!(
                        "unknown port {port:?} (write inet:PORT@HOST or inet:HOST:PORT)"
                    ))
                })?;
                let host = match host {
                    None | Some("") | Some("*") => None,
                    Some(h) => Some(h.trim_start_matches('[').trim_end_matches(']').to_owned()),
                };
                let v6 = v6
                    || host
                        .as_deref()
                        .is_some_and(|h| h.parse::<Ipv6Addr>().is_ok());
                Ok(SocketSpec::Inet { v6, host, port })
            }
            _ => Err(bad(format!(
                "unknown protocol {proto:?} (use inet:, inet6:, unix: or local:)"
            ))),
        }
    }
}

impl fmt::Display for SocketSpec {
    /// libmilter's spelling.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SocketSpec::Unix(p) => write!(f, "unix:{}", p.display()),
            SocketSpec::Inet { v6, host, port } => {
                write!(f, "{}:{port}", if *v6 { "inet6" } else { "inet" })?;
                match host {
                    Some(h) if h.parse::<IpAddr>().is_ok() => write!(f, "@[{h}]"),
                    Some(h) => write!(f, "@{h}"),
                    None => Ok(()),
                }
            }
        }
    }
}

fn parse_port(p: &str) -> Option<u16> {
    if let Ok(n) = p.parse() {
        return Some(n);
    }
    // A service name, as getservbyname(…, "tcp") would find it.
    let services = std::fs::read_to_string("/etc/services").ok()?;
    services.lines().find_map(|line| {
        let line = line.split('#').next()?;
        let mut words = line.split_whitespace();
        let name = words.next()?;
        let (port, proto) = words.next()?.split_once('/')?;
        let aliases: Vec<&str> = words.collect();
        (proto == "tcp" && (name == p || aliases.contains(&p)))
            .then(|| port.parse().ok())
            .flatten()
    })
}

impl SocketSpec {
    /// The socket addresses this spec names, resolving a host name.
    pub async fn addrs(&self) -> io::Result<Vec<SocketAddr>> {
        let SocketSpec::Inet { v6, host, port } = self else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "not an inet socket",
            ));
        };
        let any: IpAddr = if *v6 {
            Ipv6Addr::UNSPECIFIED.into()
        } else {
            Ipv4Addr::UNSPECIFIED.into()
        };
        let Some(host) = host else {
            return Ok(vec![SocketAddr::new(any, *port)]);
        };
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), *port))
            .await?
            .filter(|a| a.is_ipv6() == *v6)
            .collect();
        if addrs.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!(
                    "{host} has no {} address",
                    if *v6 { "IPv6" } else { "IPv4" }
                ),
            ));
        }
        Ok(addrs)
    }
}

/// A bound socket a milter serves on.
#[derive(Debug)]
pub enum Listener {
    /// TCP, IPv4 or IPv6.
    Tcp(TcpListener),
    /// A Unix-domain socket; the file is removed when the listener is dropped if [`bind`] made it.
    Unix(UnixListener, UnixSocketFile),
}

/// The path of a Unix socket; removes the file when dropped if [`bind`] made it (libmilter leaves
/// it behind; a stale file would stop the next start), and only while the file there is still
/// the one it made (not another instance's). A socket passed in (systemd) is left alone: its
/// maker removes it.
#[derive(Debug)]
pub struct UnixSocketFile {
    path: PathBuf,
    /// The device and inode of the file [`bind`] made; `None` for a socket passed in.
    made: Option<(u64, u64)>,
}

impl UnixSocketFile {
    /// The file at `path`, made by [`bind`] just now.
    fn made(path: PathBuf) -> UnixSocketFile {
        let made = std::fs::symlink_metadata(&path)
            .ok()
            .map(|m| (m.dev(), m.ino()));
        UnixSocketFile { path, made }
    }
}

impl Drop for UnixSocketFile {
    fn drop(&mut self) {
        let Some(made) = self.made else { return };
        let ours = std::fs::symlink_metadata(&self.path).is_ok_and(|m| (m.dev(), m.ino()) == made);
        if ours {
            // After a privilege drop the directory may no longer be ours: nothing to do then.
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Binds the socket a spec names (`smfi_setconn` + `smfi_opensocket`).
///
/// A Unix socket path that exists is removed first only if it is a socket nobody listens on
/// (libmilter's `smfi_opensocket(true)` removes any socket); a live socket or any other file
/// there is an error.
///
/// ```no_run
/// # async fn f() -> Result<(), milterkit::Error> {
/// let listener = milterkit::bind("inet:7357@127.0.0.1").await?;
/// # Ok(()) }
/// ```
#[doc(alias = "smfi_setconn")]
#[doc(alias = "smfi_opensocket")]
pub async fn bind(spec: &str) -> Result<Listener, Error> {
    bind_with_backlog(spec, DEFAULT_BACKLOG).await
}

/// The listen backlog of [`bind`]: libmilter's default, `SOMAXCONN` (4096 on current Linux).
pub const DEFAULT_BACKLOG: u32 = 4096;

/// [`bind`] with a chosen listen backlog (`smfi_setbacklog`): how many connections the kernel
/// queues while the milter is at [`Config::max_connections`](crate::Config::max_connections).
#[doc(alias = "smfi_setbacklog")]
pub async fn bind_with_backlog(spec: &str, backlog: u32) -> Result<Listener, Error> {
    let parsed: SocketSpec = spec.parse().map_err(|e| match e {
        Error::Spec { spec, reason } => Error::Bind { spec, reason },
        other => other,
    })?;
    let fail = |e: io::Error| Error::Bind {
        spec: spec.to_owned(),
        reason: e.to_string(),
    };
    match parsed {
        SocketSpec::Unix(path) => {
            remove_stale_socket(&path).map_err(fail)?;
            let socket = UnixSocket::new_stream().map_err(fail)?;
            socket.bind(&path).map_err(fail)?;
            let listener = socket.listen(backlog).map_err(fail)?;
            Ok(Listener::Unix(listener, UnixSocketFile::made(path)))
        }
        inet => {
            let addrs = inet.addrs().await.map_err(fail)?;
            let mut last = None;
            for addr in addrs {
                match listen_tcp(addr, backlog) {
                    Ok(l) => return Ok(Listener::Tcp(l)),
                    Err(e) => last = Some(e),
                }
            }
            Err(fail(last.unwrap_or_else(|| io::Error::other("no address"))))
        }
    }
}

/// A TCP listener with `SO_REUSEADDR` (as libmilter sets it) and the given backlog.
fn listen_tcp(addr: SocketAddr, backlog: u32) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv6() {
        TcpSocket::new_v6()?
    } else {
        TcpSocket::new_v4()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(backlog)
}

/// Removes the socket file at `path` if it is stale: a socket nobody listens on (a connection to
/// it is refused). A live one is another instance's, and an error, as a TCP port in use is.
fn remove_stale_socket(path: &Path) -> io::Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            match std::os::unix::net::UnixStream::connect(path) {
                Ok(_) => Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    "another process is listening on this socket",
                )),
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                    std::fs::remove_file(path)
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(io::Error::new(
                    e.kind(),
                    format!("cannot tell whether another process listens on this socket: {e}"),
                )),
            }
        }
        Ok(_) => Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            "a file that is not a socket is in the way",
        )),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

impl Listener {
    /// A listener on a TCP socket already bound and listening (inherited, or passed by systemd:
    /// see [`daemon`](crate::daemon)). Call it inside a tokio runtime.
    pub fn from_std_tcp(listener: std::net::TcpListener) -> io::Result<Self> {
        listener.set_nonblocking(true)?;
        Ok(Listener::Tcp(TcpListener::from_std(listener)?))
    }

    /// A listener on a Unix socket already bound and listening (inherited, or passed by systemd).
    /// Its file is left in place when the listener is dropped. Call it inside a tokio runtime.
    pub fn from_std_unix(listener: std::os::unix::net::UnixListener) -> io::Result<Self> {
        listener.set_nonblocking(true)?;
        let path = listener
            .local_addr()?
            .as_pathname()
            .map(Path::to_path_buf)
            .unwrap_or_default();
        Ok(Listener::Unix(
            UnixListener::from_std(listener)?,
            UnixSocketFile { path, made: None },
        ))
    }

    /// Accepts one connection, with `TCP_NODELAY` set on TCP (replies go out in one write each;
    /// Nagle's algorithm would hold them for the peer's delayed ACK).
    pub async fn accept(&self) -> io::Result<(Stream, String)> {
        match self {
            Listener::Tcp(l) => {
                let (s, peer) = l.accept().await?;
                s.set_nodelay(true)?;
                Ok((Stream::Tcp(s), peer.to_string()))
            }
            Listener::Unix(l, _) => {
                let (s, peer) = l.accept().await?;
                let peer = peer
                    .as_pathname()
                    .map_or_else(|| "unix".to_owned(), |p| p.display().to_string());
                Ok((Stream::Unix(s), peer))
            }
        }
    }

    /// Sets the mode of a Unix socket file (no effect on TCP). The socket is created with the
    /// process's umask, as libmilter's is; Postfix's `smtpd` runs as `postfix` and needs write
    /// permission on it, so a milter started as root usually wants `0o660` (with
    /// [`Listener::set_owner`]) or `0o666`.
    ///
    /// ```no_run
    /// # async fn f() -> Result<(), Box<dyn std::error::Error>> {
    /// let listener = milterkit::bind("unix:/run/milter/policy.sock").await?;
    /// listener.set_permissions(0o666)?;
    /// # Ok(()) }
    /// ```
    pub fn set_permissions(&self, mode: u32) -> io::Result<()> {
        use std::os::unix::fs::PermissionsExt;
        match self {
            Listener::Tcp(_) => Ok(()),
            Listener::Unix(_, file) => {
                std::fs::set_permissions(&file.path, std::fs::Permissions::from_mode(mode))
            }
        }
    }

    /// Sets the owner and group of a Unix socket file by number (no effect on TCP), so that the
    /// MTA's user can connect; needs the rights to do so (root).
    pub fn set_owner(&self, uid: Option<u32>, gid: Option<u32>) -> io::Result<()> {
        match self {
            Listener::Tcp(_) => Ok(()),
            Listener::Unix(_, file) => std::os::unix::fs::chown(&file.path, uid, gid),
        }
    }

    /// The address bound, for logs and tests (for TCP with port 0, the port chosen).
    pub fn local_spec(&self) -> io::Result<SocketSpec> {
        match self {
            Listener::Tcp(l) => {
                let a = l.local_addr()?;
                Ok(SocketSpec::Inet {
                    v6: a.is_ipv6(),
                    host: Some(a.ip().to_string()),
                    port: a.port(),
                })
            }
            Listener::Unix(_, file) => Ok(SocketSpec::Unix(file.path.clone())),
        }
    }
}

/// A connection accepted by a [`Listener`].
#[derive(Debug)]
pub enum Stream {
    /// TCP.
    Tcp(TcpStream),
    /// Unix-domain.
    Unix(UnixStream),
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Unix(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Unix(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_flush(cx),
            Stream::Unix(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Unix(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// Connects to a milter at `spec` (the MTA side), with `TCP_NODELAY` on TCP.
pub async fn connect(spec: &SocketSpec) -> io::Result<Stream> {
    match spec {
        SocketSpec::Unix(p) => Ok(Stream::Unix(UnixStream::connect(p).await?)),
        inet => {
            let mut last = None;
            for addr in inet.addrs().await? {
                match TcpStream::connect(addr).await {
                    Ok(s) => {
                        s.set_nodelay(true)?;
                        return Ok(Stream::Tcp(s));
                    }
                    Err(e) => last = Some(e),
                }
            }
            Err(last.unwrap_or_else(|| io::Error::other("no address")))
        }
    }
}
