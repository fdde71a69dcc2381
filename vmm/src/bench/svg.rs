//! The benchmarks' charts, drawn with plotters' SVG backend.
//!
//! Every chart the benchmarks write compares a few series over a small set of categories
//! (chunk sizes, region sizes, run numbers), so the x axis is categorical: one labelled
//! tick per category, nothing in between. The y axis carries its unit, linear or log.
//! The legend has a column of its own inside the picture, sized to its longest entry, so
//! it never covers data and is never cut off; the title says what is compared and the
//! subtitle which run.

use plotters::coord::ranged1d::{
    AsRangedCoord, DefaultFormatting, KeyPointHint, Ranged, ValueFormatter,
};
use plotters::prelude::*;

/// One named series: a value per category (NaN where there is none).
#[derive(Debug, Clone)]
pub struct Series {
    /// Legend text.
    pub name: String,
    /// One value per category of the chart, in order.
    pub values: Vec<f64>,
}

/// How series are drawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Style {
    /// Lines with a marker per value: for ordered categories (sizes, runs).
    Lines,
    /// Grouped bars: for a few categories compared side by side.
    Bars,
}

/// A chart: what is compared (title), which run (subtitle), categories on x, values on y.
#[derive(Debug, Clone)]
pub struct Chart {
    /// What is compared.
    pub title: String,
    /// Which run: parameters, machine, date ([`super::write_report`] adds the date).
    pub subtitle: String,
    /// What the categories are, e.g. "chunk size".
    pub x_label: String,
    /// The categories, in order.
    pub categories: Vec<String>,
    /// What the values are, with their unit, e.g. "latency (ms)".
    pub y_label: String,
    /// Logarithmic y axis (non-positive values are left out).
    pub log_y: bool,
    /// Lines or bars.
    pub style: Style,
    /// The series.
    pub series: Vec<Series>,
}

/// Why a chart could not be drawn.
#[derive(Debug, thiserror::Error)]
#[error("cannot draw chart '{title}': {reason}")]
pub struct ChartError {
    /// The chart's title.
    pub title: String,
    /// What plotters said.
    pub reason: String,
}

const PLOT_W: u32 = 680;
const H: u32 = 440;
const FONT: &str = "sans-serif";
/// Colour-blind-safe (Okabe-Ito), in order of use.
const COLOURS: [RGBColor; 7] = [
    RGBColor(0, 114, 178),
    RGBColor(213, 94, 0),
    RGBColor(0, 158, 115),
    RGBColor(204, 121, 167),
    RGBColor(230, 159, 0),
    RGBColor(86, 180, 233),
    RGBColor(0, 0, 0),
];

/// Series `i`'s colour.
pub fn colour(i: usize) -> RGBColor {
    COLOURS[i % COLOURS.len()]
}

/// A number as a tick label: short, no trailing zeros.
pub fn tick(v: f64) -> String {
    let a = v.abs();
    if v == 0.0 {
        "0".into()
    } else if !(1e-3..1e6).contains(&a) {
        format!("{v:.0e}")
    } else if a >= 100.0 || v.fract().abs() < 1e-9 {
        format!("{v:.0}")
    } else if a >= 1.0 {
        format!("{v:.1}")
    } else {
        let s = format!("{v:.3}");
        s.trim_end_matches('0').to_string()
    }
}

/// Rough width in pixels of `text` at `size` (plotters' SVG backend has no font metrics).
pub fn text_width(text: &str, size: u32) -> u32 {
    (text.chars().count() as f64 * f64::from(size) * 0.56).ceil() as u32
}

