//! `check`: is this runner host ready to run jobs? One line per check on stdout, `ok` or
//! `FAIL` with what to fix; fails (SYSTEM_FAILURE's code) unless every check passed.
//!
//! Checks: the config file; each configured plugin (loads, settings accepted); AWS credentials and the cluster
//! (DescribeClusters); for each registered container instance: its EC2 metadata options
//! (IMDSv2 required, hop limit 1: containers cannot reach the instance role), its Docker
//! address as prepare picks it (address plugins applied, with a job of no project: id 0, no
//! variables), the daemon's version over mutual TLS (or plain TCP where the config allows it)
//! with the server certificate checked against the address or the plugin's
//! `tls_server_name`, that the daemon refuses a TLS client without a certificate, and that
//! this host has a stage runner binary for the instance's CPU architecture (`warn` when not:
//! jobs there run, through Docker exec).

use std::path::Path;
use std::time::Duration;

use crate::aws::AwsClients;
use crate::config::Config;
use crate::docker::{DockerEndpoint, DockerHost};
use crate::ecs::Ecs;
use crate::failure::Failure;
use crate::instance::ContainerInstance;

#[derive(Default)]
struct Report {
    passed: usize,
    failed: usize,
    warned: usize,
}

impl Report {
    fn ok(&mut self, what: impl std::fmt::Display) {
        self.passed += 1;
        println!("ok   {what}");
    }

    /// Jobs run, but not as well as they could: said, and not counted as a failure.
    fn warn(&mut self, what: impl std::fmt::Display, fix: impl std::fmt::Display) {
        self.warned += 1;
        println!("warn {what}\n     fix: {fix}");
    }

    fn fail(&mut self, what: impl std::fmt::Display, fix: impl std::fmt::Display) {
        self.failed += 1;
        println!("FAIL {what}\n     fix: {fix}");
    }
}

pub async fn run(config_path: &Path) -> Result<(), Failure> {
    let mut report = Report::default();
    let config = match Config::load(config_path) {
        Ok(c) => {
            report.ok(format_args!(
                "config {}: cluster {}, region {}, family_prefix {}",
                config_path.display(),
                c.cluster,
                c.region,
                c.family_prefix
            ));
            c
        }
        Err(e) => {
            report.fail(
                format_args!("config: {e}"),
                "correct the file (or pass --config / set ECS_EXECUTOR_CONFIG)",
            );
            return finish(report);
        }
    };

    // Plugins: each one loaded on its own (compiled into the cache when it is not there yet)
    // and its settings checked by its `validate-settings`, so one bad plugin does not hide
    // the state of the others.
    match crate::plugins::specs(&config) {
        Err(e) => report.fail(format_args!("plugins: {e}"), "fix the [[plugins]] entries"),
        Ok(specs) => {
            let cache = crate::plugins::cache(&config);
            for spec in &specs {
                match ecs_executor_plugin_host::PluginSet::load(
                    &cache,
                    std::slice::from_ref(spec),
                    ecs_executor_plugin_host::SettingsCheck::Always,
                ) {
                    Ok(set) => {
                        let hooks: Vec<&str> = set
                            .plugins()
                            .iter()
                            .flat_map(|p| p.hooks())
                            .filter(|h| *h != ecs_executor_plugin_host::Hook::ValidateSettings)
                            .map(|h| h.name())
                            .collect();
                        report.ok(format_args!(
                            "plugin `{}` ({}): settings accepted; hooks: {}",
                            spec.name,
                            spec.path.display(),
                            hooks.join(", ")
                        ))
                    }
                    Err(e) => report.fail(
                        format_args!("plugin `{}`: {e}", spec.name),
                        "fix its `path` or `settings`, or rebuild it against wit/ (ecs-executor:plugin@0.1.0)",
                    ),
                }
            }
        }
    }

    // The whole set for the Docker address, as prepare loads it (only when every plugin
    // loaded: a broken one is reported above, and the built-in rule is used then).
    let address_plugins = if config.plugins.is_empty() || report.failed > 0 {
        None
    } else {
        crate::plugins::load(&config).ok().filter(|set| {
            set.plugins()
                .iter()
                .any(|p| p.has(ecs_executor_plugin_host::Hook::PickAddress))
        })
    };

    let clients = AwsClients::load(&config).await;
    let ecs = Ecs::new(clients.ecs.clone(), &config.cluster);
    match ecs.cluster_status().await {
        Ok(Some(status)) if status == "ACTIVE" => report.ok(format_args!(
            "AWS credentials and cluster {} in {} (ACTIVE)",
            config.cluster, config.region
        )),
        Ok(Some(status)) => report.fail(
            format_args!("cluster {} in {} is {status}", config.cluster, config.region),
            "use an ACTIVE cluster in `cluster`",
        ),
        Ok(None) => report.fail(
            format_args!("cluster {} not found in {}", config.cluster, config.region),
            "check `cluster` and `region`",
        ),
        Err(e) => {
            report.fail(
                format_args!("AWS: {e}"),
                "check the credentials (aws.profile, the environment or the instance role; they need \
                 ecs:DescribeClusters) and `region` / `endpoint_url`",
            );
            return finish(report);
        }
    }

    let instances = match ecs.container_instances().await {
        Ok(i) => i,
        Err(e) => {
            report.fail(format_args!("{e}"), "the credentials need ecs:ListContainerInstances");
            return finish(report);
        }
    };
    if instances.is_empty() {
        report.fail(
            format_args!("cluster {} has no container instances", config.cluster),
            "start instances with the ECS agent joined to this cluster (or check the capacity provider)",
        );
    }
    for arn in instances {
        check_instance(&config, address_plugins.as_ref(), &ecs, &clients.ec2, &arn, &mut report).await;
    }
    finish(report)
}

