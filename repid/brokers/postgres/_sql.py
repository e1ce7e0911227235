"""The SQL of the PostgreSQL broker, one statement per operation (placeholders: table names).

Times are epoch seconds passed by the caller. A delivery is a row of `messages` whose
`lease_token` is set: every settlement names the row *and* the token, so a settlement by the
holder of an expired lease (the row was reaped and claimed again with a new token) finds
nothing and is stale.
"""

from __future__ import annotations

ENQUEUE = """
INSERT INTO {messages} (queue, job_id, topic, priority, envelope, due_at)
VALUES ($1, $2, $3, $4, $5, $6)
ON CONFLICT (queue, job_id) WHERE unique_id DO NOTHING
"""

ENQUEUE_MANY = """
INSERT INTO {messages} (queue, job_id, topic, priority, envelope, due_at)
SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::int2[], $5::bytea[], $6::float8[])
ON CONFLICT (queue, job_id) WHERE unique_id DO NOTHING
"""

CLAIM = """
WITH claimed AS (
    SELECT id FROM {messages}
    WHERE queue = $1 AND lease_token IS NULL AND due_at <= $2
    ORDER BY priority, position
    LIMIT $3
    FOR UPDATE SKIP LOCKED
)
UPDATE {messages} AS m SET lease_token = $4, lease_until = $2 + $5, owner = $6
FROM claimed WHERE m.id = claimed.id
RETURNING m.id, m.envelope, m.redelivered, m.priority, m.position, m.job_id, m.topic
"""

CLAIM_TOPICS = CLAIM.replace("AND due_at <= $2", "AND due_at <= $2 AND topic = ANY($7::text[])")

NEXT_DUE = """
SELECT min(due_at) FROM {messages} WHERE queue = $1 AND lease_token IS NULL AND due_at > $2
"""

REAP = """
WITH dead_owners AS (
    SELECT w.owner FROM {workers} AS w
    WHERE w.owner IS NOT NULL
    GROUP BY w.owner
    HAVING bool_and(
        w.session_pid IS NOT NULL AND NOT EXISTS (
            SELECT 1 FROM pg_stat_activity AS a
            WHERE a.pid = w.session_pid AND a.backend_start = w.session_start
        )
    )
)
UPDATE {messages} SET lease_token = NULL, lease_until = NULL, redelivered = true
WHERE lease_token IS NOT NULL
  AND (lease_until < $1 OR owner IN (SELECT owner FROM dead_owners))
RETURNING queue, job_id, lease_until < $1
"""
# A row's owner is the broker object that claimed it (set once that broker has sent a worker
# heartbeat). A broker's registry rows carry the PostgreSQL session of its LISTEN connection;
# when every registry row of an owner names a session that no longer exists (the process was
# SIGKILLed, or its connection cut), its leased rows are returned without waiting for the lease.

ACK = """
WITH done AS (
    DELETE FROM {messages} AS m USING unnest($1::bigint[], $2::bigint[]) AS s(id, token)
    WHERE m.id = s.id AND m.lease_token = s.token
    RETURNING m.id, m.job_id
), forgotten AS (
    DELETE FROM {cancels} WHERE job_id IN (SELECT job_id FROM done)
)
SELECT id FROM done
"""

ACK_ARCHIVE = """
WITH done AS (
    DELETE FROM {messages} AS m USING unnest($1::bigint[], $2::bigint[]) AS s(id, token)
    WHERE m.id = s.id AND m.lease_token = s.token
    RETURNING m.id, m.queue, m.job_id, m.topic, m.priority, m.envelope, m.enqueued_at
), forgotten AS (
    DELETE FROM {cancels} WHERE job_id IN (SELECT job_id FROM done)
), archived AS (
    INSERT INTO {archive} (id, queue, job_id, topic, priority, envelope, enqueued_at)
    SELECT id, queue, job_id, topic, priority, envelope, enqueued_at FROM done
    ON CONFLICT (id) DO NOTHING
)
SELECT id FROM done
"""

ARCHIVE_PURGE = "DELETE FROM {archive} WHERE finished_at < $1"

NACK = """
WITH done AS (
    DELETE FROM {messages} WHERE id = $1 AND lease_token IS NOT DISTINCT FROM $2
    RETURNING queue, job_id, topic, priority
), forgotten AS (
    DELETE FROM {cancels} WHERE job_id IN (SELECT job_id FROM done)
), dead AS (
    INSERT INTO {dead_letters} (queue, job_id, topic, priority, envelope, raw)
    SELECT queue, job_id, topic, priority, $3, $4 FROM done
    RETURNING 1
)
SELECT count(*) FROM dead
"""

REJECT = """
UPDATE {messages} SET lease_token = NULL, lease_until = NULL
WHERE id = $1 AND lease_token = $2
"""

REQUEUE = """
UPDATE {messages}
SET lease_token = NULL, lease_until = NULL, redelivered = false, envelope = $3, due_at = $4,
    position = nextval('{schema}."{prefix}position"')
WHERE id = $1 AND lease_token IS NOT DISTINCT FROM $2
"""

RENEW = """
UPDATE {messages} AS m SET lease_until = $3
FROM unnest($1::bigint[], $2::bigint[]) AS s(id, token)
WHERE m.id = s.id AND m.lease_token = s.token
"""

