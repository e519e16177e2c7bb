"""The leaderboard report (``mmbench report``): MLflow store → HTML, Markdown and CSV.

``collect`` reads runs, ``tables`` builds the frames, ``plots`` draws them, ``explorer`` gathers the
per-sample view, ``render_md``/``render_html`` write the files, ``build`` ties them together.
"""

from harness.leaderboard.build import ReportFiles, build_report

__all__ = ["ReportFiles", "build_report"]
