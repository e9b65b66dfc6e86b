"""The one data path of training (``PairData``, ``epoch_loader``) and the trainer's pluggable objective."""
import pytest
import torch

from clipguard.data import Manifest, read_manifest
from clipguard.data.dataset import load_rgb
from clipguard.errors import ConfigError, ManifestError
from clipguard.models import create_model
from clipguard.train import ClipTerm, Objective, PairData, TrainConfig, Views, epoch_loader, train_clip
from clipguard.train.data import collate_pairs
from tests_helpers import make_bad_manifest

CFG = TrainConfig(epochs=2, batch_size=16, warmup_steps=2, seed=0)


def _head(world, split: str = "train", n: int = 64) -> Manifest:
    """The first ``n`` rows of a split of the tiny world."""
    m = read_manifest(world / split / "manifest.parquet")
    return Manifest(m.df.head(n).reset_index(drop=True), m.root, m.path)


def _flip(img: torch.Tensor) -> torch.Tensor:
    """A stand-in image view: a random horizontal flip plus noise, from torch's global generator."""
    x = img.float() / 255
    if torch.rand(()) < 0.5:
        x = x.flip(-1)
    return (x + 0.05 * torch.randn_like(x)).clamp(0, 1)


def _drop_word(caption: str, gen) -> str:
    """A stand-in caption view: drop one random word."""
    words = caption.split()
    del words[int(gen.integers(len(words)))]
    return " ".join(words)


def test_an_item_without_views_is_the_models_preprocess(tiny_world):
    b = create_model("tiny-rn", seed=0)
    m = _head(tiny_world, n=8)
    for cache in ("memory", "stream"):
        data = PairData(m, b, cache=cache, progress=False)
        assert data.cache == cache and len(data) == 8 and data.rows == list(range(8))
        for j in (0, 5):
            item = data[(3, j)]
            assert torch.equal(item["image"], b.preprocess(load_rgb(m.image_path(j))))
            assert torch.equal(item["text"], b.tokenizer([m.df["caption"].iat[j]])[0])
            assert set(item) == {"index", "image", "text"} and item["index"] == j
    assert PairData(m, b, cache="auto", cache_max_bytes=8 * 3 * 32 * 32, progress=False).cache == "memory"
    assert PairData(m, b, cache="auto", cache_max_bytes=8 * 3 * 32 * 32 - 1, progress=False).cache == "stream"


def test_streamed_and_cached_training_give_the_same_weights(tiny_world, tmp_path):
    m = _head(tiny_world)
    states = []
    for cache, workers in (("memory", 0), ("stream", 0), ("stream", 2)):
        b = create_model("tiny-rn", seed=0)
        data = PairData(m, b, cache=cache, progress=False)
        res = train_clip(b, data, CFG, tmp_path / f"{cache}{workers}", workers=workers, progress=False)
        assert res.epochs_run == 2 and res.history[0]["loss_clip"] == res.history[0]["loss"]
        states.append(b.model.state_dict())
    for other in states[1:]:
        for k in states[0]:
            assert torch.equal(states[0][k], other[k]), k


def test_views_are_seeded_per_epoch_and_row(tiny_world):
    b = create_model("tiny-rn", seed=0)
    m = _head(tiny_world, n=32)
    views = Views(image_aug=_flip, text_aug=_drop_word)
    one, two = (PairData(m, b, views=views, seed=7, cache=c, progress=False) for c in ("memory", "stream"))
    a, a2 = one[(1, 4)], two[(1, 4)]
    assert set(a) == {"index", "image", "text", "image_aug", "text_aug"}
    for k in a:
        assert torch.equal(torch.as_tensor(a[k]), torch.as_tensor(a2[k])), k
    assert torch.equal(a["image"], b.preprocess(load_rgb(m.image_path(4))))  # the primary view is untouched
    later = one[(2, 4)]
    assert not torch.equal(a["image_aug"], later["image_aug"]) and torch.equal(a["image"], later["image"])
    assert not torch.equal(one[(1, 4)]["image_aug"], PairData(m, b, views=views, seed=8, progress=False)[(1, 4)]["image_aug"])
    # loaded in batches by worker processes, in the epoch's order: the same views as item by item
    batch = next(iter(epoch_loader(one, 1, batch_size=8, seed=0, workers=2)))
    direct = collate_pairs([one[(1, one.rows.index(int(r)))] for r in batch["index"]])
    for k in ("image", "image_aug", "text_aug"):
        assert torch.equal(batch[k], direct[k]), k
    # the caller's generator is neither read nor moved
    torch.manual_seed(0)
    expected = torch.rand(2)
    torch.manual_seed(0)
    one[(1, 3)]
    assert torch.equal(torch.rand(2), expected)


