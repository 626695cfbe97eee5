"""The lifelong benchmark runner: datasets, input checks, the protocol, resume and report files.

Fast tests edit a tiny random LLaMA-shaped model (26 blocks, so the SmolLM2 YAMLs' layer 25 exists)
with the SmolLM2 tokenizer; the one real-SmolLM2 test is marked slow.
"""

from __future__ import annotations

import csv
import json
import os

import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM, GPT2Tokenizer, LlamaConfig

from conftest import ROOT, SHARED_DATA
from wise_plugin.runner import RunnerInputError, load_requests, load_specs, paper_table, run_comparison, write_reports
from wise_plugin import cli
from wise_plugin.runner import cli as compare_cli
from wise_plugin.runner.datasets import dataset_format
from wise_plugin.evaluation import contains_target
from wise_plugin.runner.protocol import RunOptions, select_sample
from wise_plugin.runner.report import detail_table, plot_panels
from wise_plugin.runner.store import RESULTS_FILE

pytestmark = pytest.mark.host  # everything here goes through the host's BaseEditor and metrics

WISE_YAML = os.path.join(ROOT, "hparams", "WISE", "smollm2-135m.yaml")
FT_YAML = os.path.join(ROOT, "hparams", "FT", "smollm2-135m.yaml")
TINY_NAME = "tiny-random-gpt2tok"  # never loaded: the tests hand BaseEditor a (model, tokenizer) pair


def write_yaml(path, source: str, **changes) -> str:
    with open(source, encoding="utf-8") as handle:
        config = yaml.safe_load(handle)
    config.update(changes)
    with open(path, "w", encoding="utf-8") as handle:
        yaml.safe_dump(config, handle)
    return str(path)


@pytest.fixture(scope="module")
def tiny_yamls(tmp_path_factory) -> list[str]:
    """The shipped WISE and FT YAMLs, shortened to a few iterations, naming the tiny model."""
    folder = tmp_path_factory.mktemp("hparams")
    return [write_yaml(folder / "wise.yaml", WISE_YAML, model_name=TINY_NAME, n_iter=2, n_prefixes=0, n_loc=4,
                       rehearse=1),
            write_yaml(folder / "ft.yaml", FT_YAML, model_name=TINY_NAME, num_steps=2)]


