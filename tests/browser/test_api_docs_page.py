"""The API reference page (``/api/docs``, ``api.html``): Swagger UI on the server's own OpenAPI document lists
every operation, and "Try it out" sends real requests to the live server: its answer, a refused body's error
naming the field, and on a server with a token, "Authorize" deciding between 200 and 401."""

from __future__ import annotations

import json

import pytest
import requests
from browser_pixels import checked_page

from convlens.models.default import DEFAULT_MODEL_ID

pytestmark = pytest.mark.browser

TOKEN = "api-docs-page-token-31f5c2"


def operation_count(document: dict) -> int:
    return sum(len(operations) for operations in document["paths"].values())


def open_docs(page) -> None:
    page.goto("/api/docs")
    page.locator(".opblock").first.wait_for()


def execute(page, operation_id: str, body: str | None = None) -> tuple[int, str]:
    """Expands the operation, "Try it out" (with ``body``), "Execute": the status and body Swagger UI shows."""
    block = page.locator(f"#operations-default-{operation_id}")
    if not block.locator(".opblock-body").count():
        block.locator(".opblock-summary-control").click()
    try_out = block.locator("button.try-out__btn")
    if try_out.inner_text().strip() == "Try it out":
        try_out.click()
    if body is not None:
        block.locator("textarea.body-param__text").fill(body)
    clear = block.locator("button.btn-clear")
    if clear.count():
        clear.click()  # so the answer waited for below is this request's
    block.locator("button.execute").click()
    answer = block.locator(".live-responses-table tbody .response")
    answer.wait_for()
    status = int(answer.locator(".response-col_status").inner_text().strip())
    return status, answer.locator(".response-col_description pre").first.inner_text()


def test_the_page_lists_every_operation_and_tries_them_on_the_live_server(browser, live_server, artifacts):
    document = requests.get(f"{live_server}/api/openapi.json", timeout=30).json()
    assert "security" not in document, "no token on this server: nothing to authorize"
    with checked_page(browser, base_url=live_server) as page:
        page.goto("/")
        page.locator("header.top").screenshot(path=str(artifacts / "api_docs_link.png"))
        page.get_by_test_id("api-link").click()  # the page's header link, through /api/docs
        page.locator(".opblock").first.wait_for()
        assert page.url == f"{live_server}/api.html"
        assert page.locator(".opblock").count() == operation_count(document)
        for path, operations in document["paths"].items():
            for verb in operations:
                block = page.locator(f'.opblock-{verb} .opblock-summary-path[data-path="{path}"]')
                assert block.count() == 1, f"{verb.upper()} {path} is not listed once"
        assert page.locator(".btn.authorize").count() == 0
        page.screenshot(path=str(artifacts / "api_docs_page.png"))

        status, body = execute(page, "list_models")
        assert status == 200
        assert DEFAULT_MODEL_ID in [model["id"] for model in json.loads(body)]

        status, body = execute(page, "start_job", json.dumps({"method": "saliency", "image": "chelsea"}))
        assert status == 400
        refused = json.loads(body)
        assert refused["field"] == "model" and refused["error"]
        page.screenshot(path=str(artifacts / "api_docs_page_tried.png"))


def test_on_a_server_with_a_token_authorize_decides_between_401_and_200(browser, start_server):
    server = start_server(env={"CONVLENS_TOKEN": TOKEN})
    # Public, as every page is: the page asks for the token itself.
    assert requests.get(f"{server}/api/docs", timeout=30, allow_redirects=False).status_code == 302
    asked: list[str] = []

    def answer(dialog) -> None:
        asked.append(dialog.message)
        dialog.accept(TOKEN)

    with checked_page(browser, base_url=server) as page:
        page.on("dialog", answer)
        open_docs(page)
        assert len(asked) == 1 and "token" in asked[0], asked
        # The token given is kept and "Authorize" starts filled with it.
        status, body = execute(page, "list_models")
        assert status == 200 and DEFAULT_MODEL_ID in body

        page.locator(".btn.authorize").first.click()
        dialog = page.locator(".auth-container")
        dialog.locator("button", has_text="Logout").click()
        dialog.locator("button.btn-done").click()
        status, body = execute(page, "list_models")
        assert status == 401 and json.loads(body)["field"] == "token"

        page.locator(".btn.authorize").first.click()
        dialog.locator("input").fill(TOKEN)
        dialog.locator("button.authorize", has_text="Authorize").click()
        dialog.locator("button.btn-done").click()
        status, body = execute(page, "list_models")
        assert status == 200 and DEFAULT_MODEL_ID in body
        assert len(asked) == 1


def test_server_in_the_query_reads_and_tries_another_server(browser, live_server, start_server):
    # Another convlens server that lets pages of the live server's origin read it.
    other = start_server(env={"CONVLENS_CORS_ORIGINS": live_server})
    with checked_page(browser, base_url=live_server) as page:
        page.goto(f"/api/docs?server={other}")
        page.locator(".opblock").first.wait_for()
        assert page.url == f"{live_server}/api.html?server={other}"
        status, body = execute(page, "list_models")
        assert status == 200 and DEFAULT_MODEL_ID in body
        request_url = page.locator("#operations-default-list_models .request-url pre").inner_text()
        assert request_url == f"{other}/api/models"
