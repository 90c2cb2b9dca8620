//! The plots, drawn with plotters' SVG backend.

use std::error::Error;
use std::ops::Range;
use std::path::Path;

use plotters::coord::ranged1d::{DefaultFormatting, KeyPointHint};
use plotters::coord::Shift;
use plotters::element::DashedPathElement;
use plotters::prelude::*;

use crate::data::{self, Record};

/// Errors of drawing or writing a plot.
pub type Result<T> = std::result::Result<T, Box<dyn Error>>;

type Area<'a> = DrawingArea<SVGBackend<'a>, Shift>;
type PlotFn = fn(&[Record], &Path) -> Result<bool>;

const SIZE: (u32, u32) = (800, 450);
const FONT: &str = "sans-serif";
const W1_OPS: &str = "value.get value.update list.add list.get map.get map.put";
const W2_BACKENDS: [&str; 3] = ["heap-full", "rocksdb-full", "rocksdb-incremental"];
const ORANGE: RGBColor = RGBColor(230, 120, 20);
const BLUE: RGBColor = RGBColor(30, 100, 180);
const GREEN: RGBColor = RGBColor(40, 150, 70);

/// Writes each plot whose data is present into `out` (created if needed) and
/// returns the names of the files written; a plot without data is skipped
/// with a note on stderr.
pub fn render_all(records: &[Record], out: &Path) -> Result<Vec<&'static str>> {
    std::fs::create_dir_all(out).map_err(|e| format!("{}: {e}", out.display()))?;
    let plots: [(&'static str, PlotFn); 5] = [
        ("w1-ops.svg", w1_ops),
        ("w2-checkpoints.svg", w2_checkpoints),
        ("w2-restore.svg", w2_restore),
        ("w3-rescale.svg", w3_rescale),
        ("scale.svg", scale),
    ];
    let mut written = Vec::new();
    for (name, plot) in plots {
        if plot(records, &out.join(name))? {
            written.push(name);
        } else {
            eprintln!("bench-report: no data for {name}; skipped");
        }
    }
    Ok(written)
}

/// One legend entry and its data: (x, y) points; for bars, x is the group index.
struct Series {
    label: String,
    color: RGBColor,
    dashed: bool,
    points: Vec<(f64, f64)>,
}

impl Series {
    fn new(label: String, color: RGBColor, dashed: bool, points: impl IntoIterator<Item = (f64, f64)>) -> Series {
        Series {
            label,
            color,
            dashed,
            points: points.into_iter().collect(),
        }
    }
}

/// W1 throughput: grouped bars per operation, limits included.
fn w1_ops(records: &[Record], path: &Path) -> Result<bool> {
    let present = |m: &&str| {
        records
            .iter()
            .any(|r| r.workload == "W1" && r.unit == "ops/ms" && r.metric == *m)
    };
    let groups: Vec<String> = W1_OPS
        .split_whitespace()
        .filter(present)
        .map(|m| m.to_string())
        .collect();
    let mut series = Vec::new();
    for backend in ["heap", "rocksdb", "raw-hashmap", "raw-rocksdb"] {
        for (i, system) in data::systems(records).iter().enumerate() {
            let points = groups.iter().enumerate();
            let points = points.filter_map(|(g, m)| Some((g as f64, data::get(records, system, "W1", backend, m)?)));
            let color = shade(backend_color(backend), i);
            let label = format!("{} {backend}", display(system));
            series.push(Series::new(label, color, false, points));
        }
    }
    let title = "W1 state access throughput (higher is better)";
    bar_plot(path, title, &groups, ("operation", "throughput (ops/ms)"), series)
}

