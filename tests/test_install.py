"""tools/install.py (what `make setup` runs): pip's settings, as pip itself reports them,
become uv's options with pip's precedence."""
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("install", ROOT / "tools" / "install.py")
install = importlib.util.module_from_spec(spec)
spec.loader.exec_module(install)


def pip_config_list(config: Path, **variables: str) -> str:
    """`pip config list` as pip prints it, with `config` as its last file and the given
    PIP_* variables (this machine's own PIP_* variables left out)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env.update(PIP_CONFIG_FILE=str(config), **variables)
    return subprocess.run([sys.executable, "-m", "pip", "config", "list"], env=env,
                          check=True, capture_output=True, text=True).stdout


def test_pip_settings_become_uv_options_install_over_global_environment_over_both(tmp_path):
    config = tmp_path / "pip.conf"
    config.write_text(
        "[global]\n"
        "index-url = https://mirror.example/simple\n"
        "extra-index-url = file:///a/simple\n    file:///b/simple\n"
        "find-links = /global/wheels\n"
        "constraint = /global/constraints.txt\n"
        "trusted-host = mirror.example\n"
        "cert = /global/ca.pem\n"
        "[install]\n"
        "find-links = /install/wheels\n"
        "no-index = false\n")
    # one option, two names (`--timeout`, `--default-timeout`): the environment wins
    config.write_text(config.read_text().replace("[install]\n",
                                                 "default-timeout = 5\n[install]\n"))
    listing = pip_config_list(config, PIP_CONSTRAINT="/env/constraints.txt", PIP_TIMEOUT="99")
    options, environment = install.uv_arguments(install.pip_settings(listing))

    def values(option):
        return [options[i + 1] for i, o in enumerate(options) if o == option]

    assert values("--index-url") == ["https://mirror.example/simple"]
    assert values("--extra-index-url") == ["file:///a/simple", "file:///b/simple"]
    assert values("--find-links") == ["/install/wheels"]  # [install] over [global]
    assert values("--constraint") == ["/env/constraints.txt"]  # PIP_* over the files
    assert values("--allow-insecure-host") == ["mirror.example"]
    assert values("--index-strategy") == ["unsafe-best-match"]  # pip's best-version choice
    assert "--no-index" not in options
    assert environment == {"SSL_CERT_FILE": "/global/ca.pem", "UV_HTTP_TIMEOUT": "99"}
    # PIP_CONFIG_FILE: pip's own, named as not passed on
    assert install.not_passed_on(install.pip_settings(listing)) == ["config-file"]


def test_a_proxy_is_passed_on_and_pips_own_settings_are_named():
    settings = {"proxy": "http://proxy:3128", "disable-pip-version-check": "1",
                "no-cache-dir": "true", "find-links": "/w"}
    assert install.uv_arguments(settings)[1] == {"HTTP_PROXY": "http://proxy:3128",
                                                 "HTTPS_PROXY": "http://proxy:3128"}
    assert install.not_passed_on(settings) == ["disable-pip-version-check", "no-cache-dir"]


def test_no_index_is_passed_on_and_nothing_set_means_uvs_defaults():
    assert install.uv_arguments({"no-index": "true"})[0][-1] == "--no-index"
    assert install.uv_arguments({}) == (["--index-strategy", "unsafe-best-match"], {})
    listing = "global.find-links='/w'\n:env:.find_links='/x /y'\ninstall.pre=''\n"
    assert install.pip_settings(listing) == {"find-links": "/x /y"}


def test_help_and_a_missing_uv_answer_in_one_line(tmp_path):
    run = [sys.executable, str(ROOT / "tools" / "install.py")]
    help_text = subprocess.run([*run, "--help"], capture_output=True, text=True)
    assert help_text.returncode == 0 and "pip config list" in help_text.stdout
    blocked = tmp_path / "uv.py"  # an importable `uv` that fails, as if uv were absent
    blocked.write_text("raise ImportError('no uv')\n")
    missing = subprocess.run(run, capture_output=True, text=True,
                             env={**os.environ, "PYTHONPATH": str(tmp_path)})
    assert missing.returncode == 2 and missing.stdout == ""
    assert missing.stderr.strip().splitlines() == [
        f"[install] uv is not installed here: {sys.executable} -m pip install uv"]
