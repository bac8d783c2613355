// Alerts: the rules (POST/GET /v2/user/alerts, PATCH and DELETE /v2/user/alerts/{id}) and their firings
// (GET /v2/user/alerts/events, POST /v2/user/alerts/events/{alert_id}/ack). A firing arrives over the profile
// WebSocket as {"type": "alert", "alert_id", "rule_id", "kind", "symbol", "price", "second", "value",
// "fired_at", "acked"}, unacknowledged ones again at every connect: it is shown once (by alert_id) in the
// list and, until acknowledged or dismissed, as a notification.
//
// A BFF without the alert routes answers 404 to GET /v2/user/alerts: the panel then stays hidden.

import { ApiFailure } from "./api.js";
import { dateTime, decimal } from "./format.js";

const EVENTS_PAGE = 20;
const MAX_NOTIFICATIONS = 4;
const SYMBOL_KINDS = new Set(["price_above", "price_below", "change_percent"]);
const THRESHOLD = {
  price_above: ["price", "Price"],
  price_below: ["price", "Price"],
  change_percent: ["percent", "Change (%)"],
  portfolio_total_above: ["total", "Total"],
  portfolio_total_below: ["total", "Total"],
};

const $ = (id) => document.getElementById(id);

/** A rule in words: "btcusdt rises above 70,000". */
export function describeRule(rule) {
  switch (rule.kind) {
    case "price_above": return `${rule.symbol} rises above ${decimal(rule.price)}`;
    case "price_below": return `${rule.symbol} falls below ${decimal(rule.price)}`;
    case "change_percent": return `${rule.symbol} changes by ${rule.percent} % within ${rule.window}`;
    case "portfolio_total_above": return `portfolio total rises above ${decimal(rule.total)}`;
    case "portfolio_total_below": return `portfolio total falls below ${decimal(rule.total)}`;
    default: return rule.kind;
  }
}

export class AlertsPanel {
  constructor(api, { message }) {
    this.api = api;
    this.message = message;
    this.available = false;
    this.rules = new Map(); // id → rule
    this.firings = new Map(); // alert_id → firing
    this.toasts = new Map(); // alert_id → element
    this.cursor = null;
    $("alert-kind").addEventListener("change", () => this._kindChanged());
    $("alert-form").addEventListener("submit", (event) => this._create(event));
    $("firings-older").addEventListener("click", () => this._loadFirings(this.cursor));
    this._kindChanged();
  }

  /** After signing in: find out whether the BFF has alerts, and load rules and firings. */
  async start() {
    try {
      await this._loadRules();
    } catch (failure) {
      if (failure instanceof ApiFailure && (failure.status === 404 || failure.status === 405)) {
        this.available = false;
        $("alerts").hidden = true;
        return;
      }
    }
    this.available = true;
    $("alerts").hidden = false;
    this.firings.clear();
    await this._loadFirings(null);
  }

  stop() {
    this.available = false;
    this.rules.clear();
    this.firings.clear();
    for (const toast of this.toasts.values()) toast.remove();
    this.toasts.clear();
    $("rule-rows").replaceChildren();
    $("firing-rows").replaceChildren();
    $("alert-error").textContent = "";
    $("alerts").hidden = true;
  }

  /** A WebSocket message with "type": "alert". */
  onFiring(firing) {
    if (firing.type !== "alert" || !firing.alert_id) return;
    const known = this.firings.has(firing.alert_id);
    this.firings.set(firing.alert_id, { ...this.firings.get(firing.alert_id), ...firing });
    this._renderFirings();
    if (!firing.acked && !known) this._notify(firing);
  }

  // -- rules ------------------------------------------------------------------------------------------------

  _kindChanged() {
    const kind = $("alert-kind").value;
    $("alert-symbol-field").hidden = !SYMBOL_KINDS.has(kind);
    $("alert-window-field").hidden = kind !== "change_percent";
    $("alert-threshold-label").textContent = THRESHOLD[kind][1];
  }

  async _create(event) {
    event.preventDefault();
    const kind = $("alert-kind").value;
    const body = { kind, repeat: $("alert-repeat").value };
    if (SYMBOL_KINDS.has(kind)) body.symbol = $("alert-symbol").value.trim().toLowerCase();
    body[THRESHOLD[kind][0]] = $("alert-threshold").value.trim();
    if (kind === "change_percent") body.window = $("alert-window").value;
    $("alert-error").textContent = "";
    const headers = globalThis.crypto?.randomUUID ? { "Idempotency-Key": crypto.randomUUID() } : {};
    try {
      await this.api.request("POST", "/v2/user/alerts", { body, headers });
      $("alert-threshold").value = "";
      await this._loadRules();
    } catch (failure) {
      $("alert-error").textContent = this.message(failure);
    }
  }

  async _loadRules() {
    const answer = await this.api.request("GET", "/v2/user/alerts");
    this.rules = new Map(answer.alerts.map((rule) => [rule.id, rule]));
    this._renderRules();
    this._renderFirings();
  }

