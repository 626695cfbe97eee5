"""Training rows of an edit: reworded copies of the prompt, on the real tokenizer."""

import torch

from wise_plugin.core.rows import build_batch, reworded_prompts


def test_reworded_prompts_keep_the_subject_and_drop_other_words():
    prompt, subject = "What is the product made by UniFirst?", "UniFirst?"
    variants = reworded_prompts(prompt, "UniFirst", 4, 0.3, seed=7)
    assert len(variants) == 4 and len(set(variants)) == 4 and prompt not in variants
    words = prompt.split(" ")
    for text in variants:
        kept = text.split(" ")
        assert subject in kept and len(kept) < len(words)
        assert [w for w in words if w in kept] == kept  # the prompt's words, in order, some left out
    assert reworded_prompts(prompt, "UniFirst", 4, 0.3, seed=7) == variants  # seeded
    assert reworded_prompts(prompt, "UniFirst", 4, 0.3, seed=8) != variants


def test_reworded_prompts_keep_a_multi_word_subject_whole_and_stop_when_words_run_out():
    variants = reworded_prompts("David Robinson plays", "David Robinson", 5, 0.5, seed=0)
    assert variants == ["David Robinson"]  # the one droppable word: one distinct variant
    assert reworded_prompts("The capital of Kenya is", None, 4, 0.3, seed=0) == []  # no subject: none
    assert reworded_prompts("The capital of Kenya is", "Ghana", 4, 0.3, seed=0) == []


def test_variant_rows_belong_to_the_new_edit_before_the_rehearsed_ones(tok):
    batch = build_batch(tok, "What is the product made by UniFirst?", "unmanned aircraft", ["In 1990, "], False,
                        torch.device("cpu"), replay=[("Who made Psychoticism known?", "Hermann Minkowski")],
                        variants=["product made by UniFirst?"])
    assert batch.input_ids.shape[0] == 4  # bare, prefixed, variant, rehearsed
    assert batch.rehearsed == ("Who made Psychoticism known? Hermann Minkowski",)
    variant_tokens = batch.labels[batch.label_rows == 2]
    assert tok.decode(variant_tokens).strip() == "unmanned aircraft"
    text = tok.decode(batch.input_ids[2][batch.edit_mask[2].bool()])
    assert text == "product made by UniFirst? unmanned aircraft"
