"""Versioned migrations, applied in order at start; `PRAGMA user_version` records the last one."""

from __future__ import annotations

MIGRATIONS: tuple[str, ...] = (
    # 1: jobs, their phases, their events, and remembered request ids.
    """
    CREATE TABLE jobs (
        id                 TEXT PRIMARY KEY,
        queue              TEXT NOT NULL,
        kind               TEXT NOT NULL,
        payload            BLOB NOT NULL,
        priority           INTEGER NOT NULL,
        state              TEXT NOT NULL,
        attempt            INTEGER NOT NULL DEFAULT 0,
        uncounted_attempts INTEGER NOT NULL DEFAULT 0,
        max_attempts       INTEGER NOT NULL,
        timeout            REAL NOT NULL DEFAULT 0,
        progress_pct       REAL NOT NULL DEFAULT 0,
        progress_msg       TEXT NOT NULL DEFAULT '',
        error              TEXT,
        error_history      TEXT NOT NULL DEFAULT '[]',
        dedupe_key         TEXT,
        labels             TEXT NOT NULL DEFAULT '{}',
        webhook            TEXT,
        cancel_requested   INTEGER NOT NULL DEFAULT 0,
        cancel_reason      TEXT NOT NULL DEFAULT '',
        trace_parent       TEXT NOT NULL DEFAULT '',
        seq                INTEGER NOT NULL DEFAULT 0,
        create_time        REAL NOT NULL,
        update_time        REAL NOT NULL,
        run_at             REAL NOT NULL,
        start_time         REAL,
        finish_time        REAL,
        lease_owner        TEXT,
        lease_expires      REAL
    ) STRICT;
    CREATE INDEX jobs_ready ON jobs (priority DESC, run_at, id) WHERE state = 'QUEUED';
    CREATE INDEX jobs_ready_by_queue ON jobs (queue, priority DESC, run_at, id) WHERE state = 'QUEUED';
    CREATE INDEX jobs_waiting ON jobs (run_at) WHERE state IN ('SCHEDULED', 'RETRYING');
    CREATE INDEX jobs_leases ON jobs (lease_expires) WHERE state = 'RUNNING';
    CREATE INDEX jobs_by_state ON jobs (queue, state);
    CREATE UNIQUE INDEX jobs_dedupe ON jobs (queue, dedupe_key)
        WHERE dedupe_key IS NOT NULL AND state IN ('SCHEDULED', 'QUEUED', 'RUNNING', 'RETRYING');

    CREATE TABLE phases (
        job_id        TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
        idx           INTEGER NOT NULL,
        name          TEXT NOT NULL,
        state         TEXT NOT NULL,
        progress_pct  REAL NOT NULL DEFAULT 0,
        progress_msg  TEXT NOT NULL DEFAULT '',
        result        BLOB NOT NULL DEFAULT x'',
        error         TEXT,
        start_time    REAL,
        finish_time   REAL,
        PRIMARY KEY (job_id, idx)
    ) STRICT, WITHOUT ROWID;

    CREATE TABLE events (
        job_id  TEXT NOT NULL,
        seq     INTEGER NOT NULL,
        type    TEXT NOT NULL,
        time    REAL NOT NULL,
        phase   TEXT NOT NULL DEFAULT '',
        detail  TEXT NOT NULL DEFAULT '',
        PRIMARY KEY (job_id, seq)
    ) STRICT, WITHOUT ROWID;

    CREATE TABLE requests (
        request_id   TEXT PRIMARY KEY,
        fingerprint  TEXT NOT NULL,
        job_id       TEXT NOT NULL,
        expires      REAL NOT NULL
    ) STRICT, WITHOUT ROWID;
    CREATE INDEX requests_expiry ON requests (expires);
    """,
    # 2: the webhook outbox (one row per event to deliver) and its delivery log (one row per attempt).
    """
    CREATE TABLE deliveries (
        id           TEXT PRIMARY KEY,
        job_id       TEXT NOT NULL,
        event_seq    INTEGER NOT NULL,
        event_type   TEXT NOT NULL,
        url          TEXT NOT NULL,
        body         BLOB NOT NULL,
        state        TEXT NOT NULL,
        attempts     INTEGER NOT NULL DEFAULT 0,
        next_at      REAL NOT NULL,
        lease_until  REAL,
        create_time  REAL NOT NULL,
        update_time  REAL NOT NULL,
        last_error   TEXT NOT NULL DEFAULT '',
        -- 1 when the receiver answered 410 Gone: nothing more goes to this URL for this job.
        gone         INTEGER NOT NULL DEFAULT 0
    ) STRICT;
    CREATE INDEX deliveries_due ON deliveries (next_at) WHERE state = 'PENDING';
    CREATE INDEX deliveries_by_job ON deliveries (job_id, url);

    CREATE TABLE delivery_attempts (
        delivery_id  TEXT NOT NULL,
        number       INTEGER NOT NULL,
        job_id       TEXT NOT NULL,
        time         REAL NOT NULL,
        url          TEXT NOT NULL,
        status_code  INTEGER NOT NULL DEFAULT 0,
        latency      REAL NOT NULL DEFAULT 0,
        response     TEXT NOT NULL DEFAULT '',
        error        TEXT NOT NULL DEFAULT '',
        PRIMARY KEY (delivery_id, number)
    ) STRICT, WITHOUT ROWID;
    CREATE INDEX delivery_attempts_time ON delivery_attempts (time);
    CREATE INDEX delivery_attempts_by_job ON delivery_attempts (job_id);

    -- Retention looks for terminal jobs by when they finished, and STALE ones by when they became so.
    CREATE INDEX jobs_finished ON jobs (finish_time) WHERE state IN ('SUCCEEDED', 'FAILED', 'CANCELLED');
    CREATE INDEX jobs_stale ON jobs (update_time) WHERE state = 'STALE';
    """,
    # 3: schedules (a job template and when to enqueue it); `next_fire` is NULL while paused.
    """
    CREATE TABLE schedules (
        id           TEXT PRIMARY KEY,
        spec         TEXT NOT NULL,
        paused       INTEGER NOT NULL DEFAULT 0,
        from_config  INTEGER NOT NULL DEFAULT 0,
        next_fire    REAL,
        last_fire    REAL,
        last_job_id  TEXT,
        create_time  REAL NOT NULL,
        update_time  REAL NOT NULL
    ) STRICT, WITHOUT ROWID;
    CREATE INDEX schedules_due ON schedules (next_fire) WHERE next_fire IS NOT NULL;
    """,
    # 4: label search and finish-time ranges. `job_labels` holds each label of each job as a row,
    # written by a trigger when the job is inserted (labels never change) and deleted with the job;
    # ListJobs reads a label filter's matches from its indexes in job id order. Finished jobs (STALE
    # ones too) are indexed by state and finish time (with the id, so a range is read from the index
    # alone), which retention reads as well.
    """
    CREATE TABLE job_labels (
        job_id  TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
        key     TEXT NOT NULL,
        value   TEXT NOT NULL,
        PRIMARY KEY (job_id, key)
    ) STRICT, WITHOUT ROWID;
    CREATE INDEX job_labels_value ON job_labels (key, value, job_id);
    CREATE INDEX job_labels_key ON job_labels (key, job_id);
    INSERT INTO job_labels (job_id, key, value)
        SELECT jobs.id, l.key, l.value FROM jobs, json_each(jobs.labels) AS l WHERE jobs.labels <> '{}';
    CREATE TRIGGER jobs_labels_insert AFTER INSERT ON jobs WHEN new.labels <> '{}' BEGIN
        INSERT INTO job_labels (job_id, key, value) SELECT new.id, l.key, l.value FROM json_each(new.labels) AS l;
    END;

    DROP INDEX jobs_finished;
    CREATE INDEX jobs_by_finish ON jobs (state, finish_time, id) WHERE finish_time IS NOT NULL;
    """,
    # 5: kinds that remote workers declared: their phases (fixed once known) and their defaults, so
    # Enqueue knows them while no worker is connected.
    """
    CREATE TABLE kinds (
        name              TEXT PRIMARY KEY,
        phases            TEXT NOT NULL,
        queue             TEXT NOT NULL,
        max_attempts      INTEGER NOT NULL,
        timeout           REAL NOT NULL,
        retry_base_delay  REAL NOT NULL,
        retry_max_delay   REAL NOT NULL,
        declare_time      REAL NOT NULL
    ) STRICT, WITHOUT ROWID;
    -- Claims for remote workers read the ready jobs of their kinds.
    CREATE INDEX jobs_ready_by_kind ON jobs (kind, priority DESC, run_at, id) WHERE state = 'QUEUED';
    """,
)

SCHEMA_VERSION = len(MIGRATIONS)
