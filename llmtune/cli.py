"""The `llmtune` command line: one thin function per subcommand; each parses, then calls a stage.

Imports of torch/transformers happen inside the functions, so `llmtune --help` stays instant.
"""

from __future__ import annotations

import logging
import os
import sys
from contextlib import contextmanager

import typer

from llmtune import __version__

app = typer.Typer(
    name="llmtune",
    help="Train language models from YAML recipes: pretrain, sft, dpo, lora-ner; check data and plan memory "
    "before training; merge adapters and evaluate after.",
    epilog="Examples:\n\n"
    "  llmtune sft --recipe recipes/quickstart.yaml\n\n"
    "  llmtune data check --recipe recipes/sft/smollm2-135m-lora-medical.yaml\n\n"
    "  llmtune lora-ner --recipe recipes/lora-ner/minilm-conll2003.yaml\n\n"
    "  llmtune pretrain --recipe recipes/pretrain/smollm2-135m-continued-lora.yaml\n\n"
    "  llmtune pretrain --recipe recipes/pretrain/gpt2-124m-the-verdict.yaml --print-config\n\n"
    "  llmtune plan --recipe recipes/quickstart.yaml --device-memory 8GB\n\n"
    "  llmtune merge --adapter runs/quickstart --out runs/merged/quickstart\n\n"
    "  llmtune eval --recipe recipes/eval/quickstart-compare.yaml\n\n"
    "  llmtune fetch smollm2-135m-instruct",
    no_args_is_help=True,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
    pretty_exceptions_enable=False,
)

RecipeOption = typer.Option(..., "--recipe", "-r", help="YAML recipe file.", show_default=False)
SetOption = typer.Option(
    None,
    "--set",
    "-s",
    help="Override a recipe value: section.key=value (value read as YAML). Repeatable.",
    show_default=False,
)
PrintConfigOption = typer.Option(
    False, "--print-config", help="Print the resolved recipe (defaults filled in) and exit."
)
OverwriteOption = typer.Option(
    False, "--overwrite", help="Replace the contents of a non-empty train.output_dir."
)
ResumeOption = typer.Option(
    False, "--resume", help="Continue the run in train.output_dir from its newest complete checkpoint."
)
DebugOption = typer.Option(False, "--debug", help="Show Python tracebacks (also: LLMTUNE_DEBUG=1).")
_LAUNCH = "Multi-process"
NprocOption = typer.Option(
    None,
    "--nproc",
    help="Processes (GPUs) per node; > 1 re-launches under accelerate.",
    rich_help_panel=_LAUNCH,
)
StrategyOption = typer.Option(
    None, "--strategy", help="single, ddp, fsdp, zero2, zero3 or zero3-offload.", rich_help_panel=_LAUNCH
)
AccelerateConfigOption = typer.Option(
    None, "--accelerate-config", help="Your own accelerate config file.", rich_help_panel=_LAUNCH
)
NnodesOption = typer.Option(None, "--nnodes", help="Machines taking part.", rich_help_panel=_LAUNCH)
NodeRankOption = typer.Option(
    None, "--node-rank", help="This machine's rank (0 = main).", rich_help_panel=_LAUNCH
)
MainIpOption = typer.Option(
    None, "--main-process-ip", help="Address of the rank-0 machine.", rich_help_panel=_LAUNCH
)
MainPortOption = typer.Option(
    None, "--main-process-port", help="Port on the rank-0 machine.", rich_help_panel=_LAUNCH
)
_ARGV: list[str] | None = None  # the command line, for re-launching under accelerate (set by main)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"llmtune {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    pass


