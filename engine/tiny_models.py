"""Tiny random-weight models of the real families, built offline and deterministically.

Tests and the smoke configs need MLLMs and LLMs of the real families without downloading
weights. These are small, load with the transformers Auto classes and in vLLM, and share a
byte-level BPE tokenizer trained on the synthetic world's vocabulary (each family adds its own
special tokens and chat format), so scene words and the claim JSON cost few tokens and every
yes/no answer word is a single token. This module builds tiny:llava and tiny:llm and holds the
pieces every family uses; engine.families lists the families and builds the others.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
import transformers
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (
    CLIPImageProcessorPil,
    CLIPVisionConfig,
    GenerationConfig,
    LlamaConfig,
    LlamaForCausalLM,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
    PreTrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerFast,
)
from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

from engine import families, vocabulary
from engine.hub import is_hub_id, snapshot

SPECIAL_TOKENS = ("<unk>", "<s>", "</s>", "<pad>", "<image>")
IMAGE_TOKEN = "<image>"
# The LLaVA-1.5 (Vicuna) tokens' roles, as PreTrainedTokenizerFast takes them.
TOKEN_ROLES = {
    "bos_token": "<s>",
    "eos_token": "</s>",
    "unk_token": "<unk>",
    "pad_token": "<pad>",
    "extra_special_tokens": {"image_token": IMAGE_TOKEN},
}
# The words the labeler's yes/no probabilities are read from; each must be one token.
YES_NO_WORDS = ("yes", " yes", "Yes", " Yes", "no", " no", "No", " No")

# LLaVA-1.5 conversation format: "<s>USER: <image>\n{text} ASSISTANT:{answer}</s>".
# Content is a string or a list of {"type": "image"} / {"type": "text", "text": ...} parts;
# images are written first, as LLaVA was trained. transformers renders with trim_blocks, so
# every literal newline is an expression. <s> comes from here, not from the tokenizer.
# The assistant turn is the generation prompt followed by the answer exactly as sampled: in
# byte-level BPE the space before a word is part of the word's token, so a space written by
# the template would make the scored tokens differ from the sampled ones (engine/chat.py
# scores the whole conversation rendered here).
# Jinja that sets `parts` to the message's content as a list of parts, for every template here.
MESSAGE_PARTS = (
    "{%- if message['content'] is string -%}"
    "{%- set parts = [{'type': 'text', 'text': message['content']}] -%}"
    "{%- else -%}"
    "{%- set parts = message['content'] -%}"
    "{%- endif -%}"
)
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{%- for message in messages -%}"
    + MESSAGE_PARTS +
    "{%- set text = parts | selectattr('type', 'equalto', 'text') | map(attribute='text') | join(' ') -%}"
    "{%- if message['role'] == 'system' -%}"
    "{{ text + ' ' }}"
    "{%- elif message['role'] == 'user' -%}"
    "{{ 'USER: ' }}"
    "{%- for part in parts if part['type'] == 'image' -%}{{ '<image>' + '\\n' }}{%- endfor -%}"
    "{{ text + ' ' }}"
    "{%- elif message['role'] == 'assistant' -%}"
    "{{ 'ASSISTANT:' + text + eos_token }}"
    "{%- else -%}"
    "{{ raise_exception('unknown chat role: ' + message['role']) }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ 'ASSISTANT:' }}{%- endif -%}"
)

# Covers the default max_model_len of engine.config.ModelConfig.
MAX_POSITIONS = 2048


@dataclass(frozen=True)
class ModelSizes:
    """The shape of a built model, so tiny:llava and the toy world's policy come from one
    builder. The defaults are the tiny models'; the Llama LM uses only the text fields."""

    # Heads are 64 wide (hidden // 64 of them, 1 KV head), as vLLM's CPU attention needs (>= 32).
    text_hidden: int = 128
    text_layers: int = 2
    # 5x the usual 0.02: with the default the next-token distribution barely depends on the
    # question, so a random labeler would accept every claim and the smoke run make no pairs.
    initializer_range: float = 0.1
    vision_hidden: int = 64
    image_size: int = 32
    patch_size: int = 8
    vision_feature_layer: int = -2
    image_mean: tuple[float, ...] = tuple(OPENAI_CLIP_MEAN)
    image_std: tuple[float, ...] = tuple(OPENAI_CLIP_STD)

    @property
    def image_tokens(self) -> int:
        """Patches per image; the CLS token is dropped ("default" feature strategy)."""
        return (self.image_size // self.patch_size) ** 2


def _corpus() -> list[str]:
    """Sentences of the synthetic world, claim JSON as the splitter writes it (with and
    without spaces), and every word alone with and without a leading space; the BPE trainer
    then merges each word and JSON delimiter into a single token."""
    colours, shapes, plurals = list(vocabulary.COLOURS), vocabulary.SHAPES, vocabulary.PLURALS
    sentences = ["USER: Describe the image. ASSISTANT: Yes"]
    for colour in colours:
        for shape in shapes:
            sentences += [f"There is a {colour} {shape} in the {p}." for p in vocabulary.POSITIONS]
            sentences.append(f"Are there two {colour} {plurals[shape]}? Please answer yes or no.")
            one, two = f"a {colour} {shape}", f"two {plurals[shape]}"
            claims = {"claims": [
                {"fact": f"The image shows {one}.", "question": f"Is there {one}?"},
                {"fact": f"There are {two}.", "question": f"Are there {two}?"},
            ]}
            sentences += [json.dumps(claims), json.dumps(claims, separators=(",", ":"))]
    sentences += [json.dumps({"claims": []}), json.dumps({"claims": []}, separators=(",", ":"))]
    words = {*vocabulary.COMMON_WORDS, *colours, *shapes, *plurals.values(), "USER", "ASSISTANT"}
    words |= {word for position in vocabulary.POSITIONS for word in position.split()}
    words |= {word.capitalize() for word in words}
    for word in sorted(words):
        sentences += [word, " " + word]
    return sentences


def build_tokenizer(
    special_tokens: tuple[str, ...] = SPECIAL_TOKENS,
    chat_template: str = CHAT_TEMPLATE,
    token_roles: dict | None = None,
    prepend_bos: bool = False,
) -> PreTrainedTokenizerFast:
    """A byte-level BPE (any text still encodes) trained on the synthetic world, with a family's
    special tokens, their roles (TOKEN_ROLES by default) and chat template. The default adds no
    special tokens itself, so <s> is never doubled on any encoding path; prepend_bos makes
    plain encodings start with the bos, as Llama-3's tokenizer does."""
    token_roles = TOKEN_ROLES if token_roles is None else token_roles
    bpe = Tokenizer(models.BPE(unk_token=token_roles.get("unk_token")))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=4096,  # more than the corpus can fill: every corpus word is fully merged
        special_tokens=list(special_tokens),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(_corpus(), trainer=trainer)
    if prepend_bos:
        bos = token_roles["bos_token"]
        bpe.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, bpe.token_to_id(bos))]
        )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe, chat_template=chat_template, model_max_length=MAX_POSITIONS, **token_roles
    )
    for word in YES_NO_WORDS:
        ids = tokenizer.encode(word, add_special_tokens=False)
        if len(ids) != 1:
            raise RuntimeError(f"tiny tokenizer: {word!r} must be a single token, got {ids}")
    return tokenizer