impl Chart {
    fn values(&self) -> impl Iterator<Item = f64> + '_ {
        self.series
            .iter()
            .flat_map(|s| s.values.iter().copied())
            .filter(|v| v.is_finite() && (!self.log_y || *v > 0.0))
    }

    /// Render as an SVG document.
    pub fn render(&self) -> Result<String, ChartError> {
        let err = |e: &dyn std::fmt::Display| ChartError {
            title: self.title.clone(),
            reason: e.to_string(),
        };
        let legend_w = self
            .series
            .iter()
            .map(|s| text_width(&s.name, 13) + 44)
            .max()
            .unwrap_or(0)
            .clamp(120, 420);
        let mut out = String::new();
        {
            let root =
                SVGBackend::with_string(&mut out, (PLOT_W + legend_w, H)).into_drawing_area();
            root.fill(&WHITE).map_err(|e| err(&e))?;
            let (head, body) = root.split_vertically(58);
            head.draw_text(&self.title, &(FONT, 17).into_font().color(&BLACK), (14, 10))
                .map_err(|e| err(&e))?;
            head.draw_text(
                &self.subtitle,
                &(FONT, 12).into_font().color(&RGBColor(90, 90, 90)),
                (14, 34),
            )
            .map_err(|e| err(&e))?;
            let (plot, legend) = body.split_horizontally(PLOT_W);
            let lo = self.values().fold(f64::INFINITY, f64::min);
            let hi = self.values().fold(f64::NEG_INFINITY, f64::max);
            let (lo, hi) = if lo.is_finite() {
                (lo, hi)
            } else {
                (1.0, 10.0)
            };
            if self.log_y {
                // Whole decades, so every gridline is a power of ten.
                let lo = 10f64.powf(lo.log10().floor());
                let hi = 10f64.powf(hi.log10().ceil()).max(lo * 10.0);
                self.draw_plot(&plot, (lo..hi).log_scale())
                    .map_err(|e| err(&e))?;
            } else {
                let lo = lo.min(0.0);
                let hi = if hi > lo { hi * 1.1 } else { lo + 1.0 };
                self.draw_plot(&plot, lo..hi).map_err(|e| err(&e))?;
            }
            self.draw_legend(&legend).map_err(|e| err(&e))?;
            root.present().map_err(|e| err(&e))?;
        }
        Ok(out)
    }

    fn draw_plot<Y>(
        &self,
        area: &DrawingArea<SVGBackend<'_>, plotters::coord::Shift>,
        y: Y,
    ) -> Result<(), DrawingAreaErrorKind<std::io::Error>>
    where
        Y: AsRangedCoord<Value = f64>,
        Y::CoordDescType: ValueFormatter<f64>,
    {
        let n = self.categories.len().max(1);
        let x = Categories(n);
        let mut chart = ChartBuilder::on(area)
            .margin_left(10)
            .margin_right(16)
            .margin_top(8)
            .margin_bottom(6)
            .x_label_area_size(52)
            .y_label_area_size(78)
            .build_cartesian_2d(x, y)?;
        let names = &self.categories;
        let cat = |v: &f64| {
            let i = v.round();
            if (v - i).abs() < 1e-6 && i >= 0.0 {
                names.get(i as usize).cloned().unwrap_or_default()
            } else {
                String::new()
            }
        };
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_desc(&self.x_label)
            .y_desc(&self.y_label)
            .x_label_formatter(&cat)
            .y_label_formatter(&|v| tick(*v))
            .label_style((FONT, 13))
            .axis_desc_style((FONT, 14))
            .light_line_style(RGBColor(238, 238, 238))
            .bold_line_style(RGBColor(215, 215, 215))
            .draw()?;
        let k = self.series.len().max(1) as f64;
        let floor = chart.y_range().start;
        for (j, s) in self.series.iter().enumerate() {
            let c = colour(j);
            let points: Vec<(f64, f64)> = s
                .values
                .iter()
                .enumerate()
                .filter(|(_, v)| v.is_finite() && (!self.log_y || **v > 0.0))
                .map(|(i, v)| (i as f64, *v))
                .collect();
            match self.style {
                Style::Lines => {
                    chart.draw_series(LineSeries::new(points.clone(), c.stroke_width(2)))?;
                    chart.draw_series(
                        points
                            .iter()
                            .map(|&p| Circle::new(p, 4, c.filled()).into_dyn()),
                    )?;
                }
                Style::Bars => {
                    // k bars side by side filling 80% of the category's width.
                    let w = 0.8 / k;
                    chart.draw_series(points.iter().map(|&(x, v)| {
                        let x0 = x - 0.4 + w * j as f64;
                        Rectangle::new([(x0 + 0.01, floor), (x0 + w - 0.01, v)], c.filled())
                    }))?;
                }
            }
        }
        Ok(())
    }

    fn draw_legend(
        &self,
        area: &DrawingArea<SVGBackend<'_>, plotters::coord::Shift>,
    ) -> Result<(), DrawingAreaErrorKind<std::io::Error>> {
        let font = (FONT, 13).into_font().color(&BLACK);
        for (i, s) in self.series.iter().enumerate() {
            let y = 16 + 24 * i as i32;
            let c = colour(i);
            match self.style {
                Style::Lines => {
                    area.draw(&PathElement::new(
                        vec![(6, y + 7), (28, y + 7)],
                        c.stroke_width(2),
                    ))?;
                    area.draw(&Circle::new((17, y + 7), 4, c.filled()))?;
                }
                Style::Bars => area.draw(&Rectangle::new([(8, y), (26, y + 14)], c.filled()))?,
            }
            area.draw_text(&s.name, &font, (36, y))?;
        }
        Ok(())
    }
}

