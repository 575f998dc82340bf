"""``--collect DIR``, ``edge-collect`` and the ``/review`` page: the samplers and limits of the collecting sink,
its files and manifest, the review decisions (command line and browser) and the paths they refuse.

The sink is driven through its public ``write(result)``/``close()`` with results built here (a prediction
from a probability vector, a real photo as the frame); the whole loop runs once through ``edge.cli.main``
on a short video of real photos.
"""

import json
import os
import time
from pathlib import Path
from typing import Dict, List, Optional

import cv2
import numpy as np
import pytest

from edge.collect import cli as collect_cli
from edge.model.classify import Prediction, TopK
from edge.collect.folder import ReviewError, decide, frame_id, safe_name, unreviewed
from edge.sinks import Result
from edge.collect.sampler import CollectOptions, Collector, dhash, hamming, parse_when
from edge.sources.frames import Frame

LABELS = ("cat", "dog", "bird")


def prediction(probabilities, labels=LABELS) -> Prediction:
    p = np.asarray(probabilities, dtype=np.float32)
    order = np.argsort(-p)
    topk = tuple(TopK(labels[i], int(i), float(p[i])) for i in order[:2])
    return Prediction(labels[order[0]], int(order[0]), float(p[order[0]]), topk, p)


def result(image: np.ndarray, probabilities, number: int = 0, name: str = "cam0") -> Result:
    pred = prediction(probabilities)
    record = {"source": name, "frame": number, "time": time.time(), **pred.to_dict()}
    return Result(name, number, Frame(image, number, time.monotonic(), 0.0), pred, record, 10.0, 1.0, {})


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def frames(photos) -> List[np.ndarray]:
    """Distinct BGR frames (real photos, 320x240)."""
    return [np.ascontiguousarray(cv2.resize(photos[n], (320, 240))[..., ::-1])
            for n in ("astronaut", "chelsea", "coffee", "rocket", "camera", "hubble_deep_field")]


def collector(tmp_path: Path, when: str = "uncertain", clock: Optional[Clock] = None, **limits) -> Collector:
    values = dict(interval_s=0.0, dedup_bits=0)
    values.update(limits)
    return Collector(CollectOptions(tmp_path / "c", parse_when(when), **values), clock=clock or Clock())


def run_sink(sink: Collector, results) -> Dict[str, int]:
    for r in results:
        sink.write(r)
    sink.close()
    return sink.counts


def manifest(root: Path) -> List[Dict]:
    return [json.loads(line) for line in (root / "manifest.jsonl").read_text("utf-8").splitlines()]


# -- samplers


def test_parse_when_combines_samplers_and_rejects_nonsense():
    s = parse_when("uncertain:0.6:0.2,changed,label=dog,every=5,rate=0.1")
    assert (s.uncertain, s.changed, s.labels, s.every, s.rate) == ((0.6, 0.2), True, ("dog",), 5, 0.1)
    assert parse_when("uncertain").uncertain == (0.5, 0.1)
    for bad in ("sometimes", "uncertain:2", "every=0", "rate=1.5", "label=", "changed:1"):
        with pytest.raises(Exception, match="sampler|probabilit"):
            parse_when(bad)


def test_uncertain_keeps_low_scores_and_small_margins(tmp_path, frames):
    sink = collector(tmp_path, "uncertain:0.5:0.2")
    counts = run_sink(sink, [result(frames[0], [0.9, 0.05, 0.05]),  # sure: skipped
                             result(frames[1], [0.4, 0.3, 0.3]),  # below P
                             result(frames[2], [0.55, 0.45, 0.0])])  # above P, margin 0.1
    assert counts["kept"] == 2 and sink.by_sampler == {"uncertain": 2}


