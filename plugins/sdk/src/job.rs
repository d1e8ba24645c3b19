//! Reading the job context for decisions: which values a job's author cannot forge, and
//! helpers so no plugin parses them by hand. Plain Rust, no host calls: usable from native
//! unit tests.
//!
//! Trusted (GitLab or the runner sets them; a job's `variables:` cannot change them):
//! `job-id`, `pipeline-id`, `project-id`, `project-path`, `ref-name`, `ref-protected`,
//! `commit-sha`, `runner-tags` and the `trusted` list ([`trusted`]). Chosen by the job's
//! author: `image`, `image-entrypoint`, `services` (all from the `.gitlab-ci.yml`) and
//! `variables` ([`variable`]) — base a policy on their *content* (refuse an image), never on
//! what they *claim* (a `CI_PROJECT_PATH` in `variables` proves nothing).
//!
//! ```
//! use ecs_executor_plugin_sdk::{fixtures, job};
//! let mut ctx = fixtures::job();
//! ctx.project_path = "platform/tools/ci".into();
//! assert!(job::in_group(&ctx, "platform"));
//! assert!(!job::in_group(&ctx, "plat"));
//! assert_eq!(job::image(&ctx).unwrap().tag.as_deref(), Some("3"));
//! ```

use crate::image::ImageRef;
use crate::types::JobContext;

/// The project's full path (`group/subgroup/project`): GitLab's `CI_PROJECT_PATH`, never a
/// job variable of that name. Empty when the job response carried none.
pub fn project_path(job: &JobContext) -> &str {
    &job.project_path
}

/// The project's namespace (`group/subgroup`): everything before the last `/` of
/// [`project_path`]. Empty when the path has no `/`.
pub fn namespace(job: &JobContext) -> &str {
    job.project_path.rsplit_once('/').map_or("", |(ns, _)| ns)
}

/// Whether the project is in `group` or one of its subgroups: `platform` matches
/// `platform/app` and `platform/tools/app`, not `platform-x/app` nor a project named
/// `platform`. A trailing `/` on `group` is ignored; an empty group matches nothing.
pub fn in_group(job: &JobContext, group: &str) -> bool {
    let group = group.trim_end_matches('/');
    !group.is_empty()
        && job
            .project_path
            .strip_prefix(group)
            .is_some_and(|rest| rest.starts_with('/') && rest.len() > 1)
}

/// A trusted predefined value (`CI_PIPELINE_SOURCE`, `GITLAB_USER_LOGIN`, `CI_JOB_URL`,
/// `CI_PROJECT_NAMESPACE`, ...): GitLab's own entry in the job response, never a job
/// variable of the same name. `None` when GitLab sent none.
pub fn trusted<'a>(job: &'a JobContext, key: &str) -> Option<&'a str> {
    job.trusted.iter().find(|kv| kv.key == key).map(|kv| kv.value.as_str())
}

/// Whether the job runs for a protected branch or tag (GitLab's `CI_COMMIT_REF_PROTECTED`).
pub fn ref_protected(job: &JobContext) -> bool {
    job.ref_protected
}

/// A job variable's value as the job's environment will have it (the last entry wins).
/// **The job's author controls it**: use it for what the author asks for (a size, a flag),
/// never to decide who the job is. `None` when unset, secret, or hidden from plugins.
pub fn variable<'a>(job: &'a JobContext, key: &str) -> Option<&'a str> {
    job.variables
        .iter()
        .rev()
        .find(|kv| kv.key == key)
        .map(|kv| kv.value.as_str())
}

/// The build image, parsed (`None` if malformed). The job's author chose it.
pub fn image(job: &JobContext) -> Option<ImageRef> {
    ImageRef::parse(&job.image)
}

impl ImageRef {
    /// The registry host (`docker.io` for Docker Hub), lower-cased.
    pub fn registry(&self) -> &str {
        self.name.split_once('/').map_or(self.name.as_str(), |(r, _)| r)
    }

    /// The repository without the registry (`library/alpine`, `team/app`).
    pub fn repository(&self) -> &str {
        self.name.split_once('/').map_or("", |(_, r)| r)
    }

    /// Whether Docker would pull a moving target: no digest, and the tag is absent or
    /// `latest` (Docker's default). A digest pins the image whatever the tag says.
    pub fn is_floating(&self) -> bool {
        self.digest.is_none() && self.tag.as_deref().is_none_or(|t| t == "latest")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::{self, kv};

    #[test]
    fn groups_match_whole_path_components() {
        let mut job = fixtures::job();
        for (path, group, expected) in [
            ("platform/app", "platform", true),
            ("platform/tools/app", "platform/", true),
            ("platform/tools/app", "platform/tools", true),
            ("platform-x/app", "platform", false),
            ("platform", "platform", false),
            ("team/platform/app", "platform", false),
            ("platform/app", "", false),
            ("", "platform", false),
        ] {
            job.project_path = path.into();
            assert_eq!(in_group(&job, group), expected, "{path} in {group}");
        }
        job.project_path = "a/b/c".into();
        assert_eq!(namespace(&job), "a/b");
    }

    #[test]
    fn trusted_values_ignore_job_variables_and_variables_take_the_last_entry() {
        let mut job = fixtures::job();
        job.trusted = vec![kv("CI_PIPELINE_SOURCE", "push")];
        job.variables = vec![kv("CI_PIPELINE_SOURCE", "schedule"), kv("SIZE", "s"), kv("SIZE", "xl")];
        assert_eq!(trusted(&job, "CI_PIPELINE_SOURCE"), Some("push"));
        assert_eq!(trusted(&job, "GITLAB_USER_LOGIN"), None);
        assert_eq!(variable(&job, "SIZE"), Some("xl"));
    }

    #[test]
    fn image_parts_and_floating_tags() {
        let parse = |s| ImageRef::parse(s).unwrap();
        let i = parse("registry.example.com:5000/team/app:1.2");
        assert_eq!(
            (i.registry(), i.repository()),
            ("registry.example.com:5000", "team/app")
        );
        let i = parse("alpine");
        assert_eq!((i.registry(), i.repository()), ("docker.io", "library/alpine"));
        assert!(parse("alpine").is_floating());
        assert!(parse("alpine:latest").is_floating());
        assert!(!parse("alpine:3.20").is_floating());
        assert!(!parse("alpine:latest@sha256:abcd").is_floating());
    }
}
