"""``hub_*`` loaders: hub datasets through ``datasets.load_dataset``, mapped by :mod:`hub_specs`.

One code path serves the hub and local copies: ``path`` (a ``save_to_disk`` folder or a dataset
folder) or ``data_files`` (parquet/json/csv/arrow files) replace the hub id, which is how the
mapping is tested offline. Text columns are read eagerly; images are decoded only when a
sample's ``load_image`` is called.
"""

from __future__ import annotations

import ast
import functools
import io
from pathlib import Path
from typing import Any, Literal, Sequence

from PIL import Image

from tasks.base import Dataset, Sample
from tasks.datasets._common import ImageLoadError
from tasks.datasets._registry import LoaderOptions, register_loader
from tasks.datasets.hub_specs import HUB_SPECS, HubSpec

_BUILDERS = {".parquet": "parquet", ".json": "json", ".jsonl": "json", ".csv": "csv", ".arrow": "arrow"}


class HubOptions(LoaderOptions):
    task: Literal["caption", "vqa", "multiple_choice"] | None = None
    revision: str | None = None
    """Pin the hub dataset to a commit, tag or branch (default: the spec's pin, else ``main``)."""
    hub_id: str | None = None
    """Read another hub repository with the same fields (e.g. a mirror after the original moved)."""
    path: str | None = None
    """A local dataset instead of the hub: a ``save_to_disk`` folder or a folder ``load_dataset`` reads."""
    data_files: str | list[str] | dict[str, str | list[str]] | None = None
    """Local data files (parquet/json/csv/arrow); a plain string or list is taken as the requested split."""
    hub_split: str | None = None
    """Override the hub split name the mmbench split maps to."""
    cache_dir: str | None = None


def get_field(row: dict[str, Any], path: str) -> Any:
    """Read ``col``, ``col.key`` or ``col[].key`` from a row (see :mod:`hub_specs`)."""
    if "[]." in path:
        col, key = path.split("[].", 1)
        return [get_field(item, key) for item in (row[col] or [])]
    if "." in path:
        col, key = path.split(".", 1)
        return get_field(row[col], key)
    return row[path]


def _columns(spec: HubSpec) -> list[str]:
    paths = [spec.id, spec.question, spec.answers, spec.captions, spec.choices, spec.answer_index, *spec.meta]
    return sorted({p.split("[]")[0].split(".")[0] for p in paths if p})


def _builder_for(files: str | list[str] | dict[str, Any]) -> str:
    first: Any = files
    while not isinstance(first, str):
        first = next(iter(first.values())) if isinstance(first, dict) else first[0]
    suffix = Path(first.replace("*", "x")).suffix
    if suffix not in _BUILDERS:
        raise ValueError(f"cannot tell the format of data file {first!r}; use one of {sorted(_BUILDERS)}")
    return _BUILDERS[suffix]


def open_table(spec: HubSpec, split: str, o: HubOptions):
    """The ``datasets.Dataset`` for ``split`` from the hub or from local files (same code after)."""
    import datasets

    hub_split = o.hub_split or spec.splits[split]
    if o.data_files is not None:
        files = o.data_files if isinstance(o.data_files, dict) else {hub_split: o.data_files}
        return datasets.load_dataset(_builder_for(files), data_files=files, split=hub_split, cache_dir=o.cache_dir), f"{files}"
    if o.path is not None:
        local = Path(o.path)
        if (local / "dataset_dict.json").is_file() or (local / "state.json").is_file():
            loaded = datasets.load_from_disk(str(local))
            if isinstance(loaded, datasets.DatasetDict):
                if hub_split not in loaded:
                    raise ValueError(f"{local} has splits {sorted(loaded)}, not {hub_split!r}")
                loaded = loaded[hub_split]
            return loaded, str(local)
        return datasets.load_dataset(o.path, split=hub_split, cache_dir=o.cache_dir), str(local)
    revision = o.revision or spec.revision
    hub_id = o.hub_id or spec.hub_id
    ds = datasets.load_dataset(
        hub_id, split=hub_split, revision=revision, data_files=dict(spec.data_files) if spec.data_files else None,
        cache_dir=o.cache_dir,
    )
    from harness.hub_pin import pinned_revision  # the commit loaded, so the task fingerprint moves with it

    return ds, f"hub:{hub_id}@{pinned_revision(hub_id, revision, 'dataset')}"