def test_changed_label_every_and_seeded_rate(tmp_path, frames):
    sure = {"cat": [0.9, 0.05, 0.05], "dog": [0.05, 0.9, 0.05], "bird": [0.05, 0.05, 0.9]}
    sequence = ["cat", "cat", "dog", "dog", "bird", "bird"]
    sink = collector(tmp_path / "a", "changed")
    run_sink(sink, [result(frames[i], sure[label], i) for i, label in enumerate(sequence)])
    assert sink.counts["kept"] == 2
    sink = collector(tmp_path / "b", "label=bird")
    run_sink(sink, [result(frames[i], sure[label], i) for i, label in enumerate(sequence)])
    assert sink.counts["kept"] == 2 and {f.label for f in unreviewed(tmp_path / "b" / "c")} == {"bird"}
    sink = collector(tmp_path / "d", "every=3")
    run_sink(sink, [result(frames[i], sure["cat"], i) for i in range(6)])
    assert sink.counts["kept"] == 2
    kept = []
    for seed_dir in ("e", "f"):
        sink = Collector(CollectOptions(tmp_path / seed_dir, parse_when("rate=0.5"), interval_s=0, dedup_bits=0,
                                        seed=7), clock=Clock())
        run_sink(sink, [result(frames[i % 6], sure["cat"], i) for i in range(40)])
        kept.append(sink.counts["kept"] + sink.counts["queue_full"])  # a burst of 40 overflows the queue
    assert kept[0] == kept[1] and 8 < kept[0] < 32  # seeded: the same share twice


# -- limits


def test_interval_between_kept_frames(tmp_path, frames):
    clock = Clock()
    sink = collector(tmp_path, "every=1", clock=clock, interval_s=1.0)
    for i in range(6):
        clock.now = i * 0.4  # 0, 0.4, 0.8, 1.2, 1.6, 2.0: kept at 0, 1.2 (and not 1.6, 2.0 < 2.2)
        sink.write(result(frames[i], [0.9, 0.05, 0.05], i))
    sink.close()
    assert sink.counts["kept"] == 2 and sink.counts["interval"] == 4


def test_interval_label_changes_and_duplicates_are_per_source(tmp_path, frames):
    """Two cameras through one sink: one's kept frame does not start the other's interval, a change is a change
    of that source's own label, and the same picture from another camera is not its duplicate."""
    sink = collector(tmp_path / "a", "every=1", interval_s=10.0, dedup_bits=6)
    run_sink(sink, [result(frames[0], [0.9, 0.05, 0.05], 0, name) for name in ("door", "yard", "door")])
    assert sink.counts["kept"] == 2 and sink.counts["interval"] == 1
    assert {f.path.name.split("-", 2)[-1] for f in unreviewed(tmp_path / "a" / "c")} == {"door.jpg", "yard.jpg"}
    cat, dog = [0.9, 0.05, 0.05], [0.05, 0.9, 0.05]
    sink = collector(tmp_path / "b", "changed")
    run_sink(sink, [result(frames[i], p, i, name) for i, (p, name) in
                    enumerate([(cat, "door"), (dog, "yard"), (cat, "door"), (dog, "yard"), (dog, "door")])])
    assert sink.counts["kept"] == 1  # only door's cat -> dog; yard was a dog all along


def test_total_and_per_class_caps_count_frames_already_there(tmp_path, frames):
    sink = collector(tmp_path, "every=1", max_total=3, max_per_class=2)
    cats = [result(frames[i], [0.9, 0.05, 0.05], i) for i in range(3)]
    dogs = [result(frames[i + 3], [0.05, 0.9, 0.05], i + 3) for i in range(3)]
    counts = run_sink(sink, cats + dogs)
    assert counts["kept"] == 3 and counts["capped"] == 3
    assert sorted(f.label for f in unreviewed(tmp_path / "c")) == ["cat", "cat", "dog"]
    again = collector(tmp_path, "every=1", max_total=3)  # a restarted service sees the 3 already kept
    assert run_sink(again, [result(frames[5], [0.05, 0.05, 0.9])])["capped"] == 1


def test_near_duplicates_are_skipped(tmp_path, frames):
    noisy = np.clip(frames[0].astype(np.int16) + np.random.RandomState(0).randint(-3, 4, frames[0].shape), 0,
                    255).astype(np.uint8)
    assert hamming(dhash(frames[0]), dhash(noisy)) <= 6 < hamming(dhash(frames[0]), dhash(frames[1]))
    sink = collector(tmp_path, "every=1", dedup_bits=6)
    counts = run_sink(sink, [result(frames[0], [0.9, 0.05, 0.05]), result(noisy, [0.9, 0.05, 0.05]),
                             result(frames[1], [0.9, 0.05, 0.05])])
    assert counts["kept"] == 2 and counts["duplicate"] == 1


