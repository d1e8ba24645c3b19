//! demo-job: runs a sample GitLab job through `ecs-executor` against the local ECS stand-in
//! (`tests/local-ecs/up`), the way gitlab-runner's custom executor calls it, in a passing and a
//! failing variant, and prints each job log as GitLab would show it.
//!
//! Usage: demo-job [--config FILE] [--executor PATH]
//!   --config    executor config [default: $STATE/executor.toml, written by tests/local-ecs/up]
//!   --executor  the ecs-executor binary [default: next to this binary]
//!
//! Exit status 0 when the passing job succeeded, the failing one failed with its script's exit
//! code, and neither left a task running on the cluster.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use aws_sdk_ecs::types::DesiredStatus;
use ecs_executor_tests::runner::{Image, JobOutcome, JobSpec, JobStatus, Runner};
use ecs_executor_tests::standin::Standin;

const BOLD: &str = "\x1b[1m";
const RESET: &str = "\x1b[0m";

struct Args {
    config: Option<PathBuf>,
    executor: Option<PathBuf>,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        config: None,
        executor: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = |name: &str| it.next().ok_or_else(|| format!("{name} needs a value"));
        match arg.as_str() {
            "--config" => args.config = Some(value("--config")?.into()),
            "--executor" => args.executor = Some(value("--executor")?.into()),
            "-h" | "--help" => {
                println!("usage: demo-job [--config FILE] [--executor PATH]");
                std::process::exit(0);
            }
            other => {
                return Err(format!(
                    "unknown argument {other:?} (usage: demo-job [--config FILE] [--executor PATH])"
                ));
            }
        }
    }
    Ok(args)
}

/// The sample job: a helper stage that leaves a file in the builds dir (as get_sources and
/// download_artifacts do), a build script of a few commands, and an after_script.
fn sample_job(id: i64, standin: &Standin, failing: bool) -> JobSpec {
    let mut script = vec![
        "echo \"$GREETING, this is job $CI_JOB_ID running in $(hostname)\"".to_string(),
        "cat artifact.txt".to_string(),
        "ls -l".to_string(),
    ];
    if failing {
        script.push("echo 'running the tests...'; test -f test-report.xml || exit 3".to_string());
        script.push("echo 'never printed: the line above failed'".to_string());
    } else {
        script.push("echo 'running the tests...'; echo '<testsuite tests=\"3\"/>' > test-report.xml".to_string());
        script.push("wc -c test-report.xml".to_string());
    }
    JobSpec::new(id, "demo/hello-ecs")
        .job_name(if failing { "test-failing" } else { "test" })
        .runner_short_token("demo")
        .image(Image::new(&standin.images.build))
        .variable("GREETING", "Hello from ECS")
        .masked_variable("DEPLOY_TOKEN", "demo-s3cr3t-value")
        .stage_lines(
            "download_artifacts",
            [
                "echo \"fetching artifacts in the helper container (Debian $(cat /etc/debian_version))\"",
                "echo 'artifact built by an earlier job' > artifact.txt",
            ],
        )
        .script(script)
        .after_script(["echo \"after_script: job status is $CI_JOB_STATUS\""])
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("demo-job: {e}");
            return ExitCode::from(2);
        }
    };
    let standin = match Standin::load() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("demo-job: {e}\ndemo-job: run tests/local-ecs/up first");
            return ExitCode::from(2);
        }
    };
    let config = args.config.unwrap_or_else(|| standin.executor_config());
    let executor = args.executor.or_else(|| {
        let sibling = std::env::current_exe().ok()?.parent()?.join("ecs-executor");
        sibling.is_file().then_some(sibling)
    });
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let ecs = rt.block_on(standin.ecs(3));
    let base = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
        % 1_000_000_000;
    let base = i64::try_from(base).unwrap_or(1) * 10;

    let mut all_as_expected = true;
    for (n, failing) in [(1, false), (2, true)] {
        let job = sample_job(base + n, &standin, failing);
        let variant = if failing {
            "failing variant: the test step exits 3"
        } else {
            "passing variant"
        };
        println!(
            "\n{BOLD}==================== job #{} ({variant}) ===================={RESET}\n",
            job.id()
        );
        let mut runner = Runner::new(&job).config_file(&config);
        if let Some(exe) = &executor {
            runner = runner.executor(exe);
        }
        let outcome = runner.run_job();
        outcome.print_log();

        let expected = if failing {
            JobStatus::Failed { exit_code: 3 }
        } else {
            JobStatus::Success
        };
        let left = tasks_left_running(&rt, &ecs, &standin, &job);
        let ok = outcome.status == expected && left == Some(0);
        println!(
            "\n{BOLD}demo-job:{RESET} job #{}: {}; tasks left running on cluster {}: {} -> {}",
            job.id(),
            describe(&outcome),
            standin.cluster,
            left.map_or("unknown".to_string(), |n| n.to_string()),
            if ok { "as expected" } else { "NOT as expected" }
        );
        all_as_expected &= ok;
    }
    if all_as_expected {
        println!("\n{BOLD}demo-job: both variants behaved as expected{RESET}");
        ExitCode::SUCCESS
    } else {
        println!("\n{BOLD}demo-job: a variant did not behave as expected{RESET}");
        ExitCode::FAILURE
    }
}

fn describe(outcome: &JobOutcome) -> String {
    match &outcome.status {
        JobStatus::Success => "succeeded".into(),
        JobStatus::Failed { exit_code } => format!("failed with exit code {exit_code}"),
        JobStatus::SystemFailure { message } => format!("system failure ({message})"),
        JobStatus::Canceled => "canceled".into(),
        JobStatus::TimedOut => "timed out".into(),
    }
}

/// How many of the job's tasks ECS still means to run (after cleanup: 0).
fn tasks_left_running(
    rt: &tokio::runtime::Runtime,
    ecs: &aws_sdk_ecs::Client,
    standin: &Standin,
    job: &JobSpec,
) -> Option<usize> {
    let started_by = format!("gl/demo/{}", job.id());
    let out = rt
        .block_on(
            ecs.list_tasks()
                .cluster(&standin.cluster)
                .started_by(started_by)
                .desired_status(DesiredStatus::Running)
                .send(),
        )
        .ok()?;
    Some(out.task_arns().len())
}
