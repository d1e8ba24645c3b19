//! Task definitions: the job's (reused by content, or registered per job), and listing and
//! removing what this executor registered (`gc`, `unregister`).

use aws_sdk_ecs::types::TaskDefinitionField;

use super::budget::Category;
use super::{Ecs, EcsError, TAG_CONTENT_HASH, already_gone, api, tag_pairs};
use crate::aws::describe_sdk_error;
use crate::config::TaskDefinitionMode;
use crate::task::request::RegisterRequest;

/// A task definition the job's task will use.
#[derive(Debug, Clone)]
pub struct TaskDefinitionUse {
    pub arn: String,
    pub family: String,
    pub revision: i32,
    /// true: an existing revision with the same content was found; false: registered now.
    pub reused: bool,
}

/// A task definition revision with its tags.
#[derive(Debug, Clone)]
pub struct TaskDefinitionSummary {
    pub arn: String,
    pub tags: Vec<(String, String)>,
}

impl TaskDefinitionSummary {
    pub fn tag(&self, key: &str) -> Option<&str> {
        self.tags.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }
}

impl Ecs {
    /// Find the task definition with this request's content, or register it. In `per-job`
    /// mode always register (the job's cleanup deregisters it). A family a plugin chose is
    /// reused by content hash (the tag) like ours. Only `registered_here` — the revision
    /// this host last registered in the family — is a candidate: a family name and a tag are
    /// what anyone allowed to register task definitions can copy, so the family's latest
    /// revision is never trusted for what it claims.
    pub async fn ensure_task_definition(
        &self,
        request: &RegisterRequest,
        mode: TaskDefinitionMode,
        registered_here: Option<&str>,
    ) -> Result<TaskDefinitionUse, EcsError> {
        if mode == TaskDefinitionMode::Reuse
            && let Some(arn) = registered_here
            && let Some(found) = self.find_by_content(arn, request.content_hash()).await?
        {
            return Ok(TaskDefinitionUse {
                family: request.family.clone(),
                ..found
            });
        }
        self.register(request).await
    }

    /// The task definition `family_or_arn` names (a family: its latest revision), if it is
    /// ACTIVE and its content hash tag matches.
    pub async fn find_by_content(
        &self,
        family_or_arn: &str,
        hash: &str,
    ) -> Result<Option<TaskDefinitionUse>, EcsError> {
        self.spend(Category::TaskDefinitionRead, "DescribeTaskDefinition").await;
        let out = self
            .client
            .describe_task_definition()
            .task_definition(family_or_arn)
            .include(TaskDefinitionField::Tags)
            .send()
            .await;
        let out = match out {
            Ok(out) => out,
            // ClientException is how ECS says "no such family".
            Err(e) if e.as_service_error().is_some_and(|s| s.is_client_exception()) => return Ok(None),
            Err(e) => return Err(api("DescribeTaskDefinition")(e)),
        };
        let Some(td) = out.task_definition() else {
            return Ok(None);
        };
        let active = td.status().is_some_and(|s| s.as_str() == "ACTIVE");
        let same = out
            .tags()
            .iter()
            .any(|t| t.key() == Some(TAG_CONTENT_HASH) && t.value() == Some(hash));
        if !(active && same) {
            return Ok(None);
        }
        Ok(Some(TaskDefinitionUse {
            arn: td.task_definition_arn().unwrap_or_default().to_string(),
            family: td.family().unwrap_or(family_or_arn).to_string(),
            revision: td.revision(),
            reused: true,
        }))
    }

    async fn register(&self, request: &RegisterRequest) -> Result<TaskDefinitionUse, EcsError> {
        self.spend(Category::TaskDefinitionModify, "RegisterTaskDefinition")
            .await;
        let req = request.to_sdk(self.client.register_task_definition());
        let out = req.send().await.map_err(api("RegisterTaskDefinition"))?;
        let td = out.task_definition().ok_or(EcsError::Incomplete {
            action: "RegisterTaskDefinition",
            what: "task definition",
        })?;
        Ok(TaskDefinitionUse {
            arn: td.task_definition_arn().unwrap_or_default().to_string(),
            family: request.family.clone(),
            revision: td.revision(),
            reused: false,
        })
    }

    pub async fn deregister(&self, arn: &str) -> Result<(), EcsError> {
        self.spend(Category::TaskDefinitionModify, "DeregisterTaskDefinition")
            .await;
        match self
            .client
            .deregister_task_definition()
            .task_definition(arn)
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if e.as_service_error().is_some_and(|s| s.is_client_exception()) => Ok(()),
            Err(e) => Err(api("DeregisterTaskDefinition")(e)),
        }
    }

    /// Task definition families whose name starts with `prefix` (any status).
    pub async fn families_with_prefix(&self, prefix: &str) -> Result<Vec<String>, EcsError> {
        let mut families = Vec::new();
        self.spend(Category::TaskDefinitionRead, "ListTaskDefinitionFamilies")
            .await;
        let mut pages = self
            .client
            .list_task_definition_families()
            .family_prefix(prefix)
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(api("ListTaskDefinitionFamilies"))?;
            families.extend(page.families().iter().filter(|f| f.starts_with(prefix)).cloned());
        }
        Ok(families)
    }

    /// The revisions of `family` with `status` (ACTIVE or INACTIVE), tags included.
    pub async fn task_definitions_of(
        &self,
        family: &str,
        status: aws_sdk_ecs::types::TaskDefinitionStatus,
    ) -> Result<Vec<TaskDefinitionSummary>, EcsError> {
        let mut arns = Vec::new();
        self.spend(Category::TaskDefinitionRead, "ListTaskDefinitions").await;
        let mut pages = self
            .client
            .list_task_definitions()
            .family_prefix(family)
            .status(status.clone())
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(api("ListTaskDefinitions"))?;
            arns.extend(page.task_definition_arns().iter().cloned());
        }
        let mut out = Vec::new();
        for arn in arns {
            self.spend(Category::TaskDefinitionRead, "DescribeTaskDefinition").await;
            let described = self
                .client
                .describe_task_definition()
                .task_definition(&arn)
                .include(TaskDefinitionField::Tags)
                .send()
                .await;
            let described = match described {
                Ok(d) => d,
                Err(e) if already_gone(&describe_sdk_error("ecs:DescribeTaskDefinition", &e)) => continue,
                Err(e) => return Err(api("DescribeTaskDefinition")(e)),
            };
            let Some(td) = described.task_definition() else {
                continue;
            };
            if td.family() != Some(family) {
                continue;
            }
            out.push(TaskDefinitionSummary {
                arn,
                tags: tag_pairs(described.tags()),
            });
        }
        Ok(out)
    }

    /// DeleteTaskDefinitions (INACTIVE revisions only; at most 10 per call). Revisions that
    /// are already gone count as deleted. Returns the failures worth reporting.
    pub async fn delete_task_definitions(&self, arns: &[String]) -> Result<Vec<String>, EcsError> {
        let mut problems = Vec::new();
        for chunk in arns.chunks(10) {
            self.spend(Category::TaskDefinitionDelete, "DeleteTaskDefinitions")
                .await;
            let out = self
                .client
                .delete_task_definitions()
                .set_task_definitions(Some(chunk.to_vec()))
                .send()
                .await
                .map_err(api("DeleteTaskDefinitions"))?;
            for f in out.failures() {
                let reason = f.reason().unwrap_or("unknown reason");
                if !already_gone(reason) {
                    problems.push(format!("{}: {reason}", f.arn().unwrap_or("?")));
                }
            }
        }
        Ok(problems)
    }
}
