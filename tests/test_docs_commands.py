"""Every command line the documentation shows parses: each `python -m wavflow.X ...` and `wavflow X ...` in
README.md and docs/*.md (fenced shell blocks and inline code spans) names a module whose `--help` exits 0 and
lists every option the command uses.

A command is read as a shell would split it: line continuations (`\\`) joined, `&&`, `||`, `;` and `|` chains
split into their commands, `# comments` dropped, environment prefixes (`OMP_NUM_THREADS=1 ...`), launchers
(`python`, `python3`, `"$PYTHON"`, `torchrun ... -m`) and heredoc bodies skipped. Placeholders (`CHECKPOINT`,
`mel.npy`, `$VARS`, `...`) are positional values and are not checked; `[--opt X]` brackets are stripped. Only
the option names are checked, not their values or the positional arguments.

`wavflow X` is the console script (`python -m wavflow X`): its options are checked against `python -m wavflow X
--help`; a subcommand the dispatcher does not know, or a `python -m` module that does not exist, fails.
"""
from __future__ import annotations

import functools
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from wavflow import commands as dispatcher

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]

SUBCOMMANDS = tuple(dispatcher.COMMANDS)  # `wavflow X`: the console script, i.e. `python -m wavflow X`

SHELL_FENCES = {"", "bash", "sh", "shell", "console", "zsh"}
SEPARATORS = {"|", "||", "&&", ";", "&"}
WRAPPERS = {"time", "nohup", "exec"}
FENCE = re.compile(r"^\s*(`{3,}|~{3,})\s*([\w+-]*)")
HEREDOC = re.compile(r"<<-?\s*['\"]?(\w+)['\"]?")
CODE_SPAN = re.compile(r"(?<!`)(`+)(?!`)(.+?)(?<!`)\1(?!`)")
ENV_ASSIGNMENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*=.*")
MODULE = re.compile(r"wavflow(\.[A-Za-z_][A-Za-z0-9_]*)*")
PLACEHOLDER = re.compile(r"[A-Z][A-Z0-9_]*")
LONG_OPTION = re.compile(r"(--[A-Za-z0-9][A-Za-z0-9_-]*)(=.*)?")
SHORT_OPTION = re.compile(r"-[A-Za-z]")


@dataclass(frozen=True)
class Command:
    """One documented command: where it is, its text, and what it runs."""

    where: str              # "README.md:42"
    text: str               # the command as the page writes it (one segment of a chain)
    module: str | None      # the module `python -m` runs (the `python -m` form)
    subcommand: str | None  # X of `wavflow X` (the console-script form)
    args: tuple[str, ...]   # what follows the module or the subcommand

    @property
    def options(self) -> list[str]:
        found = []
        for arg in self.args:
            arg = arg.strip("[](){},")
            if arg == "--":
                break  # everything after is positional
            long = LONG_OPTION.fullmatch(arg)
            if long:
                found.append(long.group(1))
            elif SHORT_OPTION.fullmatch(arg):
                found.append(arg)
        return found


def _tokens(text: str) -> list[str]:
    try:
        return shlex.split(text, comments=True, posix=True)
    except ValueError:  # an unbalanced quote in prose: split on whitespace
        return text.split()


def _segments(tokens: list[str]) -> list[list[str]]:
    """A token list split at &&, ||, ;, | and & into the commands of the chain."""
    segments: list[list[str]] = [[]]
    for token in tokens:
        if token in SEPARATORS:
            segments.append([])
        elif token.endswith(";") and token != ";":
            segments[-1].append(token[:-1])
            segments.append([])
        else:
            segments[-1].append(token)
    return [s for s in segments if s]


