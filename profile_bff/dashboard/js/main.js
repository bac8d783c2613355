// The dashboard's wiring: signing in and out, the live profile, the coin form with instrument search, the
// charts and the operation history. Everything it shows comes from the BFF's own routes.

import { AlertsPanel } from "./alerts.js";
import { Api, ApiFailure } from "./api.js";
import { CandleChart, ValueChart } from "./charts.js";
import { ageS, change, dateTime, decimal, share, timeOfDay } from "./format.js";
import { LiveSocket } from "./socket.js";

/** A coin's price is marked stale when its second is older than this (s): the BFF's own definition of a
 * live instrument (GET /v1/instruments/{symbol} "live"). */
const STALE_S = 60;
const SEARCH_DEBOUNCE_MS = 150;
const SEARCH_REFRESH_MS = 2000;
const SEARCH_RETRY_MS = 1000;
const SEARCH_LIMIT = 8;
const HISTORY_PAGE = 20;
const CANDLE_LIMIT = 300;

const $ = (id) => document.getElementById(id);

const api = new Api();
let socket = null;
let valueChart = null;
let candleChart = null;
let profile = null;
let socketState = "offline";
let editing = null; // the symbol being edited, or null when adding
let charted = null; // the symbol whose candles are shown
let chartedSecond = null; // the second of its latest pushed price
const rows = new Map(); // symbol → its table row's cells
const historyCursors = [null]; // the cursor of each page shown, newest first
const alerts = new AlertsPanel(api, { message });

// -- signing in and out ---------------------------------------------------------------------------------

function showSignedIn(signedIn) {
  $("signed-out").hidden = signedIn;
  $("signed-in").hidden = !signedIn;
  $("whoami").hidden = !signedIn;
  if (signedIn) {
    valueChart ??= new ValueChart($("value-chart"));
    candleChart ??= new CandleChart($("candle-chart"));
    socket ??= new LiveSocket(api, {
      onProfile: showProfile,
      onMessage: (message) => alerts.onFiring(message),
      onState: showState,
    });
    socket.start();
    loadHistory(null);
    alerts.start();
  } else {
    socket?.stop();
    alerts.stop();
    resetPortfolio();
    $("auth-password").value = "";
    $("auth-name").focus();
  }
}

function resetPortfolio() {
  profile = null;
  charted = null;
  rows.clear();
  $("coin-rows").replaceChildren();
  $("history-rows").replaceChildren();
  $("total").textContent = "—";
  $("prices-at").textContent = "—";
  $("prices-age").textContent = "";
  $("user-name").textContent = "";
  $("candles-symbol").textContent = "";
  $("candles-status").textContent = "Choose “Chart” on a coin to see its candles.";
  valueChart?.clear();
  candleChart?.clear();
  endEdit();
}

$("auth-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const action = event.submitter?.value ?? "login";
  const name = $("auth-name").value.trim();
  const password = $("auth-password").value;
  $("auth-error").textContent = "";
  const buttons = event.target.querySelectorAll("button");
  buttons.forEach((b) => (b.disabled = true));
  $("auth-status").textContent = action === "register" ? "Creating your account…" : "Signing in…";
  try {
    if (action === "register") await api.register(name, password);
    else await api.login(name, password);
    showSignedIn(true);
    $("total-title").focus(); // where a keyboard or screen-reader user goes on from
  } catch (failure) {
    $("auth-error").textContent = message(failure);
  } finally {
    buttons.forEach((b) => (b.disabled = false));
    $("auth-status").textContent = "";
  }
});

$("sign-out").addEventListener("click", async () => {
  try {
    await api.logout();
  } catch {
    // The session ends here either way; the cookie expires by itself if the BFF could not be told.
  }
  showSignedIn(false);
});

api.onSignedOut = () => showSignedIn(false);

function message(failure) {
  if (failure instanceof ApiFailure) {
    if (failure.status === 429 && failure.retryAfter) return `${failure.message} (try again in ${failure.retryAfter} s)`;
    return failure.message;
  }
  return String(failure);
}

// -- the live profile -----------------------------------------------------------------------------------

const STATE_TEXT = { open: "Live", connecting: "Connecting…", offline: "Signed out" };

function showState(state, delayS) {
  socketState = state;
  const element = $("connection");
  element.dataset.state = state;
  element.textContent = state === "reconnecting"
    ? `Reconnecting${delayS !== undefined ? ` in ${Math.ceil(delayS)} s` : ""}…`
    : STATE_TEXT[state];
  if (state === "open" && charted) loadCandles();
  refreshAges();
}

/** One pushed profile: {"ID", "Name", "Coins": {"Quantities", "Prices", "Totals", "PriceTimes"}, "Total",
 * "PricesAt"} (docs/CONTRACTS.md). */
