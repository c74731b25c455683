"""Toy-world corrections, RLHF-V style: the toy policy describes seeded scenes, and every wrong
sentence of a description is corrected from the scene's ground truth, as a human annotator
corrects segments, into a CORRECTION_SCHEMA file that `jobs/train.py --corrections` trains on.

    python -m toyworld.corrections --n 256 --seed 0 --out runs/toyworld/corrections.parquet

A sentence is kept verbatim when it is right: a scene-grammar sentence naming an object at its
place, or a sentence outside the grammar that names no absent object (nothing to check it
against). A wrong one is rewritten to name, in the grammar, the first of: the object it names,
if present elsewhere and not yet described; the object at the place it names; any scene object
not yet described (reading order). With every object described it is removed. A description
with nothing to correct, or none at all, is no correction and is diverted with its reason.
"""

from __future__ import annotations

import random
import re

import click
import msgspec
import pyarrow as pa

from engine.config import Config, load_config
from engine.instruction_io import CORRECTIONS, rejects_beside, write_rows
from engine.scenes import DESCRIBE, Scene, SceneObject, describe, make_scene, render
from engine.schemas import CORRECTION_SCHEMA, REJECT_SCHEMA
from engine.seeds import derive_seed
from engine.sentences import rewrite_sentences, sentence_spans
from engine.vocabulary import COLOURS, POSITIONS, SHAPES
from toyworld.grammar import mentioned_objects
from toyworld.run import TOYWORLD_CONFIG

_GRAMMAR = re.compile(rf"There is a ({'|'.join(COLOURS)}) ({'|'.join(SHAPES)}) at the ({'|'.join(POSITIONS)})\.")


def _claimed(sentence: str) -> SceneObject | None:
    """The object a scene-grammar sentence states, None for any other sentence."""
    match = _GRAMMAR.fullmatch(sentence)
    return SceneObject(*match.groups()) if match else None


def _is_right(sentence: str, scene: Scene) -> bool:
    claimed = _claimed(sentence)
    if claimed is not None:
        return claimed in scene
    present = {o.name for o in scene} | {o.shape for o in scene}
    return all(name in present for name in mentioned_objects(sentence))


def _described(sentence: str, scene: Scene) -> set[SceneObject]:
    """The scene objects a right sentence describes."""
    claimed = _claimed(sentence)
    return {claimed} if claimed else {o for o in scene if o.name in mentioned_objects(sentence)}


def _replacement(sentence: str, scene: Scene, described: set[SceneObject]) -> SceneObject | None:
    claimed = _claimed(sentence)
    candidates = [o for o in scene if claimed and o.name == claimed.name]
    candidates += [o for o in scene if claimed and o.position == claimed.position]
    candidates += list(scene)
    return next((o for o in candidates if o not in described), None)


def correct(description: str, scene: Scene) -> tuple[str, list[dict]]:
    """The corrected description and its edits (CORRECTION_SCHEMA's character spans), by
    engine.sentences.rewrite_sentences: each wrong sentence rewritten, or removed when every
    scene object is described already."""
    spans = sentence_spans(description)
    right = [_is_right(description[a:b], scene) for a, b in spans]
    described = set().union(*(_described(description[a:b], scene) for (a, b), ok in zip(spans, right) if ok))
    replacements: dict[int, str | None] = {}
    for k, ((start, end), ok) in enumerate(zip(spans, right)):
        if ok:
            continue
        new = _replacement(description[start:end], scene, described)
        if new is not None:
            described.add(new)
        replacements[k] = None if new is None else describe((new,))
    return rewrite_sentences(description, spans, replacements)


def correction_rows(cfg: Config, n: int, seed: int) -> tuple[pa.Table, pa.Table]:
    """n seeded scenes described by cfg's policy (hf backend, [sample] temperature and length)
    and corrected: (CORRECTION_SCHEMA rows, REJECT_SCHEMA rows of descriptions not corrected)."""
    from engine.backends import make_backend
    from engine.backends.base import Prompt, SamplingParams
    from engine.stages.base import row_image

    rng = random.Random(seed)
    scenes = [make_scene(rng) for _ in range(n)]
    rows = [{"id": f"correction-{seed}-{i:05d}", "image": render(scene), "image_uri": None, "question": DESCRIBE}
            for i, scene in enumerate(scenes)]
    params = SamplingParams(temperature=cfg.sample.temperature, max_new_tokens=cfg.sample.max_new_tokens)
    backend = make_backend(msgspec.structs.replace(cfg.models.policy, backend="hf"), cfg.models.cache_dir)
    try:
        answers = backend.sample([Prompt(row_image(row), DESCRIBE) for row in rows],
                                 [[derive_seed(seed, 0, row["id"], 0, "correct")] for row in rows], params)
    finally:
        backend.close()
    kept, rejects = [], []
    for row, scene, (answer,) in zip(rows, scenes, answers):
        chosen, edits = correct(answer.text, scene)
        reason = "empty_answer" if not answer.text.strip() else None if edits else "nothing_to_correct"
        if reason:
            rejects.append({"instruction_id": row["id"], "iteration": 0, "stage": "corrections", "reason": reason,
                            "detail": f"the policy's description: {answer.text!r}", "answer_index": 0,
                            "prompt": DESCRIBE})
            continue
        kept.append({**row, "rejected": answer.text, "chosen": chosen, "edits": edits, "read_error": None})
    return pa.Table.from_pylist(kept, schema=CORRECTION_SCHEMA), pa.Table.from_pylist(rejects, schema=REJECT_SCHEMA)


@click.command()
@click.option("--config", "config_path", default=TOYWORLD_CONFIG, show_default=True,
              type=click.Path(dir_okay=False), help="The toy world's TOML config (its policy and [sample]).")
@click.option("--n", type=click.IntRange(min=1), required=True, help="Number of scenes.")
@click.option("--seed", type=int, default=0, show_default=True, help="Scene and sampling seed.")
@click.option("--out", required=True, help="Output .parquet or .jsonl (local path or fsspec URL).")
def main(config_path: str, n: int, seed: int, out: str) -> None:
    """Write toy-world corrections to OUT and the descriptions not corrected, with their reason,
    beside it (<OUT without suffix>.rejects.parquet)."""
    from engine.storage import write_parquet_atomic

    table, rejects = correction_rows(load_config(config_path), n, seed)
    write_rows(table, out, CORRECTIONS)
    rejects_url = rejects_beside(out)
    write_parquet_atomic(rejects, rejects_url)
    click.echo(f"wrote {table.num_rows} corrections to {out}; {rejects.num_rows} descriptions diverted to {rejects_url}")


if __name__ == "__main__":
    main()