def _decode(value: Any, where: str) -> Image.Image:
    if value is None:
        raise ImageLoadError(f"{where}: the row has no image")
    if isinstance(value, Image.Image):
        return value.convert("RGB")
    if isinstance(value, dict) and value.get("bytes"):
        with Image.open(io.BytesIO(value["bytes"])) as img:
            img.load()
            return img.convert("RGB")
    if isinstance(value, dict) and value.get("path"):
        with Image.open(value["path"]) as img:
            img.load()
            return img.convert("RGB")
    raise ImageLoadError(f"{where}: cannot decode image value of type {type(value).__name__}")


def _hub_image(images: Any, column: str, index: int, where: str) -> Image.Image:
    try:
        value = images[index][column]
    except Exception as err:
        raise ImageLoadError(f"{where}: reading the image failed: {err}") from err
    return _decode(value, where)


def _has_image(table: Any, column: str) -> list[bool]:
    """Which rows have a non-null image, read from Arrow without decoding any image."""
    import pyarrow.compute as pc

    arrow = table.select_columns([column]).with_format("arrow")[:]
    return pc.is_valid(arrow.column(column)).to_pylist()


def _as_strings(value: Any, what: str, *, literal: bool = False) -> tuple[str, ...]:
    """A list column as strings; with ``literal``, a string holding a Python list literal is parsed
    (A-OKVQA's hub copy stores ``direct_answers`` as ``"['ride', 'ride', ...]"``) — by
    ``ast.literal_eval``, which reads literals only and never runs code."""
    if value is None:
        return ()
    if literal and isinstance(value, str):
        try:
            value = ast.literal_eval(value)
        except (ValueError, SyntaxError) as err:
            raise ValueError(f"{what}: cannot read {value[:60]!r} as a list literal: {err}") from None
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{what} must hold a list, got {type(value).__name__}")
    if isinstance(value, str) or not isinstance(value, Sequence):
        raise ValueError(f"{what} must be a list of strings, got {type(value).__name__}")
    return tuple(str(v) for v in value)


def _build(spec: HubSpec, split: str, o: HubOptions) -> Dataset:
    task = o.task or spec.kinds[0]
    if task not in spec.kinds:
        raise ValueError(f"hub_{spec.name} supports task(s) {list(spec.kinds)}, not {task!r}")
    table, source = open_table(spec, split, o)
    needed = _columns(spec) + [spec.image]
    absent = [c for c in needed if c not in table.column_names]
    if absent:
        raise ValueError(f"hub_{spec.name}: column(s) {absent} not in the data; available: {table.column_names}")
    keep = _has_image(table, spec.image) if spec.require_image else None
    images = table.select_columns([spec.image])
    texts = table.select_columns(_columns(spec))
    samples: list[Sample] = []
    for index, row in enumerate(texts):
        if keep is not None and not keep[index]:
            continue
        ident = row[spec.id] if spec.id else index
        sid = f"{spec.name}/{ident}"
        loader = functools.partial(_hub_image, images, spec.image, index, f"{sid} ({source})")
        meta: dict[str, Any] = {"image_id": f"{spec.name}-image/{ident}", "row": index}
        meta.update({m: row[m] for m in spec.meta})
        fields: dict[str, Any] = {}
        if task == "caption":
            fields["references"] = _as_strings(get_field(row, spec.captions), f"{sid} captions")
        else:
            fields["question"] = str(get_field(row, spec.question))
        if task == "vqa":
            fields["answers"] = _as_strings(get_field(row, spec.answers), f"{sid} answers", literal=spec.answers_literal)
        if task == "multiple_choice":
            fields["choices"] = _as_strings(get_field(row, spec.choices), f"{sid} choices")
            idx = get_field(row, spec.answer_index)
            fields["answer_index"] = None if idx is None else int(idx)
            if idx is not None and not 0 <= int(idx) < len(fields["choices"]):
                raise ValueError(f"{sid}: answer index {idx} outside {len(fields['choices'])} choices")
        samples.append(Sample(sid, f"{source}#{split}/{index}", loader, meta=meta, **fields))
    return Dataset(name=spec.name, split=split, source=source, samples=tuple(samples), license=spec.license)


def _register(spec: HubSpec) -> None:
    register_loader(
        f"hub_{spec.name}",
        options=HubOptions,
        splits=tuple(spec.splits),
        description=f"{spec.hub_id} via datasets.load_dataset ({', '.join(spec.kinds)})",
    )(functools.partial(_build, spec))


for _spec in HUB_SPECS:
    _register(_spec)
