"""The pruning library on tiny random models of every supported family: the pruned models reload cleanly
with the shapes their configs imply, and removing parts that contribute nothing changes nothing."""

from __future__ import annotations

import logging
import math
from contextlib import contextmanager

import pytest
import torch
from transformers import (
    AutoModelForCausalLM,
    GPT2Config,
    LlamaConfig,
    MistralConfig,
    OPTConfig,
    Qwen2Config,
)

from llmtune.errors import LlmtuneError
from llmtune.pruning import (
    activation_statistics,
    block_influence,
    channels_to_keep,
    count_parameters,
    decoder_layers,
    drop_layers,
    family,
    heads_to_keep,
    layers_to_remove,
    mean_loss,
    perplexity_increase,
    prune_heads,
    prune_mlp,
    sizes,
    sparsify,
)

VOCAB = 128
COMMON = {"vocab_size": VOCAB, "bos_token_id": 0, "eos_token_id": 1, "initializer_range": 0.1}
LLAMA_SHAPE = {
    "hidden_size": 64,
    "intermediate_size": 96,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,  # grouped-query attention: 2 query heads per key/value head
    "max_position_embeddings": 64,
}


def make_config(arch: str):
    if arch == "llama":  # tied embeddings, like SmolLM2
        return LlamaConfig(**LLAMA_SHAPE, **COMMON, tie_word_embeddings=True)
    if arch == "qwen2":  # q/k/v biases; the last two layers use a 4-token sliding window (layer_types)
        return Qwen2Config(
            **LLAMA_SHAPE, **COMMON, use_sliding_window=True, sliding_window=4, max_window_layers=2
        )
    if arch == "mistral":
        return MistralConfig(**LLAMA_SHAPE, **COMMON)
    if arch == "gpt2":
        return GPT2Config(n_embd=64, n_layer=4, n_head=4, n_positions=64, **COMMON)
    raise AssertionError(arch)


def make_model(arch: str, seed: int = 0):
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(make_config(arch)).eval()
    with torch.no_grad():  # HF initializes biases to zero; random ones show that slicing keeps them aligned
        for name, parameter in model.named_parameters():
            if name.endswith("bias"):
                parameter.normal_(0, 0.1)
    model.generation_config.max_new_tokens = 7
    return model


def make_batches(seed: int = 1, mask: bool = False) -> list[dict]:
    generator = torch.Generator().manual_seed(seed)
    batches = [
        {"input_ids": torch.randint(0, VOCAB, (2, 12), generator=generator)},
        {"input_ids": torch.randint(0, VOCAB, (1, 9), generator=generator)},
    ]
    if mask:
        attention_mask = torch.ones(2, 12, dtype=torch.long)
        attention_mask[1, 7:] = 0  # right padding
        batches[0]["attention_mask"] = attention_mask
    return batches


def logits(model, input_ids) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=input_ids).logits


@contextmanager
def transformers_warnings():
    """Records of WARNING and above from transformers' loggers (they do not propagate to the root)."""
    records: list[logging.LogRecord] = []
    handler = logging.Handler(level=logging.WARNING)
    handler.emit = records.append
    logger = logging.getLogger("transformers")
    logger.addHandler(handler)
    try:
        yield records
    finally:
        logger.removeHandler(handler)


@contextmanager
def skipping(model, indices):
    """Make the given decoder layers identities with forward hooks (independent of the library's own
    skipping in perplexity_increase)."""

    def identity(module, args, kwargs, output):
        return args[0] if args else kwargs["hidden_states"]

    handles = [decoder_layers(model)[i].register_forward_hook(identity, with_kwargs=True) for i in indices]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def layer_state(model, index: int) -> dict[str, torch.Tensor]:
    return {name: tensor for name, tensor in decoder_layers(model)[index].state_dict().items()}


IDS = torch.randint(0, VOCAB, (2, 12), generator=torch.Generator().manual_seed(5))


