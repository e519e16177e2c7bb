"""Tiny copies of standard benchmarks written in their exact released formats (field and file
names of each public release), for the loader and few-shot tests. Each image is a distinct flat
colour so that no two samples share pixels unless they share a file."""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image

WORDS = ["red", "blue", "green", "cat", "dog", "bus", "tree", "boat", "kite", "pizza", "clock", "horse"]


def _colour(i: int) -> tuple[int, int, int]:
    return (40 + (i * 53) % 200, 30 + (i * 97) % 210, 20 + (i * 29) % 220)


def _image(path: Path, i: int, fmt: str = "JPEG") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (24, 16), _colour(i)).save(path, fmt)


def _dump(path: Path, obj: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj), encoding="utf-8")


def write_karpathy_coco(root: Path) -> tuple[Path, Path]:
    """``dataset_coco.json`` + ``train2014/``, ``val2014/``; returns (annotation file, images root)."""
    images = []
    layout = [("train", "train2014")] * 3 + [("restval", "val2014")] * 2 + [("val", "val2014")] + [("test", "val2014")] * 3
    for i, (split, folder) in enumerate(layout):
        cocoid = 1000 + i
        name = f"COCO_{folder}_{cocoid:012d}.jpg"
        _image(root / "images" / folder / name, i)
        sentences = [{"tokens": ["a", WORDS[i % 12]], "raw": f"A {WORDS[i % 12]} in view number {j}.", "imgid": i,
                      "sentid": 5 * i + j} for j in range(5)]
        images.append({"filepath": folder, "sentids": [5 * i + j for j in range(5)], "filename": name, "imgid": i,
                       "split": split, "sentences": sentences, "cocoid": cocoid})
    ann = root / "karpathy" / "dataset_coco.json"
    _dump(ann, {"images": images, "dataset": "coco"})
    return ann, root / "images"


def write_vqa_official(root: Path, *, okvqa: bool) -> None:
    """OK-VQA (``OpenEnded_mscoco_*``) or VQAv2 (``v2_OpenEnded_mscoco_*``) files + COCO images."""
    prefix = "" if okvqa else "v2_"
    qid = 0
    for split, n_images in (("train", 4), ("val", 2)):
        questions, annotations = [], []
        for i in range(n_images):
            image_id = (100 if split == "train" else 200) + i
            _image(root / f"{split}2014" / f"COCO_{split}2014_{image_id:012d}.jpg", image_id)
            for j in range(2):  # two questions per image: a question on the query's image must never be a shot
                qid += 1
                word = WORDS[(i + j) % 12]
                questions.append({"image_id": image_id, "question": f"What is shown {j}?", "question_id": image_id * 10 + j})
                annotations.append({
                    "image_id": image_id, "question_type": "what is", "answer_type": "other",
                    "question_id": image_id * 10 + j, "confidence": 3,
                    "multiple_choice_answer": word,
                    "answers": [{"answer_id": k + 1, "raw_answer": word, "answer_confidence": "yes", "answer": word}
                                for k in range(10)],
                })
        head = {"info": {}, "license": {}, "data_subtype": f"{split}2014", "task_type": "Open-Ended", "data_type": "mscoco"}
        _dump(root / f"{prefix}OpenEnded_mscoco_{split}2014_questions.json", {**head, "questions": questions})
        _dump(root / f"{prefix}mscoco_{split}2014_annotations.json", {**head, "annotations": annotations})


def write_aokvqa(root: Path) -> None:
    """``aokvqa_v1p0_{split}.json`` + ``{split}2017/{image_id:012d}.jpg``."""
    for split, n in (("train", 5), ("val", 2)):
        records = []
        for i in range(n):
            image_id = (300 if split == "train" else 400) + i
            _image(root / f"{split}2017" / f"{image_id:012d}.jpg", image_id)
            choices = [WORDS[(i + c) % 12] for c in range(4)]
            records.append({
                "split": split, "image_id": image_id, "question_id": f"{split}q{i:04d}",
                "question": f"What would you use this {WORDS[i % 12]} for?", "choices": choices,
                "correct_choice_idx": i % 4, "direct_answers": [choices[i % 4]] * 9 + ["other"],
                "difficult_direct_answer": i % 2 == 1,
                "rationales": [f"Because it is a {choices[i % 4]}.", "People do that.", "It is common."],
            })
        _dump(root / f"aokvqa_v1p0_{split}.json", records)


