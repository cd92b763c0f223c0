"""`llmtune export`: write a model where it is served, and prove the export answers like the source.

    llmtune export --model runs/quickstart --format ollama --quant q8_0 --out runs/export/quickstart
    llmtune export --model smollm2-135m-instruct --format gguf --quant q4_0 --out runs/export/smollm2-q4_0
    llmtune export --model runs/merged/quickstart --format bnb-4bit --out runs/export/quickstart-nf4
    llmtune export --recipe recipes/export/quickstart-ollama-q8_0.yaml

Read top to bottom: output folder checked → the source's config (its architecture refused here if the
format cannot take it, before any weights load) → tokenizer, chat template, Ollama template (an unknown
template is refused here too) → check data (the run's held-out conversations, --check-text, or built-in
text) → (folder opened, staged) source model in float32 (an adapter run merged in memory and checked as
`llmtune merge` checks it) → its logits and greedy answers → write (GGUF tensor by tensor / Modelfile /
bitsandbytes folder) → read the export back with an independent reader (transformers' GGUF reader, or plain
`from_pretrained`), and llama.cpp too with --verify llama-cpp → compare tokenizer, logits, perplexity,
top-1 agreement, greedy answers, and the Modelfile's TEMPLATE rendered against the Jinja template →
export_report.json → the folder appears under its name. A failed check is exit 1 and leaves nothing.
"""

from __future__ import annotations

import logging
import re
import resource
import time
from pathlib import Path

from llmtune.adapter_merge import FIXED_PROMPTS  # the prompts merge checks with, for the same reason
from llmtune.errors import LlmtuneError
from llmtune.export import check as checks
from llmtune.export.source import load_source, run_facts, source_config, source_tokenizer
from llmtune.manifest import model_entry
from llmtune.recipe import ExportRecipe
from llmtune.run_folder import RunFolder, recipe_inputs

log = logging.getLogger("llmtune")

REPORT = "export_report.json"
MODELFILE = "Modelfile"
PHASES = ("model", "write", "check")
DEFAULT_NEW_TOKENS = 32


