//! dind-services: run the job's Docker-in-Docker service (`docker:27-dind`, `docker:dind`)
//! as a privileged, non-essential container of the task; every other service is declined
//! and gets the executor's built-in mapping.
//!
//! Settings (all keys optional):
//!
//! ```json
//! {"tls_certdir": "", "allowed_tags": ["27-dind", "27.*-dind"]}
//! ```
//!
//! - `tls_certdir`: the container's `DOCKER_TLS_CERTDIR`. Default `""`: the daemon listens on
//!   plain TCP 2375 and jobs use `DOCKER_HOST=tcp://docker:2375`. Why TLS is off by default:
//!   the `docker` image's TLS mode writes client certificates into that directory *inside the
//!   service container*, and GitLab's Docker executor hands them to the build container
//!   through a shared volume; an ECS task has no such volume unless a plugin adds one, so with
//!   TLS on the job could not connect at all. Without published ports the daemon is reachable
//!   only through the instance's Docker bridge network (from the task's containers via
//!   `links`, and from other containers on the same instance unless inter-container traffic
//!   is disabled there). On instances shared between projects that do not trust each other,
//!   set a path (e.g. `"/certs"`), add a volume for `/certs/client` to `build` and the
//!   service with a task-definition plugin, and let jobs use `DOCKER_TLS_VERIFY=1`.
//!   A `DOCKER_TLS_CERTDIR` in the service's own variables is ignored: the site decides.
//! - `allowed_tags`: globs (`*` any run of characters, `?` one) the dind tag must match; a
//!   dind service whose tag matches none is refused with a message naming its image. Unset:
//!   every dind tag is allowed.
//!
//! The container: named after the service's first alias (characters other than letters,
//! digits, `-` and `_` become `-`; `docker` when there is no alias; `svc-` before a name that
//! would clash with `build` or `helper`; `-2`, `-3`... after a name an earlier dind service
//! of the job took), the image as written, privileged, not essential, entry point and command
//! from the service's overrides, environment `DOCKER_TLS_CERTDIR` then the service's
//! variables, Docker label `ecs-executor.role=service`.
//!
//! Native tests of the decision: `cargo test --target x86_64-unknown-linux-gnu -p dind-services`.

#[cfg(target_arch = "wasm32")]
mod component;
pub mod mapping;
