//! role-mapper: give each project's jobs their IAM task role, tag the task definition with
//! the project, and force one log configuration on every container.
//!
//! Settings (all keys optional):
//!
//! ```json
//! {
//!   "roles": [
//!     {"project": "team/app", "task_role_arn": "arn:aws:iam::123456789012:role/app-ci"},
//!     {"project": "team/*", "task_role_arn": "arn:aws:iam::123456789012:role/team-ci",
//!      "execution_role_arn": "arn:aws:iam::123456789012:role/team-pull"}
//!   ],
//!   "default_task_role_arn": "arn:aws:iam::123456789012:role/ci-default",
//!   "tags": {"cost-centre": "ci"},
//!   "log_configuration": {"driver": "awslogs", "options": {"awslogs-group": "/ci/jobs", "awslogs-region": "eu-west-1"}}
//! }
//! ```
//!
//! - `roles`: the first rule whose `project` matches the job's project path (`CI_PROJECT_PATH`,
//!   the first, public entry of GitLab's job response; a job variable of that name changes
//!   nothing) sets the task role, and the execution role when the rule gives one. `team/app` matches that project only;
//!   `team/*` matches every project below `team`, at any depth (`team/app`, `team/sub/app`),
//!   but not `team` itself. Paths compare ASCII case-insensitively, as GitLab routes them.
//! - `default_task_role_arn`: the task role when no rule matches; without it the task role is
//!   left as it was.
//! - `tags`: added to the task definition's tags (in key order), followed by `gitlab-project`
//!   = the project path (cut to ECS's 256 characters). A tag the task already has is replaced.
//! - `log_configuration`: replaces every container's log configuration, the executor's own
//!   `build` and `helper` included, so no job can send its output elsewhere.
//!
//! Native tests of the decision: `cargo test --target x86_64-unknown-linux-gnu -p role-mapper`.

#[cfg(target_arch = "wasm32")]
mod component;
pub mod mapping;
