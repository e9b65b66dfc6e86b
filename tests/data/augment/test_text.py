"""EDA caption views: seeding, the four operations, the synonym table and its coverage of the worlds."""
from __future__ import annotations

import itertools
import json
import pickle
import re

import numpy as np
import pytest

from clipguard.data import longtail, synth
from clipguard.data.augment import eda_view, load_synonyms
from clipguard.data.augment import text as eda
from clipguard.data.templates import DEFAULT_TEMPLATES
from clipguard.errors import ConfigError

CAPTIONS = [synth.render_sample(0, "train", i)[1] for i in range(20)]


def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def _words(text: str) -> list[str]:
    return eda._clean(text).split()


def test_same_seed_same_caption_different_seeds_differ():
    view = eda_view(wordnet=False)
    first = [view(c, _rng(0)) for c in CAPTIONS]
    assert first == [view(c, _rng(0)) for c in CAPTIONS]
    assert first != [view(c, _rng(1)) for c in CAPTIONS]
    assert sum(a != b for a, b in zip(first, [view(c, _rng(1)) for c in CAPTIONS])) >= 5
    clone = pickle.loads(pickle.dumps(view))
    assert first == [clone(c, _rng(0)) for c in CAPTIONS]


def test_cleaning_is_edas():
    assert eda._clean("A Close-up of a STAR.") == "a close up of a star"
    assert eda._clean("two shapes: a red ring, and 2 stars!") == "two shapes a red ring and 2 stars"
    assert eda._clean("  it's   ") == "its"


def test_each_call_applies_exactly_one_of_the_four_operations():
    """Every output of 'a red star' is what one operation can give; each operation shows up."""
    view = eda_view(0.1, {"red": ["crimson"], "star": ["pentagram"]}, wordnet=False)
    words = ["a", "red", "star"]
    replaced = {"a crimson star", "a red pentagram"}
    inserted = {" ".join(words[:i] + [s] + words[i:]) for s in ("crimson", "pentagram") for i in range(4)}
    swapped = {" ".join(words[:i] + [words[j]] + words[i + 1:j] + [words[i]] + words[j + 1:])
               for i, j in itertools.combinations(range(3), 2)}
    deleted = {" ".join(w for w, k in zip(words, keep) if k)
               for keep in itertools.product([0, 1], repeat=3) if any(keep)}
    seen = {view("A red star.", _rng(s)) for s in range(300)}
    assert seen <= replaced | inserted | swapped | deleted
    for op in (replaced, inserted - replaced, swapped, deleted - {"a red star"}):
        assert seen & op


def test_synonym_replacement_uses_the_table_and_skips_stop_words():
    table = {"a": ["one"], "red": ["crimson"], "star": ["pentagram", "asterisk"]}
    view = eda_view(synonyms=table, wordnet=False)
    for seed in range(20):
        out = eda._synonym_replacement(["a", "red", "star", "and", "a", "red", "ring"], 1, _rng(seed), view.synonyms)
        assert out.count("a") == 2 and "one" not in out  # stop words stay
        changed = [w for w in out if w not in ("a", "red", "star", "and", "ring")]
        assert len(set(changed)) == 1 and changed[0] in ("crimson", "pentagram", "asterisk")
        if changed[0] == "crimson":  # every occurrence of the chosen word is replaced
            assert out.count("crimson") == 2 and "red" not in out
    both = eda._synonym_replacement(["a", "red", "star"], 2, _rng(0), view.synonyms)
    assert both[1] == "crimson" and both[2] in ("pentagram", "asterisk")
    # no content word with a synonym: the caption is unchanged
    assert eda._synonym_replacement(["there", "is", "a", "ring"], 1, _rng(0), view.synonyms) == ["there", "is", "a",
                                                                                                 "ring"]


def test_random_insertion_inserts_synonyms_of_content_words():
    view = eda_view(synonyms={"a": ["one"], "star": ["pentagram"]}, wordnet=False)
    positions = set()
    for seed in range(40):
        out = eda._random_insertion(["a", "red", "star"], 2, _rng(seed), view.synonyms)
        assert len(out) == 5 and out.count("pentagram") == 2 and "one" not in out
        positions.add(out.index("pentagram"))
        assert [w for w in out if w != "pentagram"] == ["a", "red", "star"]
    assert positions == {0, 1, 2, 3}  # the end of the caption is a position too
    assert eda._random_insertion(["a", "ring"], 1, _rng(0), view.synonyms) == ["a", "ring"]


def test_random_swap_swaps_two_distinct_positions():
    words = ["w0", "w1", "w2", "w3", "w4"]
    for seed in range(30):
        out = eda._random_swap(words, 1, _rng(seed))
        assert sorted(out) == words and sum(a != b for a, b in zip(out, words)) == 2
    assert eda._random_swap(["star"], 3, _rng(0)) == ["star"]