/// W2 restore times per backend.
fn w2_restore(records: &[Record], path: &Path) -> Result<bool> {
    let present = |b: &&str| {
        records
            .iter()
            .any(|r| r.workload == "W2" && r.backend == *b && r.metric.starts_with("restore."))
    };
    let groups: Vec<String> = W2_BACKENDS.into_iter().filter(present).map(|b| b.to_string()).collect();
    let mut series = Vec::new();
    for (what, base) in [("remote", BLUE), ("local", GREEN)] {
        for (i, system) in data::systems(records).iter().enumerate() {
            let metric = format!("restore.{what}_ms");
            let points = groups.iter().enumerate();
            let points = points.filter_map(|(g, b)| Some((g as f64, data::get(records, system, "W2", b, &metric)?)));
            let label = format!("{} restore from {what}", display(system));
            series.push(Series::new(label, shade(base, i), false, points));
        }
    }
    let title = "W2 restore time (lower is better)";
    bar_plot(path, title, &groups, ("backend", "restore time (ms)"), series)
}

/// W3 rescaled restores: the slowest new subtask per case and backend.
fn w3_rescale(records: &[Record], path: &Path) -> Result<bool> {
    let cases = [("2to3", "2 → 3"), ("2to1", "2 → 1"), ("3to2", "3 → 2")];
    let groups: Vec<String> = cases.iter().map(|(_, name)| name.to_string()).collect();
    let mut series = Vec::new();
    for backend in W2_BACKENDS {
        for (i, system) in data::systems(records).iter().enumerate() {
            let points = cases.iter().enumerate().filter_map(|(g, (case, _))| {
                let metric = format!("w3.{case}.restore_ms");
                Some((g as f64, data::get(records, system, "W3", backend, &metric)?))
            });
            let label = format!("{} {backend}", display(system));
            series.push(Series::new(label, shade(backend_color(backend), i), false, points));
        }
    }
    let title = "W3 rescaled restore, slowest subtask (lower is better)";
    bar_plot(path, title, &groups, ("rescale", "restore time (ms)"), series)
}

/// W2 per checkpoint: bytes written and sync + async duration.
fn w2_checkpoints(records: &[Record], path: &Path) -> Result<bool> {
    let (mut bytes, mut millis) = (Vec::new(), Vec::new());
    for backend in W2_BACKENDS {
        for (i, system) in data::systems(records).iter().enumerate() {
            let cps = data::checkpoints(records, system, backend);
            let b = cps.iter().filter_map(|(id, c)| Some((*id as f64, c.bytes? / 1e6)));
            let ms = cps.iter().filter(|(_, c)| c.sync_ms.is_some() || c.async_ms.is_some());
            let ms = ms.map(|(id, c)| (*id as f64, c.sync_ms.unwrap_or(0.0) + c.async_ms.unwrap_or(0.0)));
            if cps.is_empty() {
                continue;
            }
            let (label, color) = (
                format!("{} {backend}", display(system)),
                shade(backend_color(backend), i),
            );
            bytes.push(Series::new(label.clone(), color, i > 0, b));
            millis.push(Series::new(label, color, i > 0, ms));
        }
    }
    let panels = [
        ("bytes written per checkpoint", "MB written", bytes),
        ("sync + async duration", "duration (ms)", millis),
    ];
    line_plot(path, "W2 checkpoints (lower is better)", "checkpoint id", panels, false)
}

/// S1: snapshot and restore time against the number of keys.
fn scale(records: &[Record], path: &Path) -> Result<bool> {
    let s1: Vec<Record> = records.iter().filter(|r| r.workload == "S1").cloned().collect();
    let systems = data::systems(&s1);
    let mut lines = Vec::new();
    for backend in W2_BACKENDS {
        for what in ["snapshot", "restore"] {
            for (i, system) in systems.iter().enumerate() {
                let points = data::scale_points(&s1, system, backend, &format!("{what}_ms"));
                let prefix = match systems.len() {
                    1 => String::new(),
                    _ => display(system) + " ",
                };
                let color = shade(backend_color(backend), i);
                lines.push(Series::new(
                    format!("{prefix}{backend} {what}"),
                    color,
                    what == "restore",
                    points,
                ));
            }
        }
    }
    lines.retain(|s| !s.points.is_empty());
    let title = "S1 snapshot and restore time against state size";
    line_plot(path, title, "keys", [("", "time (ms)", lines)], true)
}

