"""Catalog entries: gain control on activations, input space, and architectural adapters."""

from __future__ import annotations

from .model import Claim, Entry, Override, Paper, Prediction, marks

ENTRIES = [
    Entry(
        id="ia3", name="(IA)³", family="activation", methods=("ia3",),
        paper=Paper("Few-Shot Parameter-Efficient Fine-Tuning is Better and Cheaper than In-Context Learning",
                    "Liu, Tam, Muqeeth, Mohta, Huang, Bansal, Raffel", "NeurIPS", 2022, "2205.05638"),
        hypothesis="Adaptation is channel-wise gain control: FT's change to the key/value projections is mostly a "
                   "rescaling of W0's rows, and to the FFN down-projection a rescaling of its columns.",
        pseudocode="k = l_k ⊙ (W_k @ x);  v = l_v ⊙ (W_v @ x)       # l ← 1\n"
                   "f = W_down @ (l_ff ⊙ act(W_up @ a))\nmerge: W_k ← diag(l_k) W_k;  W_down ← W_down diag(l_ff)",
        measurements=("row-gain fit of ΔW_FT on key/value and column-gain fit on the FFN down-projection vs nulls",
                      "arena: (IA)³ vs BitFit and LoRA at equal parameters"),
        headline=Claim("T-Few (T0-3B + (IA)³) reaches 75.8% on RAFT, above the human baseline 73.5%, and beats "
                       "GPT-3 175B in-context learning on held-out T0 tasks (72.4 vs 66.6).",
                       "Liu et al. 2022, Tables 1–2", "FT"),
        counter=(Claim("The headline uses the full T-Few recipe (extra losses, multitask pre-training of the vectors); "
                       "the parametrisation alone contributes less.", "Liu et al. 2022, §3.2–3.4", "FT"),),
        literature=marks((True, "one vector per adapted layer"), (True, "above LoRA in few-shot T0 evaluation (self)"),
                         (True, "above full fine-tuning few-shot (self)"), (True, "designed and shown for few-shot"),
                         (False, "no"), (True, "in PEFT, commonly used")),
        predictions=(Prediction("null", "a row rescaling of W0 captures ≥ 20× more of ΔW_FT on key/value "
                                "projections than of the permuted null", probe="fit", stat="row_gains", null="perm",
                                direction=1, matrices=r"(key|value|k_proj|v_proj)$", min_ratio=20.0),
                     Prediction("null", "a column rescaling captures ≥ 20× more of ΔW_FT on the FFN down-projection "
                                "than of the null", probe="fit", stat="col_gains", null="perm", direction=1,
                                matrices=r"(output\.dense|down_proj|fc2)$", min_ratio=20.0))),
    Entry(
        id="ln_tuning", name="LayerNorm tuning", family="activation", methods=("ln_tuning",),
        paper=Paper("Tuning LayerNorm in Attention: Towards Efficient Multi-Modal LLM Finetuning",
                    "Zhao, Tu, Wei, Mei, Xie", "ICLR", 2024, "2312.11420"),
        hypothesis="Adaptation is mostly a re-weighting of residual-stream channels shared by every consumer of a "
                   "normalised stream: tuning LayerNorm gains and biases suffices.",
        pseudocode="h = (γ + δγ) ⊙ (x − μ)/σ + (β + δβ)      # only δγ, δβ train\n"
                   "q, k, v = W_q h, W_k h, W_v h             # = W diag(γ') x̂: a shared column scaling",
        measurements=("column-gain fit of ΔW_FT on the LN consumers (query/key/value, FFN up) vs nulls",
                      "arena: LN tuning vs BitFit and (IA)³"),
        headline=Claim("Tuning LayerNorm in attention improves a 13B multimodal LLM by over 20% on average across five "
                       "tasks vs LoRA, with 41.9% fewer trainable parameters and 17.6% less memory.",
                       "Zhao et al. 2024, abstract", "ABS"),
        counter=(Claim("Tuning FFN parameters together with LayerNorm decreases performance.",
                       "Qi et al. 2022 (arXiv:2211.08682)", "ABS"),
                 Claim("The headline setting is modality adaptation with a trainable connector.", "Zhao et al. 2024",
                       "ABS")),
        literature=marks((True, "2d per LayerNorm"), (True, "above LoRA in multimodal adaptation (self)"),
                         (False, "no"), (False, "no"), (False, "no"), (False, "in PEFT, niche")),
        predictions=(Prediction("null", "ΔW_FT of the LayerNorm consumers is more of a column rescaling than chance",
                                probe="fit", stat="col_gains", null="perm", direction=1,
                                matrices=r"(query|key|value|intermediate\.dense|q_proj|k_proj|v_proj|up_proj)$"),)),
    Entry(
        id="loreft", name="LoReFT", family="activation", methods=("loreft",),
        paper=Paper("ReFT: Representation Finetuning for Language Models",
                    "Wu, Arora, Wang, Geiger, Jurafsky, Manning, Potts", "NeurIPS", 2024, "2404.03592"),
        hypothesis="Task behaviour can be installed by editing hidden states inside a low-dimensional linear subspace "
                   "at a few positions, with the weights untouched.",
        pseudocode="for each intervened (layer, positions P):\n    h = H[l][P]\n"
                   "    H[l][P] = h + (h @ Wᵀ + b − h @ Rᵀ) @ R      # R orthonormal rows (r × d)",
        measurements=("PCA rank and seed-consistent rank of FT's hidden-state change (needs activations)",
                      "arena: LoReFT vs LoRA"),
        headline=Claim("Commonsense LLaMA-7B: 0.031% parameters, 80.2 vs DoRA 78.4 and LoRA 74.7; 15–65× more "
                       "parameter-efficient than LoRA.", "Wu et al. 2024, Table 1 and abstract", "FT"),
        counter=(Claim("Arithmetic LLaMA-7B: LoReFT 42.6 vs LoRA 46.9 (own Table 2); baselines copied.",
                       "Wu et al. 2024, Table 2", "FT"),),
        literature=marks((True, "0.03% parameters"), (True, "above LoRA on commonsense (copied baselines)"),
                         (False, "no"), (False, "no"), (False, "no"), (False, "pyreft, niche")),
        notes="Acts on activations at chosen positions; weight probes do not test it."),
    Entry(
        id="prompt_tuning", name="Prompt tuning", family="input-space", methods=("prompt_tuning",),
        paper=Paper("The Power of Scale for Parameter-Efficient Prompt Tuning", "Lester, Al-Rfou, Constant", "EMNLP",
                    2021, "2104.08691"),
        hypothesis="A frozen model can be steered to full fine-tuning quality by moving only its input context in "
                   "embedding space, once the model is large.",
        pseudocode="E = embed(tokens)                # frozen\n"
                   "X = concat(P, E)                 # P: p trainable embeddings\n"
                   "logits = frozen_model(X)",
        measurements=("arena: prompt tuning vs LoRA at equal parameters; gap to FT vs model size",),
        headline=Claim("As models exceed billions of parameters prompt tuning closes the gap and matches model tuning "
                       "(T5, SuperGLUE); better robustness to domain transfer.", "Lester et al. 2021, abstract, Fig. 1",
                       "ABS"),
        counter=(Claim("Soft prompts cannot change the relative attention over content and only bias attention outputs "
                       "in a fixed direction.", "Petrov, Torr, Bibi 2024 (arXiv:2310.19698)", "ABS"),
                 Claim("GPT-3 175B PreEmbed: WikiSQL 63.1 vs full FT 73.8.", "Hu et al. 2022, Table 4", "FT")),
        literature=marks((True, "p·d parameters in total"), (False, "below LoRA in LoRA Table 4"),
                         (False, "matches, does not beat, at 11B"), (False, "no"),
                         (True, "more robust than model tuning under domain transfer (self)"),
                         (True, "standard in PEFT")),
        notes="Input-space method: weight probes do not test it."),
    Entry(
        id="prefix_tuning", name="Prefix tuning", family="input-space", methods=("prefix_tuning",),
        paper=Paper("Prefix-Tuning: Optimizing Continuous Prompts for Generation", "Li, Liang", "ACL", 2021,
                    "2101.00190"),
        hypothesis="Adaptation is an input-dependent bias of each attention output toward a learned p-dimensional "
                   "value subspace, without changing attention among content tokens.",
        pseudocode="for each layer l:\n    K = concat(Pk[l], W_k H);  V = concat(Pv[l], W_v H)\n"
                   "    H = block_l(H, K, V)",
        measurements=("arena: prefix tuning vs LoRA; low-data comparison with full FT",),
        headline=Claim("With 0.1% of the parameters, comparable in the full-data setting, better than fine-tuning in "
                       "low-data settings, and extrapolates better.", "Li & Liang 2021, abstract", "ABS"),
        counter=(Claim("GPT-3 WikiSQL 70.1 vs FT 73.8; performance drops beyond 32 prefix tokens.",
                       "Hu et al. 2022, Table 4 and §5.5", "FT"),
                 Claim("Same attention limitation as prompt tuning.", "Petrov et al. 2024", "ABS")),
        literature=marks((True, "0.1% parameters"), (False, "below LoRA (LoRA Tables 3–4)"), (False, "no"),
                         (True, "beats fine-tuning in low-data settings (self)"),
                         (True, "extrapolates better to unseen topics (self)"), (True, "standard in PEFT")),
        notes="Input-space method: weight probes do not test it."),
    Entry(
        id="trainable_tokens", name="Trainable tokens", family="input-space", methods=("trainable_tokens",),
        paper=Paper("Trainable tokens (Hugging Face PEFT feature; no paper)", "Hugging Face PEFT", "software", None),
        hypothesis="A task can be taught by training the embeddings of a few (new or existing) tokens while every "
                   "other weight stays frozen.",
        pseudocode="rows = chosen token ids\nE'[rows] = E[rows] + Δ          # Δ: k × d trainable\n"
                   "everything else frozen",
        measurements=("arena: vs prompt tuning at equal parameters",),
        headline=Claim("Trains only the embeddings of the given token ids: less RAM and far less disk than training "
                       "the whole embedding matrix (about 4 GiB of VRAM saved on gemma-2-2b in preliminary "
                       "benchmarks); usable together with LoRA.",
                       "Hugging Face PEFT documentation, package reference 'Trainable Tokens', read 2026-12-04",
                       "ABS"),
        counter=(),
        literature=marks((True, "k·d parameters"), (False, "no"), (False, "no"), (False, "no"), (False, "no"),
                         (False, "a PEFT utility")),
        notes="Not a weight-geometry hypothesis; listed for completeness."),
    Entry(
        id="houlsby", name="Adapter (Houlsby)", family="architecture", methods=("houlsby",),
        paper=Paper("Parameter-Efficient Transfer Learning for NLP",
                    "Houlsby, Giurgiu, Jastrzębski, Morrone, de Laroussilhe, Gesmundo, Attariyan, Gelly", "ICML", 2019,
                    "1902.00751"),
        hypothesis="Task adaptation is a small nonlinear residual correction in a low-dimensional bottleneck, applied "
                   "after both the attention and the FFN sublayer.",
        pseudocode="adapter(z) = z + W_up @ act(W_down @ z + b_d) + b_u     # near identity at init\n"
                   "h = LN(h + adapter(Attn(h)));  h = LN(h + adapter(FFN(h)))",
        measurements=("arena: Houlsby vs LoRA at equal parameters", "linear-fit R² of the learned adapter map"),
        headline=Claim("Within 0.4% of full fine-tuning on GLUE adding 3.6% parameters per task (BERT-large).",
                       "Houlsby et al. 2019, abstract", "ABS"),
        counter=(Claim("RoBERTa-large: Adapter H 0.8M 86.4 vs LoRA 0.8M 88.6; +30% inference latency at batch 1.",
                       "Hu et al. 2022, Tables 1–2", "FT"),),
        literature=marks((True, "3.6% parameters per task"), (False, "below LoRA at equal budget (third party)"),
                         (False, "no"), (False, "no"), (False, "no"), (True, "the original adapter; widely used"))),
    Entry(
        id="pfeiffer", name="Adapter (Pfeiffer / Lin)", family="architecture", methods=("pfeiffer",),
        paper=Paper("AdapterFusion: Non-Destructive Task Composition for Transfer Learning",
                    "Pfeiffer, Kamath, Rücklé, Cho, Gurevych", "EACL", 2021, "2005.00247"),
        hypothesis="Adapting the FFN-side output alone is enough: one bottleneck adapter per layer after the FFN beats "
                   "splitting the budget between attention and FFN sites.",
        pseudocode="h = LN(h + Attn(h))                 # no adapter here\nh = LN(h + adapter(FFN(h)))",
        measurements=("arena: Pfeiffer vs Houlsby at equal total parameters",),
        headline=Claim("AdapterFusion outperforms full fine-tuning and multi-task learning on 16 NLU tasks.",
                       "Pfeiffer et al. 2021, abstract", "ABS"),
        counter=(Claim("Adapter P 0.8M 87.9 vs LoRA 0.8M 88.6 and FT 88.9 (RoBERTa-large).", "Hu et al. 2022, "
                       "Table 2", "FT"),),
        literature=marks((True, "one adapter per layer"), (False, "below LoRA (third party)"),
                         (False, "AdapterFusion's win uses several task adapters"), (False, "no"), (False, "no"),
                         (True, "the default in the adapters library"))),
    Entry(
        id="adapterdrop", name="AdapterDrop", family="architecture", methods=("adapterdrop",),
        paper=Paper("AdapterDrop: On the Efficiency of Adapters in Transformers",
                    "Rücklé, Geigle, Glockner, Beck, Pfeiffer, Reimers, Gurevych", "EMNLP", 2021, "2010.11918"),
        hypothesis="Task-specific change concentrates in the upper layers: removing adapters from the lowest layers "
                   "costs little accuracy.",
        pseudocode="for l, layer in enumerate(layers):\n    h = layer(h)\n    if l ≥ n_drop: h = h + adapter_l(h)",
        measurements=("depth profile of ‖ΔW_FT‖/‖W0‖", "arena: dropping the lowest vs the highest layers"),
        headline=Claim("Dynamically reduces the computational overhead of multi-task inference with minimal loss.",
                       "Rücklé et al. 2021, abstract", "ABS"),
        counter=(),
        literature=marks((True, "adapters on a subset of layers"), (False, "no"), (False, "no"), (False, "no"),
                         (False, "no"), (False, "no"))),
    Entry(
        id="compacter", name="Compacter", family="architecture", methods=("compacter",),
        paper=Paper("Compacter: Efficient Low-Rank Hypercomplex Adapter Layers",
                    "Karimi Mahabadi, Henderson, Ruder", "NeurIPS", 2021, "2106.04647"),
        hypothesis="Adapter weights in different layers share a low-dimensional 'slow' Kronecker structure; per-layer "
                   "differences are rank-1, so sharing loses nothing.",
        pseudocode="W_down = Σ_i kron(A_shared[i], s_i t_iᵀ)      # A_shared: n×n, shared by all layers\n"
                   "h = h + W_up @ act(W_down @ h + b_d) + b_u",
        measurements=("arena: Compacter vs unshared factors and vs Houlsby at equal parameters",),
        headline=Claim("Training 0.047% of T5-base's parameters is on par with full fine-tuning on GLUE and better on "
                       "SuperGLUE and low-resource settings.", "Karimi Mahabadi et al. 2021, abstract", "ABS"),
        counter=(Claim("The (IA)³ authors could not reproduce this and found (IA)³ considerably better.",
                       "Liu et al. 2022, §3.3", "FT"),),
        literature=marks((True, "0.047% parameters"), (False, "no LoRA comparison"),
                         (True, "self-reported on SuperGLUE"), (True, "self-reported in low-resource settings"),
                         (False, "no"), (False, "no")),
        override=Override("non-replication", "on par with or better than full fine-tuning",
                          "an independent group could not reproduce the results", "Liu et al. 2022 (IA)³ §3.3",
                          cap=4.0)),
    Entry(
        id="poly", name="Poly / MHR (skill routing)", family="architecture", methods=("poly",),
        paper=Paper("Combining Parameter-efficient Modules for Task-level Generalisation (arXiv title: Combining "
                    "Modular Skills in Multitask Learning)",
                    "Ponti, Sordoni, Bengio, Reddy", "EACL", 2023, "2202.13914"),
        hypothesis="Task adaptation is compositional: a shared library of small skill adapters recombined by learned "
                   "task-to-skill routing generalises across tasks.",
        pseudocode="skills = {(A_k, B_k)}, k = 1..K      # LoRA skills per layer\n"
                   "w = routing[task]                     # learned, per task\nΔW = Σ_k w_k B_k A_k",
        measurements=("arena (multi-task only): Poly vs per-task LoRA",),
        headline=Claim("Skills as LoRA-like parameterisations averaged by a learned task–skill allocation raise sample "
                       "efficiency (BabyAI reinforcement learning) and few-shot generalisation (160 CrossFit tasks) "
                       "over fully shared, task-specific and hypernetwork-generated parameters.",
                       "Ponti et al., arXiv 2202.13914, abstract", "ABS"),
        counter=(),
        literature=marks((True, "LoRA-sized skills"), (False, "no"), (False, "no"),
                         (True, "sample efficiency and few-shot generalisation to new tasks (self-reported, "
                                "abstract) — a multi-task claim the single-task arena cannot re-test"), (False, "no"),
                         (False, "niche")),
        notes="A multi-task hypothesis; the single-task arena does not test it."),
    Entry(
        id="xlora", name="X-LoRA / MoLoRA (mixture of LoRA experts)", family="architecture",
        methods=("xlora", "molora"),
        paper=Paper("X-LoRA: Mixture of Low-Rank Adapter Experts", "Buehler, Buehler", "APL Machine Learning", 2024,
                    "2402.07148"),
        hypothesis="Different inputs need different low-rank updates: a learned gate mixing LoRA experts per token "
                   "beats one adapter.",
        pseudocode="gate = softmax(router(h))             # per token\nΔy = Σ_k gate_k · B_k A_k x",
        measurements=("arena: mixture vs single LoRA at equal parameters",),
        headline=Claim("A token-level, layer-wise gate over hidden states mixes pre-trained LoRA experts into new "
                       "combinations; shown by case studies (protein mechanics and design, knowledge recall), not by "
                       "a controlled comparison.", "Buehler & Buehler, APL Machine Learning 2024, abstract", "ABS"),
        counter=(),
        literature=marks((False, "K experts cost K× a LoRA"), (False, "no controlled comparison"), (False, "no"),
                         (False, "no"), (False, "no"), (False, "niche")),
        notes="Registered here as `molora` (per-token router over K LoRA experts)."),
]
