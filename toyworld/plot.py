"""The toy run's picture: each held-out metric against the iteration, the mean over seeds with
the band the seeds span, on fixed zero-based axes so a small change looks small."""

from __future__ import annotations

from pathlib import Path

# (metric key of engine.evaluation, axis title, which way is better, top of the axis: a share
# or score in [0, 1] gets 1; None scales the top to the data, the bottom staying 0)
PLOTTED = (
    ("chair_s", "CHAIR_s (responses with a hallucination)", "lower", 1.0),
    ("chair_i", "CHAIR_i (hallucinated mentions)", "lower", 1.0),
    ("cider", "CIDEr-D against the grammar's description", "higher", None),
    ("bleu_4", "BLEU-4 against the grammar's description", "higher", 1.0),
    ("probe_accuracy", "yes/no probe accuracy", "higher", 1.0),
    ("mean_words", "mean description length (words)", None, None),
    ("grammatical", "descriptions wholly in the scene grammar", "higher", 1.0),
    ("coverage", "coverage (scene objects named)", "higher", 1.0),
)
ARROWS = {"lower": "↓ lower is better", "higher": "↑ higher is better", None: "no better direction"}


def plot_metrics(per_seed: dict[int, list[dict]], out: str | Path, title: str) -> Path:
    """per_seed: seed -> the metrics of iteration 0's policy and of each trained checkpoint."""
    return save_figure(draw(per_seed, title), out)


def save_figure(fig, out: str | Path) -> Path:
    """Write and close a toy-world figure (every plot of toyworld/ at one resolution)."""
    import matplotlib.pyplot as plt

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def better_way(key: str, label: str) -> str:
    """A panel title of a caption metric: CHAIR rates are better lower, the rest higher."""
    return label + (" (lower is better)" if key.startswith("chair") else " (higher is better)")


def draw(per_seed: dict[int, list[dict]], title: str):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 4, figsize=(17, 7), constrained_layout=True)
    for ax, (key, label, better, top) in zip(axes.flat, PLOTTED):
        length = min(len(metrics) for metrics in per_seed.values())
        series = [[metrics[k].get(key) for k in range(length)] for metrics in per_seed.values()]
        if any(value is None for values in series for value in values):
            ax.set_title(f"{label}\n(not measured)", fontsize=10)
            ax.axis("off")
            continue
        steps = range(length)
        low = [min(values[k] for values in series) for k in steps]
        high = [max(values[k] for values in series) for k in steps]
        mean = [sum(values[k] for values in series) / len(series) for k in steps]
        ax.fill_between(steps, low, high, color="tab:blue", alpha=0.2, lw=0, label=f"range over {len(series)} seeds")
        ax.plot(steps, mean, marker="o", lw=2.5, color="black", label="mean")
        ax.set_ylim(0, top if top is not None else 1.15 * max(high) or 1)
        ax.set_title(f"{label}\n{ARROWS[better]}", fontsize=10)
        ax.set_xlabel("iteration (0 = toy policy)")
        ax.set_xticks(list(steps))
        ax.grid(alpha=0.3)
    axes.flat[0].legend(fontsize=8, loc="upper right")
    fig.suptitle(title, fontsize=11)
    return fig