function showProfile(pushed) {
  profile = pushed;
  $("user-name").textContent = pushed.Name;
  $("total").textContent = decimal(pushed.Total);
  $("prices-at").textContent = timeOfDay(pushed.PricesAt);
  if (pushed.PricesAt) $("prices-at").dateTime = pushed.PricesAt;
  valueChart.add(pushed.PricesAt, pushed.Total);

  const coins = pushed.Coins;
  const symbols = Object.keys(coins.Quantities).sort();
  for (const symbol of [...rows.keys()]) {
    if (!(symbol in coins.Quantities)) {
      rows.get(symbol).row.remove();
      rows.delete(symbol);
    }
  }
  symbols.forEach((symbol, index) => {
    const cells = rows.get(symbol) ?? addRow(symbol);
    if ($("coin-rows").children[index] !== cells.row) $("coin-rows").insertBefore(cells.row, $("coin-rows").children[index] ?? null);
    cells.price.textContent = decimal(coins.Prices[symbol]);
    cells.time.textContent = timeOfDay(coins.PriceTimes[symbol]);
    cells.quantity.textContent = decimal(coins.Quantities[symbol]);
    cells.value.textContent = decimal(coins.Totals[symbol]);
    const part = share(coins.Totals[symbol], pushed.Total);
    cells.shareText.textContent = part.text;
    cells.meter.value = part.fraction;
    if (symbol === charted && coins.PriceTimes[symbol] !== chartedSecond) {
      chartedSecond = coins.PriceTimes[symbol];
      candleChart.live(chartedSecond, coins.Prices[symbol]);
      refreshNewestCandles();
    }
  });
  $("no-coins").hidden = symbols.length > 0;
  refreshAges();
}

function addRow(symbol) {
  const row = document.createElement("tr");
  row.dataset.symbol = symbol;
  const cell = (className) => {
    const td = document.createElement("td");
    td.className = className;
    row.append(td);
    return td;
  };
  const name = document.createElement("th");
  name.scope = "row";
  name.textContent = symbol;
  row.append(name);
  const price = cell("price");
  const timeCell = cell("price-time");
  const time = document.createElement("span");
  const stale = document.createElement("span");
  stale.className = "stale-mark";
  stale.textContent = "stale";
  stale.hidden = true;
  timeCell.append(time, " ", stale);
  const quantity = cell("quantity");
  const value = cell("value");
  const shareCell = cell("share");
  const meter = document.createElement("meter");
  meter.min = 0;
  meter.max = 1;
  meter.setAttribute("aria-label", `Share of ${symbol}`);
  const shareText = document.createElement("span");
  shareCell.append(meter, " ", shareText);
  const actions = cell("actions");
  actions.append(
    button("Chart", `Show the candles of ${symbol}`, () => chart(symbol)),
    button("Edit", `Edit the quantity of ${symbol}`, () => startEdit(symbol)),
    button("Remove", `Remove ${symbol}`, () => removeCoin(symbol)),
  );
  const cells = { row, price, time, stale, quantity, value, meter, shareText };
  rows.set(symbol, cells);
  return cells;
}

function button(text, label, onClick) {
  const element = document.createElement("button");
  element.type = "button";
  element.className = "link";
  element.textContent = text;
  element.setAttribute("aria-label", label);
  element.addEventListener("click", onClick);
  return element;
}

/** The age of every price, and its stale mark: a price older than STALE_S, or any price while the socket
 * is not open (nothing new can arrive then). */
function refreshAges() {
  if (!profile) return;
  const now = Date.now();
  const live = socketState === "open";
  $("prices-age").textContent = profile.PricesAt ? `(${ageS(profile.PricesAt, now)} s ago)` : "";
  for (const [symbol, cells] of rows) {
    const at = profile.Coins.PriceTimes[symbol];
    const stale = !live || !at || ageS(at, now) > STALE_S;
    cells.stale.hidden = !stale;
    cells.row.classList.toggle("stale", stale);
    cells.row.dataset.stale = String(stale);
  }
}

setInterval(refreshAges, 1000);

// -- adding, editing and removing coins -----------------------------------------------------------------

$("coin-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  closeSearch();
  const symbol = $("coin-symbol").value.trim().toLowerCase();
  const quantity = $("coin-quantity").value.trim();
  $("coin-error").textContent = "";
  $("coin-submit").disabled = true;
  try {
    if (editing) {
      await api.request("PATCH", "/v2/coin/symbol", { body: { symbol: editing, quantity } });
    } else {
      const headers = globalThis.crypto?.randomUUID ? { "Idempotency-Key": crypto.randomUUID() } : {};
      await api.request("POST", "/v2/coin/symbol", { body: { symbol, quantity }, headers });
    }
    // Typing that went on while the answer was awaited is kept.
    if ($("coin-symbol").value.trim().toLowerCase() === (editing ?? symbol) && $("coin-quantity").value.trim() === quantity) {
      endEdit();
    }
    loadHistory(null);
  } catch (failure) {
    $("coin-error").textContent = message(failure);
  } finally {
    $("coin-submit").disabled = false;
  }
});

