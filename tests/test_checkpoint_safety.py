"""Trial checkpoints are read with weights_only=True: a truncated file or one holding code
gives a CheckpointError naming the file, and the code does not run."""

import os

import pytest
import torch

from orchestrator.tune.session import CheckpointError, load_checkpoint_dir


def test_a_good_checkpoint_loads(tmp_path):
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.Adam(model.parameters())
    model(torch.ones(1, 3)).sum().backward()
    optimizer.step()
    state = {"epoch": 4, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
             "best_model": None, "final_metrics": {"status": "completed", "test_acc": 0.9}}
    torch.save(state, tmp_path / "state.pt")
    loaded, final = load_checkpoint_dir(tmp_path)
    assert loaded["epoch"] == 4 and final is None
    assert torch.equal(loaded["model"]["weight"], model.state_dict()["weight"])


class Payload:
    def __reduce__(self):
        return (print, ("code from a checkpoint ran",))


def test_truncated_and_code_carrying_checkpoints_are_refused_by_name(tmp_path, capsys):
    torch.save({"model": Payload()}, tmp_path / "state.pt")
    with pytest.raises(CheckpointError, match="state.pt") as info:
        load_checkpoint_dir(tmp_path, name="s3://bucket/runs/trial/checkpoint_000007")
    assert "s3://bucket/runs/trial/checkpoint_000007/state.pt" in str(info.value)
    assert "code from a checkpoint ran" not in capsys.readouterr().out
    torch.save({"epoch": 1, "model": torch.nn.Linear(3, 2).state_dict()}, tmp_path / "state.pt")
    (tmp_path / "state.pt").write_bytes((tmp_path / "state.pt").read_bytes()[:100])
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint_dir(tmp_path)


def test_a_final_checkpoint_keeps_the_per_example_outputs_as_parquet(tmp_path):
    """The final stage's per-example outputs are written beside final.json as
    examples.parquet, and come back with the final artifacts (a trial restarted after its
    final checkpoint reports them again)."""
    import shutil

    import pandas as pd

    from orchestrator.tune.session import EXAMPLES_FILE, FINAL_FILE, _checkpoint_dir
    from workloads.evaluation.examples import EXAMPLES

    frame = pd.DataFrame({"split": ["test", "noise"], "index": [4, 0],
                          "score_msp": pd.Series([0.25, 0.5], dtype="float32")})
    with _checkpoint_dir({"epoch": 1}, {"ood": [{"auroc": 0.9}], EXAMPLES: frame}) as path:
        shutil.copytree(path, tmp_path / "checkpoint")
    assert (tmp_path / "checkpoint" / EXAMPLES_FILE).exists()
    assert "score_msp" not in (tmp_path / "checkpoint" / FINAL_FILE).read_text()
    _, final = load_checkpoint_dir(tmp_path / "checkpoint")
    assert final["ood"] == [{"auroc": 0.9}]
    pd.testing.assert_frame_equal(final[EXAMPLES], frame)


def test_checkpoint_dirs_of_dead_processes_are_removed_and_live_ones_kept(tmp_path):
    """A trial killed while writing a checkpoint leaves `ckpt-<pid>-*` behind: the next
    trial (or sweep) removes those of processes that are gone, never a live one's."""
    import subprocess
    import sys

    from orchestrator.tune.session import clean_stale_checkpoint_dirs

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    stale = tmp_path / f"ckpt-{dead}-k2j_x9"
    live = tmp_path / f"ckpt-{os.getpid()}-a8b_c1"
    other = tmp_path / "ckpt-notapid"
    for path in (stale, live, other):
        (path / "sub").mkdir(parents=True)
        (path / "sub" / "state.pt").write_bytes(b"x" * 10)
    assert clean_stale_checkpoint_dirs(tmp_path) == [stale]
    assert not stale.exists() and live.exists() and other.exists()
