"""``WISEHyperParams``: the upstream WISE YAML keys plus a few plugin options, validated on load."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, List, Optional, Union

from wise_plugin.core.requests import DEFAULT_MAX_REQUEST_TOKENS
from wise_plugin.core.rows import answer_end_problem, subject_templates_problem
from wise_plugin.hparams import HyperParams, common_problems, ffn_output_problem, load_hparams
from wise_plugin.wise.merge import MERGE_ALGS

OPTIMIZERS = ("sgd", "adam")
ROUTE_BY = ("score", "ratio", "newest")
MEMORY_DTYPE_NAMES = ("float16", "bfloat16", "float32")


@dataclass
class WISEHyperParams(HyperParams):
    """Hyper-parameters of WISE; every key of upstream's ``hparams/WISE/*.yaml`` loads unchanged.

    Plugin options (absent from upstream files, all optional; defaults keep the paper's recipe):
    ``lifelong``, ``loc_pool``, ``n_loc``, ``n_prefixes``, ``prefix_lengths``, ``stop_loss``, ``stop_token_prob``, ``stop_token_share``,
    ``act_weight``, ``rehearse``, ``row_token_budget``, ``optimizer``, ``refresh_threshold``, ``route_by``, ``subject_anchor``, ``anchor_route``, ``answer_stop``, ``answer_end``, ``memory_dtype``, ``memory_rank``, ``replay_pool``, ``subject_templates``, ``fast_path``, ``seed`` (see the README's options table).
    """

    alg_name: str
    model_name: Any
    inner_params: List[str]
    edit_lr: float = 1.0
    n_iter: int = 70
    mask_ratio: float = 0.2
    norm_constraint: Optional[float] = 1.0
    act_margin: List[float] = field(default_factory=lambda: [5.0, 20.0, 10.0])
    act_ratio: float = 0.88
    save_freq: Optional[int] = 500
    merge_freq: int = 1000
    merge_alg: str = "ties"
    objective_optimization: str = "only_label"
    densities: Optional[float] = 0.53
    weights: Optional[float] = 1.0
    retrieve: bool = False
    replay: bool = False
    device: Union[int, str, None] = 0
    model_parallel: bool = False
    use_chat_template: bool = False
    save_path: Optional[str] = None
    load_path: Optional[str] = None
    batch_size: int = 1
    max_length: int = 30
    # Keys newer upstream files may carry; accepted so those files load.
    padding_side: Optional[str] = None
    enable_thinking: bool = True
    attn_implementation: Optional[str] = None
    language_model_only: Optional[bool] = None
    fp16: bool = False
    # Plugin options.
    lifelong: bool = False
    loc_pool: Optional[str] = None
    n_loc: int = 32
    n_prefixes: int = 10
    prefix_lengths: List[int] = field(default_factory=lambda: [5, 10])
    stop_loss: float = 0.02
    # Also stop once every target token of the bare edit row has at least this probability
    # (None: off): greedy decoding then reproduces the edit, and easy edits need fewer iterations.
    stop_token_prob: Optional[float] = None
    # Stop once the bare edit has been greedy-correct (every target token the top choice, rehearsed edits
    # kept, routing apart) for this many iterations without reaching stop_token_prob (None: off).
    stop_patience: Optional[int] = None
    # Share of each row's target tokens the two stop rules ask for (1.0: every token). Below 1, a
    # passage-long target stops once most of its tokens are learned; a target shorter than
    # 1 / (1 - share) tokens still needs every token.
    stop_token_share: float = 1.0
    act_weight: float = 1.0
    rehearse: int = 0
    # Most tokens (prompt + target, all rows) in one edit iteration: prefixed copies of the edit and
    # rehearsed edits are taken in turn while they fit; the bare edit row always stays (None: no cap).
    row_token_budget: Optional[int] = None
    optimizer: str = "sgd"
    refresh_threshold: bool = False
    route_by: str = "score"  # WISE-Retrieve top-1 rule: "score" (the paper), "ratio" (score / own threshold), "newest"
    # Route a row to a memory only when it names the subject of one of that memory's edits (core/anchors.py).
    subject_anchor: bool = False
    # With subject_anchor: a row naming the subject of one of a memory's edits goes to that memory
    # even when its routing score is below the memory's threshold.
    anchor_route: bool = False
    # A memory stops acting on the positions after one of its edits' new answers is written in the
    # row: free generation gives the answer once, then goes on as the unedited model would.
    answer_stop: bool = False
    # Text trained after each new answer (e.g. "."; empty: none), so free generation ends the answer
    # there instead of writing on (core/rows.py with_answer_end).
    answer_end: str = ""
    # dtype of the values a retired WISE-Retrieve memory keeps on its support (wise/retired.py)
    memory_dtype: str = "float16"
    # Keep a retired memory as the rank-r truncated SVD of its change when that is smaller than its
    # support and values (memories trained with mask_ratio 1 have no sparse form); None: exact only.
    memory_rank: Optional[int] = None
    # replay draws from a seeded reservoir sample of at most this many earlier edits, whose
    # projection inputs stay cached; memory and edit time then stay flat over long streams
    replay_pool: int = 256
    # Statements about the request's subject (core/rows.py SUBJECT_TEMPLATES) trained with its
    # target beside the prompt: the edit then reaches other questions about the subject (0: none).
    subject_templates: int = 0
    fast_path: bool = True
    seed: int = 42
    # Longest request (prompt + target, in tokens) an edit call accepts; also capped by the model's context.
    max_request_tokens: Optional[int] = DEFAULT_MAX_REQUEST_TOKENS

    def __post_init__(self) -> None:
        if isinstance(self.inner_params, str):  # upstream files sometimes give the one path as a string
            self.inner_params = [self.inner_params]
        super().__post_init__()

    def problems(self) -> list[str]:
        """Ranges, choices and the edited module's path (types are checked before this runs)."""
        problems = []
        if len(self.inner_params) != 1:
            problems.append("inner_params must be a list with one parameter path, e.g. ['model.layers[25].mlp.down_proj.weight']")
        else:
            problem = ffn_output_problem(self.inner_params[0])
            if problem:
                problems.append(problem)
        if len(self.act_margin) != 3:
            problems.append(f"act_margin must be [alpha, beta, gamma], got {self.act_margin!r}")
        if not 0.0 < self.act_ratio <= 1.0:
            problems.append(f"act_ratio is {self.act_ratio}; it must be in (0, 1] (the routing threshold is act_ratio "
                            "times the lowest edit score, so <= 0 sends every input through the side memory; the "
                            "paper uses 0.88)")
        if self.norm_constraint is not None and self.norm_constraint <= 0:
            problems.append(f"norm_constraint is {self.norm_constraint}; it must be > 0 (the largest change of a "
                            "side-memory entry per edit; 1.0 in the paper) or null for none")
        if not 0.0 < self.mask_ratio <= 1.0:
            problems.append(f"mask_ratio must be in (0, 1], got {self.mask_ratio}")
        if self.save_freq is not None and (self.save_freq < 1 or self.merge_freq % self.save_freq):
            problems.append(f"merge_freq ({self.merge_freq}) must be a positive multiple of save_freq ({self.save_freq})")
        if self.merge_alg not in MERGE_ALGS:
            problems.append(f"merge_alg {self.merge_alg!r} is not supported; use one of {MERGE_ALGS}")
        if self.objective_optimization != "only_label":
            problems.append(f"objective_optimization {self.objective_optimization!r} is not supported; use 'only_label'")
        if self.densities is not None and not 0.0 < self.densities <= 1.0:
            problems.append(f"densities must be in (0, 1], got {self.densities}")
        if self.n_iter < 1 or self.edit_lr <= 0:
            problems.append(f"n_iter must be >= 1 and edit_lr > 0, got {self.n_iter} and {self.edit_lr}")
        if self.optimizer not in OPTIMIZERS:
            problems.append(f"optimizer {self.optimizer!r} is not supported; use one of {OPTIMIZERS} ('sgd' is the paper's)")
        if self.memory_rank is not None and self.memory_rank < 1:  # its type is checked with every field's
            problems.append(f"memory_rank must be a whole number >= 1 or null, got {self.memory_rank!r} (e.g. 64: "
                            "each retired memory kept as the rank-64 approximation of its change)")
        if self.memory_dtype not in MEMORY_DTYPE_NAMES:
            problems.append(f"memory_dtype {self.memory_dtype!r} is not supported; use one of {MEMORY_DTYPE_NAMES}")
        if self.replay_pool < 1:
            problems.append(f"replay_pool must be >= 1, got {self.replay_pool}")
        if self.route_by not in ROUTE_BY:
            problems.append(f"route_by {self.route_by!r} is not supported; use one of {ROUTE_BY}")
        if self.stop_patience is not None and self.stop_patience < 0:
            problems.append(f"stop_patience must be >= 0 or null, got {self.stop_patience!r}")
        if self.stop_token_prob is not None and not 0.0 < self.stop_token_prob < 1.0:
            problems.append(f"stop_token_prob must be in (0, 1) or null, got {self.stop_token_prob}")
        if not 0.0 < self.stop_token_share <= 1.0:
            problems.append(f"stop_token_share must be in (0, 1], got {self.stop_token_share}")
        if self.row_token_budget is not None and self.row_token_budget < 1:
            problems.append(f"row_token_budget must be >= 1 or null, got {self.row_token_budget}")
        if min(self.n_loc, self.n_prefixes, self.rehearse) < 0:
            problems.append("n_loc, n_prefixes and rehearse must be >= 0")
        for problem in (subject_templates_problem(self.subject_templates), answer_end_problem(self.answer_end)):
            if problem:
                problems.append(problem)
        if any(length < 1 for length in self.prefix_lengths):
            problems.append(f"prefix_lengths must be token counts >= 1, got {self.prefix_lengths}")
        problems += common_problems(self)
        return problems

    @property
    def alpha(self) -> float:
        return float(self.act_margin[0])

    @property
    def beta(self) -> float:
        return float(self.act_margin[1])

    @property
    def gamma(self) -> float:
        return float(self.act_margin[2])

    @classmethod
    def from_hparams(cls, hparams_name_or_path: str) -> "WISEHyperParams":
        """Load a WISE YAML file (upstream's or ours) and validate it."""
        return load_hparams(cls, hparams_name_or_path, "WISE")