def test_disk_budget_drops_the_oldest_unreviewed_first(tmp_path, frames):
    one = len(cv2.imencode(".jpg", frames[0], [cv2.IMWRITE_JPEG_QUALITY, 92])[1])
    sink = collector(tmp_path, "every=1", budget_mb=2.5 * one / 1e6)
    clock = sink.clock
    for i in range(5):
        clock.now = i
        sink.write(result(frames[i % 3], [0.9, 0.05, 0.05], i))
        time.sleep(0.05)  # one writer: each frame is saved in turn, the names' times apart
    sink.close()
    left = unreviewed(tmp_path / "c")
    assert sink.counts["evicted"] >= 2 and len(left) <= 3
    names = [e["file"].rsplit("/", 1)[1] for e in manifest(tmp_path / "c")]
    assert [f.path.name for f in left] == names[-len(left):]  # the newest stayed


# -- files


def test_full_frames_atomic_names_and_manifest(tmp_path, frames):
    sink = Collector(CollectOptions(tmp_path / "c", parse_when("uncertain"), interval_s=0, dedup_bits=0),
                     model=Path(__file__), clock=Clock())
    pred = prediction([0.4, 0.35, 0.25], labels=("../../etc", "dog\nx", "b"))
    record = {"frame": 3, **pred.to_dict()}
    sink.write(Result("rtsp://user@cam/a b\x07", 3, Frame(frames[0], 3, 0.0, 0.0), pred, record, 1.0, 1.0, {}))
    sink.close()
    (frame,) = unreviewed(tmp_path / "c")
    assert frame.path.parent == tmp_path / "c" / "unreviewed" / "_.._etc"
    assert "/" not in frame.label and "\x07" not in frame.path.name and not frame.label.startswith(".")
    saved = cv2.imread(str(frame.path))
    assert saved.shape == frames[0].shape  # the full frame, not the model's crop
    assert not [p for p in frame.path.parent.iterdir() if p.suffix != ".jpg"]  # no temporary left
    (entry,) = manifest(tmp_path / "c")
    assert entry["file"] == f"unreviewed/{frame.label}/{frame.path.name}" and entry["sampler"] == "uncertain"
    assert entry["source"] == "rtsp://user@cam/a b\x07" and entry["frame"] == 3 and len(entry["topk"]) == 2
    assert len(entry["model_sha256"]) == 64


def test_manifest_names_the_model_that_classified_each_frame_across_a_swap(tmp_path, frames):
    """A frame kept before a hot swap carries the old model's sha256, one kept after it the new one's, even when
    --watch-model has already replaced the file on disk (the slot's word is taken, the file is not re-hashed)."""
    model = tmp_path / "m.onnx"
    model.write_bytes(b"old model")
    sink = Collector(CollectOptions(tmp_path / "c", parse_when("every=1"), interval_s=0, dedup_bits=0), model=model,
                     clock=Clock())
    sink.model_changed({"event": "active", "sha256": "a" * 64, "file": str(model)})
    sink.write(result(frames[0], [0.9, 0.05, 0.05], 0))
    model.write_bytes(b"new model")  # replaced on disk, then swapped in between two frames
    sink.model_changed({"event": "swap", "sha256": "b" * 64, "file": str(model)})
    sink.write(result(frames[1], [0.9, 0.05, 0.05], 1))
    sink.close()
    assert [(e["frame"], e["model_sha256"]) for e in manifest(tmp_path / "c")] == [(0, "a" * 64), (1, "b" * 64)]


def test_safe_name():
    assert safe_name("../..") == "_" and safe_name("a/b\\c\x00d") == "a_b_c_d" and safe_name(".hidden") == "hidden"
    assert safe_name("tabby cat") == "tabby cat" and len(safe_name("x" * 500)) <= 80


