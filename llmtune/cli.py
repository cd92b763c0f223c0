"""The `llmtune` command line: one thin function per subcommand; each parses, then calls a stage.

Imports of torch/transformers happen inside the functions, so `llmtune --help` stays instant.
"""

from __future__ import annotations

import logging
import sys

import typer

from llmtune import __version__
from llmtune.console import user_errors

app = typer.Typer(
    name="llmtune",
    help="Train language models from YAML recipes: pretrain, sft, dpo, reward, grpo, rloo, lora-ner; prune and "
    "distill to make them smaller; check data and plan memory before training; merge adapters and evaluate after; "
    "export for llama.cpp/Ollama; chat with a model or serve it over an OpenAI-compatible API.",
    epilog="Examples:\n\n"
    "  llmtune sft --recipe recipes/quickstart.yaml\n\n"
    "  llmtune data check --recipe recipes/sft/smollm2-135m-lora-medical.yaml\n\n"
    "  llmtune lora-ner --recipe recipes/lora-ner/minilm-conll2003.yaml\n\n"
    "  llmtune pretrain --recipe recipes/pretrain/smollm2-135m-continued-lora.yaml\n\n"
    "  llmtune pretrain --recipe recipes/pretrain/gpt2-124m-the-verdict.yaml --print-config\n\n"
    "  llmtune plan --recipe recipes/quickstart.yaml --device-memory 8GB\n\n"
    "  llmtune merge --adapter runs/quickstart --out runs/merged/quickstart\n\n"
    "  llmtune eval --recipe recipes/eval/quickstart-compare.yaml\n\n"
    "  llmtune export --model runs/quickstart --format ollama --quant q8_0 --out runs/export/quickstart\n\n"
    "  llmtune chat --model runs/quickstart\n\n"
    "  llmtune serve --model runs/quickstart --port 8000\n\n"
    "  llmtune fetch smollm2-135m-instruct\n\n"
    "  llmtune fetch --dataset 'hf:tatsu-lab/alpaca?split=train[:500]'\n\n"
    "  llmtune import-recipe LLaMA-Factory/examples/train_lora/llama3_lora_sft.yaml --out recipe.yaml",
    no_args_is_help=True,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
    pretty_exceptions_enable=False,
)

RecipeOption = typer.Option(
    None, "--recipe", "-r", help="YAML recipe file (or give it as the first argument).", show_default=False
)
RecipeArgument = typer.Argument(
    None, metavar="[RECIPE]", help="YAML recipe file (the same as --recipe).", show_default=False
)
OptionalRecipeOption = typer.Option(
    None, "--recipe", "-r", help="YAML recipe file (to train).", show_default=False
)
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


def _recipe_path(positional: str | None, option: str | None, command: str) -> str:
    """The recipe file, given as `llmtune sft FILE` (as LLaMA-Factory and axolotl users type) or with
    `--recipe FILE`: one of them, not both."""
    from llmtune.errors import LlmtuneError

    if positional is not None and option is not None and positional != option:
        raise LlmtuneError(
            f"llmtune {command}: two recipes given, {positional!r} and --recipe {option!r}; give one."
        )
    path = positional or option
    if path is None:
        raise LlmtuneError(
            f"llmtune {command} needs a recipe: llmtune {command} RECIPE.yaml (or --recipe FILE)."
        )
    return path


def _load(path: str, kind: str | None, overrides: list[str] | None, *, allowed: tuple[str, ...] = ()):
    """The recipe at `path` as the recipe class of command `kind` (None: told by its sections, one of
    `allowed`), with its loading notes printed."""
    from llmtune import recipe as recipes

    loaded = recipes.load_recipe(path, kind or recipes.recipe_kind(path, allowed), overrides or [])
    for note in loaded.notes:
        logging.getLogger("llmtune").warning("note: %s", note)
    return loaded


