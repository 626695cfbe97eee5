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


def _routes(model, tok, layer, prompts):
    """Memory (WISE) or expert (LEMoE) each prompt goes to: -1 for none."""
    encoded = tok(prompts, padding=True, return_tensors="pt", padding_side="left")
    with torch.no_grad():
        model(**encoded)
    choice = layer.cached_choice if hasattr(layer, "book") else layer.last_choice
    return choice.tolist()


QUESTIONS = ["The capital of Australia is", "Which city is the capital of Australia?", "The capital of Canada is",
             "Who wrote Hamlet?"]


def test_wise_memory_answers_only_rows_naming_its_subject(tok):
    from conftest import HPARAMS_DIR, tiny_llama
    from wise_plugin import WISEHyperParams, apply_wise_to_model
    from wise_plugin.wise import find_layer

    hparams = WISEHyperParams.from_hparams(f"{HPARAMS_DIR}/smollm2-135m.yaml")
    hparams.inner_params, hparams.n_iter, hparams.n_prefixes, hparams.lifelong = \
        ["model.layers[1].mlp.down_proj.weight"], 3, 2, True
    assert hparams.subject_anchor  # the shipped recipe
    model = tiny_llama()
    apply_wise_to_model(model, tok, [{"prompt": QUESTIONS[0], "target_new": "Melbourne", "subject": "Australia"}], hparams)
    layer = find_layer(model)
    layer.book.threshold = 0.0  # every row scores above it: only the anchors decide
    assert _routes(model, tok, layer, QUESTIONS) == [0, 0, -1, -1]
    layer.book.anchors.groups = [None]  # an edit without a subject: the memory is open to every row
    assert _routes(model, tok, layer, QUESTIONS) == [0, 0, 0, 0]


def test_anchor_route_sends_rows_naming_the_subject_to_its_memory_below_the_threshold(tok):
    from conftest import HPARAMS_DIR, tiny_llama
    from wise_plugin import WISEHyperParams, apply_wise_to_model
    from wise_plugin.wise import find_layer

    hparams = WISEHyperParams.from_hparams(f"{HPARAMS_DIR}/smollm2-135m.yaml")
    hparams.inner_params, hparams.n_iter, hparams.n_prefixes, hparams.lifelong = \
        ["model.layers[1].mlp.down_proj.weight"], 3, 2, True
    model = tiny_llama()
    apply_wise_to_model(model, tok, [{"prompt": QUESTIONS[0], "target_new": "Melbourne", "subject": "Australia"}], hparams)
    layer = find_layer(model)
    layer.book.threshold = float("inf")  # no row scores above it: by score alone nothing is routed
    layer.anchor_route = False
    assert _routes(model, tok, layer, QUESTIONS) == [-1, -1, -1, -1]
    layer.anchor_route = True  # the anchors alone decide for memories that have them
    assert _routes(model, tok, layer, QUESTIONS) == [0, 0, -1, -1]
    layer.book.anchors.groups = [None]  # an open memory still needs its threshold
    assert _routes(model, tok, layer, QUESTIONS) == [-1, -1, -1, -1]


def test_lemoe_expert_answers_only_rows_naming_its_subject(tok):
    from test_lemoe import tiny_hparams
    from conftest import tiny_llama
    from wise_plugin.lemoe import apply_lemoe_to_model, find_layer

    model = tiny_llama()
    hparams = tiny_hparams(gate=False, subject_anchor=True, lifelong=True)
    apply_lemoe_to_model(model, tok, [{"prompt": QUESTIONS[0], "target_new": "Melbourne"}], hparams)  # subject guessed
    layer = find_layer(model)
    assert layer.anchors.groups == [sorted({tuple(tok(t, add_special_tokens=False)["input_ids"])
                                            for t in ("Australia", " Australia")})]
    assert _routes(model, tok, layer, QUESTIONS) == [0, 0, -1, -1]


def test_lemoe_anchor_route_opens_the_gate_for_rows_naming_the_experts_subject(tok):
    from test_lemoe import tiny_hparams
    from conftest import tiny_llama
    from wise_plugin.lemoe import apply_lemoe_to_model, find_layer

    model = tiny_llama()
    hparams = tiny_hparams(gate=True, subject_anchor=True, lifelong=True)
    apply_lemoe_to_model(model, tok, [{"prompt": QUESTIONS[0], "target_new": "Melbourne", "subject": "Australia"}], hparams)
    layer = find_layer(model)
    layer.thresholds = [float("inf")]  # the gate alone closes for every row
    layer.anchor_route = False
    assert _routes(model, tok, layer, QUESTIONS) == [-1, -1, -1, -1]
    layer.anchor_route = True
    assert _routes(model, tok, layer, QUESTIONS) == [0, 0, -1, -1]


