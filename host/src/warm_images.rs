//! Warm images (issue 16): `ecs-executor gc` keeps the `[warm_images] images` pulled on every
//! ACTIVE container instance of the cluster, so that a cold task of one of them finds the image
//! in the instance's Docker cache. Instances that joined since the last run are covered at the
//! next `gc` (its systemd timer: every 10 minutes).
//!
//! For each instance (ListContainerInstances with status ACTIVE, then the instance cache's
//! DescribeContainerInstances and EC2 DescribeInstances, through the host's ECS rate budget)
//! the Docker address is picked as prepare picks it (address plugins, else `use_private_ip`)
//! and reached over the executor's mutual TLS. Each image is inspected by its reference; one
//! that is missing, or there for another architecture than the instance's
//! `ecs.cpu-architecture`, is pulled for the instance's platform (`linux/amd64`,
//! `linux/arm64`) with a deadline of `pull_timeout_secs`, at most `concurrency` pulls at once.
//!
//! **Credentials**: none, or the runner host's own Docker config (`$HOME/.docker/config.json`,
//! without `HOME` the user's home directory; the source gitlab-runner's Docker executor reads too); never a job's `DOCKER_AUTH_CONFIG`
//! or its payload: gc has no job, and a job's login must never pull for another.
//!
//! Nothing here fails `gc`: each problem is one line on stderr naming the instance and the
//! image, counted in `ecs_executor_warm_image_pulls_total{outcome="failed"}`.
//!
//! Whether a task then pulls nothing is the ECS agent's choice: only
//! `ECS_IMAGE_PULL_BEHAVIOR=prefer-cached` uses an image the agent did not pull itself
//! (`docs/warm-pools.md`, "Warm images").

use std::time::{Duration, Instant};

use futures_util::StreamExt;

use crate::config::Config;
use crate::docker::DockerHost;
use crate::docker::images::PullLogin;
use crate::ecs::Ecs;
use crate::instance::ContainerInstance;
use crate::platform::ARCH_ATTRIBUTE;
use crate::registry_auth::{Logins, registry_host};

/// What a warm-images run did (or, with `dry_run`, would do).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Summary {
    pub instances: usize,
    pub present: usize,
    pub pulled: usize,
    pub failed: usize,
}

/// The reference Docker is asked for: a tag (`:latest`) added when the image has neither a
/// tag nor a digest (a pull without one would fetch every tag of the repository).
pub fn reference(image: &str) -> String {
    if image.contains('@') {
        return image.to_string();
    }
    let last = image.rsplit('/').next().unwrap_or(image);
    if last.contains(':') {
        image.to_string()
    } else {
        format!("{image}:latest")
    }
}

/// Docker's platform and architecture word for ECS's `ecs.cpu-architecture` (unset: x86_64,
/// as ECS's default).
fn docker_platform(ecs_arch: Option<&str>) -> (&'static str, &'static str) {
    match ecs_arch {
        Some("arm64") => ("linux/arm64", "arm64"),
        _ => ("linux/amd64", "amd64"),
    }
}

/// One instance, reached: where to pull and for which platform.
struct Target {
    /// The container instance, for the instance cache (forgotten when Docker does not answer).
    arn: String,
    what: String,
    docker: DockerHost,
    platform: &'static str,
    arch: &'static str,
}

