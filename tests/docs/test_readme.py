"""The README's code runs as shown, and its two commands are the ones CI and users run."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def test_readme_example_runs(tmp_path: Path) -> None:
    [code] = re.findall(r"```python\n(.*?)```", README, re.S)
    script = tmp_path / "readme_example.py"
    script.write_text(code, encoding="utf-8")
    result = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "Hello, repid!"


def test_readme_commands_are_the_scripts_ci_runs() -> None:
    commands = re.findall(r"```bash\n(.*?)\n```", README, re.S)
    assert "bash scripts/demo.sh" in commands
    assert "bash scripts/test.sh" in commands
    assert "exec bash scripts/test.sh" in (ROOT / ".ci" / "run").read_text(encoding="utf-8")
