//! In which order a task's containers are created, started and stopped: what each container
//! waits for (`links`, `volumesFrom`, `dependsOn`), and the reverse when the task stops
//! (dependents first), as the agent's dependency graph does it.

use aws_sdk_ecs::types::ContainerDefinition;

/// What a container waits for before it starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Condition {
    /// The dependency was started (`START`; also `HEALTHY`, which we do not wait for).
    Start,
    /// The dependency ran and exited, with any code (`COMPLETE`).
    Complete,
    /// The dependency ran and exited with code 0 (`SUCCESS`).
    Success,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dependency {
    /// Index of the container depended on (definition order).
    pub on: usize,
    pub condition: Condition,
}

/// Where a container stands, as far as its dependents care.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    NotStarted,
    Running,
    Exited(Option<i64>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Readiness {
    Ready,
    Wait,
    /// The container can never start (a `SUCCESS` dependency failed); the text says why.
    Never(String),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OrderError {
    #[error("container {container} refers to {missing}, which is not in the task definition")]
    Unknown { container: String, missing: String },
    #[error("containers {0} depend on each other in a cycle")]
    Cycle(String),
}

/// The dependencies a container definition declares, by container name: each link
/// (`name:alias`), each `volumesFrom` source, and each `dependsOn` entry.
pub fn declared_dependencies(def: &ContainerDefinition) -> Vec<(String, Condition)> {
    let mut out = Vec::new();
    for link in def.links() {
        let name = link.split(':').next().unwrap_or(link);
        out.push((name.to_string(), Condition::Start));
    }
    for from in def.volumes_from() {
        if let Some(source) = from.source_container() {
            out.push((source.to_string(), Condition::Start));
        }
    }
    for dep in def.depends_on() {
        let condition = match dep.condition().as_str() {
            "COMPLETE" => Condition::Complete,
            "SUCCESS" => Condition::Success,
            _ => Condition::Start,
        };
        out.push((dep.container_name().to_string(), condition));
    }
    out
}

/// The order of a task's containers. Indices are positions in the task definition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartOrder {
    names: Vec<String>,
    /// Containers in creation order: every container after all it depends on; ties keep
    /// definition order.
    pub creation: Vec<usize>,
    pub deps: Vec<Vec<Dependency>>,
}

impl StartOrder {
    /// `containers`: each container's name and declared dependencies, in definition order.
    pub fn new(containers: &[(String, Vec<(String, Condition)>)]) -> Result<StartOrder, OrderError> {
        let names: Vec<String> = containers.iter().map(|(n, _)| n.clone()).collect();
        let mut deps = Vec::with_capacity(containers.len());
        for (name, declared) in containers {
            let mut resolved = Vec::new();
            for (on, condition) in declared {
                let idx = names.iter().position(|n| n == on).ok_or_else(|| OrderError::Unknown {
                    container: name.clone(),
                    missing: on.clone(),
                })?;
                resolved.push(Dependency {
                    on: idx,
                    condition: *condition,
                });
            }
            deps.push(resolved);
        }
        let creation = topological(&names, &deps)?;
        Ok(StartOrder { names, creation, deps })
    }

    /// Makes every other container wait for `owner` to start (the awsvpc emulation: the
    /// first container owns the task's network namespace, the others join it).
    pub fn all_wait_for(&mut self, owner: usize) {
        for (i, deps) in self.deps.iter_mut().enumerate() {
            if i != owner && !deps.iter().any(|d| d.on == owner) {
                deps.push(Dependency {
                    on: owner,
                    condition: Condition::Start,
                });
            }
        }
        // `owner` was first in creation order; it must stay first.
        self.creation.retain(|&i| i != owner);
        self.creation.insert(0, owner);
    }

    /// Whether container `idx` may start, given where every container stands.
    pub fn readiness(&self, idx: usize, progress: &[Progress]) -> Readiness {
        let mut ready = true;
        for dep in &self.deps[idx] {
            let state = progress[dep.on];
            let met = match (dep.condition, state) {
                (_, Progress::NotStarted) => false,
                (Condition::Start, _) => true,
                (Condition::Complete, Progress::Exited(_)) => true,
                (Condition::Success, Progress::Exited(Some(0))) => true,
                (Condition::Success, Progress::Exited(code)) => {
                    let code = code.map_or("unknown".to_string(), |c| c.to_string());
                    return Readiness::Never(format!(
                        "dependency {} of container {} exited with code {code}, and SUCCESS was required",
                        self.names[dep.on], self.names[idx]
                    ));
                }
                (_, Progress::Running) => false,
            };
            ready &= met;
        }
        if ready { Readiness::Ready } else { Readiness::Wait }
    }

    /// Groups of containers to stop one group after the other: a container is stopped only
    /// after every container that depends on it.
    pub fn stop_waves(&self) -> Vec<Vec<usize>> {
        let n = self.names.len();
        let mut wave = vec![0usize; n];
        // Dependents come later in creation order, so walking it backwards settles them first.
        for &i in self.creation.iter().rev() {
            for dep in &self.deps[i] {
                wave[dep.on] = wave[dep.on].max(wave[i] + 1);
            }
        }
        let top = wave.iter().copied().max().unwrap_or(0);
        (0..=top)
            .map(|w| {
                self.creation
                    .iter()
                    .copied()
                    .filter(|&i| wave[i] == w)
                    .collect::<Vec<_>>()
            })
            .filter(|group| !group.is_empty())
            .collect()
    }
}

fn topological(names: &[String], deps: &[Vec<Dependency>]) -> Result<Vec<usize>, OrderError> {
    let n = names.len();
    let mut placed = vec![false; n];
    let mut order = Vec::with_capacity(n);
    while order.len() < n {
        let next = (0..n).find(|&i| !placed[i] && deps[i].iter().all(|d| placed[d.on]));
        match next {
            Some(i) => {
                placed[i] = true;
                order.push(i);
            }
            None => {
                let stuck: Vec<&str> = (0..n).filter(|&i| !placed[i]).map(|i| names[i].as_str()).collect();
                return Err(OrderError::Cycle(stuck.join(", ")));
            }
        }
    }
    Ok(order)
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_ecs::types::{ContainerCondition, ContainerDependency, VolumeFrom};

    fn spec(name: &str, deps: &[(&str, Condition)]) -> (String, Vec<(String, Condition)>) {
        (
            name.to_string(),
            deps.iter().map(|(n, c)| (n.to_string(), *c)).collect(),
        )
    }

    #[test]
    fn links_volumes_from_and_depends_on_are_all_dependencies() {
        let def = ContainerDefinition::builder()
            .name("app")
            .links("db:database")
            .links("cache")
            .volumes_from(VolumeFrom::builder().source_container("data").build())
            .depends_on(
                ContainerDependency::builder()
                    .container_name("migrate")
                    .condition(ContainerCondition::Success)
                    .build()
                    .unwrap(),
            )
            .depends_on(
                ContainerDependency::builder()
                    .container_name("proxy")
                    .condition(ContainerCondition::Healthy)
                    .build()
                    .unwrap(),
            )
            .depends_on(
                ContainerDependency::builder()
                    .container_name("init")
                    .condition(ContainerCondition::Complete)
                    .build()
                    .unwrap(),
            )
            .build();
        assert_eq!(
            declared_dependencies(&def),
            vec![
                ("db".to_string(), Condition::Start),
                ("cache".to_string(), Condition::Start),
                ("data".to_string(), Condition::Start),
                ("migrate".to_string(), Condition::Success),
                ("proxy".to_string(), Condition::Start),
                ("init".to_string(), Condition::Complete),
            ]
        );
    }

    #[test]
    fn dependencies_are_created_first_and_ties_keep_definition_order() {
        let order = StartOrder::new(&[
            spec("client", &[("server", Condition::Start)]),
            spec("sidecar", &[]),
            spec("server", &[("init", Condition::Complete)]),
            spec("init", &[]),
        ])
        .unwrap();
        assert_eq!(order.creation, vec![1, 3, 2, 0], "sidecar, init, server, client");
    }

    #[test]
    fn dependents_stop_before_what_they_depend_on() {
        let order = StartOrder::new(&[
            spec("client", &[("server", Condition::Start)]),
            spec("sidecar", &[]),
            spec("server", &[("db", Condition::Start)]),
            spec("db", &[]),
        ])
        .unwrap();
        assert_eq!(order.stop_waves(), vec![vec![1, 0], vec![2], vec![3]]);
    }

    #[test]
    fn unknown_references_and_cycles_are_refused() {
        assert_eq!(
            StartOrder::new(&[spec("a", &[("ghost", Condition::Start)])]),
            Err(OrderError::Unknown {
                container: "a".into(),
                missing: "ghost".into()
            })
        );
        assert_eq!(
            StartOrder::new(&[
                spec("a", &[("b", Condition::Start)]),
                spec("b", &[("a", Condition::Start)]),
                spec("c", &[])
            ]),
            Err(OrderError::Cycle("a, b".into()))
        );
    }

    #[test]
    fn conditions_wait_for_start_exit_or_success() {
        let order = StartOrder::new(&[
            spec("init", &[]),
            spec("after_start", &[("init", Condition::Start)]),
            spec("after_complete", &[("init", Condition::Complete)]),
            spec("after_success", &[("init", Condition::Success)]),
        ])
        .unwrap();
        let at = |p: Progress| [p, Progress::NotStarted, Progress::NotStarted, Progress::NotStarted];
        let all = |p: Progress| (1..4).map(|i| order.readiness(i, &at(p))).collect::<Vec<_>>();
        assert_eq!(
            all(Progress::NotStarted),
            vec![Readiness::Wait, Readiness::Wait, Readiness::Wait]
        );
        assert_eq!(
            all(Progress::Running),
            vec![Readiness::Ready, Readiness::Wait, Readiness::Wait]
        );
        assert_eq!(
            all(Progress::Exited(Some(0))),
            vec![Readiness::Ready, Readiness::Ready, Readiness::Ready]
        );
        let failed = all(Progress::Exited(Some(2)));
        assert_eq!(failed[..2], [Readiness::Ready, Readiness::Ready]);
        assert!(
            matches!(&failed[2], Readiness::Never(why) if why.contains("init") && why.contains("code 2")),
            "{failed:?}"
        );
    }

    #[test]
    fn awsvpc_owner_starts_first_and_stops_last() {
        let mut order = StartOrder::new(&[spec("build", &[]), spec("helper", &[])]).unwrap();
        order.all_wait_for(0);
        assert_eq!(order.creation, vec![0, 1]);
        assert_eq!(
            order.readiness(1, &[Progress::NotStarted, Progress::NotStarted]),
            Readiness::Wait
        );
        assert_eq!(
            order.readiness(1, &[Progress::Running, Progress::NotStarted]),
            Readiness::Ready
        );
        assert_eq!(order.stop_waves(), vec![vec![1], vec![0]]);
    }
}
