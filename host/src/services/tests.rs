//! Unit tests of what a service is and how it becomes containers and a launch file.

use super::containers::*;
use super::launch::*;
use super::spec::*;
use std::collections::BTreeMap;

use crate::config::{Config, NetworkMode};
use crate::failure::{Blame, Classify};
use crate::protocol::{JobResponse, JobService};
use crate::task::TaskSpec;

use crate::protocol::JobVariable;
use std::path::Path;

fn config(extra: &str) -> Config {
    Config::parse(
        &format!("cluster='c'\nregion='us-east-1'\n{extra}\n[docker]\nca_file='/ca'\ncert_file='/c'\nkey_file='/k'\n"),
        Path::new("test.toml"),
    )
    .unwrap()
}

fn var(key: &str, value: &str, public: bool) -> JobVariable {
    JobVariable {
        key: key.into(),
        value: value.into(),
        public,
        masked: !public,
        file: false,
    }
}

fn service(name: &str, alias: &str) -> JobService {
    JobService {
        name: name.into(),
        alias: alias.into(),
        ..Default::default()
    }
}

fn response(services: Vec<JobService>) -> JobResponse {
    JobResponse {
        id: 1,
        variables: vec![var("PUBLIC_ONE", "p1", true), var("SECRET_ONE", "s3cr3t-value", false)],
        services,
        ..Default::default()
    }
}

fn load(config: &Config, r: &JobResponse) -> Result<JobServices, ServiceError> {
    JobServices::from_parts(config, r, &[], &[("CI_BUILDS_DIR".into(), "/builds".into())])
}

#[test]
fn every_alias_and_both_derived_names_are_host_names() {
    let r = response(vec![service(
        "registry.example.com:4999/valkey/valkey:8",
        "db, pg cache",
    )]);
    let s = &load(&config(""), &r).unwrap().services[0];
    assert_eq!(s.aliases, ["db", "pg", "cache"]);
    assert_eq!(
        s.hostnames,
        [
            "db",
            "pg",
            "cache",
            "registry.example.com__valkey__valkey",
            "registry.example.com-valkey-valkey"
        ]
    );
    assert_eq!(s.container, "svc-0");
    assert_eq!(derived_names("postgres:16@sha256:abc"), ["postgres"]);
    assert_eq!(derived_names("bitnami/redis"), ["bitnami__redis", "bitnami-redis"]);
}

#[test]
fn a_name_two_services_share_goes_to_the_first_with_a_note() {
    let r = response(vec![service("redis:7", "cache"), service("redis:7", "cache2")]);
    let got = load(&config(""), &r).unwrap();
    assert_eq!(got.services[0].hostnames, ["cache", "redis"]);
    assert_eq!(got.services[1].hostnames, ["cache2"]);
    assert_eq!(got.services[1].container, "svc-1");
    assert!(got.notes.iter().any(|n| n.contains("\"redis\"")), "{:?}", got.notes);
}

#[test]
fn bad_aliases_too_many_services_and_unlisted_images_are_the_jobs_failure() {
    let r = response(vec![service("redis:7", "ok bad/alias")]);
    let err = load(&config(""), &r).unwrap_err();
    assert_eq!(err.blame(), Blame::Build);
    assert!(err.to_string().contains("\"bad/alias\""), "{err}");

    let r = response(vec![service("a:1", ""), service("b:1", ""), service("c:1", "")]);
    let err = load(&config("[services]\nmax_per_job = 2"), &r).unwrap_err();
    assert_eq!(err.blame(), Blame::Build);
    assert!(
        err.to_string().contains("3 services") && err.to_string().contains("at most 2"),
        "{err}"
    );

    let c = config("[services]\nallowed_images = ['redis:*', 'registry.example.com/ci/**']");
    assert!(load(&c, &response(vec![service("redis:7", "")])).is_ok());
    assert!(load(&c, &response(vec![service("registry.example.com/ci/db/pg:1", "")])).is_ok());
    let err = load(&c, &response(vec![service("evil/redis:7", "")])).unwrap_err();
    assert_eq!(err.blame(), Blame::Build);
    assert!(err.to_string().contains("\"evil/redis:7\" is not allowed"), "{err}");
    assert!(!image_allowed("redis:7/x", &["redis:*".into()]));
}

#[test]
fn services_get_public_and_runner_variables_then_their_own_expanded() {
    let mut s = service("pg:16", "db");
    s.variables = vec![
        var("POSTGRES_PASSWORD", "pw-$PUBLIC_ONE", true),
        var("PUBLIC_ONE", "overridden", true),
    ];
    let got = load(&config(""), &response(vec![s])).unwrap();
    let env: BTreeMap<_, _> = got.services[0].environment.iter().cloned().collect();
    assert_eq!(env["CI_BUILDS_DIR"], "/builds");
    // The service's own definition wins, and expansion sees the final value.
    assert_eq!(env["PUBLIC_ONE"], "overridden");
    assert_eq!(env["POSTGRES_PASSWORD"], "pw-overridden");
    // Settings (non-public) variables are not passed to services, as in GitLab.
    assert!(!env.contains_key("SECRET_ONE"));
}

