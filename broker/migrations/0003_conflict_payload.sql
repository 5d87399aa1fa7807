-- A conflicting event is not applied, but the device's version must not be lost: keep its bytes.
ALTER TABLE conflicts ADD COLUMN payload bytea;
