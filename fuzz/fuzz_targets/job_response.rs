//! The job response file (`JOB_RESPONSE_FILE`, written by gitlab-runner) as prepare reads it:
//! `JobResponse` (Go's null lists and all), the predefined-variable lookups identity comes
//! from, and the job context (runner token refusal, image checks, secrets, redaction).
//! Properties: never panics; the identity it takes is the first public occurrence.
#![no_main]

use ecs_executor_fuzz::job::JobContext;
use ecs_executor_fuzz::protocol::JobResponse;
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

fuzz_target!(|data: &[u8]| {
    static CONFIG: OnceLock<ecs_executor_fuzz::config::Config> = OnceLock::new();
    let config = CONFIG.get_or_init(ecs_executor_fuzz::minimal_config);
    let Ok(response) = serde_json::from_slice::<JobResponse>(data) else {
        return;
    };
    let path = response.predefined("CI_PROJECT_PATH");
    if let Some(p) = path {
        let first = response.variables.iter().find(|v| v.key == "CI_PROJECT_PATH").unwrap();
        assert!(first.public && first.value == p);
    }
    let _ = response.secret_values();
    if let Ok(job) = JobContext::from_response(config, &response) {
        assert_eq!(job.project_id, response.job_info.project_id);
        assert_eq!(job.project_path, path.unwrap_or_default());
        // Every secret is gone from what is shown. (The marker itself, next to the text
        // around it, may spell a secret such as `MASKED]y`: that reveals nothing, so markers
        // are taken out before looking.)
        let text: String = job.secrets.iter().map(|s| format!("x{s}y ")).collect();
        let shown = job.redact(&text).replace("[MASKED]", "\0");
        for secret in job.secrets.iter().filter(|s| !s.is_empty() && !s.contains('\0')) {
            assert!(!shown.contains(secret.as_str()), "a secret survives redaction");
        }
    }
});
