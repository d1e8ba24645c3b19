//! The decision, free of bindings and host calls so it unit-tests natively: settings
//! validation, project matching and the changes made to the task definition.

use std::collections::BTreeMap;

use ecs_executor_plugin_sdk::settings::{SettingsObject, field};
use ecs_executor_plugin_sdk::types::{KeyValue, LogConfiguration, TaskDefinition};
use serde::Deserialize;
use serde_json::Value;

/// The tag this plugin adds, holding the job's project path.
pub const PROJECT_TAG: &str = "gitlab-project";
/// ECS limits on task definition tags (the API allows 50 per resource; 40 leaves room for the
/// executor's own `ecs-executor:` tags).
pub const MAX_TAGS: usize = 40;
/// Longest tag key ECS accepts, in Unicode characters.
pub const MAX_TAG_KEY: usize = 128;
/// Longest tag value ECS accepts, in Unicode characters.
pub const MAX_TAG_VALUE: usize = 256;
/// The log drivers ECS accepts for the EC2 launch type.
const LOG_DRIVERS: &[&str] = &[
    "awslogs",
    "awsfirelens",
    "fluentd",
    "gelf",
    "journald",
    "json-file",
    "logentries",
    "splunk",
    "syslog",
];

/// Which projects a rule covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pattern {
    /// `team/app`: that project only.
    Exact(String),
    /// `team/*`: every project below `team`, at any depth (stored as `team`).
    Below(String),
}

impl Pattern {
    /// Parse a `project` setting: a GitLab path, or a path followed by `/*`.
    fn parse(text: &str) -> Result<Pattern, String> {
        let (path, below) = match text.strip_suffix("/*") {
            Some(path) => (path, true),
            None if text == "*" => ("", true),
            None => (text, false),
        };
        let why = if path.is_empty() {
            Some("is empty; use default_task_role_arn for a role that applies to every project")
        } else if path.split('/').any(str::is_empty) {
            Some("has an empty path component (a leading, trailing or doubled `/`)")
        } else if path.contains('*') {
            Some("may use `*` only as its whole last component (`group/*`)")
        } else if path.chars().any(|c| !(c.is_alphanumeric() || "-_./".contains(c))) {
            Some("is not a GitLab project path (letters, digits, `-`, `_`, `.` and `/`)")
        } else {
            None
        };
        match why {
            Some(why) => Err(why.into()),
            None if below => Ok(Pattern::Below(path.into())),
            None => Ok(Pattern::Exact(path.into())),
        }
    }

    /// Whether `project` (a `CI_PROJECT_PATH`) is covered, ignoring ASCII case.
    pub fn matches(&self, project: &str) -> bool {
        match self {
            Pattern::Exact(path) => project.eq_ignore_ascii_case(path),
            Pattern::Below(path) => {
                project.len() > path.len() + 1
                    && project.is_char_boundary(path.len())
                    && project[..path.len()].eq_ignore_ascii_case(path)
                    && project[path.len()..].starts_with('/')
            }
        }
    }
}

/// One `roles` entry, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// The projects it covers.
    pub pattern: Pattern,
    /// The task role for them.
    pub task_role_arn: String,
    /// The execution role for them, if the rule sets one.
    pub execution_role_arn: Option<String>,
}

/// Validated settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoleMapper {
    rules: Vec<Rule>,
    default_task_role_arn: Option<String>,
    tags: Vec<(String, String)>,
    log_configuration: Option<(String, Vec<(String, String)>)>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    project: String,
    task_role_arn: String,
    #[serde(default)]
    execution_role_arn: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLogConfiguration {
    driver: String,
    #[serde(default)]
    options: BTreeMap<String, String>,
}

/// What [`RoleMapper::apply`] did, for the job log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Rule number `n` (from 0) matched.
    Rule(usize),
    /// No rule matched; the default task role was set.
    Default,
    /// No rule matched and there is no default: the roles were left alone.
    Unchanged,
}

impl Outcome {
    /// A log line saying how the roles of `project`'s job were chosen.
    pub fn describe(&self, project: &str) -> String {
        match self {
            Outcome::Rule(n) => format!("task role from roles[{n}] for project {project}"),
            Outcome::Default => format!("no role rule for project {project}: default task role"),
            Outcome::Unchanged => format!("no role rule for project {project}: task role unchanged"),
        }
    }
}

