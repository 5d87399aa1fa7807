-- Two-person approval on authenticated people: an approver is a registered identity of one
-- tenant with its own nkey, and an approval is that key's signature over the command.

-- Registered by head office (`tillsync approvers add`); a revoked approver's signatures no
-- longer count, on commands still waiting as on new ones.
CREATE TABLE approvers (
    tenant_id   text NOT NULL,
    approver_id text NOT NULL,
    public_key  text NOT NULL,
    added_at    timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz,
    PRIMARY KEY (tenant_id, approver_id)
);

-- Every decision an approver sent about a recorded command, counted or refused (code), so the
-- portal and an auditor see who approved, who rejected and what was refused.
CREATE TABLE command_decisions (
    id          bigserial PRIMARY KEY,
    tenant_id   text NOT NULL,
    command_id  text NOT NULL,
    approver_id text NOT NULL,
    decision    text NOT NULL,            -- approve | reject
    signature   text NOT NULL,
    code        text,                     -- NULL: counted; else why it was refused
    at          timestamptz NOT NULL DEFAULT now()
);
-- One counted decision per approver and command: the duplicate check of the broker.
CREATE UNIQUE INDEX command_decisions_counted ON command_decisions (tenant_id, command_id, approver_id)
    WHERE code IS NULL;

-- A command waiting for approvals: recorded, not delivered, no inbox entry yet. Its signed
-- approvals so far are in command_decisions (and those it arrived with in the envelope).
ALTER TABLE commands ADD COLUMN pending_approval boolean NOT NULL DEFAULT false;
CREATE INDEX commands_pending_approval ON commands (expires_at) WHERE pending_approval;
