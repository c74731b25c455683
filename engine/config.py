"""The run configuration: msgspec Structs loaded strictly from TOML.

Every default of docs/algorithms.md lives here as a field, not as a constant in code, and every
field's meaning as its Meta description, the one place `rlaifv config show --explain` reads.
Decoding is strict: an unknown (misspelt) key, a wrong type or a value outside the range its
field's annotation allows is an error naming the key and the file. Nothing in a config is ever
executed. Rules that tie fields together are engine.config_check's.
"""

from __future__ import annotations

import inspect
import re
import textwrap
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal, NamedTuple, Sequence

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
    """One model of the run and how to load and run it."""

    path: Annotated[str, Meta(description=(
        "Local directory, fsspec URL (fetched once into models.cache_dir), hub id, or `tiny:<name>`: "
        "random weights built offline on demand (engine.tiny_models)."))]
    backend: Annotated[Literal["hf", "vllm", "toy-grammar"], Meta(description=(
        "Inference backend (engine.backends.BACKENDS): transformers or vLLM. \"toy-grammar\" is the toy "
        "world's rule-based splitter: it loads no weights and reads path as a label."))] = "hf"
    dtype: Annotated[Literal["float32", "bfloat16", "float16"], Meta(description=(
        "Data type the weights are loaded in for inference; training uses train.precision."))] = "float32"
    max_model_len: Annotated[AtLeast1, Meta(description=(
        "Most tokens of prompt plus answer; the sample stage diverts a row whose prompt leaves no room "
        "for sample.max_new_tokens as prompt_too_long_for_model."))] = 2048
    batch_size: Annotated[AtLeast1, Meta(description=(
        "hf only: questions per forward when scoring yes/no (bounds the memory of the copied "
        "image-prefix caches)."))] = 16
    gpu_memory_utilization: Annotated[Share, Meta(description=(
        "vllm only: share of GPU memory for weights and KV cache, per engine (Best-of-N halves it when "
        "policy and reference are two models)."))] = 0.85
    tensor_parallel_size: Annotated[AtLeast1, Meta(description=(
        "vllm only: tensor-parallel degree; above 1 the stage's actor gets this many whole GPUs "
        "(its num_gpus must be 1)."))] = 1


class ModelsConfig(_Strict):
    """The models of an iteration, by role."""

    policy: Annotated[ModelConfig, Meta(description=(
        "The policy: it answers the instructions (docs/algorithms.md §1), gives the pairs' reference "
        "log-probs and is trained. Iteration k > 0 loads iteration k-1's checkpoint with these settings."
    ))] = ModelConfig(path="tiny:llava")
    labeler: Annotated[ModelConfig, Meta(description=(
        "The MLLM whose p(yes)/p(no) judges each claim's question (docs/algorithms.md §3)."
    ))] = ModelConfig(path="tiny:llava")
    splitter: Annotated[ModelConfig, Meta(description=(
        "The text LLM that splits each answer into claims and yes/no questions (docs/algorithms.md §2)."
    ))] = ModelConfig(path="tiny:llm")
    reward_model: Annotated[ModelConfig, Meta(description=(
        "The token-level reward model (jobs/train_rm.py's export) that the reward stage runs for PPO "
        "(jobs/ppo.py); path \"\" when the run has none."))] = ModelConfig(path="")
    labeler_follows_policy: Annotated[bool, Meta(description=(
        "Self-feedback (RLAIF-V's 12B recipe): iteration k's labeler is iteration k's policy, not "
        "labeler.path, whose other settings still apply."))] = False
    cache_dir: Annotated[str, Meta(description=(
        "Where `tiny:` models are built and remote models are fetched to."))] = ".cache/tiny-models"


