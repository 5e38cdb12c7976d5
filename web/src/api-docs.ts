// The API reference page (api.html, also at /api/docs): Swagger UI on the server's own OpenAPI document, with
// "Try it out" sending real requests to it. Swagger UI, not Redoc: it is the reference implementation, well
// kept, and Redoc has no try-it-out. Bundled by vite (no CDN), so the page works offline.
//
// ?server=http://host:port reads and tries another convlens server (it must list this page's origin in
// CONVLENS_CORS_ORIGINS). A server with a token: the document is fetched with the token the convlens page
// keeps (asked for on a 401, as that page does), and "Authorize" starts filled with it.

import SwaggerUI from "swagger-ui-dist/swagger-ui-es-bundle.js";
import "swagger-ui-dist/swagger-ui.css";
import { fetchWithToken, storedToken } from "./token";

/** The name openapi.py gives the bearer scheme, present only when the server asks for a token. */
const TOKEN_SCHEME = "token";

function serverBase(): string {
  const named = new URLSearchParams(location.search).get("server");
  return (named ?? location.origin).replace(/\/+$/, "");
}

function showError(message: string): void {
  const banner = document.querySelector<HTMLElement>("[data-testid=docs-error]");
  if (!banner) return;
  banner.textContent = message;
  banner.hidden = false;
}

async function openDocs(domNode: HTMLElement): Promise<void> {
  const server = serverBase();
  // No cookies, here or in "Try it out": a request carries exactly what "Authorize" says, as a script's would.
  const response = await fetchWithToken(`${server}/api/openapi.json`, { credentials: "omit" });
  const body: unknown = await response.json().catch(() => null);
  if (!response.ok) {
    const reason = (body as { error?: string } | null)?.error ?? response.statusText;
    throw new Error(`${response.status} ${reason}`);
  }
  const spec = { ...(body as object), servers: [{ url: server, description: "this convlens server" }] };
  const token = storedToken();
  const ui = SwaggerUI({
    domNode,
    spec,
    presets: [SwaggerUI.presets.apis],
    layout: "BaseLayout",
    deepLinking: true,
    docExpansion: "list",
    displayRequestDuration: true,
    requestInterceptor: (request) => ({ ...request, credentials: "omit" }),
    // A microtask: onComplete may come before SwaggerUI() has returned `ui`.
    onComplete: () => queueMicrotask(authorize),
  });
  function authorize(): void {
    if (token && "security" in spec) ui.preauthorizeApiKey(TOKEN_SCHEME, token);
  }
}

const domNode = document.querySelector<HTMLElement>("#swagger");
if (domNode) {
  openDocs(domNode).catch((error: unknown) =>
    showError(
      `Could not read ${serverBase()}/api/openapi.json: ${error instanceof Error ? error.message : String(error)}`,
    ),
  );
}
