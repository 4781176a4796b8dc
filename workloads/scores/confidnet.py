"""ConfidNet (Corbière et al. 2019, "Addressing Failure Prediction by Learning Model
Confidence"; document 001, Part II; NOTES.md G), trained as their code trains it
(github.com/valeoai/ConfidNet: learners/selfconfid_learner.py, utils/losses.py
`SelfConfidMSELoss`, models/*_selfconfid_classic.py and *_selfconfid_cloning.py,
confs/selfconfid-classif.yaml). An auxiliary head on the classifier's penultimate features
regresses the true-class probability TCP(x, y) = softmax(f(x))_y; its output is the
confidence score (higher = more likely right). The head is theirs (`uncertainty1` ..
`uncertainty5`): five linear layers, 400 units wide with ReLU between them and one output,
read through a sigmoid so that it is in [0, 1] like the TCP.

Phase 1 (their `selfconfid` learner on a `*_classic` model): every classifier parameter
frozen, the head alone trained by Adam (lr 1e-4, batches of 128) on the mean of
w * (sigmoid(head(features)) - TCP)^2, w = `weighting` where the prediction is wrong, else
1 (their `weighting`, 1 by default). Their learner puts the model in train mode every epoch
and then only batch norm back in eval (`disable_bn`; dropout is disabled only for the
fine-tuning), so the classifier's dropout is ACTIVE: each step sees dropout-perturbed
features, and the TCP of that same perturbed forward pass (the loss takes the softmax of the
same output). A classifier that fits its training set thus still shows the head errors to
learn from. `dropout=False` runs the classifier in eval mode instead (for comparison).
After every epoch the head scores the validation split (everything in eval mode). The head
kept (`epoch`): "best_val", the epoch with the highest AUPR-error (their `ap_errors`, errors
the positive class), as the paper chooses its models on validation AUPR-error; or "last",
the final epoch's. Their rule needs errors to rank: on the digits' validation split the
classifier makes about 10, and over 1,000 epochs the best of them is chosen noise (seed 0:
epoch 944 kept, validation AUPR-error .833 against .490 on test; issue 37), so
`workloads.studies.failure_prediction` keeps the last epoch unless told otherwise.

Phase 2, optional (`finetune_epochs` > 0; their `*_selfconfid_cloning` models, run with an
`uncertainty` checkpoint): a deep copy of the classifier is trained, through its
`features`, together with phase 1's head, with dropout off and batch norm in eval, by the
same loss; the original classifier, untouched, makes the predictions and the TCP targets.
The epoch kept is again chosen by `epoch`, and the score then reads the copy's features.

What differs from their code, and why:
- they select the checkpoint after training from the per-epoch logs; `fit` keeps the best
  epoch itself ("best_val"). Where the validation split has no error (AUPR-error undefined)
  the last epoch is kept; "last" is ours (above);
- their validation split is 10% of the training set; here it is the dataset's own split;
- the classifier is frozen by running it without a graph, not by clearing `requires_grad`,
  and its modes are set per module and put back (`evaluating`): the model given is left
  exactly as found (each module's flag, every parameter and buffer);
- phase 2's learning rate is its own parameter (`finetune_lr`, default lr / 10, our
  choice): their config has one `lr`, set by hand for each of the two runs;
- no data augmentation (their CIFAR configs flip and rotate; MNIST's has none).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterator

import torch
from torch import nn

from workloads.evaluation.metrics import failure_metrics
from workloads.models.feature_cache import unwrapped
from workloads.models.modes import dropout_layers, evaluating
from workloads.scores.base import (
    OODScore,
    _device,
    batched_logits,
    penultimate_features,
    register_score,
)


def confidnet_head(features: int, width: int = 400, layers: int = 5) -> nn.Sequential:
    """`layers` linear layers (`width` wide, ReLU between) from the features to one logit."""
    modules: list[nn.Module] = []
    size = features
    for _ in range(layers - 1):
        modules += [nn.Linear(size, width), nn.ReLU()]
        size = width
    modules.append(nn.Linear(size, 1))
    return nn.Sequential(*modules)


def tcp_loss(logits: torch.Tensor, confidence: torch.Tensor, y: torch.Tensor,
             weighting: float = 1.0) -> torch.Tensor:
    """Their `SelfConfidMSELoss`: the mean of w * (sigmoid(confidence) - TCP)^2, TCP the
    softmax of `logits` at the label, w = `weighting` where argmax(logits) != y, else 1."""
    probs = logits.softmax(dim=1)
    tcp = probs.gather(1, y.view(-1, 1)).squeeze(1)
    weights = 1.0 + (weighting - 1.0) * (probs.argmax(dim=1) != y).float()
    return (weights * (torch.sigmoid(confidence).squeeze(1) - tcp) ** 2).mean()


@register_score("confidnet")
class ConfidNet(OODScore):
    """sigmoid(head(features(x))), the head fitted to the TCP on the training split with the
    classifier's dropout active (`dropout`) for `epochs` of Adam at `lr` (batches of
    `batch`), then optionally the head with a copy of the encoder for `finetune_epochs` at
    `finetune_lr` (dropout off); each phase keeps the epoch `epoch` says: "best_val" (their
    rule, the default here: best validation AUPR-error) or "last" (the final epoch).
    Per epoch: `losses` (mean training loss), `val_aupr_error`, `train_errors` (wrong
    predictions of the forward passes the head was trained on; phase 2: `finetune_*`);
    `best_epoch` and `finetune_best_epoch` (1-based) are the epochs kept."""

    EPOCH_RULES = ("best_val", "last")

    requires = ("logits", "features")
    in_default_set = False
    fit_split = "train+validation"

    def __init__(self, epochs: int = 20, lr: float = 1e-4, batch: int = 128, width: int = 400,
                 seed: int = 0, dropout: bool = True, weighting: float = 1.0,
                 finetune_epochs: int = 0, finetune_lr: float | None = None,
                 epoch: str = "best_val"):
        if epochs < 1 or finetune_epochs < 0:
            raise ValueError("confidnet: epochs must be >= 1 and finetune_epochs >= 0")
        if epoch not in self.EPOCH_RULES:
            raise ValueError(f"confidnet: epoch must be one of {', '.join(self.EPOCH_RULES)}, "
                             f"not {epoch!r}")
        self.epoch = epoch
        self.epochs, self.lr, self.batch, self.width, self.seed = epochs, lr, batch, width, seed
        self.dropout, self.weighting = dropout, weighting
        self.finetune_epochs = finetune_epochs
        self.finetune_lr = lr / 10 if finetune_lr is None else finetune_lr
        self.head: nn.Module | None = None
        self.encoder: nn.Module | None = None  # phase 2's copy of the classifier
        self._reset_history()

    def _reset_history(self) -> None:
        self.losses: list[float] = []
        self.val_aupr_error: list[float] = []
        self.train_errors: list[int] = []
        self.best_epoch = 0
        self.finetune_losses: list[float] = []
        self.finetune_val_aupr_error: list[float] = []
        self.finetune_train_errors: list[int] = []
        self.finetune_best_epoch = 0

    def fit(self, model, x_train, y_train, x_val=None, y_val=None):
        if x_val is None or y_val is None:
            raise ValueError("confidnet chooses its epoch on held-out data: "
                             "fit(model, x_train, y_train, x_val, y_val)")
        self._reset_history()
        device = _device(model)
        val_correct = (batched_logits(model, x_val).argmax(dim=1) == y_val).numpy()
        cuda = [device.index if device.index is not None else torch.cuda.current_device()] \
            if device.type == "cuda" else []
        with torch.random.fork_rng(devices=cuda):  # the caller's random state is kept
            torch.random.default_generator.manual_seed(self.seed)  # head init, CPU dropout
            for index in cuda:  # dropout masks on the model's GPU
                torch.cuda.default_generators[index].manual_seed(self.seed)
            generator = torch.Generator().manual_seed(self.seed)
            features_val = penultimate_features(model, x_val)
            self.head = confidnet_head(features_val.shape[1], self.width).to(device)
            self.encoder = None
            self._phase1(model, x_train, y_train, features_val, val_correct, generator)
            if self.finetune_epochs:
                self._phase2(model, x_train, y_train, x_val, val_correct, generator)
        self.head.eval().requires_grad_(False)
        return self

    def _phase1(self, model, x_train, y_train, features_val, val_correct, generator):
        """The head on the frozen classifier: BN in eval, dropout on (`dropout`)."""
        device = _device(model)
        optimizer = torch.optim.Adam(self.head.parameters(), lr=self.lr)

        def step(x, index):
            with torch.no_grad():  # frozen: no graph through the classifier
                features = model.features(x)
                logits = model.head(features)
            return logits, self.head(features)

        def validate():
            with torch.no_grad():
                return torch.sigmoid(self.head(features_val.to(device))).squeeze(1).cpu()

        active = dropout_layers(model) if self.dropout else []
        with evaluating(model, train=active):
            self.best_epoch = _train(
                self.epochs, step, validate, val_correct, optimizer, [self.head],
                self._batches(x_train, y_train, device, generator), self.weighting,
                self.losses, self.val_aupr_error, self.train_errors, self.epoch)

    def _phase2(self, model, x_train, y_train, x_val, val_correct, generator):
        """Their cloning: a copy of the classifier trained with the head, dropout off, BN in
        eval; the original model's predictions are the targets and stay the predictions."""
        device = _device(model)
        base = unwrapped(model)
        encoder = copy.deepcopy(base).eval().requires_grad_(True)
        train_logits = batched_logits(model, x_train)  # the original, in eval mode
        optimizer = torch.optim.Adam([*encoder.parameters(), *self.head.parameters()],
                                     lr=self.finetune_lr)

        def step(x, index):
            return train_logits[index].to(device), self.head(encoder.features(x))

        def validate():
            features = penultimate_features(encoder, x_val).to(device)
            with torch.no_grad():
                return torch.sigmoid(self.head(features)).squeeze(1).cpu()

        self.finetune_best_epoch = _train(
            self.finetune_epochs, step, validate, val_correct, optimizer, [self.head, encoder],
            self._batches(x_train, y_train, device, generator), self.weighting,
            self.finetune_losses, self.finetune_val_aupr_error, self.finetune_train_errors,
            self.epoch)
        encoder.eval().requires_grad_(False)
        self.encoder = encoder

    def _batches(self, x, y, device, generator):
        def batches() -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
            order = torch.randperm(len(x), generator=generator)
            for start in range(0, len(order), self.batch):
                index = order[start:start + self.batch]
                yield x[index].to(device), y[index].to(device), index
        return batches

    def forward(self, model, x):
        if self.head is None:
            raise RuntimeError("confidnet must be fitted (its head trained) first")
        encoder = model if self.encoder is None else self.encoder
        return torch.sigmoid(self.head(encoder.features(x))).squeeze(1)


