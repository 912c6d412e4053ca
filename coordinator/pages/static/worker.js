// A worker's page: what it offers, its switch and tags, the frame it renders with its log lines, its latest frames
// and its failures. Kept current from GET /worker, the same answer `renderq workers NAME` prints.
"use strict";

(() => {
  const {el} = RQ;
  const page = document.getElementById("worker-page");
  const name = page.dataset.workerName;
  const videoFrame = Number(page.dataset.videoFrame); // the frame number of a task's video job
  const frameText = (number) => (number === videoFrame ? "video" : String(number));
  const url = "/worker?name=" + encodeURIComponent(name);
  const log = document.getElementById("log");
  const follow = document.getElementById("log-follow");
  let timer = null;
  let shownKey = ""; // what the frame and failure tables show, so an unchanged answer does not redraw them

  const taskLink = (taskId, taskName) => el("a", {href: "/tasks/" + taskId, text: taskName || ("task " + taskId)});
  const seconds = (value) => (value === null || value === undefined ? "–" : value.toFixed(3) + " s");
  const item = (worker) => ({id: worker.worker_id, name: worker.name, enabled: worker.enabled, tags: worker.tags,
                              tags_by_admin: worker.tags_by_admin});

  function renderHead(worker) {
    const state = document.getElementById("worker-state");
    state.textContent = worker.alive ? "alive" : "offline";
    state.className = "pill " + (worker.alive ? "status-running" : "status-canceled");
    document.getElementById("worker-switch").replaceChildren(...RQ.workerSwitch(item(worker), poll));
    document.getElementById("worker-host").textContent = worker.host || "?";
    document.getElementById("worker-blender").textContent = worker.blender_version || "?";
    document.getElementById("worker-cpus").textContent = String(worker.cpu_count);
    document.getElementById("worker-seen").replaceChildren(
      el("span", {dataset: {ago: String(worker.last_seen || 0), agoPrefix: "last heard from "}}));
    document.getElementById("stat-done").textContent = String(worker.frames_done);
    document.getElementById("stat-failed").textContent = String(worker.frames_failed);
    document.getElementById("stat-mean").textContent = RQ.duration(worker.mean_frame_seconds);
  }

  function renderOffers(worker) {
    const devices = worker.devices.map((d) =>
      el("li", {text: d.name + " (" + d.type + ")" + (d.use ? " · renders on it" : "")}));
    document.getElementById("worker-devices").replaceChildren(
      ...(devices.length ? devices : [el("li", {className: "muted", text: "not reported"})]));
    document.getElementById("worker-engines").textContent = worker.engine_names.length
      ? worker.engine_names.join(", ") : "none it could render";
    document.getElementById("worker-video").textContent = worker.video_encoders
      ? "encodes with FFmpeg: " + worker.video_encoders : "no FFmpeg: it encodes no video";
    const tags = document.getElementById("worker-tags");
    if (!tags.contains(document.activeElement)) { // an admin typing tags keeps the field
      const note = el("span", {className: "muted small",
                               text: worker.tags_by_admin ? " set by an admin" : " its own (--tag)"});
      tags.replaceChildren(RQ.workerTags(item(worker), poll), note);
    }
    document.getElementById("worker-python").textContent = worker.allows_python
      ? "runs a file's Python (--allow-blend-python)" : "never runs a file's Python";
  }

  function renderCurrent(worker) {
    const box = document.getElementById("worker-current");
    const lines = worker.current.map((frame) => {
      const what = el("span", {text: frame.frame === videoFrame ? " · encoding its video · "
                                                              : " · frame " + frame.frame + " · "});
      if (frame.status === "rendering" && frame.started_at) {
        what.append(el("span", {dataset: {since: String(frame.started_at)}}));
      } else {
        what.append("starting");
      }
      return el("div", {className: "current-frame"}, taskLink(frame.task_id, frame.task_name), what);
    });
    box.replaceChildren(...(lines.length ? lines : [el("p", {className: "muted",
      text: worker.enabled ? "Idle: it renders nothing now." : "Switched OFF: it takes no frames."})]));
    const text = worker.log ? worker.log.text : "";
    if (log.textContent !== text) {
      log.textContent = text;
      if (follow.checked) log.scrollTop = log.scrollHeight;
    }
  }

  function renderTables(worker) {
    const key = JSON.stringify([worker.recent_frames, worker.failures]);
    if (key === shownKey) return;
    shownKey = key;
    const frameRows = worker.recent_frames.map((f) => el("tr", {},
      el("td", {className: "name"}, taskLink(f.task_id, f.task_name)),
      el("td", {className: "num", text: frameText(f.frame)}),
      el("td", {className: "num", text: RQ.clock(f.started_at, true)}),
      el("td", {className: "num", text: RQ.clock(f.ended_at, true)}),
      el("td", {className: "num", text: seconds(f.render_seconds)}),
      el("td", {className: "num", text: String(f.attempts)}),
      el("td", {className: "small", text: f.output || "–"})));
    document.getElementById("frame-rows").replaceChildren(...frameRows);
    document.getElementById("frames-empty").hidden = frameRows.length > 0;
    const failureRows = worker.failures.map((f) => el("tr", {},
      el("td", {className: "num", text: RQ.clock(f.failed_at, true)}),
      el("td", {className: "name"}, taskLink(f.task_id, f.task_name)),
      el("td", {className: "num", text: frameText(f.frame)}),
      el("td", {className: "error-text small", text: f.error || "–"})));
    document.getElementById("failure-rows").replaceChildren(...failureRows);
    document.getElementById("failures-empty").hidden = failureRows.length > 0;
  }

  async function poll() {
    clearTimeout(timer);
    try {
      const response = await fetch(url, {credentials: "same-origin", cache: "no-store",
                                         headers: {"Accept": "application/json"}});
      if (response.status === 401) { window.location.reload(); return; }
      const worker = await response.json();
      if (!response.ok) throw new Error(worker.error || response.statusText);
      renderHead(worker);
      renderOffers(worker);
      renderCurrent(worker);
      renderTables(worker);
      RQ.refreshClocks();
      RQ.setLive(true, "live");
    } catch (error) {
      RQ.setLive(false, "coordinator unreachable, retrying");
    }
    // A hidden tab asks five times less often: it must not cost the coordinator for nothing.
    timer = setTimeout(poll, document.hidden ? RQ.pollInterval * 5 : RQ.pollInterval);
  }

  follow.addEventListener("change", () => { if (follow.checked) log.scrollTop = log.scrollHeight; });
  document.addEventListener("visibilitychange", () => { if (!document.hidden) poll(); });
  poll();
})();