class Resources(_Strict):
    """The Ray resources of one stage: an actor pool Ray Data autoscales between min_actors and
    max_actors."""

    min_actors: Annotated[AtLeast1, Meta(description=(
        "Actors the pool keeps; on a local cluster every stage's minimum pool must fit at once."))] = 1
    max_actors: Annotated[AtLeast1, Meta(description=(
        "Actors the pool may grow to; at least min_actors."))] = 1
    num_cpus: Annotated[NonNegative, Meta(description="CPUs per actor.")] = 1.0
    num_gpus: Annotated[NonNegative, Meta(description=(
        "GPUs per actor (a fraction shares a GPU), or per tensor-parallel rank of a vllm model "
        "(see actor_gpus)."))] = 0.0
    accelerator_type: Annotated[str | None, Meta(description=(
        "Ray accelerator type (e.g. \"A100\"): schedules the stage only on such nodes; unset: any node."
    ))] = None
    batch_size: Annotated[AtLeast1, Meta(description=(
        "Instruction rows Ray Data hands an actor per call."))] = 8


class RunConfig(_Strict):
    """Which run this is, where it lives and how many iterations it has."""

    name: Annotated[str, Meta(description=(
        "The run's directory under output_dir, one path component. A run resumed with another config "
        "needs a new name or --allow-config-change."))] = "smoke"
    seed: Annotated[int, Meta(ge=0, le=2**32 - 1, description=(
        "Root of every derived seed (docs/algorithms.md §1) and of training's; within numpy's seed "
        "range, as training seeds numpy with it."))] = 0
    iterations: Annotated[AtLeast1, Meta(description=(
        "Rounds of generate, then train (RLAIF-V and configs/a100.toml: 4; 2 for the smoke run)."
    ))] = 2
    output_dir: Annotated[str, Meta(description=(
        "Local path or fsspec URL; the run lives in <output_dir>/<name>/."))] = "runs"


class InputConfig(_Strict):
    """Instruction rows: id, prompt, and image (bytes) or image_uri; JSONL or Parquet."""

    path: Annotated[str, Meta(description=(
        "The instructions to generate from: a local path or fsspec URL."
    ))] = "data/smoke/instructions.parquet"
    format: Annotated[Literal["auto", "jsonl", "parquet"], Meta(description=(
        "File format; \"auto\" takes it from the name's ending (.jsonl or .parquet)."))] = "auto"
    limit: Annotated[Count, Meta(description="Read at most this many rows (0 = all).")] = 0


class RayConfig(_Strict):
    """The Ray cluster the jobs run on."""

    address: Annotated[str, Meta(description=(
        "\"\" joins the cluster named by RAY_ADDRESS (as under `ray job submit`) or starts a local one."
    ))] = ""
    num_cpus: Annotated[Count, Meta(description=(
        "CPUs of a local cluster (0 = all of this machine's); a joined cluster keeps its own."))] = 0
    object_store_mb: Annotated[int, Meta(ge=75, description=(
        "Object store of a local cluster, in MiB; Ray refuses one under 75 MiB."))] = 512
    verbose: Annotated[bool, Meta(description=(
        "Show Ray Data's operator tables and progress bars and the workers' library progress bars "
        "(every job's --verbose). Off: the pass prints its own progress lines."))] = False


class ValidateConfig(_Strict):
    """Limits on input rows: a row past one is diverted to rejects/ with its reason before any
    model reads it."""

    max_image_bytes: Annotated[AtLeast1, Meta(description=(
        "Largest encoded image, in bytes (image_too_large)."))] = 20 * 2**20
    max_image_pixels: Annotated[AtLeast1, Meta(description=(
        "Most pixels (width x height), read from the header before decoding, so a decompression bomb "
        "costs nothing (image_too_many_pixels)."))] = 40_000_000
    max_prompt_chars: Annotated[AtLeast1, Meta(description=(
        "Longest instruction, in characters (prompt_too_long)."))] = 4000


