//! The stage scripts, shaped like gitlab-runner's bash shell writes them (`shells/bash.go`,
//! `shells/abstract.go`): a fixed wrapper around an `eval`'d body that exports every job
//! variable (so masked values travel inside the script, never in argv) and then runs the
//! stage's commands.
//!
//! The bodies follow gitlab-runner's stage writers closely but not byte for byte: quoting is
//! POSIX single quotes throughout, and cache/artifact/git commands are simplified (see
//! [`crate::runner::JobSpec::stage_lines`]).

use crate::runner::job::{JobSpec, JobState, Variable};

/// The stages gitlab-runner passes to `run`, in the order it runs them.
pub mod stages {
    pub const PREPARE_SCRIPT: &str = "prepare_script";
    pub const GET_SOURCES: &str = "get_sources";
    /// Only before a second get_sources attempt.
    pub const CLEAR_WORKTREE: &str = "clear_worktree";
    pub const RESTORE_CACHE: &str = "restore_cache";
    pub const DOWNLOAD_ARTIFACTS: &str = "download_artifacts";
    /// The user's `script:` (gitlab-runner's `step_script`, renamed for custom executors).
    pub const BUILD_SCRIPT: &str = "build_script";
    pub const AFTER_SCRIPT: &str = "after_script";
    pub const ARCHIVE_CACHE: &str = "archive_cache";
    pub const ARCHIVE_CACHE_ON_FAILURE: &str = "archive_cache_on_failure";
    pub const UPLOAD_ARTIFACTS_ON_SUCCESS: &str = "upload_artifacts_on_success";
    pub const UPLOAD_ARTIFACTS_ON_FAILURE: &str = "upload_artifacts_on_failure";
    pub const CLEANUP_FILE_VARIABLES: &str = "cleanup_file_variables";
}

const ANSI_BOLD_GREEN: &str = "\x1b[32;1m";
const ANSI_YELLOW: &str = "\x1b[0;33m";
const ANSI_RESET: &str = "\x1b[0;m";

/// The stage name a step runs as: `script` → `build_script`, others → `step_<name>`.
pub fn step_stage(step_name: &str) -> String {
    if step_name == "script" {
        stages::BUILD_SCRIPT.into()
    } else {
        format!("step_{}", step_name.to_lowercase())
    }
}

/// The file gitlab-runner would hand to `run` for `stage`, or `None` when it would skip the
/// stage (nothing to do: no cache, no artifacts, no after_script, no file variables...).
pub fn stage_script(job: &JobSpec, state: &JobState, stage: &str) -> Option<String> {
    stage_body(job, state, stage).map(|body| wrap(&state.shell, &body))
}

/// gitlab-runner's wrapper around a stage body (`BashWriter.Finish`): a TERM trap so a
/// cancelled bash exits 1 instead of dumping the script, errexit (and pipefail where the
/// shell has it), and the body `eval`'d in a subshell with stdin from /dev/null — which is
/// why the whole file can be piped into a shell's stdin.
pub fn wrap(shell: &str, body: &str) -> String {
    let shell = if shell.is_empty() { "bash" } else { shell };
    format!(
        "#!/usr/bin/env {shell}\n\n\
         trap 'exit 1' TERM\n\n\
         case \"$(set -o)\" in *\"pipefail\"*) set -o pipefail;; esac; set -o errexit\n\
         set +o noclobber\n\
         ( trap 'exit 1' TERM; eval {} ) < /dev/null\n\
         exit 0\n",
        single_quote(body)
    )
}

/// A body that exports the job's variables, enters the project dir and runs `lines` like a
/// user script (each echoed as `$ line` in green first). Useful with
/// [`crate::runner::Runner::run_script`] for stages the job does not define.
pub fn user_lines_body(job: &JobSpec, state: &JobState, lines: &[String]) -> String {
    let mut w = Writer::new(state);
    w.exports(job);
    w.cd_project_dir();
    w.commands(lines);
    w.finish()
}

