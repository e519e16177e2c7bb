"""Hub models and datasets named by a commit hash, so a cache key changes when the weights do.

``main`` is a moving name: a key built from ``org/model@main`` would keep serving answers computed
with last month's weights. :func:`pinned_revision` resolves a revision to its commit: a 40-hex
revision is already one; otherwise the local hub cache's ``refs/<revision>`` file (what
``from_pretrained`` will load, no network) and then, unless ``HF_HUB_OFFLINE`` is set, the hub's
API. When neither answers the revision is labelled ``unpinned:<revision>`` — visible in the
fingerprints logged with every run.
"""

from __future__ import annotations

import os
import re
from functools import lru_cache
from pathlib import Path

_SHA = re.compile(r"^[0-9a-f]{40}$")


def _hub_cache() -> Path:
    try:
        from huggingface_hub import constants

        return Path(constants.HF_HUB_CACHE)
    except ImportError:
        home = os.environ.get("HF_HOME") or os.path.join(os.path.expanduser("~"), ".cache", "huggingface")
        return Path(os.environ.get("HF_HUB_CACHE") or os.path.join(home, "hub"))


@lru_cache(maxsize=256)
def pinned_revision(repo_id: str, revision: str | None = None, repo_type: str = "model") -> str:
    """The commit hash of ``repo_id@revision``, or ``unpinned:<revision>`` when it cannot be resolved."""
    rev = revision or "main"
    if _SHA.match(rev):
        return rev
    folder = _hub_cache() / f"{repo_type}s--{repo_id.replace('/', '--')}" / "refs" / rev
    try:
        sha = folder.read_text().strip()
        if _SHA.match(sha):
            return sha
    except OSError:
        pass
    if os.environ.get("HF_HUB_OFFLINE", "").lower() not in ("", "0", "false"):
        return f"unpinned:{rev}"
    try:
        from huggingface_hub import HfApi

        api = HfApi()
        info = (api.dataset_info if repo_type == "dataset" else api.model_info)(repo_id, revision=rev, timeout=10)
        if info.sha and _SHA.match(info.sha):
            return info.sha
    except Exception:  # noqa: BLE001 - no network, no such repo, no permission: say it is unpinned
        pass
    return f"unpinned:{rev}"
