"""gallery.html on a real server restarted over its data folder: the runs from before the restart with real
thumbnails, a run whose folder was deleted by hand shown as missing, "Run again" saying "same result", delete,
and a permalink that reopens the run's view on the main page."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from browser_pixels import canvas_pixels, png_pixels
from test_persistence import BROWSER_ID, Server

from convlens.gallery import THUMBNAIL_SIDE
from convlens.models.default import DEFAULT_MODEL_ID

pytestmark = pytest.mark.browser

STATE = """(view) => view.shadowRoot.querySelector('[data-testid="state"]')?.dataset.state"""
IMAGE_PIXELS = """(img) => {
  const canvas = document.createElement("canvas");
  canvas.width = img.naturalWidth;
  canvas.height = img.naturalHeight;
  const context = canvas.getContext("2d");
  context.drawImage(img, 0, 0);
  return Array.from(context.getImageData(0, 0, canvas.width, canvas.height).data);
}"""


def run(server: Server, method: str, params: dict, seed: int) -> str:
    body = {"method": method, "model": DEFAULT_MODEL_ID, "image": "chelsea", "params": params, "seed": seed}
    job_id = server.submit(body)
    assert server.wait_for(job_id, ("done", "failed", "stopped"))["state"] == "done"
    return job_id


def test_the_gallery_lists_runs_from_before_a_restart_and_runs_again_deletes_and_links(
    browser, models_dir, tmp_path, web_dist, artifacts
):
    server = Server(models_dir, tmp_path)
    server.start()
    try:
        saliency = run(server, "saliency", {}, 1)
        dream = run(server, "deepdream", {"steps": 2, "octaves": 1}, 3)
        lost = run(server, "saliency", {}, 2)
        server.end()
        shutil.rmtree(tmp_path / "results" / lost)  # by hand, while the server is down
        server.start()
        context = browser.new_context(base_url=server.url, viewport={"width": 1280, "height": 900})
        context.add_cookies([{"name": "convlens_client", "value": BROWSER_ID, "url": server.url}])
        page = context.new_page()
        page.set_default_timeout(60_000)
        errors: list[str] = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.goto("/gallery.html")
        gallery = page.locator("convlens-gallery")
        cards = gallery.locator('[data-testid="run"]')
        cards.nth(2).wait_for()
        assert [card.get_attribute("data-job") for card in cards.all()] == [lost, dream, saliency]

        # Real thumbnails: decoded to their size, and their pixels are the server's thumbnail's.
        for job_id in (dream, saliency):
            image = gallery.locator(f'[data-job="{job_id}"] img[data-testid="thumbnail"]')
            image.wait_for()
            page.wait_for_function(
                "(img) => img.complete && img.naturalWidth > 0", arg=image.element_handle()
            )
            assert max(image.evaluate("(img) => [img.naturalWidth, img.naturalHeight]")) == THUMBNAIL_SIDE
            shown = np.array(image.evaluate(IMAGE_PIXELS), dtype=np.int16)
            served = png_pixels(server.get(f"/api/jobs/{job_id}/thumbnail.png").content)
            assert np.array_equal(shown.reshape(*served.shape[:2], 4)[..., :3], served)
            assert served.std() > 10  # a picture, not a flat square
        missing = gallery.locator(f'[data-job="{lost}"] [data-testid="placeholder"]')
        assert "files missing: result.json" in missing.text_content()
        page.screenshot(path=str(artifacts / "gallery.png"))

        # Run again: the same seed gives the same hash.
        dream_card = gallery.locator(f'[data-job="{dream}"]')
        dream_card.locator('[data-testid="again"]').click()
        outcome = dream_card.locator('[data-testid="outcome"]')
        page.wait_for_function(
            "(o) => o.textContent.includes('result')", arg=outcome.element_handle(), timeout=240_000
        )
        assert outcome.text_content() == "same result ✓"
        repeat = outcome.get_attribute("data-job")
        assert server.get(f"/api/jobs/{repeat}").json()["again_of"] == dream

        # Delete, confirmed: the card goes, and so does the run.
        page.once("dialog", lambda dialog: dialog.accept())
        gallery.locator(f'[data-job="{saliency}"] [data-testid="delete"]').click()
        gallery.locator(f'[data-job="{saliency}"]').wait_for(state="detached")
        assert server.get(f"/api/jobs/{saliency}").status_code == 404

        # The permalink reopens the run's view on the main page.
        dream_card.locator('[data-testid="permalink"]').click()
        page.wait_for_url(f"**/#job={dream}")
        view = page.locator("convlens-app").locator('[data-testid="job-view"]')
        page.wait_for_function(f"(view) => ({STATE})(view) === 'done'", arg=view.element_handle())
        assert view.get_attribute("job") == dream
        page.wait_for_function(
            "(view) => view.shadowRoot.querySelector('canvas[data-seq]')", arg=view.element_handle()
        )
        assert canvas_pixels(view.locator("canvas[data-seq]").first).std() > 10  # the run's picture, drawn
        page.screenshot(path=str(artifacts / "gallery-permalink.png"))

        # The main page's "All runs" link leads back to the gallery, which has the run again's card now.
        page.locator("convlens-app").locator('[data-testid="gallery-link"]').click()
        page.wait_for_url("**/gallery.html")
        gallery.locator(f'[data-job="{repeat}"]').wait_for()
        context.close()
        assert not errors, errors
    finally:
        if server.process is not None and server.process.poll() is None:
            server.end()
