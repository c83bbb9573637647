"""The LFW evaluation commands (evaluate_lfw, evaluate_fusion, fit_fusion) on a tiny LFW-shaped
folder made of the fixture photos: 2 folds of 4 same-person and 4 different-person pairs, real
detector, FaceNet and dlib's descriptor."""

import io
import json
import shutil

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from recognition import pipelines
from recognition.engine.pipeline import facenet_config

from .conftest import PEOPLE, PROBES

# LFW's layout: images_deepfunneled/Name/Name_0001.jpg, numbered in this order.
PHOTOS = {
    "Barack_Obama": [
        PEOPLE / "barack_obama/obama.jpg",
        PEOPLE / "barack_obama/obama2.jpg",
        PEOPLE / "barack_obama/obama3.jpg",
        PROBES / "obama1.jpg",
    ],
    "Joe_Biden": [PEOPLE / "joe_biden/biden.jpg", PEOPLE / "joe_biden/biden2.jpg"],
    "Kit_Harington": [
        PEOPLE / "kit_harington/john1.jpeg",
        PEOPLE / "kit_harington/john2.jpeg",
        PROBES / "johnsnow_test1.jpg",
    ],
    "Rose_Leslie": [PEOPLE / "rose_leslie/img1.jpg", PEOPLE / "rose_leslie/img2.jpg"],
    "Alex_Lacamoire": [PEOPLE / "alex_lacamoire/img1.jpg", PEOPLE / "alex_lacamoire/alex-lacamoire.png"],
    "Angelina_Jolie": [PEOPLE / "angelina_jolie/1.jpg"],
    "Kate_Siegel": [PEOPLE / "kate_siegel/1.jpg"],
    "Paul_Rudd": [PEOPLE / "paul_rudd/1.jpg"],
    "Shea_Whigham": [PEOPLE / "shea_whigham/1.jpg"],
    "Lin_Manuel_Miranda": [PEOPLE / "lin_manuel_miranda/lin-manuel-miranda.png"],
}

# pairs.txt: per fold, 4 same-person lines "Name i j", then 4 different-person lines "Name1 i Name2 j".
FOLDS = [
    (
        ["Barack_Obama\t1\t2", "Joe_Biden\t1\t2", "Kit_Harington\t1\t2", "Rose_Leslie\t1\t2"],
        [
            "Barack_Obama\t1\tJoe_Biden\t2",
            "Kit_Harington\t1\tRose_Leslie\t1",
            "Angelina_Jolie\t1\tKate_Siegel\t1",
            "Paul_Rudd\t1\tShea_Whigham\t1",
        ],
    ),
    (
        ["Barack_Obama\t3\t4", "Alex_Lacamoire\t1\t2", "Kit_Harington\t2\t3", "Barack_Obama\t1\t3"],
        [
            "Alex_Lacamoire\t1\tLin_Manuel_Miranda\t1",
            "Joe_Biden\t1\tPaul_Rudd\t1",
            "Rose_Leslie\t2\tAngelina_Jolie\t1",
            "Barack_Obama\t4\tKit_Harington\t3",
        ],
    ),
]


def tiny_lfw(root):
    """The fixture photos as an LFW folder (18 images, 16 pairs in 2 folds); returns ``root``."""
    for name, photos in PHOTOS.items():
        (root / "images_deepfunneled" / name).mkdir(parents=True)
        for n, photo in enumerate(photos, 1):
            shutil.copy(photo, root / "images_deepfunneled" / name / f"{name}_{n:04d}.jpg")
    lines = [f"{len(FOLDS)}\t{len(FOLDS[0][0])}"] + [line for same, different in FOLDS for line in same + different]
    (root / "pairs.txt").write_text("\n".join(lines) + "\n")
    return root


def run(command, *args):
    out = io.StringIO()
    call_command(command, *map(str, args), stdout=out)
    return out.getvalue()


def cache_state(cache):
    """{file: modification time} of the LFW caches (not dlib's converted network)."""
    return {f.name: f.stat().st_mtime_ns for f in cache.glob("lfw-*.npz")}


def test_evaluate_lfw_ranks_every_same_person_pair_above_every_different_people_pair_and_reuses_its_cache(tmp_path):
    lfw, cache = tiny_lfw(tmp_path / "lfw"), tmp_path / "cache"
    printed = run("evaluate_lfw", lfw, "--cache-dir", cache, "--json", tmp_path / "first.json")
    first = json.loads((tmp_path / "first.json").read_text())
    assert "16 pairs, 18 images" in printed and (first["pairs"], first["images"]) == (16, 18)
    for result in (first, first["no_flip"], first["flip"]):
        assert len(result["fold_accuracies"]) == 2 and 0.0 <= result["accuracy_mean"] <= 1.0
        assert result["auc"] == 1.0  # FaceNet: every same-person pair above every pair of two people
    assert first["accuracy_mean"] >= 0.75  # thresholds learned on the other fold's 8 pairs
    assert len(cache_state(cache)) == 1

    written = cache_state(cache)
    run("evaluate_lfw", lfw, "--cache-dir", cache, "--json", tmp_path / "again.json")
    assert json.loads((tmp_path / "again.json").read_text()) == first and cache_state(cache) == written

    # the first 2 same-person and 2 different-people pairs of each of the 2 folds, from the cache
    run("evaluate_lfw", lfw, "--cache-dir", cache, "--pairs-per-fold", 2, "--json", tmp_path / "quick.json")
    assert json.loads((tmp_path / "quick.json").read_text())["pairs"] == 8 and cache_state(cache) == written