class SampleConfig(_Strict):
    """Deconfounded sampling (docs/algorithms.md §1): n answers, same decoding, different seeds."""

    n: Annotated[int, Meta(ge=2, description=(
        "Answers per instruction; fewer than 2 cannot make a pair."))] = 10
    temperature: Annotated[Temperature, Meta(description="Sampling temperature of every answer.")] = 0.7
    top_p: Annotated[Share, Meta(description="Nucleus mass of every answer (1 = off).")] = 1.0
    max_new_tokens: Annotated[AtLeast1, Meta(description="Most tokens per answer.")] = 512
    confounded_temperatures: Annotated[list[Temperature], Meta(description=(
        "Ablation \"without deconfounding\": answer j is decoded at confounded_temperatures[j % len] "
        "instead of temperature. Empty (the method): every answer of an instruction is decoded alike."
    ))] = []
    resources: Resources = Resources()


class SplitConfig(_Strict):
    """Divide (docs/algorithms.md §2): answer -> atomic claims -> yes/no questions."""

    temperature: Annotated[Temperature, Meta(description="Sampling temperature of the splitter.")] = 0.2
    top_p: Annotated[Share, Meta(description="Nucleus mass of the splitter.")] = 0.9
    max_new_tokens: Annotated[AtLeast1, Meta(description=(
        "Most tokens of the splitter's JSON output; output cut off by it does not parse and is retried. "
        "Preflight refuses a budget below max_claims claims of max_claim_chars characters."
    ))] = 2048
    max_claims: Annotated[AtLeast1, Meta(description=(
        "Claims kept per answer: the output schema allows at most this many."))] = 16
    max_claim_chars: Annotated[AtLeast1, Meta(description=(
        "Longest fact or question, in characters, that the output schema allows."))] = 200
    max_retries: Annotated[Count, Meta(description=(
        "Unparseable splitter output is re-drawn this many times with fresh seeds, then diverted to "
        "rejects/ (unparseable_claims)."))] = 2
    score_claimless_answers: Annotated[bool, Meta(description=(
        "Ablation only. false (the method): an answer without claims is diverted as no_claims. true "
        "scores it 0, the best score, so a vacuous answer beats one with a rejected claim."))] = False
    quote_sentences: Annotated[bool, Meta(description=(
        "true: each claim also quotes the answer's sentence it comes from, so that jobs/correct.py can "
        "remove the sentences of rejected claims. Costs about half again the splitter's output tokens."))] = False
    resources: Resources = Resources()


class ScoreConfig(_Strict):
    """Conquer (docs/algorithms.md §3): the labeler's p(yes)/p(no) per question."""

    question_suffix: Annotated[str, Meta(description=(
        "Appended to every question the labeler is asked."))] = " Please answer yes or no."
    divide_and_conquer: Annotated[bool, Meta(description=(
        "true (the method): one question per claim. false, the ablation \"without divide-and-conquer\": "
        "one question per answer, whole_answer_question."))] = True
    whole_answer_question: Annotated[str, Meta(description=(
        "The ablation's one question per answer, {answer} replaced by the answer."
    ))] = "Is this an accurate description of the image: {answer}"
    resources: Resources = Resources()


class PairConfig(_Strict):
    """Combine (docs/algorithms.md §4) plus the policy's reference log-probs of each pair."""

    min_score_gap: Annotated[AtLeast1, Meta(description=(
        "Two answers pair only when their scores (-1 per rejected claim) differ by at least this."
    ))] = 1
    pairs_per_instruction: Annotated[AtLeast1, Meta(description=(
        "Most pairs per instruction; more are thinned by a seeded draw."))] = 2
    length_balance: Annotated[bool, Meta(description=(
        "Drop pairs whose rejected answer is much longer than the chosen one, so DPO does not learn "
        "that shorter is safer (docs/algorithms.md §4)."))] = True
    balance_ratio_step: Annotated[float, Meta(gt=0, lt=1, description=(
        "Step of the grid of length-balancing ratios tried (0, step, 2 x step, ... below 1)."))] = 0.02
    resources: Resources = Resources()


