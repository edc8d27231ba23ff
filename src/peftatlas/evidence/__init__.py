"""Evidence: real offline models and data, the training loop, budget matching, the arena and its store.

* :mod:`.data`     — labelled text sources (packaged offline sets, CSV/JSONL) with fixed, seeded splits;
* :mod:`.models`   — encoders (packaged MiniLM, a tiny config-built BERT, any transformers model) + a head;
* :mod:`.train`    — one training run (AdamW, warmup/decay, per-epoch validation, best epoch, DDP-aware);
* :mod:`.budget`   — solving each method's size knob to land on a target trainable-parameter count;
* :mod:`.store`    — the SQLite results store (one record per run, keyed by its full config hash);
* :mod:`.profiles` — the ``smoke`` / ``quick`` / ``catalog`` / ``full`` experiment profiles;
* :mod:`.codeversion` — code versions: the import closure of a method and of the training loop;
* :mod:`.plan`     — the run plan: arms (budgets, matched LoRA), LR choice with grid extension, seeds, curves;
* :mod:`.runspec`  — one run as a pure, serialisable spec; :mod:`.execute` — a worker running one spec;
* :mod:`.executors`, :mod:`.parallel`, :mod:`.ray_executor` — the driver loop (sole store writer) and the
  sequential / processes / Ray executors; :mod:`.artifacts` — the full-FT footprint;
* :mod:`.arena`    — running a profile end to end (plan + executor), the results table; resumable.
"""
