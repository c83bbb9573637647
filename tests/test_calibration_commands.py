"""The calibration commands calibrate the embedder they should, not the one FACE_EMBEDDER wants:
``calibrate_open_set`` the embedder served (the database's active record) or the one named by
--embedder; ``fit_fusion`` always the fused embedder, whichever is served or wanted (it writes the
file the fused pipeline needs, so it must not need it). Real models on a tiny LFW-shaped folder
made of the fixture photos."""

import json
import shutil

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from recognition import pipelines
from recognition.models import EmbedderSwitch

from .conftest import PEOPLE

pytestmark = pytest.mark.django_db

# LFW's layout: images_deepfunneled/Name/Name_0001.jpg, people.txt (folds of names), pairs.txt.
# people.txt: every fixture photo as a "person" of one image (16: the tail needs >= 100 pairs);
# pairs.txt: same-person pairs of the fixture people with two photos, and different-person pairs.
PAIRED = {
    "Barack_Obama": ["barack_obama/obama.jpg", "barack_obama/obama2.jpg"],
    "Joe_Biden": ["joe_biden/biden.jpg", "joe_biden/biden2.jpg"],
    "Kit_Harington": ["kit_harington/john1.jpeg", "kit_harington/john2.jpeg"],
    "Rose_Leslie": ["rose_leslie/img1.jpg", "rose_leslie/img2.jpg"],
}


def tiny_lfw(root):
    images = root / "images_deepfunneled"
    singles = []
    for n, photo in enumerate(sorted(p for p in PEOPLE.glob("*/*") if p.is_file()), 1):
        name = f"Fixture_{n:02d}"
        (images / name).mkdir(parents=True)
        shutil.copy(photo, images / name / f"{name}_0001.jpg")
        singles.append(name)
    for name, photos in PAIRED.items():
        (images / name).mkdir(parents=True)
        for n, photo in enumerate(photos, 1):
            shutil.copy(PEOPLE / photo, images / name / f"{name}_{n:04d}.jpg")
    lines = ["1", str(len(singles)), *(f"{p}\t1" for p in singles)]  # one fold: calibration people only
    (root / "people.txt").write_text("\n".join(lines) + "\n")
    same = [f"{p}\t1\t2" for p in PAIRED]
    different = [
        "Barack_Obama\t1\tJoe_Biden\t2",
        "Kit_Harington\t1\tRose_Leslie\t1",
        "Joe_Biden\t1\tRose_Leslie\t2",
        "Barack_Obama\t2\tKit_Harington\t2",
    ]
    (root / "pairs.txt").write_text("\n".join(["1\t4", *same, *different]) + "\n")
    return root, len(singles)


def serve(kind):
    """Record ``kind`` as the embedder served (the active row), as a switch would."""
    EmbedderSwitch.objects.filter(status="active").update(embedder=kind)
    return pipelines.refresh_served_kind()


def test_calibrate_open_set_calibrates_the_served_embedder_not_the_wanted_one(settings, tmp_path):
    lfw, calibration_people = tiny_lfw(tmp_path / "lfw")
    settings.TRAINING_CACHE_DIR = tmp_path / "cache"  # not the repository's LFW caches
    settings.FACE_EMBEDDER = "facenet+dlib"  # wanted: a switch to it is pending
    settings.FACE_FUSION_CALIBRATION = str(tmp_path / "not-fitted-yet.json")
    assert pipelines.refresh_served_kind() == "facenet"
    out = tmp_path / "tail.json"
    call_command("calibrate_open_set", str(lfw), "--out", str(out))
    written = json.loads(out.read_text())
    assert written["embedder"] == pipelines.pipeline_config("facenet").embedder_name
    assert written["images"] == calibration_people == 16  # one image each: 120 impostor pairs

    # the wanted embedder by name: refused while it has no calibration of its own to serve with
    with pytest.raises(CommandError, match="fusion calibration"):
        call_command("calibrate_open_set", str(lfw), "--embedder", "facenet+dlib", "--out", str(out))
    with pytest.raises(CommandError, match="invalid choice"):
        call_command("calibrate_open_set", str(lfw), "--embedder", "facenet-mirrored")
    try:  # the mirrored FaceNet served: it has no tail of its own, so the command asks which to make
        assert serve("facenet-mirrored") == "facenet-mirrored"
        with pytest.raises(CommandError, match="calibrated on FaceNet's.*--embedder"):
            call_command("calibrate_open_set", str(lfw), "--out", str(out))
    finally:
        serve("facenet")
    assert json.loads(out.read_text()) == written  # nothing overwritten by the refusals


def test_fit_fusion_fits_the_fused_embedder_whatever_is_wanted_and_without_its_own_file(settings, tmp_path):
    lfw, _ = tiny_lfw(tmp_path / "lfw")
    settings.FACE_EMBEDDER = "facenet+dlib"
    out = tmp_path / "fusion.json"
    settings.FACE_FUSION_CALIBRATION = str(out)  # what it writes: missing until then
    call_command("fit_fusion", str(lfw), "--folds", "1", "--cache-dir", str(tmp_path / "cache"))
    fitted = json.loads(out.read_text())
    assert fitted["pairs"] == 8 and 0.0 <= fitted["cosine_weight"] <= 1.0
    assert fitted["fused"]["accuracy"] >= fitted["facenet"]["accuracy"] - 0.125  # 8 pairs: at most one more error


def test_fit_fusion_thresholds_read_both_tails_of_the_calibration_whatever_embedder_is_wanted(settings, tmp_path):
    committed = json.loads(open(settings.FACE_FUSION_CALIBRATION).read())
    for setting in ("OPEN_SET_LFW_TAIL", "OPEN_SET_LFW_TAIL_FUSED"):  # copies: the command reads them by setting
        copy = tmp_path / f"{setting}.json"
        shutil.copy(getattr(settings, setting), copy)
        setattr(settings, setting, str(copy))
    calibration = tmp_path / "fusion.json"
    calibration.write_text(json.dumps({k: v for k, v in committed.items() if k != "thresholds"}))
    settings.FACE_EMBEDDER = "facenet"  # the default: FaceNet wanted and served
    call_command("fit_fusion", str(tmp_path), "--thresholds", "--out", str(calibration))
    thresholds = json.loads(calibration.read_text())["thresholds"]
    assert {k: thresholds[k] for k in ("match", "verify", "mislabel_margin")} == {
        k: committed["thresholds"][k] for k in ("match", "verify", "mislabel_margin")
    }

    # a fused tail made with another cosine weight (an older fit) is refused, and so is a missing one
    fused = json.loads(open(settings.OPEN_SET_LFW_TAIL_FUSED).read())
    fused["embedder"] = fused["embedder"].rsplit("-v", 1)[0] + "-v0.5000"
    (tmp_path / "OPEN_SET_LFW_TAIL_FUSED.json").write_text(json.dumps(fused))
    with pytest.raises(CommandError, match="fused LFW tail was made by .*-v0.5000"):
        call_command("fit_fusion", str(tmp_path), "--thresholds", "--out", str(calibration))
    settings.OPEN_SET_LFW_TAIL_FUSED = str(tmp_path / "missing.json")
    with pytest.raises(CommandError, match="needs the fitted calibration"):
        call_command("fit_fusion", str(tmp_path), "--thresholds", "--out", str(calibration))
