"""Settings beyond the sentence encoder: a causal LM and a vision transformer, each with its own task.

* :mod:`.assets` — the pretrained models, converted once from PyPI wheels into a cache folder;
* :mod:`.causal_lm` — SmolLM2-135M-Instruct on generative question → answer-type tuning;
* :mod:`.vision` — DINOv2-S/14 on few-shot digit classification;
* :mod:`.profiles` — the CPU and GPU plans of both settings and their time estimates.
"""
