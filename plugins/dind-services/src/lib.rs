//! dind-services: run the job's Docker-in-Docker service (`docker:27-dind`, `docker:dind`)
//! as a privileged, non-essential container of the task; every other service is declined
//! and gets the executor's built-in mapping.
//!
//! A privileged container is root on the instance in all but name: pin jobs that use this
//! plugin to instances of their own (docs/services.md, "Docker-in-Docker").
//!
//! Settings (all keys optional):
//!
//! ```json
//! {"builds_dir": "/builds", "dockerd_args": ["--mtu=1400"], "allowed_tags": ["27-dind", "27.*-dind"]}
//! ```
//!
//! - TLS is **on** by default. The container mounts the job's `builds` volume (task-scoped:
//!   no other task sees it) at `builds_dir` and gets `DOCKER_TLS_CERTDIR=<builds_dir>/.dind-certs/<container>`,
//!   so the `docker` image's entry point writes the daemon's CA, server and client
//!   certificates there and listens on 2376 with `--tlsverify`. The job connects with
//!   `DOCKER_HOST=tcp://docker:2376`, `DOCKER_TLS_VERIFY=1` and
//!   `DOCKER_CERT_PATH=/builds/.dind-certs/docker/client` (the job log says the exact values);
//!   other containers on the instance's bridge network reach the port but not the daemon.
//! - `builds_dir`: the executor's `builds_dir` (default `/builds`), where `build` sees the
//!   builds volume.
//! - `tls_certdir`: unset (the default) as above. `"/path"`: that `DOCKER_TLS_CERTDIR`, no
//!   volume (the site shares the client certificates with `build` itself, e.g. with a
//!   task-definition plugin). `""`: TLS off, plain TCP 2375 — then any container on the
//!   instance's bridge network can drive this privileged daemon; only for instances no other
//!   project's jobs share. A `DOCKER_TLS_CERTDIR` in the service's own variables is ignored:
//!   the site decides.
//! - `dockerd_args`: the container's command, handed by the image's entry point to `dockerd`
//!   (`--mtu=1400`, `--registry-mirror=...`); each must start with `-`. The **job's**
//!   `entrypoint:` and `command:` for the service are ignored (with a warning in the job
//!   log): in a privileged container they would be the job's own code running as root on the
//!   instance, and a non-flag first argument makes the image's entry point run it as a
//!   program.
//! - `allowed_tags`: globs (`*` any run of characters, `?` one) the dind tag must match; a
//!   dind service whose tag matches none is refused with a message naming its image. Unset:
//!   every dind tag is allowed.
//!
//! The container: named after the service's first alias (characters other than letters,
//! digits, `-` and `_` become `-`; `docker` when there is no alias; `svc-` before a name that
//! would clash with `build` or `helper`; `-2`, `-3`... after a name an earlier dind service
//! of the job took), the image as written, privileged, not essential, the image's own entry
//! point with `dockerd_args` as command, environment `DOCKER_TLS_CERTDIR` then the service's
//! variables, Docker label `ecs-executor.role=service`.
//!
//! Native tests of the decision: `cargo test --target x86_64-unknown-linux-gnu -p dind-services`.

#[cfg(target_arch = "wasm32")]
mod component;
pub mod mapping;