/// Draws panels side by side, each of lines with markers against a shared x
/// axis (ticks at every x of the data), and the legend of the first panel's
/// series (the panels have the same series).
fn line_plot<const N: usize>(
    path: &Path,
    title: &str,
    x_desc: &str,
    panels: [(&str, &str, Vec<Series>); N],
    log_x: bool,
) -> Result<bool> {
    let mut xs: Vec<f64> = panels
        .iter()
        .flat_map(|p| p.2.iter())
        .flat_map(|s| s.points.iter().map(|p| p.0))
        .collect();
    if xs.is_empty() {
        return Ok(false);
    }
    xs.sort_by(f64::total_cmp);
    xs.dedup();
    let x = Axis::points(&xs, log_x && xs[0] > 0.0);
    let (root, legend_area) = layout(path, title, &panels[0].2)?;
    for (area, (caption, y_desc, series)) in root.split_evenly((1, N)).iter().zip(&panels) {
        panel(area, caption, &x, (x_desc, y_desc), series, false)?;
    }
    legend(&legend_area, &panels[0].2, false)?;
    root.present()?;
    Ok(true)
}

/// Draws one panel of grouped bars (one group per name of `groups`) with its legend.
fn bar_plot(path: &Path, title: &str, groups: &[String], descs: (&str, &str), mut series: Vec<Series>) -> Result<bool> {
    series.retain(|s| !s.points.is_empty());
    if series.is_empty() {
        return Ok(false);
    }
    let (root, legend_area) = layout(path, title, &series)?;
    panel(&root, "", &Axis::categories(groups), descs, &series, true)?;
    legend(&legend_area, &series, true)?;
    root.present()?;
    Ok(true)
}

/// Opens an SVG file with a title; returns the plotting area and, below it,
/// the area for the legend of `series`.
fn layout<'a>(path: &'a Path, title: &str, series: &[Series]) -> Result<(Area<'a>, Area<'a>)> {
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE)?;
    let body = root.titled(title, (FONT, 20))?;
    let height = body.dim_in_pixel().1 as i32;
    Ok(body.split_vertically(height - 12 - 20 * series.len().div_ceil(3) as i32))
}

/// Draws one chart: axes with units and the series, as bars or as lines with markers.
fn panel(area: &Area<'_>, caption: &str, x: &Axis, descs: (&str, &str), series: &[Series], bars: bool) -> Result<()> {
    let values: Vec<f64> = series.iter().flat_map(|s| s.points.iter().map(|p| p.1)).collect();
    let y = Axis::values(&values);
    let mut builder = ChartBuilder::on(area);
    builder
        .margin(10)
        .margin_right(20)
        .x_label_area_size(36)
        .y_label_area_size(64);
    if !caption.is_empty() {
        builder.caption(caption, (FONT, 15));
    }
    let mut chart = builder.build_cartesian_2d(x.clone(), y.clone())?;
    let (x_fmt, y_fmt) = (|v: &f64| x.name(*v), |v: &f64| y.name(*v));
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_desc(x.desc(descs.0))
        .y_desc(y.desc(descs.1))
        .x_label_formatter(&x_fmt)
        .y_label_formatter(&y_fmt)
        .label_style((FONT, 12))
        .axis_desc_style((FONT, 13))
        .draw()?;
    let width = 0.8 / series.len() as f64;
    for (s, ser) in series.iter().enumerate() {
        let at = |&(px, py): &(f64, f64)| Some((x.pos(px)?, y.pos(py)?));
        let points: Vec<(f64, f64)> = ser.points.iter().filter_map(at).collect();
        if bars {
            let left = |g: f64| g + 0.1 + s as f64 * width;
            let corners = |&(g, v): &(f64, f64)| [(left(g), y.range.start), (left(g) + width * 0.85, v)];
            let rect = |p: &(f64, f64)| Rectangle::new(corners(p), ser.color.filled());
            chart.draw_series(points.iter().map(rect))?;
            continue;
        }
        let style = ser.color.stroke_width(2);
        if ser.dashed {
            chart.draw_series(DashedLineSeries::new(points.clone(), 6, 4, style))?;
            chart.draw_series(points.iter().map(|p| TriangleMarker::new(*p, 5, ser.color.filled())))?;
        } else {
            chart.draw_series(LineSeries::new(points.clone(), style))?;
            chart.draw_series(points.iter().map(|p| Circle::new(*p, 4, ser.color.filled())))?;
        }
    }
    Ok(())
}