async fn check_instance(
    config: &Config,
    plugins: Option<&ecs_executor_plugin_host::PluginSet>,
    ecs: &Ecs,
    ec2: &aws_sdk_ec2::Client,
    arn: &str,
    report: &mut Report,
) {
    let instance = match ContainerInstance::resolve(ecs, ec2, arn).await {
        Ok(i) => i,
        Err(e) => {
            return report.fail(
                format_args!("container instance {arn}: {e}"),
                "the credentials need ecs:DescribeContainerInstances and ec2:DescribeInstances",
            );
        }
    };
    // Job containers must not reach the instance role through the metadata service.
    match &instance.metadata_options {
        Some(m) if m.endpoint_enabled && (m.http_tokens != "required" || m.hop_limit > 1) => report.fail(
            format_args!(
                "instance {} metadata options: HttpTokens={}, HttpPutResponseHopLimit={}: job containers can \
                 reach the instance's credentials (169.254.169.254)",
                instance.ec2_instance_id, m.http_tokens, m.hop_limit
            ),
            format_args!(
                "aws ec2 modify-instance-metadata-options --instance-id {} --http-tokens required \
                 --http-put-response-hop-limit 1 (and set MetadataOptions in the launch template)",
                instance.ec2_instance_id
            ),
        ),
        Some(m) => report.ok(format_args!(
            "instance {} metadata options: {}",
            instance.ec2_instance_id,
            if m.endpoint_enabled {
                format!("HttpTokens={}, hop limit {}", m.http_tokens, m.hop_limit)
            } else {
                "endpoint disabled".to_string()
            }
        )),
        None => report.fail(
            format_args!("instance {}: EC2 reports no metadata options", instance.ec2_instance_id),
            "check that ec2:DescribeInstances answers for the instance",
        ),
    }
    let (endpoint, chosen_by) = match docker_endpoint(config, plugins, &instance) {
        Ok(e) => e,
        Err(e) => {
            return report.fail(
                format_args!("Docker address of {}: {e}", instance.ec2_instance_id),
                "set `use_private_ip` to the address the runner can reach, or fix the address plugin",
            );
        }
    };
    let transport = if config.docker.tls { "mutual TLS" } else { "PLAIN TCP" };
    let how = match (&chosen_by, &endpoint.tls_server_name) {
        (Some(plugin), Some(name)) => format!("{transport}, address from plugin `{plugin}`, certificate for {name}"),
        (Some(plugin), None) => format!("{transport}, address from plugin `{plugin}`"),
        (None, _) => transport.to_string(),
    };
    let what = format!(
        "Docker at {} on {} ({how})",
        endpoint.address(),
        instance.ec2_instance_id
    );
    let docker = match DockerHost::connect(&config.docker, &endpoint) {
        Ok(d) => d,
        Err(e) => return report.fail(format_args!("{what}: {e}"), "fix the docker.* TLS files"),
    };
    let limit = Duration::from_secs(config.docker.connect_timeout_secs + 5);
    match tokio::time::timeout(limit, docker.version()).await {
        Ok(Ok((version, api))) => report.ok(format_args!("{what}: Docker {version} (API {api})")),
        Ok(Err(e)) => {
            return report.fail(
                format_args!("{what}: {e}"),
                "make dockerd listen with --tlsverify on docker.port, signed by docker.ca_file, trusting the CA of \
                 docker.cert_file (and let the runner host through the security group)",
            );
        }
        Err(_) => {
            return report.fail(
                format_args!("{what}: no answer within {} s", limit.as_secs()),
                "check the security group / firewall between this host and the instance",
            );
        }
    }
    if config.docker.tls {
        check_refuses_anonymous(config, &endpoint, &instance.ec2_instance_id, limit, report).await;
    }
    check_stage_runner(config, &instance, report);
}