def _command(tokens: list[str], where: str) -> Command | None:
    text = " ".join(tokens)
    for j, token in enumerate(tokens[:-1]):  # python / python3 / "$PYTHON" / torchrun ... -m wavflow.X
        if token == "-m" and MODULE.fullmatch(tokens[j + 1]):
            module = tokens[j + 1]
            if module == "wavflow":  # `python -m wavflow X ...`: the console script's form
                break
            if PLACEHOLDER.fullmatch(module.rsplit(".", 1)[-1]):
                return None  # `python -m wavflow.X` as a pattern in prose
            return Command(where, text, module, None, tuple(tokens[j + 2:]))
    k = 0
    while k < len(tokens) and (ENV_ASSIGNMENT.fullmatch(tokens[k]) or tokens[k] in WRAPPERS):
        k += 1
    if k < len(tokens) and tokens[k] == "python" and tokens[k + 1:k + 3] == ["-m", "wavflow"]:
        k += 2
    if k + 1 < len(tokens) and tokens[k] == "wavflow":
        sub = tokens[k + 1]
        if sub.startswith("-") or PLACEHOLDER.fullmatch(sub):
            return None
        return Command(where, text, None, sub, tuple(tokens[k + 2:]))
    return None


def commands_in(text: str, where: str) -> list[Command]:
    """The wavflow commands of one logical shell line (or one inline code span)."""
    found = []
    for segment in _segments(_tokens(text)):
        command = _command(segment, where)
        if command is not None:
            found.append(command)
    return found


def extract(markdown: str, name: str) -> list[Command]:
    """Every wavflow command of a markdown page: shell fences line by line, inline code spans elsewhere."""
    lines = markdown.splitlines()
    found: list[Command] = []
    fence: tuple[str, str] | None = None
    heredoc: str | None = None
    i = 0
    while i < len(lines):
        line, number = lines[i], i + 1
        opening = FENCE.match(line)
        if fence is None and opening:
            fence = (opening.group(1), opening.group(2).lower())
        elif fence is not None:
            stripped = line.strip()
            if stripped.startswith(fence[0]) and not stripped.strip(fence[0][0]):
                fence, heredoc = None, None
            elif heredoc is not None:
                if stripped == heredoc:
                    heredoc = None
            elif fence[1] in SHELL_FENCES:
                logical = line
                while logical.rstrip().endswith("\\") and i + 1 < len(lines):
                    i += 1
                    logical = logical.rstrip()[:-1] + " " + lines[i]
                found += commands_in(logical, f"{name}:{number}")
                marker = HEREDOC.search(logical)
                heredoc = marker.group(1) if marker else None
        else:
            # a code span may run over a line break: join lines until the backticks pair up
            while line.count("`") % 2 and i + 1 < len(lines) and lines[i + 1].strip():
                i += 1
                line = line + " " + lines[i].strip()
            for span in CODE_SPAN.finditer(line):
                found += commands_in(span.group(2).replace("\\|", "|"), f"{name}:{number}")
        i += 1
    return found


def module_exists(module: str) -> bool:
    base = REPO.joinpath(*module.split("."))
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


