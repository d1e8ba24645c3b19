//! The registry secrets in AWS Secrets Manager (see `registry_auth` for what they hold and
//! how they are named): written by prepare before RunTask, deleted by cleanup, and by `gc`
//! when cleanup never ran. Per job with a private image and one registry: one CreateSecret
//! (plus a PutSecretValue when a secret of the slot was left behind) and one DeleteSecret;
//! the ECS agent makes one GetSecretValue per task. Error texts never carry a secret's value
//! (the SDK does not echo request bodies).

use std::time::Duration;

use aws_sdk_secretsmanager::Client;
use aws_sdk_secretsmanager::error::ProvideErrorMetadata;

use crate::failure::Failure;
use crate::registry_auth::RegistrySecret;

/// The SDK error as every AWS error of the executor is worded (`aws::describe_sdk_error`:
/// an access-denied one names the action and its runner-policy statement).
fn describe<E: ProvideErrorMetadata + std::error::Error + 'static>(
    action: &str,
    e: &aws_sdk_secretsmanager::error::SdkError<E>,
) -> String {
    crate::aws::describe_sdk_error(action, e)
}

/// Writes a registry secret: CreateSecret, or PutSecretValue when it exists (a cleanup that
/// never ran), or RestoreSecret + PutSecretValue when it is scheduled for deletion.
pub async fn write(client: &Client, secret: &RegistrySecret) -> Result<(), Failure> {
    let fail = |what: &str, e: String| {
        Failure::system(format!(
            "writing the registry secret {} ({what}) for {}: {e} (the runner needs \
             secretsmanager:CreateSecret, PutSecretValue and RestoreSecret on it; docs/security.md)",
            secret.name, secret.registry
        ))
    };
    let put = || async {
        client
            .put_secret_value()
            .secret_id(&secret.name)
            .secret_string(&secret.value)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| describe("secretsmanager:PutSecretValue", &e))
    };
    let mut attempt = 0;
    loop {
        attempt += 1;
        let created = client
            .create_secret()
            .name(&secret.name)
            .description(format!(
                "ecs-executor: a job's login for {}, read by ECS (repositoryCredentials); deleted at cleanup",
                secret.registry
            ))
            .secret_string(&secret.value)
            .send()
            .await;
        let e = match created {
            Ok(_) => return Ok(()),
            Err(e) => e,
        };
        match e.code() {
            Some("ResourceExistsException") => return put().await.map_err(|e| fail("PutSecretValue", e)),
            Some("InvalidRequestException") if e.message().is_some_and(|m| m.contains("deletion")) => {
                // Deleted a moment ago (deletion is asynchronous) or scheduled for deletion.
                if client.restore_secret().secret_id(&secret.name).send().await.is_ok() {
                    return put().await.map_err(|e| fail("PutSecretValue", e));
                }
                if attempt >= 5 {
                    return Err(fail("CreateSecret", describe("secretsmanager:CreateSecret", &e)));
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            _ => return Err(fail("CreateSecret", describe("secretsmanager:CreateSecret", &e))),
        }
    }
}

/// Deletes a registry secret at once (no recovery window: it holds a job's short-lived login,
/// and a name scheduled for deletion could not be made again by the next job of the slot).
/// A secret that is already gone counts as deleted.
pub async fn delete(client: &Client, name: &str) -> Result<(), Failure> {
    match client
        .delete_secret()
        .secret_id(name)
        .force_delete_without_recovery(true)
        .send()
        .await
    {
        Ok(_) => Ok(()),
        Err(e) if e.code() == Some("ResourceNotFoundException") => Ok(()),
        Err(e) => Err(Failure::system(format!(
            "deleting the registry secret {name}: {} (the runner needs secretsmanager:DeleteSecret on it)",
            describe("secretsmanager:DeleteSecret", &e)
        ))),
    }
}

/// A registry secret as ListSecrets shows it.
#[derive(Debug, Clone)]
pub struct SecretSummary {
    pub name: String,
    /// Seconds since the epoch of its last change (or creation).
    pub changed_at: Option<f64>,
}

/// Every secret whose name starts with `prefix` (ListSecrets, filter `name`, all pages).
pub async fn list(client: &Client, prefix: &str) -> Result<Vec<SecretSummary>, Failure> {
    use aws_sdk_secretsmanager::types::{Filter, FilterNameStringType};
    let mut out = Vec::new();
    let mut next: Option<String> = None;
    loop {
        let page = client
            .list_secrets()
            .filters(Filter::builder().key(FilterNameStringType::Name).values(prefix).build())
            .set_next_token(next.take())
            .send()
            .await
            .map_err(|e| {
                Failure::system(format!(
                    "listing registry secrets {prefix}*: {} (gc needs secretsmanager:ListSecrets)",
                    describe("secretsmanager:ListSecrets", &e)
                ))
            })?;
        for s in page.secret_list() {
            let Some(name) = s.name().filter(|n| n.starts_with(prefix)) else {
                continue;
            };
            let changed_at = s
                .last_changed_date()
                .or(s.created_date())
                .map(|d| d.secs() as f64 + f64::from(d.subsec_nanos()) / 1e9);
            out.push(SecretSummary {
                name: name.to_string(),
                changed_at,
            });
        }
        match page.next_token() {
            Some(t) if !t.is_empty() => next = Some(t.to_string()),
            _ => return Ok(out),
        }
    }
}
