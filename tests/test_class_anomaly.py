"""The class-anomaly baselines of thesis Tables 3.2/3.3 (NOTES.md G): GradCon's gradient
constraint and score, OCGAN's training step and negative mining, and the class_anomaly sweep
end to end (Ray Tune, W&B offline, the report beside the thesis' numbers)."""

import math

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from conftest import command

from orchestrator.errors import UsageError
from orchestrator.tracking.offline import find_offline_runs, read_offline_run
from orchestrator.tune.overrides import apply_overrides
from search_spaces import get_search_space
from search_spaces.class_anomaly import BASE
from workloads.data import load_trial_data
from workloads.evaluation.metrics import ood_metrics
from workloads.evaluation.ood_evaluation import evaluate_ood
from workloads.models.conv_stacks import ARCHES, encoder_sizes
from workloads.models.gradcon import (
    GradConAE,
    gradcon_scores,
    gradcon_step,
    gradient_constraint_loss,
)
from workloads.models.ocgan import (
    OCGAN,
    autoencoder_loss,
    classifier_confidence,
    classifier_loss,
    discriminator_loss,
    mine_negatives,
    ocgan_optimizers,
    ocgan_scores,
    ocgan_step,
)
from workloads.scores import build_score
from workloads.training.class_anomaly import anomaly_optimizers, train_anomaly_epoch

SHAPE = (1, 8, 8)


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models: one thread is fastest, and on shared cores many times faster than two."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.flatten().double(), b.flatten().double()
    return float(a @ b / (a.norm() * b.norm()))


@pytest.mark.parametrize("size", [8, 28, 32])
def test_decoder_mirrors_encoder_sizes(size):
    model = GradConAE((1, size, size), "paper")
    assert model(torch.rand(2, 1, size, size)).shape == (2, 1, size, size)
    assert encoder_sizes(28, 4) == [28, 15, 8, 5, 3]  # the official CAE's MNIST code: 3x3
    assert len(model.constrained_names()) == len(ARCHES["paper"])


def test_gradient_constraint_loss_is_minus_mean_cosine_by_hand():
    torch.manual_seed(0)
    model = GradConAE(SHAPE, "small")
    x = torch.rand(5, *SHAPE)
    loss = F.mse_loss(model(x), x)
    weights = model.constrained_weights()
    gradients = torch.autograd.grad(loss, weights)
    references = [torch.randn_like(w) for w in weights]
    by_hand = -sum(_cosine(g, r) for g, r in zip(gradients, references)) / len(weights)
    assert gradient_constraint_loss(list(gradients), references).item() == \
        pytest.approx(by_hand, abs=1e-6)
    # aligned with the references: the loss is -1
    assert gradient_constraint_loss(list(gradients), [2 * g for g in gradients]).item() == \
        pytest.approx(-1.0, abs=1e-6)


def test_gradcon_step_adds_the_constraint_and_averages_the_full_loss_gradients():
    torch.manual_seed(0)
    model = GradConAE(SHAPE, "small")
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    alpha = 0.5
    x1, x2 = torch.rand(4, *SHAPE), torch.rand(4, *SHAPE)
    first = gradcon_step(model, optimizer, x1, alpha)
    assert first["grad_loss"] == 0.0 and first["loss"] == pytest.approx(first["recon"])
    g1 = [w.grad.clone() for w in model.constrained_weights()]  # no history: dJ = dL
    assert all(torch.equal(r, g) for r, g in zip(model.references(), g1))

    # The second step by hand, on a copy: J = L + alpha * (-mean cos(dL/dW, g1)).
    copy = GradConAE(SHAPE, "small")
    copy.load_state_dict(model.state_dict())
    recon = F.mse_loss(copy(x2), x2)
    gradients = torch.autograd.grad(recon, copy.constrained_weights(), create_graph=True)
    cosines = [F.cosine_similarity(g.flatten(), r.flatten(), dim=0)
               for g, r in zip(gradients, copy.references())]
    expected_grad_loss = -torch.stack(cosines).mean()
    (recon + alpha * expected_grad_loss).backward()
    g2 = [w.grad for w in copy.constrained_weights()]

    second = gradcon_step(model, optimizer, x2, alpha)
    assert second["grad_loss"] == pytest.approx(expected_grad_loss.item(), abs=1e-6)
    assert second["loss"] == pytest.approx(second["recon"] + alpha * second["grad_loss"],
                                           abs=1e-6)
    assert int(model.reference_count) == 2
    for reference, a, b in zip(model.references(), g1, g2):
        torch.testing.assert_close(reference, (a + b) / 2)


