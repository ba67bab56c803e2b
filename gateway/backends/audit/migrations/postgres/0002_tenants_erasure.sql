-- Tenants (issue 14): every row belongs to the tenant of the API key that sent its text; learner ids are
-- only unique within a tenant. Rows written before tenants belong to the default tenant (the only one
-- there was). History reads and erasure go by (tenant, learner_id). A constant default makes the ADD
-- COLUMN instant (PostgreSQL 11+); the index build blocks writes for its duration (the writer queues).
ALTER TABLE audit_log ADD COLUMN tenant TEXT NOT NULL DEFAULT 'default';
DROP INDEX audit_log_learner_ts;
CREATE INDEX audit_log_tenant_learner_ts ON audit_log (tenant, learner_id, ts, id);

-- One row per erasure (DELETE /v1/learners/{id}): nothing that identifies the learner, only a keyed hash
-- of (tenant, learner id) under the audit hash key (null without one), what was removed, and which key
-- asked. Kept when retention deletes audit rows: it is the record that the erasure happened.
CREATE TABLE audit_erasures (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    ts TIMESTAMPTZ NOT NULL,
    tenant TEXT NOT NULL,
    learner_hash TEXT,
    key_id TEXT,
    trajectory_points INTEGER NOT NULL,
    audit_rows INTEGER NOT NULL
);
CREATE INDEX audit_erasures_tenant_ts ON audit_erasures (tenant, ts);
