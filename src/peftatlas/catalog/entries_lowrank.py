"""Catalog entries: references and the low-rank family."""

from __future__ import annotations

from .model import Claim, Entry, Override, Paper, Prediction, marks

# No Gaussian null for low-rank claims: any decaying spectrum beats an iid matrix (z ≈ +1,630 in the
# quick atlas), and the spectrum-keeping nulls cannot move a spectral statistic. The claim is stated as
# an effect size instead; the seed-consistent rank (analytic null) is the decisive low-rank test.
LOW_RANK_ENERGY = Prediction(
    "threshold", "ΔW_FT's top 8 directions hold at least half of its energy (‖ΔW‖²)",
    probe="spectral", stat="energy_top8", op=">=", value=0.5)
SEED_RANK_SMALL = Prediction(
    "threshold", "the seed-consistent signal rank k* is at most 5% of the dimension",
    probe="seed_rank", stat="k_star_left", op="<=", value=0.05, per_d=True)
HIGH_RAW_RANK = Prediction(
    "threshold", "the raw update is high-rank: r90 (directions for 90% of ‖ΔW‖²) is at least a quarter of d",
    probe="spectral", stat="r90", op=">=", value=0.25, per_d=True)

ENTRIES = [
    Entry(
        id="full", name="Full fine-tuning", family="reference", methods=("full",),
        paper=Paper("BERT: Pre-training of Deep Bidirectional Transformers for Language Understanding",
                    "Devlin, Chang, Lee, Toutanova", "NAACL", 2019, "1810.04805"),
        hypothesis="Adaptation needs a high-dimensional weight change: every structured parametrization with ≤ 1% "
                   "of the parameters loses accuracy against updating every weight at matched compute.",
        pseudocode="for every parameter p of the body:\n    δ_p ← 0; train δ_p          # p_eff = p + δ_p\n"
                   "optimizer state: two Adam moments per parameter",
        measurements=("source of ΔW_FT for every geometry probe", "r90 and seed-consistent k* of ΔW_FT",
                      "seed-to-seed spread, which sets the equivalence margin"),
        headline=Claim("Full fine-tuning learns perturbations whose rank is 10–100× that of typical LoRA "
                       "configurations; explaining 90% of ΔW's variance needs ≈ d/2 directions (Llama-2-7B).",
                       "Biderman et al. 2024 (arXiv:2405.09673) §5, Fig. 6", "FT"),
        counter=(Claim("200 randomly projected parameters reach 90% of full fine-tuning on MRPC (RoBERTa).",
                       "Aghajanyan et al. 2021 (arXiv:2012.13255)", "ABS"),
                 Claim("LoRA with 4.7M parameters matches or beats full fine-tuning of GPT-3 175B on MNLI and SAMSum.",
                       "Hu et al. 2022, Table 4", "FT")),
        literature=marks((False, "reference: trains everything"), (False, "reference"), (False, "reference"),
                         (False, "reference"), (False, "forgets more than LoRA (Biderman et al. 2024)"),
                         (True, "the default everyone compares against")),
        predictions=(HIGH_RAW_RANK,), graded=False,
        notes="Raw r90 counts optimisation noise as rank; the seed-consistent k* separates signal from noise."),
    Entry(
        id="head_only", name="Head-only (linear probe)", family="reference", methods=("head_only",),
        paper=Paper("Understanding intermediate layers using linear classifier probes", "Alain, Bengio",
                    "ICLR workshop", 2017, "1610.01644"),
        hypothesis="The pretrained features already separate the task linearly: a trained head on a frozen body "
                   "recovers most of full fine-tuning's accuracy.",
        pseudocode="freeze the body\ntrain only the task head: logits = W_head · pool(body(x))",
        measurements=("the floor s0 of the fraction of the full-FT gain recovered (R = 0 by definition)",),
        headline=Claim("Linear classifiers trained on a frozen network's features (probes) measure how suitable each "
                       "layer is for classification; on Inception v3 and ResNet-50 the linear separability grows "
                       "monotonically with depth.", "Alain & Bengio, abstract (arXiv 1610.01644), read 2026-12-04",
                       "ABS"),
        counter=(),
        literature=marks((True, "trains only the head"), (False, "reference"), (False, "reference"),
                         (False, "reference"), (False, "reference"), (True, "standard baseline")),
        graded=False),
    Entry(
        id="bitfit", name="BitFit", family="reference", methods=("bitfit",),
        paper=Paper("BitFit: Simple Parameter-efficient Fine-tuning for Transformer-based Masked Language-models",
                    "Ben Zaken, Ravfogel, Goldberg", "ACL (short)", 2022, "2106.10199"),
        hypothesis="Fine-tuning mostly translates pre-activations: most of the change in each layer's output is "
                   "input-independent, so training the biases alone recovers the full-FT gain.",
        pseudocode="for every module with a bias b:\n    δ_b ← 0; train δ_b           # y = W0 x + b0 + δ_b",
        measurements=("translation fraction τ = ‖E[Δy]‖²/E‖Δy‖² of FT's layer-output change (needs activations)",
                      "arena: recovered fraction at ≈0.1% parameters; vs LoRA at equal budget"),
        headline=Claim("Bias-only tuning is competitive with (and sometimes better than) full fine-tuning of BERT "
                       "on small-to-medium data.", "Ben Zaken et al. 2022, abstract", "ABS"),
        counter=(Claim("RoBERTa-base GLUE 85.2 vs full FT 86.4; GPT-3 WikiSQL 71.3 vs 73.8.",
                       "Hu et al. 2022 (LoRA), Tables 2 and 4", "FT"),
                 Claim("DeBERTaV3-base GLUE 86.27 vs full FT 88.27.", "Zhang et al. 2023 (AdaLoRA), Table 1", "FT")),
        literature=marks((True, "≈0.1% parameters, near parity on small GLUE tasks"),
                         (False, "below LoRA in third-party GLUE runs (LoRA Table 2)"),
                         (False, "below full FT on larger data (LoRA, AdaLoRA tables)"),
                         (True, "strongest relative to full FT in the low-data regime (paper abstract)"),
                         (False, "no OOD evidence"), (True, "standard baseline, in most PEFT libraries")),
        notes="Not probed by weight geometry: the translation test needs layer activations."),
    Entry(
        id="lora", name="LoRA (+ rsLoRA scaling)", family="low-rank", methods=("lora",),
        paper=Paper("LoRA: Low-Rank Adaptation of Large Language Models",
                    "Hu, Shen, Wallis, Allen-Zhu, Li, Wang, Wang, Chen", "ICLR", 2022, "2106.09685"),
        hypothesis="The weight change needed for adaptation has low intrinsic rank: a rank-r update with r ≪ d "
                   "recovers the full-FT gain, and its informative directions replicate across seeds.",
        pseudocode="A ~ random (r × d_in), B ← 0 (d_out × r)\nz = A @ dropout(x)\n"
                   "y = W0 @ x + (α / r) * (B @ z)        # rsLoRA: α / √r\nmerge: W0 += (α / r) * B @ A",
        measurements=("seed-consistent k* of ΔW_FT vs d", "energy of ΔW_FT in its top-r directions vs an iid null",
                      "arena: recovered fraction at 0.1% and 1% of the encoder"),
        headline=Claim("GPT-3 175B with 4.7M trainable parameters: MNLI-m 91.7 vs full FT 89.5, WikiSQL 73.4 vs 73.8.",
                       "Hu et al. 2022, Table 4", "FT"),
        counter=(Claim("LoRA substantially underperforms full fine-tuning in code and math continued pretraining, "
                       "and full FT's ΔW is 10–100× higher rank.", "Biderman et al. 2024 (arXiv:2405.09673)", "FT"),
                 Claim("LoRA introduces 'intruder dimensions' associated with forgetting.",
                       "Shuttleworth et al. 2024 (arXiv:2410.21228)", "ABS")),
        literature=marks((True, "parity with full FT at 0.01% of GPT-3's parameters (Table 4)"),
                         (False, "is the baseline"),
                         (False, "beats FT on some GPT-3 tasks, but third-party CPT/IFT results show gaps"),
                         (False, "no data-efficiency claim; 'learns less' (Biderman et al.)"),
                         (False, "no OOD claim"), (True, "the default PEFT method")),
        predictions=(LOW_RANK_ENERGY, SEED_RANK_SMALL),
        notes="rsLoRA (Kalajdzievski 2023, arXiv:2312.03732) changes only the scale α/√r: the `rslora` option."),
    Entry(
        id="adalora", name="AdaLoRA", family="low-rank", methods=("adalora",),
        paper=Paper("Adaptive Budget Allocation for Parameter-Efficient Fine-Tuning",
                    "Zhang, Chen, Bukharin, He, Cheng, Chen, Zhao", "ICLR", 2023, "2303.10512"),
        hypothesis="The needed rank differs strongly between matrices; allocating a fixed total rank by importance "
                   "beats uniform rank at equal budget.",
        pseudocode="ΔW = P @ diag(λ ⊙ mask) @ Q          # λ ← 0, P, Q Gaussian\n"
                   "loss += γ (‖PᵀP − I‖² + ‖QQᵀ − I‖²)\n"
                   "every Δt steps: score triplets by smoothed |grad × weight|; keep the top b(t) over ALL matrices",
        measurements=("coefficient of variation of k* across matrices (≥ 0.5 predicted)",
                      "arena: AdaLoRA vs uniform LoRA at equal total parameters"),
        headline=Claim("DeBERTaV3-base GLUE: 1.27M parameters avg 89.31 vs LoRA r=8 88.34 and full FT 88.09.",
                       "Zhang et al. 2023, Table 1", "FT"),
        counter=(Claim("RoBERTa-base GLUE: AdaLoRA 85.0 vs LoRA 85.2.", "Gao et al. 2024 (FourierFT), Table 2", "FT"),
                 Claim("E2E GPT-2 M: AdaLoRA 0.38M BLEU 68.2 vs LoRA 68.9.", "Kopiczko et al. 2024 (VeRA), Table 3",
                       "FT")),
        literature=marks((True, "≈LoRA's budget or less at parity"),
                         (False, "own win over LoRA (+0.97) not reproduced by two third-party tables"),
                         (False, "beats FT only in its own DeBERTa runs; third-party runs are below FT"),
                         (False, "no claim"), (False, "no claim"), (True, "in HF PEFT and commonly used")),
        predictions=(Prediction("threshold", "the seed-consistent rank, as a share of each matrix's side width "
                                "(k*/d), varies across matrices (CV ≥ 0.5)", probe="seed_rank", stat="k_star_left",
                                op=">=", value=0.5, aggregate="cv", per_d=True),)),
    Entry(
        id="dylora", name="DyLoRA", family="low-rank", methods=("dylora",),
        paper=Paper("DyLoRA: Parameter-Efficient Tuning of Pre-trained Models using Dynamic Search-Free Low-Rank "
                    "Adaptation", "Valipour, Rezagholizadeh, Kobyzev, Ghodsi", "EACL", 2023, "2210.07558"),
        hypothesis="Useful update directions can be ordered by importance: one run yields a nested family whose "
                   "rank-b truncation matches an independently trained rank-b LoRA for every b.",
        pseudocode="b ~ U{r_min..r_max}              # training only\n"
                   "y = W0 @ x + (α / b) * B[:, :b] @ (A[:b, :] @ x)\ninference: any b ≤ r_max, no retraining",
        measurements=("arena: truncations b = 1, 2, 4, … vs LoRA trained at each b",
                      "monotone decay of ‖B[:, i]‖‖A[i, :]‖ in i"),
        headline=Claim("4–7× faster than training LoRA at every rank when a range of ranks is needed, without "
                       "significant loss.", "Valipour et al. 2023, abstract", "ABS"),
        counter=(Claim("At fixed rank on RoBERTa-base GLUE: DyLoRA 84.5 vs LoRA 85.2.",
                       "Gao et al. 2024 (FourierFT), Table 2", "FT"),),
        literature=marks((True, "LoRA's budget, near parity"), (False, "slightly below LoRA at fixed rank"),
                         (False, "no"), (False, "no"), (False, "no"), (False, "niche")),
        notes="Its hypothesis is about training (nesting), not about ΔW_FT; weight probes do not test it."),
    Entry(
        id="lora_fa", name="LoRA-FA", family="low-rank", methods=("lora_fa",),
        paper=Paper("LoRA-FA: Memory-efficient Low-rank Adaptation for Large Language Models Fine-tuning",
                    "Zhang, Zhang, Shi, Chu, Li", "arXiv", 2023, "2308.03303"),
        hypothesis="The input side of the update can be a fixed random r-dim projection: task-relevant input "
                   "information survives it (Johnson–Lindenstrauss), so learning A adds nothing at a given r.",
        pseudocode="A0 ~ random (r × d_in), frozen;  B ← 0\nz = A0 @ x                 # only z is kept for backward\n"
                   "y = W0 @ x + (α / r) * B @ z",
        measurements=("functional residual of the best B for a random A0 vs the optimal rank-r fit (needs activations)",
                      "arena: LoRA-FA vs LoRA at equal rank and at equal parameters"),
        headline=Claim("Up to 1.4× lower memory than LoRA with accuracy close to full FT and LoRA.",
                       "Zhang et al. 2023, abstract", "ABS"),
        counter=(Claim("The reported parity (RoBERTa-large GLUE 87.7 vs LoRA 87.8) uses 3.7M vs 0.8M parameters.",
                       "Kopiczko et al. 2024 (VeRA), Table 2", "FT"),),
        literature=marks((False, "parity shown only at 4.6× LoRA's parameters"), (False, "no"), (False, "no"),
                         (False, "no"), (False, "no"), (False, "optimizer option in PEFT, not widely used"))),
    Entry(
        id="delta_lora", name="Delta-LoRA", family="low-rank", methods=("delta_lora",),
        paper=Paper("Delta-LoRA: Fine-Tuning High-Rank Parameters with the Delta of Low-Rank Matrices",
                    "Zi, Qi, Wang, Wang, Wong, Zhang", "arXiv", 2023, "2309.02411"),
        hypothesis="Copying the low-rank increments Δ(AB) into W fine-tunes high-rank parameters and removes the "
                   "low-rank limit.",
        pseudocode="y = W @ x + s * B @ (A @ x)            # W gets no gradient\n"
                   "after each step t ≥ K:  W += λ (B_new @ A_new − B_old @ A_old)",
        measurements=("rank of W_merged − W0 from a trained run (≤ 2r by the telescoping argument)",
                      "arena: vs LoRA with scale s + λ and no dropout"),
        headline=Claim("Significantly outperforms existing low-rank adaptation methods on NLU and NLG.",
                       "Zi et al. 2023, abstract", "ABS"),
        counter=(Claim("The W updates telescope: W_T − W_0 = λ(A_T B_T − A_K B_K), so the total update has rank ≤ 2r "
                       "(≤ r from K = 0).", "telescoping sum; checked after training in tests/test_wave2_methods.py",
                       "CALC"),),
        literature=marks((True, "LoRA's trainable parameters"), (False, "self-reported only"), (False, "no"),
                         (False, "no"), (False, "no"), (False, "no")),
        override=Override("analytic", "the method fine-tunes high-rank parameters",
                          "the merged update is a difference of two rank-r products: rank ≤ 2r, so the reachable "
                          "set is inside rank-2r LoRA", "telescoping sum; numerical check with r = 4, d = 64 gives "
                          "rank 4; the library's tests assert rank(W_merged − W0) ≤ 2r", cap=1.0)),
]
