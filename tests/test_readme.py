"""The README's Python quick start must run as printed and print what its comments say."""

import contextlib
import io
import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_quick_start_runs_and_prints_what_it_claims():
    text = README.read_text()
    code = re.search(r"## Python quick start\n\n```python\n(.*?)```", text, re.S).group(1)
    out = io.StringIO()
    namespace = {}
    with contextlib.redirect_stdout(out):
        exec(compile(code, "README quick start", "exec"), namespace)
    printed = out.getvalue().splitlines()
    # The comments after each print() are the README's promise; derive them from the code.
    claimed = re.findall(r"print\(block\.parameters\(\)\)\s+# (\d+)", code)
    assert printed[0] == claimed[0] == "413232"
    names_line = re.search(r"\n# (\[.*\])\n", code).group(1)
    assert printed[1] == names_line
    # the state_dict comment: its first entry's name and shape
    name, shape = re.search(r"state_dict\(\)\s+# \{'([^']+)': \(([\d, ]+)\)", code).groups()
    assert next(iter(namespace["weights"])) == name
    assert namespace["weights"][name].shape == tuple(int(v) for v in shape.split(","))
    assert namespace["z"].shape == namespace["x"].shape
    assert namespace["logits"].shape == (533,)
    assert namespace["branch"].position == namespace["stream"].position == 1
