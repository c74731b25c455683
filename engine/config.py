"""The run configuration: msgspec Structs loaded strictly from TOML.

Every default of docs/algorithms.md lives here as a field, not as a constant in code.
Decoding is strict: an unknown (misspelt) key, a wrong type or a value outside the range its
field's annotation allows is an error naming the key and the file. Nothing in a config is ever
executed. Rules that tie fields together are engine.config_check's.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

from engine.errors import ConfigError

# The ranges of numeric fields. A value outside its field's range fails decoding with the key,
# the value and the range (see _readable).
AtLeast1 = Annotated[int, Meta(ge=1)]
Count = Annotated[int, Meta(ge=0)]
NonNegative = Annotated[float, Meta(ge=0)]
Positive = Annotated[float, Meta(gt=0)]
Fraction = Annotated[float, Meta(ge=0, le=1)]
Share = Annotated[float, Meta(gt=0, le=1)]
# Sampling temperature: 0 is greedy decoding.
Temperature = Annotated[float, Meta(ge=0)]


class _Strict(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, frozen=True):
    pass


class ModelConfig(_Strict):
    """One model and how to run it. `path` is a local/fsspec directory or `tiny:<name>`,
    a random-weight model built offline on demand (see engine.tiny_models)."""

    path: str
    # A name of engine.backends.BACKENDS. "toy-grammar" is the toy world's rule-based
    # splitter: it loads no weights, its path is a label.
    backend: Literal["hf", "vllm", "toy-grammar"] = "hf"
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    max_model_len: AtLeast1 = 2048
    # hf only: questions per forward when scoring yes/no (bounds the memory of the expanded
    # image-prefix caches).
    batch_size: AtLeast1 = 16
    # vLLM only: share of GPU memory for weights + KV cache, and tensor parallel degree.
    gpu_memory_utilization: Share = 0.85
    tensor_parallel_size: AtLeast1 = 1


class ModelsConfig(_Strict):
    policy: ModelConfig = ModelConfig(path="tiny:llava")
    labeler: ModelConfig = ModelConfig(path="tiny:llava")
    splitter: ModelConfig = ModelConfig(path="tiny:llm")
    # Self-feedback (RLAIF-V's 12B recipe): iteration k's labeler is iteration k's policy, not
    # the fixed labeler.path (whose other settings, backend and resources, still apply).
    labeler_follows_policy: bool = False
    # Where `tiny:` models are built and cached.
    cache_dir: str = ".cache/tiny-models"


class Resources(_Strict):
    """The actor pool of one stage. Ray autoscales it between min and max actors."""

    min_actors: AtLeast1 = 1
    max_actors: AtLeast1 = 1
    num_cpus: NonNegative = 1.0
    # Per actor, or per tensor-parallel rank of a vllm model (see actor_gpus).
    num_gpus: NonNegative = 0.0
    # Ray accelerator type (e.g. "A100"): schedules the stage only on such nodes.
    accelerator_type: str | None = None
    batch_size: AtLeast1 = 8


class RunConfig(_Strict):
    name: str = "smoke"
    # numpy's seed range: training seeds numpy with it.
    seed: Annotated[int, Meta(ge=0, le=2**32 - 1)] = 0
    iterations: AtLeast1 = 2
    # Local path or fsspec URL; the run lives in <output_dir>/<name>/.
    output_dir: str = "runs"


class InputConfig(_Strict):
    """Instruction rows: id, prompt, and image (bytes) or image_uri; JSONL or Parquet."""

    path: str = "data/smoke/instructions.parquet"
    format: Literal["auto", "jsonl", "parquet"] = "auto"
    # Read at most this many rows (0 = all).
    limit: Count = 0


class RayConfig(_Strict):
    # "" joins the cluster named by RAY_ADDRESS (as under `ray job submit`) or starts a local one.
    address: str = ""
    # Caps for a local cluster only; a joined cluster keeps its own resources.
    num_cpus: Count = 0
    # Ray refuses an object store under 75 MiB.
    object_store_mb: Annotated[int, Meta(ge=75)] = 512


class ValidateConfig(_Strict):
    max_image_bytes: AtLeast1 = 20 * 2**20
    max_image_pixels: AtLeast1 = 40_000_000
    max_prompt_chars: AtLeast1 = 4000


class SampleConfig(_Strict):
    """Deconfounded sampling (docs/algorithms.md §1): n answers, same decoding, different seeds."""

    # Fewer than 2 answers cannot make a pair.
    n: Annotated[int, Meta(ge=2)] = 10
    temperature: Temperature = 0.7
    top_p: Share = 1.0
    max_new_tokens: AtLeast1 = 512
    # Ablation "without deconfounding": answer j is decoded at confounded_temperatures[j % len]
    # instead of `temperature`, so a pair's answers also differ in decoding settings (style).
    # Empty (the method): every answer of an instruction is decoded alike.
    confounded_temperatures: list[Temperature] = []
    resources: Resources = Resources()


class SplitConfig(_Strict):
    """Divide (docs/algorithms.md §2): answer -> atomic claims -> yes/no questions."""

    temperature: Temperature = 0.2
    top_p: Share = 0.9
    max_new_tokens: AtLeast1 = 256
    max_claims: AtLeast1 = 16
    max_claim_chars: AtLeast1 = 200
    # Unparseable splitter output is retried this many times, then diverted to rejects/.
    max_retries: Count = 2
    # An answer with no claim is diverted as `no_claims`: neither scored nor paired (the
    # released code asks no question about it). true is an ablation only: it then scores 0,
    # the best score there is, so a vacuous answer beats every answer with one rejected claim.
    score_claimless_answers: bool = False
    resources: Resources = Resources()


class ScoreConfig(_Strict):
    """Conquer (docs/algorithms.md §3): the labeler's p(yes)/p(no) per question."""

    question_suffix: str = " Please answer yes or no."
    # Ablation "without divide-and-conquer": false asks the labeler one question per answer,
    # whole_answer_question with {answer} replaced by the answer, instead of one per claim.
    divide_and_conquer: bool = True
    whole_answer_question: str = "Is this an accurate description of the image: {answer}"
    resources: Resources = Resources()


