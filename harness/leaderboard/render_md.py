"""The Markdown report (for a README or a paper); figures are written next to it as PNG files."""

from __future__ import annotations

from typing import Sequence

from harness.leaderboard.sections import Table


def _esc(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def md_table(t: Table, level: str = "####") -> str:
    lines = [f"{level} {t.title}", "", "| " + " | ".join(map(_esc, t.header)) + " |",
             "|" + "|".join("---" for _ in t.header) + "|"]
    for i, row in enumerate(t.rows):
        flags = t.best[i] if i < len(t.best) else [False] * len(row)
        cells = [f"**{_esc(c)}**" if f else _esc(c) for c, f in zip(row, flags)]
        lines.append("| " + " | ".join(cells) + " |")
    for row in t.footer:
        lines.append("| " + " | ".join(_esc(c) for c in row) + " |")  # plain: a "*" here is a significance mark
    if t.note:
        lines += ["", f"*{t.note}*"]
    return "\n".join(lines) + "\n"


def render_markdown(title: str, intro: str, sections: Sequence[tuple[str, Sequence[Table], Sequence[tuple[str, str]]]]) -> str:
    """``sections``: (heading, tables, figures as (file name, caption))."""
    out = [f"# {title}", "", intro, ""]
    for heading, tables, figures in sections:
        out += [f"## {heading}", ""]
        for t in tables:
            out += [md_table(t), ""]
        for path, caption in figures:
            out += [f"![{caption}]({path})", ""]
    return "\n".join(out)