class TrainConfig(_Strict):
    """DPO / DDPO (docs/algorithms.md §5-6) run by Ray Train over DeepSpeed."""

    loss: Annotated[Literal["dpo", "ddpo"], Meta(description=(
        "\"dpo\" (docs/algorithms.md §5, the method) or \"ddpo\", RLHF-V's dense DPO for corrected pairs "
        "(§6)."))] = "dpo"
    preset: Annotated[Literal["", "rlhfv-released", "rlhfv-paper"], Meta(description=(
        "A published DDPO recipe (§6) setting beta, gamma, ddpo_mask and ddpo_normalise where the config "
        "and --set leave them unset; the field defaults are \"rlhfv-released\"'s."))] = ""
    beta: Annotated[Positive, Meta(description=(
        "DPO's beta (§5): how far the policy may move from the reference; RLAIF-V's value."))] = 0.1
    gamma: Annotated[float, Meta(ge=1, description=(
        "DDPO's weight of changed tokens (§6); 1 weighs them as the rest (DPO)."))] = 1.1
    ddpo_mask: Annotated[Literal["released", "all_edits"], Meta(description=(
        "DDPO's changed tokens (§6): \"released\" marks only spans edited on both sides (the authors' "
        "code), \"all_edits\" every inserted, deleted or replaced token (the paper)."))] = "released"
    ddpo_normalise: Annotated[bool, Meta(description=(
        "Divide DDPO's weighted log-prob sum by the weighted length (the paper) or not (the code)."
    ))] = False
    sft_weight: Annotated[NonNegative, Meta(description=(
        "Weight of an SFT term, the chosen answers' mean token NLL (TRL's \"sft\", RPO), added to the "
        "DPO loss (§5); 0 is the method. It keeps the chosen answers likely while DPO widens the margin."
    ))] = 0.0
    learning_rate: Annotated[Positive, Meta(description=(
        "AdamW's peak learning rate, reached after the warm-up, then following lr_schedule (§5); RLAIF-V's "
        "value."))] = 5e-7
    lr_schedule: Annotated[Literal["cosine", "constant"], Meta(description=(
        "The rate after the warm-up: \"cosine\" decays it along a cosine (cosine_cycles), \"constant\" "
        "keeps the peak (e.g. a later phase of a phased recipe)."))] = "cosine"
    cosine_cycles: Annotated[Positive, Meta(description=(
        "Cosine periods over the steps after the warm-up (transformers' num_cycles): 0.5 decays to 0 at the "
        "last step, 0.25 to half the peak rate."))] = 0.5
    weight_decay: Annotated[NonNegative, Meta(description=(
        "AdamW weight decay of the weight matrices; biases and norms get none."))] = 0.01
    warmup_ratio: Annotated[Fraction, Meta(description=(
        "Share of the optimizer steps spent in linear warm-up."))] = 0.05
    epochs: Annotated[AtLeast1, Meta(description=(
        "Passes over each iteration's pairs (configs/a100.toml: 4)."))] = 1
    shuffle: Annotated[bool, Meta(description=(
        "Take each epoch's rows in a seeded random order; false takes them in id order every epoch, for a "
        "file whose order is the recipe (a curriculum, or examples drawn in the order to train on)."))] = True
    micro_batch_size: Annotated[AtLeast1, Meta(description="Pairs per worker per forward and backward.")] = 1
    gradient_accumulation_steps: Annotated[AtLeast1, Meta(description=(
        "Micro-batches per optimizer step: a step sees micro_batch_size x this x num_workers pairs."))] = 1
    max_grad_norm: Annotated[NonNegative, Meta(description=(
        "Gradient clipping norm (DeepSpeed's gradient_clipping); 0 turns clipping off."))] = 1.0
    max_length: Annotated[AtLeast1, Meta(description=(
        "Most tokens per sequence; truncation cuts the end of the response, never the prompt."))] = 2048
    zero_stage: Annotated[Literal[0, 1, 2, 3], Meta(description=(
        "DeepSpeed ZeRO stage: what is sharded across workers (1 optimizer state, 2 also gradients, "
        "3 also weights)."))] = 2
    precision: Annotated[Literal["bf16", "fp32"], Meta(description=(
        "Training precision on GPU (bf16: DeepSpeed bf16 with fp32 master weights); CPU workers always "
        "train in fp32."))] = "bf16"
    gradient_checkpointing: Annotated[bool, Meta(description=(
        "Recompute activations in the backward pass: less memory for more compute."))] = True
    num_workers: Annotated[AtLeast1, Meta(description="Ray Train workers (data-parallel ranks).")] = 1
    use_gpu: Annotated[bool, Meta(description=(
        "One GPU per worker; false trains on CPU (gloo, fp32)."))] = False
    cpus_per_worker: Annotated[NonNegative, Meta(description=(
        "CPUs per worker; a CPU worker runs that many torch threads."))] = 1.0
    accelerator_type: Annotated[str | None, Meta(description=(
        "Ray accelerator type (e.g. \"A100\") the workers must run on; unset: any node."))] = None
    checkpoint_every_steps: Annotated[Count, Meta(description=(
        "Save a DeepSpeed checkpoint every this many optimizer steps (0 = only at the end)."))] = 0


