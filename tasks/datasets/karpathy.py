"""``karpathy``: Karpathy's caption split files as researchers keep them, plus an image folder.

``dataset_coco.json`` / ``dataset_flickr30k.json`` / ``dataset_flickr8k.json``:
``{"images": [{"split": train|restval|val|test, "filepath"?, "filename", "sentences": [{"raw"}],
"cocoid"? , "imgid"}], "dataset": "coco"}``. An image is ``images_root/filepath/filename``, or
``images_root/filename`` when ``filepath`` is absent (Flickr). ``restval`` counts as ``train``
unless ``restval_in_train`` is false (the Karpathy-split convention of captioning papers).
The parsing is shared with ``coco_captions``'s ``karpathy`` format; this loader takes the
annotation file and the image root separately, as the files are usually kept apart.
"""

from __future__ import annotations

from pathlib import Path

from tasks.base import Dataset
from tasks.datasets._registry import LoaderOptions, register_loader
from tasks.datasets.coco import CocoOptions, load_coco_captions

LICENSE = {
    "coco": "COCO annotations CC BY 4.0; images under their Flickr licenses (COCO terms of use)",
    "flickr30k": "Flickr30k: non-commercial research use; images under Flickr terms",
    "flickr8k": "Flickr8k: research use only; images under Flickr terms",
}


class KarpathyOptions(LoaderOptions):
    annotations: Path
    """The split file, e.g. ``/data/karpathy/dataset_coco.json``."""
    images_root: Path
    """Folder the file's ``filepath/filename`` entries are relative to (COCO: holding ``train2014/``, ``val2014/``)."""
    restval_in_train: bool = True
    dataset_name: str | None = None
    """Default: ``{name}_karpathy`` from the file name ``dataset_{name}.json`` (e.g. ``coco_karpathy``)."""


@register_loader(
    "karpathy",
    options=KarpathyOptions,
    splits=("train", "restval", "val", "test"),
    description="Karpathy split file (dataset_coco/flickr30k/flickr8k.json) + image root",
)
def load_karpathy(split: str, options: KarpathyOptions) -> Dataset:
    # the release names the file after its dataset (dataset_coco.json -> coco_karpathy), so the
    # name comes from the file name and the (large) JSON is read only once, by the parser
    name = options.dataset_name or f"{options.annotations.stem.removeprefix('dataset_')}_karpathy"
    inner = CocoOptions(
        root=options.images_root,
        format="karpathy",
        annotations=str(options.annotations.resolve()),
        restval_in_train=options.restval_in_train,
        dataset_name=name,
    )
    ds = load_coco_captions(split, inner)
    license_ = next((v for k, v in LICENSE.items() if name.startswith(k)), "")
    return Dataset(ds.name, ds.split, f"{options.annotations} (Karpathy split; images under {options.images_root})", ds.samples, license_)