function startEdit(symbol) {
  editing = symbol;
  $("coin-form-title").textContent = `Edit ${symbol}`;
  $("coin-symbol").value = symbol;
  $("coin-symbol").readOnly = true;
  $("coin-quantity").value = profile?.Coins.Quantities[symbol] ?? "";
  $("coin-submit").textContent = "Save";
  $("coin-cancel").hidden = false;
  $("coin-error").textContent = "";
  $("coin-quantity").focus();
}

function endEdit() {
  editing = null;
  $("coin-form-title").textContent = "Add a coin";
  $("coin-symbol").readOnly = false;
  $("coin-symbol").value = "";
  $("coin-quantity").value = "";
  $("coin-submit").textContent = "Add";
  $("coin-cancel").hidden = true;
}

$("coin-cancel").addEventListener("click", () => {
  endEdit();
  $("coin-error").textContent = "";
});

async function removeCoin(symbol) {
  $("coin-error").textContent = "";
  try {
    await api.request("DELETE", `/v2/coin/symbol?symbol=${encodeURIComponent(symbol)}`);
    if (editing === symbol) endEdit();
    loadHistory(null);
  } catch (failure) {
    $("coin-error").textContent = message(failure);
  }
}

// -- instrument search as you type ----------------------------------------------------------------------

let searchTimer = null;
let searchRefresh = null;
let searchGeneration = 0;
let activeOption = -1;

$("coin-symbol").addEventListener("input", () => {
  clearTimeout(searchTimer);
  searchTimer = setTimeout(search, SEARCH_DEBOUNCE_MS);
});

$("coin-symbol").addEventListener("keydown", (event) => {
  const options = [...$("search-results").children];
  if ($("search-results").hidden || options.length === 0) return;
  if (event.key === "ArrowDown" || event.key === "ArrowUp") {
    event.preventDefault();
    const step = event.key === "ArrowDown" ? 1 : -1;
    activeOption = (activeOption + step + options.length) % options.length;
    options.forEach((option, index) => option.setAttribute("aria-selected", String(index === activeOption)));
    $("coin-symbol").setAttribute("aria-activedescendant", options[activeOption].id);
  } else if (event.key === "Enter" && activeOption >= 0) {
    event.preventDefault();
    choose(options[activeOption].dataset.symbol);
  } else if (event.key === "Escape") {
    closeSearch();
  }
});

// The list closes a moment after the field loses focus (a click on an option lands first), unless the
// field has the focus back by then: a search typed meanwhile is kept.
$("coin-symbol").addEventListener("blur", () => setTimeout(() => {
  if (document.activeElement !== $("coin-symbol")) closeSearch();
}, 150));

async function search() {
  const query = $("coin-symbol").value.trim().replace(/[^A-Za-z0-9]/g, "").slice(0, 20);
  if (editing || query.length === 0) {
    closeSearch();
    return;
  }
  const generation = ++searchGeneration;
  let page;
  try {
    page = await api.request("GET", `/v1/instruments?q=${encodeURIComponent(query)}&limit=${SEARCH_LIMIT}`, { auth: false });
  } catch (failure) {
    // A failed search leaves the list as it was; one that may pass later (no answer, 429, 5xx) is tried again
    // while the field has the focus, after the server's Retry-After when it sent one.
    const transient = failure instanceof ApiFailure && (failure.status === 0 || failure.status === 429 || failure.status >= 500);
    if (transient && generation === searchGeneration && document.activeElement === $("coin-symbol")) {
      const waitS = Number(failure.retryAfter) || SEARCH_RETRY_MS / 1000;
      clearTimeout(searchRefresh);
      searchRefresh = setTimeout(search, waitS * 1000);
    }
    return;
  }
  if (generation !== searchGeneration) return; // a newer search answered first
  const list = $("search-results");
  list.replaceChildren(...page.instruments.map((item, index) => {
    const option = document.createElement("li");
    option.id = `instrument-${index}`;
    option.setAttribute("role", "option");
    option.setAttribute("aria-selected", String(index === activeOption));
    option.dataset.symbol = item.symbol;
    const name = document.createElement("strong");
    name.textContent = item.symbol;
    const price = document.createElement("span");
    price.textContent = decimal(item.price);
    const moved = change(item.change_percent);
    const changeText = document.createElement("span");
    changeText.textContent = moved.text;
    if (moved.direction) changeText.className = moved.direction;
    option.append(name, price, changeText);
    option.addEventListener("mousedown", (event) => {
      event.preventDefault();
      choose(item.symbol);
    });
    return option;
  }));
  const open = page.instruments.length > 0 && document.activeElement === $("coin-symbol");
  list.hidden = !open;
  $("coin-symbol").setAttribute("aria-expanded", String(open));
  clearTimeout(searchRefresh);
  if (open) searchRefresh = setTimeout(search, SEARCH_REFRESH_MS); // live prices while the list is open
}

