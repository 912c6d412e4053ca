"""The HTTP layer in-process (Flask test client): configuration, log offsets and the JSON error shape."""

from __future__ import annotations

import pytest

from coordinator.config import Config

BLEND = b"BLENDER-v304REND" + b"\0" * 64


def test_config_from_environment_and_flags():
    environ = {"RENDERQ_PORT": "6000", "RENDERQ_ALIVE_TIMEOUT": "30", "RENDERQ_FRAME_TIME_WINDOW": "4",
               "RENDERQ_UPLOAD_LIMIT": "2G", "RENDERQ_MAX_ATTEMPTS": "5", "RENDERQ_DATA_DIR": "/srv/farm"}
    config = Config.from_env(environ, port=7000, data_dir=None)
    assert (config.port, config.alive_timeout, config.frame_time_window, config.upload_limit, config.max_attempts,
            config.data_dir) == (7000, 30.0, 4, 2 * 1024**3, 5, "/srv/farm")


@pytest.mark.parametrize("environ, phrase", [
    ({"RENDERQ_PORT": "lots"}, "RENDERQ_PORT must be a number"),
    ({"RENDERQ_ALIVE_TIMEOUT": "1"}, "alive timeout must be longer"),
    ({"RENDERQ_FRAME_TIME_WINDOW": "0"}, "frame time window"),
])
def test_bad_config_is_a_sentence(environ, phrase):
    with pytest.raises(ValueError, match=phrase):
        Config.from_env(environ)


def test_log_is_followed_from_an_offset(client):
    sha = client.post("/upload_blend?filename=a.blend", data=BLEND).json["sha256"]
    task_id = client.post("/submit_task", json={"blend_sha256": sha, "blend_filename": "a.blend",
                                                "frame_start": 1, "frame_end": 1}).json["task_id"]
    assert client.post("/append_log", json={"task_id": task_id, "text": "Fra:1 Sample 1/16\n"}).json == {"size": 18}
    first = client.get(f"/get_log?task_id={task_id}&offset=0").json
    assert first["text"] == "Fra:1 Sample 1/16\n" and first["next_offset"] == 18
    client.post("/append_log", json={"task_id": task_id, "text": "Saved: f_0001.png\n"})
    follow = client.get(f"/get_log?task_id={task_id}&offset={first['next_offset']}").json
    assert follow["text"] == "Saved: f_0001.png\n" and follow["next_offset"] == 36
    idle = client.get(f"/get_log?task_id={task_id}&offset=36").json
    assert idle["text"] == "" and idle["next_offset"] == 36


def test_task_name_defaults_to_the_file_name(client):
    sha = client.post("/upload_blend?filename=shot_010.blend", data=BLEND).json["sha256"]
    task = client.post("/submit_task", json={"blend_sha256": sha, "blend_filename": "shot_010.blend",
                                             "frame_start": 1, "frame_end": 3, "frame_step": 2}).json
    assert task["name"] == "shot_010" and task["progress"]["total"] == 2


def test_tasks_filter_and_newest_first(client):
    sha = client.post("/upload_blend?filename=a.blend", data=BLEND).json["sha256"]
    ids = [client.post("/submit_task", json={"blend_sha256": sha, "frame_start": 1, "frame_end": 1}).json["task_id"]
           for _ in range(3)]
    client.post("/cancel_task", json={"task_id": ids[0]})
    assert [t["task_id"] for t in client.get("/tasks").json["tasks"]] == ids[::-1]
    assert [t["task_id"] for t in client.get("/tasks?status=canceled").json["tasks"]] == [ids[0]]
    assert client.get("/tasks?status=bogus").status_code == 400
