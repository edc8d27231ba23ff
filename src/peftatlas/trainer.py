"""transformers ``Trainer`` with adapter-only checkpoints: :class:`AdapterTrainer`.

The plain ``transformers.Trainer`` already trains an :class:`~peftatlas.AdaptedModel` with its
default arguments (the wrapper shows the wrapped model's ``forward`` signature, so
``remove_unused_columns`` keeps the right columns and the label names are found). But for a model
that is neither a ``PreTrainedModel`` nor a ``peft.PeftModel`` it writes the whole
``state_dict()`` into every checkpoint. :class:`AdapterTrainer` changes only that::

    checkpoint-N/  adapter.safetensors + adapter.json   (each adapter; others in checkpoint-N/<name>/)
                   + what Trainer writes itself (trainer_state.json, optimizer, scheduler, RNG state)

and reads those folders back for ``resume_from_checkpoint`` and ``load_best_model_at_end``
(:func:`peftatlas.core.io.restore_adapter`, in place, same adapter names). Models that are not
adapted go through the plain ``Trainer`` code.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from transformers import Trainer

from .core.io import META, restore_adapter
from .core.model import AdaptedModel


class AdapterTrainer(Trainer):
    """``transformers.Trainer`` whose checkpoints hold the adapters (and head copies) only."""

    def _adapted(self) -> AdaptedModel | None:
        model = self.accelerator.unwrap_model(self.model, keep_torch_compile=False)
        return model if isinstance(model, AdaptedModel) else None

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        model = self._adapted()
        if model is None:
            super()._save(output_dir, state_dict)
            return
        if not self.args.should_save:
            return
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        model.save_pretrained(output_dir)
        if self.processing_class is not None:
            self.processing_class.save_pretrained(output_dir)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: Any = None) -> None:
        adapted = self._adapted() if model is None else (model if isinstance(model, AdaptedModel) else None)
        if adapted is None or not (Path(resume_from_checkpoint) / META).is_file():
            super()._load_from_checkpoint(resume_from_checkpoint, model)
            return
        restore_checkpoint(adapted, resume_from_checkpoint)

    def _load_best_model(self) -> None:
        adapted = self._adapted()
        best = self.state.best_model_checkpoint
        if adapted is None or best is None or not (Path(best) / META).is_file():
            super()._load_best_model()
            return
        restore_checkpoint(adapted, best)


def restore_checkpoint(model: AdaptedModel, folder: str | Path) -> list[str]:
    """Restore every adapter saved in ``folder`` by ``save_pretrained``: the root one, and each
    subfolder named after an adapter of ``model``."""
    folder = Path(folder)
    restored = [restore_adapter(model, folder)]
    for sub in sorted(p for p in folder.iterdir() if p.name in model.specs and (p / META).is_file()):
        restored.append(restore_adapter(model, sub, sub.name))
    return restored