def write_scienceqa(root: Path) -> dict[str, dict]:
    """``problems.json`` + ``pid_splits.json`` + ``images/{split}/{pid}/image.png``; returns problems."""
    problems: dict[str, dict] = {}
    splits: dict[str, list[str]] = {"train": [], "val": [], "test": [], "minival": [], "minitrain": []}
    subjects = ["natural science", "social science", "language science"]
    pid = 0
    for split, n in (("train", 6), ("val", 1), ("test", 5)):
        for i in range(n):
            pid += 1
            has_image = i != 3  # one text-only question without a hint (no context) per split
            hint = "" if i % 3 == 0 else f"Read about the {WORDS[i % 12]}."
            problems[str(pid)] = {
                "question": f"Which word names the {WORDS[(i + 2) % 12]} thing?",
                "choices": [WORDS[(i + c) % 12] for c in range(2 + i % 2)],
                "answer": i % 2,
                "hint": hint,
                "image": "image.png" if has_image else None,
                "task": "closed choice",
                "grade": f"grade{1 + (i * 3) % 12}",
                "subject": subjects[i % 3],
                "topic": "words", "category": "Word study", "skill": "Read words",
                "lecture": "A lecture line.\nAnother line.",
                "solution": f"Look at the word.\nThe answer is the {WORDS[(i + i % 2) % 12]}.",
                "split": split,
            }
            splits[split].append(str(pid))
            if has_image:
                _image(root / "images" / split / str(pid) / "image.png", 500 + pid, "PNG")
    _dump(root / "problems.json", problems)
    _dump(root / "pid_splits.json", splits)
    return problems


def write_textvqa(root: Path) -> None:
    """``TextVQA_0.5.1_{split}.json`` + ``train_images/{image_id}.jpg`` (train and val share it)."""
    for split, n in (("train", 4), ("val", 2)):
        data = []
        for i in range(n):
            image_id = f"{split[:2]}{i:014x}"
            _image(root / "train_images" / f"{image_id}.jpg", 700 + i + (0 if split == "train" else 50))
            data.append({
                "question": f"what brand is shown {i}?", "image_id": image_id, "image_classes": ["Poster"],
                "flickr_original_url": "", "flickr_300k_url": "", "image_width": 24, "image_height": 16,
                "answers": [WORDS[i % 12]] * 10, "question_tokens": ["what", "brand"],
                "question_id": (1 if split == "train" else 2) * 1000 + i, "set_name": split,
            })
        _dump(root / f"TextVQA_0.5.1_{split}.json",
              {"dataset_type": split, "dataset_name": "textvqa", "dataset_version": "0.5.1", "data": data})


def write_vizwiz(root: Path) -> None:
    """``Annotations/{split}.json`` + ``{split}/VizWiz_{split}_{n:08d}.jpg``."""
    for split, n in (("train", 4), ("val", 2)):
        records = []
        for i in range(n):
            name = f"VizWiz_{split}_{i:08d}.jpg"
            _image(root / split / name, 800 + i + (0 if split == "train" else 50))
            records.append({
                "image": name, "question": f"What is this {i}?", "answer_type": "other", "answerable": 1,
                "answers": [{"answer": WORDS[i % 12], "answer_confidence": "yes"} for _ in range(10)],
            })
        _dump(root / "Annotations" / f"{split}.json", records)


def write_nocaps_val(root: Path) -> None:
    """``nocaps_val_4500_captions.json`` (COCO caption format with Open Images ids) + ``validation/``."""
    images, annotations = [], []
    for i, domain in enumerate(("in-domain", "near-domain", "out-domain")):
        name = f"{i:016x}.jpg"
        _image(root / "validation" / name, 900 + i)
        images.append({"id": i, "open_images_id": f"{i:016x}", "file_name": name, "height": 16, "width": 24,
                       "coco_url": "", "domain": domain, "license": 0, "date_captured": ""})
        annotations += [{"image_id": i, "id": 10 * i + j, "caption": f"A {WORDS[(i + j) % 12]} seen from afar."}
                        for j in range(10)]
    _dump(root / "nocaps_val_4500_captions.json", {"licenses": [], "info": {}, "images": images, "annotations": annotations})


def write_coco_captions_official(root: Path) -> None:
    """``annotations/captions_{split}2014.json`` + ``{split}2014/COCO_{split}2014_{id:012d}.jpg``."""
    for split, n in (("train", 4), ("val", 2)):
        images, annotations = [], []
        for i in range(n):
            image_id = (600 if split == "train" else 650) + i
            name = f"COCO_{split}2014_{image_id:012d}.jpg"
            _image(root / f"{split}2014" / name, image_id)
            images.append({"license": 1, "file_name": name, "coco_url": "", "height": 16, "width": 24,
                           "date_captured": "", "flickr_url": "", "id": image_id})
            annotations += [{"image_id": image_id, "id": image_id * 10 + j, "caption": f"A {WORDS[(i + j) % 12]} on a table."}
                            for j in range(5)]
        _dump(root / "annotations" / f"captions_{split}2014.json",
              {"info": {}, "licenses": [], "images": images, "annotations": annotations})
