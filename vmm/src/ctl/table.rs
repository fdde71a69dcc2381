//! `ctl`'s answers for people: tables and `key  value` lines, addresses in hex, sizes with
//! binary units, durations in ms/µs. Rendered from the API's JSON (the JSON itself stays
//! what scripts get), so a field the API adds shows up here too, in the generic listing.

use std::fmt::Write;

use serde_json::Value;

use crate::cli::CtlCommand;

/// `ctl`'s answer as text for a terminal; `None` where the JSON is the best rendering
/// (or the answer is not the shape expected).
pub fn render(command: &CtlCommand, v: &Value) -> Option<String> {
    match command {
        CtlCommand::Regions(None) => regions(v),
        CtlCommand::Chunks => chunks(v["chunks"].as_array()?),
        CtlCommand::Chunk(_) | CtlCommand::Pin(_) | CtlCommand::Unpin(_) => {
            chunks(std::slice::from_ref(v))
        }
        CtlCommand::Alloc(_) => alloc(v),
        CtlCommand::Free(_) => Some(format!("freed {}\n", v["freed"].as_str()?)),
        CtlCommand::MetricsPrometheus => None,
        CtlCommand::Regions(Some(_))
        | CtlCommand::Vm
        | CtlCommand::Wait
        | CtlCommand::Compact(_)
        | CtlCommand::Metrics
        | CtlCommand::Verify
        | CtlCommand::Shutdown => v.is_object().then(|| listing(v)),
    }
}

/// Bytes with a binary unit: `64 MiB`, `1.50 MiB`, `512 B`.
pub fn bytes(v: u64) -> String {
    const UNITS: [(u32, &str); 4] = [(40, "TiB"), (30, "GiB"), (20, "MiB"), (10, "KiB")];
    for (shift, unit) in UNITS {
        let one = 1u64 << shift;
        if v >= one {
            return if v.is_multiple_of(one) {
                format!("{} {unit}", v >> shift)
            } else {
                format!("{:.2} {unit}", v as f64 / one as f64)
            };
        }
    }
    format!("{v} B")
}

/// Nanoseconds as `12.3 ms`, `45.0 µs`, `812 ns`, `1.20 s`.
pub fn duration_ns(ns: u64) -> String {
    match ns {
        0..1_000 => format!("{ns} ns"),
        1_000..1_000_000 => format!("{:.1} µs", ns as f64 / 1e3),
        1_000_000..1_000_000_000 => format!("{:.1} ms", ns as f64 / 1e6),
        _ => format!("{:.2} s", ns as f64 / 1e9),
    }
}

/// A guest-physical address: `0x8000000`.
pub fn hex(v: u64) -> String {
    format!("{v:#x}")
}

/// A number field, `-` when absent.
fn num(v: &Value, key: &str, f: fn(u64) -> String) -> String {
    v[key].as_u64().map_or_else(|| "-".to_string(), f)
}

fn text(v: &Value, key: &str) -> String {
    match &v[key] {
        Value::String(s) => s.clone(),
        Value::Null => "-".to_string(),
        other => other.to_string(),
    }
}