@contextmanager
def user_errors(debug: bool):
    """Print an LlmtuneError as one paragraph and exit 2; keep tracebacks for --debug."""
    from llmtune.errors import EXIT_USER_ERROR, LlmtuneError

    debug = debug or os.environ.get("LLMTUNE_DEBUG", "") not in ("", "0")
    _configure_logging()
    try:
        yield
    except LlmtuneError as exc:
        if debug:
            raise
        typer.echo(f"llmtune: error: {exc.render()}", err=True)
        raise typer.Exit(getattr(exc, "exit_code", EXIT_USER_ERROR)) from None
    except KeyboardInterrupt:
        if debug:
            raise
        typer.echo("llmtune: interrupted.", err=True)
        raise typer.Exit(130) from None
    except typer.Exit:
        raise
    except Exception as exc:
        if debug:
            raise
        typer.echo(
            f"llmtune: unexpected {type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}\n"
            "This is a failure inside llmtune or a library, not a recipe problem. Rerun with --debug for the "
            "traceback (a run folder also has it in run.log).",
            err=True,
        )
        raise typer.Exit(1) from None


class _ConsoleHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is at the time (test runners swap it between invocations)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):
        pass


def _configure_logging() -> None:
    logger = logging.getLogger("llmtune")
    if not any(isinstance(h, _ConsoleHandler) for h in logger.handlers):
        handler = _ConsoleHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
    # In a multi-process run only rank 0 reports; the others speak up for warnings and errors.
    logger.setLevel(logging.INFO if os.environ.get("RANK", "0") == "0" else logging.WARNING)
    logger.propagate = False


def _load(recipe: str, recipe_class_name: str, overrides: list[str] | None):
    from llmtune import recipe as recipes

    loaded = recipes.load_recipe(recipe, getattr(recipes, recipe_class_name), overrides or [])
    for note in loaded.notes:
        logging.getLogger("llmtune").warning("note: %s", note)
    return loaded


def _launch_sets(nproc, strategy, accelerate_config, nnodes, node_rank, main_process_ip, main_process_port):
    """The multi-process flags as `--set launch.key=value` overrides (flags win over the recipe)."""
    import json

    values = {
        "nproc": nproc,
        "strategy": strategy,
        "accelerate_config": accelerate_config,
        "nnodes": nnodes,
        "node_rank": node_rank,
        "main_process_ip": main_process_ip,
        "main_process_port": main_process_port,
    }
    return [f"launch.{key}={json.dumps(value)}" for key, value in values.items() if value is not None]


def _train(
    stage_name, recipe_class, recipe, set_, print_config, overwrite, resume, debug, launch_sets=()
) -> None:
    """The body of every training command: load and check the recipe, re-launch it in several processes
    when asked, else run its stage."""
    import importlib

    from llmtune import launch

    with user_errors(debug):
        loaded = _load(recipe, recipe_class, [*(set_ or []), *launch_sets])
        if print_config:
            typer.echo(loaded.to_yaml(), nl=False)
            return
        request = launch.request_from(loaded.launch, {})
        if request.world_size > 1 and not launch.inside_launcher():
            if _ARGV is None:
                from llmtune.errors import LlmtuneError

                raise LlmtuneError(
                    "a multi-process launch needs the llmtune command line (not an embedded call)."
                )
            raise typer.Exit(launch.relaunch(request, _ARGV))
        from llmtune.interrupt import signals_handled

        stage = importlib.import_module(f"llmtune.stages.{stage_name}")
        try:
            with signals_handled():
                stage.run(loaded, overwrite=overwrite, resume=resume)
        finally:
            if launch.inside_launcher():
                launch.finish()


@app.command(
    help="Continued pretraining (full, LoRA, DoRA) or pretraining from scratch on raw text.",
    epilog="Example: llmtune pretrain --recipe recipes/pretrain/smollm2-135m-continued-lora.yaml --set train.max_steps=5",
)
def pretrain(
    recipe: str = RecipeOption,
    set_: list[str] = SetOption,
    print_config: bool = PrintConfigOption,
    overwrite: bool = OverwriteOption,
    resume: bool = ResumeOption,
    debug: bool = DebugOption,
    nproc: int = NprocOption,
    strategy: str = StrategyOption,
    accelerate_config: str = AccelerateConfigOption,
    nnodes: int = NnodesOption,
    node_rank: int = NodeRankOption,
    main_process_ip: str = MainIpOption,
    main_process_port: int = MainPortOption,
) -> None:
    _train(
        "pretrain",
        "PretrainRecipe",
        recipe,
        set_,
        print_config,
        overwrite,
        resume,
        debug,
        _launch_sets(
            nproc, strategy, accelerate_config, nnodes, node_rank, main_process_ip, main_process_port
        ),
    )


