"""The `peft:` section: which parameters train, under PEFT's own names."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator, model_serializer, model_validator

from llmtune.recipe.base import OneOrMany, Section
from llmtune.recipe.legacy import PEFT_KEY_ALIASES

LORA_KEYS = ("r", "lora_alpha", "lora_dropout", "target_modules", "modules_to_save", "bias", "use_rslora")
# The keys each method reads (adapters.build_peft_config / apply_peft); any other key is rejected.
METHOD_KEYS: dict[str, tuple[str, ...]] = {
    "none": (),
    "lora": LORA_KEYS,
    "dora": LORA_KEYS,
    "qlora": (*LORA_KEYS, "quant_type", "double_quant", "compute_dtype"),
    "prompt_tuning": ("num_virtual_tokens", "prompt_tuning_init_text"),
    "prefix_tuning": ("num_virtual_tokens",),
    "p_tuning": ("num_virtual_tokens", "encoder_hidden_size"),
    "ia3": ("target_modules", "feedforward_modules", "modules_to_save"),
    "freeze": ("trainable", "trainable_last_layers"),
}


class PeftSection(Section):
    """Adapter settings under PEFT's own names; `method: none` trains every weight.

    lora / dora / qlora (LoRA on a 4-bit nf4 base, bitsandbytes) use r, lora_alpha, lora_dropout,
    target_modules, use_rslora; prompt_tuning / prefix_tuning / p_tuning use num_virtual_tokens; ia3 uses
    target_modules + feedforward_modules; freeze trains only the modules named in `trainable`.
    """

    key_aliases: ClassVar[dict[str, str]] = PEFT_KEY_ALIASES

    method: Literal[
        "none", "lora", "dora", "qlora", "prompt_tuning", "prefix_tuning", "p_tuning", "ia3", "freeze"
    ] = "none"
    r: int = Field(8, gt=0)
    lora_alpha: float = Field(16, gt=0)
    lora_dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: list[str] | Literal["all-linear"] | None = Field(
        None,
        description="Modules to adapt; default all-linear (LoRA family) or the architecture's own (IA3).",
    )
    modules_to_save: OneOrMany[str] | None = Field(
        None, description="Modules trained in full and saved beside the adapter (e.g. lm_head, embed_tokens)."
    )
    bias: Literal["none", "all", "lora_only"] = "none"
    use_rslora: bool = Field(False, description="rsLoRA: scale by alpha/sqrt(r) instead of alpha/r.")
    # qlora
    quant_type: Literal["nf4", "fp4"] = "nf4"
    double_quant: bool = True
    compute_dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="dtype of the 4-bit layers' matmuls; auto = the model dtype."
    )
    # prompt learning
    num_virtual_tokens: int = Field(20, gt=0)
    prompt_tuning_init_text: str | None = Field(
        None, description="prompt_tuning: initialise the virtual tokens from this text (else random)."
    )
    encoder_hidden_size: int = Field(128, gt=0, description="p_tuning: hidden size of the prompt encoder.")
    # ia3
    feedforward_modules: OneOrMany[str] | None = None
    # freeze
    trainable: OneOrMany[str] = Field(
        default_factory=list,
        description="freeze: substrings of parameter names to train (e.g. lm_head, layers.29.)",
    )
    trainable_last_layers: int = Field(
        0, ge=0, description="freeze: also train the last N transformer blocks."
    )

    @field_validator("target_modules", mode="before")
    @classmethod
    def _one_module_as_list(cls, value: Any) -> Any:
        if isinstance(value, str) and value != "all-linear":
            return [value]
        return value

    @model_validator(mode="after")
    def check_keys_apply_to_the_method(self) -> PeftSection:
        """A key the method does not read is an error: it would be ignored silently (quant_type without
        qlora trains an unquantised model while the recipe says 4-bit; r under ia3 changes nothing)."""
        reads = METHOD_KEYS[self.method]
        stray = [k for k in self.model_fields_set if k != "method" and k not in reads]
        if stray:
            key = sorted(stray)[0]
            users = [m for m, keys in METHOD_KEYS.items() if key in keys]
            raise ValueError(
                f"peft.{key} is not used by peft.method {self.method!r} (it applies to {', '.join(users)}); "
                f"remove it or set peft.method to one of those (on the command line, --set 'peft={{method: "
                f"{self.method}}}' replaces the whole section)"
            )
        return self

    @model_validator(mode="after")
    def check_freeze(self) -> PeftSection:
        if self.method == "freeze" and not self.trainable and not self.trainable_last_layers:
            raise ValueError(
                "peft.method is freeze but nothing is trainable: give peft.trainable (parameter name parts, "
                "e.g. [lm_head]) or peft.trainable_last_layers (e.g. 2)"
            )
        return self

    @model_serializer(mode="wrap")
    def _only_the_keys_the_method_reads(self, handler) -> dict[str, Any]:
        """Dumped (the run folder's recipe.yaml, --print-config), the section holds `method` and the keys
        that method reads: the others are defaults it ignores, and written out they would be keys that
        check_keys_apply_to_the_method rejects when the recipe is loaded again."""
        data = handler(self)
        reads = METHOD_KEYS[self.method]
        return {key: value for key, value in data.items() if key == "method" or key in reads}

    @property
    def is_prompt_learning(self) -> bool:
        return self.method in ("prompt_tuning", "prefix_tuning", "p_tuning")

    @property
    def is_peft(self) -> bool:
        """True when the result is a PEFT adapter (freeze and none train the model itself)."""
        return self.method not in ("none", "freeze")
