"""Catalog entries: random subspaces with gains, and structured unrestricted-rank updates."""

from __future__ import annotations

from .entries_lowrank import HIGH_RAW_RANK
from .model import ABSTRACT_ONLY, Claim, Entry, Paper, Prediction, marks


def _fit(family: str, null: str, meaning: str, min_ratio: float | None = None) -> Prediction:
    return Prediction("null", meaning, probe="fit", stat=family, null=null, direction=1, min_ratio=min_ratio)


ENTRIES = [
    Entry(
        id="vera", name="VeRA", family="random-subspace", methods=("vera",),
        paper=Paper("VeRA: Vector-based Random Matrix Adaptation", "Kopiczko, Blankevoort, Asano", "ICLR", 2024,
                    "2310.11454"),
        hypothesis="One shared random rank-r basis, adapted per layer only by row and bottleneck scalings, reaches "
                   "LoRA's quality with ≥ 10× fewer trainable parameters, whatever the random draw.",
        pseudocode="A, B = shared_random(seed)       # frozen, Kaiming-uniform, same for every layer\n"
                   "b ← 0 (d_out), d ← 0.1 (r)\nz = d * (A @ x)\n"
                   "y = W0 @ x + b * (B @ z)         # ΔW = diag(b) B diag(d) A",
        measurements=("best VeRA fit of ΔW_FT vs the same fit on a spectrum-matched null (no advantage predicted: "
                      "'random suffices')", "arena: VeRA vs LoRA at equal parameters; spread over seeds"),
        headline=Claim("RoBERTa-large GLUE: 0.061M parameters avg 87.8 = LoRA 0.8M 87.8; E2E GPT-2 M BLEU 70.1 vs "
                       "LoRA 68.9.", "Kopiczko et al. 2024, Tables 2–3", "FT"),
        counter=(Claim("Gemma-7B commonsense: VeRA 79.70 vs LoRA r=1 81.46; Llama-3-8B GSM8K 63.76 vs 68.84.",
                       "Lingam et al. 2024 (SVFT), Tables 1–2", "FT"),
                 Claim("The E2E LoRA baseline was re-run (68.9); the LoRA paper reports 70.4.",
                       "Hu et al. 2022, Table 3", "FT")),
        literature=marks((True, "≈10× fewer parameters at parity on GLUE"),
                         (False, "wins on E2E against a weaker re-run LoRA; loses in third-party LLM runs"),
                         (False, "no"), (False, "no"), (False, "no"), (False, "in PEFT, moderately used")),
        predictions=(Prediction("null", "the VeRA fit of ΔW_FT is no better than on a spectrum-matched random matrix "
                                "(the basis is random, so it tracks no particular direction)", probe="fit",
                                stat="vera", null="spec", direction=0),)),
    Entry(
        id="randlora", name="RandLoRA", family="random-subspace", methods=("randlora",),
        paper=Paper("RandLoRA: Full-rank parameter-efficient fine-tuning of large models",
                    "Albert, Zhang, Saratchandran, Rodriguez-Opazo, van den Hengel, Abbasnejad", "ICLR", 2025,
                    "2502.00987"),
        hypothesis="The gap between LoRA and full fine-tuning is caused by rank, not by parameter count: a full-rank "
                   "update built from frozen random low-rank bases with learned diagonal scalings closes it at "
                   "equal parameters.",
        pseudocode="B_j, A random frozen (j = 1..d/r)\n"
                   "ΔW = Σ_j B_j Λ_j A Γ_j          # Λ_j (r×r), Γ_j (d×d) diagonal, trained\n"
                   "y = W0 @ x + ΔW @ x",
        measurements=("r90 of ΔW_FT vs d (a high-rank update predicted)",
                      "arena: RandLoRA vs LoRA at equal parameters as the budget grows"),
        headline=Claim("Full-rank updates help across vision and language and most on vision-language, where the "
                       "gap between LoRA and full fine-tuning shrinks or vanishes.", "Albert et al. 2025, abstract",
                       "ABS"),
        counter=(),
        literature=marks((True, "parameter counts comparable to LoRA"),
                         (True, "above LoRA at equal parameters as the budget grows (Fig. 1)"),
                         (False, "narrows, rarely closes the gap"), (False, "no"), (False, "no"),
                         (False, "recent")),
        predictions=(HIGH_RAW_RANK,)),
    Entry(
        id="vblora", name="VB-LoRA", family="random-subspace", methods=("vblora",),
        paper=Paper("VB-LoRA: Extreme Parameter Efficient Fine-Tuning with Vector Banks", "Li, Han, Ji", "NeurIPS",
                    2024, "2405.15179"),
        hypothesis="LoRA's factors across all modules and layers are redundant: every sub-vector can be a sparse "
                   "top-k mixture of one small shared vector bank without losing quality.",
        pseudocode="bank ∈ R^{h×b} shared by all layers\nfor each sub-vector u of every A, B:\n"
                   "    u = Σ_s softmax(topk(σ_u, k))_s · bank_s     # σ_u trainable logits\n"
                   "ΔW = B @ A",
        measurements=("arena: VB-LoRA vs VeRA and LoRA at equal stored parameters",),
        headline=Claim("Llama2-13B: 0.4% of LoRA's stored parameters with better results.",
                       "Li et al. 2024, abstract", "ABS"),
        counter=(),
        literature=marks((True, "0.4% of LoRA's stored parameters"), (True, "self-reported above LoRA (Llama2-13B)"),
                         (False, "no"), (False, "no"), (False, "no"), (False, "in PEFT, rarely used")),
        notes="A cross-layer sharing hypothesis; weight probes of one matrix do not test it."),
    Entry(
        id="surm", name="SURM (structured unrestricted-rank matrices)", family="structured-full-rank",
        methods=("surm_circulant", "surm_toeplitz", "surm_kronecker", "surm_ldr", "surm_adapter"),
        paper=Paper("Structured Unrestricted-Rank Matrices for Parameter Efficient Fine-tuning",
                    "Sehanobish, Dubey, Choromanski, Basu Roy Chowdhury, Jain, Sindhwani, Chaturvedi", "NeurIPS",
                    2024, "2406.17740"),
        hypothesis="At a fixed parameter budget the needed ΔW is better approximated by structured full-rank "
                   "matrices (circulant, Toeplitz, Kronecker, low displacement rank) than by a low-rank matrix.",
        pseudocode="circulant: ΔW = α·C(a ⊙ b)            # C(c)x = irfft(rfft(c)·rfft(x)), b ← 0\n"
                   "Toeplitz:  ΔW = α·T(b)·T(a)\nKronecker: ΔW = (α/r)·(B ⊗ A)        # applied by reshapes\n"
                   "LDR:       ΔW = α·Σ_i C(g_i) S(h_i)   # S skew-circulant, g ← 0\n"
                   "adapter:   h ← h + σ(C(a ⊙ b) h) + bias",
        measurements=("circulant / Toeplitz / Kronecker fits of ΔW_FT vs the same fits after permuting rows and "
                      "columns (coordinate order carries no meaning in MLP layers)",
                      "arena: SURM vs LoRA and FourierFT at equal parameters"),
        headline=Claim("5–7% accuracy gains on image classification when replacing LoRA's low-rank matrices; up to "
                       "12× fewer adapter parameters on GLUE with virtually no loss.", "Sehanobish et al. 2024, "
                       "abstract; Fig. 1 (PSD target approximation)", "ABS"),
        counter=(Claim("Fig. 1's advantage on PSD targets comes from the identity-like diagonal; after an independent "
                       "row/column permutation, or on iid/low-rank targets, structured fits are no better per "
                       "parameter than low rank.", "reproduced by `peftatlas expressivity surm` (docs/methods/surm.md)",
                       "CALC"),
                 Claim("The official circulant/Toeplitz code is square-only.", "structured-matrices-PEFT repo",
                       "CODE")),
        literature=marks((True, "O(d) parameters per layer"),
                         (False, "+5–7% over LoRA on ViT classification rests on the abstract alone (the per-dataset "
                                 "tables were not retrieved): not earned until read in the paper"),
                         (False, "no"), (False, "the low-resource image experiments are marked unverified in the "
                                            "research notes: not earned"),
                         (False, "no"), (False, "no third-party use")),
        predictions=(_fit("circulant", "perm", "ΔW_FT fits a circulant better than its row/column-permuted self"),
                     _fit("toeplitz", "perm", "ΔW_FT fits a Toeplitz matrix better than its permuted self"),
                     _fit("kronecker", "perm", "ΔW_FT fits a Kronecker product better than its permuted self"))),
    Entry(
        id="fourierft", name="FourierFT", family="structured-full-rank", methods=("fourierft",),
        paper=Paper("Parameter-Efficient Fine-Tuning with Discrete Fourier Transform",
                    "Gao, Wang, Chen, Liu, Wu, Chen, Li", "ICML", 2024, "2405.03003"),
        hypothesis="ΔW is well represented by a few 2-D Fourier coefficients — better than by the same number of "
                   "coefficients in a generic orthogonal basis, even at randomly chosen frequencies.",
        pseudocode="E = random frequency set (shared, frozen); c ~ N(0, 1) trainable (n)\n"
                   "F = zeros(d_out, d_in); F[E] = c\nΔW = α · Re(ifft2(F))\ny = W0 @ x + ΔW @ x",
        measurements=("energy of ΔW_FT in its best n real Fourier coefficients vs permuted and spectrum-matched nulls",
                      "arena: FourierFT vs LoRA at equal parameters"),
        headline=Claim("RoBERTa-base GLUE: 0.024M parameters avg 85.0 vs LoRA 0.3M 85.2; Fourier basis beats a "
                       "random orthogonal basis by 3.5 points on RTE.", "Gao et al. 2024, Tables 2 and 6", "FT"),
        counter=(Claim("Frequency-domain adaptation beats low rank only with carefully selected frequencies.",
                       "Du et al. 2025 (LoCA, arXiv:2502.06820)", "ABS"),),
        literature=marks((True, "≈12× fewer parameters than LoRA at near parity"), (False, "slightly below LoRA"),
                         (False, "no"), (False, "no"), (False, "no"), (False, "in PEFT, moderately used")),
        predictions=(_fit("fourier", "perm", "ΔW_FT's best sparse Fourier fit captures ≥ 2× the energy of the same "
                          "fit on its permuted self", min_ratio=2.0),
                     _fit("fourier", "spec", "…and of the fit on a spectrum-matched random matrix", min_ratio=2.0))),
    Entry(
        id="c3a", name="C3A (circular convolution)", family="structured-full-rank", methods=("c3a",),
        paper=Paper("Parameter-Efficient Fine-Tuning via Circular Convolution",
                    "Chen, Cheng, Liu, Gao, Tsung, Li, Li", "ACL", 2025, "2407.19342"),
        hypothesis="A block-circulant ΔW — full rank from few parameters, applied by FFT — adapts as well as or "
                   "better than LoRA at the same budget.",
        pseudocode="kernel ∈ R^{(d_out/b) × (d_in/b) × b}\nΔW = block_circulant(kernel)   # b×b circulant blocks\n"
                   "ΔW @ x = blockwise irfft(rfft(kernel) · rfft(x_blocks))",
        measurements=("circulant fit of ΔW_FT vs its permuted self", "arena: C3A vs LoRA at equal parameters"),
        headline=Claim("High-rank adaptation by circular convolution that 'consistently outperforms LoRA and its "
                       "variants across various fine-tuning tasks', at LoRA-like compute and memory.",
                       "Chen et al., ACL Findings 2025, abstract", "ABS"),
        counter=(Claim("HF PEFT's default is not a no-op at init and recommends LR ≈ 0.1.",
                       "HF PEFT 0.21 C3AConfig (init_weights default)", "CODE"),),
        literature=marks((True, "LoRA-like budgets"), (False, "self-reported above LoRA; " + ABSTRACT_ONLY),
                         (False, "no"),
                         (False, "no"), (False, "no"), (False, "recent")),
        predictions=(_fit("circulant", "perm", "ΔW_FT fits a circulant better than its permuted self"),)),
    Entry(
        id="loha", name="LoHa (low-rank Hadamard product)", family="structured-full-rank", methods=("loha",),
        paper=Paper("FedPara: Low-Rank Hadamard Product for Communication-Efficient Federated Learning",
                    "Hyeon-Woo, Ye-Bin, Oh", "ICLR", 2022, "2108.06098"),
        hypothesis="The needed ΔW is higher-rank than 2r but inside the rank-≤ r² family reachable by a Hadamard "
                   "product of two rank-r matrices, so at equal budget it beats rank-2r LoRA.",
        pseudocode="ΔW = (B1 @ A1) ⊙ (B2 @ A2)        # rank ≤ r², one factor zero at init\n"
                   "y = W0 @ x + scale * ΔW @ x",
        measurements=("effective rank of the learned LoHa ΔW vs learned LoRA", "arena: LoHa vs LoRA at rank 2r"),
        headline=Claim("Comparable accuracy with 3–10× lower communication cost (federated learning).",
                       "Hyeon-Woo et al. 2022, abstract", "FT"),
        counter=(Claim("The rank of the update is not a reliable predictor of a method's efficacy (diffusion "
                       "fine-tuning).", "Yeh et al. 2024 (LyCORIS), conclusion", "FT"),),
        literature=marks((True, "fewer parameters at parity"), (False, "no controlled win"), (False, "no"),
                         (False, "no"), (False, "no"), (True, "widely used through LyCORIS for diffusion models"))),
    Entry(
        id="lokr", name="LoKr (low-rank Kronecker product)", family="structured-full-rank", methods=("lokr",),
        paper=Paper("Navigating Text-To-Image Customization: From LyCORIS Fine-Tuning to Model Evaluation",
                    "Yeh, Hsieh, Gao, Yang, Oh, Gong", "ICLR", 2024, "2309.14859"),
        hypothesis="ΔW has approximate Kronecker (block-repeated) structure along a factorization of its dimensions.",
        pseudocode="ΔW = C ⊗ (B @ A)                   # C u×v, B A low rank; one factor zero at init\n"
                   "applied by reshaping x, never materializing ΔW",
        measurements=("top Kronecker fit of ΔW_FT vs its permuted self", "arena: LoKr vs LoRA and LoHa"),
        headline=Claim("Full-dimension LoKr suits complex single-concept customization.",
                       "Yeh et al. 2024, conclusion", "FT"),
        counter=(Claim("Evaluated on diffusion only; block structure depends on coordinate order.",
                       "Yeh et al. 2024; our analysis", "FT"),),
        literature=marks((True, "very few parameters"), (False, "no controlled win"), (False, "no"), (False, "no"),
                         (False, "no"), (True, "widely used through LyCORIS for diffusion models")),
        predictions=(_fit("kronecker", "perm", "ΔW_FT fits a Kronecker product better than its permuted self"),)),
    Entry(
        id="miss", name="MiSS / Bone (shard sharing)", family="structured-full-rank", methods=("miss", "bone"),
        paper=Paper("MiSS: Revisiting the Trade-off in LoRA with an Efficient Shard-Sharing Structure (first titled "
                    "'Bone: Block-Affine Adaptation of Large Language Models')", "Kang, Yin", "ICLR", 2026,
                    "2409.15371"),
        hypothesis="A single small shard repeated across the input blocks (optionally mixed with W0's own blocks) "
                   "carries the update: ΔW is periodic along the input dimension.",
        pseudocode="M ∈ R^{r × d_out}, M ← 0\nΔW = [Mᵀ Mᵀ … Mᵀ]                 # one shard per input block\n"
                   "Bone: ΔW_block = W_block M + M     # weight-guided block-affine",
        measurements=("arena: MiSS vs LoRA at equal parameters",),
        headline=Claim("Sharing one zero-initialised trainable matrix across the weight's shards reduces optimisation "
                       "complexity 'without compromising performance' and sits on the Pareto front of performance, "
                       "memory and efficiency among PEFT methods.", "Kang & Yin, arXiv 2409.15371 (v12), abstract",
                       "ABS"),
        counter=(Claim("Bone was removed from HF PEFT in favour of MiSS.", "HF PEFT 0.21 method list (MissConfig)",
                       "CODE"),),
        literature=marks((True, "r·d_out parameters"), (False, "a trade-off claim (parity in accuracy at lower "
                                                                "cost), not an equal-budget win"),
                         (False, "no"),
                         (False, "no"), (False, "no"), (False, "recent"))),
    Entry(
        id="shira", name="SHiRA (sparse high-rank adapters)", family="structured-full-rank", methods=("shira",),
        paper=Paper("Sparse High Rank Adapters", "Bhardwaj, Pandey, Priyadarshi, et al.", "NeurIPS", 2024,
                    "2406.13175"),
        hypothesis="Training a small fixed set (1–2%) of the base weights — sparse but high-rank — adapts as well as "
                   "LoRA and interferes less when adapters are combined.",
        pseudocode="mask = top entries of W0 by importance (fixed)\n"
                   "ΔW = mask ⊙ S                      # S trainable on the mask only\ny = (W0 + ΔW) @ x",
        measurements=("arena: SHiRA vs LoRA at equal parameters",),
        headline=Claim("Fine-tuning 1–2 % of the base weights suffices for many adapter tasks and 'significantly "
                       "outperforms' LoRA, with less concept loss when adapters are fused.",
                       "Bhardwaj et al., arXiv 2406.13175, abstract", "ABS"),
        counter=(),
        literature=marks((True, "1–2% of weights"), (False, "self-reported above LoRA; " + ABSTRACT_ONLY),
                         (False, "no"),
                         (False, "no"), (False, "no"), (False, "recent"))),
    Entry(
        id="mora", name="MoRA (high-rank square update)", family="structured-full-rank", methods=("mora",),
        paper=Paper("MoRA: High-Rank Updating for Parameter-Efficient Fine-Tuning",
                    "Jiang, Huang, Luo, Zhang, Huang, Wei, Deng, Sun, Zhang, Wang, Zhuang", "arXiv", 2024,
                    "2405.12130"),
        hypothesis="Tasks that store new knowledge need a high-rank ΔW: at LoRA's budget a square r̂×r̂ update "
                   "between fixed compress/decompress maps beats low rank there and is no worse elsewhere.",
        pseudocode="z = compress(x)        # non-parametric, d → r̂\nu = M @ z              # M r̂×r̂ trainable, M ← 0\n"
                   "y = W0 @ x + decompress(u)",
        measurements=("r90 and k* of ΔW_FT on memorisation vs classification tasks",
                      "arena: MoRA vs LoRA at equal parameters"),
        headline=Claim("Outperforms LoRA on memory-intensive tasks and matches it elsewhere.",
                       "Jiang et al. 2024, abstract", "ABS"),
        counter=(Claim("Withdrawn from ICLR 2025; a reviewer called the UUID task contrived.",
                       "OpenReview, ICLR 2025 submission and reviews", "ABS"),),
        literature=marks((True, "LoRA's budget"), (True, "self-reported on memorisation tasks"), (False, "no"),
                         (False, "no"), (False, "no"), (False, "no")),
        predictions=(HIGH_RAW_RANK,)),
]
