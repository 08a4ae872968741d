//! The slicenet KVM microVM and the virtual appliance format.
