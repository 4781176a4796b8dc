"""`orchestrator.attack` refuses flags it would ignore (exit 2 naming the flag), resolves
the defaults of what it uses, and documents every flag with its default."""

import pytest

from orchestrator.attack import attack_config, build_parser
from orchestrator.errors import UsageError


def config(*args):
    return attack_config(build_parser().parse_args(["SWEEP", "--trial", "t", *args]))


@pytest.mark.parametrize("args, flag", [
    (["--attacks", "apgd-ce"], "--attacks"),                           # needs --version custom
    (["--attack", "pgd", "--version", "custom"], "--version"),
    (["--attack", "pgd", "--attacks", "apgd-ce"], "--attacks"),
    (["--lam", "2"], "--lam"),                                         # adaptive only
    (["--attack", "apgd", "--lam", "2"], "--lam"),
    (["--steps", "10"], "--steps"),                                    # AutoAttack sets its own
    (["--attack", "fgsm", "--steps", "10"], "--steps"),
    (["--attack", "pgd", "--restarts", "2"], "--restarts"),
    (["--attack", "fgsm", "--norm", "L2"], "--norm"),
    (["--eps", "1/255,8/255"], "--eps"),                               # several: ood only
    (["--scores", "msp"], "--scores"),
    (["--target", "ood", "--attack", "pgd"], "--attack"),
    (["--target", "ood", "--lam", "1"], "--lam"),
    (["--target", "ood", "--version", "custom"], "--version"),
    (["--target", "adversarial", "--attack", "pgd"], "--attack"),     # it runs FGSM and BIM
    (["--target", "adversarial", "--norm", "L2"], "--norm"),
])
def test_a_flag_that_would_be_ignored_is_refused_by_name(args, flag):
    with pytest.raises(UsageError, match=flag):
        config(*args)


def test_defaults_and_what_each_attack_reads():
    assert config() == {"attack": "autoattack", "version": "standard", "eps": 8 / 255,
                        "norm": "Linf", "seed": 0, "batch_size": 100}
    assert config("--version", "custom", "--attacks", "apgd-ce,square")["attacks"] == \
        ["apgd-ce", "square"]
    adaptive = config("--attack", "apgd_adaptive", "--lam", "0.01", "--restarts", "2")
    assert (adaptive["lam"], adaptive["restarts"], adaptive["steps"]) == (0.01, 2, 100)
    assert "lam" not in config("--attack", "apgd") and "steps" not in config("--attack", "fgsm")
    ood = config("--target", "ood", "--steps", "20")
    assert ood["eps"] == [1 / 255, 4 / 255, 8 / 255] and ood["steps"] == 20
    assert ood["batch_size"] == 256 and config("--batch-size", "7")["batch_size"] == 7
    assert config("--target", "ood", "--eps", "0.1,2/255")["eps"] == [0.1, 2 / 255]
    adversarial = config("--target", "adversarial")
    assert adversarial["eps"] == [0.01, 0.05, 0.1] and adversarial["steps"] == 10
    assert config("--target", "adversarial", "--steps", "4", "--eps", "0.1")["steps"] == 4


def test_help_gives_every_flag_its_default():
    text = " ".join(build_parser().format_help().split())
    for flag, default in [("--seed", "(default 0)"), ("--num-actors", "(default 2)"),
                          ("--cpus-per-actor", "(default 1;"), ("--gpus-per-actor",
                                                                "(default 0)"),
                          ("--target", "(default classifier)"), ("--steps", "(default 100)"),
                          ("--restarts", "(default 1)"), ("--lam", "(default 1)"),
                          ("--norm", "(default Linf;")]:
        after = text.split(flag, 2)[-1]  # the flag's help entry (after the usage line)
        assert default in after[:400], flag
