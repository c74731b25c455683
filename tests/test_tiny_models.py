"""The tiny models load offline in transformers (and vLLM), are reproducible from a seed, and
carry the tokenizer facts the engine relies on (single-token yes/no, the chat format)."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import jinja2
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from transformers import (
    AutoModelForCausalLM,
    AutoModelForImageTextToText,
    AutoProcessor,
    AutoTokenizer,
    LlamaForCausalLM,
    LlavaForConditionalGeneration,
    LlavaProcessor,
)

from engine import families, vocabulary
from engine.tiny_models import (
    YES_NO_WORDS,
    ModelSizes,
    build_tiny_llm,
    build_tiny_mllm,
    build_tokenizer,
    resolve_model_path,
)

IMAGE_QUESTION = [
    {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Is there a red star?"}]}
]


@pytest.fixture(scope="session")
def mllm_dir(model_cache) -> str:
    return resolve_model_path("tiny:llava", model_cache)


@pytest.fixture(scope="session")
def llm_dir(model_cache) -> str:
    return resolve_model_path("tiny:llm", model_cache)


@pytest.fixture(scope="session")
def mllm(mllm_dir):
    return AutoProcessor.from_pretrained(mllm_dir), AutoModelForImageTextToText.from_pretrained(mllm_dir)


@pytest.fixture(scope="session")
def llm(llm_dir):
    return AutoTokenizer.from_pretrained(llm_dir), AutoModelForCausalLM.from_pretrained(llm_dir)


@pytest.fixture
def red_image() -> Image.Image:
    return Image.new("RGB", (32, 32), vocabulary.COLOURS["red"])


def _tensor_digests(tensors) -> list[str]:
    return sorted(hashlib.sha256(t.detach().contiguous().numpy().tobytes()).hexdigest() for t in tensors)


def test_reload_offline_with_auto_classes(mllm, llm):
    processor, model = mllm
    tokenizer, text_model = llm
    assert isinstance(processor, LlavaProcessor)
    assert isinstance(model, LlavaForConditionalGeneration)
    assert isinstance(text_model, LlamaForCausalLM)
    assert tokenizer.eos_token == "</s>" and tokenizer.pad_token == "<pad>"
    for loaded in (model, text_model):
        assert loaded.generation_config.eos_token_id == tokenizer.eos_token_id
        assert loaded.generation_config.pad_token_id == tokenizer.pad_token_id


def test_vision_keys_renamed_for_vllm_and_reloaded_identically(mllm_dir, mllm):
    saved = load_file(Path(mllm_dir) / "model.safetensors")
    vision_keys = [key for key in saved if key.startswith("vision_tower.")]
    assert vision_keys and all(key.startswith("vision_tower.vision_model.") for key in vision_keys)
    # Every saved tensor came back (none re-initialised because its name went unread).
    assert _tensor_digests(saved.values()) == _tensor_digests(mllm[1].state_dict().values())


@pytest.mark.parametrize("build", [build_tiny_mllm, build_tiny_llm])
def test_same_seed_same_bytes_other_seed_other_weights(tmp_path, build):
    first, again, other = (build(tmp_path / name, seed) for name, seed in [("a", 0), ("b", 0), ("c", 1)])
    for name in ("model.safetensors", "tokenizer.json", "config.json"):
        assert (first / name).read_bytes() == (again / name).read_bytes(), name
    assert (first / "model.safetensors").read_bytes() != (other / "model.safetensors").read_bytes()
    assert (first / "tokenizer.json").read_bytes() == (other / "tokenizer.json").read_bytes()


def test_building_leaves_the_global_rng_alone(tmp_path):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    build_tiny_llm(tmp_path, seed=7)
    assert torch.equal(torch.rand(3), expected)


def _sampled_tokens(model, inputs, seed: int) -> list[int]:
    torch.manual_seed(seed)
    out = model.generate(
        **inputs, do_sample=True, top_k=0, top_p=1.0, max_new_tokens=6, min_new_tokens=6
    )
    return out[0, inputs["input_ids"].shape[1]:].tolist()


def test_seeded_sampling_repeats_and_seeds_differ(mllm, llm, red_image):
    processor, model = mllm
    prompt = processor.apply_chat_template(IMAGE_QUESTION, add_generation_prompt=True)
    image_inputs = processor(images=red_image, text=prompt, return_tensors="pt")
    tokenizer, text_model = llm
    text_inputs = tokenizer.apply_chat_template(
        [{"role": "user", "content": "List the facts."}],
        add_generation_prompt=True, return_dict=True, return_tensors="pt",
    )
    for generator, inputs in ((model, image_inputs), (text_model, text_inputs)):
        seed0 = _sampled_tokens(generator, inputs, 0)
        assert len(seed0) == 6
        assert _sampled_tokens(generator, inputs, 0) == seed0
        assert _sampled_tokens(generator, inputs, 1) != seed0


def test_yes_no_are_distinct_single_tokens_with_readable_probabilities(mllm, red_image):
    processor, model = mllm
    ids = [processor.tokenizer.encode(word, add_special_tokens=False) for word in YES_NO_WORDS]
    assert all(len(one) == 1 for one in ids)
    flat = [one[0] for one in ids]
    assert len(set(flat)) == len(YES_NO_WORDS)
    assert processor.tokenizer.unk_token_id not in flat
    prompt = processor.apply_chat_template(IMAGE_QUESTION, add_generation_prompt=True)
    inputs = processor(images=red_image, text=prompt, return_tensors="pt")
    with torch.no_grad():
        probs = model(**inputs).logits[0, -1].softmax(-1)[flat]
    assert (probs > 0).all() and probs.sum() <= 1.0


def test_scene_words_and_claim_json_are_compact():
    tokenizer = build_tokenizer()
    plurals = vocabulary.PLURALS.values()
    for word in [*vocabulary.COLOURS, *vocabulary.SHAPES, *plurals, *vocabulary.COMMON_WORDS]:
        for text in (word, " " + word):
            assert len(tokenizer.encode(text, add_special_tokens=False)) == 1, text
    claim = '{"claims": [{"fact": "There is a red star.", "question": "Is there a red star?"}]}'
    # 10 words, each one token, plus 13 JSON pieces:
    # {" claims ": ␣[{" fact ": ␣" (words) ., ␣" question ": ␣" (words) ?"}]}
    assert len(tokenizer.encode(claim, add_special_tokens=False)) == 10 + 13
    compact = (
        '{"claims":[{"fact":"A red star.","question":"Is it red?"},'
        '{"fact":"A cross.","question":"Is it a cross?"}]}'
    )
    # 12 words plus {" claims ":[{" fact ":" .","  question ":" ?"},{" fact ":" .","  question ":" ?"}]}
    assert len(tokenizer.encode(compact, add_special_tokens=False)) == 12 + 15


def test_chat_template_renders_llava_format(mllm, llm):
    processor, _ = mllm
    tokenizer, _ = llm
    assert processor.apply_chat_template(IMAGE_QUESTION, add_generation_prompt=True) == (
        "<s>USER: <image>\nIs there a red star? ASSISTANT:"
    )
    conversation = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Is it red?"},
        {"role": "assistant", "content": [{"type": "text", "text": " Yes"}]},
        {"role": "user", "content": "Sure?"},
    ]
    expected = "<s>Be brief. USER: Is it red? ASSISTANT: Yes</s>USER: Sure? "
    for render in (processor.apply_chat_template, tokenizer.apply_chat_template):
        assert render(conversation, tokenize=False) == expected
        with_prompt = render(conversation, tokenize=False, add_generation_prompt=True)
        assert with_prompt == expected + "ASSISTANT:"
    with pytest.raises(jinja2.TemplateError, match="unknown chat role: tool"):
        tokenizer.apply_chat_template([{"role": "tool", "content": "x"}], tokenize=False)


def test_processor_expands_one_image_marker_to_the_patch_tokens(mllm, red_image):
    processor, _ = mllm
    prompt = processor.apply_chat_template(IMAGE_QUESTION, add_generation_prompt=True)
    assert prompt.count("<image>") == 1
    input_ids = processor(images=red_image, text=prompt, return_tensors="pt")["input_ids"][0].tolist()
    image_id = processor.tokenizer.convert_tokens_to_ids("<image>")
    assert input_ids.count(image_id) == ModelSizes().image_tokens == 16
    assert input_ids.count(processor.tokenizer.bos_token_id) == 1
    # Rendering and processing in one call (the image given in the message) agrees.
    question = IMAGE_QUESTION[0]["content"][1]
    with_image = [{"role": "user", "content": [{"type": "image", "image": red_image}, question]}]
    one_call = processor.apply_chat_template(
        with_image, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
    )
    assert one_call["input_ids"][0].tolist() == input_ids
    assert one_call["pixel_values"].shape == (1, 3, 32, 32)


def test_resolve_builds_once_even_when_raced(tmp_path, monkeypatch):
    builds, results = [], []
    real_build = families.build

    def slow_counted_build(name, out, seed):
        builds.append(seed)
        time.sleep(0.3)  # the other resolvers arrive while this build is under way
        return real_build(name, out, seed)

    monkeypatch.setattr(families, "build", slow_counted_build)

    def resolve():
        results.append(resolve_model_path("tiny:llm@2", str(tmp_path)))

    threads = [threading.Thread(target=resolve) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert builds == [2] and len(set(results)) == 1
    weights = Path(results[0]) / "model.safetensors"
    built_at = weights.stat().st_mtime_ns
    assert resolve_model_path("tiny:llm@2", str(tmp_path)) == results[0]
    assert weights.stat().st_mtime_ns == built_at and builds == [2]
    # Only the model directory and its lock file: no staging directory left behind.
    assert sorted(p.name.startswith(".") for p in tmp_path.iterdir()) == [False, True]


def test_resolve_names_seeds_and_passthrough(mllm_dir, model_cache):
    assert resolve_model_path("tiny:llava@0", model_cache) == mllm_dir
    assert Path(mllm_dir).is_absolute() and (Path(mllm_dir) / "processor_config.json").is_file()
    for other in ("/models/labeler", "file:///models/labeler"):  # hub ids: tests/test_hub.py
        assert resolve_model_path(other, model_cache) == other
    for bad in ("tiny:gpt", "tiny:llava@x", "tiny:llava@-1", "tiny:llava@", "tiny:"):
        with pytest.raises(ValueError, match=r"known: tiny:llava\[@<seed>\], tiny:llm\[@<seed>\], tiny:qwen2vl"):
            resolve_model_path(bad, model_cache)


# Exit status of the vLLM script when `import vllm` fails, so the test can skip (not fail).
NO_VLLM = 3

VLLM_SCRIPT = textwrap.dedent(
    """
    import sys


    def engine(model_dir):
        from vllm import LLM

        return LLM(model=model_dir, dtype="float32", max_model_len=512, enforce_eager=True, seed=0)


    if __name__ == "__main__":
        try:
            import vllm  # noqa: F401
        except ImportError as error:
            print(f"vllm does not import: {error!r}")
            sys.exit(%d)
        from PIL import Image
        from vllm import SamplingParams

        mllm_dir, llm_dir = sys.argv[1:]
        image = Image.new("RGB", (32, 32), (220, 40, 40))
        params = SamplingParams(temperature=1.0, max_tokens=4, min_tokens=4, seed=0)
        llava = engine(mllm_dir)
        out = llava.generate({"prompt": "<s>USER: <image>\\nIs there a red star? ASSISTANT:",
                              "multi_modal_data": {"image": image}}, params)[0]
        print("generated", len(out.outputs[0].token_ids), flush=True)
        question = [{"type": "image_pil", "image_pil": image},
                    {"type": "text", "text": "Is there a red star?"}]
        chat = llava.chat([{"role": "user", "content": question}], params)[0]
        print("chat prompt", repr(chat.prompt), flush=True)
        llava.llm_engine.engine_core.shutdown()
        out = engine(llm_dir).generate("<s>USER: List the facts. ASSISTANT:", params)[0]
        print("generated", len(out.outputs[0].token_ids), flush=True)
    """
    % NO_VLLM
)


@pytest.mark.vllm
@pytest.mark.slow  # two vLLM engine starts: 1-2 minutes on a 2-core machine
def test_vllm_loads_and_generates_with_both_tiny_models(tmp_path, mllm_dir, llm_dir):
    script = tmp_path / "run_vllm.py"
    script.write_text(VLLM_SCRIPT)
    done = subprocess.run(
        [sys.executable, str(script), mllm_dir, llm_dir],
        env={"VLLM_CPU_KVCACHE_SPACE": "1", **os.environ},  # GiB; vLLM's default wants most of RAM
        capture_output=True, text=True, timeout=600,
    )
    if done.returncode == NO_VLLM:
        pytest.skip(done.stdout.strip())
    assert done.returncode == 0, done.stderr[-4000:]
    assert done.stdout.count("generated 4") == 2, done.stdout
    assert "chat prompt '<s>USER: <image>\\nIs there a red star? ASSISTANT:'" in done.stdout, done.stdout


def test_remote_model_dirs_are_downloaded_once_and_refreshed_when_rewritten(tmp_path):
    import fsspec

    fs = fsspec.filesystem("memory")
    fs.pipe({"/run/model/config.json": b"{}", "/run/model/sub/weights.bin": b"12345"})
    local = resolve_model_path("memory://run/model", str(tmp_path))
    assert Path(local, "config.json").read_bytes() == b"{}"
    assert Path(local, "sub", "weights.bin").read_bytes() == b"12345"
    assert resolve_model_path("memory://run/model", str(tmp_path)) == local  # cached
    fs.pipe({"/run/model/sub/weights.bin": b"123456"})  # re-exported: new content
    refreshed = resolve_model_path("memory://run/model", str(tmp_path))
    assert refreshed != local and Path(refreshed, "sub", "weights.bin").read_bytes() == b"123456"
    with pytest.raises(FileNotFoundError, match="memory://nowhere"):
        resolve_model_path("memory://nowhere", str(tmp_path))
