//! Bad input refused cleanly: each case gets a message naming what and where, the right exit
//! code (gitlab-runner's BUILD_FAILURE for the user's mistakes, SYSTEM_FAILURE for the site's or
//! the runner's), and leaves no task and no task definition behind. Plus the secrets test: a
//! job's masked, file-type and registry-credential values never leave the job.
//!
//! Pending (need the plugin host and CI services, merged by the lead): plugins that return
//! oversized or invalid task definitions; service aliases that are not valid hostnames.

mod support;

use support::faults;

use std::os::unix::fs::PermissionsExt;
use std::process::Output;

use ecs_executor_tests::runner::{Image, JobSpec, Runner, Verb, stages};
use faults::{command_direct, task_definitions, text};
use support::{E2e, assert_ok, show, stage_script};

const BUILD_FAILURE: i32 = 1;
const SYSTEM_FAILURE: i32 = 2;

/// Nothing of this test is left in ECS: no task of `job`, no task definition of its prefix.
fn nothing_left(e: &E2e, job: &JobSpec) {
    assert!(
        e.tasks_of(job).is_empty(),
        "no task was started: {:#?}",
        e.tasks_of(job)
    );
    assert_eq!(
        task_definitions(e),
        (vec![], vec![]),
        "no task definition was registered"
    );
}

