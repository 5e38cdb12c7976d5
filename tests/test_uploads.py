"""Uploads belong to the browser (or token) that sent them (README, "Access: tokens, origins, ownership"): each
client lists its own under the names it gave, anyone with the link reads one, only an owner deletes it; and the
image library's cache holds at most its bytes."""

from __future__ import annotations

import hashlib
import io

import numpy as np
import pytest
from PIL import Image

from convlens.app import create_app
from convlens.config import Config
from convlens.upload_owners import MAX_NAME, upload_name

ALICE = "a" * 32
BOB = "b" * 32


@pytest.fixture
def make_app(models_dir, tmp_path):
    def make(**settings):
        config = Config(
            models_dirs=[models_dir], data_dir=tmp_path / "data", ensure_default_model=False, **settings
        )
        return create_app(config)

    return make


def browser(app, client_id: str):
    """A test client that is the browser whose ``convlens_client`` cookie is ``client_id``."""
    client = app.test_client()
    client.set_cookie("convlens_client", client_id)
    return client


def picture(seed: int, size: tuple[int, int] = (40, 30)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)


def png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    return buffer.getvalue()


def upload(client, pixels: np.ndarray, name: str) -> dict:
    answer = client.post("/api/images", data={"file": (io.BytesIO(png(pixels)), name)})
    assert answer.status_code == 201, answer.get_json()
    return answer.get_json()


def uploads_of(client) -> dict[str, str]:
    """The uploads a client's picker lists: id → title."""
    listing = client.get("/api/images").get_json()
    assert [item["source"] for item in listing][:1] != ["upload"], "the samples come first"
    return {item["id"]: item["title"] for item in listing if item["source"] == "upload"}


def pixels_of(answer) -> np.ndarray:
    assert answer.status_code == 200 and answer.mimetype == "image/png"
    return np.asarray(Image.open(io.BytesIO(answer.data)).convert("RGB"))


def test_each_browser_lists_only_its_own_uploads_under_the_names_it_gave(make_app):
    app = make_app()
    alice, bob = browser(app, ALICE), browser(app, BOB)
    cat = upload(alice, picture(1), "cat photo.png")
    assert cat["title"] == "cat photo.png"
    shared = upload(bob, picture(1), "mine.png")
    dog = upload(bob, picture(2), "dog.png")
    assert shared["id"] == cat["id"], "one picture, kept once"
    assert uploads_of(alice) == {cat["id"]: "cat photo.png"}
    assert uploads_of(bob) == {cat["id"]: "mine.png", dog["id"]: "dog.png"}
    assert uploads_of(browser(app, "c" * 32)) == {}, "a third browser sees none"
    assert cat["id"] not in uploads_of(app.test_client()), "nor does a client without a cookie"


def test_a_browsers_first_request_without_the_cookie_gets_one_and_owns_its_upload(make_app):
    app = make_app()
    client = app.test_client()
    sent = client.post(
        "/api/images",
        data={"file": (io.BytesIO(png(picture(8))), "first.png")},
        headers={"Sec-Fetch-Site": "same-origin"},
    )
    assert client.get_cookie("convlens_client") is not None, "set by that answer"
    assert uploads_of(client) == {sent.get_json()["id"]: "first.png"}, "owned by the id it was given"
    elsewhere = app.test_client().get("/api/images", headers={"Sec-Fetch-Site": "cross-site"})
    assert "convlens_client" not in elsewhere.headers.get("Set-Cookie", ""), "its browser would drop it"


def test_a_token_owns_what_a_script_uploads(make_app):
    app = make_app(token="shared-secret")
    script = app.test_client(use_cookies=False)
    headers = {"Authorization": "Bearer shared-secret"}
    answer = script.post(
        "/api/images", data={"file": (io.BytesIO(png(picture(3))), "x.png")}, headers=headers
    )
    listed = script.get("/api/images", headers=headers).get_json()
    assert {item["id"]: item["title"] for item in listed if item["source"] == "upload"} == {
        answer.get_json()["id"]: "x.png"
    }


def test_anyone_with_the_link_reads_an_upload(make_app):
    app = make_app()
    pixels = picture(4)
    cat = upload(browser(app, ALICE), pixels, "cat.png")
    bob = browser(app, BOB)
    assert np.array_equal(pixels_of(bob.get(cat["url"])), pixels)
    assert pixels_of(bob.get(cat["url"] + "?size=16")).shape[1] == 16