# ------------------------------------------------------------------------------------ architecture
def test_unsupported_model_type_is_named():
    config = OPTConfig(
        vocab_size=VOCAB,
        hidden_size=64,
        num_hidden_layers=2,
        ffn_dim=128,
        num_attention_heads=4,
        max_position_embeddings=64,
        word_embed_proj_dim=64,
    )
    with pytest.raises(LlmtuneError, match="'opt'") as raised:
        family(config)
    assert all(name in str(raised.value) for name in ("llama", "mistral", "qwen2", "gpt2"))
    with pytest.raises(LlmtuneError, match="'opt'"):
        sizes(config)
    model = AutoModelForCausalLM.from_config(config)
    with pytest.raises(LlmtuneError, match="'opt'"):
        drop_layers(model, [0])
    with pytest.raises(LlmtuneError, match="'opt'"):
        block_influence(model, make_batches())


def test_sizes_and_parameter_count():
    llama = make_model("llama")
    assert sizes(llama.config) == {
        "layers": 4,
        "intermediate_size": 96,
        "attention_heads": 4,
        "kv_heads": 2,
        "head_dim": 16,
        "hidden_size": 64,
    }
    assert sizes(make_config("gpt2"))["intermediate_size"] == 256  # n_inner None means 4 * n_embd
    assert sizes(make_config("gpt2"))["kv_heads"] == 4
    # Tied: the head is the embedding and counts once.
    embedding = VOCAB * 64
    assert llama.lm_head.weight is llama.get_input_embeddings().weight
    assert count_parameters(llama) == sum(p.numel() for p in llama.state_dict().values()) - embedding
    per_layer = sum(t.numel() for t in layer_state(llama, 0).values())
    assert count_parameters(drop_layers(llama, [0])) == count_parameters(llama) - per_layer


# -------------------------------------------------------------------------- clean reload, all families
def _prune_depth(model):
    return drop_layers(model, [1, 2])


def _prune_mlp(model):
    scores = activation_statistics(model, make_batches(), heads=False).mlp_channels
    return prune_mlp(model, channels_to_keep(scores, 40))


def _prune_heads(model):
    scores = activation_statistics(model, make_batches(), mlp=False).heads
    return prune_heads(model, heads_to_keep(scores, model.config, attention_heads=2, kv_heads=1))


CASES = [
    (arch, op)
    for arch in ("llama", "qwen2", "mistral", "gpt2")
    for op in ("depth", "mlp", "heads")
    if (arch, op) != ("gpt2", "heads")
]


@pytest.mark.parametrize(("arch", "op"), CASES)
def test_pruned_model_reloads_cleanly(arch, op, tmp_path):
    model = make_model(arch)
    pruned = {"depth": _prune_depth, "mlp": _prune_mlp, "heads": _prune_heads}[op](model)
    shape = sizes(pruned.config)
    expected = {
        "depth": {"layers": 2},
        "mlp": {"intermediate_size": 40},
        "heads": {"attention_heads": 2, "kv_heads": 1, "head_dim": 16, "hidden_size": 64},
    }[op]
    assert {key: shape[key] for key in expected} == expected
    assert len(decoder_layers(pruned)) == shape["layers"]
    assert not pruned.training
    assert pruned.generation_config.max_new_tokens == 7
    if pruned.config.tie_word_embeddings:
        assert pruned.lm_head.weight is pruned.get_input_embeddings().weight
    if arch == "qwen2" and op == "depth":  # layers 1 and 2 removed from [full, full, sliding, sliding]
        assert pruned.config.layer_types == ["full_attention", "sliding_attention"]
        assert pruned.config.max_window_layers == 1

    pruned.save_pretrained(tmp_path)
    with transformers_warnings() as records:
        reloaded, info = AutoModelForCausalLM.from_pretrained(tmp_path, output_loading_info=True)
    assert not any(info[key] for key in ("missing_keys", "unexpected_keys", "mismatched_keys", "error_msgs"))
    assert [record.getMessage() for record in records] == []

    # Every tensor has the shape the reloaded config implies.
    implied = AutoModelForCausalLM.from_config(reloaded.config).state_dict()
    actual = reloaded.state_dict()
    assert actual.keys() == implied.keys()
    assert {k: tuple(v.shape) for k, v in actual.items()} == {k: tuple(v.shape) for k, v in implied.items()}
    if op == "heads":
        attention = decoder_layers(reloaded)[0].self_attn
        assert attention.q_proj.weight.shape == (2 * 16, 64)
        assert attention.k_proj.weight.shape == attention.v_proj.weight.shape == (1 * 16, 64)
        assert attention.o_proj.weight.shape == (64, 2 * 16)
    torch.testing.assert_close(logits(reloaded, IDS), logits(pruned, IDS), rtol=0, atol=1e-6)


