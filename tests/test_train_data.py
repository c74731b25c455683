"""train.data: batch plan, collation with DDPO change masks (padding, truncation), pair shards
and RLHF-V correction rows."""

from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fixtures_models import noise_image
from transformers import AutoProcessor

from engine import chat
from engine.config import ModelConfig
from engine.instruction_io import CORRECTIONS, write_rows
from engine.schemas import CORRECTION_SCHEMA, PAIR_SCHEMA, REJECT_SCHEMA
from engine.writer import pair_record
from train.data import (
    BatchPlan,
    PairDataError,
    collate_pairs,
    pairs_from_corrections,
    read_correction_table,
    read_pair_dataset,
    rows_of,
)


def png(seed: int) -> bytes:
    buffer = io.BytesIO()
    noise_image(seed).save(buffer, format="PNG")
    return buffer.getvalue()


def pair(pair_id: str, chosen: str, rejected: str, prompt: str = "Describe the image.", seed: int | None = 0) -> dict:
    """The columns training reads; seed None makes a text-only pair."""
    return pair_record(prompt, None if seed is None else png(seed), chosen, rejected, pair_id=pair_id,
                       ref_chosen_logps=-1.5, ref_rejected_logps=-2.5)


def image_struct(data: bytes) -> dict:
    return {"bytes": data, "path": None}


@pytest.fixture(scope="module")
def processor(tiny_llava_dir):
    return AutoProcessor.from_pretrained(tiny_llava_dir)


# ------------------------------------------------------------------ BatchPlan


def test_plan_sizes_and_cyclic_fill():
    plan = BatchPlan(n_pairs=10, micro_batch_size=2, accumulation_steps=2, world_size=1, epochs=3, seed=0)
    assert plan.global_batch == 4 and plan.steps_per_epoch == 3 and plan.total_steps == 9  # ceil(10 / 4) = 3
    order = plan.epoch_order(0)
    assert len(order) == 12 and sorted(order[:10]) == list(range(10))  # every pair once ...
    assert order[10:].tolist() == order[:2].tolist()  # ... then wrapped around to fill the last batch
    assert plan.epoch_order(1).tolist() != order.tolist()  # reshuffled per epoch
    assert plan.epoch_order(1).tolist() == BatchPlan(10, 2, 2, 1, 3, seed=0).epoch_order(1).tolist()  # seeded


def test_an_unshuffled_plan_takes_the_rows_in_order_every_epoch():
    plan = BatchPlan(n_pairs=5, micro_batch_size=2, accumulation_steps=1, world_size=1, epochs=2, seed=0, shuffle=False)
    assert plan.epoch_order(0).tolist() == plan.epoch_order(1).tolist() == [0, 1, 2, 3, 4, 0]
    assert [plan.micro_batches(step, 0) for step in range(3)] == [[[0, 1]], [[2, 3]], [[4, 0]]]


def test_plan_global_batches_do_not_depend_on_the_number_of_workers():
    one = BatchPlan(n_pairs=7, micro_batch_size=1, accumulation_steps=4, world_size=1, epochs=2, seed=3)
    four = BatchPlan(n_pairs=7, micro_batch_size=1, accumulation_steps=1, world_size=4, epochs=2, seed=3)
    two = BatchPlan(n_pairs=7, micro_batch_size=2, accumulation_steps=1, world_size=2, epochs=2, seed=3)
    assert one.total_steps == four.total_steps == two.total_steps == 4
    for step in range(one.total_steps):
        single = [i for micro in one.micro_batches(step, 0) for i in micro]
        assert [i for r in range(4) for micro in four.micro_batches(step, r) for i in micro] == single
        assert [i for r in range(2) for micro in two.micro_batches(step, r) for i in micro] == single


def test_plan_rejects_bad_values():
    with pytest.raises(ValueError, match="n_pairs"):
        BatchPlan(0, 1, 1, 1, 1, 0)
    with pytest.raises(ValueError, match="outside"):
        BatchPlan(4, 1, 1, 1, 1, 0).micro_batches(4, 0)


# ------------------------------------------------------------------ DDPO change masks (train/ddpo_masks.py)


@pytest.mark.parametrize("ddpo_mask", ["released", "all_edits"])
def test_changed_mask_marks_only_the_colour_tokens(processor, ddpo_mask):
    tokenizer = processor.tokenizer
    batch = collate_pairs([pair("p", "there is a red circle here", "there is a blue circle here")], processor,
                          max_length=512, ddpo_mask=ddpo_mask)
    for row, colour in ((0, " red"), (1, " blue")):
        changed = batch.model_inputs["input_ids"][row][batch.changed_mask[row] == 1].tolist()
        assert changed == tokenizer(colour, add_special_tokens=False)["input_ids"]
    assert not (batch.changed_mask.bool() & ~batch.response_mask.bool()).any()  # only response tokens


# ------------------------------------------------------------------ collation