/// Rows under a header, columns padded to their widest cell; numbers right-aligned.
fn table(header: &[&str], rows: &[Vec<String>], right: &[bool]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let line = |out: &mut String, cells: &mut dyn Iterator<Item = &str>| {
        let mut l = String::new();
        for (i, cell) in cells.enumerate() {
            let w = widths[i];
            let pad = w.saturating_sub(cell.chars().count());
            if i > 0 {
                l.push_str("  ");
            }
            if right.get(i).copied().unwrap_or(false) {
                l.push_str(&" ".repeat(pad));
                l.push_str(cell);
            } else {
                l.push_str(cell);
                l.push_str(&" ".repeat(pad));
            }
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(&mut out, &mut header.iter().copied());
    for row in rows {
        line(&mut out, &mut row.iter().map(String::as_str));
    }
    out
}

fn regions(v: &Value) -> Option<String> {
    let rows: Vec<Vec<String>> = v["regions"]
        .as_array()?
        .iter()
        .map(|r| {
            let end = r["base"]
                .as_u64()
                .zip(r["size"].as_u64())
                .map(|(b, s)| b + s);
            vec![
                num(r, "id", |n| n.to_string()),
                text(r, "name"),
                num(r, "base", hex),
                end.map_or_else(|| "-".into(), hex),
                num(r, "size", bytes),
                if r["private"] == true {
                    "private"
                } else {
                    "lent"
                }
                .into(),
                num(r, "used", bytes),
                num(r, "largest_free", bytes),
                num(r, "chunks", |n| n.to_string()),
                format!("{}/{}", text(r, "allocs_ok"), text(r, "allocs_failed")),
                num(r, "busy_retries", |n| n.to_string()),
                num(r, "pages_migrated", |n| n.to_string()),
            ]
        })
        .collect();
    let mut out = table(
        &[
            "ID",
            "NAME",
            "BASE",
            "END",
            "SIZE",
            "KIND",
            "USED",
            "LARGEST FREE",
            "CHUNKS",
            "ALLOCS OK/FAILED",
            "BUSY",
            "MIGRATED",
        ],
        &rows,
        &[
            true, false, true, true, true, false, true, true, true, true, true, true,
        ],
    );
    if let Some(map) = v["map"].as_array().filter(|m| !m.is_empty()) {
        let rules: Vec<&str> = map.iter().filter_map(Value::as_str).collect();
        let _ = writeln!(out, "map: {}", rules.join("; "));
    }
    Some(out)
}

fn chunks(list: &[Value]) -> Option<String> {
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|c| {
            let end = c["gpa"].as_u64().zip(c["len"].as_u64()).map(|(g, l)| g + l);
            vec![
                text(c, "id"),
                text(c, "region"),
                num(c, "gpa", hex),
                end.map_or_else(|| "-".into(), hex),
                num(c, "len", bytes),
                text(c, "mode"),
                if c["pinned"] == true { "yes" } else { "no" }.into(),
                text(c, "owner"),
            ]
        })
        .collect();
    if rows.is_empty() {
        return Some("no chunks\n".into());
    }
    Some(table(
        &[
            "ID", "REGION", "GPA", "END", "LEN", "MODE", "PINNED", "OWNER",
        ],
        &rows,
        &[false, false, true, true, true, false, false, false],
    ))
}

fn alloc(v: &Value) -> Option<String> {
    let chunk = v.get("chunk")?;
    let mut out = chunks(std::slice::from_ref(chunk))?;
    let _ = writeln!(
        out,
        "{} pages migrated in {}, {} VM exits",
        text(v, "pages_migrated"),
        num(v, "elapsed_ns", duration_ns),
        text(v, "exits")
    );
    Some(out)
}

/// How a field is shown, from its name: addresses in hex, sizes with units, times.
fn field(key: &str, v: &Value) -> String {
    let Some(n) = v.as_u64() else {
        return match v {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
    };
    const SIZES: [&str; 9] = [
        "size",
        "used",
        "free",
        "largest_free",
        "len",
        "memory",
        "granule",
        "largest_free_before",
        "largest_free_after",
    ];
    if matches!(key, "base" | "gpa" | "end") {
        hex(n)
    } else if key.ends_with("_ns") {
        duration_ns(n)
    } else if key.ends_with("_ms") {
        duration_ns(n.saturating_mul(1_000_000))
    } else if key.ends_with("bytes") || SIZES.contains(&key) {
        bytes(n)
    } else {
        n.to_string()
    }
}

/// Any object as `path  value` lines; nested objects flattened to `a.b`, a bitmap
/// summarised (the hex is in `--json`).
fn listing(v: &Value) -> String {
    let mut lines = Vec::new();
    flatten("", v, &mut lines);
    let width = lines
        .iter()
        .map(|(k, _)| k.chars().count())
        .max()
        .unwrap_or(0);
    let mut out = String::new();
    for (k, val) in lines {
        let _ = writeln!(out, "{k:width$}  {val}");
    }
    out
}

fn flatten(prefix: &str, v: &Value, out: &mut Vec<(String, String)>) {
    let Value::Object(map) = v else {
        return;
    };
    for (k, val) in map {
        let path = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        match val {
            Value::Object(_) => flatten(&path, val, out),
            Value::String(s) if k == "bitmap" => {
                let set: u32 = s
                    .chars()
                    .filter_map(|c| c.to_digit(16))
                    .map(u32::count_ones)
                    .sum();
                out.push((
                    path,
                    format!("{} bits, {set} set (hex in --json)", s.len() * 4),
                ));
            }
            Value::Array(items) => {
                let shown: Vec<String> = items.iter().map(|i| field(k, i)).collect();
                out.push((path, shown.join(", ")));
            }
            _ => out.push((path, field(k, val))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn units() {
        assert_eq!(bytes(0), "0 B");
        assert_eq!(bytes(4096), "4 KiB");
        assert_eq!(bytes(64 << 20), "64 MiB");
        assert_eq!(bytes(3 << 19), "1.50 MiB");
        assert_eq!(bytes(5 << 30), "5 GiB");
        assert_eq!(duration_ns(812), "812 ns");
        assert_eq!(duration_ns(12_345_678), "12.3 ms");
        assert_eq!(duration_ns(1_200_000_000), "1.20 s");
        assert_eq!(hex(0x800_0000), "0x8000000");
    }

    #[test]
    fn regions_and_chunks_are_tables() {
        let regions = json!({
            "regions": [{"id": 0, "name": "video", "base": 0x0c00_0000u64, "size": 64 << 20,
                         "private": false, "used": 1 << 20, "free": 63 << 20,
                         "largest_free": 63 << 20, "chunks": 1, "allocs_ok": 1,
                         "allocs_failed": 0, "busy_retries": 2, "pages_migrated": 256}],
            "map": ["video-dev=video", "*=video"]
        });
        let t = render(&CtlCommand::Regions(None), &regions).unwrap();
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[0].starts_with("ID  NAME"), "{t}");
        for cell in [
            "video",
            "0xc000000",
            "0x10000000",
            "64 MiB",
            "lent",
            "1 MiB",
            "63 MiB",
        ] {
            assert!(lines[1].contains(cell), "{cell} not in {t}");
        }
        assert_eq!(lines[2], "map: video-dev=video; *=video");
        let chunk = json!({"id": "cma1:0:1", "region": "video", "region_id": 0,
                           "gpa": 0x0c00_0000u64, "len": 65536, "pinned": true,
                           "mode": "exclusive", "owner": "api"});
        let t = render(&CtlCommand::Chunks, &json!({"chunks": [chunk]})).unwrap();
        assert!(
            t.lines()
                .nth(1)
                .unwrap()
                .contains("0xc000000  0xc010000  64 KiB  exclusive"),
            "{t}"
        );
        assert_eq!(
            render(&CtlCommand::Chunks, &json!({"chunks": []})).unwrap(),
            "no chunks\n"
        );
        let reply = json!({"chunk": chunk, "pages_migrated": 16, "elapsed_ns": 23_180_000,
                           "exits": 1});
        let t = render(&CtlCommand::Alloc(json!({})), &reply).unwrap();
        assert!(
            t.ends_with("16 pages migrated in 23.2 ms, 1 VM exits\n"),
            "{t}"
        );
    }

    #[test]
    fn other_answers_are_listings() {
        let region = json!({"name": "a", "base": 0x800_0000u64, "size": 4 << 20,
                            "bitmap": "f0000000", "alloc_latency": {"p50_ns": 1500}});
        let t = render(&CtlCommand::Regions(Some("a".into())), &region).unwrap();
        let lines: Vec<String> = t
            .lines()
            .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
            .collect();
        for want in [
            "base 0x8000000",
            "size 4 MiB",
            "bitmap 32 bits, 4 set (hex in --json)",
            "alloc_latency.p50_ns 1.5 µs",
        ] {
            assert!(lines.iter().any(|l| l == want), "{want} not in {t}");
        }
        assert!(render(&CtlCommand::MetricsPrometheus, &Value::Null).is_none());
        assert!(render(&CtlCommand::Regions(None), &json!([1])).is_none());
    }
}