# ------------------------------------------------------------------------------------------- depth
def test_layers_to_remove_picks_the_lowest():
    assert layers_to_remove([0.5, 0.1, 0.9, 0.2, 0.3], keep=3) == [1, 3]
    assert layers_to_remove([0.5, 0.1, 0.9, 0.2, 0.3], keep=5) == []
    assert layers_to_remove([0.5, 0.1, 0.9, 0.2, 0.3], keep=1) == [0, 1, 3, 4]
    assert layers_to_remove([0.2, 0.1, 0.1, 0.5], keep=3) == [2]  # a tie removes the later layer
    for keep in (0, 6):
        with pytest.raises(LlmtuneError, match=f"keep_layers {keep}"):
            layers_to_remove([0.5, 0.1, 0.9, 0.2, 0.3], keep=keep)
    with pytest.raises(LlmtuneError, match="not finite"):
        layers_to_remove([0.5, math.nan, 0.9], keep=2)


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gpt2"])
def test_drop_layers_equals_skipping_them(arch):
    model = make_model(arch)
    remove = [1]
    pruned = drop_layers(model, remove)
    kept = [0, 2, 3]
    for new, old in enumerate(kept):
        new_state, old_state = layer_state(pruned, new), layer_state(model, old)
        assert new_state.keys() == old_state.keys()
        assert all(torch.equal(new_state[k], old_state[k]) for k in new_state)
    with skipping(model, remove):
        expected = logits(model, IDS)
    torch.testing.assert_close(logits(pruned, IDS), expected, rtol=0, atol=1e-5)
    # The layer mattered: keeping it gives other logits (the comparison above is not vacuous).
    assert not torch.allclose(logits(model, IDS), expected, atol=1e-3)


def test_drop_layers_ranked_by_block_influence():
    model = make_model("llama")
    scores = block_influence(model, make_batches())
    remove = layers_to_remove(scores, keep=2)
    assert remove == sorted(sorted(range(4), key=lambda i: scores[i])[:2])
    pruned = drop_layers(model, remove)
    kept = [i for i in range(4) if i not in remove]
    for new, old in enumerate(kept):
        assert torch.equal(
            decoder_layers(pruned)[new].mlp.up_proj.weight, decoder_layers(model)[old].mlp.up_proj.weight
        )


def test_drop_layers_rejects_bad_indices():
    model = make_model("llama")
    with pytest.raises(LlmtuneError, match=r"\[4\]"):
        drop_layers(model, [0, 4])
    with pytest.raises(LlmtuneError, match="more than once"):
        drop_layers(model, [1, 1])
    with pytest.raises(LlmtuneError, match="all 4"):
        drop_layers(model, [0, 1, 2, 3])


