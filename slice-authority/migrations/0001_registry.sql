-- The slicenet authority registry. Times are unix seconds; resources are
-- vCPUs, MiB, GiB and Mbit/s. Names are validated by the application.

CREATE TABLE sites (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    name        TEXT NOT NULL UNIQUE,
    region      TEXT NOT NULL,
    country     TEXT NOT NULL,
    latitude    REAL NOT NULL CHECK (latitude BETWEEN -90 AND 90),
    longitude   REAL NOT NULL CHECK (longitude BETWEEN -180 AND 180),
    description TEXT NOT NULL DEFAULT '',
    created_at  INTEGER NOT NULL
);

CREATE TABLE nodes (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    name           TEXT NOT NULL UNIQUE,
    site_id        INTEGER NOT NULL REFERENCES sites(id),
    public_key     TEXT NOT NULL UNIQUE,
    vcpus          INTEGER NOT NULL CHECK (vcpus > 0),
    memory_mib     INTEGER NOT NULL CHECK (memory_mib > 0),
    disk_gib       INTEGER NOT NULL CHECK (disk_gib >= 0),
    bandwidth_mbps INTEGER NOT NULL CHECK (bandwidth_mbps >= 0),
    -- 'new' (never heard from), 'up' (registered), 'disabled' (operator);
    -- 'down' is derived from last_seen and the liveness window.
    state          TEXT NOT NULL DEFAULT 'new' CHECK (state IN ('new', 'up', 'disabled')),
    wg_public_key  TEXT,
    tunnel_address TEXT UNIQUE,
    endpoint       TEXT,
    software       TEXT,
    last_seen      INTEGER,
    created_at     INTEGER NOT NULL
);
CREATE INDEX nodes_site ON nodes(site_id);

CREATE TABLE principals (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    name       TEXT NOT NULL UNIQUE,
    public_key TEXT NOT NULL UNIQUE,
    is_admin   INTEGER NOT NULL DEFAULT 0 CHECK (is_admin IN (0, 1)),
    created_at INTEGER NOT NULL
);

CREATE TABLE site_members (
    principal_id INTEGER NOT NULL REFERENCES principals(id) ON DELETE CASCADE,
    site_id      INTEGER NOT NULL REFERENCES sites(id),
    role         TEXT NOT NULL CHECK (role IN ('pi', 'user')),
    PRIMARY KEY (principal_id, site_id)
);

CREATE TABLE slices (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    name             TEXT NOT NULL UNIQUE,
    site_id          INTEGER NOT NULL REFERENCES sites(id),
    owner_id         INTEGER NOT NULL REFERENCES principals(id),
    description      TEXT NOT NULL DEFAULT '',
    lease_expires_at INTEGER NOT NULL,
    created_at       INTEGER NOT NULL
);
CREATE INDEX slices_expiry ON slices(lease_expires_at);

CREATE TABLE slice_members (
    slice_id     INTEGER NOT NULL REFERENCES slices(id) ON DELETE CASCADE,
    principal_id INTEGER NOT NULL REFERENCES principals(id) ON DELETE CASCADE,
    PRIMARY KEY (slice_id, principal_id)
);

CREATE TABLE slivers (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    slice_id       INTEGER NOT NULL REFERENCES slices(id) ON DELETE CASCADE,
    node_id        INTEGER NOT NULL REFERENCES nodes(id),
    vcpus          INTEGER NOT NULL CHECK (vcpus > 0),
    memory_mib     INTEGER NOT NULL CHECK (memory_mib > 0),
    disk_gib       INTEGER NOT NULL CHECK (disk_gib >= 0),
    bandwidth_mbps INTEGER NOT NULL CHECK (bandwidth_mbps >= 0),
    appliance_name TEXT NOT NULL,
    appliance_hash TEXT NOT NULL DEFAULT '',
    state          TEXT NOT NULL DEFAULT 'allocated'
                   CHECK (state IN ('allocated', 'provisioning', 'running', 'stopped', 'failed')),
    state_message  TEXT,
    created_at     INTEGER NOT NULL,
    updated_at     INTEGER NOT NULL
);
CREATE INDEX slivers_node ON slivers(node_id);
CREATE INDEX slivers_slice ON slivers(slice_id);

CREATE TABLE enclaves (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    slice_id   INTEGER NOT NULL REFERENCES slices(id) ON DELETE CASCADE,
    name       TEXT NOT NULL,
    vni        INTEGER NOT NULL UNIQUE CHECK (vni > 0 AND vni < 16777216),
    subnet     TEXT NOT NULL,
    prefix_len INTEGER NOT NULL CHECK (prefix_len BETWEEN 0 AND 30),
    created_at INTEGER NOT NULL,
    UNIQUE (slice_id, name)
);

CREATE TABLE enclave_members (
    enclave_id INTEGER NOT NULL REFERENCES enclaves(id) ON DELETE CASCADE,
    sliver_id  INTEGER NOT NULL REFERENCES slivers(id) ON DELETE CASCADE,
    address    TEXT NOT NULL,
    PRIMARY KEY (enclave_id, sliver_id),
    UNIQUE (enclave_id, address)
);
CREATE INDEX enclave_members_sliver ON enclave_members(sliver_id);

CREATE TABLE enclave_gateways (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    enclave_id     INTEGER NOT NULL REFERENCES enclaves(id) ON DELETE CASCADE,
    name           TEXT NOT NULL,
    wg_public_key  TEXT NOT NULL,
    tunnel_address TEXT NOT NULL UNIQUE,
    address        TEXT NOT NULL,
    endpoint       TEXT,
    created_at     INTEGER NOT NULL,
    UNIQUE (enclave_id, name),
    UNIQUE (enclave_id, address)
);

-- The latest signed ticket of every sliver, kept after the sliver is gone
-- (as a revocation) so nodes that were away still learn about it.
CREATE TABLE tickets (
    sliver_id  INTEGER PRIMARY KEY,
    node_id    INTEGER NOT NULL,
    epoch      INTEGER NOT NULL UNIQUE,
    revoked    INTEGER NOT NULL CHECK (revoked IN (0, 1)),
    expires_at INTEGER NOT NULL,
    body       BLOB NOT NULL
);
CREATE INDEX tickets_node_epoch ON tickets(node_id, epoch);

-- Counters that only grow: the ticket epoch and the next VNI.
CREATE TABLE counters (
    name  TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
INSERT INTO counters (name, value) VALUES ('epoch', 0);

-- Nonces of accepted mutating requests, until their timestamps leave the skew window.
CREATE TABLE request_nonces (
    public_key TEXT NOT NULL,
    nonce      TEXT NOT NULL,
    expires_at INTEGER NOT NULL,
    PRIMARY KEY (public_key, nonce)
);
CREATE INDEX request_nonces_expiry ON request_nonces(expires_at);

CREATE TABLE audit_log (
    id     INTEGER PRIMARY KEY AUTOINCREMENT,
    at     INTEGER NOT NULL,
    actor  TEXT NOT NULL,
    action TEXT NOT NULL,
    target TEXT NOT NULL,
    detail TEXT NOT NULL
);
CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log
BEGIN
    SELECT RAISE(ABORT, 'the audit log is append-only');
END;
CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log
BEGIN
    SELECT RAISE(ABORT, 'the audit log is append-only');
END;