/// Pull the configured images where they are missing. Every line goes to stdout (done) or
/// stderr (a problem); the summary is returned for gc's own line.
pub async fn warm(config: &Config, ecs: &Ecs, ec2: &aws_sdk_ec2::Client, dry_run: bool) -> Summary {
    let settings = &config.warm_images;
    let mut summary = Summary::default();
    if settings.images.is_empty() {
        return summary;
    }
    let problem = |text: String| eprintln!("ecs-executor gc: warm images: {text}");
    let arns = match ecs.active_container_instances().await {
        Ok(a) => a,
        Err(e) => {
            problem(format!("cannot list the cluster's container instances: {e}"));
            return summary;
        }
    };
    let plugins = if config.plugins.is_empty() {
        None
    } else {
        match crate::plugins::load(config) {
            Ok(set) => Some(set).filter(|s| {
                s.plugins()
                    .iter()
                    .any(|p| p.has(ecs_executor_plugin_host::Hook::PickAddress))
            }),
            Err(e) => {
                problem(format!(
                    "the plugins do not load, so no Docker address can be picked: {e}"
                ));
                return summary;
            }
        }
    };
    let home = runner_home();
    let logins = Logins::resolve(None, home.as_deref(), &[]);
    for note in &logins.notes {
        problem(note.clone());
    }

    let mut targets = Vec::new();
    for arn in &arns {
        let instance = match crate::instance_cache::resolve(&config.state_dir, ecs, ec2, arn).await {
            Ok(i) => i,
            Err(e) => {
                problem(format!("container instance {arn}: {e}"));
                summary.failed += settings.images.len();
                count_failed(settings.images.len());
                continue;
            }
        };
        match target(config, plugins.as_ref(), &instance) {
            Ok(t) => targets.push(t),
            Err(e) => {
                problem(format!("instance {}: {e}", instance.ec2_instance_id));
                summary.failed += settings.images.len();
                count_failed(settings.images.len());
            }
        }
    }
    summary.instances = arns.len();

    let timeout = Duration::from_secs(settings.pull_timeout_secs);
    let jobs = targets
        .iter()
        .flat_map(|t| settings.images.iter().map(move |image| (t, image)))
        .map(|(t, image)| {
            let login = logins.for_image(image).map(|l| PullLogin {
                server: registry_host(image),
                username: l.username.clone(),
                password: l.password.clone(),
            });
            let state_dir = config.state_dir.as_path();
            async move { ensure(t, image, login, timeout, dry_run, state_dir).await }
        });
    let outcomes: Vec<Outcome> = futures_util::stream::iter(jobs)
        .buffer_unordered(settings.concurrency)
        .collect()
        .await;
    for o in outcomes {
        match o {
            Outcome::Present => summary.present += 1,
            Outcome::Pulled => summary.pulled += 1,
            Outcome::Failed => summary.failed += 1,
        }
    }
    summary
}

/// The runner host's home for its Docker config: `$HOME`, else the home directory of the user
/// this process runs as (systemd gives a root service without `User=` no `HOME`).
fn runner_home() -> Option<std::path::PathBuf> {
    if let Some(home) = std::env::var_os("HOME").filter(|h| !h.is_empty()) {
        return Some(home.into());
    }
    home_of_effective_user()
}

/// The home directory `getpwuid_r` gives for this process's effective user.
fn home_of_effective_user() -> Option<std::path::PathBuf> {
    let mut buf = vec![0u8; 16 * 1024];
    // SAFETY: getpwuid_r writes only into `pwd` and `buf` (of the length passed); `result`
    // points at `pwd` on success, and `pw_dir` into `buf`, read before either goes away.
    unsafe {
        let mut pwd: libc::passwd = std::mem::zeroed();
        let mut result: *mut libc::passwd = std::ptr::null_mut();
        let rc = libc::getpwuid_r(
            libc::geteuid(),
            &mut pwd,
            buf.as_mut_ptr().cast(),
            buf.len(),
            &mut result,
        );
        if rc != 0 || result.is_null() || pwd.pw_dir.is_null() {
            return None;
        }
        let dir = std::ffi::CStr::from_ptr(pwd.pw_dir);
        use std::os::unix::ffi::OsStrExt;
        Some(std::path::PathBuf::from(std::ffi::OsStr::from_bytes(dir.to_bytes())))
    }
}

fn count_failed(n: usize) {
    for _ in 0..n {
        crate::metrics::warm_image_pull("failed");
    }
}

fn target(
    config: &Config,
    plugins: Option<&ecs_executor_plugin_host::PluginSet>,
    instance: &ContainerInstance,
) -> Result<Target, String> {
    let (endpoint, _) = crate::plugins::docker_endpoint_without_job(config, plugins, instance)
        .map_err(|e| format!("Docker address: {e}"))?;
    let docker = DockerHost::connect(&config.docker, &endpoint).map_err(|e| e.to_string())?;
    let ecs_arch = instance
        .attributes
        .iter()
        .find(|(n, _)| n == ARCH_ATTRIBUTE)
        .and_then(|(_, v)| v.as_deref());
    let (platform, arch) = docker_platform(ecs_arch);
    Ok(Target {
        arn: instance.container_instance_arn.clone(),
        what: format!(
            "instance {} (Docker at {}, {platform})",
            instance.ec2_instance_id,
            endpoint.address()
        ),
        docker,
        platform,
        arch,
    })
}

