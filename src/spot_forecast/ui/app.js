// The /ui page: reads the JSON API of the service that serves it and draws an SVG fan chart.
// Plain browser JavaScript with no libraries, so the page works without internet access.
"use strict";

const SVG_NS = "http://www.w3.org/2000/svg";
const HOUR_MS = 3600 * 1000;
const HISTORY_HOURS = 168;
const CHART = { width: 900, height: 370, left: 72, right: 16, top: 26, bottom: 36 };
const DEFAULT_SERIES = "eu-west-1a/m5.large/Linux/UNIX";
// Smallest y-range, as a share of the prices drawn. Spot prices often stay flat for days, and
// without a floor the axis would magnify float noise into a wide fan (`spot-forecast plot` too).
const MIN_PRICE_SPAN = 0.02;

const state = { forecast: null, history: null };

// API -----------------------------------------------------------------------------------------

// Endpoints sit beside /ui, so "../forecast" works under any path prefix.
function apiUrl(route) {
  return new URL("../" + route, window.location.href).toString();
}

async function postJson(route, body) {
  const response = await fetch(apiUrl(route), {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify(body),
  });
  const payload = await response.json().catch(() => null);
  if (!response.ok) {
    throw new Error(`${route} returned ${response.status}: ${errorText(payload)}`);
  }
  return payload;
}

function errorText(payload) {
  if (!payload) return "no JSON body";
  if (payload.detail && payload.detail.length) {
    return payload.detail.map((d) => d.msg).join("; ");
  }
  return payload.error || JSON.stringify(payload);
}

// Page state ------------------------------------------------------------------------------------

function setStatus(id, text, isError) {
  const element = document.getElementById(id);
  element.textContent = text;
  element.classList.toggle("error", Boolean(isError));
}

async function loadSeriesList() {
  const series = await postJson("series", {});
  const list = document.getElementById("series-list");
  for (const item of series) {
    const option = document.createElement("option");
    option.value = item.unique_id;
    list.appendChild(option);
  }
  return series.map((item) => item.unique_id);
}

async function showSeries(seriesId, horizon) {
  setStatus("status", `Loading ${seriesId} ...`, false);
  const [history, forecast] = await Promise.all([
    postJson("history", { series_id: seriesId, hours: HISTORY_HOURS }),
    postJson("forecast", { series_id: seriesId, horizon: horizon }),
  ]);
  state.history = history;
  state.forecast = forecast;
  drawChart(history, forecast, null);
  const last = forecast.last_observed;
  setStatus("status", `${seriesId}: last price ${formatPrice(last.y)} USD/h at ${formatTime(last.ds)} UTC; ` +
    `forecast ${forecast.steps.length} hours by ${forecast.model}`, false);
  document.getElementById("model").textContent = `Model ${forecast.model}`;
}

async function findWindow(event) {
  event.preventDefault();
  const seriesId = document.getElementById("series").value.trim();
  const extra = document.getElementById("candidates").value.split("\n").map((s) => s.trim()).filter(Boolean);
  const ids = [...new Set([seriesId, ...extra].filter(Boolean))];
  const body = {
    candidates: ids.map((id) => ({ series_id: id })),
    duration_hours: Number(document.getElementById("duration").value),
    deadline_hours: Number(document.getElementById("deadline").value),
    limit: 10,
  };
  setStatus("window-status", "Searching ...", false);
  try {
    const answer = await postJson("cheapest_window", body);
    showWindows(answer);
    const best = answer.windows[0];
    if (best && state.forecast && best.unique_id === state.forecast.unique_id) {
      drawChart(state.history, state.forecast, best);
    }
  } catch (error) {
    setStatus("window-status", error.message, true);
  }
}

