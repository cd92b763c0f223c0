"""A short real lora-ner run on the demo MiniLM-L6 (LoRA + CRF) raises CoNLL-2003 dev F1."""

import json

from tests.conftest import REPO


def test_minilm_lora_crf_learns_conll(tmp_path, cli):
    out = tmp_path / "ner"
    result = cli(
        "lora-ner",
        "--recipe",
        str(REPO / "recipes" / "lora-ner" / "minilm-conll2003.yaml"),
        "--set",
        f"train.output_dir={out}",
        "--set",
        "data.max_samples=1200",
        "--set",
        "train.per_device_train_batch_size=16",
        "--set",
        "train.num_train_epochs=1",
        "--set",
        "train.eval_on_start=true",
        "--set",
        "train.disable_tqdm=true",
    )
    assert result.exit_code == 0, result.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    f1 = [row["eval_f1"] for row in metrics["eval"]]
    assert f1[0] < 0.1 and f1[-1] > 0.3, f1
