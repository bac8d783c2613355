// The live profile: GET /v2/user/profile/ws opened with a one-time ticket (POST /v2/user/ws-ticket), so the
// access token never appears in a URL. The BFF pushes the whole profile at connect and after every price or
// portfolio change (docs/CONTRACTS.md, "Profile JSON"); messages with a "type" field are other kinds (alert
// firings) and go to `onMessage`.
//
// Reconnects with full-jitter exponential backoff (0.5 s doubling to 30 s, reset once a socket has stayed
// open 10 s), and reports its state: "connecting", "open", "reconnecting" (with the seconds until the next
// attempt) or "offline". Close 4401 (the access token expired) renews the token first; 4404 (the profile
// was deleted) and a refused ticket that no refresh can fix stop it.

import { ApiFailure } from "./api.js";

const BASE_S = 0.5;
const MAX_S = 30;
const STABLE_S = 10;

export class LiveSocket {
  constructor(api, { onProfile, onMessage = () => {}, onState }) {
    this.api = api;
    this.onProfile = onProfile;
    this.onMessage = onMessage;
    this.onState = onState;
    this._ws = null;
    this._timer = null;
    this._attempt = 0;
    this._openedAt = 0;
    this._running = false;
  }

  start() {
    if (this._running) return;
    this._running = true;
    this._connect();
  }

  stop() {
    this._running = false;
    clearTimeout(this._timer);
    if (this._ws) {
      this._ws.onclose = null;
      this._ws.close(1000, "signed out");
      this._ws = null;
    }
    this.onState("offline");
  }

  async _connect() {
    if (!this._running) return;
    this.onState(this._attempt === 0 ? "connecting" : "reconnecting");
    let ticket;
    try {
      ticket = (await this.api.request("POST", "/v2/user/ws-ticket")).ticket;
    } catch (failure) {
      if (failure instanceof ApiFailure && failure.status === 401) {
        this.stop();
        return;
      }
      this._retry(failure instanceof ApiFailure ? Number(failure.retryAfter) || 0 : 0);
      return;
    }
    if (!this._running) return;
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    const ws = new WebSocket(`${scheme}//${location.host}/v2/user/profile/ws?ticket=${encodeURIComponent(ticket)}`);
    this._ws = ws;
    ws.onopen = () => {
      this._openedAt = Date.now();
      this.onState("open");
    };
    ws.onmessage = (event) => {
      let message;
      try {
        message = JSON.parse(event.data);
      } catch {
        return;
      }
      if (message && typeof message.type === "string") this.onMessage(message);
      else this.onProfile(message);
    };
    ws.onclose = (event) => {
      this._ws = null;
      if (!this._running) return;
      if (this._openedAt && Date.now() - this._openedAt > STABLE_S * 1000) this._attempt = 0;
      this._openedAt = 0;
      if (event.code === 4404) {
        this.stop();
        this.api.logout().catch(() => {});
        return;
      }
      if (event.code === 4401) {
        this.api.refresh().then((ok) => (ok ? this._retry(0, true) : this.stop()), () => this._retry());
        return;
      }
      this._retry();
    };
  }

  _retry(atLeastS = 0, now = false) {
    if (!this._running) return;
    const capS = Math.min(MAX_S, BASE_S * 2 ** this._attempt);
    const delayS = now ? 0 : Math.max(atLeastS, Math.random() * capS);
    this._attempt += 1;
    this.onState("reconnecting", delayS);
    clearTimeout(this._timer);
    this._timer = setTimeout(() => this._connect(), delayS * 1000);
  }
}
