"""Order planning: given the whole edit set, put similar edits into the same expert.

k-means (scikit-learn, seeded) over the edit embeddings, then a capacity-constrained assignment
so every cluster holds at most ``capacity`` edits, then the clusters are chained nearest
centroid first. Flattening the batches gives an order in which streaming edits fill each expert
from one cluster (all batches but the last are full).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import numpy as np
import torch


@dataclass
class EditPlan:
    """Batches of request indices (one per expert), their concatenation, and the clustering."""

    batches: list[list[int]]
    labels: list[int]
    centroids: np.ndarray
    seed: int
    capacity: int
    order: list[int] = field(init=False)

    def __post_init__(self) -> None:
        self.order = [i for batch in self.batches for i in batch]

    def state(self) -> dict[str, Any]:
        """JSON-ready record of the plan (the centroids go to the tensor file of a checkpoint)."""
        return {"batches": self.batches, "labels": self.labels, "seed": self.seed, "capacity": self.capacity}


def plan_edit_order(embeddings: "np.ndarray | torch.Tensor", capacity: int, seed: int = 42,
                    n_clusters: Optional[int] = None) -> EditPlan:
    """Cluster ``embeddings`` (one row per edit) into batches of at most ``capacity`` similar edits."""
    from sklearn.cluster import KMeans

    if capacity < 1:
        raise ValueError(f"capacity must be >= 1, got {capacity}.")
    points = embeddings.detach().cpu().double().numpy() if isinstance(embeddings, torch.Tensor) else np.asarray(embeddings, dtype=np.float64)
    n = points.shape[0]
    if n == 0:
        return EditPlan([], [], np.zeros((0, points.shape[1] if points.ndim == 2 else 0)), seed, capacity)
    points = points / np.linalg.norm(points, axis=1, keepdims=True).clip(min=1e-12)
    k = min(n, n_clusters or math.ceil(n / capacity))
    if k * capacity < n:
        raise ValueError(f"{k} clusters of at most {capacity} edits cannot hold {n} edits; use more clusters.")
    kmeans = KMeans(n_clusters=k, random_state=seed, n_init=10).fit(points)
    centroids = kmeans.cluster_centers_
    distances = ((points[:, None, :] - centroids[None, :, :]) ** 2).sum(-1)
    # Capacity-constrained assignment: closest (edit, cluster) pairs first, a full cluster takes no more.
    labels = -np.ones(n, dtype=int)
    room = np.full(k, capacity)
    for flat in np.argsort(distances, axis=None, kind="stable"):
        i, c = divmod(int(flat), k)
        if labels[i] < 0 and room[c] > 0:
            labels[i], room[c] = c, room[c] - 1
    # Top up: all clusters but one must be full so streaming edits fill experts along cluster lines.
    while True:
        sizes = np.bincount(labels, minlength=k)
        open_clusters = [c for c in range(k) if 0 < sizes[c] < capacity]
        if len(open_clusters) < 2:
            break
        target = max(open_clusters, key=lambda c: (sizes[c], -c))
        donors = np.flatnonzero(np.isin(labels, [c for c in open_clusters if c != target]))
        moved = int(donors[np.argmin(distances[donors, target])])
        labels[moved] = target
    members = {c: sorted(np.flatnonzero(labels == c).tolist(), key=lambda i: (distances[i, c], i)) for c in range(k)}
    # Chain the clusters: start with the fullest, then always the nearest unvisited centroid.
    remaining = [c for c in range(k) if members[c]]
    chain = [max(remaining, key=lambda c: (len(members[c]), -c))]
    remaining.remove(chain[0])
    while remaining:
        last = centroids[chain[-1]]
        nxt = min(remaining, key=lambda c: (float(((centroids[c] - last) ** 2).sum()), c))
        chain.append(nxt)
        remaining.remove(nxt)
    chain.sort(key=lambda c: len(members[c]) < capacity)  # full batches first (stable): expert boundaries align
    batches = [members[c] for c in chain]
    relabel = {c: index for index, c in enumerate(chain)}
    return EditPlan(batches, [relabel[int(c)] for c in labels], centroids[chain], seed, capacity)


def plan_requests(model: Any, tok: Any, requests: Sequence[dict[str, Any]], capacity: int, seed: int = 42) -> EditPlan:
    """Plan an edit order for EasyEdit request dicts, embedding each as the router sees it."""
    from wise_plugin.lemoe.model import pooled_embeddings

    texts = [anchor_text(r) for r in requests]
    return plan_edit_order(pooled_embeddings(model, tok, texts), capacity, seed)


def anchor_text(request: dict[str, Any]) -> str:
    """The text an edit is anchored by: prompt and target, the teacher-forced evaluation input."""
    return f"{request['prompt']} {request['target_new']}"
