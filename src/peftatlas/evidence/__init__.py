"""Evidence: real offline models and data, the training loop, budget matching, the arena and its store.

* :mod:`.data`     — labelled text sources (packaged offline sets, CSV/JSONL) with fixed, seeded splits;
* :mod:`.models`   — encoders (packaged MiniLM, a tiny config-built BERT, any transformers model) + a head;
* :mod:`.train`    — one training run (AdamW, warmup/decay, per-epoch validation, best epoch, DDP-aware);
* :mod:`.budget`   — solving each method's size knob to land on a target trainable-parameter count;
* :mod:`.store`    — the SQLite results store (one record per run, keyed by its full config hash);
* :mod:`.profiles` — the ``smoke`` / ``quick`` / ``full`` experiment plans;
* :mod:`.arena`    — running a profile: LR sweeps, seeds, OOD, learning curves; resumable.
"""
