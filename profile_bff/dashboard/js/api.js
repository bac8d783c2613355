// The BFF's REST API as the page uses it (docs/CONTRACTS.md, "BFF REST").
//
// The access token lives in this module's memory only (never in storage a script of another page could
// read); the refresh token is the HttpOnly cookie the BFF sets, which this page never sees: POST
// /v1/refresh with it answers a new access token, after a reload too. Errors are the BFF's JSON
// {"error": {"code", "message"}}, thrown as ApiFailure with the message to show as it is.

/** An answer with an error status: `status`, the error `code` and the BFF's `message`. */
export class ApiFailure extends Error {
  constructor(status, code, message, retryAfter = null) {
    super(message);
    this.status = status;
    this.code = code;
    this.retryAfter = retryAfter;
  }
}

/** Seconds before the access token's expiry at which it is renewed. */
const RENEW_BEFORE_S = 60;

export class Api {
  constructor() {
    this.accessToken = null;
    this.onSignedOut = () => {};
    this._renewTimer = null;
    this._refreshing = null;
  }

  get signedIn() {
    return this.accessToken !== null;
  }

  /** POST /v1/register, then sign in. */
  async register(name, password) {
    await this.request("POST", "/v1/register", { body: { name, password }, auth: false });
    await this.login(name, password);
  }

  /** POST /v1/login: the access token, kept in memory; the refresh cookie is set by the BFF. */
  async login(name, password) {
    this._session(await this.request("POST", "/v1/login", { body: { name, password }, auth: false }));
  }

  /** POST /v1/refresh with the cookie: true when a session was renewed, false when there is none. */
  async refresh() {
    if (this._refreshing === null) {
      // Tabs of the page share the cookie: a rotated refresh token presented again revokes the whole session
      // (auth/sessions.py), so the tabs take turns, each sending the cookie the previous turn left.
      const call = () => this.request("POST", "/v1/refresh", { auth: false });
      this._refreshing = (navigator.locks ? navigator.locks.request("crypto-mesh-refresh", call) : call())
        .then((session) => { this._session(session); return true; })
        .catch((failure) => {
          if (failure instanceof ApiFailure && (failure.status === 401 || failure.status === 403)) {
            this._forget();
            return false;
          }
          throw failure;
        })
        .finally(() => { this._refreshing = null; });
    }
    return this._refreshing;
  }

  /** POST /v1/logout: ends the session and clears the cookie. */
  async logout() {
    try {
      await this.request("POST", "/v1/logout", { auth: false });
    } finally {
      this._forget();
    }
  }

  /**
   * One request to the BFF: `body` is sent as JSON, with `headers` besides; with `auth` the access token
   * goes along, and a 401 is retried once after a refresh. Answers the parsed JSON (null for 204); throws ApiFailure.
   */
  async request(method, path, { body = undefined, auth = true, headers: extra = {}, retried = false } = {}) {
    const headers = { Accept: "application/json", ...extra };
    if (body !== undefined) headers["Content-Type"] = "application/json";
    if (auth && this.accessToken) headers.Authorization = `Bearer ${this.accessToken}`;
    let response;
    try {
      response = await fetch(path, {
        method,
        headers,
        body: body === undefined ? undefined : JSON.stringify(body),
        credentials: "same-origin",
        cache: "no-store",
      });
    } catch (error) {
      throw new ApiFailure(0, "network", "The server cannot be reached; try again in a moment.");
    }
    if (response.status === 401 && auth && !retried && (await this.refresh())) {
      return this.request(method, path, { body, auth, headers: extra, retried: true });
    }
    if (response.status === 204) return null;
    const data = await response.json().catch(() => null);
    if (!response.ok) {
      const error = data && data.error ? data.error : { code: "http_" + response.status, message: response.statusText };
      if (response.status === 401 && auth) this._forget();
      throw new ApiFailure(response.status, error.code, error.message, response.headers.get("Retry-After"));
    }
    return data;
  }

  _session(session) {
    this.accessToken = session.access_token;
    clearTimeout(this._renewTimer);
    const inS = Math.max(5, session.expires_in - RENEW_BEFORE_S);
    this._renewTimer = setTimeout(() => this.refresh().catch(() => {}), inS * 1000);
  }

  _forget() {
    const was = this.accessToken !== null;
    this.accessToken = null;
    clearTimeout(this._renewTimer);
    if (was) this.onSignedOut();
  }
}
