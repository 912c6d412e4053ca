// A task's video, on the task's page: played and linked once its encode job (frame VIDEO_FRAME of the task, made by
// a worker with FFmpeg after every frame is done) has delivered it. Until then it looks every few seconds, and stops
// once the task ended without one.
(function () {
  "use strict";
  const panel = document.getElementById("video-panel");
  if (!panel) return;
  const taskId = document.getElementById("task-page").dataset.taskId;
  const url = "/download_frame?task_id=" + encodeURIComponent(taskId) + "&frame=" +
    encodeURIComponent(panel.dataset.videoFrame);
  const LOOK_EVERY_MS = 3000;

  function show(playable) {
    const link = document.getElementById("video-link");
    link.href = url;
    link.hidden = false;
    const pending = document.getElementById("video-pending");
    if (playable) {
      const video = document.getElementById("task-video");
      video.src = url + "&inline=1";
      video.hidden = false;
      pending.hidden = true;
    } else {
      pending.textContent = "This video's format does not play in a browser: download it.";
    }
  }

  function ended() {
    const status = document.getElementById("task-status");
    return status && ["failed", "canceled"].includes(status.textContent.trim());
  }

  async function look() {
    let response = null;
    try {
      response = await fetch(url + "&inline=1", {method: "HEAD", credentials: "same-origin", cache: "no-store"});
    } catch (_error) {
      response = null; // the coordinator is away for now: look again later
    }
    if (response && (response.ok || response.status === 400)) {
      show(response.ok);
      return;
    }
    if (ended()) {
      document.getElementById("video-pending").textContent = "The task ended without its video.";
      return;
    }
    setTimeout(look, LOOK_EVERY_MS);
  }

  look();
})();
