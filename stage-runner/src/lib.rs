//! The stage runner: a small static server placed in a job's containers at prepare time, which
//! runs each CI stage's command for the host over mutual TLS — instead of a Docker exec per
//! stage, which costs dockerd's `runc exec` and its stream copy.
//!
//! The host side uses [`credentials`] (feature `credentials`) to mint a CA and a certificate pair
//! per job, [`tls`] to build both configs, and [`client`] to run a stage; the runner binary uses
//! [`server`]. What travels on the wire is in [`protocol`].

#![warn(missing_docs)]

pub mod client;
#[cfg(feature = "credentials")]
pub mod credentials;
mod procs;
pub mod protocol;
pub mod server;
mod socket;
pub mod tls;
