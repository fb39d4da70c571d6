//! The MTA side: what an MTA sends a milter for one message ([`Transaction`]), how a given MTA
//! sends it ([`Profile`]), and what came back ([`Outcome`]).
//!
//! | file | what |
//! |---|---|
//! | `profile.rs` | [`Profile`]: what an MTA ([`Mta`]) offers and sends, and when |
//! | `transaction.rs` | [`Transaction`], [`Client`], [`Outcome`], [`Step`], [`Verdict`], [`Answer`] |
//! | `driver.rs` | the command-by-command driver shared by [`Connection`] and the test harness |
//! | `connection.rs` | [`Connection`]: the driver over a socket |

mod connection;
mod driver;
mod profile;
mod transaction;

pub use connection::{Connection, CONNECT_TIMEOUT, REPLY_TIMEOUT};
pub(crate) use driver::{Driver, Link, LinkEnd};
pub use milterkit_proto::Mta;
pub use profile::Profile;
pub use transaction::{Answer, Client, Outcome, Step, Transaction, Verdict};
