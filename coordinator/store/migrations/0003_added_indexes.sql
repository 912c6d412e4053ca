-- Indexes on the columns 0002 added.
-- depends: 0002_added_columns

CREATE INDEX IF NOT EXISTS frames_by_deadline ON frames(render_deadline) WHERE status = 'rendering';
-- The order claims hand out tasks in, so a claim reads tasks only until the first one it may take.
CREATE INDEX IF NOT EXISTS tasks_claimable ON tasks(priority DESC, task_id) WHERE status IN ('queued', 'running');
CREATE INDEX IF NOT EXISTS frames_by_output_key ON frames(task_id, output_key) WHERE output_key IS NOT NULL;
-- Tasks from before task trees have no task_files rows: the orphan sweep finds their .blend through this.
CREATE INDEX IF NOT EXISTS tasks_by_untreed_blend ON tasks(blend_sha256) WHERE main_file = '';