fn stage_body(job: &JobSpec, state: &JobState, stage: &str) -> Option<String> {
    let mut w = Writer::new(state);
    if let Some(lines) = job.extra_stage_lines(stage) {
        w.exports(job);
        w.cd_project_dir();
        w.commands(lines);
        return Some(w.finish());
    }
    match stage {
        // writePrepareScript is empty; only the hostname line is added (no exports).
        stages::PREPARE_SCRIPT => {
            match &state.hostname {
                Some(host) => w.line(&format!("echo \"Running on $(hostname) via {host}...\"")),
                None => w.line("echo \"Running on $(hostname)...\""),
            }
            Some(w.finish())
        }
        stages::GET_SOURCES => {
            w.exports(job);
            w.get_sources(job);
            Some(w.finish())
        }
        stages::AFTER_SCRIPT => {
            let step = job.steps().iter().find(|s| s.name == "after_script")?;
            if step.script.is_empty() {
                return None;
            }
            w.exports(job);
            w.cd_project_dir();
            w.notice("Running after script...");
            w.commands(&step.script);
            Some(w.finish())
        }
        stages::CLEANUP_FILE_VARIABLES => {
            let files: Vec<Variable> = job.all_variables(state).into_iter().filter(|v| v.file).collect();
            if files.is_empty() {
                return None;
            }
            for var in files {
                w.line(&format!("rm -f {}", single_quote(&w.tmp_file(&var.key))));
            }
            Some(w.finish())
        }
        // Without cache/artifact/dependency definitions gitlab-runner skips these
        // (FF_SKIP_NOOP_BUILD_STAGES defaults to true); clear_worktree only exists before a
        // retried get_sources and is given a body by the flow.
        stages::RESTORE_CACHE
        | stages::DOWNLOAD_ARTIFACTS
        | stages::ARCHIVE_CACHE
        | stages::ARCHIVE_CACHE_ON_FAILURE
        | stages::UPLOAD_ARTIFACTS_ON_SUCCESS
        | stages::UPLOAD_ARTIFACTS_ON_FAILURE => None,
        stages::CLEAR_WORKTREE => {
            w.exports(job);
            w.line(&format!("rm -r -f {}", single_quote(&w.project_dir())));
            Some(w.finish())
        }
        // The user's steps: build_script and step_<name>.
        _ => {
            let step = job
                .steps()
                .iter()
                .find(|s| s.name != "after_script" && step_stage(&s.name) == stage)?;
            w.exports(job);
            w.cd_project_dir();
            w.commands(&step.script);
            Some(w.finish())
        }
    }
}

/// A small `BashWriter`: collects body lines.
struct Writer<'a> {
    state: &'a JobState,
    body: String,
}

impl<'a> Writer<'a> {
    fn new(state: &'a JobState) -> Self {
        Self {
            state,
            body: String::new(),
        }
    }

    fn line(&mut self, text: &str) {
        self.body.push_str(text);
        self.body.push('\n');
    }

    fn finish(self) -> String {
        self.body
    }

    fn project_dir(&self) -> String {
        self.state
            .dirs
            .as_ref()
            .map(|d| d.project_dir.clone())
            .unwrap_or_default()
    }

    /// `RUNNER_TEMP_PROJECT_DIR`: where file-type variables are written.
    fn tmp_dir(&self) -> String {
        format!("{}.tmp", self.project_dir())
    }

    fn tmp_file(&self, key: &str) -> String {
        format!("{}/{key}", self.tmp_dir())
    }

    /// `writeExports`: every variable, file-type ones written to a file first.
    fn exports(&mut self, job: &JobSpec) {
        for var in job.all_variables(self.state) {
            if var.file {
                let path = self.tmp_file(&var.key);
                self.line(&format!("mkdir -p {}", single_quote(&self.tmp_dir())));
                self.line(&format!(
                    "printf '%s' {} > {}",
                    single_quote(&var.value),
                    single_quote(&path)
                ));
                self.line(&format!("export {}={}", var.key, single_quote(&path)));
            } else {
                self.line(&format!("export {}={}", var.key, shell_escape(&var.value)));
            }
        }
    }

