-- What a node reports about itself when it registers (and in heartbeats):
-- the capacity its host really has and the address of its console service.
-- The operator's figures (vcpus, memory_mib, ...) stay a ceiling; placement
-- uses the smaller of the two in every dimension. NULL: nothing reported
-- (an older node daemon, or a dimension the node does not measure), so the
-- operator's figure stands alone.

ALTER TABLE nodes ADD COLUMN reported_vcpus INTEGER CHECK (reported_vcpus >= 0);
ALTER TABLE nodes ADD COLUMN reported_memory_mib INTEGER CHECK (reported_memory_mib >= 0);
ALTER TABLE nodes ADD COLUMN reported_disk_gib INTEGER CHECK (reported_disk_gib >= 0);
ALTER TABLE nodes ADD COLUMN reported_bandwidth_mbps INTEGER CHECK (reported_bandwidth_mbps >= 0);
-- Unix seconds of the last report that carried a capacity.
ALTER TABLE nodes ADD COLUMN capacity_reported_at INTEGER;
-- "ip:port" clients connect to for a sliver's serial console.
ALTER TABLE nodes ADD COLUMN console TEXT;

-- The capacity index reads the reported columns too, so changing them
-- must stamp the node with a new revision (migration 0002's trigger,
-- extended by the new columns).
DROP TRIGGER nodes_changed;
CREATE TRIGGER nodes_changed AFTER UPDATE OF name, site_id, vcpus, memory_mib, disk_gib, bandwidth_mbps,
    reported_vcpus, reported_memory_mib, reported_disk_gib, reported_bandwidth_mbps, state, last_seen ON nodes
BEGIN
    UPDATE counters SET value = value + 1 WHERE name = 'node_rev';
    UPDATE nodes SET rev = (SELECT value FROM counters WHERE name = 'node_rev') WHERE id = NEW.id;
END;
