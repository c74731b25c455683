"""Checks that run before any model loads, so a bad path fails in seconds with its name."""

from __future__ import annotations

import os
import re

from engine.backends import WEIGHT_BACKENDS
from engine.config import Config
from engine.inputs import check_input
from engine.storage import exists

_HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")


class PreflightError(ValueError):
    pass


def check_model_path(role: str, path: str) -> None:
    """A model path must be a tiny: model, a toy: splitter, an existing local/fsspec directory,
    or (when the hub is allowed) a hub id such as `llava-hf/llava-1.5-7b-hf`."""
    if path.startswith("tiny:"):
        return
    try:
        if exists(path):
            return
    except Exception as exc:
        raise PreflightError(f"models.{role}.path {path!r} is not reachable: {exc}") from None
    hub_allowed = os.environ.get("HF_HUB_OFFLINE", "0") in ("0", "", "false")
    if _HUB_ID.match(path) and hub_allowed and not path.startswith((".", "/")):
        return
    raise PreflightError(f"models.{role}.path {path!r} does not exist" + ("" if hub_allowed else " (hub access is off)"))


def preflight(cfg: Config) -> None:
    check_input(cfg.input.path)
    for role in ("policy", "labeler", "splitter"):
        model = getattr(cfg.models, role)
        if model.backend in WEIGHT_BACKENDS:
            check_model_path(role, model.path)
