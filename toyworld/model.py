"""The toy policy's architecture: a small LLaVA whose image patches are the scene's grid cells.

tiny:llava cuts its 32-pixel image into 8-pixel patches that straddle the scene's 3x3 grid;
here the image is 48 pixels in 16-pixel patches, one per cell, so a model trained from scratch
on a CPU can see each cell's shape and colour. engine.tiny_models builds it, with
the tiny models' tokenizer and chat template, so the engine's backends and train/ treat it like
them.
"""

from __future__ import annotations

from engine.tiny_models import ModelSizes
from engine.vocabulary import POSITIONS

GRID = round(len(POSITIONS) ** 0.5)  # 3 cells a side
PATCH_SIZE = 16

TOY_SIZES = ModelSizes(
    text_hidden=192,
    text_layers=3,
    initializer_range=0.02,  # transformers' default: the tiny models' 0.1 is for untrained labelers
    vision_hidden=128,
    image_size=GRID * PATCH_SIZE,
    patch_size=PATCH_SIZE,
    vision_feature_layer=-1,
    # The scenes' white background maps to 0, so an empty cell's patch is only its position
    # and a shape's colour stands out (CLIP's statistics bury it in white).
    image_mean=(1.0, 1.0, 1.0),
    image_std=(0.5, 0.5, 0.5),
)
