"""Install into the running interpreter's environment with uv, under pip's own settings.

`make setup` runs `python tools/install.py -e '.[dev]'` in `.venv`. uv installs from its
cache by hard links (the CUDA build of torch and its libraries unpack to ~6.7 GB, which pip
unzips again in every new environment) and compiles the bytecode on all cores. uv does not
read pip's configuration, so this passes it on: the settings `pip config list` shows (its
files and `PIP_*` variables; an `install` section over `global`, the environment over
both) become uv's options and variables (the others are named, not passed on), and pip's
choice of the best version across all indexes is kept (`--index-strategy
unsafe-best-match`; uv's default takes the first index that has the package).

    python tools/install.py [what to install, as for `pip install`; default -e .[dev]]
"""
from __future__ import annotations

import ast
import os
import subprocess
import sys

# pip's setting -> uv's option; a setting holding several whitespace-separated values
# becomes one option per value
OPTIONS = {"index-url": "--index-url", "extra-index-url": "--extra-index-url",
           "find-links": "--find-links", "constraint": "--constraint",
           "trusted-host": "--allow-insecure-host"}
FLAGS = {"no-index": "--no-index"}
# pip's setting -> the environment variables uv reads for it
ENVIRONMENT = {"cert": ("SSL_CERT_FILE",), "timeout": ("UV_HTTP_TIMEOUT",),
               "proxy": ("HTTP_PROXY", "HTTPS_PROXY")}
ALIASES = {"default-timeout": "timeout"}  # two names of one pip option (`--timeout`)
SECTIONS = ("global", "install", ":env:")  # pip's override order: later wins


def pip_settings(listing: str) -> dict[str, str]:
    """The settings pip's `install` would use, from the output of `pip config list`
    (`section.key='value'` lines)."""
    by_section: dict[str, dict[str, str]] = {section: {} for section in SECTIONS}
    for line in listing.splitlines():
        name, _, value = line.partition("=")
        section, _, key = name.rpartition(".")
        value = ast.literal_eval(value) if value else ""
        if section in by_section and value:  # pip ignores an empty value
            key = key.replace("_", "-")
            by_section[section][ALIASES.get(key, key)] = value
    settings: dict[str, str] = {}
    for section in SECTIONS:
        settings.update(by_section[section])
    return settings


def uv_arguments(settings: dict[str, str]) -> tuple[list[str], dict[str, str]]:
    """uv's options and environment variables for pip's `settings` (those with no
    counterpart: `not_passed_on`)."""
    options = ["--index-strategy", "unsafe-best-match"]
    for key, option in OPTIONS.items():
        for value in settings.get(key, "").split():
            options += [option, value]
    for key, flag in FLAGS.items():
        if settings.get(key, "").lower() in ("1", "true", "yes", "on"):
            options.append(flag)
    environment = {variable: settings[key] for key, variables in ENVIRONMENT.items()
                   if settings.get(key) for variable in variables}
    return options, environment


def not_passed_on(settings: dict[str, str]) -> list[str]:
    """pip's settings uv is not given (pip's own, e.g. `disable-pip-version-check`)."""
    return sorted(set(settings) - {*OPTIONS, *FLAGS, *ENVIRONMENT})


def main(requirements: list[str]) -> int:
    if {"-h", "--help"} & set(requirements):
        print(__doc__)
        return 0
    try:
        from uv import find_uv_bin
    except ImportError:
        print(f"[install] uv is not installed here: {sys.executable} -m pip install uv",
              file=sys.stderr)
        return 2
    listing = subprocess.run([sys.executable, "-m", "pip", "config", "list"], check=True,
                             capture_output=True, text=True).stdout
    settings = pip_settings(listing)
    options, environment = uv_arguments(settings)
    ignored = not_passed_on(settings)
    if ignored:
        print("[install] pip settings with no uv counterpart, not passed on:",
              ", ".join(ignored), flush=True)
    command = [find_uv_bin(), "pip", "install", "--python", sys.executable,
               "--compile-bytecode", *options, *requirements]
    print("[install]", " ".join(command), flush=True)
    return subprocess.run(command, env={**os.environ, **environment}).returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:] or ["-e", ".[dev]"]))
