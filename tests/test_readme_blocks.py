"""Every code block of the README runs as pasted and prints what the README says it prints.

Each block is preceded by a directive that says how it is checked:

    <!-- readme-test: transcript -->        `$ ` lines run in bash, one shell per block; the lines after
                                              each command are its output (stdout and stderr)
    <!-- readme-test: transcript realmodel --> the same, with $UPSTREAM set to the real local model server
    <!-- readme-test: output COMMAND -->    the block is what COMMAND prints
    <!-- readme-test: python -->            the block runs as a script and exits 0; if the next block's
                                              directive is `python-output`, it is what the script printed
    <!-- readme-test: file NAME -->         the block is saved as NAME, for the blocks after it to run
    <!-- readme-test: skip REASON -->       not run here, and the reason says where it is run instead

A directive with `alone` marks a block that needs nothing an earlier block made: it runs as a test
of its own, in a folder of its own, so pytest-xdist spreads those over its workers.

Blocks run in order in one fresh folder holding the bundled tapes in `recordings/` (copied out with
`streamreplay tapes --copy recordings`, as a user does) and `tests/apps/`, with no
OpenAI key set: what a user who copies each block in turn gets. Volatile parts are masked on both
sides: ports and clock times always; per block `mask=decimals` (durations), `mask=ints` (counts
and milliseconds too), `mask=rows` (a chunk table's rows: how an upstream's writes coalesce into
reads varies), `mask=steps` (a timing bisect's steps: how many depends on the machine) and `mask=left`
(the chunk at which a replay saw a client leave: how many writes left before the close was noticed
depends on the machine's load).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.realmodel_server import real_upstream_url

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DIRECTIVE = re.compile(r"<!-- readme-test: (\S+)(.*?) -->")


@dataclass
class Block:
    line: int  # where the fence opens, for the test id
    lang: str
    body: str
    kind: str
    args: str


def blocks(text: str) -> list[Block]:
    found: list[Block] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        if lines[i].startswith("```"):
            lang = lines[i][3:].strip()
            end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
            above = next((lines[j] for j in range(i - 1, max(i - 3, -1), -1) if lines[j].strip()), "")
            match = DIRECTIVE.search(above)
            kind, args = (match.group(1), match.group(2).strip()) if match else ("", "")
            found.append(Block(i + 1, lang, "\n".join(lines[i + 1:end]) + "\n", kind, args))
            i = end
        i += 1
    return found


ALL = blocks(README.read_text())


CHUNK_ROW = re.compile(r"^\s*\d+\s+[\d.]+\s+[\d.]+\s+\d+\b")
BISECT_STEP = re.compile(r"^(step \d+:|  trying )")


def mask(text: str, masks: set[str] = frozenset()) -> list[str]:
    lines = text.strip().splitlines()
    if "rows" in masks:
        lines = [line for line in lines if not CHUNK_ROW.match(line)]
    if "steps" in masks:
        lines = [line for line in lines if not BISECT_STEP.match(line)]
    text = "\n".join(lines)
    text = re.sub(r"(127\.0\.0\.1|localhost):\d+", r"\1:PORT", text)
    text = re.sub(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?\+00:00", "TIMESTAMP", text)
    text = re.sub(r"\b\d\d:\d\d:\d\d\b", "HH:MM:SS", text)
    if "left" in masks:
        text = re.sub(r"(ended at\s+chunk )\d+", r"\1N", text)
    if masks & {"decimals", "ints"}:
        text = re.sub(r"\d+\.\d+", "N.N", text)
    if "ints" in masks:
        text = re.sub(r"\b\d+\b", "N", text)
    # column widths follow the masked values: compare words, not alignment
    return [" ".join(line.split()) for line in text.splitlines()]


def masks_of(block: Block) -> set[str]:
    return {arg.split("=", 1)[1] for arg in block.args.split() if arg.startswith("mask=")}


def fresh_folder(here: Path) -> Path:
    # what a user who installed the package does to have the bundled tapes where the README reads them
    subprocess.run([sys.executable, "-m", "streamreplay.cli", "tapes", "--copy", "recordings"], cwd=here, check=True,
                   capture_output=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    shutil.copytree(ROOT / "tests" / "apps", here / "tests" / "apps")
    return here


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return fresh_folder(tmp_path_factory.mktemp("readme"))


def environment(realmodel: bool) -> dict[str, str]:
    # a user's shell: no key, no CI (which would make the pytest plugin replay only), no DB setting
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "STREAMREPLAY_DB")) and k != "CI"}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = str(ROOT)  # the checkout's streamreplay, whatever is installed
    if realmodel:  # started when missing, as every realmodel test does (the README chain is one)
        env["UPSTREAM"] = os.environ.get("STREAMREPLAY_REAL_UPSTREAM") or real_upstream_url()
    return env


def transcript(body: str) -> list[tuple[str, str]]:
    """(command, expected output) pairs; a command may go on over lines ending in a backslash."""
    steps: list[tuple[str, list[str]]] = []
    continued = False
    for line in body.splitlines():
        if continued:
            steps[-1] = (steps[-1][0] + "\n" + line, steps[-1][1])
            continued = line.endswith("\\")
        elif line.startswith("$ "):
            steps.append((line[2:], []))
            continued = line.endswith("\\")
        else:
            assert steps, f"output before any command: {line!r}"
            steps[-1][1].append(line)
    return [(cmd, "\n".join(out)) for cmd, out in steps]


def run_transcript(block: Block, cwd: Path) -> None:
    realmodel = "realmodel" in block.args.split()
    masks = masks_of(block)
    steps = transcript(block.body)
    # one shell for the whole block, so `&`, `$!` and variables carry from line to line; a marker after
    # each command splits the output back into steps
    script = ["set -u"]
    for n, (cmd, _) in enumerate(steps):
        script += [cmd, f"echo '@@step {n}@@'"]
    result = subprocess.run(["bash", "-c", "\n".join(script)], cwd=cwd, env=environment(realmodel),
                            capture_output=True, text=True, timeout=240, stdin=subprocess.DEVNULL)
    pieces = re.split(r"@@step \d+@@\n?", result.stdout)
    assert len(pieces) == len(steps) + 1, (result.stdout, result.stderr)
    for (cmd, expected), got in zip(steps, pieces, strict=False):
        assert mask(got, masks) == mask(expected, masks), f"$ {cmd}\n--- got:\n{got}\n--- stderr:\n{result.stderr}"
        if "rows" in masks and CHUNK_ROW.search(expected):
            assert CHUNK_ROW.search(got) or any(CHUNK_ROW.match(x) for x in got.splitlines()), got


def run_python(block: Block, cwd: Path) -> str:
    script = cwd / f"block_{block.line}.py"
    script.write_text(block.body)
    result = subprocess.run([sys.executable, script.name], cwd=cwd, env=environment("realmodel" in block.args),
                            capture_output=True, text=True, timeout=240, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def check(block: Block, cwd: Path) -> None:
    if block.kind in ("transcript",):
        run_transcript(block, cwd)
    elif block.kind == "output":
        command = " ".join(w for w in block.args.split() if w != "alone" and not w.startswith("mask="))
        result = subprocess.run(["bash", "-c", command], cwd=cwd, env=environment(False), capture_output=True,
                                text=True, timeout=240, stdin=subprocess.DEVNULL)
        assert mask(result.stdout, masks_of(block)) == mask(block.body, masks_of(block)), result.stdout + result.stderr
    elif block.kind == "python":
        printed = run_python(block, cwd)
        following = ALL[ALL.index(block) + 1] if ALL.index(block) + 1 < len(ALL) else None
        if following is not None and following.kind == "python-output":
            assert mask(printed, masks_of(following)) == mask(following.body, masks_of(following)), printed
    elif block.kind == "file":
        (cwd / block.args).parent.mkdir(parents=True, exist_ok=True)
        (cwd / block.args).write_text(block.body)
    else:
        assert block.kind in ("skip", "python-output"), f"README line {block.line}: unknown kind {block.kind!r}"


def test_every_block_says_how_it_is_checked():
    unmarked = [b.line for b in ALL if not b.kind]
    assert not unmarked, f"README blocks with no readme-test directive, at lines {unmarked}"
    skipped = [b for b in ALL if b.kind == "skip"]
    assert all(b.args for b in skipped), "a skipped block must say why"


RUN = [b for b in ALL if b.kind in ("transcript", "output", "python", "file")]
CHAINED = [b for b in RUN if "alone" not in b.args.split()]
ALONE = [b for b in RUN if "alone" in b.args.split()]


@pytest.mark.parametrize("block", ALONE, ids=[f"line{b.line}" for b in ALONE])
def test_a_block_that_stands_alone_runs_as_pasted(block: Block, tmp_path: Path):
    check(block, fresh_folder(tmp_path))


@pytest.mark.realmodel
def test_every_block_runs_as_pasted(workdir: Path):
    """The other blocks, in one test, in README order: a block may use what an earlier one made (a file,
    a DB), so they must not be spread over workers. Every block runs; the failures are reported together."""
    assert len(ALONE) >= 5 and len(CHAINED) >= 5  # neither half silently empty
    failures = []
    for block in CHAINED:
        try:
            check(block, workdir)
        except (AssertionError, subprocess.SubprocessError) as exc:
            failures.append(f"README line {block.line} ({block.kind} {block.args}):\n{exc}")
    assert not failures, "\n\n".join(failures)
