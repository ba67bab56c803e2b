-- The audit trail: one row per analysed text. Timestamps are UTC text in one fixed-width ISO 8601 form
-- (2025-01-31T12:00:00.000000Z), so comparing them as text compares them as times.
CREATE TABLE audit_log (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    ts TEXT NOT NULL,
    learner_id TEXT,
    request_id TEXT NOT NULL,
    text_index INTEGER NOT NULL,
    channel TEXT NOT NULL,
    model_version TEXT NOT NULL,
    labels TEXT NOT NULL,              -- JSON array of the labels over threshold
    primary_emotion TEXT NOT NULL,
    confidence REAL NOT NULL,
    readiness_state TEXT NOT NULL,
    readiness_score REAL NOT NULL,
    valence REAL NOT NULL,
    intervention_level TEXT NOT NULL,
    reasons TEXT NOT NULL,             -- JSON array
    latency_ms REAL NOT NULL,
    cached INTEGER NOT NULL,
    text_hash TEXT,                    -- HMAC-SHA256 of the normalized text, hex
    text TEXT,                         -- only with GATEWAY_AUDIT_STORE_TEXT=true
    CHECK (text_hash IS NOT NULL OR text IS NOT NULL)
);

-- GET /v1/learners/{id}/history (newest first, keyset on ts and id) and the retention delete.
CREATE INDEX audit_log_learner_ts ON audit_log (learner_id, ts, id);
CREATE INDEX audit_log_ts ON audit_log (ts);