def test_anchored_replay_keeps_only_earlier_edits_that_name_the_active_memorys_subjects(tok):
    from wise_plugin.wise.config import WISEHyperParams
    from wise_plugin.wise.layer import WISELayer
    from wise_plugin.wise.main import _draw_loc

    layer = WISELayer(torch.nn.Linear(16, 8), mask_ratio=1.0, seed=0, retrieve=True)
    layer.caches.pool_acts = torch.zeros(4, 3, 16)
    earlier = [("The mother tongue of Danielle Darrieux is", "English"), ("The capital of Kenya is", "Lagos"),
               ("Danielle Darrieux was born in", "Paris")]
    layer.book.memory = list(earlier)
    layer.book.group_start = len(earlier)
    layer.book.group_thresholds = [1.0]
    for prompt, _ in earlier:
        layer.book.anchors.add(0, subject_anchors(tok, {"prompt": prompt}))
    hparams = WISEHyperParams(alg_name="WISE", model_name="m", inner_params=["model.layers[0].mlp.down_proj.weight"], retrieve=True, replay=True,
                              n_loc=8, subject_anchor=True)
    request = {"prompt": "Danielle Darrieux lives in", "target_new": "Rome", "subject": "Danielle Darrieux"}
    anchored = _draw_loc(layer, tok, request, hparams, subject_anchors(tok, request))
    assert sorted(anchored.replayed) == sorted(f"{p} {t}" for p, t in earlier if "Darrieux" in p)
    unanchored = _draw_loc(layer, tok, request, hparams, None)  # an open memory replays every earlier edit
    assert sorted(unanchored.replayed) == sorted(f"{p} {t}" for p, t in earlier)


def test_subject_statements_are_extra_rows_that_teach_the_target_after_the_subject(tok):
    from wise_plugin.core.rows import SUBJECT_TEMPLATES, build_batch, subject_prompts

    statements = subject_prompts("Danielle Darrieux", 3)
    assert statements == [t.format("Danielle Darrieux") for t in SUBJECT_TEMPLATES[:3]]
    assert subject_prompts(None, 3) == [] and subject_prompts("Danielle Darrieux", 0) == []
    replay = [("The capital of Peru is", "Lima")]
    plain = build_batch(tok, "Danielle Darrieux's mother tongue is", "English", [], False, torch.device("cpu"), replay)
    batch = build_batch(tok, "Danielle Darrieux's mother tongue is", "English", [], False, torch.device("cpu"),
                        replay, statements)
    assert batch.input_ids.shape[0] == plain.input_ids.shape[0] + 3
    assert batch.rehearsed == plain.rehearsed  # replayed edits stay the last rows: the stop rule reads them there
    target = tok(" English")["input_ids"]
    for row in range(1, 4):  # every statement row predicts the edit's target after the statement
        assert batch.labels[batch.label_rows == row].tolist() == target
        text = tok.decode(batch.input_ids[row][batch.attention_mask[row].bool()])
        assert text == statements[row - 1] + " English"


def test_subject_templates_is_checked_against_the_built_in_statements():
    from wise_plugin.core.rows import SUBJECT_TEMPLATES
    from wise_plugin.hparams import HParamsError
    from wise_plugin.wise import WISEHyperParams

    hparams = WISEHyperParams.from_hparams("WISE/smollm2-135m")
    hparams.subject_templates = len(SUBJECT_TEMPLATES) + 1
    with pytest.raises(HParamsError, match="subject_templates must be between 0 and"):
        hparams.validate()


def test_answer_end_is_appended_to_the_target_once():
    from wise_plugin.core.rows import with_answer_end

    request = {"prompt": "What university did Watts Humphrey attend?", "target_new": "Harvard University"}
    assert with_answer_end(request, ".")["target_new"] == "Harvard University."
    assert request["target_new"] == "Harvard University"  # the caller's request is not changed
    assert with_answer_end(request, "") is request
    assert with_answer_end({"prompt": "The seat of government is", "target_new": "Washington, D.C."},
                           ".")["target_new"] == "Washington, D.C."  # already closed by the mark
    assert with_answer_end(request, "\n")["target_new"] == "Harvard University\n"
    assert with_answer_end({"prompt": "p", "target_new": "Harvard University. "}, ".")["target_new"] \
        == "Harvard University. "  # trailing spaces do not hide the mark
    assert with_answer_end({"prompt": "p", "target_new": "."}, ".")["target_new"] == ".."  # the mark alone is no answer


