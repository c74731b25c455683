"""The toy world: a small LLaVA trained from scratch on synthetic scenes that hallucinates
objects when it describes a scene but answers yes/no questions about it well, the
discriminate-vs-generate gap RLAIF-V exploits, so a CPU run shows the method cutting
hallucination in minutes (issue 8). Everything here is toy-world only."""

TOY_PREFIX = "toy:"


def is_toy_model(path: str) -> bool:
    """Whether a model path names one of the toy world's rule-based models ("toy:...")."""
    return path.startswith(TOY_PREFIX)