def _train(stage: str, recipe, set_, print_config, overwrite, resume, debug, launch_flags: dict) -> None:
    """The body of every training command: load and check the recipe, re-launch it in several processes
    when asked, else run its stage."""
    import importlib
    import json

    from llmtune import launch

    with user_errors(debug):
        if recipe is None:
            from llmtune.errors import LlmtuneError

            raise LlmtuneError(
                f"llmtune {stage} needs --recipe FILE to train (or: lora-ner predict --model RUN TEXT)."
            )
        # The multi-process flags are `--set launch.key=value` overrides (flags win over the recipe).
        launch_sets = [f"launch.{k}={json.dumps(v)}" for k, v in launch_flags.items() if v is not None]
        loaded = _load(recipe, stage, [*(set_ or []), *launch_sets])
        if print_config:
            typer.echo(loaded.to_yaml(), nl=False)
            return
        request = launch.request_from(loaded.launch, {})
        if request.world_size > 1 and not launch.inside_launcher():
            raise typer.Exit(launch.relaunch(request, _ARGV))
        from llmtune.interrupt import signals_handled

        module = importlib.import_module(f"llmtune.stages.{stage.replace('-', '_')}")
        try:
            with signals_handled():
                module.run(loaded, overwrite=overwrite, resume=resume)
        finally:
            if launch.inside_launcher():
                launch.finish()


