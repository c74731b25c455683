"""The writer: flight rows -> pair/reject/stats tables, the length-balancing pass, atomic files,
and pair shards that Hugging Face datasets reads as an image dataset."""

import io
import subprocess
import sys
from pathlib import Path

import datasets
import PIL.Image
import pyarrow as pa

from engine.config import PairConfig, load_config
from engine.flight import FLIGHT_SCHEMA, to_table
from engine.pairing import pair_id
from engine.pair_card import config_hash, write_pair_card
from engine.schemas import (CLAIMS_SCHEMA, PAIR_FEATURE_DICT, PAIR_SCHEMA, REJECT_SCHEMA, assistant_turn,
                            instruction_stats_schema)
from engine.storage import list_parquet, read_parquet_dir, write_parquet_atomic
from engine.writer import claim_rows, finalize_pairs, pair_record, pair_rows, reject_rows, stats_rows

STAGE_NAMES = ("sample", "split", "score", "pair")


def flight_row(**extra):
    row = {
        "id": "i1", "prompt": "Describe.", "image": b"png", "answers": ["a b c", "a b", "x y z w"],
        "answer_seeds": [11, 12, 13], "answer_tokens": [4, 3, 5],
        "facts": [["f1", "f2"], ["f3"], None], "questions": [["q1", "q2"], ["q3"], None],
        "answer_rejects": [{"answer_index": 2, "stage": "split", "reason": "unparseable_claims", "detail": "bad"}],
        "p_yes": [[0.9, 0.2], [0.7], None], "p_no": [[0.1, 0.6], [0.2], None],
        "scores": [-1, 0, None], "n_claims": [2, 1, None],
        "pairs": [{"chosen": 1, "rejected": 0, "ref_chosen_logps": -3.0, "ref_rejected_logps": -4.5}],
        "dropped_gap": 0, "dropped_equal_text": 0, "dropped_cap": 0,
        "stage_seconds": [{"stage": "sample", "seconds": 0.5}, {"stage": "split", "seconds": 0.25},
                          {"stage": "score", "seconds": 0.125}, {"stage": "pair", "seconds": 0.0625}],
    }
    row.update(extra)
    return row


def test_flight_schema_accepts_partial_rows():
    table = to_table([{"id": "x", "prompt": "p"}, flight_row()])
    assert table.schema == FLIGHT_SCHEMA and table.num_rows == 2


def test_pair_rows_follow_the_pair_indices():
    table = pair_rows([flight_row()], iteration=3, policy_id="m0")
    assert table.schema == PAIR_SCHEMA
    (row,) = table.to_pylist()
    assert row["prompt"] == [{"role": "user", "content": [{"type": "image", "text": None},
                                                          {"type": "text", "text": "Describe."}]}]
    assert (row["chosen"], row["rejected"]) == (assistant_turn("a b"), assistant_turn("a b c"))
    assert (row["chosen_score"], row["rejected_score"], row["chosen_n_claims"], row["rejected_n_claims"]) == (0, -1, 1, 2)
    assert (row["ref_chosen_logps"], row["ref_rejected_logps"]) == (-3.0, -4.5)
    assert (row["chosen_seed"], row["rejected_seed"], row["iteration"], row["policy_id"]) == (12, 11, 3, "m0")
    assert row["images"] == [{"bytes": b"png", "path": None}] and row["pair_id"] == pair_id(3, "i1", 1, 0)


def test_reject_rows_cover_row_and_answer_level():
    rows = [flight_row(), {"id": "i2", "prompt": "", "reject_stage": "validate", "reject_reason": "empty_prompt",
                           "reject_detail": "prompt is empty"}]
    table = reject_rows(rows, iteration=0)
    assert table.schema == REJECT_SCHEMA
    got = [(r["instruction_id"], r["stage"], r["reason"], r["answer_index"]) for r in table.to_pylist()]
    assert got == [("i1", "split", "unparseable_claims", 2), ("i2", "validate", "empty_prompt", -1)]


def test_claim_rows_keep_scored_answers_and_pass_over_rows_without_answers():
    diverted = {"id": "i2", "prompt": "", "reject_stage": "validate", "reject_reason": "empty_prompt"}
    unscored = {"id": "i3", "prompt": "Describe.", "answers": ["a"], "answer_seeds": [1]}  # a pass without scoring
    table = claim_rows([flight_row(), diverted, unscored], iteration=2)
    assert table.schema == CLAIMS_SCHEMA
    got = [(r["instruction_id"], r["answer_index"], r["questions"], r["quotes"]) for r in table.to_pylist()]
    assert got == [("i1", 0, ["q1", "q2"], None), ("i1", 1, ["q3"], None)]


def test_stats_rows_count_claims_and_rejections():
    (row,) = stats_rows([flight_row()], STAGE_NAMES).to_pylist()
    # answer 0: claims (0.9 vs 0.1 accepted, 0.2 vs 0.6 rejected); answer 1: accepted; answer 2 unparsed
    assert (row["n_answers"], row["n_answers_parsed"], row["n_claims"], row["n_claims_rejected"]) == (3, 2, 3, 1)
    assert (row["answer_tokens"], row["n_pairs"], row["seconds_split"]) == (12, 1, 0.25)


def test_stats_rows_have_one_seconds_column_per_stage_named():
    (row,) = stats_rows([flight_row()], ("split", "extra")).to_pylist()
    assert (row["seconds_split"], row["seconds_extra"]) == (0.25, 0.0)
    assert "seconds_sample" not in row


def _pair(pid, chosen_words, rejected_words):
    return pair_record("p", None, " ".join(["w"] * chosen_words), " ".join(["w"] * rejected_words),
                       pair_id=pid, instruction_id=pid, iteration=0, chosen_score=0, rejected_score=-1,
                       chosen_n_claims=1, rejected_n_claims=1, ref_chosen_logps=-1.0, ref_rejected_logps=-2.0,
                       policy_id="m", chosen_seed=1, rejected_seed=2)