@functools.cache
def help_of(module: str) -> tuple[int, str]:
    """`python -m MODULE --help` from the repository (MODULE may be "wavflow X", the dispatcher and its
    subcommand): its exit status and output (once per module)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", COLUMNS="200",
               PYTHONPATH=os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p))
    env.pop("WAVFLOW_DEBUG", None)
    run = subprocess.run([sys.executable, "-m", *module.split(), "--help"], cwd=REPO, env=env, capture_output=True,
                         text=True, timeout=300, check=False)
    return run.returncode, run.stdout + run.stderr


def resolve(command: Command) -> tuple[str | None, str | None, str | None]:
    """(module, skip reason, problem) of a command."""
    if command.module is not None:
        if not module_exists(command.module):
            return None, None, f"{command.where}: `{command.text}`: there is no module {command.module}"
        return command.module, None, None
    if command.subcommand not in SUBCOMMANDS:
        return None, None, (f"{command.where}: `{command.text}`: `wavflow {command.subcommand}` is not a "
                            f"subcommand (known: {', '.join(SUBCOMMANDS)})")
    return f"wavflow {command.subcommand}", None, None


def problems(command: Command, help_runner=help_of) -> list[str]:
    """What is wrong with a documented command: [] when its module's --help exits 0 and names every option."""
    module, skip, problem = resolve(command)
    if problem:
        return [problem]
    if skip:
        return []
    status, text = help_runner(module)
    if status != 0:
        return [f"{command.where}: `python -m {module} --help` exited {status}: {text.strip()[-500:]}"]
    return [f"{command.where}: option {option} of `{command.text}` is not in `python -m {module} --help`"
            for option in command.options
            if not re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", text)]


def _documented() -> list[Command]:
    return [c for page in PAGES for c in extract(page.read_text(encoding="utf-8"), str(page.relative_to(REPO)))]


COMMANDS = _documented()


def test_the_pages_show_commands():
    """The extractor finds the README's set-up command, as .ci/run runs it, and commands on the docs pages."""
    readme = [c for c in COMMANDS if c.where.startswith("README.md:")]
    assert any(c.module == "wavflow.synthesize" and c.args == ("examples/LJ002-0020.npy",) for c in readme)
    assert len(readme) >= 5 and len(COMMANDS) >= 20, [c.where for c in COMMANDS]


@pytest.mark.parametrize("command", COMMANDS, ids=[c.where for c in COMMANDS])
def test_documented_command_parses(command):
    skip = resolve(command)[1]
    if skip:
        pytest.skip(skip)
    found = problems(command)
    assert not found, "\n".join(found)


SAMPLE = """\
Inline: `python -m wavflow.synthesize mel.npy -o out.wav --sigma 0.6` and
`python -m wavflow.train.ship CHECKPOINT OUT.pt [--dtype fp16|bf16|fp32] [--max-mib 16]`.

```bash
pip install -e . && python -m wavflow.synthesize examples/LJ002-0020.npy    # -> out/LJ002-0020.wav
OMP_NUM_THREADS=1 "$PYTHON" -m wavflow.mel speech.wav --hop-length=256 | tee log.txt
torchrun --nproc_per_node 8 -m wavflow.train conf.yaml data.root=$DATA \\
    --max-minutes 5
wavflow evaluate CHECKPOINT --data-root DIR; wavflow frobnicate --x
python - <<'EOF'
import subprocess; subprocess.run("python -m wavflow.export --bogus", shell=True)
EOF
```

```python
audio = wavflow.synthesize(mel)  # python -m wavflow.synthesize --not-shell
```

Prose with `wavflow.synthesize(mel)`, `python -m pytest -x` and `wavflow/train/`.
"""


def test_extractor_reads_shell_forms():
    got = [(c.where, c.module or f"wavflow {c.subcommand}", c.options) for c in extract(SAMPLE, "x.md")]
    assert got == [
        ("x.md:1", "wavflow.synthesize", ["-o", "--sigma"]),
        ("x.md:2", "wavflow.train.ship", ["--dtype", "--max-mib"]),
        ("x.md:5", "wavflow.synthesize", []),
        ("x.md:6", "wavflow.mel", ["--hop-length"]),
        ("x.md:7", "wavflow.train", ["--max-minutes"]),  # torchrun's own --nproc_per_node is not the module's
        ("x.md:9", "wavflow evaluate", ["--data-root"]),
        ("x.md:9", "wavflow frobnicate", ["--x"]),
    ]


def test_checker_finds_a_wrong_option():
    """The check can fail: a misspelt option on a real command is reported with its file, line and option."""
    good, bad = extract("`python -m wavflow.synthesize mel.npy --sigma 0.6`\n\n"
                        "```bash\npython -m wavflow.synthesize mel.npy --sigma 0.6 --no-such-option 3\n```\n",
                        "page.md")
    assert problems(good) == []
    assert problems(bad) == [("page.md:4: option --no-such-option of `python -m wavflow.synthesize mel.npy --sigma "
                              "0.6 --no-such-option 3` is not in `python -m wavflow.synthesize --help`")]


def test_checker_reports_missing_modules_and_subcommands():
    missing_module, unknown, known = extract(
        "`python -m wavflow.nonexistent --x` `wavflow nosuch --y` `wavflow stream --no-such-option`", "p.md")
    assert problems(missing_module) == [("p.md:1: `python -m wavflow.nonexistent --x`: there is no module "
                                         "wavflow.nonexistent")]
    assert "`wavflow nosuch` is not a subcommand" in problems(unknown)[0]
    assert problems(known) == [("p.md:1: option --no-such-option of `wavflow stream --no-such-option` is not in "
                                "`python -m wavflow stream --help`")]
