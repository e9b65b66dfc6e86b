"""Caption views for CleanCLIP: EDA (Wei & Zou 2019), one random operation per caption.

:func:`eda_view` returns a :data:`TextAug`: ``view(caption, rng) -> str``. Each call cleans the
caption as EDA does (lower case; letters, digits and single spaces only: punctuation and hyphens
become spaces, so "A close-up of a star." -> "a close up of a star"), then applies EXACTLY ONE of
four operations, chosen uniformly:

* synonym replacement: ``n`` distinct non-stop words, in random order, are each replaced (every
  occurrence) by a random synonym; words without a synonym are skipped;
* random insertion: ``n`` times, a random synonym of a random non-stop word is inserted at a random
  position;
* random swap: ``n`` times, two words at distinct random positions trade places;
* random deletion: each word is dropped with probability ``alpha``; if all would go, one random word
  stays; a one-word caption is kept.

``n = max(1, int(alpha * n_words))``. All randomness comes from the ``numpy.random.Generator``
passed in, so the same generator state gives the same caption. Stop words (:data:`STOP_WORDS`) are
never replaced and never the source of an insertion. A caption with no content word, or whose
words have no synonym, comes back cleaned but otherwise unchanged by those two operations.

Synonyms come from the shipped offline table ``synonyms.json`` (:func:`load_synonyms`), which covers
the vocabulary of the embedded worlds. A word missing from the table takes WordNet synonyms when
``nltk`` is installed AND its WordNet corpus is already on disk (nothing is ever downloaded);
otherwise it has none. A word listed with ``[]`` has none, whatever WordNet says.

Example:
    >>> import numpy as np
    >>> from clipguard.data.augment import eda_view
    >>> view = eda_view()
    >>> a = view("A photo of a red star.", np.random.default_rng(0))
    >>> a == view("A photo of a red star.", np.random.default_rng(0))
    True
"""
from __future__ import annotations

import functools
import json
import os
import re
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from clipguard.errors import ConfigError
from clipguard.utils.validate import check_real

__all__ = ["TextAug", "STOP_WORDS", "eda_view", "load_synonyms"]

TextAug = Callable[[str, np.random.Generator], str]
"""``(caption, rng) -> augmented caption``; every random draw comes from ``rng``."""

_SYNONYMS_FILE = Path(__file__).with_name("synonyms.json")

#: English function words: never replaced by a synonym, never the source of an inserted synonym.
STOP_WORDS: frozenset[str] = frozenset("""
a about above after again against all am an and any are as at be because been before being below
between both but by can could did do does doing down during each either else ever every few for from
further had has have having he her here hers herself him himself his how i if in into is it its
itself just let may me might more most much must my myself neither no nor not now of off on once only
or other ought our ours ourselves out over own same shall she should so some such than that the their
theirs them themselves then there these they this those through thus to too under until up upon us
very was we were what when where whether which while who whom whose why will with would yet you your
yours yourself yourselves
""".split())

_DROP = re.compile(r"[^a-z0-9 ]+")


def _clean(text: str) -> str:
    """EDA's cleaning: lower case, apostrophes removed, anything but letters, digits and spaces -> one space."""
    text = str(text).lower().replace("'", "").replace("\u2019", "")
    return " ".join(_DROP.sub(" ", text).split())


def _normalise_table(table: Any, source: str) -> dict[str, tuple[str, ...]]:
    """``{word: (synonyms...)}`` cleaned (as captions are), deduplicated, the word itself removed."""
    if not isinstance(table, Mapping):
        raise ConfigError(f"synonyms {source} must be a JSON object {{word: [synonyms]}}, "
                          f"got {type(table).__name__}")
    out: dict[str, tuple[str, ...]] = {}
    for word, syns in table.items():
        if not isinstance(word, str) or isinstance(syns, str) or not isinstance(syns, Sequence) \
                or not all(isinstance(s, str) for s in syns):
            raise ConfigError(f"synonyms {source}: entry {word!r} must map a word to a list of strings, "
                              f"e.g. \"photo\": [\"picture\", \"photograph\"]")
        key = _clean(word)
        cleaned = (_clean(s) for s in syns)
        out[key] = tuple(dict.fromkeys(s for s in cleaned if s and s != key))
    return out


def load_synonyms(path: str | os.PathLike | None = None) -> dict[str, tuple[str, ...]]:
    """Read a synonym table: a JSON object ``{word: [synonyms]}``.

    Args:
        path: the JSON file; ``None`` reads the table shipped with clipguard (the embedded worlds'
            vocabulary: caption templates, shapes, colours, backgrounds, sizes, modifiers).

    Returns:
        ``{word: (synonym, ...)}`` with words and synonyms cleaned as captions are (lower case,
        letters, digits and spaces), duplicates and the word itself removed; a synonym may be several
        words ("half moon"). A word that maps to ``()`` has no synonym.

    Raises:
        ConfigError: the file is missing, is not valid JSON, or is not ``{word: [strings]}``.
    """
    file = _SYNONYMS_FILE if path is None else Path(path)
    try:
        table = json.loads(file.read_text(encoding="utf-8"))
    except OSError as e:
        raise ConfigError(f"cannot read the synonym table {file}: {e.strerror or e}; "
                          "pass an existing JSON file {word: [synonyms]}") from None
    except json.JSONDecodeError as e:
        raise ConfigError(f"synonym table {file} is not valid JSON (line {e.lineno}: {e.msg}); "
                          "fix the file or pass another") from None
    return _normalise_table(table, f"table {file}")