/// Draws the legend of `series` in three columns.
fn legend(area: &Area<'_>, series: &[Series], bars: bool) -> Result<()> {
    let column = area.dim_in_pixel().0 as i32 / 3;
    for (i, s) in series.iter().enumerate() {
        let (x, y) = (16 + (i % 3) as i32 * column, 4 + (i / 3) as i32 * 20);
        let (style, fill) = (s.color.stroke_width(2), s.color.filled());
        if bars {
            area.draw(&Rectangle::new([(x + 4, y + 1), (x + 20, y + 13)], fill))?;
        } else if s.dashed {
            area.draw(&DashedPathElement::new(vec![(x, y + 7), (x + 24, y + 7)], 5, 3, style))?;
            area.draw(&TriangleMarker::new((x + 12, y + 7), 5, fill))?;
        } else {
            area.draw(&PathElement::new(vec![(x, y + 7), (x + 24, y + 7)], style))?;
            area.draw(&Circle::new((x + 12, y + 7), 4, fill))?;
        }
        area.draw(&Text::new(s.label.clone(), (x + 30, y), (FONT, 13)))?;
    }
    Ok(())
}

/// An axis in plot units (log10 of the value when logarithmic), with its ticks and their labels.
#[derive(Clone)]
struct Axis {
    range: Range<f64>,
    ticks: Vec<f64>,
    names: Vec<String>,
    log: bool,
}

impl Axis {
    /// An axis without names: ticks are labelled with their value.
    fn new(range: Range<f64>, ticks: Vec<f64>, log: bool) -> Axis {
        Axis {
            range,
            ticks,
            names: Vec::new(),
            log,
        }
    }

    /// One named category per unit: ticks at 0.5, 1.5, ...
    fn categories(names: &[String]) -> Axis {
        let ticks = (0..names.len()).map(|i| i as f64 + 0.5).collect();
        Axis {
            names: names.to_vec(),
            ..Axis::new(0.0..names.len() as f64, ticks, false)
        }
    }

    /// A tick at each of `xs` (sorted, not empty).
    fn points(xs: &[f64], log: bool) -> Axis {
        let ticks: Vec<f64> = xs.iter().map(|&v| if log { v.log10() } else { v }).collect();
        let (lo, hi) = (ticks[0], ticks[ticks.len() - 1]);
        let pad = ((hi - lo) * 0.05).max(if log { 0.2 } else { 0.5 });
        Axis::new(lo - pad..hi + pad, ticks, log)
    }

