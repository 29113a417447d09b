"""How the command line prints results: AP tables, trial tables, fitted keys and `--explain` rows,
`inspect-init` verdicts, predict's per-image summary, what `convert` and `split` wrote. The commands in
`maskinit/cli/` call these; nothing here parses options or calls the library."""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape
from rich.table import Table

console = Console()
err_console = Console(stderr=True)
SUMMARY_ROWS = 50  # rows of predict's per-image table; the rest is counted (every image is in predictions.json)


def print_key_rows(title: str, rows, columns: tuple[str, str, str], out: Console) -> None:
    """(key, old, new, reason) rows: a table on a terminal, one line per key otherwise (a table is cut at 80
    columns)."""
    if out.is_terminal:
        table = Table(title=escape(title))
        table.add_column("key", no_wrap=True)
        for column in columns:
            table.add_column(column, overflow="fold")
        for key, old, new, reason in rows:
            table.add_row(escape(key), escape(str(old)), escape(str(new)), escape(reason))
        out.print(table)
    else:
        out.file.write("".join(line + "\n" for line in ([title + ":"] if title else []) + explain_lines(rows)))


def explain_lines(differences) -> list[str]:
    """`--explain` rows as plain lines, for a stderr that is not a terminal (a table would be cut at 80 columns)."""
    shown = lambda value: "''" if value == "" else str(value)  # noqa: E731 - an empty value stays visible
    return [f"{key}: {shown(old)} -> {shown(new)}  ({reason})" for key, old, new, reason in differences]


AP_KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl")


def ap_text(value) -> str:
    """AP as a percentage with one decimal; '-' where nothing could be measured (NaN or null)."""
    return "-" if value is None or value != value else f"{value:.1f}"


def print_ap_table(results: dict) -> None:
    """Box and mask AP side by side, then AP per category."""
    tasks = [task for task in ("bbox", "segm") if task in results]
    table = Table(title="COCO AP")
    table.add_column("task")
    for key in AP_KEYS:
        table.add_column(key, justify="right")
    for task in tasks:
        table.add_row(task, *(ap_text(results[task].get(key)) for key in AP_KEYS))
    console.print(table)
    categories = sorted({k[3:] for task in tasks for k in results[task] if k.startswith("AP-")})
    if categories:
        table = Table(title="AP per category")
        table.add_column("category")
        for task in tasks:
            table.add_column(f"{task} AP", justify="right")
        for name in categories:
            table.add_row(name, *(ap_text(results[task].get("AP-" + name)) for task in tasks))
        console.print(table)


def print_data_lines(lines) -> None:
    for line in lines:
        err_console.print(escape(line), highlight=False, soft_wrap=True)


def print_fit(fit, out: Console) -> None:
    """The keys a data fit set (a table on a terminal), its mode and estimated cost, and what it held back."""
    if fit.rows:
        print_key_rows(
            f"keys fitted to the training data (--fit {fit.mode})", fit.rows, ("preset", "fitted", "from"), out
        )
    for line in fit.lines():
        out.print(escape(line), highlight=False, soft_wrap=True)


def print_plan(plan) -> None:
    """What `train` prints once the run is checked, before it starts: the data fit and the run's length."""
    print_fit(plan.fit, err_console)
    for line in plan.length:
        err_console.print(escape(line), highlight=False, soft_wrap=True)


def param_text(params: dict) -> str:
    """A trial's parameters, short: lr_adamw 0.00161 -> lr 0.00161."""
    shown = []
    for name, value in params.items():
        for prefix in ("lr_", "weight_decay_"):
            if name.startswith(prefix) and name[len(prefix) :] in ("sgd", "adam", "adamw"):
                name = prefix[:-1]
        name = {"weight_decay": "wd", "warmup_fraction": "warmup", "clip_grad": "clip"}.get(name, name)
        shown.append(f"{name} {value:.3g}" if isinstance(value, float) else f"{name} {value}")
    return ", ".join(shown)


def print_trials_table(result) -> None:
    table = Table(title=f"study {escape(result.study_name)}: {len(result.trials)} trials")
    for column in ("trial", "state", "mask AP", "parameters", "time", "note"):
        table.add_column(
            column,
            justify="right" if column in ("trial", "mask AP", "time") else "left",
            overflow="fold",
            no_wrap=column in ("trial", "state"),
        )
    styles = {"complete": "green", "pruned": "yellow", "diverged": "red", "failed": "red"}
    best = result.best.number if result.best else None
    for row in result.trials:
        style = styles.get(row.state, "dim")
        number = f"[bold]{row.number}*[/]" if row.number == best else str(row.number)
        time_text = f"{row.seconds:.0f} s" if row.seconds is not None else "-"
        table.add_row(
            number,
            f"[{style}]{row.state}[/]",
            ap_text(row.ap),
            escape(param_text(row.params)),
            time_text,
            escape(row.note),
        )
    console.print(table)


def number(value, digits: int = 3) -> str:
    if value is None:
        return "-"
    return f"{value:.{digits}g}" if value == value and abs(value) != float("inf") else "non-finite"


def verdict_line(result) -> str:
    color = "green" if result.ok else "red"
    where = f" at {result.stage}" if result.stage else ""
    return f"[bold {color}]{result.verdict}[/]{where} ({result.init}, norm {result.norm}): {result.advice}"


def summary_table(rows: list[dict]) -> Table:
    table = Table(title="predictions")
    for column in ("image", "size", "instances", "classes", "best score", "ms"):
        table.add_column(
            column, justify="right" if column in ("instances", "best score", "ms") else "left", overflow="fold"
        )
    for row in rows[:SUMMARY_ROWS]:
        if "error" in row:
            table.add_row(escape(row["file"]), "-", "-", f"[red]skipped[/]: {escape(row['error'])}", "-", "-")
            continue
        classes = ", ".join(f"{escape(name)} {count}" for name, count in row["classes"].items())
        best = "-" if row["best_score"] is None else f"{row['best_score']:.2f}"
        table.add_row(
            escape(row["file"]),
            f"{row['width']}x{row['height']}",
            str(row["instances"]),
            classes,
            best,
            f"{1000 * row['seconds']:.0f}",
        )
    if len(rows) > SUMMARY_ROWS:
        table.add_row(f"... {len(rows) - SUMMARY_ROWS} more", "", "", "", "", "")
    return table


SEVERITY_STYLES = {"fatal": "bold red", "fixable": "yellow", "warning": "magenta", "info": "dim"}


def print_written(written) -> None:
    """What `convert` and `split` wrote: the notes, each file with its counts and check verdict."""
    print_data_lines(written.lines)
    for split, path in written.files.items():
        report = written.reports.get(split)
        verdict = ""
        if report is not None:
            verdict = (
                "; check-data: ok"
                if report.ok
                else "; check-data: "
                + "; ".join(p.summary() for p in report.problems.values() if p.severity in ("fixable", "warning"))
            )
            verdict = f" ({report.num_images} images, {report.num_annotations} annotations{verdict})"
        console.print(f"wrote {escape(str(path))}{escape(verdict)}", highlight=False, soft_wrap=True)
