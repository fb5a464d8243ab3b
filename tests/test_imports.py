"""Import weight: `import ppflow` and building any command's --help load no diffusers (seconds on every call)."""

import subprocess
import sys

import pytest


@pytest.mark.parametrize("argv", [[], ["flux", "--help"], ["flux", "adapt", "--help"], ["adapt", "--help"]])
def test_the_command_line_and_the_package_import_no_diffusers(argv):
    code = ("import sys\nfrom ppflow import cli\n"
            f"try:\n    cli.main({argv!r})\nexcept SystemExit:\n    pass\n"
            "print('diffusers' in sys.modules, 'transformers' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "False False"