def test_gradcon_score_per_input_matches_a_backward_pass_by_hand():
    torch.manual_seed(0)
    model = GradConAE(SHAPE, "small")
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(3):
        gradcon_step(model, optimizer, torch.rand(8, *SHAPE), 0.03)
    x = torch.rand(3, *SHAPE)
    beta = 0.12
    scores = gradcon_scores(model, x, beta)
    for i in range(len(x)):
        recon = F.mse_loss(model(x[i:i + 1]), x[i:i + 1])
        gradients = torch.autograd.grad(recon, model.constrained_weights())
        cosine = sum(_cosine(g, r) for g, r in zip(gradients, model.references())) \
            / len(gradients)
        assert scores[i].item() == pytest.approx(-recon.item() + beta * cosine, abs=1e-5)
    registered = build_score("gradcon", beta=beta)(model, x)  # the OOD score, in chunks
    torch.testing.assert_close(registered, scores.detach(), atol=1e-5, rtol=1e-5)


def _trained(method: str, normal_class: int, epochs: int):
    torch.manual_seed(0)
    config = {**BASE, "method": method, "normal_class": normal_class, "epochs": epochs}
    data = load_trial_data(config)
    model = (GradConAE(data.input_shape, "small") if method == "gradcon"
             else OCGAN(data.input_shape, "small"))
    optimizers = anomaly_optimizers(model, config)
    for epoch in range(epochs):
        train_anomaly_epoch(model, optimizers, data.x_train, config, epoch,
                            torch.device("cpu"))
    return model.eval(), data


def test_trained_gradcon_ranks_the_normal_class_above_the_others():
    model, data = _trained("gradcon", normal_class=0, epochs=40)
    score = build_score("gradcon")
    normal = score(model, data.x_test).double().numpy()
    others = score(model, data.ood["other_classes"]).double().numpy()
    assert ood_metrics(normal, others)["auroc"] > 0.9
    # the OOD stage scores the whole test split of the other classes, as GradCon's and
    # OCGAN's protocols (thesis Tables 3.2 / 3.3), not a sample the size of the normal class
    (row,) = evaluate_ood(model, data, {"gradcon": {}}, resamples=0).rows
    assert row["n_id"] == len(normal) and row["n"] == len(others) == 360 - len(normal)
    assert row["auroc"] == pytest.approx(ood_metrics(normal, others)["auroc"], abs=1e-12)


def test_ocgan_training_updates_each_part_with_its_own_loss():
    torch.manual_seed(0)
    model = OCGAN(SHAPE, "small", latent_dim=4)
    optimizers = ocgan_optimizers(model, lr=1e-3)
    x = torch.rand(16, *SHAPE)
    s = torch.rand(16, 4) * 2 - 1
    with torch.no_grad():
        codes = model.encode(x)
        good, bad = model.decode(codes), model.decode(s)
    parts = {"autoencoder": model.autoencoder_parameters(),
             "discriminators": model.discriminator_parameters(),
             "classifier": list(model.classifier.parameters())}

    def snapshot():
        return {k: [p.detach().clone() for p in v] for k, v in parts.items()}

    def changed(before):
        return {k for k, v in parts.items()
                if any(not torch.equal(p, q) for p, q in zip(v, before[k]))}

    def steps(name, loss_fn, n=5):
        before, first = snapshot(), loss_fn().item()
        for _ in range(n):
            optimizers[name].zero_grad()
            loss_fn().backward()
            optimizers[name].step()
        assert changed(before) == {name}
        return first, loss_fn().item()

    before, after = steps("classifier", lambda: classifier_loss(model, good, bad))
    assert after < before
    before, after = steps("discriminators",
                          lambda: sum(discriminator_loss(model, x, codes, s)))
    assert after < before
    before, after = steps("autoencoder",
                          lambda: autoencoder_loss(model, x, x, s)["mse"], n=20)
    assert after < before

    # One full step of Algorithm 1 changes every part, and reports every loss.
    before = snapshot()
    losses = ocgan_step(model, optimizers, x, torch.Generator().manual_seed(1))
    assert changed(before) == set(parts)
    assert {"recon", "classifier", "disc_latent", "disc_visual", "gen_latent",
            "gen_visual"} <= set(losses) and all(map(math.isfinite, losses.values()))


def test_negative_mining_lowers_the_classifiers_confidence_within_bounds():
    model, data = _trained("ocgan", normal_class=0, epochs=5)
    generator = torch.Generator().manual_seed(0)
    optimizer = torch.optim.Adam(model.classifier.parameters(), lr=1e-3)
    for _ in range(100):  # a classifier with an opinion: reconstructions good, De(s) bad
        s = torch.rand(64, model.latent_dim, generator=generator) * 2 - 1
        with torch.no_grad():
            good, bad = model(data.x_train[:64]), model.decode(s)
        optimizer.zero_grad()
        classifier_loss(model, good, bad).backward()
        optimizer.step()
    s = torch.rand(64, model.latent_dim, generator=generator) * 2 - 1
    weights = [p.detach().clone() for p in model.parameters()]
    mined = mine_negatives(model, s, steps=5, step_size=2.0)
    with torch.no_grad():
        before, after = classifier_confidence(model, s), classifier_confidence(model, mined)
    assert (after < before).all()  # every latent, on its own gradient
    assert mined.abs().max() <= 1.0 and (mined - s).abs().mean() > 1e-3
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), weights))