enum Outcome {
    Present,
    Pulled,
    Failed,
}

/// One image on one instance: inspect, and pull when missing (or of another architecture).
async fn ensure(
    t: &Target,
    image: &str,
    login: Option<PullLogin>,
    timeout: Duration,
    dry_run: bool,
    state_dir: &std::path::Path,
) -> Outcome {
    let reference = reference(image);
    let failed = |why: String| {
        eprintln!("ecs-executor gc: warm image {image} on {}: {why}", t.what);
        crate::metrics::warm_image_pull("failed");
        Outcome::Failed
    };
    let inspect_limit = Duration::from_secs(30);
    let why_pull = match tokio::time::timeout(inspect_limit, t.docker.image_architecture(&reference)).await {
        Err(_) => {
            // The address may be stale: the next run looks the instance up again.
            crate::instance_cache::forget(state_dir, &t.arn);
            return failed(format!(
                "Docker did not answer an image inspect within {} s",
                inspect_limit.as_secs()
            ));
        }
        Ok(Err(e)) => {
            crate::instance_cache::forget(state_dir, &t.arn);
            return failed(e.to_string());
        }
        Ok(Ok(Some(arch))) if arch == t.arch => {
            crate::metrics::warm_image_pull("present");
            return Outcome::Present;
        }
        Ok(Ok(Some(arch))) => format!("there for {arch:?}, not {}", t.arch),
        Ok(Ok(None)) => "missing".to_string(),
    };
    if dry_run {
        println!("would pull warm image {reference} on {} ({why_pull})", t.what);
        return Outcome::Pulled;
    }
    let with = match &login {
        Some(l) => format!(" as {} (the runner host's Docker config)", l.username),
        None => String::new(),
    };
    let started = Instant::now();
    match tokio::time::timeout(timeout, t.docker.pull_image(&reference, t.platform, login.as_ref())).await {
        Err(_) => failed(format!(
            "the pull did not finish within pull_timeout_secs = {} ({why_pull} before)",
            timeout.as_secs()
        )),
        Ok(Err(e)) => failed(format!("the pull{with} failed: {e}")),
        Ok(Ok(())) => {
            println!(
                "pulled warm image {reference} on {}{with} in {:.1} s ({why_pull} before)",
                t.what,
                started.elapsed().as_secs_f64()
            );
            crate::metrics::warm_image_pull("pulled");
            Outcome::Pulled
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reference_without_tag_or_digest_gets_latest() {
        assert_eq!(reference("alpine"), "alpine:latest");
        assert_eq!(reference("127.0.0.1:5000/x"), "127.0.0.1:5000/x:latest");
        assert_eq!(reference("127.0.0.1:5000/x:1"), "127.0.0.1:5000/x:1");
        assert_eq!(reference("a@sha256:00"), "a@sha256:00");
    }

    #[test]
    fn without_home_the_effective_users_home_directory_is_used() {
        let uid = unsafe { libc::geteuid() }.to_string();
        let passwd = std::fs::read_to_string("/etc/passwd").unwrap();
        let expected = passwd
            .lines()
            .map(|l| l.split(':').collect::<Vec<_>>())
            .find(|f| f.len() > 5 && f[2] == uid)
            .map(|f| std::path::PathBuf::from(f[5]));
        assert!(expected.is_some(), "uid {uid} not in /etc/passwd");
        assert_eq!(home_of_effective_user(), expected);
    }

    #[test]
    fn ecs_architectures_map_to_docker_platforms() {
        assert_eq!(docker_platform(Some("arm64")), ("linux/arm64", "arm64"));
        assert_eq!(docker_platform(Some("x86_64")), ("linux/amd64", "amd64"));
        assert_eq!(docker_platform(None), ("linux/amd64", "amd64"));
    }
}
