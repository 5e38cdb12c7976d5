"""The parameter form offers the server's data sets for a ``dataset`` parameter, and sends the one chosen."""

from __future__ import annotations

import json

import pytest
import requests

pytestmark = pytest.mark.browser

DEFAULT_MODEL = "efficientnet_lite0.onnx"

# No installed method takes a data set yet: the page is shown one more in the server's own method list.
COUNT_LABELS = {
    "name": "count_labels",
    "title": "Count labels",
    "topic": "Test",
    "description": "",
    "reference": "",
    "needs": [],
    "tags": [],
    "plugin": "test",
    "unavailable": None,
    "params": [
        {
            "name": "dataset",
            "type": "dataset",
            "title": "Data set",
            "description": "",
            "default": "digits",
            "nullable": False,
        }
    ],
}


def add_method(route) -> None:
    answer = route.fetch()
    route.fulfill(response=answer, json=[*answer.json(), COUNT_LABELS])


def test_the_picker_lists_the_data_sets_and_sends_the_chosen_one(page, live_server):
    served = requests.get(f"{live_server}/api/datasets", timeout=60).json()
    page.route("**/api/methods?*", add_method)
    page.goto(live_server + "/")
    page.get_by_test_id("model-select").locator(f'option[value="{DEFAULT_MODEL}"]').wait_for(state="attached")
    page.get_by_test_id("model-select").select_option(DEFAULT_MODEL)
    page.locator('[data-testid="method"][data-method="count_labels"]').click()
    picker = page.get_by_test_id("param-dataset")
    picker.wait_for()
    options = picker.locator("option")
    assert options.evaluate_all("(all) => all.map((o) => o.value)") == [d["id"] for d in served]
    assert picker.input_value() == "digits"
    assert "1797 images" in picker.locator('option[value="digits"]').inner_text()

    picker.select_option("lfw_faces")
    with page.expect_request(lambda r: r.url.endswith("/api/jobs") and r.method == "POST") as request:
        page.get_by_test_id("run").click()
    body = json.loads(request.value.post_data)
    assert body["method"] == "count_labels" and body["params"]["dataset"] == "lfw_faces"
