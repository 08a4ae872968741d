//! The slicenet data plane: WireGuard sessions, VXLAN, the per-enclave learning switch and its ports.
