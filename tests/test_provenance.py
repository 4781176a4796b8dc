"""A results directory records what produced it: the commit and whether the tree was dirty,
package versions, the command line, the machine, and a hash of each dataset file."""

import hashlib
import json
import subprocess
import sys
from pathlib import Path

from orchestrator.reports.provenance import (
    git_state,
    provenance_markdown,
    write_provenance,
)
from workloads.data import dataset_files


def test_record_and_footer(tmp_path):
    record = write_provenance(tmp_path / "results", ["digits"], None)
    assert json.loads((tmp_path / "results" / "provenance.json").read_text()) == record
    (digits_file,) = dataset_files("digits")
    digest = hashlib.sha256(digits_file.read_bytes()).hexdigest()
    assert record["datasets"]["digits"] == {f"data/{digits_file.name}": digest}
    assert record["packages"]["torch"] and record["packages"]["ray"]
    assert record["machine"]["cores"] >= 1 and record["command"]
    footer = provenance_markdown(record)
    for text in ("commit:", "torch ", "ray ", digest[:12], "cores"):
        assert text in footer, text


def test_the_digits_file_is_the_one_scikit_learn_reads_found_without_importing_it():
    code = ("import sys; from workloads.data import dataset_files; "
            "print(dataset_files('digits')[0]); print('sklearn' in sys.modules)")
    path, imported = subprocess.run([sys.executable, "-c", code], capture_output=True,
                                    text=True, check=True).stdout.split()
    assert imported == "False"
    from importlib.resources import files

    assert Path(path) == Path(str(files("sklearn.datasets") / "data" / "digits.csv.gz"))
    assert Path(path).is_file()


def test_a_resumed_run_keeps_the_first_record_and_adds_its_own(tmp_path):
    first = write_provenance(tmp_path, ["digits"], None)
    both = write_provenance(tmp_path, ["digits"], None)
    assert {k: v for k, v in both.items() if k != "resumed"} == first
    assert len(both["resumed"]) == 1 and both["resumed"][0]["git"] == first["git"]
    assert "- resumed " in provenance_markdown(both)


def test_a_study_on_mnist_hashes_its_ood_datasets_too(tmp_path):
    from orchestrator.reports.provenance import datasets_read

    assert datasets_read("mnist") == ["mnist", "fashionmnist", "kmnist"]
    assert datasets_read(["digits", "svhn"]) == ["digits", "svhn", "cifar10"]
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    (raw / "t10k-labels-idx1-ubyte").write_bytes(b"\x00\x00\x08\x01" + bytes(8))
    record = write_provenance(tmp_path / "out", datasets_read("mnist"), str(tmp_path))
    assert list(record["datasets"]["mnist"]) == ["raw/t10k-labels-idx1-ubyte"]
    assert record["datasets"]["kmnist"] == {}


def test_git_state_names_the_commit_and_sees_uncommitted_changes(tmp_path):
    def git(*args):
        subprocess.run(["git", "-C", str(tmp_path), *args], check=True, capture_output=True)

    git("init", "-q")
    (tmp_path / "a.txt").write_text("1")
    git("add", "a.txt")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "one")
    clean = git_state(tmp_path)
    assert len(clean["commit"]) == 40 and clean["dirty"] is False
    (tmp_path / "a.txt").write_text("2")
    assert git_state(tmp_path) == {"commit": clean["commit"], "dirty": True}
    assert git_state(tmp_path / "nowhere") == {"commit": None, "dirty": None}
