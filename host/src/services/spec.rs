//! What a CI service is: the job's `services:` read from the job response (names expanded as
//! gitlab-runner expands them), checked against the runner's limits, with the host names each
//! answers to and the environment it gets.

use std::collections::{BTreeMap, BTreeSet};

use serde::Deserialize;

use crate::config::Config;
use crate::failure::{Blame, Classify};
use crate::protocol::{JobResponse, JobService, RUNNER_INTERNAL_VARIABLES, custom_env, expand_value};

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("CUSTOM_ENV_CI_JOB_SERVICES is not valid JSON: {0}")]
    BadServicesVariable(String),
    #[error("service {index} has no image name")]
    NoImage { index: usize },
    #[error("service {image:?}: {problem}")]
    BadImage { image: String, problem: String },
    #[error(
        "service {image:?}: alias {alias:?} is not a valid host name (letters, digits, '-', '_' and '.'; at most 63 characters between dots)"
    )]
    BadAlias { image: String, alias: String },
    #[error("the job has {count} services; this runner allows at most {max}")]
    TooMany { count: usize, max: usize },
    #[error("service image {image:?} is not allowed on this runner (allowed: {allowed})")]
    NotAllowed { image: String, allowed: String },
    #[error("service {image:?}: {problem}")]
    BadUser { image: String, problem: String },
}

impl Classify for ServiceError {
    fn blame(&self) -> Blame {
        match self {
            // gitlab-runner wrote it; we cannot read what it meant.
            ServiceError::BadServicesVariable(_) => Blame::System,
            // Everything else is what the job asked for.
            _ => Blame::Build,
        }
    }
}

/// One service of the job, validated.
#[derive(Debug, Clone)]
pub struct Service {
    /// Position in the job's `services:` (0-based).
    pub index: usize,
    /// The task's container for it: `svc-<index>`.
    pub container: String,
    pub image: String,
    /// Every alias the job gave it, in order.
    pub aliases: Vec<String>,
    /// The names it answers to: its aliases, then the two derived from the image; a name an
    /// earlier service already has is not repeated.
    pub hostnames: Vec<String>,
    pub entrypoint: Option<Vec<String>>,
    pub command: Option<Vec<String>>,
    /// `services: docker: user:`: its container runs as this user (ECS `user`).
    pub user: Option<String>,
    /// Its environment: the job's public and runner-internal variables, then its own,
    /// `$VAR`-expanded. SECRET: only ever written into the container over Docker exec.
    pub environment: Vec<(String, String)>,
}

impl Service {
    /// `HEALTHCHECK_TCP_PORT` from its environment, if set and a port number.
    pub fn healthcheck_port(&self) -> Option<u16> {
        self.environment
            .iter()
            .rev()
            .find(|(k, _)| k == "HEALTHCHECK_TCP_PORT")
            .and_then(|(_, v)| v.trim().parse().ok())
            .filter(|p| *p > 0)
    }
}

/// The job's services, in order.
#[derive(Debug, Clone, Default)]
pub struct JobServices {
    pub services: Vec<Service>,
    /// Notes for the job log (duplicate host names skipped, ...).
    pub notes: Vec<String>,
}

/// One entry of `CUSTOM_ENV_CI_JOB_SERVICES` (names and first alias, `$VAR`-expanded).
#[derive(Debug, Deserialize)]
pub(super) struct ExpandedService {
    #[serde(default)]
    pub(super) name: String,
    #[serde(default)]
    pub(super) alias: String,
}

impl JobServices {
    /// The job's services from the job response file, with the names gitlab-runner expanded
    /// from `CUSTOM_ENV_CI_JOB_SERVICES`, validated against the config's limits.
    pub fn load(config: &Config, response: &JobResponse) -> Result<JobServices, ServiceError> {
        let expanded = match custom_env("CI_JOB_SERVICES").filter(|s| !s.trim().is_empty()) {
            Some(text) => serde_json::from_str::<Option<Vec<ExpandedService>>>(&text)
                .map_err(|e| ServiceError::BadServicesVariable(e.to_string()))?
                .unwrap_or_default(),
            None => Vec::new(),
        };
        let internal = internal_variables(response);
        Self::from_parts(config, response, &expanded, &internal)
    }