def _make_identity(model, index: int) -> None:
    """Zero what layer `index` adds to the residual stream, so that its output equals its input."""
    layer = decoder_layers(model)[index]
    with torch.no_grad():
        if hasattr(layer, "self_attn"):
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        else:
            for module in (layer.attn.c_proj, layer.mlp.c_proj):
                module.weight.zero_()
                module.bias.zero_()


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_an_identity_layer_scores_zero(arch):
    model = make_model(arch)
    _make_identity(model, 2)
    batches = make_batches(mask=True)
    influence = block_influence(model, batches)
    assert abs(influence[2]) < 1e-6
    assert all(influence[i] > 1e-3 for i in (0, 1, 3))

    before = logits(model, IDS)
    base, increases = perplexity_increase(model, batches)
    assert base == pytest.approx(mean_loss(model, batches), abs=1e-9)
    assert abs(increases[2]) < 1e-6
    assert any(abs(increases[i]) > 1e-4 for i in (0, 1, 3))
    # Every layer's forward is restored.
    assert all("forward" not in layer.__dict__ for layer in decoder_layers(model))
    torch.testing.assert_close(logits(model, IDS), before, rtol=0, atol=0)


def test_mean_loss_matches_hf_loss_with_padding():
    model = make_model("llama")
    batches = make_batches(mask=True)
    total, count = 0.0, 0
    for batch in batches:
        mask = batch.get("attention_mask", torch.ones_like(batch["input_ids"]))
        labels = batch["input_ids"].masked_fill(mask == 0, -100)
        with torch.no_grad():
            loss = model(input_ids=batch["input_ids"], attention_mask=mask, labels=labels).loss
        tokens = int(mask[:, 1:].sum())
        total += loss.item() * tokens
        count += tokens
    assert mean_loss(model, batches) == pytest.approx(total / count, rel=1e-5)
    with pytest.raises(LlmtuneError, match="0 batches"):
        mean_loss(model, [])


