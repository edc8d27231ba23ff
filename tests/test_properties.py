"""The generic property suite: every registered method × every tiny model.

A method joins by registration (``@register`` in ``peftatlas/methods/``); nothing here names a
method. A method may declare, per model kind, why a property or a model does not apply
(``test_skip``), and gives small hyperparameters in ``test_config`` (and, in ``test_variants``,
more configurations that switch on more of its math; each runs as a case ``method+variant``).

The layer-type kinds (a tiny GPT-2 with ``Conv1D``, a CNN with ``Conv2d``/``Conv1d``, an untied
embedding + ``lm_head``) run every weight-space method whose ``layer_types`` cover the kind's
layers on those layers; every other weight-space method must refuse them with a one-line error.
"""

from __future__ import annotations

import copy
import gc
import weakref

import pytest
import torch

import peftatlas as pa
from peftatlas.core.layer import AdaptedModule, MergeError
from peftatlas.core.layer_types import LayerTypeError, MatrixView, adapts_as_matrix
from peftatlas.testing import LAYER_TYPE_KINDS, TINY_KINDS, tiny_model


def _suite_cases() -> list[str]:
    """Every registered method, plus ``method+variant`` for each of its ``test_variants`` (extra
    hyperparameters that switch on more math, e.g. LoRA's trained bias), run through the same suite."""
    cases = []
    for name, cls in pa.registered_methods().items():
        cases += [name, *(f"{name}+{v}" for v in getattr(cls, "test_variants", {}))]
    return sorted(cases)


METHODS = _suite_cases()


def method_name(case: str) -> str:
    """The registered method of a suite case (``lora+bias`` → ``lora``)."""
    return case.partition("+")[0]


def method_class(case: str):
    return pa.get_method(method_name(case))


def config_of(case: str) -> dict:
    """The case's hyperparameters: the method's ``test_config``, updated by its variant's."""
    cls, variant = method_class(case), case.partition("+")[2]
    return {**cls.test_config, **(cls.test_variants[variant] if variant else {})}


def _kind_layer_types(kind: str) -> tuple[str, ...]:
    return tiny_model(kind).layer_types


def _applies(method: str, kind: str) -> bool:
    """Whether (method, kind) runs the property suite: layer-type kinds need a weight-space method
    whose ``layer_types`` cover the kind's layers (GPT-2 runs every other method with its defaults)."""
    cls = method_class(method)
    if kind not in LAYER_TYPE_KINDS:
        return True
    if not _layer_method(method):
        return kind == "gpt2"
    return set(_kind_layer_types(kind)) <= set(cls.layer_types)


def _layer_method(method: str) -> bool:
    """A weight-space method that adapts layers (seen as matrices) chosen by targets."""
    cls = method_class(method)
    return adapts_as_matrix(cls) and cls.default_targets is not None


CASES = [(m, k) for m in METHODS for k in TINY_KINDS if _applies(m, k)]
REFUSED = [(m, k) for m in METHODS for k in LAYER_TYPE_KINDS if _layer_method(m) and not _applies(m, k)]


def targets_of(method: str, tm) -> dict:
    """``targets=`` for ``method`` on the tiny model: the kind's layers for weight-space methods."""
    if tm.targets is not None and _layer_method(method):
        return {"targets": tm.targets}
    return {}


def _skip_reason(method: str, kind: str) -> str | None:
    return getattr(method_class(method), "test_skip", {}).get(kind)


def build(method: str, kind: str, name: str = "default", seed: int = 0, dtype=torch.float32):
    reason = _skip_reason(method, kind)
    if reason:
        pytest.skip(f"{method} on {kind}: {reason}")
    tm = tiny_model(kind)
    tm.model.to(dtype)
    base_state = {k: v.clone() for k, v in tm.model.state_dict().items()}
    model = pa.attach(tm.model, method_name(method), name=name, seed=seed, **targets_of(method, tm),
                      **config_of(method))
    return tm, model, base_state


