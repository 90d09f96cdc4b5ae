"""Image sources: ImageFolder, WebDataset tar shards, file lists; preprocessing; bad input."""

from __future__ import annotations

import io
import struct
import zlib
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from revq.data.images import Record, decode_record, open_image_source
from revq.errors import RevqError

R = 32


def rgb(w: int, h: int, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8), "RGB")


def encoded(image: Image.Image, fmt: str = "PNG", **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def decode(data: bytes, **kwargs):
    return decode_record(Record(0, "k", data, 3), resolution=kwargs.pop("resolution", R), **kwargs)


# ---------------------------------------------------------------------- preprocessing
def test_centre_crop_without_resize_is_exact():
    image = rgb(2 * R, R)
    out = decode(encoded(image))
    assert out.skipped is None and out.converted == [] and out.label == 3
    np.testing.assert_array_equal(out.images[0], np.asarray(image)[:, R // 2 : R // 2 + R])


def test_short_side_resize_is_antialiased_then_centre_cropped():
    image = rgb(4 * R, 2 * R)  # short side 2R -> R, long side 2R -> crop R/2..3R/2
    out = decode(encoded(image)).images[0]
    reference = np.asarray(image.resize((2 * R, R), Image.Resampling.BICUBIC))[:, R // 2 : R // 2 + R]
    np.testing.assert_array_equal(out, reference)
    # antialiasing: random noise averaged down has much lower variance than point sampling
    assert out.std() < np.asarray(image).std() * 0.8


def test_flip_copy_follows_original():
    out = decode(encoded(rgb(R, R)), flip=True)
    assert len(out.images) == 2
    np.testing.assert_array_equal(out.images[1], out.images[0][:, ::-1])


# ---------------------------------------------------------------------- bad inputs
def test_grayscale_converted():
    gray = Image.fromarray(np.full((R, R), 100, np.uint8), "L")
    out = decode(encoded(gray, "JPEG"))
    assert out.images[0].shape == (R, R, 3) and "grayscale -> RGB" in out.converted
    assert np.all(np.abs(out.images[0].astype(int) - 100) <= 2)


def test_cmyk_converted():
    out = decode(encoded(rgb(R, R).convert("CMYK"), "JPEG"))
    assert out.skipped is None and out.images[0].shape == (R, R, 3) and "CMYK -> RGB" in out.converted


def test_rgba_composited_on_white():
    array = np.zeros((R, R, 4), np.uint8)
    array[..., 0] = 255  # red, fully transparent on the left half
    array[:, R // 2 :, 3] = 255
    out = decode(encoded(Image.fromarray(array, "RGBA")))
    image = out.images[0]
    assert any("alpha" in c for c in out.converted)
    np.testing.assert_array_equal(image[:, : R // 2], 255)  # white background
    assert (image[:, R // 2 :] == np.array([255, 0, 0], np.uint8)).all()


def test_palette_with_transparency_converted():
    image = rgb(R, R).convert("P")
    image.info["transparency"] = 0
    out = decode(encoded(image, transparency=0))
    assert out.skipped is None and out.images[0].shape == (R, R, 3)


def test_16bit_scaled_not_clipped():
    array = np.zeros((R, R), np.uint16)
    array[:, : R // 2] = 65535
    array[:, R // 2 :] = 32896  # 128 * 257
    out = decode(encoded(Image.fromarray(array)))
    assert any("16-bit" in c for c in out.converted), out.converted
    image = out.images[0]
    assert np.all(image[:, : R // 2] == 255) and np.all(image[:, R // 2 :] == 128)


def test_too_small_upscaled_or_skipped():
    data = encoded(rgb(R // 2, R // 2))
    out = decode(data)
    assert out.images[0].shape == (R, R, 3) and any("upscaled" in c for c in out.converted)
    out = decode(data, small="skip")
    assert out.images == [] and out.skipped.startswith("too small")


def test_truncated_image_skipped():
    data = encoded(rgb(4 * R, 4 * R, seed=1), "JPEG", quality=95)
    out = decode(data[: len(data) // 2])
    assert out.images == [] and "truncated" in out.skipped


def test_non_image_skipped():
    out = decode(b"this is a text file, not an image")
    assert out.images == [] and out.skipped.startswith("not an image")


def test_decompression_bomb_skipped_before_decoding():
    out = decode(encoded(rgb(200, 200)), max_pixels=10_000)
    assert out.images == [] and out.skipped.startswith("decompression bomb")
    # a tiny file declaring a 20000 x 20000 image (the classic bomb) is refused from its
    # header alone, with the default limit, before any pixel is decompressed
    data = bytearray(encoded(rgb(8, 8)))
    data[16:24] = struct.pack(">II", 20000, 20000)  # IHDR width, height
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    out = decode(bytes(data))
    assert out.images == [] and out.skipped.startswith("decompression bomb"), out.skipped


# ---------------------------------------------------------------------- sources
def _folder(tmp_path: Path) -> Path:
    root = tmp_path / "folder"
    for c, name in enumerate(["b_cls", "a_cls"]):
        (root / name / "sub").mkdir(parents=True)
        for i in range(3):
            rgb(R + 8, R, seed=10 * c + i).save(root / name / f"{i}.png")
        rgb(R, R, seed=99 + c).save(root / name / "sub" / "z.jpg")
    (root / "a_cls" / "broken.jpg").write_bytes(b"garbage")
    (root / "a_cls" / "notes.txt").write_text("ignored: not an image extension")
    return root


def test_image_folder_labels_order_and_skips(tmp_path):
    root = _folder(tmp_path)
    source = open_image_source(root, resolution=R)
    items = list(source)
    keys = [k for k, _, _ in items]
    assert keys == ["a_cls/0.png", "a_cls/1.png", "a_cls/2.png", "a_cls/sub/z.jpg",
                    "b_cls/0.png", "b_cls/1.png", "b_cls/2.png", "b_cls/sub/z.jpg"]
    assert [lab for _, _, lab in items] == [0] * 4 + [1] * 4
    assert source.class_names() == ["a_cls", "b_cls"]
    assert source.skipped == [("a_cls/broken.jpg", source.skipped[0][1])]
    assert "1 skipped" in source.summary()
    image = items[0][1]
    assert image.shape == (3, R, R) and image.dtype == torch.float32 and 0 <= image.min() and image.max() <= 1
    assert [k for k, _, _ in open_image_source(root, resolution=R)] == keys  # deterministic
    limited = list(open_image_source(root, resolution=R, limit=5, flip=True))
    assert len(limited) == 10 and limited[1][0] == "a_cls/0.png#flip"


def _write_shard(path: Path, samples: list[tuple[str, dict[str, bytes]]]) -> None:
    mode = "w:gz" if path.name.endswith(".gz") else "w"
    with tarfile.open(path, mode) as archive:
        for key, parts in samples:
            for ext, data in parts.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                archive.addfile(info, io.BytesIO(data))


def test_webdataset_shards_streamed_in_order(tmp_path):
    shard0, shard1 = tmp_path / "d-000000.tar", tmp_path / "d-000001.tar.gz"
    _write_shard(shard0, [
        ("s0", {"jpg": encoded(rgb(R, R, 1), "JPEG"), "cls": b"7"}),
        ("s1", {"txt": b"caption only"}),
        ("s2", {"png": encoded(rgb(R, R, 2)), "cls": b"3"}),
    ])
    _write_shard(shard1, [("dir/s3", {"webp": encoded(rgb(R, R, 3), "WEBP")})])
    source = open_image_source(str(tmp_path / "d-*.tar*"), resolution=R)
    items = list(source)
    assert [(k, lab) for k, _, lab in items] == [("s0", 7), ("s2", 3), ("dir/s3", -1)]
    assert source.skipped == [("s1", "no image in sample (parts: txt)")]
    assert sorted(tmp_path.iterdir()) == [shard0, shard1]  # nothing unpacked
    # a folder of shards reads its shards, in name order
    assert [k for k, _, _ in open_image_source(tmp_path, resolution=R)] == ["s0", "s2", "dir/s3"]


def test_truncated_shard_keeps_earlier_samples(tmp_path):
    good = tmp_path / "good.tar.gz"
    _write_shard(good, [(f"s{i}", {"png": encoded(rgb(R, R, i)), "cls": b"1"}) for i in range(20)])
    data = good.read_bytes()
    bad = tmp_path / "bad.tar.gz"
    bad.write_bytes(data[: len(data) // 2])
    source = open_image_source([bad, good], resolution=R)
    items = list(source)
    assert 20 < len(items) < 40 and [k for k, _, _ in items[-20:]] == [f"s{i}" for i in range(20)]
    assert len(source.skipped) == 1 and "truncated" in source.skipped[0][1]


def test_file_list_and_single_files(tmp_path):
    root = _folder(tmp_path)
    listing = tmp_path / "list.txt"
    listing.write_text("# comment\nfolder/b_cls/1.png\nfolder/a_cls/0.png\n")
    items = list(open_image_source(listing, resolution=R))
    assert [(k, lab) for k, _, lab in items] == [("1.png", -1), ("0.png", -1)]
    assert len(list(open_image_source([root / "a_cls" / "0.png"], resolution=R))) == 1


def test_missing_input_is_a_user_error(tmp_path):
    with pytest.raises(RevqError, match="does not exist"):
        open_image_source(tmp_path / "nope", resolution=R)
    (tmp_path / "x.csv").write_text("a")
    with pytest.raises(RevqError, match="neither an image"):
        open_image_source(tmp_path / "x.csv", resolution=R)
