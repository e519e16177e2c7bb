"""Answer normalisation of the official VQA evaluation (GT-Vision-Lab/VQA ``vqaEval.py``).

Reproduced behaviour, quirks included, because published VQAv2 numbers depend on them:

- punctuation: each of ``; / [ ] " { } ( ) = + \\ _ - > < @ ` , ? !`` is deleted when it touches a
  space in the *original* text or when the text contains a digit-comma-digit ("1,000"), and is
  replaced by a space otherwise ("t-shirt" -> "t shirt", "1,000" -> "1000"). Apostrophes and colons are kept.
- periods: the official pattern ``(?!<=\\d)(\\.)(?!\\d)`` meant a look-behind but is a look-ahead, so it
  removes every period *not followed by a digit* ("3.5" stays, "black." -> "black", "u.s." -> "us");
  ``re.UNICODE`` is passed where ``sub`` expects ``count``, so at most 32 periods are removed.
  The original is Python 2 code without the UNICODE flag, so ``\\d`` means ASCII 0-9 here too.
- then lower-case, split on whitespace, number words zero..ten and "none" -> digits, drop the
  articles a/an/the, and map apostrophe-less contractions ("dont" -> "don't") with the official table.
"""

from __future__ import annotations

import re

PUNCTUATION = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",",
               "?", "!")
_COMMA_IN_NUMBER = re.compile(r"[0-9],[0-9]")
_PERIOD_NOT_BEFORE_DIGIT = re.compile(r"\.(?![0-9])")
_MAX_PERIODS = 32  # re.UNICODE == 32, passed positionally as ``count`` by the official code

NUMBER_WORDS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
                "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
ARTICLES = frozenset({"a", "an", "the"})

# The official contraction table, entry for entry (its oddities kept: "somebody'd" -> "somebodyd",
# and capitalised keys such as "Im" that can never match after lower-casing).
_CONTRACTION_PAIRS = """
aint ain't|arent aren't|cant can't|couldve could've|couldnt couldn't|couldn'tve couldn't've|couldnt've couldn't've
didnt didn't|doesnt doesn't|dont don't|hadnt hadn't|hadnt've hadn't've|hadn'tve hadn't've|hasnt hasn't
havent haven't|hed he'd|hed've he'd've|he'dve he'd've|hes he's|howd how'd|howll how'll|hows how's
Id've I'd've|I'dve I'd've|Im I'm|Ive I've|isnt isn't|itd it'd|itd've it'd've|it'dve it'd've|itll it'll
let's let's|maam ma'am|mightnt mightn't|mightnt've mightn't've|mightn'tve mightn't've|mightve might've
mustnt mustn't|mustve must've|neednt needn't|notve not've|oclock o'clock|oughtnt oughtn't
ow's'at 'ow's'at|'ows'at 'ow's'at|'ow'sat 'ow's'at|shant shan't|shed've she'd've|she'dve she'd've
she's she's|shouldve should've|shouldnt shouldn't|shouldnt've shouldn't've|shouldn'tve shouldn't've
somebody'd somebodyd|somebodyd've somebody'd've|somebody'dve somebody'd've|somebodyll somebody'll
somebodys somebody's|someoned someone'd|someoned've someone'd've|someone'dve someone'd've
someonell someone'll|someones someone's|somethingd something'd|somethingd've something'd've
something'dve something'd've|somethingll something'll|thats that's|thered there'd|thered've there'd've
there'dve there'd've|therere there're|theres there's|theyd they'd|theyd've they'd've|they'dve they'd've
theyll they'll|theyre they're|theyve they've|twas 'twas|wasnt wasn't|wed've we'd've|we'dve we'd've
weve we've|werent weren't|whatll what'll|whatre what're|whats what's|whatve what've|whens when's
whered where'd|wheres where's|whereve where've|whod who'd|whod've who'd've|who'dve who'd've|wholl who'll
whos who's|whove who've|whyll why'll|whyre why're|whys why's|wont won't|wouldve would've|wouldnt wouldn't
wouldnt've wouldn't've|wouldn'tve wouldn't've|yall y'all|yall'll y'all'll|y'allll y'all'll
yall'd've y'all'd've|y'alld've y'all'd've|y'all'dve y'all'd've|youd you'd|youd've you'd've
you'dve you'd've|youll you'll|youre you're|youve you've
"""
CONTRACTIONS: dict[str, str] = dict(
    pair.split(" ") for line in _CONTRACTION_PAIRS.strip().splitlines() for pair in line.split("|")
)


def clean_whitespace(text: str) -> str:
    """The first step applied to every answer: newlines and tabs to spaces, then strip."""
    return text.replace("\n", " ").replace("\t", " ").strip()


def process_punctuation(text: str) -> str:
    """``processPunctuation`` of the official evaluation (see module docstring)."""
    out = text
    drop_all = _COMMA_IN_NUMBER.search(text) is not None
    for p in PUNCTUATION:
        if drop_all or (p + " " in text or " " + p in text):
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    return _PERIOD_NOT_BEFORE_DIGIT.sub("", out, count=_MAX_PERIODS)


def process_digit_article(text: str) -> str:
    """``processDigitArticle`` of the official evaluation: lower-case, digits, no articles, contractions."""
    words = [NUMBER_WORDS.get(w, w) for w in text.lower().split()]
    words = [CONTRACTIONS.get(w, w) for w in words if w not in ARTICLES]
    return " ".join(words)


def normalize_answer(text: str) -> str:
    """Full official normalisation of one answer (whitespace, punctuation, digits/articles/contractions)."""
    return process_digit_article(process_punctuation(clean_whitespace(text)))