    /// An axis fitting `values`: from 0, or logarithmic when they span more than 30×.
    fn values(values: &[f64]) -> Axis {
        let positive = values.iter().copied().filter(|v| *v > 0.0);
        let (min, max) = positive.fold((f64::MAX, 0.0f64), |(lo, hi), v| (lo.min(v), hi.max(v)));
        if max > 0.0 && max / min > 30.0 {
            let (lo, hi) = ((min.log10() - 0.05).floor(), max.log10() + 0.15);
            // Decades; with 2× and 5× between them when there are few.
            let multiples: &[f64] = if hi - lo < 3.0 { &[1.0, 2.0, 5.0] } else { &[1.0] };
            let all =
                (lo as i32..=hi.floor() as i32).flat_map(|d| multiples.iter().map(move |m| m.log10() + f64::from(d)));
            return Axis::new(lo..hi, all.filter(|t| *t <= hi).collect(), true);
        }
        let hi = if max > 0.0 { max * 1.1 } else { 1.0 };
        let raw = hi / 6.0;
        let magnitude = 10f64.powf(raw.log10().floor());
        let multiple = [1.0, 2.0, 5.0, 10.0].into_iter().find(|m| m * magnitude >= raw);
        let step = multiple.unwrap_or(10.0) * magnitude;
        Axis::new(
            0.0..hi,
            (0..).map(|k| k as f64 * step).take_while(|t| *t <= hi).collect(),
            false,
        )
    }

    /// Where `v` is on the axis; none for a non-positive value on a log axis.
    fn pos(&self, v: f64) -> Option<f64> {
        if self.log {
            (v > 0.0).then(|| v.log10())
        } else {
            Some(v)
        }
    }

    /// The label of tick `t`: its name, or else its value.
    fn name(&self, t: f64) -> String {
        match self
            .ticks
            .iter()
            .position(|x| (x - t).abs() < 1e-9)
            .and_then(|i| self.names.get(i))
        {
            Some(name) => name.clone(),
            None => fmt_num(if self.log { 10f64.powf(t) } else { t }),
        }
    }

    /// The axis description, marked when logarithmic.
    fn desc(&self, text: &str) -> String {
        if self.log {
            format!("{text}, log scale")
        } else {
            text.to_string()
        }
    }
}

/// Linear in plot units, with ticks (and mesh lines) only at `ticks`.
impl Ranged for Axis {
    type FormatOption = DefaultFormatting;
    type ValueType = f64;

    fn map(&self, value: &f64, limit: (i32, i32)) -> i32 {
        let fraction = (value - self.range.start) / (self.range.end - self.range.start);
        limit.0 + (fraction * f64::from(limit.1 - limit.0)).round() as i32
    }

    fn key_points<Hint: KeyPointHint>(&self, hint: Hint) -> Vec<f64> {
        if hint.weight().allow_light_points() {
            Vec::new()
        } else {
            self.ticks.clone()
        }
    }

    fn range(&self) -> Range<f64> {
        self.range.clone()
    }
}

/// A number for a tick label: 2 decimals at most, k and M suffixes.
fn fmt_num(v: f64) -> String {
    let (v, suffix) = match v.abs() {
        a if a >= 1e6 => (v / 1e6, "M"),
        a if a >= 1e4 => (v / 1e3, "k"),
        _ => (v, ""),
    };
    // `{:.2}` always writes a point, so only decimals are trimmed.
    format!(
        "{}{suffix}",
        format!("{v:.2}").trim_end_matches('0').trim_end_matches('.')
    )
}

/// The name of a system for legends: `flink-1.20.3` is shown as `Flink 1.20.3`.
fn display(system: &str) -> String {
    match system.strip_prefix("flink-") {
        Some(version) => format!("Flink {version}"),
        None => system.to_string(),
    }
}

/// The color of a backend's series.
fn backend_color(backend: &str) -> RGBColor {
    match backend {
        "heap" | "heap-full" => ORANGE,
        "rocksdb" | "rocksdb-full" => BLUE,
        "rocksdb-incremental" => GREEN,
        "raw-hashmap" => RGBColor(120, 120, 120),
        _ => RGBColor(40, 40, 40),
    }
}