def test_evaluate_fusion_compares_facenet_dlib_and_their_fusion_and_reuses_its_caches(tmp_path):
    lfw, cache = tiny_lfw(tmp_path / "lfw"), tmp_path / "cache"
    options = ["--cache-dir", cache, "--variants", "chip", "flip", "--facenet-margins", 0.1, "--timing-faces", 2]
    printed = run("evaluate_fusion", lfw, *options, "--json", tmp_path / "first.json")
    first = json.loads((tmp_path / "first.json").read_text())
    assert "16 pairs, 18 images" in printed and "What each improvement gave" in printed
    rows = {row["label"]: row for row in first["rows"] + first["variants"]}
    for label in ("FaceNet (no flip)", "dlib (landmarks alignment)", "fused: z-weighted sum, FaceNet flip", "dlib flip"):
        assert label in rows, sorted(rows)
    for row in rows.values():
        assert 0.0 <= row["accuracy_mean"] <= 1.0 and 0 <= row["errors"] <= 16 and 0.0 <= row["tar_far_0.001"] <= 1.0
    # each embedder alone: every same-person pair scores above every pair of two people
    alone = [row for label, row in rows.items() if not label.startswith("fused")]
    assert len(alone) == 10 and all(row["tar_far_0.001"] == 1.0 for row in alone), alone
    assert set(first["per_face_ms"]) == {
        "facenet",
        "facenet flip",
        "dlib-resnet-v1-128-landmarks",
        "dlib-resnet-v1-128-predictor",
    }

    written = cache_state(cache)
    assert {name.split("-")[1] for name in written} == {"detections", "embeddings", "dlib", "crop"}
    run("evaluate_fusion", lfw, *options, "--json", tmp_path / "again.json")
    again = json.loads((tmp_path / "again.json").read_text())
    assert cache_state(cache) == written
    for key in ("rows", "variants", "concatenation", "correlation", "misses"):
        assert again[key] == first[key], key


def test_fit_fusion_writes_which_embedders_it_fitted_beside_each_score_statistics(settings, tmp_path):
    lfw, cache, out = tiny_lfw(tmp_path / "lfw"), tmp_path / "cache", tmp_path / "fusion.json"
    run("fit_fusion", lfw, "--folds", 1, 2, "--cache-dir", cache, "--out", out)
    fitted = json.loads(out.read_text())
    facenet = facenet_config(pipelines.pipeline_config("facenet")).embedder_name
    assert fitted["embedders"] == {"facenet": facenet, "dlib": "dlib-resnet-v1-128-landmarks"}
    assert fitted["pairs"] == 16 and fitted["folds"] == [1, 2] and 0.0 <= fitted["cosine_weight"] <= 1.0
    for score in ("facenet", "facenet_flip", "dlib", "fused", "fused_flip"):
        # fitted and scored on the same 16 pairs: each score separates the fixture people
        assert fitted[score]["accuracy"] == 1.0 and fitted[score]["tar_far_0.001"] == 1.0, score

    # the fused embedder reads its cosine weight from the file as it reads the committed one
    committed = json.loads(open(settings.FACE_FUSION_CALIBRATION).read())
    settings.FACE_FUSION_CALIBRATION = str(out)
    assert pipelines.pipeline_config("facenet+dlib").fusion_weight == round(fitted["cosine_weight"], 4)
    assert set(committed) - {"thresholds", "protocol"} <= set(fitted)  # the same keys, and "embedders"

    written = cache_state(cache)
    run("fit_fusion", lfw, "--folds", 1, 2, "--cache-dir", cache, "--out", tmp_path / "again.json")
    assert json.loads((tmp_path / "again.json").read_text()) == fitted and cache_state(cache) == written


@pytest.mark.parametrize("command", ["evaluate_lfw", "evaluate_fusion", "fit_fusion"])
def test_a_folder_that_is_not_lfw_is_a_command_error(command, tmp_path):
    with pytest.raises(CommandError, match="has no pairs.txt"):
        run(command, tmp_path / "nowhere")
    lfw = tiny_lfw(tmp_path / "lfw")
    pairs = (lfw / "pairs.txt").read_text()
    (lfw / "pairs.txt").write_text(pairs.replace("2\t4", "2\t5", 1))
    with pytest.raises(CommandError, match="has 16 pairs, expected 20"):
        run(command, lfw)
    (lfw / "pairs.txt").write_text(pairs.replace("Kit_Harington\t2\t3", "Kit_Harington\t2\t4"))
    with pytest.raises(CommandError, match="lacks 1 images .*/Kit_Harington_0004.jpg"):
        run(command, lfw)
    (lfw / "pairs.txt").write_text(pairs)
    if command == "fit_fusion":
        with pytest.raises(CommandError, match="pairs in 0 folds of folds \\[3\\]"):
            run(command, lfw, "--folds", 3)
    else:  # a threshold learned on the other folds: one is not enough
        (lfw / "pairs.txt").write_text("\n".join(["1\t4", *FOLDS[0][0], *FOLDS[0][1]]))
        with pytest.raises(CommandError, match="pairs in 1 folds; this needs 2"):
            run(command, lfw)