def inputs(tm, model, batch: int = 4, seed: int = 1) -> dict:
    """The tiny model's inputs, floating ones cast to the model's dtype."""
    dtype = next(model.parameters()).dtype
    return {k: v.to(dtype) if v.is_floating_point() else v for k, v in tm.make_inputs(batch, seed).items()}


def run(tm, model, batch: int = 4, seed: int = 1, **extra):
    with torch.no_grad():
        return tm.output(model(**inputs(tm, model, batch, seed), **extra))


def perturb(model, name: str | None = None, seed: int = 7, scale: float = 0.1) -> None:
    """Move every adapter (and head) parameter away from its init, deterministically."""
    g = torch.Generator().manual_seed(seed)
    layers = model.adapted_layers()
    for ln in sorted(layers):
        for an, adapter in layers[ln].adapters.items():
            if name is None or an == name:
                adapter.perturb_(g, scale)


def base_output(method: str, kind: str, dtype=torch.float32) -> torch.Tensor:
    tm = tiny_model(kind)
    tm.model.to(dtype)
    return run(tm, tm.model)


def has_adapters(model) -> bool:
    return bool(model.adapted_layers())


@pytest.mark.parametrize(("method", "kind"), CASES)
def test_noop_at_init(method, kind):
    tm, model, _ = build(method, kind)
    cls = method_class(method)
    y = run(tm, model)
    y0 = base_output(method, kind)
    if cls.noop_at_init:
        torch.testing.assert_close(y, y0, atol=1e-6, rtol=0)
    else:
        assert not torch.allclose(y, y0), f"{method} claims it is not a no-op at init, but it is"


def _custom_function_nodes(root: torch.Tensor) -> list[weakref.ref]:
    """Weak references to the graph's nodes of custom ``torch.autograd.Function``s (a method's hand-written
    backward). Once the step is done and its tensors are deleted they must be freed: a ctx that keeps a
    view of its own output forms a cycle through the output's ``grad_fn`` that nothing frees, and every
    step then leaks the layer's activations (the qGOFT leak of 2026-12-05)."""
    seen, kept, stack, found = set(), [], [root.grad_fn], []
    while stack:
        node = stack.pop()
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        kept.append(node)  # no id is reused while the walk runs
        if isinstance(node, torch.autograd.function.BackwardCFunction):
            found.append(weakref.ref(node))
        stack.extend(next_node for next_node, _ in node.next_functions)
    return found


@pytest.mark.parametrize(("method", "kind"), CASES)
def test_training_step_changes_output_and_only_adapter_params_train(method, kind):
    tm, model, base_state = build(method, kind)
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert trainable, "nothing to train"
    adapter_ids = {id(p) for p in model.adapter_parameters().values()}
    head_ids = {id(p) for p in model.head_parameters().values()}
    before = run(tm, model)
    model.train()
    opt = torch.optim.Adam(trainable, lr=1e-2)
    out = tm.output(model(**tm.make_inputs(4, 1)))
    loss = out.float().pow(2).mean() + (out.float() * torch.linspace(-1, 1, out.shape[-1])).sum()
    extra = model.extra_loss()
    if extra is not None:
        loss = loss + extra
    custom_nodes = _custom_function_nodes(loss)
    loss.backward()
    del out, loss, extra
    gc.collect()
    leaked = [type(node()).__name__ for node in custom_nodes if node() is not None]
    assert not leaked, f"the step's graph outlives it (a ctx holds a view of its output?): {leaked}"
    for n, p in model.named_parameters():
        if id(p) in adapter_ids or id(p) in head_ids:
            continue
        assert p.grad is None, f"frozen parameter {n} received a gradient"
    grads = [p.grad for p in model.adapter_parameters().values() if p.grad is not None]
    if has_adapters(model):
        assert any(g.abs().sum() > 0 for g in grads), "no adapter parameter received a gradient"
    opt.step()
    model.eval()
    after = run(tm, model)
    assert not torch.allclose(before, after), "a training step did not change the output"
    # the frozen base (adapter wrappers hidden) is bit-identical to before
    restored = model.unload().state_dict()
    for k, v in base_state.items():
        if not any(k == h or k.startswith(h + ".") for h in model.head_names):
            assert torch.equal(restored[k], v), f"base parameter {k} changed during training"


