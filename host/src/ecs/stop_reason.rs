//! Why ECS stopped a task, in words for the job log, and whose fault that is.

use std::time::Duration;

use super::tasks::TaskStatus;
use crate::config::Config;
use crate::failure::Failure;
use crate::registry_auth::{self, JobRegistryAuth};
use crate::task::TaskSpec;

impl TaskStatus {
    /// ECS stopped the task or is stopping it (desired STOPPED). A MISSING task is not: ECS
    /// keeps stopped tasks for an hour, so MISSING says nothing about an instance's loss.
    pub fn is_stopped(&self) -> bool {
        !self.missing && (self.desired_status == "STOPPED" || self.last_status == "STOPPED")
    }

    /// ECS's words and its stop code (`TerminationNotice`, `UserInitiated`, ...), which retry
    /// policies and admins key on.
    pub fn explanation_with_code(&self) -> String {
        let words = self.stop_explanation();
        match self.stop_code.as_deref() {
            Some(code) if !words.contains(code) => format!("{words} (stop code {code})"),
            _ => words,
        }
    }

    /// ECS's own words on why the task stopped: the task's reason and any container reasons.
    pub fn stop_explanation(&self) -> String {
        let mut parts = Vec::new();
        if let Some(r) = self.stopped_reason.as_deref().filter(|r| !r.is_empty()) {
            parts.push(r.to_string());
        }
        for c in &self.containers {
            if let Some(r) = c.reason.as_deref().filter(|r| !r.is_empty())
                && !parts.iter().any(|p| p == r)
            {
                parts.push(format!("container {}: {r}", c.name));
            }
        }
        if parts.is_empty() {
            parts.push(format!("stop code {}", self.stop_code.as_deref().unwrap_or("unknown")));
        }
        parts.join("; ")
    }
}

/// Why the task stopped before RUNNING, in words a user understands, with ECS's reason quoted.
/// An image that does not exist, or a registry that refuses the job's credentials (or asks
/// for some and the job has none), is the job's failure (as with GitLab's Docker executor); a
/// pull that failed for reasons that may pass (throttling, timeouts, a registry that cannot be
/// reached) is a system failure, so gitlab-runner retries. ECS not reading a registry secret
/// is ours (the execution role). No password is in any of it: the task definition holds only
/// secret names, and the caller redacts the job's secrets from the message as well.
pub fn before_running(spec: &TaskSpec, registry: &JobRegistryAuth, status: &TaskStatus) -> Failure {
    let why = status.stop_explanation();
    if why.contains("asm fetching") || why.contains("asm resource") {
        let secrets: Vec<&str> = registry.secrets.iter().map(|s| s.name.as_str()).collect();
        return Failure::system(format!(
            "ECS could not read the job's registry credentials from Secrets Manager ({}); the task's \
             execution role needs secretsmanager:GetSecretValue on them (docs/security.md). ECS says: {why}",
            secrets.join(", ")
        ));
    }
    let pull_failed = |text: &str| text.contains("CannotPullContainerError");
    if !pull_failed(&why) {
        return Failure::system(format!("ECS stopped the task before it ran: {why}"));
    }
    let failed_container = status
        .containers
        .iter()
        .find(|c| c.reason.as_deref().is_some_and(pull_failed))
        .map(|c| c.name.as_str())
        .unwrap_or("build");
    let image = spec
        .containers
        .iter()
        .find(|c| c.name == failed_container)
        .map(|c| c.image.as_str())
        .unwrap_or("?");
    let host = registry_auth::registry_host(image);
    let used = registry.of_container(failed_container);
    if pull_error_is_auth(&why) {
        let whose = match used {
            Some(p) => format!(
                "registry {host} refused the credentials from {} (user {:?}) for it",
                p.source, p.username
            ),
            None => format!(
                "registry {host} asks for credentials and the job has none for it \
                 (DOCKER_AUTH_CONFIG, the runner's Docker config or the job's registry credentials)"
            ),
        };
        return Failure::build(format!(
            "the image {image:?} (container {failed_container}) could not be pulled: {whose}. ECS says: {why}"
        ));
    }
    if pull_error_is_transient(&why) {
        return Failure::system(format!(
            "the image {image:?} (container {failed_container}) could not be pulled: registry {host} \
             could not be reached or failed (this may pass; gitlab-runner retries). ECS says: {why}"
        ));
    }
    Failure::build(format!(
        "the image {image:?} (container {failed_container}) could not be pulled. ECS says: {why}"
    ))
}

/// The registry refused the request for want of (valid) credentials or access: Docker's
/// words for 401/403 answers of a registry.
fn pull_error_is_auth(reason: &str) -> bool {
    let r = reason.to_ascii_lowercase();
    [
        "unauthorized",
        "authentication required",
        "no basic auth credentials",
        "denied: ",
        "access to the resource is denied",
        "incorrect username or password",
        "403 forbidden",
    ]
    .iter()
    .any(|p| r.contains(p))
}

