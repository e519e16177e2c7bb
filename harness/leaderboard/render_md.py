"""The Markdown report (for a README or a paper); figures are written next to it as PNG files."""

from __future__ import annotations

from typing import Sequence

from harness.leaderboard.sections import Table


def _esc(text: str) -> str:
    """Table-cell text: ``|`` and newlines would break the row; ``<``/``>`` as entities, so a store
    string is never read as HTML by a Markdown renderer."""
    return text.replace("|", "\\|").replace("\n", " ").replace("<", "&lt;").replace(">", "&gt;")


def md_table(t: Table, level: str = "####") -> str:
    lines = [f"{level} {_esc(t.title)}", "", "| " + " | ".join(map(_esc, t.header)) + " |",
             "|" + "|".join("---" for _ in t.header) + "|"]
    for i, row in enumerate(t.rows):
        flags = t.best[i] if i < len(t.best) else [False] * len(row)
        cells = [f"**{_esc(c)}**" if f else _esc(c) for c, f in zip(row, flags)]
        lines.append("| " + " | ".join(cells) + " |")
    for row in t.footer:
        lines.append("| " + " | ".join(_esc(c) for c in row) + " |")  # plain: a "*" here is a significance mark
    if t.note:
        lines += ["", f"*{_esc(t.note)}*"]
    return "\n".join(lines) + "\n"


def render_markdown(title: str, intro: str, sections: Sequence[tuple[str, Sequence[Table], Sequence[tuple[str, str]]]]) -> str:
    """``sections``: (heading, tables, figures as (file name, caption))."""
    out = [f"# {title}", "", _esc(intro), ""]
    for heading, tables, figures in sections:
        out += [f"## {_esc(heading)}", ""]
        for t in tables:
            out += [md_table(t), ""]
        for path, caption in figures:
            out += [f"![{_esc(caption)}]({path})", ""]
    return "\n".join(out)