def run(recipe: ExportRecipe, *, overwrite: bool = False) -> dict:
    from llmtune.export.gguf_writer import check_exportable

    settings = recipe.export
    gguf = settings.format in ("gguf", "ollama")
    folder = RunFolder.check(
        settings.output_dir,
        command="export",
        key="export.output_dir",
        overwrite=overwrite,
        staged=True,
        inputs=recipe_inputs(recipe),  # the model folder or GGUF, --check-text, --ollama-template
    )
    try:
        # ---- everything that can be refused is refused here, before the model loads
        config = source_config(recipe.model)
        if gguf:
            check_exportable(config, settings.quant)
        _check_readers(settings)
        facts = run_facts(recipe.model.name_or_path)
        tokenizer = source_tokenizer(recipe.model)
        _check_vocabulary(recipe.model.name_or_path, config, tokenizer)
        system = settings.system if settings.system is not None else facts.system
        ollama = None
        if settings.format == "ollama":
            from llmtune.export.ollama import modelfile_text, ollama_template

            ollama = ollama_template(
                tokenizer.chat_template, tokenizer, template_file=settings.ollama_template
            )
            modelfile_text("model.gguf", ollama, system=system)  # a SYSTEM it cannot quote fails here
        prompts = recipe.samples.prompts if recipe.samples else (facts.prompts or FIXED_PROMPTS)
        new_tokens = (
            recipe.samples.max_new_tokens if recipe.samples else facts.max_new_tokens
        ) or DEFAULT_NEW_TOKENS
        data = checks.check_data(tokenizer, settings, facts, prompts, system)
    except BaseException:
        folder.release()
        raise
    kind = settings.quant if gguf else settings.format
    log.info(
        "export %s -> %s %s; check on %d sequences (%s), %d prompts",
        recipe.model.name_or_path,
        settings.format,
        kind,
        len(data.sequences),
        data.source,
        len(data.prompts),
    )
    with folder.open(recipe, phases=PHASES, inputs={"model": recipe.model.name_or_path}) as run:
        started = time.time()
        run.phase("model")
        model, tokenizer, source_info = load_source(recipe.model)
        stop_ids = _stop_ids(model, tokenizer, facts)
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stop_ids[0]
        source_answers = [checks.greedy(model, ids, new_tokens, stop_ids, pad_id) for ids in data.prompt_ids]

        run.phase("write")
        written = time.time()
        name = _model_name(settings.name, recipe.model.name_or_path)
        notes: list[str] = []
        if gguf:
            from llmtune.export.gguf_writer import write_gguf

            filename = f"{name}-{settings.quant}.gguf"
            plan = write_gguf(
                model,
                tokenizer,
                run.dir / filename,
                settings.quant,
                name=name,
                chat_template=tokenizer.chat_template,
                end_of_turn=_end_of_turn(tokenizer, facts),
                add_bos=ollama.adds_bos if ollama is not None else None,
            )
            notes += plan.notes
            files = [filename]
            metadata_bytes = (run.dir / filename).stat().st_size - plan.tensor_bytes
            f16_bytes = _f16_bytes(plan) + metadata_bytes  # the same file with f16 tensors
            if ollama is not None:
                run.write_text(MODELFILE, modelfile_text(filename, ollama, system=system))
                files.append(MODELFILE)
        else:
            from llmtune.export.bnb import write_bnb

            bnb = write_bnb(model, tokenizer, run.dir, settings.format)
            files = sorted(p.name for p in run.dir.iterdir() if p.suffix in (".safetensors", ".json"))
            f16_bytes = 2 * sum(p.numel() for p in model.parameters())
        write_seconds = time.time() - written
        size = sum((run.dir / f).stat().st_size for f in files if f.endswith((".gguf", ".safetensors")))

        run.phase("check")
        if gguf:
            reader, reader_tokenizer, reader_notes = _read_gguf(run.dir, files[0])
        else:
            reader, reader_tokenizer, reader_notes = _read_folder(run.dir)
        notes += reader_notes
        tokenizer_report = checks.compare_tokenizers(tokenizer, reader_tokenizer, data)
        logits = checks.compare_logits(model, reader, data.sequences)
        answers = []
        for prompt, rendered_ids, expected in zip(prompts, data.prompt_ids, source_answers, strict=True):
            got = checks.greedy(reader, rendered_ids, new_tokens, stop_ids, pad_id)
            gap = None if got == expected else checks.divergence_gap(model, rendered_ids, expected, got)
            answers.append(
                {
                    "prompt": prompt,
                    "source": tokenizer.decode(expected, skip_special_tokens=True),
                    "export": tokenizer.decode(got, skip_special_tokens=True),
                    "identical": got == expected,
                    "source_margin_where_they_part": gap,
                    # only where answers must match: at lower bits a divergence is expected, not excused
                    "near_tie": kind in checks.ANSWERS_MUST_MATCH
                    and checks.is_near_tie(gap, logits["top2_logit_shift_max"]),
                }
            )
        template = []
        if ollama is not None and ollama.family != "file":
            from llmtune.export.ollama import check_template

            template = check_template(ollama, tokenizer.chat_template, tokenizer, system=system)
        second = {}
        if "llama-cpp" in settings.verify:
            from llmtune.export.llama_cpp import compare_with_llama_cpp

            second = compare_with_llama_cpp(
                run.dir / files[0], model, tokenizer, data, source_answers, new_tokens
            )
        del reader
        failures = checks.verdict(kind, logits, tokenizer_report, answers, template, settings.logit_bound)
        failures += second.get("failures", [])
        _show(settings.format, kind, size, f16_bytes, logits, answers)
        if failures:
            raise checks.ExportCheckFailed(
                f"the {settings.format} {kind} export of {recipe.model.name_or_path} failed its check "
                f"against the source; nothing was written to {settings.output_dir}. "
                + " ".join(f"({i}) {f}." for i, f in enumerate(failures, 1)),
            )
        report = {
            "format": settings.format,
            "type": kind,
            "source": {"name": recipe.model.name_or_path, **source_info},
            "files": files,
            "file_bytes": size,
            "f16_bytes": f16_bytes,
            "compression_vs_f16": f16_bytes / size,
            "check_data": data.source,
            **logits,
            "logit_bound": settings.logit_bound
            if settings.logit_bound is not None
            else checks.LOGIT_BOUNDS.get(kind),
            "perplexity_bound": checks.PERPLEXITY_BOUNDS.get(kind),
            "answers_must_match": kind in checks.ANSWERS_MUST_MATCH,
            "greedy_identical": sum(a["identical"] for a in answers),
            "greedy_near_ties": sum(a["near_tie"] for a in answers),
            "greedy_checked": len(answers),
            "answers": answers,
            "tokenizer": tokenizer_report,
            "ollama": (
                {"family": ollama.family, "stop": ollama.stop, "system": system, "template_check": template}
                if ollama is not None
                else None
            ),
            "llama_cpp": second or None,
            "bitsandbytes": None if gguf else bnb,
            "notes": notes,
            "write_seconds": round(write_seconds, 1),
            "seconds": round(time.time() - started, 1),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        }
        run.set_model(
            model_entry(model, name=name, source="export", path=settings.output_dir, peft="none", format=kind)
        )
        run.write_json(REPORT, report)
        log.info(
            "export checked: %s %s, %.1f MB (x%.2f vs f16), perplexity %.4g -> %.4g, top-1 %.1f%%, greedy "
            "%d/%d identical",
            settings.format,
            kind,
            size / 1e6,
            f16_bytes / size,
            logits["perplexity_source"],
            logits["perplexity_export"],
            100 * logits["top1_agreement"],
            report["greedy_identical"],
            len(answers),
        )
        return run.finish(
            {
                k: report[k]
                for k in ("type", "file_bytes", "perplexity_ratio", "top1_agreement", "max_abs_logit")
            },
            summary=False,
        )