@pytest.mark.parametrize("target, end, booked, bare", [
    ("Harvard University", ".", "Harvard University.", "Harvard University"),
    ("Washington, D.C.", ".", "Washington, D.C.", "Washington, D.C"),  # its own "." is taken as the mark
    ("Lima. ", ".", "Lima. ", "Lima"),
    ("Harvard University", " .", "Harvard University .", "Harvard University"),
    ("Harvard University", "\n", "Harvard University\n", "Harvard University"),
    ("Paris\n", "\n", "Paris\n", "Paris"),
    (".", ".", "..", "."),
])
def test_answer_end_is_taken_off_where_it_was_put_on(target, end, booked, bare):
    """What the editor books (``with_answer_end``) and what its statements train on
    (``without_answer_end``) follow one rule of "closed by the mark"."""
    from wise_plugin.core.rows import with_answer_end, without_answer_end

    assert with_answer_end({"prompt": "p", "target_new": target}, end)["target_new"] == booked
    assert without_answer_end(booked, end) == bare
    assert without_answer_end(booked, "") == booked


def test_answer_end_mark_is_flagged_and_does_not_dilute_the_answer_tokens(tok):
    """The mark's tokens are flagged in the prompt rows and replayed rows, not trained after the
    statements, and get the weight of their edit's answer tokens without lowering it."""
    from wise_plugin.core.rows import build_batch
    from wise_plugin.wise.trainer import _edit_balanced_weights

    batch = build_batch(tok, "The mother tongue of Danielle Darrieux is", "English.", ["Hello there. "], False,
                        torch.device("cpu"), [("The capital of Peru is", "Lima.")],
                        ["Facts about Danielle Darrieux:"], answer_end=".")
    english, lima, mark = tok(" English")["input_ids"], tok(" Lima")["input_ids"], tok(".")["input_ids"]
    by_row = lambda row: batch.labels[batch.label_rows == row].tolist()  # noqa: E731
    assert by_row(0) == by_row(1) == english + mark and by_row(2) == english and by_row(3) == lima + mark
    assert batch.end_tokens.tolist() == [False, True, False, True, False, False, True]
    weights = _edit_balanced_weights(batch.label_rows, 3, batch.end_tokens)
    unmarked = build_batch(tok, "The mother tongue of Danielle Darrieux is", "English", ["Hello there. "], False,
                           torch.device("cpu"), [("The capital of Peru is", "Lima")], ["Facts about Danielle Darrieux:"])
    assert unmarked.end_tokens is None
    plain = _edit_balanced_weights(unmarked.label_rows, 3)
    assert torch.allclose(weights[~batch.end_tokens], plain)  # the answers weigh what they weigh without the mark
    assert torch.allclose(weights[batch.end_tokens], plain[[0, 1, 3]])


def test_answer_end_is_checked_to_be_a_short_mark():
    from wise_plugin.hparams import HParamsError
    from wise_plugin.wise import WISEHyperParams

    hparams = WISEHyperParams.from_hparams("WISE/smollm2-135m")
    hparams.answer_end = " and that is all."
    with pytest.raises(HParamsError, match="answer_end must be a short text"):
        hparams.validate()


def test_answer_index_finds_an_edits_answer_written_after_its_subject(tok):
    from wise_plugin.core.anchors import AnswerIndex

    index = AnswerIndex()
    index.add(0, tok, {"prompt": "The Mona Lisa was painted by", "target_new": "Michelangelo", "subject": "Mona Lisa"})
    index.add(0, tok, {"prompt": "Fiat Campagnola, developed by", "target_new": "Chevrolet", "subject": "Fiat Campagnola"})
    index.add(0, tok, {"prompt": "Panda, produced by", "target_new": "Fiat", "subject": "Panda"})
    index.add(1, tok, {"prompt": "The chemical symbol for gold is", "target_new": "Gd", "subject": "gold"})
    length = lambda text: len(tok(text)["input_ids"])  # noqa: E731
    prompt = tok("The Mona Lisa was painted by")["input_ids"]
    answered = tok("The Mona Lisa was painted by Michelangelo Michelangelo")["input_ids"]
    assert index.first_end(prompt, 0) is None
    assert index.first_end(answered, 0) == length("The Mona Lisa was painted by Michelangelo") - 1  # the first one
    assert index.first_end(answered, 1) is None  # another memory's answer
    assert index.first_end(answered, 5) is None  # a memory with no edits
    # "Fiat" is the answer of another edit of the memory, but "Panda" is not named before it
    fiat = tok("Fiat Campagnola, developed by Chevrolet")["input_ids"]
    assert index.first_end(fiat, 0) == len(fiat) - 1
    assert index.first_end(tok("Panda, produced by Fiat")["input_ids"], 0) == length("Panda, produced by Fiat") - 1
    again = AnswerIndex.from_state(index.state())
    assert again.groups == index.groups and again.first_end(fiat, 0) == len(fiat) - 1


