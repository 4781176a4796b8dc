"""Trial checkpoints are read with weights_only=True: a truncated file or one holding code
gives a CheckpointError naming the file, and the code does not run."""

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
