"""Versioned migrations of the PostgreSQL store, applied in order at start (under an advisory
lock, so replicas starting together migrate once); `jobwire_schema` records the last one."""

from __future__ import annotations

#: Held (transaction-scoped) while migrating: one replica migrates, the others wait and see it done.
MIGRATION_LOCK = 0x6A6F6277_6D696772  # "jobwmigr"

MIGRATIONS: tuple[str, ...] = (
    # 1: jobs, phases, events (tailed by every replica in commit order), request ids, the webhook
    # outbox and its log, and the lease rows of singleton duties.
    """
    CREATE TABLE jobs (
        id                 uuid PRIMARY KEY,
        queue              text NOT NULL,
        kind               text NOT NULL,
        payload            bytea NOT NULL,
        priority           integer NOT NULL,
        state              text NOT NULL,
        attempt            integer NOT NULL DEFAULT 0,
        uncounted_attempts integer NOT NULL DEFAULT 0,
        max_attempts       integer NOT NULL,
        timeout            double precision NOT NULL DEFAULT 0,
        progress_pct       double precision NOT NULL DEFAULT 0,
        progress_msg       text NOT NULL DEFAULT '',
        error              jsonb,
        error_history      jsonb NOT NULL DEFAULT '[]',
        dedupe_key         text,
        labels             jsonb NOT NULL DEFAULT '{}',
        webhook            jsonb,
        cancel_requested   boolean NOT NULL DEFAULT false,
        cancel_reason      text NOT NULL DEFAULT '',
        trace_parent       text NOT NULL DEFAULT '',
        seq                integer NOT NULL DEFAULT 0,
        create_time        timestamptz NOT NULL,
        update_time        timestamptz NOT NULL,
        run_at             timestamptz NOT NULL,
        start_time         timestamptz,
        finish_time        timestamptz,
        lease_owner        text,
        lease_expires      timestamptz
    ) WITH (fillfactor = 85);  -- room on each page for updates that change no indexed column (HOT)
    CREATE INDEX jobs_ready ON jobs (priority DESC, run_at, id) WHERE state = 'QUEUED';
    CREATE INDEX jobs_ready_by_queue ON jobs (queue, priority DESC, run_at, id) WHERE state = 'QUEUED';
    CREATE INDEX jobs_waiting ON jobs (run_at) WHERE state IN ('SCHEDULED', 'RETRYING');
    CREATE INDEX jobs_leases ON jobs (lease_expires) WHERE state = 'RUNNING';
    CREATE INDEX jobs_by_state ON jobs (queue, state);
    -- Only labelled jobs are indexed: most have none, and every state change writes each index.
    CREATE INDEX jobs_labels ON jobs USING gin (labels jsonb_path_ops) WHERE labels <> '{}';
    CREATE INDEX jobs_finished ON jobs (finish_time) WHERE state IN ('SUCCEEDED', 'FAILED', 'CANCELLED');
    CREATE INDEX jobs_stale ON jobs (update_time) WHERE state = 'STALE';
    CREATE UNIQUE INDEX jobs_dedupe ON jobs (queue, dedupe_key)
        WHERE dedupe_key IS NOT NULL AND state IN ('SCHEDULED', 'QUEUED', 'RUNNING', 'RETRYING');

    CREATE TABLE phases (
        job_id        uuid NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
        idx           integer NOT NULL,
        name          text NOT NULL,
        state         text NOT NULL,
        progress_pct  double precision NOT NULL DEFAULT 0,
        progress_msg  text NOT NULL DEFAULT '',
        result        bytea NOT NULL DEFAULT '',
        error         jsonb,
        start_time    timestamptz,
        finish_time   timestamptz,
        PRIMARY KEY (job_id, idx)
    ) WITH (fillfactor = 80);  -- phase updates change no indexed column: HOT, on the same page

    -- `xid` is the writing transaction: readers tail rows below their snapshot's xmin, where no
    -- transaction still running can add one (an identity column alone skips rows committed late).
    CREATE TABLE events (
        id      bigint GENERATED ALWAYS AS IDENTITY,
        xid     xid8 NOT NULL DEFAULT pg_current_xact_id(),
        job_id  uuid NOT NULL,
        seq     integer NOT NULL,
        type    text NOT NULL,
        time    timestamptz NOT NULL,
        phase   text NOT NULL DEFAULT '',
        detail  text NOT NULL DEFAULT '',
        PRIMARY KEY (job_id, seq)
    );
    CREATE INDEX events_tail ON events (xid, id);

    CREATE TABLE requests (
        request_id   text PRIMARY KEY,
        fingerprint  text NOT NULL,
        job_id       uuid NOT NULL,
        expires      timestamptz NOT NULL
    );
    CREATE INDEX requests_expiry ON requests (expires);
    CREATE INDEX requests_by_job ON requests (job_id);

    CREATE TABLE deliveries (
        id           text PRIMARY KEY,
        job_id       uuid NOT NULL,
        event_seq    integer NOT NULL,
        event_type   text NOT NULL,
        url          text NOT NULL,
        body         bytea NOT NULL,
        state        text NOT NULL,
        attempts     integer NOT NULL DEFAULT 0,
        next_at      timestamptz NOT NULL,
        lease_until  timestamptz,
        create_time  timestamptz NOT NULL,
        update_time  timestamptz NOT NULL,
        last_error   text NOT NULL DEFAULT '',
        -- true when the receiver answered 410 Gone: nothing more goes to this URL for this job.
        gone         boolean NOT NULL DEFAULT false
    );
    CREATE INDEX deliveries_due ON deliveries (next_at) WHERE state = 'PENDING';
    CREATE INDEX deliveries_by_job ON deliveries (job_id, url);

    CREATE TABLE delivery_attempts (
        delivery_id  text NOT NULL,
        number       integer NOT NULL,
        job_id       uuid NOT NULL,
        time         timestamptz NOT NULL,
        url          text NOT NULL,
        status_code  integer NOT NULL DEFAULT 0,
        latency      double precision NOT NULL DEFAULT 0,
        response     text NOT NULL DEFAULT '',
        error        text NOT NULL DEFAULT '',
        PRIMARY KEY (delivery_id, number)
    );
    CREATE INDEX delivery_attempts_time ON delivery_attempts (time);
    CREATE INDEX delivery_attempts_by_job ON delivery_attempts (job_id);

    -- Singleton duties (retention): the holder renews its row before `expires`, with its term.
    CREATE TABLE leaders (
        duty     text PRIMARY KEY,
        holder   text NOT NULL,
        term     bigint NOT NULL,
        expires  timestamptz NOT NULL
    );
    """,
    # 2: schedules (a job template and when to enqueue it); `next_fire` is NULL while paused.
    """
    CREATE TABLE schedules (
        id           text PRIMARY KEY,
        spec         jsonb NOT NULL,
        paused       boolean NOT NULL DEFAULT false,
        from_config  boolean NOT NULL DEFAULT false,
        next_fire    timestamptz,
        last_fire    timestamptz,
        last_job_id  uuid,
        create_time  timestamptz NOT NULL,
        update_time  timestamptz NOT NULL
    );
    CREATE INDEX schedules_due ON schedules (next_fire) WHERE next_fire IS NOT NULL;
    """,
    # 3: label search and finish-time ranges. The labels index becomes the default jsonb_ops GIN,
    # which answers key presence (`?`) as well as containment (`@>`); finished jobs (STALE ones too)
    # are indexed by state and finish time (with the id, so a range can be read from the index
    # alone), which retention reads as well.
    """
    DROP INDEX jobs_labels;
    CREATE INDEX jobs_labels ON jobs USING gin (labels) WHERE labels <> '{}';
    DROP INDEX jobs_finished;
    CREATE INDEX jobs_by_finish ON jobs (state, finish_time, id) WHERE finish_time IS NOT NULL;
    """,
    # 4: kinds that remote workers declared: their phases (fixed once known) and their defaults, so
    # Enqueue knows them while no worker is connected.
    """
    CREATE TABLE kinds (
        name              text PRIMARY KEY,
        phases            jsonb NOT NULL,
        queue             text NOT NULL,
        max_attempts      integer NOT NULL,
        timeout           double precision NOT NULL,
        retry_base_delay  double precision NOT NULL,
        retry_max_delay   double precision NOT NULL,
        declare_time      timestamptz NOT NULL
    );
    -- Claims for remote workers read the ready jobs of their kinds.
    CREATE INDEX jobs_ready_by_kind ON jobs (kind, priority DESC, run_at, id) WHERE state = 'QUEUED';
    """,
)

SCHEMA_VERSION = len(MIGRATIONS)
