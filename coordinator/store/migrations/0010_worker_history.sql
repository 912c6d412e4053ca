-- A worker's page lists its latest rendered frames and its latest failures: indexes so that each is read newest
-- first, a few rows at a time, however many millions of frames the farm holds.
-- depends: 0009_video

CREATE INDEX IF NOT EXISTS frames_done_by_worker ON frames(worker_id, ended_at) WHERE status = 'done';
CREATE INDEX IF NOT EXISTS frame_failures_by_worker ON frame_failures(worker_id, failed_at);
