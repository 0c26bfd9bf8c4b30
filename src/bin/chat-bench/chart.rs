//! `chat-bench chart <results.json ...> --out file.svg`: line charts drawn
//! by hand as SVG, one line per `--label` (or scenario) found in the result
//! files.
//!
//! - One point per result file: deliveries/s and p99 latency against a
//!   parameter (`--x`, default `members`).
//! - A `scale` result (a sweep, with `steps`) gives one point per step:
//!   p50, p99 and server CPU per delivery against `--x sockets` (default;
//!   the rooms sweep) or `--x room_size` (the size sweep).

use std::collections::BTreeMap;
use std::fmt::Write;

use serde_json::Value;

const PANEL_W: f64 = 460.0;
const PANEL_H: f64 = 320.0;
const MARGIN_L: f64 = 70.0;
const MARGIN_R: f64 = 20.0;
const MARGIN_T: f64 = 60.0;
const MARGIN_B: f64 = 50.0;
const COLORS: &[&str] = &[
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf",
];

/// One result file (or one step of a sweep) reduced to what is drawn.
#[derive(Debug, Clone, PartialEq)]
pub struct Point {
    pub series: String,
    pub x: f64,
    pub deliveries_per_sec: Option<f64>,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub cpu_us: Option<f64>,
}

/// What a panel plots.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Metric {
    Deliveries,
    P50,
    P99,
    CpuPerDelivery,
}

impl Metric {
    fn title(self) -> &'static str {
        match self {
            Metric::Deliveries => "deliveries / s",
            Metric::P50 => "p50 latency (ms)",
            Metric::P99 => "p99 latency (ms)",
            Metric::CpuPerDelivery => "server CPU per delivery (µs)",
        }
    }

    fn of(self, p: &Point) -> Option<f64> {
        match self {
            Metric::Deliveries => p.deliveries_per_sec,
            Metric::P50 => p.p50_ms,
            Metric::P99 => p.p99_ms,
            Metric::CpuPerDelivery => p.cpu_us,
        }
    }
}

/// The series name of a result: `--label`, else the scenario.
fn series_of(result: &Value) -> String {
    result["label"]
        .as_str()
        .or_else(|| result["scenario"].as_str())
        .unwrap_or("results")
        .to_string()
}

/// The y values of a result or a step.
fn point_at(series: String, x: f64, v: &Value) -> Point {
    Point {
        series,
        x,
        deliveries_per_sec: v["deliveries_per_sec"].as_f64(),
        p50_ms: v["latency_ms"]["p50"].as_f64(),
        p99_ms: v["latency_ms"]["p99"].as_f64(),
        cpu_us: v["server_cpu_us_per_delivery"].as_f64(),
    }
}

/// Picks the x value (`parameters.<x>`, else a top-level field) and the
/// y values out of a result.
pub fn point(result: &Value, x: &str) -> Result<Point, String> {
    let xv = result["parameters"][x]
        .as_f64()
        .or_else(|| result[x].as_f64())
        .ok_or_else(|| format!("result has no numeric parameters.{x}"))?;
    Ok(point_at(series_of(result), xv, result))
}

/// Whether a result is a sweep (`scale`): one point per step.
pub fn is_sweep(result: &Value) -> bool {
    result["steps"].is_array()
}

/// A sweep's points against `x` (`sockets`, or `room_size` for the size
/// sweep: its steps plus the rooms-sweep step with the same socket count).
pub fn sweep_points(result: &Value, x: &str) -> Result<Vec<Point>, String> {
    let sockets = result["parameters"]["sockets"].as_u64();
    let series = series_of(result);
    let mut points = Vec::new();
    for step in result["steps"].as_array().into_iter().flatten() {
        let wanted = if x == "room_size" {
            step["sweep"] == "size" || step["sockets"].as_u64() == sockets
        } else {
            step["sweep"] == "rooms"
        };
        if !wanted {
            continue;
        }
        let xv = step[x]
            .as_f64()
            .ok_or_else(|| format!("a step has no numeric {x}"))?;
        points.push(point_at(series.clone(), xv, step));
    }
    Ok(points)
}

