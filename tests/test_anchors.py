"""Subjects and subject anchors on real prompts with the real tokenizer."""

import pytest
import torch

from wise_plugin.core.anchors import AnchorIndex, subject_anchors
from wise_plugin.core.subjects import guess_subject, request_subject


@pytest.mark.parametrize("prompt, subject", [
    ("What university did Watts Humphrey attend?", "Watts Humphrey"),
    ("The mother tongue of Danielle Darrieux is", "Danielle Darrieux"),
    ("The Mona Lisa was painted by", "Mona Lisa"),
    ("The chemical symbol for gold is", "gold"),
    ("What is the name of the river that runs through Prague?", "Prague"),
])
def test_guess_subject_takes_the_named_entity_or_the_last_content_word(prompt, subject):
    assert guess_subject(prompt) == subject


def test_request_subject_prefers_the_given_subject_when_it_is_in_the_prompt():
    assert request_subject({"prompt": "The capital of New South Wales is", "subject": "New South Wales"}) == "New South Wales"
    # a subject the prompt does not contain is ignored (EasyEdit's source host only prints a warning)
    assert request_subject({"prompt": "The capital of Kenya is", "subject": "Ghana"}) == "Kenya"


def test_anchor_index_gates_rows_by_subject_tokens(tok):
    index = AnchorIndex()
    index.add(0, subject_anchors(tok, {"prompt": "The mother tongue of Danielle Darrieux is", "subject": "Danielle Darrieux"}))
    index.add(1, None)  # an edit without a subject opens its memory to every row
    rows = ["The mother tongue of Danielle Darrieux is", "Danielle Darrieux speaks the language of",
            "The mother tongue of Léon Blum is", "Who wrote Hamlet?"]
    encoded = tok(rows, padding=True, return_tensors="pt", padding_side="left")
    hits = index.hits(encoded["input_ids"], encoded["attention_mask"], memories=2)
    assert hits[:, 0].tolist() == [True, True, False, False]
    assert hits[:, 1].all()
    again = AnchorIndex.from_state(index.state())
    assert torch.equal(again.hits(encoded["input_ids"], encoded["attention_mask"], 2), hits)
