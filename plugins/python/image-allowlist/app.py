"""image-allowlist in Python: the same plugin as ``plugins/image-allowlist`` (Rust), built
with componentize-py against the same WIT world (``task-definition-plugin``), to show the
interfaces are language-neutral. Settings, behaviour and messages are the Rust plugin's; the
decision lives in ``allowlist.py``.

Build: ``plugins/python/build`` (generates the bindings into the build directory).
"""

from componentize_py_types import Err

from wit_world import exports
from wit_world.exports import task_definition
from wit_world.imports import host_log, host_settings, types

import allowlist


class Settings(exports.Settings):
    def validate_settings(self, json: str) -> None:
        try:
            allowlist.Allowlist.from_settings(json)
        except ValueError as e:
            raise Err(str(e))


class TaskDefinition(exports.TaskDefinition):
    def customize(self, job: types.JobContext, task: types.TaskDefinition) -> types.TaskDefinition:
        try:
            # The host validated these at load; failing here means it broke that promise.
            policy = allowlist.Allowlist.from_settings(host_settings.get())
        except ValueError as e:
            raise Err(task_definition.Error_Other(str(e)))
        message = allowlist.first_refusal(policy, ((c.name, c.image) for c in task.containers))
        if message is not None:
            raise Err(task_definition.Error_Rejected(message))
        host_log.log(host_log.Level.DEBUG, "all %d images come from allowed registries" % len(task.containers))
        return task