    fn cd_project_dir(&mut self) {
        let dir = self.project_dir();
        self.line(&format!("cd {}", shell_escape(&dir)));
    }

    fn notice(&mut self, text: &str) {
        self.line(&format!(
            "echo {}",
            single_quote(&format!("{ANSI_BOLD_GREEN}{text}{ANSI_RESET}"))
        ));
    }

    fn warning(&mut self, text: &str) {
        self.line(&format!(
            "echo {}",
            single_quote(&format!("{ANSI_YELLOW}{text}{ANSI_RESET}"))
        ));
    }

    /// `writeCommands`: each command announced as `$ cmd` (first line only for multi-line
    /// ones), then run as written.
    fn commands(&mut self, commands: &[String]) {
        for command in commands {
            let command = command.trim();
            if command.is_empty() {
                self.line("echo");
            } else {
                let mut lines = command.splitn(2, '\n');
                let first = lines.next().unwrap_or("");
                if lines.next().is_some() {
                    self.notice(&format!("$ {first} # collapsed multi-line command"));
                } else {
                    self.notice(&format!("$ {first}"));
                }
            }
            self.line(command);
        }
    }

    /// A simplified `writeGetSourcesScript`: `GIT_STRATEGY=none` (the default here when the
    /// job has no `git(...)`) only creates the project dir; clone/fetch init a repository,
    /// fetch and check out the job's commit.
    fn get_sources(&mut self, job: &JobSpec) {
        let vars = job.all_variables(self.state);
        let strategy = vars
            .iter()
            .rev()
            .find(|v| v.key == "GIT_STRATEGY")
            .map(|v| v.value.clone());
        let strategy = strategy.unwrap_or_else(|| {
            if job.git_info().is_some() {
                "clone".into()
            } else {
                "none".into()
            }
        });
        let dir = self.project_dir();
        match (strategy.as_str(), job.git_info()) {
            ("clone" | "fetch", Some(git)) => {
                self.notice("Fetching changes...");
                if strategy == "clone" {
                    self.line(&format!("rm -r -f {}", single_quote(&dir)));
                }
                self.line(&format!("git init {} --quiet", single_quote(&dir)));
                self.line(&format!("cd {}", single_quote(&dir)));
                self.line(&format!(
                    "git remote add origin {url} 2>/dev/null || git remote set-url origin {url}",
                    url = single_quote(&git.repo_url)
                ));
                self.line(&format!(
                    "git fetch origin {} --prune --quiet",
                    single_quote(&format!("+refs/heads/{r}:refs/remotes/origin/{r}", r = git.git_ref))
                ));
                let short = &git.sha[..git.sha.len().min(8)];
                self.notice(&format!(
                    "Checking out {short} as detached HEAD (ref is {})...",
                    git.git_ref
                ));
                self.line(&format!("git checkout -f -q {}", single_quote(&git.sha)));
                self.line("git clean -ffdx");
                self.notice("Skipping Git submodules setup");
            }
            ("clone" | "fetch", None) => {
                self.warning("No git repository configured for this job");
                self.line(&format!("mkdir -p {}", single_quote(&dir)));
            }
            _ => {
                self.notice("Skipping Git repository setup");
                self.line(&format!("mkdir -p {}", single_quote(&dir)));
            }
        }
    }
}

/// POSIX single quoting; works in bash and sh, and keeps every byte literal.
pub fn single_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// Leaves simple words bare (as gitlab-runner's escaping does: `export KEY=VALUE`), quotes
/// everything else.
pub fn shell_escape(s: &str) -> String {
    let plain = !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_@%+=:,./-".contains(&b));
    if plain { s.to_owned() } else { single_quote(s) }
}