class SftConfig(_Strict):
    """Supervised fine-tuning (jobs/sft.py, docs/algorithms.md §10); the optimisation settings are
    [train]'s. Each augmentation is drawn per example and step, seeded by run.seed."""

    augment: Annotated[list[Literal["hflip", "brightness_contrast", "crop"]], Meta(description=(
        "Image augmentations, none by default. hflip mirrors the image and swaps left/right in the "
        "question and answer; brightness_contrast keeps every hue, so colour words stay true; crop "
        "can cut out objects the answer still names (the ablation of §10)."))] = []
    augment_probability: Annotated[Fraction, Meta(description=(
        "Chance that each listed augmentation is applied to an example at a step."))] = 0.5
    jitter: Annotated[Fraction, Meta(description=(
        "brightness_contrast: brightness and contrast factors drawn from [1 - jitter, 1 + jitter]."))] = 0.2
    crop_min_scale: Annotated[Share, Meta(description=(
        "crop: the kept window's side is at least this share of the image's side."))] = 0.6


class RmConfig(_Strict):
    """The token-level reward model (jobs/train_rm.py, docs/algorithms.md §9): the policy with a
    scalar head on every position, fitted to per-token labels from corrections and AI feedback;
    the optimisation settings are [train]'s."""

    heldout_share: Annotated[Fraction, Meta(description=(
        "Share of the label rows held out of training, drawn per image and question (a correction's two "
        "answers, an instruction's answers stay together) with run.seed; the held-out tokens give "
        "eval/loss, eval/token_accuracy and eval/auc after the last step. 0 evaluates nothing."))] = 0.1


class RewardConfig(_Strict):
    """The reward stage (docs/algorithms.md §9): models.reward_model's reward on every token of
    each sampled answer, as PPO's rollouts need them."""

    resources: Resources = Resources()