# ------------------------------------------------------------------------------------------- width
@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_prune_mlp_with_every_channel_permuted_changes_nothing(arch):
    model = make_model(arch)
    size = sizes(model.config)["intermediate_size"]
    generator = torch.Generator().manual_seed(3)
    keep = [torch.randperm(size, generator=generator) for _ in range(4)]
    pruned = prune_mlp(model, keep)
    assert sizes(pruned.config)["intermediate_size"] == size
    torch.testing.assert_close(logits(pruned, IDS), logits(model, IDS), rtol=0, atol=1e-5)


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gpt2"])
def test_prune_mlp_removing_dead_channels_changes_nothing(arch):
    model = make_model(arch)
    size = sizes(model.config)["intermediate_size"]
    generator = torch.Generator().manual_seed(4)
    dead = [torch.randperm(size, generator=generator)[: size // 3] for _ in range(4)]
    with torch.no_grad():
        for layer, channels in zip(decoder_layers(model), dead, strict=True):
            if arch == "gpt2":
                layer.mlp.c_proj.weight[channels, :] = 0  # Conv1D: [in, out]
            else:
                layer.mlp.down_proj.weight[:, channels] = 0
    scores = [torch.ones(size).index_fill(0, channels, 0.0) for channels in dead]
    keep = channels_to_keep(scores, size - size // 3)
    assert all(not set(k.tolist()) & set(d.tolist()) for k, d in zip(keep, dead, strict=True))
    pruned = prune_mlp(model, keep)
    assert sizes(pruned.config)["intermediate_size"] == size - size // 3
    torch.testing.assert_close(logits(pruned, IDS), logits(model, IDS), rtol=0, atol=1e-5)
    with pytest.raises(LlmtuneError, match=f"intermediate_size {size + 1}"):
        channels_to_keep(scores, size + 1)


def test_heads_to_keep_drops_the_lowest_groups_then_heads():
    config = LlamaConfig(hidden_size=64, num_attention_heads=8, num_key_value_heads=4)
    # groups (2 query heads each): g0 = 6.0, g1 = 0.3, g2 = 6.0, g3 = 4.5
    scores = [torch.tensor([5.0, 1.0, 0.1, 0.2, 3.0, 3.0, 0.5, 4.0])]
    assert heads_to_keep(scores, config, attention_heads=2, kv_heads=2)[0].tolist() == [0, 4]
    assert heads_to_keep(scores, config, attention_heads=4, kv_heads=2)[0].tolist() == [0, 1, 4, 5]
    assert heads_to_keep(scores, config, attention_heads=6, kv_heads=3)[0].tolist() == [0, 1, 4, 5, 6, 7]
    assert heads_to_keep(scores, config, attention_heads=4)[0].tolist() == [0, 3, 4, 7]
    assert heads_to_keep(scores, config, attention_heads=8)[0].tolist() == list(range(8))
    with pytest.raises(LlmtuneError, match=r"attention_heads 3 .*\[2, 4\]"):
        heads_to_keep(scores, config, attention_heads=3, kv_heads=2)
    with pytest.raises(LlmtuneError, match=r"attention_heads 8 .*\[2, 4\]"):
        heads_to_keep(scores, config, attention_heads=8, kv_heads=2)
    with pytest.raises(LlmtuneError, match=r"attention_heads 2 .*\[4, 8\]"):
        heads_to_keep(scores, config, attention_heads=2)
    with pytest.raises(LlmtuneError, match="kv_heads 5"):
        heads_to_keep(scores, config, attention_heads=4, kv_heads=5)


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
@pytest.mark.parametrize(
    ("dead", "keep", "heads", "kv"),
    [((2, 3), (0, 1), 2, 1), ((1, 2), (0, 3), 2, 2)],  # a whole key/value group; one head per group
)
def test_prune_heads_removing_silent_heads_changes_nothing(arch, dead, keep, heads, kv):
    model = make_model(arch)
    head_dim = 16
    with torch.no_grad():
        for layer in decoder_layers(model):
            for head in dead:
                layer.self_attn.o_proj.weight[:, head * head_dim : (head + 1) * head_dim] = 0
    scores = [torch.tensor([0.0 if h in dead else 1.0 for h in range(4)])] * 4
    chosen = heads_to_keep(scores, model.config, attention_heads=heads, kv_heads=kv)
    assert all(c.tolist() == list(keep) for c in chosen)
    pruned = prune_heads(model, chosen)
    shape = sizes(pruned.config)
    assert (shape["attention_heads"], shape["kv_heads"], shape["head_dim"]) == (heads, kv, head_dim)
    for layer in decoder_layers(pruned):
        attention = layer.self_attn
        assert attention.q_proj.weight.shape[0] == heads * head_dim
        assert attention.k_proj.weight.shape[0] == attention.v_proj.weight.shape[0] == kv * head_dim
        assert attention.o_proj.weight.shape[1] == heads * head_dim
        if arch == "qwen2":
            assert attention.q_proj.bias.shape[0] == heads * head_dim
            assert attention.k_proj.bias.shape[0] == kv * head_dim
    torch.testing.assert_close(logits(pruned, IDS), logits(model, IDS), rtol=0, atol=1e-5)


def test_gpt2_heads_cannot_be_pruned():
    model = make_model("gpt2")
    with pytest.raises(LlmtuneError, match="GPT-2") as raised:
        heads_to_keep([torch.ones(4)] * 4, model.config, attention_heads=2)
    assert "intermediate_size" in str(raised.value) and "keep_layers" in str(raised.value)
    with pytest.raises(LlmtuneError, match="GPT-2"):
        prune_heads(model, [torch.tensor([0, 1])] * 4)


# ----------------------------------------------------------------------------------------- activations
@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_activation_statistics_shapes_and_wanda_norms(arch):
    model = make_model(arch)
    batches = make_batches(mask=True)
    stats = activation_statistics(model, batches, input_norms=True)
    shape = sizes(model.config)
    assert [tuple(t.shape) for t in stats.mlp_channels] == [(shape["intermediate_size"],)] * 4
    assert [tuple(t.shape) for t in stats.heads] == [(shape["attention_heads"],)] * 4
    assert all((t >= 0).all() and (t > 0).any() for t in stats.mlp_channels + stats.heads)
    per_layer = 7 if arch == "llama" else 4
    assert len(stats.input_norms) == 4 * per_layer
    assert not any(
        name.startswith(("lm_head", "model.embed", "transformer.wte")) for name in stats.input_norms
    )
    for name, module in model.named_modules():
        if name in stats.input_norms:
            in_features = module.in_features if hasattr(module, "in_features") else module.weight.shape[0]
            assert stats.input_norms[name].shape == (in_features,)
        assert not module._forward_pre_hooks and not module._forward_hooks  # all hooks removed

    # By hand: the first map of layer 0 sees the normed embeddings; padded tokens are left out.
    rows = []
    with torch.no_grad():
        for batch in batches:
            ids = batch["input_ids"]
            if arch == "llama":
                x = decoder_layers(model)[0].input_layernorm(model.model.embed_tokens(ids))
            else:
                positions = torch.arange(ids.shape[1])
                x = decoder_layers(model)[0].ln_1(
                    model.transformer.wte(ids) + model.transformer.wpe(positions)
                )
            mask = batch.get("attention_mask", torch.ones_like(ids)).bool()
            rows.append(x[mask])
    expected = torch.cat(rows).double().pow(2).sum(dim=0).sqrt().float()
    name = "model.layers.0.self_attn.q_proj" if arch == "llama" else "transformer.h.0.attn.c_attn"
    torch.testing.assert_close(stats.input_norms[name], expected, rtol=1e-5, atol=1e-6)

    only_mlp = activation_statistics(model, batches, heads=False)
    assert only_mlp.heads == [] and only_mlp.input_norms == {}
    torch.testing.assert_close(only_mlp.mlp_channels[1], stats.mlp_channels[1])


# ------------------------------------------------------------------------------------------ sparsity
@pytest.mark.parametrize("arch", ["llama", "gpt2"])
@pytest.mark.parametrize("method", ["magnitude", "wanda"])
def test_sparsify_hits_the_target(arch, method):
    model = make_model(arch)
    batches = make_batches()
    norms = activation_statistics(model, batches, mlp=False, heads=False, input_norms=True).input_norms
    original = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    sparsity = 0.3
    measured = sparsify(model, sparsity, method=method, input_norms=norms if method == "wanda" else None)

    modules = {name: module for name, module in model.named_modules() if name in norms}
    assert set(measured) == set(modules) | {"total"}
    zeros = total = 0
    for name, module in modules.items():
        weight = module.weight.detach()
        conv1d = arch == "gpt2"
        rows = weight.t() if conv1d else weight  # output rows
        count = int((weight == 0).sum())
        assert measured[name] == count / weight.numel()
        # magnitude rounds once per matrix, wanda once per output row (each row loses equally many)
        assert abs(count - sparsity * weight.numel()) <= (1 if method == "magnitude" else rows.shape[0] / 2)
        zeros += count
        total += weight.numel()
        if method == "wanda":
            per_row = (rows == 0).sum(dim=1)
            assert (per_row - sparsity * rows.shape[1]).abs().max() <= 0.5
            old = original[f"{name}.weight"]
            score = (old.t() if conv1d else old).abs() * norms[name][None, :]
            zeroed = rows == 0
            # Within every row, the zeroed weights are the lowest-scoring ones.
            lowest_kept = score.masked_fill(zeroed, math.inf).min(dim=1).values
            highest_zeroed = score.masked_fill(~zeroed, -math.inf).max(dim=1).values
            assert (highest_zeroed <= lowest_kept).all()
        else:
            old = original[f"{name}.weight"]
            assert old.abs()[weight == 0].max() <= old.abs()[weight != 0].min()
    assert measured["total"] == pytest.approx(zeros / total)
    # Embeddings, head, norms and biases are untouched.
    for key, tensor in model.state_dict().items():
        if not any(key == f"{name}.weight" for name in modules):
            assert torch.equal(tensor, original[key]), key


def test_sparsify_rejects_bad_values():
    model = make_model("llama")
    for sparsity in (0.0, 1.0, 1.5):
        with pytest.raises(LlmtuneError, match=f"sparsity {sparsity}"):
            sparsify(model, sparsity, method="magnitude")
    with pytest.raises(LlmtuneError, match="'random'"):
        sparsify(model, 0.5, method="random")