function showWindows(answer) {
  const table = document.getElementById("windows");
  const body = table.querySelector("tbody");
  body.replaceChildren();
  for (const option of answer.windows) {
    const row = document.createElement("tr");
    const cells = [
      String(option.rank), option.unique_id, formatTime(option.start),
      formatCost(option.cost.expected),
      `${formatCost(option.cost.p10)} to ${formatCost(option.cost.p90)}`,
      `${formatCost(option.saving)} (${option.saving_percent.toFixed(1)} %)`,
    ];
    for (const text of cells) {
      const cell = document.createElement("td");
      cell.textContent = text;
      row.appendChild(cell);
    }
    body.appendChild(row);
  }
  table.hidden = false;
  const base = answer.baseline;
  setStatus("window-status", `Starting now on the series cheapest right now (${base.unique_id}) ` +
    `is expected to cost ${formatCost(base.cost.expected)} USD. ${answer.method}.`, false);
}

// Chart ---------------------------------------------------------------------------------------

function svgElement(name, attributes, parent) {
  const element = document.createElementNS(SVG_NS, name);
  for (const [key, value] of Object.entries(attributes)) element.setAttribute(key, value);
  if (parent) parent.appendChild(element);
  return element;
}

function drawChart(history, forecast, best) {
  const times = history.points.map((p) => Date.parse(p.ds));
  const prices = history.points.map((p) => p.y);
  const steps = forecast.steps;
  const stepTimes = steps.map((s) => Date.parse(s.ds));
  const lastTime = Date.parse(forecast.last_observed.ds);
  const lastPrice = forecast.last_observed.y;
  const quantile = (step, level) => step.quantiles[level] ?? step.median;

  const low = Math.min(...prices, ...steps.map((s) => quantile(s, "0.05")));
  const high = Math.max(...prices, ...steps.map((s) => quantile(s, "0.95")));
  const middle = (low + high) / 2;
  const half = Math.max((high - low) * 1.16, middle * MIN_PRICE_SPAN) / 2;
  const yMin = Math.max(0, middle - half);
  const yMax = middle + half;
  const xMin = times[0];
  const xMax = stepTimes[stepTimes.length - 1] + HOUR_MS;
  const x = (t) => CHART.left + ((t - xMin) / (xMax - xMin)) * (CHART.width - CHART.left - CHART.right);
  const y = (v) => CHART.top + (1 - (v - yMin) / (yMax - yMin)) * (CHART.height - CHART.top - CHART.bottom);

  const svg = svgElement("svg", {
    viewBox: `0 0 ${CHART.width} ${CHART.height}`, role: "img", "data-series": forecast.unique_id,
  });
  drawAxes(svg, x, y, xMin, xMax, yMin, yMax);

  // Bands: the upper quantile left to right, then the lower one back, from the last price.
  const band = (lower, upper, className) => {
    const top = [[lastTime, lastPrice], ...steps.map((s, i) => [stepTimes[i], quantile(s, upper)])];
    const bottom = [[lastTime, lastPrice], ...steps.map((s, i) => [stepTimes[i], quantile(s, lower)])].reverse();
    const points = [...top, ...bottom].map(([t, v]) => `${x(t).toFixed(1)},${y(v).toFixed(1)}`);
    svgElement("polygon", { class: className, points: points.join(" ") }, svg);
  };
  band("0.05", "0.95", "band90");
  band("0.1", "0.9", "band80");

  // A price stays in force until the next one, so history is drawn as steps.
  let historyPath = `M${x(times[0]).toFixed(1)},${y(prices[0]).toFixed(1)}`;
  for (let i = 1; i < times.length; i += 1) {
    historyPath += ` H${x(times[i]).toFixed(1)} V${y(prices[i]).toFixed(1)}`;
  }
  historyPath += ` H${x(lastTime + HOUR_MS).toFixed(1)}`;
  svgElement("path", { class: "history", d: historyPath, "data-points": String(times.length) }, svg);

  const median = [[lastTime, lastPrice], ...steps.map((s, i) => [stepTimes[i], s.median])];
  const medianPath = median.map(([t, v], i) => `${i ? "L" : "M"}${x(t).toFixed(1)},${y(v).toFixed(1)}`);
  svgElement("path", { class: "median", d: medianPath.join(" "), "data-points": String(median.length) }, svg);

  svgElement("line", { class: "now", x1: x(lastTime), x2: x(lastTime), y1: CHART.top,
    y2: CHART.height - CHART.bottom }, svg);
  if (best) {
    const start = Math.max(Date.parse(best.start), xMin);
    const end = Math.min(Date.parse(best.end), xMax);
    svgElement("rect", { class: "best", x: x(start), width: Math.max(1, x(end) - x(start)),
      y: CHART.top, height: CHART.height - CHART.top - CHART.bottom }, svg);
  }

  const container = document.getElementById("chart");
  container.replaceChildren(svg);
  container.dataset.state = "drawn";
}

