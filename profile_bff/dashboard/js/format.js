// Showing the BFF's values. Quantities, prices and totals are decimal strings (docs/CONTRACTS.md) and are
// shown digit for digit, only grouped by thousands: never through a float, which would round them. Shares
// and changes are percentages for the eye, where a float's rounding does not matter.

/** "92756.445" → "92,756.445" (the digits unchanged); null or undefined → "—". */
export function decimal(value) {
  if (value === null || value === undefined) return "—";
  const text = String(value);
  const negative = text.startsWith("-");
  const [whole, fraction] = (negative ? text.slice(1) : text).split(".");
  const grouped = whole.replace(/\B(?=(\d{3})+(?!\d))/g, ",");
  return (negative ? "-" : "") + grouped + (fraction !== undefined ? "." + fraction : "");
}

/** The share `part / whole` of two decimal strings as "12.3 %" (one decimal), and its fraction 0..1. */
export function share(part, whole) {
  const p = Number(part);
  const w = Number(whole);
  if (!Number.isFinite(p) || !Number.isFinite(w) || w <= 0) return { text: "—", fraction: 0 };
  const fraction = p / w;
  return { text: (fraction * 100).toFixed(1) + " %", fraction };
}

/** A signed percentage string ("3.06271667") as "+3.06 %", and whether it is up or down. */
export function change(percent) {
  if (percent === null || percent === undefined) return { text: "—", direction: "" };
  const value = Number(percent);
  const text = (value > 0 ? "+" : "") + value.toFixed(2) + " %";
  return { text, direction: value > 0 ? "up" : value < 0 ? "down" : "" };
}

/** An RFC 3339 time as the local time of day ("14:03:07"); null → "—". */
export function timeOfDay(iso) {
  if (!iso) return "—";
  return new Date(iso).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit", hour12: false });
}

/** An RFC 3339 time as date and time of day, local. */
export function dateTime(iso) {
  if (!iso) return "—";
  return new Date(iso).toLocaleString([], { hour12: false });
}

/** Whole seconds from RFC 3339 `iso` to `nowMs`, never negative. */
export function ageS(iso, nowMs) {
  return Math.max(0, Math.floor((nowMs - Date.parse(iso)) / 1000));
}