fn pull_error_is_transient(reason: &str) -> bool {
    let r = reason.to_ascii_lowercase();
    let permanent = [
        "not found",
        "manifest unknown",
        "repository does not exist",
        "pull access denied",
        "invalid reference format",
    ];
    if permanent.iter().any(|p| r.contains(p)) {
        return false;
    }
    // Anything else (throttling, timeouts, 5xx, network) may pass: let gitlab-runner retry.
    true
}

/// ECS stopped the task under a running stage (its instance drained and terminated, a spot
/// interruption, StopTask): a system failure naming ECS's stop code and reason, so
/// gitlab-runner's retry policy can act. `place` names the stage, container and task.
pub fn during_stage(place: &str, status: &TaskStatus) -> Failure {
    let what = if status.last_status == "STOPPED" {
        "ECS stopped the task"
    } else {
        "ECS is stopping the task"
    };
    Failure::system(format!(
        "{place}: {what} while the stage ran (stop code {}). ECS says: {}. The stage's output after this \
         point is lost and its exit status is unknown",
        status.stop_code.as_deref().unwrap_or("unknown"),
        status.stop_explanation()
    ))
}

/// Whether ECS has stopped the task (or is stopping it), in one look: for a stage whose
/// connection broke, to tell a lost instance from a network fault. `None`: running, or ECS
/// could not be asked.
pub async fn stopped_now(config: &Config, cluster: &str, task_arn: &str) -> Option<TaskStatus> {
    let clients = crate::aws::AwsClients::load(config).await;
    let ecs = super::Ecs::new(clients.ecs, cluster)
        .with_budget(super::budget::Budget::new(&config.state_dir, config.aws.rate_share));
    let look = ecs.describe_task(task_arn);
    match tokio::time::timeout(Duration::from_secs(10), look).await {
        Ok(Ok(status)) if status.is_stopped() => Some(status),
        _ => None,
    }
}

