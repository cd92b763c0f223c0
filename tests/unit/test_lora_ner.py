"""lora-ner: scheme-constrained CRF decoding, a tiny BERT that overfits to F1 = 1.0, the CLUENER
(span JSON, Chinese characters) path, save → predict, and recipe errors."""

import json

import pytest
import torch

from llmtune.ner.tagger import Tagger, allowed_transitions
from tests.conftest import SHARED_DATA, tiny_bert

CONLL = SHARED_DATA / "conll2003" / "train.txt"
CLUENER = SHARED_DATA / "chinese-ner" / "train.jsonl"
BIO = ["O", "B-LOC", "B-PER", "I-LOC", "I-PER"]


@pytest.fixture(scope="module")
def tiny_chinese_bert(tmp_path_factory):
    """A tiny BERT whose WordPiece vocabulary is the characters of CLUENER's training text."""
    from transformers import BertTokenizerFast

    chars = set()
    for line in CLUENER.read_text(encoding="utf-8").splitlines():
        chars.update(json.loads(line)["text"])
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *sorted(chars)]
    tokenizer = BertTokenizerFast(vocab={token: i for i, token in enumerate(vocab)})
    assert len(tokenizer) == len(vocab)  # transformers 5 builds an empty tokenizer from vocab_file=
    return tiny_bert(tmp_path_factory.mktemp("tiny_zh_bert"), tokenizer)


def valid_bio(tags):
    previous = "O"
    for tag in tags:
        if tag.startswith("I-") and previous[2:] != tag[2:]:
            return False
        previous = tag
    return True


def test_allowed_transitions_bio_and_bioes():
    start, trans, end = allowed_transitions(BIO, "BIO")
    index = {t: i for i, t in enumerate(BIO)}
    assert not start[index["I-LOC"]] and start[index["B-LOC"]]
    assert trans[index["B-LOC"], index["I-LOC"]] and trans[index["I-LOC"], index["I-LOC"]]
    assert not trans[index["O"], index["I-LOC"]] and not trans[index["B-PER"], index["I-LOC"]]
    bioes = ["O", "B-X", "I-X", "E-X", "S-X"]
    start, trans, end = allowed_transitions(bioes, "BIOES")
    i = {t: n for n, t in enumerate(bioes)}
    assert trans[i["B-X"], i["E-X"]] and not trans[i["B-X"], i["O"]] and not trans[i["E-X"], i["I-X"]]
    assert not end[i["B-X"]] and end[i["E-X"]] and end[i["S-X"]]


def test_crf_decoding_never_emits_an_invalid_bio_sequence():
    from transformers import BertConfig, BertModel

    encoder = BertModel(
        BertConfig(
            vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32
        )
    )
    tagger = Tagger(encoder, BIO, use_crf=True, scheme="BIO")
    torch.manual_seed(0)
    with torch.no_grad():
        # transition scores that *prefer* the invalid moves, and emissions that shout I- everywhere
        tagger.crf.transitions.normal_(0, 3)
        tagger.crf.start_transitions[3:] = 5.0
    emissions = torch.randn(64, 12, len(BIO)) * 3
    emissions[..., 3:] += 4.0
    mask = torch.ones(64, 12, dtype=torch.bool)
    decoded = tagger.decode(emissions, mask)
    assert all(valid_bio([BIO[t] for t in row]) for row in decoded)
    unconstrained = tagger.crf.decode(emissions, mask)
    assert not all(valid_bio([BIO[t] for t in row]) for row in unconstrained)  # the constraint did the work


def ner_recipe(tmp_path, model_dir, train, validation, **sections):
    recipe = {
        "model": {"name_or_path": str(model_dir)},
        "data": {"train_files": str(train), "validation_files": str(validation), "max_length": 64},
        "peft": {"method": "none"},
        "train": {
            "output_dir": str(tmp_path / "run"),
            "num_train_epochs": 40,
            "per_device_train_batch_size": 8,
            "per_device_eval_batch_size": 8,
            "learning_rate": 5e-3,
            "logging_steps": 10,
            "eval_strategy": "no",
            "save_strategy": "no",
            "load_best_model_at_end": False,
            "seed": 0,
            "disable_tqdm": True,
            "report_to": "none",
        },
    }
    for name, values in sections.items():
        recipe[name] = {**recipe.get(name, {}), **values}
    return recipe


def first_sentences(tmp_path, n):
    blocks = CONLL.read_text().split("\n\n")[:n]
    path = tmp_path / "few.txt"
    path.write_text("\n\n".join(blocks) + "\n")
    return path


