//! Human output: aligned tables, times, durations and resources.

use crate::model::{ReportedCapacity, Resources};

/// Renders rows under headers, columns padded to their widest cell.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let mut out = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<w$}  "));
            }
        }
        out.trim_end().to_string()
    };
    let mut out = line(headers.iter().map(|h| h.to_uppercase()).collect());
    for row in rows {
        out.push('\n');
        out.push_str(&line(row.clone()));
    }
    out
}

/// "2026-11-20 12:00:05 UTC".
pub fn utc(unix: i64) -> String {
    let days = unix.div_euclid(86_400);
    let secs = unix.rem_euclid(86_400);
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

/// "2026-11-20 12:00:05 UTC (in 13d 23h)" or "(expired)".
pub fn expiry(unix: i64, now: i64) -> String {
    if unix <= now {
        format!("{} (expired)", utc(unix))
    } else {
        format!("{} (in {})", utc(unix), short_duration((unix - now) as u64))
    }
}

/// The two largest units of a duration: "13d 23h", "5m 3s".
pub fn short_duration(secs: u64) -> String {
    let parts = [
        (secs / 86_400, "d"),
        (secs / 3600 % 24, "h"),
        (secs / 60 % 60, "m"),
        (secs % 60, "s"),
    ];
    let first = parts.iter().position(|(v, _)| *v > 0).unwrap_or(3);
    parts[first..]
        .iter()
        .take(2)
        .filter(|(v, _)| *v > 0 || first == 3)
        .map(|(v, u)| format!("{v}{u}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// "1 vCPU 256M 1G 10Mb".
pub fn resources(r: &Resources) -> String {
    format!(
        "{}c {}M {}G {}Mb",
        r.vcpus, r.memory_mib, r.disk_gib, r.bandwidth_mbps
    )
}

/// "2c 8192M 40G" (only the dimensions the node measures).
pub fn reported(r: &ReportedCapacity) -> String {
    let mut out = format!("{}c {}M", r.vcpus, r.memory_mib);
    if let Some(d) = r.disk_gib {
        out.push_str(&format!(" {d}G"));
    }
    if let Some(b) = r.bandwidth_mbps {
        out.push_str(&format!(" {b}Mb"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_dates_are_civil_dates() {
        assert_eq!(utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc(951_782_400), "2000-02-29 00:00:00 UTC");
        assert_eq!(utc(1_700_000_000), "2023-11-14 22:13:20 UTC");
    }

    #[test]
    fn durations_show_two_units() {
        assert_eq!(short_duration(14 * 86_400 + 3600 * 5 + 7), "14d 5h");
        assert_eq!(short_duration(65), "1m 5s");
        assert_eq!(short_duration(0), "0s");
    }

    #[test]
    fn tables_align_columns() {
        let t = table(
            &["name", "x"],
            &[
                vec!["a".into(), "1".into()],
                vec!["long".into(), "2".into()],
            ],
        );
        assert_eq!(t, "NAME  X\na     1\nlong  2");
    }
}