/// ECS's reason for stopping the task. Only on this failure path does a run stage talk to
/// AWS: the agent reports a stop a moment after the containers die, so look for a few seconds.
pub async fn after_stage(config: &Config, task_arn: &str) -> String {
    let clients = crate::aws::AwsClients::load(config).await;
    let ecs = super::Ecs::new(clients.ecs, &config.cluster);
    let look = async {
        let mut last = String::from("no answer");
        for _ in 0..20 {
            match ecs.describe_task(task_arn).await {
                Ok(status) if status.missing => return "the task is unknown to ECS (MISSING)".to_string(),
                Ok(status) if status.is_stopped() => return status.explanation_with_code(),
                Ok(status) => {
                    last = format!(
                        "the task is still {} (desired {})",
                        status.last_status, status.desired_status
                    )
                }
                Err(e) => last = e.to_string(),
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        last
    };
    tokio::time::timeout(Duration::from_secs(15), look)
        .await
        .unwrap_or_else(|_| "ECS did not answer within 15 s".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::ecs::tasks::ContainerStatus;
    use crate::job::JobContext;

    #[test]
    fn pull_errors_are_classified() {
        assert!(!pull_error_is_transient(
            "CannotPullContainerError: pull image manifest has been retried 5 time(s): failed to resolve ref docker.io/library/nosuch:latest: docker.io/library/nosuch:latest: not found"
        ));
        assert!(pull_error_is_transient(
            "CannotPullContainerError: toomanyrequests: You have reached your pull rate limit"
        ));
        assert!(pull_error_is_transient(
            "CannotPullContainerError: dial tcp 1.2.3.4:443: i/o timeout"
        ));
    }

    fn stopped(reason: &str) -> TaskStatus {
        TaskStatus {
            last_status: "STOPPED".into(),
            stopped_reason: Some(reason.into()),
            containers: vec![ContainerStatus {
                name: "build".into(),
                reason: Some(reason.into()),
            }],
            ..Default::default()
        }
    }

    #[test]
    fn registry_refusals_are_the_jobs_unreachable_registries_and_unread_secrets_are_ours() {
        let config = Config::parse(
            "cluster='c'\nregion='us-east-1'\nhelper_image='helper:1'\nexecution_role_arn='arn:aws:iam::1:role/x'\n\
             [docker]\nca_file='/ca'\ncert_file='/c'\nkey_file='/k'\n",
            std::path::Path::new("t.toml"),
        )
        .unwrap();
        let job = JobContext::for_tests("registry.example.com:5050/g/app:1");
        let mut spec = TaskSpec::for_job(&config, &job);
        let logins = crate::registry_auth::Logins::resolve(
            None,
            None,
            &[crate::protocol::JobCredentials {
                kind: "registry".into(),
                url: "registry.example.com:5050".into(),
                username: "gitlab-ci-token".into(),
                password: "job-token-value".into(),
            }],
        );
        let (auth, _) = crate::registry_auth::attach(&config, &job, "project-1/slot-0", &logins, &mut spec);

        let refused = before_running(
            &spec,
            &auth,
            &stopped("CannotPullContainerError: Error response from daemon: unauthorized: authentication required"),
        );
        assert_eq!(refused.blame, crate::failure::Blame::Build);
        assert!(
            refused
                .message
                .contains("registry registry.example.com:5050 refused the credentials from job payload")
                && refused.message.contains("\"gitlab-ci-token\"")
                && !refused.message.contains("job-token-value"),
            "{}",
            refused.message
        );
        let none = before_running(
            &spec,
            &JobRegistryAuth::default(),
            &stopped(
                "CannotPullContainerError: Error response from daemon: Head \"https://r/v2/x\": no basic auth credentials",
            ),
        );
        assert_eq!(none.blame, crate::failure::Blame::Build);
        assert!(none.message.contains("the job has none for it"), "{}", none.message);

        let down = before_running(
            &spec,
            &auth,
            &stopped(
                "CannotPullContainerError: Error response from daemon: Get \"https://registry.example.com:5050/v2/\": dial tcp 10.0.0.9:5050: i/o timeout",
            ),
        );
        assert_eq!(down.blame, crate::failure::Blame::System);
        assert!(down.message.contains("could not be reached"), "{}", down.message);

        let unread = before_running(
            &spec,
            &auth,
            &stopped("asm fetching secret from the service for x: AccessDeniedException: not authorized"),
        );
        assert_eq!(unread.blame, crate::failure::Blame::System);
        assert!(
            unread.message.contains("secretsmanager:GetSecretValue"),
            "{}",
            unread.message
        );
    }

    #[test]
    fn a_task_stopped_under_a_stage_names_ecs_stop_code_and_reason() {
        let status = TaskStatus {
            last_status: "STOPPED".into(),
            desired_status: "STOPPED".into(),
            stop_code: Some("TerminationNotice".into()),
            stopped_reason: Some("Host EC2 (instance i-0abc) terminated.".into()),
            ..Default::default()
        };
        assert!(status.is_stopped());
        let f = during_stage("stage build_script in the build container of task arn:t", &status);
        assert_eq!(f.blame, crate::failure::Blame::System);
        assert!(
            f.message
                .starts_with("stage build_script in the build container of task arn:t: ECS stopped the task")
                && f.message.contains("stop code TerminationNotice")
                && f.message.contains("ECS says: Host EC2 (instance i-0abc) terminated."),
            "{}",
            f.message
        );
        // Being stopped (the agent has not finished it yet) counts; MISSING or RUNNING do not.
        let stopping = TaskStatus {
            last_status: "RUNNING".into(),
            desired_status: "STOPPED".into(),
            stop_code: Some("SpotInterruption".into()),
            ..Default::default()
        };
        assert!(stopping.is_stopped());
        assert!(
            during_stage("s", &stopping)
                .message
                .contains("ECS is stopping the task")
        );
        assert_eq!(
            status.explanation_with_code(),
            "Host EC2 (instance i-0abc) terminated. (stop code TerminationNotice)"
        );
        // No reason given: the code alone, once.
        assert_eq!(stopping.explanation_with_code(), "stop code SpotInterruption");
        let running = TaskStatus {
            last_status: "RUNNING".into(),
            desired_status: "RUNNING".into(),
            ..Default::default()
        };
        assert!(!running.is_stopped());
        let missing = TaskStatus {
            missing: true,
            ..Default::default()
        };
        assert!(!missing.is_stopped());
    }

    #[test]
    fn stopped_task_names_the_image_that_failed() {
        let config = Config::parse(
            "cluster='c'\nregion='us-east-1'\nhelper_image='helper:1'\n[docker]\nca_file='/ca'\ncert_file='/c'\nkey_file='/k'\n",
            std::path::Path::new("t.toml"),
        )
        .unwrap();
        let job = JobContext {
            key: crate::protocol::JobKey::new(1, None),
            project_id: 1,
            ref_protected: false,
            project_path: String::new(),
            runner_version: String::new(),
            image: "nosuch:1".into(),
            image_entrypoint: None,
            image_user: None,
            platform: None,
            secrets: vec![],
        };
        let spec = TaskSpec::for_job(&config, &job);
        let reason = "CannotPullContainerError: failed to resolve ref docker.io/library/nosuch:1: not found";
        let status = TaskStatus {
            last_status: "STOPPED".into(),
            stopped_reason: Some(reason.into()),
            containers: vec![ContainerStatus {
                name: "build".into(),
                reason: Some(reason.into()),
            }],
            ..Default::default()
        };
        let f = before_running(&spec, &JobRegistryAuth::default(), &status);
        assert_eq!(f.blame, crate::failure::Blame::Build);
        assert!(
            f.message.contains("\"nosuch:1\"") && f.message.contains("not found"),
            "{}",
            f.message
        );
    }
}
