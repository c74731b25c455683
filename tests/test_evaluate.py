"""evaluate_policy on the tiny MLLM: outputs validate, the metrics follow from the rows, bad
rows are diverted with their reason; the evaluate and bon jobs run as scripts and as commands."""

import json
import re
import subprocess
import sys
from base64 import b64encode
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from engine import hallucination as hal
from engine.captions import caption_scores
from engine.config import ConfigError, EvalConfig, load_config
from engine.evaluation import EVAL_ROW_SCHEMA, METRICS_FILE, ROWS_FILE, evaluate_policy, plan_probes
from engine.storage import read_json

REPO = Path(__file__).resolve().parent.parent
HELDOUT = REPO / "data" / "smoke" / "heldout.parquet"


@pytest.fixture(scope="module")
def heldout(tmp_path_factory) -> str:
    """4 shipped held-out rows (the last without references) plus one without ground truth and
    one with a broken image."""
    rows = [{"id": r["id"], "prompt": r["prompt"], "image": b64encode(r["image"]).decode(), "objects": r["objects"],
             "references": r["references"]} for r in pq.read_table(HELDOUT).to_pylist()[:4]]
    rows[3]["references"] = None
    rows += [{**rows[0], "id": "no-objects", "objects": None},
             {**rows[0], "id": "bad-image", "image": b64encode(b"not an image").decode()}]
    path = tmp_path_factory.mktemp("heldout") / "heldout.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_probes_ask_about_listed_and_absent_objects():
    scenes = hal.load_vocabulary(["scenes"])
    row = {"id": "r", "objects": ["red circle"]}
    plan_probes(row, scenes, EvalConfig(probes_per_image=4), run_seed=0)
    assert row["probe_objects"][0] == "red circle" and row["probe_truths"] == [True, False, False, False]
    assert not {"red circle", "circle"} & set(row["probe_objects"][1:])  # a red circle is also a circle
    again = {"id": "r", "objects": ["red circle"]}
    plan_probes(again, scenes, EvalConfig(probes_per_image=4), run_seed=0)
    assert again == row
    empty = {"id": "e", "objects": []}
    plan_probes(empty, hal.load_vocabulary(["coco"]), EvalConfig(probes_per_image=3), run_seed=0)
    assert empty["probe_truths"] == [False] * 3 and len(set(empty["probe_objects"])) == 3
    assert (hal.with_article("orange star"), hal.with_article("dog")) == ("an orange star", "a dog")


@pytest.mark.parametrize("override, message", [
    ('eval.probe_question="Is it there?"', "must hold {object}"),
    ('eval.probe_question="Is there {object} near {other}?"', "must hold {object}"),
    ("eval.probes_per_image=-1", ">= 0"),
    ('eval.vocabulary=["imagenet"]', "['imagenet']"),
])
def test_unusable_settings_fail_before_anything_loads(override, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        evaluate_policy(load_config(None, [override]), "tiny:does-not-exist")


def test_evaluate_policy_writes_rows_and_metrics(model_cache, heldout, tmp_path):
    cfg = load_config(REPO / "configs" / "smoke.toml", [
        f'models.cache_dir="{model_cache}"', f'eval.heldout_path="{heldout}"', "eval.limit=0",
        "eval.probes_per_image=3", "eval.max_new_tokens=12"])
    out = str(tmp_path / "eval")
    metrics = evaluate_policy(cfg, "tiny:llava", out)

    assert read_json(f"{out}/{METRICS_FILE}") == metrics
    assert pq.read_schema(f"{out}/{ROWS_FILE}").equals(EVAL_ROW_SCHEMA, check_metadata=False)
    rows = pq.read_table(f"{out}/{ROWS_FILE}").to_pylist()
    assert {r["id"]: r["reject_reason"] for r in rows if r["reject_reason"]} == {
        "no-objects": "missing_objects", "bad-image": "undecodable_image"}
    live = [r for r in rows if r["reject_reason"] is None]
    assert metrics["rows"] == 6 and metrics["rows_evaluated"] == len(live) == 4 and metrics["rows_diverted"] == 2
    assert metrics["vocabulary"] == ["scenes"] and metrics["unknown_objects"] == []

    vocab = hal.load_vocabulary(["scenes"])
    for r in live:
        assert r["description"] and r["n_words"] == len(r["description"].split())
        assert r["mentions"] == hal.extract_mentions(r["description"], vocab)
        # 3 probes: 2 about listed objects (as many as there are), the rest about absent ones
        assert len(r["probe_objects"]) == len(r["p_yes"]) == len(r["p_no"]) == 3
        truth = hal.ground_truth_set(r["objects"], vocab)
        assert r["probe_truths"] == [name in truth for name in r["probe_objects"]]
        assert r["probe_truths"][: min(2, len(r["objects"]))] == [True] * min(2, len(r["objects"]))
        assert all(0 < p < 1 for p in r["p_yes"] + r["p_no"])
    answers = [hal.says_yes(y, n) for r in live for y, n in zip(r["p_yes"], r["p_no"])]
    probes = hal.probe_metrics([t for r in live for t in r["probe_truths"]], answers)
    assert metrics["probes"] == 12 and metrics["probe_accuracy"] == probes["accuracy"]
    assert metrics["probe_f1"] == probes["f1"] and metrics["probe_yes_ratio"] == probes["yes_ratio"]
    chair = hal.chair([r["mentions"] for r in live], [r["hallucinated"] for r in live])
    assert (metrics["chair_s"], metrics["chair_i"]) == (chair["chair_s"], chair["chair_i"])
    assert metrics["mean_words"] == pytest.approx(sum(r["n_words"] for r in live) / 4)
    # caption scores over the rows that have references, the row without them left out
    assert metrics["rows_with_references"] == 3 and live[3]["references"] is None
    captions = caption_scores([r["description"] for r in live[:3]], [r["references"] for r in live[:3]])
    assert (metrics["cider"], metrics["bleu_4"]) == (captions["cider"], captions["bleu_4"])

    again = evaluate_policy(cfg, "tiny:llava")  # deterministic: greedy, seeded probe draws
    assert {k: v for k, v in again.items() if k != "wall_seconds"} == {
        k: v for k, v in metrics.items() if k != "wall_seconds"}


def test_evaluate_job(ray_local, model_cache, tmp_path):
    from jobs.evaluate import main

    out = tmp_path / "eval"
    result = CliRunner().invoke(main, [
        "--model", "tiny:llava", "--heldout", str(HELDOUT), "--out", str(out),
        "--set", f'models.cache_dir="{model_cache}"', "--set", "eval.limit=2", "--set", "eval.max_new_tokens=8"])
    assert result.exit_code == 0, result.output
    assert "chair_s" in result.output and "probe_f1" in result.output
    assert read_json(str(out / METRICS_FILE))["rows_evaluated"] == 2

    bad = CliRunner().invoke(main, ["--heldout", str(tmp_path / "missing.parquet"), "--out", str(out)])
    assert bad.exit_code == 1 and "does not exist" in bad.output and "Traceback" not in bad.output
    bad = CliRunner().invoke(main, ["--set", 'eval.probe_question="Is there a {thing}?"', "--out", str(out)])
    assert bad.exit_code == 1 and "{object}" in bad.output


@pytest.mark.parametrize("job", ["bon", "evaluate"])
def test_job_scripts_run_directly(job):
    out = subprocess.run([sys.executable, f"jobs/{job}.py", "--help"], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "--config" in out.stdout and "--out" in out.stdout