@pytest.mark.parametrize(("method", "kind"), CASES)
def test_dense_reference_and_param_count(method, kind):
    _tm, model, _ = build(method, kind)
    perturb(model)
    cls = method_class(method)
    g = torch.Generator().manual_seed(3)
    for ln, layer in model.adapted_layers().items():
        adapter = layer.adapters["default"]
        base = layer.matrix if adapts_as_matrix(cls) else layer.base  # what the method was built on
        assert sum(p.numel() for p in adapter.parameters()) == cls.param_count(base, adapter.cfg), ln
        x = _layer_input(base, g)
        if x is None:
            continue
        with torch.no_grad():
            ref = adapter.reference_forward(x, base)
        for grad in (False, True):  # inference and training may take different fast paths
            with torch.set_grad_enabled(grad):
                fast = adapter(x, base)
            torch.testing.assert_close(fast.detach().float(), ref.float(), atol=cls.test_atol, rtol=1e-4,
                                       msg=f"{ln} (grad {'on' if grad else 'off'})")


def _layer_input(base, g):
    if isinstance(base, (torch.nn.Linear, MatrixView)):
        return torch.randn(5, base.in_features, generator=g)
    if isinstance(base, torch.nn.LayerNorm):
        return torch.randn(5, *base.normalized_shape, generator=g)
    if isinstance(base, torch.nn.Embedding):
        return torch.randint(0, base.num_embeddings, (5, 3), generator=g)
    if isinstance(base, torch.nn.Conv2d):
        return torch.randn(2, base.in_channels, 16, 16, generator=g)
    weight = getattr(base, "weight", None)
    if weight is not None and weight.dim() == 1:  # RMSNorm-like
        return torch.randn(5, weight.shape[0], generator=g)
    return None


@pytest.mark.parametrize(("method", "kind"), CASES)
@pytest.mark.exactness
def test_merge_equals_unmerged_idempotent_and_exact_unmerge(method, kind):
    tm, model, base_state = build(method, kind)
    cls = method_class(method)
    perturb(model)
    y = run(tm, model)
    if not cls.mergeable:
        if has_adapters(model):
            with pytest.raises(MergeError):
                model.merge()
        return
    model.merge()
    torch.testing.assert_close(run(tm, model), y, atol=cls.test_atol * 10, rtol=1e-4)
    merged_state = {k: v.clone() for k, v in model.state_dict().items()}
    model.merge()  # idempotent
    for k, v in model.state_dict().items():
        assert torch.equal(v, merged_state[k]), f"second merge changed {k}"
    model.unmerge()
    torch.testing.assert_close(run(tm, model), y, atol=cls.test_atol * 10, rtol=1e-4)
    with model.disable():
        torch.testing.assert_close(run(tm, model), base_output(method, kind), atol=0, rtol=0)
    unloaded = model.unload().state_dict()
    for k, v in base_state.items():
        assert torch.equal(unloaded[k], v), f"unmerge did not restore {k} exactly"


@pytest.mark.parametrize(("method", "kind"), CASES)
def test_merge_and_unload_keeps_outputs(method, kind):
    tm, model, _ = build(method, kind)
    cls = method_class(method)
    if not cls.mergeable:
        pytest.skip(f"{method} is not mergeable (checked to raise in the merge test)")
    perturb(model)
    y = run(tm, model)
    plain = model.merge_and_unload()
    assert not any(isinstance(m, AdaptedModule) for m in plain.modules())
    with torch.no_grad():
        torch.testing.assert_close(tm.output(plain(**tm.make_inputs(4, 1))), y, atol=cls.test_atol * 10, rtol=1e-4)


