//! The job being prepared: who it is, which image it runs, and which of its values are secret.
//! Built once in `prepare` from gitlab-runner's trusted job response plus non-secret context.

use crate::config::Config;
use crate::failure::{Blame, Classify};
use crate::protocol::{JobKey, JobResponse, ProtocolError, custom_env, trusted_runner_token};

#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    #[error("the job names no image and the executor config has no `default_image`")]
    NoImage,
    #[error("image name {shown} is not valid: {problem}")]
    BadImage { shown: String, problem: &'static str },
    #[error(
        "image name {shown} uses the variable ${var}, which is masked, file-type or not public: \
         an image name is shown in the ECS task definition and the job log, so it may only use \
         public variables"
    )]
    SecretInImage { shown: String, var: String },
    #[error("{origin} is {shown}: {problem}")]
    BadUser {
        origin: String,
        shown: String,
        problem: &'static str,
    },
    #[error(transparent)]
    Platform(#[from] crate::platform::PlatformError),
}

impl Classify for JobError {
    fn blame(&self) -> Blame {
        match self {
            JobError::Protocol(e) => e.blame(),
            JobError::NoImage => Blame::System,
            // The user wrote `image:`; GitLab treats a bad image as the job's failure.
            JobError::BadImage { .. } | JobError::SecretInImage { .. } | JobError::BadUser { .. } => Blame::Build,
            JobError::Platform(e) => e.blame(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct JobContext {
    pub key: JobKey,
    /// `job_info.project_id`: GitLab's, not settable by the job (0 when absent).
    pub project_id: u64,
    /// The first occurrence of `CI_PROJECT_PATH` (GitLab's predefined value), never a job's
    /// override of it; "" when the job response has none.
    pub project_path: String,
    /// The first occurrence of `CI_COMMIT_REF_PROTECTED` is "true": the job runs for a
    /// protected branch or tag (its caches are kept apart from unprotected ones).
    pub ref_protected: bool,
    pub runner_version: String,
    /// The build container's image (the job's `image:` or the configured default).
    pub image: String,
    /// `image: entrypoint:` from the job, if any.
    pub image_entrypoint: Option<Vec<String>>,
    /// `image: docker: user:`: the build container runs as this user (ECS `user`), and so do
    /// its stages. The job author's choice, like the image itself.
    pub image_user: Option<String>,
    /// `docker: platform:` of the image or a service: the architecture the task must run on.
    pub platform: Option<crate::platform::Platform>,
    /// Values that must never leave the job's own script (masked, file-type, non-public).
    pub secrets: Vec<String>,
}

impl JobContext {
    /// The job and the job response it was read from (plugins see more of the response).
    pub fn load_with_response(config: &Config) -> Result<(JobContext, JobResponse), JobError> {
        let response = JobResponse::load()?;
        Ok((Self::from_response(config, &response)?, response))
    }

    pub fn from_response(config: &Config, response: &JobResponse) -> Result<JobContext, JobError> {
        let token = trusted_runner_token(
            config.runner_short_token.as_deref(),
            response.sets("CI_RUNNER_SHORT_TOKEN"),
        )?;
        let key = JobKey::new(response.id, token.as_deref());
        let job_image = response.image.as_ref().filter(|i| !i.name.trim().is_empty());
        let image = match job_image {
            // GitLab sends `image:` as the job wrote it; gitlab-runner expands its variables.
            Some(i) => response
                .expand_image_name(&i.name)
                .map_err(|var| JobError::SecretInImage {
                    shown: format!("{:?}", i.name),
                    var,
                })?,
            None => config.default_image.clone().ok_or(JobError::NoImage)?,
        };
        validate_image(&image)?;
        let image_user = match job_image.map(|i| i.executor_opts.docker.user.as_str()) {
            Some(user) if !user.trim().is_empty() => Some(validate_user("image: docker: user:", user)?),
            _ => None,
        };
        let platform = crate::platform::job_platform(response)?;
        Ok(JobContext {
            image_user,
            platform,
            key,
            project_id: response.job_info.project_id,
            project_path: response.predefined("CI_PROJECT_PATH").unwrap_or_default().to_string(),
            ref_protected: response.predefined("CI_COMMIT_REF_PROTECTED") == Some("true"),
            // Picks the helper image's tag: a job's own CI_RUNNER_VERSION must not.
            runner_version: if response.sets("CI_RUNNER_VERSION") {
                String::new()
            } else {
                custom_env("CI_RUNNER_VERSION").unwrap_or_default()
            },
            image_entrypoint: job_image.and_then(|i| i.entrypoint.clone()).filter(|e| !e.is_empty()),
            image,
            // Masked, file-type and non-public variables, and the `secrets:` keyword's values.
            secrets: response
                .secret_values()
                .into_iter()
                .map(String::from)
                .chain(
                    crate::protocol::unlisted_custom_env(response)
                        .into_iter()
                        .map(|(_, v)| v)
                        .filter(|v| v.len() >= 4),
                )
                // Registry passwords, also those decoded from a DOCKER_AUTH_CONFIG `auth`.
                .chain(
                    crate::registry_auth::job_logins(response)
                        .passwords()
                        .filter(|p| p.len() >= 4)
                        .map(String::from)
                        .collect::<Vec<_>>(),
                )
                .collect(),
        })
    }

    /// Remove every secret value from a text before it is printed or sent anywhere. Longest
    /// first: a secret that is a prefix of another must not leave the longer one's tail.
    pub fn redact(&self, text: &str) -> String {
        let mut secrets: Vec<&str> = self
            .secrets
            .iter()
            .map(String::as_str)
            .filter(|s| !s.is_empty())
            .collect();
        secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        let mut out = text.to_string();
        for secret in secrets {
            out = out.replace(secret, "[MASKED]");
        }
        out
    }

    /// A job with this image and nothing else, for unit tests.
    #[cfg(test)]
    pub fn for_tests(image: &str) -> JobContext {
        JobContext {
            key: JobKey::new(1, Some("abc")),
            project_id: 1,
            project_path: String::new(),
            ref_protected: false,
            runner_version: String::new(),
            image: image.into(),
            image_entrypoint: None,
            image_user: None,
            platform: None,
            secrets: vec![],
        }
    }
}

/// A `docker: user:` value as Docker's `--user` takes it (`name`, `uid`, `name:group`,
/// `uid:gid`), trimmed. `origin` says where the job wrote it.
pub fn validate_user(origin: &str, user: &str) -> Result<String, JobError> {
    let user = user.trim();
    let problem = if user.len() > 256 {
        Some("it is longer than 256 characters")
    } else if user.chars().any(|c| c.is_whitespace() || c.is_control()) {
        Some("it contains spaces or control characters")
    } else if user.starts_with(':') || user.ends_with(':') || user.matches(':').count() > 1 {
        Some("a user is `name`, `uid`, `name:group` or `uid:gid`")
    } else {
        None
    };
    match problem {
        Some(problem) => Err(JobError::BadUser {
            origin: origin.to_string(),
            shown: format!("\"{}\"", user.chars().take(80).collect::<String>().escape_debug()),
            problem,
        }),
        None => Ok(user.to_string()),
    }
}

/// An image reference as Docker accepts it: no whitespace or control characters, sane length.
pub fn validate_image(image: &str) -> Result<(), JobError> {
    let shown = || {
        let mut s: String = image.chars().take(80).collect::<String>().escape_debug().to_string();
        if image.chars().count() > 80 {
            s.push('…');
        }
        format!("\"{s}\"")
    };
    let problem = if image.is_empty() {
        Some("it is empty")
    } else if image.len() > 512 {
        Some("it is longer than 512 characters")
    } else if image.chars().any(|c| c.is_whitespace() || c.is_control()) {
        Some("it contains spaces or control characters")
    } else if image.starts_with(['-', '/', ':', '@']) {
        Some("it must start with a registry or repository name")
    } else {
        None
    };
    match problem {
        Some(problem) => Err(JobError::BadImage {
            shown: shown(),
            problem,
        }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_that_is_a_prefix_of_another_leaves_nothing_of_the_longer_one() {
        let job = JobContext {
            secrets: vec!["abc".into(), "abcdef-longer".into(), String::new()],
            ..JobContext::for_tests("alpine")
        };
        assert_eq!(job.redact("x abcdef-longer y abc z"), "x [MASKED] y [MASKED] z");
    }

    fn response(vars: &[(&str, &str, bool)]) -> JobResponse {
        let text = serde_json::json!({
            "id": 5,
            "job_info": {"project_id": 42},
            "image": {"name": "alpine:3"},
            "variables": vars.iter().map(|(k, v, public)| serde_json::json!({"key": k, "value": v, "public": public})).collect::<Vec<_>>(),
        });
        serde_json::from_value(text).unwrap()
    }

    fn config() -> Config {
        Config::parse(
            "cluster='c'\nregion='us-east-1'\n[docker]\nca_file='/ca'\ncert_file='/c'\nkey_file='/k'\n",
            std::path::Path::new("t.toml"),
        )
        .unwrap()
    }

    #[test]
    fn the_image_name_is_expanded_with_public_variables_and_refuses_secret_ones() {
        let mut r = response(&[
            ("CI_REGISTRY_IMAGE", "registry.example.com/team/app", true),
            ("TAG", "1", true),
            ("TAG", "2", true),
            ("TOKEN", "s3cret-value", false),
        ]);
        r.image.as_mut().unwrap().name = "$CI_REGISTRY_IMAGE/ci:${TAG}-$$x$UNSET".into();
        let job = JobContext::from_response(&config(), &r).unwrap();
        assert_eq!(job.image, "registry.example.com/team/app/ci:2-$x");
        r.image.as_mut().unwrap().name = "alpine:$TOKEN".into();
        let err = JobContext::from_response(&config(), &r).unwrap_err();
        assert!(matches!(err.blame(), Blame::Build));
        let text = err.to_string();
        assert!(text.contains("$TOKEN") && !text.contains("s3cret-value"), "{text}");
    }

    #[test]
    fn project_and_protection_come_from_gitlab_not_from_a_job_override() {
        let r = response(&[
            ("CI_PROJECT_PATH", "team/app", true),
            ("CI_COMMIT_REF_PROTECTED", "false", true),
            ("CI_PROJECT_PATH", "prod/deploy", true),
            ("CI_COMMIT_REF_PROTECTED", "true", true),
        ]);
        let job = JobContext::from_response(&config(), &r).unwrap();
        assert_eq!(
            (job.project_id, job.project_path.as_str(), job.ref_protected),
            (42, "team/app", false)
        );
        // A first occurrence that is not public is not GitLab's predefined value.
        let r = response(&[("CI_PROJECT_PATH", "prod/deploy", false)]);
        assert_eq!(JobContext::from_response(&config(), &r).unwrap().project_path, "");
    }

    #[test]
    fn a_job_that_sets_the_runner_token_is_refused_unless_the_config_names_it() {
        let r = response(&[("CI_RUNNER_SHORT_TOKEN", "otherhost", true)]);
        let err = JobContext::from_response(&config(), &r).unwrap_err();
        assert_eq!(err.blame(), Blame::Build);
        assert!(err.to_string().contains("CI_RUNNER_SHORT_TOKEN"), "{err}");
        let mut c = config();
        c.runner_short_token = Some("thishost".into());
        assert_eq!(JobContext::from_response(&c, &r).unwrap().key.runner_token, "thishost");
    }

    #[test]
    fn image_docker_user_is_read_as_a_string_or_a_number_and_checked() {
        let with_user = |user: serde_json::Value| {
            let mut r = response(&[]);
            let image =
                serde_json::json!({"name": "alpine:3", "executor_opts": {"docker": {"platform": "", "user": user}}});
            r.image = Some(serde_json::from_value(image).unwrap());
            JobContext::from_response(&config(), &r)
        };
        assert_eq!(
            with_user("1234:5678".into()).unwrap().image_user.as_deref(),
            Some("1234:5678")
        );
        assert_eq!(with_user(1000.into()).unwrap().image_user.as_deref(), Some("1000"));
        assert_eq!(
            with_user(" nobody ".into()).unwrap().image_user.as_deref(),
            Some("nobody")
        );
        assert_eq!(with_user("".into()).unwrap().image_user, None);
        assert_eq!(with_user(serde_json::Value::Null).unwrap().image_user, None);
        assert_eq!(
            JobContext::from_response(&config(), &response(&[])).unwrap().image_user,
            None
        );
        for bad in ["a b", "1:2:3", ":1", "x\u{7}y"] {
            let err = with_user(bad.into()).unwrap_err();
            assert_eq!(err.blame(), Blame::Build, "{bad:?}");
            assert!(err.to_string().starts_with("image: docker: user: is "), "{err}");
        }
    }

    #[test]
    fn a_platform_the_cluster_cannot_run_is_the_jobs_failure() {
        let mut r = response(&[]);
        r.image.as_mut().unwrap().executor_opts.docker.platform = "linux/arm/v7".into();
        let err = JobContext::from_response(&config(), &r).unwrap_err();
        assert_eq!(err.blame(), Blame::Build);
        assert!(
            err.to_string().contains("image: docker: platform: is \"linux/arm/v7\""),
            "{err}"
        );
        r.image.as_mut().unwrap().executor_opts.docker.platform = "linux/arm64".into();
        let job = JobContext::from_response(&config(), &r).unwrap();
        assert_eq!(job.platform.map(|p| p.arch), Some("arm64"));
    }

    #[test]
    fn image_names_are_checked() {
        assert!(validate_image("registry.example.com:5000/team/app:1.2@sha256:abc").is_ok());
        assert!(validate_image("alpine").is_ok());
        for bad in ["", "has space:1", "tab\there", "ctl\u{7}x", "-rm", &"a".repeat(600)] {
            let err = validate_image(bad).unwrap_err();
            assert_eq!(err.blame(), Blame::Build, "{bad:?}");
        }
    }
}