def _answer_stop_model(tok, answer_stop):
    from conftest import HPARAMS_DIR, tiny_llama
    from wise_plugin import WISEHyperParams, apply_wise_to_model
    from wise_plugin.wise import find_layer

    hparams = WISEHyperParams.from_hparams(f"{HPARAMS_DIR}/smollm2-135m.yaml")
    hparams.inner_params, hparams.n_iter, hparams.n_prefixes, hparams.lifelong = \
        ["model.layers[1].mlp.down_proj.weight"], 3, 2, True
    hparams.answer_stop = answer_stop
    model = tiny_llama()
    apply_wise_to_model(model, tok, [{"prompt": QUESTIONS[0], "target_new": "Melbourne", "subject": "Australia"}], hparams)
    layer = find_layer(model)
    layer.book.threshold = 0.0  # route every row naming the subject
    return model, layer


def test_answer_stop_silences_the_memory_after_its_answer_only(tok):
    """From the answer's last token on, the edited layer gives the base projection's output; before
    it (every teacher-forced label position) the output is the memory's, as without the option."""
    model, layer = _answer_stop_model(tok, True)
    plain, plain_layer = _answer_stop_model(tok, False)
    text = QUESTIONS[0] + " Melbourne, and Melbourne is large"
    ids = tok(text, return_tensors="pt")
    answered_at = len(tok(QUESTIONS[0] + " Melbourne")["input_ids"]) - 1
    outputs = {}
    for name, (m, lay) in {"stop": (model, layer), "plain": (plain, plain_layer)}.items():
        seen = {}
        handle = lay.register_forward_hook(lambda mod, args, out, seen=seen: seen.update(x=args[0], out=out))
        with torch.no_grad():
            outputs[name] = m(**ids).logits
        handle.remove()
        seen["base"] = lay.base(seen["x"])
        outputs[name + "_layer"] = seen
    stop, plain_out = outputs["stop_layer"], outputs["plain_layer"]
    assert layer.cached_choice.tolist() == [0]
    assert not torch.allclose(plain_out["out"][0, answered_at:], plain_out["base"][0, answered_at:])
    assert torch.allclose(stop["out"][0, answered_at:], stop["base"][0, answered_at:])  # silent after the answer
    torch.testing.assert_close(outputs["stop"][0, :answered_at], outputs["plain"][0, :answered_at])
    assert not torch.allclose(outputs["stop"][0, answered_at:], outputs["plain"][0, answered_at:])


def test_answer_stop_gives_the_same_generation_with_and_without_the_kv_cache(tok):
    model, layer = _answer_stop_model(tok, True)
    encoded = tok(["The capital of Australia is", "Is Australia big?"], return_tensors="pt", padding=True,
                  padding_side="left")
    generate = lambda cache: model.generate(**encoded, max_new_tokens=8, do_sample=False, use_cache=cache,  # noqa: E731
                                            pad_token_id=tok.eos_token_id)
    width = encoded["input_ids"].shape[1]
    before = generate(True)
    # the token each row generates second stands for the answer: the memory is silent from there on
    layer.book.answers.groups = [[(None, sorted({(int(t),) for t in before[:, width + 1]}))]]
    cached, uncached = generate(True), generate(False)
    assert torch.equal(cached, uncached)
    assert all(layer.book.answers.first_end(row.tolist(), 0) is not None for row in cached)  # the gate was used


def test_lemoe_answer_stop_silences_the_expert_after_its_answer_only(tok):
    from test_lemoe import tiny_hparams
    from conftest import tiny_llama
    from wise_plugin.lemoe import apply_lemoe_to_model, find_layer

    logits, layer_out = {}, {}
    answered_at = len(tok(QUESTIONS[0] + " Melbourne")["input_ids"]) - 1
    for answer_stop in (False, True):
        model = tiny_llama()
        hparams = tiny_hparams(gate=False, subject_anchor=True, lifelong=True)
        hparams.answer_stop = answer_stop
        apply_lemoe_to_model(model, tok, [{"prompt": QUESTIONS[0], "target_new": "Melbourne", "subject": "Australia"}],
                             hparams)
        layer = find_layer(model)
        seen = {}
        handle = layer.register_forward_hook(lambda mod, args, out: seen.update(x=args[0], out=out))
        with torch.no_grad():
            logits[answer_stop] = model(**tok(QUESTIONS[0] + " Melbourne, and Melbourne is large", return_tensors="pt")).logits
            base = layer.base(seen["x"])
        handle.remove()
        assert layer.last_choice.tolist() == [0]
        layer_out[answer_stop] = (seen["out"], base)
    torch.testing.assert_close(logits[True][0, :answered_at], logits[False][0, :answered_at])
    assert not torch.allclose(logits[True][0, answered_at:], logits[False][0, answered_at:])
    out, base = layer_out[True]
    torch.testing.assert_close(out[0, answered_at:], base[0, answered_at:])  # the expert is silent after the answer
    out, base = layer_out[False]
    assert not torch.allclose(out[0, answered_at:], base[0, answered_at:])
