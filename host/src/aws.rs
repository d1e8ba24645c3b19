//! AWS clients for ECS, EC2 and Secrets Manager: region, endpoint override, credentials and retry policy, in
//! one place. `prepare` and `cleanup` load this; a `run` stage only when it runs longer than
//! `[aws] stage_watch_secs` (to watch its task) or when it ended for want of its container.

use std::time::Duration;

use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{AppName, BehaviorVersion, Region};

use crate::config::Config;

pub struct AwsClients {
    pub ecs: aws_sdk_ecs::Client,
    pub ec2: aws_sdk_ec2::Client,
    /// Registry secrets (`registry_secrets`); no call unless a job's image needs a login.
    pub secrets: aws_sdk_secretsmanager::Client,
}

impl AwsClients {
    pub async fn load(config: &Config) -> AwsClients {
        // Standard retry mode: exponential back-off with jitter on throttling and 5xx.
        let retry = RetryConfig::standard()
            .with_max_attempts(config.aws.max_attempts)
            .with_initial_backoff(Duration::from_millis(200));
        let timeouts = TimeoutConfig::builder()
            .connect_timeout(Duration::from_secs(5))
            .operation_attempt_timeout(Duration::from_secs(30))
            .build();
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            // "app/ecs-executor-<version>-<host>" in the User-Agent: CloudTrail (and the
            // stand-in's request records) tell our calls apart from the agent's, and one runner
            // host from another.
            .app_name(app_name())
            .region(Region::new(config.region.clone()))
            .retry_config(retry)
            .timeout_config(timeouts);
        if let Some(url) = &config.endpoint_url {
            loader = loader.endpoint_url(url);
        }
        if let Some(profile) = &config.aws.profile {
            loader = loader.profile_name(profile);
        }
        if let (Some(id), Some(secret)) = (&config.aws.access_key_id, &config.aws.secret_access_key) {
            let secret = secret.expose();
            loader = loader.credentials_provider(aws_sdk_ecs::config::Credentials::new(
                id,
                secret,
                None,
                None,
                "ecs-executor-config",
            ));
        }
        let shared = loader.load().await;
        AwsClients {
            ecs: aws_sdk_ecs::Client::new(&shared),
            ec2: aws_sdk_ec2::Client::new(&shared),
            secrets: aws_sdk_secretsmanager::Client::new(&shared),
        }
    }
}

/// The SDK's app name: the executor, its version and this runner host's name.
fn app_name() -> AppName {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let host: String = host
        .trim()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .take(40)
        .collect();
    let name = format!(
        "ecs-executor-{}-{}",
        env!("CARGO_PKG_VERSION"),
        if host.is_empty() { "unknown" } else { &host }
    );
    AppName::new(name).unwrap_or_else(|_| AppName::new("ecs-executor").expect("a valid app name"))
}

/// An AWS SDK error of the call `action` (`"ecs:RunTask"`) with its code and message, as a
/// one-line text for the job log. When IAM refused the call, the text also names the denied
/// action (the one AWS names — a dependent action such as `ecs:TagResource` or `iam:PassRole`
/// refused inside RunTask — else `action`), the statement of the runner policy that allows it
/// and where that policy is (`deploy/runner.yaml`). Every AWS error message of the executor is
/// made here; whose fault it is stays with the error types (`failure::Classify`: AWS errors are
/// system failures).
pub fn describe_sdk_error<E, R>(action: &str, err: &aws_sdk_ecs::error::SdkError<E, R>) -> String
where
    E: std::error::Error + aws_sdk_ecs::error::ProvideErrorMetadata + 'static,
    R: std::fmt::Debug,
{
    use aws_sdk_ecs::error::SdkError;
    let text = match err {
        SdkError::ServiceError(e) => aws_sdk_ecs::error::DisplayErrorContext(e.err()).to_string(),
        other => aws_sdk_ecs::error::DisplayErrorContext(other).to_string(),
    }
    .replace('\n', " ");
    let code = err.as_service_error().and_then(|e| e.code());
    match code {
        Some(code) if ACCESS_DENIED_CODES.contains(&code) => {
            let message = err.as_service_error().and_then(|e| e.message()).unwrap_or_default();
            format!("{text}{}", access_denied_hint(action, message))
        }
        _ => text,
    }
}

/// The error codes with which AWS services say "IAM does not allow this": ECS (JSON)
/// `AccessDeniedException`, EC2 (query) `UnauthorizedOperation`, others `AccessDenied`.
const ACCESS_DENIED_CODES: &[&str] = &["AccessDeniedException", "AccessDenied", "UnauthorizedOperation"];

