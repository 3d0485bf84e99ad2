//! Legacy platform devices on the port-I/O bus: the 8250 serial console and
//! the small registers through which the guest asks the VMM to stop.

mod platform;
mod serial;

pub use platform::{
    AcpiPm, BootStatus, BootStatusState, GuestStop, I8042Reset, PvPanic, StopReason, ACPI_PM_LEN,
    ACPI_RESET_VALUE, BOOT_DONE_MAGIC, BOOT_STATUS_LEN, PVPANIC_PANICKED, SLEEP_TYPE_S5,
};
pub use serial::{EventFdTrigger, Serial, SerialError};
