"""Image collections: folders, list files, the built-in sources, preprocessing, loaders."""
from __future__ import annotations

import gzip
import struct
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
import torch

from vizcnn.core.errors import BadArgumentError, BadInputError
from vizcnn.io.sources import (FASHION_MNIST_ENV, SAMPLES_DIR, Skipped, collate, fashion_mnist_arrays, load, loader,
                               open_data, prepare)
from vizcnn.models import get_spec

RGB16 = SimpleNamespace(input_size=(3, 16, 16), mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))


def png(path: Path, value: int = 128, size=(20, 24)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.full((*size, 3), value, dtype=np.uint8))
    return path


def test_folder_any_depth_sorted_with_first_level_labels(tmp_path):
    png(tmp_path / "b_dogs" / "x.png")
    png(tmp_path / "b_dogs" / "deep" / "er" / "a.JPG")
    png(tmp_path / "a_cats" / "z.webp")
    png(tmp_path / "loose.bmp")
    png(tmp_path / ".hidden" / "h.png")
    png(tmp_path / "a_cats" / ".h.png")
    (tmp_path / "a_cats" / "notes.txt").write_text("not an image")
    source = open_data(tmp_path)
    rel = [Path(p).relative_to(tmp_path).as_posix() for p in source.paths]
    assert rel == ["a_cats/z.webp", "b_dogs/deep/er/a.JPG", "b_dogs/x.png", "loose.bmp"]
    assert source.classes == ["a_cats", "b_dogs"]
    assert [source.label(i) for i in range(4)] == [0, 1, 1, None]
    assert len(open_data(tmp_path, limit=2)) == 2
    (tmp_path / "empty").mkdir()
    with pytest.raises(BadInputError, match="no image files"):
        open_data(tmp_path / "empty")


def test_list_file(tmp_path):
    png(tmp_path / "imgs" / "one.png")
    png(tmp_path / "imgs" / "two words.png")
    absolute = png(tmp_path / "elsewhere" / "three.png")
    listing = tmp_path / "lists" / "files.txt"
    listing.parent.mkdir()
    listing.write_text(f"# a comment\n\n../imgs/one.png 3\n../imgs/two words.png\n{absolute}   7\n../imgs/gone.png\n")
    source = open_data(listing)
    assert [Path(p).name for p in source.paths] == ["one.png", "two words.png", "three.png", "gone.png"]
    assert [source.label(i) for i in range(4)] == [3, None, 7, None]
    assert Path(source.paths[0]).resolve() == (tmp_path / "imgs" / "one.png").resolve()
    batches = list(loader(source, RGB16, batch_size=3, num_workers=0))
    assert [b.index.tolist() for b in batches] == [[0, 1, 2], []]
    assert batches[1].x is None and batches[1].skipped[0].index == 3
    assert "no such file" in batches[1].skipped[0].reason
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing\n")
    with pytest.raises(BadInputError, match="names no images"):
        open_data(empty)


def test_workers_decode_the_same_batches_and_skip_bad_files(tmp_path):
    for i in range(7):
        png(tmp_path / f"{i}.png", value=30 * i)
    (tmp_path / "3b.png").write_bytes(b"garbage")
    png(tmp_path / "4b.png", size=(1, 1))  # too small to upscale to 16 px
    source = open_data(tmp_path)
    serial = list(loader(source, RGB16, batch_size=4, num_workers=0))
    parallel = list(loader(source, RGB16, batch_size=4, num_workers=2))
    assert [b.index.tolist() for b in serial] == [b.index.tolist() for b in parallel] == [[0, 1, 2, 3], [5, 7], [8]]
    for a, b in zip(serial, parallel):
        assert torch.equal(a.x, b.x) and a.skipped == b.skipped
    skipped = [s for b in serial for s in b.skipped]
    assert [s.index for s in skipped] == [4, 6] and "too small" in skipped[1].reason
    x = serial[0].x[1]
    torch.testing.assert_close(x, torch.full((3, 16, 16), (30 / 255 - 0.5) / 0.25))


def test_collate_drops_markers():
    batch = collate([(4, torch.zeros(1, 2, 2)), Skipped(5, "p", "bad"), (6, torch.ones(1, 2, 2))])
    assert batch.index.tolist() == [4, 6] and batch.x.shape == (2, 1, 2, 2) and len(batch) == 2
    assert batch.skipped == [Skipped(5, "p", "bad")]
    assert collate([Skipped(1, "p", "bad")]).x is None


