"""Input-space methods: prompt tuning, prefix tuning, trainable tokens — model-level behaviour the
generic property suite cannot see (generate(), labels, masks, positions, unsupported models)."""

from __future__ import annotations

import pytest
import torch

import peftatlas as pa
from peftatlas.core.method import MethodError
from peftatlas.testing import tiny_model


def _perturb(model, seed: int = 5, scale: float = 0.5) -> None:
    g = torch.Generator().manual_seed(seed)
    for layer in model.adapted_layers().values():
        for adapter in layer.adapters.values():
            adapter.perturb_(g, scale)


def _greedy_by_full_forwards(model, ids: torch.Tensor, steps: int, **extra) -> tuple[torch.Tensor, float]:
    """Reference decoding: re-run the whole sequence through the adapted model's forward each step.

    Also returns the smallest gap between the best and second-best logit over the chosen tokens: the
    cached path computes the same logits through other kernels (other shapes), so its tokens are
    equal to these only where no gap is within rounding (~1e-6 here) of a tie."""
    cur, gap = ids, float("inf")
    for _ in range(steps):
        with torch.no_grad():
            logits = model(input_ids=cur, **extra).logits[:, -1]
        top2 = logits.topk(2, dim=-1).values
        gap = min(gap, float((top2[:, 0] - top2[:, 1]).min()))
        cur = torch.cat([cur, logits.argmax(-1, keepdim=True)], dim=1)
    return cur, gap


@pytest.mark.parametrize("method", ["prompt_tuning", "prefix_tuning"])
@pytest.mark.exactness
def test_generate_with_cache_equals_greedy_full_forwards(method):
    tm = tiny_model("llama")
    model = pa.attach(tm.model, method, num_virtual_tokens=3)
    _perturb(model)
    ids = torch.randint(3, 100, (2, 5), generator=torch.Generator().manual_seed(0))
    out = model.generate(ids, max_new_tokens=6, do_sample=False, pad_token_id=0)
    assert out.shape == (2, 11) and torch.equal(out[:, :5], ids)
    reference, gap = _greedy_by_full_forwards(model, ids, 6)
    assert gap > 1e-4, f"a near tie ({gap:.1e}) makes token equality depend on the CPU's kernels; change the seed"
    assert torch.equal(out, reference)
    with model.disable():
        base = model.generate(ids, max_new_tokens=6, do_sample=False, pad_token_id=0)
    assert not torch.equal(out, base), "the soft prompt / prefix did not change generation"


def test_prefix_generate_left_padding_matches_unpadded_rows():
    tm = tiny_model("llama")
    model = pa.attach(tm.model, "prefix_tuning", num_virtual_tokens=2)
    _perturb(model)
    g = torch.Generator().manual_seed(1)
    long, short = torch.randint(3, 100, (1, 6), generator=g), torch.randint(3, 100, (1, 4), generator=g)
    batch = torch.cat([long, torch.cat([torch.zeros(1, 2, dtype=torch.long), short], 1)])
    mask = torch.ones(2, 6, dtype=torch.long)
    mask[1, :2] = 0
    out = model.generate(batch, attention_mask=mask, max_new_tokens=4, do_sample=False, pad_token_id=0)
    alone = model.generate(short, max_new_tokens=4, do_sample=False, pad_token_id=0)
    assert torch.equal(out[1, 2:], alone[0])


def test_prefix_generate_beam_search_and_several_returns_run():
    tm = tiny_model("llama")
    model = pa.attach(tm.model, "prefix_tuning", num_virtual_tokens=2)
    ids = torch.randint(3, 100, (2, 4), generator=torch.Generator().manual_seed(2))
    assert model.generate(ids, max_new_tokens=3, num_beams=3, num_return_sequences=2, pad_token_id=0).shape == (4, 7)
    assert model.generate(ids, max_new_tokens=3, do_sample=True, num_return_sequences=3, pad_token_id=0).shape[0] == 6


@pytest.mark.parametrize("kind", ["bert", "llama"])
@pytest.mark.parametrize("method", ["prompt_tuning", "prefix_tuning"])
def test_forward_backward_and_outputs_line_up_with_inputs(method, kind):
    tm = tiny_model(kind)
    model = pa.attach(tm.model, method, num_virtual_tokens=3)
    x = tm.make_inputs(3, 0)
    model.train()
    out = tm.output(model(**x))
    with model.disable():
        ref = tm.output(model(**x))
    assert out.shape == ref.shape, "virtual positions must not show in the outputs"
    out.float().pow(2).sum().backward()
    grads = [p.grad for p in model.adapter_parameters().values()]
    assert grads and all(g is not None and torch.isfinite(g).all() and g.abs().sum() > 0 for g in grads)


