// Shared by the farm page, the task pages and the worker pages: polling the coordinator's change feeds, admin actions, formatting.
// Text from tasks, workers and logs only ever goes into the page through textContent, never as HTML.
"use strict";

const RQ = (() => {
  const body = document.body;
  const pollInterval = Math.max(0.2, parseFloat(body.dataset.pollInterval) || 2) * 1000;
  const isAdmin = body.dataset.admin === "1";
  const csrfMeta = document.querySelector('meta[name="csrf-token"]');
  let clockOffset = 0; // server time minus this browser's time, in seconds

  /** Make an element: el("td", {className: "num", text: "12"}, child, ...). */
  function el(tag, props, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(props || {})) {
      if (value === undefined || value === null) continue;
      if (key === "text") node.textContent = value;
      else if (key === "className") node.className = value;
      else if (key === "dataset") Object.assign(node.dataset, value);
      else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
      else node.setAttribute(key, value);
    }
    for (const child of children) {
      if (child !== null && child !== undefined) node.append(child);
    }
    return node;
  }

  function serverNow() {
    return Date.now() / 1000 + clockOffset;
  }

  /** Seconds for people, by the one rule of renderq/units.py's format_duration: "4.2s", "42s", "3m 05s",
   * "1h 02m", "2d 03h" (tests/test_units.py compares the two); a dash when unknown. */
  function duration(seconds) {
    if (seconds === null || seconds === undefined || !isFinite(seconds)) return "–";
    if (seconds < 0) seconds = 0;
    if (seconds < 10) return seconds.toFixed(1) + "s";
    const s = Math.round(seconds);
    if (s < 60) return s + "s";
    const pad = (n) => String(n).padStart(2, "0");
    if (s < 3600) return Math.floor(s / 60) + "m " + pad(s % 60) + "s";
    if (s < 86400) return Math.floor(s / 3600) + "h " + pad(Math.floor((s % 3600) / 60)) + "m";
    return Math.floor(s / 86400) + "d " + pad(Math.floor((s % 86400) / 3600)) + "h";
  }

  /** A finish estimate by the rule of renderq/units.py's format_eta: "about 4m 10s (3m 05s-5m 40s)" while its
   * range spans more than a quarter of it, else one figure. */
  function eta(seconds, low, high) {
    if (seconds === null || seconds === undefined || !isFinite(seconds)) return "–";
    if (low === null || low === undefined || high === null || high === undefined || high - low <= 0.25 * seconds) {
      return duration(seconds);
    }
    return "about " + duration(seconds) + " (" + duration(low) + "-" + duration(high) + ")";
  }

  function clock(timestamp, withMillis) {
    if (!timestamp) return "–";
    const date = new Date(timestamp * 1000);
    const options = {hour: "2-digit", minute: "2-digit", second: "2-digit", hour12: false};
    let text = date.toLocaleTimeString([], options);
    if (withMillis) text += "." + String(date.getMilliseconds()).padStart(3, "0");
    if (new Date().toDateString() !== date.toDateString()) text = date.toLocaleDateString() + " " + text;
    return text;
  }

  function ago(timestamp) {
    if (!timestamp) return "never";
    return duration(serverNow() - timestamp) + " ago";
  }

  /** Elements with data-since (a start time) show the time elapsed since, data-ago how long ago: kept current. */
  function refreshClocks(root) {
    for (const node of (root || document).querySelectorAll("[data-since]")) {
      node.textContent = duration(serverNow() - parseFloat(node.dataset.since));
    }
    for (const node of (root || document).querySelectorAll("[data-ago]")) {
      node.textContent = (node.dataset.agoPrefix || "") + ago(parseFloat(node.dataset.ago));
    }
  }
  setInterval(() => refreshClocks(), 1000);

  function setLive(ok, text) {
    const live = document.getElementById("live");
    if (!live) return;
    live.classList.toggle("ok", ok);
    live.classList.toggle("down", !ok);
    live.textContent = text;
  }

  let toastTimer = null;
  function toast(message, isError) {
    const box = document.getElementById("toast");
    box.textContent = message;
    box.classList.toggle("error", Boolean(isError));
    box.hidden = false;
    clearTimeout(toastTimer);
    toastTimer = setTimeout(() => { box.hidden = true; }, isError ? 8000 : 3500);
  }

  /**
   * Poll a change feed: the first answer is a full snapshot, the next ones only what changed since our version.
   * onUpdate(state, changes, full) is called after each answer that brought something.
   */
  class Feed {
    constructor(url, onUpdate) {
      this.url = url;
      this.onUpdate = onUpdate;
      this.version = null;
      this.state = {};
      this.timer = null;
      this.busy = false;
    }

    start() {
      document.addEventListener("visibilitychange", () => { if (!document.hidden) this.pollNow(); });
      this.poll();
    }

    pollNow() {
      clearTimeout(this.timer);
      this.poll();
    }

    schedule(delay) {
      clearTimeout(this.timer);
      // A hidden tab polls five times less often: it must not cost the coordinator threads for nothing.
      this.timer = setTimeout(() => this.poll(), document.hidden ? delay * 5 : delay);
    }

    async poll() {
      if (this.busy) return;
      this.busy = true;
      let delay = pollInterval;
      try {
        const separator = this.url.includes("?") ? "&" : "?";
        const url = this.version === null ? this.url : this.url + separator + "since=" + this.version;
        const response = await fetch(url, {credentials: "same-origin", cache: "no-store",
                                           headers: {"Accept": "application/json"}});
        if (response.status === 401) {
          setLive(false, "logged out");
          window.location.reload(); // the server sends the login form
          return;
        }
        const answer = await response.json();
        if (!response.ok) throw new Error(answer.error || response.statusText);
        clockOffset = answer.time - Date.now() / 1000;
        if (answer.full) {
          this.state = answer.snapshot;
          this.version = answer.version;
          this.onUpdate(this.state, null, true);
        } else if (answer.version !== this.version) {
          for (const [section, items] of Object.entries(answer.changes)) {
            const target = this.state[section] || (this.state[section] = {});
            for (const [key, value] of Object.entries(items)) {
              if (value === null) delete target[key];
              else target[key] = value;
            }
          }
          this.version = answer.version;
          this.onUpdate(this.state, answer.changes, false);
        }
        setLive(true, "live");
        // Ask again just after the coordinator's next snapshot, so a change shows within one interval.
        delay = Math.max(200, answer.next_poll * 1000 + 80 + Math.random() * 170);
      } catch (error) {
        setLive(false, "coordinator unreachable, retrying");
      } finally {
        this.busy = false;
        this.schedule(delay);
      }
    }
  }

  /** POST an admin action as JSON; shows the coordinator's sentence when it refuses. Returns the answer or null. */
  async function action(path, payload, doneMessage) {
    let response;
    try {
      response = await fetch(path, {
        method: "POST",
        credentials: "same-origin",
        headers: {"Content-Type": "application/json", "X-CSRF-Token": csrfMeta ? csrfMeta.content : ""},
        body: JSON.stringify(payload),
      });
    } catch (error) {
      toast("The coordinator could not be reached; nothing was changed.", true);
      return null;
    }
    let answer = {};
    try { answer = await response.json(); } catch (error) { /* an empty or non-JSON body */ }
    if (!response.ok) {
      const reason = answer.error || ("the coordinator answered " + response.status);
      toast(response.status === 401 ? "Log in with the admin token first: " + reason : reason, true);
      return null;
    }
    if (doneMessage) toast(doneMessage, false);
    return answer;
  }

  /** Set a progress bar's three segments from frame counts. */
  function setBar(bar, done, failed, rendering, total) {
    const part = (n) => (total ? (100 * n) / total : 0) + "%";
    bar.querySelector(".bar-done").style.width = part(done);
    bar.querySelector(".bar-failed").style.width = part(failed);
    bar.querySelector(".bar-rendering").style.width = part(rendering);
    const percent = total ? Math.round((1000 * done) / total) / 10 : 100;
    bar.setAttribute("aria-valuenow", String(percent));
    bar.title = done + " done, " + failed + " failed, " + rendering + " rendering of " + total;
  }

  function makeBar() {
    return el("div", {className: "bar", role: "progressbar", "aria-valuemin": "0", "aria-valuemax": "100"},
              el("span", {className: "bar-done"}), el("span", {className: "bar-failed"}),
              el("span", {className: "bar-rendering"}));
  }

  /** Keep the rows of `body` (one per key of `items`, held in the Map `rows`) in step with `items`: rows of the
   * `changedKeys` are made with make(key), refilled with fill(row, item, key) or removed when their item went;
   * null redraws every row. New rows put the body back in order(a, b) of keys. The farm's task and worker tables
   * and the task page's frame grid share it. */
  function reconcileRows(body, rows, items, changedKeys, {make, fill, order}) {
    const keys = changedKeys || Object.keys(items);
    let added = false;
    if (!changedKeys) {
      rows.clear();
      body.replaceChildren();
    }
    for (const key of keys) {
      const item = Object.hasOwn(items, key) ? items[key] : undefined; // a key like "__proto__" is no row
      let row = rows.get(key);
      if (!item) {
        if (row) { row.remove(); rows.delete(key); }
        continue;
      }
      if (!row) {
        row = make(key);
        rows.set(key, row);
        added = true;
      }
      fill(row, item, key);
    }
    if (added) {
      // Appending an element that is already in the body moves it: this puts every row in its place.
      for (const key of [...rows.keys()].sort(order)) body.append(rows.get(key));
    }
  }

  /** A worker's ON/OFF switch and its label ({id, name, enabled}); an admin's click switches it, then after(). */
  function workerSwitch(worker, after) {
    const toggle = el("button", {type: "button", className: "switch", role: "switch",
                                 "aria-checked": String(worker.enabled),
                                 "aria-label": "Worker " + worker.name});
    const label = el("span", {className: "switch-text", text: worker.enabled ? "ON" : "OFF"});
    if (!isAdmin) {
      toggle.disabled = true;
      toggle.title = "Log in with the admin token to switch workers";
    } else {
      toggle.addEventListener("click", async () => {
        toggle.disabled = true;
        const enabled = !worker.enabled;
        const note = enabled ? " is ON" : " is OFF: it finishes its frame and takes no more";
        await action("/set_worker_enabled", {worker_id: worker.id, enabled}, "Worker " + worker.name + note);
        after();
      });
    }
    return [toggle, label];
  }

  /** A worker's tags ({id, name, tags, tags_by_admin}): text, or for an admin a form that replaces them (they then
   * outlast the worker's own --tag), then after(). */
  function workerTags(worker, after) {
    const text = worker.tags.length ? worker.tags.join(", ") : "";
    if (!isAdmin) {
      return el("span", {className: "tags-text", text: text || "–",
                         title: worker.tags_by_admin ? "set by an admin" : "the worker's own (--tag)"});
    }
    const input = el("input", {type: "text", value: text, size: 14, "aria-label": "Tags of " + worker.name,
                               placeholder: "no tags", title: "Tags separated by commas"});
    const save = el("button", {type: "submit", className: "small", text: "Set"});
    const form = el("form", {className: "tags-form nowrap"}, input, save);
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      const tags = input.value.split(/[\s,]+/).filter(Boolean);
      save.disabled = true;
      await action("/set_worker_tags", {worker_id: worker.id, tags},
                   "Worker " + worker.name + " has the tags: " + (tags.join(", ") || "none"));
      save.disabled = false;
      after();
    });
    return form;
  }

  /** A task's status as a pill; `labels` (the feed's statuses.labels) says how a status reads to people. */
  function statusPill(status, labels) {
    return el("span", {className: "pill status-" + status, text: (labels || {})[status] || status});
  }

  /** A task's estimate of its frames left in one line: time on the farm, render hours, cost and energy. */
  function estimateText(estimate) {
    if (!estimate) return "";
    const workers = estimate.workers + (estimate.workers === 1 ? " worker" : " workers");
    const parts = [estimate.wall_seconds === null ? "no worker can take it now"
      : "about " + duration(estimate.wall_seconds) + " on " + workers];
    parts.push(estimate.render_hours.toFixed(2) + " render hours");
    if (estimate.cost !== null) parts.push((estimate.cost.toFixed(2) + " " + (estimate.currency || "")).trim());
    if (estimate.energy_kwh !== null) parts.push(estimate.energy_kwh.toFixed(2) + " kWh");
    return parts.join(" · ");
  }

  // Controls only an admin may use are disabled for everyone else, with a reason on hover.
  if (!isAdmin) {
    for (const node of document.querySelectorAll("[data-admin-only]")) {
      node.disabled = true;
      node.title = "Log in with the admin token to do this";
    }
  }

  return {el, duration, eta, clock, ago, serverNow, refreshClocks, setLive, toast, Feed, action, setBar, makeBar,
          reconcileRows, statusPill, estimateText, workerSwitch, workerTags, isAdmin, pollInterval};
})();