    pub(super) fn from_parts(
        config: &Config,
        response: &JobResponse,
        expanded: &[ExpandedService],
        internal: &[(String, String)],
    ) -> Result<JobServices, ServiceError> {
        let listed = &response.services;
        let max = config.services.max_per_job;
        if listed.len() > max {
            return Err(ServiceError::TooMany {
                count: listed.len(),
                max,
            });
        }
        // What every service gets: the job's public variables and the runner's own (GitLab:
        // `PublicOrInternal()`); project/group settings variables (masked ones among them)
        // are not passed to services.
        let mut job_vars: Vec<(String, String)> = internal.to_vec();
        job_vars.extend(
            response
                .variables
                .iter()
                .filter(|v| v.public && !v.file)
                .map(|v| (v.key.clone(), v.value.clone())),
        );
        let mut out = JobServices::default();
        let mut taken = BTreeSet::new();
        for (index, s) in listed.iter().enumerate() {
            // gitlab-runner expands `$VARS` in names and aliases for CI_JOB_SERVICES only.
            let env_entry = expanded.get(index).filter(|_| expanded.len() == listed.len());
            let image = match env_entry {
                Some(e) if s.name.contains('$') && !e.name.is_empty() => e.name.clone(),
                _ => s.name.clone(),
            };
            if image.trim().is_empty() {
                return Err(ServiceError::NoImage { index });
            }
            crate::job::validate_image(&image).map_err(|e| ServiceError::BadImage {
                image: image.clone(),
                problem: e.to_string(),
            })?;
            if !image_allowed(&image, &config.services.allowed_images) {
                return Err(ServiceError::NotAllowed {
                    image,
                    allowed: config.services.allowed_images.join(", "),
                });
            }
            let mut aliases = split_aliases(&s.alias);
            if let (Some(e), Some(first)) = (env_entry, aliases.first_mut())
                && first.contains('$')
                && !e.alias.is_empty()
            {
                *first = e.alias.clone();
            }
            if let Some(bad) = aliases.iter().find(|a| !valid_hostname(a)) {
                return Err(ServiceError::BadAlias {
                    image,
                    alias: bad.clone(),
                });
            }
            let mut hostnames = Vec::new();
            for name in aliases.iter().cloned().chain(derived_names(&image)) {
                if taken.insert(name.clone()) {
                    hostnames.push(name);
                } else if !hostnames.contains(&name) {
                    out.notes.push(format!(
                        "service {image} (#{index}): host name {name:?} already belongs to an earlier service; skipped"
                    ));
                }
            }
            let user = match s.executor_opts.docker.user.trim() {
                "" => None,
                user => Some(
                    crate::job::validate_user(&format!("services[{index}]: docker: user:"), user).map_err(|e| {
                        ServiceError::BadUser {
                            image: image.clone(),
                            problem: e.to_string(),
                        }
                    })?,
                ),
            };
            let mut environment = job_vars.clone();
            environment.extend(service_variables(s));
            out.services.push(Service {
                index,
                container: format!("svc-{index}"),
                image,
                aliases,
                hostnames,
                entrypoint: s.entrypoint.clone().filter(|e| !e.is_empty()),
                command: s.command.clone().filter(|c| !c.is_empty()),
                user,
                environment: expand(&environment),
            });
        }
        Ok(out)
    }

    pub fn is_empty(&self) -> bool {
        self.services.is_empty()
    }
}

fn service_variables(s: &JobService) -> impl Iterator<Item = (String, String)> + '_ {
    s.variables.iter().map(|v| (v.key.clone(), v.value.clone()))
}

/// The runner's own variables (`CI_BUILDS_DIR`, `CI_RUNNER_VERSION`, ...): the `CUSTOM_ENV_*`
/// named in [`RUNNER_INTERNAL_VARIABLES`] that are not job variables from GitLab. Nothing
/// else of `CUSTOM_ENV_*` reaches a service (the `secrets:` keyword's values arrive there).
fn internal_variables(response: &JobResponse) -> Vec<(String, String)> {
    let mut vars: Vec<(String, String)> = RUNNER_INTERNAL_VARIABLES
        .iter()
        .filter(|k| !response.sets(k))
        .filter_map(|k| Some((k.to_string(), custom_env(k)?)))
        .collect();
    vars.sort();
    vars
}

/// `$VAR` / `${VAR}` expansion over the list, as gitlab-runner's `Variables.Expand()` does:
/// names are looked up in the list itself (last definition wins), unknown ones become empty,
/// `$$` is a literal `$`.
pub(super) fn expand(vars: &[(String, String)]) -> Vec<(String, String)> {
    let lookup: BTreeMap<&str, &str> = vars.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    vars.iter()
        .map(|(k, v)| {
            (
                k.clone(),
                expand_value(v, &|name| lookup.get(name).copied().unwrap_or("").to_string()),
            )
        })
        .collect()
}

/// gitlab-runner's `Image.Aliases()`: commas count as spaces.
fn split_aliases(alias: &str) -> Vec<String> {
    alias.replace(',', " ").split_whitespace().map(String::from).collect()
}

/// A name `/etc/hosts` and Docker links accept: labels of letters, digits, '-' and '_'.
fn valid_hostname(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        })
}

/// A name ECS accepts in a container link (no dots).
pub(super) fn link_name(name: &str) -> bool {
    name.len() <= 255 && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// The two names GitLab derives from a service image: `registry:5000/a/b:tag@sha256:..` gives
/// `registry__a__b` and `registry-a-b` (tag, digest and registry port dropped).
pub fn derived_names(image: &str) -> Vec<String> {
    let no_digest = image.split('@').next().unwrap_or(image);
    let (path, last) = match no_digest.rsplit_once('/') {
        Some((path, last)) => (Some(path), last),
        None => (None, no_digest),
    };
    let last = last.split(':').next().unwrap_or(last);
    let mut segments: Vec<&str> = path.map(|p| p.split('/').collect()).unwrap_or_default();
    if let Some(first) = segments.first_mut() {
        // A registry port ("host:5000").
        *first = first.split(':').next().unwrap_or(first);
    }
    segments.push(last);
    let a = segments.join("__");
    let b = segments.join("-");
    let mut names = vec![a];
    if !names.contains(&b) {
        names.push(b);
    }
    names.retain(|n| valid_hostname(n));
    names
}

/// `*` matches within one path segment, `**` across segments; anything else literally.
pub(super) fn image_allowed(image: &str, patterns: &[String]) -> bool {
    patterns.is_empty() || patterns.iter().any(|p| glob(p.as_bytes(), image.as_bytes()))
}

fn glob(p: &[u8], s: &[u8]) -> bool {
    match p {
        [] => s.is_empty(),
        [b'*', b'*', rest @ ..] => (0..=s.len()).any(|i| glob(rest, &s[i..])),
        [b'*', rest @ ..] => (0..=s.len())
            .take_while(|&i| i == 0 || s[i - 1] != b'/')
            .any(|i| glob(rest, &s[i..])),
        [c, rest @ ..] => s.first() == Some(c) && glob(rest, &s[1..]),
    }
}
