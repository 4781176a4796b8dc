"""The layers of ARCHITECTURE.md hold: CLIs -> jobs / pools / tune / reports / tracking ->
workloads. `workloads` is plain PyTorch (no Ray, no W&B, no sweeps) and imports in a
notebook without them; no CLI imports another CLI; nothing below the CLIs imports one."""

import ast
import subprocess
import sys
from pathlib import Path

from conftest import ROOT

CLIS = {"orchestrator.sweep", "orchestrator.report", "orchestrator.attack",
        "orchestrator.langevin", "orchestrator.defend", "orchestrator.ensemble"}


def imported_modules(path: Path) -> set[str]:
    """Every module a file imports, at any depth of its code."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
    return names


def module_name(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")


def test_workloads_imports_no_ray_wandb_or_orchestration():
    for path in (ROOT / "workloads").rglob("*.py"):
        for name in imported_modules(path):
            top = name.split(".")[0]
            assert top not in ("ray", "wandb", "orchestrator", "search_spaces"), (path, name)


def test_no_cli_imports_another_and_no_layer_below_imports_a_cli():
    for path in (ROOT / "orchestrator").rglob("*.py"):
        module = module_name(path)
        for name in imported_modules(path):
            if module in CLIS:
                assert name not in CLIS, (module, name)
            elif module != "orchestrator.cli":
                assert name not in CLIS | {"orchestrator.cli"}, (module, name)


def test_every_workloads_module_imports_without_ray_or_wandb():
    code = ("import importlib, pkgutil, sys, workloads\n"
            "for m in pkgutil.walk_packages(workloads.__path__, 'workloads.'):\n"
            "    importlib.import_module(m.name)\n"
            "print(sorted(k for k in ('ray', 'wandb') if k in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=ROOT, check=True).stdout
    assert out.strip() == "[]"


def test_a_trial_process_imports_no_library_only_some_studies_use():
    """Every trial process imports the loops on start (a new Ray actor each): pytorch-ood
    (with torchvision and torch's compiler), scikit-learn and scipy.stats cost ~2 s there,
    and in the driver, and are imported where a study uses them."""
    code = ("import sys, orchestrator.tune.trainable, orchestrator.tune.experiment\n"
            "print(sorted(k for k in ('pytorch_ood', 'torchvision', 'sklearn', 'scipy.stats')"
            " if k in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=ROOT, check=True).stdout
    assert out.strip() == "[]"


def test_public_names_are_where_a_researcher_looks():
    from workloads.data import load_dataset  # noqa: F401
    from workloads.models import DIGLM, MLPClassifier, build_model  # noqa: F401
    from workloads.models.flows import Flow, approximate_mass, build_flow  # noqa: F401
    from workloads.scores import OOD_SCORES, build_score

    assert {"msp", "mahalanobis", "gmm", "log_px", "neg_am"} <= set(OOD_SCORES)
    assert build_score("energy", temperature=2.0).temperature == 2.0
