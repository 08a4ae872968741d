-- Per-node usage kept by triggers in the same transaction as the sliver
-- change, and a revision number that changes with everything placement
-- reads about a node. The authority keeps every node's free capacity in
-- memory and, instead of re-reading all nodes for each placement, reads
-- only the rows whose revision is newer than what it holds.

ALTER TABLE nodes ADD COLUMN used_vcpus INTEGER NOT NULL DEFAULT 0;
ALTER TABLE nodes ADD COLUMN used_memory_mib INTEGER NOT NULL DEFAULT 0;
ALTER TABLE nodes ADD COLUMN used_disk_gib INTEGER NOT NULL DEFAULT 0;
ALTER TABLE nodes ADD COLUMN used_bandwidth_mbps INTEGER NOT NULL DEFAULT 0;
ALTER TABLE nodes ADD COLUMN sliver_count INTEGER NOT NULL DEFAULT 0;
-- The value of the 'node_rev' counter when the row last changed.
ALTER TABLE nodes ADD COLUMN rev INTEGER NOT NULL DEFAULT 0;

UPDATE nodes SET
    used_vcpus = (SELECT COALESCE(SUM(vcpus), 0) FROM slivers WHERE node_id = nodes.id),
    used_memory_mib = (SELECT COALESCE(SUM(memory_mib), 0) FROM slivers WHERE node_id = nodes.id),
    used_disk_gib = (SELECT COALESCE(SUM(disk_gib), 0) FROM slivers WHERE node_id = nodes.id),
    used_bandwidth_mbps = (SELECT COALESCE(SUM(bandwidth_mbps), 0) FROM slivers WHERE node_id = nodes.id),
    sliver_count = (SELECT COUNT(*) FROM slivers WHERE node_id = nodes.id);

INSERT INTO counters (name, value) VALUES ('node_rev', 1);
UPDATE nodes SET rev = 1;
CREATE INDEX nodes_rev ON nodes(rev);

-- Removed nodes, so a reader holding an older revision learns they are gone.
CREATE TABLE node_removals (
    node_id INTEGER PRIMARY KEY,
    rev     INTEGER NOT NULL
);
CREATE INDEX node_removals_rev ON node_removals(rev);

CREATE TRIGGER slivers_reserve AFTER INSERT ON slivers
BEGIN
    UPDATE counters SET value = value + 1 WHERE name = 'node_rev';
    UPDATE nodes SET
        used_vcpus = used_vcpus + NEW.vcpus,
        used_memory_mib = used_memory_mib + NEW.memory_mib,
        used_disk_gib = used_disk_gib + NEW.disk_gib,
        used_bandwidth_mbps = used_bandwidth_mbps + NEW.bandwidth_mbps,
        sliver_count = sliver_count + 1,
        rev = (SELECT value FROM counters WHERE name = 'node_rev')
    WHERE id = NEW.node_id;
END;

-- Also fires for slivers deleted by ON DELETE CASCADE (slice deletion).
CREATE TRIGGER slivers_release AFTER DELETE ON slivers
BEGIN
    UPDATE counters SET value = value + 1 WHERE name = 'node_rev';
    UPDATE nodes SET
        used_vcpus = used_vcpus - OLD.vcpus,
        used_memory_mib = used_memory_mib - OLD.memory_mib,
        used_disk_gib = used_disk_gib - OLD.disk_gib,
        used_bandwidth_mbps = used_bandwidth_mbps - OLD.bandwidth_mbps,
        sliver_count = sliver_count - 1,
        rev = (SELECT value FROM counters WHERE name = 'node_rev')
    WHERE id = OLD.node_id;
END;

CREATE TRIGGER slivers_resize AFTER UPDATE OF node_id, vcpus, memory_mib, disk_gib, bandwidth_mbps ON slivers
BEGIN
    UPDATE counters SET value = value + 1 WHERE name = 'node_rev';
    UPDATE nodes SET
        used_vcpus = used_vcpus - OLD.vcpus,
        used_memory_mib = used_memory_mib - OLD.memory_mib,
        used_disk_gib = used_disk_gib - OLD.disk_gib,
        used_bandwidth_mbps = used_bandwidth_mbps - OLD.bandwidth_mbps,
        sliver_count = sliver_count - 1,
        rev = (SELECT value FROM counters WHERE name = 'node_rev')
    WHERE id = OLD.node_id;
    UPDATE nodes SET
        used_vcpus = used_vcpus + NEW.vcpus,
        used_memory_mib = used_memory_mib + NEW.memory_mib,
        used_disk_gib = used_disk_gib + NEW.disk_gib,
        used_bandwidth_mbps = used_bandwidth_mbps + NEW.bandwidth_mbps,
        sliver_count = sliver_count + 1,
        rev = (SELECT value FROM counters WHERE name = 'node_rev')
    WHERE id = NEW.node_id;
END;

CREATE TRIGGER nodes_added AFTER INSERT ON nodes
BEGIN
    UPDATE counters SET value = value + 1 WHERE name = 'node_rev';
    UPDATE nodes SET rev = (SELECT value FROM counters WHERE name = 'node_rev') WHERE id = NEW.id;
END;

-- Columns placement reads (not rev or the usage columns, which the
-- triggers above set together with rev).
CREATE TRIGGER nodes_changed AFTER UPDATE OF name, site_id, vcpus, memory_mib, disk_gib, bandwidth_mbps, state, last_seen ON nodes
BEGIN
    UPDATE counters SET value = value + 1 WHERE name = 'node_rev';
    UPDATE nodes SET rev = (SELECT value FROM counters WHERE name = 'node_rev') WHERE id = NEW.id;
END;

CREATE TRIGGER nodes_removed AFTER DELETE ON nodes
BEGIN
    UPDATE counters SET value = value + 1 WHERE name = 'node_rev';
    INSERT OR REPLACE INTO node_removals (node_id, rev)
        VALUES (OLD.id, (SELECT value FROM counters WHERE name = 'node_rev'));
END;

CREATE TRIGGER sites_changed AFTER UPDATE OF name, region, country, latitude, longitude ON sites
BEGIN
    UPDATE counters SET value = value + 1 WHERE name = 'node_rev';
    UPDATE nodes SET rev = (SELECT value FROM counters WHERE name = 'node_rev') WHERE site_id = NEW.id;
END;