def _training_command(stage: str, *, recipe_required: bool = True):
    """The function behind `llmtune <stage>`: the options every training command shares, declared once."""
    recipe_option = RecipeOption if recipe_required else OptionalRecipeOption

    def command(
        ctx: typer.Context,
        recipe_file: str = RecipeArgument,
        recipe: str = recipe_option,
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
            return  # `llmtune lora-ner predict ...`: the subcommand runs instead
        if not isinstance(recipe_file, str):  # lora-ner: the parameter is not declared (see below)
            recipe_file = None
        if recipe_file is not None or recipe_required:
            with user_errors(debug):
                recipe = _recipe_path(recipe_file, recipe, stage)
        launch_flags = {
            "nproc": nproc,
            "strategy": strategy,
            "accelerate_config": accelerate_config,
            "nnodes": nnodes,
            "node_rank": node_rank,
            "main_process_ip": main_process_ip,
            "main_process_port": main_process_port,
        }
        _train(stage, recipe, set_, print_config, overwrite, resume, debug, launch_flags)

    if not recipe_required:
        # A command group (lora-ner): a positional recipe would swallow the subcommand's name (`predict`),
        # so the group takes --recipe only.
        import inspect

        signature = inspect.signature(command)
        command.__signature__ = signature.replace(
            parameters=[p for name, p in signature.parameters.items() if name != "recipe_file"]
        )
    return command


app.command(
    "pretrain",
    help="Continued pretraining (full, LoRA, DoRA) or pretraining from scratch on raw text.",
    epilog="Example: llmtune pretrain --recipe recipes/pretrain/smollm2-135m-continued-lora.yaml --set train.max_steps=5",
)(_training_command("pretrain"))
app.command(
    "sft",
    help="Supervised fine-tuning on conversations (full, LoRA, DoRA, QLoRA, prompt/prefix/P-tuning, IA3, freeze).",
    epilog="Example: llmtune sft --recipe recipes/quickstart.yaml --set data.packing=true",
)(_training_command("sft"))
app.command(
    "dpo",
    help="Preference tuning on chosen/rejected pairs: DPO (any TRL loss type), ORPO, SimPO, KTO.",
    epilog="Example: llmtune dpo --recipe recipes/dpo/smollm2-135m-dpo-en.yaml --set dpo.loss_type=ipo",
)(_training_command("dpo"))
app.command(
    "reward",
    help="Train a reward model (a causal LM with a scalar head) on chosen/rejected pairs; reports held-out "
    "pairwise accuracy and reward distributions before and after.",
    epilog="Example: llmtune reward --recipe recipes/reward/smollm2-135m-reward-en.yaml",
)(_training_command("reward"))
app.command(
    "grpo",
    help="Online RL with GRPO (TRL GRPOTrainer): the model answers prompts, reward functions score the answers "
    "(exact/numeric match, format, length, a trained reward model, your own function).",
    epilog="Example: llmtune grpo --recipe recipes/grpo/smollm2-135m-arithmetic.yaml",
)(_training_command("grpo"))
app.command(
    "rloo",
    help="Online RL with RLOO (TRL RLOOTrainer, leave-one-out baseline): the same recipes as grpo.",
    epilog="Example: llmtune rloo --recipe recipes/grpo/smollm2-135m-arithmetic.yaml",
)(_training_command("rloo"))

app.command(
    "distill",
    help="Knowledge distillation: a student (a pruned model, a smaller one, or one from a config) learns from a "
    "frozen teacher's predictions (forward/reverse KL or JSD at a temperature, mixed with cross-entropy) and "
    "optionally its hidden states, on raw text or conversations.",
    epilog="Example: llmtune distill --recipe recipes/distill/smollm2-135m-20-layers-text.yaml",
)(_training_command("distill"))


@app.command(
    help="Make a model smaller: remove decoder layers (block influence or perplexity increase), MLP channels "
    "and attention heads (activation magnitude, grouped-query groups whole), or single weights (magnitude, "
    "Wanda), ranked on calibration text; writes a plain HF folder, checked to load with no warning.",
    epilog="Example: llmtune prune --recipe recipes/prune/smollm2-135m-depth-20.yaml",
)
def prune(
    recipe_file: str = RecipeArgument,
    recipe: str = RecipeOption,
    set_: list[str] = SetOption,
    print_config: bool = PrintConfigOption,
    overwrite: bool = typer.Option(
        False, "--overwrite", help="Replace prune.output_dir if it holds an earlier prune's output."
    ),
    debug: bool = DebugOption,
) -> None:
    with user_errors(debug):
        loaded = _load(_recipe_path(recipe_file, recipe, "prune"), "prune", set_)
        if print_config:
            typer.echo(loaded.to_yaml(), nl=False)
            return
        from llmtune.interrupt import signals_handled
        from llmtune.stages import prune as stage

        with signals_handled():
            stage.run(loaded, overwrite=overwrite)


data_app = typer.Typer(help="Inspect training data without training.", no_args_is_help=True)
app.add_typer(data_app, name="data")


@data_app.command(
    "check",
    help="The dataset doctor: detect the format, validate every row, count skips and truncations, token "
    "length stats, padding with and without packing, and samples with the trained tokens marked.",
    epilog="Example: llmtune data check --recipe recipes/sft/smollm2-135m-lora-medical.yaml --samples 2",
)
def data_check(
    recipe_file: str = RecipeArgument,
    recipe: str = RecipeOption,
    set_: list[str] = SetOption,
    samples: int = typer.Option(2, "--samples", "-n", help="Examples to render with their loss mask."),
    color: str = typer.Option(
        "auto", "--color", help="auto | always | never: mark trained tokens in colour."
    ),
    debug: bool = DebugOption,
) -> None:
    with user_errors(debug):
        from llmtune.errors import LlmtuneError

        if samples < 0:
            raise LlmtuneError(f"--samples {samples}: must be 0 or more.")
        if color not in ("auto", "always", "never"):
            raise LlmtuneError(f"--color {color!r}: expected auto, always or never.")
        loaded = _load(
            _recipe_path(recipe_file, recipe, "data check"),
            None,
            set_,
            allowed=("sft", "dpo", "reward", "grpo", "rloo", "distill"),
        )
        from llmtune.stages import data_check as stage

        use_color = color == "always" or (color == "auto" and sys.stdout.isatty())
        typer.echo(stage.run(loaded, samples=samples, color=use_color))


ner_app = typer.Typer(
    help="Named-entity tagger: a BERT-like encoder + linear + CRF, trained with LoRA. "
    "`llmtune lora-ner --recipe FILE` trains; `llmtune lora-ner predict --model RUN TEXT` tags text.",
    epilog="Example: llmtune lora-ner --recipe recipes/lora-ner/minilm-conll2003.yaml",
)
app.add_typer(ner_app, name="lora-ner")


ner_app.callback(invoke_without_command=True)(_training_command("lora-ner", recipe_required=False))


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

        from llmtune.errors import LlmtuneError
        from llmtune.ner.predict import predict_entities, texts_to_tag
        from llmtune.ner.tagger import load_tagger

        items = texts_to_tag(texts, file)
        if not items:
            raise LlmtuneError("give text to tag as arguments or with --file.")
        tagger, tokenizer, config = load_tagger(Path(model))
        for text in items:
            found = predict_entities(tagger, tokenizer, config, text)
            if as_json:
                typer.echo(json.dumps({"text": text, "entities": found}, ensure_ascii=False))
            else:
                typer.echo(text)
                for ent in found:
                    typer.echo(f"  {ent['type']:<12} {ent['text']}  [{ent['start']}, {ent['end']})")


@app.command(
    help="Estimate memory per device (weights, gradients, optimizer states, activations, logits) and tokens per "
    "step for a pretrain/sft/dpo/reward/grpo/rloo/distill recipe (grpo/rloo: with the generation memory and "
    "the reference model; distill: with the frozen teacher's weights and forward and the distillation "
    "loss's logits), from the model configs alone (no weights loaded); say whether it fits and what to "
    "change when it does not.",
    epilog="Example: llmtune plan --recipe recipes/sft/llama3-8b-qlora-medical.yaml --device-memory 24GB",
)
def plan(
    recipe_file: str = RecipeArgument,
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

        from llmtune.plan import estimate, parse_memory

        if nproc is not None and nproc < 1:
            from llmtune.errors import LlmtuneError

            raise LlmtuneError(f"--nproc {nproc}: must be at least 1.")
        loaded = _load(
            _recipe_path(recipe_file, recipe, "plan"),
            None,
            set_,
            allowed=("pretrain", "sft", "dpo", "reward", "grpo", "rloo", "distill"),
        )
        result = estimate(
            loaded,
            device_memory_bytes=(
                parse_memory(device_memory, "--device-memory") if device_memory is not None else None
            ),
            nproc=nproc if nproc is not None else loaded.launch.nproc * loaded.launch.nnodes,
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
        1e-4,
        "--tolerance",
        help="Floor of the merge check's bound on |merged - adapter| logits: max(TOLERANCE, 4 x the float32 noise measured on the model).",
    ),
    hub: str = typer.Option("auto", "--hub", help="auto, hf or modelscope (for hub ids)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a non-empty --out (after the check)."),
    debug: bool = DebugOption,
) -> None:
    with user_errors(debug):
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
    help="Export a model for serving: GGUF (llama.cpp, LM Studio), Ollama (GGUF + Modelfile with the trained "
    "chat template and stop tokens), or a bitsandbytes 4/8-bit folder. The export is read back by an independent "
    "reader and compared with the source (tokenizer, logits, perplexity, greedy answers) before --out is written.",
    epilog="Examples: llmtune export --model runs/quickstart --format ollama --quant q8_0 --out runs/export/quickstart"
    "  |  llmtune export --recipe recipes/export/quickstart-ollama-q8_0.yaml",
)
def export(
    model: str = typer.Option(
        None,
        "--model",
        "-m",
        help="Demo alias, hub id, folder, adapter run or .gguf file.",
        show_default=False,
    ),
    format_: str = typer.Option(
        None, "--format", "-f", help="gguf, ollama, bnb-4bit or bnb-8bit.", show_default=False
    ),
    out: str = typer.Option(None, "--out", "-o", help="Folder for the export.", show_default=False),
    quant: str = typer.Option(
        None,
        "--quant",
        "-q",
        help="GGUF type: f32 f16 bf16 q8_0 q5_1 q5_0 q4_1 q4_0 (default q8_0).",
        show_default=False,
    ),
    recipe: str = typer.Option(None, "--recipe", "-r", help="YAML export recipe.", show_default=False),
    check_text: str = typer.Option(
        None,
        "--check-text",
        help="Text file the check runs on (default: the run's validation data).",
        show_default=False,
    ),
    ollama_template: str = typer.Option(
        None,
        "--ollama-template",
        help="Go template file for the Modelfile (an unknown chat template).",
        show_default=False,
    ),
    system: str = typer.Option(
        None,
        "--system",
        help="System prompt in the Modelfile (default: the run's data.system).",
        show_default=False,
    ),
    name: str = typer.Option(
        None, "--name", help="Model name in the GGUF metadata and file name.", show_default=False
    ),
    verify: list[str] = typer.Option(
        None,
        "--verify",
        help="Also read the GGUF with llama-cpp (needs llama-cpp-python).",
        show_default=False,
    ),
    set_: list[str] = SetOption,
    print_config: bool = PrintConfigOption,
    overwrite: bool = typer.Option(
        False, "--overwrite", help="Replace an earlier export in --out (after the check)."
    ),
    debug: bool = DebugOption,
) -> None:
    with user_errors(debug):
        import json
        from pathlib import Path

        from llmtune.recipe import ExportRecipe, load_recipe, recipe_from_mapping

        # The flags are --set overrides: paths in them are relative to the current folder, as in --set.
        flags = {
            "model.name_or_path": model,
            "export.format": format_,
            "export.output_dir": out,
            "export.quant": quant,
            "export.check_text": check_text,
            "export.ollama_template": ollama_template,
            "export.system": system,
            "export.name": name,
            "export.verify": list(verify or []),
        }
        overrides = [f"{key}={json.dumps(value)}" for key, value in flags.items() if value]
        overrides += set_ or []
        if recipe:
            loaded = load_recipe(recipe, ExportRecipe, overrides)
        else:
            missing = [
                flag
                for flag, value in (("--model", model), ("--format", format_), ("--out", out))
                if not value
            ]
            if missing and not set_:
                from llmtune.errors import LlmtuneError

                raise LlmtuneError(
                    f"llmtune export needs {', '.join(missing)}: for example llmtune export --model runs/quickstart "
                    "--format ollama --quant q8_0 --out runs/export/quickstart (or --recipe FILE)."
                )
            loaded = recipe_from_mapping({}, ExportRecipe, "<command line>", Path.cwd(), overrides)
        if print_config:
            typer.echo(loaded.to_yaml(), nl=False)
            return
        from llmtune.interrupt import signals_handled
        from llmtune.stages import export as stage

        with signals_handled():
            stage.run(loaded, overwrite=overwrite)


