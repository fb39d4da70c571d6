//! Commands an MTA sends, for the tests that write a session by hand.

use milterkit::proto::{Command, Connect, Family};

/// CONNECT from `hostname` at 192.0.2.1 (IPv4) port `port`, then HELO with the same name.
pub(crate) fn greeting(hostname: &'static str, port: u16) -> [Command; 2] {
    [
        Command::Connect(Connect {
            hostname: hostname.into(),
            family: Family::Inet,
            port,
            address: "192.0.2.1".into(),
        }),
        Command::Helo {
            name: hostname.into(),
        },
    ]
}