@app.command(
    help="Supervised fine-tuning on conversations (full, LoRA, DoRA, QLoRA, prompt/prefix/P-tuning, IA3, freeze).",
    epilog="Example: llmtune sft --recipe recipes/quickstart.yaml --set data.packing=true",
)
def sft(
    recipe: str = RecipeOption,
    set_: list[str] = SetOption,
    print_config: bool = PrintConfigOption,
    overwrite: bool = OverwriteOption,
    resume: bool = ResumeOption,
    debug: bool = DebugOption,
    nproc: int = NprocOption,
    strategy: str = StrategyOption,
    accelerate_config: str = AccelerateConfigOption,
    nnodes: int = NnodesOption,
    node_rank: int = NodeRankOption,
    main_process_ip: str = MainIpOption,
    main_process_port: int = MainPortOption,
) -> None:
    _train(
        "sft",
        "SftRecipe",
        recipe,
        set_,
        print_config,
        overwrite,
        resume,
        debug,
        _launch_sets(
            nproc, strategy, accelerate_config, nnodes, node_rank, main_process_ip, main_process_port
        ),
    )


@app.command(
    help="Preference tuning on chosen/rejected pairs: DPO (any TRL loss type), ORPO, SimPO, KTO.",
    epilog="Example: llmtune dpo --recipe recipes/dpo/smollm2-135m-dpo-en.yaml --set dpo.loss_type=ipo",
)
def dpo(
    recipe: str = RecipeOption,
    set_: list[str] = SetOption,
    print_config: bool = PrintConfigOption,
    overwrite: bool = OverwriteOption,
    resume: bool = ResumeOption,
    debug: bool = DebugOption,
    nproc: int = NprocOption,
    strategy: str = StrategyOption,
    accelerate_config: str = AccelerateConfigOption,
    nnodes: int = NnodesOption,
    node_rank: int = NodeRankOption,
    main_process_ip: str = MainIpOption,
    main_process_port: int = MainPortOption,
) -> None:
    _train(
        "dpo",
        "DpoRecipe",
        recipe,
        set_,
        print_config,
        overwrite,
        resume,
        debug,
        _launch_sets(
            nproc, strategy, accelerate_config, nnodes, node_rank, main_process_ip, main_process_port
        ),
    )


data_app = typer.Typer(help="Inspect training data without training.", no_args_is_help=True)
app.add_typer(data_app, name="data")


@data_app.command(
    "check",
    help="The dataset doctor: detect the format, validate every row, count skips and truncations, token "
    "length stats, padding with and without packing, and samples with the trained tokens marked.",
    epilog="Example: llmtune data check --recipe recipes/sft/smollm2-135m-lora-medical.yaml --samples 2",
)
def data_check(
    recipe: str = RecipeOption,
    set_: list[str] = SetOption,
    samples: int = typer.Option(2, "--samples", "-n", help="Examples to render with their loss mask."),
    color: str = typer.Option(
        "auto", "--color", help="auto | always | never: mark trained tokens in colour."
    ),
    debug: bool = DebugOption,
) -> None:
    with user_errors(debug):
        from llmtune.recipe import load_yaml_file

        kind = "DpoRecipe" if "dpo" in load_yaml_file(recipe) else "SftRecipe"
        loaded = _load(recipe, kind, set_)
        from llmtune.stages import data_check as stage

        use_color = color == "always" or (color == "auto" and sys.stdout.isatty())
        typer.echo(stage.run(loaded, samples=samples, color=use_color))