def llama_config(tokenizer: PreTrainedTokenizerFast, sizes: ModelSizes, config_class: type = LlamaConfig,
                 **overrides) -> PreTrainedConfig:
    """A Llama-shaped LM of `sizes` over `tokenizer` (config_class: LlamaConfig or a family's
    own, e.g. Qwen2Config); `overrides` replace or add config fields."""
    fields = dict(
        vocab_size=len(tokenizer),
        hidden_size=sizes.text_hidden,
        intermediate_size=2 * sizes.text_hidden,
        num_hidden_layers=sizes.text_layers,
        num_attention_heads=sizes.text_hidden // 64,
        num_key_value_heads=1,
        max_position_embeddings=MAX_POSITIONS,
        initializer_range=sizes.initializer_range,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return config_class(**{**fields, **overrides})


def seeded_model(
    model_class: type[PreTrainedModel],
    config: PreTrainedConfig,
    tokenizer: PreTrainedTokenizerFast,
    seed: int,
    extra_stops: tuple[str, ...] = (),
) -> PreTrainedModel:
    """Initialise from `seed`, leaving the caller's global RNG alone, with a generation config
    that makes generate() stop on the eos and on `extra_stops` (the real families' generation
    configs list their end-of-text token next to the end-of-turn one)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = model_class(config)
    eos = tokenizer.eos_token_id
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=[eos, *tokenizer.convert_tokens_to_ids(list(extra_stops))] if extra_stops else eos,
        pad_token_id=tokenizer.pad_token_id,
    )
    return model


def rename_vision_keys_for_vllm(weights: Path) -> None:
    """transformers 5 saves the CLIP tower as vision_tower.*; vLLM 0.32 only loads
    vision_tower.vision_model.*, which transformers also reads back."""
    state = load_file(weights)
    renamed = {
        ("vision_tower.vision_model." + key.removeprefix("vision_tower.")
         if key.startswith("vision_tower.") and not key.startswith("vision_tower.vision_model.")
         else key): tensor
        for key, tensor in state.items()
    }
    save_file(renamed, weights, metadata={"format": "pt"})


def llava_config_fields(tokenizer: PreTrainedTokenizerFast, sizes: ModelSizes) -> dict:
    """The config fields LLaVA-1.5 and LLaVA-NeXT share: a CLIP tower and a Llama LM of `sizes`."""
    return {
        "vision_config": CLIPVisionConfig(
            hidden_size=sizes.vision_hidden,
            intermediate_size=2 * sizes.vision_hidden,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=sizes.image_size,
            patch_size=sizes.patch_size,
            projection_dim=sizes.vision_hidden,
        ),
        "text_config": llama_config(tokenizer, sizes),
        "image_token_index": tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        "image_seq_length": sizes.image_tokens,
        "vision_feature_select_strategy": "default",
        "vision_feature_layer": sizes.vision_feature_layer,
    }


def llava_processor_fields(sizes: ModelSizes) -> dict:
    """The processor fields LLaVA-1.5 and LLaVA-NeXT share (and the LLaVA-1.5 chat format)."""
    return {
        "patch_size": sizes.patch_size,
        "vision_feature_select_strategy": "default",
        "num_additional_image_tokens": 1,  # the CLS token, dropped by the "default" strategy
        "chat_template": CHAT_TEMPLATE,
    }


def build_llava(sizes: ModelSizes, seed: int) -> tuple[LlavaForConditionalGeneration, LlavaProcessor]:
    """A randomly initialised LLaVA (CLIP vision tower + Llama LM) of `sizes`, from `seed`, and
    its processor, in memory: tiny:llava saves it as built, the toy world trains it first."""
    tokenizer = build_tokenizer()
    config = LlavaConfig(**llava_config_fields(tokenizer, sizes))
    processor = LlavaProcessor(
        image_processor=CLIPImageProcessorPil(
            size={"shortest_edge": sizes.image_size},
            crop_size={"height": sizes.image_size, "width": sizes.image_size},
            image_mean=list(sizes.image_mean),
            image_std=list(sizes.image_std),
        ),
        tokenizer=tokenizer,
        **llava_processor_fields(sizes),
    )
    return seeded_model(LlavaForConditionalGeneration, config, tokenizer, seed), processor


def build_tiny_mllm(out_dir: str | os.PathLike, seed: int = 0) -> Path:
    """tiny:llava, a LLaVA MLLM with its processor, saved for vLLM too; returns out_dir."""
    out = Path(out_dir)
    model, processor = build_llava(ModelSizes(), seed)
    model.save_pretrained(out)
    rename_vision_keys_for_vllm(out / "model.safetensors")
    processor.save_pretrained(out)
    return out


def build_tiny_llm(out_dir: str | os.PathLike, seed: int = 0) -> Path:
    """A Llama text LM (the claim splitter) with the shared tokenizer; returns out_dir."""
    out = Path(out_dir)
    tokenizer = build_tokenizer()
    model = seeded_model(LlamaForCausalLM, llama_config(tokenizer, ModelSizes()), tokenizer, seed)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def _build_digest() -> str:
    """Changes whenever the code that shapes the models does, so a cache built by older code
    (or another transformers) is never served."""
    digest = hashlib.sha256(transformers.__version__.encode())
    for source in (__file__, vocabulary.__file__, *families.source_files()):
        digest.update(Path(source).read_bytes())
    return digest.hexdigest()[:10]


def resolve_model_path(path: str, cache_dir: str) -> str:
    """A local model directory for `path`: "tiny:<family>" (engine.families, optionally
    "@<seed>") is built once under cache_dir; a remote fsspec URL (s3://, gs://, ... e.g. a checkpoint a
    run wrote to its bucket) is downloaded once under cache_dir/remote, because neither
    transformers nor vLLM load from such URLs; a hub id that is not a local path becomes its
    snapshot in the Hugging Face cache (engine.hub); a local directory is returned unchanged.
    """
    if path.startswith(families.TINY_PREFIX):
        name, seed = families.parse_tiny_name(path)
        target = Path(cache_dir).resolve() / f"{name}-seed{seed}-{_build_digest()}"
        return _build_once(target, lambda staging: families.build(name, staging, seed))
    protocol, sep, _ = path.partition("://")
    if sep and protocol not in ("file", "local"):
        return _download_once(path, cache_dir)
    if is_hub_id(path) and not Path(path).exists():
        return snapshot(path)
    return path


def _download_once(url: str, cache_dir: str) -> str:
    """The remote directory's files, cached under a key of its URL and listing (names, sizes),
    so a model re-exported to the same URL is fetched again."""
    from engine.storage import filesystem

    fs, root = filesystem(url)
    root = root.rstrip("/")
    files = {name: info.get("size") for name, info in fs.find(root, detail=True).items()}
    if not files:
        raise FileNotFoundError(f"model directory {url!r} is empty or missing")
    key = hashlib.sha256(repr((url, sorted(files.items()))).encode()).hexdigest()[:16]
    target = Path(cache_dir).resolve() / "remote" / f"{Path(root).name}-{key}"

    def download(staging: Path) -> None:
        for name in files:
            local = staging / Path(name).relative_to(root)
            local.parent.mkdir(parents=True, exist_ok=True)
            fs.get_file(name, str(local))

    return _build_once(target, download)


def _build_once(target: Path, build) -> str:
    """Make `target` with build(staging_dir) unless it exists. Several processes (Ray actors)
    may ask at once: one builds under a file lock into a staging directory and renames it into
    place, so a visible directory is always complete."""
    if target.is_dir():
        return str(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f".{target.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not target.is_dir():
            staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
            try:
                build(staging)
                staging.chmod(0o755)
                os.rename(staging, target)
            except BaseException:
                shutil.rmtree(staging, ignore_errors=True)
                raise
    return str(target)