# ------------------------------------------------------------------------------------------ helpers
def _check_readers(settings) -> None:
    import importlib.util

    if settings.format.startswith("bnb") and importlib.util.find_spec("bitsandbytes") is None:
        raise LlmtuneError(f"--format {settings.format} needs bitsandbytes: pip install bitsandbytes")
    if "llama-cpp" in settings.verify and importlib.util.find_spec("llama_cpp") is None:
        raise LlmtuneError(
            "--verify llama-cpp needs llama-cpp-python, which is not installed.",
            hint='Install it with: CMAKE_ARGS="-DGGML_NATIVE=OFF" pip install llama-cpp-python (a build from '
            "source, several minutes), or leave --verify out: transformers' reader still checks the export.",
        )


def _check_vocabulary(name: str, config, tokenizer) -> None:
    """A tokenizer with more tokens than the model has embedding rows would be exported with untrained
    rows (load_causal_lm resizes for training); an adapter run carries its resized rows, so it passes."""
    from llmtune.adapters import is_adapter_folder

    rows = getattr(config.get_text_config(), "vocab_size", None)
    if rows and len(tokenizer) > rows and not (Path(name).expanduser().is_dir() and is_adapter_folder(name)):
        raise LlmtuneError(
            f"the tokenizer of {name} has {len(tokenizer)} tokens but the model's embedding has {rows} rows: ids "
            f"{rows}..{len(tokenizer) - 1} have no trained embedding, so the export would answer from random rows.",
            hint="Export the run folder the model was trained in (its tokenizer matches its weights), or give "
            "model.tokenizer the tokenizer the model was trained with.",
        )


def _model_name(given: str | None, source: str) -> str:
    name = given or Path(source.rstrip("/")).name or "model"
    name = Path(name).stem if name.endswith(".gguf") else name
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-") or "model"


def _end_of_turn(tokenizer, facts) -> str | None:
    """The token that ends an assistant turn: the run's template's, else one the chat template writes."""
    from llmtune.data.templates import END_OF_TURN

    if facts.template in END_OF_TURN:
        return END_OF_TURN[facts.template]
    template = tokenizer.chat_template or ""
    vocab = tokenizer.get_vocab()
    for token in ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>"):
        if token in template and token in vocab:
            return token
    return tokenizer.eos_token


