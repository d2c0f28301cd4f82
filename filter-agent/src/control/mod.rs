//! The control socket: how the CLI talks to the running agent, which is the only writer of
//! the maps. `protocol` is what crosses it (typed requests and replies), `server` the
//! agent's side, `client` the CLI's; `peer` reads a connecting peer's credentials and
//! groups, `names` turns user and group names into ids and back.

mod client;
mod names;
mod peer;
pub mod protocol;
mod server;
#[cfg(test)]
mod testing;

pub use client::{NoAgent, request};
pub use protocol::{ControlError, ErrorKind, PROTOCOL_VERSION, Reply, Request};
pub use server::{Handler, Peer, Permissions, bind, group_id, serve};