def test_collate_is_the_engines_encoding_with_padding(processor):
    rows = [pair("a", "There is a red circle in the top left.", "no", seed=1),
            pair("b", "yes", "There are two blue squares.", seed=2)]
    batch = collate_pairs(rows, processor, max_length=512)
    encoded = chat.encode_for_logprobs(processor, [noise_image(1), noise_image(2)] * 2, ["Describe the image."] * 4,
                                       ["There is a red circle in the top left.", "yes", "no",
                                        "There are two blue squares."])
    assert batch.model_inputs["input_ids"].tolist() == encoded["input_ids"].tolist()
    assert batch.response_mask.tolist() == encoded["response_mask"].tolist()
    assert batch.model_inputs["pixel_values"].shape == (4, 3, 32, 32)
    assert batch.pair_ids == ["a", "b"] and batch.n_truncated == 0 and batch.changed_mask is None
    assert batch.ref_chosen_logps.tolist() == [-1.5, -1.5] and batch.ref_rejected_logps.tolist() == [-2.5, -2.5]
    # rows padded to the longest on the right: padding is unattended, unscored, pad-filled
    pad = chat.pad_token_id(processor.tokenizer)
    attention = batch.model_inputs["attention_mask"]
    assert attention[0].all() or attention[2].all()  # the longest row fills the width
    for row in range(4):
        length = int(attention[row].sum())
        assert (batch.model_inputs["input_ids"][row, length:] == pad).all()
        assert not batch.response_mask[row, length:].any()
    decoded = processor.tokenizer.decode(batch.model_inputs["input_ids"][2][batch.response_mask[2] == 1])
    assert decoded == "no</s>"


def test_truncation_cuts_the_response_end_and_keeps_the_prompt(processor):
    rows = [pair("long", "There is a red circle in the top left and a blue square in the center.", "no")]
    full = collate_pairs(rows, processor, max_length=512)
    chosen_length = int(full.model_inputs["attention_mask"][0].sum())
    prompt_length = int(full.response_mask[0].argmax())
    cut = collate_pairs(rows, processor, max_length=prompt_length + 3)
    assert cut.model_inputs["input_ids"].shape[1] == prompt_length + 3 < chosen_length
    assert cut.n_truncated == 1  # the chosen sequence; the short rejected one fits
    assert cut.model_inputs["input_ids"][0].tolist() == full.model_inputs["input_ids"][0, : prompt_length + 3].tolist()
    assert (cut.model_inputs["input_ids"][0] == processor.image_token_id).sum() == 16  # image tokens intact
    assert int(cut.response_mask[0].sum()) == 3
    with pytest.raises(PairDataError, match="prompt alone"):
        collate_pairs(rows, processor, max_length=prompt_length)


def test_collate_reports_bad_images(processor):
    bad = dict(pair("x", "a", "b"), images=[image_struct(b"not an image")])
    with pytest.raises(PairDataError, match="pair x: undecodable image"):
        collate_pairs([bad], processor, max_length=512)
    two = dict(pair("y", "a", "b"), images=[image_struct(png(0)), image_struct(png(1))])
    with pytest.raises(PairDataError, match="2 images"):
        collate_pairs([two], processor, max_length=512)


def test_text_only_pairs_have_no_pixel_values(processor):
    batch = collate_pairs([pair("t", "yes", "no", seed=None)], processor, max_length=512)
    assert "pixel_values" not in batch.model_inputs and batch.model_inputs["input_ids"].shape[0] == 2


# ------------------------------------------------------------------ pair shards


def full_pair_row(i: int) -> dict:
    return pair_record("Describe.", png(i), "a red circle", "a blue star", pair_id=f"p{i}", instruction_id=f"i{i}",
                       iteration=0, chosen_score=0, rejected_score=-1, chosen_n_claims=1, rejected_n_claims=1,
                       ref_chosen_logps=-1.0, ref_rejected_logps=-2.0, policy_id="tiny:llava", chosen_seed=1,
                       rejected_seed=2)


def test_read_pair_dataset_checks_the_shards(tmp_path, ray_local):
    with pytest.raises(PairDataError, match="no Parquet pair shards"):
        read_pair_dataset(str(tmp_path / "missing"))
    shards = tmp_path / "pairs"
    shards.mkdir()
    pq.write_table(pa.Table.from_pylist([full_pair_row(i) for i in (2, 0)], schema=PAIR_SCHEMA), shards / "a.parquet")
    pq.write_table(pa.Table.from_pylist([full_pair_row(1)], schema=PAIR_SCHEMA), shards / "b.parquet")
    (shards / "c.parquet.tmp-123").write_bytes(b"an unfinished write is not read")
    rows = rows_of(read_pair_dataset(str(shards)))
    assert [row["pair_id"] for row in rows] == ["p0", "p1", "p2"]
    assert rows[0]["images"] == [image_struct(png(0))] and rows[0]["ref_rejected_logps"] == -2.0
    pq.write_table(pa.Table.from_pylist([full_pair_row(1)], schema=PAIR_SCHEMA), shards / "again.parquet")
    with pytest.raises(PairDataError, match="written twice"):
        read_pair_dataset(str(shards))
    other = tmp_path / "other"
    other.mkdir()
    pq.write_table(pa.table({"pair_id": ["q"], "prompt": ["no other columns"]}), other / "x.parquet")
    with pytest.raises(PairDataError, match=r"x.parquet lacks column\(s\) \['chosen'"):
        read_pair_dataset(str(other))