impl RoleMapper {
    /// Parse and validate the settings. Errors name the setting (`roles[1].task_role_arn`,
    /// `tags`, ...) and say what is wrong, for the executor's start-up message.
    pub fn from_settings(json: &str) -> Result<RoleMapper, String> {
        let settings = SettingsObject::parse(json, &["roles", "default_task_role_arn", "tags", "log_configuration"])?;
        let rules = settings
            .get::<Vec<Value>>("roles")?
            .unwrap_or_default()
            .iter()
            .enumerate()
            .map(|(n, value)| parse_rule(n, value))
            .collect::<Result<Vec<_>, _>>()?;
        let default_task_role_arn = settings.get::<String>("default_task_role_arn")?;
        if let Some(arn) = &default_task_role_arn {
            check_role_arn("default_task_role_arn", arn)?;
        }
        let tags: Vec<(String, String)> = settings
            .get::<BTreeMap<String, String>>("tags")?
            .unwrap_or_default()
            .into_iter()
            .collect();
        check_tags(&tags)?;
        let log_configuration = match settings.get::<Value>("log_configuration")? {
            Some(value) => Some(parse_log_configuration(&value)?),
            None => None,
        };
        Ok(RoleMapper {
            rules,
            default_task_role_arn,
            tags,
            log_configuration,
        })
    }

    /// The first rule covering `project`, with its index.
    pub fn rule_for(&self, project: &str) -> Option<(usize, &Rule)> {
        self.rules
            .iter()
            .enumerate()
            .find(|(_, rule)| rule.pattern.matches(project))
    }

    /// Set `task`'s roles, tags and log configurations for a job of `project`.
    pub fn apply(&self, project: &str, task: &mut TaskDefinition) -> Outcome {
        let outcome = match self.rule_for(project) {
            Some((n, rule)) => {
                task.task_role_arn = Some(rule.task_role_arn.clone());
                if let Some(arn) = &rule.execution_role_arn {
                    task.execution_role_arn = Some(arn.clone());
                }
                Outcome::Rule(n)
            }
            None => match &self.default_task_role_arn {
                Some(arn) => {
                    task.task_role_arn = Some(arn.clone());
                    Outcome::Default
                }
                None => Outcome::Unchanged,
            },
        };
        for (key, value) in &self.tags {
            set_tag(&mut task.tags, key, value);
        }
        let project_value: String = project.chars().take(MAX_TAG_VALUE).collect();
        set_tag(&mut task.tags, PROJECT_TAG, &project_value);
        if let Some((driver, options)) = &self.log_configuration {
            let forced = LogConfiguration {
                log_driver: driver.clone(),
                options: options
                    .iter()
                    .map(|(key, value)| KeyValue {
                        key: key.clone(),
                        value: value.clone(),
                    })
                    .collect(),
                extra: None,
            };
            for container in &mut task.containers {
                container.log_configuration = Some(forced.clone());
            }
        }
        outcome
    }
}

fn parse_rule(n: usize, value: &Value) -> Result<Rule, String> {
    let raw: RawRule = field(&format!("roles[{n}]"), value)?;
    let pattern = Pattern::parse(&raw.project).map_err(|why| format!("roles[{n}].project {:?} {why}", raw.project))?;
    check_role_arn(&format!("roles[{n}].task_role_arn"), &raw.task_role_arn)?;
    if let Some(arn) = &raw.execution_role_arn {
        check_role_arn(&format!("roles[{n}].execution_role_arn"), arn)?;
    }
    Ok(Rule {
        pattern,
        task_role_arn: raw.task_role_arn,
        execution_role_arn: raw.execution_role_arn,
    })
}

/// An IAM role ARN: `arn:<partition>:iam::<account>:role/<name>`, six `:`-separated parts.
fn check_role_arn(setting: &str, arn: &str) -> Result<(), String> {
    let parts: Vec<&str> = arn.splitn(6, ':').collect();
    let why = if parts.len() != 6 || parts[0] != "arn" {
        Some("is not an ARN (`arn:partition:service:region:account:resource`)")
    } else if parts[1].is_empty() {
        Some("has no partition (e.g. `aws`)")
    } else if parts[2] != "iam" || !parts[5].starts_with("role/") || parts[5].len() == "role/".len() {
        Some("is not an IAM role ARN (`arn:aws:iam::<account>:role/<name>`)")
    } else if parts[4].len() != 12 || !parts[4].bytes().all(|b| b.is_ascii_digit()) {
        Some("has no 12-digit account id")
    } else if arn.chars().any(|c| c.is_whitespace() || c.is_control()) {
        Some("contains whitespace")
    } else {
        None
    };
    match why {
        Some(why) => Err(format!("{setting} {arn:?} {why}")),
        None => Ok(()),
    }
}