def test_write_never_waits_for_a_slow_disk(tmp_path, frames, monkeypatch):
    import edge.collect.sampler as collect

    monkeypatch.setattr(collect, "write_new", lambda *a: time.sleep(0.5) or Path(a[0]) / "x.jpg")
    monkeypatch.setattr(collect, "QUEUE_BYTES", 3 * frames[0].nbytes)
    sink = collector(tmp_path, "every=1")
    started = time.perf_counter()
    for i in range(40):
        sink.write(result(frames[i % 6], [0.9, 0.05, 0.05], i))
    spent = time.perf_counter() - started
    assert spent < 0.4 and sink.counts["queue_full"] > 20  # the timing is the behaviour here
    sink._queue = type(sink._queue)()  # let close() finish without writing the queued frames
    sink._queue.put(None)
    sink._writer.join(5)


# -- review from the command line


@pytest.fixture()
def collection(tmp_path, frames) -> Path:
    sink = collector(tmp_path, "every=1")
    run_sink(sink, [result(frames[i], [[0.9, 0.05, 0.05], [0.05, 0.9, 0.05]][i % 2], i) for i in range(4)])
    return tmp_path / "c"


def cli(*argv) -> int:
    return collect_cli.main([str(a) for a in argv])


def test_cli_review_confirm_relabel_discard_status(collection, capsys):
    assert cli("review", collection) == 0
    lines = [l.split("\t") for l in capsys.readouterr().out.splitlines()]
    assert len(lines) == 4 and {l[1] for l in lines} == {"cat", "dog"}
    cats = [l[0] for l in lines if l[1] == "cat"]
    dogs = [l[0] for l in lines if l[1] == "dog"]
    assert cli("confirm", collection, cats[0]) == 0
    assert cli("relabel", collection, cats[1], "--to", "bird") == 0
    assert cli("discard", collection, *dogs) == 0
    labelled = collection / "labelled"
    assert sorted(p.parent.name for p in labelled.rglob("*.jpg")) == ["bird", "cat"]
    assert not unreviewed(collection)
    assert [d["decision"] for d in map(json.loads, (collection / "decisions.jsonl").read_text().splitlines())] == \
        ["confirm", "relabel", "discard", "discard"]
    capsys.readouterr()
    assert cli("status", collection, "--json") == 0
    assert json.loads(capsys.readouterr().out) == {"unreviewed": {}, "labelled": {"bird": 1, "cat": 1}}


def test_cli_refuses_paths_outside_the_collection(collection, tmp_path, capsys):
    outside = tmp_path / "mine.jpg"
    outside.write_bytes(b"precious")
    first = unreviewed(collection)[0]
    link = first.path.parent / "link.jpg"
    os.symlink(str(outside), str(link))
    for given in (outside, f"unreviewed/{first.label}/../../../mine.jpg", link, "manifest.jsonl",
                  "unreviewed/nothing.jpg"):
        assert cli("discard", collection, first.path, given) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("edge-collect: ") and "\n" not in err
    assert outside.read_bytes() == b"precious" and first.path.exists()  # one refused file: nothing done
    assert cli("relabel", collection, first.path, "--to", "../../x") == 0
    assert [p.name for p in (collection / "labelled").iterdir()] == ["_.._x"]
    assert not (tmp_path / "x").exists()


def test_decide_never_overwrites_a_labelled_file(collection):
    frames = unreviewed(collection)
    (collection / "labelled" / "cat").mkdir(parents=True)
    taken = collection / "labelled" / "cat" / frames[0].path.name
    taken.write_bytes(b"theirs")
    (moved,) = decide(collection, [frames[0].path], "confirm")
    assert taken.read_bytes() == b"theirs" and moved.parent == taken.parent and moved != taken
    with pytest.raises(ReviewError):
        decide(collection, [frames[1].path], "relabel", "  ")
    assert frame_id("cat/a.jpg") != frame_id("cat/b.jpg")


# -- the whole loop: edge-classify --collect on a video


@pytest.fixture(scope="module")
def video(tmp_path_factory, photos) -> Path:
    from conftest import write_photo_video

    return write_photo_video(tmp_path_factory.mktemp("collect") / "photos.avi", photos,
                             ("astronaut", "chelsea", "coffee", "rocket", "camera"), 4)


