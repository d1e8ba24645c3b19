//! Container exits as Docker announces them (`die` events of this cluster's containers),
//! handed to the task the container belongs to, so an exit is seen within milliseconds rather
//! than at the next inspection.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bollard::Docker;
use bollard::query_parameters::EventsOptions;
use futures_util::StreamExt;
use tokio::sync::mpsc;

use crate::action_log::say;
use crate::naming::{LABEL_CLUSTER, LABEL_TASK_ARN};

/// One container's exit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerExit {
    pub docker_id: String,
    /// From the event; `None` when Docker did not say (then the task inspects the container).
    pub exit_code: Option<i64>,
}

/// Task ARN → where that task's container exits go. A task is in here while it is handled.
pub type ExitRoutes = Arc<Mutex<HashMap<String, mpsc::UnboundedSender<ContainerExit>>>>;

/// Follows Docker's event stream forever, resubscribing (from the last event seen) when the
/// stream ends or fails, e.g. while dockerd restarts.
pub async fn route_exits(docker: Docker, cluster: String, routes: ExitRoutes) {
    let mut since: Option<i64> = None;
    let mut failing = false;
    loop {
        let filters = HashMap::from([
            ("type".to_string(), vec!["container".to_string()]),
            ("event".to_string(), vec!["die".to_string()]),
            ("label".to_string(), vec![format!("{LABEL_CLUSTER}={cluster}")]),
        ]);
        let options = EventsOptions {
            since: since.map(|s| s.to_string()),
            until: None,
            filters: Some(filters),
        };
        let mut stream = docker.events(Some(options));
        while let Some(item) = stream.next().await {
            match item {
                Ok(event) => {
                    if failing {
                        say!("Docker events: following again");
                        failing = false;
                    }
                    since = event.time.or(since);
                    let Some(actor) = event.actor else { continue };
                    let (Some(id), Some(attrs)) = (actor.id, actor.attributes) else {
                        continue;
                    };
                    let Some(arn) = attrs.get(LABEL_TASK_ARN) else { continue };
                    let exit_code = attrs.get("exitCode").and_then(|c| c.parse().ok());
                    if let Some(route) = routes.lock().unwrap().get(arn) {
                        let _ = route.send(ContainerExit {
                            docker_id: id,
                            exit_code,
                        });
                    }
                }
                Err(e) => {
                    if !failing {
                        say!("Docker events: {e}; resubscribing every second");
                        failing = true;
                    }
                    break;
                }
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}