class PpoConfig(_Strict):
    """PPO on per-token rewards (jobs/ppo.py, docs/algorithms.md §9): rounds of rollouts from
    the current policy, rewards from models.reward_model, then clipped PPO updates of the policy
    and a value head under [train]'s optimisation settings (learning rate, batch sizes, ZeRO
    stage, workers)."""

    rounds: Annotated[AtLeast1, Meta(description=(
        "Rounds of rollouts -> rewards -> PPO epochs -> export; round k samples from round k-1's policy."
    ))] = 2
    reward_granularity: Annotated[Literal["token", "sequence"], Meta(description=(
        "\"token\" (RLHF-V's dense reward): the reward model's value at every answer token. \"sequence\": "
        "the same model's summed reward given once, on the answer's last token (the seed's comparison)."
    ))] = "token"
    token_reward: Annotated[Literal["log_sigmoid", "logit"], Meta(description=(
        "A token's reward RM(t) from the reward model's logit, the log-odds that the token is good. "
        "\"log_sigmoid\": log p(good), at most 0, so an answer's sum is the log-probability that none of "
        "its tokens is bad and length earns nothing. \"logit\": the head's raw output, whose sum grows "
        "with every token the model deems good, a bonus for length."))] = "log_sigmoid"
    beta_kl: Annotated[NonNegative, Meta(description=(
        "Weight of the per-token KL penalty to the reference: r_t = RM(t) - beta_kl * (log pi - log pi_ref)."
    ))] = 0.05
    reference: Annotated[str, Meta(description=(
        "The frozen reference policy of the KL term; \"\" is models.policy (the first round's policy)."
    ))] = ""
    critic: Annotated[str, Meta(description=(
        "The value model the first round starts from: a reward model directory (jobs/train_rm.py); \"\" "
        "is models.reward_model, as OpenRLHF initialises its critic. Later rounds continue the last critic."
    ))] = ""
    epochs: Annotated[AtLeast1, Meta(description=(
        "Passes over a round's rollouts (PPO epochs); train.epochs is not used."))] = 2
    gamma: Annotated[Fraction, Meta(description="GAE discount over answer tokens.")] = 1.0
    lam: Annotated[Fraction, Meta(description="GAE lambda.")] = 0.95
    clip_range: Annotated[Positive, Meta(description=(
        "Policy ratio clip: pi / pi_old within 1 -/+ clip_range."))] = 0.2
    value_clip_range: Annotated[Positive, Meta(description=(
        "Value clip: a new value within value_clip_range of the rollout's."))] = 0.2
    value_coef: Annotated[NonNegative, Meta(description=(
        "Weight of the value loss beside the policy loss."))] = 0.1
    whiten_advantages: Annotated[bool, Meta(description=(
        "Normalise a round's advantages to mean 0 and variance 1 over the answer tokens (TRL, OpenRLHF)."
    ))] = True


class BonConfig(_Strict):
    """Self-feedback Best-of-N (docs/algorithms.md §7): n samples from the trained policy, ranked by
    r(y) = beta / T * (log pi_theta(y|x) - log pi_ref(y|x)), T the response's token count."""

    policy: Annotated[str, Meta(description=(
        "The trained policy (pi_theta): a model directory or tiny:<name>; \"\" is models.policy, whose "
        "backend settings both models use."))] = ""
    reference: Annotated[str, Meta(description=(
        "The reference (pi_ref), \"\" is models.policy. With both \"\", every reward is 0 and the first "
        "sample wins."))] = ""
    n: Annotated[AtLeast1, Meta(description="Samples per input, of which the best is returned.")] = 16
    beta: Annotated[Positive, Meta(description=(
        "Scales the reported rewards; it does not change which sample wins."))] = 0.1
    length_normalise: Annotated[bool, Meta(description=(
        "Divide the reward by T (the method); false ranks by beta x log-ratio, which favours short "
        "answers (comparison)."))] = True
    temperature: Annotated[Temperature, Meta(description="Sampling temperature of the samples.")] = 0.7
    top_p: Annotated[Share, Meta(description="Nucleus mass of the samples (1 = off).")] = 1.0
    max_new_tokens: Annotated[AtLeast1, Meta(description="Most tokens per sample.")] = 512
    resources: Resources = Resources()