class PairConfig(_Strict):
    """Combine (docs/algorithms.md §4) plus the policy's reference log-probs of each pair."""

    min_score_gap: AtLeast1 = 1
    pairs_per_instruction: AtLeast1 = 2
    length_balance: bool = True
    balance_ratio_step: Annotated[float, Meta(gt=0, lt=1)] = 0.02
    resources: Resources = Resources()


class TrainConfig(_Strict):
    """DPO / DDPO (docs/algorithms.md §5-6) run by Ray Train over DeepSpeed."""

    loss: Literal["dpo", "ddpo"] = "dpo"
    # A published DDPO recipe (TRAIN_PRESETS) setting beta, gamma, ddpo_mask and ddpo_normalise
    # where the config file and --set leave them unset. The defaults are "rlhfv-released".
    preset: Literal["", "rlhfv-released", "rlhfv-paper"] = ""
    beta: Positive = 0.1
    # DDPO's weight of changed tokens (docs/algorithms.md §6); 1 weighs them as the rest (DPO).
    gamma: Annotated[float, Meta(ge=1)] = 1.1
    # DDPO's changed tokens (train/ddpo_masks.py): "released" marks only spans edited on both
    # sides (the authors' code), "all_edits" every inserted, deleted or replaced token (the paper).
    ddpo_mask: Literal["released", "all_edits"] = "released"
    # Divide DDPO's weighted log-prob sum by the weighted length (the paper) or not (the code).
    ddpo_normalise: bool = False
    # Weight of an SFT term on the chosen answers (their mean token negative log-likelihood,
    # TRL's "sft" loss type; RPO, Pang et al. 2024) added to the DPO loss. 0 is the reference
    # method. It keeps the chosen answers likely while DPO widens the margin, which otherwise
    # lowers both and moves probability onto text neither answer contains.
    sft_weight: NonNegative = 0.0
    learning_rate: Positive = 5e-7
    weight_decay: NonNegative = 0.01
    warmup_ratio: Fraction = 0.05
    epochs: AtLeast1 = 1
    micro_batch_size: AtLeast1 = 1
    gradient_accumulation_steps: AtLeast1 = 1
    # 0 turns gradient clipping off (DeepSpeed's gradient_clipping).
    max_grad_norm: NonNegative = 1.0
    max_length: AtLeast1 = 2048
    zero_stage: Literal[0, 1, 2, 3] = 2
    precision: Literal["bf16", "fp32"] = "bf16"
    gradient_checkpointing: bool = True
    num_workers: AtLeast1 = 1
    use_gpu: bool = False
    cpus_per_worker: NonNegative = 1.0
    accelerator_type: str | None = None
    # Save a DeepSpeed checkpoint every this many optimizer steps (0 = only at the end).
    checkpoint_every_steps: Count = 0