@pytest.mark.parametrize(("method", "kind"), CASES)
@pytest.mark.exactness
def test_nan_merge_raises_and_leaves_base_untouched(method, kind):
    _tm, model, _ = build(method, kind)
    cls = method_class(method)
    if not cls.mergeable or not has_adapters(model):
        pytest.skip(f"{method}: nothing to merge on {kind}")
    perturb(model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    layers = model.adapted_layers()
    last = layers[sorted(layers)[-1]].adapters["default"]
    with torch.no_grad():
        next(iter(last.parameters())).fill_(float("nan"))
    with pytest.raises(MergeError, match="non-finite"):
        model.merge()
    after = model.state_dict()
    for k, v in before.items():
        if ".adapters." not in f".{k}":
            assert torch.equal(after[k], v), f"failed merge modified {k}"
    assert not any(layer.merged for layer in model.adapted_layers().values())


@pytest.mark.parametrize(("method", "kind"), CASES)
@pytest.mark.exactness
def test_disable_and_unload_restore_base_exactly(method, kind):
    tm, model, base_state = build(method, kind)
    perturb(model)
    y = run(tm, model)
    y0 = base_output(method, kind)
    with model.disable():
        torch.testing.assert_close(run(tm, model), y0, atol=0, rtol=0)
    torch.testing.assert_close(run(tm, model), y, atol=0, rtol=0)
    head = model.head_names
    plain = model.unload()
    assert not any(isinstance(m, AdaptedModule) for m in plain.modules())
    state = plain.state_dict()
    assert set(state) == set(base_state)
    for k, v in base_state.items():
        assert torch.equal(state[k], v), f"unload did not restore {k}"
    del head


@pytest.mark.parametrize(("method", "kind"), CASES)
@pytest.mark.exactness
def test_save_load_roundtrip_exact(method, kind, tmp_path):
    tm, model, _ = build(method, kind)
    perturb(model)
    with torch.no_grad():
        for p in model.head_parameters().values():
            p.add_(0.05)
    y = run(tm, model)
    pa.save_adapter(model, tmp_path / "ad")
    assert sorted(p.name for p in (tmp_path / "ad").iterdir()) == ["adapter.json", "adapter.safetensors"]
    fresh = tiny_model(kind)
    loaded = pa.load_adapter(fresh.model, tmp_path / "ad")
    torch.testing.assert_close(run(fresh, loaded), y, atol=0, rtol=0)
    a = model.adapter_parameters()
    b = loaded.adapter_parameters()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k])
    # Same layouts, so both models reach their outputs through the same kernels on any CPU (a transposed
    # view and a dense copy of equal values can round differently under MKL's AVX2 path).
    saved_state, loaded_state = model.state_dict(), loaded.state_dict()
    for k, v in saved_state.items():
        if ".adapters." in f".{k}" or k.startswith("shared."):
            saved_layout, loaded_layout = v.stride(), loaded_state[k].stride()
            assert saved_layout == loaded_layout, f"{k}: layout {saved_layout} saved, {loaded_layout} loaded"
    assert not any(p.requires_grad for p in loaded.parameters()), "a loaded adapter is frozen by default"


@pytest.mark.parametrize(("method", "kind"), CASES)
def test_bf16_forward(method, kind):
    tm32, m32, _ = build(method, kind)
    perturb(m32, scale=0.05)
    y32 = run(tm32, m32)
    tm16, m16, _ = build(method, kind, dtype=torch.bfloat16)
    perturb(m16, scale=0.05)
    y16 = run(tm16, m16)
    assert y16.dtype == torch.bfloat16
    assert torch.isfinite(y16.float()).all()
    scale = y32.abs().max().clamp_min(1.0)
    err = (y16.float() - y32).abs().max() / scale
    assert err < 0.1, f"bf16 output deviates from fp32 by {err:.3f} (relative)"


