"""The documentation is tested: every `maskinit` command line shown in README.md and docs/*.md parses
against the current CLI (the command, each option, each --preset/--recipe name, each KEY of the
trailing KEY VALUE overrides), the README's quickstart runs end to end on a small generated set, and
every relative link and #anchor in the Markdown resolves (GitHub's heading slugs). A renamed option
then fails here instead of leaving a stale page."""

from __future__ import annotations

import re
import shlex
import shutil
from functools import lru_cache
from pathlib import Path

import pytest
import typer
from typer.core import TyperArgument, TyperOption

from maskinit import __version__
from maskinit.cli import app

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
# the pages whose `maskinit ...` lines are checked against the CLI
COMMAND_PAGES = [README, *DOCS]
# the pages whose links are checked
LINK_PAGES = [README, *DOCS, ROOT / "CHANGELOG.md", ROOT / "ARCHITECTURE.md", ROOT / "benchmarks" / "gpu.md"]
# tokens that stand for "the rest as before" in an example (`maskinit tune ... --resume`)
PLACEHOLDERS = ("...", "…")
# a command name that stands for any command (`maskinit --debug COMMAND ...`)
ANY_COMMAND = "COMMAND"
NUMBER = re.compile(r"^-\d")
FENCE = re.compile(r"^```([^\n`]*)\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)
INLINE_CODE = re.compile(r"`([^`\n]+)`")
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
HEADING = re.compile(r"^(#{1,6})[ \t]+(.+?)[ \t#]*$", re.MULTILINE)


# ---------------------------------------------------------------------------------------------- Markdown


def code_blocks(text: str) -> list[tuple[str, str]]:
    """(info string, body) of each fenced code block."""
    return [(info.strip(), body) for info, body in FENCE.findall(text)]


def prose(text: str) -> str:
    """The text outside fenced code blocks."""
    return FENCE.sub("", text)


def command_lines(text: str) -> list[str]:
    """Every `maskinit ...` command line: the lines of code blocks (not Python ones), with `\\`
    continuations joined, and the inline code spans outside them that start with `maskinit `."""
    lines = []
    for info, body in code_blocks(text):
        if info.startswith(("python", "py", "yaml", "json")):
            continue
        for line in re.sub(r"[ \t]*\\\n[ \t]*", " ", body).splitlines():
            line = line.strip().removeprefix("$ ")
            if line.split(" ", 1)[0].endswith("maskinit"):
                lines.append(line)
    lines += [span for span in INLINE_CODE.findall(prose(text)) if span.startswith("maskinit ")]
    return lines


def github_slug(heading: str) -> str:
    """GitHub's anchor for a heading: the rendered text, lowercased, without punctuation but `-` and
    `_`, spaces as hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link: its text
    text = text.replace("`", "").replace("*", "")
    return re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """The anchors of a Markdown file's headings; a repeated slug gets -1, -2, ... as on GitHub."""
    seen: dict[str, int] = {}
    found = set()
    for _, heading in HEADING.findall(prose(path.read_text())):
        slug = github_slug(heading)
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        found.add(slug if count == 0 else f"{slug}-{count}")
    return found


def broken_links(path: Path) -> list[str]:
    """Relative links and anchors of `path` that do not resolve (web links are not fetched)."""
    text = INLINE_CODE.sub("", prose(path.read_text()))
    problems = []
    for target in LINK.findall(text):
        if target.startswith(("http://", "https://", "mailto:")):
            continue
        file_part, _, anchor = target.partition("#")
        linked = (path.parent / file_part).resolve() if file_part else path
        if not linked.exists():
            problems.append(f"{path.name}: {target}: {file_part} does not exist")
        elif anchor and linked.suffix == ".md" and anchor not in anchors(linked):
            problems.append(f"{path.name}: {target}: no heading #{anchor} in {linked.name}")
    return problems


# ---------------------------------------------------------------------------------------------- the CLI


@lru_cache(maxsize=1)
def cli():
    """The click command group behind the typer app (typer's documented `get_command`)."""
    return typer.main.get_command(app)


@lru_cache(maxsize=1)
def config_keys() -> frozenset[str]:
    """Every leaf key of a built config: Detectron2's and `cfg.MASKINIT`'s."""
    from maskinit.config import flatten, load_config

    return frozenset(flatten(load_config(preset="tiny")))


def known_values(option: str) -> set[str]:
    from maskinit.recipes import RECIPES, list_presets

    return set(list_presets()) if option == "preset" else set(RECIPES)


def check_command(line: str) -> list[str]:
    """What in one documented `maskinit ...` line the CLI would not take; [] when it parses.

    Unknown options are looked up by name, not left to click: commands with trailing KEY VALUE
    overrides accept unknown options as overrides. Hidden (old) option names count as unknown."""
    tokens = shlex.split(line, comments=True)
    root, problems = cli(), []
    position = 1
    global_options = {name for param in root.params for name in param.opts}
    while position < len(tokens) and tokens[position].startswith("-"):
        if tokens[position] not in global_options | {"--help"}:
            return [f"{line}: no global option {tokens[position]}"]
        if tokens[position] in ("--version", "--help"):
            return []
        position += 1
    if position == len(tokens) or tokens[position] == ANY_COMMAND:
        return []
    name, rest = tokens[position], tokens[position + 1:]
    command = root.commands.get(name)
    if command is None:
        return [f"{line}: no command {name!r} (commands: {', '.join(sorted(root.commands))})"]
    if not rest:  # `maskinit eval` in a sentence names the command: nothing more to check
        return []
    options = {flag: param for param in command.params if isinstance(param, TyperOption) and not param.hidden
               for flag in (*param.opts, *param.secondary_opts)}
    arguments = [param for param in command.params if isinstance(param, TyperArgument)]
    takes_overrides = any(param.name == "overrides" for param in arguments)
    placeholder = any(marker in token for token in tokens for marker in PLACEHOLDERS)
    given, positional, index = set(), [], 0
    while index < len(rest):
        token = rest[index]
        index += 1
        if any(marker in token for marker in PLACEHOLDERS):
            continue
        if token.startswith("-") and len(token) > 1 and not NUMBER.match(token):
            flag, has_value, value = token.partition("=")
            param = options.get(flag)
            if flag == "--help":
                return problems
            if param is None:
                problems.append(f"{line}: `maskinit {name}` has no option {flag}")
                continue
            given.add(param.name)
            if param.is_flag or param.count:
                continue
            if not has_value:
                if index == len(rest):
                    problems.append(f"{line}: {flag} needs a value")
                    continue
                value, index = rest[index], index + 1
            if param.name in ("preset", "recipe") and value not in known_values(param.name):
                problems.append(
                    f"{line}: unknown {param.name} {value!r} (known: {', '.join(sorted(known_values(param.name)))})"
                )
        else:
            positional.append(token)
    if problems:  # after an unknown option, what follows it cannot be told apart
        return problems
    if takes_overrides:
        if len(positional) % 2 and not placeholder:
            problems.append(f"{line}: trailing overrides must be KEY VALUE pairs: {positional}")
        problems += [f"{line}: unknown config key {key}" for key in positional[::2] if key not in config_keys()]
    elif len(positional) > len(arguments):
        problems.append(f"{line}: `maskinit {name}` takes no argument {positional[len(arguments)]!r}")
    if not placeholder:
        missing = [param.opts[-1] for param in command.params
                   if isinstance(param, TyperOption) and param.required and param.name not in given]
        problems += [f"{line}: {flag} is required" for flag in missing]
        if not problems:  # and click's own parse: types, choices, values
            try:
                command.make_context(name, list(rest))
            except Exception as error:  # noqa: BLE001 - click's UsageError and BadParameter (vendored by typer)
                message = error.format_message() if hasattr(error, "format_message") else str(error)
                problems.append(f"{line}: {message}")
    return problems


# ---------------------------------------------------------------------------------------------- tests


def documented_commands() -> list[tuple[str, str]]:
    return [(path.name, line) for path in COMMAND_PAGES for line in command_lines(path.read_text())]


def test_the_docs_show_commands_for_every_page_and_command():
    """The collection itself: each page with examples yields lines, and every command is shown."""
    pages = {page for page, _ in documented_commands()}
    assert {"README.md", "getting-started.md", "training.md", "tuning.md", "diagnostics.md"} <= pages
    shown = {shlex.split(line)[1] for _, line in documented_commands() if len(shlex.split(line)) > 1}
    assert set(cli().commands) <= shown, set(cli().commands) - shown


@pytest.mark.parametrize(("page", "line"), documented_commands())
def test_documented_command_parses_against_the_cli(page, line):
    assert check_command(line) == [], f"{page}: {check_command(line)}"


@pytest.mark.parametrize(("line", "problem"), [
    ("maskinit train --preset tiny --no-such-option 3", "has no option --no-such-option"),  # renamed or removed
    ("maskinit predict --config c.yaml --weights w.pth --input x --output pred/",
     "has no option --output"),  # an old name
    ("maskinit train --preset tiny2 --device cpu", "unknown preset 'tiny2'"),
    ("maskinit export-config --recipe d2-scratch-gn-12x", "unknown recipe 'd2-scratch-gn-12x'"),
    ("maskinit fit --preset tiny", "no command 'fit'"),
    ("maskinit train --preset tiny SOLVER.NO_SUCH_KEY 1", "unknown config key SOLVER.NO_SUCH_KEY"),
    ("maskinit train --preset tiny SOLVER.BASE_LR", "must be KEY VALUE pairs"),
    ("maskinit predict --weights w.pth", "--input is required"),
    ("maskinit train --max-iter many", "'--max-iter'"),  # click's own parse of the value
    ("maskinit check-data a.json b.json --images x", "takes no argument 'b.json'"),
])
def test_a_stale_example_fails(line, problem):
    problems = check_command(line)
    assert len(problems) == 1 and problem in problems[0], problems


def test_renaming_an_option_in_the_readme_fails_its_examples():
    """The README as it is, with --output-dir renamed in its examples: those lines now fail."""
    renamed = README.read_text().replace("--output-dir", "--out-dir")
    failing = [line for line in command_lines(renamed) if check_command(line)]
    assert failing and all("--out-dir" in line for line in failing)
    assert all(check_command(line) == [] for line in command_lines(README.read_text()))


def test_a_stale_example_in_a_page_fails(tmp_path):
    """An example in a code block, with a continuation line, whose option was renamed."""
    page = "# Page\n\n```\nmaskinit train --preset tiny \\\n    --no-such-option 3 --output-dir runs/x\n```\n"
    lines = command_lines(page)
    assert lines == ["maskinit train --preset tiny --no-such-option 3 --output-dir runs/x"]
    assert check_command(lines[0]) == [f"{lines[0]}: `maskinit train` has no option --no-such-option"]


def test_placeholders_and_comments_are_understood():
    assert check_command("maskinit tune ... --output-dir runs/tune --trials 40 --resume      # continue") == []
    assert check_command("maskinit --debug COMMAND ...") == []
    assert check_command("maskinit train --preset tiny --amp --no-amp --device cpu SOLVER.MAX_ITER -1") == []


@pytest.mark.parametrize("page", LINK_PAGES, ids=lambda path: path.name)
def test_relative_links_and_anchors_resolve(page):
    assert broken_links(page) == []


def test_the_link_checker_finds_a_broken_link_and_anchor(tmp_path):
    (tmp_path / "other.md").write_text("# Other page\n\n## The `tiny` preset\n\n## Does it beat Detectron2's recipe?\n")
    page = tmp_path / "page.md"
    page.write_text("[ok](other.md#the-tiny-preset) [ok](other.md#does-it-beat-detectron2s-recipe) "
                    "[gone](missing.md) [bad](other.md#no-such-heading) `[in code](missing.md)` [web](https://example.org)\n")
    assert broken_links(page) == ["page.md: missing.md: missing.md does not exist",
                                  "page.md: other.md#no-such-heading: no heading #no-such-heading in other.md"]


def test_every_docs_page_is_linked_from_the_readme():
    linked = {
        (README.parent / target.partition("#")[0]).resolve() for target in LINK.findall(prose(README.read_text()))
    }
    assert DOCS and [page.name for page in DOCS if page.resolve() not in linked] == []


def test_readme_opens_with_the_two_commands_and_stays_short():
    lines = README.read_text().splitlines()
    assert len(lines) <= 250
    opening = "\n".join(lines[:6])
    assert "make demo" in opening and "make test" in opening


def test_version_is_one_and_in_the_changelog():
    declared = re.search(r'^version = "([^"]+)"', (ROOT / "pyproject.toml").read_text(), re.MULTILINE)
    assert declared and declared.group(1) == __version__
    assert f"## [{__version__}]" in (ROOT / "CHANGELOG.md").read_text()


def quickstart_commands() -> list[str]:
    """The code block under the README's "Train on your own data" heading."""
    text = README.read_text()
    section = text[text.index("## Train on your own data"):]
    info, body = code_blocks(section)[0]
    return command_lines(f"```{info}\n{body}```\n")


@pytest.mark.slow
def test_quickstart_runs_end_to_end(tmp_path, monkeypatch):
    """The README's quickstart, as written, on a small generated set laid out as it names: each command
    exits 0 (`train` with 2 iterations on the CPU) and leaves what the next one reads. The commands run in
    this process (the CLI's own entry point, in the folder the commands name their paths from)."""
    from typer.testing import CliRunner

    from maskinit.data.synthetic import generate_coco_dataset

    commands = quickstart_commands()
    assert [shlex.split(line)[1] for line in commands] == ["check-data", "train", "eval", "predict", "export"]
    data = tmp_path / "my_data"
    for split, count, seed, first in (("train", 6, 1, 1), ("val", 3, 2, 100)):
        generated = generate_coco_dataset(tmp_path / "generated" / split, count, seed=seed, first_image_id=first)
        data.mkdir(exist_ok=True)
        shutil.copy(generated.json_file, data / f"{split}.json")
        shutil.copytree(generated.image_root, data / split)
    (tmp_path / "new_images").mkdir()
    for image in sorted((data / "val").iterdir())[:2]:
        shutil.copy(image, tmp_path / "new_images" / image.name)
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    for line in commands:
        args = shlex.split(line, comments=True)[1:]
        if args[0] == "train":
            args += ["--max-iter", "2", "--device", "cpu", "--no-progress"]
        done = runner.invoke(app, args)
        assert done.exit_code == 0, f"{line}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        if args[0] in ("train", "eval"):
            assert "COCO AP" in done.stdout
    run = tmp_path / "runs" / "mine"
    assert (run / "model_final.pth").is_file() and (run / "config.yaml").is_file()
    assert (run / "predictions" / "predictions.json").is_file()
    assert len(list((run / "predictions").glob("*.png"))) == 2
    assert (tmp_path / "mine.onnx").is_file() and (tmp_path / "mine.onnx.json").is_file()
