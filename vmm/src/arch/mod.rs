//! x86_64 platform setup: memory layout, ACPI tables, kernel loading, vCPU boot state.

pub mod acpi;
pub mod boot;
pub mod layout;
pub mod regs;