ner_app = typer.Typer(
    help="Named-entity tagger: a BERT-like encoder + linear + CRF, trained with LoRA. "
    "`llmtune lora-ner --recipe FILE` trains; `llmtune lora-ner predict --model RUN TEXT` tags text.",
    epilog="Example: llmtune lora-ner --recipe recipes/lora-ner/minilm-conll2003.yaml",
)
app.add_typer(ner_app, name="lora-ner")


@ner_app.callback(invoke_without_command=True)
def lora_ner(
    ctx: typer.Context,
    recipe: str = typer.Option(
        None, "--recipe", "-r", help="YAML recipe file (to train).", show_default=False
    ),
    set_: list[str] = SetOption,
    print_config: bool = PrintConfigOption,
    overwrite: bool = OverwriteOption,
    resume: bool = ResumeOption,
    debug: bool = DebugOption,
    nproc: int = NprocOption,
    strategy: str = StrategyOption,
    accelerate_config: str = AccelerateConfigOption,
    nnodes: int = NnodesOption,
    node_rank: int = NodeRankOption,
    main_process_ip: str = MainIpOption,
    main_process_port: int = MainPortOption,
) -> None:
    if ctx.invoked_subcommand is not None:
        return
    with user_errors(debug):
        from llmtune.errors import LlmtuneError

        if recipe is None:
            raise LlmtuneError(
                "llmtune lora-ner needs --recipe FILE to train (or: lora-ner predict --model RUN TEXT)."
            )
    _train(
        "lora_ner",
        "NerRecipe",
        recipe,
        set_,
        print_config,
        overwrite,
        resume,
        debug,
        _launch_sets(
            nproc, strategy, accelerate_config, nnodes, node_rank, main_process_ip, main_process_port
        ),
    )