fn direct(e: &E2e, r: &Runner, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = command_direct(e, r, args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run ecs-executor")
}

#[track_caller]
fn refused(out: &Output, code: i32, needles: &[&str]) {
    assert_eq!(out.status.code(), Some(code), "{}", text(out));
    let err = String::from_utf8_lossy(&out.stderr);
    for n in needles {
        assert!(err.contains(n), "{n:?} not in the message: {}", text(out));
    }
}

#[test]
fn malformed_and_unknown_config_keys_are_refused_naming_key_and_file() {
    let mut tried = 0;
    for (name, edit, needles) in [
        ("syntax", "cpu = = 3\n", vec!["line", "executor"]),
        ("unknown", "no_such_key = true\n", vec!["no_such_key"]),
        (
            "badvalue",
            "network_mode = \"overlay\"\n",
            vec!["network_mode", "overlay"],
        ),
        ("unknowngc", "[gc]\nmax_age = 1\n", vec!["max_age"]),
    ] {
        let e = E2e::with_config_edit(&format!("cfg-{name}"), |t| {
            if edit.starts_with('[') {
                format!("{t}\n{edit}")
            } else {
                format!("{edit}{t}")
            }
        });
        let job = e.job();
        let mut r = e.runner(&job);
        for call in [r.config(), r.prepare(), r.cleanup()] {
            assert!(call.is_system_failure(), "{name}: {}", show(&call));
            let err = call.stderr_text();
            assert!(
                err.contains(&e.config.display().to_string()),
                "names the file: {}",
                show(&call)
            );
            for n in &needles {
                assert!(err.contains(n), "{name}: {n:?}: {}", show(&call));
            }
        }
        nothing_left(&e, &job);
        tried += 1;
    }
    eprintln!("FIGURE bad config inputs refused: {tried}");
}

#[test]
fn bad_job_response_and_services_json_are_refused() {
    let mut tried = 0;
    // CUSTOM_ENV_CI_JOB_SERVICES is written by gitlab-runner (it carries the `$VAR`-expanded
    // service names): garbage there is the runner's fault, refused as a system failure that
    // names it, before any task runs.
    {
        let e = E2e::new("svc-env");
        let job = e.job();
        for garbage in ["{not json", "[{\"name\": 5, \"alias\": []}]", "\u{1}\u{2}"] {
            let mut r = e.runner(&job);
            assert_ok(&r.config());
            let out = direct(&e, &r, &["prepare"], &[("CUSTOM_ENV_CI_JOB_SERVICES", garbage)]);
            assert!(
                out.status.code() == Some(SYSTEM_FAILURE)
                    && String::from_utf8_lossy(&out.stderr).contains("CUSTOM_ENV_CI_JOB_SERVICES"),
                "{garbage:?}: {}",
                text(&out)
            );
            assert_ok(&r.cleanup());
            e.assert_no_task_left(&job);
            tried += 1;
        }
    }
    // Wrong types in the job response (the trusted source): refused naming the file.
    for (name, edit) in [
        ("svc-string", r#""services":"postgres:15""#),
        ("svc-types", r#""services":[{"name":5,"alias":["x"]}]"#),
        ("not-json", "garbage"),
    ] {
        let e = E2e::new(&format!("resp-{name}"));
        let job = e.job();
        let mut r = e.runner(&job);
        assert_ok(&r.config());
        let path = r.temp_dir().unwrap().join("response.json");
        let original = std::fs::read_to_string(&path).unwrap();
        let broken = if edit == "garbage" {
            "{\"id\": 12, garbage".to_string()
        } else {
            // Replace whatever `services` holds with the broken value.
            let mut v: serde_json::Value = serde_json::from_str(&original).unwrap();
            let (k, val) = edit.split_once(':').unwrap();
            v[k.trim_matches('"')] = serde_json::from_str(val).unwrap();
            v.to_string()
        };
        std::fs::write(&path, broken).unwrap();
        let out = direct(&e, &r, &["prepare"], &[]);
        refused(&out, SYSTEM_FAILURE, &[&path.display().to_string(), "not valid"]);
        nothing_left(&e, &job);
        tried += 1;
    }
    eprintln!("FIGURE bad services/job-response inputs refused or ignored safely: {tried}");
}

#[test]
fn a_missing_or_unreadable_job_response_file_is_refused() {
    let e = E2e::new("noresp");
    let job = e.job();
    let mut r = e.runner(&job);
    assert_ok(&r.config());
    let path = r.temp_dir().unwrap().join("response.json");
    let saved = std::fs::read(&path).unwrap();
    std::fs::remove_file(&path).unwrap();
    let out = direct(&e, &r, &["prepare"], &[]);
    refused(&out, SYSTEM_FAILURE, &[&path.display().to_string(), "No such file"]);
    // Unreadable: a directory where the file should be (root reads any file).
    std::fs::create_dir(&path).unwrap();
    let out = direct(&e, &r, &["prepare"], &[]);
    refused(
        &out,
        SYSTEM_FAILURE,
        &[&path.display().to_string(), "cannot read the job response file"],
    );
    // Not set at all.
    let out = direct(&e, &r, &["prepare"], &[("JOB_RESPONSE_FILE", "")]);
    refused(&out, SYSTEM_FAILURE, &["JOB_RESPONSE_FILE is not set"]);
    std::fs::remove_dir(&path).unwrap();
    std::fs::write(&path, saved).unwrap();
    nothing_left(&e, &job);
    eprintln!("FIGURE bad job response file inputs refused: 3");
}

#[test]
fn bad_image_names_are_a_build_failure_naming_the_image() {
    let long = format!("registry.example.com/{}:1", "a".repeat(600));
    let mut tried = 0;
    for (name, image, needle) in [
        (
            "space",
            "ecs-executor-test/build:1 --privileged",
            "spaces or control characters",
        ),
        (
            "control",
            "ecs-executor-test/build:1\u{7}\u{1b}[31m",
            "spaces or control characters",
        ),
        ("newline", "alpine\nrm -rf /", "spaces or control characters"),
        ("long", long.as_str(), "longer than 512"),
        ("dash", "--rm", "must start with"),
    ] {
        let e = E2e::new(&format!("img-{name}"));
        let job = e.job().image(Image::new(image));
        let (mut r, prepare) = e.prepare(&job);
        assert!(prepare.is_build_failure(BUILD_FAILURE), "{name}: {}", show(&prepare));
        let err = prepare.stderr_text();
        assert!(
            err.contains("image name") && err.contains(needle),
            "{name}: {}",
            show(&prepare)
        );
        // The shown name is escaped: no raw control characters reach the log.
        assert!(!err.contains('\u{1b}') && !err.contains('\u{7}'), "{name}: {err:?}");
        assert_ok(&r.cleanup());
        nothing_left(&e, &job);
        tried += 1;
    }
    eprintln!("FIGURE bad image names refused: {tried}");
}

#[test]
fn a_missing_or_unreadable_script_file_and_a_stage_with_path_separators_are_refused() {
    let e = E2e::new("script");
    let job = e.job();
    let mut r = e.prepared(&job);
    let tmp = r.temp_dir().unwrap().to_path_buf();
    let missing = tmp.join("no-such-script");
    let out = direct(&e, &r, &["run", missing.to_str().unwrap(), "build_script"], &[]);
    refused(
        &out,
        SYSTEM_FAILURE,
        &[missing.to_str().unwrap(), "cannot read the script file"],
    );
    let dir = tmp.join("script-is-a-dir");
    std::fs::create_dir(&dir).unwrap();
    let out = direct(&e, &r, &["run", dir.to_str().unwrap(), "build_script"], &[]);
    refused(
        &out,
        SYSTEM_FAILURE,
        &[dir.to_str().unwrap(), "cannot read the script file"],
    );
    let mut tried = 2;
    for stage in ["../../etc/passwd", "build/script", "a\\b", ""] {
        let call = r.run_script(stage, &stage_script(&r, "echo never-runs\n"));
        assert!(call.is_system_failure(), "{stage:?}: {}", show(&call));
        assert!(call.stderr_text().contains("stage name"), "{stage:?}: {}", show(&call));
        assert!(!call.stdout_text().contains("never-runs"));
        tried += 1;
    }
    // The job still works after all that, and cleanup leaves nothing.
    assert_ok(&r.run_script(stages::BUILD_SCRIPT, &stage_script(&r, "echo fine\n")));
    assert_ok(&r.cleanup());
    e.assert_tasks_stopped(&job, 1);
    eprintln!("FIGURE bad script files / stage names refused: {tried}");
}

/// Everything under `dir`, as (path, bytes).
fn files_under(dir: &std::path::Path) -> Vec<(std::path::PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for entry in entries.flatten() {
        let p = entry.path();
        if p.is_dir() {
            out.extend(files_under(&p));
        } else if let Ok(bytes) = std::fs::read(&p) {
            out.push((p, bytes));
        }
    }
    out
}

#[test]
fn secrets_never_reach_ecs_the_state_file_or_the_executors_own_log() {
    let e = E2e::new("secrets");
    let unique = ecs_executor_tests::standin::unique_name("s");
    let masked = format!("MaskedValue-{unique}");
    let file_content = format!("FileVariableContent-{unique}");
    let reg_password = format!("RegistryPassword-{unique}");
    let job = e
        .job()
        .masked_variable("DEPLOY_TOKEN", &masked)
        .file_variable("KUBECONFIG_DATA", &file_content)
        .registry_credentials("registry.example.com", "deployer", &reg_password)
        .script(["test -n \"$DEPLOY_TOKEN\" && echo masked-var-present"]);
    let secrets = [masked.as_str(), file_content.as_str(), reg_password.as_str()];
    let response = job.job_response_json();
    for s in secrets {
        assert!(response.contains(s), "the job response carries {s}");
    }
    let mark = e.standin.request_mark();
    let (mut r, prepare) = e.prepare(&job);
    assert_ok(&prepare);

    // The state file: 0600 and free of secrets; so is everything else under state_dir.
    let state = e.state_file(&job);
    let mode = std::fs::metadata(&state).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "state file mode");
    let mut files = 0;
    for (path, bytes) in files_under(&e.state_dir) {
        let text = String::from_utf8_lossy(&bytes);
        for s in secrets {
            assert!(!text.contains(s), "{} holds a secret", path.display());
        }
        if path.starts_with(e.state_dir.join("jobs")) {
            let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{}", path.display());
        }
        files += 1;
    }
    assert!(files >= 1);

    // The task definition and the task's tags.
    let task = e.running_task(&job);
    let td = e.block_on(
        e.ecs
            .describe_task_definition()
            .task_definition(task.task_definition_arn().unwrap())
            .include(aws_sdk_ecs::types::TaskDefinitionField::Tags)
            .send(),
    );
    let td_text = format!("{:?}", td.expect("DescribeTaskDefinition"));
    let described = e.block_on(
        e.ecs
            .describe_tasks()
            .cluster(&e.standin.cluster)
            .tasks(task.task_arn().unwrap())
            .include(aws_sdk_ecs::types::TaskField::Tags)
            .send(),
    );
    let task_text = format!("{:?}", described.expect("DescribeTasks"));
    assert!(
        task_text.contains("ecs-executor:job-id"),
        "tags are included: {task_text}"
    );
    for s in secrets {
        assert!(!td_text.contains(s), "task definition holds {s}");
        assert!(!task_text.contains(s), "task (tags, overrides) holds {s}");
    }

    let build = r.run_script(stages::BUILD_SCRIPT, &stage_script(&r, "echo build-ran\n"));
    assert_ok(&build);
    assert!(build.stdout_text().contains("build-ran"), "{}", show(&build));
    let cleanup = r.cleanup();
    assert_ok(&cleanup);
    e.assert_tasks_stopped(&job, 1);

    // Every ECS/EC2 request made meanwhile (ours and everyone else's).
    let requests = e.standin.requests_since(mark);
    assert!(
        requests.iter().any(|q| q.action.as_deref() == Some("RunTask")),
        "recording works"
    );
    for q in &requests {
        for s in secrets {
            assert!(!q.body.contains(s), "{:?} request holds a secret: {}", q.action, q.body);
        }
    }
    // The executor's own lines (stderr of every call; prepare's and cleanup's stdout).
    for call in [&prepare, &cleanup] {
        for s in secrets {
            assert!(
                !call.stdout_text().contains(s) && !call.stderr_text().contains(s),
                "{}",
                show(call)
            );
        }
    }
    assert!(!build.stderr_text().contains(&masked));
    eprintln!(
        "FIGURE secrets checked: 3 values x {} ECS/EC2 requests, task definition, tags, {files} state files, executor output",
        requests.len()
    );
    let _ = Verb::Config;
}
