"""The gallery index: exact for small galleries, FAISS IVF for large ones, updated in place."""

import numpy as np
import pytest

from recognition.engine.index import EmbeddingIndex, IndexSettings
from recognition.engine.matching import Gallery


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def clustered_faces(n_people: int, per_person: int, seed: int = 0, spread: float = 0.35):
    """Embeddings of ``n_people`` identities, ``per_person`` faces each, and their person index."""
    rng = np.random.default_rng(seed)
    centres = unit(rng.standard_normal((n_people, 128)))
    people = np.repeat(np.arange(n_people), per_person)
    faces = unit(centres[people] + spread * rng.standard_normal((len(people), 128)) / np.sqrt(128))
    return faces, people, centres


def exact_top(matrix: np.ndarray, query: np.ndarray, k: int) -> np.ndarray:
    return np.argsort(-(matrix @ query), kind="stable")[:k]


# a small exact_below makes the IVF path testable on small, fast galleries
IVF = IndexSettings(exact_below=2_000)


def test_small_index_search_is_exact():
    faces, _, _ = clustered_faces(300, 4)
    index = EmbeddingIndex()
    index.add(np.arange(len(faces)) + 100, faces)
    assert index.kind == "exact"
    scores, ids = index.search(faces[:20], k=5)
    for query, row_ids, row_scores in zip(faces[:20], ids, scores):
        np.testing.assert_array_equal(row_ids, exact_top(faces, query, 5) + 100)
        np.testing.assert_allclose(row_scores, np.sort(faces @ query)[::-1][:5], rtol=1e-5)


def test_large_index_moves_to_ivf_and_keeps_recall_against_exact_search():
    faces, people, centres = clustered_faces(1_000, 4)
    index = EmbeddingIndex(settings=IVF)
    index.add(np.arange(len(faces)), faces)
    assert index.kind.startswith("ivf")
    rng = np.random.default_rng(1)
    probes = unit(centres[:200] + 0.35 * rng.standard_normal((200, 128)) / np.sqrt(128))
    truth = np.argmax(probes @ faces.T, axis=1)
    _, found = index.search(probes, k=1)
    assert np.mean(found[:, 0] == truth) >= 0.95
    # scanning every cell is exhaustive: fp16 storage is the only approximation left
    _, everywhere = index.search(probes, k=1, nprobe=index._index.nlist)
    assert np.mean(everywhere[:, 0] == truth) >= 0.99


def test_adding_and_removing_changes_the_ivf_index_in_place():
    faces, _, _ = clustered_faces(1_000, 3)
    index = EmbeddingIndex(settings=IVF)
    index.add(np.arange(len(faces)), faces)
    trained = index._index
    newcomer = unit(np.random.default_rng(5).standard_normal((2, 128)))
    index.add(np.array([90_001, 90_002]), newcomer)
    assert index._index is trained and len(index) == len(faces) + 2
    _, ids = index.search(newcomer, k=1)
    assert ids[:, 0].tolist() == [90_001, 90_002]
    assert index.remove(np.array([90_001, 7])) == 2
    assert len(index) == len(faces)
    _, ids = index.search(np.stack([newcomer[0], faces[7]]), k=3)
    assert 90_001 not in ids[0] and 7 not in ids[1]
    assert index._index is trained


def test_excluded_ids_are_never_returned():
    faces, _, _ = clustered_faces(200, 2)
    for settings in (IndexSettings(), IndexSettings(exact_below=100)):
        index = EmbeddingIndex(settings=settings)
        index.add(np.arange(len(faces)), faces)
        _, ids = index.search(faces[:1], k=3, exclude_ids=np.array([0, 1]))
        assert 0 not in ids[0] and 1 not in ids[0], index.kind


def test_index_is_retrained_only_after_it_grows_several_times():
    faces, _, _ = clustered_faces(2_000, 5)
    index = EmbeddingIndex(settings=IndexSettings(exact_below=1_000, retrain_growth=4.0))
    index.add(np.arange(1_000), faces[:1_000])
    first = index._index
    index.add(np.arange(1_000, 3_900), faces[1_000:3_900])  # 3.9x the training size: same cells
    assert index._index is first
    index.add(np.arange(3_900, 10_000), faces[3_900:])  # past 4x: retrained on everything
    assert index._index is not first and index._trained_on == 10_000 and len(index) == 10_000
    _, ids = index.search(faces[[5, 5_000, 9_999]], k=1)
    assert ids[:, 0].tolist() == [5, 5_000, 9_999]


def best_per_person(faces, people, query, top_k):
    """The reference answer: every person's best similarity, best people first."""
    scores = faces @ query
    best = {}
    for person, score in zip(people.tolist(), scores.tolist()):
        best[person] = max(best.get(person, -2.0), score)
    return sorted(best.items(), key=lambda item: -item[1])[:top_k]


@pytest.mark.parametrize("settings", [IndexSettings(), IndexSettings(exact_below=1_000, min_nprobe=10_000)], ids=["exact", "ivf"])
def test_gallery_gives_each_persons_best_face_best_people_first(settings):
    faces, people, centres = clustered_faces(400, 6, spread=0.6)
    gallery = Gallery(index_settings=settings)
    gallery.replace(faces, people * 10, np.arange(len(faces)))
    rng = np.random.default_rng(3)
    queries = unit(centres[:25] + 0.6 * rng.standard_normal((25, 128)) / np.sqrt(128))
    for query, result in zip(queries, gallery.search(queries, top_k=5, threshold=0.5)):
        expected = best_per_person(faces, people * 10, query, 5)
        assert [c.person_id for c in result.candidates] == [p for p, _ in expected]
        np.testing.assert_allclose([c.similarity for c in result.candidates], [s for _, s in expected], atol=2e-3)


