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


def test_subject_collisions_splits_edits_whose_answer_names_another_edited_subject():
    collisions = _load("subject_collisions")
    loc = lambda prompt, answer: {"neighborhood": {"prompt": prompt, "ground_truth": answer}}  # noqa: E731
    requests = [
        {"prompt": "Kenya African National Union is located in", "target_new": "Venezuela",
         "subject": "Kenya African National Union", "locality": loc("The capital of Venezuela is", "Caracas")},
        {"prompt": "Venezuela's official language is", "target_new": "French", "subject": "Venezuela",
         "locality": loc("Paris is in", "France")},
        {"prompt": "Paris is the capital of", "target_new": "Venezuelan Republic", "subject": "Paris",
         "locality": loc("Tokyo is in", "Japan")},
    ]
    records = [{"editor": "WISE", "T": 3, "index": i, "target_new": r["target_new"], "rel": rel, "gen_rel": greedy,
                "loc": loc_score} for i, (r, rel, greedy, loc_score) in
               enumerate(zip(requests, (0.0, 1.0, 1.0), (1.0, 1.0, 0.0), (0.5, 0.9, 0.5)))]
    (row,) = collisions.summarize(records, requests)
    # only record 0's answer names another edit's subject ("Venezuelan" is not the whole word)
    assert (row["colliding"], row["rel_colliding"], row["greedy_colliding"], row["rel_other"]) == (1, 0.0, 1.0, 1.0)
    assert (row["misses"], row["misses_colliding"]) == (1, 1)
    # three locality prompts changed; 0 and 1 name another edited subject, 2 ("Tokyo ... Japan") none
    assert (row["loc_changed"], row["loc_changed_named"]) == (3, 2)