@app.command(
    name="eval",
    help="Evaluate a model (base, GGUF, merged folder, adapter run, lora-ner run): perplexity, multiple-choice "
    "benchmarks (MMLU/CMMLU/C-Eval layouts), generation, NER F1, lm-evaluation-harness tasks; --compare A B "
    "puts two models side by side.",
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
    mcq: list[str] = typer.Option(None, "--mcq", help="MMLU/CMMLU/C-Eval CSV file or folder. Repeatable."),
    generate: list[str] = typer.Option(None, "--generate", help="A prompt to answer. Repeatable."),
    ner: list[str] = typer.Option(None, "--ner", help="BIO or span-JSON file for NER F1. Repeatable."),
    reward: list[str] = typer.Option(
        None,
        "--reward",
        help="Preference file (chosen/rejected pairs) to score with a reward model. Repeatable.",
    ),
    lm_eval: list[str] = typer.Option(
        None,
        "--lm-eval",
        help="lm-evaluation-harness task or group (a,b for several). Repeatable. Needs llmtune[lm-eval].",
    ),
    lm_eval_include: list[str] = typer.Option(
        None,
        "--lm-eval-include",
        help="Folder of lm-eval task YAML files, or one .yaml file, defining local tasks. Repeatable.",
    ),
    out: str = typer.Option(None, "--out", "-o", help="Results folder (sets eval.output_dir)."),
    set_: list[str] = SetOption,
    print_config: bool = PrintConfigOption,
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a non-empty results folder."),
    debug: bool = DebugOption,
) -> None:
    with user_errors(debug):
        import json
        from pathlib import Path

        from llmtune.recipe import EvalRecipe, load_recipe, recipe_from_mapping

        # The flags are --set overrides: paths in them are relative to the current folder, as in --set.
        flags = {
            "model.name_or_path": model,
            "eval.compare": list(compare or []),
            "eval.output_dir": out,
            "perplexity.files": perplexity,
            "mcq.files": mcq,
            "ner.files": ner,
            "reward.files": reward,
            "generate.prompts": generate,
            "lm_eval.tasks": lm_eval,
            "lm_eval.include_path": lm_eval_include,
        }
        overrides = [f"{key}={json.dumps(value)}" for key, value in flags.items() if value]
        overrides += set_ or []
        if recipe:
            loaded = load_recipe(recipe, EvalRecipe, overrides)
        else:
            loaded = recipe_from_mapping({}, EvalRecipe, "<command line>", Path.cwd(), overrides)
        if print_config:
            typer.echo(loaded.to_yaml(), nl=False)
            return
        from llmtune.stages import eval as stage

        stage.run(loaded, overwrite=overwrite)