/// The color of the first system, lighter for the others.
fn shade(color: RGBColor, system_index: usize) -> RGBColor {
    let lighter = |c: u8| c + (255 - c) / 2;
    if system_index == 0 {
        color
    } else {
        RGBColor(lighter(color.0), lighter(color.1), lighter(color.2))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
flowstate\tW1\theap\tvalue.get\t3296.2\tops/ms
flowstate\tW1\theap\tmap.put\t811.3\tops/ms
flowstate\tW1\trocksdb\tvalue.get\t490.7\tops/ms
flowstate\tW1\traw-hashmap\tvalue.get\t13698.5\tops/ms
flink-1.20.3\tW1\theap\tvalue.get\t3079.1\tops/ms
flink-1.20.3\tW1\trocksdb\tmap.put\t320.9\tops/ms
flowstate\tW2\trocksdb-incremental\tckpt.1.sync_ms\t422.5\tms
flowstate\tW2\trocksdb-incremental\tckpt.1.async_ms\t252.8\tms
flowstate\tW2\trocksdb-incremental\tckpt.1.bytes\t235252319\tbytes
flowstate\tW2\trocksdb-incremental\tckpt.2.sync_ms\t21.1\tms
flowstate\tW2\trocksdb-incremental\tckpt.2.async_ms\t5.9\tms
flowstate\tW2\trocksdb-incremental\tckpt.2.bytes\t2371464\tbytes
flink-1.20.3\tW2\theap-full\tckpt.1.sync_ms\t14.5\tms
flink-1.20.3\tW2\theap-full\tckpt.1.bytes\t226001684\tbytes
flowstate\tW2\trocksdb-incremental\trestore.remote_ms\t772.8\tms
flowstate\tW2\trocksdb-incremental\trestore.local_ms\t58.7\tms
flink-1.20.3\tW2\theap-full\trestore.remote_ms\t6396.5\tms
flowstate\tW3\trocksdb-incremental\tw3.2to3.restore_ms\t104\tms
flink-1.20.3\tW3\trocksdb-incremental\tw3.2to3.restore_ms\t730\tms
flowstate\tS1\theap-full\t200000.snapshot_ms\t40\tms
flowstate\tS1\theap-full\t2000000.snapshot_ms\t400\tms
flowstate\tS1\trocksdb-full\t200000.restore_ms\t140\tms
flowstate\tS1\trocksdb-full\t20000000.restore_ms\t14000\tms
";

    #[test]
    fn renders_all_five_plots() {
        let records = data::parse(SAMPLE, "sample").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("plots");
        let written = render_all(&records, &out).unwrap();
        assert_eq!(
            written,
            [
                "w1-ops.svg",
                "w2-checkpoints.svg",
                "w2-restore.svg",
                "w3-rescale.svg",
                "scale.svg"
            ]
        );
        for (name, label) in [
            ("w1-ops.svg", "Flink 1.20.3 rocksdb"),
            ("w2-checkpoints.svg", "flowstate rocksdb-incremental"),
            ("w2-restore.svg", "flowstate restore from local"),
            ("w3-rescale.svg", "Flink 1.20.3 rocksdb-incremental"),
            ("scale.svg", "rocksdb-full restore"),
        ] {
            let svg = std::fs::read_to_string(out.join(name)).unwrap();
            assert!(svg.contains("<svg"), "{name}");
            assert!(svg.contains(label), "{name} lacks {label}");
        }
    }

    #[test]
    fn skips_plots_without_data() {
        let records = data::parse("flowstate\tW1\theap\tvalue.get\t3296.2\tops/ms\n", "w1").unwrap();
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(render_all(&records, dir.path()).unwrap(), ["w1-ops.svg"]);
        assert!(!dir.path().join("scale.svg").exists());
        assert!(render_all(&[], dir.path()).unwrap().is_empty());
    }

    #[test]
    fn axes_fit_their_values() {
        assert!(!Axis::values(&[300.0, 3000.0]).log);
        let log = Axis::values(&[100.0, 13698.5]);
        assert!(log.log && log.range.start == 1.0 && log.ticks.iter().any(|t| log.name(*t) == "10k"));
        assert_eq!(fmt_num(200000.00000000003), "200k");
        assert_eq!(fmt_num(2.5), "2.5");
    }
}