def test_random_deletion_never_empties():
    words = ["a", "red", "star", "on", "grey"]
    for seed in range(30):
        out = eda._random_deletion(words, 1.0, _rng(seed))
        assert len(out) == 1 and out[0] in words
        assert eda._random_deletion(words, 0.0, _rng(seed)) == words
    assert eda._random_deletion(["star"], 1.0, _rng(0)) == ["star"]
    view = eda_view(alpha=1.0, wordnet=False)
    assert all(view(c, _rng(s)) for c in CAPTIONS for s in range(5))


def test_short_and_function_word_captions_still_give_strings():
    view = eda_view()
    for seed in range(20):
        assert view("star", _rng(seed)) in ("star", "pentagram", "starburst", "star pentagram", "pentagram star",
                                             "star starburst", "starburst star")
        out = view("There is a.", _rng(seed)).split()  # only a swap or a deletion can change it
        assert out and set(out) <= {"there", "is", "a"} and len(out) <= 3
    assert view("", _rng(0)) == "" and view(" ?! ", _rng(0)) == ""


def test_n_grows_with_alpha_and_caption_length():
    view = eda_view(alpha=0.5, synonyms={}, wordnet=False)
    words = [f"w{i}" for i in range(10)]
    # alpha 0.5 on 10 words: n = 5 swaps, so (almost surely) more than two positions move
    moved = [sum(a != b for a, b in zip(view(" ".join(words), _rng(s)).split(), words)) for s in range(40)]
    assert max(moved) > 2


def _content_words(texts) -> set[str]:
    return {w for t in texts for w in _words(re.sub(r"\{[a-z0-9]*\}", " ", t)) if w not in eda.STOP_WORDS}


def _world_texts() -> list[str]:
    shapes_captions = [synth.render_sample(seed, "train", i)[1] for seed in (0, 1) for i in range(100)]
    concepts = longtail.world_concepts(longtail.MAX_CONCEPTS)
    longtail_captions = [c for concept in concepts[::7] for c in longtail.caption_pool(concept)]
    vocab = (list(DEFAULT_TEMPLATES) + list(synth.SHAPES) + [n for _, names in synth.COLOURS.values() for n in names]
             + list(synth._ONE) + list(synth._TWO) + [name for _, name in synth._BACKGROUNDS]
             + ["small medium large"] + list(longtail.MODIFIERS) + list(longtail.CAPTION_TEMPLATES))
    return shapes_captions + longtail_captions + vocab


def test_table_covers_every_content_word_of_the_embedded_worlds():
    table = load_synonyms()
    missing = sorted(_content_words(_world_texts()) - set(table))
    assert not missing, f"add these words to synonyms.json: {missing}"
    for word in list(synth.SHAPES) + [n for _, names in synth.COLOURS.values() for n in names] + \
            list(longtail.MODIFIERS) + ["photo", "picture", "image", "background", "medium"]:
        assert table[word], word


def test_table_synonyms_keep_the_class():
    """A shape's synonyms name no other shape; a colour word's synonyms name no word of another colour."""
    table = load_synonyms()
    for shape in synth.SHAPES:
        for syn in table[shape]:
            assert not set(syn.split()) & (set(synth.SHAPES) - {shape}), (shape, syn)
    group = {n: colour for colour, (_, names) in synth.COLOURS.items() for n in names}
    for word, colour in group.items():
        for syn in table[word]:
            others = {w for w in syn.split() if w in group and group[w] != colour}
            assert not others, (word, syn)
    for size in ("small", "medium", "large"):
        assert not set(table[size]) & {"small", "medium", "large"}


def test_load_synonyms_cleans_and_reads_files(tmp_path):
    f = tmp_path / "syn.json"
    f.write_text(json.dumps({"Star": ["Pentagram!", "star", "pentagram", "five-point star"], "ring": []}))
    assert load_synonyms(f) == {"star": ("pentagram", "five point star"), "ring": ()}
    view = eda_view(synonyms=str(f), wordnet=False)
    assert view.synonyms("star") == ("pentagram", "five point star") and view.synonyms("zebra") == ()


@pytest.mark.parametrize("content, match", [(None, "cannot read"), ("{not json", "not valid JSON"),
                                            ("[1, 2]", "JSON object"), ('{"star": "pentagram"}', "list of strings"),
                                            ('{"star": [1]}', "list of strings")])
def test_bad_synonym_tables_are_one_line_errors(tmp_path, content, match):
    f = tmp_path / "syn.json"
    if content is not None:
        f.write_text(content)
    with pytest.raises(ConfigError, match=match):
        load_synonyms(f)


@pytest.mark.parametrize("alpha", [-0.1, 1.5, "0.1", float("inf")])
def test_eda_view_rejects_bad_alpha(alpha):
    with pytest.raises(ConfigError, match="alpha"):
        eda_view(alpha)


def test_without_wordnet_words_missing_from_the_table_have_no_synonyms():
    view = eda_view(synonyms={"star": ["pentagram"]}, wordnet=False)
    assert view.synonyms("zebra") == () and view.synonyms("star") == ("pentagram",)
    assert view("zebra", _rng(0)) == "zebra"
