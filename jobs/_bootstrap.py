"""Imported first by `python jobs/<job>.py`: makes the project import from the repo root.

Run as a script, Python puts jobs/ first on sys.path, where jobs/train.py would shadow the
`train` package; under `ray job submit --working-dir .` the project is not pip-installed at all.
Pointing sys.path[0] at the repo root serves both. jobs/ goes back at the END of the path:
processes that re-import the script as __main__ (vLLM's engine core, multiprocessing spawn)
must still find `_bootstrap`, and last on the path it shadows nothing.
"""

import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
if sys.path and Path(sys.path[0] or ".").resolve() == REPO_ROOT / "jobs":
    sys.path[0] = str(REPO_ROOT)
    sys.path.append(str(REPO_ROOT / "jobs"))
