"""The toy run's picture: each held-out metric against the iteration, one thin line per seed
and a thick one for their mean."""

from __future__ import annotations

from pathlib import Path

# (metric key of engine.evaluation, axis title)
PLOTTED = (
    ("chair_s", "CHAIR_s (responses with a hallucination)"),
    ("chair_i", "CHAIR_i (hallucinated mentions)"),
    ("cider", "CIDEr-D against the scene grammar's description"),
    ("bleu_4", "BLEU-4 against the scene grammar's description"),
    ("probe_accuracy", "yes/no probe accuracy"),
    ("mean_words", "mean description length (words)"),
    ("grammatical", "descriptions wholly in the scene grammar"),
    ("coverage", "coverage (scene objects named)"),
)


def plot_metrics(per_seed: dict[int, list[dict]], out: str | Path, title: str) -> Path:
    """per_seed: seed -> the metrics of iteration 0's policy and of each trained checkpoint."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 4, figsize=(17, 6.5), constrained_layout=True)
    for ax, (key, label) in zip(axes.flat, PLOTTED):
        series = [[m[key] for m in metrics] for metrics in per_seed.values()]
        for seed, values in zip(per_seed, series):
            ax.plot(range(len(values)), values, marker="o", lw=1, alpha=0.45, label=f"seed {seed}")
        length = min(len(values) for values in series)
        mean = [sum(values[k] for values in series) / len(series) for k in range(length)]
        ax.plot(range(length), mean, marker="o", lw=2.5, color="black", label="mean")
        ax.set_title(label, fontsize=10)
        ax.set_xlabel("iteration (0 = toy policy)")
        ax.set_xticks(range(length))
        ax.grid(alpha=0.3)
    axes.flat[0].legend(fontsize=8)
    fig.suptitle(title)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