function choose(symbol) {
  $("coin-symbol").value = symbol;
  closeSearch();
  $("coin-quantity").focus();
}

function closeSearch() {
  searchGeneration++;
  clearTimeout(searchTimer);
  clearTimeout(searchRefresh);
  activeOption = -1;
  $("search-results").hidden = true;
  $("search-results").replaceChildren();
  $("coin-symbol").setAttribute("aria-expanded", "false");
  $("coin-symbol").removeAttribute("aria-activedescendant");
}

// -- candles --------------------------------------------------------------------------------------------

function interval() {
  return document.querySelector('input[name="interval"]:checked').value;
}

function chart(symbol) {
  charted = symbol;
  chartedSecond = null;
  $("candles-symbol").textContent = symbol;
  loadCandles();
  $("candles-title").scrollIntoView({ block: "nearest" });
}

for (const radio of document.querySelectorAll('input[name="interval"]')) {
  radio.addEventListener("change", () => charted && loadCandles());
}

async function loadCandles() {
  const symbol = charted;
  const chosen = interval();
  $("candles-status").textContent = `Loading ${symbol} at ${chosen}…`;
  try {
    const page = await api.request(
      "GET", `/v1/instruments/${encodeURIComponent(symbol)}/candles?interval=${chosen}&limit=${CANDLE_LIMIT}`, { auth: false },
    );
    if (symbol !== charted || chosen !== interval()) return;
    candleChart.show(page.candles, chosen);
    candleStatus();
  } catch (failure) {
    if (symbol === charted) $("candles-status").textContent = `No candles: ${message(failure)}`;
  }
}

function candleStatus() {
  $("candles-status").textContent = `${candleChart.count} candles of ${charted} at ${interval()}, live.`;
}

let newestPending = false;

/** The newest two candles again from the BFF, at most once a second (its answers are cached that long):
 * a pushed price carries only the close, the BFF's candle has the second's open, high and low too. */
async function refreshNewestCandles() {
  if (newestPending) return;
  newestPending = true;
  const symbol = charted;
  const chosen = interval();
  try {
    const page = await api.request(
      "GET", `/v1/instruments/${encodeURIComponent(symbol)}/candles?interval=${chosen}&limit=2`, { auth: false },
    );
    if (symbol === charted && chosen === interval()) candleChart.merge(page.candles);
  } catch {
    // The pushed close stays until the next answer.
  } finally {
    if (symbol === charted) candleStatus();
    setTimeout(() => (newestPending = false), 1000);
  }
}

// -- operation history ----------------------------------------------------------------------------------

const OPERATIONS = { add: "added", update: "changed", remove: "removed" };

async function loadHistory(cursor) {
  if (cursor === null) historyCursors.length = 1;
  const query = `limit=${HISTORY_PAGE}` + (cursor ? `&cursor=${encodeURIComponent(cursor)}` : "");
  let page;
  try {
    page = await api.request("GET", `/v2/user/history?${query}`);
  } catch {
    return;
  }
  $("history-rows").replaceChildren(...page.items.map((item) => {
    const row = document.createElement("tr");
    for (const text of [dateTime(item.at), item.symbol, OPERATIONS[item.operation] ?? item.operation,
      decimal(item.old_quantity), decimal(item.new_quantity)]) {
      const cell = document.createElement("td");
      cell.textContent = text;
      row.append(cell);
    }
    return row;
  }));
  $("history-older").disabled = !page.next_cursor;
  $("history-older").dataset.cursor = page.next_cursor ?? "";
  $("history-newest").disabled = historyCursors.length <= 1;
}

$("history-older").addEventListener("click", () => {
  const cursor = $("history-older").dataset.cursor;
  if (!cursor) return;
  historyCursors.push(cursor);
  loadHistory(cursor);
});

$("history-newest").addEventListener("click", () => loadHistory(null));

// -- start: a reload keeps the session through the refresh cookie -----------------------------------------

(async () => {
  let signedIn = false;
  try {
    signedIn = await api.refresh();
  } catch {
    signedIn = false;
  }
  showSignedIn(signedIn);
})();
