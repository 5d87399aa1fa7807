-- Attempts no known credential stands behind (a stranger's: unknown keys, keyless connects,
-- activation connects and unknown codes) are kept as one row per action, reason and source
-- address a minute, counting the tries: fresh keys cost nothing, so a row per key or per try
-- would let anyone on the network fill the table.
ALTER TABLE identity_audit ADD COLUMN tries integer NOT NULL DEFAULT 1;
ALTER TABLE identity_audit ADD COLUMN minute timestamptz;
CREATE UNIQUE INDEX identity_audit_per_address ON identity_audit (action, coalesce(reason, ''), coalesce(remote, ''), minute)
    WHERE minute IS NOT NULL;
