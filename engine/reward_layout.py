"""Where a token-level reward model directory (engine/reward_model.py) keeps its head, and
which families vLLM serves it for: plain constants, so that preflight checks a reward model
path without importing torch."""

HEAD_FILE = "reward_head/score.safetensors"
# Where vLLM's classification adapter (runner="pooling", convert="classify") puts the score layer,
# by the config's model_type: inside the converted language model of a multimodal model. Only the
# families whose rewards were checked against score_tokens are listed
# (tests/test_reward_model_vllm.py); vllm_view refuses the others, and so does preflight.
VLLM_HEAD_PREFIXES = {"llava": "language_model.", "qwen2_vl": "language_model."}
