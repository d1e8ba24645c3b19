//! The job's `docker: platform:` (on `image:` and on `services:` entries): which CPU
//! architecture the job's task must run on, as ECS names it in the container instance
//! attribute `ecs.cpu-architecture`; the placement constraint that puts the task there; and
//! the failure when the cluster has no such instance (prepare asks ECS before anything is
//! registered or run: `Ecs::has_instance_where`).
//!
//! All of a job's containers are one ECS task on one instance, so every platform the job names
//! must agree on the architecture. The OS is Linux (EC2 Linux container instances); a variant
//! (`linux/arm64/v8`, `linux/amd64/v3`) is accepted and does not choose instances. The value is
//! the job author's choice: it decides where the task goes, never its roles or identity.

use crate::failure::{Blame, Classify};
use crate::protocol::JobResponse;

/// The container instance attribute ECS (and its agent) reports the CPU architecture in.
pub const ARCH_ATTRIBUTE: &str = "ecs.cpu-architecture";

/// A platform the job asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Platform {
    /// As the job wrote it (`linux/arm64`).
    pub written: String,
    /// Where it was written (`image: docker: platform:`, `services[0] (postgres:16): docker: platform:`).
    pub origin: String,
    /// ECS's name for the architecture: `x86_64` or `arm64`.
    pub arch: &'static str,
}

#[derive(Debug, thiserror::Error)]
pub enum PlatformError {
    #[error("{origin} is {written:?}: {problem}")]
    Unsupported {
        origin: String,
        written: String,
        problem: String,
    },
    #[error(
        "{first} and {second} ask for different architectures: all of a job's containers run in \
         one ECS task on one instance, so they must agree"
    )]
    Disagree { first: String, second: String },
    #[error(
        "the job asks for platform {written:?} ({origin}), but cluster {cluster} has no container \
         instance with {ARCH_ATTRIBUTE} = {arch}; nothing was started"
    )]
    NoInstance {
        written: String,
        origin: String,
        cluster: String,
        arch: &'static str,
    },
}

impl Classify for PlatformError {
    fn blame(&self) -> Blame {
        // The job asked for something this runner's cluster cannot give it.
        Blame::Build
    }
}

impl Platform {
    /// The cluster query expression for instances of its architecture: the task definition's
    /// `memberOf` placement constraint, and the ListContainerInstances filter prepare checks.
    pub fn placement_expression(&self) -> String {
        format!("attribute:{ARCH_ATTRIBUTE} == {}", self.arch)
    }

    /// The failure when `cluster` has no container instance of its architecture.
    pub fn missing_on(&self, cluster: &str) -> PlatformError {
        PlatformError::NoInstance {
            written: self.written.clone(),
            origin: self.origin.clone(),
            cluster: cluster.to_string(),
            arch: self.arch,
        }
    }
}

/// ECS's architecture for a Docker platform string (`os/arch[/variant]` or a bare `arch`,
/// with containerd's aliases), or why it cannot be placed on ECS.
pub fn ecs_architecture(written: &str) -> Result<&'static str, String> {
    let lower = written.trim().to_ascii_lowercase();
    let parts: Vec<&str> = lower.split('/').collect();
    let (os, arch, variant) = match parts.as_slice() {
        [arch] => ("linux", *arch, ""),
        [os, arch] => (*os, *arch, ""),
        [os, arch, variant] => (*os, *arch, *variant),
        _ => return Err("a platform is `os/arch` or `os/arch/variant` (e.g. `linux/arm64`)".into()),
    };
    if os != "linux" {
        return Err(format!(
            "the job's task runs on EC2 Linux container instances, not on {:?}",
            shown(os)
        ));
    }
    if !variant.chars().all(|c| c.is_ascii_alphanumeric()) {
        return Err(format!("the variant {:?} is not a platform variant", shown(variant)));
    }
    match arch {
        "amd64" | "x86_64" | "x86-64" => Ok("x86_64"),
        "arm64" | "aarch64" => Ok("arm64"),
        "" => Err("it names no architecture".into()),
        other => Err(format!(
            "ECS container instances are x86_64 or arm64; the architecture {:?} is neither \
             (use linux/amd64 or linux/arm64)",
            shown(other)
        )),
    }
}

/// At most 80 characters of what the job wrote, for an error message (quoted, escaped there).
fn shown(written: &str) -> String {
    let mut s: String = written.chars().take(80).collect();
    if written.chars().count() > 80 {
        s.push('…');
    }
    s
}

