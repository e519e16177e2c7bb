"""Caption tokenisation: the COCO evaluation's PTB tokenizer, and a labelled pure-Python fallback.

Why our own wrapper instead of ``pycocoevalcap.tokenizer.PTBTokenizer``: the official wrapper writes
its temporary file into the installed package folder (read-only on many installs), calls Java once
per dict (COCO's ``eval.py`` calls it twice), and silently mis-aligns captions when one contains a
line break other than ``\\n``. Here every text of a scoring call goes through ONE Java process, with
the same jar, the same flags (``-preserveLines -lowerCase``) and the same punctuation filter list
(imported from pycocoevalcap, so the quirk that ``-lrb-``/``-rrb-`` survive lower-casing is kept).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Sequence

from pycocoevalcap.tokenizer import ptbtokenizer as _ptb

PTB_JAR = Path(_ptb.__file__).resolve().parent / _ptb.STANFORD_CORENLP_3_4_1_JAR
PTB_PUNCTUATIONS: frozenset[str] = frozenset(_ptb.PUNCTUATIONS)

# Every character Python's str.splitlines() breaks on; Java's line reader breaks on several of them.
_LINE_BREAKS = re.compile("[\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029]")

TOKENIZER_PTB = "ptb"
TOKENIZER_FALLBACK = "fallback-regex"


def find_java() -> str | None:
    """Path of the ``java`` executable on PATH, or None."""
    return shutil.which("java")


def java_unavailable_reason() -> str | None:
    """Why Java-based scoring cannot run here (None when it can)."""
    if find_java() is None:
        return "java was not found on PATH (install a Java runtime, e.g. openjdk-17-jre-headless)"
    return None


def one_line(text: str) -> str:
    """Replace every line break by a space (line-oriented Java tools would split the text)."""
    return _LINE_BREAKS.sub(" ", text)


def ptb_tokenize(texts: Sequence[str]) -> list[str]:
    """PTB-tokenise ``texts`` exactly as COCO's evaluation does, in a single Java call.

    Returns one lower-cased, space-joined token string per input with PTB punctuation tokens removed.
    """
    java = find_java()
    if java is None:
        raise RuntimeError(java_unavailable_reason())
    if not texts:
        return []
    lines = [one_line(t) for t in texts]
    fd, tmp = tempfile.mkstemp(prefix="mmbench-ptb-", suffix=".txt")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(("\n".join(lines) + "\n").encode("utf-8"))
        cmd = [java, "-cp", str(PTB_JAR), "edu.stanford.nlp.process.PTBTokenizer",
               "-preserveLines", "-lowerCase", "-encoding", "utf-8", tmp]
        proc = subprocess.run(cmd, capture_output=True, check=False)
    finally:
        os.remove(tmp)
    if proc.returncode != 0:
        raise RuntimeError(f"PTB tokenizer failed ({proc.returncode}): {proc.stderr.decode(errors='replace')[-2000:]}")
    out = proc.stdout.decode("utf-8").split("\n")
    if len(out) == len(lines) + 1 and out[-1] == "":
        out = out[:-1]
    if len(out) != len(lines):
        raise RuntimeError(f"PTB tokenizer returned {len(out)} lines for {len(lines)} captions")
    return [" ".join(w for w in line.rstrip().split(" ") if w not in PTB_PUNCTUATIONS) for line in out]


# --- pure-Python fallback -------------------------------------------------------------------------
# Mimics what PTB + COCO's punctuation filter do to ordinary English captions: lower-case, split
# clitics ("don't" -> "do n't", "dog's" -> "dog 's"), turn brackets into -lrb-/-rrb- tokens (which
# COCO's filter keeps), drop quotes and sentence punctuation, keep "1,000", "3.5", "u.s." and
# "t-shirt" whole. It is an approximation: numbers can differ slightly from the Java tokenizer.

_BRACKETS = {"(": "-lrb-", ")": "-rrb-", "[": "-lsb-", "]": "-rsb-", "{": "-lcb-", "}": "-rcb-"}
_SPLIT_CHARS = re.compile(r'([()\[\]{}"?!;=@#$%]|\.\.\.+|--+)')
_CLITIC = re.compile(r"^(.+?)(n't|'s|'re|'ve|'ll|'d|'m)$")
_ABBREV = re.compile(r"^([a-z]\.)+$")
_TITLES = frozenset({"mr.", "mrs.", "ms.", "dr.", "jr.", "sr.", "st.", "mt.", "vs.", "etc.", "prof."})
_EDGE = ".,:;'`-"


def _split_token(tok: str) -> list[str]:
    if tok in _BRACKETS:
        return [_BRACKETS[tok]]
    if tok in _TITLES or tok == "'n'":
        return [tok]
    if tok == "cannot":
        return ["can", "not"]
    head: list[str] = []
    while tok and tok[0] in _EDGE and not (len(tok) > 1 and tok[0] == "'" and _CLITIC.match("x" + tok)):
        head.append(tok[0])
        tok = tok[1:]
    tail: list[str] = []
    while tok and tok[-1] in _EDGE and not _ABBREV.match(tok):
        if tok[-1] == "." and len(tok) > 1 and re.fullmatch(r"[a-z]", tok[-2]) and "." in tok[:-1]:
            break
        tail.insert(0, tok[-1])
        tok = tok[:-1]
    words: list[str] = []
    if tok:
        m = _CLITIC.match(tok)
        if m and tok not in ("'s", "'d", "'m"):
            words = [m.group(1), m.group(2)]
        else:
            words = [tok]
    return head + words + tail


def fallback_tokenize(texts: Sequence[str]) -> list[str]:
    """Pure-Python stand-in for :func:`ptb_tokenize` when Java is absent (labelled in results)."""
    out: list[str] = []
    for text in texts:
        spaced = _SPLIT_CHARS.sub(r" \1 ", one_line(text).lower())
        tokens: list[str] = []
        for raw in spaced.split():
            tokens.extend(_split_token(raw))
        out.append(" ".join(t for t in tokens if t not in PTB_PUNCTUATIONS and t != '"'))
    return out