def test_only_an_owner_deletes_and_the_file_goes_with_the_last(make_app):
    app = make_app()
    alice, bob = browser(app, ALICE), browser(app, BOB)
    cat = upload(alice, picture(5), "cat.png")
    upload(bob, picture(5), "also a cat.png")
    alone = upload(alice, picture(6), "only mine.png")
    stranger = browser(app, "c" * 32)
    refused = stranger.delete(cat["url"])
    assert refused.status_code == 403 and refused.get_json()["field"] == "image"
    assert bob.delete(alone["url"]).status_code == 403
    assert alice.delete("/api/images/chelsea").status_code == 403, "samples belong to the server"
    assert alice.delete("/api/images/upload-0000000000000000").status_code == 404

    assert alice.delete(cat["url"]).status_code == 204
    assert cat["id"] not in uploads_of(alice)
    assert uploads_of(bob)[cat["id"]] == "also a cat.png", "bob still owns it"
    assert bob.get(cat["url"]).status_code == 200
    assert alice.delete(cat["url"]).status_code == 403, "no longer hers"

    assert alice.delete(alone["url"]).status_code == 204
    uploads = app.extensions["convlens"].config.uploads_dir
    assert not (uploads / f"{alone['id']}.png").exists(), "its last owner gone, the file goes"
    gone = bob.get(alone["url"])
    assert gone.status_code == 404 and gone.get_json()["field"] == "image", "and no cached copy serves it"


@pytest.mark.parametrize(
    ("given", "kept"),
    [
        ("C:\\Users\\me\\holiday.jpg", "holiday.jpg"),
        ("../../etc/passwd", "passwd"),
        ("re\u202eport\u0000  cat\t.png", "report cat .png"),
        ("ｆｕｌｌｗｉｄｔｈ.png", "fullwidth.png"),
        ("   ", "upload-x"),
        ("", "upload-x"),
    ],
)
def test_a_name_is_kept_made_fit_to_show(given, kept):
    assert upload_name(given, "upload-x") == kept


def test_a_long_name_is_cut_and_the_api_answers_with_the_kept_name(make_app):
    long = upload_name("x" * 500 + ".png", "upload-x")
    assert len(long) == MAX_NAME and long.endswith("…")
    app = make_app()
    alice = browser(app, ALICE)
    answer = upload(alice, picture(7), "dir/\u202ecat.png")
    assert answer["title"] == "cat.png" and uploads_of(alice)[answer["id"]] == "cat.png"


def test_the_image_cache_holds_at_most_its_bytes_and_an_evicted_upload_is_read_from_disk(make_app):
    one = 120 * 100 * 3  # the decoded bytes of each picture
    cap = 2 * one + 4_000
    app = make_app(image_cache_bytes=cap)
    cache = app.extensions["convlens"].images.cache
    alice = browser(app, ALICE)
    pictures = [picture(10 + i, (120, 100)) for i in range(3)]
    sent = [upload(alice, pixels, f"{i}.png") for i, pixels in enumerate(pictures)]
    assert cache.bytes <= cap
    first = sent[0]["id"]
    assert ("pixels", first) not in cache, "the least recently used went"
    assert np.array_equal(pixels_of(alice.get(sent[0]["url"])), pictures[0]), "served from its file"
    for item in [*sent, *sent]:
        assert pixels_of(alice.get(item["url"] + "?size=64")).shape == (53, 64, 3)
        assert cache.bytes <= cap
    assert len(cache) >= 2, "the cache is used, not bypassed"


def test_a_full_size_upload_is_sent_as_its_file_and_a_thumbnail_encoded_once(make_app):
    app = make_app()
    library = app.extensions["convlens"].images
    alice = browser(app, ALICE)
    cat = upload(alice, picture(20, (300, 200)), "cat.png")
    stored = (app.extensions["convlens"].config.uploads_dir / f"{cat['id']}.png").read_bytes()
    # Digests: pytest's diff of two long byte strings takes minutes.
    assert digest(alice.get(cat["url"]).data) == digest(stored), "the stored PNG itself, not encoded again"
    first = alice.get(cat["url"] + "?size=50").data
    assert digest(library.cache.get(("png", cat["id"], 50))) == digest(first)
    assert digest(alice.get(cat["url"] + "?size=50").data) == digest(first)


def digest(data: bytes | None) -> str | None:
    return None if data is None else hashlib.sha256(data).hexdigest()
