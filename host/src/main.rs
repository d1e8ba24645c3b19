//! ecs-executor: gitlab-runner's custom executor for AWS ECS (EC2 launch type).
//!
//! gitlab-runner calls this binary for each step of a job: `config`, `prepare`,
//! `run <script> <stage>` (about ten times) and `cleanup`. This file is the edge: it parses
//! the command line, runs the step, and turns its result into the exit code gitlab-runner
//! expects (the mapping itself lives in `failure`).

// What gitlab-runner gives us, and the job it describes.
mod config;
mod job;
mod platform;
mod protocol;
mod registry_auth;
mod registry_secrets;
// The task the job gets, shaped by site plugins.
mod plugins;
mod services;
mod task;
// Where it runs: ECS, the container instance and its Docker daemon.
mod aws;
mod docker;
mod ecs;
mod instance;
mod instance_cache;
mod pool;
mod warm_images;
// How stages run, what is kept between steps, what the job log is told.
mod joblog;
mod metrics;
mod stages;
mod state;
// The four steps, the admin commands, and how a failure becomes an exit code.
mod admin;
mod failure;
mod steps;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::Config;
use crate::failure::{Caller, Failure};

#[derive(Parser)]
#[command(
    name = "ecs-executor",
    version,
    about = "GitLab custom executor that runs jobs on AWS ECS"
)]
struct Cli {
    /// Executor config file [default: $ECS_EXECUTOR_CONFIG, else /etc/ecs-executor/config.toml]
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    step: Step,
}

