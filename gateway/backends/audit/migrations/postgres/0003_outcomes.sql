-- Outcome feedback (issue 17): what happened after an analysed text, linked to its audit row by
-- (tenant, request_id, text_index) — the result_id a response carries is "<request_id>-<text_index>".
-- The audit row keeps the features that decided (learning emotions, VAD, context, risk, deviation) and
-- the policy version, so a policy can be fitted from (features, outcome) pairs. Nullable columns without
-- a default: the ADD COLUMNs are instant.
ALTER TABLE audit_log ADD COLUMN features JSONB;
ALTER TABLE audit_log ADD COLUMN policy_version TEXT;
CREATE INDEX audit_log_tenant_request ON audit_log (tenant, request_id, text_index);

CREATE TABLE audit_outcomes (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    ts TIMESTAMPTZ NOT NULL,
    tenant TEXT NOT NULL,
    learner_id TEXT NOT NULL,
    request_id TEXT NOT NULL,
    text_index INTEGER NOT NULL,
    outcome TEXT NOT NULL,
    label TEXT,
    key_id TEXT
);
CREATE INDEX audit_outcomes_tenant_learner ON audit_outcomes (tenant, learner_id);
CREATE INDEX audit_outcomes_ts ON audit_outcomes (ts);
-- erasures count the outcomes they removed too
ALTER TABLE audit_erasures ADD COLUMN outcomes INTEGER NOT NULL DEFAULT 0;