#[test]
fn expansion_follows_gitlab_runner() {
    let vars = vec![
        ("A".to_string(), "x".to_string()),
        ("B".to_string(), "$A-${A}-$$-$NOPE-$".to_string()),
    ];
    assert_eq!(expand(&vars)[1].1, "x-x-$--$");
}

#[test]
fn names_expanded_by_gitlab_runner_replace_unexpanded_ones() {
    let r = response(vec![service("$REG/redis:7", "$ALIAS other")]);
    let expanded = vec![ExpandedService {
        name: "reg.local/redis:7".into(),
        alias: "cache".into(),
    }];
    let got = JobServices::from_parts(&config(""), &r, &expanded, &[]).unwrap();
    assert_eq!(got.services[0].image, "reg.local/redis:7");
    assert_eq!(got.services[0].aliases, ["cache", "other"]);
}

#[test]
fn the_task_definition_gets_a_launcher_links_and_no_variable() {
    let c = config("helper_image='helper:1'");
    let mut s = service("ecs-executor-test/svc-echo:1", "echo db.local");
    s.variables = vec![var("SERVICE_SECRET", "svc-s3cr3t", true)];
    let got = load(&c, &response(vec![s])).unwrap();
    let job = crate::job::JobContext {
        key: crate::protocol::JobKey::new(1, None),
        project_id: 1,
        ref_protected: false,
        project_path: String::new(),
        runner_version: String::new(),
        image: "build:1".into(),
        image_entrypoint: None,
        image_user: None,
        platform: None,
        secrets: vec![],
    };
    let mut spec = TaskSpec::for_job(&c, &job);
    let svc = &got.services[0];
    add_to_spec(&mut spec, svc, builtin_containers(&c, svc));
    let json = serde_json::to_string(&spec).unwrap();
    assert!(
        !json.contains("svc-s3cr3t") && !json.contains("p1") && !json.contains("SERVICE_SECRET"),
        "{json}"
    );
    let build = spec.containers.iter().find(|c| c.name == "build").unwrap();
    assert_eq!(
        build.links,
        [
            "svc-0:echo",
            "svc-0:ecs-executor-test__svc-echo",
            "svc-0:ecs-executor-test-svc-echo"
        ]
    );
    let svc_c = spec.containers.iter().find(|c| c.name == "svc-0").unwrap();
    assert!(!svc_c.essential);
    assert_eq!(svc_c.entry_point.as_ref().unwrap()[2], LAUNCHER);
    // The dotted alias cannot be an ECS link: it goes to /etc/hosts after start.
    assert_eq!(
        hosts_file_names(NetworkMode::Bridge, &got),
        [("db.local".to_string(), "svc-0".to_string())]
    );
    assert_eq!(hosts_file_names(NetworkMode::Awsvpc, &got).len(), 4);
}

#[test]
fn the_launch_file_quotes_everything_and_runs_the_docker_command() {
    let mut s = service("x:1", "");
    s.entrypoint = None;
    s.command = Some(vec!["--port".into(), "it's 1".into()]);
    let got = load(&config(""), &response(vec![s])).unwrap();
    let mut svc = got.services[0].clone();
    svc.environment = vec![("V".into(), "a'b $HOME `x`".into()), ("bad-name".into(), "x".into())];
    let argv = service_argv(&svc, &["/entry".into()], &["default".into()]);
    assert_eq!(argv, ["/entry", "--port", "it's 1"]);
    let script = launch_script(&svc, &argv);
    assert!(script.contains("export V='a'\\''b $HOME `x`'\n"), "{script}");
    assert!(!script.contains("bad-name"), "{script}");
    assert!(script.ends_with("exec '/entry' '--port' 'it'\\''s 1'\n"), "{script}");
    // An entrypoint override drops the image's CMD, as Docker does.
    svc.entrypoint = Some(vec!["/other".into()]);
    svc.command = None;
    assert_eq!(service_argv(&svc, &["/entry".into()], &["default".into()]), ["/other"]);
}

#[test]
fn a_services_docker_user_becomes_its_containers_user_and_a_bad_one_is_refused() {
    let mut with_user = service("postgres:16", "db");
    with_user.executor_opts.docker.user = "999:999".into();
    let c = config("");
    let loaded = load(&c, &response(vec![with_user, service("redis:7", "")])).unwrap();
    let containers = builtin_containers(&c, &loaded.services[0]);
    assert_eq!(containers[0].extra.as_ref().unwrap()["user"], "999:999");
    assert!(builtin_containers(&c, &loaded.services[1])[0].extra.is_none());

    let mut bad = service("postgres:16", "db");
    bad.executor_opts.docker.user = "root; id".into();
    let err = load(&c, &response(vec![bad])).unwrap_err();
    assert_eq!(err.blame(), Blame::Build);
    assert!(
        err.to_string().contains("services[0]: docker: user: is \"root; id\""),
        "{err}"
    );
}
