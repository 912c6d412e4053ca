// A task's page: its frames as a grid, render times as a chart, the latest images, the log, and the actions.
// Kept current from GET /status/task_updates; the log follows GET /get_log from the last offset read.
"use strict";

(() => {
  const {el} = RQ;
  const page = document.getElementById("task-page");
  const taskId = Number(page.dataset.taskId);
  // The status sets, from renderq.model through the feed's first snapshot (task.statuses): no copy of our own.
  let statuses = {task_final: [], task_claimable: [], task_resumable: [], task_retryable: []};
  const isFinal = (status) => statuses.task_final.includes(status);
  const SHOWN_IN_BROWSER = /\.(png|jpe?g|webp|gif)$/i;
  const THUMBNAILS = 16;
  const LOG_KEEP_CHARS = 400000; // older log text is dropped from the page (the whole log stays on the server)
  const SVG = "http://www.w3.org/2000/svg";

  let summary = null;
  let frames = {}; // frame number (string) -> [status, worker, attempts, started_at, ended_at, seconds, output, error,
                  // has a PNG preview]
  let latestFrames = {}; // the latest rendered frames, from any page, in the same form
  let framesPage = 0; // the page of frames shown; the coordinator sends one page at a time
  const cells = new Map(); // frame number (string) -> grid button
  let selected = null;

  const frameOf = (key) => frameIn(frames, key);
  const frameIn = (source, key) => {
    const f = source[key];
    return f && {number: Number(key), status: f[0], worker: f[1], attempts: f[2], started_at: f[3], ended_at: f[4],
                 seconds: f[5], output: f[6], error: f[7], preview: Boolean(f[8])};
  };
  const imageUrl = (number) => "/download_frame?task_id=" + taskId + "&frame=" + number + "&inline=1";
  const fileUrl = (number) => "/download_frame?task_id=" + taskId + "&frame=" + number;
  // A frame the page can show: one with a PNG preview (EXR, HDR, TIFF, 16-bit PNG...), or an image a browser shows.
  const hasImage = (frame) => Boolean(frame.output) && (frame.preview || SHOWN_IN_BROWSER.test(frame.output));

  // -- summary, progress and actions --------------------------------------------------------------------------------

  function renderSummary() {
    const s = summary;
    document.getElementById("task-name").textContent = s.name;
    document.title = s.name + " · RenderQ";
    const pill = document.getElementById("task-status");
    pill.className = "pill status-" + s.status;
    pill.textContent = (statuses.labels || {})[s.status] || s.status;
    RQ.setBar(document.getElementById("task-bar"), s.done, s.failed, s.rendering, s.total);
    document.getElementById("stat-percent").textContent = s.percent + " %";
    document.getElementById("stat-frames").textContent = s.done + " / " + s.failed + " / " + s.total;
    const approvable = (statuses.task_approvable || []).includes(s.status);
    document.getElementById("stat-eta").textContent = isFinal(s.status) ? "–"
      : statuses.task_resumable.includes(s.status) ? "paused" : approvable ? "approval" : RQ.eta(s.eta, s.eta_low, s.eta_high);
    const estimate = RQ.estimateText(s.estimate);
    const estimateLine = document.getElementById("task-estimate");
    estimateLine.hidden = !estimate || approvable;
    estimateLine.textContent = estimate ? "The frames left: " + estimate : "";
    renderScouts(approvable);
    const elapsed = document.getElementById("stat-elapsed");
    delete elapsed.dataset.since;
    if (!s.started_at) elapsed.textContent = "–";
    else if (s.ended_at) elapsed.textContent = RQ.duration(s.ended_at - s.started_at);
    else elapsed.dataset.since = String(s.started_at);
    document.getElementById("stat-workers").textContent = s.workers.length ? s.workers.join(", ") : "none";
    const waiting = document.getElementById("task-waiting");
    waiting.hidden = !s.waiting;
    waiting.textContent = s.waiting || "";
    const blocked = s.blocked || [];
    const blockedLine = document.getElementById("task-blocked");
    blockedLine.hidden = !blocked.length;
    blockedLine.textContent = blocked.length
      ? "Blocked after repeated failures: " +
        blocked.map((b) => b.worker + " (" + b.failures + (b.failures === 1 ? " failure)" : " failures)")).join(", ") +
        ". Retrying the failed frames unblocks them."
      : "";
    const priority = document.getElementById("task-priority");
    if (document.activeElement !== priority) priority.value = String(s.priority);
    if (RQ.isAdmin) {
      document.getElementById("action-pause").disabled = !statuses.task_claimable.includes(s.status);
      document.getElementById("action-resume").disabled = !statuses.task_resumable.includes(s.status);
      document.getElementById("action-cancel").disabled = isFinal(s.status);
      document.getElementById("action-approve").disabled = !approvable;
      document.getElementById("action-retry").disabled =
        !((s.failed > 0 || blocked.length > 0) && statuses.task_retryable.includes(s.status));
    }
    document.getElementById("action-zip").hidden = s.done === 0 || s.files_deleted;
  }

  async function act(path, extra, message) {
    const answer = await RQ.action(path, Object.assign({task_id: taskId}, extra || {}), message);
    feed.pollNow();
    return answer;
  }

  document.getElementById("action-pause").addEventListener("click", () =>
    act("/pause_task", null, "Paused: frames being rendered finish, no new ones start"));
  document.getElementById("action-resume").addEventListener("click", () =>
    act("/resume_task", null, "Resumed"));
  document.getElementById("action-retry").addEventListener("click", () =>
    act("/retry_failed_frames", null, "The failed frames are queued again and blocked workers unblocked"));
  const cancelTask = () => {
    if (window.confirm("Cancel the frames of this task that are not rendered yet? Rendered frames stay.")) {
      act("/cancel_task", null, "Canceled");
    }
  };
  document.getElementById("action-cancel").addEventListener("click", cancelTask);
  document.getElementById("action-reject").addEventListener("click", cancelTask);
  document.getElementById("action-approve").addEventListener("click", () =>
    act("/approve_task", null, "Approved: the rest of the frames render now"));
  const priorityInput = document.getElementById("task-priority");
  priorityInput.addEventListener("change", async () => {
    const priority = parseInt(priorityInput.value, 10);
    if (!Number.isInteger(priority)) return;
    const answer = await act("/set_task_priority", {priority}, "Priority set to " + priority);
    if (answer === null && summary) priorityInput.value = String(summary.priority);
  });

  // -- frame grid ---------------------------------------------------------------------------------------------------

  function describe(frame) {
    const parts = ["Frame " + frame.number, frame.status];
    if (frame.worker) parts.push(frame.worker);
    if (frame.attempts) parts.push(frame.attempts + (frame.attempts === 1 ? " attempt" : " attempts"));
    if (frame.seconds !== null) parts.push(RQ.duration(frame.seconds) + " render");
    if (frame.started_at) parts.push("started " + RQ.clock(frame.started_at, true));
    if (frame.ended_at) parts.push("ended " + RQ.clock(frame.ended_at, true));
    return parts.join(" · ");
  }

  function showDetail(key) {
    const frame = frameOf(key);
    const box = document.getElementById("frame-detail");
    if (!frame) return;
    const rows = [["Frame", String(frame.number)], ["Status", frame.status], ["Worker", frame.worker || "–"],
                  ["Attempts", String(frame.attempts)],
                  ["Render time", frame.seconds === null ? "–" : frame.seconds.toFixed(3) + " s"],
                  ["Started", frame.started_at ? RQ.clock(frame.started_at, true) : "–"],
                  ["Ended", frame.ended_at ? RQ.clock(frame.ended_at, true) : "–"]];
    const list = el("dl");
    for (const [name, value] of rows) list.append(el("dt", {text: name}), el("dd", {text: value}));
    if (frame.output && frame.status === "done") {
      const href = hasImage(frame) ? imageUrl(frame.number) : fileUrl(frame.number);
      const link = el("a", {href: href, target: "_blank", rel: "noopener", text: frame.output});
      list.append(el("dt", {text: "File"}), el("dd", {}, link));
    }
    if (frame.error) list.append(el("dt", {text: "Error"}), el("dd", {className: "error", text: frame.error}));
    box.replaceChildren(list);
  }

  function makeCell(key) {
    const cell = el("button", {type: "button", dataset: {frame: key}});
    cell.addEventListener("click", () => {
      if (selected) cells.get(selected)?.classList.remove("selected");
      selected = key;
      cell.classList.add("selected");
      showDetail(key);
    });
    cell.addEventListener("mouseenter", () => { if (!selected) showDetail(key); });
    return cell;
  }

  function paintCell(cell, _row, key) {
    const frame = frameOf(key);
    cell.className = "frame f-" + frame.status + (selected === key ? " selected" : "");
    cell.textContent = String(frame.number);
    cell.title = describe(frame);
    cell.setAttribute("aria-label", describe(frame));
  }

  function renderGrid(changedKeys) {
    RQ.reconcileRows(document.getElementById("frame-grid"), cells, frames, changedKeys,
                     {make: makeCell, fill: paintCell, order: (a, b) => Number(a) - Number(b)});
    if (changedKeys && selected && changedKeys.includes(selected)) showDetail(selected);
  }

  function renderPager() {
    const s = summary;
    const pager = document.getElementById("frame-pager");
    pager.hidden = s.pages <= 1;
    if (pager.hidden) return;
    const first = s.frame_start + s.page * s.page_size * s.frame_step;
    const last = Math.min(s.frame_end, first + (s.page_size - 1) * s.frame_step);
    document.getElementById("page-note").textContent =
      "frames " + first + "–" + last + " (page " + (s.page + 1) + " of " + s.pages + ", " + s.total + " frames)";
    document.getElementById("page-prev").disabled = s.page <= 0;
    document.getElementById("page-next").disabled = s.page >= s.pages - 1;
  }

  function showPage(wanted) {
    framesPage = wanted;
    feed.url = feedUrl();
    feed.version = null; // another page is another feed: start from its full snapshot
    selected = null;
    feed.pollNow();
  }

  document.getElementById("page-prev").addEventListener("click", () => showPage(Math.max(0, framesPage - 1)));
  document.getElementById("page-next").addEventListener("click", () => showPage(framesPage + 1));

  // -- render time chart --------------------------------------------------------------------------------------------

  function svg(tag, attrs, text) {
    const node = document.createElementNS(SVG, tag);
    for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, String(value));
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function renderChart() {
    const box = document.getElementById("chart");
    const all = Object.keys(frames).map(frameOf).sort((a, b) => a.number - b.number);
    const timed = all.filter((f) => f.status === "done" && f.seconds !== null);
    if (!timed.length) {
      box.replaceChildren(el("p", {className: "empty", text: "No frame has finished yet."}));
      document.getElementById("chart-note").textContent = "";
      document.getElementById("stat-mean").textContent = "–";
      return;
    }
    const width = 640, height = 220, left = 56, right = 10, top = 12, bottom = 26;
    const plotW = width - left - right, plotH = height - top - bottom;
    const max = Math.max(...timed.map((f) => f.seconds)) * 1.1 || 1;
    const mean = timed.reduce((sum, f) => sum + f.seconds, 0) / timed.length;
    const slot = plotW / all.length;
    const chart = svg("svg", {viewBox: "0 0 " + width + " " + height, role: "img",
                              "aria-label": "Render time of each finished frame"});
    for (const fraction of [0, 0.5, 1]) {
      const y = top + plotH - fraction * plotH;
      chart.append(svg("line", {x1: left, x2: width - right, y1: y, y2: y, class: "axis"}));
      chart.append(svg("text", {x: left - 6, y: y + 4, "text-anchor": "end", class: "tick"},
                       RQ.duration(fraction * max)));
    }
    all.forEach((frame, index) => {
      if (frame.status !== "done" || frame.seconds === null) return;
      const h = Math.max(1, (frame.seconds / max) * plotH);
      const rect = svg("rect", {x: left + index * slot + slot * 0.1, y: top + plotH - h,
                                width: Math.max(0.5, slot * 0.8), height: h, class: "bar-rect"});
      rect.append(svg("title", {}, "frame " + frame.number + ": " + frame.seconds.toFixed(3) + " s"));
      chart.append(rect);
    });
    const meanY = top + plotH - (mean / max) * plotH;
    chart.append(svg("line", {x1: left, x2: width - right, y1: meanY, y2: meanY, class: "mean-line"}));
    chart.append(svg("text", {x: left + 4, y: height - 8, class: "tick"}, "frame " + all[0].number));
    chart.append(svg("text", {x: width - right, y: height - 8, "text-anchor": "end", class: "tick"},
                     "frame " + all[all.length - 1].number));
    box.replaceChildren(chart);
    document.getElementById("stat-mean").textContent = RQ.duration(mean);
    document.getElementById("chart-note").textContent =
      "mean " + RQ.duration(mean) + " over " + timed.length + " frames (dashed line)";
  }

  // -- thumbnails ---------------------------------------------------------------------------------------------------

  const thumbs = new Map(); // frame number (string) -> element, reused so images are not fetched again
  let latestKey = null;

  const scoutThumbs = new Map(); // the same for the scouts' strip

  /** Fill a strip with thumbnails of `shown` frames, reusing the elements (and images) of `made`. */
  function fillStrip(strip, made, shown) {
    const wanted = shown.map((f) => String(f.number));
    for (const [key, node] of made) {
      if (!wanted.includes(key)) { node.remove(); made.delete(key); }
    }
    for (const frame of shown) {
      const key = String(frame.number);
      if (!made.has(key)) {
        const img = el("img", {src: imageUrl(frame.number), alt: "Frame " + frame.number, loading: "lazy",
                               decoding: "async"});
        made.set(key, el("a", {className: "thumb", href: imageUrl(frame.number), target: "_blank",
                               rel: "noopener"}, img, el("span", {text: "frame " + frame.number})));
      }
    }
    strip.replaceChildren(...wanted.map((key) => made.get(key)));
  }

  /** The scouts panel of a task waiting for approval: the scouts' images, the estimate, Approve and Cancel. */
  function renderScouts(approvable) {
    const panel = document.getElementById("scouts-panel");
    panel.hidden = !approvable;
    if (!approvable) return;
    // While it waits, its done frames are its scouts.
    const scouts = Object.keys(latestFrames).map((key) => frameIn(latestFrames, key))
      .filter((f) => f.status === "done" && hasImage(f)).sort((a, b) => a.number - b.number);
    fillStrip(document.getElementById("scouts"), scoutThumbs, scouts);
    document.getElementById("scouts-note").textContent =
      summary.scouts + " scout frames rendered first; " + summary.held + " frames wait for approval";
    const estimate = RQ.estimateText(summary.estimate);
    document.getElementById("scouts-estimate").textContent = estimate
      ? "The frames left: " + estimate : "No estimate: no scout frame has an exact render time.";
  }

  function renderThumbnails() {
    const finished = Object.keys(latestFrames).map((key) => frameIn(latestFrames, key))
      .filter((f) => f.status === "done" && hasImage(f))
      .sort((a, b) => (b.ended_at || 0) - (a.ended_at || 0) || b.number - a.number)
      .slice(0, THUMBNAILS);
    fillStrip(document.getElementById("thumbs"), thumbs, finished);

    const latest = finished[0];
    document.getElementById("latest-empty").hidden = Boolean(latest);
    document.getElementById("latest-figure").hidden = !latest;
    if (latest && String(latest.number) !== latestKey) {
      latestKey = String(latest.number);
      const image = document.getElementById("latest-image");
      image.src = imageUrl(latest.number);
      image.alt = "Frame " + latest.number + ", the latest one rendered";
      document.getElementById("latest-link").href = imageUrl(latest.number);
    }
    if (latest) {
      document.getElementById("latest-caption").textContent =
        "Latest: frame " + latest.number + " (" + latest.output + ") by " + (latest.worker || "?") +
        " in " + RQ.duration(latest.seconds);
    }
  }

  // -- log ----------------------------------------------------------------------------------------------------------

  const log = document.getElementById("log");
  const follow = document.getElementById("log-follow");
  let logOffset = null;
  let logActive = false; // a read is running or scheduled: only one chain of reads at a time
  let logFinalRead = false;

  function appendLog(text) {
    if (!text) return;
    const atBottom = log.scrollTop + log.clientHeight >= log.scrollHeight - 8;
    log.append(document.createTextNode(text));
    if (log.textContent.length > LOG_KEEP_CHARS) {
      log.textContent = log.textContent.slice(-LOG_KEEP_CHARS);
    }
    if (follow.checked && atBottom) log.scrollTop = log.scrollHeight;
  }

  async function readLog() {
    try {
      if (logOffset === null) {
        // Start near the end of a long log: the page shows the last part and follows from there.
        const probe = await (await fetch("/get_log?task_id=" + taskId + "&offset=0&max_bytes=0",
                                         {cache: "no-store"})).json();
        logOffset = Math.max(0, (probe.size || 0) - LOG_KEEP_CHARS);
      }
      for (let round = 0; round < 20; round += 1) {
        const response = await fetch("/get_log?task_id=" + taskId + "&offset=" + logOffset, {cache: "no-store"});
        if (!response.ok) break;
        const answer = await response.json();
        appendLog(answer.text);
        if (answer.next_offset <= logOffset) break;
        logOffset = answer.next_offset;
      }
    } catch (error) {
      // The feed shows that the coordinator is unreachable; the log tries again at the next round.
    }
    const ended = summary !== null && isFinal(summary.status);
    if (ended && logFinalRead) { // one more read after the end picked up the last lines
      logActive = false;
      return;
    }
    logFinalRead = ended;
    setTimeout(readLog, document.hidden ? RQ.pollInterval * 5 : RQ.pollInterval);
  }

  function followLog() {
    if (!isFinal(summary.status)) logFinalRead = false; // retried or resumed: keep following
    if (!logActive) {
      logActive = true;
      readLog();
    }
  }

  follow.addEventListener("change", () => { if (follow.checked) log.scrollTop = log.scrollHeight; });

  // -- feed ---------------------------------------------------------------------------------------------------------

  let chartPending = false;
  const feedUrl = () => "/status/task_updates?task_id=" + taskId + "&page=" + framesPage;
  const feed = new RQ.Feed(feedUrl(), (state, changes, full) => {
    if (state.task.summary.page !== framesPage) { // an answer about the page shown before: ask for this one
      feed.version = null;
      feed.pollNow();
      return;
    }
    summary = state.task.summary;
    statuses = state.task.statuses || statuses;
    frames = state.frames || {};
    latestFrames = state.latest || {};
    renderSummary();
    renderPager();
    if (full) renderGrid(null);
    else if (changes.frames) renderGrid(Object.keys(changes.frames));
    if (full || changes.latest) renderThumbnails();
    if (full || changes.frames) {
      if (!chartPending) {
        chartPending = true;
        requestAnimationFrame(() => { chartPending = false; renderChart(); });
      }
    }
    RQ.refreshClocks();
    followLog();
  });
  feed.start();
})();