@app.command(
    help="Download a hub model or dataset into the local cache, or convert a demo model, so later runs work "
    "offline.",
    epilog="Examples: llmtune fetch smollm2-135m-instruct  |  llmtune fetch bigscience/bloomz-560m --hub modelscope"
    "  |  llmtune fetch --dataset 'hf:tatsu-lab/alpaca?split=train[:500]'",
)
def fetch(
    name: str = typer.Argument(None, help="Demo alias, HuggingFace id or ModelScope id of a model."),
    dataset: str = typer.Option(
        None,
        "--dataset",
        help="A dataset instead: hf:OWNER/NAME or ms:OWNER/NAME (with ?subset=&split= as in a recipe), or "
        "a bare id on --hub.",
        show_default=False,
    ),
    hub: str = typer.Option("auto", "--hub", help="auto ($LLMTUNE_HUB or HuggingFace), hf or modelscope."),
    revision: str = typer.Option(None, "--revision", help="Branch, tag or commit on the hub."),
    gguf_file: str = typer.Option(
        None, "--gguf-file", help="Fetch only this GGUF file (and the tokenizer files)."
    ),
    debug: bool = DebugOption,
) -> None:
    with user_errors(debug):
        from llmtune.errors import LlmtuneError

        if hub not in ("auto", "hf", "modelscope"):
            raise LlmtuneError(f"--hub {hub!r}: expected auto, hf or modelscope.")
        if (name is None) == (dataset is None):
            raise LlmtuneError("give a model name or --dataset ID (one of them).")
        if dataset is not None:
            _fetch_dataset(dataset, hub, revision, gguf_file)
            return
        from llmtune.hub import resolve_model

        resolved = resolve_model(name, hub=hub, revision=revision, gguf_file=gguf_file)
        typer.echo(f"{name}: {resolved.path} ({resolved.source})")


