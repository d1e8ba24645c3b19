//! The WIT records of `wit/types.wit` (and the two `hooks.wit` types the JSON form uses) as
//! `wasmtime::component::bindgen!` generates them for the plugin host: same names, same
//! fields, same Rust types. Kept by hand because the fuzz build must not compile wasmtime
//! (see Cargo.toml); if the WIT changes, `json.rs`/`validate.rs` stop compiling here.

pub type Json = String;
pub type ImageRef = String;
pub type Arn = String;
pub type CpuUnits = u32;
pub type Mebibytes = u32;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyValue {
    pub key: String,
    pub value: String,
}

#[derive(Clone, Debug)]
pub struct JobContext {
    pub job_id: u64,
    pub pipeline_id: u64,
    pub project_id: u64,
    pub project_path: String,
    pub ref_name: String,
    pub ref_protected: bool,
    pub commit_sha: String,
    pub image: ImageRef,
    pub image_entrypoint: Option<Vec<String>>,
    pub services: Vec<CiService>,
    pub runner_tags: Vec<String>,
    pub variables: Vec<KeyValue>,
    pub trusted: Vec<KeyValue>,
}

#[derive(Clone, Debug)]
pub struct CiService {
    pub name: ImageRef,
    pub aliases: Vec<String>,
    pub entrypoint: Option<Vec<String>>,
    pub command: Option<Vec<String>>,
    pub variables: Vec<KeyValue>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NetworkMode {
    Bridge,
    Awsvpc,
    Host,
    None,
}

#[derive(Clone, Debug)]
pub struct Volume {
    pub name: String,
    pub host_path: Option<String>,
    pub extra: Option<Json>,
}

#[derive(Clone, Debug)]
pub struct MountPoint {
    pub source_volume: String,
    pub container_path: String,
    pub read_only: bool,
}

#[derive(Clone, Debug)]
pub struct LogConfiguration {
    pub log_driver: String,
    pub options: Vec<KeyValue>,
    pub extra: Option<Json>,
}

#[derive(Clone, Debug)]
pub struct ContainerDefinition {
    pub name: String,
    pub image: ImageRef,
    pub cpu: Option<CpuUnits>,
    pub memory: Option<Mebibytes>,
    pub memory_reservation: Option<Mebibytes>,
    pub essential: bool,
    pub entry_point: Option<Vec<String>>,
    pub command: Vec<String>,
    pub environment: Vec<KeyValue>,
    pub mount_points: Vec<MountPoint>,
    pub links: Vec<String>,
    pub docker_labels: Vec<KeyValue>,
    pub log_configuration: Option<LogConfiguration>,
    pub privileged: bool,
    pub extra: Option<Json>,
}

#[derive(Clone, Debug)]
pub struct PlacementConstraint {
    pub kind: String,
    pub expression: Option<String>,
}

#[derive(Clone, Debug)]
pub struct TaskDefinition {
    pub family: String,
    pub task_role_arn: Option<Arn>,
    pub execution_role_arn: Option<Arn>,
    pub network_mode: NetworkMode,
    pub cpu: Option<CpuUnits>,
    pub memory: Option<Mebibytes>,
    pub containers: Vec<ContainerDefinition>,
    pub volumes: Vec<Volume>,
    pub placement_constraints: Vec<PlacementConstraint>,
    pub tags: Vec<KeyValue>,
    pub extra: Option<Json>,
}

#[derive(Clone, Debug)]
pub struct EcsAttribute {
    pub name: String,
    pub value: Option<String>,
}

#[derive(Clone, Debug)]
pub struct Instance {
    pub container_instance_arn: Arn,
    pub ec2_instance_id: String,
    pub private_ipv4: Option<String>,
    pub public_ipv4: Option<String>,
    pub ipv6: Vec<String>,
    pub subnet_id: Option<String>,
    pub vpc_id: Option<String>,
    pub availability_zone: Option<String>,
    pub instance_type: Option<String>,
    pub tags: Vec<KeyValue>,
    pub attributes: Vec<EcsAttribute>,
}

/// `hooks.wit` `address.docker-address`.
#[derive(Clone, Debug)]
pub struct DockerAddress {
    pub host: String,
    pub port: Option<u16>,
    pub tls_server_name: Option<String>,
}

/// `hooks.wit` `services.service-mapping`.
#[derive(Clone, Debug)]
pub enum ServiceMapping {
    Decline,
    Containers(Vec<ContainerDefinition>),
}