def _stop_ids(model, tokenizer, facts) -> list[int]:
    ids = set()
    eos = model.generation_config.eos_token_id
    ids.update(eos if isinstance(eos, list) else [eos])
    ids.add(tokenizer.eos_token_id)
    end = _end_of_turn(tokenizer, facts)
    if end is not None:
        ids.add(tokenizer.convert_tokens_to_ids(end))
    ids.discard(None)
    return sorted(ids)


def _f16_bytes(plan) -> int:
    """The size of the same tensors written as f16 (the usual unquantised GGUF), for the compression ratio."""
    import numpy as np

    return int(sum(int(np.prod(shape)) * (4 if len(shape) < 2 else 2) for _, _, shape, _ in plan.tensors))


def _read_gguf(folder: Path, filename: str):
    """The GGUF as transformers reads it (an independent reader: it de-quantises with the gguf package and
    un-permutes the llama tensors with its own code), with its loading report required clean."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    notes = []
    config = AutoConfig.from_pretrained(folder, gguf_file=filename)
    if config.model_type == "gpt2" and getattr(config, "n_ctx", None) and config.n_ctx != config.n_positions:
        # transformers maps gpt2.context_length to n_ctx only, leaving the position table at its 1024
        # default; llama.cpp sizes it from context_length. Same key, read as llama.cpp reads it.
        config.n_positions = config.n_ctx
        notes.append(
            f"gpt2: transformers' GGUF reader takes n_positions from context_length ({config.n_ctx})."
        )
    model, info = _loading(
        lambda: AutoModelForCausalLM.from_pretrained(
            folder, gguf_file=filename, config=config, dtype=torch.float32, output_loading_info=True
        )
    )
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=filename)
    _require_clean(info, "transformers' GGUF reader")
    return model.eval(), tokenizer, notes


def _read_folder(folder: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model, info = _loading(lambda: AutoModelForCausalLM.from_pretrained(folder, output_loading_info=True))
    _require_clean(info, "from_pretrained")
    return model.eval(), AutoTokenizer.from_pretrained(folder), []


def _loading(load):
    import transformers

    records: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.levelno >= logging.WARNING:
                records.append(record.getMessage())

    handler = Collect()
    library = transformers.logging.get_logger("transformers")
    library.addHandler(handler)
    try:
        model, info = load()
    finally:
        library.removeHandler(handler)
    info = {k: v for k, v in info.items() if v}
    serious = [r for r in records if "MISMATCH" in r or "missing" in r.lower() or "unexpected" in r.lower()]
    if serious:
        info["warnings"] = serious
    return model, info


def _require_clean(info: dict, reader: str) -> None:
    if info:
        raise checks.ExportCheckFailed(
            f"{reader} does not load the export cleanly: {info}; nothing was written to --out."
        )


def _show(fmt: str, kind: str, size: int, f16_bytes: int, logits: dict, answers: list[dict]) -> None:
    rows = [
        ("format", f"{fmt} {kind}"),
        ("file size", f"{size / 1e6:.1f} MB ({f16_bytes / size:.2f}x smaller than f16)"),
        (
            "perplexity",
            f"{logits['perplexity_source']:.4g} -> {logits['perplexity_export']:.4g} (x{logits['perplexity_ratio']:.4f})",
        ),
        ("top-1 agreement", f"{100 * logits['top1_agreement']:.2f}% of {logits['positions']} positions"),
        ("max |d logit|", f"{logits['max_abs_logit']:.3g}"),
        ("greedy answers", f"{sum(a['identical'] for a in answers)}/{len(answers)} identical"),
    ]
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        log.info("  %s  %s", key.ljust(width), value)
    for a in answers:
        if not a["identical"]:
            log.info(
                "  prompt  %r\n    source  %r\n    export  %r%s",
                a["prompt"][:70],
                a["source"][:90],
                a["export"][:90],
                "  (near tie)" if a["near_tie"] else "",
            )