@pytest.mark.parametrize(("method", "kind"), CASES)
def test_mixed_batch_rows_equal_single_adapter_runs(method, kind):
    tm, model, _ = build(method, kind, name="a", seed=0)
    cls = method_class(method)
    if not has_adapters(model):
        pytest.skip(f"{method} adds no layer adapters on {kind}")
    model.add_adapter("b", method_name(method), seed=1, **targets_of(method, tm), **config_of(method))
    perturb(model, "a", seed=11)
    perturb(model, "b", seed=12)
    rows = ["a", pa.BASE_NAME, "b", "a"]
    if not cls.supports_mixed_batch:
        with pytest.raises(ValueError, match="mixed"):
            run(tm, model, adapter_names=rows)
        return
    mixed = run(tm, model, adapter_names=rows)
    model.set_active("a")
    ya = run(tm, model)
    model.set_active("b")
    yb = run(tm, model)
    with model.disable():
        y0 = run(tm, model)
    expected = torch.stack([ya[0], y0[1], yb[2], ya[3]])
    torch.testing.assert_close(mixed, expected, atol=cls.test_atol * 10, rtol=1e-4)


@pytest.mark.parametrize(("method", "kind"), CASES)
def test_two_active_adapters_merge_in_order(method, kind):
    tm, model, _ = build(method, kind, name="a")
    cls = method_class(method)
    if not has_adapters(model) or not cls.mergeable or not getattr(cls, "stackable", True):
        pytest.skip(f"{method}: stacking two adapters on one layer does not apply")
    model.add_adapter("b", method_name(method), seed=1, **targets_of(method, tm), **config_of(method))
    perturb(model, "a", seed=11)
    perturb(model, "b", seed=12)
    model.set_active(["a", "b"])
    y = run(tm, model)
    model.set_active("a")
    assert not torch.allclose(run(tm, model), y), "the second active adapter had no effect"
    model.set_active(["a", "b"])
    model.merge()
    torch.testing.assert_close(run(tm, model), y, atol=cls.test_atol * 10, rtol=1e-4)


@pytest.mark.parametrize(("method", "kind"), REFUSED)
def test_unsupported_layer_type_is_refused_in_one_line(method, kind):
    tm = tiny_model(kind)
    before = {k: v.clone() for k, v in tm.model.state_dict().items()}
    with pytest.raises(LayerTypeError) as info:
        pa.attach(tm.model, method_name(method), targets=tm.targets, **config_of(method))
    msg = str(info.value)
    assert "\n" not in msg and method_name(method) in msg, msg
    assert any(t in msg for t in tm.layer_types), msg
    assert not any(isinstance(m, AdaptedModule) for m in tm.model.modules()), "a refused attach left a wrapper"
    assert all(torch.equal(v, before[k]) for k, v in tm.model.state_dict().items())


def _first_kind(method: str) -> str:
    return next(k for k in TINY_KINDS if not _skip_reason(method, k))


@pytest.mark.parametrize("method", METHODS)
def test_adapted_model_compiles_without_graph_breaks(method):
    """The adapter forward is one graph for ``torch.compile`` (training mode, where sampled ranks,
    dropout and routing live), and the compiled eval-mode model gives the eager outputs."""
    import torch._dynamo as dynamo

    kind = _first_kind(method)
    tm, model, _ = build(method, kind)
    perturb(model)
    x = inputs(tm, model)
    model.train()
    try:
        explained = dynamo.explain(model)(**x)
        assert explained.graph_break_count == 0, [str(r.reason)[:200] for r in explained.break_reasons[:3]]
        dynamo.reset()
        model.eval()
        compiled = torch.compile(model, fullgraph=True, backend="eager")
        with torch.no_grad():
            got, want = tm.output(compiled(**x)), tm.output(model(**x))
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    finally:
        dynamo.reset()


def test_every_method_has_catalog_fields():
    for name, cls in pa.registered_methods().items():
        assert cls.family, f"{name} has no family"
        assert cls.formula, f"{name} has no parameter formula"
        assert cls.__doc__ or (cls.__module__ and __import__(cls.__module__, fromlist=["x"]).__doc__), name


def test_deepcopy_of_adapted_model_runs():
    tm, model, _ = build("lora", "bert")
    clone = copy.deepcopy(model)
    torch.testing.assert_close(run(tm, clone), run(tm, model))
