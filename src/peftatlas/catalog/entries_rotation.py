"""Catalog entries: rotations, the SVD basis, and direction vs strength."""

from __future__ import annotations

from .entries_lowrank import LOW_RANK_ENERGY
from .model import ABSTRACT_ONLY, Claim, Entry, Override, Paper, Prediction, marks

ROTATION = Prediction("null", "ΔW_FT is mostly a rotation of the neurons: its rotation fraction (skew share of "
                      "W0⁺ΔW, ≈ 0.5 for a random update) is ≥ 0.7 and above the spectrum-matched null",
                      probe="rotation", stat="rotation_fraction", null="spec", direction=1, min_ratio=1.4)
GRAM_KEPT = Prediction("null", "ΔW_FT changes the neuron Gram matrix W Wᵀ less than a random update of the same "
                       "spectrum", probe="rotation", stat="gram_change", null="spec", direction=-1)
PRINCIPAL = Prediction("null", "ΔW_FT's energy in W0's top-k × top-k singular block is ≥ 3× the random-orientation "
                       "null", probe="align", stat="block_pp", null="spec", direction=1, min_ratio=3.0)
MINOR = Prediction("null", "ΔW_FT's energy in W0's bottom-k × bottom-k singular block is ≥ 3× the null",
                   probe="align", stat="block_mm", null="spec", direction=1, min_ratio=3.0)
MAGDIR_FT = Prediction("magdir", "for full fine-tuning, magnitude and direction changes are negatively correlated "
                       "across matrices (DoRA Fig. 2: −0.62)", direction=-1, job_method="full")
MAGDIR_LORA = Prediction("magdir", "for LoRA, they are positively correlated (DoRA Fig. 2: +0.83)", direction=1,
                         job_method="lora")
# DoRA's magnitude m and direction V are separate parameters, so the sign of corr(ΔM, ΔD) on its own update is
# learned, not fixed: the one catalog prediction judged on (and counted for) the graded method's own update.
MAGDIR_DORA = Prediction("magdir", "for DoRA's own update, magnitude and direction changes are negatively correlated "
                         "like full fine-tuning's (DoRA Fig. 2: −0.31)", direction=-1, job_method="dora",
                         on_own_update=True)

