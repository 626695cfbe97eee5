"""The benchmark scripts' own logic (their runs are long and live outside the test suite)."""

import importlib.util
import os

from conftest import ROOT


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "benchmarks", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_same_subject_probes_ask_other_relations_of_the_edited_subject():
    same_subject = _load("same_subject")
    records = [
        {"case_id": 0, "prompt": "Danielle Darrieux's mother tongue is", "subject": "Danielle Darrieux"},
        {"case_id": 1, "prompt": "Toko Yasuda plays the", "subject": "Toko Yasuda"},
        {"case_id": 2, "prompt": "Apple A5 was created by", "subject": "Apple A5"},
        {"case_id": 3, "prompt": "The mother tongue of Léon Blum is", "subject": "Léon Blum"},
        {"case_id": 4, "prompt": "Autonomous University of Madrid, which is located in", "subject": "Autonomous University of Madrid"},
    ]
    probes = same_subject.other_relation_prompts(records, 2, 3)
    assert probes == same_subject.other_relation_prompts(records, 2, 3)  # seeded by the record
    assert len(probes) == 2 and all(len(p) == 3 for p in probes)
    assert all("Danielle Darrieux" in p for p in probes[0]) and "Danielle Darrieux's mother tongue is" not in probes[0]
    assert all("Toko Yasuda" in p for p in probes[1]) and "Toko Yasuda plays the" not in probes[1]
    # the other four records' templates, this record's subject filled in
    assert set(probes[1]) <= {"Danielle Darrieux's mother tongue is".replace("Danielle Darrieux", "Toko Yasuda"),
                              "Toko Yasuda was created by", "The mother tongue of Toko Yasuda is",
                              "Toko Yasuda, which is located in"}


def test_repeats_counts_whole_word_mentions_of_the_new_answer():
    from wise_plugin.evaluation import target_mentions

    repeats = _load("repeats")
    assert target_mentions("Michelangelo Michelangelo was born", "Michelangelo") == 2
    assert target_mentions("Gd.\n\nThe gold market", " Gd") == 1
    assert target_mentions("4000 and 40", "40") == 1  # whole words only
    records = [{"editor": "WISE", "T": 10, "target_new": "Paris", "greedy": g}
               for g in ("Paris, France", "Paris Paris", "London", None)]
    assert repeats.summarize(records) == [{"editor": "WISE", "T": 10, "records": 3, "contains": 2 / 3, "repeats": 1 / 3}]