  _renderRules() {
    $("rule-rows").replaceChildren(...[...this.rules.values()].map((rule) => {
      const row = document.createElement("tr");
      row.dataset.rule = String(rule.id);
      const cells = [describeRule(rule), rule.repeat === "once" ? "once" : "at every crossing", rule.paused ? "paused" : "active"];
      for (const text of cells) {
        const cell = document.createElement("td");
        cell.textContent = text;
        row.append(cell);
      }
      const actions = document.createElement("td");
      actions.className = "actions";
      const words = describeRule(rule);
      actions.append(
        this._button(rule.paused ? "Resume" : "Pause", `${rule.paused ? "Resume" : "Pause"} the alert ${words}`,
          () => this._change("PATCH", rule.id, { paused: !rule.paused })),
        this._button("Remove", `Remove the alert ${words}`, () => this._change("DELETE", rule.id)),
      );
      row.append(actions);
      return row;
    }));
    $("no-rules").hidden = this.rules.size > 0;
  }

  async _change(method, id, body = undefined) {
    $("alert-error").textContent = "";
    try {
      await this.api.request(method, `/v2/user/alerts/${id}`, { body });
      await this._loadRules();
    } catch (failure) {
      $("alert-error").textContent = this.message(failure);
    }
  }

  // -- firings ----------------------------------------------------------------------------------------------

  async _loadFirings(cursor) {
    const query = `limit=${EVENTS_PAGE}` + (cursor ? `&cursor=${encodeURIComponent(cursor)}` : "");
    let page;
    try {
      page = await this.api.request("GET", `/v2/user/alerts/events?${query}`);
    } catch {
      return;
    }
    for (const firing of page.items) {
      if (!this.firings.has(firing.alert_id)) this.firings.set(firing.alert_id, firing);
    }
    this.cursor = page.next_cursor;
    $("firings-older").disabled = !page.next_cursor;
    this._renderFirings();
  }

  _describeFiring(firing) {
    const rule = this.rules.get(firing.rule_id);
    return rule ? describeRule(rule) : `${firing.kind} ${firing.symbol ?? ""}`.trim();
  }

  _renderFirings() {
    const ordered = [...this.firings.values()].sort((a, b) => b.second - a.second || (a.alert_id < b.alert_id ? 1 : -1));
    $("firing-rows").replaceChildren(...ordered.map((firing) => {
      const row = document.createElement("tr");
      row.dataset.alert = firing.alert_id;
      row.classList.toggle("acked", Boolean(firing.acked));
      for (const text of [dateTime(new Date(firing.second).toISOString()), this._describeFiring(firing),
        decimal(firing.price), decimal(firing.value)]) {
        const cell = document.createElement("td");
        cell.textContent = text;
        row.append(cell);
      }
      const action = document.createElement("td");
      action.className = "actions";
      if (firing.acked) action.textContent = "acknowledged";
      else action.append(this._button("Acknowledge", `Acknowledge: ${this._describeFiring(firing)}`, () => this._ack(firing.alert_id)));
      row.append(action);
      return row;
    }));
    const unacked = ordered.filter((firing) => !firing.acked).length;
    $("unacked-count").hidden = unacked === 0;
    $("unacked-count").textContent = `${unacked} new`;
  }

  async _ack(alertId) {
    try {
      await this.api.request("POST", `/v2/user/alerts/events/${encodeURIComponent(alertId)}/ack`);
    } catch (failure) {
      $("alert-error").textContent = this.message(failure);
      return;
    }
    const firing = this.firings.get(alertId);
    if (firing) firing.acked = true;
    this._dismiss(alertId);
    this._renderFirings();
  }

  _notify(firing) {
    const toast = document.createElement("div");
    toast.className = "toast";
    toast.dataset.alert = firing.alert_id;
    const text = document.createElement("p");
    text.textContent = `Alert: ${this._describeFiring(firing)} (at ${decimal(firing.price)}).`;
    const buttons = document.createElement("div");
    buttons.className = "buttons";
    buttons.append(
      this._button("Acknowledge", `Acknowledge: ${this._describeFiring(firing)}`, () => this._ack(firing.alert_id), ""),
      this._button("Dismiss", "Dismiss this notification", () => this._dismiss(firing.alert_id), "secondary"),
    );
    toast.append(text, buttons);
    this.toasts.set(firing.alert_id, toast);
    $("notifications").append(toast);
    while (this.toasts.size > MAX_NOTIFICATIONS) this._dismiss(this.toasts.keys().next().value);
  }

  _dismiss(alertId) {
    this.toasts.get(alertId)?.remove();
    this.toasts.delete(alertId);
  }

  _button(text, label, onClick, className = "link") {
    const element = document.createElement("button");
    element.type = "button";
    if (className) element.className = className;
    element.textContent = text;
    element.setAttribute("aria-label", label);
    element.addEventListener("click", onClick);
    return element;
  }
}
