"""Imported first by `python jobs/<job>.py`: makes the project import from the repo root.

Run as a script, Python puts jobs/ first on sys.path, where jobs/train.py would shadow the
`train` package; under `ray job submit --working-dir .` the project is not pip-installed at all.
Pointing sys.path[0] at the repo root serves both.
"""

import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
if sys.path and Path(sys.path[0] or ".").resolve() == REPO_ROOT / "jobs":
    sys.path[0] = str(REPO_ROOT)
