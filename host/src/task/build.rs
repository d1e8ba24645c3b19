//! The task a job gets, built the same way for `prepare` and `plan`: the executor's built-in
//! task, the job's services (mapped by a services plugin, else built in), the plugins'
//! task-definition chain, then the stage runner's ports.

use ecs_executor_plugin_host::PluginSet;

use super::TaskSpec;
use super::request::{self, RegisterRequest};
use crate::config::Config;
use crate::failure::Failure;
use crate::job::JobContext;
use crate::joblog::log_note;
use crate::protocol::JobResponse;
use crate::registry_auth::{self, JobRegistryAuth};
use crate::services::{self, JobServices};

/// What a job runs on: its task, the services the executor launches itself, and the one
/// RegisterTaskDefinition request for the task.
pub struct JobTask {
    pub spec: TaskSpec,
    /// Only the services the executor launches after RUNNING (plugin-mapped ones are not).
    pub services: JobServices,
    pub request: RegisterRequest,
    /// The images pulled with the job's registry credentials, and the secrets to write.
    pub registry: JobRegistryAuth,
}

impl JobTask {
    /// The task the job gets, as prepare registers it and `plan` shows it: the built-in task,
    /// the job's services (mapped by a services plugin, else built in), then the plugins'
    /// task-definition chain. Also the services the executor itself launches after RUNNING.
    pub fn build(
        config: &Config,
        job: &JobContext,
        response: &JobResponse,
        plugins: &PluginSet,
    ) -> Result<JobTask, Failure> {
        // Services: validated (limits, allowlist, aliases) before any ECS call. A site plugin may
        // map a service (`services` hook); the others get the built-in mapping, and only those are
        // launched and waited for by the executor after the task runs.
        let mut services = JobServices::load(config, response)?;
        for note in &services.notes {
            log_note(note);
        }
        let mut spec = TaskSpec::for_job(config, job);
        let mapped = crate::plugins::map_services(plugins, job, response)?;
        let mut builtin = Vec::new();
        for (i, service) in services.services.iter().enumerate() {
            match mapped.get(i).cloned().flatten() {
                Some(defs) => {
                    let containers = defs
                        .iter()
                        .map(|d| crate::plugins::container_from_wit(d, None))
                        .collect::<Result<Vec<_>, _>>()
                        .map_err(|e| {
                            Failure::system(format!("the services plugins' mapping of {}: {e}", service.image))
                        })?;
                    if let Some(dup) = containers
                        .iter()
                        .find(|c| spec.containers.iter().any(|o| o.name == c.name))
                    {
                        return Err(Failure::system(format!(
                            "the services plugins' mapping of {}: container name {:?} is already taken",
                            service.image, dup.name
                        )));
                    }
                    services::add_to_spec(&mut spec, service, containers);
                }
                None => {
                    services::add_to_spec(&mut spec, service, services::builtin_containers(config, service));
                    builtin.push(service.clone());
                }
            }
        }
        services.services = builtin;
        // Site plugins change the definition (or refuse the job) before anything is registered;
        // the reuse hash below is taken from their answer.
        let mut spec = crate::plugins::customize_task(plugins, config, job, response, spec)?;
        crate::stages::runner::publish_ports(config, &mut spec);
        // The job's registry logins, after the plugins (which may change images or the
        // execution role): secret names only, in the definition and its hash.
        let logins = registry_auth::job_logins(response);
        let scope = registry_auth::secret_scope(job, response);
        let (registry, notes) = registry_auth::attach(config, job, &scope, &logins, &mut spec);
        for note in notes {
            log_note(job.redact(&note));
        }
        let family = request::family(
            &spec,
            config.task_definition_mode,
            &config.family_prefix,
            job.key.job_id,
        );
        let request = RegisterRequest::new(&spec, &family, &config.family_prefix)
            .map_err(|e| Failure::system(format!("the plugins' task definition: {e}")))?;
        Ok(JobTask {
            spec,
            services,
            request,
            registry,
        })
    }
}
