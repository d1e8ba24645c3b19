//! address-picker: reach a container instance's Docker daemon on its public IPv4 when the
//! instance is in one of the listed subnets, and on its private IPv4 otherwise.
//!
//! Settings:
//!
//! ```json
//! {"public_subnets": ["subnet-0a1b2c3d", "subnet-0e1f2a3b"], "port": 2376, "tls_server_name": "docker.ci.internal"}
//! ```
//!
//! - `public_subnets` (required, may be empty): subnets whose instances the executor cannot
//!   reach privately (e.g. another VPC without peering); their instances are reached on their
//!   public IPv4.
//! - `port` (optional): the daemon's TLS port; unset, the executor's `docker.port`.
//! - `tls_server_name` (optional): the name the daemon's certificate must carry, for
//!   certificates that name neither IP (e.g. one wildcard name for the fleet); unset, the
//!   address itself.
//!
//! When the address the rule chooses is missing (a public-subnet instance without a public
//! IPv4, an instance without a private IPv4), the plugin declines and the next plugin or the
//! executor's built-in `use_private_ip` rule decides: it never silently switches to the other
//! network.
//!
//! Native tests of the decision: `cargo test --target x86_64-unknown-linux-gnu -p address-picker`.

#[cfg(target_arch = "wasm32")]
mod component;
pub mod picking;
