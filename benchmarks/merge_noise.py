"""The figures behind merge's bound (README, *Merge*): float32 noise of the adapter model against the
difference of correct and deliberately wrong merges, on SmolLM2-135M-Instruct with a random LoRA r16 on all
linear layers (lora_B ~ N(0, B_STD)), on the quickstart's first four conversations.

    .venv/bin/python benchmarks/merge_noise.py 0.01 0      # seeds 0-3 and stds 0.003-0.03 in the README
"""

import copy
import json
import sys
import time
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer

torch.set_num_threads(2)
B_STD = float(sys.argv[1]) if len(sys.argv) > 1 else 0.01
SEED = int(sys.argv[2]) if len(sys.argv) > 2 else 0
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from llmtune.home import llmtune_home  # noqa: E402

BASE = llmtune_home() / "models" / "smollm2-135m-instruct"
tok = AutoTokenizer.from_pretrained(BASE)
qa = (REPO / "recipes" / "data" / "llmtune-qa.jsonl").read_text(encoding="utf-8").split("\n")
rows = [json.loads(line) for line in qa if line.strip()][:4]
texts = [tok.apply_chat_template(r["messages"], tokenize=False) for r in rows]
ids = [tok(t, return_tensors="pt", add_special_tokens=False)["input_ids"] for t in texts]
print("prompt lengths", [i.shape[1] for i in ids])

torch.manual_seed(SEED)
base = AutoModelForCausalLM.from_pretrained(BASE, dtype=torch.float32).eval()
model = get_peft_model(base, LoraConfig(r=16, lora_alpha=32, target_modules="all-linear")).eval()
for name, p in model.named_parameters():
    if "lora_B" in name:
        torch.nn.init.normal_(p, std=B_STD)


def logits(m):
    with torch.no_grad():
        return [m(i).logits[0].clone() for i in ids]


def mx(a, b):
    return max(float((x.double() - y.double()).abs().max()) for x, y in zip(a, b, strict=True))


t = time.time()
a32 = logits(model)
with model.disable_adapter():
    b32 = logits(model)
print(
    f"fp32 passes {time.time() - t:.1f}s; adapter effect max|adapter-base| = {mx(a32, b32):.3g}; max|logit| = {max(float(x.abs().max()) for x in a32):.3g}"
)
t = time.time()
model.double()
a64 = logits(model)
model.float()
print(f"fp64 pass {time.time() - t:.1f}s")
noise = mx(a32, a64)
print(f"noise  max|adapter32 - adapter64| = {noise:.3g}")

from peft.tuners.tuners_utils import BaseTunerLayer  # noqa: E402

from llmtune.stages.merge import _merge_in_float64  # noqa: E402

state = copy.deepcopy(model.state_dict())


def build(scale=1.0, drop_layer=None, peft_float32=False):
    torch.manual_seed(SEED)
    b = AutoModelForCausalLM.from_pretrained(BASE, dtype=torch.float32).eval()
    m = get_peft_model(b, LoraConfig(r=16, lora_alpha=32, target_modules="all-linear")).eval()
    m.load_state_dict(state)
    for name, mod in m.named_modules():
        if isinstance(mod, BaseTunerLayer):
            if drop_layer is not None and f"layers.{drop_layer}." in name and name.endswith("o_proj"):
                mod.lora_B["default"].weight.data.zero_()
            mod.scaling["default"] *= scale
    if peft_float32:
        return m.merge_and_unload()
    return _merge_in_float64(m)


for label, kw in [
    ("correct merge (float64 sum)", {}),
    ("PEFT float32 merge", {"peft_float32": True}),
    ("delta x1.01", {"scale": 1.01}),
    ("delta x1.001", {"scale": 1.001}),
    ("layer 29 o_proj delta dropped", {"drop_layer": 29}),
    ("layer 0 o_proj dropped", {"drop_layer": 0}),
]:
    merged = build(**kw)
    m32 = logits(merged)
    merged.double()
    m64 = logits(merged)
    merged.float()
    print(
        f"{label:32s} |m32-a32|={mx(m32, a32):.3g}  |m32-a64|={mx(m32, a64):.3g}  |m64-a64|={mx(m64, a64):.3g}  |m32-m64|={mx(m32, m64):.3g}  ratio(|m32-a32|/noise)={mx(m32, a32) / noise:.2f}"
    )
    del merged
