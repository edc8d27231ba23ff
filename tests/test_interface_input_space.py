"""Prompt and prefix tuning on T5 (encoder and decoder, generate) and prefix tuning on GPT-2's fused
``c_attn`` (training, generate with a cache); refusals name the real cause."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import peftatlas as pa
from peftatlas.core.method import MethodError


def t5(initializer_factor: float = 1.0):
    """A tiny random T5; ``initializer_factor=10`` makes its greedy continuations vary (at 1 they repeat one token)."""
    from transformers import T5Config, T5ForConditionalGeneration

    torch.manual_seed(0)
    cfg = T5Config(vocab_size=100, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=2, num_heads=4,
                   decoder_start_token_id=0, pad_token_id=0, eos_token_id=1, dropout_rate=0.0,
                   initializer_factor=initializer_factor)
    return T5ForConditionalGeneration(cfg).eval()


def varied_t5():
    """The tiny T5 with larger weights (varied greedy continuations) and no end token (every step runs)."""
    model = t5(initializer_factor=10.0)
    model.generation_config.eos_token_id = None
    return model


def gpt2():
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=100, n_embd=32, n_layer=2, n_head=4, n_positions=64, resid_pdrop=0.0,
                     embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=1, eos_token_id=1)
    return GPT2LMHeadModel(cfg).eval()


def _ids(batch: int, n: int, seed: int) -> torch.Tensor:
    return torch.randint(3, 100, (batch, n), generator=torch.Generator().manual_seed(seed))


def _perturb(model, scale: float = 0.5) -> None:
    g = torch.Generator().manual_seed(5)
    for layer in model.adapted_layers().values():
        for adapter in layer.adapters.values():
            adapter.perturb_(g, scale)


def _greedy_seq2seq(model, ids: torch.Tensor, steps: int, dec: torch.Tensor | None = None, **extra) -> torch.Tensor:
    """Reference decoding: re-run the whole decoder sequence through the adapted forward at each step."""
    if dec is None:
        dec = torch.zeros(ids.shape[0], 1, dtype=torch.long)  # decoder_start_token_id
    for _ in range(steps):
        with torch.no_grad():
            logits = model(input_ids=ids, decoder_input_ids=dec, **extra).logits
        dec = torch.cat([dec, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    return dec


def _beam_seq2seq(model, ids: torch.Tensor, steps: int, beams: int) -> torch.Tensor:
    """Reference beam search (no end token reached, length penalty 1): every step re-runs each beam's whole
    decoder sequence through the adapted forward; keeps the ``beams`` best sums of log-probabilities."""
    out = []
    for row in ids:
        seqs, scores = torch.zeros(1, 1, dtype=torch.long), torch.zeros(1)
        for _ in range(steps):
            with torch.no_grad():
                logits = model(input_ids=row.expand(len(seqs), -1), decoder_input_ids=seqs).logits[:, -1]
            total = (scores[:, None] + logits.float().log_softmax(-1)).flatten()
            scores, best = total.topk(beams)
            vocab = logits.shape[-1]
            seqs = torch.cat([seqs[best // vocab], (best % vocab)[:, None]], dim=1)
        out.append(seqs[0])
    return torch.stack(out)


def _greedy_causal(model, ids: torch.Tensor, steps: int) -> torch.Tensor:
    cur = ids
    for _ in range(steps):
        with torch.no_grad():
            logits = model(input_ids=cur).logits
        cur = torch.cat([cur, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    return cur


def _train_step_moves_every_adapter_tensor(model, **batch) -> None:
    model.train()
    loss = model(**batch).loss
    loss.backward()
    grads = {k: p.grad for k, p in model.adapter_parameters().items()}
    assert grads and all(g is not None and torch.isfinite(g).all() and g.abs().sum() > 0 for g in grads.values()), [
        k for k, g in grads.items() if g is None or g.abs().sum() == 0]
    model.eval()


# --- T5: prefix tuning ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("targets", [None, ["SelfAttention"]])
def test_t5_prefix_on_encoder_and_decoder_trains_and_generates_like_full_forwards(targets):
    model = pa.attach(t5(), "prefix_tuning", targets=targets, num_virtual_tokens=3)
    layers = model.adapted_layers()
    assert sorted(layers) == [f"{s}.block.{i}.layer.0.SelfAttention" for s in ("decoder", "encoder") for i in (0, 1)]
    ids, labels = _ids(2, 6, 0), _ids(2, 4, 1)
    _train_step_moves_every_adapter_tensor(model, input_ids=ids, labels=labels)
    _perturb(model)
    out = model.generate(ids, max_new_tokens=5, do_sample=False)
    assert torch.equal(out, _greedy_seq2seq(model, ids, 5))  # cached decoding = full forwards
    with model.disable():
        base = model.generate(ids, max_new_tokens=5, do_sample=False)
    assert not torch.equal(out, base), "the prefix did not change generation"


def test_t5_prefix_keeps_the_decoder_causal():
    model = pa.attach(t5(), "prefix_tuning", num_virtual_tokens=3)
    _perturb(model)
    ids, dec = _ids(1, 5, 2), _ids(1, 6, 3)
    changed = dec.clone()
    changed[0, 4:] = (changed[0, 4:] + 7) % 97 + 3
    with torch.no_grad():
        a = model(input_ids=ids, decoder_input_ids=dec).logits
        b = model(input_ids=ids, decoder_input_ids=changed).logits
    torch.testing.assert_close(a[:, :4], b[:, :4])  # earlier positions never see later tokens
    assert not torch.allclose(a[:, 4:], b[:, 4:])


def test_t5_prefix_padded_encoder_row_equals_its_unpadded_run():
    model = pa.attach(t5(), "prefix_tuning", num_virtual_tokens=2)
    _perturb(model)
    short, dec = _ids(1, 4, 4), _ids(1, 3, 5)
    padded = torch.cat([short, torch.zeros(1, 2, dtype=torch.long)], dim=1)
    mask = torch.tensor([[1, 1, 1, 1, 0, 0]])
    with torch.no_grad():
        alone = model(input_ids=short, decoder_input_ids=dec).logits
        with_pad = model(input_ids=padded, attention_mask=mask, decoder_input_ids=dec).logits
    torch.testing.assert_close(with_pad, alone, atol=1e-5, rtol=1e-5)


def test_t5_prefix_on_one_stack_and_partial_stacks():
    model = pa.attach(t5(), "prefix_tuning", targets=r"encoder\..*SelfAttention", num_virtual_tokens=2)
    assert all(n.startswith("encoder.") for n in model.adapted_layers())
    _perturb(model)
    ids = _ids(2, 5, 6)
    out = model.generate(ids, max_new_tokens=3, do_sample=False)
    assert torch.equal(out, _greedy_seq2seq(model, ids, 3))
    with pytest.raises(MethodError) as exc:
        pa.attach(t5(), "prefix_tuning", targets=r"encoder\.block\.0\..*SelfAttention", num_virtual_tokens=2)
    assert "every attention layer of the encoder needs a prefix" in str(exc.value) and "[0] of 2" in str(exc.value)


@pytest.mark.parametrize("targets", [r"decoder\..*SelfAttention", None])
def test_t5_prefix_on_the_decoder_generates_like_full_forwards(targets):
    """Varied continuations, batch 3, greedy and beams: cached decoding = full forwards (the decoder's
    prefix enters its cache at the first step; later steps count it in the cache length)."""
    model = pa.attach(varied_t5(), "prefix_tuning", targets=targets, num_virtual_tokens=3)
    _perturb(model, 1.0)
    ids = _ids(3, 5, 23)
    out = model.generate(ids, max_new_tokens=8, do_sample=False)
    ref = _greedy_seq2seq(model, ids, 8)
    assert torch.equal(out, ref) and len(ref.unique()) > 5
    assert torch.equal(model.generate(ids, max_new_tokens=8, do_sample=False, use_cache=False), ref)
    with model.disable():
        assert not torch.equal(model.generate(ids, max_new_tokens=8, do_sample=False), out)
    beams = model.generate(ids, max_new_tokens=6, num_beams=2, do_sample=False, length_penalty=1.0)
    assert torch.equal(beams, _beam_seq2seq(model, ids, 6, beams=2))


def test_t5_prefix_beam_search_runs():
    model = pa.attach(t5(), "prefix_tuning", num_virtual_tokens=2)
    out = model.generate(_ids(2, 4, 7), max_new_tokens=3, num_beams=3, num_return_sequences=2)
    assert out.shape[0] == 4


# --- T5: prompt tuning ------------------------------------------------------------------------------------------


def test_t5_prompt_goes_on_the_encoder_by_default_and_generates():
    model = pa.attach(t5(), "prompt_tuning", num_virtual_tokens=4)
    assert list(model.adapted_layers()) == ["encoder.embed_tokens"]
    ids, labels = _ids(2, 5, 8), _ids(2, 5, 9)  # labels as long as the input: must not be shifted
    with torch.no_grad():
        out = model(input_ids=ids, labels=labels)
    assert out.logits.shape == (2, 5, 100)
    _train_step_moves_every_adapter_tensor(model, input_ids=ids, labels=labels)
    _perturb(model)
    gen = model.generate(ids, max_new_tokens=4, do_sample=False)  # was "You passed inputs_embeds and input_ids"
    assert torch.equal(gen, _greedy_seq2seq(model, ids, 4))
    with model.disable():
        assert not torch.equal(gen, model.generate(ids, max_new_tokens=4, do_sample=False))


def test_t5_prompt_on_the_encoder_equals_the_prompt_embedded_by_hand():
    model = pa.attach(t5(), "prompt_tuning", num_virtual_tokens=3)
    _perturb(model)
    ids, dec = _ids(2, 5, 10), _ids(2, 3, 11)
    prompt = model.adapted_layers()["encoder.embed_tokens"].adapters["default"].prompt
    with torch.no_grad():
        got = model(input_ids=ids, decoder_input_ids=dec).logits
        with model.disable():
            embeds = torch.cat([prompt.expand(2, -1, -1), model.model.shared(ids)], dim=1)
            want = model.model(inputs_embeds=embeds, decoder_input_ids=dec).logits
    torch.testing.assert_close(got, want)


def test_t5_prompt_on_the_decoder_trains_and_lines_up_with_labels():
    model = pa.attach(t5(), "prompt_tuning", targets=["decoder.embed_tokens"], num_virtual_tokens=3)
    assert list(model.adapted_layers()) == ["decoder.embed_tokens"]
    ids, labels = _ids(2, 5, 12), _ids(2, 4, 13)
    with torch.no_grad():
        out = model(input_ids=ids, labels=labels)
    assert out.logits.shape == (2, 4, 100)  # prompt positions dropped
    _train_step_moves_every_adapter_tensor(model, input_ids=ids, labels=labels)


def _decoder_prompt_t5(p: int = 3):
    model = pa.attach(varied_t5(), "prompt_tuning", targets=["decoder.embed_tokens"],
                      num_virtual_tokens=p)
    _perturb(model, 1.0)
    return model


def test_t5_prompt_on_the_decoder_generates_like_full_forwards():
    """Cached greedy decoding (the prompt enters the cache at the first step) = re-running [P; embed(ids)]."""
    model = _decoder_prompt_t5()
    ids = _ids(3, 5, 12)
    out = model.generate(ids, max_new_tokens=8, do_sample=False)
    ref = _greedy_seq2seq(model, ids, 8)
    assert torch.equal(out, ref)
    assert len(ref.unique()) > 5, "the continuations must vary"
    assert torch.equal(model.generate(ids, max_new_tokens=8, do_sample=False, use_cache=False), ref)
    with model.disable():
        base = model.generate(ids, max_new_tokens=8, do_sample=False)
    assert not torch.equal(base, out), "the prompt changed nothing"
    assert not model.model._forward_pre_hooks, "generate() left its step hook behind"
    with torch.no_grad():  # forward after generate: still one prompt, positions dropped
        assert model(input_ids=ids, decoder_input_ids=ref).logits.shape == (3, 9, 100)


def test_t5_prompt_on_the_decoder_generates_from_given_decoder_ids_and_mask():
    model = _decoder_prompt_t5(p=2)
    ids, start = _ids(2, 4, 20), torch.tensor([[0, 7], [0, 9]])
    ref = _greedy_seq2seq(model, ids, 5, dec=start)
    assert torch.equal(model.generate(ids, decoder_input_ids=start, max_new_tokens=5, do_sample=False), ref)
    masked = model.generate(ids, decoder_input_ids=start, decoder_attention_mask=torch.ones_like(start),
                            max_new_tokens=5, do_sample=False)
    assert torch.equal(masked, ref)


def test_t5_prompt_on_the_decoder_beam_search_equals_full_forward_beams():
    model = _decoder_prompt_t5()
    ids = _ids(2, 5, 21)
    out = model.generate(ids, max_new_tokens=6, num_beams=2, do_sample=False, length_penalty=1.0)
    assert torch.equal(out, model.generate(ids, max_new_tokens=6, num_beams=2, do_sample=False, use_cache=False))
    assert torch.equal(out, _beam_seq2seq(model, ids, 6, beams=2))
    both = model.generate(ids, max_new_tokens=4, num_beams=3, num_return_sequences=2)
    assert both.shape[0] == 4 and not model.model._forward_pre_hooks


def test_t5_prompt_on_the_decoder_generate_error_removes_the_step_hook():
    model = _decoder_prompt_t5()
    with pytest.raises(ValueError):  # transformers refuses more returned sequences than beams
        model.generate(_ids(1, 4, 22), max_new_tokens=2, num_beams=2, do_sample=True, num_return_sequences=3)
    assert not model.model._forward_pre_hooks


# --- GPT-2: prefix tuning on the fused c_attn -------------------------------------------------------------------


def test_gpt2_prefix_trains_and_generates_with_cache_like_full_forwards():
    model = pa.attach(gpt2(), "prefix_tuning", num_virtual_tokens=3)
    assert sorted(model.adapted_layers()) == ["transformer.h.0.attn", "transformer.h.1.attn"]
    assert model.count_parameters().adapter == 2 * (2 * 3 * 32)
    ids = _ids(2, 6, 14)
    _train_step_moves_every_adapter_tensor(model, input_ids=ids, labels=ids)
    _perturb(model)
    out = model.generate(ids, max_new_tokens=5, do_sample=False, pad_token_id=0)
    assert torch.equal(out, _greedy_causal(model, ids, 5))
    with torch.no_grad():
        logits = model(input_ids=ids).logits
        with model.disable():
            base = model(input_ids=ids).logits
    assert logits.shape == base.shape and not torch.allclose(logits, base), "the prefix changed nothing"


def test_gpt2_prefix_projected_init_reads_the_fused_projection():
    """init="projected": keys and values are the key and value thirds of c_attn applied to the same inputs."""
    model = pa.attach(gpt2(), "prefix_tuning", num_virtual_tokens=2)
    layer = model.adapted_layers()["transformer.h.0.attn"]
    adapter, c_attn = layer.adapters["default"], layer.base.c_attn  # Conv1D: y = x W + b, W is (32, 96)
    w_k, b_k, w_v, b_v = c_attn.weight[:, 32:64], c_attn.bias[32:64], c_attn.weight[:, 64:], c_attn.bias[64:]
    with torch.no_grad():
        inputs = torch.linalg.solve(w_k.T, (adapter.prefix_key - b_k).T).T  # the N(0, I) draws behind the keys
        torch.testing.assert_close(inputs @ w_v + b_v, adapter.prefix_value, atol=1e-4, rtol=1e-4)


def test_gpt2_prefix_left_padded_generate_matches_unpadded():
    model = pa.attach(gpt2(), "prefix_tuning", num_virtual_tokens=2)
    _perturb(model)
    long, short = _ids(1, 6, 15), _ids(1, 4, 16)
    batch = torch.cat([long, torch.cat([torch.zeros(1, 2, dtype=torch.long), short], 1)])
    mask = torch.ones(2, 6, dtype=torch.long)
    mask[1, :2] = 0
    out = model.generate(batch, attention_mask=mask, max_new_tokens=4, do_sample=False, pad_token_id=0)
    alone = model.generate(short, max_new_tokens=4, do_sample=False, pad_token_id=0)
    assert torch.equal(out[1, 2:], alone[0])


# --- refusals name the real cause -------------------------------------------------------------------------------


class _FusedNoCache(nn.Module):
    """An attention module with a layer index and fused projections, whose forward takes no cache."""

    def __init__(self) -> None:
        super().__init__()
        self.layer_idx, self.head_dim = 0, 4
        self.qkv = nn.Linear(8, 24)

    def forward(self, x):
        return self.qkv(x)[..., :8]


class _TinyAttentionModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attn = _FusedNoCache()

    def forward(self, x):
        return self.attn(x)


def test_prefix_refusal_names_the_real_cause():
    with pytest.raises(MethodError) as exc:
        pa.attach(_TinyAttentionModel(), "prefix_tuning", num_virtual_tokens=2)
    text = str(exc.value)
    assert "\n" not in text and "attn" in text and "no key/value projections" in text


def test_prefix_refusal_for_vit_says_its_attention_takes_no_cache():
    from peftatlas.testing import tiny_model

    with pytest.raises(MethodError) as exc:
        pa.attach(tiny_model("vit").model, "prefix_tuning", num_virtual_tokens=2)
    text = str(exc.value)
    assert "\n" not in text and "cannot take one" in text and "ViT" in text
