"""Lifelong benchmark runner: several editors, several T, the WISE paper's protocol and table.

Library use::

    from wise_plugin.runner import RunOptions, load_requests, load_specs, run_comparison, write_reports
    from wise_plugin.runner.datasets import dataset_format

    specs = load_specs(["hparams/WISE/smollm2-135m.yaml", "hparams/FT/smollm2-135m.yaml"])
    requests = load_requests("zsre", "../shared/data/wise/ZsRE/zsre_mend_edit.json")
    result = run_comparison(specs, requests, dataset_format("zsre"), RunOptions(t_values=(1, 10)), "results/zsre")
    write_reports(result, "results/zsre")

Command line: ``wise-plugin compare`` (see :mod:`wise_plugin.runner.cli`).
"""

from wise_plugin.runner.datasets import dataset_format, load_requests
from wise_plugin.runner.editors import EditorSpec, build_editor, load_specs
from wise_plugin.runner.errors import RunnerInputError
from wise_plugin.runner.protocol import RunOptions, run_comparison
from wise_plugin.runner.report import paper_table, write_reports

__all__ = ["EditorSpec", "RunOptions", "RunnerInputError", "build_editor", "dataset_format", "load_requests",
           "load_specs", "paper_table", "run_comparison", "write_reports"]
