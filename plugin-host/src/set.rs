//! The configured plugins of a process, in config order, and the three hooks as the executor
//! runs them: the `customize` chain, the first address that is not declined, and the first
//! service mapping that is not declined.

use crate::types::{CiService, ContainerDefinition, Instance, JobContext, TaskDefinition};
use crate::{
    CompiledCache, DockerAddress, Hook, JobLog, Plugin, PluginEngine, PluginError, PluginSpec, ServiceMapping,
    SettingsCheck,
};

/// Loaded plugins, in config order. Empty when the config has none (then nothing wasmtime is
/// touched: no engine is created).
#[derive(Default)]
pub struct PluginSet {
    plugins: Vec<Plugin>,
}

/// The address a plugin picked.
#[derive(Debug, Clone)]
pub struct PickedAddress {
    pub plugin: String,
    pub address: DockerAddress,
}

impl PluginSet {
    /// Load every plugin (compiling into `cache` what is not there yet) and check its
    /// settings as `check` says. The first failure stops loading.
    pub fn load(cache: &CompiledCache, specs: &[PluginSpec], check: SettingsCheck) -> Result<PluginSet, PluginError> {
        if specs.is_empty() {
            return Ok(PluginSet::default());
        }
        let engine = PluginEngine::new().map_err(|e| PluginError::Load {
            plugin: specs[0].name.clone(),
            path: specs[0].path.display().to_string(),
            message: format!("cannot create the WebAssembly engine: {e:#}"),
        })?;
        let plugins = specs
            .iter()
            .map(|spec| Plugin::load_with(&engine, cache, spec, check))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(PluginSet { plugins })
    }

    pub fn is_empty(&self) -> bool {
        self.plugins.is_empty()
    }

    pub fn plugins(&self) -> &[Plugin] {
        &self.plugins
    }

    /// `task-definition.customize` of every plugin that exports it, in order, each getting
    /// the previous answer. The first error stops the chain.
    pub fn customize(
        &self,
        job: &JobContext,
        task: TaskDefinition,
        log: &dyn JobLog,
    ) -> Result<TaskDefinition, PluginError> {
        let mut task = task;
        for plugin in self.plugins.iter().filter(|p| p.has(Hook::Customize)) {
            task = plugin.customize(job, &task, log)?;
        }
        Ok(task)
    }

    /// Narrow what the plugin named `name` may ask for (see [`crate::validate::Grants`]).
    pub fn set_grants(&mut self, name: &str, grants: crate::validate::Grants) {
        for p in self.plugins.iter_mut().filter(|p| p.name() == name) {
            p.set_grants(grants);
        }
    }

    /// `address.pick-address` in order; the first plugin that returns an address decides.
    /// `None`: every plugin declined (or none exports the hook): the built-in rule decides.
    pub fn pick_address(
        &self,
        job: &JobContext,
        instance: &Instance,
        log: &dyn JobLog,
    ) -> Result<Option<PickedAddress>, PluginError> {
        for plugin in self.plugins.iter().filter(|p| p.has(Hook::PickAddress)) {
            if let Some(address) = plugin.pick_address(job, instance, log)? {
                return Ok(Some(PickedAddress {
                    plugin: plugin.name().to_string(),
                    address,
                }));
            }
        }
        Ok(None)
    }

    /// `services.map-services` in order: per service, the first plugin that does not decline
    /// decides; a later plugin sees only the services no earlier one mapped. The answer has
    /// one entry per service: `Some(containers)` from a plugin, `None` for the built-in mapping.
    pub fn map_services(
        &self,
        job: &JobContext,
        services: &[CiService],
        log: &dyn JobLog,
    ) -> Result<Vec<Option<Vec<ContainerDefinition>>>, PluginError> {
        let mut mapped: Vec<Option<Vec<ContainerDefinition>>> = vec![None; services.len()];
        for plugin in self.plugins.iter().filter(|p| p.has(Hook::MapServices)) {
            let open: Vec<usize> = (0..services.len()).filter(|&i| mapped[i].is_none()).collect();
            if open.is_empty() {
                break;
            }
            let asked: Vec<CiService> = open.iter().map(|&i| services[i].clone()).collect();
            let answers = plugin.map_services(job, &asked, log)?;
            for (i, answer) in open.into_iter().zip(answers) {
                if let ServiceMapping::Containers(containers) = answer {
                    mapped[i] = Some(containers);
                }
            }
        }
        Ok(mapped)
    }
}
