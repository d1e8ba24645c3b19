//! A job's services as prepare reads them: `CUSTOM_ENV_CI_JOB_SERVICES` (gitlab-runner's
//! JSON with `$VAR`-expanded names) together with the job response's `services`, validated
//! (image names, aliases as host names, limits) with each service's environment expanded.
//! Input: the variable's text, a NUL byte, the job response JSON. Never panics.
#![no_main]

use ecs_executor_fuzz::protocol::JobResponse;
use ecs_executor_fuzz::services::JobServices;
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

fuzz_target!(|data: &[u8]| {
    static CONFIG: OnceLock<ecs_executor_fuzz::config::Config> = OnceLock::new();
    let config = CONFIG.get_or_init(ecs_executor_fuzz::minimal_config);
    let (variable, response) = match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &b"{\"id\":1}"[..]),
    };
    let Ok(variable) = std::str::from_utf8(variable) else {
        return;
    };
    let Ok(response) = serde_json::from_slice::<JobResponse>(response) else {
        return;
    };
    // SAFETY: libFuzzer runs the target on one thread; nothing else reads the environment.
    unsafe { std::env::set_var("CUSTOM_ENV_CI_JOB_SERVICES", variable) };
    if let Ok(services) = JobServices::load(config, &response) {
        assert_eq!(services.services.len(), response.services.len());
        for s in &services.services {
            assert!(!s.image.trim().is_empty());
        }
    }
});