/// The statement (`Sid`) of the runner policy in deploy/runner.yaml that allows each action the
/// executor needs (the harness's iam_e2e test checks this table against the file).
pub const RUNNER_POLICY_STATEMENTS: &[(&str, &str)] = &[
    ("ecs:RunTask", "RunTask"),
    ("ecs:DescribeTasks", "Tasks"),
    ("ecs:StopTask", "Tasks"),
    ("ecs:ListTasks", "ListTasks"),
    ("ecs:DescribeContainerInstances", "ContainerInstances"),
    ("ecs:DescribeClusters", "Cluster"),
    ("ecs:ListContainerInstances", "Cluster"),
    ("ecs:RegisterTaskDefinition", "TaskDefinitions"),
    ("ecs:DeleteTaskDefinitions", "TaskDefinitions"),
    ("ecs:DescribeTaskDefinition", "TaskDefinitionsNoResourceLevel"),
    ("ecs:DeregisterTaskDefinition", "TaskDefinitionsNoResourceLevel"),
    ("ecs:ListTaskDefinitions", "TaskDefinitionsNoResourceLevel"),
    ("ecs:ListTaskDefinitionFamilies", "TaskDefinitionsNoResourceLevel"),
    ("ecs:TagResource", "TagOnCreate"),
    ("ecs:TagResource", "TagClaimedWarmTasks"),
    ("secretsmanager:CreateSecret", "RegistrySecrets"),
    ("secretsmanager:PutSecretValue", "RegistrySecrets"),
    ("secretsmanager:RestoreSecret", "RegistrySecrets"),
    ("secretsmanager:DeleteSecret", "RegistrySecrets"),
    ("secretsmanager:ListSecrets", "ListRegistrySecrets"),
    ("ec2:DescribeInstances", "Instances"),
    ("iam:PassRole", "PassRole"),
];

/// What to tell the admin when IAM refused `action`: the denied action (as AWS's `message`
/// names it, e.g. "... is not authorized to perform: ecs:TagResource on resource ..."), and
/// the runner policy's statement for it.
fn access_denied_hint(action: &str, message: &str) -> String {
    let named = message.split("perform: ").nth(1).map(|rest| {
        rest.chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == ':' || *c == '-')
            .collect::<String>()
            .trim_end_matches(':')
            .to_string()
    });
    let denied = named.filter(|a| a.contains(':')).unwrap_or_else(|| action.to_string());
    // An action may be allowed by more than one statement (ecs:TagResource: at RunTask, and
    // for a claimed warm task): all are named.
    let sids: Vec<String> = RUNNER_POLICY_STATEMENTS
        .iter()
        .filter(|(a, _)| *a == denied)
        .map(|(_, sid)| format!("`{sid}`"))
        .collect();
    let statement = match sids.len() {
        0 => "no statement of it allows this action: the executor does not need it".to_string(),
        1 => format!("its statement {} allows it", sids[0]),
        _ => format!("its statements {} allow it", sids.join(" or ")),
    };
    format!(
        " [access denied to {denied}: the IAM policy of these credentials does not allow it (here); \
         the runner policy in deploy/runner.yaml is what the executor needs ({statement}; \
         docs/deploy.md, step 3)]"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn access_denied_names_the_action_aws_names_and_its_statement() {
        let hint = access_denied_hint(
            "ecs:RunTask",
            "User: arn:aws:sts::1:assumed-role/r/i is not authorized to perform: ecs:TagResource on \
             resource: arn:aws:ecs:eu-west-1:1:task/ci/x because no identity-based policy allows it",
        );
        assert!(hint.contains("access denied to ecs:TagResource"), "{hint}");
        assert!(
            hint.contains("statements `TagOnCreate` or `TagClaimedWarmTasks` allow it")
                && hint.contains("deploy/runner.yaml"),
            "{hint}"
        );
        // No action in the message (EC2's older wording): the call's own.
        let hint = access_denied_hint(
            "ec2:DescribeInstances",
            "You are not authorized to perform this operation.",
        );
        assert!(
            hint.contains("access denied to ec2:DescribeInstances") && hint.contains("`Instances`"),
            "{hint}"
        );
        let hint = access_denied_hint("ecs:ExecuteCommand", "");
        assert!(hint.contains("the executor does not need it"), "{hint}");
    }
}
