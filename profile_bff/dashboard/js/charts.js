// The two charts, drawn by TradingView's lightweight-charts (vendored release file, `make vendor`): the
// portfolio's value over this session, and the candles of one coin. Colours come from the stylesheet's
// variables, so they follow the light or dark preference. Times on the charts are UTC seconds.

import {
  AreaSeries,
  CandlestickSeries,
  createChart,
} from "../vendor/lightweight-charts.standalone.production.mjs";

/** Seconds of each candle interval the page offers. */
export const INTERVAL_S = { "1s": 1, "1m": 60, "5m": 300, "1h": 3600 };

function palette() {
  const style = getComputedStyle(document.documentElement);
  const read = (name) => style.getPropertyValue(name).trim();
  return {
    text: read("--muted"),
    background: read("--card"),
    grid: read("--chart-grid"),
    line: read("--chart-line"),
    fill: read("--chart-fill"),
    up: read("--up"),
    down: read("--down"),
  };
}

function chartOptions(colours) {
  return {
    autoSize: true,
    // The licence's link to TradingView is in the page's footer: the logo this option draws needs an
    // inline style, which the page's Content-Security-Policy refuses.
    layout: { background: { color: colours.background }, textColor: colours.text, attributionLogo: false },
    grid: { vertLines: { color: colours.grid }, horzLines: { color: colours.grid } },
    timeScale: { timeVisible: true, secondsVisible: true },
  };
}

function followColourScheme(apply) {
  matchMedia("(prefers-color-scheme: dark)").addEventListener("change", () => apply(palette()));
}

/** The portfolio value over the session: `add(iso, total)` appends (or replaces) the point of a second. */
export class ValueChart {
  constructor(container) {
    const colours = palette();
    this.chart = createChart(container, chartOptions(colours));
    this.series = this.chart.addSeries(AreaSeries, {
      lineColor: colours.line, topColor: colours.fill, bottomColor: "rgba(0,0,0,0)", lineWidth: 2,
    });
    this.last = 0;
    followColourScheme((c) => {
      this.chart.applyOptions(chartOptions(c));
      this.series.applyOptions({ lineColor: c.line, topColor: c.fill });
    });
  }

  add(iso, total) {
    if (!iso || total === null || total === undefined) return;
    const time = Math.floor(Date.parse(iso) / 1000);
    if (time < this.last) return;
    this.last = time;
    this.series.update({ time, value: Number(total) });
  }

  clear() {
    this.series.setData([]);
    this.last = 0;
  }
}

/** Candles of one coin: `show(candles)` with the BFF's candles (oldest first), `live(iso, price)` folds a
 * pushed price into the candle of its period, opening the next one when the period turns. */
export class CandleChart {
  constructor(container) {
    const colours = palette();
    this.chart = createChart(container, chartOptions(colours));
    this.series = this.chart.addSeries(CandlestickSeries, this._colours(colours));
    this.intervalS = 1;
    this.lastCandle = null;
    followColourScheme((c) => {
      this.chart.applyOptions(chartOptions(c));
      this.series.applyOptions(this._colours(c));
    });
  }

  _colours(c) {
    return { upColor: c.up, downColor: c.down, wickUpColor: c.up, wickDownColor: c.down, borderVisible: false };
  }

  /** `candles`: [{open_time, open, high, low, close, ...}] of `interval` ("1s", "1m", ...). */
  show(candles, interval) {
    this.intervalS = INTERVAL_S[interval];
    const data = candles.map((c) => ({
      time: Math.floor(Date.parse(c.open_time) / 1000),
      open: Number(c.open), high: Number(c.high), low: Number(c.low), close: Number(c.close),
    }));
    this.series.setData(data);
    this.lastCandle = data.length ? { ...data[data.length - 1] } : null;
    this.chart.timeScale().fitContent();
  }

  /** The number of candles shown. */
  get count() {
    return this.series.data().length;
  }

  /** Newer candles from the BFF (the newest ones of a fresh answer): each replaces the one of its period,
   * or is appended; older ones than the newest shown are left alone. */
  merge(candles) {
    for (const c of candles) {
      const candle = {
        time: Math.floor(Date.parse(c.open_time) / 1000),
        open: Number(c.open), high: Number(c.high), low: Number(c.low), close: Number(c.close),
      };
      if (this.lastCandle && candle.time < this.lastCandle.time) continue;
      this.lastCandle = { ...candle };
      this.series.update(candle);
    }
  }

  /** A pushed price: the close of the candle of its period until the BFF's own candle replaces it. */
  live(iso, price) {
    if (!iso || price === null || price === undefined) return;
    const second = Math.floor(Date.parse(iso) / 1000);
    const time = second - (second % this.intervalS);
    const value = Number(price);
    const last = this.lastCandle;
    if (last && time < last.time) return;
    if (last && time === last.time) {
      last.high = Math.max(last.high, value);
      last.low = Math.min(last.low, value);
      last.close = value;
    } else {
      this.lastCandle = { time, open: value, high: value, low: value, close: value };
    }
    this.series.update({ ...this.lastCandle });
  }

  clear() {
    this.series.setData([]);
    this.lastCandle = null;
  }
}