class EvalConfig(_Strict):
    """Object hallucination (docs/algorithms.md §8) of a policy on held-out (image, objects) rows:
    CHAIR over its descriptions plus yes/no probes about present and absent objects."""

    enabled: Annotated[bool, Meta(description=(
        "jobs/iterate.py evaluates the initial policy and every iteration's checkpoint."))] = False
    heldout_path: Annotated[str, Meta(description=(
        "Held-out rows (an image and its ground-truth objects): a local path or fsspec URL."
    ))] = "data/smoke/heldout.parquet"
    format: Annotated[Literal["auto", "jsonl", "parquet"], Meta(description=(
        "File format; \"auto\" takes it from the name's ending (.jsonl or .parquet)."))] = "auto"
    limit: Annotated[Count, Meta(description="Evaluate at most this many rows (0 = all).")] = 0
    prompt: Annotated[str, Meta(description=(
        "The instruction each held-out image is described under."))] = "Describe the image in detail."
    temperature: Annotated[Temperature, Meta(description=(
        "Sampling temperature of the descriptions; 0 (greedy) makes them reproducible."))] = 0.0
    max_new_tokens: Annotated[AtLeast1, Meta(description="Most tokens per description.")] = 512
    probes_per_image: Annotated[Count, Meta(description=(
        "Yes/no probes per image: half (rounded up) on listed objects, as many as the image has, the "
        "rest on objects it lacks."))] = 4
    probe_question: Annotated[str, Meta(description=(
        "A probe; {object} becomes the name with its article (\"an apple\")."
    ))] = "Is there {object} in the image? Please answer yes or no."
    vocabulary: Annotated[list[str], Meta(description=(
        "Groups of data/vocab/objects.json (\"scenes\", \"coco\"); empty: the groups that name the "
        "held-out set's objects."))] = []
    resources: Annotated[Resources, Meta(description=(
        "The one Ray task that loads the evaluated policy; only num_cpus, num_gpus and accelerator_type "
        "apply."))] = Resources()


class Config(_Strict):
    """The run configuration, one section per table of the TOML file."""

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
    sft: SftConfig = SftConfig()
    rm: RmConfig = RmConfig()
    reward: RewardConfig = RewardConfig()
    ppo: PpoConfig = PpoConfig()
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


def _apply_overrides(data: dict, overrides: list[str] | tuple[str, ...]) -> None:
    for text in overrides:
        keys, value = parse_override(text)
        _apply_override(data, keys, value, text)


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
            value, field = value[int(index)], _bare(field.item_type)
        else:
            value, field = value[name], _bare(next(f.type for f in field.fields if f.name == name))
    return f"{match['key']} = {value!r} is out of range: must be {_range(field)}"


def _bare(kind: msgspec.inspect.Type) -> msgspec.inspect.Type:
    """A field's type without the Metadata wrapper that its description puts around it."""
    return kind.type if isinstance(kind, msgspec.inspect.Metadata) else kind


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
    _apply_overrides(data, overrides)
    if overrides:
        source += " with --set " + " ".join(overrides)
    return config_from_dict(data, source)


def config_to_dict(config: Config) -> dict:
    return msgspec.to_builtins(config)


def with_overrides(config: Config, overrides: list[str] | tuple[str, ...]) -> Config:
    """`config` with `--set`-style overrides applied (a variant of a loaded config)."""
    data = config_to_dict(config)
    _apply_overrides(data, overrides)
    return config_from_dict(data, "<config> with --set " + " ".join(overrides))


def with_absolute_model_dirs(config: Config) -> Config:
    """`config` with every model path that names a local directory made absolute (the models'
    and [ppo]'s reference and critic): Ray Train's workers run in a directory of their own,
    where a relative models/toy-policy would be taken for a hub id."""
    from engine.storage import absolute_if_dir

    models = msgspec.structs.replace(config.models, **{
        role: msgspec.structs.replace(model, path=absolute_if_dir(model.path))
        for role in ("policy", "labeler", "splitter", "reward_model")
        for model in (getattr(config.models, role),)})
    ppo = msgspec.structs.replace(config.ppo, reference=absolute_if_dir(config.ppo.reference),
                                  critic=absolute_if_dir(config.ppo.critic))
    return msgspec.structs.replace(config, models=models, ppo=ppo)


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