@functools.lru_cache(maxsize=1)
def _wordnet() -> Any:
    """NLTK's WordNet reader when nltk is installed and the corpus is on disk, else None (never downloads)."""
    try:
        import nltk

        nltk.data.find("corpora/wordnet")
        from nltk.corpus import wordnet

        wordnet.ensure_loaded()
    except (ImportError, LookupError, OSError):
        return None
    return wordnet


@functools.lru_cache(maxsize=65536)
def _wordnet_synonyms(word: str) -> tuple[str, ...]:
    """WordNet lemma names of every synset of ``word``, cleaned, sorted, without ``word``; () without WordNet."""
    wordnet = _wordnet()
    if wordnet is None:
        return ()
    names = {_clean(lemma.name().replace("_", " ")) for synset in wordnet.synsets(word) for lemma in synset.lemmas()}
    return tuple(sorted(n for n in names if n and n != word))


def _pick(rng: np.random.Generator, items: Sequence[Any]) -> Any:
    return items[int(rng.integers(len(items)))]


class _EDAView:
    """The callable :func:`eda_view` returns (picklable: a table, ``alpha`` and a flag)."""

    def __init__(self, alpha: float, table: dict[str, tuple[str, ...]], wordnet: bool) -> None:
        self.alpha = alpha
        self.table = table
        self.wordnet = wordnet

    def __repr__(self) -> str:
        return f"eda_view(alpha={self.alpha:g}, synonyms=<{len(self.table)} words>, wordnet={self.wordnet})"

    def synonyms(self, word: str) -> tuple[str, ...]:
        """The synonyms of ``word``: the table's entry, else WordNet's (when enabled and on disk), else ()."""
        if word in self.table:
            return self.table[word]
        return _wordnet_synonyms(word) if self.wordnet else ()

    def __call__(self, caption: str, rng: np.random.Generator) -> str:
        words = _clean(caption).split()
        if not words:
            return ""
        n = max(1, int(self.alpha * len(words)))
        op = int(rng.integers(4))
        if op == 0:
            words = _synonym_replacement(words, n, rng, self.synonyms)
        elif op == 1:
            words = _random_insertion(words, n, rng, self.synonyms)
        elif op == 2:
            words = _random_swap(words, n, rng)
        else:
            words = _random_deletion(words, self.alpha, rng)
        return " ".join(" ".join(words).split())


def _synonym_replacement(words: list[str], n: int, rng: np.random.Generator,
                         synonyms: Callable[[str], Sequence[str]]) -> list[str]:
    """Replace every occurrence of up to ``n`` distinct non-stop words (random order) by a random synonym."""
    candidates = list(dict.fromkeys(w for w in words if w not in STOP_WORDS))
    out, replaced = list(words), 0
    for j in rng.permutation(len(candidates)):
        word = candidates[int(j)]
        syns = synonyms(word)
        if not syns:
            continue
        new = _pick(rng, syns)
        out = [new if w == word else w for w in out]
        replaced += 1
        if replaced >= n:
            break
    return out


def _random_insertion(words: list[str], n: int, rng: np.random.Generator,
                      synonyms: Callable[[str], Sequence[str]]) -> list[str]:
    """``n`` times insert a random synonym of a random non-stop word (one that has synonyms) anywhere."""
    sources = [w for w in words if w not in STOP_WORDS and synonyms(w)]
    out = list(words)
    if not sources:
        return out
    for _ in range(n):
        new = _pick(rng, synonyms(_pick(rng, sources)))
        out.insert(int(rng.integers(len(out) + 1)), new)
    return out


def _random_swap(words: list[str], n: int, rng: np.random.Generator) -> list[str]:
    """``n`` times swap the words at two distinct random positions (nothing to do with fewer than two)."""
    out = list(words)
    if len(out) < 2:
        return out
    for _ in range(n):
        i = int(rng.integers(len(out)))
        j = int(rng.integers(len(out) - 1))
        j += j >= i
        out[i], out[j] = out[j], out[i]
    return out


def _random_deletion(words: list[str], p: float, rng: np.random.Generator) -> list[str]:
    """Drop each word with probability ``p``; never all of them (one random word stays); one word is kept."""
    if len(words) <= 1:
        return list(words)
    keep = rng.random(len(words)) >= p
    if not keep.any():
        return [_pick(rng, words)]
    return [w for w, k in zip(words, keep) if k]


def eda_view(alpha: float = 0.1, synonyms: Mapping[str, Sequence[str]] | str | os.PathLike | None = None, *,
             wordnet: bool = True) -> TextAug:
    """CleanCLIP's caption view: EDA with one random operation per call (module docstring).

    Args:
        alpha: EDA's rate for every operation, in [0, 1]: ``n = max(1, int(alpha * n_words))`` words
            are replaced, inserted or swapped, and each word is deleted with probability ``alpha``.
        synonyms: a ``{word: [synonyms]}`` mapping or a JSON file of one; ``None`` uses the shipped
            table (:func:`load_synonyms`).
        wordnet: let words missing from the table take WordNet synonyms when ``nltk`` and its WordNet
            corpus are already installed (checked once, silently; nothing is downloaded). Without
            them, or with ``False``, a word missing from the table has no synonym; the results then
            depend on the table alone (the same on every machine).

    Returns:
        A :data:`TextAug`: ``view(caption, rng) -> str``, the cleaned caption with one operation
        applied, every draw from ``rng``. An empty caption gives ``""``.

    Raises:
        ConfigError: ``alpha`` out of range or a bad synonym table.
    """
    alpha = check_real("alpha", alpha, low=0, high=1)
    if synonyms is None or isinstance(synonyms, (str, os.PathLike)):
        table = load_synonyms(synonyms)
    else:
        table = _normalise_table(synonyms, "mapping")
    return _EDAView(alpha, table, bool(wordnet))
