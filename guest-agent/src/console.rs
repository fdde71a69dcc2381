//! The serial console (COM1): `print!`/`println!` for the guest.

use core::fmt::Write;

use protocol::layout::SERIAL_PORT;

use crate::arch::port::outb;

/// Writes to COM1. The VMM's UART is always ready to transmit, so there is no status
/// polling: one port write (one VM exit) per byte.
pub struct Serial;

impl Write for Serial {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        for b in s.bytes() {
            outb(SERIAL_PORT, b);
        }
        Ok(())
    }
}

/// Print formatted text.
#[macro_export]
macro_rules! print {
    ($($arg:tt)*) => {{
        let _ = core::fmt::Write::write_fmt(&mut $crate::console::Serial, format_args!($($arg)*));
    }};
}

/// Print formatted text and a newline.
#[macro_export]
macro_rules! println {
    () => { $crate::print!("\n") };
    ($($arg:tt)*) => {{
        $crate::print!($($arg)*);
        $crate::print!("\n");
    }};
}

/// Numbers formatted without `core::fmt`'s integer code, whose precompiled form uses SSE
/// instructions that KVM's instruction emulator (which runs this guest on nested KVM)
/// does not implement. `Hex(v)`: `0x` and minimal digits.
pub struct Hex(pub u64);
/// `0x` and 16 zero-padded digits.
pub struct Hex16(pub u64);
/// Decimal.
pub struct Dec(pub u64);

fn hex_digits(mut v: u64, min: usize, buf: &mut [u8; 18]) -> &str {
    let mut i = buf.len();
    while v != 0 || buf.len() - i < min {
        i -= 1;
        buf[i] = b"0123456789abcdef"[(v & 15) as usize];
        v >>= 4;
    }
    i -= 1;
    buf[i] = b'x';
    i -= 1;
    buf[i] = b'0';
    core::str::from_utf8(&buf[i..]).unwrap_or("?")
}

impl core::fmt::Display for Hex {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(hex_digits(self.0, 1, &mut [0; 18]))
    }
}

impl core::fmt::Display for Hex16 {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(hex_digits(self.0, 16, &mut [0; 18]))
    }
}

impl core::fmt::Display for Dec {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let mut buf = [0u8; 20];
        let mut i = buf.len();
        let mut v = self.0;
        loop {
            i -= 1;
            buf[i] = b'0' + (v % 10) as u8;
            v /= 10;
            if v == 0 {
                break;
            }
        }
        f.write_str(core::str::from_utf8(&buf[i..]).unwrap_or("?"))
    }
}