/// The platform the job's task must run on: from `image: docker: platform:` and each
/// service's, which must agree (`None`: the job names none).
pub fn job_platform(response: &JobResponse) -> Result<Option<Platform>, PlatformError> {
    let image = response.image.iter().map(|i| {
        (
            i.executor_opts.docker.platform.as_str(),
            "image: docker: platform:".to_string(),
        )
    });
    let services = response.services.iter().enumerate().map(|(i, s)| {
        (
            s.executor_opts.docker.platform.as_str(),
            format!("services[{i}] ({}): docker: platform:", s.name),
        )
    });
    let mut chosen: Option<Platform> = None;
    for (written, origin) in image.chain(services) {
        if written.trim().is_empty() {
            continue;
        }
        let arch = ecs_architecture(written).map_err(|problem| PlatformError::Unsupported {
            origin: origin.clone(),
            written: shown(written),
            problem,
        })?;
        match &chosen {
            None => {
                chosen = Some(Platform {
                    written: written.trim().to_string(),
                    origin,
                    arch,
                })
            }
            Some(first) if first.arch != arch => {
                return Err(PlatformError::Disagree {
                    first: format!("{} {:?}", first.origin, first.written),
                    second: format!("{origin} {:?}", written.trim()),
                });
            }
            Some(_) => {}
        }
    }
    Ok(chosen)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_platforms_map_to_ecs_architectures() {
        for (written, arch) in [
            ("linux/amd64", "x86_64"),
            ("linux/arm64", "arm64"),
            ("linux/arm64/v8", "arm64"),
            ("linux/amd64/v3", "x86_64"),
            ("LINUX/AMD64", "x86_64"),
            ("arm64", "arm64"),
            ("linux/aarch64", "arm64"),
            ("linux/x86_64", "x86_64"),
            (" linux/arm64 ", "arm64"),
        ] {
            assert_eq!(ecs_architecture(written), Ok(arch), "{written}");
        }
        for (bad, says) in [
            ("linux/arm/v7", "\"arm\""),
            ("linux/386", "\"386\""),
            ("linux/s390x", "x86_64 or arm64"),
            ("windows/amd64", "\"windows\""),
            ("linux/", "no architecture"),
            ("linux/arm64/v8/x", "os/arch"),
            ("linux/arm64/v 8", "variant"),
        ] {
            let err = ecs_architecture(bad).unwrap_err();
            assert!(err.contains(says), "{bad}: {err}");
        }
    }

    fn response(image: &str, services: &[&str]) -> JobResponse {
        serde_json::from_value(serde_json::json!({
            "id": 1,
            "image": {"name": "alpine:3", "executor_opts": {"docker": {"platform": image, "user": ""}}},
            "services": services.iter().enumerate().map(|(i, p)| serde_json::json!({
                "name": format!("svc{i}:1"),
                "executor_opts": {"docker": {"platform": p}},
            })).collect::<Vec<_>>(),
        }))
        .unwrap()
    }

    #[test]
    fn image_and_services_must_agree_and_the_first_named_one_is_kept() {
        assert_eq!(job_platform(&response("", &["", ""])).unwrap(), None);
        let p = job_platform(&response("linux/arm64", &["", "linux/arm64/v8"]))
            .unwrap()
            .unwrap();
        assert_eq!(
            (p.arch, p.written.as_str(), p.origin.as_str()),
            ("arm64", "linux/arm64", "image: docker: platform:")
        );
        let p = job_platform(&response("", &["", "linux/amd64"])).unwrap().unwrap();
        assert_eq!(
            (p.arch, p.origin.as_str()),
            ("x86_64", "services[1] (svc1:1): docker: platform:")
        );

        let err = job_platform(&response("linux/arm64", &["linux/amd64"])).unwrap_err();
        assert_eq!(err.blame(), Blame::Build);
        let text = err.to_string();
        assert!(
            text.contains("image: docker: platform: \"linux/arm64\"")
                && text.contains("services[0] (svc0:1): docker: platform: \"linux/amd64\""),
            "{text}"
        );
        let long = format!("linux/{}", "x".repeat(500));
        let text = job_platform(&response(&long, &[])).unwrap_err().to_string();
        assert!(text.len() < 400 && text.contains('…'), "{text}");
        let err = job_platform(&response("", &["linux/riscv64"])).unwrap_err();
        assert_eq!(err.blame(), Blame::Build);
        assert!(
            err.to_string()
                .starts_with("services[0] (svc0:1): docker: platform: is \"linux/riscv64\""),
            "{err}"
        );
    }

    #[test]
    fn the_expression_names_the_ecs_attribute_and_the_failure_the_cluster() {
        let p = Platform {
            written: "linux/arm64".into(),
            origin: "image: docker: platform:".into(),
            arch: "arm64",
        };
        assert_eq!(p.placement_expression(), "attribute:ecs.cpu-architecture == arm64");
        let err = p.missing_on("ci-cluster");
        assert_eq!(err.blame(), Blame::Build);
        assert_eq!(
            err.to_string(),
            "the job asks for platform \"linux/arm64\" (image: docker: platform:), but cluster ci-cluster has \
             no container instance with ecs.cpu-architecture = arm64; nothing was started"
        );
    }
}