def write_idx(folder: Path, prefix: str, images: np.ndarray, labels: np.ndarray, *, gz: bool) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    opener = gzip.open if gz else open
    suffix = ".gz" if gz else ""
    with opener(folder / f"{prefix}-images-idx3-ubyte{suffix}", "wb") as f:
        f.write(b"\x00\x00\x08\x03" + struct.pack(">3I", *images.shape) + images.tobytes())
    with opener(folder / f"{prefix}-labels-idx1-ubyte{suffix}", "wb") as f:
        f.write(b"\x00\x00\x08\x01" + struct.pack(">I", len(labels)) + labels.tobytes())


@pytest.mark.parametrize("gz", [False, True])
def test_fashion_mnist_from_idx_files(tmp_path, monkeypatch, gz):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (6, 28, 28), dtype=np.uint8)
    labels = np.array([9, 0, 1, 2, 3, 4], dtype=np.uint8)
    write_idx(tmp_path, "t10k", images, labels, gz=gz)
    monkeypatch.setenv(FASHION_MNIST_ENV, str(tmp_path))
    got, got_labels = fashion_mnist_arrays("test", limit=4)
    assert np.array_equal(got, images[:4]) and np.array_equal(got_labels, labels[:4])
    source = open_data("fashion-mnist")
    assert len(source) == 6 and source.name == "fashion-mnist:test" and source.describe(2) == "fashion-mnist:test#2"
    assert source.classes[source.label(0)] == "Ankle boot"
    # LeNet-5: padded with black to 32×32, as the sample checkpoint was trained
    shown, x = load(source, 0, get_spec("lenet5"))
    assert shown.shape == (32, 32, 1) and (shown[:2] == 0).all() and (shown[:, -2:] == 0).all()
    np.testing.assert_array_equal(shown[2:30, 2:30, 0], images[0] / np.float32(255))
    torch.testing.assert_close(x, (torch.from_numpy(shown).permute(2, 0, 1) - 0.5) / 0.5)
    # AlexNet: resized to 224×224 and repeated to three channels
    shown, x = load(source, 0, get_spec("alexnet"))
    assert shown.shape == (224, 224, 3) and x.shape == (3, 224, 224)
    assert np.array_equal(shown[..., 0], shown[..., 2])
    with pytest.raises(BadInputError, match=FASHION_MNIST_ENV):
        fashion_mnist_arrays("train")
    (tmp_path / f"t10k-images-idx3-ubyte{'.gz' if gz else ''}").write_bytes(b"\x00\x00\x08\x03\x00")
    with pytest.raises(BadInputError):
        open_data("fashion-mnist:test")


def test_fashion_mnist_missing_names_the_package(tmp_path, monkeypatch):
    import vizcnn.io.sources as data

    monkeypatch.delenv(FASHION_MNIST_ENV, raising=False)
    monkeypatch.setattr(data, "FASHION_MNIST_DIR", tmp_path / "absent")
    with pytest.raises(BadInputError, match="dataset-fashion-mnist"):
        open_data("fashion-mnist:train")


@pytest.mark.skipif(not Path("/usr/share/datasets/fashion-mnist").is_dir(),
                    reason="dataset-fashion-mnist not installed")
def test_installed_fashion_mnist(monkeypatch):
    monkeypatch.delenv(FASHION_MNIST_ENV, raising=False)
    source = open_data("fashion-mnist:train", limit=3)
    assert len(source) == 3 and source.images.shape == (3, 28, 28)
    images, labels = fashion_mnist_arrays("test")
    assert images.shape == (10000, 28, 28) and labels.max() == 9


def test_builtin_samples_and_single_images(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    source = open_data("samples")
    assert source.name == "samples" and len(source) >= 5
    assert all(Path(p).parent == SAMPLES_DIR and Path(p).suffix in (".jpg", ".png") for p in source.paths)
    one = open_data(png(tmp_path / "one.png"))
    assert len(one) == 1
    shown, x = prepare(np.zeros((40, 20, 3), np.float32), RGB16)
    assert shown.shape == (16, 16, 3) and x.shape == (3, 16, 16)


@pytest.mark.parametrize("data, error", [("nowhere", BadInputError), ("fashion-mnist:val", BadArgumentError),
                                         ("fashion-mnistx", BadArgumentError)])
def test_bad_data(tmp_path, monkeypatch, data, error):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(error, match="DATA"):
        open_data(data)


def test_bad_limits_and_loader_arguments(tmp_path):
    png(tmp_path / "a.png")
    for limit in (0, -1, 1.5, True):
        with pytest.raises(BadArgumentError):
            open_data(tmp_path, limit=limit)
    with pytest.raises(BadArgumentError):
        loader(open_data(tmp_path), RGB16, batch_size=0)
    with pytest.raises(BadArgumentError):
        loader(open_data(tmp_path), RGB16, num_workers=-1)
