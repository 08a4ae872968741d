//! The small legacy I/O devices the microVM decodes: the ACPI power/reset register, the
//! i8042 reset line, and a QEMU-compatible pvpanic port.

use crate::arch::layout::ACPI_RESET_VALUE;

/// What the guest asked the platform to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum PlatformRequest {
    /// Power off (ACPI S5).
    PowerOff,
    /// Reset (ACPI reset register, i8042 pulse, or triple fault).
    Reset,
    /// The guest kernel panicked (pvpanic).
    Panic,
}

/// Decodes a byte written to the ACPI PM port (sleep control register / reset register).
pub fn acpi_pm_write(value: u8) -> Option<PlatformRequest> {
    const SLP_EN: u8 = 1 << 5;
    const SLP_TYP_SHIFT: u8 = 2;
    const S5: u8 = 5;
    if value == ACPI_RESET_VALUE {
        return Some(PlatformRequest::Reset);
    }
    if value & SLP_EN != 0 && (value >> SLP_TYP_SHIFT) & 0x7 == S5 {
        return Some(PlatformRequest::PowerOff);
    }
    None
}

/// Decodes a byte written to the i8042 command port: 0xfe pulses the CPU reset line.
pub fn i8042_command(value: u8) -> Option<PlatformRequest> {
    (value == 0xfe).then_some(PlatformRequest::Reset)
}

/// The pvpanic capability byte the guest reads: "panicked" events are supported.
pub const PVPANIC_CAPABILITIES: u8 = 1;

/// Decodes a byte written to the pvpanic port (bit 0: panicked; bit 1: crash kernel loaded).
pub fn pvpanic_write(value: u8) -> Option<PlatformRequest> {
    (value & 1 != 0).then_some(PlatformRequest::Panic)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acpi_pm_port_decodes_s5_and_reset_only() {
        assert_eq!(acpi_pm_write(0x34), Some(PlatformRequest::PowerOff));
        assert_eq!(
            acpi_pm_write(ACPI_RESET_VALUE),
            Some(PlatformRequest::Reset)
        );
        assert_eq!(acpi_pm_write(0x14), None, "S5 without SLP_EN");
        assert_eq!(acpi_pm_write(0x2c), None, "S3 is not supported");
        assert_eq!(i8042_command(0xfe), Some(PlatformRequest::Reset));
        assert_eq!(i8042_command(0xd1), None);
        assert_eq!(pvpanic_write(1), Some(PlatformRequest::Panic));
        assert_eq!(pvpanic_write(0), None);
    }
}
