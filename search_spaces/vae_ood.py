"""VAEs as OOD detectors (document 002, section 3.3; NOTES.md E): does a VAE give OOD inputs
a higher likelihood, and does adapting its encoder's batch-norm statistics repair it?

Each trial trains a convolutional VAE (`workloads.models.vae.ConvVAE`: DCGAN-style, batch
norm in the encoder) with a Gaussian or a 256-way categorical decoder (the digits' 17 grey
levels on the local profile) and KL weight `beta` (1: VAE; 4: a beta-VAE), then
(`workloads.studies.vae_ood.vae_final_stage`) scores the test inputs and every OOD set with the
importance-weighted log-likelihood IWAE_K for K = 5 and 50, with the encoder's BN in eval
mode (`iwae5`, `iwae50`) and adapted to each batch of `bn_batch` scored inputs (`iwae5_bn`,
`iwae50_bn`; section 3.3.5, Fig. 3.7), and runs the linear-SVM separability test of its
Table 3.1 on the posterior means (with the train-vs-test and random-pixel-projection controls).

Paper profile: FashionMNIST -> MNIST (and KMNIST, EMNIST where present) and CIFAR-10 -> SVHN
(and the other CIFAR-10 OOD sets present), DCGAN widths (64 channels doubling per stride-2
layer), latent size 128 (section 3.3.4), Adam at DCGAN's 2e-4, batch 64, up to 100 epochs with
early stopping on the validation loss (section 3.3.3: "we use the validation dataset ... and
apply early stopping"; the patience of 10 epochs is ours). CelebA -> SVHN / LSUN, the
document's main pair: `--set dataset=celeba` where its files are under `--data-dir`.
"""

import pandas as pd

from search_spaces import (
    Beside,
    Claim,
    Compare,
    CompareMetrics,
    Profile,
    ResultTable,
    SearchSpace,
    SweepResults,
    Threshold,
)
from search_spaces._tables.cells import group_rows, mean_std
from workloads.data import DATASET_NAMES
from workloads.models.vae import DECODERS
from workloads.scores.vae import BN_MODES

BASE = {
    "dataset": "digits",
    "model": "vae",
    "decoder": "gaussian",       # "gaussian" (sum of squares) or "categorical" (256-way CE)
    "beta": 1.0,                 # KL weight: 1 the VAE, > 1 a beta-VAE
    "latent_dim": 16,
    "hidden": 32,                # channels of the first encoder layer, doubled per stride
    "lr": 1e-3,
    "batch_size": 64,
    "epochs": 100,
    "patience": 10,              # epochs without a better validation loss before stopping
    "ood_scores": "iwae",        # the VAE's one score family: iwae<K> and iwae<K>_bn
    "iwae_samples": "5+50",      # K of the IWAE bound, joined by "+" (the document's 5, 50)
    "bn_modes": "eval+adapted",  # encoder BN at test time: eval, adapted (batch statistics)
    "bn_batch": 64,              # scored inputs per batch (the adapted statistics' batch)
    "svm_samples": 1000,         # codes per class for the linear SVM (half train, half test)
    "checkpoint_every": 0,
    "checkpoint_seconds": 30.0,
    "report_seconds": 1.0,
    "seed": 0,
    "data_seed": 0,
}

PAPER_SETUPS = [{"dataset": "fashionmnist"}, {"dataset": "cifar10"}]

DOC = "002_a1c432f711091ffb.txt (MSc thesis on likelihood-based OOD detection)"
CLAIMS = (
    Claim("bn_adaptation_raises_auroc", "Adapting the encoder's batch-norm statistics to the "
          "test inputs alleviates the higher OOD likelihood: IWAE-50 AUROC higher with "
          "adapted BN than in eval mode.", f"{DOC}, section 3.3.5, Fig. 3.7",
          CompareMetrics("auroc_iwae50", "auroc_iwae50_bn", every=False)),
    Claim("gaussian_decoder_ranks_id_higher", "A VAE with a Gaussian decoder does not assign "
          "OOD inputs a higher likelihood (IWAE-50 AUROC above 0.5 on every OOD set).",
          f"{DOC}, section 3.3.4, Fig. 3.4",
          Threshold("auroc", 0.5, below=False, every=True,
                    where={"score": "iwae50", "decoder": "gaussian"}), data="ood"),
    Claim("gaussian_decoder_beats_categorical", "Changing the decoder from a categorical to "
          "a Gaussian distribution makes the likelihood a better OOD score (IWAE-50 AUROC).",
          f"{DOC}, section 3.3.4",
          Compare("auroc_iwae50", "decoder", "categorical", "gaussian", every=False)),
    Claim("latent_codes_separable", "A linear SVM separates ID from OOD latent codes: every "
          "held-out accuracy above 0.900 (eval-mode BN, each OOD set, both classes).",
          f"{DOC}, section 3.3.7, Table 3.1",
          Threshold("svm_min_acc", 0.9, below=False, every=True)),
)

# --- Table 3.1 (linear separability of latent codes): ours, and the document's beside -----

