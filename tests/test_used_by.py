"""The README's "used by" story, end to end: build the wheel, install it into a fresh virtual
environment (the wheel and what it depends on, nothing from this checkout), then from a
directory outside the repository call forward/backward, run ``hypermixer check`` and the
conformance suite shipped in the package.

One slow test (a full build, about a minute); the pieces it runs are fast and tested on
their own in hypermixer/tests.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

USE = """
import numpy as np
import hypermixer
block = hypermixer.HyperMixerBlock(embedding_dim=16, hidden_dim=32, max_seq_len=10,
                                   causal=True, seed=0)
x = np.random.default_rng(0).normal(size=(2, 10, 16)).astype(np.float32)
y = block.forward(x, np.array([10, 6]))
grad_x = block.backward(np.ones_like(y), lr=1e-3)
print(hypermixer.__file__)
print(y.shape, grad_x.shape, bool(np.isfinite(grad_x).all()), bool((y[1, 6:] == 0).all()))
"""


def sh(args, cwd, timeout=600, env=None):
    proc = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env=env)
    assert proc.returncode == 0, f"{args} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def test_wheel_in_a_fresh_environment(tmp_path):
    # the commands the README gives are the ones run here
    readme = (ROOT / "README.md").read_text()
    story = re.search(r"## Checking an installed wheel\n.*?```sh\n(.*?)```", readme, re.S)
    assert story, "README lost its 'Checking an installed wheel' section"
    for command in ("pip wheel . --no-deps -w", "hypermixer check",
                    "python -m pytest --pyargs hypermixer -q"):
        assert command in story.group(1)

    dist, outside = tmp_path / "dist", tmp_path / "elsewhere"
    outside.mkdir()
    # a build directory of its own: the checkout's build/ belongs to the developer's installs
    sh([sys.executable, "-m", "pip", "wheel", ".", "--no-deps", "-w", str(dist),
        f"--config-settings=build-dir={tmp_path / 'build'}"], cwd=ROOT)
    wheel, = dist.glob("hypermixer-*.whl")

    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    venv = tmp_path / "venv"
    sh([sys.executable, "-m", "venv", str(venv)], cwd=outside, env=env)
    python = str(venv / "bin" / "python")
    sh([python, "-m", "pip", "install", "-q", str(wheel)], cwd=outside, env=env)

    out = sh([python, "-c", USE], cwd=outside, env=env).splitlines()
    assert Path(out[0]).resolve().is_relative_to(venv.resolve()), out[0]
    assert out[1] == "(2, 10, 16) (2, 10, 16) True True"

    table = sh([str(venv / "bin" / "hypermixer"), "check"], cwd=outside, env=env)
    assert "matrix kernels dispatched to: " in table and "OpenMP runtime: " in table
    for label in ("LayerNorm", "TokenMixingMLP[causal]", "HyperMixerBlock[bidirectional]",
                  "TransformerBlock", "softmax_cross_entropy"):
        assert f"\n{label} " in table
    assert re.search(r"\nall \d+ checks passed", table), table

    sh([python, "-m", "pip", "install", "-q", "pytest"], cwd=outside, env=env)
    result = sh([python, "-m", "pytest", "--pyargs", "hypermixer", "-q", "-p",
                 "no:cacheprovider"], cwd=outside, env=env)
    summary = result.strip().splitlines()[-1]
    assert re.match(r"\d+ passed in ", summary), summary