class BonConfig(_Strict):
    """Self-feedback Best-of-N (docs/algorithms.md §7): n samples from the trained policy, ranked by
    r(y) = beta / T * (log pi_theta(y|x) - log pi_ref(y|x)), T the response's token count."""

    # Model directories or tiny:<name>; "" means models.policy. Both run with models.policy's
    # backend settings. With both "", every reward is 0 and the first sample wins.
    policy: str = ""
    reference: str = ""
    n: AtLeast1 = 16
    beta: Positive = 0.1
    # false ranks by beta * (log-ratio) without 1/T, which favours short answers (comparison).
    length_normalise: bool = True
    temperature: Temperature = 0.7
    top_p: Share = 1.0
    max_new_tokens: AtLeast1 = 512
    resources: Resources = Resources()


class EvalConfig(_Strict):
    """Object hallucination (docs/algorithms.md §8) of a policy on held-out (image, objects) rows:
    CHAIR over its descriptions plus yes/no probes about present and absent objects."""

    # jobs/iterate.py evaluates every iteration's checkpoint when true.
    enabled: bool = False
    heldout_path: str = "data/smoke/heldout.parquet"
    format: Literal["auto", "jsonl", "parquet"] = "auto"
    # Evaluate at most this many rows (0 = all).
    limit: Count = 0
    prompt: str = "Describe the image in detail."
    temperature: Temperature = 0.0
    max_new_tokens: AtLeast1 = 512
    # Yes/no probes per image: half (rounded up) on listed objects, as many as the image has,
    # the rest on objects it lacks. {object} becomes the name with its article ("an apple").
    probes_per_image: Count = 4
    probe_question: str = "Is there {object} in the image? Please answer yes or no."
    # Groups of data/vocab/objects.json ("scenes", "coco"); empty: the groups that name the
    # held-out set's objects.
    vocabulary: list[str] = []
    resources: Resources = Resources()


class Config(_Strict):
    run: RunConfig = RunConfig()
    input: InputConfig = InputConfig()
    ray: RayConfig = RayConfig()
    models: ModelsConfig = ModelsConfig()
    validate: ValidateConfig = ValidateConfig()
    sample: SampleConfig = SampleConfig()
    split: SplitConfig = SplitConfig()
    score: ScoreConfig = ScoreConfig()
    pair: PairConfig = PairConfig()
    train: TrainConfig = TrainConfig()
    bon: BonConfig = BonConfig()
    eval: EvalConfig = EvalConfig()


def actor_gpus(resources: Resources, model_cfg: ModelConfig) -> float:
    """GPUs one actor of a stage asks Ray for. A vllm model's num_gpus is per tensor-parallel
    rank: its actor holds every rank's GPU, as vLLM's worker processes run on the actor's GPUs."""
    if model_cfg.backend == "vllm":
        return resources.num_gpus * model_cfg.tensor_parallel_size
    return resources.num_gpus