class TinyModels:
    """Builds the same seeded tiny model on every call and counts the calls (one per chunk)."""

    def __init__(self, tokenizer_path: str, interrupt_at: int | None = None) -> None:
        self.tok = GPT2Tokenizer.from_pretrained(tokenizer_path)
        self.tok.pad_token_id = self.tok.eos_token_id
        self.tok.padding_side = "left"
        self.calls = 0
        self.interrupt_at = interrupt_at

    def __call__(self):
        self.calls += 1
        if self.calls == self.interrupt_at:
            raise KeyboardInterrupt("simulated interruption")
        torch.manual_seed(0)
        config = LlamaConfig(vocab_size=len(self.tok), hidden_size=32, intermediate_size=64, num_hidden_layers=26,
                             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
        return AutoModelForCausalLM.from_config(config).eval(), self.tok


OPTIONS = RunOptions(t_values=(1, 2), n=2, progress=False)
CHUNKS = 2 * (2 + 1)  # two editors; T=1: two chunks, T=2: one chunk


@pytest.fixture(scope="module")
def full_run(tiny_yamls, smollm2_path, tmp_path_factory):
    """An uninterrupted run: the reference for the report and resume tests."""
    out = str(tmp_path_factory.mktemp("full"))
    factory = TinyModels(smollm2_path)
    result = run_comparison(load_specs(tiny_yamls), load_requests("builtin"), dataset_format("builtin"), OPTIONS,
                            out, model_factory=factory)
    return result, out, factory.calls


# Datasets -------------------------------------------------------------------------------------------

def test_builtin_edit_set_is_complete():
    requests = load_requests("builtin")
    assert 10 <= len(requests) <= 20
    for request in requests:
        assert request["prompt"] and request["target_new"] and request["rephrase_prompt"]
        assert request["target_new"] != request["ground_truth"]
        assert set(request["locality"]["neighborhood"]) == {"prompt", "ground_truth"}


@pytest.mark.parametrize("name, path, first_key", [
    ("zsre", "wise/ZsRE/zsre_mend_edit.json", "rephrase_prompt"),
    ("counterfact", "counterfact/counterfact-edit-1k.json", "rephrase_prompt"),
    ("hallucination", "wise/hallucination/hallucination-edit.json", "locality"),
    ("temporal", "wise/temporal/temporal-edit.json", "rephrase_prompt"),
])
def test_shared_data_formats_load(name, path, first_key):
    path = os.path.join(SHARED_DATA, path)
    if not os.path.isfile(path):
        pytest.skip(f"{path} is not on this machine")
    requests = load_requests(name, path)
    assert len(requests) > 50
    assert all(r["prompt"] and r["target_new"] and first_key in r for r in requests)
    if name == "temporal":  # the OOD prompt is scored in the rephrase slot
        with open(path, encoding="utf-8") as handle:
            assert requests[0]["rephrase_prompt"] == json.load(handle)[0]["ood_rephrase"]


# Bad input ------------------------------------------------------------------------------------------

def test_dataset_with_missing_keys_names_record_and_key(tmp_path):
    path = tmp_path / "bad.json"
    good = {"src": "Q?", "alt": "A", "answers": ["B"], "rephrase": "Q2?", "loc": "nq question: x", "loc_ans": "y"}
    path.write_text(json.dumps([good, {k: v for k, v in good.items() if k != "alt"}]))
    with pytest.raises(RunnerInputError, match=r"record 1 lacks the key\(s\) alt of the 'zsre' format"):
        load_requests("zsre", str(path))


def test_dataset_of_another_format_suggests_the_right_name():
    path = os.path.join(SHARED_DATA, "counterfact", "counterfact-edit-1k.json")
    if not os.path.isfile(path):
        pytest.skip("no CounterFact file")
    with pytest.raises(RunnerInputError, match="pass --dataset counterfact"):
        load_requests("zsre", path)


def test_unknown_editor_name(tmp_path):
    path = write_yaml(tmp_path / "typo.yaml", FT_YAML, alg_name="FTT")
    with pytest.raises(RunnerInputError, match=r"alg_name 'FTT' is not an editor the host EasyEdit knows\. "
                                               r"Did you mean 'FT'\?"):
        load_specs([path])


def test_yaml_for_another_model(tmp_path, tiny_yamls):
    other = write_yaml(tmp_path / "other.yaml", FT_YAML, model_name="another-model-gpt")
    with pytest.raises(RunnerInputError, match="set the same model_name in every hparams file"):
        load_specs([tiny_yamls[0], other])


def test_t_larger_than_data():
    requests = load_requests("builtin")
    with pytest.raises(RunnerInputError, match="T=8 is larger than the data: the sample holds 4 requests; raise --n"):
        select_sample(requests, RunOptions(t_values=(1, 8), n=4))
    with pytest.raises(RunnerInputError, match=f"T=100 is larger than the data.*at most {len(requests)}"):
        select_sample(requests, RunOptions(t_values=(100,)))


def test_bad_input_stops_the_cli_before_any_edit(tmp_path, capsys, monkeypatch):
    def no_edits(*args, **kwargs):
        raise AssertionError("an editor was built despite bad input")

    monkeypatch.setattr("wise_plugin.runner.protocol.build_editor", no_edits)
    out = tmp_path / "out"
    code = cli.main(["compare", "--T", "1", "50", "--out", str(out)])
    assert code == 2
    assert "T=50 is larger than the data" in capsys.readouterr().err
    assert not (out / RESULTS_FILE).exists()
    assert cli.main(["compare", "--checkpoint-every", "0", "--out", str(out)]) == 2
    assert "--checkpoint-every 0: give a number of edits >= 1" in capsys.readouterr().err
    assert cli.main(["compare", "--stored-only", "--fresh", "--out", str(out)]) == 2
    assert "--fresh discards the stored chunks that --stored-only reports" in capsys.readouterr().err


def test_options_alone_run_compare_even_when_a_value_names_a_subcommand(tmp_path, capsys, monkeypatch):
    def no_edits(*args, **kwargs):
        raise AssertionError("an editor was built despite bad input")

    monkeypatch.setattr("wise_plugin.runner.protocol.build_editor", no_edits)
    monkeypatch.chdir(tmp_path)
    assert cli.main(["--out", "demo", "--T", "50"]) == 2
    assert "wise-plugin compare: error: T=50 is larger than the data" in capsys.readouterr().err


def test_cli_defaults_compare_wise_and_lemoe_with_ft_on_the_builtin_set():
    args = cli.build_parser().parse_args(["compare"])
    from wise_plugin.hparams import find_hparams

    lemoe_yaml = os.path.join(os.path.dirname(os.path.dirname(WISE_YAML)), "LEMoE", "smollm2-135m.yaml")
    # shipped recipes by name, so the defaults also work from an installed wheel
    assert [os.path.realpath(find_hparams(p)) for p in args.hparams] == \
        [os.path.realpath(p) for p in (WISE_YAML, lemoe_yaml, FT_YAML)]
    assert args.data is None and args.dataset is None and args.t_values == [1, 6] and compare_cli.BUILTIN_N == 6


@pytest.mark.parametrize("generation, target, hit", [
    ("Vienna, Austria, and", "Vienna", True), ("4000.", "40", False), ("it is 40.", "40", True),
    ("nikola tesla was", "Nikola Tesla", True), ("Teslas", "Tesla", False),
])
def test_greedy_reliability_matches_whole_words(generation, target, hit):
    assert contains_target(generation, target) is hit


def test_building_an_editor_per_chunk_does_not_pile_up_host_log_handlers(tiny_yamls, smollm2_path):
    """The host adds a log file and a console handler per BaseEditor; a T=1 comparison builds one
    editor per request, so without cleanup each host line would be logged once per chunk so far and
    one log file would stay open per chunk."""
    from wise_plugin.runner.editors import _host_logger, build_editor
    from wise_plugin.host import base_editor

    spec, models = load_specs(tiny_yamls[:1])[0], TinyModels(smollm2_path)
    build_editor(spec, models)
    log = _host_logger(base_editor())
    assert log is not None and log.handlers  # the host's own handlers are there
    count = len(log.handlers)
    for _ in range(3):
        build_editor(spec, models)
    assert len(log.handlers) == count


# Protocol, reports, resume --------------------------------------------------------------------------

def test_report_files(full_run, tmp_path):
    result, _, calls = full_run
    assert calls == CHUNKS  # one fresh editor per chunk
    assert [(r["editor"], r["T"], r["chunks"], r["edits"]) for r in result["summary"]] == [
        ("WISE", 1, 2, 2), ("WISE", 2, 1, 2), ("FT", 1, 2, 2), ("FT", 2, 1, 2)]
    for row in result["summary"]:
        assert all(0.0 <= row[m] <= 1.0 for m in ("rel", "gen", "loc", "avg", "gen_rel", "near"))
        assert row["avg"] == pytest.approx((row["rel"] + row["gen"] + row["loc"]) / 3)
        # memory kept after the chunk: the plugin's layer only (FT edits weights in place)
        assert (row["memory_mb"] > 0 and 0 < row["memory_share"] < 1) if row["editor"] == "WISE" else row["memory_mb"] is None
    paths = write_reports(result, str(tmp_path), {"command": "test"})
    table = open(paths["results.md"], encoding="utf-8").read()
    assert "| method (Rel/Gen/Loc/Avg) | T=1 | T=2 |" in table and "| WISE |" in table and "| FT |" in table
    assert "near-miss Loc" in table
    with open(paths["records.csv"], encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 8 and {r["editor"] for r in rows} == {"WISE", "FT"}
    assert all(r["greedy"] is not None and float(r["edit_seconds"]) > 0 for r in rows)
    saved = json.load(open(paths["results.json"], encoding="utf-8"))
    assert len(saved["records"]) == 8 and saved["summary"] == result["summary"]
    with open(paths["metrics.png"], "rb") as handle:
        assert handle.read(8) == b"\x89PNG\r\n\x1a\n"
    # a panel per score and per cost with a value: chunks of 1-2 edits are not timed for overhead
    panels = plot_panels(result)
    assert {"rel", "gen", "loc", "gen_rel", "near", "edit_s_per_edit", "memory_share"} <= set(panels)
    assert "overhead" not in panels


def test_resume_after_interruption_gives_the_same_table(full_run, tiny_yamls, smollm2_path, tmp_path):
    reference, _, _ = full_run
    out = str(tmp_path)
    args = (load_specs(tiny_yamls), load_requests("builtin"), dataset_format("builtin"), OPTIONS, out)
    with pytest.raises(KeyboardInterrupt):
        run_comparison(*args, model_factory=TinyModels(smollm2_path, interrupt_at=4))
    with open(os.path.join(out, RESULTS_FILE), encoding="utf-8") as handle:
        assert len(handle.readlines()) == 3  # one JSON line per finished chunk

    # a stored-only report runs nothing and says what is missing: WISE is done, FT-L not begun
    idle = TinyModels(smollm2_path)
    progress = run_comparison(*args, model_factory=idle, stored_only=True)
    assert idle.calls == 0 and len(progress["chunks"]) == 3
    assert [(r["editor"], r["T"], r["chunks"], r["planned_chunks"]) for r in progress["summary"]] == [
        ("WISE", 1, 2, 2), ("WISE", 2, 1, 1), ("FT", 1, 0, 2), ("FT", 2, 0, 1)]
    assert paper_table(progress).splitlines()[2] == paper_table(reference).splitlines()[2]  # WISE's row
    assert "| FT | -/-/-/- (0 of 2 chunks) | -/-/-/- (0 of 1 chunks) |" in paper_table(progress)
    assert "| FT | 1 | 0 of 2 | 0 |" in detail_table(progress)
    with open(write_reports(progress, str(tmp_path / "progress"))["metrics.png"], "rb") as handle:
        assert handle.read(8) == b"\x89PNG\r\n\x1a\n"

    resumed_models = TinyModels(smollm2_path)
    resumed = run_comparison(*args, model_factory=resumed_models)
    assert resumed_models.calls == CHUNKS - 3  # finished chunks are not recomputed
    assert paper_table(resumed) == paper_table(reference)
    timing = ("edit_s_per_edit", "eval_s_per_edit", "overhead")
    assert [{k: v for k, v in r.items() if k not in timing} for r in resumed["summary"]] == \
        [{k: v for k, v in r.items() if k not in timing} for r in reference["summary"]]

    again_models = TinyModels(smollm2_path)
    again = run_comparison(*args, model_factory=again_models)
    assert again_models.calls == 0 and again == resumed


def test_changed_settings_are_not_taken_from_stored_chunks(full_run, tiny_yamls, smollm2_path):
    _, out, _ = full_run
    models = TinyModels(smollm2_path)
    run_comparison(load_specs(tiny_yamls[1:]), load_requests("builtin"), dataset_format("builtin"),
                   RunOptions(t_values=(1,), n=2, seed=1, progress=False), out, model_factory=models)
    assert models.calls == 2  # another seed: both FT chunks run again


def test_chunks_imported_from_an_earlier_results_json_are_not_run_again(full_run, tiny_yamls, smollm2_path,
                                                                         tmp_path):
    reference, _, _ = full_run
    saved = write_reports(reference, str(tmp_path / "earlier"))["results.json"]
    args = (load_specs(tiny_yamls), load_requests("builtin"), dataset_format("builtin"), OPTIONS)
    models = TinyModels(smollm2_path)
    imported = run_comparison(*args, str(tmp_path / "here"), model_factory=models, imports=[saved])
    assert models.calls == 0 and imported["summary"] == reference["summary"]
    assert [line["records"] for line in imported["chunks"]] == [line["records"] for line in reference["chunks"]]

    # another seed gives other keys: nothing is taken, both FT chunks run
    models = TinyModels(smollm2_path)
    run_comparison(load_specs(tiny_yamls[1:]), load_requests("builtin"), dataset_format("builtin"),
                   RunOptions(t_values=(1,), n=2, seed=1, progress=False), str(tmp_path / "seed1"),
                   model_factory=models, imports=[saved])
    assert models.calls == 2


def test_an_import_that_is_not_a_keyed_results_json_stops_before_any_edit(full_run, tiny_yamls, smollm2_path,
                                                                           tmp_path):
    reference, _, _ = full_run
    saved = json.load(open(write_reports(reference, str(tmp_path))["results.json"], encoding="utf-8"))
    del saved["chunks"]  # what results.json files held before chunk keys were written
    old = tmp_path / "old.json"
    old.write_text(json.dumps(saved))
    args = (load_specs(tiny_yamls), load_requests("builtin"), dataset_format("builtin"), OPTIONS, str(tmp_path / "o"))
    for path, words in ((str(old), "no chunk keys"), (str(tmp_path / "missing.json"), "no such file")):
        models = TinyModels(smollm2_path)
        with pytest.raises(RunnerInputError, match=words):
            run_comparison(*args, model_factory=models, imports=[path])
        assert models.calls == 0


@pytest.mark.parametrize("name, path, metrics", [
    ("hallucination", "wise/hallucination/hallucination-edit.json", ("ppl", "loc")),
    ("temporal", "wise/temporal/temporal-edit.json", ("rel", "ood", "loc", "avg")),
])
def test_hallucination_and_temporal_metrics(name, path, metrics, tiny_yamls, smollm2_path, tmp_path):
    path = os.path.join(SHARED_DATA, path)
    if not os.path.isfile(path):
        pytest.skip(f"{path} is not on this machine")
    result = run_comparison(load_specs(tiny_yamls[1:]), load_requests(name, path), dataset_format(name),
                            RunOptions(t_values=(1,), n=1, progress=False), str(tmp_path),
                            model_factory=TinyModels(smollm2_path))
    row = result["summary"][0]
    assert all(row[m] is not None for m in metrics) and row["gen_rel"] is None
    if name == "hallucination":
        assert 1.0 <= row["ppl"] <= 100.0  # clipped at 100 as in the WISE paper
    assert f"({'/'.join(m.capitalize() if m != 'ppl' else 'PPL' for m in metrics)})".replace("Ood", "OOD") \
        in paper_table(result)


@pytest.mark.slow
def test_real_smollm2_one_edit_each(tmp_path):
    """The shipped WISE and FT YAMLs on the embedded SmolLM2: one built-in edit each, T=1."""
    result = run_comparison(load_specs([WISE_YAML, FT_YAML]), load_requests("builtin"), dataset_format("builtin"),
                            RunOptions(t_values=(1,), n=1, progress=False), str(tmp_path))
    records = {line["editor"]: line["records"][0] for line in result["chunks"]}
    assert set(records) == {"WISE", "FT"}
    for record in records.values():
        assert record["rel"] > record["pre_rel"], records  # the edit moved the model towards the new target
        assert record["loc"] is not None and record["edit_seconds"] > 0


def test_lora_is_refused_up_front_on_the_package_index_host(tmp_path):
    from wise_plugin.host import host_flavour

    if host_flavour() != "pypi":
        pytest.skip("the source-repository host has its own LoRA")
    path = tmp_path / "lora.yaml"
    path.write_text("alg_name: LoRA\nmodel_name: tiny-random-gpt2tok\n")
    with pytest.raises(RunnerInputError, match="'LoRA' cannot run on this host"):
        load_specs([str(path)])


def test_fresh_model_of_each_chunk_reuses_the_runs_wise_setup(tiny_yamls, smollm2_path, tmp_path, monkeypatch):
    """Every chunk rebuilds the unedited model; the run's SetupCache spares WISE its setup after the first."""
    from wise_plugin.wise import main as wise_main

    calls = []
    real = wise_main.generate_prefixes
    monkeypatch.setattr(wise_main, "generate_prefixes", lambda *a, **k: calls.append(1) or real(*a, **k))
    models = TinyModels(smollm2_path)
    run_comparison(load_specs(tiny_yamls[:1]), load_requests("builtin"), dataset_format("builtin"),
                   RunOptions(t_values=(1,), n=3, progress=False), str(tmp_path), model_factory=models)
    assert models.calls == 3 and len(calls) == 1


def test_an_overlong_record_stops_the_chunk_before_any_scoring(tiny_yamls, smollm2_path, tmp_path):
    requests = load_requests("builtin")[:2]
    requests[1] = dict(requests[1], prompt="word " * 300)
    models = TinyModels(smollm2_path)  # 256 positions
    with pytest.raises(RunnerInputError, match=r"record 1 of the data: .*the model's context is 256 tokens"):
        run_comparison(load_specs(tiny_yamls[1:]), requests, dataset_format("builtin"),
                       RunOptions(t_values=(2,), n=2, progress=False), str(tmp_path), model_factory=models)
    assert not os.path.exists(os.path.join(str(tmp_path), RESULTS_FILE)) or \
        not open(os.path.join(str(tmp_path), RESULTS_FILE)).read()


# Near-miss locality ---------------------------------------------------------------------------------

def test_near_miss_prompts_swap_the_subject_within_the_relation():
    from wise_plugin.runner.near_miss import attach_near_miss

    path = os.path.join(SHARED_DATA, "counterfact", "counterfact-edit-1k.json")
    if not os.path.isfile(path):
        pytest.skip(f"{path} is not on this machine")
    requests = load_requests("counterfact", path)[:20]
    again = attach_near_miss(requests, "counterfact", path)
    assert [r["near_miss"] for r in requests] == again  # the same draw every time
    first = requests[0]  # David Robinson professionally plays the sport
    swaps, own = first["near_miss"][:-1], first["near_miss"][-1]
    assert own == first["locality"]["neighborhood"]["prompt"]  # CounterFact's locality prompt is a near miss
    assert len(swaps) == 2 and all(p.endswith(" professionally plays the sport") for p in swaps)
    assert all("David Robinson" not in p for p in swaps)


def test_a_near_miss_pool_swaps_in_subjects_the_stream_does_not_edit():
    """With every record of the edit file in the stream, all of its subjects are edited; a pool
    (here the ZsRE train file) keeps the swapped-in subjects unedited."""
    edit = os.path.join(SHARED_DATA, "wise", "ZsRE", "zsre_mend_edit.json")
    train = os.path.join(SHARED_DATA, "wise", "ZsRE", "zsre_mend_train.json")
    if not (os.path.isfile(edit) and os.path.isfile(train)):
        pytest.skip("the ZsRE files are not on this machine")
    with open(edit, encoding="utf-8") as handle:
        edited = {r["subject"] for r in json.load(handle)}
    with open(train, encoding="utf-8") as handle:
        pool = {r["subject"] for r in json.load(handle)} - edited
    requests = load_requests("zsre", edit, near_miss_pool=train)
    own = load_requests("zsre", edit)
    swapped = [(r, p) for r in requests if r.get("subject") for p in r.get("near_miss", [])]
    assert len(swapped) >= len(requests)  # about two per request
    assert all(any(p == r["prompt"].replace(r["subject"], s, 1) for s in pool) for r, p in swapped)
    assert sum(r.get("near_miss") != o.get("near_miss") for r, o in zip(requests, own)) > len(requests) // 2
    with pytest.raises(RunnerInputError, match="near-miss-pool"):
        load_requests("zsre", edit, near_miss_pool=os.path.join(SHARED_DATA, "missing.json"))


def test_several_data_files_make_one_stream_in_order():
    """CounterFact T=3000 edits counterfact-edit-1k then counterfact-train-2k as one stream."""
    edit = os.path.join(SHARED_DATA, "counterfact", "counterfact-edit-1k.json")
    train = os.path.join(SHARED_DATA, "counterfact", "counterfact-train-2k.json")
    if not (os.path.isfile(edit) and os.path.isfile(train)):
        pytest.skip("the CounterFact files are not on this machine")
    both = load_requests("counterfact", [edit, train])
    first, second = load_requests("counterfact", edit), load_requests("counterfact", train)
    assert len(both) == len(first) + len(second) == 3000
    strip = lambda r: {k: v for k, v in r.items() if k != "near_miss"}  # noqa: E731
    assert [strip(r) for r in both] == [strip(r) for r in first + second]  # same records, same order, subjects kept
    assert all(r.get("subject") for r in both[1000:])
    subjects = {r["subject"] for r in both}
    assert all(any(s in p for s in subjects) for r in both[:50] for p in r["near_miss"][:-1])  # swaps from both files
    assert load_requests("counterfact", [edit]) == first  # one file in a list: as the path alone
    with pytest.raises(RunnerInputError, match="missing.json"):
        load_requests("counterfact", [edit, os.path.join(SHARED_DATA, "missing.json")])


@pytest.mark.parametrize("dataset, path", [("hallucination", "wise/hallucination/hallucination-edit.json"),
                                           ("temporal", "wise/temporal/temporal-edit.json")])
def test_passage_records_pass_their_subject_and_get_no_near_misses(dataset, path):
    """Without the file's subject an editor guesses one from the passage ("This is a Wikipedia
    passage about ...") and every memory anchors on the same words."""
    path = os.path.join(SHARED_DATA, path)
    if not os.path.isfile(path):
        pytest.skip(f"{path} is not on this machine")
    with open(path, encoding="utf-8") as handle:
        raw = json.load(handle)[:5]
    requests = load_requests(dataset, path)[:5]
    assert [r.get("subject") for r in requests] == [x["subject"] if x["subject"] in x["prompt"] else None for x in raw]
    assert any(r.get("subject") for r in requests)
    assert not any(r.get("near_miss") for r in requests)


def scrambler(editor):
    """An ``apply`` for ``score_stream`` that edits nothing but scales the output head at random,
    so that greedy continuations change."""
    def scramble(stream):
        with torch.no_grad():
            torch.manual_seed(1)
            editor.model.lm_head.weight.mul_(torch.randn_like(editor.model.lm_head.weight))
        return [0.0] * len(stream)
    return scramble


def test_near_miss_locality_is_one_when_nothing_changes_and_drops_when_the_model_does(tiny_yamls, smollm2_path):
    """The protocol's near-miss score on a real (tiny) model: an edit that changes nothing keeps every
    continuation; one that scales the output head changes them. The editor never sees the prompts."""
    from wise_plugin.runner.editors import build_editor
    from wise_plugin.runner.protocol import score_stream

    requests = load_requests("builtin")[:3]
    editor = build_editor(load_specs(tiny_yamls[1:])[0], TinyModels(smollm2_path))
    seen = []

    def no_change(stream):
        seen.extend(stream)
        return [0.0] * len(stream)

    records, _, _ = score_stream(editor, requests, dataset_format("builtin"), OPTIONS, no_change, generation=False)
    assert [r["near"] for r in records] == [1.0, 1.0, 1.0] and all(r["near_changed"] == [] for r in records)

    records, _, _ = score_stream(editor, requests, dataset_format("builtin"), OPTIONS, scrambler(editor), generation=False)
    assert sum(r["near"] for r in records) < 3.0
    assert any(r["near_changed"] == [requests[i]["near_miss"][0]] for i, r in enumerate(records))


def test_plugin_chunks_report_inference_overhead_against_the_unedited_model(tiny_yamls, smollm2_path, tmp_path,
                                                                             monkeypatch):
    from wise_plugin.runner import protocol

    monkeypatch.setattr(protocol, "OVERHEAD_MIN_T", 2)  # timed from T=10 on by default
    models = TinyModels(smollm2_path)
    result = run_comparison(load_specs(tiny_yamls[:1]), load_requests("builtin"), dataset_format("builtin"),
                            RunOptions(t_values=(1, 2), n=2, progress=False), str(tmp_path), model_factory=models)
    assert models.calls == 3 + 1  # the three chunks' editors and one unedited model for the timings
    by_t = {row["T"]: row for row in result["summary"]}
    assert by_t[1]["overhead"] is None and 0.5 < by_t[2]["overhead"] < 5
    table = open(write_reports(result, str(tmp_path))["results.md"], encoding="utf-8").read()
    assert f"| {by_t[2]['overhead']:.2f}x |" in table and "memory kept" in table


# Resuming inside a chunk ------------------------------------------------------------------------

def test_a_chunk_interrupted_after_a_checkpoint_resumes_with_the_uninterrupted_result(tiny_yamls, smollm2_path,
                                                                                       tmp_path, monkeypatch):
    from wise_plugin.runner import protocol

    options = RunOptions(t_values=(3,), n=3, progress=False, checkpoint_every=1)
    args = (load_specs(tiny_yamls[:1]), load_requests("builtin"), dataset_format("builtin"), options)
    straight = run_comparison(*args, str(tmp_path / "straight"), model_factory=TinyModels(smollm2_path))

    real, calls = protocol._edit, []

    def interrupted(*a, **k):
        calls.append(1)
        if len(calls) == 3:  # the third edit: two are saved in the chunk's checkpoint
            raise KeyboardInterrupt("simulated interruption")
        return real(*a, **k)

    out = str(tmp_path / "resumed")
    monkeypatch.setattr(protocol, "_edit", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_comparison(*args, out, model_factory=TinyModels(smollm2_path))
    assert os.listdir(os.path.join(out, "partial"))
    calls.clear()
    monkeypatch.setattr(protocol, "_edit", lambda *a, **k: (calls.append(1), real(*a, **k))[1])
    resumed = run_comparison(*args, out, model_factory=TinyModels(smollm2_path))
    assert len(calls) == 1  # edit 3 only
    assert not os.listdir(os.path.join(out, "partial"))  # the finished chunk's progress is gone
    keys = ("index", "rel", "gen", "loc", "pre_rel", "pre_gen", "near", "greedy", "gen_rel", "wild_rel")
    pick = lambda result: [{k: r.get(k) for k in keys} for r in result["chunks"][0]["records"]]  # noqa: E731
    assert pick(resumed) == pick(straight)
    assert paper_table(resumed) == paper_table(straight)


def test_a_chunk_interrupted_while_scoring_after_its_edits_resumes_without_editing_again(tiny_yamls, smollm2_path,
                                                                                         tmp_path, monkeypatch):
    """The scoring after a long stream's last edit takes about an hour at 1,000 edits: a rerun loads
    the editor saved after the last edit, keeps the records already scored and scores only the rest."""
    from wise_plugin.runner import protocol

    # 3 is not a multiple of 2. The straight run scores its 3 requests as one block (batched
    # generation), the interrupted one a request at a time, so the interruption falls between records;
    # both give the same records.
    options = RunOptions(t_values=(3,), n=3, progress=False, checkpoint_every=2)
    straight = run_comparison(load_specs(tiny_yamls[:1]), load_requests("builtin"), dataset_format("builtin"),
                              options, str(tmp_path / "straight"), model_factory=TinyModels(smollm2_path))
    options = RunOptions(t_values=(3,), n=3, progress=False, checkpoint_every=2, score_batch=1)
    args = (load_specs(tiny_yamls[:1]), load_requests("builtin"), dataset_format("builtin"), options)

    real_score, real_after, scored = protocol._score, protocol._score_block, []

    def interrupted(*a, **k):
        if len(scored) == 2:  # the third request's scoring after the edits
            raise KeyboardInterrupt("simulated interruption")
        scored.append(1)
        return real_after(*a, **k)

    out = str(tmp_path / "resumed")
    monkeypatch.setattr(protocol, "_score_block", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_comparison(*args, out, model_factory=TinyModels(smollm2_path))
    edits, scores = [], []
    monkeypatch.setattr(protocol, "_score_block", real_after)
    monkeypatch.setattr(protocol, "_edit", lambda *a, **k: edits.append(1) or 0.0)
    monkeypatch.setattr(protocol, "_score", lambda *a, **k: scores.append(1) or real_score(*a, **k))
    resumed = run_comparison(*args, out, model_factory=TinyModels(smollm2_path))
    assert edits == [] and len(scores) == 1  # no edit again; only the third request is scored
    keys = ("index", "rel", "gen", "loc", "pre_rel", "pre_gen", "near", "greedy", "gen_rel", "wild_rel",
            "edit_seconds")
    pick = lambda result: [{k: r.get(k) for k in keys} for r in result["chunks"][0]["records"]]  # noqa: E731
    assert all(r["edit_seconds"] > 0 for r in pick(resumed))  # the interrupted run's timings, kept
    assert [{k: v for k, v in r.items() if k != "edit_seconds"} for r in pick(resumed)] == \
        [{k: v for k, v in r.items() if k != "edit_seconds"} for r in pick(straight)]
    assert paper_table(resumed) == paper_table(straight)
    assert not os.listdir(os.path.join(out, "partial"))


def test_near_miss_counts_recounted_without_the_streams_own_prompts():
    from wise_plugin.runner.near_miss import without_stream_prompts

    requests = [{"prompt": "Who founded A?", "rephrase_prompt": "A was founded by", "near_miss": ["Who founded B?", "Who founded C?"]},
                {"prompt": "Who founded B?", "rephrase_prompt": "B was founded by", "near_miss": ["Who founded A?"]}]
    records = [{"index": 0, "near": 0.5, "near_changed": ["Who founded B?"]},  # B is edited: its change is wanted
               {"index": 1, "near": 1.0, "near_changed": []}]
    upgraded = without_stream_prompts(records, requests)
    assert upgraded[0] == {"index": 0, "near": 1.0, "near_changed": [], "near_excluded": 1}
    assert upgraded[1] == {"index": 1, "near_excluded": 1}  # no near miss left: no near-miss score
    assert without_stream_prompts([{"index": 0, "near": 0.5}, records[1]], requests) is None  # cannot tell


def test_chunks_stored_before_near_miss_versions_are_recounted_not_rerun(full_run, tiny_yamls, smollm2_path, tmp_path):
    """A chunk line stored under the key of the runs before the stream's own prompts were left out
    (no near-miss version in the key) is recounted from its records: no model is built."""
    from wise_plugin.runner.protocol import chunk_key, plan, with_loc_prompts

    reference, out, _ = full_run
    specs, fmt = load_specs(tiny_yamls), dataset_format("builtin")
    sample = with_loc_prompts(select_sample(load_requests("builtin"), OPTIONS), OPTIONS)
    legacy = {chunk_key(spec, fmt, chunk, sample[chunk.start:chunk.stop], OPTIONS): chunk_key(
        spec, fmt, chunk, sample[chunk.start:chunk.stop], OPTIONS, None) for spec in specs for chunk in plan(2, (1, 2))}
    with open(os.path.join(out, RESULTS_FILE), encoding="utf-8") as source, \
            open(tmp_path / RESULTS_FILE, "w", encoding="utf-8") as target:
        for text in source:
            line = json.loads(text)
            if line["key"] in legacy:  # other tests add chunks of other settings to the shared run
                target.write(json.dumps({**line, "key": legacy[line["key"]]}) + "\n")
    models = TinyModels(smollm2_path)
    upgraded = run_comparison(specs, load_requests("builtin"), fmt, OPTIONS, str(tmp_path), model_factory=models)
    assert models.calls == 0
    assert paper_table(upgraded) == paper_table(reference)
    assert [line["records"] for line in upgraded["chunks"]] == [line["records"] for line in reference["chunks"]]


def test_unedited_scores_are_taken_once_per_request_and_equal_each_editors_own(full_run, tiny_yamls, smollm2_path):
    """Every chunk starts from the unedited model, so its scores before the edits are shared by all
    T and editors (here WISE, a plugin editor, and FT, a host editor): one stored line per request.
    Each stored score equals what either editor takes on its own freshly built model."""
    from wise_plugin.runner.baseline import BaselineScores, scoring_profile
    from wise_plugin.runner.editors import build_editor
    from wise_plugin.runner.store import json_ready
    from wise_plugin.runner.protocol import _near_miss_answers, _score, with_loc_prompts

    _, out, _ = full_run
    fmt = dataset_format("builtin")
    store = BaselineScores(out, {"dataset": fmt.name, "eval_metric": fmt.eval_metric,
                                 "eval_target_tokens": OPTIONS.eval_target_tokens,
                                 "near_miss_tokens": OPTIONS.near_miss_tokens})
    sample = with_loc_prompts(select_sample(load_requests("builtin"), OPTIONS), OPTIONS)
    specs = load_specs(tiny_yamls)
    keys = {spec.label: [store.key(r, scoring_profile(spec.hparams, spec.model_name)) for r in sample] for spec in specs}
    assert keys["WISE"] == keys["FT"] and all(key in store.store for key in keys["WISE"])
    for spec in specs:
        editor = build_editor(spec, TinyModels(smollm2_path))
        own = [(json_ready(_score(editor, r, fmt.eval_metric, OPTIONS.eval_target_tokens)),
                json_ready(_near_miss_answers(editor, r.get("near_miss", []), OPTIONS.near_miss_tokens))) for r in sample]
        stored = [store.store.lines[key] for key in keys[spec.label]]
        assert [(line["score"], line["near"]) for line in stored] == own, spec.label


def test_unedited_scores_are_kept_apart_where_the_host_scores_differently(tmp_path):
    """The host scores GRACE by free generation: its unedited scores are not shared with others."""
    from types import SimpleNamespace

    from wise_plugin.runner.baseline import BaselineScores, scoring_profile

    store = BaselineScores(str(tmp_path), {"dataset": "zsre"})
    request = load_requests("builtin")[0]
    wise = scoring_profile(SimpleNamespace(alg_name="WISE"), "m")
    assert store.key(request, wise) == store.key(request, scoring_profile(SimpleNamespace(alg_name="FT"), "m"))
    assert store.key(request, wise) != store.key(request, scoring_profile(SimpleNamespace(alg_name="GRACE"), "m"))
    assert store.key(request, wise) != store.key(request, scoring_profile(SimpleNamespace(alg_name="WISE"), "other"))
    taken = []
    first = store.get(request, wise, lambda: taken.append(1) or ({"rewrite_acc": [1.0]}, [[3, 4]]))
    again = BaselineScores(str(tmp_path), {"dataset": "zsre"}).get(request, wise, lambda: taken.append(2))
    assert taken == [1] and first == again == ({"rewrite_acc": [1.0]}, [[3, 4]])


def test_a_near_miss_that_is_a_prompt_of_the_stream_is_left_out(tiny_yamls, smollm2_path):
    """At T = the whole file every swapped-in subject is edited too, and "What city was Y born?" may
    be Y's own edit: such a prompt is an edit of the stream, and its change is no locality failure."""
    from wise_plugin.runner.editors import build_editor
    from wise_plugin.runner.protocol import score_stream

    requests = [dict(r) for r in load_requests("builtin")[:2]]
    requests[0]["near_miss"] = [requests[1]["prompt"], *requests[0]["near_miss"]]
    editor = build_editor(load_specs(tiny_yamls[1:])[0], TinyModels(smollm2_path))

    records, _, _ = score_stream(editor, requests, dataset_format("builtin"), OPTIONS, scrambler(editor), generation=False)
    assert records[0]["near_excluded"] == 1 and "near_excluded" not in records[1]
    assert requests[1]["prompt"] not in records[0]["near_changed"]
    assert records[0]["near"] < 1.0  # the other near misses are still scored