class KeyDoc(NamedTuple):
    """One key of a config as `rlaifv config show --explain` prints it."""

    key: str  # dotted, e.g. sample.resources.num_gpus
    value: Any  # None for a table, or a key left unset
    allowed: str  # type and range or choices, e.g. "int >= 2"; "" for a table
    description: str
    table: bool


def config_keys(config: Config) -> list[KeyDoc]:
    """Every key of `config`, tables included, in file order. A key's meaning is its field's Meta
    description or, for a table without one, its Struct's docstring: written once, where the
    field is defined."""
    return list(_key_docs(msgspec.inspect.type_info(type(config)), config, ""))


def _key_docs(struct: msgspec.inspect.StructType, value: msgspec.Struct, prefix: str):
    for field in struct.fields:
        key, kind, child = prefix + field.name, _bare(field.type), getattr(value, field.name)
        if isinstance(kind, msgspec.inspect.StructType):
            yield KeyDoc(key, None, "", _description(field.type), table=True)
            yield from _key_docs(kind, child, key + ".")
        else:
            yield KeyDoc(key, child, _allowed(kind), _description(field.type), table=False)


def _description(kind: msgspec.inspect.Type) -> str:
    if isinstance(kind, msgspec.inspect.Metadata) and "description" in (kind.extra_json_schema or {}):
        return kind.extra_json_schema["description"]
    if isinstance(kind, msgspec.inspect.StructType):
        return inspect.cleandoc(kind.cls.__doc__ or "")
    return ""


def _allowed(kind: msgspec.inspect.Type) -> str:
    """The values a field's type allows, in words: "int >= 2", "one of "hf", "vllm"", "bool"."""
    if isinstance(kind, msgspec.inspect.LiteralType):
        return "one of " + ", ".join(_toml_value(v) for v in kind.values)
    if isinstance(kind, (msgspec.inspect.IntType, msgspec.inspect.FloatType)):
        name = "int" if isinstance(kind, msgspec.inspect.IntType) else "float"
        bounded = any(bound is not None for bound in (kind.ge, kind.gt, kind.le, kind.lt))
        return f"{name} {_range(kind)}" if bounded else name
    if isinstance(kind, msgspec.inspect.ListType):
        return "list of " + _allowed(kind.item_type)
    if isinstance(kind, msgspec.inspect.UnionType):
        return " or ".join(_allowed(_bare(member)) for member in kind.types)
    if isinstance(kind, msgspec.inspect.NoneType):
        return "unset"
    return type(kind).__name__.removesuffix("Type").lower()


# Columns of `config show --explain`: where the allowed values start, and the wrap width.
_ALLOWED_COLUMN = 44
_WIDTH = 96


def config_explained(config: Config, tables: Sequence[str] = ()) -> str:
    """Every key with its value, allowed values and meaning, grouped by table, for a terminal;
    with `tables` (e.g. "ppo", "models.reward_model"), only theirs."""
    out = []
    for doc in config_keys(config):
        if tables and not any(doc.key == table or doc.key.startswith(table + ".") for table in tables):
            continue
        if doc.table:
            out += ["", f"[{doc.key}]", *_wrapped(doc.description, "  ")]
            continue
        setting = f"  {doc.key} = {'(unset)' if doc.value is None else _toml_value(doc.value)}"
        out += [f"{setting:<{_ALLOWED_COLUMN}}  {doc.allowed}", *_wrapped(doc.description, "      ")]
    return "\n".join(out).lstrip("\n") + "\n"


def _wrapped(text: str, indent: str) -> list[str]:
    return textwrap.wrap(text, _WIDTH, initial_indent=indent, subsequent_indent=indent,
                         break_long_words=False, break_on_hyphens=False)
