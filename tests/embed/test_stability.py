import numpy as np
import pytest
import torch
from PIL import Image

from clipguard.data import SkipLog, read_manifest, write_manifest
from clipguard.embed import (BLEND_WEIGHT, NOISE_SD, PerturbedImages, perturb_image, perturbation_stability,
                             read_stability, write_stability)
from clipguard.errors import ConfigError
from clipguard.models import create_model


def _manifest(world, tmp_path, n=12):
    df = read_manifest(world / "train" / "manifest.parquet").df.iloc[:n].copy()
    df["image"] = [str(world / "train" / p) for p in df["image"]]
    return read_manifest(write_manifest(df, tmp_path / "m.parquet", sources=[world / "train" / "manifest.parquet"]))


def test_noise_is_seeded_per_row_and_has_the_stated_strength():
    img = Image.fromarray(np.full((64, 64, 3), 128, np.uint8))
    a = np.asarray(perturb_image(img, "noise", seed=0, row=3), dtype=np.float64)
    assert np.array_equal(a, np.asarray(perturb_image(img, "noise", seed=0, row=3)))
    assert not np.array_equal(a, np.asarray(perturb_image(img, "noise", seed=0, row=4)))
    assert abs((a - 128).std() - NOISE_SD) < 1.0  # mid-grey: the clip at 0/255 is never reached
    half = np.asarray(perturb_image(img, "noise", seed=0, row=3, noise_sd=NOISE_SD / 2), dtype=np.float64)
    assert abs((half - 128).std() - NOISE_SD / 2) < 0.5


def test_blur_leaves_a_flat_image_alone_and_smooths_an_edge():
    flat = Image.fromarray(np.full((64, 64, 3), 90, np.uint8))
    assert np.array_equal(np.asarray(perturb_image(flat, "blur")), np.asarray(flat))
    edge = np.zeros((64, 64, 3), np.uint8)
    edge[:, 32:] = 255
    out = np.asarray(perturb_image(Image.fromarray(edge), "blur"))
    assert 0 < out[10, 31, 0] < 255 and 0 < out[10, 32, 0] < 255  # both sides of the edge are now mixed


def test_blend_superimposes_the_other_image_with_its_weight():
    a = Image.fromarray(np.full((8, 8, 3), (200, 0, 40), np.uint8))
    b = Image.fromarray(np.full((16, 16, 3), (0, 100, 240), np.uint8))  # resized to the image's size
    out = np.asarray(perturb_image(a, "blend", other=b), dtype=np.float64)
    assert out.shape == (8, 8, 3)
    expect = (1 - BLEND_WEIGHT) * np.array([200, 0, 40]) + BLEND_WEIGHT * np.array([0, 100, 240])
    assert np.abs(out - expect).max() <= 1.0  # PIL rounds to 8 bits
    with pytest.raises(ConfigError, match="other="):
        perturb_image(a, "blend")


def test_the_blend_partner_is_another_seeded_image_or_grey(tiny_world, tmp_path):
    m = _manifest(tiny_world, tmp_path, n=6)
    ds = PerturbedImages(m, lambda im: torch.from_numpy(np.asarray(im, dtype=np.float32)), ("blend",), seed=0,
                         noise_sd=NOISE_SD, skip_log=SkipLog())
    originals = [np.asarray(ds.images[j]["image"]) for j in range(6)]
    for j in range(6):
        p = np.asarray(ds.partner(j, j, (64, 64)))
        same = [k for k in range(6) if np.array_equal(p, originals[k])]
        assert same and j not in same  # one of the set's images, never the item itself
        assert np.array_equal(p, np.asarray(ds.partner(j, j, (64, 64))))  # seeded by (seed, row)
    item = ds[2]
    assert item["image"].shape[0] == 2  # the image, then its blended copy
    one = _manifest(tiny_world, tmp_path / "one", n=1)
    lone = PerturbedImages(one, None, ("blend",), seed=0, noise_sd=NOISE_SD, skip_log=SkipLog())
    assert np.asarray(lone.partner(0, 0, (5, 4))).tolist() == np.full((4, 5, 3), 128).tolist()


