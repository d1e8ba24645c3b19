//! The executor config (`/etc/ecs-executor/config.toml`): TOML parse and every validation
//! rule (`Config::parse`). Never panics: a bad config is an error naming the key.
#![no_main]

use ecs_executor_fuzz::config::Config;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Err(e) = Config::parse(text, std::path::Path::new("fuzz.toml")) {
        let _ = e.to_string();
    }
});