def _fetch_dataset(entry: str, hub: str, revision: str | None, gguf_file: str | None) -> None:
    import dataclasses
    import os

    from llmtune.data import hub_datasets
    from llmtune.errors import LlmtuneError
    from llmtune.recipe.hub_dataset import BadReference, is_reference, make_reference, parse_reference

    if gguf_file is not None:
        raise LlmtuneError("--gguf-file is for models; a dataset is fetched whole.")
    try:
        if is_reference(entry):
            ref = parse_reference(entry)
        else:
            chosen = hub if hub != "auto" else os.environ.get("LLMTUNE_HUB", "hf")
            ref = make_reference(entry, hub="modelscope" if chosen == "modelscope" else "hf", name=entry)
    except BadReference as exc:
        raise LlmtuneError(f"--dataset {exc}.") from None
    if revision is not None:
        ref = dataclasses.replace(ref, revision=revision)
    folder = hub_datasets.fetch(ref)
    typer.echo(f"{ref.canonical()}: {folder}")


_SAMPLING = "Sampling"


@app.command(
    help="Talk to a model in the terminal (anything eval loads: a demo alias, a hub id, a folder, a merged or "
    "adapter run, a GGUF, an export), through the chat template it was trained with. Answers stream; "
    "Ctrl-C stops an answer, /exit (or Ctrl-D) ends the session.",
    epilog="Commands in the session: /system TEXT, /reset, /regen, /save FILE, /exit.  Example: llmtune chat "
    "--model runs/quickstart",
)
def chat(
    model: str = typer.Option(..., "--model", "-m", help="Model to talk to.", show_default=False),
    system: str = typer.Option(None, "--system", help="System prompt (also /system TEXT in the session)."),
    temperature: float = typer.Option(
        0.0, "--temperature", help="0 = greedy (the default).", rich_help_panel=_SAMPLING
    ),
    top_p: float = typer.Option(1.0, "--top-p", help="Nucleus sampling mass.", rich_help_panel=_SAMPLING),
    top_k: int = typer.Option(
        0, "--top-k", help="Sample among the k likeliest (0: off).", rich_help_panel=_SAMPLING
    ),
    max_new_tokens: int = typer.Option(
        512, "--max-new-tokens", help="Longest answer, in tokens.", rich_help_panel=_SAMPLING
    ),
    seed: int = typer.Option(
        None, "--seed", help="Seed for sampling (repeatable answers).", rich_help_panel=_SAMPLING
    ),
    dtype: str = typer.Option("auto", "--dtype", help="auto, float32, bfloat16 or float16."),
    hub: str = typer.Option("auto", "--hub", help="auto, hf or modelscope (for a hub id)."),
    debug: bool = DebugOption,
) -> None:
    with user_errors(debug):
        from llmtune.stages import chat as stage

        stage.run(
            model,
            system=system,
            temperature=temperature,
            top_p=top_p,
            top_k=top_k,
            max_new_tokens=max_new_tokens,
            seed=seed,
            dtype=dtype,
            hub=hub,
        )


