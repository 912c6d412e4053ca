// The farm page: tasks and workers, kept current from GET /status/updates.
"use strict";

(() => {
  const {el} = RQ;
  const taskRows = new Map(); // task id -> <tr>
  const workerRows = new Map(); // worker id -> <tr>
  const taskBody = document.getElementById("task-rows");
  const workerBody = document.getElementById("worker-rows");
  // The status sets, from renderq.model through the feed's first snapshot (farm.statuses): no copy of our own.
  let statuses = {task_final: [], task_resumable: []};
  let filter = "";
  let tasks = {};

  // -- tasks ------------------------------------------------------------------------------------------------------

  function priorityCell(task) {
    if (!RQ.isAdmin) return el("td", {className: "num", text: String(task.priority)});
    const input = el("input", {type: "number", className: "priority-input", value: String(task.priority),
                               step: "1", min: "-1000000", max: "1000000",
                               "aria-label": "Priority of task " + task.id});
    input.dataset.priority = String(task.priority);
    input.addEventListener("change", async () => {
      const priority = parseInt(input.value, 10);
      if (!Number.isInteger(priority)) { input.value = input.dataset.priority; return; }
      const answer = await RQ.action("/set_task_priority", {task_id: task.id, priority},
                                     "Task " + task.id + " now has priority " + priority);
      if (answer === null) input.value = input.dataset.priority;
      feed.pollNow();
    });
    return el("td", {className: "num"}, input);
  }

  function elapsedCell(task) {
    const cell = el("td", {className: "num opt"});
    if (!task.started_at) cell.textContent = "–";
    else if (task.ended_at) cell.textContent = RQ.duration(task.ended_at - task.started_at);
    else cell.dataset.since = String(task.started_at);
    return cell;
  }

  function workersText(names) {
    if (!names.length) return "";
    const shown = names.slice(0, 3).join(", ");
    return names.length > 3 ? shown + " +" + (names.length - 3) : shown;
  }

  /** Who submitted the task (its owner, from their token); the free-text label they gave stays secondary. */
  function ownerCell(task) {
    const cell = el("td", {className: "opt owner", text: task.owner || "–"});
    if (task.by && task.by !== task.owner) {
      cell.append(el("div", {className: "small label", text: "as “" + task.by + "”"}));
    }
    return cell;
  }

  function fillTaskRow(row, task) {
    const nameCell = el("td", {className: "name"},
                        el("a", {href: "/tasks/" + task.id, text: task.name}));
    if (task.waiting) nameCell.append(el("div", {className: "small waiting", text: task.waiting}));
    const bar = RQ.makeBar();
    RQ.setBar(bar, task.done, task.failed, task.rendering, task.total);
    const eta = statuses.task_final.includes(task.status) ? "–"
      : statuses.task_resumable.includes(task.status) ? "paused" : RQ.eta(task.eta, task.eta_low, task.eta_high);
    // Keep the priority box that an admin is typing in.
    const oldPriority = row.querySelector(".priority-input");
    const keepPriority = oldPriority && document.activeElement === oldPriority;
    const priority = keepPriority ? oldPriority.parentElement : priorityCell(task);
    row.replaceChildren(
      el("td", {className: "num", text: String(task.id)}),
      nameCell,
      ownerCell(task),
      el("td", {}, RQ.statusPill(task.status, statuses.labels)),
      priority,
      el("td", {className: "progress-col"}, bar, el("div", {className: "bar-text", text: task.percent + " %"})),
      el("td", {className: "num", text: task.done + " / " + task.failed + " / " + task.total}),
      el("td", {className: "num", text: eta}),
      elapsedCell(task),
      el("td", {className: "opt small", text: workersText(task.workers), title: task.workers.join(", ")}),
    );
    row.dataset.status = task.status;
    row.hidden = Boolean(filter) && task.status !== filter;
  }

  function renderTasks(changedKeys) {
    RQ.reconcileRows(taskBody, taskRows, tasks, changedKeys, {
      make: (key) => el("tr", {dataset: {taskId: key}}),
      fill: fillTaskRow,
      order: (a, b) => Number(b) - Number(a), // newest first
    });
    updateFilterCounts();
  }

  function updateFilterCounts() {
    const counts = {"": 0};
    for (const task of Object.values(tasks)) {
      counts[""] += 1;
      counts[task.status] = (counts[task.status] || 0) + 1;
    }
    let visible = 0;
    for (const row of taskRows.values()) if (!row.hidden) visible += 1;
    for (const chip of document.querySelectorAll("#task-filters .chip")) {
      chip.querySelector(".count").textContent = String(counts[chip.dataset.filter] || 0);
    }
    document.getElementById("tasks-empty").hidden = visible > 0;
  }

  for (const chip of document.querySelectorAll("#task-filters .chip")) {
    chip.addEventListener("click", () => {
      filter = chip.dataset.filter;
      for (const other of document.querySelectorAll("#task-filters .chip")) {
        other.setAttribute("aria-pressed", String(other === chip));
      }
      for (const row of taskRows.values()) row.hidden = Boolean(filter) && row.dataset.status !== filter;
      updateFilterCounts();
    });
  }

  // -- workers ----------------------------------------------------------------------------------------------------

  function switchCell(worker) {
    return el("td", {className: "nowrap"}, ...RQ.workerSwitch(worker, () => feed.pollNow()));
  }

  function offersCell(worker) {
    const engines = worker.engines.length ? worker.engines.join(", ") : "no engine";
    return el("td", {className: "opt small"}, el("div", {text: engines}),
              el("div", {className: "muted", text: worker.devices || "devices unknown"}),
              el("div", {className: "muted", text: worker.video ? "video: " + worker.video : "no video"}));
  }

  // The tags, and for an admin a form that replaces them.
  function tagsCell(worker) {
    return el("td", {className: "small tags"}, RQ.workerTags(worker, () => feed.pollNow()));
  }

  function currentCell(worker) {
    const cell = el("td", {className: "small"});
    if (!worker.current.length) {
      cell.textContent = worker.enabled ? "idle" : "switched OFF";
      return cell;
    }
    for (const frame of worker.current) {
      const what = el("span", {className: "nowrap", text: " · frame " + frame.frame + " · "});
      if (frame.status === "rendering" && frame.started_at) {
        what.append(el("span", {dataset: {since: String(frame.started_at)}}));
      } else {
        what.append("starting");
      }
      cell.append(el("div", {}, el("a", {href: "/tasks/" + frame.task_id, text: frame.task}), what));
    }
    return cell;
  }

  function fillWorkerRow(row, worker) {
    // An admin typing a worker's tags keeps the field while the row's other cells change.
    const editing = row.querySelector(".tags-form input") === document.activeElement;
    const tags = editing ? row.querySelector("td.tags") : tagsCell(worker);
    const state = el("td", {className: worker.alive ? "state-alive" : "state-offline"});
    if (worker.alive) state.textContent = "alive";
    else state.append(el("span", {dataset: {ago: String(worker.last_seen || 0), agoPrefix: "offline · seen "}}));
    row.replaceChildren(
      el("td", {className: "name nowrap"},
         el("a", {href: "/workers/" + encodeURIComponent(worker.name), text: worker.name})),
      el("td", {className: "opt small", text: worker.host}),
      state,
      switchCell(worker),
      el("td", {className: "opt small", text: worker.blender || "?"}),
      offersCell(worker),
      tags,
      currentCell(worker),
      el("td", {className: "num", text: String(worker.done)}),
      el("td", {className: "num", text: RQ.duration(worker.mean)}),
      el("td", {className: "num", text: String(worker.failed)}),
    );
    RQ.refreshClocks(row);
  }

  function renderWorkers(workers, changedKeys) {
    RQ.reconcileRows(workerBody, workerRows, workers, changedKeys, {
      make: (key) => el("tr", {dataset: {workerId: key}}),
      fill: fillWorkerRow,
      order: (a, b) => workers[a].name.localeCompare(workers[b].name),
    });
    document.getElementById("workers-empty").hidden = workerRows.size > 0;
  }

  // -- totals -----------------------------------------------------------------------------------------------------

  function renderTotals(totals) {
    if (!totals) return;
    document.getElementById("total-alive").textContent = totals.alive + " / " + totals.workers;
    document.getElementById("total-busy").textContent = String(totals.busy);
    document.getElementById("total-open").textContent = String(totals.open_tasks);
    document.getElementById("total-queued").textContent = String(totals.frames_queued);
  }

  const feed = new RQ.Feed("/status/updates", (state, changes, full) => {
    tasks = state.tasks || {};
    statuses = (state.farm || {}).statuses || statuses;
    if (full) {
      renderTasks(null);
      renderWorkers(state.workers || {}, null);
    } else {
      if (changes.tasks) renderTasks(Object.keys(changes.tasks));
      if (changes.workers) renderWorkers(state.workers, Object.keys(changes.workers));
    }
    renderTotals((state.farm || {}).totals);
    RQ.refreshClocks();
  });
  feed.start();
})();
