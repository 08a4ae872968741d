//! Device models. Each is plain Rust over guest memory and file descriptors, so tests drive
//! them directly (a test plays the guest) without KVM.

pub mod legacy;
pub mod serial;
pub mod virtio;

use vmm_sys_util::eventfd::EventFd;

/// An interrupt line: an eventfd that KVM injects as an edge on a GSI (irqfd); tests read it
/// to see that the device raised the interrupt.
#[derive(Debug)]
pub struct IrqLine {
    fd: EventFd,
}

impl IrqLine {
    /// A new, unconnected line.
    pub fn new() -> std::io::Result<IrqLine> {
        Ok(IrqLine {
            fd: EventFd::new(libc::EFD_NONBLOCK)?,
        })
    }

    /// Raises the interrupt (a failed write can only mean the counter is saturated, which
    /// already means "pending").
    pub fn trigger(&self) {
        let _ = self.fd.write(1);
    }

    /// The eventfd, for registering with KVM.
    pub fn eventfd(&self) -> &EventFd {
        &self.fd
    }

    /// How many times the line was raised since the last call (0 when none); for tests.
    pub fn take_count(&self) -> u64 {
        self.fd.read().unwrap_or(0)
    }
}
