"""What a stream of edits costs at its end: memory kept by the editor and inference overhead.

Both are read once per chunk, after its last edit, for the plugin's editors (the host's editors
change weights in place and keep nothing beside the model). The overhead is a ratio of forward
times of the edited and an unedited model on the same prompts, timed alternately in one process
so that machine load affects both alike.
"""

from __future__ import annotations

import statistics
import time
from typing import Any, Callable, Optional, Sequence

import torch

from wise_plugin.host.guard import editor_parts

OVERHEAD_MIN_T = 10  # chunks shorter than this are not timed: their overhead is noise next to the cost of timing


def memory_kept(editor: Any, kind: Optional[str]) -> Optional[dict[str, float]]:
    """MB kept by the plugin's layer (``kept`` and ``caches``) and the kept share of the model's
    parameter bytes; None for host editors."""
    if kind is None:
        return None
    layer = editor_parts(kind)[0](editor.model)
    if layer is None:
        return None
    sizes = layer.footprint()
    own = {id(p) for p in layer.parameters()} - {id(p) for p in layer.base.parameters()}
    model_bytes = sum(p.numel() * p.element_size() for p in editor.model.parameters() if id(p) not in own)
    return {"memory_mb": sizes["kept"] / 2 ** 20, "cache_mb": sizes["caches"] / 2 ** 20,
            "memory_share": sizes["kept"] / model_bytes}


@torch.no_grad()
def inference_overhead(edited: torch.nn.Module, plain: torch.nn.Module, tok: Any, prompts: Sequence[str],
                       repeats: int = 5, batch_size: int = 32) -> float:
    """Median forward time of ``edited`` over that of ``plain`` on ``prompts`` (left padded batches),
    the two timed alternately after one warm-up pass each."""
    device = next(edited.parameters()).device
    batches = [tok(list(prompts[i:i + batch_size]), return_tensors="pt", padding=True, padding_side="left").to(device)
               for i in range(0, len(prompts), batch_size)]

    def run(model: torch.nn.Module) -> float:
        start = time.perf_counter()
        for batch in batches:
            model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        return time.perf_counter() - start

    run(edited), run(plain)
    times: dict[str, list[float]] = {"edited": [], "plain": []}
    for _ in range(repeats):
        times["edited"].append(run(edited))
        times["plain"].append(run(plain))
    return statistics.median(times["edited"]) / statistics.median(times["plain"])


def overhead_prompts(requests: Sequence[dict[str, Any]], per_kind: int = 32) -> list[str]:
    """What the overhead is timed on: edit prompts (routed to the edits) and irrelevant prompts
    (routed past them), up to ``per_kind`` of each."""
    edits = [r["prompt"] for r in requests][:per_kind]
    unrelated = [r["loc_prompt"] for r in requests if isinstance(r.get("loc_prompt"), str)][:per_kind]
    return edits + unrelated


class PlainModels:
    """One unedited model per model name, built on first use and kept for the comparison's timings."""

    def __init__(self, build: Callable[[Any], Any]) -> None:
        self.build, self.models = build, {}

    def get(self, spec: Any) -> torch.nn.Module:
        if spec.model_name not in self.models:
            self.models[spec.model_name] = self.build(spec).model.eval()
        return self.models[spec.model_name]
