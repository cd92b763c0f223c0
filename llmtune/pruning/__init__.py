"""Pruning of decoder-only causal LMs (llama, mistral, qwen2, gpt2): measure importance on calibration
text, then remove layers (depth), MLP channels and attention heads (width), or single weights (sparsity).

architecture: where the parts are and how big. importance: scores from calibration batches. surgery:
what to remove and the smaller model. sparsity: zeroing weights in place. rebuild: new config + new state
dict -> new model, so that a pruned model always reloads cleanly.
"""

from llmtune.pruning.architecture import (
    SUPPORTED_MODEL_TYPES,
    count_parameters,
    decoder_layers,
    family,
    sizes,
)
from llmtune.pruning.importance import (
    ActivationStats,
    activation_statistics,
    block_influence,
    mean_loss,
    perplexity_increase,
)
from llmtune.pruning.sparsity import sparsify
from llmtune.pruning.surgery import (
    channels_to_keep,
    drop_layers,
    heads_to_keep,
    layers_to_remove,
    prune_heads,
    prune_mlp,
)

__all__ = [
    "SUPPORTED_MODEL_TYPES",
    "ActivationStats",
    "activation_statistics",
    "block_influence",
    "channels_to_keep",
    "count_parameters",
    "decoder_layers",
    "drop_layers",
    "family",
    "heads_to_keep",
    "layers_to_remove",
    "mean_loss",
    "perplexity_increase",
    "prune_heads",
    "prune_mlp",
    "sizes",
    "sparsify",
]