BROWSE_DEAD = """
SELECT id, envelope, raw FROM {dead_letters}
WHERE queue = $1 AND id > $2 ORDER BY id LIMIT $3
"""

BROWSE_DELAYED = """
SELECT id, envelope, due_at FROM {messages}
WHERE queue = $1 AND lease_token IS NULL AND due_at > $2 AND NOT (id = ANY($3::bigint[]))
ORDER BY due_at, id LIMIT $4
"""

DEAD_DELETE = "DELETE FROM {dead_letters} WHERE id = $1"

DEAD_REQUEUE = """
WITH revived AS (
    DELETE FROM {dead_letters} WHERE id = $1 RETURNING queue, job_id, topic, priority
), placed AS (
    INSERT INTO {messages} (queue, job_id, topic, priority, envelope, due_at, unique_id)
    SELECT r.queue, r.job_id, r.topic, r.priority, $2, $3, NOT EXISTS (
        SELECT 1 FROM {messages} AS m WHERE m.queue = r.queue AND m.job_id = r.job_id
    ) FROM revived AS r
)
SELECT count(*) FROM revived
"""

DELAYED_DELETE = """
WITH done AS (
    DELETE FROM {messages} WHERE id = $1 AND lease_token IS NULL RETURNING job_id
), forgotten AS (
    DELETE FROM {cancels} WHERE job_id IN (SELECT job_id FROM done)
)
SELECT count(*) FROM done
"""

DECLARE = "INSERT INTO {queues} (name) VALUES ($1) ON CONFLICT (name) DO NOTHING"
IS_DECLARED = "SELECT EXISTS (SELECT 1 FROM {queues} WHERE name = $1)"
DECLARED_AMONG = "SELECT name FROM {queues} WHERE name = ANY($1::text[])"
QUEUE_NAMES = "SELECT name FROM {queues} ORDER BY name"
FLUSH = """
WITH gone AS (DELETE FROM {messages} WHERE queue = $1)
DELETE FROM {dead_letters} WHERE queue = $1
"""
DELETE_QUEUE = "DELETE FROM {queues} WHERE name = $1"

COUNTS = """
SELECT
    count(*) FILTER (WHERE lease_token IS NULL AND due_at <= $2),
    count(*) FILTER (WHERE lease_token IS NULL AND due_at > $2),
    count(*) FILTER (WHERE lease_token IS NOT NULL),
    (SELECT count(*) FROM {dead_letters} WHERE queue = $1)
FROM {messages} WHERE queue = $1
"""

CANCEL_WAITING = """
WITH gone AS (
    DELETE FROM {messages} WHERE queue = $1 AND job_id = $2 AND lease_token IS NULL
    RETURNING 1
)
SELECT count(*) FROM gone
"""

CANCEL_RUNNING = """
WITH running AS (
    SELECT 1 FROM {messages} WHERE queue = $1 AND job_id = $2 AND lease_token IS NOT NULL
), flagged AS (
    INSERT INTO {cancels} (job_id) SELECT $2 FROM running
    ON CONFLICT (job_id) DO NOTHING
)
SELECT count(*) FROM running
"""

CANCELLED_AMONG = "SELECT job_id FROM {cancels} WHERE job_id = ANY($1::text[])"
CANCEL_FORGET = "DELETE FROM {cancels} WHERE job_id = $1"

HEARTBEAT = """
INSERT INTO {workers} (id, info, last_seen, owner, session_pid, session_start)
VALUES ($1, $2::jsonb, $3, $4, $5, $6)
ON CONFLICT (id) DO UPDATE SET info = EXCLUDED.info, last_seen = EXCLUDED.last_seen,
    owner = EXCLUDED.owner, session_pid = EXCLUDED.session_pid,
    session_start = EXCLUDED.session_start
"""
SESSION = """
UPDATE {workers} SET session_pid = $2, session_start = $3 WHERE owner = $1
"""
MY_SESSION = (
    "SELECT pg_backend_pid(), backend_start FROM pg_stat_activity WHERE pid = pg_backend_pid()"
)
UNREGISTER = "DELETE FROM {workers} WHERE id = $1"
FORGET_STALE_WORKERS = "DELETE FROM {workers} WHERE last_seen < $1"
LIVE_WORKERS = "SELECT info::text FROM {workers} WHERE last_seen >= $1"

BUCKET_GET = """
SELECT data FROM {buckets}
WHERE kind = $1 AND id = $2 AND (expires_at IS NULL OR expires_at > $3)
"""
BUCKET_STORE = """
INSERT INTO {buckets} (kind, id, data, expires_at) VALUES ($1, $2, $3, $4)
ON CONFLICT (kind, id) DO UPDATE SET data = EXCLUDED.data, expires_at = EXCLUDED.expires_at
"""
BUCKET_DELETE = "DELETE FROM {buckets} WHERE kind = $1 AND id = $2"
BUCKET_PURGE = "DELETE FROM {buckets} WHERE expires_at IS NOT NULL AND expires_at <= $1"

LIMITER_ACQUIRE = "SELECT {limiter_acquire}($1, $2, $3, $4, $5, $6, $7)"
LIMITER_RELEASE = "DELETE FROM {limits} WHERE actor = $1 AND kind = 's' AND token = $2"
LIMITER_RENEW = """
UPDATE {limits} SET expires_at = $3 WHERE actor = $1 AND kind = 's' AND token = ANY($2::text[])
"""