/// The stage runner binary for the instance's CPU architecture: without it the jobs placed
/// there still run, every stage through Docker exec (slower to start, no byte-exact
/// interleaving of stdout and stderr) — a warning, not a failure.
fn check_stage_runner(config: &Config, instance: &ContainerInstance, report: &mut Report) {
    if crate::stages::runner::disabled_because(config).is_some() {
        return; // said once for the host by prepare; not a property of the instance
    }
    match crate::stages::runner::binary_for_instance(config, &instance.attributes) {
        Ok(path) => report.ok(format_args!(
            "stage runner for instance {}: {}",
            instance.ec2_instance_id,
            path.display()
        )),
        Err(why) => report.warn(
            format_args!(
                "instance {}: stages will use Docker exec: {why}",
                instance.ec2_instance_id
            ),
            "install the stage runner for that architecture (the package ships ecs-executor-stage-runner-arm64) \
             or keep such instances out of this runner's cluster",
        ),
    }
}

/// The Docker endpoint of `instance` as prepare picks it (`plugins::docker_endpoint_without_job`).
fn docker_endpoint(
    config: &Config,
    plugins: Option<&ecs_executor_plugin_host::PluginSet>,
    instance: &ContainerInstance,
) -> Result<(DockerEndpoint, Option<String>), Failure> {
    crate::plugins::docker_endpoint_without_job(config, plugins, instance)
}

/// The daemon must refuse a TLS client that offers no certificate (dockerd's `--tlsverify`):
/// one connection trusting docker.ca_file without a client certificate, and a ping.
async fn check_refuses_anonymous(
    config: &Config,
    endpoint: &DockerEndpoint,
    instance_id: &str,
    limit: Duration,
    report: &mut Report,
) {
    let what = format!("Docker at {} on {instance_id}", endpoint.address());
    let anonymous = match DockerHost::connect_without_client_cert(&config.docker, endpoint) {
        Ok(d) => d,
        Err(e) => return report.fail(format_args!("{what}: {e}"), "fix the docker.* TLS files"),
    };
    match tokio::time::timeout(limit, anonymous.ping()).await {
        Ok(Ok(())) => report.fail(
            format_args!(
                "{what} answers a client WITHOUT a certificate: anyone who reaches the port is root on the instance"
            ),
            "run dockerd with --tlsverify and tlscacert = the client CA (daemon.json \"tlsverify\": true; \
             deploy/cluster.yaml's user data writes it)",
        ),
        Ok(Err(e)) => {
            let text = e.to_string();
            let refused = [
                "refused our client certificate",
                "the connection to the daemon was lost",
            ]
            .iter()
            .any(|m| text.contains(m));
            if refused {
                report.ok(format_args!("{what} refuses a client without a certificate"))
            } else {
                report.fail(
                    format_args!("{what}: cannot tell whether it refuses a client without a certificate: {e}"),
                    "check dockerd's TLS settings (--tlsverify, tlscacert) and the network path",
                )
            }
        }
        Err(_) => report.fail(
            format_args!(
                "{what}: no answer within {} s to a client without a certificate",
                limit.as_secs()
            ),
            "check dockerd's TLS settings (--tlsverify, tlscacert)",
        ),
    }
}

fn finish(report: Report) -> Result<(), Failure> {
    if report.failed == 0 {
        match report.warned {
            0 => println!("all {} checks passed", report.passed),
            n => println!("all {} checks passed, {n} with a warning", report.passed),
        }
        Ok(())
    } else {
        Err(Failure::system(format!(
            "{} of {} checks failed",
            report.failed,
            report.failed + report.passed
        )))
    }
}
