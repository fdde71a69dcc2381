//! A read-only MC146818 CMOS real-time clock at ports 0x70/0x71, giving the guest the
//! host's UTC time.
//!
//! Linux probes the CMOS clock at boot; with nothing at those ports its `rtc_cmos` driver
//! waits five seconds for an update cycle that never ends (all-ones reads look like
//! "update in progress"). The clock reports binary-coded decimal, 24-hour mode, never
//! updating, with a valid battery; writes to the time registers are kept in CMOS memory
//! but do not set the clock.

use std::time::{SystemTime, UNIX_EPOCH};

use crate::devices::bus::BusDevice;

/// The index port; the data port follows it.
pub const RTC_PORT: u16 = 0x70;

const REG_SECONDS: u8 = 0x00;
const REG_MINUTES: u8 = 0x02;
const REG_HOURS: u8 = 0x04;
const REG_WEEKDAY: u8 = 0x06;
const REG_DAY: u8 = 0x07;
const REG_MONTH: u8 = 0x08;
const REG_YEAR: u8 = 0x09;
const REG_STATUS_A: u8 = 0x0a;
const REG_STATUS_B: u8 = 0x0b;
const REG_STATUS_C: u8 = 0x0c;
const REG_STATUS_D: u8 = 0x0d;
const REG_CENTURY: u8 = 0x32;
/// Status A: 32.768 kHz time base, 1024 Hz rate, no update in progress.
const STATUS_A: u8 = 0x26;
/// Status B: 24-hour mode, BCD, no interrupts.
const STATUS_B: u8 = 0x02;
/// Status D: valid RAM and time (battery good).
const STATUS_D: u8 = 0x80;

/// The CMOS clock and its 128 bytes of memory.
#[derive(Debug)]
pub struct Rtc {
    index: u8,
    cmos: [u8; 128],
}

impl Default for Rtc {
    fn default() -> Self {
        Rtc {
            index: 0,
            cmos: [0; 128],
        }
    }
}

/// A calendar time in UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct DateTime {
    year: u32,
    month: u32,
    day: u32,
    weekday: u32,
    hour: u32,
    minute: u32,
    second: u32,
}

/// The UTC calendar time `secs` after the Unix epoch (Howard Hinnant's civil-from-days).
fn civil(secs: u64) -> DateTime {
    let days = secs / 86_400;
    let rem = secs % 86_400;
    // 1970-01-01 was a Thursday (weekday 5 with Sunday = 1).
    let weekday = ((days + 4) % 7) as u32 + 1;
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = (yoe + era * 400 + i64::from(month <= 2)) as u32;
    DateTime {
        year,
        month,
        day,
        weekday,
        hour: (rem / 3600) as u32,
        minute: (rem % 3600 / 60) as u32,
        second: (rem % 60) as u32,
    }
}

fn bcd(v: u32) -> u8 {
    (((v / 10) % 10) << 4 | (v % 10)) as u8
}

impl Rtc {
    fn register(&self, reg: u8) -> u8 {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let t = civil(now);
        match reg {
            REG_SECONDS => bcd(t.second),
            REG_MINUTES => bcd(t.minute),
            REG_HOURS => bcd(t.hour),
            REG_WEEKDAY => bcd(t.weekday),
            REG_DAY => bcd(t.day),
            REG_MONTH => bcd(t.month),
            REG_YEAR => bcd(t.year % 100),
            REG_CENTURY => bcd(t.year / 100),
            REG_STATUS_A => STATUS_A,
            REG_STATUS_B => STATUS_B,
            REG_STATUS_C => 0,
            REG_STATUS_D => STATUS_D,
            r => self.cmos[usize::from(r & 0x7f)],
        }
    }
}

impl BusDevice for Rtc {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let v = if offset == 1 {
            self.register(self.index)
        } else {
            self.index
        };
        data.fill(v);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let Some(&v) = data.first() else { return };
        if offset == 0 {
            // Bit 7 is the NMI mask, not part of the index.
            self.index = v & 0x7f;
        } else {
            self.cmos[usize::from(self.index)] = v;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calendar_from_unix_time() {
        let t = civil(0);
        assert_eq!((t.year, t.month, t.day, t.weekday), (1970, 1, 1, 5));
        // 2026-12-04 04:16:07 UTC, a Friday.
        let t = civil(1_796_357_767);
        assert_eq!(
            (
                t.year, t.month, t.day, t.hour, t.minute, t.second, t.weekday
            ),
            (2026, 12, 4, 4, 16, 7, 6)
        );
        // 2024-02-29, a leap day.
        let t = civil(1_709_164_800);
        assert_eq!((t.year, t.month, t.day), (2024, 2, 29));
    }

    #[test]
    fn reads_bcd_registers_through_the_index_port() {
        let mut rtc = Rtc::default();
        let mut b = [0u8];
        rtc.write(0, &[0x80 | REG_STATUS_D]);
        rtc.read(1, &mut b);
        assert_eq!(b[0], STATUS_D, "NMI bit ignored, battery good");
        rtc.write(0, &[REG_STATUS_A]);
        rtc.read(1, &mut b);
        assert_eq!(b[0] & 0x80, 0, "never an update in progress");
        rtc.write(0, &[REG_CENTURY]);
        rtc.read(1, &mut b);
        assert_eq!(b[0], 0x20);
        rtc.write(0, &[0x40]);
        rtc.write(1, &[0x5a]);
        rtc.read(1, &mut b);
        assert_eq!(b[0], 0x5a, "CMOS memory keeps what is written");
    }
}