class _HeadTerm(torch.nn.Module):
    """A term with parameters of its own: a linear head on the raw image embedding (cross-entropy)."""

    name = "head"
    needs = frozenset({"image_raw", "label"})

    def __init__(self, dim: int, n_classes: int) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(dim, n_classes)

    def forward(self, inputs) -> torch.Tensor:
        return torch.nn.functional.cross_entropy(self.linear(inputs["image_raw"]), inputs["label"])

    def describe(self) -> dict:
        return {"classes": self.linear.out_features}


def test_a_term_with_parameters_is_optimised_and_needs_decide_the_encoding(tiny_world, tmp_path):
    b = create_model("tiny-rn", seed=0)
    m = _head(tiny_world, "test")
    data = PairData(m, b, views=Views(labels=True), progress=False)
    assert data[(0, 0)]["label"].dtype == torch.long
    with torch.random.fork_rng():
        torch.manual_seed(0)
        head = _HeadTerm(b.config["embed_dim"], int(m.df["label"].max()) + 1)
    before = head.linear.weight.detach().clone()
    calls = {"text": 0}
    encode_text = b.model.encode_text

    def counting(tokens):
        calls["text"] += 1
        return encode_text(tokens)

    b.model.encode_text = counting
    res = train_clip(b, data, CFG, tmp_path / "h", objective=Objective([(1.0, head)]), progress=False)
    assert not torch.equal(before, head.linear.weight) and calls["text"] == 0  # the head is trained; no text
    assert res.history[-1]["loss_head"] < res.history[0]["loss_head"]
    state = torch.load(tmp_path / "h" / "checkpoints" / "state.pt", weights_only=True)
    assert torch.equal(state["terms"]["0:head"]["linear.weight"], head.linear.weight.cpu())

    class NeedsAug(ClipTerm):
        name = "ssl"
        needs = frozenset({"image", "image_aug"})

    with pytest.raises(ConfigError, match=r"^loss term 'ssl' needs 'image_aug', which the training data does not "
                                          r"carry; build the PairData with Views\(image_aug=...\)$"):
        train_clip(b, data, CFG, tmp_path / "x", objective=Objective([(1.0, NeedsAug())]), progress=False)
    assert not (tmp_path / "x").exists()


def test_bad_data_is_refused_with_one_line(tiny_world, tmp_path):
    b = create_model("tiny-rn", seed=0)
    with pytest.raises(ConfigError, match=r"manifest.parquet: labelled training needs a 'label' column "
                                          r"\(int class index\)"):
        PairData(_head(tiny_world, n=4), b, views=Views(labels=True), progress=False)
    m = read_manifest(make_bad_manifest(tmp_path, n_good=0))
    for cache in ("memory", "stream"):
        with pytest.raises(ManifestError, match=r"no usable image-caption pair, all 3 rows skipped \(1 missing "
                                                r"image, 1 empty caption, 1 unreadable image\)"):
            PairData(m, b, cache=cache, progress=False)
    with pytest.raises(ConfigError, match="unknown cache 'disk'; choose one of: auto, memory, stream"):
        PairData(m, b, cache="disk")


def test_a_streamed_unreadable_image_is_dropped_and_logged_once(tmp_path):
    b = create_model("tiny-rn", seed=0)
    m = read_manifest(make_bad_manifest(tmp_path, n_good=3))  # rows 0-2 good, 3 missing, 4 corrupt, 5 empty
    data = PairData(m, b, cache="stream", progress=False)
    assert data.rows == [0, 1, 2, 4] and len(data.skip_log) == 2
    for _ in range(2):
        batch = next(iter(epoch_loader(data, 0, batch_size=4, seed=0)))
        data.record_errors(batch)
        assert sorted(batch["index"].tolist()) == [0, 1, 2] and batch["image"].shape == (3, 3, 32, 32)
    assert data.skip_log.counts() == {"missing image": 1, "empty caption": 1, "unreadable image": 1}
    cached = PairData(m, b, cache="memory", progress=False)
    assert cached.rows == [0, 1, 2] and cached.skip_log.counts() == data.skip_log.counts()
