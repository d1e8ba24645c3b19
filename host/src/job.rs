//! The job being prepared: who it is, which image it runs, and which of its values are secret.
//! Built once in `prepare` from gitlab-runner's trusted job response plus non-secret context.

use crate::config::Config;
use crate::failure::{Blame, Classify};
use crate::protocol::{JobKey, JobResponse, ProtocolError, custom_env};

#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    #[error("the job names no image and the executor config has no `default_image`")]
    NoImage,
    #[error("image name {shown} is not valid: {problem}")]
    BadImage { shown: String, problem: &'static str },
}

impl Classify for JobError {
    fn blame(&self) -> Blame {
        match self {
            JobError::Protocol(e) => e.blame(),
            JobError::NoImage => Blame::System,
            // The user wrote `image:`; GitLab treats a bad image as the job's failure.
            JobError::BadImage { .. } => Blame::Build,
        }
    }
}

#[derive(Debug, Clone)]
pub struct JobContext {
    pub key: JobKey,
    pub project_path: String,
    pub runner_version: String,
    /// The build container's image (the job's `image:` or the configured default).
    pub image: String,
    /// `image: entrypoint:` from the job, if any.
    pub image_entrypoint: Option<Vec<String>>,
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
        let key = JobKey::new(response.id, custom_env("CI_RUNNER_SHORT_TOKEN").as_deref());
        let job_image = response.image.as_ref().filter(|i| !i.name.trim().is_empty());
        let image = match job_image {
            Some(i) => i.name.clone(),
            None => config.default_image.clone().ok_or(JobError::NoImage)?,
        };
        validate_image(&image)?;
        let from_response = |name: &str| {
            response
                .variables
                .iter()
                .find(|v| v.key == name && v.public && !v.masked && !v.file)
                .map(|v| v.value.clone())
        };
        Ok(JobContext {
            key,
            project_path: custom_env("CI_PROJECT_PATH")
                .or_else(|| from_response("CI_PROJECT_PATH"))
                .unwrap_or_default(),
            runner_version: custom_env("CI_RUNNER_VERSION").unwrap_or_default(),
            image_entrypoint: job_image.and_then(|i| i.entrypoint.clone()).filter(|e| !e.is_empty()),
            image,
            secrets: response.secret_values().into_iter().map(String::from).collect(),
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
            project_path: String::new(),
            runner_version: String::new(),
            image: image.into(),
            image_entrypoint: None,
            secrets: vec![],
        }
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