/// ECS's limits on tags: key 1..=128 characters, value ≤ 256, letters, digits, spaces and
/// `_ . : / = + - @`, no `aws:` prefix; at most [`MAX_TAGS`] including `gitlab-project`.
fn check_tags(tags: &[(String, String)]) -> Result<(), String> {
    if tags.len() + 1 > MAX_TAGS {
        return Err(format!(
            "tags: {} tags plus `{PROJECT_TAG}` exceed the {MAX_TAGS} this plugin allows on a task definition",
            tags.len()
        ));
    }
    let allowed = |c: char| c.is_alphanumeric() || c == ' ' || "_.:/=+-@".contains(c);
    for (key, value) in tags {
        let why = if key.is_empty() || key.chars().count() > MAX_TAG_KEY {
            Some(format!("key must have 1 to {MAX_TAG_KEY} characters"))
        } else if value.chars().count() > MAX_TAG_VALUE {
            Some(format!("value has more than {MAX_TAG_VALUE} characters"))
        } else if !key.chars().all(allowed) || !value.chars().all(allowed) {
            Some("may hold only letters, digits, spaces and `_ . : / = + - @`".into())
        } else if key.to_ascii_lowercase().starts_with("aws:") {
            Some("keys starting with `aws:` are reserved by AWS".into())
        } else if key.starts_with("ecs-executor:") {
            Some("keys starting with `ecs-executor:` belong to the executor".into())
        } else if key == PROJECT_TAG {
            Some(format!("`{PROJECT_TAG}` is set by this plugin to the project path"))
        } else {
            None
        };
        if let Some(why) = why {
            return Err(format!("tags.{key:?}: {why}"));
        }
    }
    Ok(())
}

fn parse_log_configuration(value: &Value) -> Result<(String, Vec<(String, String)>), String> {
    let raw: RawLogConfiguration = field("log_configuration", value)?;
    if !LOG_DRIVERS.contains(&raw.driver.as_str()) {
        return Err(format!(
            "log_configuration.driver {:?} is not a log driver ECS accepts ({})",
            raw.driver,
            LOG_DRIVERS.join(", ")
        ));
    }
    if raw.driver == "awslogs" && !raw.options.contains_key("awslogs-group") {
        return Err("log_configuration.options: the awslogs driver needs `awslogs-group`".into());
    }
    Ok((raw.driver, raw.options.into_iter().collect()))
}

