"""Wheel build hook: ship the template DB, made by running the wheel's own migrations (see jobqueue/template_db.py).

So the first DB a user makes after `pip install` is a copy too, instead of paying ~0.3 s to import SQLAlchemy
and Alembic. An editable install has no shipped template: it makes one in the user's cache, as any new set
of migrations does.
"""

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from hatchling.builders.hooks.plugin.interface import BuildHookInterface

# Run from the source tree in a process of its own: the jobqueue this builds, not one the build env may have.
MAKE_TEMPLATE = """
import sys
from pathlib import Path
sys.path.insert(0, sys.argv[2])
from jobqueue.db import _migrate_new_file
from jobqueue.template_db import template_name
out = Path(sys.argv[1]) / template_name()
_migrate_new_file(out)
print(out.name)
"""


class TemplateDBHook(BuildHookInterface):
    PLUGIN_NAME = "custom"

    def initialize(self, version: str, build_data: dict) -> None:
        if self.target_name != "wheel" or version == "editable":
            return
        self._made = tempfile.mkdtemp(prefix="jobqueue-template-")
        name = subprocess.run(
            [sys.executable, "-c", MAKE_TEMPLATE, self._made, self.root],
            cwd=self.root,
            check=True,
            stdout=subprocess.PIPE,
            text=True,
        ).stdout.strip()
        build_data["force_include"][str(Path(self._made) / name)] = f"jobqueue/_data/{name}"

    def finalize(self, version: str, build_data: dict, artifact_path: str) -> None:
        if getattr(self, "_made", None):
            shutil.rmtree(self._made, ignore_errors=True)
