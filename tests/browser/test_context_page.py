"""The context view in a real page: the strip of composites, each with its own top 5, and the finished run's table
of the original class's probability, rank and top class per background, its bars as long as the probabilities."""

from __future__ import annotations

import pytest
from test_adversarial_page import expected_top, run_from_the_page, shown_top

pytestmark = pytest.mark.browser

BACKGROUNDS = ("grass", "grey")


def test_each_background_shows_its_top5_and_the_table_its_probability_and_rank(page, live_server, artifacts):
    params = {"backgrounds": ",".join(BACKGROUNDS), "window": "112", "stride": "112"}
    result = run_from_the_page(page, live_server, "context", params)
    data = result["data"]
    names = ["original", *BACKGROUNDS]
    # Each composite reached the page as it was made (the last one too, before the occlusion's frames).
    last = page.locator(f'[data-testid="panel-canvas"][data-panel="{BACKGROUNDS[-1]}"]')
    assert last.get_attribute("data-step") == str(len(BACKGROUNDS))
    canvases = page.get_by_test_id("panel-canvas")
    assert [canvases.nth(i).get_attribute("data-panel") for i in range(3)] == names
    assert shown_top(page, "original") == expected_top(data["original"]["top5"])
    for row in data["backgrounds"]:
        assert shown_top(page, row["background"]) == expected_top(row["top5"])

    rows = page.get_by_test_id("context-row")
    assert [rows.nth(i).get_attribute("data-background") for i in range(3)] == names
    expected = [
        (data["original"]["probability"], data["original"]["rank"], data["original"]["top5"][0]["label"])
    ]
    expected += [(row["probability"], row["rank"], row["top1_label"]) for row in data["backgrounds"]]
    for i, (probability, rank, top) in enumerate(expected):
        cells = rows.nth(i).locator("td").all_inner_texts()
        assert cells[0].strip() == f"{probability * 100:.1f}%" and cells[2] == str(rank) and cells[3] == top
        bar = rows.nth(i).locator(".context-bar").bounding_box()
        track = rows.nth(i).locator(".context-track").bounding_box()
        assert bar["width"] == pytest.approx(probability * track["width"], abs=1.0)
    facts = page.get_by_test_id("context-facts").inner_text()
    assert f"{data['background_fraction'] * 100:.1f}%" in facts and data["label"] in facts
    page.screenshot(path=str(artifacts / "context.png"), full_page=True)