/// Set `key` to `value` in `tags`, replacing an existing entry (keys do not repeat).
fn set_tag(tags: &mut Vec<KeyValue>, key: &str, value: &str) {
    match tags.iter_mut().find(|tag| tag.key == key) {
        Some(tag) => tag.value = value.into(),
        None => tags.push(KeyValue {
            key: key.into(),
            value: value.into(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use ecs_executor_plugin_sdk::fixtures;
    use serde_json::json;

    use super::*;

    const APP_ROLE: &str = "arn:aws:iam::123456789012:role/app-ci";
    const TEAM_ROLE: &str = "arn:aws:iam::123456789012:role/team-ci";
    const PULL_ROLE: &str = "arn:aws:iam::123456789012:role/team-pull";
    const DEFAULT_ROLE: &str = "arn:aws:iam::123456789012:role/ci-default";

    fn mapper(settings: serde_json::Value) -> RoleMapper {
        RoleMapper::from_settings(&settings.to_string()).unwrap()
    }

    fn settings_error(settings: serde_json::Value) -> String {
        RoleMapper::from_settings(&settings.to_string()).unwrap_err()
    }

    fn team_mapper() -> RoleMapper {
        mapper(json!({
            "roles": [
                {"project": "team/app", "task_role_arn": APP_ROLE},
                {"project": "team/*", "task_role_arn": TEAM_ROLE, "execution_role_arn": PULL_ROLE},
            ],
            "default_task_role_arn": DEFAULT_ROLE,
        }))
    }

    fn customized(mapper: &RoleMapper, project: &str) -> (Outcome, TaskDefinition) {
        let mut job = fixtures::job();
        job.project_path = project.into();
        let mut task = fixtures::task(&job);
        (mapper.apply(project, &mut task), task)
    }

    fn tags(task: &TaskDefinition) -> Vec<(&str, &str)> {
        task.tags
            .iter()
            .map(|tag| (tag.key.as_str(), tag.value.as_str()))
            .collect()
    }

    #[test]
    fn the_first_matching_rule_sets_the_roles() {
        let mapper = team_mapper();
        let (outcome, task) = customized(&mapper, "team/app");
        assert_eq!(outcome, Outcome::Rule(0));
        assert_eq!(task.task_role_arn.as_deref(), Some(APP_ROLE));
        assert_eq!(task.execution_role_arn, None);
        let (outcome, task) = customized(&mapper, "team/sub/other");
        assert_eq!(outcome, Outcome::Rule(1));
        assert_eq!(task.task_role_arn.as_deref(), Some(TEAM_ROLE));
        assert_eq!(task.execution_role_arn.as_deref(), Some(PULL_ROLE));
    }

    #[test]
    fn without_a_match_the_default_applies_or_nothing_changes() {
        let (outcome, task) = customized(&team_mapper(), "teamster/app");
        assert_eq!(
            (outcome, task.task_role_arn.as_deref()),
            (Outcome::Default, Some(DEFAULT_ROLE))
        );
        let (outcome, task) = customized(&mapper(json!({})), "team/app");
        assert_eq!((outcome, task.task_role_arn), (Outcome::Unchanged, None));
    }

    #[test]
    fn patterns_match_whole_components_ignoring_ascii_case() {
        let exact = Pattern::parse("team/app").unwrap();
        assert!(exact.matches("team/app") && exact.matches("Team/App"));
        assert!(!exact.matches("team/app2") && !exact.matches("team/app/sub"));
        let below = Pattern::parse("team/*").unwrap();
        assert!(below.matches("team/a") && below.matches("TEAM/a/b/c"));
        assert!(!below.matches("team") && !below.matches("team/") && !below.matches("teamster/a"));
        assert!(!below.matches("tém/a"), "a multi-byte project path does not panic");
    }

    #[test]
    fn tags_are_added_and_the_project_tag_is_cut_to_the_ecs_limit() {
        let mapper = mapper(json!({"tags": {"team": "ci", "cost-centre": "42"}}));
        let mut job = fixtures::job();
        job.project_path = "team/app".into();
        let mut task = fixtures::task(&job);
        task.tags.push(KeyValue {
            key: "team".into(),
            value: "old".into(),
        });
        mapper.apply("team/app", &mut task);
        assert_eq!(
            tags(&task),
            [("team", "ci"), ("cost-centre", "42"), (PROJECT_TAG, "team/app")]
        );
        let long = format!("group/{}", "é".repeat(300));
        let (_, task) = customized(&mapper, &long);
        let value = &task.tags.iter().find(|tag| tag.key == PROJECT_TAG).unwrap().value;
        assert_eq!(value.chars().count(), MAX_TAG_VALUE);
        assert!(long.starts_with(value.as_str()));
    }

    #[test]
    fn the_log_configuration_is_forced_on_every_container() {
        let mapper = mapper(json!({
            "log_configuration": {"driver": "awslogs", "options": {"awslogs-region": "eu-west-1", "awslogs-group": "/ci"}}
        }));
        let mut job = fixtures::job();
        job.project_path = "p/q".into();
        let mut task = fixtures::task(&job);
        task.containers[0].log_configuration = Some(LogConfiguration {
            log_driver: "json-file".into(),
            options: Vec::new(),
            extra: Some("{}".into()),
        });
        task.containers.push(fixtures::container("svc-redis", "redis:7"));
        mapper.apply("p/q", &mut task);
        for container in &task.containers {
            let log = container.log_configuration.as_ref().unwrap();
            assert_eq!(log.log_driver, "awslogs", "{}", container.name);
            let options: Vec<_> = log
                .options
                .iter()
                .map(|kv| (kv.key.as_str(), kv.value.as_str()))
                .collect();
            assert_eq!(options, [("awslogs-group", "/ci"), ("awslogs-region", "eu-west-1")]);
            assert_eq!(log.extra, None);
        }
        let (_, untouched) = customized(&team_mapper(), "p/q");
        assert!(untouched.containers.iter().all(|c| c.log_configuration.is_none()));
    }

    #[test]
    fn malformed_arns_are_refused_naming_the_setting() {
        for (arn, why) in [
            ("role/x", "is not an ARN"),
            ("arn:aws:iam::123456789012", "is not an ARN"),
            ("arn::iam::123456789012:role/x", "no partition"),
            ("arn:aws:s3:::bucket/x", "not an IAM role ARN"),
            ("arn:aws:iam::123456789012:user/x", "not an IAM role ARN"),
            ("arn:aws:iam::123456789012:role/", "not an IAM role ARN"),
            ("arn:aws:iam::1234:role/x", "12-digit account"),
        ] {
            let err = settings_error(
                json!({"roles": [{"project": "a/b", "task_role_arn": APP_ROLE, "execution_role_arn": arn}]}),
            );
            assert!(
                err.starts_with("roles[0].execution_role_arn ") && err.contains(why),
                "{arn}: {err}"
            );
        }
        let err = settings_error(json!({"default_task_role_arn": "x"}));
        assert!(err.starts_with("default_task_role_arn \"x\" is not an ARN"), "{err}");
        let err = settings_error(json!({"roles": [{"project": "a", "task_role_arn": APP_ROLE}, {"project": "b"}]}));
        assert!(err.starts_with("roles[1]: missing field `task_role_arn`"), "{err}");
    }

    #[test]
    fn bad_patterns_are_refused_naming_the_rule() {
        for (pattern, why) in [
            ("", "is empty"),
            ("*", "is empty"),
            ("/team/app", "empty path component"),
            ("team//app", "empty path component"),
            ("team/app/", "empty path component"),
            ("team/*/app", "only as its whole last component"),
            ("team/a*", "only as its whole last component"),
            ("team app", "not a GitLab project path"),
        ] {
            let err = settings_error(json!({"roles": [{"project": pattern, "task_role_arn": APP_ROLE}]}));
            assert!(
                err.starts_with("roles[0].project ") && err.contains(why),
                "{pattern:?}: {err}"
            );
        }
    }

    #[test]
    fn tags_outside_the_ecs_limits_are_refused() {
        let too_many: serde_json::Map<String, serde_json::Value> =
            (0..MAX_TAGS).map(|n| (format!("k{n}"), json!("v"))).collect();
        assert!(settings_error(json!({"tags": too_many})).starts_with("tags: 40 tags plus `gitlab-project` exceed"));
        let just_enough: serde_json::Map<String, serde_json::Value> =
            (0..MAX_TAGS - 1).map(|n| (format!("k{n}"), json!("v"))).collect();
        mapper(json!({"tags": just_enough}));
        for (tags, why) in [
            (json!({"": "v"}), "key must have 1 to 128"),
            (json!({"k".repeat(129): "v"}), "key must have 1 to 128"),
            (json!({"k": "v".repeat(257)}), "more than 256"),
            (json!({"k": "a;b"}), "only letters"),
            (json!({"aws:owner": "me"}), "reserved by AWS"),
            (json!({"ecs-executor:x": "1"}), "belong to the executor"),
            (json!({"gitlab-project": "x"}), "set by this plugin"),
            (json!({"k": 1}), "invalid type"),
        ] {
            let err = settings_error(json!({ "tags": tags }));
            assert!(err.starts_with("tags") && err.contains(why), "{tags}: {err}");
        }
        mapper(json!({"tags": {"k".repeat(128): "v".repeat(256)}}));
    }

    #[test]
    fn other_bad_settings_are_refused() {
        assert!(settings_error(json!({"role": []})).contains("unknown setting `role`"));
        assert!(settings_error(json!({"roles": {}})).starts_with("roles: invalid type"));
        let err = settings_error(json!({"log_configuration": {"driver": "syslogd"}}));
        assert!(err.starts_with("log_configuration.driver \"syslogd\""), "{err}");
        let err = settings_error(json!({"log_configuration": {"driver": "awslogs"}}));
        assert!(err.contains("awslogs-group"), "{err}");
        let err = settings_error(json!({"log_configuration": {"driver": "json-file", "option": {}}}));
        assert!(err.starts_with("log_configuration: unknown field `option`"), "{err}");
        assert!(settings_error(json!([])).contains("JSON object"));
    }
}