def parse_override(text: str) -> tuple[list[str], Any]:
    """`a.b.c=value` -> (["a","b","c"], value). The value is read as a TOML value
    (numbers, booleans, quoted strings, arrays); anything else is taken as a bare string."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {text!r} is not of the form key.sub=value")
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()
    return key.split("."), value


def _apply_override(data: dict, keys: list[str], value: Any, text: str) -> None:
    node = data
    for key in keys[:-1]:
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {text!r}: {key!r} is a value, not a table")
        node = child
    node[keys[-1]] = value


# DDPO as RLHF-V's released code runs it, and as its paper writes it (docs/algorithms.md §6).
TRAIN_PRESETS = {
    "rlhfv-released": {"gamma": 1.1, "beta": 0.1, "ddpo_mask": "released", "ddpo_normalise": False},
    "rlhfv-paper": {"gamma": 5.0, "beta": 0.5, "ddpo_mask": "all_edits", "ddpo_normalise": True},
}


def _with_train_preset(data: dict) -> dict:
    """train.preset's values under the train keys `data` does not set. An unknown preset is
    left to the Literal check of msgspec, which names the key."""
    train = data.get("train")
    preset = train.get("preset") if isinstance(train, dict) else None
    if not isinstance(preset, str) or preset not in TRAIN_PRESETS:
        return data
    return {**data, "train": {**TRAIN_PRESETS[preset], **train}}


def config_from_dict(data: dict, source: str = "<dict>") -> Config:
    try:
        return msgspec.convert(_with_train_preset(data), Config, strict=True)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"{source}: {_readable(str(exc), data)}") from None


# msgspec's message for a number outside its field's Meta range, e.g.
# "Expected `int` >= 2 - at `$.sample.n`" or "... - at `$.sample.confounded_temperatures[1]`".
_OUT_OF_RANGE = re.compile(r"Expected `(?:int|float)` [<>]=? \S+ - at `\$\.(?P<key>[^`]+)`")
_KEY_STEP = re.compile(r"(\w+)|\[(\d+)\]")


def _readable(message: str, data: dict) -> str:
    """msgspec's message in the user's terms: the dotted key users write (sample.n, not
    $.sample.n) and, for a number out of range, its value and the whole range, which msgspec's
    message (only the bound it broke) lacks."""
    match = _OUT_OF_RANGE.fullmatch(message)
    if match is None:
        return message.replace("`$.", "`").replace("`$`", "the top level")
    value, field = data, msgspec.inspect.type_info(Config)
    for name, index in _KEY_STEP.findall(match["key"]):
        if index:
            value, field = value[int(index)], field.item_type
        else:
            value, field = value[name], next(f.type for f in field.fields if f.name == name)
    return f"{match['key']} = {value!r} is out of range: must be {_range(field)}"


def _range(field: msgspec.inspect.IntType | msgspec.inspect.FloatType) -> str:
    """The range a numeric field's Meta allows: `>= 2`, `> 0`, `in (0, 1]`."""
    low = ("[", field.ge) if field.ge is not None else ("(", field.gt)
    high = (field.le, "]") if field.le is not None else (field.lt, ")")
    if low[1] is not None and high[0] is not None:
        return f"in {low[0]}{low[1]}, {high[0]}{high[1]}"
    if low[1] is not None:
        return f"{'>=' if low[0] == '[' else '>'} {low[1]}"
    return f"{'<=' if high[1] == ']' else '<'} {high[0]}"


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Read a TOML config (defaults only when `path` is None) and apply `--set` overrides."""
    data: dict = {}
    source = "<defaults>"
    if path is not None:
        source = str(path)
        try:
            data = tomllib.loads(Path(path).read_text())
        except FileNotFoundError:
            raise ConfigError(f"config file {source} does not exist") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{source}: not valid TOML: {exc}") from None
    for text in overrides:
        keys, value = parse_override(text)
        _apply_override(data, keys, value, text)
    if overrides:
        source += " with --set " + " ".join(overrides)
    return config_from_dict(data, source)


def config_to_dict(config: Config) -> dict:
    return msgspec.to_builtins(config)


def config_to_toml(config: Config) -> str:
    """A complete TOML rendering (every field), e.g. for `rlaifv config show`."""
    return _toml_tables(config_to_dict(config), [])


def _toml_tables(data: dict, prefix: list[str]) -> str:
    scalars = {k: v for k, v in data.items() if not isinstance(v, dict) and v is not None}
    tables = {k: v for k, v in data.items() if isinstance(v, dict)}
    out = ""
    if scalars:
        if prefix:
            out += f"[{'.'.join(prefix)}]\n"
        out += "".join(f"{k} = {_toml_value(v)}\n" for k, v in scalars.items()) + "\n"
    for key, table in tables.items():
        out += _toml_tables(table, prefix + [key])
    return out


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return msgspec.json.encode(value).decode()
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return repr(value)