#[derive(Subcommand)]
enum Step {
    /// Print the driver's JSON settings for gitlab-runner (config_exec).
    Config,
    /// Create the job's task on ECS and wait until it runs (prepare_exec).
    Prepare,
    /// Run one stage's script: `run [run_args...] <script> <stage>` (run_exec).
    Run {
        /// gitlab-runner appends `<script> <stage>` after any configured run_args.
        #[arg(required = true, num_args = 2.., value_name = "ARGS", allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Stop the job's task and remove its state (cleanup_exec).
    Cleanup,
    // ---- admin commands (not called by gitlab-runner) ----
    /// Stop this host's abandoned tasks and remove unused task definitions (cron-safe).
    Gc {
        /// Only list what would be done, one line each.
        #[arg(long)]
        dry_run: bool,
        /// Also judge tasks of this runner short token (this host's runners are known).
        #[arg(long = "runner", value_name = "SHORT_TOKEN")]
        runners: Vec<String>,
    },
    /// The runner is being removed: stop its tasks, deregister and delete its task definitions.
    Unregister {
        #[arg(long)]
        dry_run: bool,
        #[arg(long = "runner", value_name = "SHORT_TOKEN")]
        runners: Vec<String>,
    },
    /// Pull the `[warm_images]` images on every ACTIVE container instance missing them now (gc
    /// does it on each run); fails when one could not be made present.
    WarmImages {
        /// Only inspect and list what would be pulled.
        #[arg(long)]
        dry_run: bool,
    },
    /// Check config, AWS access and cluster, and Docker on every container instance.
    Check,
    /// Site plugin tools (not called by gitlab-runner).
    #[command(subcommand)]
    Plugin(PluginCommand),
    /// Certificates for the container instances' Docker daemons (mutual TLS on 2376).
    #[command(subcommand)]
    Tls(TlsCommand),
    /// Print the task definition a job would get (after every plugin, exactly as
    /// RegisterTaskDefinition would get it) and the address rule, without calling AWS.
    Plan {
        /// A job response JSON, as gitlab-runner writes JOB_RESPONSE_FILE.
        #[arg(long, value_name = "FILE")]
        job_response: PathBuf,
        /// Simulate gitlab-runner's environment: `CUSTOM_ENV_NAME=value` lines (`#` comments),
        /// used instead of this shell's `CUSTOM_ENV_*` variables.
        #[arg(long = "env", value_name = "FILE")]
        env: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum PluginCommand {
    /// Compile every configured plugin into the cache and check its settings.
    Compile,
    /// Run plugin test case files; exit 0 when all pass, 1 when one fails, 2 on unusable input.
    Test {
        /// The plugin component (.wasm).
        plugin: PathBuf,
        /// Case files (JSON, see docs/plugins.md).
        #[arg(required = true)]
        cases: Vec<PathBuf>,
        /// Also print each case's answer and the plugin's log lines.
        #[arg(short, long)]
        verbose: bool,
    },
}

#[derive(Subcommand)]
enum TlsCommand {
    /// Make the server CA, the client CA (trusted by dockerd, used for nothing else) and the
    /// runner's client certificate.
    Init {
        #[arg(long, default_value_os_t = admin::tls::default_dir())]
        dir: PathBuf,
        #[arg(long, default_value_t = 3650)]
        ca_days: u32,
        #[arg(long, default_value_t = 825)]
        client_days: u32,
        /// Replace existing files.
        #[arg(long)]
        force: bool,
    },
    /// Sign a daemon server certificate with the server CA: one for the fleet (--name) or
    /// one per instance (--ip).
    Server {
        #[arg(long, default_value_os_t = admin::tls::default_dir())]
        dir: PathBuf,
        /// DNS name the runner verifies (repeatable).
        #[arg(long = "name")]
        names: Vec<String>,
        /// IP address the runner connects to (repeatable).
        #[arg(long = "ip")]
        ips: Vec<std::net::IpAddr>,
        /// Every host address of an IPv4 subnet, /22 to /30 (repeatable): a fleet certificate
        /// the runner can verify against the instance IP it connects to.
        #[arg(long = "ip-range", value_name = "CIDR")]
        ip_ranges: Vec<String>,
        #[arg(long, default_value_t = 825)]
        days: u32,
        #[arg(long)]
        force: bool,
    },
    /// Put the instance side (client CA, server certificate, server key as SecureString) into
    /// SSM Parameter Store under --prefix.
    PutSsm {
        #[arg(long, default_value_os_t = admin::tls::default_dir())]
        dir: PathBuf,
        #[arg(long, default_value = "/ecs-executor/docker")]
        prefix: String,
        /// Default: the SDK's region chain (AWS_REGION, profile).
        #[arg(long)]
        region: Option<String>,
        /// Endpoint override (a local stand-in).
        #[arg(long)]
        endpoint_url: Option<String>,
        /// KMS key for the SecureString (default: the account's aws/ssm key).
        #[arg(long)]
        kms_key_id: Option<String>,
    },
}

impl Step {
    fn name(&self) -> &'static str {
        match self {
            Step::Config => "config",
            Step::Prepare => "prepare",
            Step::Run { .. } => "run",
            Step::Cleanup => "cleanup",
            Step::Gc { .. } => "gc",
            Step::Unregister { .. } => "unregister",
            Step::WarmImages { .. } => "warm-images",
            Step::Check => "check",
            Step::Plugin(PluginCommand::Compile) => "plugin compile",
            Step::Plugin(PluginCommand::Test { .. }) => "plugin test",
            Step::Plan { .. } => "plan",
            Step::Tls(TlsCommand::Init { .. }) => "tls init",
            Step::Tls(TlsCommand::Server { .. }) => "tls server",
            Step::Tls(TlsCommand::PutSsm { .. }) => "tls put-ssm",
        }
    }

    fn caller(&self) -> Caller {
        match self {
            Step::Config | Step::Prepare | Step::Run { .. } | Step::Cleanup => Caller::GitlabRunner,
            _ => Caller::Admin,
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let (caller, name) = (cli.step.caller(), cli.step.name());
    failure::exit(caller, name, run_step(cli))
}

fn run_step(cli: Cli) -> Result<(), Failure> {
    let path = Config::resolve_path(cli.config.as_deref());
    // Admin commands that need neither an async runtime nor AWS.
    match &cli.step {
        Step::Plugin(PluginCommand::Test { plugin, cases, verbose }) => {
            return admin::plugin::plugin_test(plugin, cases, *verbose);
        }
        Step::Plugin(PluginCommand::Compile) => return admin::plugin::plugin_compile(&Config::load(&path)?),
        Step::Plan { job_response, env } => {
            // Before anything reads the environment or starts a thread.
            if let Some(env) = env {
                admin::plan::simulate_env(env)?;
            }
            return admin::plan::plan(&Config::load(&path)?, job_response);
        }
        Step::Tls(TlsCommand::Init {
            dir,
            ca_days,
            client_days,
            force,
        }) => {
            return admin::tls::init(dir, *ca_days, *client_days, *force);
        }
        Step::Tls(TlsCommand::Server {
            dir,
            names,
            ips,
            ip_ranges,
            days,
            force,
        }) => {
            let mut ips = ips.clone();
            for range in ip_ranges {
                ips.extend(admin::tls::expand_ip_range(range)?);
            }
            return admin::tls::server(dir, names, &ips, *days, *force);
        }
        _ => {}
    }
    let runtime = || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| Failure::system(format!("cannot start the async runtime: {e}")))
    };
    if let Step::Tls(TlsCommand::PutSsm {
        dir,
        prefix,
        region,
        endpoint_url,
        kms_key_id,
    }) = &cli.step
    {
        let target = admin::tls::SsmTarget {
            prefix: prefix.clone(),
            region: region.clone(),
            endpoint_url: endpoint_url.clone(),
            kms_key_id: kms_key_id.clone(),
        };
        return runtime()?.block_on(admin::tls::put_ssm(dir, &target));
    }
    if let Step::Check = cli.step {
        // check reports a bad config as one of its lines.
        return runtime()?.block_on(admin::check::run(&path));
    }
    let config = Config::load(&path)?;
    metrics::init(&config);
    let runtime = runtime()?;
    runtime.block_on(async {
        let shutdown = terminated();
        match cli.step {
            Step::Config => {
                println!("{}", steps::config::run(&config));
                Ok(())
            }
            Step::Prepare => steps::prepare::run(&config, shutdown).await,
            Step::Run { args } => {
                let (script, stage) = (&args[args.len() - 2], &args[args.len() - 1]);
                steps::run::run(&config, script.as_ref(), stage, shutdown).await
            }
            Step::Cleanup => steps::cleanup::run(&config).await,
            Step::Gc { dry_run, runners } => admin::gc::gc(&config, dry_run, &runners).await,
            Step::Unregister { dry_run, runners } => admin::gc::unregister(&config, dry_run, &runners).await,
            Step::WarmImages { dry_run } => admin::warm_images::run(&config, dry_run).await,
            Step::Check | Step::Plugin(_) | Step::Plan { .. } | Step::Tls(_) => unreachable!("handled above"),
        }
    })
}

/// Completes when gitlab-runner asks us to stop (SIGTERM to our process group) or on SIGINT.
/// The handlers are installed at once (not on first poll), so no early signal kills us
/// with the default action while a remote process is already running.
fn terminated() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{SignalKind, signal};
    let handlers = (signal(SignalKind::terminate()), signal(SignalKind::interrupt()));
    async move {
        let (Ok(mut term), Ok(mut int)) = handlers else {
            return std::future::pending().await;
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    }
}
