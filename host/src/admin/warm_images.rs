//! `warm-images [--dry-run]`: the warm-images pass of `gc` on its own (`crate::warm_images`),
//! for an admin who wants a new instance warm now rather than at the next `gc`. Unlike `gc`,
//! it fails (exit 2) when an image could not be made present on an instance, so a script sees it.

use crate::aws::AwsClients;
use crate::config::Config;
use crate::ecs::Ecs;
use crate::ecs::budget::Budget;
use crate::failure::Failure;
use crate::state::StateStore;
use crate::warm_images::Summary;

/// `ecs-executor warm-images [--dry-run]`.
pub async fn run(config: &Config, dry_run: bool) -> Result<(), Failure> {
    if config.warm_images.images.is_empty() {
        return Err(Failure::system(
            "warm-images: the config lists no `[warm_images] images`".to_string(),
        ));
    }
    let store = StateStore::open(&config.state_dir)?;
    let clients = AwsClients::load(config).await;
    let ecs =
        Ecs::new(clients.ecs.clone(), &config.cluster).with_budget(Budget::new(store.dir(), config.aws.rate_share));
    let summary = crate::warm_images::warm(config, &ecs, &clients.ec2, dry_run).await;
    println!("{}", line("warm-images", &summary, dry_run));
    if summary.failed > 0 {
        return Err(Failure::system(format!(
            "warm-images: {} image(s) could not be made present (see the lines above)",
            summary.failed
        )));
    }
    Ok(())
}

/// The summary line `gc` and `warm-images` print.
pub fn line(command: &str, w: &Summary, dry_run: bool) -> String {
    format!(
        "ecs-executor {command}: warm images: {} instance(s), {} present, {} {}, {} failed",
        w.instances,
        w.present,
        w.pulled,
        if dry_run { "would pull" } else { "pulled" },
        w.failed,
    )
}