def classify(*argv) -> int:
    from edge.cli import main

    return main([str(a) for a in argv])


def test_edge_classify_collects_full_frames_from_a_video(photo_onnx, video, tmp_path, caplog):
    import logging

    caplog.set_level(logging.INFO, logger="edge-classify")
    out = tmp_path / "c"
    assert classify("--model", photo_onnx, "--source", video, "--collect", out, "--collect-when", "changed,every=4",
                    "--collect-interval", 0, "--stats-interval", 0) == 0
    kept = unreviewed(out)
    assert 4 <= len(kept) <= 6  # a frame of each photo (dHash drops the repeats of one photo)
    assert {f.label for f in kept} == {"astronaut", "chelsea", "coffee", "rocket", "camera"}
    assert cv2.imread(str(kept[0].path)).shape == (480, 640, 3)
    entries = manifest(out)
    assert len(entries) == len(kept) and {e["sampler"] for e in entries} <= {"changed", "every"}
    assert all(e["source"] == str(video) and e["label"] == e["file"].split("/")[1] for e in entries)
    line = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("collect: kept"))
    assert f"kept {len(kept)} of 20 frames" in line and "duplicate" in line


def test_collect_images_and_usage_errors(photo_onnx, photo_dir, tmp_path, capsys):
    out = tmp_path / "c"
    assert classify("--model", photo_onnx, "--image", photo_dir, "--collect", out, "--collect-when", "every=1",
                    "--collect-interval", 0, "--collect-dedup", 0) == 0
    assert len(unreviewed(out)) == len(list(photo_dir.glob("*.jpg")))
    capsys.readouterr()
    a_file = tmp_path / "file"
    a_file.write_text("mine")
    for argv, said in (([ "--collect", a_file], "not a folder"), (["--collect", out, "--collect-when", "often"],
                                                                   "not a sampler"),
                       (["--collect", out, "--collect-max", 0], "--collect-max")):
        assert classify("--model", photo_onnx, "--image", photo_dir, *argv) == 2
        err = capsys.readouterr().err.strip()
        assert said in err and "\n" not in err and "Traceback" not in err
    assert a_file.read_text() == "mine"


# -- review in the browser (--serve with --collect)


def post(url: str, body: bytes, headers: Dict[str, str]):
    import urllib.error
    import urllib.request

    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=5) as reply:
            return reply.status, reply.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


@pytest.mark.slow
def test_review_page_confirms_relabels_and_discards_in_a_browser(photo_onnx, video, collection, tmp_path):
    from mqtt_broker import free_port
    from test_live_view import Running, browser, get, wait_until_served

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    before = {f.id: f for f in unreviewed(collection)}
    running = Running("--model", photo_onnx, "--source", video, "--loop", "--serve", f"127.0.0.1:{port}",
                      "--collect", collection, "--collect-when", "label=none-of-these", "--stats-interval", 0)
    driver = None
    try:
        wait_until_served(base + "/api/review", running)
        listing = json.loads(get(base + "/api/review")[2])
        assert {f["id"] for f in listing["frames"]} == set(before) and "chelsea" in listing["labels"]
        one = listing["frames"][0]["id"]
        assert get(base + "/api/review/frame?id=" + one)[2] == before[one].path.read_bytes()
        assert get(base + "/api/review/frame?id=../../manifest.jsonl")[0] == 404
        decide = base + "/api/review/decide"
        body = json.dumps({"ids": [one], "decision": "discard"}).encode()
        assert post(decide, body, {"Content-Type": "text/plain"})[0] == 415  # a form of another site
        assert post(decide, body, {"Content-Type": "application/json", "Origin": "http://evil.example"})[0] == 403
        assert post(decide, json.dumps({"ids": ["nope"], "decision": "discard"}).encode(),
                    {"Content-Type": "application/json"})[0] == 409
        assert before[one].path.exists()

        from selenium.webdriver.common.by import By
        from selenium.webdriver.support.ui import WebDriverWait

        driver = browser()
        driver.get(base + "/review")
        WebDriverWait(driver, 20).until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-ready"))
        cards = driver.find_elements(By.CSS_SELECTOR, ".card")
        assert len(cards) == 4
        WebDriverWait(driver, 20).until(lambda d: d.execute_script(
            "return Array.from(document.images).every(function (i) { return i.complete && i.naturalWidth > 0; })"))
        ids = [c.get_attribute("data-id") for c in cards]
        cards[0].find_element(By.CSS_SELECTOR, ".relabel-to").send_keys("bird")
        cards[0].find_element(By.CSS_SELECTOR, ".relabel").click()
        WebDriverWait(driver, 10).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, ".card")) == 3)
        cards[1].find_element(By.CSS_SELECTOR, ".confirm").click()
        WebDriverWait(driver, 10).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, ".card")) == 2)
        cards[2].click()
        driver.find_element(By.TAG_NAME, "body").send_keys("d")  # the key discards the selected frame
        WebDriverWait(driver, 10).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, ".card")) == 1)
    finally:
        if driver is not None:
            driver.quit()
        running.stop()
    labelled = collection / "labelled"
    assert (labelled / "bird" / before[ids[0]].path.name).is_file()
    assert (labelled / before[ids[1]].label / before[ids[1]].path.name).is_file()
    assert not before[ids[2]].path.exists() and not list(labelled.rglob(before[ids[2]].path.name))
    assert [f.id for f in unreviewed(collection)] == [ids[3]]
    decisions = [json.loads(l) for l in (collection / "decisions.jsonl").read_text().splitlines()]
    assert [(d["decision"], d["by"]) for d in decisions] == [("relabel", "web"), ("confirm", "web"), ("discard", "web")]


