"""The page in Chromium, served by web processes whose jobs run in workers (``CONVLENS_JOB_QUEUE=rq``): a run
started on one web process is drawn live, paused, resumed and stopped from its page, and watched from a page
on the other web process."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from browser_pixels import canvas_pixels, checked_page
from test_page import open_app, start_deepdream, wait_for_a_drawn_frame, wait_for_state

from cluster_fixtures import Cluster, running_cluster

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def cluster(models_dir: Path, web_dist: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """Redis, two web processes, one worker."""
    with running_cluster(
        models_dir, tmp_path_factory.mktemp("page-cluster"), workers=("page-worker",)
    ) as cluster:
        yield cluster


def test_a_run_in_a_worker_is_drawn_and_controlled_from_the_page_and_watched_from_another_process(
    browser, cluster, artifacts
):
    a, b = cluster.webs
    with checked_page(browser) as page, checked_page(browser) as other:
        open_app(page, a.url)
        view = page.locator("convlens-job-view")
        start_deepdream(page, steps=400)
        wait_for_a_drawn_frame(page, view)
        job_id = view.get_attribute("job")
        assert cluster.worker_of(a, job_id) == "page-worker"

        other.goto(f"{b.url}/#job={job_id}")
        watching = other.locator("convlens-job-view")
        wait_for_state(other, watching, "running")
        wait_for_a_drawn_frame(other, watching)
        drawn = canvas_pixels(watching.locator("canvas[data-seq]").first)
        assert drawn.std() > 10, "a picture, not a blank canvas"

        page.get_by_test_id("pause").click()
        wait_for_state(page, view, "paused")
        wait_for_state(other, watching, "paused")
        page.get_by_test_id("resume").click()
        wait_for_state(page, view, "running")
        page.get_by_test_id("stop").click()
        wait_for_state(page, view, "stopped")
        wait_for_state(other, watching, "stopped")
        other.screenshot(path=str(artifacts / "workers-page.png"), full_page=True)