@pytest.mark.parametrize("use_crf", [True, False], ids=["crf", "softmax"])
def test_tiny_tagger_overfits_a_few_sentences_to_f1_1(use_crf, tmp_path, tiny_english_bert):
    from llmtune.recipe import NerRecipe
    from llmtune.stages import lora_ner

    few = first_sentences(tmp_path, 8)
    recipe = NerRecipe.model_validate(
        ner_recipe(tmp_path, tiny_english_bert, few, few, ner={"use_crf": use_crf})
    )
    results = lora_ner.run(recipe)
    assert results["eval_f1"] == 1.0, results


def test_full_run_saves_and_predict_tags_text(tmp_path, tiny_english_bert, cli, write_recipe):
    few = first_sentences(tmp_path, 8)
    result = cli("lora-ner", "--recipe", str(write_recipe(ner_recipe(tmp_path, tiny_english_bert, few, few))))
    assert result.exit_code == 0, result.stderr
    run = tmp_path / "run"
    for name in ("model.safetensors", "labels.json", "tagger.json", "tokenizer.json", "manifest.json"):
        assert (run / name).is_file(), name
    assert json.loads((run / "labels.json").read_text())[0] == "O"
    assert json.loads((run / "manifest.json").read_text())["results"]["eval_f1"] == 1.0
    predicted = cli(
        "lora-ner",
        "predict",
        "--model",
        str(run),
        "--json",
        "EU rejects German call to boycott British lamb.",
    )
    assert predicted.exit_code == 0, predicted.stderr
    found = json.loads(predicted.stdout.strip().splitlines()[-1])["entities"]
    assert [(e["type"], e["text"], e["start"]) for e in found] == [
        ("ORG", "EU", 0),
        ("MISC", "German", 11),
        ("MISC", "British", 34),
    ]
    # llmtune eval scores the saved run as training's final evaluation did (same file: F1 1.0).
    scored = cli("eval", "--model", str(run), "--ner", str(few), "--out", str(tmp_path / "ner-eval"))
    assert scored.exit_code == 0, scored.stderr
    ner = json.loads((tmp_path / "ner-eval" / "results.json").read_text())["results"][str(run)]["ner"]
    assert ner["f1"] == 1.0 and ner["sentences"] == 8


def test_lora_adapter_saves_the_trained_head_and_crf(tmp_path, tiny_english_bert, cli, write_recipe):
    from safetensors import safe_open

    from llmtune.ner.predict import tag_words
    from llmtune.ner.tagger import load_tagger

    few = first_sentences(tmp_path, 4)
    recipe = ner_recipe(tmp_path, tiny_english_bert, few, few, peft={"method": "lora", "r": 4})
    recipe["train"]["num_train_epochs"] = 2
    result = cli("lora-ner", "--recipe", str(write_recipe(recipe)))
    assert result.exit_code == 0, result.stderr
    with safe_open(str(tmp_path / "run" / "adapter_model.safetensors"), "pt") as saved:
        keys = list(saved.keys())
    assert any("lora_A" in k and "query" in k for k in keys)
    assert any("classifier" in k for k in keys) and any("crf.transitions" in k for k in keys)
    tagger, tokenizer, config = load_tagger(tmp_path / "run")
    assert len(tag_words(tagger, tokenizer, ["EU", "rejects", "German", "call"], config["max_length"])) == 4


def test_cluener_span_json_path_on_a_chinese_character_bert(tmp_path, tiny_chinese_bert, cli, write_recipe):
    rows = CLUENER.read_text(encoding="utf-8").splitlines()
    train, dev = tmp_path / "train.jsonl", tmp_path / "dev.jsonl"
    train.write_text("\n".join(rows[:16]) + "\n", encoding="utf-8")
    dev.write_text("\n".join(rows[:4]) + "\n", encoding="utf-8")
    recipe = ner_recipe(tmp_path, tiny_chinese_bert, train, dev, data={"test_files": str(dev)})
    recipe["train"].update(num_train_epochs=2)
    result = cli("lora-ner", "--recipe", str(write_recipe(recipe)))
    assert result.exit_code == 0, result.stderr
    assert "unit: char" in result.stderr
    results = json.loads((tmp_path / "run" / "manifest.json").read_text())["results"]
    assert "test_f1" in results and "eval_f1" in results
    labels = json.loads((tmp_path / "run" / "labels.json").read_text())
    assert "B-name" in labels and "I-company" in labels
    predicted = cli("lora-ner", "predict", "--model", str(tmp_path / "run"), "--json", "浙商银行企业信贷部")
    assert predicted.exit_code == 0, predicted.stderr
    assert json.loads(predicted.stdout.strip().splitlines()[-1])["text"] == "浙商银行企业信贷部"