def test_stability_is_the_cosine_of_the_two_embeddings(tiny_world, tmp_path):
    torch.manual_seed(0)
    b = create_model("tiny-rn")
    m = _manifest(tiny_world, tmp_path)
    frame, skips = perturbation_stability(b, m, kinds=("noise", "blur"), batch_size=5, progress=False)
    assert list(frame.columns) == ["id", "row", "noise_stability", "blur_stability"] and len(skips) == 0
    assert frame["row"].tolist() == list(range(12)) and frame["id"].tolist() == m.df["id"].astype(str).tolist()
    # by hand for row 7: embed the image and its noisy copy, cosine of the unit vectors
    img = Image.open(m.image_path(7)).convert("RGB")
    with torch.no_grad():
        e = b.model.encode_image(torch.stack([b.preprocess(img), b.preprocess(perturb_image(img, "noise", row=7))]))
    e = torch.nn.functional.normalize(e, dim=-1)
    assert frame["noise_stability"].iat[7] == pytest.approx(float(e[0] @ e[1]), abs=1e-5)
    assert (frame[["noise_stability", "blur_stability"]].to_numpy() <= 1 + 1e-6).all()
    again, _ = perturbation_stability(b, m, kinds=("noise",), batch_size=12, progress=False)
    assert np.allclose(again["noise_stability"], frame["noise_stability"], atol=1e-5)  # batching does not matter


def test_bad_rows_are_listed_not_dropped_silently(tmp_path):
    from tests_helpers import make_bad_manifest

    frame, skips = perturbation_stability(create_model("tiny-rn"), read_manifest(make_bad_manifest(tmp_path)),
                                          kinds=("noise",), progress=False)
    assert len(frame) == 1 and len(skips) == 3
    assert skips.counts() == {"missing image": 1, "empty caption": 1, "unreadable image": 1}


def test_unknown_perturbation_is_refused_with_the_choices(tiny_world, tmp_path):
    with pytest.raises(ConfigError, match="noise, blur, blend"):
        perturbation_stability(create_model("tiny-rn"), _manifest(tiny_world, tmp_path), kinds=("jpeg",))
    with pytest.raises(ConfigError, match="noise_sd"):
        perturbation_stability(create_model("tiny-rn"), _manifest(tiny_world, tmp_path), noise_sd=-1.0)
    with pytest.raises(ConfigError, match="at least one"):
        perturbation_stability(create_model("tiny-rn"), _manifest(tiny_world, tmp_path), kinds=())


def test_worker_processes_give_the_same_stabilities(tiny_world, tmp_path):
    torch.manual_seed(0)
    b, m = create_model("tiny-rn"), _manifest(tiny_world, tmp_path)
    here, _ = perturbation_stability(b, m, kinds=("noise",), batch_size=4, progress=False)
    workers, _ = perturbation_stability(b, m, kinds=("noise",), batch_size=4, num_workers=2, progress=False)
    assert workers["row"].tolist() == here["row"].tolist()
    assert np.allclose(workers["noise_stability"], here["noise_stability"], atol=1e-6)
    with pytest.raises(ConfigError, match="num_workers"):
        perturbation_stability(b, m, num_workers=-1)


def test_the_record_is_written_and_read_back(tiny_world, tmp_path):
    torch.manual_seed(0)
    frame, _ = perturbation_stability(create_model("tiny-rn"), _manifest(tiny_world, tmp_path), kinds=("noise",),
                                      progress=False)
    path = write_stability(frame, tmp_path / "probe")
    assert path.name == "stability.parquet" and not list(path.parent.glob("*.tmp"))
    for source in (tmp_path / "probe", path):
        back = read_stability(source)
        assert back["id"].tolist() == frame["id"].tolist()
        assert np.array_equal(back["noise_stability"].to_numpy(), frame["noise_stability"].to_numpy())
    with pytest.raises(ConfigError, match="clipguard probe"):
        read_stability(tmp_path / "nowhere")
    frame[["id", "row"]].to_parquet(tmp_path / "bad.parquet")
    with pytest.raises(ConfigError, match="noise_stability"):
        read_stability(tmp_path / "bad.parquet")


@pytest.mark.gpu
def test_on_a_gpu_the_stabilities_are_the_cpu_ones(tiny_world, tmp_path):
    """On CUDA the workers send uint8 images and the GPU normalises them: the same stabilities as on the CPU."""
    torch.manual_seed(0)
    m = _manifest(tiny_world, tmp_path)
    cpu, _ = perturbation_stability(create_model("tiny-rn"), m, batch_size=5, progress=False, device="cpu")
    gpu, _ = perturbation_stability(create_model("tiny-rn"), m, batch_size=5, num_workers=2, progress=False,
                                    device="cuda")
    assert gpu["row"].tolist() == cpu["row"].tolist()
    assert np.allclose(gpu[["noise_stability", "blur_stability"]], cpu[["noise_stability", "blur_stability"]],
                       atol=1e-4)