def test_gallery_updates_one_person_without_rebuilding():
    faces, people, _ = clustered_faces(600, 5)
    gallery = Gallery(index_settings=IVF)
    gallery.replace(faces, people, np.arange(len(faces)))
    trained = gallery.index._index
    newcomer = unit(np.random.default_rng(9).standard_normal((3, 128)))
    gallery.set_person(7, newcomer, np.array([70_001, 70_002, 70_003]))  # person 7 re-enrolled
    assert gallery.index._index is trained
    assert len(gallery) == len(faces) - 5 + 3
    (hit,) = gallery.search(newcomer[:1], top_k=1)
    assert hit.candidates[0].person_id == 7 and hit.candidates[0].similarity == pytest.approx(1.0, abs=1e-3)
    (old,) = gallery.search(faces[7 * 5 : 7 * 5 + 1], top_k=3)
    assert old.candidates[0].similarity < 0.99  # the replaced faces are gone
    gallery.remove_person(7)
    assert 7 not in gallery.person_ids and len(gallery) == len(faces) - 5
    (excluded,) = gallery.search(faces[:1], top_k=1, exclude_keys={0})
    assert excluded.candidates[0].similarity < 0.999


@pytest.mark.parametrize("settings", [IndexSettings(), IVF], ids=["exact", "ivf"])
def test_a_saved_gallery_opens_memory_mapped_and_takes_changes_on_top(tmp_path, settings):
    faces, people, centres = clustered_faces(600, 5)
    built = Gallery(index_settings=settings)
    built.replace(faces, people, np.arange(len(faces)) + 1000)
    built.save(tmp_path)
    opened = Gallery.open(tmp_path, index_settings=settings)
    assert opened.index.frozen and len(opened) == len(faces) and opened.person_ids == set(range(600))
    assert isinstance(opened._base_labels, np.memmap)  # shared pages, not a copy
    queries = unit(centres[:20] + 0.35 * np.random.default_rng(4).standard_normal((20, 128)) / np.sqrt(128))
    before = [r.candidates[0].person_id for r in built.search(queries, top_k=1)]
    assert [r.candidates[0].person_id for r in opened.search(queries, top_k=1)] == before

    # person 3 re-enrolled, person 4 removed, person 9000 added: overlay and tombstones
    newcomer = unit(np.random.default_rng(9).standard_normal((2, 128)))
    opened.set_person(3, newcomer, np.array([1, 2]))
    opened.remove_person(4)
    opened.set_person(9000, unit(centres[4:5] + 0.01), np.array([3]))
    assert len(opened) == len(faces) - 10 + 3 and opened.people_count == 600
    (hit,) = opened.search(newcomer[:1], top_k=1)
    assert hit.candidates[0].person_id == 3 and hit.candidates[0].similarity == pytest.approx(1.0, abs=1e-3)
    (old,) = opened.search(faces[15:16], top_k=2)  # person 3's old face: gone
    assert old.candidates[0].person_id != 3 or old.candidates[0].similarity < 0.99
    (moved,) = opened.search(faces[20:21], top_k=3)  # person 4's face: now only 9000 is near
    assert 4 not in [c.person_id for c in moved.candidates] and moved.candidates[0].person_id == 9000
    (excluded,) = opened.search(newcomer[:1], top_k=1, exclude_keys={1})
    assert excluded.candidates[0].similarity < 0.999
    # nothing of the changes reached the files
    assert len(Gallery.open(tmp_path, index_settings=settings)) == len(faces)


def test_a_saved_gallery_is_rewritten_without_a_person(tmp_path):
    faces, people, _ = clustered_faces(600, 5)
    built = Gallery(index_settings=IVF)
    built.replace(faces, people, np.arange(len(faces)))
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    built.save(tmp_path / "a")
    assert Gallery.rewrite_without(tmp_path / "a", tmp_path / "b", {7, 8}) == 10
    rewritten = Gallery.open(tmp_path / "b", index_settings=IVF)
    assert len(rewritten) == len(faces) - 10 and not {7, 8} & rewritten.person_ids
    (hit,) = rewritten.search(faces[35:36], top_k=3)  # a face of person 7
    assert 7 not in [c.person_id for c in hit.candidates]
    rewritten.set_person(7, faces[35:36], np.array([35]))  # changes on top still work
    assert rewritten.search(faces[35:36], top_k=1)[0].candidates[0].person_id == 7


def test_a_gallery_screening_search_scans_the_cells_it_is_given():
    """The mislabel check asks with ``nprobe=screen_nprobe``: the count must reach the IVF search
    (one cell finds fewer of the true nearest faces than every cell, which finds them all)."""
    faces, people, centres = clustered_faces(1_000, 4, spread=1.0)  # spread out: one cell misses some
    gallery = Gallery(index_settings=IVF)
    gallery.replace(faces, people)
    rng = np.random.default_rng(2)
    asked = rng.integers(0, 1_000, 200)
    probes = unit(centres[asked] + 1.0 * rng.standard_normal((200, 128)) / np.sqrt(128))
    truth = people[np.argmax(probes @ faces.T, axis=1)]

    def found(nprobe):
        return np.mean([r.candidates[0].person_id == t for r, t in zip(gallery.search(probes, top_k=1, nprobe=nprobe), truth)])

    nlist = gallery.index._index.nlist
    assert found(nlist) == 1.0
    assert found(1) < 0.9 and found(IVF.screen_nprobe) >= 0.99