@ner_app.command(
    "predict", help="Tag raw text (arguments, or --file with one text per line) and print the entities."
)
def lora_ner_predict(
    texts: list[str] = typer.Argument(None, help="Text to tag."),
    model: str = typer.Option(..., "--model", "-m", help="A lora-ner run folder."),
    file: str = typer.Option(None, "--file", "-f", help="A text file, one text per line."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON lines instead of a table."),
    debug: bool = DebugOption,
) -> None:
    with user_errors(debug):
        import json
        from pathlib import Path

        from llmtune.data.ner import entities
        from llmtune.errors import LlmtuneError
        from llmtune.stages.lora_ner import load_tagger, split_text, tag_words

        items = list(texts or [])
        if file:
            if not Path(file).is_file():
                raise LlmtuneError(f"--file {file} does not exist.")
            items += [line for line in Path(file).read_text(encoding="utf-8").splitlines() if line.strip()]
        if not items:
            raise LlmtuneError("give text to tag as arguments or with --file.")
        tagger, tokenizer, config = load_tagger(Path(model))
        for text in items:
            words, offsets = split_text(text, config.get("unit", "word"))
            tags = tag_words(tagger, tokenizer, words, config.get("max_length", 256)) if words else []
            found = [
                {
                    "type": kind,
                    "text": text[offsets[s][0] : offsets[e - 1][1]],
                    "start": offsets[s][0],
                    "end": offsets[e - 1][1],
                }
                for kind, s, e in entities(tags)
            ]
            if as_json:
                typer.echo(json.dumps({"text": text, "entities": found}, ensure_ascii=False))
            else:
                typer.echo(text)
                for ent in found:
                    typer.echo(f"  {ent['type']:<12} {ent['text']}  [{ent['start']}, {ent['end']})")


@app.command(
    help="Estimate memory per device (weights, gradients, optimizer states, activations, logits) and tokens per "
    "step for a pretrain/sft/dpo recipe, from the model config alone (no weights loaded); say whether it fits "
    "and what to change when it does not.",
    epilog="Example: llmtune plan --recipe recipes/sft/llama3-8b-qlora-medical.yaml --device-memory 24GB",
)
def plan(
    recipe: str = RecipeOption,
    device_memory: str = typer.Option(
        None, "--device-memory", help="Memory per device, e.g. 24GB, 80GiB (default: the detected GPU)."
    ),
    nproc: int = typer.Option(None, "--nproc", help="Processes / GPUs (default: the recipe's launch.nproc)."),
    strategy: str = typer.Option(None, "--strategy", help="single, ddp, fsdp, zero2, zero3, zero3-offload."),
    target: str = typer.Option(
        "gpu", "--target", help="gpu (16-bit where the recipe allows) or cpu (float32)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the plan as JSON."),
    set_: list[str] = SetOption,
    debug: bool = DebugOption,
) -> None:
    with user_errors(debug):
        import json

        from llmtune.errors import LlmtuneError
        from llmtune.plan import estimate, parse_memory
        from llmtune.recipe import load_yaml_file

        raw = load_yaml_file(recipe)
        data = raw.get("data") if isinstance(raw.get("data"), dict) else {}
        if "dpo" in raw:
            kind = "DpoRecipe"
        elif "block_size" in data or "txt_document" in data or "from_config" in (raw.get("model") or {}):
            kind = "PretrainRecipe"
        else:
            kind = "SftRecipe"
        loaded = _load(recipe, kind, set_)
        if target not in ("gpu", "cpu"):
            raise LlmtuneError(f"--target {target!r}: expected gpu or cpu.")
        result = estimate(
            loaded,
            device_memory_bytes=parse_memory(device_memory) if device_memory else None,
            nproc=nproc or loaded.launch.nproc * loaded.launch.nnodes,
            strategy=strategy or loaded.launch.strategy,
            target=target,
        )
        typer.echo(json.dumps(result.to_dict(), indent=2) if as_json else result.render())


@app.command(
    help="Merge a LoRA/DoRA/IA3 adapter into its base and write a plain HF model folder; the merged model "
    "is loaded back and checked against the adapter (logits and greedy answers) before --out is written.",
    epilog="Example: llmtune merge --adapter runs/quickstart --out models/smollm2-quickstart",
)
def merge(
    adapter: str = typer.Option(
        ..., "--adapter", "-a", help="Adapter folder (an llmtune run) or hub id.", show_default=False
    ),
    out: str = typer.Option(..., "--out", "-o", help="Folder for the merged model.", show_default=False),
    base: str = typer.Option(
        None, "--base", help="Base model (default: the one the adapter was trained on).", show_default=False
    ),
    dtype: str = typer.Option("float32", "--dtype", help="Saved dtype: float32, bfloat16 or float16."),
    max_shard_size: str = typer.Option("2GB", "--max-shard-size", help="Largest safetensors shard."),
    tolerance: float = typer.Option(
        1e-4, "--tolerance", help="Largest allowed |merged - adapter| logit difference (float32)."
    ),
    hub: str = typer.Option("auto", "--hub", help="auto, hf or modelscope (for hub ids)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a non-empty --out (after the check)."),
    debug: bool = DebugOption,
) -> None:
    with user_errors(debug):
        from llmtune.errors import LlmtuneError

        if dtype not in ("float32", "bfloat16", "float16"):
            raise LlmtuneError(f"--dtype {dtype!r}: expected float32, bfloat16 or float16.")
        if not tolerance > 0:
            raise LlmtuneError(f"--tolerance {tolerance}: must be a positive number.")
        if hub not in ("auto", "hf", "modelscope"):
            raise LlmtuneError(f"--hub {hub!r}: expected auto, hf or modelscope.")
        from llmtune.stages import merge as stage

        stage.run(
            adapter,
            out,
            base=base,
            dtype=dtype,
            max_shard_size=max_shard_size,
            overwrite=overwrite,
            tolerance=tolerance,
            hub=hub,
        )


@app.command(
    name="eval",
    help="Evaluate a model (base, GGUF, merged folder, adapter run, lora-ner run): perplexity, multiple-choice "
    "benchmarks (MMLU/CMMLU layouts), generation, NER F1; --compare A B puts two models side by side.",
    epilog="Examples: llmtune eval --recipe recipes/eval/quickstart-compare.yaml  |  "
    "llmtune eval --model smollm2-135m-instruct --mcq ../shared/data/mcq/mmlu/dev",
)
def eval_(
    recipe: str = typer.Option(None, "--recipe", "-r", help="YAML eval recipe.", show_default=False),
    model: str = typer.Option(None, "--model", "-m", help="Model to evaluate (sets model.name_or_path)."),
    compare: tuple[str, str] = typer.Option(
        None, "--compare", help="Two models to evaluate side by side.", show_default=False
    ),
    perplexity: list[str] = typer.Option(None, "--perplexity", help="Text file for perplexity. Repeatable."),
    mcq: list[str] = typer.Option(None, "--mcq", help="MMLU/CMMLU CSV file or folder. Repeatable."),
    generate: list[str] = typer.Option(None, "--generate", help="A prompt to answer. Repeatable."),
    ner: list[str] = typer.Option(None, "--ner", help="BIO or span-JSON file for NER F1. Repeatable."),
    out: str = typer.Option(None, "--out", "-o", help="Results folder (sets eval.output_dir)."),
    set_: list[str] = SetOption,
    print_config: bool = PrintConfigOption,
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a non-empty results folder."),
    debug: bool = DebugOption,
) -> None:
    with user_errors(debug):
        import json
        from pathlib import Path

        from llmtune.recipe import EvalRecipe, load_yaml_file, recipe_from_mapping

        raw = load_yaml_file(recipe) if recipe else {}
        base_dir = Path(recipe).resolve().parent if recipe else Path.cwd()
        source = recipe or "<command line>"
        # Flags are relative to the current folder, recipe values to the recipe's: flags go in as
        # absolute paths after the recipe's own have been resolved.
        flags: list[str] = []
        if model:
            flags.append(f"model.name_or_path={json.dumps(_flag_path(model))}")
        if compare:
            flags.append(f"eval.compare={json.dumps([_flag_path(c) for c in compare])}")
        if out:
            flags.append(f"eval.output_dir={json.dumps(out)}")
        for task, values in (("perplexity", perplexity), ("mcq", mcq), ("ner", ner)):
            if values:
                flags.append(f"{task}.files={json.dumps([_flag_path(v) for v in values])}")
        if generate:
            flags.append(f"generate.prompts={json.dumps(list(generate))}")
        loaded = recipe_from_mapping(raw, EvalRecipe, source, base_dir, [*flags, *(set_ or [])])
        if print_config:
            typer.echo(loaded.to_yaml(), nl=False)
            return
        from llmtune.stages import eval as stage

        stage.run(loaded, overwrite=overwrite)


def _flag_path(value: str) -> str:
    """A command-line path made absolute (it is relative to the current folder, not to the recipe)."""
    from pathlib import Path

    return str(Path(value).resolve()) if Path(value).exists() else value


@app.command(
    help="Download a hub model into the local cache, or convert a demo model, so later runs work offline.",
    epilog="Example: llmtune fetch smollm2-135m-instruct  |  llmtune fetch bigscience/bloomz-560m --hub modelscope",
)
def fetch(
    name: str = typer.Argument(..., help="Demo alias, HuggingFace id or ModelScope id."),
    hub: str = typer.Option("auto", "--hub", help="auto ($LLMTUNE_HUB or HuggingFace), hf or modelscope."),
    revision: str = typer.Option(None, "--revision", help="Branch, tag or commit on the hub."),
    gguf_file: str = typer.Option(
        None, "--gguf-file", help="Fetch only this GGUF file (and the tokenizer files)."
    ),
    debug: bool = DebugOption,
) -> None:
    with user_errors(debug):
        from llmtune.errors import LlmtuneError
        from llmtune.hub import resolve_model

        if hub not in ("auto", "hf", "modelscope"):
            raise LlmtuneError(f"--hub {hub!r}: expected auto, hf or modelscope.")
        resolved = resolve_model(name, hub=hub, revision=revision, gguf_file=gguf_file)
        typer.echo(f"{name}: {resolved.path} ({resolved.source})")


def main() -> None:
    global _ARGV
    _ARGV = sys.argv[1:]
    app()


if __name__ == "__main__":
    main()