def test_finalize_balances_lengths_and_writes_sorted_pairs(tmp_path):
    # Pairs (chosen, rejected) word counts: (2,10), (10,10), (9,10). Dropping at ratio r removes pairs
    # with (rej - cho)/rej > r: (2,10) has 0.8, (9,10) has 0.1. Keeping all: means 7 vs 10 -> 0.3;
    # r in [0.1, 0.8) drops (2,10): means 9.5 vs 10 -> 0.05; r < 0.1 drops both: 10 vs 10 -> 0.
    # The smallest imbalance is at r = 0 (ties broken towards the smallest r): one pair kept.
    out = str(tmp_path)
    write_parquet_atomic(pa.Table.from_pylist([_pair("b", 2, 10), _pair("a", 10, 10)], schema=PAIR_SCHEMA),
                         f"{out}/candidates/part-1.parquet")
    write_parquet_atomic(pa.Table.from_pylist([_pair("c", 9, 10)], schema=PAIR_SCHEMA), f"{out}/candidates/part-2.parquet")
    result = finalize_pairs(out, PairConfig())
    assert (result["candidates"], result["pairs"], result["dropped_length_balance"]) == (3, 1, 2)
    assert result["length_balance_ratio"] == 0.0
    pairs = read_parquet_dir(f"{out}/pairs", PAIR_SCHEMA)
    assert pairs["pair_id"].to_pylist() == ["a"]
    unbalanced = finalize_pairs(out, PairConfig(length_balance=False))
    assert unbalanced["pairs"] == 3
    assert read_parquet_dir(f"{out}/pairs", PAIR_SCHEMA)["pair_id"].to_pylist() == ["a", "b", "c"]


def test_finalize_keeps_a_pair_written_twice_once(tmp_path):
    """A resumed pass can write a pair again into another candidates file."""
    out = str(tmp_path)
    for name in ("part-1", "part-2"):
        write_parquet_atomic(pa.Table.from_pylist([_pair("a", 3, 3)], schema=PAIR_SCHEMA),
                             f"{out}/candidates/{name}.parquet")
    write_parquet_atomic(pa.Table.from_pylist([_pair("b", 3, 3)], schema=PAIR_SCHEMA), f"{out}/candidates/part-3.parquet")
    result = finalize_pairs(out, PairConfig())
    assert (result["candidates"], result["pairs"]) == (2, 2)
    assert read_parquet_dir(f"{out}/pairs", PAIR_SCHEMA)["pair_id"].to_pylist() == ["a", "b"]


def test_atomic_writes_leave_no_temp_files(tmp_path):
    write_parquet_atomic(stats_rows([flight_row()], STAGE_NAMES), f"{tmp_path}/rows/part-x.parquet")
    assert [p.name for p in (tmp_path / "rows").iterdir()] == ["part-x.parquet"]
    assert list_parquet(f"{tmp_path}/rows") == [f"{tmp_path}/rows/part-x.parquet"]
    assert read_parquet_dir(f"{tmp_path}/rows", instruction_stats_schema(STAGE_NAMES)).num_rows == 1
    assert read_parquet_dir(f"{tmp_path}/none", instruction_stats_schema(STAGE_NAMES)).num_rows == 0


def test_rejects_keep_an_excerpt_of_a_long_prompt():
    long = "word " * 1000
    (row,) = reject_rows([{"id": "x", "prompt": long, "reject_stage": "validate", "reject_reason": "prompt_too_long",
                           "reject_detail": "too long"}], iteration=0).to_pylist()
    assert row["prompt"].startswith("word word") and row["prompt"].endswith("(5000 chars)")
    assert len(row["prompt"]) < 250


def test_pair_shards_and_card_load_as_a_hugging_face_image_dataset(tmp_path):
    out, image = str(tmp_path), io.BytesIO()
    PIL.Image.new("RGB", (4, 3), "red").save(image, format="PNG")
    rows = pair_rows([flight_row(image=image.getvalue())], iteration=0, policy_id="m0")
    write_parquet_atomic(rows, f"{out}/candidates/part-1.parquet")
    balance = finalize_pairs(out, PairConfig())
    cfg = load_config()
    write_pair_card(out, cfg, 0, "m0", balance)
    (tmp_path / "pairs" / "part-00001.parquet.tmp-unfinished").write_bytes(b"not parquet")
    card = (tmp_path / "pairs" / "README.md").read_text()
    assert config_hash(cfg) in card and "trl dpo" in card and "1 pairs" in card
    pairs = datasets.load_dataset(f"{out}/pairs", split="train")
    assert pairs.features["images"] == datasets.List(datasets.Image())
    (row,) = pairs
    assert row["images"][0].size == (4, 3)
    assert row["prompt"] == rows["prompt"].to_pylist()[0] and row["chosen"] == assistant_turn("a b")


def test_the_pair_schema_is_the_one_datasets_builds_from_its_features_metadata_included():
    features = datasets.Features.from_dict(PAIR_FEATURE_DICT)
    assert features.to_dict() == PAIR_FEATURE_DICT
    assert features.arrow_schema.equals(PAIR_SCHEMA, check_metadata=True)


def test_writing_pairs_imports_neither_datasets_nor_torch():
    """Every Ray worker that writes a block would otherwise pay for importing torch."""
    code = ("import sys; from engine.writer import pair_rows; from engine.sink import IterationSink; "
            "pair_rows([], 0, 'm0'); print(sorted({'datasets', 'torch'} & set(sys.modules)))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                            cwd=Path(__file__).resolve().parent.parent)
    assert result.stdout.strip() == "[]"
