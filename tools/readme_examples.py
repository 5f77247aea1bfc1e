"""Regenerate (or check) the README's ``console`` examples from what the commands print today.

Every fenced ``console`` block of README.md is a sequence of ``$ command`` lines, each followed by
its output. This script makes a scratch directory, runs ``aum-replay demo aum-demo --quiet`` in
it (the examples use the demo's runs), then runs every command there with ``COLUMNS=100`` and
writes what it printed (stdout, then stderr) back under it. Timings (``done in 0.41 s``) and run
ids are compared as patterns in ``--check`` mode, since they change from run to run.

    python tools/readme_examples.py          # rewrite README.md in place
    python tools/readme_examples.py --check  # exit 1 and show the differences if any block is stale
"""

from __future__ import annotations

import argparse
import difflib
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCK = re.compile(r"```console\n(.*?)```", re.DOTALL)
TIMING = re.compile(r"\b\d+(\.\d+)? s\b|\brun id [0-9a-f]{32}\b")  # change from run to run


def run_block(block: str, workdir: Path, env: dict[str, str]) -> str:
    """The block with each command's output replaced by what it prints now."""
    out: list[str] = []
    for line in block.splitlines():
        if not line.startswith("$ "):
            continue
        command = line[2:]
        proc = subprocess.run(
            command, shell=True, cwd=workdir, env=env, capture_output=True, text=True, timeout=600
        )
        out.append(line)
        lines = (proc.stdout + proc.stderr).splitlines()
        text = "\n".join(line.rstrip() for line in lines).strip("\n")
        if text:
            out.append(text)
    return "\n".join(out) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare instead of rewriting")
    args = parser.parse_args()
    env = dict(os.environ, COLUMNS="100", TERM="dumb", NO_COLOR="1")
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    text = README.read_text()
    with tempfile.TemporaryDirectory(prefix="aum-readme-") as tmp:
        workdir = Path(tmp)
        subprocess.run(
            ["aum-replay", "demo", "aum-demo", "--quiet"], cwd=workdir, env=env, check=True,
            capture_output=True,
        )  # fmt: skip
        fresh = [run_block(m.group(1), workdir, env) for m in BLOCK.finditer(text)]
    stale = 0
    pieces, last = [], 0
    for match, new in zip(BLOCK.finditer(text), fresh, strict=True):
        old = match.group(1)
        if TIMING.sub("T", old) != TIMING.sub("T", new):
            stale += 1
            sys.stdout.writelines(
                difflib.unified_diff(
                    old.splitlines(True), new.splitlines(True), "README", "now", n=1
                )
            )
        pieces += [text[last : match.start(1)], new]
        last = match.end(1)
    pieces.append(text[last:])
    if args.check:
        print(f"{stale} of {len(fresh)} console blocks differ from what the commands print")
        sys.exit(1 if stale else 0)
    README.write_text("".join(pieces))
    print(f"rewrote {len(fresh)} console blocks ({stale} had changed)")


if __name__ == "__main__":
    main()
