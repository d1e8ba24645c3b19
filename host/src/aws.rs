//! AWS clients for ECS, EC2 and Secrets Manager: region, endpoint override, credentials and retry policy, in
//! one place. Only `prepare` and `cleanup` load this; `run` stages never touch AWS.

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

/// An AWS SDK error with its code and message, as a one-line text for the job log.
pub fn describe_sdk_error<E, R>(err: &aws_sdk_ecs::error::SdkError<E, R>) -> String
where
    E: std::error::Error + 'static,
    R: std::fmt::Debug,
{
    use aws_sdk_ecs::error::SdkError;
    match err {
        SdkError::ServiceError(e) => {
            let inner = e.err();
            let text = aws_sdk_ecs::error::DisplayErrorContext(inner).to_string();
            text.replace('\n', " ")
        }
        other => aws_sdk_ecs::error::DisplayErrorContext(other)
            .to_string()
            .replace('\n', " "),
    }
}
