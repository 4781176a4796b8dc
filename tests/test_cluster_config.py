"""cluster.yaml is a valid Ray cluster-launcher config: checked offline against Ray's own
schema after Ray fills in its defaults (`prepare_config`, then `validate_config`), and it
describes what the README promises (a CPU head, multi-GPU workers, the project installed
on every node, no secrets)."""

import copy
import re

import pytest
import yaml
from conftest import ROOT
from ray.autoscaler._private.util import prepare_config, validate_config

PATH = ROOT / "cluster.yaml"


@pytest.fixture(scope="module")
def raw():
    return yaml.safe_load(PATH.read_text())


def test_cluster_yaml_passes_rays_schema_and_defaults(raw):
    config = prepare_config(copy.deepcopy(raw))
    validate_config(config)  # raises on any schema violation
    assert config["provider"]["type"] == "aws"


def test_a_broken_cluster_yaml_fails(raw):
    broken = copy.deepcopy(raw)
    broken["available_node_types"]["gpu_worker"]["min_workers"] = "two"
    with pytest.raises(Exception):  # noqa: B017 - jsonschema's ValidationError
        validate_config(prepare_config(broken))
    broken = copy.deepcopy(raw)
    broken["head_node_type"] = "no_such_type"
    with pytest.raises(ValueError):
        validate_config(prepare_config(broken))


def test_cpu_head_and_multi_gpu_workers_with_limits(raw):
    types = raw["available_node_types"]
    head = types[raw["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0
    assert not head["node_config"]["InstanceType"].startswith(("g", "p"))
    gpu = [t for name, t in types.items() if name != raw["head_node_type"]]
    assert gpu and all(t["resources"]["GPU"] >= 2 for t in gpu)  # DDP over several GPUs
    for worker in gpu:
        assert 0 <= worker["min_workers"] <= worker["max_workers"] <= raw["max_workers"]


def test_every_node_installs_this_repository(raw):
    mounts = raw["file_mounts"]
    (remote,) = [r for r, local in mounts.items() if local == "."]
    assert any(f"pip install -e {remote}" in command for command in raw["setup_commands"])
    assert (ROOT / "pyproject.toml").exists()


def test_no_secrets_in_the_file():
    text = PATH.read_text()
    patterns = [r"AKIA[0-9A-Z]{16}", r"aws_secret_access_key", r"WANDB_API_KEY\s*[=:]",
                r"(?i)password", r"(?i)api_key\s*[=:]", r"-----BEGIN"]
    for pattern in patterns:
        assert not re.search(pattern, text), pattern
