// The server's token (CONVLENS_TOKEN), asked for once on the first 401 and kept in localStorage. It goes
// with every API request as a bearer token and in the Socket.IO handshake's `auth`; the server then also sets
// a same-site cookie, so the page's own <img> requests carry it.

const STORAGE_KEY = "convlens-token";

let asking: Promise<boolean> | null = null;

/** The token this browser keeps, or null. */
export function storedToken(): string | null {
  try {
    return localStorage.getItem(STORAGE_KEY);
  } catch {
    return null; // storage refused (a sandboxed frame): the user is asked each time
  }
}

/** `Authorization` for a request, when a token is kept. */
export function authHeaders(): Record<string, string> {
  const token = storedToken();
  return token ? { Authorization: `Bearer ${token}` } : {};
}

/** Socket.IO's `auth` option: read at each (re)connection, so a token given meanwhile is sent. */
export function socketAuth(send: (auth: { token?: string }) => void): void {
  const token = storedToken();
  send(token ? { token } : {});
}

/**
 * Asks the user for the token and keeps it; false when they cancel. Requests refused at the same time share
 * one question.
 */
export function askForToken(): Promise<boolean> {
  asking ??= Promise.resolve().then(() => {
    const answer = window.prompt("This convlens server needs its access token (CONVLENS_TOKEN):");
    asking = null;
    if (!answer?.trim()) return false;
    try {
      localStorage.setItem(STORAGE_KEY, answer.trim());
    } catch {
      return false;
    }
    return true;
  });
  return asking;
}

/**
 * `fetch` with the kept token; on a 401 naming `token`, tries again with a token given meanwhile (another
 * request asked), else asks once for it and tries again.
 */
export async function fetchWithToken(
  url: string,
  init: RequestInit & { headers?: Record<string, string> } = {},
): Promise<Response> {
  const send = () => fetch(url, { ...init, headers: { ...authHeaders(), ...(init.headers ?? {}) } });
  const sentWith = storedToken();
  const response = await send();
  if (response.status !== 401) return response;
  const field = await response
    .clone()
    .json()
    .then((body: { field?: unknown }) => body.field)
    .catch(() => null);
  if (field !== "token") return response;
  if (storedToken() === sentWith && !(await askForToken())) return response;
  return send();
}
