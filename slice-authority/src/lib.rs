//! The slicenet slice authority: registry, placement, leases, signed tickets and the HTTP API.