/// A "nice" step (1, 2 or 5 × 10^k) giving about `ticks` ticks up to `max`.
pub fn nice_step(max: f64, ticks: f64) -> f64 {
    if max <= 0.0 || !max.is_finite() {
        return 1.0;
    }
    let raw = max / ticks;
    let mag = 10f64.powf(raw.log10().floor());
    let norm = raw / mag;
    let nice = if norm <= 1.0 {
        1.0
    } else if norm <= 2.0 {
        2.0
    } else if norm <= 5.0 {
        5.0
    } else {
        10.0
    };
    nice * mag
}

/// `1500000` as `1.5M`, for tick labels.
fn label(v: f64) -> String {
    let a = v.abs();
    let (v, suffix) = if a >= 1e9 {
        (v / 1e9, "G")
    } else if a >= 1e6 {
        (v / 1e6, "M")
    } else if a >= 1e3 {
        (v / 1e3, "k")
    } else {
        (v, "")
    };
    let s = format!("{v:.2}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    format!("{s}{suffix}")
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Draws one panel at horizontal offset `ox`.
fn panel(
    svg: &mut String,
    ox: f64,
    title: &str,
    x_name: &str,
    series: &BTreeMap<String, Vec<(f64, f64)>>,
) {
    let plot_w = PANEL_W - MARGIN_L - MARGIN_R;
    let plot_h = PANEL_H - MARGIN_T - MARGIN_B;
    let all: Vec<(f64, f64)> = series.values().flatten().copied().collect();
    let x_min = all.iter().map(|p| p.0).fold(f64::INFINITY, f64::min);
    let x_max = all.iter().map(|p| p.0).fold(f64::NEG_INFINITY, f64::max);
    let y_max = all.iter().map(|p| p.1).fold(0.0, f64::max);
    let (x_min, x_max) = if all.is_empty() {
        (0.0, 1.0)
    } else if x_max > x_min {
        (x_min.min(0.0), x_max)
    } else {
        (0.0, x_max.max(1.0))
    };
    let x_step = nice_step(x_max - x_min, 5.0);
    let x_top = (x_max / x_step).ceil() * x_step;
    let y_step = nice_step(y_max, 5.0);
    let y_top = ((y_max / y_step).ceil() * y_step).max(y_step);
    let px = |x: f64| ox + MARGIN_L + (x - x_min) / (x_top - x_min).max(1e-12) * plot_w;
    let py = |y: f64| MARGIN_T + plot_h - y / y_top * plot_h;

    let _ = writeln!(
        svg,
        r#"<text x="{:.1}" y="30" text-anchor="middle" font-size="16" font-weight="bold">{}</text>"#,
        ox + PANEL_W / 2.0,
        esc(title)
    );
    // Grid and y ticks.
    let mut y = 0.0;
    while y <= y_top + y_step / 2.0 {
        let _ = writeln!(
            svg,
            r##"<line x1="{:.1}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" text-anchor="end" font-size="11">{}</text>"##,
            px(x_min),
            py(y),
            px(x_top),
            py(y),
            px(x_min) - 6.0,
            py(y) + 4.0,
            label(y)
        );
        y += y_step;
    }
    // X ticks.
    let mut x = (x_min / x_step).floor() * x_step;
    while x <= x_top + x_step / 2.0 {
        let _ = writeln!(
            svg,
            r##"<line x1="{0:.1}" y1="{1:.1}" x2="{0:.1}" y2="{2:.1}" stroke="#999"/><text x="{0:.1}" y="{3:.1}" text-anchor="middle" font-size="11">{4}</text>"##,
            px(x),
            py(0.0),
            py(0.0) + 5.0,
            py(0.0) + 18.0,
            label(x)
        );
        x += x_step;
    }
    let _ = writeln!(
        svg,
        r##"<line x1="{0:.1}" y1="{1:.1}" x2="{2:.1}" y2="{1:.1}" stroke="#333"/><line x1="{0:.1}" y1="{1:.1}" x2="{0:.1}" y2="{3:.1}" stroke="#333"/>"##,
        px(x_min),
        py(0.0),
        px(x_top),
        py(y_top)
    );
    let _ = writeln!(
        svg,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle" font-size="12">{}</text>"#,
        ox + MARGIN_L + plot_w / 2.0,
        PANEL_H - 10.0,
        esc(x_name)
    );
    // Lines and points.
    for (i, points) in series.values().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let path: Vec<String> = points
            .iter()
            .map(|&(x, y)| format!("{:.1},{:.1}", px(x), py(y)))
            .collect();
        let _ = writeln!(
            svg,
            r#"<polyline fill="none" stroke="{color}" stroke-width="2" points="{}"/>"#,
            path.join(" ")
        );
        for &(x, y) in points {
            let _ = writeln!(
                svg,
                r#"<circle cx="{:.1}" cy="{:.1}" r="3.5" fill="{color}"><title>{}: {}</title></circle>"#,
                px(x),
                py(y),
                label(x),
                label(y)
            );
        }
    }
}

/// The whole SVG for `points`: one panel per metric, side by side.
pub fn render(points: &[Point], x_name: &str, title: &str, metrics: &[Metric]) -> String {
    let panels: Vec<BTreeMap<String, Vec<(f64, f64)>>> = metrics
        .iter()
        .map(|&m| {
            let mut series: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
            for p in points {
                let line = series.entry(p.series.clone()).or_default();
                if let Some(y) = m.of(p) {
                    line.push((p.x, y));
                }
            }
            for v in series.values_mut() {
                v.sort_by(|a, b| a.0.total_cmp(&b.0));
            }
            series
        })
        .collect();
    let width = metrics.len().max(1) as f64 * PANEL_W;
    let height = PANEL_H + 30.0;
    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" font-family="sans-serif">"#
    );
    let _ = writeln!(svg, r#"<rect width="100%" height="100%" fill="white"/>"#);
    if !title.is_empty() {
        let _ = writeln!(
            svg,
            r##"<text x="{:.1}" y="14" text-anchor="middle" font-size="13" fill="#555">{}</text>"##,
            width / 2.0,
            esc(title)
        );
    }
    for (i, (m, series)) in metrics.iter().zip(&panels).enumerate() {
        panel(&mut svg, i as f64 * PANEL_W, m.title(), x_name, series);
    }
    // Legend.
    let names: Vec<&String> = panels
        .first()
        .map(|p| p.keys().collect())
        .unwrap_or_default();
    for (i, name) in names.into_iter().enumerate() {
        let y = PANEL_H + 15.0;
        let x = 20.0 + i as f64 * 170.0;
        let color = COLORS[i % COLORS.len()];
        let _ = writeln!(
            svg,
            r#"<rect x="{x:.1}" y="{:.1}" width="14" height="4" fill="{color}"/><text x="{:.1}" y="{:.1}" font-size="12">{}</text>"#,
            y - 4.0,
            x + 20.0,
            y + 2.0,
            esc(name)
        );
    }
    svg.push_str("</svg>\n");
    svg
}

/// Runs the `chart` subcommand; `x` defaults to `sockets` for sweeps and
/// `members` otherwise.
pub fn run(files: &[String], out: &str, x: Option<&str>, title: &str) -> Result<String, String> {
    if files.is_empty() {
        return Err("chart needs at least one results .json file".into());
    }
    let mut results = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(f).map_err(|e| format!("{f}: {e}"))?;
        let v: Value = serde_json::from_str(&text).map_err(|e| format!("{f}: {e}"))?;
        results.push((f, v));
    }
    let sweeps = results.iter().any(|(_, v)| is_sweep(v));
    let x = x.unwrap_or(if sweeps { "sockets" } else { "members" });
    let mut points = Vec::new();
    for (f, v) in &results {
        if is_sweep(v) {
            points.extend(sweep_points(v, x).map_err(|e| format!("{f}: {e}"))?);
        } else {
            points.push(point(v, x).map_err(|e| format!("{f}: {e}"))?);
        }
    }
    let metrics: &[Metric] = if sweeps {
        &[Metric::P50, Metric::P99, Metric::CpuPerDelivery]
    } else {
        &[Metric::Deliveries, Metric::P99]
    };
    let svg = render(&points, x, title, metrics);
    std::fs::write(out, &svg).map_err(|e| format!("{out}: {e}"))?;
    Ok(format!("wrote {out} ({} points)", points.len()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn nice_steps() {
        assert_eq!(nice_step(100.0, 5.0), 20.0);
        assert_eq!(nice_step(7.0, 5.0), 2.0);
        assert_eq!(nice_step(1_000_000.0, 5.0), 200_000.0);
        assert_eq!(nice_step(0.0, 5.0), 1.0);
        assert!((nice_step(0.3, 5.0) - 0.1).abs() < 1e-12);
    }

    #[test]
    fn labels_are_short() {
        assert_eq!(label(1_500_000.0), "1.5M");
        assert_eq!(label(2000.0), "2k");
        assert_eq!(label(0.25), "0.25");
        assert_eq!(label(0.0), "0");
    }

    #[test]
    fn renders_series_from_results() {
        let results = [
            json!({"scenario":"fanout","parameters":{"members":100},"deliveries_per_sec":1e6,"latency_ms":{"p99":2.5}}),
            json!({"scenario":"fanout","parameters":{"members":1000},"deliveries_per_sec":2e6,"latency_ms":{"p99":9.0}}),
            json!({"scenario":"fanout","label":"mysql","parameters":{"members":1000},"deliveries_per_sec":5e5,"latency_ms":null}),
        ];
        let points: Vec<Point> = results
            .iter()
            .map(|r| point(r, "members").unwrap())
            .collect();
        assert_eq!(points[2].series, "mysql");
        assert_eq!(points[2].p99_ms, None);
        let svg = render(
            &points,
            "members",
            "fanout <test>",
            &[Metric::Deliveries, Metric::P99],
        );
        assert!(svg.starts_with("<svg"));
        assert!(svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("<polyline").count(), 4, "2 series × 2 panels");
        assert_eq!(svg.matches("<circle").count(), 5);
        assert!(svg.contains("fanout &lt;test&gt;"));
        assert!(point(&json!({"parameters":{}}), "members").is_err());
    }

    #[test]
    fn sweeps_give_one_point_per_step() {
        let step = |sweep: &str, rooms: u64, size: u64, p99: f64| {
            json!({"sweep": sweep, "rooms": rooms, "room_size": size, "sockets": rooms * size,
                   "deliveries_per_sec": 4e4, "server_cpu_us_per_delivery": 20.0,
                   "latency_ms": {"p50": p99 / 4.0, "p99": p99}})
        };
        let r = json!({"scenario": "scale", "label": "default", "parameters": {"sockets": 400},
            "steps": [step("rooms", 100, 4, 3.0), step("rooms", 1000, 4, 9.0),
                      step("size", 200, 2, 2.0), step("size", 25, 16, 5.0)]});
        assert!(is_sweep(&r) && !is_sweep(&json!({"parameters": {}})));
        let by_sockets = sweep_points(&r, "sockets").unwrap();
        assert_eq!(
            by_sockets.iter().map(|p| p.x).collect::<Vec<_>>(),
            [400.0, 4000.0]
        );
        assert_eq!(by_sockets[1].p50_ms, Some(2.25));
        assert_eq!(by_sockets[1].cpu_us, Some(20.0));
        // The size sweep includes the rooms-sweep step at its socket count.
        let by_size = sweep_points(&r, "room_size").unwrap();
        assert_eq!(
            by_size.iter().map(|p| p.x).collect::<Vec<_>>(),
            [4.0, 2.0, 16.0]
        );
        let svg = render(
            &by_sockets,
            "sockets",
            "",
            &[Metric::P50, Metric::P99, Metric::CpuPerDelivery],
        );
        assert_eq!(svg.matches("<polyline").count(), 3, "1 series × 3 panels");
        assert!(svg.contains("server CPU per delivery"));
        assert!(svg.contains(r#"width="1380""#), "three panels wide");
    }
}