function drawAxes(svg, x, y, xMin, xMax, yMin, yMax) {
  const bottom = CHART.height - CHART.bottom;
  const right = CHART.width - CHART.right;
  // Enough decimals that neighbouring tick labels differ, even for a narrow price range.
  const tickStep = (yMax - yMin) / 5;
  const decimals = Math.min(8, Math.max(2, Math.ceil(-Math.log10(tickStep)) + 1));
  for (let i = 0; i <= 5; i += 1) {
    const value = yMin + tickStep * i;
    svgElement("line", { class: "grid", x1: CHART.left, x2: right, y1: y(value), y2: y(value) }, svg);
    const label = svgElement("text", { x: CHART.left - 6, y: y(value) + 4, "text-anchor": "end" }, svg);
    label.textContent = value.toFixed(decimals);
  }
  const dayMs = 24 * HOUR_MS;
  const everyDays = Math.max(1, Math.round((xMax - xMin) / dayMs / 8));
  for (let t = Math.ceil(xMin / dayMs) * dayMs; t <= xMax; t += everyDays * dayMs) {
    svgElement("line", { class: "grid", x1: x(t), x2: x(t), y1: CHART.top, y2: bottom }, svg);
    const label = svgElement("text", { x: x(t), y: bottom + 16, "text-anchor": "middle" }, svg);
    label.textContent = new Date(t).toISOString().slice(5, 10);
  }
  svgElement("line", { class: "axis", x1: CHART.left, x2: right, y1: bottom, y2: bottom }, svg);
  svgElement("line", { class: "axis", x1: CHART.left, x2: CHART.left, y1: CHART.top, y2: bottom }, svg);
  const unit = svgElement("text", { x: 4, y: CHART.top - 12 }, svg);
  unit.textContent = "USD/h";
}

function formatPrice(value) {
  return Number(value).toPrecision(3);
}

function formatCost(value) {
  return Number(value).toFixed(4);
}

function formatTime(iso) {
  return iso.replace("T", " ").slice(0, 16);
}

// Start ---------------------------------------------------------------------------------------

async function start() {
  const params = new URLSearchParams(window.location.search);
  const horizonInput = document.getElementById("horizon");
  if (params.get("horizon")) horizonInput.value = params.get("horizon");
  document.getElementById("series-form").addEventListener("submit", (event) => {
    event.preventDefault();
    showSeries(document.getElementById("series").value.trim(), Number(horizonInput.value))
      .catch((error) => setStatus("status", error.message, true));
  });
  document.getElementById("window-form").addEventListener("submit", findWindow);
  try {
    const ids = await loadSeriesList();
    const wanted = params.get("series") || (ids.includes(DEFAULT_SERIES) ? DEFAULT_SERIES : ids[0]);
    if (!wanted) {
      setStatus("status", "The service holds no series; see POST /refresh.", true);
      return;
    }
    document.getElementById("series").value = wanted;
    await showSeries(wanted, Number(horizonInput.value));
  } catch (error) {
    setStatus("status", error.message, true);
  }
}

start();