def _train(epochs: int, step: Callable, validate: Callable, val_correct, optimizer,
           trained: list[nn.Module], batches: Callable, weighting: float, losses: list,
           val_aupr: list, train_errors: list, keep: str = "best_val") -> int:
    """`epochs` of `step` (inputs, their indices -> (logits, confidence logit)) over
    `batches()` (inputs, labels, indices in the training split), each epoch's validation
    AUPR-error recorded (`validate()`: confidences on the validation inputs). `keep`
    "best_val": the modules of `trained` restored at the end to their state after the epoch
    of highest validation AUPR-error (the first best epoch on ties; the last epoch where it
    is undefined); "last": left as the last epoch made them. Returns the epoch kept
    (1-based)."""
    best, best_epoch, best_states = -math.inf, epochs, None
    for epoch in range(1, epochs + 1):
        total, count, wrong = 0.0, 0, 0
        for x, y, index in batches():
            logits, confidence = step(x, index)
            loss = tcp_loss(logits, confidence, y, weighting)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.item() * len(y)
            count += len(y)
            wrong += int((logits.argmax(dim=1) != y).sum())
        losses.append(total / count)
        train_errors.append(wrong)
        aupr = failure_metrics(validate().numpy(), val_correct)["aupr_error"]
        val_aupr.append(aupr)
        if keep == "best_val" and math.isfinite(aupr) and aupr > best:
            best, best_epoch = aupr, epoch
            best_states = [copy.deepcopy(m.state_dict()) for m in trained]
    optimizer.zero_grad(set_to_none=True)
    if best_states is not None:
        for module, state in zip(trained, best_states):
            module.load_state_dict(state)
    return best_epoch
