"""The run directory and its manifest: what makes `jobs/iterate.py` resumable.

  <output_dir>/<name>/run.json              the run manifest: config (and its history)
  <output_dir>/<name>/iter_<k>/             generation output (pairs/, rejects/, ... see writer)
  <output_dir>/<name>/iter_<k>/generation.json   written last by the generation pass
  <output_dir>/<name>/iter_<k>/checkpoint/  training output; model/ is the next policy
  <output_dir>/<name>/iter_<k>/summary.json written last: the iteration is complete

Every marker is written with temp + rename after the outputs it vouches for, so a crash
anywhere leaves either a complete stage or one that is redone.
"""

from __future__ import annotations

from engine.config import Config, config_to_dict
from engine.errors import EngineError
from engine.storage import exists, filesystem, join, read_json, write_json_atomic

RUN_MANIFEST = "run.json"
SUMMARY = "summary.json"

# Keys that change how fast a run goes, not what it computes: a resumed run may change them.
_FREE_KEYS = ("run.iterations", "ray.")


class ConfigChanged(EngineError):
    """The config differs from the one a run was started with; the message names the keys."""


def flatten(data: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in data.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def changed_keys(old: dict, new: dict) -> list[str]:
    a, b = flatten(old), flatten(new)
    return sorted(k for k in a.keys() | b.keys()
                  if a.get(k) != b.get(k) and not k.startswith(_FREE_KEYS) and ".resources." not in f".{k}")


class RunDir:
    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.root = join(cfg.run.output_dir, cfg.run.name)

    def iteration_dir(self, k: int) -> str:
        return join(self.root, f"iter_{k}")

    def checkpoint_dir(self, k: int) -> str:
        return join(self.iteration_dir(k), "checkpoint")

    def is_complete(self, k: int) -> bool:
        return exists(join(self.iteration_dir(k), SUMMARY))

    def first_incomplete(self) -> int:
        k = 0
        while self.is_complete(k):
            k += 1
        return k

    def open(self, allow_config_change: bool = False) -> None:
        """Create the run, or check that a resumed run has the config it was started with.
        With allow_config_change, the new config applies from the first incomplete iteration,
        whose partial outputs are discarded (they were made under the old config)."""
        manifest_url = join(self.root, RUN_MANIFEST)
        config = config_to_dict(self.cfg)
        if not exists(manifest_url):
            write_json_atomic({"config": config, "history": []}, manifest_url)
            return
        manifest = read_json(manifest_url)
        changed = changed_keys(manifest["config"], config)
        if not changed:
            return
        if not allow_config_change:
            raise ConfigChanged(
                f"run {self.root} was started with a different config; changed keys: {', '.join(changed)}. "
                "Use a new run.name, or --allow-config-change to apply it from the next iteration on."
            )
        start = self.first_incomplete()
        fs, path = filesystem(self.iteration_dir(start))
        if fs.exists(path):
            fs.rm(path, recursive=True)
        history = manifest["history"] + [{"from_iteration": start, "changed": changed, "previous": manifest["config"]}]
        write_json_atomic({"config": config, "history": history}, manifest_url)
