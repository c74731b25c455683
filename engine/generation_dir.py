"""A generation pass's output directory holds one pass: a start marker says which.

Before any output, a pass writes generation_start.json: its iteration and every setting that
decides what it computes. generation.json, written last, marks it complete. Running into a
directory resumes only the pass its marker names. Another pass's outputs, or outputs that no
marker vouches for, are refused: their shards would stand beside the new ones, and
jobs/train.py reads every shard of pairs/.
"""

from __future__ import annotations

from typing import Sequence

import msgspec

from engine.config import Config, ModelConfig, config_to_dict
from engine.errors import EngineError
from engine.run_dir import changed_keys
from engine.stages.base import StageSpec
from engine.storage import exists, join, read_json, write_json_atomic

START_MARKER = "generation_start.json"
GENERATION_MANIFEST = "generation.json"
# What a pass writes: engine.writer's layout, then the manifest.
PASS_OUTPUTS = ("candidates", "rejects", "claims", "rows", "pairs", GENERATION_MANIFEST)
# The config sections every pass reads besides its stages' own.
READ_SECTIONS = ("input", "models", "validate")


class OutputDirInUse(EngineError):
    """The output directory holds another pass's outputs."""


def pass_settings(cfg: Config, iteration: int, policy: ModelConfig, stages: Sequence[StageSpec]) -> dict:
    """What decides a pass's outputs: its iteration, the run's seed, its policy and the config
    sections it reads. Resources are among them but may change, as for a resumed run
    (engine.run_dir.changed_keys)."""
    data = config_to_dict(msgspec.structs.replace(cfg, models=msgspec.structs.replace(cfg.models, policy=policy)))
    sections = dict.fromkeys([*READ_SECTIONS, *(spec.section for spec in stages)])
    return {"iteration": iteration, "run": {"seed": cfg.run.seed}, **{name: data[name] for name in sections}}


def claim_output_dir(out_dir: str, settings: dict, kind: str = "generation", marker: str = START_MARKER,
                     outputs: Sequence[str] = PASS_OUTPUTS) -> None:
    """Write the start marker of a new pass, or check that out_dir's outputs are this pass's. A
    marker over no outputs (a pass that failed before writing any) is replaced: nothing stale
    would be mixed in, and the corrected command must not be refused. `kind`, `marker` and
    `outputs` name another kind of pass with the same rule (engine.rollouts)."""
    marker_url = join(out_dir, marker)
    found = [name for name in outputs if exists(join(out_dir, name))]
    if found and exists(marker_url):
        changed = changed_keys(read_json(marker_url), settings)
        if changed:
            raise OutputDirInUse(f"{out_dir} holds another {kind} pass's outputs (it differs in "
                                 f"{', '.join(changed)}): give a new output directory, or delete this one")
        return
    if found:
        raise OutputDirInUse(f"{out_dir} holds {kind} outputs ({', '.join(found)}) without the start marker "
                             f"{marker} that says which pass wrote them: give a new output directory, "
                             "or delete this one")
    write_json_atomic(settings, marker_url)
