//! GitLab's job JSON (`common/spec/spec.go`) and the custom executor's `CI_JOB_SERVICES` entry
//! (`executors/custom/custom.go`) as serde structs, field for field and in Go's declaration
//! order, so the bytes match what gitlab-runner writes. `omitempty` becomes
//! `skip_serializing_if`; Go's nil slices and maps become `null`.

use std::collections::BTreeMap;

use serde::Serialize;

#[derive(Serialize)]
pub(crate) struct Job<'a> {
    pub id: i64,
    pub token: &'a str,
    pub allow_git_fetch: bool,
    pub job_info: JobInfo<'a>,
    pub git_info: GitInfo<'a>,
    pub runner_info: RunnerInfo,
    pub inputs: Option<()>,
    pub variables: Vec<Variable<'a>>,
    pub steps: Vec<Step<'a>>,
    pub image: Image<'a>,
    pub services: Option<Vec<Image<'a>>>,
    pub artifacts: Option<()>,
    pub cache: Option<()>,
    pub credentials: Option<Vec<Credentials<'a>>>,
    pub dependencies: Option<()>,
    pub features: Features,
    pub policy_options: PolicyOptions,
}

#[derive(Serialize)]
pub(crate) struct JobInfo<'a> {
    pub name: &'a str,
    pub stage: &'a str,
    pub project_id: i64,
    pub project_name: &'a str,
    pub project_full_path: &'a str,
    pub namespace_id: i64,
    pub root_namespace_id: i64,
    pub organization_id: i64,
    pub instance_id: &'a str,
    pub instance_uuid: &'a str,
    pub user_id: i64,
    /// A Go float64; zero marshals as `0`.
    pub time_in_queue_seconds: i64,
    pub project_jobs_running_on_instance_runners_count: &'a str,
    pub queue_size: i64,
    pub queue_depth: i64,
}

#[derive(Serialize)]
pub(crate) struct GitInfo<'a> {
    pub repo_url: String,
    pub repo_object_format: &'a str,
    #[serde(rename = "ref")]
    pub git_ref: &'a str,
    pub sha: &'a str,
    pub before_sha: &'a str,
    pub ref_type: &'a str,
    pub refspecs: Vec<String>,
    pub depth: i64,
    pub protected: Option<bool>,
}

#[derive(Serialize)]
pub(crate) struct RunnerInfo {
    pub timeout: u32,
}

#[derive(Serialize)]
pub(crate) struct Variable<'a> {
    pub key: &'a str,
    pub value: &'a str,
    pub public: bool,
    pub file: bool,
    pub masked: bool,
    pub raw: bool,
}

#[derive(Serialize)]
pub(crate) struct Step<'a> {
    pub name: &'a str,
    pub script: &'a [String],
    pub timeout: u32,
    pub when: &'a str,
    pub allow_failure: bool,
}

#[derive(Serialize)]
pub(crate) struct Image<'a> {
    pub name: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    pub alias: &'a str,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    pub command: &'a [String],
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    pub entrypoint: &'a [String],
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<Port<'a>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub variables: Vec<Variable<'a>>,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    pub pull_policy: &'a [String],
    /// `omitempty` does not omit structs in Go: always present, empty.
    pub executor_opts: ExecutorOpts,
}

#[derive(Serialize)]
pub(crate) struct Port<'a> {
    #[serde(skip_serializing_if = "is_zero")]
    pub number: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub protocol: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<&'a str>,
}

fn is_zero(n: &u16) -> bool {
    *n == 0
}

#[derive(Serialize, Default)]
pub(crate) struct ExecutorOpts {
    pub docker: DockerOpts,
    pub kubernetes: KubernetesOpts,
}

#[derive(Serialize, Default)]
pub(crate) struct DockerOpts {
    pub platform: String,
    pub user: String,
}

#[derive(Serialize, Default)]
pub(crate) struct KubernetesOpts {
    pub user: String,
}

#[derive(Serialize)]
pub(crate) struct Credentials<'a> {
    #[serde(rename = "type")]
    pub kind: &'a str,
    pub url: &'a str,
    pub username: &'a str,
    pub password: &'a str,
}

#[derive(Serialize)]
pub(crate) struct Features {
    pub trace_sections: bool,
    pub token_mask_prefixes: Option<()>,
    pub failure_reasons: Option<()>,
}

#[derive(Serialize)]
pub(crate) struct PolicyOptions {
    pub execution_policy_job: bool,
    pub policy_name: &'static str,
}

/// One entry of `CI_JOB_SERVICES` (`jsonService`).
#[derive(Serialize)]
pub(crate) struct CiJobService<'a> {
    pub name: &'a str,
    pub alias: String,
    pub entrypoint: Option<&'a [String]>,
    pub command: Option<&'a [String]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub variables: Option<BTreeMap<&'a str, &'a str>>,
}
