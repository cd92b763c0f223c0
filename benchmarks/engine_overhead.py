"""What the chat/serve engine costs over a plain `model.generate`, and what a thread per answer cost.

    .venv/bin/python benchmarks/engine_overhead.py [--pairs 3] [--model smollm2-135m-instruct]

Sides (each a fresh process that loads the model, then answers 3 prompts greedily, 64 new tokens each):
- plain:   `model.generate` in the main thread, no streaming (what a hand-written script does);
- engine:  llmtune's Engine.complete (streamed text deltas, stop strings, cancellation; one long-lived
           generation thread);
- thread-per-answer: the same plain generate, in a new thread for every answer (the engine's first design).
The rate is generated tokens/s; the ratios are per interleaved round (paired.py).
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from paired import Side, compare, run_json, tokens_per_second  # noqa: E402

PROMPTS = ["Write a story about a dragon.", "Explain how a bicycle works.", "Describe the ocean."]
TOKENS = 64


def measure(side: str, model_name: str) -> dict:
    import torch

    from llmtune.serving.engine import Sampling, load_engine

    engine = load_engine(model_name)
    # Every side makes exactly TOKENS tokens: no end-of-turn stop (plain generate is given none either).
    engine.model.generation_config.eos_token_id = None
    engine.stop_ids = set()
    prompts = [engine.encode_chat([{"role": "user", "content": p}]) for p in PROMPTS]

    def plain(ids):
        t = torch.tensor([ids])
        with torch.no_grad():
            out = engine.model.generate(
                input_ids=t,
                attention_mask=torch.ones_like(t),
                max_new_tokens=TOKENS,
                do_sample=False,
                eos_token_id=None,
                pad_token_id=engine.tokenizer.pad_token_id,
            )
        return out.shape[1] - len(ids)

    started, tokens = time.perf_counter(), 0
    for ids in prompts:
        if side == "plain":
            tokens += plain(ids)
        elif side == "thread-per-answer":
            got = []
            thread = threading.Thread(target=lambda ids=ids, got=got: got.append(plain(ids)))
            thread.start()
            thread.join()
            tokens += got[0]
        else:
            tokens += engine.complete(ids, Sampling(max_new_tokens=TOKENS, temperature=0)).completion_tokens
    return {"tokens": tokens, "seconds": time.perf_counter() - started}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--side", help=argparse.SUPPRESS)
    parser.add_argument("--out", default="runs/engine-overhead.json")
    args = parser.parse_args()
    if args.side:
        print(json.dumps(measure(args.side, args.model)))
        return

    def side(name):
        command = [sys.executable, __file__, "--side", name, "--model", args.model]
        return Side(name, lambda _round: run_json(command))

    report = compare(
        [side("plain"), side("engine"), side("thread-per-answer")],
        rate=tokens_per_second,
        rate_name="tokens/s",
        pairs=args.pairs,
    )
    print(report.text())
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report.to_dict(), indent=1) + "\n")


if __name__ == "__main__":
    main()