def test_prompt_tuning_labels_padded_and_loss_matches_manual():
    tm = tiny_model("llama")
    model = pa.attach(tm.model, "prompt_tuning", num_virtual_tokens=4)
    ids = torch.randint(3, 100, (2, 7), generator=torch.Generator().manual_seed(3))
    out = model(input_ids=ids, labels=ids)
    assert out.logits.shape == (2, 7, 100)
    # the model's own loss over [virtual (ignored) + tokens]: the last virtual position predicts token 0
    full = model.model(inputs_embeds=torch.cat([
        model.adapted_layers()["model.embed_tokens"].adapters["default"].prompt.expand(2, -1, -1),
        tm.model.get_input_embeddings()(ids)], 1))
    logits = full.logits[:, 3:-1]  # positions predicting tokens 0..n-1
    manual = torch.nn.functional.cross_entropy(logits.reshape(-1, 100), ids.reshape(-1))
    torch.testing.assert_close(out.loss, manual, atol=1e-5, rtol=1e-5)


def test_prompt_tuning_positional_input_ids_and_attention_mask():
    tm = tiny_model("bert")
    model = pa.attach(tm.model, "prompt_tuning", num_virtual_tokens=2)
    ids = torch.randint(3, 100, (2, 6), generator=torch.Generator().manual_seed(4))
    mask = torch.ones(2, 6, dtype=torch.long)
    with torch.no_grad():
        by_name = model(input_ids=ids, attention_mask=mask).logits
        positional = model(ids, mask).logits
    torch.testing.assert_close(positional, by_name, atol=0, rtol=0)


def test_prompt_init_from_token_ids_copies_their_embeddings():
    tm = tiny_model("llama")
    model = pa.attach(tm.model, "prompt_tuning", num_virtual_tokens=5, init_token_ids=[10, 11])
    prompt = model.adapted_layers()["model.embed_tokens"].adapters["default"].prompt
    emb = tm.model.get_input_embeddings().weight
    assert torch.equal(prompt, emb[[10, 11, 10, 11, 10]].detach().float())


def test_prefix_content_positions_are_unshifted_for_bert():
    """BERT's absolute positions stay 0..n−1 with a prefix, so the full position table remains usable."""
    tm = tiny_model("bert")
    model = pa.attach(tm.model, "prefix_tuning", num_virtual_tokens=10)
    ids = torch.randint(3, 100, (1, 32), generator=torch.Generator().manual_seed(5))  # = max_position_embeddings
    with torch.no_grad():
        assert torch.isfinite(model(input_ids=ids).logits).all()


@pytest.mark.parametrize("kind", ["vit", "mlp"])
def test_prefix_tuning_refuses_models_without_kv_cache(kind):
    with pytest.raises(MethodError, match="key/value cache"):
        pa.attach(tiny_model(kind).model, "prefix_tuning")


def test_prefix_tuning_must_cover_every_attention_layer():
    with pytest.raises(MethodError, match="every attention layer"):
        pa.attach(tiny_model("llama").model, "prefix_tuning", targets=["model.layers.0.self_attn"])


@pytest.mark.parametrize(("method", "kind"), [("prompt_tuning", "vit"), ("prompt_tuning", "mlp"),
                                              ("trainable_tokens", "vit")])
def test_token_methods_refuse_models_without_token_embeddings(method, kind):
    with pytest.raises((MethodError, pa.TargetError), match="nn.Embedding|matched no module"):
        pa.attach(tiny_model(kind).model, method, **({"token_indices": [1]} if method == "trainable_tokens" else {}))


def test_input_space_methods_refuse_mixed_batches():
    tm = tiny_model("llama")
    model = pa.attach(tm.model, "prefix_tuning", name="a", num_virtual_tokens=2)
    with pytest.raises(ValueError, match="mixed"):
        model(**tm.make_inputs(2, 0), adapter_names=["a", pa.BASE_NAME])


# --- trainable tokens -------------------------------------------------------------------------------


def test_trainable_tokens_train_only_chosen_rows_of_resized_vocabulary():
    tm = tiny_model("llama")
    tm.model.resize_token_embeddings(102)  # two new tokens: 100, 101
    new_rows = tm.model.get_input_embeddings().weight[100:].detach().clone()
    model = pa.attach(tm.model, "trainable_tokens", token_indices=[100, 101])
    assert model.count_parameters().adapter == 2 * 32
    ids = torch.tensor([[5, 100, 7, 101]])
    model.train()
    opt = torch.optim.SGD(model.adapter_parameters().values(), lr=1.0)
    model(input_ids=ids).logits.pow(2).mean().backward()
    opt.step()
    merged = model.merge_and_unload().get_input_embeddings().weight
    original = tiny_model("llama").model.get_input_embeddings().weight
    assert torch.equal(merged[:100], original)  # every old row untouched
    assert (merged[100:] - new_rows).abs().min() > 0  # both new rows trained


def test_trainable_tokens_errors():
    with pytest.raises(MethodError, match="outside the vocabulary"):
        pa.attach(tiny_model("bert").model, "trainable_tokens", token_indices=[5, 100])
    with pytest.raises(MethodError, match="empty"):
        pa.attach(tiny_model("bert").model, "trainable_tokens")
    from transformers import LlamaConfig, LlamaForCausalLM

    tied = LlamaForCausalLM(LlamaConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                        intermediate_size=32, tie_word_embeddings=True))
    with pytest.raises(MethodError, match="ties its output head"):
        pa.attach(tied, "trainable_tokens", token_indices=[1])