@app.command(
    help="Serve a model over an OpenAI-compatible HTTP API (/v1/models, /v1/chat/completions with streaming, "
    "/v1/completions), with the chat template and stop tokens it was trained with. Binds to 127.0.0.1 unless "
    "told otherwise; requests are answered one at a time, in order.",
    epilog="Example: llmtune serve --model runs/quickstart --port 8000, then point an OpenAI client at "
    "http://127.0.0.1:8000/v1",
)
def serve(
    model: str = typer.Option(..., "--model", "-m", help="Model to serve.", show_default=False),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to bind (0.0.0.0: every interface)."),
    port: int = typer.Option(8000, "--port", help="Port (0: any free port, printed at start)."),
    api_key: str = typer.Option(
        None,
        "--api-key",
        envvar="LLMTUNE_API_KEY",
        help="Require 'Authorization: Bearer KEY' (also $LLMTUNE_API_KEY, which keeps it out of `ps`).",
        show_default=False,
    ),
    served_name: str = typer.Option(
        None, "--served-name", help="The model id clients use (default: the --model name)."
    ),
    max_tokens_limit: int = typer.Option(
        4096, "--max-tokens-limit", help="Largest max_tokens a request may ask for."
    ),
    max_body_bytes: int = typer.Option(1_048_576, "--max-body-bytes", help="Largest request body, in bytes."),
    max_queue: int = typer.Option(
        64, "--max-queue", help="Requests that may wait for the model; more get 503 (retry later)."
    ),
    dtype: str = typer.Option("auto", "--dtype", help="auto, float32, bfloat16 or float16."),
    hub: str = typer.Option("auto", "--hub", help="auto, hf or modelscope (for a hub id)."),
    debug: bool = DebugOption,
) -> None:
    with user_errors(debug):
        from llmtune.stages import serve as stage

        stage.run(
            model,
            host=host,
            port=port,
            api_key=api_key,
            served_name=served_name,
            max_tokens_limit=max_tokens_limit,
            max_body_bytes=max_body_bytes,
            max_queue=max_queue,
            dtype=dtype,
            hub=hub,
        )


@app.command(
    "import-recipe",
    help="Turn a LLaMA-Factory training YAML (stage, model_name_or_path, lora_rank, dataset, cutoff_len, ...) "
    "into an llmtune recipe: datasets looked up in its dataset_info.json, TrainingArguments kept under their "
    "names, every key without an equivalent written as a comment saying why. Never replaces an existing file.",
    epilog="Example: llmtune import-recipe examples/train_lora/llama3_lora_sft.yaml --out recipe.yaml",
)
def import_recipe(
    source: str = typer.Argument(..., help="The LLaMA-Factory YAML.", show_default=False),
    out: str = typer.Option(
        ..., "--out", "-o", help="The recipe to write (a new file), or - to print it.", show_default=False
    ),
    dataset_dir: str = typer.Option(
        None,
        "--dataset-dir",
        help="Folder holding dataset_info.json (default: the recipe's dataset_dir, else `data` here, beside "
        "the YAML or above it).",
        show_default=False,
    ),
    debug: bool = DebugOption,
) -> None:
    with user_errors(debug):
        from llmtune.stages import import_recipe as stage

        imported = stage.run(source, out, dataset_dir=dataset_dir)
        for warning in imported.warnings:
            logging.getLogger("llmtune").warning("warning: %s", warning)
        if out == "-":
            typer.echo(imported.text, nl=False)
            typer.echo(f"next: save it, then {imported.run}", err=True)
        else:
            typer.echo(f"wrote {out} (llmtune {imported.command}) from {source}")
            if any("TODO" in line for line in imported.text.splitlines() if not line.startswith("#")):
                typer.echo(f"next: replace the TODO entries in {out} (see the warnings), then {imported.run}")
            else:
                typer.echo(f"next: {imported.run}")


def main() -> None:
    global _ARGV
    _ARGV = sys.argv[1:]
    app()


if __name__ == "__main__":
    main()
