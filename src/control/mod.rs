//! The control socket between the daemon and `gfs_control`: a versioned JSON-lines protocol
//! ([`proto`]), the daemon's listener ([`server`]), the CLI's client ([`client`]) and the CLI
//! itself ([`cli`]).

pub mod cli;
pub mod client;
pub mod proto;
pub mod server;

pub use proto::{Reply, Request, VersionInfo, DEFAULT_SOCKET_PATH, PROTOCOL_VERSION};
pub use server::{
    bind, serve, serve_with, ControlError, ControlListener, ControlRequest, ServeOptions,
};
