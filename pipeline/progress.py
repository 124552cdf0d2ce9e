"""The project's progress bars (rich), one look for every long step."""

from __future__ import annotations

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn


def progress_bar(description: str, total: int, enabled: bool = True):
    """A rich progress bar context; yields an ``advance()`` callable."""
    prog = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeRemainingColumn(), disable=not enabled, transient=False)
    task = prog.add_task(description, total=total)

    class _Ctx:
        def __enter__(self):
            prog.__enter__()
            return lambda n=1: prog.advance(task, n)

        def __exit__(self, *exc):
            return prog.__exit__(*exc)

    return _Ctx()