def test_tag_unseen_in_training_is_an_error(tmp_path, tiny_english_bert, cli, write_recipe):
    train = tmp_path / "train.txt"
    train.write_text("Paris NNP B-NP B-LOC\nis VBZ B-VP O\n")
    dev = tmp_path / "dev.txt"
    dev.write_text("John NNP B-NP B-PER\n")
    result = cli(
        "lora-ner", "--recipe", str(write_recipe(ner_recipe(tmp_path, tiny_english_bert, train, dev)))
    )
    assert result.exit_code == 2
    assert "B-PER" in result.stderr and "dev.txt line 1" in result.stderr
    assert not (tmp_path / "run").exists()


def test_unsupported_peft_method_is_refused(tmp_path, tiny_english_bert, cli, write_recipe):
    few = first_sentences(tmp_path, 2)
    recipe = ner_recipe(tmp_path, tiny_english_bert, few, few, peft={"method": "prefix_tuning"})
    result = cli("lora-ner", "--recipe", str(write_recipe(recipe)))
    assert result.exit_code == 2 and "lora-ner supports none, lora and dora" in result.stderr


def test_peft_bias_and_modules_to_save_are_applied(tmp_path, tiny_english_bert, cli, write_recipe):
    """lora-ner builds its adapter with the same code as every command: peft.bias and peft.modules_to_save
    train what they name, the adapter saves it, and predict loads it back."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    from llmtune.ner.predict import tag_words
    from llmtune.ner.tagger import load_tagger

    few = first_sentences(tmp_path, 4)
    peft = {"method": "lora", "r": 4, "bias": "all", "modules_to_save": "embeddings.LayerNorm"}
    recipe = ner_recipe(tmp_path, tiny_english_bert, few, few, peft=peft)
    recipe["train"]["num_train_epochs"] = 2
    result = cli("lora-ner", "--recipe", str(write_recipe(recipe)))
    assert result.exit_code == 0, result.stderr
    run = tmp_path / "run"
    adapter_config = json.loads((run / "adapter_config.json").read_text())
    assert adapter_config["bias"] == "all"
    assert adapter_config["modules_to_save"] == ["classifier", "crf", "embeddings.LayerNorm"]
    base = load_file(str(tiny_english_bert / "model.safetensors"))
    with safe_open(str(run / "adapter_model.safetensors"), "pt") as saved:
        keys = list(saved.keys())
        bias = next(k for k in keys if k.endswith("layer.0.intermediate.dense.bias"))
        norm = next(k for k in keys if "embeddings.LayerNorm" in k and k.endswith("weight"))
        # trained: both moved away from the base encoder's values
        assert not torch.equal(saved.get_tensor(bias), base["encoder.layer.0.intermediate.dense.bias"])
        assert not torch.equal(saved.get_tensor(norm), base["embeddings.LayerNorm.weight"])
    tagger, tokenizer, config = load_tagger(run)
    assert len(tag_words(tagger, tokenizer, ["EU", "rejects", "German", "call"], config["max_length"])) == 4


@pytest.mark.parametrize(
    ("peft", "message"),
    [
        (
            {"method": "lora", "modules_to_save": ["pooler.dens"]},
            "peft.modules_to_save: 'pooler.dens' is not a module",
        ),
        (
            {"method": "lora", "num_virtual_tokens": 10},
            "peft.num_virtual_tokens is not used by peft.method 'lora'",
        ),
        ({"method": "none", "bias": "all"}, "peft.bias is not used by peft.method 'none'"),
    ],
    ids=["unknown-module", "prompt-key-under-lora", "bias-without-adapter"],
)
def test_peft_keys_that_would_not_apply_are_rejected(
    peft, message, tmp_path, tiny_english_bert, cli, write_recipe
):
    few = first_sentences(tmp_path, 2)
    result = cli(
        "lora-ner",
        "--recipe",
        str(write_recipe(ner_recipe(tmp_path, tiny_english_bert, few, few, peft=peft))),
    )
    assert result.exit_code == 2, result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr
    # caught when the recipe loads, or (a module name) when the model is built: never a finished run
    run = tmp_path / "run"
    assert not run.exists() or json.loads((run / "manifest.json").read_text())["status"] == "failed"