ENTRIES = [
    Entry(
        id="oft", name="OFT (orthogonal fine-tuning)", family="rotation", methods=("oft",),
        paper=Paper("Controlling Text-to-Image Diffusion by Orthogonal Finetuning",
                    "Qiu, Liu, Feng, Xue, Feng, Liu, Zhang, Weller, Schölkopf", "NeurIPS", 2023, "2306.07280"),
        hypothesis="Pretrained knowledge lives in the angles between neurons: a good update rotates all neurons of a "
                   "layer jointly (hyperspherical energy unchanged), and updates that change the angles hurt.",
        pseudocode="R_i = (I + Q_i)(I − Q_i)⁻¹, Q_i skew, Q ← 0     # Cayley, per b×b block\n"
                   "R = blockdiag(R_1 … R_k)\ny = (W0 @ Rᵀ) @ x                              # rotates every neuron",
        measurements=("Procrustes capture and rotation fraction of ΔW_FT vs nulls",
                      "change of hyperspherical energy and of the neuron Gram matrix",
                      "arena: OFT vs LoRA at equal parameters"),
        headline=Claim("Segmentation-to-image mIoU 27.06 vs LoRA 22.98; DreamBooth DINO 0.632 vs 0.613.",
                       "Qiu et al. 2023, Tables 1–2", "FT"),
        counter=(Claim("At 0.33M parameters OFT (87.80) is below LoRA r=2 (88.33) on DeBERTaV3 GLUE.",
                       "Ma et al. 2024 (GOFT), Table 1", "FT"),
                 Claim("HRA's strictly orthogonal variant is worse than its unconstrained one (GLUE 89.13 vs 90.10).",
                       "Yuan et al. 2024 (HRA), Table 2", "FT")),
        literature=marks((True, "block-diagonal, fraction of a percent"),
                         (False, "above LoRA in diffusion control, but at equal budget it loses to LoRA on DeBERTaV3 "
                                 "GLUE (87.80 vs 88.33, the counter-evidence): an equal-budget counter-result removes "
                                 "BL"),
                         (True, "b=8 reaches 88.78 ≥ full FT 88.27 on DeBERTaV3 GLUE (GOFT Table 1)"),
                         (False, "no"), (False, "no"), (True, "in PEFT, used for diffusion models")),
        predictions=(ROTATION, GRAM_KEPT)),
    Entry(
        id="oftv2", name="OFTv2 (input-centric OFT)", family="rotation", methods=("oftv2",),
        paper=Paper("Orthogonal Finetuning Made Scalable", "Qiu, Liu, Weller, Schölkopf", "EMNLP", 2025, "2506.19847"),
        hypothesis="The same rotation hypothesis as OFT; its cost is an artifact of forming W0Rᵀ — rotating the "
                   "input (R x) with a Cayley–Neumann series keeps the accuracy at a fraction of the cost.",
        pseudocode="S = skew(Q)\nR ≈ I + 2S + 2S² + …                 # Cayley–Neumann, no inverse\n"
                   "y = W0 @ (Rᵀ x)                       # matrix-vector, never W0 R",
        measurements=("as OFT", "speed and memory relative to OFT at equal accuracy"),
        headline=Claim("Up to 10× faster training and 3× lower GPU memory than OFT without compromising performance; "
                       "on quantized models it beats QLoRA in training stability, efficiency and memory.",
                       "Qiu et al., arXiv 2506.19847, abstract", "ABS"),
        counter=(),
        literature=marks((True, "as OFT"), (False, "the abstract compares with QLoRA on stability, efficiency and "
                                                   "memory, not accuracy at equal parameters"), (False, "no"),
                         (False, "no"),
                         (False, "no"), (False, "recent; the default OFT path in PEFT")),
        predictions=(ROTATION,)),
    Entry(
        id="boft", name="BOFT (butterfly OFT)", family="rotation", methods=("boft",),
        paper=Paper("Parameter-Efficient Orthogonal Finetuning via Butterfly Factorization",
                    "Liu, Qiu, Feng, Xiu, Xue, Yu, Feng, Liu, Heo, Peng, Wen, Black, Weller, Schölkopf", "ICLR", 2024,
                    "2311.06243"),
        hypothesis="Orthogonal updates are right but block-diagonal R is too restrictive: a product of butterfly "
                   "factors reaches dense rotations with O(d log d) parameters.",
        pseudocode="R = Π_i P_iᵀ blockdiag(Cayley(Q_i)) P_i      # m butterfly factors\n"
                   "y = s ⊙ ((W0 @ Rᵀ) @ x)                     # s: output scale",
        measurements=("as OFT", "arena: BOFT vs OFT and LoRA at equal parameters"),
        headline=Claim("A butterfly-factorised orthogonal parameterisation that subsumes OFT, studied on large vision "
                       "transformers, language models and text-to-image diffusion; the abstract states no comparative "
                       "result.", "Liu et al., arXiv 2311.06243, abstract", "ABS"),
        counter=(Claim("HRA (Fig. 1c): BOFT GSM8K 50.6 vs HRA 56.3 on Llama-2-7B.", "Yuan et al. 2024", "FT"),),
        literature=marks((True, "O(d log d) parameters"), (False, "self-reported above LoRA in several domains; "
                                                                 + ABSTRACT_ONLY),
                         (False, "no"), (False, "no"), (False, "no"), (False, "in PEFT, niche")),
        predictions=(ROTATION,)),
    Entry(
        id="goft", name="GOFT (Givens OFT)", family="rotation", methods=("goft",),
        paper=Paper("Parameter Efficient Quasi-Orthogonal Fine-Tuning via Givens Rotation",
                    "Ma, Chu, Yang, Lin, Gao, Zhao", "ICML", 2024, "2404.04316"),
        hypothesis="A tree of d − 1 Givens rotations can express any rotation in SO(d), so GOFT is as expressive as "
                   "OFT with O(d) parameters; rotating neurons suffices for adaptation.",
        pseudocode="R = I\nfor level r in 1..⌈log2 d⌉:\n"
                   "    R = P_r(θ_r) @ R        # disjoint 2×2 rotations, pairs (i, i+2^{r−1})\n"
                   "θ = π·tanh(φ), φ ← 0\ny = (W0 @ Rᵀ) @ x                          # merge: W0 ← W0 Rᵀ",
        measurements=("Jacobian rank of θ ↦ R (d − 1 vs dim SO(d) = d(d−1)/2)",
                      "best tree fit of random SO(d) targets vs the Procrustes optimum",
                      "rotation probes on ΔW_FT; arena vs OFT and LoRA"),
        headline=Claim("DeBERTaV3-base GLUE: 0.08M parameters avg 88.78 = OFT b=8 (0.66M), above LoRA r=2 (88.33) "
                       "and full FT (88.27).", "Ma et al. 2024, Table 1", "FT"),
        counter=(Claim("d − 1 parameters cannot cover the d(d−1)/2-dimensional SO(d); at d = 8 the Jacobian rank is 7 "
                       "vs 28, and the best fit to a random SO(8) leaves 71% relative error.",
                       "reproduced by `peftatlas expressivity goft` (docs/methods/goft.md)", "CALC"),
                 Claim("The GLUE baselines match AdaLoRA's Table 1 digit for digit: copied, not re-run.",
                       "Ma et al. 2024, Table 1 vs Zhang et al. 2023", "FT")),
        literature=marks((True, "d − 1 parameters per layer"), (True, "self-reported, copied baselines"),
                         (True, "self-reported, copied baselines"), (False, "no"), (False, "no"), (False, "no")),
        predictions=(ROTATION,),
        override=Override("analytic", "d − 1 Givens rotations express any orthogonal transformation in SO(d)",
                          "the tree is a (d−1)-dimensional subset of the d(d−1)/2-dimensional SO(d) (Sard); "
                          "Theorem 4.1 only maps one vector to e₁", "Jacobian rank d − 1 (d = 8: 7 vs 28); 200-restart "
                          "fits of random SO(8) leave 0.71 relative residual; the library's tests assert the rank",
                          cap=1.0)),
    Entry(
        id="qgoft", name="qGOFT (quasi-Givens OFT)", family="rotation", methods=("qgoft",),
        paper=Paper("Parameter Efficient Quasi-Orthogonal Fine-Tuning via Givens Rotation",
                    "Ma, Chu, Yang, Lin, Gao, Zhao", "ICML", 2024, "2404.04316"),
        hypothesis="Adaptation is almost a rotation of neurons plus small per-plane norm and angle changes: soft "
                   "orthogonality beats both strict rotation and no constraint.",
        pseudocode="each 2×2 Givens block → free block [α_i, β_i] (4 params), identity at init\n"
                   "R = Π_levels Q̃_r(α, β)             # same tree as GOFT\ny = (W0 @ Rᵀ) @ x\n"
                   "loss += λ Σ_i ⟨α_i, β_i⟩²",
        measurements=("non-orthogonality of the learned blocks", "arena: qGOFT vs GOFT (λ → ∞) and λ = 0"),
        headline=Claim("DeBERTaV3-base GLUE avg 89.35 (best in Table 1); SQuAD v1.1 87.1/93.2 vs LoRA 86.6/92.9.",
                       "Ma et al. 2024, Tables 1 and 4", "FT"),
        counter=(Claim("Strict GOFT beats qGOFT on Llama-2-7B (MMLU 46.36 vs 46.12).", "Ma et al. 2024, Table 2",
                       "FT"),
                 Claim("The orthogonality penalty is absent from the authors' released code.",
                       "the authors' released GOFT code (training loop has no penalty term)", "CODE")),
        literature=marks((True, "4(d − 1) parameters"),
                         (False, "self-reported, by a method whose orthogonality regulariser is missing from the "
                                 "released code: the reported runs cannot be reproduced as described"),
                         (False, "self-reported on GLUE; same caveat: the regulariser is absent from the released "
                                 "code"),
                         (False, "no"), (False, "no"), (False, "no")),
        predictions=(ROTATION,)),
    Entry(
        id="hra", name="HRA (Householder reflections)", family="rotation", methods=("hra",),
        paper=Paper("Bridging The Gap between Low-rank and Orthogonal Adaptation via Householder Reflection "
                    "Adaptation", "Yuan, Liu, Xu", "NeurIPS", 2024, "2405.17484"),
        hypothesis="Good updates are orthogonal and move only an r-dimensional subspace: a chain of r reflections "
                   "(W0·(H − I) has rank ≤ r) trades capacity against regularity.",
        pseudocode="v = x\nfor i in reversed(range(r)):\n    u = U[:, i] / ‖U[:, i]‖\n    v = v − 2 u (uᵀ v)\n"
                   "y = W0 @ v\nloss += λ ‖UᵀU − I‖²",
        measurements=("rotation and low-rank probes of ΔW_FT", "arena: λ sweep; HRA vs LoRA and OFT"),
        headline=Claim("Llama-2-7B MetaMathQA: GSM8K 56.3 / MATH 9.3 with 0.12% parameters vs LoRA 50.2/7.8 (0.25%).",
                       "Yuan et al. 2024, Fig. 1c", "FT"),
        counter=(Claim("Strict orthogonality (λ = ∞) is worse: GLUE 89.13 vs 90.10, GSM8K 52.8 vs 56.3.",
                       "Yuan et al. 2024, Table 2", "FT"),),
        literature=marks((True, "half of LoRA's parameters"), (True, "self-reported"), (False, "no"), (False, "no"),
                         (False, "no"), (False, "in PEFT, niche")),
        predictions=(ROTATION, LOW_RANK_ENERGY)),
    Entry(
        id="ether", name="ETHER / ETHER+ (hyperplane reflections)", family="rotation", methods=("ether", "ether_plus"),
        paper=Paper("ETHER: Efficient Finetuning of Large-Scale Models with Hyperplane Reflections",
                    "Bini, Roth, Akata, Khoreva", "ICML", 2024, "2405.20271"),
        hypothesis="Fixed-strength orthogonal transformations — one reflection per block, a constant distance from "
                   "W0 — adapt well while making the learning rate almost irrelevant.",
        pseudocode="H = blockdiag(I − 2 û ûᵀ)              # ETHER: fixed distance 2 from I\n"
                   "ETHER+: H = I − ûûᵀ + v̂v̂ᵀ (identity at init)\ny = (W0 @ H) @ x",
        measurements=("rotation probes on ΔW_FT", "arena: LR sensitivity vs LoRA and OFT"),
        headline=Claim("ETHER and ETHER+ match or outperform existing PEFT methods with about 10–100× fewer "
                       "parameters than LoRA or OFT on image synthesis and language tasks, without exhaustive "
                       "hyperparameter tuning.", "Bini et al. 2024, abstract (arXiv:2405.20271, ICML 2024)", "ABS"),
        counter=(),
        literature=marks((True, "d_in parameters per layer"),
                         (False, "abstract (verified): 'match or outperform' at far fewer parameters — parity, not "
                                 "an equal-budget win over LoRA; the per-table numbers were not read"),
                         (False, "no"), (False, "no"), (False, "no"), (False, "no")),
        predictions=(ROTATION,)),
    Entry(
        id="road", name="RoAd (2-D rotary adaptation)", family="rotation", methods=("road",),
        paper=Paper("3-in-1: 2D Rotary Adaptation for Efficient Finetuning, Efficient Batching and Composability",
                    "Liao, Monz", "NeurIPS", 2024, "2409.00119"),
        hypothesis="Adaptation is a scaled 2-D rotation of pairs of output coordinates: angle (what changes) and "
                   "magnitude (how much) per pair suffice, as element-wise operations.",
        pseudocode="h = W0 @ x + b\nfor each output pair (h1, h2):\n    y1 = α (cos θ h1 − sin θ h2)\n"
                   "    y2 = α (sin θ h1 + cos θ h2)       # θ ← 0, α ← 1",
        measurements=("arena: RoAd vs LoRA at equal parameters; mixed-batch serving",),
        headline=Claim("'Optimal performance' on GLUE, eight commonsense and four arithmetic reasoning tasks with "
                       "< 0.1 % trainable parameters; mixed-adapter batches cost an element-wise product instead of a "
                       "batched matmul.", "Liao & Monz, arXiv 2409.00119, abstract", "ABS"),
        counter=(),
        literature=marks((True, "2 parameters per output pair"), (False, "best at a smaller budget (self-reported); "
                                                                        + ABSTRACT_ONLY), (False, "no"),
                         (False, "no"), (False, "no"), (False, "recent")),
        notes="An output-side, coordinate-paired rotation; the input-side Procrustes probe does not test it."),
    Entry(
        id="pissa", name="PiSSA", family="svd-basis", methods=("pissa",),
        paper=Paper("PiSSA: Principal Singular Values and Singular Vectors Adaptation of Large Language Models",
                    "Meng, Wang, Zhang", "NeurIPS", 2024, "2404.02948"),
        hypothesis="The useful update lies in — and should start from — W0's principal singular subspace: adapting "
                   "the top-r components converges faster and better than a random or minor subspace.",
        pseudocode="U, S, Vᵀ = svd(W0)\nA = U[:, :r] √S[:r];  B = √S[:r] Vᵀ[:r]     # trainable\n"
                   "W_res = W0 − A @ B                              # frozen\ny = (W_res + A @ B) @ x",
        measurements=("energy of ΔW_FT in W0's principal block vs the random-orientation null",
                      "arena: principal vs minor vs random initialisation at equal budget"),
        headline=Claim("Gemma-7B GSM8K 77.7% vs LoRA 74.53%; principal > middle > minor initialisation across three "
                       "LLMs.", "Meng et al. 2024, abstract and Fig. 8", "FT"),
        counter=(Claim("MiLoRA reports the opposite ranking (minor > principal).", "Wang et al. 2025 (MiLoRA)", "ABS"),
                 Claim("LoRA's learned ΔW amplifies directions not emphasised in W0.", "Hu et al. 2022, §7.3", "FT")),
        literature=marks((True, "LoRA's budget"), (True, "above LoRA across 11 models (self)"), (False, "no"),
                         (True, "faster convergence than LoRA (self)"), (False, "no"),
                         (False, "a LoRA init option in PEFT")),
        predictions=(PRINCIPAL,)),
    Entry(
        id="milora", name="MiLoRA", family="svd-basis", methods=("milora",),
        paper=Paper("MiLoRA: Harnessing Minor Singular Components for Parameter-Efficient LLM Finetuning",
                    "Wang, Li, Wang, Chen, Chen", "NAACL", 2025, "2406.09044"),
        hypothesis="Task updates belong in W0's minor singular subspace, away from the principal directions that hold "
                   "pretrained knowledge: this forgets less and beats both LoRA and PiSSA.",
        pseudocode="U, S, Vᵀ = svd(W0)\nA = U[:, −r:] √S[−r:];  B = √S[−r:] Vᵀ[−r:]   # trainable\n"
                   "W_p = W0 − A @ B                                # frozen\ny = (W_p + A @ B) @ x",
        measurements=("energy of ΔW_FT in W0's minor block vs the null", "arena: same three-arm test as PiSSA"),
        headline=Claim("Superior to LoRA and PiSSA on commonsense, math, instruction following and visual instruction "
                       "following.", "Wang et al. 2025, abstract", "ABS"),
        counter=(Claim("PiSSA's Fig. 8 shows the opposite ranking.", "Meng et al. 2024", "FT"),),
        literature=marks((True, "LoRA's budget"), (True, "self-reported"), (False, "no"), (False, "no"),
                         (False, "no"), (False, "no")),
        predictions=(MINOR,)),
    Entry(
        id="svft", name="SVFT", family="svd-basis", methods=("svft",),
        paper=Paper("SVFT: Parameter-Efficient Fine-Tuning with Singular Vectors",
                    "Lingam, Tejaswi, Vavre, Shetty, Gudur, Ghosh, Dimakis, Choi, Bojchevski, Sanghavi", "NeurIPS",
                    2024, "2405.19597"),
        hypothesis="Fine-tuning mostly re-weights and locally mixes W0's own singular directions: U0ᵀ ΔW V0 is "
                   "concentrated on its diagonal or a narrow band.",
        pseudocode="U, S, Vᵀ = svd(W0)                  # frozen\n"
                   "M = sparse(Ω, m), m ← 0               # plain / banded / random / top-k\n"
                   "y = W0 @ x + U @ (M @ (Vᵀ @ x))",
        measurements=("diagonal energy of U0ᵀ ΔW_FT V0 vs the random-orientation null", "arena: SVFT vs LoRA"),
        headline=Claim("Recovers up to 96% of full fine-tuning with 0.006–0.25% of the parameters; Gemma-2B GSM8K "
                       "40.34 (0.19M) vs LoRA r=1 32.97 (0.82M).", "Lingam et al. 2024, abstract and Table 1", "FT"),
        counter=(Claim("Its own Table 2: SVFT_P 80.85 below LoRA r=1 81.46 on Gemma-7B commonsense.",
                       "Lingam et al. 2024, Table 2", "FT"),),
        literature=marks((True, "0.006–0.25% parameters"), (True, "above LoRA r=1 on math (self)"), (False, "no"),
                         (False, "no"), (False, "no"), (False, "no")),
        predictions=(Prediction("null", "ΔW_FT's energy on the diagonal of W0's singular basis is ≥ 10× the null",
                                probe="align", stat="basis_diagonal", null="spec", direction=1, min_ratio=10.0),)),
    Entry(
        id="ssvd", name="SSVD (structured SVD-guided)", family="svd-basis", methods=("ssvd",),
        paper=Paper("SSVD: Structured SVD for Parameter-Efficient Fine-Tuning and Benchmarking under Domain Shift in "
                    "ASR", "Wang, Watanabe, Van hamme", "arXiv", 2025, "2509.02830"),
        hypothesis="Input and output singular vectors play different roles: adaptation to domain shift rotates the "
                   "top right singular vectors (what the layer listens to) and keeps the left ones (what it says).",
        pseudocode="U, Σ, Vᵀ = svd(W0)\nG = cayley(K), K skew (r×r)            # rotation of the top-r input basis\n"
                   "W' = U (Σ + ΔΣ) G Vᵀ",
        measurements=("right- vs left-principal energy of ΔW_FT vs nulls", "arena: SSVD vs LoRA"),
        headline=Claim("Rotating the input-side right singular vectors while keeping the output side fixed gives "
                       "robust domain adaptation with minimal trainable parameters; benchmarked with LoRA, VeRA, DoRA, "
                       "PiSSA and SVFT on child and dialectal speech, 0.1B–2B models.",
                       "Wang et al., arXiv 2509.02830, abstract", "ABS"),
        counter=(),
        literature=marks((True, "r + r(r−1)/2 parameters per layer"), (False, "parity"), (False, "no"),
                         (False, "no"),
                         (False, "fine-tuned ON the shifted speech (child, dialect) and evaluated there: "
                                 "in-distribution adaptation, not a train→test shift"),
                         (False, "no")),
        predictions=(Prediction("null", "ΔW_FT's energy in W0's principal input directions exceeds the null",
                                probe="align", stat="right_principal", null="spec", direction=1),)),
    Entry(
        id="psoft", name="PSOFT (OFT in the principal subspace)", family="svd-basis", methods=("psoft",),
        paper=Paper("Efficient Orthogonal Fine-Tuning with Principal Subspace Adaptation",
                    "Wu, Hu, Min, Wang", "ICLR", 2026, "2505.11235"),
        hypothesis="Orthogonal fine-tuning restricted to W0's principal singular subspace keeps OFT's geometry "
                   "preservation at a fraction of its cost.",
        pseudocode="U_r, σ_r, V_r = top-r svd(W0)\nR = cayley(S), S skew (r×r)\n"
                   "ΔW = U_r diag(σ_r) (diag(b) R diag(a) − I) V_rᵀ",
        measurements=("principal-block energy and rotation probes of ΔW_FT", "arena: PSOFT vs OFT and LoRA"),
        headline=Claim("35 NLP and CV tasks on four models: semantic preservation, expressiveness and efficiency in "
                       "parameters, memory and computation at once (no number in the abstract).",
                       "Wu et al. 2026, abstract (arXiv:2505.11235v2)", "ABS"),
        counter=(),
        literature=marks((True, "r(r−1)/2 + 2r parameters"), (False, "parity"), (False, "no"), (False, "no"),
                         (False, "no"), (False, "recent")),
        predictions=(PRINCIPAL,)),
    Entry(
        id="clover", name="CLOVER", family="svd-basis", methods=("clover",),
        paper=Paper("CLOVER: Cross-Layer Orthogonal Vectors Pruning and Fine-Tuning",
                    "Meng, Tang, Jiang, Zhang", "ICML", 2025, "2411.17426"),
        hypothesis="Each attention head's Q–K and V–O products have their own natural orthogonal bases; training the "
                   "small core between those bases adapts the head with few parameters.",
        pseudocode="for each head: U, S, Vᵀ = svd(W_Q,h W_K,hᵀ)  (and V–O)\n"
                   "W_Q,h ← U S_trainable, W_K,h ← V      # train the d_h×d_h core",
        measurements=("arena: CLOVER vs LoRA at equal parameters",),
        headline=Claim("Tuning only the per-head singular values beats LoRA, DoRA, HiRA and PiSSA by 7.6, 5.5, 3.8 "
                       "and 0.7 points on eight commonsense tasks with LLaMA-2 7B (self-reported).",
                       "arXiv:2411.17426, abstract and §4.6", "ABS"),
        counter=(),
        literature=marks((True, "head-sized cores"), (True, "self-reported"), (False, "no"), (False, "no"),
                         (False, "no"), (False, "no")),
        notes="Acts on products of two matrices per head; single-matrix weight probes do not test it."),
    Entry(
        id="antipasto", name="AntiPaSTO", family="svd-basis", methods=("antipasto",),
        paper=Paper("AntiPaSTO: Self-Supervised Steering of Moral Reasoning", "Clark", "arXiv", 2026, "2601.07473"),
        hypothesis="W0's own top singular basis is the natural intervention manifold: Cayley rotations of the singular "
                   "vectors plus singular-value shifts, scaled by α = ±1, steer behaviour in both directions.",
        pseudocode="U, S, V = top-r svd(W0);  W_res = W0 − U S Vᵀ\nR_v(α) = cayley(α A / 2), A skew\n"
                   "W'(α) = U diag(S + α ΔS) R_v(α)ᵀ Vᵀ + W_res",
        measurements=("principal-block energy of ΔW_FT", "arena: in-distribution and OOD vs LoRA"),
        headline=Claim("Trained on 800 pairs of contrasting words inserted into template sentences (no preference "
                       "labels), Gemma-3-1B steers 6.9× better than prompting baselines on DailyDilemmas and keeps "
                       "bidirectional control where prompting triggers refusal.",
                       "Clark 2026, abstract (arXiv 2601.07473v2), read 2026-12-04", "ABS"),
        counter=(Claim("The seed catalog's author wrote this method (disclosed); high seed variance; one trait, one "
                       "benchmark.", "seed catalog github.com/wassname/adapters_as_hypotheses, entry 11", "ABS"),),
        literature=marks((True, "r + r(r−1)/2 parameters"), (False, "no LoRA comparison"), (False, "no"),
                         (False, "800 word pairs and no labels, but the abstract compares only with prompting, "
                                 "not with fine-tuning or another adapter at equal data"),
                         (False, "template sentences → real dilemmas is a shift, but the abstract compares only "
                                 "with prompting (self-reported, one trait, one benchmark)"),
                         (False, "no")),
        predictions=(PRINCIPAL,)),
    Entry(
        id="dora", name="DoRA", family="direction-strength", methods=("dora",),
        paper=Paper("DoRA: Weight-Decomposed Low-Rank Adaptation",
                    "Liu, Wang, Yin, Molchanov, Wang, Cheng, Chen", "ICML", 2024, "2402.09353"),
        hypothesis="Full fine-tuning changes neuron magnitude and direction independently (negatively correlated "
                   "ΔM, ΔD) while LoRA couples them (positively); decoupling them closes the gap to full FT.",
        pseudocode="V = W0 + (α / r) B @ A\nn = row_norm(V).detach()                 # one norm per output neuron\n"
                   "y = (m / n)[:, None] * (V @ x)           # m ← ‖W0‖_row",
        measurements=("corr(ΔM, ΔD) over matrices for full FT, LoRA and DoRA with bootstrap CIs",
                      "arena: DoRA vs LoRA and vs LoRA + an unnormalised row scale"),
        headline=Claim("ΔD–ΔM correlation: full FT −0.62, DoRA −0.31, LoRA +0.83 (VL-BART); commonsense LLaMA-7B "
                       "78.4 vs LoRA 74.7.", "Liu et al. 2024, Fig. 2 and Table 1", "FT"),
        counter=(Claim("The LLaMA baselines are copied from LLM-Adapters; Gemma-7B: DoRA r=16 83.00 vs LoRA r=32 "
                       "83.69.", "Lingam et al. 2024 (SVFT), Table 2", "FT"),
                 Claim("The correlation comes from one model, four checkpoints, no confidence interval.",
                       "Liu et al. 2024, §3", "FT")),
        literature=marks((True, "LoRA + d parameters"), (True, "above LoRA across LLaMA, LLaVA, VL-BART (self)"),
                         (False, "no"), (False, "no"), (False, "no"), (True, "a standard LoRA option")),
        predictions=(MAGDIR_FT, MAGDIR_LORA, MAGDIR_DORA)),
    Entry(
        id="delora", name="DeLoRA", family="direction-strength", methods=("delora",),
        paper=Paper("Decoupling Angles and Strength in Low-rank Adaptation", "Bini, Girrbach, Akata", "ICLR", 2025,
                    "2503.18225"),
        hypothesis="The direction of an update and its distance from W0 should be decoupled: normalising each rank-1 "
                   "component and learning a bounded strength λ keeps LoRA's expressivity with ETHER's robustness.",
        pseudocode="scale_i = λ ‖W0‖ / (r ‖a_i‖ ‖b_i‖)\nΔW = B diag(scale) A\ny = W0 @ x + ΔW @ x",
        measurements=("arena: accuracy and LR sensitivity vs LoRA and DoRA",),
        headline=Claim("On subject-driven image generation, natural language understanding and instruction tuning, "
                       "DeLoRA matches or surpasses competing PEFT methods with stronger robustness (to learning rate "
                       "and training length).", "Bini et al. 2025, abstract (arXiv:2503.18225)", "ABS"),
        counter=(),
        literature=marks((True, "LoRA's budget"),
                         (False, "abstract (verified): 'matches or surpasses' competing methods — parity, not a win "
                                 "over LoRA; the per-table numbers were not read"), (False, "no"), (False, "no"),
                         (False, "no"), (False, "recent"))),
]