# The document's Table 3.1: a linear SVM trained to separate latent codes, the ID set
# positive; (model, positive, negative) -> (Pos. Acc., Neg. Acc.) on held-out codes.
SVM_SOURCE = f"{DOC}, Table 3.1"
PUBLISHED_SVM = {("VAE", "celeba", "celeba"): (1.000, 0.000),
                 ("VAE", "celeba", "svhn"): (0.986, 0.920),
                 ("VAE (BN train)", "celeba", "svhn"): (0.920, 0.980),
                 ("GAN-VAE", "celeba", "lsun"): (0.930, 0.960),
                 ("GAN-VAE", "cifar10", "svhn"): (0.934, 0.947)}
SVM_NOTE = ("Held-out accuracy of a linear SVM separating ID (positive) from OOD (negative) "
            "codes, mean ± std over {seeds} seed(s), per representation: posterior means "
            "with eval / adapted encoder BN, and the raw-pixel control. Half of the codes of "
            "each class train the SVM, the other half test it; a negative `<dataset> train` "
            "is the ID control (training vs test inputs: no separation expected). The "
            "document: \"All accuracy is above 0.900\".")
SVM_BY = ("representation", "positive", "negative")
SVM_COLUMNS = {"Pos. Acc.": lambda g: mean_std(g.pos_acc),
               "Neg. Acc.": lambda g: mean_std(g.neg_acc),
               "codes per class": lambda g: str(int(g.n.mean()))}
LATENT_SVM = ResultTable(name="latent_svm", title="linear separability of latent codes "
                         "(002 Table 3.1)", note=SVM_NOTE, by=SVM_BY, columns=SVM_COLUMNS)


def _latent_svm_beside(results: SweepResults) -> str:
    """Ours (mean ± std over seeds per decoder, beta and representation), then the
    document's rows (CelebA and CIFAR-10 VAEs / GAN-VAEs)."""
    svm = results.tables.get("latent_svm")
    if svm is None or svm.empty:
        return ""
    keys = [k for k in ("decoder", "beta") if k in svm.columns]
    seeds = svm["seed"].nunique() if "seed" in svm.columns else 1
    theirs = pd.DataFrame([{"model": m, "positive": p, "negative": n, "Pos. Acc.": f"{a:.3f}",
                            "Neg. Acc.": f"{b:.3f}"}
                           for (m, p, n), (a, b) in PUBLISHED_SVM.items()])
    return (f"Source: {SVM_SOURCE}. " + SVM_NOTE.format(seeds=seeds) + "\n\n"
            + group_rows(svm, [*keys, *SVM_BY], SVM_COLUMNS).to_markdown(
                index=False, disable_numparse=True)
            + "\n\nThe document's:\n\n" + theirs.to_markdown(index=False,
                                                            disable_numparse=True))


SPACE = SearchSpace(
    name="vae_ood",
    description="VAEs (Gaussian / categorical decoder, beta-VAE): IWAE log p(x) as an OOD "
                "score, eval vs adapted encoder BN, linear SVM on latents (002)",
    loop="vae_ood",
    metric="val_loss",
    mode="min",
    profiles={
        "smoke": Profile(
            config={**BASE, "epochs": 2, "hidden": 8, "latent_dim": 4, "iwae_samples": "2+5",
                    "svm_samples": 100},
            grid={"decoder": list(DECODERS)},
            description="2 trials, 2 epochs of a tiny VAE on digits, each decoder",
        ),
        "local": Profile(
            seeds=3,
            config=BASE,
            grid={"decoder": list(DECODERS), "beta": [1.0, 4.0]},
            description="4 configurations on digits: decoder x beta (VAE, beta-VAE), 3 seeds",
        ),
        "paper": Profile(
            seeds=3,
            config={**BASE, "hidden": 64, "latent_dim": 128, "lr": 2e-4, "epochs": 100},
            grid={"setup": PAPER_SETUPS, "decoder": list(DECODERS)},
            num_workers=1,
            gpus_per_worker=1.0,
            cpus_per_worker=4,
            description="FashionMNIST and CIFAR-10, both decoders, DCGAN widths, one GPU each",
        ),
    },
    table_keys=("dataset", "decoder", "beta"),
    table_metrics=("test_bpd", "auroc_iwae5", "auroc_iwae50", "auroc_iwae5_bn",
                   "auroc_iwae50_bn", "svm_min_acc", "svm_bn_min_acc", "epochs_run"),
    plot_x="beta",
    plot_log_x=True,
    plot_lines=("decoder",),
    plot_panels=("dataset",),
    plot_metrics=("test_bpd", "auroc_iwae50", "auroc_iwae50_bn"),
    choices={
        "dataset": DATASET_NAMES,
        "model": ("vae",),
        "decoder": DECODERS,
        "bn_modes": tuple("+".join(m) for m in (BN_MODES, BN_MODES[:1], BN_MODES[1:])),
    },
    positive=("beta", "latent_dim", "hidden", "lr", "batch_size", "epochs", "bn_batch",
              "svm_samples", "checkpoint_seconds"),
    claims=CLAIMS,
    count_lists=("iwae_samples",),
    result_tables=(LATENT_SVM,),
    histogram_labels={"iwae50": "IWAE-50 log p(x) [nats], eval BN",  # Fig. 3.4
                      "iwae50_bn": "IWAE-50 log p(x) [nats], adapted BN"},
    beside=(Beside("Document 002 Table 3.1 (linear separability of latent codes) beside ours",
                   _latent_svm_beside),),
)
