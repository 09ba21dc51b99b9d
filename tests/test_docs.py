"""The documentation that is derived from the code stays equal to it."""

from __future__ import annotations

from collab.config import Settings, reference
from tests.servers import ROOT


def test_the_configuration_reference_matches_the_settings() -> None:
    committed = (ROOT / "docs" / "configuration.md").read_text()
    assert committed == reference(), "docs/configuration.md is stale: run `make docs`"
    for _name, option, _default in Settings.options():
        assert f"`{option.env}`" in committed


def test_the_readme_commands_exist_with_the_options_shown() -> None:
    import re
    import subprocess
    import sys

    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```sh\n(.*?)```", readme, flags=re.S)
    commands = [line.split("#")[0].split() for block in blocks for line in block.splitlines()
                if line.startswith("collab ")]
    assert len(commands) >= 8
    helps: dict[str, str] = {}
    for words in commands:
        sub = words[1]
        if sub not in helps:
            argv = ["db", "upgrade"] if sub == "db" else [sub]
            result = subprocess.run([sys.executable, "-m", "collab", *argv, "--help"],
                                    capture_output=True, text=True, timeout=60)
            assert result.returncode == 0, (sub, result.stderr)
            helps[sub] = result.stdout
        for flag in (w.strip("[]") for w in words if w.strip("[]").startswith("--")):
            assert flag in helps[sub], (words, flag)


def test_the_readme_settings_are_settings() -> None:
    import re

    readme = (ROOT / "README.md").read_text()
    rows = [line for line in readme.splitlines() if line.startswith("| ") and "`--" in line]
    assert len(rows) >= 15
    options = {"--" + name.replace("_", "-"): option.env for name, option, _d in Settings.options()}
    for row in rows:
        _label, flags, variables, *_rest = row.strip("|").split(" | ")
        shown = re.findall(r"`(--[\w-]+)`", flags)
        assert shown and all(flag in options for flag in shown), row
        assert re.findall(r"`(COLLAB_\w+)`", variables) == [options[flag] for flag in shown], row