# ------------------------------------------------------------------ RLHF-V corrections


def test_pairs_from_corrections(tiny_llava_dir, model_cache, tmp_path):
    from engine.backends.base import Prompt
    from engine.backends.hf import HFBackend

    table = pa.table({
        "img": [png(1), png(2), b"broken", png(3)],
        "q": ["Describe the image.", "What is there?", "Describe.", "Describe."],
        "fixed": ["There is a red circle.", "a blue star", "x", "same"],
        "orig": ["There is a green circle.", "a blue star and a red cross", "y", " same "],
    })
    pq.write_table(table, tmp_path / "c.parquet")
    columns = {"image": "img", "question": "q", "chosen": "fixed", "rejected": "orig"}
    init_model = ModelConfig(path=tiny_llava_dir)
    corrections = read_correction_table(str(tmp_path / "c.parquet"), columns)
    pairs, rejects = pairs_from_corrections(corrections, init_model, model_cache, iteration=3)
    assert pairs.schema == PAIR_SCHEMA and rejects.schema == REJECT_SCHEMA
    assert pairs["instruction_id"].to_pylist() == ["correction-0", "correction-1"]
    assert sorted(rejects["reason"].to_pylist()) == ["equal_answers", "undecodable_image"]
    assert pairs["images"].to_pylist()[0] == [image_struct(png(1))] and set(pairs["iteration"].to_pylist()) == {3}
    backend = HFBackend(tiny_llava_dir, ModelConfig(path=tiny_llava_dir), device="cpu")
    expected = backend.logprobs([Prompt(noise_image(1), "Describe the image.")] * 2,
                                ["There is a red circle.", "There is a green circle."])
    # Batched with other rows there, alone here: a log-prob does not depend on its batch-mates.
    assert pairs["ref_chosen_logps"][0].as_py() == expected[0][0]
    assert pairs["ref_rejected_logps"][0].as_py() == expected[1][0]
    assert np.isfinite(pairs["ref_rejected_logps"].to_numpy()).all()
    with pytest.raises(PairDataError, match="lacks column"):
        read_correction_table(str(tmp_path / "c.parquet"))


def correction_rows() -> list[dict]:
    return [
        {"id": "a", "image": png(1), "image_uri": None, "question": "Describe.", "rejected": "A red star. A cat.",
         "chosen": "A red star.", "edits": [{"rejected_start": 12, "rejected_end": 18, "chosen_start": 11,
                                              "chosen_end": 11}]},
        {"id": "b", "image": None, "image_uri": "memory://corrections/b.png", "question": "Describe.",
         "rejected": "A dog.", "chosen": "A blue circle.", "edits": None},
    ]


@pytest.mark.parametrize("suffix", [".parquet", ".jsonl"])
def test_corrections_round_trip_through_the_schema(tmp_path, suffix):
    table = pa.Table.from_pylist([{**row, "read_error": None} for row in correction_rows()], schema=CORRECTION_SCHEMA)
    write_rows(table, str(tmp_path / f"c{suffix}"), CORRECTIONS)
    assert read_correction_table(str(tmp_path / f"c{suffix}")).equals(table)


def test_bad_correction_rows_are_diverted_with_reasons(tmp_path, model_cache):
    """Every row bad: each is diverted with its reason and no model is loaded."""
    import base64
    import json

    good = {**correction_rows()[0], "image": base64.b64encode(png(1)).decode()}
    lines = [json.dumps({**good, "id": "no-image", "image": None}),
             json.dumps({**good, "id": "lost", "image": None, "image_uri": str(tmp_path / "none.png")}),
             json.dumps({**good, "id": "same", "chosen": good["rejected"]}),
             json.dumps({**good, "id": "empty", "chosen": " "}),
             json.dumps({**good, "id": "edits", "edits": [{"rejected_start": "x"}]}),
             "{not json"]
    (tmp_path / "c.jsonl").write_text("\n".join(lines) + "\n")
    table = read_correction_table(str(tmp_path / "c.jsonl"))
    pairs, rejects = pairs_from_corrections(table, ModelConfig(path="tiny:does-not-exist"), model_cache)
    assert pairs.num_rows == 0
    assert dict(zip(rejects["instruction_id"].to_pylist(), rejects["reason"].to_pylist())) == {
        "no-image": "missing_image", "lost": "missing_image", "same": "equal_answers", "empty": "empty_text",
        "edits": "unreadable_row", "c.jsonl:6": "unreadable_row"}
    details = dict(zip(rejects["instruction_id"].to_pylist(), rejects["detail"].to_pylist()))
    assert "'edits' does not fit" in details["edits"] and "none.png" in details["lost"]


def test_repeated_ids_are_the_ids_seen_more_than_once_sorted():
    from train.data import repeated_ids

    assert repeated_ids(["b", "a", "c", "b", "a", "b"]) == ["a", "b"] and repeated_ids(iter(["x", "y"])) == []
