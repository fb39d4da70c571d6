//! What the daemon asks of the operating system and the service manager: notifications and the
//! watchdog, the stop signals, users and groups, the privilege drop.

use nix::unistd::{Gid, Group, Uid, User};
use tracing::{info, warn};

use super::*;

/// Sends a notification to systemd when it asked for them (`NOTIFY_SOCKET`); a failure is logged.
pub(super) fn notify(state: &[sd_notify::NotifyState<'_>]) {
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return;
    }
    if let Err(e) = sd_notify::notify(false, state) {
        warn!(error = %e, "cannot notify systemd");
    }
}

/// SIGHUP, as a stream of signals.
pub(super) fn hangups() -> std::io::Result<tokio::signal::unix::Signal> {
    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
}

/// Installs the SIGTERM and SIGINT handlers now (inside the runtime) and completes on the first
/// of them, with the signal's name.
pub(super) fn terminated() -> impl std::future::Future<Output = &'static str> {
    use tokio::signal::unix::{signal, SignalKind};
    let streams = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    );
    async move {
        let (Ok(mut term), Ok(mut int)) = streams else {
            warn!("cannot listen for signals; stop with SIGKILL");
            return std::future::pending().await;
        };
        tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        }
    }
}

pub(super) fn lookup_user(name: &str) -> Result<User, DaemonError> {
    let unknown = || DaemonError::UnknownId {
        what: "user",
        name: name.to_owned(),
    };
    if let Ok(uid) = name.parse::<u32>() {
        return User::from_uid(Uid::from_raw(uid))
            .ok()
            .flatten()
            .ok_or_else(unknown);
    }
    User::from_name(name).ok().flatten().ok_or_else(unknown)
}

pub(super) fn lookup_group(name: &str) -> Result<Gid, DaemonError> {
    if let Ok(gid) = name.parse::<u32>() {
        return Ok(Gid::from_raw(gid));
    }
    Group::from_name(name)
        .ok()
        .flatten()
        .map(|g| g.gid)
        .ok_or_else(|| DaemonError::UnknownId {
            what: "group",
            name: name.to_owned(),
        })
}

/// `USER`, `USER:GROUP` or `:GROUP` as numbers.
pub(super) fn owner_ids(owner: &str) -> Result<(Option<u32>, Option<u32>), DaemonError> {
    let (user, group) = match owner.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (owner, None),
    };
    let uid = if user.is_empty() {
        None
    } else {
        Some(lookup_user(user)?.uid.as_raw())
    };
    let gid = match group {
        Some(g) if !g.is_empty() => Some(lookup_group(g)?.as_raw()),
        _ => None,
    };
    Ok((uid, gid))
}

/// Switches to `user` and `group`: supplementary groups first, then the group, then the user (the
/// order that leaves no way back).
pub(super) fn drop_privileges(user: Option<&str>, group: Option<&str>) -> Result<(), DaemonError> {
    if user.is_none() && group.is_none() {
        return Ok(());
    }
    let user = user.map(lookup_user).transpose()?;
    let gid = match (group, &user) {
        (Some(g), _) => lookup_group(g)?,
        (None, Some(u)) => u.gid,
        (None, None) => return Ok(()),
    };
    let system = |what: &'static str| {
        move |e: nix::Error| DaemonError::System {
            what: what.to_owned(),
            source: std::io::Error::from(e),
        }
    };
    nix::unistd::setgroups(&[gid]).map_err(system("dropping supplementary groups"))?;
    nix::unistd::setgid(gid).map_err(system("switching group"))?;
    if let Some(u) = &user {
        nix::unistd::setuid(u.uid).map_err(system("switching user"))?;
        // A switch that can be undone is no switch.
        if u.uid.as_raw() != 0 && nix::unistd::setuid(Uid::from_raw(0)).is_ok() {
            return Err(DaemonError::System {
                what: "switching user".to_owned(),
                source: std::io::Error::other("root could be regained"),
            });
        }
    }
    info!(
        user = user.as_ref().map(|u| u.name.as_str()),
        uid = nix::unistd::getuid().as_raw(),
        gid = nix::unistd::getgid().as_raw(),
        "privileges dropped"
    );
    Ok(())
}