def test_ocgan_score_is_the_negated_reconstruction_mse():
    torch.manual_seed(0)
    model = OCGAN(SHAPE, "small").eval()
    x = torch.rand(4, *SHAPE)
    expected = torch.stack([-F.mse_loss(model(x[i:i + 1]), x[i:i + 1]) for i in range(4)])
    torch.testing.assert_close(ocgan_scores(model, x), expected)
    torch.testing.assert_close(build_score("ocgan")(model, x), expected.detach())


@pytest.mark.parametrize("setting, message", [
    ("method=vae", "method=vae: must be one of"),
    ("normal_class=10", "normal_class=10: must be one of"),
    ("arch=huge", "arch=huge: must be one of"),
    ("ocgan_mining_steps=0", "ocgan_mining_steps=0: must be positive")])
def test_bad_values_stop_before_ray(setting, message):
    space = get_search_space("class_anomaly")  # what `sweep` checks before starting Ray
    with pytest.raises(UsageError, match=message):
        apply_overrides(space, space.profile("smoke"), [setting])


@pytest.mark.slow
def test_class_anomaly_smoke_sweep_reports_beside_the_thesis(env, tmp_path):
    command("sweep", "class_anomaly", "--profile", "smoke", "--storage", tmp_path,
            "--wandb", "offline", env=env, timeout=300)
    (sweep_dir,) = tmp_path.glob("class_anomaly-smoke-*")
    table = pd.read_csv(sweep_dir / "results" / "trials.csv")
    ood = pd.read_csv(sweep_dir / "results" / "ood.csv")
    assert sorted(table.method) == ["gradcon", "ocgan"]
    assert (table.status == "completed").all() and (table.epochs == 2).all()
    assert set(zip(ood.method, ood.score)) == {("gradcon", "gradcon"), ("ocgan", "ocgan")}
    # the 36 test ones against every other test digit (324), not a sample of 36
    assert set(ood.ood_set) == {"other_classes"}
    assert (ood.n_id == 36).all() and (ood.n == 324).all()
    assert ood.auroc.between(0, 1).all()
    for method in ("gradcon", "ocgan"):
        row = table[table.method == method].iloc[0]
        assert row[f"auroc_{method}"] == pytest.approx(
            ood[ood.method == method].auroc.iloc[0])
        assert math.isfinite(row.val_recon_mse) and math.isfinite(row.train_recon)
    reproduction = (sweep_dir / "REPRODUCTION.md").read_text()
    section = reproduction.split("Tables 3.2 / 3.3")[1]
    class_1 = next(line for line in section.splitlines() if line.startswith("| 1 "))
    assert ".999" in class_1 and ".064" in class_1  # the thesis' GradCon/OCGAN, AM
    assert "ours GradCon" in section and "ours OCGAN" in section
    runs = {run.run_id: run for run in map(read_offline_run, find_offline_runs(sweep_dir))
            if not run.run_id.startswith("summary-")}  # W&B offline: one run per trial
    assert set(runs) == set(table.trial_id)
    for row in table.itertuples():
        assert runs[row.trial_id].config["method"] == row.method
        assert runs[row.trial_id].summary[f"auroc_{row.method}"] == pytest.approx(
            getattr(row, f"auroc_{row.method}"))


@pytest.mark.slow
def test_class_anomaly_paper_profile_on_mnist_and_cifar_files(env, tmp_path):
    """The paper profile (MNIST and CIFAR-10, the papers' network widths) on files in their
    real formats (IDX, CIFAR pickles), one normal class, one epoch."""
    from test_datasets import write_cifar, write_idx

    data = tmp_path / "data"
    write_idx(data, "MNIST", 200, seed=0)
    write_cifar(data, "cifar10", 200, seed=1)
    command("sweep", "class_anomaly", "--profile", "paper", "--set", "normal_class=1",
            "--set", "epochs=1", "--set", "batch_size=8", "--gpus-per-worker", 0,
            "--cpus-per-worker", 1, "--data-dir", data, "--storage", tmp_path / "runs",
            "--wandb", "disabled", env=env)
    (sweep_dir,) = (tmp_path / "runs").glob("class_anomaly-paper-*")
    table = pd.read_csv(sweep_dir / "results" / "trials.csv")
    assert sorted(zip(table.dataset, table.method)) == [
        ("cifar10", "gradcon"), ("cifar10", "ocgan"), ("mnist", "gradcon"), ("mnist", "ocgan")]
    assert (table.status == "completed").all() and (table.arch == "paper").all()
    ood = pd.read_csv(sweep_dir / "results" / "ood.csv")
    assert set(ood.ood_set) == {"other_classes"} and ood.auroc.between(0, 1).all()
    assert "Tables 3.2 / 3.3" in (sweep_dir / "REPRODUCTION.md").read_text()
