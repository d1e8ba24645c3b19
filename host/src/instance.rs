//! The container instance a task landed on, and the address of its Docker daemon.
//! Address plugins (`crate::plugins`) may choose another address; `use_private_ip` is the built-in rule.

use crate::aws::describe_sdk_error;
use crate::ecs::{Ecs, EcsError};
use crate::failure::{Blame, Classify};

#[derive(Debug, thiserror::Error)]
pub enum InstanceError {
    #[error(transparent)]
    Ecs(#[from] EcsError),
    #[error("EC2 DescribeInstances failed for {instance_id}: {message}")]
    Ec2 { instance_id: String, message: String },
    #[error("EC2 instance {instance_id} has no {which} IPv4 address (use_private_ip = {use_private_ip})")]
    NoAddress {
        instance_id: String,
        which: &'static str,
        use_private_ip: bool,
    },
}

impl Classify for InstanceError {
    fn blame(&self) -> Blame {
        Blame::System
    }
}

/// A container instance as the executor sees it.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ContainerInstance {
    pub container_instance_arn: String,
    pub ec2_instance_id: String,
    pub private_ip: Option<String>,
    pub public_ip: Option<String>,
    /// What address plugins see besides the addresses.
    pub ipv6: Vec<String>,
    pub subnet_id: Option<String>,
    pub vpc_id: Option<String>,
    pub availability_zone: Option<String>,
    pub instance_type: Option<String>,
    pub tags: Vec<(String, String)>,
    /// The container instance's ECS attributes (name, value), e.g. `ecs.instance-type`.
    pub attributes: Vec<(String, Option<String>)>,
    /// The instance metadata service's options as EC2 reports them.
    pub metadata_options: Option<MetadataOptions>,
}

/// How the instance's metadata service answers (`check` requires IMDSv2 with one hop, so
/// bridge-mode containers cannot fetch the instance role's credentials).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct MetadataOptions {
    /// `required` (IMDSv2 only) or `optional`.
    pub http_tokens: String,
    pub hop_limit: i32,
    pub endpoint_enabled: bool,
}

impl ContainerInstance {
    pub async fn resolve(ecs: &Ecs, ec2: &aws_sdk_ec2::Client, arn: &str) -> Result<ContainerInstance, InstanceError> {
        let (instance_id, attributes) = ecs.ec2_instance_of(arn).await?;
        let out = ec2
            .describe_instances()
            .instance_ids(&instance_id)
            .send()
            .await
            .map_err(|e| InstanceError::Ec2 {
                instance_id: instance_id.clone(),
                message: describe_sdk_error("ec2:DescribeInstances", &e),
            })?;
        let instance = out
            .reservations()
            .iter()
            .flat_map(|r| r.instances())
            .next()
            .ok_or_else(|| InstanceError::Ec2 {
                instance_id: instance_id.clone(),
                message: "no such instance".into(),
            })?;
        Ok(ContainerInstance {
            container_instance_arn: arn.to_string(),
            ec2_instance_id: instance_id.clone(),
            private_ip: instance.private_ip_address().map(String::from),
            public_ip: instance.public_ip_address().map(String::from),
            ipv6: instance
                .network_interfaces()
                .iter()
                .take(1)
                .flat_map(|n| n.ipv6_addresses())
                .filter_map(|a| a.ipv6_address().map(String::from))
                .collect(),
            subnet_id: instance.subnet_id().map(String::from),
            vpc_id: instance.vpc_id().map(String::from),
            availability_zone: instance
                .placement()
                .and_then(|p| p.availability_zone())
                .map(String::from),
            instance_type: instance.instance_type().map(|t| t.as_str().to_string()),
            tags: instance
                .tags()
                .iter()
                .filter_map(|t| Some((t.key()?.to_string(), t.value().unwrap_or_default().to_string())))
                .collect(),
            attributes,
            metadata_options: instance.metadata_options().map(|m| MetadataOptions {
                http_tokens: m.http_tokens().map(|t| t.as_str().to_string()).unwrap_or_default(),
                hop_limit: m.http_put_response_hop_limit().unwrap_or(1),
                endpoint_enabled: m.http_endpoint().is_none_or(|e| e.as_str() == "enabled"),
            }),
        })
    }

    /// The built-in address rule: the private IP, or the public one when `use_private_ip` is off.
    pub fn docker_host(&self, use_private_ip: bool) -> Result<String, InstanceError> {
        let (ip, which) = if use_private_ip {
            (&self.private_ip, "private")
        } else {
            (&self.public_ip, "public")
        };
        ip.clone().ok_or_else(|| InstanceError::NoAddress {
            instance_id: self.ec2_instance_id.clone(),
            which,
            use_private_ip,
        })
    }
}
