"""``LEMoEHyperParams``: the options of the LEMoE editor, validated on load."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Union

from wise_plugin.core.requests import DEFAULT_MAX_REQUEST_TOKENS
from wise_plugin.core.rows import answer_end_problem, subject_templates_problem
from wise_plugin.hparams import HyperParams, common_problems, ffn_block_problem, load_hparams

EXPERT_KINDS = ("lowrank", "full")


@dataclass
class LEMoEHyperParams(HyperParams):
    """Hyper-parameters of LEMoE (Wang & Li, EMNLP 2024); the fields below are its options.

    ``layer`` names the FFN module that gets the mixture-of-experts bypass, e.g.
    ``model.layers[17].mlp`` (``inner_params`` is accepted as an alias, as a list or a string).
    """

    alg_name: str
    model_name: Any
    layer: Optional[str] = None
    inner_params: Optional[Union[str, list]] = None
    device: Union[int, str, None] = 0
    # Experts.
    edits_per_expert: int = 10
    max_experts: Optional[int] = None
    expert_kind: str = "lowrank"
    rank: int = 64
    lambda_: float = 1.0
    # Training of one expert (AdamW; the paper's lr is 2e-4 for 7B models).
    lr: float = 2e-4
    weight_decay: float = 0.0
    n_iter: int = 50
    stop_loss: float = 0.01
    # KV-anchor router: query v = W_up SiLU(W_down e) with e the mean-pooled input embeddings.
    router_hidden: int = 128
    key_dim: int = 64
    router_lr: float = 1e-2
    router_iter: int = 100
    # Locality gate (not in the paper): inputs far from every key use the original FFN only.
    gate: bool = False
    gate_margin: float = 0.5
    gate_low: float = 0.2
    gate_high: float = 0.8
    loc_pool: Optional[str] = "builtin"
    # An expert answers only rows naming the subject of one of its edits (core/anchors.py; not in the paper).
    subject_anchor: bool = False
    # With gate and subject_anchor: a row naming a subject of its expert's edits passes that expert's gate.
    anchor_route: bool = False
    # An expert stops acting on the positions after one of its edits' new answers is written in the
    # row: free generation gives the answer once, then goes on as the unedited model would.
    answer_stop: bool = False
    # Text trained after each new answer (e.g. "."; empty: none), so free generation ends the answer
    # there instead of writing on (core/rows.py with_answer_end).
    answer_end: str = ""
    # Statements about each edit's subject (core/rows.py SUBJECT_TEMPLATES) trained with its target
    # beside the prompt: the edit then reaches other questions about the subject (0: none).
    subject_templates: int = 0
    # Order planning for whole-batch calls (k-means over edit embeddings).
    plan: bool = True
    # Host keys.
    use_chat_template: bool = False
    lifelong: bool = False
    seed: int = 42
    batch_size: int = 1
    max_length: int = 30
    model_parallel: bool = False
    save_path: Optional[str] = None
    load_path: Optional[str] = None
    fp16: bool = False
    # Longest request (prompt + target, in tokens) an edit call accepts; also capped by the model's context.
    max_request_tokens: Optional[int] = DEFAULT_MAX_REQUEST_TOKENS

    def __post_init__(self) -> None:
        path = self.layer
        if path is None and self.inner_params:
            path = self.inner_params[0] if isinstance(self.inner_params, list) else self.inner_params
        if isinstance(path, str):
            self.layer = path.strip()
            self.inner_params = [self.layer]
        super().__post_init__()

    def problems(self) -> list[str]:
        """Ranges, choices and the extended module's path (types are checked before this runs)."""
        problems = []
        if not self.layer:
            problems.append("layer must name the FFN module to extend, e.g. 'model.layers[17].mlp'")
        else:
            problem = ffn_block_problem(self.layer)
            if problem:
                problems.append(problem)
        if self.edits_per_expert < 1:
            problems.append(f"edits_per_expert (capacity of one expert) must be >= 1, got {self.edits_per_expert!r}")
        if self.max_experts is not None and self.max_experts < 1:
            problems.append(f"max_experts must be >= 1 (or null for no limit), got {self.max_experts!r}; "
                            "zero experts cannot hold any edit")
        if self.expert_kind not in EXPERT_KINDS:
            problems.append(f"expert_kind {self.expert_kind!r} is not supported; use one of {EXPERT_KINDS}")
        if self.rank < 1 or self.router_hidden < 1 or self.key_dim < 1:
            problems.append("rank, router_hidden and key_dim must be >= 1")
        if self.lr <= 0 or self.router_lr <= 0 or self.n_iter < 1 or self.router_iter < 0:
            problems.append("lr and router_lr must be > 0, n_iter >= 1 and router_iter >= 0")
        if self.weight_decay < 0:
            problems.append(f"weight_decay must be >= 0, got {self.weight_decay}")
        if self.lambda_ <= 0:
            problems.append(f"lambda_ (expert output scale) must be > 0, got {self.lambda_}")
        if not 0.0 <= self.gate_margin <= 1.0:
            problems.append(f"gate_margin must be in [0, 1], got {self.gate_margin}")
        if not -1.0 <= self.gate_low < self.gate_high <= 1.0:
            problems.append(f"need -1 <= gate_low < gate_high <= 1 (cosine targets), got {self.gate_low}, {self.gate_high}")
        for problem in (subject_templates_problem(self.subject_templates), answer_end_problem(self.answer_end)):
            if problem:
                problems.append(problem)
        problems += common_problems(self)
        return problems

    @classmethod
    def from_hparams(cls, hparams_name_or_path: str) -> "LEMoEHyperParams":
        """Load a LEMoE YAML file and validate it."""
        return load_hparams(cls, hparams_name_or_path, "LEMoE")
