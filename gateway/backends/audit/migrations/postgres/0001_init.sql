-- The audit trail: one row per analysed text.
CREATE TABLE audit_log (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    ts TIMESTAMPTZ NOT NULL,
    learner_id TEXT,
    request_id TEXT NOT NULL,
    text_index INTEGER NOT NULL,
    channel TEXT NOT NULL,
    model_version TEXT NOT NULL,
    labels JSONB NOT NULL,             -- the labels over threshold
    primary_emotion TEXT NOT NULL,
    confidence DOUBLE PRECISION NOT NULL,
    readiness_state TEXT NOT NULL,
    readiness_score DOUBLE PRECISION NOT NULL,
    valence DOUBLE PRECISION NOT NULL,
    intervention_level TEXT NOT NULL,
    reasons JSONB NOT NULL,
    latency_ms DOUBLE PRECISION NOT NULL,
    cached BOOLEAN NOT NULL,
    text_hash TEXT,                    -- HMAC-SHA256 of the normalized text, hex
    text TEXT,                         -- only with GATEWAY_AUDIT_STORE_TEXT=true
    CHECK (text_hash IS NOT NULL OR text IS NOT NULL)
);

-- GET /v1/learners/{id}/history (newest first, keyset on ts and id) and the retention delete.
CREATE INDEX audit_log_learner_ts ON audit_log (learner_id, ts, id);
CREATE INDEX audit_log_ts ON audit_log (ts);
