"""The layers of ARCHITECTURE.md hold: CLIs -> jobs / pools / tune / reports / tracking ->
workloads. `workloads` is plain PyTorch (no Ray, no W&B, no sweeps) and imports in a
notebook without them; no CLI imports another CLI; nothing below the CLIs imports one."""

import ast
import re
import subprocess
import sys
from pathlib import Path

from conftest import ROOT

from search_spaces import get_search_space, sweep_names

CLIS = {"orchestrator.sweep", "orchestrator.report", "orchestrator.attack",
        "orchestrator.langevin", "orchestrator.defend", "orchestrator.ensemble",
        "orchestrator.evaluate"}


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


# Words only a study uses (its models, scores and tables): they belong in its search space
# and its `workloads/studies/` module, never in the generic machinery.
STUDY_TERMS = ("gmm", "vae", "iwae", "confidnet", "purif", "godin", "gradcon", "ocgan",
               "mistake", "latent_svm")


def test_the_machinery_knows_no_study_by_name():
    """orchestrator/ is generic: no study-only term anywhere in it, and no sweep's name
    outside the CLIs' help examples (a name that is also a config key, such as
    `lr_scaling`, aside). Adding a study touches search_spaces/ and workloads/studies/."""
    keys = {key for name in sweep_names() for profile in get_search_space(name).profiles.values()
            for key in (*profile.config, *profile.grid)}
    names = [name for name in sweep_names() if name not in keys]
    for path in (ROOT / "orchestrator").rglob("*.py"):
        text = path.read_text().lower()
        for term in STUDY_TERMS:
            assert term not in text, f"{path.relative_to(ROOT)} names '{term}'"
        if module_name(path) in CLIS:
            continue
        for name in names:
            assert not re.search(rf"\b{name}\b", text), f"{path.relative_to(ROOT)} names {name}"


PACKAGES = ("orchestrator", "workloads", "search_spaces", "benchmarks")


def test_no_module_over_400_lines():
    """One concept per module: none of the project's modules passes 400 lines."""
    long = {str(path.relative_to(ROOT)): n for package in PACKAGES
            for path in (ROOT / package).rglob("*.py")
            if (n := len(path.read_text().splitlines())) > 400}
    assert not long, long


def test_no_import_circle():
    """No module imports, at any depth of its code, one that leads back to it (a circle
    through a function-level import is a circle of the design too: the old train loops and
    the class-anomaly loop imported each other)."""
    modules = {module_name(path): path for package in PACKAGES[:3]
               for path in (ROOT / package).rglob("*.py")}

    def edges(path: Path) -> set[str]:
        names = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and not node.level:
                names |= {node.module, *(f"{node.module}.{a.name}" for a in node.names)}
        return (names | imported_modules(path)) & set(modules)

    graph = {name: edges(path) - {name} for name, path in modules.items()}
    state: dict[str, str] = {}  # "open" while on the DFS path, "done" after

    def visit(name: str, path: list[str]) -> None:
        state[name] = "open"
        for nxt in sorted(graph[name]):
            assert state.get(nxt) != "open", " -> ".join([*path, name, nxt])
            if nxt not in state:
                visit(nxt, [*path, name])
        state[name] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name, [])