# -- the loop closed: video -> collect -> review -> edge-train on DIR/labelled -> edge-export -> a better model


def review_in_the_browser(root: Path, entries: List[Dict], truth, model: Path, video: Path) -> Dict[str, int]:
    """A reviewer who knows the answers, at the /review page in headless Chromium: a right guess is selected
    and confirmed with the c key, a wrong one relabelled by typing the true label and Enter."""
    from mqtt_broker import free_port
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait
    from test_live_view import Running, browser, get, wait_until_served

    right = {Path(e["file"]).name: f"digit{truth[e['frame']]}" for e in entries}
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    running = Running("--model", model, "--source", video, "--loop", "--serve", f"127.0.0.1:{port}", "--collect",
                      root, "--collect-when", "label=none-of-these", "--stats-interval", 0)
    driver, done = None, {"confirm": 0, "relabel": 0}
    try:
        wait_until_served(base + "/api/review", running)
        names = {f["id"]: f["name"] for f in json.loads(get(base + "/api/review")[2])["frames"]}
        driver = browser()
        driver.get(base + "/review")
        WebDriverWait(driver, 20).until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-ready"))
        while True:
            cards = driver.find_elements(By.CSS_SELECTOR, ".card")
            if not cards:
                break
            card = cards[0]
            truth_label = right[names[card.get_attribute("data-id")]]
            if card.get_attribute("data-label") == truth_label:
                card.click()
                driver.find_element(By.TAG_NAME, "body").send_keys("c")
                done["confirm"] += 1
            else:
                card.find_element(By.CSS_SELECTOR, ".relabel-to").send_keys(truth_label + Keys.ENTER)
                done["relabel"] += 1
            WebDriverWait(driver, 10).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, ".card")) < len(cards))
    finally:
        if driver is not None:
            driver.quit()
        running.stop()
    assert not unreviewed(root) and sum(done.values()) == len(names)
    return done


@pytest.mark.slow
def test_training_on_the_reviewed_frames_fixes_the_mistakes_collected(tmp_path):
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import bench_collect

    r = bench_collect.main(["--train-per-class", "30", "--epochs", "4", "--stream", "300", "--work", str(tmp_path)],
                           reviewer=review_in_the_browser)
    assert r["kept_uncertain"] > 20 and r["reviewed"]["relabel"] > 0 and r["reviewed"]["confirm"] > 0
    assert r["mistakes_uncertain"] > r["mistakes_random"]
    assert r["collected_acc_after"] > r["collected_acc_before"] + 0.2
