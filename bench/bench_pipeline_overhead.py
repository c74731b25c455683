"""Pipeline overhead: the whole generation pass (read, validate, sample, split, score, pair,
write) with instant backends (bench.instant_backends), so all that is measured is the
pipeline's own cost: Ray Data, flight-row conversion, image decoding, Parquet writing.

Per image kind, synthetic photo-like images (smooth colour fields plus sensor-like noise, so
they compress as photos do: a 640x480 JPEG of about 60 KB, a 1344x1344 PNG of about 3 MB) go
through one generate_pairs call on a started local Ray. Reports instructions/s over the pass
(actor start-up included, as in a real pass), CPU-ms per instruction summed over every
process of the local Ray (polled, so a process that exits between polls loses its last
fraction of a second), and each stage's busy ms per instruction.

    python -m bench.bench_pipeline_overhead
    python -m bench.bench_pipeline_overhead --images jpeg640 --instructions 2000
"""

from __future__ import annotations

import io
import tempfile
import threading
import time
from pathlib import Path

import click
import numpy as np
import psutil
import pyarrow as pa
from PIL import Image

from bench.instant_backends import INSTANT_STAGES
from engine.config import load_config
from engine.instruction_io import write_instructions
from engine.pipeline import generate_pairs
from engine.ray_runtime import init_ray

# name -> (width, height, PIL format, save options)
IMAGE_KINDS = {"jpeg640": (640, 480, "JPEG", {"quality": 85}), "png1344": (1344, 1344, "PNG", {})}
DISTINCT_IMAGES = 8  # cycled over the instructions: generating thousands would dominate the run


def photo_like(width: int, height: int, seed: int) -> Image.Image:
    """Smooth colour fields (upscaled coarse noise) plus mild per-pixel noise."""
    rng = np.random.default_rng(seed)
    coarse = Image.fromarray(rng.integers(0, 256, (height // 16, width // 16, 3), dtype=np.uint8))
    pixels = np.asarray(coarse.resize((width, height), Image.BICUBIC), dtype=np.int16)
    pixels = pixels + rng.normal(0, 3, pixels.shape).astype(np.int16)
    return Image.fromarray(pixels.clip(0, 255).astype(np.uint8))


def encoded_images(kind: str) -> list[bytes]:
    width, height, fmt, options = IMAGE_KINDS[kind]
    out = []
    for seed in range(DISTINCT_IMAGES):
        buffer = io.BytesIO()
        photo_like(width, height, seed).save(buffer, format=fmt, **options)
        out.append(buffer.getvalue())
    return out


def write_input(path: str, images: list[bytes], count: int) -> None:
    write_instructions(pa.table({
        "id": [f"i{k:06d}" for k in range(count)],
        "prompt": ["Describe the image in detail."] * count,
        "image": [images[k % len(images)] for k in range(count)],
    }), path)


class CpuMeter:
    """CPU seconds used by this process and all its descendants (the local Ray's head,
    raylet and workers), polled in a thread; each process counts from its first sighting
    after start() (or from its birth, when it is born during the measurement). The polling
    thread's own CPU (a scan of every process on the machine, five times a second) is not
    the pipeline's and is left out."""

    def __init__(self, interval: float = 0.2):
        self.interval, self.seen, self.base, self.own = interval, {}, {}, 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _processes(self):
        me = psutil.Process()
        return [me, *me.children(recursive=True)]

    def _sample(self, into: dict) -> None:
        for process in self._processes():
            try:
                times = process.cpu_times()
                into[process.pid] = times.user + times.system
            except psutil.Error:
                pass

    def _poll(self) -> None:
        while not self._stop.wait(self.interval):
            start = time.thread_time()
            self._sample(self.seen)
            self.own += time.thread_time() - start

    def __enter__(self):
        self._sample(self.base)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self._sample(self.seen)

    @property
    def seconds(self) -> float:
        return sum(value - self.base.get(pid, 0.0) for pid, value in self.seen.items()) - self.own


@click.command()
@click.option("--config", "config_path", default="configs/smoke.toml", show_default=True)
@click.option("--images", "kinds", default="jpeg640,png1344", show_default=True, help="Comma-separated image kinds.")
@click.option("--instructions", default=1000, show_default=True, help="Instructions per 640x480 pass.")
@click.option("--large-instructions", default=100, show_default=True, help="Instructions per 1344x1344 pass.")
@click.option("--batch-size", default=32, show_default=True, help="Rows per batch of every model stage.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Config overrides (repeatable).")
def main(config_path, kinds, instructions, large_instructions, batch_size, overrides):
    rows = []
    with tempfile.TemporaryDirectory(prefix="overhead-") as tmp:
        for kind in kinds.split(","):
            images = encoded_images(kind)
            count = instructions if kind == "jpeg640" else large_instructions
            input_path = str(Path(tmp) / f"{kind}.parquet")
            write_input(input_path, images, count)
            sets = [f'input.path="{input_path}"', "ray.object_store_mb=1024",
                    *(f"{spec.section}.resources.batch_size={batch_size}" for spec in INSTANT_STAGES), *overrides]
            cfg = load_config(config_path, sets)
            init_ray(cfg.ray)
            with CpuMeter() as meter:
                start = time.perf_counter()
                summary = generate_pairs(cfg, iteration=0, out_dir=str(Path(tmp) / f"out-{kind}"), stages=INSTANT_STAGES)
                wall = time.perf_counter() - start
            n = summary["instructions"]
            busy = {stage: 1000 * figures["busy_seconds"] / n for stage, figures in summary["stages"].items()}
            rows.append((kind, int(np.mean([len(b) for b in images]) / 1000), n, summary["pairs"], wall, meter.seconds, busy))
    print(f"config={config_path} batch_size={batch_size} cpus={psutil.cpu_count()}")
    stages = [spec.name for spec in INSTANT_STAGES]
    print(f"{'images':<10}{'KB':>6}{'instr':>7}{'pairs':>7}{'seconds':>9}{'instr/s':>9}{'CPU ms/instr':>14}"
          + "".join(f"{name + ' ms':>10}" for name in stages))
    for kind, kb, n, pairs, wall, cpu, busy in rows:
        print(f"{kind:<10}{kb:>6}{n:>7}{pairs:>7}{wall:>9.1f}{n / wall:>9.1f}{1000 * cpu / n:>14.1f}"
              + "".join(f"{busy[name]:>10.2f}" for name in stages))


if __name__ == "__main__":
    main()