/// A categorical axis of `n` categories: category `i` sits at `i`, in a slot from
/// `i - 0.5` to `i + 0.5`, with one tick (and so one label) at its centre.
#[derive(Debug, Clone, Copy)]
struct Categories(usize);

impl Ranged for Categories {
    type FormatOption = DefaultFormatting;
    type ValueType = f64;

    fn map(&self, value: &f64, limit: (i32, i32)) -> i32 {
        let frac = (value + 0.5) / self.0.max(1) as f64;
        limit.0 + (frac * f64::from(limit.1 - limit.0)).round() as i32
    }

    fn key_points<H: KeyPointHint>(&self, _: H) -> Vec<f64> {
        (0..self.0).map(|i| i as f64).collect()
    }

    fn range(&self) -> std::ops::Range<f64> {
        -0.5..self.0.max(1) as f64 - 0.5
    }
}

/// `1`, `2`, ...: categories for per-run series.
pub fn run_numbers(n: usize) -> Vec<String> {
    (1..=n).map(|i| i.to_string()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chart(style: Style, log_y: bool) -> Chart {
        Chart {
            title: "latency <ms> & more".into(),
            subtitle: "3 runs".into(),
            x_label: "chunk size".into(),
            categories: vec!["4K".into(), "64K".into(), "1M".into()],
            y_label: "latency (ms)".into(),
            log_y,
            style,
            series: vec![
                Series {
                    name: "empty".into(),
                    values: vec![0.5, 2.0, 8.0],
                },
                Series {
                    name: "no data".into(),
                    values: vec![f64::NAN, -1.0, f64::INFINITY],
                },
            ],
        }
    }

    #[test]
    fn renders_categories_legend_and_escaped_text() {
        for style in [Style::Lines, Style::Bars] {
            for log in [false, true] {
                let svg = chart(style, log).render().unwrap();
                assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
                assert!(svg.contains("latency &lt;ms&gt; &amp; more"), "{svg}");
                // Every category is a tick label, and the legend names every series.
                for c in ["4K", "64K", "1M", "empty", "no data", "chunk size"] {
                    assert!(svg.contains(&format!("\n{c}\n</text>")), "{c} missing");
                }
            }
        }
    }

    #[test]
    fn empty_charts_still_render() {
        let mut c = chart(Style::Lines, true);
        c.series.clear();
        c.categories.clear();
        assert!(c.render().unwrap().contains("</svg>"));
    }

    #[test]
    fn tick_labels_are_short() {
        assert_eq!(tick(0.0), "0");
        assert_eq!(tick(1000.0), "1000");
        assert_eq!(tick(2.5), "2.5");
        assert_eq!(tick(0.25), "0.25");
        assert_eq!(tick(1e7), "1e7");
    }
}
