//! The cluster and its container instances (`check`, placement of the job's task).

use super::budget::Category;
use super::{Ecs, EcsError, api};

impl Ecs {
    /// One container instance as DescribeContainerInstances describes it (`None`: ECS does not
    /// know it).
    async fn describe_container_instance(
        &self,
        container_instance_arn: &str,
    ) -> Result<Option<aws_sdk_ecs::types::ContainerInstance>, EcsError> {
        self.spend(Category::ClusterResourceRead, "DescribeContainerInstances")
            .await;
        let out = self
            .client
            .describe_container_instances()
            .cluster(&self.cluster)
            .container_instances(container_instance_arn)
            .send()
            .await
            .map_err(api("DescribeContainerInstances"))?;
        Ok(out.container_instances().first().cloned())
    }

    /// The EC2 instance id behind a container instance, and the container instance's ECS
    /// attributes (name, value) — what address plugins see.
    #[allow(clippy::type_complexity)]
    pub async fn ec2_instance_of(
        &self,
        container_instance_arn: &str,
    ) -> Result<(String, Vec<(String, Option<String>)>), EcsError> {
        let ci = self.describe_container_instance(container_instance_arn).await?;
        let id = ci
            .as_ref()
            .and_then(|ci| ci.ec2_instance_id())
            .map(String::from)
            .ok_or(EcsError::Incomplete {
                action: "DescribeContainerInstances",
                what: "EC2 instance id",
            })?;
        let attributes = ci
            .map(|ci| {
                ci.attributes()
                    .iter()
                    .map(|a| (a.name().to_string(), a.value().map(String::from)))
                    .collect()
            })
            .unwrap_or_default();
        Ok((id, attributes))
    }

    /// A container instance's status (`ACTIVE`, `DRAINING`, ...); `None`: ECS does not know it.
    pub async fn container_instance_status(&self, container_instance_arn: &str) -> Result<Option<String>, EcsError> {
        let ci = self.describe_container_instance(container_instance_arn).await?;
        Ok(ci.and_then(|ci| ci.status().map(String::from)))
    }

    /// DescribeClusters: the cluster's status (ACTIVE when usable).
    pub async fn cluster_status(&self) -> Result<Option<String>, EcsError> {
        self.spend(Category::ClusterRead, "DescribeClusters").await;
        let out = self
            .client
            .describe_clusters()
            .clusters(&self.cluster)
            .send()
            .await
            .map_err(api("DescribeClusters"))?;
        Ok(out.clusters().first().and_then(|c| c.status()).map(String::from))
    }

    /// The cluster's container instances (ARNs).
    pub async fn container_instances(&self) -> Result<Vec<String>, EcsError> {
        self.list_container_instances(None).await
    }

    /// The cluster's container instances (ARNs) that match a cluster query language `filter`
    /// (e.g. `attribute:ecs.cpu-architecture == arm64`); ECS applies it.
    pub async fn container_instances_matching(&self, filter: &str) -> Result<Vec<String>, EcsError> {
        self.list_container_instances(Some(filter)).await
    }

    /// The cluster's ACTIVE container instances (ARNs): not DRAINING, not being registered.
    pub async fn active_container_instances(&self) -> Result<Vec<String>, EcsError> {
        self.list_container_instances_with(None, Some(aws_sdk_ecs::types::ContainerInstanceStatus::Active))
            .await
    }

    /// ListContainerInstances, every page, with ECS applying `filter` when there is one.
    async fn list_container_instances(&self, filter: Option<&str>) -> Result<Vec<String>, EcsError> {
        self.list_container_instances_with(filter, None).await
    }

    /// ListContainerInstances, every page, with ECS applying `filter` and `status` when given.
    async fn list_container_instances_with(
        &self,
        filter: Option<&str>,
        status: Option<aws_sdk_ecs::types::ContainerInstanceStatus>,
    ) -> Result<Vec<String>, EcsError> {
        let mut arns = Vec::new();
        self.spend(Category::ClusterResourceRead, "ListContainerInstances")
            .await;
        let mut pages = self
            .client
            .list_container_instances()
            .cluster(&self.cluster)
            .set_filter(filter.map(String::from))
            .set_status(status)
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(api("ListContainerInstances"))?;
            arns.extend(page.container_instance_arns().iter().cloned());
        }
        Ok(arns)
    }

    /// Does the cluster have a registered container instance that matches `filter` and whose
    /// attribute `name` is `value`? ListContainerInstances with the filter (ECS applies it),
    /// then the attribute checked on (at most 100 of) those it returned.
    pub async fn has_instance_where(&self, filter: &str, name: &str, value: &str) -> Result<bool, EcsError> {
        let arns = self.container_instances_matching(filter).await?;
        if arns.is_empty() {
            return Ok(false);
        }
        let values = self.instances_attribute(&arns, name).await?;
        Ok(values.iter().any(|v| v.as_deref() == Some(value)))
    }

    /// The value of the attribute `name` on each of (at most the first 100 of) `arns`, one
    /// DescribeContainerInstances call.
    pub async fn instances_attribute(&self, arns: &[String], name: &str) -> Result<Vec<Option<String>>, EcsError> {
        self.spend(Category::ClusterResourceRead, "DescribeContainerInstances")
            .await;
        let out = self
            .client
            .describe_container_instances()
            .cluster(&self.cluster)
            .set_container_instances(Some(arns.iter().take(100).cloned().collect()))
            .send()
            .await
            .map_err(api("DescribeContainerInstances"))?;
        Ok(out
            .container_instances()
            .iter()
            .map(|ci| {
                ci.attributes()
                    .iter()
                    .find(|a| a.name() == name)
                    .and_then(|a| a.value().map(String::from))
            })
            .collect())
    }
}
